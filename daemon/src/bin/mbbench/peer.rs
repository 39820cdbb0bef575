//! One simulated MetalBond client: handshake, then a reader task that counts
//! what arrives and a writer task that sends keepalives, subscriptions and
//! batched announcements.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use metalbondd::wire::{
    decode_frame, encode_message, encode_update, Action, Frame, Hello, Message,
};
use std::future::Future;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::routes::{Bitset, FastPath, RouteSet};

/// The whole KEEPALIVE frame.
const KEEPALIVE: [u8; 4] = [1, 0, 0, 2];
/// Bytes reserved before each read.
const READ_CHUNK: usize = 256 * 1024;
/// Room left in a write batch for one more UPDATE frame.
const FRAME_ROOM: usize = 96;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process-wide time base (never 0 for a real event).
pub fn ns(t: Instant) -> u64 {
    let base = *BASE.get_or_init(Instant::now);
    t.saturating_duration_since(base).as_nanos() as u64 + 1
}

/// Settings shared by every simulated peer.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Server address.
    pub server: SocketAddr,
    /// Keepalive interval we propose in HELLO.
    pub keepalive: u32,
    /// Bytes per write when announcing in bulk.
    pub batch_bytes: usize,
    /// Pause after each bulk write (0 = none).
    pub batch_pause: Duration,
    /// Limit for connect + handshake.
    pub handshake_timeout: Duration,
    /// Run the sessions over TLS (`--tls-ca`), verifying the server for
    /// its IP address.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Counters of one peer, written by its tasks and read by the controller.
#[derive(Default)]
pub struct PeerStats {
    /// Distinct routes seen in an ADD.
    pub adds: AtomicU64,
    /// Distinct routes seen in a REMOVE.
    pub removes: AtomicU64,
    /// ADDs for a route already added.
    pub dup_adds: AtomicU64,
    /// REMOVEs for a route already removed.
    pub dup_removes: AtomicU64,
    /// Messages that are not one of our routes, or not expected from a server.
    pub unexpected: AtomicU64,
    /// When the last new distinct ADD arrived ([`ns`]).
    pub last_add_ns: AtomicU64,
    /// When the last new distinct REMOVE arrived ([`ns`]).
    pub last_remove_ns: AtomicU64,
    /// KEEPALIVEs received after the handshake.
    pub keepalives_rx: AtomicU64,
    /// KEEPALIVEs sent after the handshake.
    pub keepalives_tx: AtomicU64,
    /// Gaps between received KEEPALIVEs longer than 2.5 x the interval.
    pub keepalive_late: AtomicU64,
    /// When the last KEEPALIVE arrived ([`ns`]).
    pub last_ka_ns: AtomicU64,
    /// Negotiated keepalive interval in nanoseconds.
    pub interval_ns: AtomicU64,
    /// Bytes received after the handshake.
    pub bytes_rx: AtomicU64,
    /// We are closing this session on purpose: EOF is not an incident.
    pub closing: AtomicBool,
    /// The session ended without us asking for it.
    pub closed: AtomicBool,
    /// Already counted in a scenario report.
    pub closed_reported: AtomicBool,
    /// Why the session ended.
    pub close_reason: Mutex<Option<String>>,
}

impl PeerStats {
    fn set_closed(&self, reason: String) {
        if self.closing.load(Relaxed) || self.closed.load(Relaxed) {
            return;
        }
        *self.close_reason.lock().unwrap() = Some(reason);
        self.closed.store(true, Relaxed);
    }

    /// True if the server has not answered a KEEPALIVE for more than 2.5 x
    /// the interval (a session a real client would now drop).
    pub fn keepalive_silent(&self) -> bool {
        let limit = self.interval_ns.load(Relaxed) * 5 / 2;
        let last = self.last_ka_ns.load(Relaxed);
        !self.closed.load(Relaxed) && ns(Instant::now()).saturating_sub(last) > limit
    }

    /// The close reason, if the server ended the session.
    pub fn reason(&self) -> Option<String> {
        self.close_reason.lock().unwrap().clone()
    }
}

/// What a reader does with UPDATEs.
pub enum Sink {
    /// Count ADD/REMOVE per route index of the set.
    Track(RouteSet),
    /// Report every UPDATE of route `index` with its arrival time.
    Events {
        /// Routes.
        set: RouteSet,
        /// The one route index watched.
        index: u64,
        /// Receives (action, arrival).
        tx: mpsc::UnboundedSender<(Action, Instant)>,
    },
    /// Expect no UPDATEs at all (announcers).
    Ignore,
}

