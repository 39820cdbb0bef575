//! End-to-end semantics of the route server (PROTOCOL.md sections 1-4):
//! the real `metalbondd` binary on loopback, driven by raw MetalBond peers.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use metalbondd::wire::{Frame, Hello, Message, NextHopType, Route};

/// A daemon and an established subscriber of `vnis`.
async fn daemon_with_subscriber(vnis: &[u32]) -> (Daemon, RawPeer) {
    let d = Daemon::start(&[]);
    let mut sub = RawPeer::established(d.addr).await;
    for &v in vnis {
        sub.subscribe(v).await;
    }
    (d, sub)
}

/// Every route kind PROTOCOL.md names, IPv4 and IPv6, in VNI 100.
fn all_kinds_of_routes() -> Vec<Route> {
    let mut routes: Vec<Route> = [
        // STANDARD, IPv4 and IPv6 destinations.
        "100#10.0.1.0/24@2001:db8::1",
        "100#2001:db8:100::/48@2001:db8::2",
        "100#10.9.9.9/32@2001:db8::2",
        "100#2001:db8:100::7/128@2001:db8::2",
        // Default routes and host bits set: the address is not masked.
        "100#0.0.0.0/0@2001:db8::3",
        "100#::/0@2001:db8::3",
        "100#10.0.4.7/24@2001:db8::3",
        // IPv4 next hop.
        "100#10.0.5.0/24@192.0.2.7",
        // NAT: two hops differing only in port range are two routes.
        "100#10.0.2.0/24@2001:db8::4#nat#1024#2048",
        "100#10.0.2.0/24@2001:db8::4#nat#2049#4096",
        "100#2001:db8:300::/64@2001:db8::4#nat#0#65535",
        "100#10.0.6.0/24@2001:db8::4#nat#7#7",
        // LOADBALANCER_TARGET.
        "100#10.0.3.0/24@2001:db8::5#lb",
        "100#2001:db8:200::/64@2001:db8::5#lb",
    ]
    .iter()
    .map(|s| route(s))
    .collect();
    // Target VNI set.
    let mut with_target = route("100#10.0.7.0/24@2001:db8::6");
    with_target.next_hop.target_vni = 4242;
    routes.push(with_target);
    // An unknown next-hop type is stored and forwarded unchanged.
    let mut unknown = route("100#10.0.8.0/24@2001:db8::7");
    unknown.next_hop.kind = NextHopType(7);
    routes.push(unknown);
    routes
}

#[tokio::test]
async fn std_nat_lb_ipv4_ipv6_routes_arrive_exactly_and_are_withdrawn() {
    let (d, mut sub) = daemon_with_subscriber(&[100]).await;
    let mut ann = RawPeer::established(d.addr).await;
    let routes = all_kinds_of_routes();
    for &r in &routes {
        ann.announce(r).await;
    }
    let adds: Vec<_> = routes.iter().map(|&r| add(r)).collect();
    sub.expect_exactly(&adds, "ADD of every route kind").await;

    for &r in &routes {
        ann.withdraw(r).await;
    }
    let removes: Vec<_> = routes.iter().map(|&r| rem(r)).collect();
    sub.expect_exactly(&removes, "REMOVE of every route kind")
        .await;
    // The announcer itself never hears any of it.
    ann.expect_no_update(QUIET).await;
}

#[tokio::test]
async fn late_subscriber_gets_dump_without_its_own_routes() {
    let (d, mut early) = daemon_with_subscriber(&[100]).await;
    let mut a = RawPeer::established(d.addr).await;
    let r1 = route("100#10.0.1.0/24@2001:db8::1");
    let r2 = route("100#2001:db8:1::/64@2001:db8::1");
    let r3 = route("100#10.0.3.0/24@2001:db8::1#nat#1000#1999");
    let r4 = route("100#10.0.4.0/24@2001:db8::1#lb");
    let other_vni = route("200#10.0.9.0/24@2001:db8::1");
    for r in [r1, r2, r3, r4, other_vni] {
        a.announce(r).await;
    }

    // The late peer announces its own routes (including a NAT one: the Go
    // reference leaves non-NAT own routes in the dump) before subscribing.
    let mut late = RawPeer::established(d.addr).await;
    let own_std = route("100#10.1.0.0/24@2001:db8::99");
    let own_nat = route("100#10.1.1.0/24@2001:db8::99#nat#1#2");
    late.announce(own_std).await;
    late.announce(own_nat).await;
    // The early subscriber proves all of it reached the table.
    early
        .expect_exactly(
            &[
                add(r1),
                add(r2),
                add(r3),
                add(r4),
                add(own_std),
                add(own_nat),
            ],
            "live updates to the early subscriber",
        )
        .await;

    late.subscribe(100).await;
    late.expect_exactly(
        &[add(r1), add(r2), add(r3), add(r4)],
        "dump: every route of VNI 100, none of the subscriber's own, none of VNI 200",
    )
    .await;

    // After the dump, live updates flow.
    let r5 = route("100#10.0.5.0/24@2001:db8::1");
    a.announce(r5).await;
    assert_eq!(late.expect_update(T).await, add(r5));
    late.expect_no_update(QUIET).await;
}

