//! No data-plane flap (issue 4): `metalbondd` client restarts, losing every
//! server (stale time), `--cleanup`, and the client role from a config file,
//! with real server and client processes inside a network namespace and the
//! kernel routes read back with `ip route`.
//!
//! Needs root and `ip` (iproute2). Without them a test prints why it was
//! skipped and passes, unless `CI=true`, where it fails instead. Each test
//! creates its own namespace (deleted on drop) with `lo` up and a veth pair
//! `mbt0`/`mbt1` standing in for the tunnel device. Servers listen on fixed
//! ports of the namespace's own loopback (nothing else runs there), so a
//! restarted server has the same address. Every wait is bounded: the tables
//! are polled every 20 ms up to a deadline, and "never disappears" is checked
//! by polling continuously over the whole interval.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{self, api_route};
use common::{unique_temp_dir, Daemon};
use metalbond_proto::api as pb;

const TUN: &str = "mbt0";
/// Deadline for a kernel table to reach the expected state.
const WAIT: Duration = Duration::from_secs(10);
/// Poll interval of `ip route`.
const POLL: Duration = Duration::from_millis(20);

/// Why the namespace tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces and routes need CAP_SYS_ADMIN and CAP_NET_ADMIN)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("the `ip` command (iproute2) is not installed".into()),
    }
}

