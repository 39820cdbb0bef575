//! Bad input against the real `metalbondd` binary, over raw TCP sockets.
//!
//! Every case checks that (1) the offending session is closed, or where
//! PROTOCOL.md says the frame is skipped, that the session stays up and
//! works; (2) the process is alive; (3) a second peer, connected and
//! subscribed before the bad input, still receives a fresh update announced
//! after it; and (4) where applicable the log names the reason.

mod common;

use std::time::{Duration, Instant};

use common::*;
use metalbondd::wire::{Frame, Hello, Message, Route, Update};
use rand::{rngs::StdRng, RngCore, SeedableRng};

/// A daemon, a subscriber of VNI 100 (the witness) and an announcer whose
/// route `pre` the witness has received.
struct Scene {
    d: Daemon,
    witness: RawPeer,
    announcer: RawPeer,
    pre: Route,
    /// Routes that must be in VNI 100 of the table (checked by a dump).
    live: Vec<Route>,
    /// Peers kept connected so that their routes stay.
    keep: Vec<RawPeer>,
    fresh_count: u32,
}

impl Scene {
    async fn new() -> Scene {
        let d = Daemon::start(&[]);
        let mut witness = RawPeer::established(d.addr).await;
        witness.subscribe(100).await;
        let mut announcer = RawPeer::established(d.addr).await;
        let pre = route("100#10.100.0.0/24@2001:db8::100");
        announcer.announce(pre).await;
        witness.expect_exactly(&[add(pre)], "scene setup").await;
        Scene {
            d,
            witness,
            announcer,
            pre,
            live: vec![pre],
            keep: Vec::new(),
            fresh_count: 0,
        }
    }

    /// A bad peer that completed the handshake and announced a route the
    /// witness has seen.
    async fn established_announcer(&mut self) -> (RawPeer, Route) {
        let mut bad = RawPeer::established(self.d.addr).await;
        self.fresh_count += 1;
        let r = route(&format!(
            "100#10.66.{}.0/24@2001:db8::66#nat#1000#2000",
            self.fresh_count
        ));
        bad.announce(r).await;
        self.witness
            .expect_exactly(&[add(r)], "route of the peer about to misbehave")
            .await;
        (bad, r)
    }

    fn fresh_route(&mut self) -> Route {
        self.fresh_count += 1;
        route(&format!(
            "100#2001:db8:f{}::/64@2001:db8::f",
            self.fresh_count
        ))
    }

    /// The daemon survived and serves: a newcomer's and the old announcer's
    /// fresh routes reach the witness, along with `also` (e.g. the REMOVE
    /// of the closed session's route) and nothing else; a new subscriber's
    /// dump is exactly the routes that should be live. Returns the ADDs of
    /// the fresh routes (other subscribers of VNI 100 get them too).
    async fn check_healthy(&mut self, also: &[Update]) -> Vec<Update> {
        assert!(
            self.d.is_alive(),
            "metalbondd died; log:\n{}",
            self.d.logs()
        );
        let from_newcomer = self.fresh_route();
        let from_old = self.fresh_route();
        let mut newcomer = RawPeer::established(self.d.addr).await;
        newcomer.announce(from_newcomer).await;
        self.announcer.announce(from_old).await;
        let fresh = vec![add(from_newcomer), add(from_old)];
        let mut want = fresh.clone();
        want.extend_from_slice(also);
        self.witness
            .expect_exactly(&want, "witness after the bad input")
            .await;
        self.keep.push(newcomer);
        self.live.extend([from_newcomer, from_old]);
        assert!(
            self.d.is_alive(),
            "metalbondd died; log:\n{}",
            self.d.logs()
        );
        // The table holds exactly what it should.
        let mut late = RawPeer::established(self.d.addr).await;
        late.subscribe(100).await;
        let dump: Vec<Update> = self.live.iter().map(|&r| add(r)).collect();
        late.expect_exactly(&dump, "dump after the bad input").await;
        fresh
    }
}

