//! The SYNC extension (PROTOCOL.md section 8, bit 0) on the real binary:
//! a peer that offers it gets it, a reference-like peer sees exactly the
//! bytes it saw before the extension existed.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use metalbondd::wire::{encode_update, Action, Extensions, Frame, Hello, Message, Vni, HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The server's HELLO answering a reference client's HELLO{5}, byte for
/// byte as the daemon sent it before extensions existed (and as the Go
/// server sends it): `keepaliveInterval = 5, isServer = true`.
const REFERENCE_SERVER_HELLO: [u8; 8] = [1, 0, 4, 1, 0x08, 5, 0x10, 1];
/// A Go client's HELLO{keepaliveInterval = 5}.
const REFERENCE_CLIENT_HELLO: [u8; 6] = [1, 0, 2, 1, 0x08, 5];
const KEEPALIVE: [u8; 4] = [1, 0, 0, 2];

/// The `endpoints` field of the `serving HTTP` line of a `--metrics` listener.
const METRICS_ONLY: &str = "endpoints=\"/metrics";

/// A daemon (with a metrics listener) with two routes in VNI 7 (announced
/// by a peer kept open).
async fn daemon_with_routes() -> (Daemon, RawPeer, Vec<metalbondd::wire::Route>) {
    let d = Daemon::start(&["--metrics", "127.0.0.1:0"]);
    let mut announcer = RawPeer::established(d.addr).await;
    let routes = vec![
        route("7#10.0.1.0/24@2001:db8::1"),
        route("7#10.0.2.0/24@2001:db8::2"),
    ];
    for &r in &routes {
        announcer.announce(r).await;
    }
    // Table barrier: a subscriber sees both routes, so the table has them.
    let mut probe = RawPeer::established(d.addr).await;
    probe.subscribe(7).await;
    probe.expect_updates(2, T).await;
    (d, announcer, routes)
}

#[tokio::test]
async fn a_peer_offering_sync_gets_it_and_a_sync_after_every_dump_once() {
    let (d, mut announcer, routes) = daemon_with_routes().await;
    let mut p = RawPeer::connect(d.addr).await;
    // Offer SYNC and an unknown bit 9: the answer is the intersection.
    p.send(&Message::Hello(Hello {
        keepalive_secs: 5,
        is_server: false,
        extensions: 1 | 1 << 9,
    }))
    .await;
    let hello = match p.recv(T).await {
        Recv::Frame(Frame::Message(Message::Hello(h))) => h,
        other => panic!("expected HELLO, got {other:?}"),
    };
    assert_eq!(
        hello,
        Hello {
            keepalive_secs: 5,
            is_server: true,
            extensions: Extensions::SYNC.0,
        }
    );
    p.accept = Extensions::SYNC;
    p.send(&Message::Keepalive).await;
    assert!(matches!(
        p.recv(T).await,
        Recv::Frame(Frame::Message(Message::Keepalive))
    ));
    // The log says what was negotiated (such a peer is not paced).
    assert!(
        d.wait_for_log("session established keepalive_secs=5 extensions=sync", T)
            .await,
        "{}",
        d.logs()
    );

    // The dump, then SYNC right after its last ADD.
    p.subscribe(7).await;
    let dump = p.expect_updates(2, T).await;
    assert_same_updates(
        &dump,
        &routes.iter().map(|&r| add(r)).collect::<Vec<_>>(),
        "dump",
    );
    match p.recv(T).await {
        Recv::Frame(Frame::Message(Message::Sync(v))) => assert_eq!(v, Vni(7)),
        other => panic!("expected SYNC for VNI 7 right after the dump, got {other:?}"),
    }
    // An empty VNI: a SYNC alone.
    p.subscribe(8).await;
    match p.recv(T).await {
        Recv::Frame(Frame::Message(Message::Sync(v))) => assert_eq!(v, Vni(8)),
        other => panic!("expected SYNC for the empty VNI 8, got {other:?}"),
    }
    // A duplicate SUBSCRIBE: no second dump, no second SYNC. The next
    // frame is the answer to our KEEPALIVE, sent after the duplicate.
    p.subscribe(7).await;
    p.send(&Message::Keepalive).await;
    match p.recv(T).await {
        Recv::Frame(Frame::Message(Message::Keepalive)) => {}
        other => panic!("a duplicate SUBSCRIBE produced {other:?}"),
    }
    // Live updates follow as usual, without SYNC.
    let later = route("7#10.0.3.0/24@2001:db8::3");
    announcer.announce(later).await;
    assert_eq!(p.expect_update(T).await, add(later));
    p.expect_no_update(QUIET).await;
}

/// Reads what arrives within `quiet` after the last byte (at most `T`).
async fn read_all(s: &mut TcpStream, quiet: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let wait = quiet.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("read: {e}"),
        }
    }
}

/// The whole frames of a byte stream, as bytes.
fn split_frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while bytes.len() >= HEADER_LEN {
        let len = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
        frames.push(bytes[..HEADER_LEN + len].to_vec());
        bytes = &bytes[HEADER_LEN + len..];
    }
    assert!(bytes.is_empty(), "a partial frame at the end");
    frames
}

