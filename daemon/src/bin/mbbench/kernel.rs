//! `--scenario kernel`: how fast a hypervisor agent installs received routes
//! in the kernel and removes them again (issue 12).
//!
//! mbbench must run inside the network namespace of the agent under test
//! (`scripts/bench-kernel.sh` sets it up: a route server, an agent with
//! `--install-routes VNI#TABLE --tun DEV`, both inside the namespace). One
//! announcer session announces N routes of the VNI to the server in bulk;
//! the kernel is observed by netlink dumps of the table (counting routes of
//! protocol 254, [`Installer::dump`]) until all N are there; then the
//! announcer withdraws them in bulk and the dumps go on until none is left.
//! Times are from the announcer's first write; each dump takes time on a
//! 100,000-route table (and CPU the agent then lacks), so the times are late
//! by up to one dump (reported). With `--metrics ADDR` (the agent's metrics
//! listener) the agent's `metalbondd_kernel_routes{table}` gauge is polled
//! instead, which follows each netlink ACK, and one dump at the end checks
//! that the kernel agrees.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use metalbondd::kernel::Installer;
use metalbondd::wire::Action;

use crate::peer::{Peer, PeerConfig, Sink};
use crate::routes::RouteSet;

/// What one run measured.
pub struct KernelResult {
    /// First announce write -> all N routes in the table.
    pub install: Duration,
    /// First withdraw write -> none left.
    pub remove: Duration,
    /// Longest single dump (the observation's resolution).
    pub max_dump: Duration,
}

/// The agent's installed-routes gauge of `table` (0 when absent).
async fn gauge(addr: SocketAddr, table: u32) -> Result<usize, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("metrics {addr}: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: mbbench\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("metrics {addr}: {e}"))?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .await
        .map_err(|e| format!("metrics {addr}: {e}"))?;
    let want = format!("metalbondd_kernel_routes{{table=\"{table}\"}} ");
    Ok(raw
        .lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as usize))
}

/// Polls the gauge until `done(count)` or `timeout`, then checks the
/// kernel with one dump; returns the time since `t0` at the first poll that
/// satisfied it.
async fn wait_gauge(
    addr: SocketAddr,
    installer: &Installer,
    table: u32,
    t0: Instant,
    timeout: Duration,
    done: impl Fn(usize) -> bool,
) -> Result<Duration, String> {
    loop {
        let n = gauge(addr, table).await?;
        if done(n) {
            let took = t0.elapsed();
            let (_, _) = wait_count(installer, table, Instant::now(), timeout, &done).await?;
            return Ok(took);
        }
        if t0.elapsed() > timeout {
            return Err(format!(
                "gauge of table {table} at {n} after {} s",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Polls `table` until `done(count)` or `timeout`; returns the time since
/// `t0` at the first dump that satisfied it and the longest dump.
async fn wait_count(
    installer: &Installer,
    table: u32,
    t0: Instant,
    timeout: Duration,
    done: impl Fn(usize) -> bool,
) -> Result<(Duration, Duration), String> {
    let mut max_dump = Duration::ZERO;
    loop {
        let start = Instant::now();
        let n = installer
            .dump(table)
            .await
            .map_err(|e| format!("dump table {table}: {e}"))?
            .len();
        max_dump = max_dump.max(start.elapsed());
        if done(n) {
            return Ok((t0.elapsed(), max_dump));
        }
        if t0.elapsed() > timeout {
            return Err(format!(
                "table {table} has {n} routes after {} s",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the scenario once.
pub async fn run(
    cfg: &PeerConfig,
    set: RouteSet,
    tun: &str,
    table: u32,
    timeout: Duration,
    metrics: Option<SocketAddr>,
) -> Result<KernelResult, String> {
    let installer = Installer::new(tun)
        .await
        .map_err(|e| format!("netlink: {e}"))?;
    let before = installer
        .dump(table)
        .await
        .map_err(|e| format!("dump table {table}: {e}"))?
        .len();
    if before != 0 {
        return Err(format!(
            "table {table} already holds {before} routes of protocol 254"
        ));
    }
    let n = set.n as usize;
    let peer = Peer::connect(cfg, Sink::Ignore).await?;
    let bulk = peer.bulk(Action::Add, set, 0, set.n)?;
    let t0 = bulk.started.await.map_err(|_| "announcer stopped")?;
    let (install, d1) = match metrics {
        Some(m) => (
            wait_gauge(m, &installer, table, t0, timeout, |c| c >= n).await?,
            Duration::ZERO,
        ),
        None => wait_count(&installer, table, t0, timeout, |c| c >= n).await?,
    };
    let bulk = peer.bulk(Action::Remove, set, 0, set.n)?;
    let t1 = bulk.started.await.map_err(|_| "announcer stopped")?;
    let (remove, d2) = match metrics {
        Some(m) => (
            wait_gauge(m, &installer, table, t1, timeout, |c| c == 0).await?,
            Duration::ZERO,
        ),
        None => wait_count(&installer, table, t1, timeout, |c| c == 0).await?,
    };
    let _ = peer.close().await;
    Ok(KernelResult {
        install,
        remove,
        max_dump: d1.max(d2),
    })
}
