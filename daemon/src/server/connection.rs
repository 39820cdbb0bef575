//! One task per TCP session: the I/O shell around the sans-I/O [`Session`].
//!
//! It reads and decodes frames (reassembling across reads), feeds them to the
//! session state machine, forwards table operations to the table task in one
//! batch per read, and writes the session's frames plus the routes it should
//! hear, read from the shared update log at its own pace. Reading never stops
//! while a write is pending, so keepalives are served during long dumps.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::delivery::{Delivery, DeliveryTimers};
use super::metrics::Metrics;
use super::outbound::Outbound;
use super::pacing::{self, Decision, Pacer};
use super::registry::{Registry, SessionInfo};
use crate::session::{self, CloseReason, Event, Role, Session};
use crate::table::log::{Mail, Mailbox};
use crate::table::SessionId;
use crate::table_task::{Command, Op, TableHandle};
use crate::wire::{decode_frame, encode_message, Action, DecodeError, Frame, Message};

/// Stop pulling from the log while this much is queued for the socket.
const OUTBOUND_HIGH_WATER: usize = 256 * 1024;
/// Largest read (the read buffer grows to it while reads fill it).
const READ_BUFFER: usize = 64 * 1024;
/// First read size, and the size a quiet session falls back to.
const READ_MIN: usize = 4 * 1024;
/// Operations read but not yet taken by the table task above which the
/// session stops reading (TCP then pushes back on the peer). Below it,
/// reading (and answering KEEPALIVEs) goes on while the table is busy.
const MAX_WAITING_OPS: usize = 4096;
/// KEEPALIVE echoes timed at once (a peer that sends many without reading
/// keeps a bounded list).
const MAX_ECHO_TIMERS: usize = 16;
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
    /// Keep an ended session's routes this long before withdrawing them
    /// (0: at once, PROTOCOL.md section 4); a reconnecting successor that
    /// re-announces them in time takes them over silently (ADR 0011).
    pub withdraw_delay: Duration,
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
        mailbox: Mailbox::new(settings.max_lag_bytes),
        table,
        out: Outbound::default(),
        established: false,
        ops: Vec::new(),
        waiting: VecDeque::new(),
        waiting_ops: 0,
        paused_at: None,
        paused_credit: Duration::ZERO,
        read_size: READ_MIN,
        echoes: VecDeque::new(),
        pacer: Pacer::new(settings.pace_limit),
        pace_spins: 0,
        timers: DeliveryTimers::default(),
        metrics,
        settings,
        registry: registry.clone(),
    };
    let started = Instant::now();
    let ended = conn.serve(stream, shutdown).await;
    // The table stops delivering to it at once, before it hears of the end.
    conn.mailbox.close();
    let duration = format!("{:.1?}", started.elapsed());
    if !matches!(ended, Ended::Shutdown) {
        // Operations read before the end still count, in order; then
        // withdraw everything it announced.
        for command in conn.waiting.drain(..) {
            let _ = conn.table.commands.send(command).await;
        }
        // If the table is gone we are shutting down and nobody is left to tell.
        let _ = conn
            .table
            .commands
            .send(Command::Disconnect {
                withdraw_delay: conn.settings.withdraw_delay,
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
    /// Where the table task puts this session's dumps and updates.
    mailbox: Arc<Mailbox>,
    table: TableHandle,
    out: Outbound,
    established: bool,
    /// Table operations decoded from the current read.
    ops: Vec<Op>,
    /// Commands the table channel had no room for yet, in order.
    waiting: VecDeque<Command>,
    /// Operations in `waiting`; reading pauses above [`MAX_WAITING_OPS`].
    waiting_ops: usize,
    /// Since when reading is paused because `waiting` is full.
    paused_at: Option<Instant>,
    /// Time reading was paused since the last KEEPALIVE was read: it does
    /// not count against the peer's keepalive timeout.
    paused_credit: Duration,
    /// Bytes to ask for in the next read (grows while reads fill the buffer).
    read_size: usize,
    /// KEEPALIVE echoes queued: (end of the echo in the control stream,
    /// when the KEEPALIVE was read), for the echo latency histogram.
    echoes: VecDeque<(u64, std::time::Instant)>,
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
    async fn serve(&mut self, stream: TcpStream, mut shutdown: watch::Receiver<bool>) -> Ended {
        let fd = stream.as_raw_fd();
        // Allocated only while there is something to read: an idle session
        // holds no read buffer (ADR 0011).
        let mut rbuf = BytesMut::new();
        let mut last_write_progress = Instant::now();
        let mailbox = self.mailbox.clone();
        let info = self.info.clone();
        loop {
            if self.established && self.out.len() < OUTBOUND_HIGH_WATER {
                self.pull_from_mailbox();
            }
            if let Some(lag) = self.mailbox.overflowed() {
                return Ended::Lagging(lag);
            }
            self.info
                .lag_bytes
                .store(self.mailbox.queued_bytes(), Relaxed);
            let can_read = self.waiting_ops < MAX_WAITING_OPS;
            match (can_read, self.paused_at) {
                (false, None) => self.paused_at = Some(Instant::now()),
                (true, Some(at)) => {
                    self.paused_credit += at.elapsed();
                    self.paused_at = None;
                }
                _ => {}
            }
            let deadline = self
                .session
                .poll_timeout()
                .map(|d| Instant::from_std(d) + self.paused_credit);
            let write_deadline = last_write_progress + self.settings.write_timeout;
            let (data_budget, pace_wait) = self.pace(fd);
            let can_write = self.out.has_urgent() || data_budget > 0;
            // Only while commands wait for room in the table's channel.
            let commands = (!self.waiting.is_empty()).then(|| self.table.commands.clone());
            tokio::select! {
                ready = stream.readable(), if can_read => {
                    if let Err(e) = ready {
                        return Ended::Io(e);
                    }
                    if let Err(ended) = self.read_some(&stream, &mut rbuf) {
                        return ended;
                    }
                    // Echo a KEEPALIVE at once: the socket is nearly always
                    // writable, and this saves a turn of the loop per echo.
                    if self.out.has_urgent() {
                        match self.write_some(&stream, 0) {
                            Ok(true) => last_write_progress = Instant::now(),
                            Ok(false) => {}
                            Err(ended) => return ended,
                        }
                    }
                }
                ready = stream.writable(), if can_write => {
                    if let Err(e) = ready {
                        return Ended::Io(e);
                    }
                    match self.write_some(&stream, data_budget) {
                        Ok(true) => last_write_progress = Instant::now(),
                        Ok(false) => {}
                        Err(ended) => return ended,
                    }
                }
                _ = tokio::time::sleep_until(write_deadline), if !self.out.is_empty() => {
                    return Ended::WriteTimeout;
                }
                _ = sleep_until_opt(deadline) => {
                    // A KEEPALIVE that already arrived counts even if we were
                    // too busy (or paused) to read it: look before judging.
                    if let Err(ended) = self.read_some(&stream, &mut rbuf) {
                        return ended;
                    }
                    let mut credit = self.paused_credit;
                    if let Some(at) = self.paused_at {
                        credit += at.elapsed();
                    }
                    let now = Instant::now().into_std();
                    let judged = now.checked_sub(credit).unwrap_or(now);
                    if let Err(reason) = self.session.handle_timeout(judged) {
                        return Ended::Protocol(reason);
                    }
                    self.collect_session_output(now);
                }
                permit = reserve(commands.as_ref()), if commands.is_some() => {
                    match permit {
                        Ok(permit) => {
                            if let Some(command) = self.waiting.pop_front() {
                                self.waiting_ops -= command_ops(&command);
                                permit.send(command);
                            }
                        }
                        // The table is gone: shutting down.
                        Err(_) => {
                            self.waiting.clear();
                            self.waiting_ops = 0;
                        }
                    }
                }
                // Woken once per batch of mail (the table coalesces), or
                // when the mailbox overflowed. With a full queue, the wake-up
                // is only used to look at the overflow.
                _ = mailbox.notified(), if self.established => {}
                _ = pace_wait_for(pace_wait), if pace_wait.is_some() => {}
                _ = shutdown.changed() => return Ended::Shutdown,
                _ = info.reset_requested() => return Ended::Reset,
            }
            if self.out.is_empty() {
                last_write_progress = Instant::now();
            }
            self.info.queue_bytes.store(self.out.len() as u64, Relaxed);
        }
    }

    /// Writes what is queued (control frames first, then at most
    /// `data_budget` bytes of route data) without waiting. True if
    /// something was written.
    fn write_some(&mut self, stream: &TcpStream, data_budget: usize) -> Result<bool, Ended> {
        let slices = self.out.slices(data_budget);
        match stream.try_write_vectored(&slices) {
            Ok(0) => Err(Ended::PeerClosed),
            Ok(n) => {
                self.pacer.on_sent(n, Instant::now().into_std());
                self.out.advance(n);
                self.metrics.bytes_out.fetch_add(n as u64, Relaxed);
                self.info.bytes_out.fetch_add(n as u64, Relaxed);
                self.complete_deliveries();
                self.complete_echoes();
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(Ended::Io(e)),
        }
    }

    /// Reads what the socket has (without waiting) and handles every whole
    /// frame in it. The buffer grows while reads fill it and is released
    /// when a quiet read leaves it empty.
    fn read_some(&mut self, stream: &TcpStream, rbuf: &mut BytesMut) -> Result<(), Ended> {
        if rbuf.capacity() - rbuf.len() < self.read_size / 2 {
            rbuf.reserve(self.read_size);
        }
        let spare = rbuf.capacity() - rbuf.len();
        match stream.try_read_buf(rbuf) {
            Ok(0) if rbuf.is_empty() => Err(Ended::PeerClosed),
            Ok(0) => Err(Ended::PeerClosedMidFrame(rbuf.len())),
            Ok(n) => {
                self.metrics.bytes_in.fetch_add(n as u64, Relaxed);
                self.info.bytes_in.fetch_add(n as u64, Relaxed);
                self.on_read(rbuf)?;
                if n == spare {
                    self.read_size = (self.read_size * 2).min(READ_BUFFER);
                } else if rbuf.is_empty() && n < READ_MIN / 2 {
                    self.read_size = READ_MIN;
                    *rbuf = BytesMut::new();
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(Ended::Io(e)),
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

    /// Observes the latency of every KEEPALIVE echo written completely.
    fn complete_echoes(&mut self) {
        let written = self.out.control_written();
        let now = std::time::Instant::now();
        while let Some(&(end, read_at)) = self.echoes.front() {
            if end > written {
                break;
            }
            self.metrics
                .keepalive_echo
                .observe(now.saturating_duration_since(read_at).as_secs_f64());
            self.echoes.pop_front();
        }
        if self.echoes.is_empty() && self.echoes.capacity() > 4 {
            self.echoes = VecDeque::new();
        }
    }

    /// Decodes every whole frame in `rbuf` and hands the table the resulting
    /// operations in one batch. Never waits: if the table channel is full the
    /// batch waits in `waiting` while keepalives go on being answered.
    fn on_read(&mut self, rbuf: &mut BytesMut) -> Result<(), Ended> {
        let now = Instant::now().into_std();
        loop {
            let frame = match decode_frame(rbuf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    self.flush_ops(now);
                    return Err(Ended::Decode(e));
                }
            };
            Metrics::inc(&self.metrics.frames_in);
            self.info.messages_in.fetch_add(1, Relaxed);
            match frame {
                Frame::Message(msg) => {
                    match msg {
                        Message::Update(_) => {
                            Metrics::inc(&self.metrics.updates_in);
                            self.info.updates_in.fetch_add(1, Relaxed);
                        }
                        // Pauses before this one no longer matter.
                        Message::Keepalive => self.paused_credit = Duration::ZERO,
                        _ => {}
                    }
                    if let Err(reason) = self.session.handle_message(msg, now) {
                        self.flush_ops(now);
                        return Err(Ended::Protocol(reason));
                    }
                    self.collect_session_output(now);
                }
                Frame::Unknown { msg_type, len } => {
                    Metrics::inc(&self.metrics.unknown_frames);
                    info!(msg_type, len, "skipped a frame of unknown message type");
                }
            }
        }
        self.flush_ops(now);
        Ok(())
    }

    /// Sends the operations of the current read to the table, or queues
    /// them behind earlier ones the channel had no room for.
    fn flush_ops(&mut self, received: std::time::Instant) {
        if self.ops.is_empty() {
            return;
        }
        let command = Command::Ops {
            session: self.id,
            ops: std::mem::take(&mut self.ops),
            received,
            mailbox: self.mailbox.clone(),
        };
        if !self.waiting.is_empty() {
            self.waiting_ops += command_ops(&command);
            self.waiting.push_back(command);
            return;
        }
        match self.table.commands.try_send(command) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(command)) => {
                self.waiting_ops += command_ops(&command);
                self.waiting.push_back(command);
            }
            // The table is gone: shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Moves the session's frames to the outbound queue and its events to
    /// the pending table operations. `read_at`: when the input that caused
    /// them was read (the start of a KEEPALIVE echo's latency).
    fn collect_session_output(&mut self, read_at: std::time::Instant) {
        self.info.set_state(self.session.state());
        while let Some(msg) = self.session.poll_transmit() {
            let mut buf = BytesMut::with_capacity(16);
            encode_message(&msg, &mut buf);
            self.out.push_control(buf.freeze());
            self.info.messages_out.fetch_add(1, Relaxed);
            if matches!(msg, Message::Keepalive) {
                if self.echoes.len() >= MAX_ECHO_TIMERS {
                    // Keep the oldest start: the latency never looks better.
                    self.echoes.pop_back();
                }
                self.echoes.push_back((self.out.control_pushed(), read_at));
            }
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

    /// Queues the mail the table left for this session, up to the high
    /// water mark. Each item is a zero-copy slice (or a dump's buffers).
    fn pull_from_mailbox(&mut self) {
        let out = &mut self.out;
        let timers = &mut self.timers;
        let metrics = &self.metrics;
        // When the oldest cause of the updates queued now arrived.
        let mut oldest: Option<std::time::Instant> = None;
        let mut queued = 0u64;
        self.mailbox.take_while(|mail| {
            if out.len() >= OUTBOUND_HIGH_WATER {
                return Err(mail);
            }
            match mail {
                Mail::Updates {
                    frames,
                    count,
                    since,
                } => {
                    out.push_data(frames);
                    queued += u64::from(count);
                    if let Some(t) = since {
                        oldest = Some(oldest.map_or(t, |o| o.min(t)));
                    }
                }
                Mail::Dump {
                    vni,
                    frames,
                    routes,
                    requested_at,
                } => {
                    // Updates queued before the dump are timed up to here.
                    if let Some(t) = oldest.take() {
                        timers.start(out.data_pushed(), t, Delivery::Updates);
                    }
                    info!(%vni, dump_routes = routes, "subscribed");
                    for buf in frames {
                        out.push_data(buf);
                    }
                    timers.start(out.data_pushed(), requested_at, Delivery::Dump);
                    Metrics::inc(&metrics.dumps);
                    metrics.dump_routes.fetch_add(routes as u64, Relaxed);
                    queued += routes as u64;
                }
            }
            Ok(())
        });
        if let Some(t) = oldest {
            timers.start(out.data_pushed(), t, Delivery::Updates);
        }
        if queued == 0 {
            return;
        }
        self.metrics.updates_out.fetch_add(queued, Relaxed);
        self.info.updates_out.fetch_add(queued, Relaxed);
        // A dump with no routes is delivered as soon as it is queued.
        self.complete_deliveries();
        self.info.messages_out.fetch_add(queued, Relaxed);
    }
}

/// Operations in a command (for the bound on commands waiting for the table).
fn command_ops(command: &Command) -> usize {
    match command {
        Command::Ops { ops, .. } => ops.len(),
        _ => 1,
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

/// A permit of `commands`' channel (never ready without a channel).
async fn reserve(
    commands: Option<&mpsc::Sender<Command>>,
) -> Result<mpsc::Permit<'_, Command>, mpsc::error::SendError<()>> {
    match commands {
        Some(c) => c.reserve().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
