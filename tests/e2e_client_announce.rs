//! Runtime announcements of the client role, end to end (issue 12, ADR
//! 0021): a program drives a real `metalbondd client` over its API (tonic,
//! the real Unix socket), the client announces to a real `metalbondd server`
//! over TCP, and a raw MetalBond subscriber of that server (the Go-like test
//! reader) sees exactly the UPDATEs each call should cause, no more.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::api::{api_route, connect, route_text, Api};
use common::*;
use metalbond_proto::api as pb;
use metalbondd::wire::Update;
use tonic::Code;

/// The route of index `i` of the bulk set (VNI 100, distinct /24s).
fn bulk(i: usize) -> String {
    format!("100#10.{}.{}.0/24@2001:db8::1", i / 256, i % 256)
}

/// The route the client announces from its command line (owner `config`).
const CONFIGURED: &str = "100#10.255.0.0/24@2001:db8::ff";

fn routes(texts: &[String]) -> Vec<pb::Route> {
    texts.iter().map(|t| api_route(t)).collect()
}

fn adds(texts: &[String]) -> Vec<Update> {
    texts.iter().map(|t| add(route(t))).collect()
}

fn rems(texts: &[String]) -> Vec<Update> {
    texts.iter().map(|t| rem(route(t))).collect()
}

