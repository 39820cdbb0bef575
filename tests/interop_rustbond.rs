//! Interop: the real `metalbondd` binary with `rustbond` 0.1.3 clients as
//! independent peers (their own codec, handshake and keepalive logic).
//!
//! Route events from each client's handler go into a channel; tests await
//! them with bounded timeouts (no sleeps as synchronisation).
//!
//! Note: a rustbond client deduplicates ADDs it receives, so "exactly one
//! ADD" is checked by the raw-peer suite (e2e_server); here we check what a
//! rustbond peer ends up with.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use common::rustbond::{Ev, Peer, R};
use common::Daemon;
use rustbond::{Destination, NextHop};

/// A rustbond client of the daemon; a failure to connect shows its log.
async fn connect(d: &Daemon, name: &'static str) -> Peer {
    Peer::connect(d.addr, name)
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", d.logs()))
}

impl R {
    fn add(&self) -> Ev {
        Ev::Add(self.0, self.1.clone(), self.2.clone())
    }
    fn rem(&self) -> Ev {
        Ev::Remove(self.0, self.1.clone(), self.2.clone())
    }
}

fn v4(s: &str, len: u8) -> Destination {
    Destination::from_ipv4(s.parse::<Ipv4Addr>().unwrap(), len)
}

fn v6(s: &str, len: u8) -> Destination {
    Destination::from_ipv6(s.parse::<Ipv6Addr>().unwrap(), len)
}