#[tokio::test]
async fn ecmp_two_announcers_of_one_destination_give_both_next_hops() {
    let (d, mut sub) = daemon_with_subscriber(&[100]).await;
    let mut a = RawPeer::established(d.addr).await;
    let mut b = RawPeer::established(d.addr).await;
    let ra = route("100#10.0.1.0/24@2001:db8::a");
    let rb = route("100#10.0.1.0/24@2001:db8::b");
    a.announce(ra).await;
    b.announce(rb).await;
    sub.expect_exactly(&[add(ra), add(rb)], "both next hops")
        .await;

    // A late subscriber gets both in its dump too.
    let mut late = RawPeer::established(d.addr).await;
    late.subscribe(100).await;
    late.expect_exactly(&[add(ra), add(rb)], "dump with both next hops")
        .await;

    // Withdrawing one next hop leaves the other.
    a.withdraw(ra).await;
    sub.expect_exactly(&[rem(ra)], "only A's next hop goes")
        .await;
    late.expect_exactly(&[rem(ra)], "only A's next hop goes")
        .await;
}

#[tokio::test]
async fn same_route_from_two_peers_one_add_survives_first_disconnect() {
    let (d, mut sub) = daemon_with_subscriber(&[100]).await;
    let mut a = RawPeer::established(d.addr).await;
    let mut b = RawPeer::established(d.addr).await;
    let shared = route("100#10.0.1.0/24@2001:db8::1");
    let only_a = route("100#10.0.2.0/24@2001:db8::a");
    let only_b = route("100#10.0.3.0/24@2001:db8::b");
    let marker = route("100#10.0.4.0/24@2001:db8::b");

    a.announce(shared).await;
    a.announce(only_a).await;
    sub.expect_exactly(&[add(shared), add(only_a)], "A's routes")
        .await;

    // B announces the same route: no second ADD. The marker, sent after it
    // on the same session, arrives next.
    b.announce(shared).await;
    b.announce(only_b).await;
    b.announce(marker).await;
    sub.expect_exactly(
        &[add(only_b), add(marker)],
        "B's routes, without a second ADD of the shared one",
    )
    .await;

    // A goes away: its own route is withdrawn, the shared one stays.
    drop(a);
    sub.expect_exactly(
        &[rem(only_a)],
        "A disconnected: only its exclusive route is withdrawn",
    )
    .await;

    // The shared route is still in the table.
    let mut late = RawPeer::established(d.addr).await;
    late.subscribe(100).await;
    late.expect_exactly(
        &[add(shared), add(only_b), add(marker)],
        "dump after A left",
    )
    .await;

    // B goes away: now the shared route is withdrawn.
    drop(b);
    let want = [rem(shared), rem(only_b), rem(marker)];
    sub.expect_exactly(&want, "B disconnected").await;
    late.expect_exactly(&want, "B disconnected").await;
}

