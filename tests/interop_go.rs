//! Interoperability with the Go reference implementation
//! (`ironcore-dev/metalbond` v0.5.0-6, the real binary): real processes,
//! real TCP on loopback, routes observed where each side shows them.
//!
//! - Go clients on our server: routes of every type flow between two Go
//!   clients and from our API to both; a Go client's end withdraws its
//!   routes from the other.
//! - Our client on the Go server: routes flow both ways with a Go client as
//!   the peer, runtime announcements (`mbctl announce`/`withdraw` in the
//!   client role) reach the Go client, the session runs without the SYNC
//!   extension (PROTOCOL.md section 8) and the Go server logs no error.
//! - A mixed fleet: our client with SYNC and a Go client on our server.
//!
//! The Go binary is built by `.ci/run` (with shared/go-reference) and found
//! through `METALBONDD_TEST_GO_METALBOND`; without it each test prints
//! `SKIPPED` and passes, unless `CI=true`, where it fails.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::api::{connect, inject, list_all, route_text};
use common::go::{go_metalbond, GoProc};
use common::mbctl::{mbctl_bin, run, Out};
use common::*;
use metalbond_proto::api as pb;

/// Bound for a route to travel through one or two servers (routes move in
/// milliseconds on loopback; the margin is for a loaded test machine).
const FLOW: Duration = Duration::from_secs(8);

const VNI: u32 = 23;

