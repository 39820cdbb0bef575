//! Interop of the client role: the real `metalbondd client` against a
//! `rustbond` 0.1.3 server (an implementation we did not write) and, for
//! comparison, against our own `metalbondd server`, with `rustbond` clients
//! as the other hypervisors.
//!
//! What our client receives is observable only in the kernel (the control
//! API cannot list received routes yet, and nothing is logged for a received
//! route without `--install-routes`), so the full two-way scenario runs in a
//! network namespace (needs root; skipped with a message otherwise, unless
//! `CI=true`). The announcement direction is also checked without root, on
//! loopback, without `--install-routes`.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use common::netns::{may_run, run_in_netns, wait_table, NetnsEnv};
use common::rustbond::{Ev, Peer, R};
use common::{unique_temp_dir, Daemon, QUIET, T};
use rustbond::{Destination, MetalBondServer, NextHop, ServerConfig};

fn v4(a: [u8; 4], len: u8) -> Destination {
    Destination::from_ipv4(Ipv4Addr::from(a), len)
}

fn v6(s: &str, len: u8) -> Destination {
    Destination::from_ipv6(s.parse().unwrap(), len)
}

fn hop(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// A rustbond server on a free port of `[::1]` (rustbond cannot report the
/// port it bound, so one is picked by binding port 0 and releasing it).
async fn rustbond_server() -> (MetalBondServer, SocketAddr) {
    let addr = std::net::TcpListener::bind("[::1]:0")
        .and_then(|l| l.local_addr())
        .expect("pick a free port");
    let server = MetalBondServer::start(addr.to_string(), ServerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("rustbond server on {addr}: {e}"));
    (server, addr)
}

/// Our client's own announcement (VNI 200).
const OWN: &str = "200#10.9.9.0/24@2001:db8::99";

fn own_event() -> Ev {
    Ev::Add(
        200,
        v4([10, 9, 9, 0], 24),
        NextHop::standard(hop("2001:db8::99")),
    )
}

/// Without root or kernel: our client's announcement reaches a rustbond
/// client through a rustbond server.
#[tokio::test(flavor = "multi_thread")]
async fn announcement_reaches_rustbond_client_via_rustbond_server() {
    let (server, addr) = rustbond_server().await;
    let dir = unique_temp_dir();
    let sock = dir.join("c.sock").display().to_string();
    let state = dir.join("c").display().to_string();
    let server_arg = addr.to_string();
    let client = Daemon::spawn_running(&[
        "client",
        "--server",
        &server_arg,
        "--subscribe",
        "100",
        "--announce",
        OWN,
        "--api-socket",
        &sock,
        "--state-dir",
        &state,
        "-v",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        client
            .wait_for_log("session with route server established", T)
            .await,
        "no session with the rustbond server; log:\n{}",
        client.logs()
    );
    let mut peer = Peer::connect(addr, "peer").await.unwrap();
    peer.subscribe(200).await;
    peer.expect(&own_event()).await;
    // Our client offered SYNC (PROTOCOL.md section 8); the rustbond server
    // ignores the field, so the extension stays off: no SYNC is expected
    // (the hold time and quiet fallback apply) and the session is the first
    // and only one (nothing made either side reset).
    let logs = client.logs();
    let up: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("route server up"))
        .collect();
    assert_eq!(up.len(), 1, "{logs}");
    assert!(up[0].contains("sync=false"), "{}", up[0]);
    assert!(!logs.contains("extensions negotiated"), "{logs}");
    drop(client);
    let _ = peer.disconnect().await;
    let _ = server.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[derive(Clone, Copy, Debug)]
enum ServerKind {
    Rustbond,
    Metalbondd,
}

/// Both directions, in a namespace: our client (VNI 100 -> table 100 via
/// mbt0) announces into VNI 200 and installs what two rustbond clients
/// announce into VNI 100 (STD, NAT, LB, IPv4 and IPv6, an ECMP pair, and a
/// route of our own destination that must not be installed); a withdrawal
/// and a rustbond client's disconnect remove routes.
fn two_way(kind: ServerKind) {
    let env = Arc::new(NetnsEnv::create(&[("mbt0", "mbt1")]));
    let e = env.clone();
    run_in_netns(&env.ns.clone(), move || async move {
        let env = e;
        let (rb_server, our_server, addr) = match kind {
            ServerKind::Rustbond => {
                let (s, a) = rustbond_server().await;
                (Some(s), None, a)
            }
            ServerKind::Metalbondd => {
                let s = env.server("s");
                let a = s.addr;
                (None, Some(s), a)
            }
        };
        let client = env.client(
            "c",
            &[addr.to_string()],
            &[
                "--subscribe",
                "100",
                "--install-routes",
                "100#100",
                "--tun",
                "mbt0",
                "--announce",
                OWN,
                "--announce",
                "100#10.9.8.0/24@2001:db8::98",
                "-v",
            ],
        );
        let mut p1 = Peer::connect(addr, "p1").await.unwrap();
        let mut p2 = Peer::connect(addr, "p2").await.unwrap();
        p1.subscribe(200).await;
        p1.expect(&own_event()).await;

        p1.announce(&R(
            100,
            v4([10, 0, 1, 0], 24),
            NextHop::standard(hop("2001:db8::1")),
        ))
        .await;
        p1.announce(&R(
            100,
            v4([10, 0, 2, 0], 24),
            NextHop::nat(hop("2001:db8::2"), 1024, 2047),
        ))
        .await;
        p1.announce(&R(
            100,
            v4([10, 0, 3, 0], 24),
            NextHop::load_balancer(hop("2001:db8::3")),
        ))
        .await;
        p1.announce(&R(
            100,
            v6("2001:db8:a::", 64),
            NextHop::standard(hop("2001:db8::4")),
        ))
        .await;
        p1.announce(&R(
            100,
            v6("2001:db8:b::", 64),
            NextHop::nat(hop("2001:db8::5"), 0, 1023),
        ))
        .await;
        p1.announce(&R(
            100,
            v6("2001:db8:c::", 64),
            NextHop::load_balancer(hop("2001:db8::6")),
        ))
        .await;
        // ECMP: p1's next hop sorts after p2's.
        p1.announce(&R(
            100,
            v4([10, 0, 4, 0], 24),
            NextHop::standard(hop("2001:db8::12")),
        ))
        .await;
        p2.announce(&R(
            100,
            v4([10, 0, 4, 0], 24),
            NextHop::standard(hop("2001:db8::11")),
        ))
        .await;
        // Our client's own destination: never installed (loop prevention).
        p2.announce(&R(
            100,
            v4([10, 9, 8, 0], 24),
            NextHop::standard(hop("2001:db8::5")),
        ))
        .await;
        wait_table(
            &env.ns,
            100,
            "mbt0",
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
            ],
        )
        .await;
        tokio::time::sleep(QUIET).await;
        let all = common::netns::all_routes(&env.ns);
        assert!(
            !all.contains("10.9.8.0"),
            "own destination installed:\n{all}"
        );

        // A withdrawal, then p2's disconnect (its routes withdrawn by the server).
        p1.withdraw(&R(
            100,
            v6("2001:db8:c::", 64),
            NextHop::load_balancer(hop("2001:db8::6")),
        ))
        .await;
        p2.disconnect().await.unwrap();
        wait_table(
            &env.ns,
            100,
            "mbt0",
            &[
                ("10.0.1.0/24", &["2001:db8::1"]),
                ("10.0.2.0/24", &["2001:db8::2"]),
                ("10.0.3.0/24", &["2001:db8::3"]),
                ("10.0.4.0/24", &["2001:db8::12"]),
            ],
            &[
                ("2001:db8:a::/64", &["2001:db8::4"]),
                ("2001:db8:b::/64", &["2001:db8::5"]),
            ],
        )
        .await;
        assert!(client.is_alive(), "client exited; log:\n{}", client.logs());
        drop(client);
        let _ = p1.disconnect().await;
        if let Some(s) = rb_server {
            let _ = s.shutdown().await;
        }
        drop(our_server);
    });
    drop(env);
}

#[test]
fn two_way_against_rustbond_server() {
    if !may_run("two_way_against_rustbond_server") {
        return;
    }
    two_way(ServerKind::Rustbond);
}

#[test]
fn two_way_against_metalbondd_server() {
    if !may_run("two_way_against_metalbondd_server") {
        return;
    }
    two_way(ServerKind::Metalbondd);
}