#[tokio::test]
async fn same_route_from_two_peers_explicit_removes() {
    let (d, mut sub) = daemon_with_subscriber(&[100]).await;
    let mut a = RawPeer::established(d.addr).await;
    let mut b = RawPeer::established(d.addr).await;
    let shared = route("100#10.0.1.0/24@2001:db8::1#nat#100#200");
    let marker_a = route("100#10.0.2.0/24@2001:db8::a");
    let marker_b = route("100#10.0.3.0/24@2001:db8::b");

    a.announce(shared).await;
    assert_eq!(sub.expect_update(T).await, add(shared));
    // B joins; its marker, sent after, proves the join was processed.
    b.announce(shared).await;
    b.announce(marker_b).await;
    sub.expect_exactly(&[add(marker_b)], "no second ADD when B joins")
        .await;
    // A's REMOVE: B still announces it, nothing is sent. The marker, sent
    // by A after its REMOVE, proves the REMOVE was processed.
    a.withdraw(shared).await;
    a.announce(marker_a).await;
    sub.expect_exactly(&[add(marker_a)], "no REMOVE while B still announces")
        .await;

    b.withdraw(shared).await;
    sub.expect_exactly(&[rem(shared)], "last announcer withdrew")
        .await;
}

#[tokio::test]
async fn repeated_add_changes_nothing_and_one_remove_withdraws() {
    let (d, mut sub) = daemon_with_subscriber(&[100]).await;
    let mut a = RawPeer::established(d.addr).await;
    let r = route("100#2001:db8:5::/64@2001:db8::1");
    let marker = route("100#10.0.2.0/24@2001:db8::a");
    a.announce(r).await;
    a.announce(r).await;
    a.announce(r).await;
    a.announce(marker).await;
    sub.expect_exactly(
        &[add(r), add(marker)],
        "one ADD for a repeated announcement",
    )
    .await;
    // One REMOVE is enough: the announcer set holds A once.
    a.withdraw(r).await;
    sub.expect_exactly(&[rem(r)], "REMOVE after a repeated ADD")
        .await;
}

#[tokio::test]
async fn vni_isolation() {
    let d = Daemon::start(&[]);
    let mut s100 = RawPeer::established(d.addr).await;
    s100.subscribe(100).await;
    let mut s200 = RawPeer::established(d.addr).await;
    s200.subscribe(200).await;
    let mut a = RawPeer::established(d.addr).await;

    let r100 = route("100#10.0.1.0/24@2001:db8::1");
    let r200 = route("200#10.0.1.0/24@2001:db8::1");
    let r300 = route("300#10.0.1.0/24@2001:db8::1");
    // Same destination and next hop in three VNIs are three routes.
    a.announce(r300).await;
    a.announce(r200).await;
    a.announce(r100).await;
    s100.expect_exactly(&[add(r100)], "VNI 100 only").await;
    s200.expect_exactly(&[add(r200)], "VNI 200 only").await;

    a.withdraw(r200).await;
    s200.expect_exactly(&[rem(r200)], "REMOVE in VNI 200").await;
    s100.expect_no_update(QUIET).await;

    // Dumps are per VNI as well.
    let mut late = RawPeer::established(d.addr).await;
    late.subscribe(300).await;
    late.expect_exactly(&[add(r300)], "dump of VNI 300").await;
}

#[tokio::test]
async fn announcements_are_never_echoed_to_the_announcer() {
    let (d, mut sub) = daemon_with_subscriber(&[100]).await;
    let mut a = RawPeer::established(d.addr).await;
    a.subscribe(100).await;
    let r = route("100#10.0.1.0/24@2001:db8::a");
    let r_nat = route("100#10.0.2.0/24@2001:db8::a#nat#10#20");
    a.announce(r).await;
    a.announce(r_nat).await;
    sub.expect_exactly(&[add(r), add(r_nat)], "the other subscriber hears it")
        .await;
    a.expect_no_update(QUIET).await;

    a.withdraw(r).await;
    sub.expect_exactly(&[rem(r)], "the other subscriber hears the REMOVE")
        .await;
    a.expect_no_update(QUIET).await;

    // A route announced by a peer that then subscribes (again: not in its dump).
    let mut b = RawPeer::established(d.addr).await;
    let rb = route("100#10.0.3.0/24@2001:db8::b");
    b.announce(rb).await;
    sub.expect_exactly(&[add(rb)], "B's route").await;
    assert_eq!(a.expect_update(T).await, add(rb), "A hears B's route");
    b.subscribe(100).await;
    b.expect_exactly(&[add(r_nat)], "B's dump: A's route, not B's own")
        .await;
}