/// Starts `metalbondd server` on a free loopback port.
fn start_server(dir: &Path) -> (Daemon, std::net::SocketAddr) {
    let addr = free_addr();
    let server = Daemon::spawn(&[
        "server",
        "--listen",
        &addr.to_string(),
        "--api-socket",
        dir.join("server.sock").to_str().unwrap(),
        "--state-dir",
        dir.join("server-state").to_str().unwrap(),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    (server, addr)
}

/// Starts `metalbondd client` connected to `server`, with its state in
/// `dir` (the same `dir` again is a restart).
fn start_client(dir: &Path, server: std::net::SocketAddr) -> Daemon {
    let server = server.to_string();
    Daemon::start_client(dir, &["--server", &server, "--announce", CONFIGURED]).0
}

/// Every announcement of the client, as (route text, owners).
async fn listed(api: &mut Api) -> Vec<(String, Vec<String>)> {
    api.client
        .list_announcements(pb::ListAnnouncementsRequest {})
        .await
        .expect("ListAnnouncements")
        .into_inner()
        .announcements
        .iter()
        .map(|a| (route_text(a.route.as_ref().unwrap()), a.owners.clone()))
        .collect()
}

#[track_caller]
fn assert_status<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: Code,
    starts_with: &str,
) -> String {
    let s = r.expect_err("the call should fail");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(
        s.message().starts_with(starts_with),
        "{:?} does not start with {starts_with:?}",
        s.message()
    );
    s.message().to_string()
}

// Multi-threaded: the API connection's task must run while the test thread
// waits for the client to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_announcements_reach_subscribers_exactly_and_survive_a_restart() {
    let dir = unique_temp_dir();
    let (_server, server_addr) = start_server(&dir);
    let mut sub = RawPeer::established(server_addr).await;
    sub.subscribe(100).await;
    sub.expect_no_update(QUIET).await;

    let client = start_client(&dir, server_addr);
    // The configured route arrives once the client's session is up.
    sub.expect_exactly(&adds(&[CONFIGURED.to_string()]), "--announce")
        .await;
    let mut api = connect(&dir.join("client.sock")).await;

    // 1,000 routes at runtime (the implicit owner), then half withdrawn.
    let all: Vec<String> = (0..1000).map(bulk).collect();
    let r = api
        .client
        .announce(pb::ClientAnnounceRequest {
            routes: routes(&all),
            ..Default::default()
        })
        .await
        .expect("Announce")
        .into_inner();
    assert_eq!((r.added, r.unchanged), (1000, 0));
    sub.expect_exactly(&adds(&all), "1,000 runtime announcements")
        .await;
    let (gone, kept) = all.split_at(500);
    let r = api
        .client
        .withdraw(pb::ClientWithdrawRequest {
            routes: routes(gone),
            ..Default::default()
        })
        .await
        .expect("Withdraw")
        .into_inner();
    assert_eq!((r.removed, r.unchanged), (500, 0));
    sub.expect_exactly(&rems(gone), "500 runtime withdrawals")
        .await;

    // Typed errors, each naming the field; none changes anything.
    assert_status(
        api.client
            .announce(pb::ClientAnnounceRequest {
                routes: routes(&kept[..1]),
                ..Default::default()
            })
            .await,
        Code::AlreadyExists,
        "routes[0]: ",
    );
    assert_status(
        api.client
            .withdraw(pb::ClientWithdrawRequest {
                routes: routes(&[kept[0].clone(), gone[0].clone()]),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "routes[1]: ",
    );
    let mut bad = routes(&kept[..2]);
    bad[1].prefix = "10.0.0.1/33".into();
    assert_status(
        api.client
            .announce(pb::ClientAnnounceRequest {
                routes: bad,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "routes[1].prefix: ",
    );
    assert_status(
        api.client
            .announce(pb::ClientAnnounceRequest {
                routes: routes(&[bulk(2000), bulk(2000)]),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "routes[1]: ",
    );
    let reserved = assert_status(
        api.client
            .set_announcements(pb::SetAnnouncementsRequest {
                owner: "config".into(),
                routes: vec![],
            })
            .await,
        Code::InvalidArgument,
        "owner: ",
    );
    assert!(reserved.contains("reserved"), "{reserved}");
    assert_status(
        api.client
            .set_announcements(pb::SetAnnouncementsRequest {
                owner: String::new(),
                routes: routes(&kept[..1]),
            })
            .await,
        Code::InvalidArgument,
        "owner: required",
    );
    // The client-only daemon's own table is read by no peer: refused.
    let m = assert_status(
        api.routes
            .announce_routes(pb::AnnounceRoutesRequest {
                routes: routes(&[bulk(3000)]),
                allow_existing: false,
            })
            .await,
        Code::FailedPrecondition,
        "",
    );
    assert!(m.contains("ClientService.Announce"), "{m}");
    // Idempotent with the flags: nothing on the wire.
    let r = api
        .client
        .announce(pb::ClientAnnounceRequest {
            routes: routes(&kept[..3]),
            allow_existing: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.added, r.unchanged), (0, 3));
    let r = api
        .client
        .withdraw(pb::ClientWithdrawRequest {
            routes: routes(&gone[..3]),
            allow_missing: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.removed, r.unchanged), (0, 3));
    sub.expect_no_update(QUIET).await;

    // Declarative: owner vm1's set shares 3 routes with the owner `api` and
    // one with `config`: only the 7 new ones are ADDed.
    let mut vm1: Vec<String> = kept[..3].to_vec();
    vm1.push(CONFIGURED.to_string());
    vm1.extend((5000..5006).map(bulk));
    let set = |routes_: &[String]| pb::SetAnnouncementsRequest {
        owner: "vm1".into(),
        routes: routes(routes_),
    };
    let r = api
        .client
        .set_announcements(set(&vm1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.added, r.removed, r.unchanged), (10, 0, 0));
    sub.expect_exactly(&adds(&vm1[4..]), "only vm1's new routes")
        .await;
    // The same set again: nothing on the wire.
    let r = api
        .client
        .set_announcements(set(&vm1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.added, r.removed, r.unchanged), (0, 0, 10));
    sub.expect_no_update(QUIET).await;
    // vm1 lets go of a shared route (still announced by `api`: no REMOVE)
    // and of one of its own (REMOVE), and takes a new one (ADD).
    let mut vm1b: Vec<String> = vm1.clone();
    vm1b.retain(|t| *t != kept[0] && *t != bulk(5000));
    vm1b.push(bulk(6000));
    let r = api
        .client
        .set_announcements(set(&vm1b))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.added, r.removed, r.unchanged), (1, 2, 8));
    let mut want = adds(&[bulk(6000)]);
    want.extend(rems(&[bulk(5000)]));
    sub.expect_exactly(&want, "vm1's difference").await;

    // The listing: every route with its owners.
    let before = listed(&mut api).await;
    let owners_of = |t: &str| -> Vec<String> {
        before
            .iter()
            .find(|(r, _)| r == t)
            .map(|(_, o)| o.clone())
            .unwrap_or_default()
    };
    assert_eq!(owners_of(CONFIGURED), ["config", "vm1"]);
    assert_eq!(owners_of(&kept[0]), ["api"]);
    assert_eq!(owners_of(&kept[1]), ["api", "vm1"]);
    assert_eq!(owners_of(&bulk(6000)), ["vm1"]);
    assert_eq!(owners_of(&gone[0]), Vec::<String>::new());
    let on_wire: BTreeSet<String> = before.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(on_wire.len(), 1 + 500 + 6);

    // Restart with the same state directory: the session's routes go, and
    // every one of them comes back from the store (plus --announce).
    drop(api);
    client.terminate(T).expect("the client stops on SIGTERM");
    drop(client);
    let all_on_wire: Vec<String> = on_wire.iter().cloned().collect();
    let got = sub.expect_updates(all_on_wire.len(), T).await;
    assert_same_updates(&got, &rems(&all_on_wire), "the client's session ended");
    let client = start_client(&dir, server_addr);
    sub.expect_exactly(&adds(&all_on_wire), "announced again after a restart")
        .await;
    let mut api = connect(&dir.join("client.sock")).await;
    assert_eq!(listed(&mut api).await, before);
    // A consumer that restarts re-sends its complete set: no UPDATE.
    let r = api
        .client
        .set_announcements(set(&vm1b))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.added, r.removed, r.unchanged), (0, 0, 9));
    sub.expect_no_update(QUIET).await;
    // An empty set withdraws the owner's routes not shared with others.
    let r = api
        .client
        .set_announcements(set(&[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.added, r.removed, r.unchanged), (0, 9, 0));
    sub.expect_exactly(&rems(&vm1b[3..]), "vm1 withdrew everything")
        .await;
    drop(client);
}

/// The same through the eyes of rustbond 0.1.3 (an implementation we did not
/// write) subscribed to our server: 1,000 routes announced at runtime, half
/// withdrawn, and a re-sent declarative set causes no callback.
#[cfg(feature = "interop")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rustbond_subscriber_sees_exactly_the_runtime_announcements() {
    use ::rustbond::{Destination, NextHop};
    use common::rustbond::{Ev, Peer};

    let ev = |i: usize, added: bool| {
        let dest = Destination::from_ipv4(
            std::net::Ipv4Addr::new(10, (i / 256) as u8, (i % 256) as u8, 0),
            24,
        );
        let hop = NextHop::standard("2001:db8::1".parse().unwrap());
        if added {
            Ev::Add(100, dest, hop)
        } else {
            Ev::Remove(100, dest, hop)
        }
    };
    let dir = unique_temp_dir();
    let (_server, server_addr) = start_server(&dir);
    let mut peer = Peer::connect(server_addr, "rustbond subscriber")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    peer.subscribe(100).await;
    let _client = start_client(&dir, server_addr);
    let configured = Ev::Add(
        100,
        Destination::from_ipv4(std::net::Ipv4Addr::new(10, 255, 0, 0), 24),
        NextHop::standard("2001:db8::ff".parse().unwrap()),
    );
    peer.expect_exactly(&[configured], "--announce").await;
    let mut api = connect(&dir.join("client.sock")).await;

    let all: Vec<String> = (0..1000).map(bulk).collect();
    let set = |texts: &[String]| pb::SetAnnouncementsRequest {
        owner: "node-agent".into(),
        routes: routes(texts),
    };
    api.client.set_announcements(set(&all)).await.unwrap();
    let want: Vec<Ev> = (0..1000).map(|i| ev(i, true)).collect();
    peer.expect_exactly(&want, "1,000 runtime announcements")
        .await;
    api.client
        .set_announcements(set(&all[500..]))
        .await
        .unwrap();
    let want: Vec<Ev> = (0..500).map(|i| ev(i, false)).collect();
    peer.expect_exactly(&want, "500 withdrawn").await;
    let r = api
        .client
        .set_announcements(set(&all[500..]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.added, r.removed, r.unchanged), (0, 0, 500));
    peer.expect_nothing("the same set again").await;
}

/// A measurement, not a check (docs/BENCHMARKS.md): 100,000 routes through
/// `Announce` (two calls) until a raw subscriber of the route server has them
/// all. `cargo test --release --test e2e_client_announce -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_100k_runtime_announcements_reach_a_subscriber() {
    let dir = unique_temp_dir();
    let (_server, server_addr) = start_server(&dir);
    let mut sub = RawPeer::established(server_addr).await;
    sub.subscribe(100).await;
    let _client = start_client(&dir, server_addr);
    sub.expect_updates(1, T).await;
    let mut api = connect(&dir.join("client.sock")).await;
    let n = 100_000;
    let all: Vec<pb::Route> = (0..n)
        .map(|i: usize| {
            let (a, b, c) = (10 + i / 65536, (i / 256) % 256, i % 256);
            api_route(&format!("100#{a}.{b}.{c}.0/24@2001:db8::1"))
        })
        .collect();
    let start = std::time::Instant::now();
    // Two calls: a request is at most 4 MiB (tonic's default).
    for half in all.chunks(n / 2) {
        api.client
            .announce(pb::ClientAnnounceRequest {
                owner: "bench".into(),
                routes: half.to_vec(),
                allow_existing: false,
            })
            .await
            .unwrap();
    }
    let replied = start.elapsed();
    sub.expect_updates(n, Duration::from_secs(60)).await;
    eprintln!(
        "{n} runtime announcements: reply after {replied:?}, all at the subscriber after {:?}",
        start.elapsed()
    );
}
