//! One task per TCP session: the I/O shell around the sans-I/O [`Session`].
//!
//! It reads and decodes frames (reassembling across reads), feeds them to the
//! session state machine, forwards table operations to the table task in one
//! batch per read, and writes the session's frames plus the routes it should
//! hear, read from the shared update log at its own pace. Reading never stops
//! while a write is pending, so keepalives are served during long dumps.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::delivery::{Delivery, DeliveryTimers};
use super::metrics::Metrics;
use super::outbound::Outbound;
use super::pacing::{self, Decision, Pacer};
use super::registry::{Registry, SessionInfo};
use super::table_task::{Command, Op, TableHandle};
use crate::session::{self, CloseReason, Event, Role, Session};
use crate::table::log::{Entry, Item, LogCursor};
use crate::table::SessionId;
use crate::wire::{decode_frame, encode_message, Action, DecodeError, Frame, Message, Vni};

/// Stop pulling from the log while this much is queued for the socket.
const OUTBOUND_HIGH_WATER: usize = 256 * 1024;
/// Read buffer size.
const READ_BUFFER: usize = 64 * 1024;
/// Quick re-checks (yielding to other tasks) before pacing waits on the timer.
const PACE_SPINS: u32 = 32;

/// Settings every session shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSettings {
    /// Configured keepalive interval in seconds (0 means 5).
    pub keepalive_secs: u32,
    /// Close a session whose writes make no progress for this long.
    pub write_timeout: Duration,
    /// Close a session that falls this many bytes behind the update log.
    pub max_lag_bytes: u64,
    /// Keep the estimate of bytes a peer has not read under this (0: no pacing).
    pub pace_limit: usize,
}

/// What every session task shares with the server.
#[derive(Clone)]
pub struct SessionContext {
    /// The table task.
    pub table: TableHandle,
    /// Session settings.
    pub settings: SessionSettings,
    /// Server counters.
    pub metrics: Arc<Metrics>,
    /// Becomes true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Live sessions.
    pub registry: Arc<Registry>,
}

/// Why a session ended, for the log line and the metric.
enum Ended {
    Protocol(CloseReason),
    Decode(DecodeError),
    PeerClosed,
    /// EOF in the middle of a frame: this many bytes of it were thrown away.
    PeerClosedMidFrame(usize),
    Io(std::io::Error),
    WriteTimeout,
    Lagging(u64),
    Reset,
    Shutdown,
}

impl Ended {
    fn label(&self) -> &'static str {
        match self {
            Ended::Protocol(r) => r.label(),
            Ended::Decode(e) => e.label(),
            Ended::PeerClosed => "peer_closed",
            Ended::PeerClosedMidFrame(_) => "truncated_frame",
            Ended::Io(_) => "io_error",
            Ended::WriteTimeout => "write_timeout",
            Ended::Lagging(_) => "lagging",
            Ended::Reset => "reset",
            Ended::Shutdown => "shutdown",
        }
    }

    fn describe(&self) -> String {
        match self {
            Ended::Protocol(r) => r.to_string(),
            Ended::Decode(e) => format!("malformed frame: {e}"),
            Ended::PeerClosed => "peer closed the connection".into(),
            Ended::PeerClosedMidFrame(n) => format!(
                "peer closed the connection in the middle of a frame ({n} bytes of it discarded)"
            ),
            Ended::Io(e) => format!("socket error: {e}"),
            Ended::WriteTimeout => "peer stopped reading (write timeout)".into(),
            Ended::Lagging(bytes) => format!(
                "fell {bytes} bytes behind the update log; closing so the client reconnects and resyncs"
            ),
            Ended::Reset => "reset by an operator".into(),
            Ended::Shutdown => "server shutting down".into(),
        }
    }

    /// A peer's misbehaviour (logged as a warning) rather than a normal end.
    fn is_fault(&self) -> bool {
        matches!(
            self,
            Ended::Protocol(_)
                | Ended::Decode(_)
                | Ended::PeerClosedMidFrame(_)
                | Ended::WriteTimeout
                | Ended::Lagging(_)
        )
    }
}

