//! Fleet shape against the real binary (issue 9): each session hears only
//! the VNIs it subscribed to, and keepalives are answered in time while
//! other peers flood the server.

mod common;

use std::time::{Duration, Instant};

use common::http::{get, value_or_zero};
use common::*;
use metalbondd::wire::{encode_message, encode_update, Action, Frame, Message};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `n` distinct routes of `vni`, host routes numbered from `from`.
fn routes_of(vni: u32, from: u32, n: u32) -> Vec<metalbondd::wire::Route> {
    (from..from + n)
        .map(|i| {
            route(&format!(
                "{vni}#10.{}.{}.{}/32@2001:db8::{}",
                i / 65536 % 256,
                i / 256 % 256,
                i % 256,
                vni % 65536 + 1
            ))
        })
        .collect()
}

#[tokio::test]
async fn sessions_hear_only_the_vnis_they_subscribe_to() {
    let d = Daemon::start(&[]);
    let mut only1 = RawPeer::established(d.addr).await;
    only1.subscribe(1).await;
    let mut only2 = RawPeer::established(d.addr).await;
    only2.subscribe(2).await;
    let mut both = RawPeer::established(d.addr).await;
    both.subscribe(1).await;
    both.subscribe(2).await;
    let mut announcer = RawPeer::established(d.addr).await;
    // The announcer hears VNI 2 but never its own updates.
    announcer.subscribe(2).await;
    // Subscriptions are in place once the peers' pings come back (the
    // table applies a session's frames in order, before later ones).
    for p in [&mut only1, &mut only2, &mut both, &mut announcer] {
        p.ping().await;
    }
    let (r1, r2, r3) = (
        routes_of(1, 0, 50),
        routes_of(2, 0, 50),
        routes_of(3, 0, 50),
    );
    // Interleaved VNIs in one write: every batch touches all three.
    let mut buf = bytes::BytesMut::new();
    for i in 0..50 {
        for r in [&r1[i], &r2[i], &r3[i]] {
            encode_update(Action::Add, r, &mut buf);
        }
    }
    encode_update(Action::Remove, &r1[7], &mut buf);
    encode_update(Action::Remove, &r2[9], &mut buf);
    announcer.send_raw(&buf).await;

    let mut want1: Vec<_> = r1.iter().map(|r| add(*r)).collect();
    want1.push(rem(r1[7]));
    let mut want2: Vec<_> = r2.iter().map(|r| add(*r)).collect();
    want2.push(rem(r2[9]));
    let want_both: Vec<_> = want1.iter().chain(&want2).copied().collect();
    only1.expect_exactly(&want1, "VNI 1 only").await;
    only2.expect_exactly(&want2, "VNI 2 only").await;
    both.expect_exactly(&want_both, "VNIs 1 and 2").await;
    announcer.expect_no_update(QUIET).await;

    // A late subscriber of VNI 3 gets its dump, and the others still nothing.
    let mut late = RawPeer::established(d.addr).await;
    late.subscribe(3).await;
    let dump: Vec<_> = r3.iter().map(|r| add(*r)).collect();
    late.expect_exactly(&dump, "VNI 3 dump").await;
    only1.expect_no_update(QUIET).await;
}

/// Reads `n` UPDATEs of `vni` while sending a KEEPALIVE every 400 ms, as a
/// live client with a 1 s interval does.
async fn read_updates_alive(mut p: RawPeer, n: usize, vni: u32) -> RawPeer {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next_keepalive = Instant::now();
    let mut got = 0;
    while got < n {
        assert!(
            Instant::now() < deadline,
            "{got} of {n} UPDATEs of VNI {vni}"
        );
        if Instant::now() >= next_keepalive {
            p.send(&Message::Keepalive).await;
            next_keepalive += Duration::from_millis(400);
        }
        match p.recv(Duration::from_millis(100)).await {
            Recv::Frame(Frame::Message(Message::Update(u))) => {
                assert_eq!(u.route.vni.0, vni, "an UPDATE of a VNI not subscribed");
                got += 1;
            }
            Recv::Frame(Frame::Message(Message::Keepalive)) | Recv::Timeout => {}
            other => panic!("{}: {other:?} after {got} UPDATEs", p.local),
        }
    }
    p
}