fn hop(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn std_route(vni: u32, dest: Destination, nh: &str) -> R {
    R(vni, dest, NextHop::standard(hop(nh)))
}

#[tokio::test]
async fn std_nat_lb_routes_ipv4_and_ipv6() {
    let d = Daemon::start(&[]);
    let mut sub = connect(&d, "subscriber").await;
    sub.subscribe(100).await;
    let mut ann = connect(&d, "announcer").await;
    let routes = vec![
        std_route(100, v4("10.0.1.0", 24), "2001:db8::1"),
        std_route(100, v6("2001:db8:100::", 48), "2001:db8::2"),
        R(
            100,
            v4("10.0.2.0", 24),
            NextHop::nat(hop("2001:db8::3"), 1024, 2048),
        ),
        // Same NAT hop, other port range: a second route.
        R(
            100,
            v4("10.0.2.0", 24),
            NextHop::nat(hop("2001:db8::3"), 2049, 4096),
        ),
        R(
            100,
            v6("2001:db8:300::", 64),
            NextHop::nat(hop("2001:db8::3"), 0, 65535),
        ),
        R(
            100,
            v4("10.0.3.0", 24),
            NextHop::load_balancer(hop("2001:db8::4")),
        ),
        R(
            100,
            v6("2001:db8:400::", 64),
            NextHop::load_balancer(hop("2001:db8::4")),
        ),
        R(
            100,
            v4("10.0.4.0", 24),
            NextHop::standard_with_vni(hop("2001:db8::5"), 4242),
        ),
    ];
    for r in &routes {
        ann.announce(r).await;
    }
    let adds: Vec<_> = routes.iter().map(R::add).collect();
    sub.expect_exactly(&adds, "every route kind").await;

    for r in &routes {
        ann.withdraw(r).await;
    }
    let removes: Vec<_> = routes.iter().map(R::rem).collect();
    sub.expect_exactly(&removes, "every route kind withdrawn")
        .await;
    ann.expect_nothing("announcer hears nothing").await;
    ann.disconnect().await.unwrap();
    sub.disconnect().await.unwrap();
}

#[tokio::test]
async fn late_subscriber_gets_dump_without_own_routes() {
    let d = Daemon::start(&[]);
    let mut early = connect(&d, "early").await;
    early.subscribe(100).await;
    let a = connect(&d, "a").await;
    let r1 = std_route(100, v4("10.0.1.0", 24), "2001:db8::a");
    let r2 = std_route(100, v6("2001:db8:1::", 64), "2001:db8::a");
    let r3 = R(
        100,
        v4("10.0.3.0", 24),
        NextHop::nat(hop("2001:db8::a"), 100, 200),
    );
    let other_vni = std_route(200, v4("10.0.9.0", 24), "2001:db8::a");
    for r in [&r1, &r2, &r3, &other_vni] {
        a.announce(r).await;
    }
    let mut late = connect(&d, "late").await;
    let own = std_route(100, v4("10.1.0.0", 24), "2001:db8::99");
    let own_nat = R(
        100,
        v4("10.1.1.0", 24),
        NextHop::nat(hop("2001:db8::99"), 1, 2),
    );
    late.announce(&own).await;
    late.announce(&own_nat).await;
    early
        .expect_exactly(
            &[r1.add(), r2.add(), r3.add(), own.add(), own_nat.add()],
            "all announcements reached the table",
        )
        .await;

    late.subscribe(100).await;
    late.expect_exactly(
        &[r1.add(), r2.add(), r3.add()],
        "dump: VNI 100 without own routes",
    )
    .await;

    let r4 = std_route(100, v4("10.0.4.0", 24), "2001:db8::a");
    a.announce(&r4).await;
    late.expect_exactly(&[r4.add()], "live update after the dump")
        .await;
}

#[tokio::test]
async fn ecmp_from_two_announcers() {
    let d = Daemon::start(&[]);
    let mut sub = connect(&d, "subscriber").await;
    sub.subscribe(100).await;
    let a = connect(&d, "a").await;
    let b = connect(&d, "b").await;
    let ra = std_route(100, v4("10.0.1.0", 24), "2001:db8::a");
    let rb = std_route(100, v4("10.0.1.0", 24), "2001:db8::b");
    a.announce(&ra).await;
    b.announce(&rb).await;
    sub.expect_exactly(&[ra.add(), rb.add()], "both next hops")
        .await;
    let mut late = connect(&d, "late").await;
    late.subscribe(100).await;
    late.expect_exactly(&[ra.add(), rb.add()], "dump with both next hops")
        .await;
    a.withdraw(&ra).await;
    sub.expect_exactly(&[ra.rem()], "one next hop withdrawn")
        .await;
    late.expect_exactly(&[ra.rem()], "one next hop withdrawn")
        .await;
}

#[tokio::test]
async fn same_route_from_two_peers_survives_one_disconnect() {
    let d = Daemon::start(&[]);
    let mut sub = connect(&d, "subscriber").await;
    sub.subscribe(100).await;
    let mut a = connect(&d, "a").await;
    let mut b = connect(&d, "b").await;
    let shared = std_route(100, v4("10.0.1.0", 24), "2001:db8::1");
    let only_a = std_route(100, v4("10.0.2.0", 24), "2001:db8::a");
    let only_b = std_route(100, v6("2001:db8:b::", 64), "2001:db8::b");
    a.announce(&shared).await;
    a.announce(&only_a).await;
    sub.expect_exactly(&[shared.add(), only_a.add()], "A's routes")
        .await;
    b.announce(&shared).await;
    b.announce(&only_b).await;
    sub.expect_exactly(&[only_b.add()], "B's routes").await;

    a.disconnect().await.unwrap();
    sub.expect_exactly(&[only_a.rem()], "A gone: shared route stays")
        .await;

    let mut late = connect(&d, "late").await;
    late.subscribe(100).await;
    late.expect_exactly(&[shared.add(), only_b.add()], "dump after A left")
        .await;

    b.disconnect().await.unwrap();
    sub.expect_exactly(&[shared.rem(), only_b.rem()], "B gone")
        .await;
    late.expect_exactly(&[shared.rem(), only_b.rem()], "B gone")
        .await;
}

#[tokio::test]
async fn vni_isolation() {
    let d = Daemon::start(&[]);
    let mut s100 = connect(&d, "s100").await;
    s100.subscribe(100).await;
    let mut s200 = connect(&d, "s200").await;
    s200.subscribe(200).await;
    let a = connect(&d, "a").await;
    let r100 = std_route(100, v4("10.0.1.0", 24), "2001:db8::a");
    let r200 = std_route(200, v4("10.0.1.0", 24), "2001:db8::a");
    let r300 = std_route(300, v4("10.0.1.0", 24), "2001:db8::a");
    a.announce(&r300).await;
    a.announce(&r200).await;
    a.announce(&r100).await;
    s100.expect_exactly(&[r100.add()], "VNI 100 only").await;
    s200.expect_exactly(&[r200.add()], "VNI 200 only").await;
    a.withdraw(&r200).await;
    s200.expect_exactly(&[r200.rem()], "REMOVE in VNI 200")
        .await;
    s100.expect_nothing("nothing from VNI 200").await;
}

#[tokio::test]
async fn no_echo_to_the_announcer() {
    let d = Daemon::start(&[]);
    let mut sub = connect(&d, "subscriber").await;
    sub.subscribe(100).await;
    let mut a = connect(&d, "a").await;
    a.subscribe(100).await;
    let r = std_route(100, v4("10.0.1.0", 24), "2001:db8::a");
    let r_nat = R(
        100,
        v4("10.0.2.0", 24),
        NextHop::nat(hop("2001:db8::a"), 10, 20),
    );
    a.announce(&r).await;
    a.announce(&r_nat).await;
    sub.expect_exactly(&[r.add(), r_nat.add()], "the other subscriber hears it")
        .await;
    a.expect_nothing("no echo of ADD").await;
    a.withdraw(&r).await;
    sub.expect_exactly(&[r.rem()], "the other subscriber hears the REMOVE")
        .await;
    a.expect_nothing("no echo of REMOVE").await;
}

#[tokio::test]
async fn withdrawal_on_disconnect() {
    let d = Daemon::start(&[]);
    let mut sub = connect(&d, "subscriber").await;
    sub.subscribe(100).await;
    sub.subscribe(200).await;
    let mut a = connect(&d, "a").await;
    let r1 = std_route(100, v4("10.0.1.0", 24), "2001:db8::a");
    let r2 = R(
        200,
        v6("2001:db8:2::", 64),
        NextHop::load_balancer(hop("2001:db8::a")),
    );
    let r3 = R(
        200,
        v4("10.0.3.0", 24),
        NextHop::nat(hop("2001:db8::a"), 5, 6),
    );
    for r in [&r1, &r2, &r3] {
        a.announce(r).await;
    }
    sub.expect_exactly(&[r1.add(), r2.add(), r3.add()], "A's routes")
        .await;
    a.disconnect().await.unwrap();
    sub.expect_exactly(&[r1.rem(), r2.rem(), r3.rem()], "A disconnected")
        .await;

    let mut late = connect(&d, "late").await;
    late.subscribe(100).await;
    late.subscribe(200).await;
    late.expect_nothing("table empty after A left").await;
}

/// The SYNC extension (PROTOCOL.md section 8) stays off with a rustbond
/// client, which offers nothing: its dumps (also of an empty VNI) come
/// without a type-100 frame, which a reference peer would choke on, and
/// the session lives on (no reset, no reconnect).
#[tokio::test]
async fn a_rustbond_client_negotiates_no_extension_and_sees_no_sync() {
    let d = Daemon::start(&["-v"]);
    let a = connect(&d, "announcer").await;
    let r1 = std_route(100, v4("10.0.1.0", 24), "2001:db8::a");
    a.announce(&r1).await;
    let mut sub = connect(&d, "subscriber").await;
    sub.subscribe(300).await; // empty
    sub.subscribe(100).await;
    sub.expect_exactly(&[r1.add()], "dump of VNI 100").await;
    let r2 = std_route(100, v4("10.0.2.0", 24), "2001:db8::a");
    a.announce(&r2).await;
    sub.expect_exactly(&[r2.add()], "live update after the dumps")
        .await;
    let logs = d.logs();
    assert!(!logs.contains("extensions negotiated"), "{logs}");
    assert_eq!(
        logs.matches("session established").count(),
        2,
        "a session was reset or reconnected:\n{logs}"
    );
    assert!(!logs.contains("session closed"), "{logs}");
}