/// Returns false (after printing why) when the test must be skipped; panics instead under CI.
fn may_run(test: &str) -> bool {
    let Some(reason) = skip_reason() else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run with CI=true: {reason}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
    false
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace with `lo`, `mbt0` and `mbt1` up, and a temporary
/// directory for the daemons' sockets and state; both removed on drop.
struct Env {
    ns: String,
    dir: PathBuf,
}

impl Env {
    fn create() -> Env {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let ns = format!(
            "mbc-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &ns]);
        let env = Env {
            ns,
            dir: unique_temp_dir(),
        };
        let n = env.ns.as_str();
        ip(&[
            "-n", n, "link", "add", TUN, "type", "veth", "peer", "name", "mbt1",
        ]);
        ip(&["-n", n, "link", "set", TUN, "up"]);
        ip(&["-n", n, "link", "set", "mbt1", "up"]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
        env
    }

    fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    /// A route server inside the namespace on `listen`, API socket `DIR/NAME.sock`, state
    /// in `DIR/STATE`, with `extra` flags.
    fn server(&self, name: &str, listen: &str, state: &str, extra: &[&str]) -> Daemon {
        let sock = self.sock(name).display().to_string();
        let state = self.dir.join(state).display().to_string();
        let mut args = vec![
            "server",
            "--listen",
            listen,
            "--api-socket",
            &sock,
            "--state-dir",
            &state,
        ];
        args.extend(extra);
        Daemon::spawn_in_netns(&self.ns, &args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A client inside the namespace connected to `servers` (addresses), with `args`.
    fn client(&self, name: &str, servers: &[&str], args: &[&str]) -> Daemon {
        let mut full: Vec<String> = vec!["client".into()];
        for s in servers {
            full.extend(["--server".into(), s.to_string()]);
        }
        full.extend(args.iter().map(|a| a.to_string()));
        full.extend([
            "--api-socket".into(),
            self.sock(name).display().to_string(),
            "--state-dir".into(),
            self.dir.join(name).display().to_string(),
        ]);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        Daemon::spawn_in_netns(&self.ns, &full).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn inject(sock: &Path, texts: &[&str]) {
    let mut api = api::connect(sock).await;
    api.routes
        .announce_routes(pb::AnnounceRoutesRequest {
            routes: texts.iter().map(|t| api_route(t)).collect(),
            allow_existing: false,
        })
        .await
        .expect("AnnounceRoutes");
}

async fn withdraw(sock: &Path, texts: &[&str]) {
    let mut api = api::connect(sock).await;
    api.routes
        .withdraw_routes(pb::WithdrawRoutesRequest {
            routes: texts.iter().map(|t| api_route(t)).collect(),
            ..Default::default()
        })
        .await
        .expect("WithdrawRoutes");
}

/// The routes of `ip -d [-6] route show table T` as prefix -> next hops, checking each line
/// precisely: protocol 254, `encap ip6 ... dst <nh>`, `dev mbt0`; a single next hop is a
/// plain route without gateway, several are `nexthop` lines.
fn table(ns: &str, v6: bool, table: u32) -> Result<BTreeMap<String, Vec<String>>, String> {
    let t = table.to_string();
    let family = if v6 { "-6" } else { "-4" };
    let args = ["-n", ns, "-d", family, "route", "show", "table", &t];
    let run = Command::new("ip").args(args).output().expect("run ip");
    let stderr = String::from_utf8_lossy(&run.stderr);
    if !run.status.success() {
        // A table the kernel never had a route in does not exist yet (IPv6).
        if stderr.contains("FIB table does not exist") {
            return Ok(BTreeMap::new());
        }
        panic!("ip {}: {stderr}", args.join(" "));
    }
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    let mut routes: Vec<(String, Vec<String>)> = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with(char::is_whitespace) {
            let Some(last) = routes.last_mut() else {
                return Err(format!("nexthop line before a route line: {out}"));
            };
            last.1.push(line.trim().to_owned());
        } else {
            routes.push((line.trim().to_owned(), Vec::new()));
        }
    }
    let dst_of = |l: &str| -> Result<String, String> {
        if !l.contains("encap ip6 ") {
            return Err(format!("no `encap ip6` in {l:?}"));
        }
        if !l.contains(" dev mbt0") {
            return Err(format!("no `dev mbt0` in {l:?}"));
        }
        let words: Vec<&str> = l.split_whitespace().collect();
        let i = words
            .iter()
            .position(|w| *w == "dst")
            .ok_or_else(|| format!("no encap dst in {l:?}"))?;
        Ok(words
            .get(i + 1)
            .ok_or_else(|| format!("no encap dst in {l:?}"))?
            .to_string())
    };
    let mut map = BTreeMap::new();
    for (line, nexthops) in routes {
        let words: Vec<&str> = line.split_whitespace().collect();
        let prefix = match words.as_slice() {
            ["unicast", p, ..] => p.to_string(),
            [p, ..] => p.to_string(),
            [] => unreachable!(),
        };
        if !line.contains(" proto 254 ") && !line.ends_with(" proto 254") {
            return Err(format!("not protocol 254: {line:?}"));
        }
        let hops = if nexthops.is_empty() {
            if line.contains(" via ") {
                return Err(format!("unexpected gateway in {line:?}"));
            }
            vec![dst_of(&line)?]
        } else {
            let mut hops = Vec::new();
            for l in &nexthops {
                if !l.starts_with("nexthop") {
                    return Err(format!("not a nexthop line: {l:?}"));
                }
                hops.push(dst_of(l)?);
            }
            hops
        };
        if map.insert(prefix.clone(), hops).is_some() {
            return Err(format!("{prefix} twice in table {table}: {out}"));
        }
    }
    Ok(map)
}

fn expected(routes: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    routes
        .iter()
        .map(|(p, h)| (p.to_string(), h.iter().map(|s| s.to_string()).collect()))
        .collect()
}

/// Polls table `t` (IPv4 and IPv6) until it holds exactly `v4` and `v6` (next hops in
/// this order); panics with the last state at the deadline.
async fn wait_table(ns: &str, t: u32, v4: &[(&str, &[&str])], v6: &[(&str, &[&str])]) {
    let (want4, want6) = (expected(v4), expected(v6));
    let deadline = Instant::now() + WAIT;
    loop {
        let got = (table(ns, false, t), table(ns, true, t));
        if let (Ok(g4), Ok(g6)) = &got {
            if *g4 == want4 && *g6 == want6 {
                return;
            }
        }
        if Instant::now() >= deadline {
            panic!(
                "table {t} did not reach\n  v4 {want4:?}\n  v6 {want6:?}\nwithin {WAIT:?}; last:\n  v4 {:?}\n  v6 {:?}",
                got.0, got.1
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Fixed server addresses inside the test's namespace.
const S1: &str = "[::1]:4711";
const S2: &str = "[::1]:4712";
/// Nothing listens here: a configured server that never comes up keeps the
/// client from reconciling early, so only the hold time ends the hold.
const DEAD: &str = "[::1]:4799";

const R1: &str = "100#10.0.1.0/24@2001:db8::1";
const R2: &str = "100#10.0.2.0/24@2001:db8::2";
const R6: &str = "100#2001:db8:a::/64@2001:db8::4";

/// VNI 100 into table 100 via mbt0, plus `extra`.
fn client_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--subscribe",
        "100",
        "--install-routes",
        "100#100",
        "--tun",
        TUN,
    ];
    args.extend(extra);
    args
}

/// Table 100, both families, as prefix -> next hops.
fn routes_now(ns: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut all = table(ns, false, 100)?;
    all.extend(table(ns, true, 100)?);
    Ok(all)
}

/// Polls table 100 on a thread until stopped; the first poll where one of
/// the `must` routes is missing or has other next hops is reported by
/// [`Watch::finish`].
struct Watch {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<usize, String>>,
}

fn watch(ns: &str, must: &[(&str, &[&str])]) -> Watch {
    let ns = ns.to_string();
    let must = expected(must);
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut polls = 0;
        while !stopped.load(Ordering::Relaxed) {
            let got = routes_now(&ns)?;
            for (prefix, hops) in &must {
                if got.get(prefix) != Some(hops) {
                    return Err(format!(
                        "{prefix} {hops:?} missing after {polls} polls; table 100: {got:?}"
                    ));
                }
            }
            polls += 1;
            std::thread::sleep(POLL);
        }
        Ok(polls)
    });
    Watch { stop, handle }
}

impl Watch {
    /// Stops the watcher; panics if a route ever disappeared.
    fn finish(self, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.join().expect("watcher thread") {
            Ok(polls) => assert!(polls > 0, "{what}: the table was never polled"),
            Err(e) => panic!("{what}: a route flapped: {e}"),
        }
    }
}

/// Waits (bounded) for a log line of `daemon` containing `needle`.
async fn expect_log(daemon: &Daemon, needle: &str) {
    assert!(
        daemon.wait_for_log(needle, WAIT).await,
        "no `{needle}` in the log within {WAIT:?}:\n{}",
        daemon.logs()
    );
}

/// `ip -n NS -4 route show table T` (any protocol).
fn raw_v4(ns: &str, t: u32) -> String {
    ip(&["-n", ns, "-4", "route", "show", "table", &t.to_string()])
}

fn has_prefix(listing: &str, prefix: &str) -> bool {
    listing
        .lines()
        .any(|l| l.split_whitespace().next() == Some(prefix))
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_client_keeps_its_routes_and_resyncs() {
    if !may_run("restarted_client_keeps_its_routes_and_resyncs") {
        return;
    }
    let env = Env::create();
    let _server = env.server("s", S1, "s", &[]);
    inject(&env.sock("s"), &[R1, R2, R6]).await;
    let args = client_args(&["--hold-time", "2"]);
    let client = env.client("c", &[S1], &args);
    wait_table(
        &env.ns,
        100,
        &[
            ("10.0.1.0/24", &["2001:db8::1"]),
            ("10.0.2.0/24", &["2001:db8::2"]),
        ],
        &[("2001:db8:a::/64", &["2001:db8::4"])],
    )
    .await;

    // From here on, R1 and R6 must never leave the kernel.
    let watcher = watch(
        &env.ns,
        &[
            ("10.0.1.0/24", &["2001:db8::1"]),
            ("2001:db8:a::/64", &["2001:db8::4"]),
        ],
    );
    // Kill the client; withdraw R2 while it is down.
    drop(client);
    withdraw(&env.sock("s"), &[R2]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        routes_now(&env.ns).unwrap().contains_key("10.0.2.0/24"),
        "a route left the kernel while no client ran"
    );

    // The same client again: the routes of the first run are kept (R2 too,
    // until the reconciliation), then R2 goes after the resync.
    let client = env.client("c", &[S1], &args);
    assert!(
        routes_now(&env.ns).unwrap().contains_key("10.0.2.0/24"),
        "the restarted client deleted a route before the reconciliation"
    );
    wait_table(
        &env.ns,
        100,
        &[("10.0.1.0/24", &["2001:db8::1"])],
        &[("2001:db8:a::/64", &["2001:db8::4"])],
    )
    .await;
    expect_log(&client, "kernel routes reconciled").await;
    let line = client
        .logs()
        .lines()
        .find(|l| l.contains("kernel routes reconciled"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("deleted=1") && line.contains("kept=2"),
        "{line}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    watcher.finish("client restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_every_server_keeps_routes_for_the_stale_time() {
    if !may_run("losing_every_server_keeps_routes_for_the_stale_time") {
        return;
    }
    let env = Env::create();
    let s1 = env.server("s1", S1, "s1", &[]);
    let s2 = env.server("s2", S2, "s2", &[]);
    inject(&env.sock("s1"), &[R1, R6]).await;
    inject(&env.sock("s2"), &[R1, R6]).await;
    let client = env.client("c", &[S1, S2], &client_args(&["--stale-time", "2"]));
    let v4: &[(&str, &[&str])] = &[("10.0.1.0/24", &["2001:db8::1"])];
    let v6: &[(&str, &[&str])] = &[("2001:db8:a::/64", &["2001:db8::4"])];
    wait_table(&env.ns, 100, v4, v6).await;
    // Both servers must have delivered (the client logs each session up).
    let deadline = Instant::now() + WAIT;
    while client.logs().matches("route server up").count() < 2 {
        assert!(Instant::now() < deadline, "{}", client.logs());
        tokio::time::sleep(POLL).await;
    }

    let watcher = watch(
        &env.ns,
        &[
            ("10.0.1.0/24", &["2001:db8::1"]),
            ("2001:db8:a::/64", &["2001:db8::4"]),
        ],
    );
    drop(s1);
    drop(s2);
    expect_log(&client, "every route server is lost").await;
    let lost = Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    watcher.finish("every server lost, within the stale time");
    wait_table(&env.ns, 100, &[], &[]).await;
    assert!(
        lost.elapsed() >= Duration::from_millis(1200),
        "routes removed before the stale time"
    );
    expect_log(&client, "stale time expired").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_back_within_the_stale_time_resyncs_without_flap() {
    if !may_run("a_server_back_within_the_stale_time_resyncs_without_flap") {
        return;
    }
    let env = Env::create();
    let s1 = env.server("s1", S1, "s1-first", &[]);
    let s2 = env.server("s2", S2, "s2", &[]);
    inject(&env.sock("s1"), &[R1, R2]).await;
    inject(&env.sock("s2"), &[R1, R2]).await;
    let client = env.client("c", &[S1, S2], &client_args(&["--stale-time", "8"]));
    wait_table(
        &env.ns,
        100,
        &[
            ("10.0.1.0/24", &["2001:db8::1"]),
            ("10.0.2.0/24", &["2001:db8::2"]),
        ],
        &[],
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while client.logs().matches("route server up").count() < 2 {
        assert!(Instant::now() < deadline, "{}", client.logs());
        tokio::time::sleep(POLL).await;
    }

    let watcher = watch(&env.ns, &[("10.0.1.0/24", &["2001:db8::1"])]);
    drop(s1);
    drop(s2);
    expect_log(&client, "every route server is lost").await;
    let lost = Instant::now();

    // Server 1 comes back on the same address with a fresh state and only R1
    // (a static route), so R2 is not confirmed any more.
    let config = env.dir.join("s1.toml");
    std::fs::write(&config, format!("[routes]\nstatic = [\"{R1}\"]\n")).unwrap();
    let config = config.display().to_string();
    let _s1 = env.server("s1", S1, "s1-second", &["--config", &config]);
    assert!(
        routes_now(&env.ns).unwrap().contains_key("10.0.2.0/24"),
        "R2 deleted before the returning server resynced"
    );
    wait_table(&env.ns, 100, &[("10.0.1.0/24", &["2001:db8::1"])], &[]).await;
    assert!(
        lost.elapsed() < Duration::from_secs(8),
        "reconciled only when the stale time expired ({:?})",
        lost.elapsed()
    );
    expect_log(&client, "a route server resynced").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    watcher.finish("server back within the stale time");
}

/// Adds the routes of an "earlier run" (and two that are not ours) before a client starts.
fn add_earlier_routes(ns: &str) {
    // Ours (protocol 254) in a mapped table: one the servers confirm with another next
    // hop, one they do not know.
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "10.0.1.0/24",
        "encap",
        "ip6",
        "dst",
        "2001:db8::7",
        "dev",
        TUN,
        "proto",
        "254",
        "table",
        "100",
    ]);
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "10.0.99.0/24",
        "dev",
        TUN,
        "proto",
        "254",
        "table",
        "100",
    ]);
    // Not ours: another protocol in a mapped table, and protocol 254 in an unmapped table.
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "10.0.98.0/24",
        "dev",
        TUN,
        "proto",
        "static",
        "table",
        "100",
    ]);
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "10.0.97.0/24",
        "dev",
        TUN,
        "proto",
        "254",
        "table",
        "200",
    ]);
}

/// Polls until table 100 has 10.0.1.0/24 via 2001:db8::1 (the server's next hop).
async fn wait_confirmed_route(ns: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = ip(&[
            "-n",
            ns,
            "-d",
            "-4",
            "route",
            "show",
            "table",
            "100",
            "10.0.1.0/24",
        ]);
        if out.contains("dst 2001:db8::1 ") && !out.contains("2001:db8::7") {
            return;
        }
        assert!(Instant::now() < deadline, "10.0.1.0/24 not replaced: {out}");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_removes_earlier_routes_at_start() {
    if !may_run("cleanup_removes_earlier_routes_at_start") {
        return;
    }
    let env = Env::create();
    let _server = env.server("s", S1, "s", &[]);
    inject(&env.sock("s"), &[R1]).await;
    add_earlier_routes(&env.ns);
    let _client = env.client(
        "c",
        &[S1, DEAD],
        &client_args(&["--cleanup", "--hold-time", "30"]),
    );
    // Deleted before the client reports running, long before any hold time.
    let t100 = raw_v4(&env.ns, 100);
    assert!(!has_prefix(&t100, "10.0.99.0/24"), "{t100}");
    assert!(
        has_prefix(&t100, "10.0.98.0/24"),
        "other protocol deleted: {t100}"
    );
    let t200 = raw_v4(&env.ns, 200);
    assert!(
        has_prefix(&t200, "10.0.97.0/24"),
        "unmapped table touched: {t200}"
    );
    wait_confirmed_route(&env.ns).await;
    let t100 = raw_v4(&env.ns, 100);
    assert!(!has_prefix(&t100, "10.0.99.0/24"), "{t100}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_cleanup_unconfirmed_route_goes_after_the_hold_time() {
    if !may_run("without_cleanup_unconfirmed_route_goes_after_the_hold_time") {
        return;
    }
    let env = Env::create();
    let _server = env.server("s", S1, "s", &[]);
    inject(&env.sock("s"), &[R1]).await;
    add_earlier_routes(&env.ns);
    let started = Instant::now();
    // DEAD never comes up: only the hold time ends the hold.
    let client = env.client("c", &[S1, DEAD], &client_args(&["--hold-time", "3"]));
    // The confirmed route is replaced in place (new next hop) at once...
    wait_confirmed_route(&env.ns).await;
    // ... the unconfirmed one stays for the hold time ...
    while started.elapsed() < Duration::from_millis(2500) {
        let t100 = raw_v4(&env.ns, 100);
        assert!(
            has_prefix(&t100, "10.0.99.0/24"),
            "unconfirmed route deleted after {:?}, before the hold time: {t100}",
            started.elapsed()
        );
        assert!(has_prefix(&t100, "10.0.1.0/24"), "{t100}");
        tokio::time::sleep(POLL).await;
    }
    // ... and goes when it expires; routes that are not ours stay.
    let deadline = Instant::now() + WAIT;
    loop {
        let t100 = raw_v4(&env.ns, 100);
        if !has_prefix(&t100, "10.0.99.0/24") {
            assert!(has_prefix(&t100, "10.0.1.0/24"), "{t100}");
            assert!(has_prefix(&t100, "10.0.98.0/24"), "{t100}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not deleted after the hold time: {t100}"
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(has_prefix(&raw_v4(&env.ns, 200), "10.0.97.0/24"));
    expect_log(&client, "hold time expired").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_role_from_the_config_file() {
    if !may_run("client_role_from_the_config_file") {
        return;
    }
    let env = Env::create();
    let _server = env.server("s", S1, "s", &[]);
    inject(&env.sock("s"), &[R1]).await;
    let config = env.dir.join("both.toml");
    std::fs::write(
        &config,
        format!(
            "[client]\nservers = [\"{S1}\"]\nsubscribe = [100]\ninstall_routes = [\"100#100\"]\n\
             tun = \"{TUN}\"\nhold_time = 2\nstale_time = 5\n"
        ),
    )
    .unwrap();
    let config = config.display().to_string();

    // Both roles in one daemon: `metalbondd --config FILE`.
    let sock = env.sock("both").display().to_string();
    let state = env.dir.join("both").display().to_string();
    let both = Daemon::spawn_in_netns(
        &env.ns,
        &[
            "--config",
            &config,
            "--listen",
            S2,
            "--api-socket",
            &sock,
            "--state-dir",
            &state,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(both.addr.to_string(), S2, "the server role does not listen");
    wait_table(&env.ns, 100, &[("10.0.1.0/24", &["2001:db8::1"])], &[]).await;
    drop(both);

    // The client role alone, a flag overriding the file: table 101 instead of 100.
    let sock = env.sock("client").display().to_string();
    let state = env.dir.join("client").display().to_string();
    let _client = Daemon::spawn_in_netns(
        &env.ns,
        &[
            "client",
            "--config",
            &config,
            "--install-routes",
            "100#101",
            "--api-socket",
            &sock,
            "--state-dir",
            &state,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_table(&env.ns, 101, &[("10.0.1.0/24", &["2001:db8::1"])], &[]).await;
}
