//! `[client]` changes on reload, end to end (issue 12, ADR 0023): a real
//! `metalbondd client --config FILE` connected to two real `metalbondd
//! server`s over TCP; the file is edited and reloaded (SIGHUP to the PID,
//! then `mbctl reload`), and the client's API, its log and a raw MetalBond
//! subscriber of the first server show that exactly the difference was
//! applied: the unchanged server keeps its session, a new one gets one, a
//! removed one's session closes and its routes go, subscriptions follow,
//! and only the changed announcements reach the wire.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::api::{connect, inject, route_text, Api};
use common::mbctl::{mbctl_bin, run};
use common::*;
use metalbond_proto::api as pb;

/// Routes the servers hold (injected through their APIs), one per
/// (server, VNI).
const A100: &str = "100#10.1.0.0/24@2001:db8::a1";
const A200: &str = "200#10.2.0.0/24@2001:db8::a2";
const B100: &str = "100#10.1.1.0/24@2001:db8::b1";
const B200: &str = "200#10.2.1.0/24@2001:db8::b2";

/// Routes the client announces from its file (owner `config`).
const C1: &str = "100#10.9.1.0/24@2001:db8::c1";
const C2: &str = "100#10.9.2.0/24@2001:db8::c1";
const C3: &str = "100#10.9.3.0/24@2001:db8::c1";

/// How long a polled condition may take.
const WAIT: Duration = Duration::from_secs(10);

/// Starts `metalbondd server` on a free loopback port, its files named
/// after `name`.
fn start_server(dir: &Path, name: &str) -> (Daemon, SocketAddr) {
    let addr = free_addr();
    let server = Daemon::spawn(&[
        "server",
        "--listen",
        &addr.to_string(),
        "--api-socket",
        dir.join(format!("{name}.sock")).to_str().unwrap(),
        "--state-dir",
        dir.join(format!("{name}-state")).to_str().unwrap(),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    (server, addr)
}

/// The client's configuration file.
fn client_file(
    servers: &[SocketAddr],
    subscribe: &[u32],
    announce: &[&str],
    keepalive: u32,
) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let subscribe: Vec<String> = subscribe.iter().map(ToString::to_string).collect();
    let announce: Vec<String> = announce.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "[client]\nservers = [{}]\nsubscribe = [{}]\nannounce = [{}]\nkeepalive = {keepalive}\nreconnect_min = 0\nreconnect_max = 1\n",
        servers.join(", "),
        subscribe.join(", "),
        announce.join(", ")
    )
}