/// Runs one accepted session to its end. Log lines carry the peer address
/// through the caller's span.
pub async fn run(
    stream: TcpStream,
    info: Arc<SessionInfo>,
    ctx: SessionContext,
    slot: super::SessionSlot,
) {
    let SessionContext {
        table,
        settings,
        metrics,
        shutdown,
        registry,
    } = ctx;
    let id = info.id;
    let mut conn = Connection {
        id,
        info,
        session: Session::new(
            session::Config {
                role: Role::Server,
                keepalive_secs: settings.keepalive_secs,
            },
            Instant::now().into_std(),
        ),
        cursor: LogCursor::new(table.log.clone()),
        table,
        out: Outbound::default(),
        subscriptions: HashSet::new(),
        established: false,
        ops: Vec::new(),
        pacer: Pacer::new(settings.pace_limit),
        pace_spins: 0,
        timers: DeliveryTimers::default(),
        metrics,
        settings,
        registry: registry.clone(),
    };
    let started = Instant::now();
    let ended = conn.serve(stream, shutdown).await;
    let duration = format!("{:.1?}", started.elapsed());
    if !matches!(ended, Ended::Shutdown) {
        // Withdraw everything it announced. If the table is gone we are
        // shutting down and nobody is left to tell.
        let _ = conn
            .table
            .commands
            .send(Command::Disconnect {
                session: id,
                at: std::time::Instant::now(),
            })
            .await;
    }
    conn.metrics.session_closed(ended.label());
    conn.metrics.sessions_active.fetch_sub(1, Relaxed);
    // Free the session slot before saying so: once the log says a session
    // closed, a new connection can take its place.
    drop(slot);
    registry.remove(id, ended.describe());
    let updates_in = conn.info.updates_in.load(Relaxed);
    if ended.is_fault() {
        warn!(reason = %ended.describe(), label = ended.label(), %duration, updates_in, "session closed");
    } else {
        info!(reason = %ended.describe(), %duration, updates_in, "session closed");
    }
}

struct Connection {
    id: SessionId,
    /// Counters and state the control API sees.
    info: Arc<SessionInfo>,
    session: Session,
    cursor: LogCursor,
    table: TableHandle,
    out: Outbound,
    /// VNIs whose updates this session hears (changed at log markers).
    subscriptions: HashSet<Vni>,
    established: bool,
    /// Table operations decoded from the current read.
    ops: Vec<Op>,
    pacer: Pacer,
    /// Consecutive quick re-checks while pacing holds data back.
    pace_spins: u32,
    /// Dumps and updates queued whose delivery is being timed.
    timers: DeliveryTimers,
    metrics: Arc<Metrics>,
    settings: SessionSettings,
    /// Told when the handshake completes (peer watchers see it).
    registry: Arc<Registry>,
}

impl Connection {
    async fn serve(&mut self, mut stream: TcpStream, mut shutdown: watch::Receiver<bool>) -> Ended {
        let fd = stream.as_raw_fd();
        let (mut rd, mut wr) = stream.split();
        let mut rbuf = BytesMut::with_capacity(READ_BUFFER);
        let mut last_write_progress = Instant::now();
        loop {
            if self.established && self.out.len() < OUTBOUND_HIGH_WATER {
                self.pull_from_log();
            }
            let lag = self.cursor.lag_bytes();
            self.info.lag_bytes.store(lag, Relaxed);
            if lag > self.settings.max_lag_bytes {
                return Ended::Lagging(lag);
            }
            let deadline = self.session.poll_timeout().map(Instant::from_std);
            let want_log = self.established && self.out.len() < OUTBOUND_HIGH_WATER;
            let write_deadline = last_write_progress + self.settings.write_timeout;
            let (data_budget, pace_wait) = self.pace(fd);
            let can_write = self.out.has_urgent() || data_budget > 0;
            tokio::select! {
                read = rd.read_buf(&mut rbuf) => match read {
                    Ok(0) if rbuf.is_empty() => return Ended::PeerClosed,
                    Ok(0) => return Ended::PeerClosedMidFrame(rbuf.len()),
                    Ok(n) => {
                        self.metrics.bytes_in.fetch_add(n as u64, Relaxed);
                        self.info.bytes_in.fetch_add(n as u64, Relaxed);
                        if let Err(ended) = self.on_read(&mut rbuf).await {
                            return ended;
                        }
                        if rbuf.capacity() - rbuf.len() < 4096 {
                            rbuf.reserve(READ_BUFFER);
                        }
                    }
                    Err(e) => return Ended::Io(e),
                },
                written = async {
                    let slices = self.out.slices(data_budget);
                    wr.write_vectored(&slices).await
                }, if can_write => match written {
                    Ok(0) => return Ended::PeerClosed,
                    Ok(n) => {
                        self.pacer.on_sent(n, Instant::now().into_std());
                        self.out.advance(n);
                        self.metrics.bytes_out.fetch_add(n as u64, Relaxed);
                        self.info.bytes_out.fetch_add(n as u64, Relaxed);
                        last_write_progress = Instant::now();
                        self.complete_deliveries();
                    }
                    Err(e) => return Ended::Io(e),
                },
                _ = tokio::time::sleep_until(write_deadline), if !self.out.is_empty() => {
                    return Ended::WriteTimeout;
                }
                _ = sleep_until_opt(deadline) => {
                    if let Err(reason) = self.session.handle_timeout(Instant::now().into_std()) {
                        return Ended::Protocol(reason);
                    }
                    self.collect_session_output();
                }
                // With room in the queue: wake when there is more to read.
                // With a full queue: wake as the log grows, to check the lag.
                _ = self.cursor.wait(want_log), if self.established => {}
                _ = pace_wait_for(pace_wait), if pace_wait.is_some() => {}
                _ = shutdown.changed() => return Ended::Shutdown,
                _ = self.info.reset_requested() => return Ended::Reset,
            }
            if self.out.is_empty() {
                last_write_progress = Instant::now();
            }
            self.info.queue_bytes.store(self.out.len() as u64, Relaxed);
        }
    }

