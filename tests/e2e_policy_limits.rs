//! Peer policy limits (docs/POLICY.md) with the real binary: a connection
//! storm from one loopback address against `max_sessions_per_address` and
//! `connect_rate` (closed at accept, before any HELLO; other addresses keep
//! connecting and exchanging routes; a few log lines), and
//! `max_routes_per_vni` (the excess of each VNI is refused, or the session
//! closed).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::api::connect;
use common::http::{get, value};
use common::*;
use metalbond_proto::api as pb;

const POLICY: &str = r#"
[[policy.class]]
name = "storm"
match = ["127.0.0.2/31"]
max_sessions_per_address = 4
connect_rate = "5/s"
connect_burst = 10

[[policy.class]]
name = "pervni"
match = ["127.0.0.4/32"]
max_routes_per_vni = 20
max_routes_warn = 50

[[policy.class]]
name = "vniclose"
match = ["127.0.0.5/32"]
max_routes_per_vni = 2
max_routes_action = "close"
"#;

/// A daemon with [`POLICY`] listening on [::1] (the open default class's
/// observers) and 127.0.0.1; returns it and its IPv4 address.
async fn start() -> (Daemon, SocketAddr) {
    let (d, v4, _) = Daemon::start_with_config_v4(POLICY).await;
    (d, v4)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Sessions the server lists from source address `src`.
async fn peers_from(d: &Daemon, src: IpAddr) -> Vec<pb::Peer> {
    let mut api = connect(&d.api_socket()).await;
    api::list_peers(&mut api)
        .await
        .into_iter()
        .filter(|p| {
            p.remote_address
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.ip() == src)
        })
        .collect()
}

/// Log lines of refused connections from `src`.
fn storm_lines(d: &Daemon, src: &str) -> Vec<String> {
    let address = format!("address={src}");
    d.logs()
        .lines()
        .filter(|l| l.contains("policy refused a connection") && l.contains(&address))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_connection_storm_from_one_address_is_held_at_its_limits_and_others_connect() {
    let (d, v4) = start().await;
    let storm_src = ip("127.0.0.2");
    // 200 connections from 127.0.0.2 at once, each trying the handshake.
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(async move {
                let mut p = RawPeer::connect_from(v4, storm_src).await;
                let hello = p.try_handshake(DEFAULT_KEEPALIVE).await;
                (p, hello.is_some())
            })
        })
        .collect();

    // Meanwhile a peer of the same class at another address (127.0.0.3)
    // connects and exchanges routes with an open observer (::1).
    let mut obs = RawPeer::established(d.addr).await;
    obs.subscribe(100).await;
    let mut other = RawPeer::established_from(v4, ip("127.0.0.3")).await;
    other.subscribe(100).await;
    let theirs = route("100#10.3.0.0/24@127.0.0.3");
    other.announce(theirs).await;
    obs.expect_exactly(&[add(theirs)], "127.0.0.3's route during the storm")
        .await;
    let ours = route("100#10.1.0.0/24@2001:db8::1");
    obs.announce(ours).await;
    other
        .expect_exactly(&[add(ours)], "the observer's route at 127.0.0.3")
        .await;

    let mut admitted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (p, ok) = t.await.unwrap();
        if ok {
            admitted.push(p);
        } else {
            refused += 1;
        }
    }
    // Exactly max_sessions_per_address got a HELLO; the others were
    // closed without one.
    assert_eq!(admitted.len(), 4, "{refused} refused; log:\n{}", d.logs());
    let listed = peers_from(&d, storm_src).await;
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert!(
        listed.iter().all(|p| p.policy_class == "storm"),
        "{listed:?}"
    );
    assert_eq!(peers_from(&d, ip("127.0.0.3")).await.len(), 1);

    // Counted by class and reason (every token of the burst went to an
    // attempt: 4 sessions, 6 over the session limit, the rest over the rate
    // (a token that refilled meanwhile goes to the session limit).
    let metrics = d.http_addr("/metrics").await;
    let text = get(metrics, "/metrics").await.body;
    let policy = |reason: &str| {
        value(
            &text,
            "metalbondd_policy_refused_total",
            &[("class", "storm"), ("reason", reason)],
        )
    };
    let rejected = |reason: &str| {
        value(
            &text,
            "metalbondd_connections_rejected_total",
            &[("reason", reason)],
        )
    };
    let per_address = policy("sessions_per_address");
    let rate = policy("connect_rate");
    assert_eq!(per_address + rate, 196.0, "{per_address} + {rate}");
    assert!(per_address >= 6.0, "{per_address}");
    assert!(rate >= 100.0, "{rate}");
    assert_eq!(rejected("sessions_per_address"), per_address);
    assert_eq!(rejected("connect_rate"), rate);
    assert_eq!(policy("max_routes"), 0.0);

    // A few log lines, not one per connection: one for the address within
    // the log interval (two if the test straddled it), none per session.
    let lines = storm_lines(&d, "127.0.0.2");
    assert!(
        (1..=2).contains(&lines.len()),
        "{} lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(lines[0].contains("class=storm"), "{}", lines[0]);
    let accepted_lines = d
        .logs()
        .lines()
        .filter(|l| l.contains("session accepted") && l.contains("peer=127.0.0.2:"))
        .count();
    assert_eq!(accepted_lines, 4);
    assert!(storm_lines(&d, "127.0.0.3").is_empty());

    // A session that ends frees its place: after the rate refills, the
    // address connects again (bounded polling; each try takes a token).
    drop(admitted.pop());
    let deadline = tokio::time::Instant::now() + T;
    while peers_from(&d, storm_src).await.len() != 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = None;
    while again.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "127.0.0.2 could not connect again; log:\n{}",
            d.logs()
        );
        let mut p = RawPeer::connect_from(v4, storm_src).await;
        if p.try_handshake(DEFAULT_KEEPALIVE).await.is_some() {
            again = Some(p);
        } else {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert_eq!(peers_from(&d, storm_src).await.len(), 4);
    // And the fifth is still refused.
    let mut fifth = RawPeer::connect_from(v4, storm_src).await;
    assert!(fifth.try_handshake(DEFAULT_KEEPALIVE).await.is_none());
}