/// Sends `bytes` and expects the server to close the session without
/// sending anything.
async fn expect_rejected(bad: &mut RawPeer, bytes: &[u8]) {
    // The server may close while we write; a failed write is fine.
    let _ = tokio::time::timeout(T, bad.try_send_raw(bytes)).await;
    let frames = bad.expect_closed(T).await;
    assert!(
        frames.is_empty(),
        "{}: the server answered bad input with {frames:?}",
        bad.local
    );
}

fn update_frame(payload: &[u8]) -> Vec<u8> {
    raw_frame(1, mtype::UPDATE, payload)
}

fn v6(last: u8) -> Vec<u8> {
    let mut a = vec![0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    a[15] = last;
    a
}

/// An UPDATE payload (VNI 100) with the given destination and next-hop
/// messages; `None` leaves the field out.
fn update_payload(dest: Option<Vec<u8>>, hop: Option<Vec<u8>>) -> Vec<u8> {
    let mut fields = vec![pb::uint(2, 100)];
    if let Some(d) = dest {
        fields.push(pb::bytes(3, &d));
    }
    if let Some(h) = hop {
        fields.push(pb::bytes(4, &h));
    }
    pb::msg(&fields)
}

/// One established peer announcing a route, then sending `bad_frame`:
/// closed, its route withdrawn, the daemon healthy, the reason logged.
async fn established_peer_rejected(bad_frame: &[u8], reason_keywords: &[&str]) {
    let mut s = Scene::new().await;
    let (mut bad, r) = s.established_announcer().await;
    expect_rejected(&mut bad, bad_frame).await;
    s.check_healthy(&[rem(r)]).await;
    s.d.expect_close_reason(bad.local, reason_keywords).await;
}

#[tokio::test]
async fn version_2_closes_the_session() {
    let mut s = Scene::new().await;
    // As the very first frame, a HELLO of version 2.
    let mut first = RawPeer::connect(s.d.addr).await;
    expect_rejected(&mut first, &raw_frame(2, mtype::HELLO, &pb::uint(1, 5))).await;
    // On an established session, a KEEPALIVE of version 2.
    let (mut later, r) = s.established_announcer().await;
    expect_rejected(&mut later, &raw_frame(2, mtype::KEEPALIVE, &[])).await;

    s.check_healthy(&[rem(r)]).await;
    s.d.expect_close_reason(first.local, &["version 2"]).await;
    s.d.expect_close_reason(later.local, &["version 2"]).await;
}

#[tokio::test]
async fn truncated_frame_then_eof_closes_and_is_not_applied() {
    let mut s = Scene::new().await;
    let (mut bad, r) = s.established_announcer().await;
    let cut = route("100#10.77.0.0/24@2001:db8::77");
    let whole = frame(&Message::Update(add(cut)));
    bad.send_raw(&whole[..whole.len() / 2]).await;
    bad.shutdown_write().await;
    let frames = bad.expect_closed(T).await;
    assert!(frames.is_empty(), "answered with {frames:?}");
    // Only the REMOVE of the closed session's route: the cut UPDATE (which
    // would be an ADD of `cut`) was not applied.
    s.check_healthy(&[rem(r)]).await;
    s.d.expect_close_reason(bad.local, &["middle of a frame"])
        .await;
}

#[tokio::test]
async fn payload_that_is_not_protobuf_closes_the_session() {
    // A varint that runs past the end of the payload.
    established_peer_rejected(&update_frame(&[0xff; 6]), &["decode", "protobuf"]).await;
}

#[tokio::test]
async fn update_without_destination_closes_the_session() {
    let payload = update_payload(None, Some(pb::next_hop(&v6(1))));
    established_peer_rejected(&update_frame(&payload), &["destination"]).await;
}

#[tokio::test]
async fn update_without_next_hop_closes_the_session() {
    let payload = update_payload(Some(pb::destination(0, &[10, 0, 0, 0], 8)), None);
    established_peer_rejected(
        &update_frame(&payload),
        &["nexthop", "next hop", "next_hop"],
    )
    .await;
}

#[tokio::test]
async fn five_byte_prefix_closes_the_session() {
    let payload = update_payload(
        Some(pb::destination(0, &[10, 0, 0, 0, 0], 8)),
        Some(pb::next_hop(&v6(1))),
    );
    established_peer_rejected(&update_frame(&payload), &["5 bytes", "5-byte", "length 5"]).await;
}

#[tokio::test]
async fn prefix_length_33_for_ipv4_closes_the_session() {
    let payload = update_payload(
        Some(pb::destination(0, &[10, 0, 0, 0], 33)),
        Some(pb::next_hop(&v6(1))),
    );
    established_peer_rejected(&update_frame(&payload), &["33"]).await;
}

#[tokio::test]
async fn prefix_length_129_for_ipv6_closes_the_session() {
    let payload = update_payload(
        Some(pb::destination(1, &v6(0), 129)),
        Some(pb::next_hop(&v6(1))),
    );
    established_peer_rejected(&update_frame(&payload), &["129"]).await;
}

#[tokio::test]
async fn other_invalid_updates_close_the_session() {
    let dest4 = || Some(pb::destination(0, &[10, 0, 0, 0], 8));
    let nat = |from: u64, to: u64| {
        pb::msg(&[
            pb::bytes(1, &v6(1)),
            pb::uint(3, 1),
            pb::uint(4, from),
            pb::uint(5, to),
        ])
    };
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "next hop address of 3 bytes",
            update_payload(dest4(), Some(pb::next_hop(&[1, 2, 3]))),
            &["address", "length", "bytes"],
        ),
        (
            "ipVersion 1 with a 4-byte prefix",
            update_payload(
                Some(pb::destination(1, &[10, 0, 0, 0], 8)),
                Some(pb::next_hop(&v6(1))),
            ),
            &["version"],
        ),
        (
            "ipVersion 0 with a 16-byte prefix",
            update_payload(
                Some(pb::destination(0, &v6(0), 64)),
                Some(pb::next_hop(&v6(1))),
            ),
            &["version"],
        ),
        (
            "NAT port above 65535",
            update_payload(dest4(), Some(nat(1, 65536))),
            &["port", "65536"],
        ),
        (
            "NAT port range from > to",
            update_payload(dest4(), Some(nat(2000, 1000))),
            &["port", "range"],
        ),
    ];
    let mut s = Scene::new().await;
    let mut closed = Vec::new();
    for (what, payload, keywords) in &cases {
        let (mut bad, r) = s.established_announcer().await;
        let _ = tokio::time::timeout(T, bad.try_send_raw(&update_frame(payload))).await;
        let frames = bad.expect_closed(T).await;
        assert!(frames.is_empty(), "{what}: answered with {frames:?}");
        // Its route goes before the next case starts, so the witness sees
        // only expected updates.
        s.witness
            .expect_exactly(&[rem(r)], &format!("{what}: route of the closed session"))
            .await;
        closed.push((what, bad.local, *keywords));
    }
    s.check_healthy(&[]).await;
    for (what, peer, keywords) in closed {
        let reason = s.d.expect_close_reason(peer, keywords).await;
        println!("{what}: reason={reason}");
    }
}