/// Waits (bounded polling) until the client has received exactly `want`.
async fn wait_received(api: &mut Api, want: &[(&str, SocketAddr)]) {
    let want = expect_received(want);
    let deadline = Instant::now() + WAIT;
    loop {
        let got = received(api).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "received {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded polling) until the client's session to `addr` is up.
async fn wait_up(api: &mut Api, addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while !is_up(api, addr).await {
        assert!(Instant::now() < deadline, "{addr} not up within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn servers(api: &mut Api) -> Vec<pb::ClientServer> {
    api.client
        .list_servers(pb::ListServersRequest {})
        .await
        .expect("ListServers")
        .into_inner()
        .servers
}

/// The server `addr` as the client lists it.
async fn server(api: &mut Api, addr: SocketAddr) -> Option<pb::ClientServer> {
    servers(api)
        .await
        .into_iter()
        .find(|s| s.address == addr.to_string())
}

async fn is_up(api: &mut Api, addr: SocketAddr) -> bool {
    server(api, addr)
        .await
        .is_some_and(|s| s.state == pb::ClientServerState::Up as i32)
}

/// The received routes as (route text, providing servers), sorted.
async fn received(api: &mut Api) -> BTreeSet<(String, Vec<String>)> {
    api.client
        .list_received_routes(pb::ListReceivedRoutesRequest { vni: None })
        .await
        .expect("ListReceivedRoutes")
        .into_inner()
        .routes
        .iter()
        .map(|r| (route_text(r.route.as_ref().unwrap()), r.servers.clone()))
        .collect()
}

fn expect_received(list: &[(&str, SocketAddr)]) -> BTreeSet<(String, Vec<String>)> {
    list.iter()
        .map(|(r, s)| (r.to_string(), vec![s.to_string()]))
        .collect()
}

/// The client's `route server up` lines for the server `addr`.
fn ups(client: &Daemon, addr: SocketAddr) -> usize {
    strip_ansi(&client.logs())
        .lines()
        .filter(|l| l.contains("route server up") && contains_field(l, &format!("addr={addr}")))
        .count()
}

fn sighup(d: &Daemon) {
    // SAFETY: kill(2) with our own child's PID and a valid signal number.
    unsafe {
        libc::kill(d.pid() as libc::pid_t, libc::SIGHUP);
    }
}

/// `mbctl --socket SOCKET -o json reload`.
async fn mbctl_reload(socket: &Path) -> common::mbctl::Out {
    let mut cmd = Command::new(mbctl_bin());
    cmd.args(["--socket", socket.to_str().unwrap(), "-o", "json", "reload"])
        .env_remove("MBCTL_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run(cmd).await
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_changes_on_reload_apply_without_dropping_unchanged_sessions() {
    let dir = unique_temp_dir();
    let (_a, a) = start_server(&dir, "a");
    let (_b, b) = start_server(&dir, "b");
    inject(&dir.join("a.sock"), &[A100, A200]).await;
    inject(&dir.join("b.sock"), &[B100, B200]).await;
    // A subscriber of server A sees every UPDATE the client sends it.
    let mut sub = RawPeer::established(a).await;
    sub.subscribe(100).await;
    sub.expect_exactly(&[add(route(A100))], "dump of A").await;

    let file: PathBuf = dir.join("client.toml");
    std::fs::write(&file, client_file(&[a], &[100], &[C1, C2], 5)).unwrap();
    let socket = dir.join("client.sock");
    let client = Daemon::spawn_running(&[
        "client",
        "--config",
        file.to_str().unwrap(),
        "--api-socket",
        socket.to_str().unwrap(),
        "--state-dir",
        dir.join("client-state").to_str().unwrap(),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    sub.expect_exactly(
        &[add(route(C1)), add(route(C2))],
        "the file's announcements",
    )
    .await;
    let mut api = connect(&socket).await;
    wait_received(&mut api, &[(A100, a)]).await;
    let a_before = server(&mut api, a).await.unwrap();
    assert_eq!(ups(&client, a), 1);

    // SIGHUP: server B added, VNI 200 subscribed, C1 replaced by C3.
    std::fs::write(&file, client_file(&[a, b], &[100, 200], &[C2, C3], 5)).unwrap();
    sighup(&client);
    // Only the difference reaches the wire: C2 is not sent again.
    sub.expect_exactly(
        &[rem(route(C1)), add(route(C3))],
        "announcements after SIGHUP",
    )
    .await;
    wait_up(&mut api, b).await;
    wait_received(&mut api, &[(A100, a), (B100, b), (A200, a), (B200, b)]).await;
    let line = client
        .wait_for_line(|l| l.contains("configuration reloaded"), T)
        .await
        .unwrap_or_else(|| panic!("no reload logged:\n{}", client.logs()));
    assert!(
        line.contains("client.servers: 1 added, 0 removed"),
        "{line}"
    );
    assert!(
        line.contains("client.subscribe: 1 subscribed, 0 unsubscribed"),
        "{line}"
    );
    assert!(line.contains("client.announce"), "{line}");
    // Server A kept its session: same session address and state time, and
    // no second `route server up`.
    let a_after = server(&mut api, a).await.unwrap();
    assert_eq!(a_after.state, pb::ClientServerState::Up as i32);
    assert_eq!(a_after.connected, a_before.connected);
    assert_eq!(a_after.since, a_before.since);
    assert_eq!(ups(&client, a), 1, "log:\n{}", client.logs());
    assert_eq!(ups(&client, b), 1);

    // `mbctl reload`: server A removed (its session closes, so its
    // subscriber sees the client's routes go, and A's routes leave the
    // client), VNI 100 unsubscribed (B's route of VNI 100 goes), the
    // keepalive changed (needs a restart).
    std::fs::write(&file, client_file(&[b], &[200], &[C2, C3], 7)).unwrap();
    let v = mbctl_reload(&socket).await.json();
    let applied = strings(&v["applied"]);
    assert_eq!(
        applied,
        vec![
            "client.servers: 0 added, 1 removed",
            "client.subscribe: 0 subscribed, 1 unsubscribed",
        ],
        "{v}"
    );
    assert_eq!(
        strings(&v["needs_restart"]),
        vec!["client.keepalive"],
        "{v}"
    );
    sub.expect_exactly(&[rem(route(C2)), rem(route(C3))], "A's session closed")
        .await;
    assert_eq!(
        servers(&mut api)
            .await
            .iter()
            .map(|s| s.address.clone())
            .collect::<Vec<_>>(),
        vec![b.to_string()]
    );
    wait_received(&mut api, &[(B200, b)]).await;
    assert_eq!(ups(&client, b), 1, "B kept its session");

    // A broken file: rejected with its position, nothing changes.
    std::fs::write(
        &file,
        client_file(&[a], &[100], &["100#10.9.9.0/24@nowhere"], 5),
    )
    .unwrap();
    let out = mbctl_reload(&socket).await;
    assert_ne!(out.code, Some(0), "{out:?}");
    let pos = format!("{}:4:", file.display());
    assert!(
        out.stdout.contains(&pos) || out.stderr.contains(&pos),
        "{out:?}"
    );
    assert_eq!(servers(&mut api).await.len(), 1);
    assert!(is_up(&mut api, b).await);
    assert_eq!(received(&mut api).await, expect_received(&[(B200, b)]));
    sub.ping().await;
    sub.expect_no_update(QUIET).await;
    assert!(client.is_alive());
}

async fn subscriptions(api: &mut Api) -> Vec<u32> {
    api.client
        .list_subscriptions(pb::ListSubscriptionsRequest {})
        .await
        .expect("ListSubscriptions")
        .into_inner()
        .vnis
}

/// A reload applies the file's own difference: a key changed through the
/// API stays as the API left it (and is named in the reply), the other
/// keys follow the file, and nothing the reload does is stored as an API
/// change (a restart with the same file and state starts from the file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_changed_through_the_api_stay_as_the_api_left_them() {
    let dir = unique_temp_dir();
    let (_a, a) = start_server(&dir, "a");
    let file: PathBuf = dir.join("client.toml");
    std::fs::write(&file, client_file(&[a], &[100, 101], &[], 5)).unwrap();
    let socket = dir.join("client.sock");
    let state = dir.join("client-state");
    let args = [
        "client",
        "--config",
        file.to_str().unwrap(),
        "--api-socket",
        socket.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let client = Daemon::spawn_running(&args).unwrap_or_else(|e| panic!("{e}"));
    let mut api = connect(&socket).await;
    api.client
        .subscribe(pb::SubscribeRequest { vni: 200 })
        .await
        .expect("Subscribe");

    // The file subscribes 200 (the API did already) and drops 100 and 101.
    std::fs::write(&file, client_file(&[a], &[200], &[], 5)).unwrap();
    api.client
        .unsubscribe(pb::UnsubscribeRequest { vni: 101 })
        .await
        .expect("Unsubscribe");
    let v = mbctl_reload(&socket).await.json();
    assert_eq!(
        strings(&v["applied"]),
        vec![
            "client.subscribe: 0 subscribed, 1 unsubscribed",
            "client.subscribe 200: kept as changed through the API",
            "client.subscribe 101: kept as changed through the API",
        ],
        "{v}"
    );
    assert_eq!(subscriptions(&mut api).await, vec![200]);
    assert!(client
        .wait_for_line(|l| l.contains("the API changed this key"), T)
        .await
        .is_some());
    drop(api);

    // Restarted with the same file and state: 100 is unsubscribed because
    // the file says so, not because a record says so.
    client.terminate(T).expect("client stopped");
    std::fs::write(&file, client_file(&[a], &[100, 200], &[], 5)).unwrap();
    let _client = Daemon::spawn_running(&args).unwrap_or_else(|e| panic!("{e}"));
    let mut api = connect(&socket).await;
    let mut subs = subscriptions(&mut api).await;
    subs.sort_unstable();
    assert_eq!(subs, vec![100, 200]);
}

/// A difference the agent refuses (a first mapping whose tunnel device
/// does not exist) fails the reload and applies none of it, not even the
/// parts that could have been applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_difference_changes_nothing() {
    let dir = unique_temp_dir();
    let (_a, a) = start_server(&dir, "a");
    let file: PathBuf = dir.join("client.toml");
    // A device name no host has (at most 15 characters).
    let text = |subscribe: &str, install: &str| {
        format!(
            "[client]\nservers = [\"{a}\"]\nsubscribe = [{subscribe}]\ntun = \"mbrl-none{}\"\ninstall_routes = [{install}]\n",
            std::process::id() % 100_000
        )
    };
    std::fs::write(&file, text("100", "")).unwrap();
    let socket = dir.join("client.sock");
    let state = dir.join("client-state");
    let client = Daemon::spawn_running(&[
        "client",
        "--config",
        file.to_str().unwrap(),
        "--api-socket",
        socket.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let mut api = connect(&socket).await;

    std::fs::write(&file, text("100, 200", "\"100#100\"")).unwrap();
    let mut api_daemon = api.daemon.clone();
    let err = api_daemon
        .reload(pb::ReloadRequest {})
        .await
        .expect_err("the reload should fail");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .contains("client: cannot install routes through tunnel device"),
        "{}",
        err.message()
    );
    assert_eq!(subscriptions(&mut api).await, vec![100]);
    assert!(client.is_alive());
}