#[tokio::test]
async fn max_routes_per_vni_refuses_the_excess_of_each_vni_or_closes() {
    let (d, v4) = start().await;
    let mut obs = RawPeer::established(d.addr).await;
    obs.subscribe(100).await;
    obs.subscribe(200).await;
    let mut helper = RawPeer::established(d.addr).await;
    let mut a = RawPeer::established_from(v4, ip("127.0.0.4")).await;
    let in_vni = |vni: u32| -> Vec<_> {
        (0..50)
            .map(|i| route(&format!("{vni}#10.{}.{i}.0/24@2001:db8::4", vni / 100)))
            .collect()
    };
    let (r100, r200) = (in_vni(100), in_vni(200));
    for (x, y) in r100.iter().zip(&r200) {
        a.announce(*x).await;
        a.announce(*y).await;
    }
    // Everything a sent has reached the table: the observer's next 40
    // updates are all there is.
    barrier(&mut a, &mut helper, 300).await;
    let want: Vec<_> = r100[..20]
        .iter()
        .chain(&r200[..20])
        .map(|r| add(*r))
        .collect();
    obs.expect_exactly(&want, "the first 20 routes of each VNI")
        .await;

    let mut api = connect(&d.api_socket()).await;
    let pa = api
        .peers
        .get_peer(pb::GetPeerRequest {
            peer: Some(pb::get_peer_request::Peer::Address(a.local.to_string())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pa.policy_class, "pervni");
    assert_eq!((pa.routes_refused, pa.routes_announced), (60, 40), "{pa:?}");
    assert_eq!(pa.last_refusal_reason, "max_routes_per_vni");
    let metrics = d.http_addr("/metrics").await;
    let text = get(metrics, "/metrics").await.body;
    assert_eq!(
        value(
            &text,
            "metalbondd_policy_refused_total",
            &[("class", "pervni"), ("reason", "max_routes_per_vni")],
        ),
        60.0
    );
    let peer = format!("peer={}", a.local);
    let refusals = d
        .logs()
        .lines()
        .filter(|l| l.contains("policy refused") && l.contains(&peer))
        .count();
    assert_eq!(refusals, 1, "one line per session and reason");
    assert!(
        d.wait_for_log("session near its policy's max_routes_per_vni", T)
            .await
    );

    // A withdrawal frees a place in its VNI only.
    a.withdraw(r100[0]).await;
    a.announce(r200[20]).await;
    a.announce(r100[20]).await;
    obs.expect_exactly(&[rem(r100[0]), add(r100[20])], "a freed place in 100")
        .await;

    // "close": the third route into one VNI closes the session; its routes
    // are withdrawn.
    let mut c = RawPeer::established_from(v4, ip("127.0.0.5")).await;
    let c_routes: Vec<_> = (0..3)
        .map(|i| route(&format!("200#10.9.{i}.0/24@2001:db8::5")))
        .collect();
    for r in &c_routes {
        c.announce(*r).await;
    }
    c.expect_closed(T).await;
    let reason = d
        .expect_close_reason(c.local, &["max_routes_per_vni = 2"])
        .await;
    assert!(
        reason.contains("VNI 200") && reason.contains("vniclose"),
        "{reason}"
    );
    let got = obs.expect_updates(4, T).await;
    assert_same_updates(
        &got,
        &[
            add(c_routes[0]),
            add(c_routes[1]),
            rem(c_routes[0]),
            rem(c_routes[1]),
        ],
        "the closed session's routes come and go",
    );
    obs.expect_no_update(QUIET).await;
}