/// `mbctl --socket SOCKET ARGS`.
async fn mbctl(socket: &Path, args: &[&str]) -> Out {
    let mut cmd = Command::new(mbctl_bin());
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("MBCTL_SOCKET")
        .env_remove("MBCTL_ROLE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run(cmd).await
}

/// Starts `metalbondd client` connected to `server`, subscribed to [`VNI`],
/// announcing `announce` from its command line, its API socket and state
/// in `dir`; waits until it runs (not until its session is up).
fn our_client(dir: &Path, server: std::net::SocketAddr, announce: &[&str]) -> Daemon {
    let mut args: Vec<String> = vec![
        "client".into(),
        "--server".into(),
        server.to_string(),
        "--subscribe".into(),
        VNI.to_string(),
        "--api-socket".into(),
        dir.join("client.sock").display().to_string(),
        "--state-dir".into(),
        dir.join("client-state").display().to_string(),
        "--reconnect-min".into(),
        "0".into(),
        "--reconnect-max".into(),
        "1".into(),
    ];
    for r in announce {
        args.extend(["--announce".into(), r.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::spawn_running(&args).unwrap_or_else(|e| panic!("{e}"))
}

/// The `route server up` line of our client (bounded wait), with its
/// `sync=` field; panics with the log if the session does not come up.
async fn session_up_line(client: &Daemon) -> String {
    client
        .wait_for_line(|l| l.contains("route server up"), FLOW)
        .await
        .unwrap_or_else(|| {
            panic!(
                "our client logged no `route server up` within {FLOW:?}; log:\n{}",
                client.logs()
            )
        })
}

/// The routes our client role received in [`VNI`] (text form), through
/// the API (`ListReceivedRoutes`).
async fn received(sock: &Path) -> BTreeSet<String> {
    let mut api = connect(sock).await;
    api.client
        .list_received_routes(pb::ListReceivedRoutesRequest { vni: Some(VNI) })
        .await
        .expect("ListReceivedRoutes")
        .into_inner()
        .routes
        .iter()
        .map(|r| route_text(r.route.as_ref().unwrap()))
        .collect()
}

/// Polls our client's received routes (bounded) until they are exactly
/// `want`; panics with them, our log and the Go peers' logs otherwise.
async fn wait_received(sock: &Path, want: &[&str], what: &str, client: &Daemon, go: &[&GoProc]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + FLOW;
    loop {
        let got = received(sock).await;
        if got == want {
            return;
        }
        if Instant::now() >= deadline {
            let go_logs: Vec<String> = go
                .iter()
                .map(|g| format!("Go process {}:\n{}", g.pid(), g.logs()))
                .collect();
            panic!(
                "{what}: our client received {got:#?}, want {want:#?}; our log:\n{}\n{}",
                client.logs(),
                go_logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The routes of our server's table in [`VNI`] (text form).
async fn server_table(sock: &Path) -> BTreeSet<String> {
    let mut api = connect(sock).await;
    list_all(
        &mut api,
        Some(pb::RouteFilter {
            vni: Some(VNI),
            ..Default::default()
        }),
        0,
    )
    .await
    .iter()
    .map(|e| route_text(e.route.as_ref().unwrap()))
    .collect()
}

fn set(texts: &[&str]) -> BTreeSet<String> {
    texts.iter().map(|s| s.to_string()).collect()
}

// Routes of the Go clients, one of each type, and of our API.
const G1: [&str; 3] = [
    "23#10.1.1.0/24@2001:db8::1",
    "23#10.1.2.0/24@2001:db8::1#nat#1000#1999",
    "23#10.1.3.0/24@2001:db8::1#lb",
];
const G2: [&str; 3] = [
    "23#10.2.1.0/24@2001:db8::2",
    "23#10.2.2.0/24@2001:db8::2#nat#2000#2999",
    "23#fd00:2::/64@2001:db8::2#lb",
];
const INJECTED: &str = "23#10.9.0.0/24@2001:db8::9#nat#3000#3999";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_clients_on_our_server_exchange_routes_and_lose_them_when_one_ends() {
    let Some(go) = go_metalbond("go_clients_on_our_server_exchange_routes_and_lose_them_when_one_ends")
    else {
        return;
    };
    let server = Daemon::start(&[]);
    let g1 = GoProc::client(&go, server.addr, &[VNI], &G1);
    let g2 = GoProc::client(&go, server.addr, &[VNI], &G2);
    inject(&server.api_socket(), &[INJECTED]).await;

    // Each Go client has the other's routes and ours, not its own.
    let mut want1: Vec<&str> = G2.to_vec();
    want1.push(INJECTED);
    let mut want2: Vec<&str> = G1.to_vec();
    want2.push(INJECTED);
    g1.wait_routes(&want1, "G2's and the injected routes at G1", FLOW)
        .await;
    g2.wait_routes(&want2, "G1's and the injected routes at G2", FLOW)
        .await;
    // Our server's table holds every Go route with its type and ports.
    let mut all = set(&G1);
    all.extend(set(&G2));
    all.insert(INJECTED.to_string());
    assert_eq!(server_table(&server.api_socket()).await, all);

    // G2 ends (SIGTERM: the Go binary exits at once, the TCP connection
    // drops): its routes leave our table and G1's.
    g2.terminate();
    g1.wait_routes(&[INJECTED], "G2's routes withdrawn from G1", FLOW)
        .await;
    let mut left = set(&G1);
    left.insert(INJECTED.to_string());
    assert_eq!(server_table(&server.api_socket()).await, left);
    assert_eq!(g1.error_lines(), Vec::<String>::new(), "{}", g1.logs());
    assert!(server.is_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_on_the_go_server_without_sync_routes_flow_both_ways() {
    let Some(go) = go_metalbond("our_client_on_the_go_server_without_sync_routes_flow_both_ways")
    else {
        return;
    };
    let gs = GoProc::server(&go);
    let gc = GoProc::client(&go, gs.addr, &[VNI], &G1);
    let dir = unique_temp_dir();
    let sock = dir.join("client.sock");
    const OURS: &str = "23#10.5.1.0/24@2001:db8::5";
    let client = our_client(&dir, gs.addr, &[OURS]);

    // The session is up without the SYNC extension: the Go server's HELLO
    // has no extensions field.
    let up = session_up_line(&client).await;
    assert!(up.contains("sync=false"), "{up}");

    // Both ways: the Go client's routes (every type) to our agent, our
    // configured route to the Go client.
    wait_received(&sock, &G1, "the Go client's routes", &client, &[&gs, &gc]).await;
    gc.wait_routes(&[OURS], "our --announce route at the Go client", FLOW)
        .await;

    // Runtime announcements of the client role reach the Go client.
    const NAT: &str = "23#10.5.2.0/24@2001:db8::5#nat#4000#4999";
    const LB: &str = "23#fd00:5::/64@2001:db8::5#lb";
    mbctl(&sock, &["announce", NAT, LB]).await.ok();
    gc.wait_routes(&[OURS, NAT, LB], "mbctl announce at the Go client", FLOW)
        .await;
    mbctl(&sock, &["withdraw", NAT]).await.ok();
    gc.wait_routes(&[OURS, LB], "mbctl withdraw at the Go client", FLOW)
        .await;

    // The Go server took our HELLO and everything after it without error.
    let slog = gs.logs();
    assert!(
        slog.matches("Connection established").count() >= 2,
        "the Go server established fewer than two sessions:\n{slog}"
    );
    assert_eq!(gs.error_lines(), Vec::<String>::new(), "{slog}");
    assert_eq!(gc.error_lines(), Vec::<String>::new(), "{}", gc.logs());
    // And our client saw no protocol trouble.
    let ours = client.logs();
    assert!(
        !ours.contains(" WARN ") && !ours.contains(" ERROR "),
        "our client warned:\n{ours}"
    );

    // The Go client ends: its routes leave our agent.
    gc.terminate();
    wait_received(&sock, &[], "the Go client's routes withdrawn", &client, &[&gs]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_fleet_our_client_with_sync_and_a_go_client_on_our_server() {
    let Some(go) = go_metalbond("mixed_fleet_our_client_with_sync_and_a_go_client_on_our_server")
    else {
        return;
    };
    let server = Daemon::start(&[]);
    let gc = GoProc::client(&go, server.addr, &[VNI], &G1);
    let dir = unique_temp_dir();
    let sock = dir.join("client.sock");
    const OURS: &str = "23#10.6.1.0/24@2001:db8::6#nat#5000#5999";
    let client = our_client(&dir, server.addr, &[OURS]);

    // Our server offers SYNC to our client (and, from the first tests, not
    // to the Go client, which does not ask for it).
    let up = session_up_line(&client).await;
    assert!(up.contains("sync=true"), "{up}");
    wait_received(&sock, &G1, "the Go client's routes", &client, &[&gc]).await;
    gc.wait_routes(&[OURS], "our client's route at the Go client", FLOW)
        .await;

    // A route announced after both are up reaches both.
    inject(&server.api_socket(), &[INJECTED]).await;
    let mut want: Vec<&str> = G1.to_vec();
    want.push(INJECTED);
    wait_received(&sock, &want, "G1's and the injected route", &client, &[&gc]).await;
    gc.wait_routes(&[OURS, INJECTED], "the injected route at the Go client", FLOW)
        .await;
    assert_eq!(gc.error_lines(), Vec::<String>::new(), "{}", gc.logs());
}