#[tokio::test]
async fn routes_are_withdrawn_when_their_announcer_disconnects() {
    let (d, mut sub) = daemon_with_subscriber(&[100, 200]).await;
    let mut a = RawPeer::established(d.addr).await;
    let r1 = route("100#10.0.1.0/24@2001:db8::a");
    let r2 = route("200#2001:db8:2::/64@2001:db8::a#lb");
    let r3 = route("200#10.0.3.0/24@2001:db8::a#nat#5#6");
    for r in [r1, r2, r3] {
        a.announce(r).await;
    }
    sub.expect_exactly(&[add(r1), add(r2), add(r3)], "A's routes")
        .await;
    drop(a);
    sub.expect_exactly(&[rem(r1), rem(r2), rem(r3)], "A disconnected")
        .await;

    // They are gone from the table.
    let mut late = RawPeer::established(d.addr).await;
    late.subscribe(100).await;
    late.subscribe(200).await;
    late.expect_no_update(QUIET).await;
}

#[tokio::test]
async fn routes_are_withdrawn_when_announcer_half_closes() {
    // EOF with the socket still readable on our side is a disconnect too.
    let (d, mut sub) = daemon_with_subscriber(&[100]).await;
    let mut a = RawPeer::established(d.addr).await;
    let r = route("100#10.0.1.0/24@2001:db8::a");
    a.announce(r).await;
    sub.expect_exactly(&[add(r)], "A's route").await;
    a.shutdown_write().await;
    sub.expect_exactly(&[rem(r)], "A sent EOF").await;
    a.expect_closed(T).await;
}

#[tokio::test]
async fn explicit_remove_and_removes_of_unknown_routes() {
    let (d, mut sub) = daemon_with_subscriber(&[100]).await;
    let mut a = RawPeer::established(d.addr).await;
    let mut b = RawPeer::established(d.addr).await;
    let r = route("100#10.0.1.0/24@2001:db8::a");
    let never = route("100#10.99.0.0/16@2001:db8::dead");
    let marker = route("100#10.0.2.0/24@2001:db8::b");
    a.announce(r).await;
    sub.expect_exactly(&[add(r)], "A's route").await;

    // B withdraws A's route (it never announced it) and an unknown route:
    // both ignored, B stays connected.
    b.withdraw(r).await;
    b.withdraw(never).await;
    b.announce(marker).await;
    sub.expect_exactly(
        &[add(marker)],
        "REMOVEs of routes B never announced are ignored",
    )
    .await;
    b.ping().await;

    // A's explicit REMOVE withdraws it.
    a.withdraw(r).await;
    sub.expect_exactly(&[rem(r)], "A's REMOVE").await;
    // A second REMOVE of the same route is ignored.
    a.withdraw(r).await;
    a.ping().await;
    sub.expect_no_update(QUIET).await;

    let mut late = RawPeer::established(d.addr).await;
    late.subscribe(100).await;
    late.expect_exactly(&[add(marker)], "table after the REMOVEs")
        .await;
}

#[tokio::test]
async fn unsubscribe_stops_updates_but_keeps_own_announcements() {
    let (d, mut watcher) = daemon_with_subscriber(&[100]).await;
    let mut s = RawPeer::established(d.addr).await;
    let mut a = RawPeer::established(d.addr).await;
    s.subscribe(100).await;
    let own = route("100#10.5.0.0/24@2001:db8::5");
    s.announce(own).await;
    watcher.expect_exactly(&[add(own)], "S's route").await;

    let r1 = route("100#10.0.1.0/24@2001:db8::a");
    a.announce(r1).await;
    watcher.expect_exactly(&[add(r1)], "A's first route").await;
    assert_eq!(s.expect_update(T).await, add(r1), "S subscribed: hears A");

    s.unsubscribe(100).await;
    // Unsubscribing a VNI never subscribed is ignored.
    s.unsubscribe(4321).await;
    barrier(&mut s, &mut a, 9001).await;

    let r2 = route("100#10.0.2.0/24@2001:db8::a");
    a.announce(r2).await;
    a.withdraw(r1).await;
    watcher
        .expect_exactly(&[add(r2), rem(r1)], "watcher still hears VNI 100")
        .await;
    s.expect_no_update(QUIET).await;
    // Its own route was not withdrawn: the watcher got no REMOVE for it
    // (checked above), and a new subscriber's dump holds it.
    let mut late = RawPeer::established(d.addr).await;
    late.subscribe(100).await;
    late.expect_exactly(&[add(own), add(r2)], "dump after S unsubscribed")
        .await;

    // Subscribing again brings a dump (without S's own route) and live updates.
    s.subscribe(100).await;
    s.expect_exactly(&[add(r2)], "dump on re-subscribe").await;
}