#[tokio::test]
async fn hello_with_keepalive_0_closes_the_session() {
    let mut s = Scene::new().await;
    // Field left out (canonical proto3 for 0) and written explicitly as 0.
    let mut missing = RawPeer::connect(s.d.addr).await;
    expect_rejected(&mut missing, &raw_frame(1, mtype::HELLO, &[])).await;
    let mut explicit = RawPeer::connect(s.d.addr).await;
    expect_rejected(&mut explicit, &raw_frame(1, mtype::HELLO, &pb::uint(1, 0))).await;
    s.check_healthy(&[]).await;
    for p in [missing.local, explicit.local] {
        s.d.expect_close_reason(p, &["keepalive", "interval"]).await;
    }
}

#[tokio::test]
async fn keepalive_before_hello_closes_the_session() {
    let mut s = Scene::new().await;
    let mut bad = RawPeer::connect(s.d.addr).await;
    // Closed, and the KEEPALIVE is not answered.
    expect_rejected(&mut bad, &frame(&Message::Keepalive)).await;
    s.check_healthy(&[]).await;
    s.d.expect_close_reason(bad.local, &["keepalive", "hello"])
        .await;
}

#[tokio::test]
async fn second_hello_closes_the_session() {
    let hello = frame(&Message::Hello(Hello {
        keepalive_secs: 5,
        is_server: false,
        extensions: 0,
    }));
    established_peer_rejected(&hello, &["hello"]).await;
}