    /// How many bytes of route data may be written now, or how to wait
    /// before looking again.
    fn pace(&mut self, fd: RawFd) -> (usize, Option<PaceWait>) {
        if !self.out.has_data() {
            return (0, None);
        }
        if self.pacer.is_disabled() {
            return (usize::MAX, None);
        }
        let probe = match pacing::probe_socket(fd) {
            Ok(probe) => probe,
            Err(e) => {
                debug!(error = %e, "cannot read socket state; writing unpaced");
                return (usize::MAX, None);
            }
        };
        let decision = self.pacer.decide(probe, Instant::now().into_std());
        tracing::trace!(unacked = probe.unacked, window = ?probe.peer_window, ?decision, queued = self.out.len(), "pacing");
        match decision {
            Decision::Send(n) => {
                self.pace_spins = 0;
                (n, None)
            }
            // A fast reader's ACK comes within microseconds, and the kernel
            // wakes nobody for an ACK: look again after yielding to other
            // tasks a few times before falling back to the timer.
            Decision::Wait(_) if self.pace_spins < PACE_SPINS => {
                self.pace_spins += 1;
                (0, Some(PaceWait::Yield))
            }
            Decision::Wait(d) => (0, Some(PaceWait::Until(Instant::now() + d))),
        }
    }

    /// Observes the delivery times of what has been written completely.
    fn complete_deliveries(&mut self) {
        if self.timers.is_empty() {
            return;
        }
        let metrics = &self.metrics;
        self.timers.complete(
            self.out.data_written(),
            std::time::Instant::now(),
            |kind, took| match kind {
                Delivery::Updates => metrics.propagation.observe(took.as_secs_f64()),
                Delivery::Dump => metrics.dump_duration.observe(took.as_secs_f64()),
            },
        );
    }