/// The server's metrics page as text.
async fn metrics(addr: std::net::SocketAddr) -> String {
    get(addr, "/metrics").await.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_are_answered_while_other_peers_flood_the_server() {
    const FLOODERS: u32 = 3;
    const ROUTES: u32 = 60_000;
    const STEP: u32 = 5_000;
    let d = Daemon::start(&["--keepalive", "1", "--metrics", "127.0.0.1:0"]);
    let http = d.http_addr("endpoints=\"/metrics").await;
    // Readers of the flooded VNIs keep the fan-out busy; a SUBSCRIBE to
    // an already large VNI in the middle adds dumps.
    let mut readers = Vec::new();
    for f in 0..FLOODERS {
        let mut r = RawPeer::connect(d.addr).await;
        r.handshake(1).await;
        r.subscribe(100 + f).await;
        readers.push(r);
    }
    // A quiet peer with a 1 s keepalive pings throughout: every echo must
    // come back well within its 2.5 s timeout. It is up before the flood
    // starts: connected later, it can miss most of a flood that a fast
    // server takes in well under a second.
    let mut quiet = RawPeer::connect(d.addr).await;
    quiet.handshake(1).await;
    quiet.subscribe(7).await;
    // The flooders: 1 s keepalive, a KEEPALIVE inside their stream every
    // STEP routes as a real client would send one, all written at once.
    let mut flooders = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    for f in 0..FLOODERS {
        let mut p = RawPeer::connect(d.addr).await;
        p.handshake(1).await;
        let stop = stop.clone();
        flooders.push(tokio::spawn(async move {
            let mut buf = bytes::BytesMut::new();
            for (i, r) in routes_of(100 + f, 0, ROUTES).iter().enumerate() {
                encode_update(Action::Add, r, &mut buf);
                if i as u32 % STEP == 0 {
                    encode_message(&Message::Keepalive, &mut buf);
                }
            }
            p.send_raw(&buf).await;
            // Then alive, as a client is, until the test ends: each echo
            // must come (`ping` panics after 5 s without one).
            let mut pings = 0;
            while !stop.load(Ordering::Relaxed) && pings < 1000 {
                p.ping().await;
                pings += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            p
        }));
    }
    let readers: Vec<_> = readers
        .into_iter()
        .enumerate()
        .map(|(f, r)| tokio::spawn(read_updates_alive(r, ROUTES as usize, 100 + f as u32)))
        .collect();
    let readers_done = tokio::spawn(async move {
        let mut back = Vec::new();
        for r in readers {
            back.push(r.await.unwrap());
        }
        back
    });
    // Every 50 ms: a debug build on two cores gets through the flood in
    // about a second, and the pings must cover it.
    let mut slowest = Duration::ZERO;
    let mut pings = 0;
    while !readers_done.is_finished() && pings < 2_000 {
        let started = Instant::now();
        quiet.ping().await;
        slowest = slowest.max(started.elapsed());
        pings += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _readers = readers_done.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    // Shown with --nocapture: how much of the flood the pings covered.
    eprintln!("{pings} pings during the flood, the slowest echo after {slowest:?}");
    // The flooders' own sessions survived too (each answered its pings).
    for f in flooders {
        f.await.unwrap();
    }
    assert!(
        pings >= 3,
        "the flood ended too soon to test anything ({pings} pings)"
    );
    assert!(
        slowest < Duration::from_millis(2500),
        "a keepalive echo took {slowest:?} (timeout 2.5 s)"
    );
    let text = metrics(http).await;
    assert_eq!(
        value_or_zero(
            &text,
            "metalbondd_keepalive_timeouts_total",
            &[("role", "server")]
        ),
        0.0,
        "the server closed a session for a keepalive timeout"
    );
    let echoes = value_or_zero(
        &text,
        "metalbondd_keepalive_echo_latency_seconds_count",
        &[],
    );
    assert!(
        echoes >= f64::from(pings),
        "echo latency histogram counted {echoes} echoes for {pings} pings"
    );
    assert!(d.is_alive());
}

#[tokio::test]
async fn with_a_withdraw_delay_a_reconnecting_announcer_takes_its_routes_over_silently() {
    let d = Daemon::start(&["--withdraw-delay", "3"]);
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(9).await;
    let r = routes_of(9, 0, 2);
    let mut old = RawPeer::established(d.addr).await;
    old.announce(r[0]).await;
    old.announce(r[1]).await;
    sub.expect_exactly(&[add(r[0]), add(r[1])], "announced")
        .await;
    let gone = old.local;
    drop(old);
    d.expect_session_closed_log(gone).await;
    // The successor re-announces one of the two routes within the delay.
    let mut successor = RawPeer::established(d.addr).await;
    successor.announce(r[0]).await;
    successor.ping().await;
    // r[0] never left: no REMOVE and no ADD. r[1], which nobody took over,
    // is withdrawn once the delay is over.
    assert_eq!(sub.expect_update(Duration::from_secs(10)).await, rem(r[1]));
    sub.expect_no_update(QUIET).await;
    // From now on the successor owns r[0]: its end withdraws it (after the delay).
    drop(successor);
    assert_eq!(sub.expect_update(Duration::from_secs(10)).await, rem(r[0]));
}