#[tokio::test]
async fn second_hello_before_keepalive_closes_the_session() {
    let mut s = Scene::new().await;
    let mut bad = RawPeer::connect(s.d.addr).await;
    let hello = frame(&Message::Hello(Hello {
        keepalive_secs: 5,
        is_server: false,
        extensions: 0,
    }));
    bad.send_raw(&hello).await;
    match bad.recv(T).await {
        Recv::Frame(Frame::Message(Message::Hello(_))) => {}
        other => panic!("expected the server's HELLO, got {other:?}"),
    }
    expect_rejected(&mut bad, &hello).await;
    s.check_healthy(&[]).await;
    s.d.expect_close_reason(bad.local, &["hello"]).await;
}

#[tokio::test]
async fn duplicate_subscribe_keeps_the_session_and_gives_no_second_dump() {
    let mut s = Scene::new().await;
    let mut dup = RawPeer::established(s.d.addr).await;
    dup.subscribe(100).await;
    dup.expect_exactly(&[add(s.pre)], "first dump").await;
    dup.subscribe(100).await;
    // A second dump would arrive before the barrier's marker.
    barrier(&mut dup, &mut s.announcer, 9100).await;
    dup.expect_no_update(QUIET).await;
    dup.ping().await;
    let fresh = s.check_healthy(&[]).await;
    // The duplicate subscriber gets each fresh route once.
    dup.expect_exactly(&fresh, "live updates after a duplicate SUBSCRIBE")
        .await;
    assert!(s.d.is_alive());
}

#[tokio::test]
async fn unknown_message_types_are_skipped_and_the_session_stays_up() {
    let mut s = Scene::new().await;
    let mut p = RawPeer::established(s.d.addr).await;
    p.subscribe(100).await;
    p.expect_exactly(&[add(s.pre)], "dump").await;

    // Unknown types 9, 0 and 255, one with the largest payload a header can
    // carry, then a real UPDATE: all in one write.
    let after = route("100#10.88.0.0/24@2001:db8::88#lb");
    let mut bytes = raw_frame(1, 9, &[0xaa, 0xbb, 0xcc]);
    bytes.extend(raw_frame(1, 0, &[]));
    bytes.extend(raw_frame(1, 255, &vec![0x01; 65535]));
    bytes.extend(frame(&Message::Update(add(after))));
    p.send_raw(&bytes).await;
    s.witness
        .expect_exactly(&[add(after)], "the UPDATE after the unknown frames")
        .await;
    s.live.push(after);
    p.ping().await;
    p.expect_no_update(QUIET).await;

    let fresh = s.check_healthy(&[]).await;
    // The peer still receives live updates.
    p.expect_exactly(&fresh, "live updates after unknown frames")
        .await;
    let tag = format!("peer={}", p.local);
    assert!(
        !s.d.logs()
            .lines()
            .any(|l| l.contains("session closed") && contains_field(l, &tag)),
        "the session was closed; log:\n{}",
        s.d.logs()
    );
}

#[tokio::test]
async fn large_payloads_up_to_65535_bytes_are_accepted() {
    // DECISION: incoming payloads up to 65535 bytes are accepted; unknown
    // protobuf fields are ignored.
    let mut s = Scene::new().await;
    let mut p = RawPeer::established(s.d.addr).await;
    let r = route("100#10.99.0.0/24@2001:db8::99");
    let mut payload = frame(&Message::Update(add(r)))[4..].to_vec();
    let pad = 65535 - payload.len() - 4; // field 15 tag (1) + 3-byte length.
    payload.extend(pb::bytes(15, &vec![0u8; pad]));
    assert_eq!(payload.len(), 65535);
    p.send_raw(&update_frame(&payload)).await;
    s.witness
        .expect_exactly(&[add(r)], "UPDATE with a 65535-byte payload")
        .await;
    s.live.push(r);
    p.ping().await;
    s.check_healthy(&[]).await;
}