enum Cmd {
    Subscribe {
        vni: u32,
        sent: oneshot::Sender<Instant>,
    },
    Bulk {
        action: Action,
        set: RouteSet,
        start: u64,
        count: u64,
        started: oneshot::Sender<Instant>,
        done: oneshot::Sender<Instant>,
    },
    One {
        action: Action,
        set: RouteSet,
        index: u64,
        sent: oneshot::Sender<Instant>,
    },
    Close {
        sent: oneshot::Sender<Instant>,
    },
}

/// An established session.
pub struct Peer {
    /// Counters.
    pub stats: Arc<PeerStats>,
    /// Limit for one command (a writer stuck on a server that does not read).
    op_timeout: Duration,
    tx: mpsc::UnboundedSender<Cmd>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// Receivers for a bulk announcement: when the first byte went out and when
/// the socket took the last one.
pub struct BulkHandle {
    /// First write started.
    pub started: oneshot::Receiver<Instant>,
    /// Last write finished.
    pub done: oneshot::Receiver<Instant>,
}

impl Peer {
    /// Connects and completes the handshake (HELLO, HELLO, KEEPALIVE,
    /// KEEPALIVE); the session is established when this returns.
    pub async fn connect(cfg: &PeerConfig, sink: Sink) -> Result<Peer, String> {
        tokio::time::timeout(cfg.handshake_timeout, Self::connect_inner(cfg, sink))
            .await
            .map_err(|_| format!("handshake with {} timed out", cfg.server))?
    }

    async fn connect_inner(cfg: &PeerConfig, sink: Sink) -> Result<Peer, String> {
        let stream = connect_tcp(cfg.server).await?;
        match &cfg.tls {
            // The plaintext halves as before: no lock between them.
            None => Self::establish(stream, cfg, sink, TcpStream::into_split).await,
            Some(tls) => {
                let name = rustls::pki_types::ServerName::IpAddress(cfg.server.ip().into());
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake with {}: {e}", cfg.server))?;
                Self::establish(stream, cfg, sink, tokio::io::split).await
            }
        }
    }

    /// The MetalBond handshake on `stream`, then the reader and writer
    /// tasks on its halves.
    async fn establish<S, R, W>(
        mut stream: S,
        cfg: &PeerConfig,
        sink: Sink,
        split: impl FnOnce(S) -> (R, W),
    ) -> Result<Peer, String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        R: AsyncRead + Unpin + Send + 'static,
        W: PeerWrite,
    {
        send_hello(&mut stream, cfg.keepalive, 0).await?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let server_secs = match read_frame(&mut stream, &mut buf).await? {
            Message::Hello(h) => h.keepalive_secs,
            other => return Err(format!("expected HELLO, got {other:?}")),
        };
        let secs = match server_secs {
            0 => cfg.keepalive,
            s => s.min(cfg.keepalive),
        }
        .max(1);
        let interval = Duration::from_secs(u64::from(secs));
        stream
            .write_all(&KEEPALIVE)
            .await
            .map_err(|e| format!("send KEEPALIVE: {e}"))?;
        stream
            .flush()
            .await
            .map_err(|e| format!("send KEEPALIVE: {e}"))?;
        match read_frame(&mut stream, &mut buf).await? {
            Message::Keepalive => {}
            other => return Err(format!("expected KEEPALIVE, got {other:?}")),
        }
        let stats = Arc::new(PeerStats::default());
        stats.interval_ns.store(interval.as_nanos() as u64, Relaxed);
        stats.last_ka_ns.store(ns(Instant::now()), Relaxed);
        let (rd, wr) = split(stream);
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(reader(rd, buf, stats.clone(), sink, interval));
        let writer = tokio::spawn(writer(wr, rx, stats.clone(), interval, cfg.clone()));
        Ok(Peer {
            stats,
            op_timeout: cfg.handshake_timeout,
            tx,
            reader,
            writer,
        })
    }

    /// Sends SUBSCRIBE followed by a KEEPALIVE (whose answer tells that the
    /// server has seen the SUBSCRIBE, see [`Peer::synced`]). Returns when the
    /// write finished, with the instant just before it.
    pub async fn subscribe(&self, vni: u32) -> Result<Instant, String> {
        let (sent, rx) = oneshot::channel();
        self.send(Cmd::Subscribe { vni, sent })?;
        self.reply(rx).await
    }

