//! Pacing against a peer that reads exactly like the Go reference
//! (PROTOCOL.md section 6): every `read` goes into a fresh 65,535-byte buffer
//! parsed from offset 0 with no carry-over, so a read that fills the buffer or
//! ends inside a frame resets the session. The peer also processes slowly.
//! metalbondd must deliver big dumps and bursts to it intact, and a fast
//! reader must still get everything.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use metalbondd::wire::{
    decode_frame, encode_message, encode_update, Action, Frame, Hello, Message, Route, Vni,
};

const VNI: u32 = 77;
/// Routes per test: several times what a Go client survives from the Go
/// server (about 3,000), and far more than 64 KiB of frames.
const ROUTES: usize = 20_000;
/// Simulated processing cost per received route of the Go client (it logs
/// every route at info level): about 50,000 routes/s.
const PER_ROUTE: Duration = Duration::from_micros(20);
/// A slow Go client: about 5,000 routes/s, so one read's worth of routes
/// takes longer to process than Linux's delayed-ACK timer.
const PER_ROUTE_SLOW: Duration = Duration::from_micros(200);
/// How long a reader busy at the start of its session reads nothing.
const BUSY_AT_START: Duration = Duration::from_millis(100);
/// Upper bound for a whole transfer.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

/// The tests of this file run one at a time. Pacing reads the peer's ACKs
/// and window; a Go-like reader starved of CPU for longer than its
/// retransmission timeout gets quick ACKs from its kernel and a window that
/// grows while it does not read (ADR 0006, "Limits"), which no sender can
/// tell from reading. Run side by side, the unpaced flood of one test can
/// starve another test's reader that long on a 2-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn test_routes() -> Vec<Route> {
    (0..ROUTES)
        .map(|i| {
            format!("{VNI}#10.{}.{}.0/24@2001:db8::1", i / 256, i % 256)
                .parse()
                .unwrap()
        })
        .collect()
}

/// Everything the Go reader decoded, or why it would have reset.
#[derive(Debug)]
enum GoOutcome {
    /// All routes arrived; `max_read` is the largest read seen.
    Complete { max_read: usize },
    /// What the Go reader would have reset the session for.
    Reset(String),
}

/// A MetalBond client that reads like the Go reference.
struct GoLikeReader {
    stream: TcpStream,
    per_route: Duration,
    keepalive: Duration,
    last_keepalive: Instant,
    /// Extension bits offered in HELLO (0, as the Go reference, unless a
    /// test says otherwise).
    extensions: u64,
}

impl GoLikeReader {
    fn connect(addr: SocketAddr, per_route: Duration) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self {
            stream,
            per_route,
            keepalive: Duration::from_secs(u64::from(DEFAULT_KEEPALIVE)),
            last_keepalive: Instant::now(),
            extensions: 0,
        }
    }

    fn send(&mut self, msg: &Message) {
        let mut buf = BytesMut::new();
        encode_message(msg, &mut buf);
        self.stream.write_all(&buf).expect("write");
    }

    /// One Go-style read: a fresh 65,535-byte buffer, parsed from offset 0.
    /// Returns the frames, or the reason the Go reader would reset.
    fn read_frames(&mut self) -> Result<Option<(usize, Vec<Message>)>, String> {
        let mut buf = vec![0u8; 65_535];
        let n = match self.stream.read(&mut buf) {
            Ok(0) => return Err("server closed the connection".into()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(format!("read error: {e}")),
        };
        if n == buf.len() {
            return Err(
                "a read filled the 65,535-byte buffer (\"too many messages in inbound queue\")"
                    .into(),
            );
        }
        let mut data = BytesMut::from(&buf[..n]);
        let mut msgs = Vec::new();
        while !data.is_empty() {
            match decode_frame(&mut data) {
                Ok(Some(Frame::Message(m))) => msgs.push(m),
                Ok(Some(Frame::Unknown { msg_type, .. })) => {
                    return Err(format!("unknown frame type {msg_type}"))
                }
                Ok(None) => {
                    return Err(format!(
                    "a frame was cut at the end of a {n}-byte read (\"Cannot deserialize UPDATE\")"
                ))
                }
                Err(e) => return Err(format!("bad frame: {e}")),
            }
        }
        Ok(Some((n, msgs)))
    }

    /// The Go client originates keepalives every interval.
    fn keep_alive(&mut self) {
        if self.last_keepalive.elapsed() >= self.keepalive {
            self.send(&Message::Keepalive);
            self.last_keepalive = Instant::now();
        }
    }

    fn handshake_and_subscribe(&mut self) {
        self.send(&Message::Hello(Hello {
            keepalive_secs: DEFAULT_KEEPALIVE,
            is_server: false,
            extensions: self.extensions,
        }));
        let mut got_hello = false;
        let deadline = Instant::now() + T;
        while Instant::now() < deadline {
            let Some((_, msgs)) = self.read_frames().expect("handshake") else {
                continue;
            };
            for m in msgs {
                match m {
                    Message::Hello(_) if !got_hello => {
                        got_hello = true;
                        self.send(&Message::Keepalive);
                        self.last_keepalive = Instant::now();
                    }
                    Message::Keepalive if got_hello => {
                        self.send(&Message::Subscribe(Vni(VNI)));
                        return;
                    }
                    other => panic!("unexpected {other:?} during the handshake"),
                }
            }
        }
        panic!("handshake did not complete");
    }

    /// Reads until `expected` distinct ADDs arrived, processing slowly.
    fn receive(&mut self, expected: usize) -> GoOutcome {
        let mut seen = HashSet::new();
        let mut max_read = 0;
        let deadline = Instant::now() + TRANSFER_TIMEOUT;
        while seen.len() < expected {
            if Instant::now() > deadline {
                return GoOutcome::Reset(format!(
                    "timed out with {} of {expected} routes",
                    seen.len()
                ));
            }
            self.keep_alive();
            let (n, msgs) = match self.read_frames() {
                Ok(Some(read)) => read,
                Ok(None) => continue,
                Err(reason) => return GoOutcome::Reset(reason),
            };
            max_read = max_read.max(n);
            let mut routes = 0u32;
            for m in msgs {
                if let Message::Update(u) = m {
                    assert_eq!(u.action, Action::Add);
                    assert!(seen.insert(u.route), "duplicate ADD {}", u.route);
                    routes += 1;
                }
            }
            std::thread::sleep(self.per_route * routes);
        }
        GoOutcome::Complete { max_read }
    }
}