#[tokio::test]
async fn a_reference_reader_sees_exactly_the_bytes_it_saw_before() {
    let (d, _announcer, routes) = daemon_with_routes().await;
    // A Go-like client, bytes on a plain socket: no extensions field.
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&REFERENCE_CLIENT_HELLO).await.unwrap();
    let mut hello = [0u8; REFERENCE_SERVER_HELLO.len()];
    tokio::time::timeout(T, s.read_exact(&mut hello))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hello, REFERENCE_SERVER_HELLO, "the server's HELLO changed");
    s.write_all(&KEEPALIVE).await.unwrap();
    let mut ka = [0u8; 4];
    tokio::time::timeout(T, s.read_exact(&mut ka))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ka, KEEPALIVE);
    // A VNI with routes, an empty one, a duplicate; then a KEEPALIVE whose
    // answer ends what we expect (the server answers it at once, on the
    // control lane, so it may overtake the dump: compare frames as a set
    // of whole frames, and the types in order of the route data).
    let mut out = BytesMut::new();
    for vni in [7u32, 8, 7] {
        metalbondd::wire::encode_message(&Message::Subscribe(Vni(vni)), &mut out);
    }
    s.write_all(&out).await.unwrap();
    // A type-100 frame from a peer that did not negotiate SYNC (garbage
    // payload): skipped like any unknown type, the session goes on.
    s.write_all(&raw_frame(1, 100, &[0xff, 0xff, 0xff]))
        .await
        .unwrap();
    s.write_all(&KEEPALIVE).await.unwrap();
    let got = read_all(&mut s, Duration::from_millis(500)).await;
    let frames = split_frames(&got);
    let types: Vec<u8> = frames.iter().map(|f| f[3]).collect();
    assert!(
        !types.contains(&100),
        "a reference peer got a type-100 frame: {types:?}"
    );
    // Exactly: the two ADDs of the dump (in the table's order) and one
    // KEEPALIVE answer, nothing else.
    let mut want_updates = Vec::new();
    assert_eq!(types.iter().filter(|&&t| t == 5).count(), 2, "{types:?}");
    assert_eq!(types.iter().filter(|&&t| t == 2).count(), 1, "{types:?}");
    assert_eq!(types.len(), 3, "{types:?}");
    // Byte level: the stream is the KEEPALIVE plus the ADD frames exactly
    // as a server without extensions encodes them.
    assert!(frames.contains(&KEEPALIVE.to_vec()));
    let rest: Vec<u8> = frames
        .iter()
        .filter(|f| f[3] != 2)
        .flatten()
        .copied()
        .collect();
    for r in &routes {
        let mut f = BytesMut::new();
        encode_update(Action::Add, r, &mut f);
        want_updates.push(f.to_vec());
    }
    let permutations = [
        [want_updates[0].clone(), want_updates[1].clone()].concat(),
        [want_updates[1].clone(), want_updates[0].clone()].concat(),
    ];
    assert!(
        permutations.contains(&rest),
        "route bytes differ: {rest:02x?}"
    );
    // The type-100 frame we sent was counted as an unknown frame.
    let addr = d.http_addr(METRICS_ONLY).await;
    let metrics = common::http::get(addr, "/metrics").await;
    assert_eq!(
        common::http::value(&metrics.body, "metalbondd_unknown_frames_total", &[]),
        1.0
    );
}

/// Starts a client-role daemon (its own API socket and state directory)
/// with a route server at `server` and `extra` arguments.
fn start_agent(server: &str, extra: &[&str]) -> Daemon {
    let dir = unique_temp_dir();
    let sock = dir.join("api.sock").display().to_string();
    let state = dir.join("state").display().to_string();
    let mut args = vec![
        "client",
        "--api-socket",
        &sock,
        "--state-dir",
        &state,
        "--server",
        server,
        "--subscribe",
        "7",
        "--keepalive",
        "5",
    ];
    args.extend_from_slice(extra);
    Daemon::spawn_running(&args).unwrap_or_else(|e| panic!("{e}"))
}

/// Accepts the agent's connection on `listener` and returns its first
/// frame (its HELLO), whole, as bytes.
async fn first_frame(listener: &tokio::net::TcpListener) -> Vec<u8> {
    let (mut s, _) = tokio::time::timeout(T, listener.accept())
        .await
        .expect("the agent connects")
        .unwrap();
    let mut header = [0u8; HEADER_LEN];
    tokio::time::timeout(T, s.read_exact(&mut header))
        .await
        .unwrap()
        .unwrap();
    let len = usize::from(u16::from_be_bytes([header[1], header[2]]));
    let mut payload = vec![0u8; len];
    tokio::time::timeout(T, s.read_exact(&mut payload))
        .await
        .unwrap()
        .unwrap();
    [header.to_vec(), payload].concat()
}

#[tokio::test]
async fn the_sync_offer_can_be_turned_off_and_the_hello_is_then_the_references() {
    let dir = unique_temp_dir();
    let file = dir.join("metalbondd.toml");
    let file_arg = file.display().to_string();
    // By default the agent offers SYNC: field 1001 (varint key 0xc8 0x3e)
    // with bit 0: what the other two must not send. Off, it is byte for
    // byte a Go client's HELLO{keepaliveInterval = 5}.
    let default_hello = [
        &REFERENCE_CLIENT_HELLO[..2],
        &[5, 1, 0x08, 5, 0xc8, 0x3e, 1],
    ]
    .concat();
    let cases: [(&str, &[&str], &[u8]); 3] = [
        ("default", &[], &default_hello),
        ("--no-sync", &["--no-sync"], &REFERENCE_CLIENT_HELLO),
        (
            "client.sync = false",
            &["--config", &file_arg],
            &REFERENCE_CLIENT_HELLO,
        ),
    ];
    for (what, extra, want) in cases {
        // A raw listener stands in for a route server: it reads the
        // agent's HELLO. A fresh one per run, so that a reconnect of the
        // previous agent can never be in its backlog.
        let listener = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::fs::write(
            &file,
            format!("[client]\nservers = [\"{addr}\"]\nsync = false\n"),
        )
        .unwrap();
        let agent = start_agent(&addr, extra);
        assert_eq!(first_frame(&listener).await, want, "{what}");
        assert!(
            agent.terminate(T).is_some_and(|s| s.success()),
            "{what}: {}",
            agent.logs()
        );
    }
}