#[tokio::test]
async fn duplicate_subscribe_gives_no_second_dump() {
    let (d, mut s) = daemon_with_subscriber(&[100]).await;
    let mut a = RawPeer::established(d.addr).await;
    let r1 = route("100#10.0.1.0/24@2001:db8::a");
    let r2 = route("100#2001:db8:1::/64@2001:db8::a");
    a.announce(r1).await;
    a.announce(r2).await;
    s.expect_exactly(&[add(r1), add(r2)], "updates").await;

    s.subscribe(100).await;
    // Anything sent because of the duplicate would arrive before the marker.
    barrier(&mut s, &mut a, 9002).await;
    s.expect_no_update(QUIET).await;

    // Still one update per change, not two.
    let r3 = route("100#10.0.3.0/24@2001:db8::a");
    a.announce(r3).await;
    s.expect_exactly(&[add(r3)], "one ADD after a duplicate SUBSCRIBE")
        .await;
    s.ping().await;
}

#[tokio::test]
async fn routes_into_unsubscribed_vnis_are_distributed() {
    let (d, mut sub) = daemon_with_subscriber(&[700]).await;
    let mut a = RawPeer::established(d.addr).await;
    // A subscribes to nothing and announces into VNI 700.
    let r = route("700#10.0.1.0/24@2001:db8::a");
    a.announce(r).await;
    sub.expect_exactly(&[add(r)], "route from a non-subscriber")
        .await;
}

#[tokio::test]
async fn subscribe_and_update_before_established_are_processed() {
    // PROTOCOL.md section 3: SUBSCRIBE/UPDATE that arrive before ESTABLISHED
    // are accepted and processed in order; nothing is sent before ESTABLISHED.
    let (d, mut sub) = daemon_with_subscriber(&[100]).await;
    let mut a = RawPeer::established(d.addr).await;
    let ra = route("100#10.0.1.0/24@2001:db8::a");
    a.announce(ra).await;
    sub.expect_exactly(&[add(ra)], "A's route").await;

    let mut early = RawPeer::connect(d.addr).await;
    let re = route("100#10.0.2.0/24@2001:db8::e");
    let mut bytes = frame(&Message::Hello(Hello {
        keepalive_secs: 5,
        is_server: false,
        extensions: 0,
    }));
    bytes.extend(frame(&Message::Subscribe(metalbondd::wire::Vni(100))));
    bytes.extend(frame(&Message::Update(add(re))));
    early.send_raw(&bytes).await;
    // The only thing before our KEEPALIVE is the server's HELLO.
    match early.recv(T).await {
        Recv::Frame(Frame::Message(Message::Hello(h))) => assert_eq!(h.keepalive_secs, 5),
        other => panic!("expected HELLO, got {other:?}"),
    }
    early.expect_no_update(QUIET).await;
    // The UPDATE was processed before ESTABLISHED.
    sub.expect_exactly(&[add(re)], "UPDATE sent before ESTABLISHED")
        .await;

    early.send(&Message::Keepalive).await;
    match early.recv(T).await {
        Recv::Frame(Frame::Message(Message::Keepalive)) => {}
        other => panic!("expected KEEPALIVE, got {other:?}"),
    }
    // Now the dump of the subscription made before ESTABLISHED arrives.
    early
        .expect_exactly(&[add(ra)], "dump for a SUBSCRIBE sent before ESTABLISHED")
        .await;
}