/// Announces all routes from a raw peer in large writes, then waits until a
/// fast subscriber has them all (so the table holds them).
async fn load_routes(d: &Daemon) -> RawPeer {
    let mut fast = RawPeer::established(d.addr).await;
    fast.subscribe(VNI).await;
    let mut announcer = RawPeer::established(d.addr).await;
    let mut buf = BytesMut::new();
    for r in test_routes() {
        encode_update(Action::Add, &r, &mut buf);
    }
    announcer.send_raw(&buf).await;
    let got = fast.expect_updates(ROUTES, Duration::from_secs(30)).await;
    assert_eq!(got.len(), ROUTES, "the fast reader must get every route");
    // Keep the announcer connected: its routes stay in the table.
    announcer
}

/// A Go-like reader subscribes, reads nothing for `busy` (its
/// application is busy elsewhere) and then receives `expected` routes.
fn run_go_reader(
    addr: SocketAddr,
    expected: usize,
    per_route: Duration,
    busy: Duration,
) -> GoOutcome {
    let mut go = GoLikeReader::connect(addr, per_route);
    go.handshake_and_subscribe();
    // Models a busy peer, not a wait for an event.
    std::thread::sleep(busy);
    go.receive(expected)
}

async fn dump_to_go_reader(per_route: Duration, busy: Duration) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let d = Daemon::start(&[]);
    let _announcer = load_routes(&d).await;
    let addr = d.addr;
    let outcome = tokio::task::spawn_blocking(move || run_go_reader(addr, ROUTES, per_route, busy))
        .await
        .unwrap();
    match outcome {
        GoOutcome::Complete { max_read } => assert!(max_read < 65_535),
        GoOutcome::Reset(reason) => panic!("the Go reader would have reset: {reason}"),
    }
    assert!(d.is_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_like_reader_receives_a_large_dump_intact() {
    dump_to_go_reader(PER_ROUTE, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_go_like_reader_receives_a_large_dump_intact() {
    dump_to_go_reader(PER_ROUTE_SLOW, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_like_reader_survives_a_live_burst() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let d = Daemon::start(&[]);
    let addr = d.addr;
    let go = std::thread::spawn(move || {
        let mut go = GoLikeReader::connect(addr, PER_ROUTE);
        go.handshake_and_subscribe();
        go
    })
    .join()
    .unwrap();
    // Its SUBSCRIBE went out before the announcer even connects, so the
    // routes reach it as live updates (a dump would be counted the same).
    let reader = std::thread::spawn(move || {
        let mut go = go;
        go.receive(ROUTES)
    });
    let _announcer = load_routes(&d).await;
    let outcome = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    if let GoOutcome::Reset(reason) = outcome {
        panic!("the Go reader would have reset: {reason}");
    }
    assert!(d.is_alive());
}

/// A reader that is busy when its dump starts arriving and reads nothing
/// for a while: the data sits unread while the server paces what follows,
/// and its kernel acknowledges the first segments at once. A first batch
/// larger than the usual one (an "opening burst", tried and dropped in ADR
/// 0006) overran this reader in every run; the usual batches keep it under
/// 64 KiB unread for about 350 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_like_reader_busy_when_its_dump_starts_receives_it_intact() {
    dump_to_go_reader(PER_ROUTE, BUSY_AT_START).await;
}

/// The check above has teeth: without pacing, the same reader fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pacing_the_go_like_reader_fails() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let d = Daemon::start(&["--pace-limit", "0"]);
    let _announcer = load_routes(&d).await;
    let addr = d.addr;
    let outcome =
        tokio::task::spawn_blocking(move || run_go_reader(addr, ROUTES, PER_ROUTE, Duration::ZERO))
            .await
            .unwrap();
    assert!(
        matches!(outcome, GoOutcome::Reset(_)),
        "expected an unpaced dump to break a Go-style reader, got {outcome:?}"
    );
}

/// A peer that negotiated an extension is a metalbondd peer, which reads
/// whole streams, so it is not paced (ADR 0006): the same reader, offering
/// SYNC, gets the dump as fast as TCP takes it and sees what an unpaced
/// dump does to a Go reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_negotiated_an_extension_is_not_paced() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let d = Daemon::start(&[]);
    let _announcer = load_routes(&d).await;
    let addr = d.addr;
    let outcome = tokio::task::spawn_blocking(move || {
        let mut go = GoLikeReader::connect(addr, PER_ROUTE);
        go.extensions = metalbondd::wire::Extensions::SYNC.0;
        go.handshake_and_subscribe();
        go.receive(ROUTES)
    })
    .await
    .unwrap();
    match outcome {
        GoOutcome::Reset(reason) => assert!(
            reason.contains("65,535-byte buffer") || reason.contains("cut at the end"),
            "expected an unpaced dump's full or cut read, got: {reason}"
        ),
        other => panic!("expected the dump unpaced, got {other:?}"),
    }
    assert!(d.is_alive());
}
