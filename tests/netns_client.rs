//! The hypervisor role end to end: real `metalbondd` server and client
//! processes inside a network namespace, routes injected on the server
//! through its API, kernel routes read back with `ip route`.
//!
//! Needs root and `ip` (iproute2). Without them a test prints why it was
//! skipped and passes, unless `CI=true`, where it fails instead. Each test
//! creates its own namespace (deleted on drop) with `lo` up and a veth pair
//! `mbt0`/`mbt1` standing in for the tunnel device. The daemons run inside
//! it (`ip netns exec`); their Unix API sockets are reachable from the test
//! process, which stays in the host namespace. The kernel gives no event we
//! can await for a route change, so the tables are polled every 20 ms up to
//! a deadline.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::api::{self, api_route, list_all};
use common::{unique_temp_dir, Daemon, QUIET};
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

    /// A route server inside the namespace on `[::1]:0`, API socket `DIR/NAME.sock`.
    fn server(&self, name: &str) -> Daemon {
        let sock = self.sock(name).display().to_string();
        let state = self.dir.join(name).display().to_string();
        Daemon::spawn_in_netns(
            &self.ns,
            &[
                "server",
                "--listen",
                "[::1]:0",
                "--api-socket",
                &sock,
                "--state-dir",
                &state,
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A client inside the namespace connected to `servers`, with `args`.
    fn client(&self, name: &str, servers: &[&Daemon], args: &[&str]) -> Daemon {
        let mut full: Vec<String> = vec!["client".into()];
        for s in servers {
            full.extend(["--server".into(), s.addr.to_string()]);
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

/// The client flags of the standard setup: VNI 100 into table 100 via mbt0,
/// announcing 10.9.9.0/24.
const CLIENT_ARGS: &[&str] = &[
    "--subscribe",
    "100",
    "--install-routes",
    "100#100",
    "--tun",
    TUN,
    "--announce",
    "100#10.9.9.0/24@2001:db8::99",
];

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

/// Every route of every table of the namespace, both families (to check that nothing was
/// installed anywhere).
fn all_routes(ns: &str) -> String {
    let v4 = ip(&["-n", ns, "-4", "route", "show", "table", "all"]);
    let v6 = ip(&["-n", ns, "-6", "route", "show", "table", "all"]);
    format!("{v4}{v6}")
}

#[tokio::test(flavor = "multi_thread")]
async fn std_nat_lb_ipv4_ipv6_and_ecmp_installed_and_withdrawn() {
    if !may_run("std_nat_lb_ipv4_ipv6_and_ecmp_installed_and_withdrawn") {
        return;
    }
    let env = Env::create();
    let server = env.server("s");
    let _client = env.client("c", &[&server], CLIENT_ARGS);
    let routes = [
        "100#10.0.1.0/24@2001:db8::1",
        "100#10.0.2.0/24@2001:db8::2#nat#1024#2047",
        "100#10.0.3.0/24@2001:db8::3#lb",
        "100#10.0.4.0/24@2001:db8::12",
        "100#10.0.4.0/24@2001:db8::11",
        "100#2001:db8:a::/64@2001:db8::4",
        "100#2001:db8:b::/64@2001:db8::5#nat#0#1023",
        "100#2001:db8:c::/64@2001:db8::6#lb",
        "100#2001:db8:d::/64@2001:db8::22",
        "100#2001:db8:d::/64@2001:db8::21",
    ];
    inject(&env.sock("s"), &routes).await;
    wait_table(
        &env.ns,
        100,
        &[
            ("10.0.1.0/24", &["2001:db8::1"]),
            ("10.0.2.0/24", &["2001:db8::2"]),
            ("10.0.3.0/24", &["2001:db8::3"]),
            ("10.0.4.0/24", &["2001:db8::11", "2001:db8::12"]),
        ],
        &[
            ("2001:db8:a::/64", &["2001:db8::4"]),
            ("2001:db8:b::/64", &["2001:db8::5"]),
            ("2001:db8:c::/64", &["2001:db8::6"]),
            ("2001:db8:d::/64", &["2001:db8::21", "2001:db8::22"]),
        ],
    )
    .await;
    // Nothing leaks into the main table.
    let main = ip(&["-n", &env.ns, "route", "show", "table", "main"]);
    assert!(!main.contains("10.0.1.0"), "{main}");

    // ECMP shrinks to one next hop: a plain route again.
    withdraw(
        &env.sock("s"),
        &[
            "100#10.0.4.0/24@2001:db8::11",
            "100#2001:db8:d::/64@2001:db8::22",
        ],
    )
    .await;
    wait_table(
        &env.ns,
        100,
        &[
            ("10.0.1.0/24", &["2001:db8::1"]),
            ("10.0.2.0/24", &["2001:db8::2"]),
            ("10.0.3.0/24", &["2001:db8::3"]),
            ("10.0.4.0/24", &["2001:db8::12"]),
        ],
        &[
            ("2001:db8:a::/64", &["2001:db8::4"]),
            ("2001:db8:b::/64", &["2001:db8::5"]),
            ("2001:db8:c::/64", &["2001:db8::6"]),
            ("2001:db8:d::/64", &["2001:db8::21"]),
        ],
    )
    .await;

    // The last next hop gone deletes the route; withdrawing everything empties the table.
    withdraw(
        &env.sock("s"),
        &[
            "100#10.0.4.0/24@2001:db8::12",
            "100#2001:db8:d::/64@2001:db8::21",
        ],
    )
    .await;
    wait_table(
        &env.ns,
        100,
        &[
            ("10.0.1.0/24", &["2001:db8::1"]),
            ("10.0.2.0/24", &["2001:db8::2"]),
            ("10.0.3.0/24", &["2001:db8::3"]),
        ],
        &[
            ("2001:db8:a::/64", &["2001:db8::4"]),
            ("2001:db8:b::/64", &["2001:db8::5"]),
            ("2001:db8:c::/64", &["2001:db8::6"]),
        ],
    )
    .await;
    withdraw(
        &env.sock("s"),
        &[
            "100#10.0.1.0/24@2001:db8::1",
            "100#10.0.2.0/24@2001:db8::2#nat#1024#2047",
            "100#10.0.3.0/24@2001:db8::3#lb",
            "100#2001:db8:a::/64@2001:db8::4",
            "100#2001:db8:b::/64@2001:db8::5#nat#0#1023",
            "100#2001:db8:c::/64@2001:db8::6#lb",
        ],
    )
    .await;
    wait_table(&env.ns, 100, &[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn own_announcement_reaches_server_and_is_not_installed() {
    if !may_run("own_announcement_reaches_server_and_is_not_installed") {
        return;
    }
    let env = Env::create();
    let server = env.server("s");
    let _client = env.client("c", &[&server], CLIENT_ARGS);

    // The server lists the client's announcement, announced by a session (the client's).
    let mut api = api::connect(&env.sock("s")).await;
    let filter = pb::RouteFilter {
        vni: Some(100),
        prefix: "10.9.9.0/24".into(),
        ..Default::default()
    };
    let deadline = Instant::now() + WAIT;
    let entry = loop {
        let entries = list_all(&mut api, Some(filter.clone()), 100).await;
        if let Some(e) = entries.into_iter().next() {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "the client's announcement did not reach the server within {WAIT:?}"
        );
        tokio::time::sleep(POLL).await;
    };
    let route = entry.route.as_ref().unwrap();
    assert_eq!(route.next_hop.as_ref().unwrap().address, "2001:db8::99");
    assert_eq!(entry.announcers.len(), 1, "{entry:?}");
    assert!(
        matches!(entry.announcers[0].kind, Some(pb::announcer::Kind::Peer(_))),
        "not announced by a session: {entry:?}"
    );

    // Another announcer of the same destination on the server: the client receives it but
    // must not install it (loop prevention). A later route proves it was processed.
    inject(&env.sock("s"), &["100#10.9.9.0/24@2001:db8::5"]).await;
    inject(&env.sock("s"), &["100#10.0.8.0/24@2001:db8::8"]).await;
    wait_table(&env.ns, 100, &[("10.0.8.0/24", &["2001:db8::8"])], &[]).await;
    tokio::time::sleep(QUIET).await;
    let all = all_routes(&env.ns);
    assert!(
        !all.contains("10.9.9.0"),
        "own destination installed:\n{all}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unmapped_vni_is_not_installed() {
    if !may_run("unmapped_vni_is_not_installed") {
        return;
    }
    let env = Env::create();
    let server = env.server("s");
    let mut args = CLIENT_ARGS.to_vec();
    args.extend(["--subscribe", "200"]);
    let _client = env.client("c", &[&server], &args);
    // VNI 200 first, then VNI 100: once the VNI 100 route is installed, the VNI 200 ones
    // were processed (one session delivers in order).
    inject(
        &env.sock("s"),
        &[
            "200#10.0.20.0/24@2001:db8::20",
            "200#2001:db8:20::/64@2001:db8::20",
        ],
    )
    .await;
    inject(&env.sock("s"), &["100#10.0.8.0/24@2001:db8::8"]).await;
    wait_table(&env.ns, 100, &[("10.0.8.0/24", &["2001:db8::8"])], &[]).await;
    tokio::time::sleep(QUIET).await;
    let all = all_routes(&env.ns);
    assert!(
        !all.contains("10.0.20.0") && !all.contains("2001:db8:20::"),
        "route of an unmapped VNI installed:\n{all}"
    );
    wait_table(&env.ns, 100, &[("10.0.8.0/24", &["2001:db8::8"])], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_losing_one_keeps_the_route() {
    if !may_run("two_servers_losing_one_keeps_the_route") {
        return;
    }
    let env = Env::create();
    let s1 = env.server("s1");
    let s2 = env.server("s2");
    let client = env.client("c", &[&s1, &s2], CLIENT_ARGS);
    let r = "100#10.0.5.0/24@2001:db8::5";
    let r6 = "100#2001:db8:5::/64@2001:db8::5";

    // Server 1 provides the routes first...
    inject(&env.sock("s1"), &[r, r6]).await;
    let v4: &[(&str, &[&str])] = &[("10.0.5.0/24", &["2001:db8::5"])];
    let v6: &[(&str, &[&str])] = &[("2001:db8:5::/64", &["2001:db8::5"])];
    wait_table(&env.ns, 100, v4, v6).await;
    // ... then server 2, followed by a marker that proves the client got them from it too.
    inject(&env.sock("s2"), &[r, r6]).await;
    inject(&env.sock("s2"), &["100#10.0.6.0/24@2001:db8::6"]).await;
    let v4_marked: &[(&str, &[&str])] = &[
        ("10.0.5.0/24", &["2001:db8::5"]),
        ("10.0.6.0/24", &["2001:db8::6"]),
    ];
    wait_table(&env.ns, 100, v4_marked, v6).await;

    // Kill server 1: the routes never leave the kernel, before or after the client saw it go.
    drop(s1);
    let deadline = Instant::now() + WAIT;
    let mut down_seen_at = None;
    loop {
        let got4 = table(&env.ns, false, 100).unwrap();
        let got6 = table(&env.ns, true, 100).unwrap();
        assert_eq!(
            got4,
            expected(v4_marked),
            "IPv4 routes changed after a server was lost"
        );
        assert_eq!(
            got6,
            expected(v6),
            "IPv6 routes changed after a server was lost"
        );
        match down_seen_at {
            None if client.logs().contains("route server down") => {
                down_seen_at = Some(Instant::now())
            }
            Some(t) if t.elapsed() >= QUIET => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the client did not log `route server down` within {WAIT:?}; log:\n{}",
            client.logs()
        );
        tokio::time::sleep(POLL).await;
    }

    // Withdrawn on the remaining server: gone.
    withdraw(&env.sock("s2"), &[r, r6]).await;
    wait_table(&env.ns, 100, &[("10.0.6.0/24", &["2001:db8::6"])], &[]).await;
}

/// Runs `metalbondd ARGS` inside `ns` to its exit (bounded); returns whether it succeeded
/// and its stderr.
fn run_to_exit(ns: &str, args: &[&str]) -> (bool, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_metalbondd")])
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start metalbondd");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reap");
            panic!(
                "metalbondd {args:?} still running after {WAIT:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(POLL);
    }
    let out = child.wait_with_output().expect("reap");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_table_and_missing_tunnel_device_are_startup_errors() {
    if !may_run("bad_table_and_missing_tunnel_device_are_startup_errors") {
        return;
    }
    let env = Env::create();
    let sock = env.sock("c").display().to_string();
    let state = env.dir.join("c").display().to_string();
    let common = [
        "client",
        "--server",
        "[::1]:4711",
        "--subscribe",
        "100",
        "--api-socket",
        &sock,
        "--state-dir",
        &state,
    ];

    let mut args = common.to_vec();
    args.extend(["--install-routes", "100#0", "--tun", TUN]);
    let (ok, stderr) = run_to_exit(&env.ns, &args);
    assert!(!ok, "table 0 accepted; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not a one-line error:\n{stderr}");
    assert!(
        lines[0].contains("100#0") && lines[0].contains("table 0"),
        "{stderr}"
    );

    let mut args = common.to_vec();
    args.extend(["--install-routes", "100#100", "--tun", "nosuch0"]);
    let (ok, stderr) = run_to_exit(&env.ns, &args);
    assert!(!ok, "missing tunnel device accepted; stderr:\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "expected one error line:\n{stderr}");
    assert!(
        errors[0].contains("nosuch0") && errors[0].contains("does not exist"),
        "{stderr}"
    );
    assert!(!stderr.contains("metalbondd running"), "{stderr}");
    assert!(!Path::new(&sock).exists(), "API socket left behind");
}