#[tokio::test]
async fn frames_split_across_writes_and_many_frames_in_one_write() {
    let (d, mut sub) = daemon_with_subscriber(&[100]).await;
    let mut a = RawPeer::connect(d.addr).await;

    // HELLO one byte per write.
    let hello = frame(&Message::Hello(Hello {
        keepalive_secs: 5,
        is_server: false,
        extensions: 0,
    }));
    for byte in &hello {
        a.send_raw(std::slice::from_ref(byte)).await;
        tokio::task::yield_now().await;
    }
    match a.recv(T).await {
        Recv::Frame(Frame::Message(Message::Hello(_))) => {}
        other => panic!("expected HELLO after a byte-wise HELLO, got {other:?}"),
    }
    a.send(&Message::Keepalive).await;
    match a.recv(T).await {
        Recv::Frame(Frame::Message(Message::Keepalive)) => {}
        other => panic!("expected KEEPALIVE, got {other:?}"),
    }

    // Many UPDATEs in one write.
    let routes: Vec<Route> = (0..200u32)
        .map(|i| route(&format!("100#10.{}.{}.0/24@2001:db8::a", i / 256, i % 256)))
        .collect();
    let mut batch = Vec::new();
    for &r in &routes {
        batch.extend(frame(&Message::Update(add(r))));
    }
    a.send_raw(&batch).await;
    let adds: Vec<_> = routes.iter().map(|&r| add(r)).collect();
    sub.expect_exactly(&adds, "200 UPDATEs from one write")
        .await;

    // One UPDATE cut in two writes at every possible point.
    let mut cut_routes = Vec::new();
    for cut in 1..frame(&Message::Update(add(routes[0]))).len() {
        let r = route(&format!("100#10.200.{cut}.0/24@2001:db8::a"));
        let bytes = frame(&Message::Update(add(r)));
        a.send_raw(&bytes[..cut]).await;
        tokio::task::yield_now().await;
        a.send_raw(&bytes[cut..]).await;
        cut_routes.push(r);
    }
    let adds: Vec<_> = cut_routes.iter().map(|&r| add(r)).collect();
    sub.expect_exactly(&adds, "UPDATEs split across two writes")
        .await;

    // Writes that end and start in the middle of frames.
    let tail_routes: Vec<Route> = (0..20u32)
        .map(|i| route(&format!("100#10.201.{i}.0/24@2001:db8::a")))
        .collect();
    let mut stream = Vec::new();
    for &r in &tail_routes {
        stream.extend(frame(&Message::Update(add(r))));
    }
    for chunk in stream.chunks(7) {
        a.send_raw(chunk).await;
        tokio::task::yield_now().await;
    }
    let adds: Vec<_> = tail_routes.iter().map(|&r| add(r)).collect();
    sub.expect_exactly(&adds, "UPDATEs in 7-byte writes").await;
    a.ping().await;
}

#[tokio::test]
async fn keepalive_is_answered_exactly_once_and_never_originated() {
    // Interval 1 s: a server that originates keepalives would send one
    // within the quiet periods below.
    let d = Daemon::start(&["--keepalive", "1"]);
    let mut p = RawPeer::connect(d.addr).await;

    // Nothing before our HELLO.
    p.expect_no_update(QUIET).await;
    p.send(&Message::Hello(Hello {
        keepalive_secs: 1,
        is_server: false,
        extensions: 0,
    }))
    .await;
    match p.recv(T).await {
        Recv::Frame(Frame::Message(Message::Hello(h))) => {
            assert_eq!(h.keepalive_secs, 1);
        }
        other => panic!("expected HELLO, got {other:?}"),
    }
    // Exactly one HELLO and no KEEPALIVE before ours.
    p.expect_no_update(Duration::from_millis(1200)).await;

    // Each KEEPALIVE gets exactly one answer.
    for _ in 0..3 {
        p.send(&Message::Keepalive).await;
        match p.recv(T).await {
            Recv::Frame(Frame::Message(Message::Keepalive)) => {}
            other => panic!("expected one KEEPALIVE answer, got {other:?}"),
        }
        // More than one interval without asking: nothing comes (and the
        // session does not time out, since 1.2 s < 2.5 s).
        p.expect_no_update(Duration::from_millis(1200)).await;
    }

    // Three in one write: exactly three answers.
    let ka = frame(&Message::Keepalive);
    p.send_raw(&[ka.clone(), ka.clone(), ka].concat()).await;
    for i in 0..3 {
        match p.recv(T).await {
            Recv::Frame(Frame::Message(Message::Keepalive)) => {}
            other => panic!("expected KEEPALIVE answer {i}, got {other:?}"),
        }
    }
    p.expect_no_update(QUIET).await;
}