    /// True once the server has answered every KEEPALIVE we sent: everything
    /// written before the last KEEPALIVE has been read by the server.
    pub fn synced(&self) -> bool {
        self.stats.keepalives_rx.load(Relaxed) >= self.stats.keepalives_tx.load(Relaxed)
    }

    /// Announces (or withdraws) routes `start..start+count` of `set` as fast
    /// as the socket takes them.
    pub fn bulk(
        &self,
        action: Action,
        set: RouteSet,
        start: u64,
        count: u64,
    ) -> Result<BulkHandle, String> {
        let (started, started_rx) = oneshot::channel();
        let (done, done_rx) = oneshot::channel();
        self.send(Cmd::Bulk {
            action,
            set,
            start,
            count,
            started,
            done,
        })?;
        Ok(BulkHandle {
            started: started_rx,
            done: done_rx,
        })
    }

    /// Sends one UPDATE; returns the instant just before its write.
    pub async fn send_one(
        &self,
        action: Action,
        set: RouteSet,
        index: u64,
    ) -> Result<Instant, String> {
        let (sent, rx) = oneshot::channel();
        self.send(Cmd::One {
            action,
            set,
            index,
            sent,
        })?;
        self.reply(rx).await
    }

    /// Closes the session (shutdown of both directions, the server sees EOF);
    /// returns the instant just before the shutdown. Dropping the peer
    /// afterwards (or instead) closes the socket in any case.
    pub async fn close(&self) -> Result<Instant, String> {
        self.stats.closing.store(true, Relaxed);
        let (sent, rx) = oneshot::channel();
        self.send(Cmd::Close { sent })?;
        self.reply(rx).await
    }

    async fn reply(&self, rx: oneshot::Receiver<Instant>) -> Result<Instant, String> {
        match tokio::time::timeout(self.op_timeout, rx).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(_)) => Err(self.gone()),
            Err(_) => Err(format!(
                "write not done after {} s (server not reading?)",
                self.op_timeout.as_secs()
            )),
        }
    }

    fn send(&self, cmd: Cmd) -> Result<(), String> {
        self.tx.send(cmd).map_err(|_| self.gone())
    }

    fn gone(&self) -> String {
        self.stats
            .reason()
            .unwrap_or_else(|| "session writer stopped".to_string())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stats.closing.store(true, Relaxed);
        self.reader.abort();
        self.writer.abort();
    }
}

/// Reads until one whole frame is decoded (handshake only).
/// Connects to `server` (TCP_NODELAY, as MetalBond peers do) and sends the
/// client's HELLO offering `keepalive_secs`: the first step of every
/// handshake mbbench makes.
pub async fn connect_and_send_hello(
    server: SocketAddr,
    keepalive_secs: u32,
    extensions: u64,
) -> Result<TcpStream, String> {
    let mut stream = connect_tcp(server).await?;
    send_hello(&mut stream, keepalive_secs, extensions).await?;
    Ok(stream)
}

