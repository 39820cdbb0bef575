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

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::api::{self, inject, list_all, withdraw};
use common::netns::{all_routes, expected, ip, table, NetnsEnv, MAP_100, POLL, TUN, WAIT};
use common::QUIET;
use metalbond_proto::api as pb;

/// The client flags of the standard setup: [`MAP_100`], announcing
/// 10.9.9.0/24.
fn client_args() -> Vec<&'static str> {
    [MAP_100, &["--announce", "100#10.9.9.0/24@2001:db8::99"]].concat()
}

#[tokio::test(flavor = "multi_thread")]
async fn std_nat_lb_ipv4_ipv6_and_ecmp_installed_and_withdrawn() {
    let Some(env) = NetnsEnv::for_test("std_nat_lb_ipv4_ipv6_and_ecmp_installed_and_withdrawn")
    else {
        return;
    };
    let server = env.server("s");
    let _client = env.client("c", &[server.addr], &client_args());
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
    env.wait_table(
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
    env.wait_table(
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
    env.wait_table(
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
    env.wait_table(100, &[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn own_announcement_reaches_server_and_is_not_installed() {
    let Some(env) = NetnsEnv::for_test("own_announcement_reaches_server_and_is_not_installed")
    else {
        return;
    };
    let server = env.server("s");
    let _client = env.client("c", &[server.addr], &client_args());

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
    env.wait_table(100, &[("10.0.8.0/24", &["2001:db8::8"])], &[])
        .await;
    tokio::time::sleep(QUIET).await;
    let all = all_routes(&env.ns);
    assert!(
        !all.contains("10.9.9.0"),
        "own destination installed:\n{all}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unmapped_vni_is_not_installed() {
    let Some(env) = NetnsEnv::for_test("unmapped_vni_is_not_installed") else {
        return;
    };
    let server = env.server("s");
    let mut args = client_args();
    args.extend(["--subscribe", "200"]);
    let _client = env.client("c", &[server.addr], &args);
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
    env.wait_table(100, &[("10.0.8.0/24", &["2001:db8::8"])], &[])
        .await;
    tokio::time::sleep(QUIET).await;
    let all = all_routes(&env.ns);
    assert!(
        !all.contains("10.0.20.0") && !all.contains("2001:db8:20::"),
        "route of an unmapped VNI installed:\n{all}"
    );
    env.wait_table(100, &[("10.0.8.0/24", &["2001:db8::8"])], &[])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_losing_one_keeps_the_route() {
    let Some(env) = NetnsEnv::for_test("two_servers_losing_one_keeps_the_route") else {
        return;
    };
    let s1 = env.server("s1");
    let s2 = env.server("s2");
    let client = env.client("c", &[s1.addr, s2.addr], &client_args());
    let r = "100#10.0.5.0/24@2001:db8::5";
    let r6 = "100#2001:db8:5::/64@2001:db8::5";

    // Server 1 provides the routes first...
    inject(&env.sock("s1"), &[r, r6]).await;
    let v4: &[(&str, &[&str])] = &[("10.0.5.0/24", &["2001:db8::5"])];
    let v6: &[(&str, &[&str])] = &[("2001:db8:5::/64", &["2001:db8::5"])];
    env.wait_table(100, v4, v6).await;
    // ... then server 2, followed by a marker that proves the client got them from it too.
    inject(&env.sock("s2"), &[r, r6]).await;
    inject(&env.sock("s2"), &["100#10.0.6.0/24@2001:db8::6"]).await;
    let v4_marked: &[(&str, &[&str])] = &[
        ("10.0.5.0/24", &["2001:db8::5"]),
        ("10.0.6.0/24", &["2001:db8::6"]),
    ];
    env.wait_table(100, v4_marked, v6).await;

    // Kill server 1: the routes never leave the kernel, before or after the client saw it go.
    drop(s1);
    let deadline = Instant::now() + WAIT;
    let mut down_seen_at = None;
    loop {
        let got4 = table(&env.ns, false, 100, TUN).unwrap();
        let got6 = table(&env.ns, true, 100, TUN).unwrap();
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
    env.wait_table(100, &[("10.0.6.0/24", &["2001:db8::6"])], &[])
        .await;
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
    let Some(env) = NetnsEnv::for_test("bad_table_and_missing_tunnel_device_are_startup_errors")
    else {
        return;
    };
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