#[tokio::test]
async fn peer_without_keepalives_times_out_after_2_5_intervals() {
    let d = Daemon::start(&["--keepalive", "1"]);
    let mut sub = RawPeer::connect(d.addr).await;
    sub.handshake(1).await;
    sub.subscribe(100).await;
    let mut a = RawPeer::connect(d.addr).await;
    a.handshake(1).await;
    let r = route("100#10.0.1.0/24@2001:db8::a");
    a.announce(r).await;
    assert_eq!(sub.expect_update(T).await, add(r));

    // A stays silent: the server closes it after 2.5 s and withdraws its
    // route; the subscriber keeps pinging to stay alive.
    let start = Instant::now();
    let closed = tokio::spawn(async move {
        a.expect_closed(Duration::from_secs(8)).await;
        start.elapsed()
    });
    let update = sub
        .pinging_expect_update(Duration::from_millis(700), Duration::from_secs(8))
        .await;
    assert_eq!(update, rem(r));
    let elapsed = closed.await.unwrap();
    assert!(
        elapsed >= Duration::from_millis(2000),
        "A was closed after {elapsed:?}, before 2.5 x 1 s"
    );
}

#[tokio::test]
async fn hello_negotiates_min_of_client_and_server_interval() {
    let d = Daemon::start(&["--keepalive", "3"]);
    for (client, want) in [(10, 3), (3, 3), (2, 2), (1, 1), (u32::MAX, 3)] {
        let mut p = RawPeer::connect(d.addr).await;
        let hello = p.handshake(client).await;
        assert_eq!(
            hello,
            Hello {
                keepalive_secs: want,
                is_server: true,
                extensions: 0
            },
            "client proposed {client} s, server configured 3 s"
        );
        p.expect_no_update(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn no_arguments_listen_on_default_port_4711() {
    let default: SocketAddr = "[::1]:4711".parse().unwrap();
    // Skip only when the port is already taken by something else.
    match std::net::TcpListener::bind(default) {
        Ok(l) => drop(l),
        Err(e) => {
            println!(
                "SKIPPED no_arguments_listen_on_default_port_4711: cannot bind {default}: {e}"
            );
            return;
        }
    }
    // No MetalBond arguments; only the API socket and the state store go to
    // a temporary directory, so the test never touches /run or /var/lib.
    let dir = unique_temp_dir();
    let sock = dir.join("api.sock").display().to_string();
    let state = dir.join("state").display().to_string();
    let d = match Daemon::spawn(&["--api-socket", &sock, "--state-dir", &state]) {
        Ok(d) => d,
        // Someone else took the port between our check and the daemon's bind.
        Err(e) if e.contains("in use") => {
            println!(
                "SKIPPED no_arguments_listen_on_default_port_4711: {default} taken meanwhile: {e}"
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        d.addr, default,
        "metalbondd without arguments must listen on {default}"
    );
    let mut p = RawPeer::connect(default).await;
    // Default interval is 5 s: a client proposing more gets 5.
    let hello = p.handshake(30).await;
    assert_eq!(hello.keepalive_secs, 5, "default keepalive interval");
    assert!(hello.is_server);

    // It is a working route server.
    p.subscribe(100).await;
    let mut a = RawPeer::established(default).await;
    let r = route("100#10.0.1.0/24@2001:db8::a");
    a.announce(r).await;
    p.expect_exactly(&[add(r)], "route via the default listener")
        .await;
}

/// SIGTERM to an idle daemon: it exits cleanly and says so in a final line
/// with its uptime, after everything (the state store included) is closed.
/// The time it takes is printed, not asserted (see the ops report for the
/// numbers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_an_idle_daemon_with_a_final_line() {
    let d = Daemon::start(&[]);
    assert!(
        d.wait_for_log("metalbondd running", T).await,
        "{}",
        d.logs()
    );
    let sent = Instant::now();
    let status = tokio::task::block_in_place(|| d.terminate(Duration::from_secs(10)))
        .unwrap_or_else(|| panic!("metalbondd did not exit within 10 s of SIGTERM"));
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}; log:\n{}", d.logs());
    let last = d
        .wait_for_line(|l| l.contains("metalbondd stopped"), T)
        .await
        .unwrap_or_else(|| panic!("no final line; log:\n{}", d.logs()));
    assert!(last.contains("uptime_secs="), "{last}");
    let logs = d.logs();
    let stopping = logs.find("shutting down").expect("a `shutting down` line");
    let stopped = logs.find("metalbondd stopped").unwrap();
    assert!(stopping < stopped, "{logs}");
    eprintln!("SIGTERM to exit of an idle daemon: {took:?}");
}