/// Connects to `server` with TCP_NODELAY.
async fn connect_tcp(server: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(server)
        .await
        .map_err(|e| format!("connect to {server}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Sends the client's HELLO offering `keepalive_secs` and the extension
/// bits `extensions` (0: none, as the Go reference's client).
async fn send_hello<S: AsyncWrite + Unpin>(
    stream: &mut S,
    keepalive_secs: u32,
    extensions: u64,
) -> Result<(), String> {
    let mut out = BytesMut::new();
    encode_message(
        &Message::Hello(Hello {
            keepalive_secs,
            is_server: false,
            extensions,
        }),
        &mut out,
    );
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("send HELLO: {e}"))?;
    stream.flush().await.map_err(|e| format!("send HELLO: {e}"))
}

/// The write half of a session: plaintext or TLS.
pub trait PeerWrite: AsyncWrite + Unpin + Send + 'static {
    /// Ends the session so that the server sees EOF.
    fn close_both(&mut self) -> impl Future<Output = ()> + Send;
}

impl PeerWrite for OwnedWriteHalf {
    fn close_both(&mut self) -> impl Future<Output = ()> + Send {
        let _ = socket2::SockRef::from(self.as_ref()).shutdown(std::net::Shutdown::Both);
        std::future::ready(())
    }
}

impl PeerWrite for tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>> {
    async fn close_both(&mut self) {
        // close_notify, then the TCP FIN.
        let _ = self.shutdown().await;
    }
}

async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Message, String> {
    loop {
        match decode_frame(buf) {
            Ok(Some(Frame::Message(m))) => return Ok(m),
            Ok(Some(Frame::Unknown { msg_type, .. })) => {
                return Err(format!("unknown message type {msg_type} during handshake"))
            }
            Ok(None) => {}
            Err(e) => return Err(format!("bad frame during handshake: {e}")),
        }
        buf.reserve(4096);
        match stream.read_buf(buf).await {
            Ok(0) => return Err("server closed the connection during the handshake".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read during handshake: {e}")),
        }
    }
}

/// Local tallies of a reader, published to [`PeerStats`] after every read.
struct Tally {
    adds: Bitset,
    removes: Bitset,
    n_adds: u64,
    n_removes: u64,
    dup_adds: u64,
    dup_removes: u64,
    unexpected: u64,
    keepalives: u64,
    late: u64,
    last_ka: Instant,
    new_add: bool,
    new_remove: bool,
    ka_seen: bool,
}

impl Tally {
    #[inline]
    fn count(&mut self, action: Action, i: u64) {
        match action {
            Action::Add => {
                if self.adds.test_and_set(i) {
                    self.dup_adds += 1;
                } else {
                    self.n_adds += 1;
                    self.new_add = true;
                }
            }
            Action::Remove => {
                if self.removes.test_and_set(i) {
                    self.dup_removes += 1;
                } else {
                    self.n_removes += 1;
                    self.new_remove = true;
                }
            }
        }
    }
}

async fn reader<R: AsyncRead + Unpin>(
    mut rd: R,
    mut buf: BytesMut,
    stats: Arc<PeerStats>,
    sink: Sink,
    interval: Duration,
) {
    let (n, fast) = match &sink {
        Sink::Track(set) => (set.n, Some(FastPath::new(set))),
        _ => (0, None),
    };
    let late_after = interval * 5 / 2;
    let mut t = Tally {
        adds: Bitset::new(n),
        removes: Bitset::new(n),
        n_adds: 0,
        n_removes: 0,
        dup_adds: 0,
        dup_removes: 0,
        unexpected: 0,
        keepalives: 0,
        late: 0,
        last_ka: Instant::now(),
        new_add: false,
        new_remove: false,
        ka_seen: false,
    };
    let mut now = Instant::now();
    let mut bytes = 0u64;
    loop {
        // Take every whole frame off the buffer; a partial one stays for the next read.
        loop {
            if let Some((len, action, i)) = fast.as_ref().and_then(|f| f.match_frame(&buf)) {
                buf.advance(len);
                t.count(action, i);
                continue;
            }
            match decode_frame(&mut buf) {
                Ok(Some(Frame::Message(Message::Update(u)))) => match &sink {
                    Sink::Track(set) => match set.index(&u.route) {
                        Some(i) if i < set.n => t.count(u.action, i),
                        _ => t.unexpected += 1,
                    },
                    Sink::Events { set, index, tx } => {
                        if set.index(&u.route) == Some(*index) {
                            let _ = tx.send((u.action, now));
                        } else {
                            t.unexpected += 1;
                        }
                    }
                    Sink::Ignore => t.unexpected += 1,
                },
                Ok(Some(Frame::Message(Message::Keepalive))) => {
                    t.keepalives += 1;
                    if now.duration_since(t.last_ka) > late_after {
                        t.late += 1;
                    }
                    t.last_ka = now;
                    t.ka_seen = true;
                }
                Ok(Some(_)) => t.unexpected += 1,
                Ok(None) => break,
                Err(e) => {
                    publish(&stats, &mut t, now, bytes);
                    stats.set_closed(format!("invalid frame from server: {e}"));
                    return;
                }
            }
        }
        publish(&stats, &mut t, now, bytes);
        buf.reserve(READ_CHUNK);
        let r = rd.read_buf(&mut buf).await;
        now = Instant::now();
        match r {
            Ok(0) => {
                stats.set_closed("closed by server (EOF)".into());
                return;
            }
            Ok(k) => bytes += k as u64,
            Err(e) => {
                stats.set_closed(format!("read error: {e}"));
                return;
            }
        }
    }
}

fn publish(stats: &PeerStats, t: &mut Tally, now: Instant, bytes: u64) {
    if t.new_add {
        stats.last_add_ns.store(ns(now), Relaxed);
        t.new_add = false;
    }
    if t.ka_seen {
        stats.last_ka_ns.store(ns(t.last_ka), Relaxed);
        t.ka_seen = false;
    }
    if t.new_remove {
        stats.last_remove_ns.store(ns(now), Relaxed);
        t.new_remove = false;
    }
    stats.adds.store(t.n_adds, Relaxed);
    stats.removes.store(t.n_removes, Relaxed);
    stats.dup_adds.store(t.dup_adds, Relaxed);
    stats.dup_removes.store(t.dup_removes, Relaxed);
    stats.unexpected.store(t.unexpected, Relaxed);
    stats.keepalives_rx.store(t.keepalives, Relaxed);
    stats.keepalive_late.store(t.late, Relaxed);
    stats.bytes_rx.store(bytes, Relaxed);
}

/// Writes `frames`, telling `sent` when the write began (the latency
/// clock starts there).
async fn write_reporting_start<W: AsyncWrite + Unpin>(
    wr: &mut W,
    frames: &[u8],
    sent: oneshot::Sender<Instant>,
) -> std::io::Result<()> {
    let t = Instant::now();
    wr.write_all(frames).await?;
    // TLS: records rustls could not write yet go out now (a no-op on TCP).
    wr.flush().await?;
    let _ = sent.send(t);
    Ok(())
}

async fn writer<W: PeerWrite>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    stats: Arc<PeerStats>,
    interval: Duration,
    cfg: PeerConfig,
) {
    // The first KEEPALIVE went out during the handshake.
    let mut next_ka = Instant::now() + interval;
    let mut buf = BytesMut::with_capacity(cfg.batch_bytes + FRAME_ROOM);
    let result: std::io::Result<()> = async {
        loop {
            let cmd = tokio::select! {
                biased;
                _ = tokio::time::sleep_until(next_ka.into()) => {
                    stats.keepalives_tx.fetch_add(1, Relaxed);
                    wr.write_all(&KEEPALIVE).await?;
                    wr.flush().await?;
                    next_ka = Instant::now() + interval;
                    continue;
                }
                cmd = rx.recv() => cmd,
            };
            let Some(cmd) = cmd else { return Ok(()) };
            buf.clear();
            match cmd {
                Cmd::Subscribe { vni, sent } => {
                    encode_message(&Message::Subscribe(metalbondd::wire::Vni(vni)), &mut buf);
                    buf.put_slice(&KEEPALIVE);
                    stats.keepalives_tx.fetch_add(1, Relaxed);
                    next_ka = Instant::now() + interval;
                    write_reporting_start(&mut wr, &buf, sent).await?;
                }
                Cmd::One {
                    action,
                    set,
                    index,
                    sent,
                } => {
                    encode_update(action, &set.route(index), &mut buf);
                    write_reporting_start(&mut wr, &buf, sent).await?;
                }
                Cmd::Bulk {
                    action,
                    set,
                    start,
                    count,
                    started,
                    done,
                } => {
                    let mut started = Some(started);
                    let end = start + count;
                    let mut i = start;
                    while i < end {
                        buf.clear();
                        while i < end
                            && (buf.is_empty() || buf.len() + FRAME_ROOM <= cfg.batch_bytes)
                        {
                            encode_update(action, &set.route(i), &mut buf);
                            i += 1;
                        }
                        let now = Instant::now();
                        if now >= next_ka {
                            buf.put_slice(&KEEPALIVE);
                            stats.keepalives_tx.fetch_add(1, Relaxed);
                            next_ka = now + interval;
                        }
                        if let Some(s) = started.take() {
                            let _ = s.send(now);
                        }
                        wr.write_all(&buf).await?;
                        wr.flush().await?;
                        if !cfg.batch_pause.is_zero() {
                            tokio::time::sleep(cfg.batch_pause).await;
                        }
                    }
                    let _ = done.send(Instant::now());
                }
                Cmd::Close { sent } => {
                    let t = Instant::now();
                    wr.close_both().await;
                    let _ = sent.send(t);
                    return Ok(());
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        stats.set_closed(format!("write error: {e}"));
    }
}
