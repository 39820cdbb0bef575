//! Operational limits and lifecycle of the real binary: the session limit,
//! running out of file descriptors, and graceful shutdown.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn connections_beyond_the_session_limit_are_closed_and_others_keep_working() {
    let d = Daemon::start(&["--max-sessions", "2"]);
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(100).await;
    let mut announcer = RawPeer::established(d.addr).await;

    // The third session is refused: closed at once, nothing sent.
    let mut third = RawPeer::connect(d.addr).await;
    let frames = third.expect_closed(T).await;
    assert!(frames.is_empty(), "refused session got {frames:?}");
    assert!(d.wait_for_log("session limit reached", T).await);

    // The two admitted sessions are unaffected.
    let r = route("100#10.1.0.0/16@2001:db8::1");
    announcer.announce(r).await;
    assert_eq!(sub.expect_update(T).await, add(r));

    // A freed slot is usable again.
    let gone = announcer.local;
    drop(announcer);
    assert_eq!(sub.expect_update(T).await, rem(r));
    d.expect_session_closed_log(gone).await;
    let mut again = RawPeer::established(d.addr).await;
    let r2 = route("100#10.2.0.0/16@2001:db8::2");
    again.announce(r2).await;
    assert_eq!(sub.expect_update(T).await, add(r2));
}

#[tokio::test]
async fn running_out_of_file_descriptors_does_not_stop_the_server() {
    // Few descriptors: the runtime, the listener and a handful of sessions.
    let d = Daemon::spawn_with_fd_limit(
        &["server", "--listen", "[::1]:0", "--keepalive", "5"],
        Some(24),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(100).await;
    let mut announcer = RawPeer::established(d.addr).await;

    // Open connections until the daemon cannot accept any more (the kernel
    // still completes the TCP handshake into the listen backlog).
    let mut extra = Vec::new();
    for _ in 0..40 {
        extra.push(tokio::net::TcpStream::connect(d.addr).await.unwrap());
    }
    assert!(
        d.wait_for_log("accept failed", T).await,
        "expected the daemon to hit its descriptor limit"
    );
    assert!(d.is_alive());

    // Existing sessions keep working while accept fails.
    let r = route("100#10.3.0.0/16@2001:db8::3");
    announcer.announce(r).await;
    assert_eq!(sub.expect_update(T).await, add(r));

    // With the extra connections gone the daemon accepts again.
    drop(extra);
    let mut late = RawPeer::established(d.addr).await;
    late.subscribe(100).await;
    assert_eq!(late.expect_update(T).await, add(r));
    assert!(d.is_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_without_a_storm_of_removes() {
    let d = Daemon::start(&[]);
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(100).await;
    let mut announcer = RawPeer::established(d.addr).await;
    let r = route("100#10.4.0.0/16@2001:db8::4");
    announcer.announce(r).await;
    assert_eq!(sub.expect_update(T).await, add(r));

    let status = tokio::task::block_in_place(|| d.terminate(Duration::from_secs(10)))
        .expect("metalbondd did not exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    // The subscriber's socket is closed and no REMOVE was sent first.
    let frames = sub.expect_closed(T).await;
    assert!(frames.is_empty(), "got {frames:?} before the close");
    assert!(d.logs().contains("shutting down"));
}

/// Encodes ADDs of the /32 routes `from..to` in VNI 100.
fn route_frames(from: u32, to: u32) -> bytes::BytesMut {
    use metalbondd::wire::{encode_update, Action, Address, Destination, NextHop, Route, Vni};
    let mut buf = bytes::BytesMut::new();
    for i in from..to {
        let r = Route {
            vni: Vni(100),
            dest: Destination::new(Address::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), 32)
                .unwrap(),
            next_hop: NextHop::standard(Address::from(
                "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap(),
            )),
        };
        encode_update(Action::Add, &r, &mut buf);
    }
    buf
}

#[tokio::test]
async fn a_subscriber_that_falls_too_far_behind_is_closed_and_others_get_everything() {
    // 200,000 routes (8 MB of frames) in steps the healthy subscriber keeps
    // up with; the stuck one never reads, and its lag passes 1 MB once the
    // socket buffers are full.
    const N: u32 = 200_000;
    const STEP: u32 = 2_000;
    let d = Daemon::start(&["--max-lag-bytes", "1000000", "--pace-limit", "0"]);
    let mut stuck = RawPeer::established(d.addr).await;
    stuck.subscribe(100).await;
    let mut healthy = RawPeer::established(d.addr).await;
    healthy.subscribe(100).await;
    let mut announcer = RawPeer::established(d.addr).await;
    let mut received = 0;
    for from in (0..N).step_by(STEP as usize) {
        announcer.send_raw(&route_frames(from, from + STEP)).await;
        received += healthy.expect_updates(STEP as usize, T).await.len();
    }
    assert_eq!(received, N as usize);
    let reason = d.expect_close_reason(stuck.local, &["behind"]).await;
    assert!(reason.contains("resync"), "{reason}");
    assert!(d.is_alive());
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_closed_after_the_write_timeout() {
    const N: u32 = 200_000;
    const STEP: u32 = 10_000;
    // Keepalive 1 s: the write timeout is at least 2.5 intervals (2.5 s).
    let d = Daemon::start(&[
        "--keepalive",
        "1",
        "--write-timeout",
        "1",
        "--pace-limit",
        "0",
    ]);
    let mut stuck = RawPeer::connect(d.addr).await;
    stuck.handshake(1).await;
    stuck.subscribe(100).await;
    let mut announcer = RawPeer::connect(d.addr).await;
    announcer.handshake(1).await;
    // In steps, with keepalives from both peers in between: on a loaded
    // machine pushing all 8 MB at once can take longer than the 2.5 s
    // keepalive timeout, and this test is about the write timeout.
    for from in (0..N).step_by(STEP as usize) {
        announcer.send_raw(&route_frames(from, from + STEP)).await;
        stuck.send(&metalbondd::wire::Message::Keepalive).await;
        announcer.ping().await;
    }
    // Both keep their sessions alive with keepalives; `stuck` never reads.
    let closed = async {
        loop {
            if d.logs().lines().any(|l| {
                l.contains("session closed")
                    && l.contains(&stuck.local.to_string())
                    && l.contains("write timeout")
            }) {
                return;
            }
            stuck.send(&metalbondd::wire::Message::Keepalive).await;
            announcer.ping().await;
            // Keepalive cadence for a 1 s interval; also bounds the polling.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), closed)
        .await
        .expect("the stuck session was not closed for its write timeout");
    assert!(d.is_alive());
}
