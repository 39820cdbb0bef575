//! No data-plane flap (issue 4): `metalbondd` client restarts, losing every
//! server (stale time), `--flush-at-start`, `--cleanup` (routes deleted at a
//! clean exit, as in the Go reference), and the client role from a config file,
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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{inject, withdraw};
use common::netns::{expected, ip_in, table, NetnsEnv, Table, Want, MAP_100, POLL, TUN, WAIT};
use common::Daemon;

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
    [MAP_100, extra].concat()
}

/// Table 100, both families, as prefix -> next hops.
fn routes_now(ns: &str) -> Result<Table, String> {
    let mut all = table(ns, false, 100, TUN)?;
    all.extend(table(ns, true, 100, TUN)?);
    Ok(all)
}

/// Polls table 100 on a thread until stopped; the first poll where one of
/// the `must` routes is missing or has other next hops is reported by
/// [`Watch::finish`].
struct Watch {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<usize, String>>,
}

fn watch(ns: &str, must: Want) -> Watch {
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
    ip_in(ns, &format!("-4 route show table {t}"))
}

fn has_prefix(listing: &str, prefix: &str) -> bool {
    listing
        .lines()
        .any(|l| l.split_whitespace().next() == Some(prefix))
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_client_keeps_its_routes_and_resyncs() {
    let Some(env) = NetnsEnv::for_test("restarted_client_keeps_its_routes_and_resyncs") else {
        return;
    };
    let _server = env.server_with("s", S1, "s", &[]);
    inject(&env.sock("s"), &[R1, R2, R6]).await;
    let args = client_args(&["--hold-time", "2"]);
    let client = env.client("c", &[S1], &args);
    env.wait_table(
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
    // until the reconciliation), then R2 goes after the resync. (With SYNC
    // the reconciliation may be over by the time the client reports
    // running: that R2 goes only by it is what the log line below says.)
    let client = env.client("c", &[S1], &args);
    env.wait_table(
        100,
        &[("10.0.1.0/24", &["2001:db8::1"])],
        &[("2001:db8:a::/64", &["2001:db8::4"])],
    )
    .await;
    expect_log(&client, "kernel routes reconciled").await;
    let line = reconcile_log_line(&client);
    assert!(
        line.contains("deleted=1") && line.contains("kept=2"),
        "{line}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    watcher.finish("client restart");
}

/// With SYNC (our server and our agent negotiate it, PROTOCOL.md section 8)
/// a restarted client reconciles as soon as the server's dump is complete,
/// even while updates of the subscribed VNI keep coming (which keeps the
/// "quiet for a second" fallback of servers without SYNC from ever firing):
/// a stale route of the earlier run goes long before the hold time.
#[tokio::test(flavor = "multi_thread")]
async fn restarted_client_with_sync_reconciles_long_before_the_hold_time() {
    let Some(env) =
        NetnsEnv::for_test("restarted_client_with_sync_reconciles_long_before_the_hold_time")
    else {
        return;
    };
    const HOLD_SECS: u64 = 60;
    let _server = env.server_with("s", S1, "s", &[]);
    inject(&env.sock("s"), &[R1, R2]).await;
    let hold = HOLD_SECS.to_string();
    let args = client_args(&["--hold-time", &hold]);
    let client = env.client("c", &[S1], &args);
    env.wait_table(
        100,
        &[
            ("10.0.1.0/24", &["2001:db8::1"]),
            ("10.0.2.0/24", &["2001:db8::2"]),
        ],
        &[],
    )
    .await;
    drop(client);
    withdraw(&env.sock("s"), &[R2]).await;

    // Churn in VNI 100 every 150 ms for the rest of the test.
    let churn_stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let sock = env.sock("s");
        let stop = churn_stop.clone();
        tokio::spawn(async move {
            const R9: &str = "100#10.0.9.0/24@2001:db8::9";
            while !stop.load(Ordering::Relaxed) {
                inject(&sock, &[R9]).await;
                tokio::time::sleep(Duration::from_millis(75)).await;
                withdraw(&sock, &[R9]).await;
                tokio::time::sleep(Duration::from_millis(75)).await;
            }
        })
    };

    let restarted = Instant::now();
    let client = env.client("c", &[S1], &args);
    // R2 (withdrawn while no client ran) is held, then goes at the SYNC.
    let deadline = restarted + WAIT;
    while routes_now(&env.ns).unwrap().contains_key("10.0.2.0/24") {
        assert!(
            Instant::now() < deadline,
            "stale route still there after {WAIT:?} (hold time {HOLD_SECS} s):\n{}",
            client.logs()
        );
        tokio::time::sleep(POLL).await;
    }
    let took = restarted.elapsed();
    churn_stop.store(true, Ordering::Relaxed);
    churn.await.unwrap();
    assert!(
        took < Duration::from_secs(HOLD_SECS / 6),
        "reconciled after {took:?}, hold time {HOLD_SECS} s"
    );
    assert!(routes_now(&env.ns).unwrap().contains_key("10.0.1.0/24"));
    expect_log(&client, "sync=true").await;
    let line = reconcile_log_line(&client);
    assert!(
        line.contains("every route server sent SYNC") && line.contains("deleted=1"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_every_server_keeps_routes_for_the_stale_time() {
    let Some(env) = NetnsEnv::for_test("losing_every_server_keeps_routes_for_the_stale_time")
    else {
        return;
    };
    let s1 = env.server_with("s1", S1, "s1", &[]);
    let s2 = env.server_with("s2", S2, "s2", &[]);
    inject(&env.sock("s1"), &[R1, R6]).await;
    inject(&env.sock("s2"), &[R1, R6]).await;
    let client = env.client("c", &[S1, S2], &client_args(&["--stale-time", "2"]));
    let v4: &[(&str, &[&str])] = &[("10.0.1.0/24", &["2001:db8::1"])];
    let v6: &[(&str, &[&str])] = &[("2001:db8:a::/64", &["2001:db8::4"])];
    env.wait_table(100, v4, v6).await;
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
    env.wait_table(100, &[], &[]).await;
    assert!(
        lost.elapsed() >= Duration::from_millis(1200),
        "routes removed before the stale time"
    );
    expect_log(&client, "stale time expired").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_back_within_the_stale_time_resyncs_without_flap() {
    let Some(env) = NetnsEnv::for_test("a_server_back_within_the_stale_time_resyncs_without_flap")
    else {
        return;
    };
    let s1 = env.server_with("s1", S1, "s1-first", &[]);
    let s2 = env.server_with("s2", S2, "s2", &[]);
    inject(&env.sock("s1"), &[R1, R2]).await;
    inject(&env.sock("s2"), &[R1, R2]).await;
    let client = env.client("c", &[S1, S2], &client_args(&["--stale-time", "8"]));
    env.wait_table(
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
    let _s1 = env.server_with("s1", S1, "s1-second", &["--config", &config]);
    assert!(
        routes_now(&env.ns).unwrap().contains_key("10.0.2.0/24"),
        "R2 deleted before the returning server resynced"
    );
    env.wait_table(100, &[("10.0.1.0/24", &["2001:db8::1"])], &[])
        .await;
    assert!(
        lost.elapsed() < Duration::from_secs(8),
        "reconciled only when the stale time expired ({:?})",
        lost.elapsed()
    );
    // Our server sends SYNC: the reconciliation runs at it.
    expect_log(&client, "a route server sent SYNC").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    watcher.finish("server back within the stale time");
}

/// Adds the routes of an "earlier run" (and two that are not ours) before a client starts.
fn add_earlier_routes(ns: &str) {
    // Ours (protocol 254) in a mapped table: one the servers confirm with another next
    // hop, one they do not know.
    ip_in(
        ns,
        &format!("route add 10.0.1.0/24 encap ip6 dst 2001:db8::7 dev {TUN} proto 254 table 100"),
    );
    ip_in(
        ns,
        &format!("route add 10.0.99.0/24 dev {TUN} proto 254 table 100"),
    );
    // Not ours: another protocol in a mapped table, and protocol 254 in an unmapped table.
    ip_in(
        ns,
        &format!("route add 10.0.98.0/24 dev {TUN} proto static table 100"),
    );
    ip_in(
        ns,
        &format!("route add 10.0.97.0/24 dev {TUN} proto 254 table 200"),
    );
}

/// Polls until table 100 has 10.0.1.0/24 via 2001:db8::1 (the server's next hop).
async fn wait_confirmed_route(ns: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = ip_in(ns, "-d -4 route show table 100 10.0.1.0/24");
        if out.contains("dst 2001:db8::1 ") && !out.contains("2001:db8::7") {
            return;
        }
        assert!(Instant::now() < deadline, "10.0.1.0/24 not replaced: {out}");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn flush_at_start_removes_earlier_routes_at_start() {
    let Some(env) = NetnsEnv::for_test("flush_at_start_removes_earlier_routes_at_start") else {
        return;
    };
    let _server = env.server_with("s", S1, "s", &[]);
    inject(&env.sock("s"), &[R1]).await;
    add_earlier_routes(&env.ns);
    let _client = env.client(
        "c",
        &[S1, DEAD],
        &client_args(&["--flush-at-start", "--hold-time", "30"]),
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

/// Waits (bounded) until IPv4 table 100 lists every prefix of `want`.
async fn wait_v4_prefixes(ns: &str, want: &[&str]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let t100 = raw_v4(ns, 100);
        if want.iter().all(|p| has_prefix(&t100, p)) {
            return;
        }
        assert!(Instant::now() < deadline, "{want:?} not all in: {t100}");
        tokio::time::sleep(POLL).await;
    }
}

/// A client with the routes of two servers' VNI 100 in table 100 (one
/// route the server confirmed over an earlier run's, one received, one
/// held from an earlier run) exits on `signal`. With `--cleanup` (the Go
/// reference's "Cleanup routes upon exit") every protocol-254 route of
/// the mapped table is gone once it exited, and nothing else; without it
/// they all stay for the next start. Skipped (see [`NetnsEnv::for_test`])
/// as `test`.
async fn exit_on(test: &str, signal: i32, cleanup: bool) {
    let Some(env) = NetnsEnv::for_test(test) else {
        return;
    };
    let _server = env.server_with("s", S1, "s", &[]);
    inject(&env.sock("s"), &[R1, R2]).await;
    add_earlier_routes(&env.ns);
    let mut extra = vec!["--hold-time", "30"];
    if cleanup {
        extra.push("--cleanup");
    }
    // DEAD keeps the earlier run's unconfirmed route held.
    let client = env.client("c", &[S1, DEAD], &client_args(&extra));
    wait_confirmed_route(&env.ns).await;
    let ours = ["10.0.1.0/24", "10.0.2.0/24", "10.0.99.0/24"];
    wait_v4_prefixes(&env.ns, &ours).await;

    let status = client.stop_with(signal, WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "client did not exit cleanly on signal {signal}: {status:?}; log:\n{}",
        client.logs()
    );
    let t100 = raw_v4(&env.ns, 100);
    for prefix in ours {
        assert_eq!(
            has_prefix(&t100, prefix),
            !cleanup,
            "cleanup={cleanup} signal={signal}: {prefix} in table 100: {t100}"
        );
    }
    assert!(
        has_prefix(&t100, "10.0.98.0/24"),
        "another protocol's route deleted: {t100}"
    );
    let t200 = raw_v4(&env.ns, 200);
    assert!(
        has_prefix(&t200, "10.0.97.0/24"),
        "unmapped table touched: {t200}"
    );
    if cleanup {
        assert!(
            client.logs().contains("cleanup at exit"),
            "{}",
            client.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_deletes_our_routes_at_sigterm() {
    exit_on("cleanup_deletes_our_routes_at_sigterm", libc::SIGTERM, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_deletes_our_routes_at_sigint() {
    exit_on("cleanup_deletes_our_routes_at_sigint", libc::SIGINT, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_cleanup_routes_stay_at_sigterm() {
    exit_on(
        "without_cleanup_routes_stay_at_sigterm",
        libc::SIGTERM,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_cleanup_routes_stay_at_sigint() {
    exit_on("without_cleanup_routes_stay_at_sigint", libc::SIGINT, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_cleanup_unconfirmed_route_goes_after_the_hold_time() {
    let Some(env) =
        NetnsEnv::for_test("without_cleanup_unconfirmed_route_goes_after_the_hold_time")
    else {
        return;
    };
    let _server = env.server_with("s", S1, "s", &[]);
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
    let Some(env) = NetnsEnv::for_test("client_role_from_the_config_file") else {
        return;
    };
    let _server = env.server_with("s", S1, "s", &[]);
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
    env.wait_table(100, &[("10.0.1.0/24", &["2001:db8::1"])], &[])
        .await;
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
    env.wait_table(101, &[("10.0.1.0/24", &["2001:db8::1"])], &[])
        .await;
}

/// The agent's "kernel routes reconciled" log line (empty if there is none).
fn reconcile_log_line(client: &Daemon) -> String {
    client
        .logs()
        .lines()
        .find(|l| l.contains("kernel routes reconciled"))
        .unwrap_or_default()
        .to_string()
}