#[tokio::test]
async fn connection_that_never_sends_hello_is_closed_after_handshake_timeout() {
    // --keepalive 1: the handshake timeout is 2.5 s.
    let d = Daemon::start(&["--keepalive", "1"]);
    let mut witness = RawPeer::connect(d.addr).await;
    witness.handshake(1).await;
    witness.subscribe(100).await;

    let silent = RawPeer::connect(d.addr).await;
    // HELLO but never the first KEEPALIVE: the same timeout.
    let mut no_keepalive = RawPeer::connect(d.addr).await;
    no_keepalive
        .send(&Message::Hello(Hello {
            keepalive_secs: 1,
            is_server: false,
            extensions: 0,
        }))
        .await;
    let watch = |mut p: RawPeer| {
        tokio::spawn(async move {
            let start = Instant::now();
            let frames = p.expect_closed(Duration::from_secs(10)).await;
            (p.local, frames, start.elapsed())
        })
    };
    let silent = watch(silent);
    let no_keepalive = watch(no_keepalive);
    // Keep the witness alive (negotiated 1 s) while the others time out.
    while !(silent.is_finished() && no_keepalive.is_finished()) {
        witness.ping().await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (silent_addr, frames, elapsed) = silent.await.unwrap();
    assert!(frames.is_empty(), "silent peer got {frames:?}");
    assert!(
        (Duration::from_millis(2000)..Duration::from_millis(6000)).contains(&elapsed),
        "silent peer closed after {elapsed:?}, expected about 2.5 s"
    );
    let (nk_addr, frames, elapsed) = no_keepalive.await.unwrap();
    assert!(
        matches!(frames.as_slice(), [Frame::Message(Message::Hello(_))]),
        "peer without KEEPALIVE: expected only the server's HELLO, got {frames:?}"
    );
    assert!(
        (Duration::from_millis(2000)..Duration::from_millis(6000)).contains(&elapsed),
        "peer without KEEPALIVE closed after {elapsed:?}, expected about 2.5 s"
    );

    assert!(d.is_alive(), "metalbondd died; log:\n{}", d.logs());
    let mut a = RawPeer::connect(d.addr).await;
    a.handshake(1).await;
    let fresh = route("100#10.0.1.0/24@2001:db8::a");
    a.announce(fresh).await;
    let u = witness
        .pinging_expect_update(Duration::from_millis(400), T)
        .await;
    assert_eq!(u, add(fresh));
    d.expect_close_reason(silent_addr, &["timeout", "timed out", "handshake", "hello"])
        .await;
    d.expect_close_reason(nk_addr, &["timeout", "timed out", "handshake", "keepalive"])
        .await;
}

#[tokio::test]
async fn one_mib_of_random_bytes_closes_the_session() {
    let mut s = Scene::new().await;
    let mut rng = StdRng::seed_from_u64(0x6d62_6e64);
    let mut garbage = vec![0u8; 1 << 20];

    // From the first byte (version byte forced to 1, so the header is parsed).
    rng.fill_bytes(&mut garbage);
    garbage[0] = 1;
    let mut first = RawPeer::connect(s.d.addr).await;
    expect_rejected(&mut first, &garbage).await;

    // After the handshake, from a peer with a route.
    rng.fill_bytes(&mut garbage);
    garbage[0] = 1;
    let (mut later, r) = s.established_announcer().await;
    expect_rejected(&mut later, &garbage).await;

    // Pure random bytes, whatever the first one is.
    rng.fill_bytes(&mut garbage);
    let mut raw = RawPeer::connect(s.d.addr).await;
    expect_rejected(&mut raw, &garbage).await;

    s.check_healthy(&[rem(r)]).await;
    for p in [first.local, later.local, raw.local] {
        s.d.expect_session_closed_log(p).await;
    }
}