    /// Decodes every whole frame in `rbuf` and hands the table the resulting
    /// operations in one batch.
    async fn on_read(&mut self, rbuf: &mut BytesMut) -> Result<(), Ended> {
        let now = Instant::now().into_std();
        loop {
            let frame = match decode_frame(rbuf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    self.flush_ops(now).await;
                    return Err(Ended::Decode(e));
                }
            };
            Metrics::inc(&self.metrics.frames_in);
            self.info.messages_in.fetch_add(1, Relaxed);
            match frame {
                Frame::Message(msg) => {
                    if let Message::Update(_) = msg {
                        Metrics::inc(&self.metrics.updates_in);
                        self.info.updates_in.fetch_add(1, Relaxed);
                    }
                    if let Err(reason) = self.session.handle_message(msg, now) {
                        self.flush_ops(now).await;
                        return Err(Ended::Protocol(reason));
                    }
                    self.collect_session_output();
                }
                Frame::Unknown { msg_type, len } => {
                    Metrics::inc(&self.metrics.unknown_frames);
                    info!(msg_type, len, "skipped a frame of unknown message type");
                }
            }
        }
        self.flush_ops(now).await;
        Ok(())
    }

    async fn flush_ops(&mut self, received: std::time::Instant) {
        if self.ops.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.ops);
        // Waits only if the table task is busy; the table never waits for us.
        let _ = self
            .table
            .commands
            .send(Command::Ops {
                session: self.id,
                ops,
                received,
            })
            .await;
    }

    /// Moves the session's frames to the outbound queue and its events to
    /// the pending table operations.
    fn collect_session_output(&mut self) {
        self.info.set_state(self.session.state());
        while let Some(msg) = self.session.poll_transmit() {
            let mut buf = BytesMut::with_capacity(16);
            encode_message(&msg, &mut buf);
            self.out.push_control(buf.freeze());
            self.info.messages_out.fetch_add(1, Relaxed);
        }
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Established { keepalive } => {
                    info!(keepalive_secs = keepalive.as_secs(), "session established");
                    Metrics::inc(&self.metrics.sessions_established);
                    self.established = true;
                    self.info
                        .keepalive_secs
                        .store(keepalive.as_secs() as u32, Relaxed);
                    // The state above is already ESTABLISHED: a watcher
                    // sees the session as it now is.
                    self.registry.established(self.info.clone());
                }
                Event::Subscribe(vni) => self.ops.push(Op::Subscribe(vni)),
                Event::Unsubscribe(vni) => self.ops.push(Op::Unsubscribe(vni)),
                Event::Update(u) => self.ops.push(match u.action {
                    Action::Add => Op::Announce(u.route),
                    Action::Remove => Op::Withdraw(u.route),
                }),
            }
        }
    }

    /// Queues the log entries this session should hear, up to the high water
    /// mark. Runs of consecutive frames are queued as one zero-copy slice.
    fn pull_from_log(&mut self) {
        let me = self.id;
        let out = &mut self.out;
        let subs = &mut self.subscriptions;
        let timers = &mut self.timers;
        let metrics = &self.metrics;
        // When the oldest cause of the updates queued now arrived.
        let mut oldest: Option<std::time::Instant> = None;
        let mut run: Option<(Bytes, std::ops::Range<usize>)> = None;
        // One-entry cache: consecutive updates are nearly always in one VNI.
        let mut last_vni: Option<(Vni, bool)> = None;
        let mut queued = 0u64;
        let flush = |run: &mut Option<(Bytes, std::ops::Range<usize>)>, out: &mut Outbound| {
            if let Some((data, range)) = run.take() {
                out.push_data(data.slice(range));
            }
        };
        self.cursor.drain(|item| {
            if out.len() + run.as_ref().map_or(0, |r| r.1.len()) >= OUTBOUND_HIGH_WATER {
                return false;
            }
            match item {
                Item::Update {
                    frame,
                    range,
                    vni,
                    origin,
                    since,
                } => {
                    let wanted = match last_vni {
                        Some((v, w)) if v == vni => w,
                        _ => {
                            let w = subs.contains(&vni);
                            last_vni = Some((vni, w));
                            w
                        }
                    };
                    if !wanted || origin == me {
                        return true;
                    }
                    queued += 1;
                    match &mut run {
                        Some((data, r))
                            if data.as_ptr() == frame.as_ptr() && r.end == range.start =>
                        {
                            r.end = range.end;
                        }
                        _ => {
                            flush(&mut run, out);
                            run = Some((frame.clone(), range));
                            // A run lies within one chunk, whose updates share
                            // one cause time: look at it once per run.
                            if let Some(t) = since {
                                oldest = Some(oldest.map_or(t, |o| o.min(t)));
                            }
                        }
                    }
                }
                Item::Marker(Entry::Subscribed(m)) if m.session == me => {
                    flush(&mut run, out);
                    subs.insert(m.vni);
                    last_vni = None;
                    info!(vni = %m.vni, dump_routes = m.routes, "subscribed");
                    for buf in &m.dump {
                        out.push_data(buf.clone());
                    }
                    timers.start(out.data_pushed(), m.requested_at, Delivery::Dump);
                    Metrics::inc(&metrics.dumps);
                    metrics.dump_routes.fetch_add(m.routes as u64, Relaxed);
                    queued += m.routes as u64;
                }
                Item::Marker(Entry::Unsubscribed { session, vni }) if *session == me => {
                    flush(&mut run, out);
                    subs.remove(vni);
                    info!(%vni, "unsubscribed");
                    last_vni = None;
                }
                Item::Marker(_) => {}
            }
            true
        });
        flush(&mut run, out);
        if let Some(t) = oldest {
            timers.start(out.data_pushed(), t, Delivery::Updates);
        }
        self.metrics.updates_out.fetch_add(queued, Relaxed);
        self.info.updates_out.fetch_add(queued, Relaxed);
        // A dump with no routes is delivered as soon as it is queued.
        self.complete_deliveries();
        self.info.messages_out.fetch_add(queued, Relaxed);
    }
}

/// How the writer waits while pacing holds route data back.
#[derive(Clone, Copy, Debug)]
enum PaceWait {
    /// Let other tasks run once, then look again.
    Yield,
    /// Look again at this time.
    Until(Instant),
}

async fn pace_wait_for(wait: Option<PaceWait>) {
    match wait {
        Some(PaceWait::Yield) => tokio::task::yield_now().await,
        Some(PaceWait::Until(t)) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
