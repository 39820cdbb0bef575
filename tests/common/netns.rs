//! Network-namespace harness for the hypervisor-role tests: skip rules,
//! a namespace with veth pairs standing in for tunnel devices, daemons
//! started inside it, and kernel tables read back with `ip route`.
//!
//! Needs root and `ip` (iproute2). Without them a test prints why it was
//! skipped and passes, unless `CI=true`, where it fails instead. The kernel
//! gives no event we can await for a route change, so tables are polled
//! every [`POLL`] up to [`WAIT`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{unique_temp_dir, Daemon};

/// Deadline for a kernel table to reach the expected state.
pub const WAIT: Duration = Duration::from_secs(10);
/// Poll interval of `ip route`.
pub const POLL: Duration = Duration::from_millis(20);

/// The tunnel device of the standard setup: one end of the veth pair [`VETHS`].
pub const TUN: &str = "mbt0";
/// The standard setup's veth pair: [`TUN`] and its peer.
pub const VETHS: &[(&str, &str)] = &[(TUN, "mbt1")];
/// Client flags of the standard mapping: VNI 100 subscribed and installed
/// into table 100 via [`TUN`].
pub const MAP_100: &[&str] = &[
    "--subscribe",
    "100",
    "--install-routes",
    "100#100",
    "--tun",
    TUN,
];

/// Why the namespace tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
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
pub fn may_run(test: &str) -> bool {
    let Some(reason) = skip_reason() else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run with CI=true: {reason}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
    false
}

/// Runs `ip ARGS`; panics with its stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip -n NS COMMAND` (COMMAND split at whitespace, e.g.
/// `"route add 10.0.0.0/24 dev mbt0 table 100"`); panics with its stderr on
/// failure.
pub fn ip_in(ns: &str, command: &str) -> String {
    let mut args = vec!["-n", ns];
    args.extend(command.split_whitespace());
    ip(&args)
}

/// A network namespace with `lo` up and the given veth pairs up, plus a
/// temporary directory for the daemons' sockets and state; both removed on
/// drop (the namespace with `ip netns del`, which also deletes its devices).
pub struct NetnsEnv {
    pub ns: String,
    pub dir: PathBuf,
}

impl NetnsEnv {
    /// The namespace of test `test` with the standard veth pair, or `None`
    /// (after [`may_run`] said why) when the test must be skipped.
    pub fn for_test(test: &str) -> Option<NetnsEnv> {
        Self::for_test_with(test, VETHS)
    }

    /// Like [`NetnsEnv::for_test`], with the veth pairs `veths`.
    pub fn for_test_with(test: &str, veths: &[(&str, &str)]) -> Option<NetnsEnv> {
        may_run(test).then(|| Self::create(veths))
    }

    /// Creates the namespace with one veth pair per `(name, peer)`.
    pub fn create(veths: &[(&str, &str)]) -> NetnsEnv {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let ns = format!(
            "mbt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &ns]);
        // From here on, drop deletes the namespace even if a step below panics.
        let env = NetnsEnv {
            ns,
            dir: unique_temp_dir(),
        };
        let n = env.ns.as_str();
        for (dev, peer) in veths {
            ip(&[
                "-n", n, "link", "add", dev, "type", "veth", "peer", "name", peer,
            ]);
            ip(&["-n", n, "link", "set", dev, "up"]);
            ip(&["-n", n, "link", "set", peer, "up"]);
        }
        ip(&["-n", n, "link", "set", "lo", "up"]);
        env
    }

    /// Polls table `t` of the namespace (routes via [`TUN`]) until it holds
    /// exactly `v4` and `v6`, like [`wait_table`].
    pub async fn wait_table(&self, t: u32, v4: Want<'_>, v6: Want<'_>) {
        wait_table(&self.ns, t, TUN, v4, v6).await
    }

    /// `DIR/NAME.sock`.
    pub fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    /// A route server inside the namespace on `[::1]:0`, API socket `DIR/NAME.sock`.
    pub fn server(&self, name: &str) -> Daemon {
        self.server_with(name, "[::1]:0", name, &[])
    }

    /// A route server inside the namespace on `listen`, API socket
    /// `DIR/NAME.sock`, state in `DIR/STATE`, with `extra` flags.
    pub fn server_with(&self, name: &str, listen: &str, state: &str, extra: &[&str]) -> Daemon {
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

    /// A client inside the namespace connected to `servers`, with `args`,
    /// API socket `DIR/NAME.sock` and state directory `DIR/NAME`.
    pub fn client<S: ToString>(&self, name: &str, servers: &[S], args: &[&str]) -> Daemon {
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

/// Runs `body` on a new thread that has entered the network namespace `ns`
/// (only that thread: `setns(CLONE_NEWNET)` is per thread), with its own
/// current-thread tokio runtime. Sockets it opens live in the namespace;
/// processes it starts inherit it. A panic in `body` is re-raised here.
pub fn run_in_netns<F, Fut>(ns: &str, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let path = format!("/var/run/netns/{ns}");
    let handle = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns with a valid namespace fd; it affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(body());
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

impl Drop for NetnsEnv {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Table contents: prefix -> encap destinations of its next hops, in kernel order.
pub type Table = BTreeMap<String, Vec<String>>;

/// The routes of `ip -d -4|-6 route show table T` as prefix -> next hops,
/// checking each line precisely: protocol 254, `encap ip6 ... dst <nh>`,
/// `dev <dev>`; a single next hop is a plain route without gateway, several
/// are `nexthop` lines.
pub fn table(ns: &str, v6: bool, table: u32, dev: &str) -> Result<Table, String> {
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
    let dev_word = format!(" dev {dev}");
    let dst_of = |l: &str| -> Result<String, String> {
        if !l.contains("encap ip6 ") {
            return Err(format!("no `encap ip6` in {l:?}"));
        }
        if !l.contains(&dev_word) {
            return Err(format!("no `dev {dev}` in {l:?}"));
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

/// Routes as written in a test: `(prefix, next hops in expected order)`.
pub type Want<'a> = &'a [(&'a str, &'a [&'a str])];

/// A [`Table`] from its written form.
pub fn expected(routes: Want) -> Table {
    routes
        .iter()
        .map(|(p, h)| (p.to_string(), h.iter().map(|s| s.to_string()).collect()))
        .collect()
}

/// Polls table `t` (IPv4 and IPv6, routes via `dev`) until it holds exactly
/// `v4` and `v6` (next hops in this order); panics with the last state at
/// the deadline.
pub async fn wait_table(ns: &str, t: u32, dev: &str, v4: Want<'_>, v6: Want<'_>) {
    let (want4, want6) = (expected(v4), expected(v6));
    let deadline = Instant::now() + WAIT;
    loop {
        let got = (table(ns, false, t, dev), table(ns, true, t, dev));
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

/// Every route of every table of the namespace, both families.
pub fn all_routes(ns: &str) -> String {
    let v4 = ip(&["-n", ns, "-4", "route", "show", "table", "all"]);
    let v6 = ip(&["-n", ns, "-6", "route", "show", "table", "all"]);
    format!("{v4}{v6}")
}
