//! The socket loop both roles share: read, decode, drive the [`Session`],
//! encode its frames, write, and keep its timers. A [`LinkRole`] adds what
//! one role needs (the server: table forwarding, its mailbox, delivery
//! timers; the client: events to the agent and commands from it).

use std::future::{poll_fn, Future};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info};

use super::end::SessionEnd;
use super::outbound::Outbound;
use super::pacing::{self, Decision, Pacer};
use crate::session::{Event, Session, State};
use crate::wire::{decode_frame_with, encode_message, Frame, Message, KEEPALIVE_FRAME};

/// Largest read (the read buffer grows to it while reads fill it).
const READ_BUFFER: usize = 64 * 1024;
/// First read size, and the size a quiet session falls back to. Small
/// enough for the allocator's per-thread cache (glibc's tcache takes up to
/// 1,032 bytes): an idle session's buffer is allocated for each KEEPALIVE
/// and released after it, and a 4 KiB one went through the arena's bins
/// and their consolidation every time.
const READ_MIN: usize = 1024;
/// Quick re-checks (yielding to other tasks) before pacing waits on the timer.
const PACE_SPINS: u32 = 32;
/// Sessions re-checking quickly at once, at most; the others wait on the
/// timer. A lone fast reader not yet proven fast (a big dump's first
/// milliseconds) needs its ACK caught within microseconds, or every 16 KiB
/// batch waits a millisecond; when thousands of sessions wait for ACKs (a
/// fleet's converge or reconnect storm), each re-check only passes through
/// the others' and the CPU is better spent writing. Noticing an ACK late on
/// the timer does not shrink a batch: the pacer times an ACK by its arrival.
const MAX_SPINNERS: usize = 16;
/// Most queued bytes a turn writes without first waiting for `writable`
/// (see `Link::run`): a few updates or an echo, not a dump.
const DIRECT_WRITE_MAX: usize = 16 * 1024;

/// Sessions holding a [`SpinSlot`].
static SPINNERS: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_SPINNERS`] places of sessions re-checking quickly;
/// given back when dropped.
#[derive(Debug)]
struct SpinSlot(&'static AtomicUsize);

impl SpinSlot {
    /// One of the [`MAX_SPINNERS`] places, if one is free.
    fn take() -> Option<Self> {
        Self::take_from(&SPINNERS, MAX_SPINNERS)
    }

    /// A place among at most `max` counted by `holders`.
    fn take_from(holders: &'static AtomicUsize, max: usize) -> Option<Self> {
        holders
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| SpinSlot(holders))
    }
}

impl Drop for SpinSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// How the driver treats the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkSettings {
    /// End the session when queued bytes make no write progress for this
    /// long (`None`: never).
    pub write_timeout: Option<Duration>,
    /// Keep the estimate of route data the peer has not read under this
    /// many bytes (0: unpaced; see [`super::pacing`]).
    pub pace_limit: usize,
}

/// What a role adds to the driver. Every hook runs on the session's task,
/// between two socket operations; none may block. The per-frame hooks are
/// on the hot path: keep them to counter adds and pushes.
pub trait LinkRole {
    /// `n` bytes were read from the socket.
    fn bytes_in(&mut self, _n: usize) {}

    /// A whole frame was decoded; the session sees it next (unknown frames
    /// are skipped after this).
    fn frame_in(&mut self, _frame: &Frame) {}

    /// The session's state, each time its output is collected.
    fn state(&mut self, _state: State) {}

    /// The session queued `msg` on the control lane; its frame ends at
    /// `control_end` in the control stream ([`Outbound::control_pushed`]).
    /// `read_at`: when the input that caused it was read.
    fn message_out(&mut self, _msg: &Message, _control_end: u64, _read_at: std::time::Instant) {}

    /// An event of the session. The role may queue route data on `out`.
    fn event(&mut self, event: Event, out: &mut Outbound);

    /// Every frame of one read was handled, or handling stopped at the one
    /// that ends the session: hand on what they produced. `received`: when
    /// they were read.
    fn read_done(&mut self, _received: std::time::Instant) {}

    /// `n` bytes were written at `now`; `out` tells how far each lane got.
    fn written(&mut self, _n: usize, _out: &Outbound, _now: std::time::Instant) {}

    /// Before each wait: queue more route data, or end the session. Returns
    /// whether to read; a role that stops reading is credited the time
    /// against the peer's keepalive timeout.
    fn prepare(&mut self, _out: &mut Outbound) -> Result<bool, SessionEnd> {
        Ok(true)
    }

    /// After each turn that did not end the session.
    fn turn_done(&mut self, _out: &Outbound) {}

    /// Whether route data to the peer is paced changed (at the first turn,
    /// when the session negotiates an extension, when the peer proves a
    /// fast reader).
    fn pacing_changed(&mut self, _paced: bool) {}

    /// A KEEPALIVE was read (once per keepalive interval): release what a
    /// burst made the role's queues grow to if they are empty, so that an
    /// idle session holds little.
    fn release_if_idle(&mut self) {}

    /// Whether the task yields after a turn whose read filled the buffer.
    /// A role whose input can be dropped without waiting for anything (the
    /// server with a peer policy refusing a flood) says yes: otherwise a
    /// flooding peer runs for a whole coop budget (128 reads) at a time
    /// while the tasks it woke wait in this worker's LIFO slot, which no
    /// other worker steals. Without that, the table's backpressure makes the
    /// session wait anyway, and a yield per full read only costs fan-out
    /// throughput (1M x 100: +14 %).
    fn yield_after_full_read(&self) -> bool {
        false
    }

    /// Waits for one of the role's own wake-ups and handles it; the driver
    /// then collects the session's output. The role's shutdown is one of
    /// them ([`SessionEnd::Shutdown`]): the driver has no wait of its own for
    /// it, so that a server can wake only the sessions concerned. Dropped
    /// unfinished whenever another wake-up comes first, so it must only
    /// change state after its last await.
    fn wait(
        &mut self,
        session: &mut Session,
        out: &mut Outbound,
    ) -> impl Future<Output = Result<(), SessionEnd>> + Send;

    /// Hands on, waiting if need be, what the session's events of the last
    /// turn produced (even a turn that ended the session) before the next
    /// turn starts.
    fn deliver(&mut self) -> impl Future<Output = Result<(), SessionEnd>> + Send {
        std::future::ready(Ok(()))
    }
}

/// One TCP connection with its session: see the module documentation.
pub struct Link {
    stream: TcpStream,
    session: Session,
    out: Outbound,
    /// Allocated only while there is something to read: an idle session
    /// holds no read buffer (ADR 0011).
    rbuf: BytesMut,
    /// Bytes to ask for in the next read (grows while reads fill the buffer).
    read_size: usize,
    pacer: Pacer,
    /// Consecutive quick re-checks while pacing holds data back.
    pace_spins: u32,
    /// Held while re-checking quickly (see [`MAX_SPINNERS`]).
    spin_slot: Option<SpinSlot>,
    /// Whether route data is paced, as last told to the role (`None`:
    /// not told yet).
    told_paced: Option<bool>,
    /// Since when reading is paused by the role.
    paused_at: Option<Instant>,
    /// Time reading was paused since the last KEEPALIVE was read: it does
    /// not count against the peer's keepalive timeout.
    paused_credit: Duration,
    /// The last read filled the buffer: the peer sends faster than we
    /// handle it, so the task yields after this turn (see `run`).
    read_full: bool,
    write_timeout: Option<Duration>,
    /// The last plaintext write left bytes behind (or would have blocked):
    /// the next write waits for the socket to say writable.
    socket_full: bool,
    /// The session runs over TLS: the socket's bytes pass through this
    /// connection, used sans-I/O after the handshake (ADR 0026). `None`
    /// (plaintext) costs one branch per read and write.
    tls: Option<Box<rustls::Connection>>,
}

impl Link {
    /// A link that runs `session` over `stream`.
    pub fn new(stream: TcpStream, session: Session, settings: LinkSettings) -> Self {
        Self {
            stream,
            session,
            out: Outbound::default(),
            rbuf: BytesMut::new(),
            read_size: READ_MIN,
            pacer: Pacer::new(settings.pace_limit),
            pace_spins: 0,
            spin_slot: None,
            told_paced: None,
            paused_at: None,
            paused_credit: Duration::ZERO,
            read_full: false,
            write_timeout: settings.write_timeout,
            socket_full: false,
            tls: None,
        }
    }

    /// Runs the session over `tls`, whose handshake on this link's socket
    /// is complete (it may hold records read past the handshake).
    pub fn with_tls(mut self, mut tls: rustls::Connection) -> Self {
        tls.set_buffer_limit(Some(crate::tls::SEND_BUFFER_LIMIT));
        self.tls = Some(Box::new(tls));
        // Unpaced: pacing protects Go reference peers, which reset on a
        // 64 KiB read (ADR 0006) and cannot speak TLS. Its estimate reads
        // TCP's window, which a TLS reader moves by whole records: a shrink
        // it took for unread data held sessions to a probe every few
        // milliseconds for seconds (the 1M x 100 fan-out over TLS).
        self.pacer = Pacer::new(0);
        self
    }

    /// Runs the session until it ends (the role's shutdown among the ends,
    /// see [`LinkRole::wait`]). Reading never stops while a write is
    /// pending, so keepalives are answered during long dumps; a KEEPALIVE
    /// echo is written in the turn that read it, and control frames
    /// overtake route data at frame boundaries ([`Outbound`]).
    pub async fn run<R: LinkRole>(&mut self, role: &mut R) -> SessionEnd {
        let fd = self.stream.as_raw_fd();
        let mut last_write_progress = Instant::now();
        let mut out_was_empty = true;
        // What the session says before hearing anything (the client's HELLO).
        self.collect(role, Instant::now().into_std());
        // Records that came with the end of the TLS handshake are in rustls
        // already: the socket will not say readable for them.
        let early = if self.tls.is_some() {
            self.read_some(role)
        } else {
            Ok(())
        };
        if let Err(end) = role.deliver().await {
            return end;
        }
        if let Err(end) = early {
            return end;
        }
        // The peer's keepalive deadline, one timer for the session's life:
        // moved when the deadline moves (a KEEPALIVE read), not registered
        // and dropped again every turn (the cost of an idle session's turn).
        let mut keepalive_timer = Box::pin(tokio::time::sleep_until(Instant::now()));
        let mut keepalive_at: Option<Instant> = None;
        // The last turn wrote without waiting (see below).
        let mut wrote_directly = false;
        loop {
            let can_read = match role.prepare(&mut self.out) {
                Ok(can_read) => can_read,
                Err(end) => return end,
            };
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
            // The write timeout counts from the last progress, or from
            // when something was queued on an empty queue: a clock read
            // only in the turns that queue (here, or below for what a turn
            // queued and could not write), none in an echo's or an idle turn.
            if out_was_empty && !self.out.is_empty() {
                last_write_progress = Instant::now();
            }
            let write_deadline = self.write_timeout.map(|t| last_write_progress + t);
            let (data_budget, pace_wait) = self.pace(fd);
            // TLS: records rustls holds (a write it could not finish, an
            // alert) go out even when nothing is queued.
            let tls_pending = self.tls.as_ref().is_some_and(|t| t.wants_write());
            let can_write = self.out.has_urgent() || data_budget > 0 || tls_pending;
            if deadline != keepalive_at {
                if let Some(d) = deadline {
                    keepalive_timer.as_mut().reset(d);
                }
                keepalive_at = deadline;
            }
            // A little to send (an update, an echo) on a socket that took
            // everything last time: write it now rather than in a turn of its
            // own after `writable` says what it said last time. Not twice in a
            // row, so that reading and every other wake-up get a turn between
            // (a keepalive is never starved by a stream of writes), and not
            // for bulk data, which the usual turns pace and interleave.
            let write_now = can_write
                && !wrote_directly
                && !self.socket_full
                && self.tls.is_none()
                && self.out.len() <= DIRECT_WRITE_MAX;
            wrote_directly = write_now;
            let turn = if write_now {
                self.write_some(role, data_budget, &mut last_write_progress)
            } else {
                tokio::select! {
                    // The socket's own waker slots, not `readable()` and
                    // `writable()`: those link a waiter into the socket's
                    // list and unlink it again every turn.
                    ready = poll_fn(|cx| self.stream.poll_read_ready(cx)), if can_read => match ready {
                        Err(e) => Err(SessionEnd::Io(e)),
                        Ok(()) => match self.read_some(role) {
                            // Echo a KEEPALIVE at once: the socket is nearly
                            // always writable, and this saves a turn per echo.
                            Ok(()) if self.out.has_urgent() => {
                                self.write_some(role, 0, &mut last_write_progress)
                            }
                            other => other,
                        },
                    },
                    ready = poll_fn(|cx| self.stream.poll_write_ready(cx)), if can_write => match ready {
                        Err(e) => Err(SessionEnd::Io(e)),
                        Ok(()) => {
                            self.socket_full = false;
                            self.write_some(role, data_budget, &mut last_write_progress)
                        }
                    },
                    // Bytes only rustls holds count too: a peer that stops
                    // reading cannot pin them (and the session) forever.
                    _ = sleep_until_opt(write_deadline), if !self.out.is_empty() || tls_pending => {
                        Err(SessionEnd::WriteTimeout)
                    }
                    _ = &mut keepalive_timer, if keepalive_at.is_some() => self.on_timer(role),
                    woken = role.wait(&mut self.session, &mut self.out) => woken.map(|()| {
                        self.collect(role, Instant::now().into_std());
                    }),
                    _ = pace_wait_for(pace_wait), if pace_wait.is_some() => Ok(()),
                }
            };
            if let Err(end) = role.deliver().await {
                return end;
            }
            if let Err(end) = turn {
                return end;
            }
            let out_empty =
                self.out.is_empty() && !self.tls.as_ref().is_some_and(|t| t.wants_write());
            if out_was_empty && !out_empty {
                last_write_progress = Instant::now();
            }
            out_was_empty = out_empty;
            role.turn_done(&self.out);
            let paced = !self.pacer.is_disabled();
            if self.told_paced != Some(paced) {
                self.told_paced = Some(paced);
                role.pacing_changed(paced);
            }
            // See `LinkRole::yield_after_full_read`.
            if std::mem::take(&mut self.read_full) && role.yield_after_full_read() {
                tokio::task::yield_now().await;
            }
        }
    }

    /// The session's timer fired: judge the peer's keepalives (minus the
    /// time reading was paused), send ours.
    fn on_timer<R: LinkRole>(&mut self, role: &mut R) -> Result<(), SessionEnd> {
        // A KEEPALIVE that already arrived counts even if we were too busy
        // (or paused) to read it: look before judging.
        self.read_some(role)?;
        let mut credit = self.paused_credit;
        if let Some(at) = self.paused_at {
            credit += at.elapsed();
        }
        let now = Instant::now().into_std();
        let judged = now.checked_sub(credit).unwrap_or(now);
        self.session
            .handle_timeout(judged)
            .map_err(SessionEnd::Protocol)?;
        self.collect(role, now);
        Ok(())
    }

    /// Writes what is queued (control frames first, then at most
    /// `data_budget` bytes of route data) without waiting.
    fn write_some<R: LinkRole>(
        &mut self,
        role: &mut R,
        data_budget: usize,
        progress: &mut Instant,
    ) -> Result<(), SessionEnd> {
        if self.tls.is_some() {
            return self.write_some_tls(role, data_budget, progress);
        }
        let slices = self.out.slices(data_budget);
        let offered: usize = slices.iter().map(|s| s.len()).sum();
        let stream = &self.stream;
        // One slice (an echo, an update) is a plain write: `writev` first
        // copies and checks the vector, for each of the churn's writes.
        let write = || match &slices[..] {
            [one] => stream.try_write(one),
            _ => stream.try_write_vectored(&slices),
        };
        match io_clearing_when_short(stream, tokio::io::Interest::WRITABLE, offered, write) {
            Ok(0) => Err(SessionEnd::PeerClosed),
            Ok(n) => {
                self.socket_full = n < offered;
                let now = Instant::now();
                self.pacer.on_sent(n, now.into_std());
                self.out.advance(n);
                role.written(n, &self.out, now.into_std());
                *progress = now;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.socket_full = true;
                Ok(())
            }
            Err(e) => Err(SessionEnd::Io(e)),
        }
    }

    /// Reads what the socket has (without waiting) and handles every whole
    /// frame in it. The buffer grows while reads fill it and is released
    /// when a quiet read leaves it empty.
    fn read_some<R: LinkRole>(&mut self, role: &mut R) -> Result<(), SessionEnd> {
        if self.tls.is_some() {
            return self.read_some_tls(role);
        }
        if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 2 {
            self.rbuf.reserve(self.read_size);
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let (stream, rbuf) = (&self.stream, &mut self.rbuf);
        let read = || stream.try_read_buf(rbuf);
        match io_clearing_when_short(stream, tokio::io::Interest::READABLE, spare, read) {
            Ok(0) if self.rbuf.is_empty() => Err(SessionEnd::PeerClosed),
            Ok(0) => Err(SessionEnd::TruncatedFrame(self.rbuf.len())),
            Ok(n) => {
                role.bytes_in(n);
                let now = Instant::now().into_std();
                let handled = self.handle_frames(role, now);
                role.read_done(now);
                handled?;
                if n == spare {
                    self.read_full = true;
                    self.read_size = (self.read_size * 2).min(READ_BUFFER);
                } else if self.rbuf.is_empty() && n < READ_MIN / 2 {
                    self.read_size = READ_MIN;
                    self.rbuf = BytesMut::new();
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(SessionEnd::Io(e)),
        }
    }

    /// [`Link::write_some`] over TLS: rustls takes what fits in its buffer
    /// (so `out` advances by exactly what it took) and its records go to
    /// the socket.
    fn write_some_tls<R: LinkRole>(
        &mut self,
        role: &mut R,
        data_budget: usize,
        progress: &mut Instant,
    ) -> Result<(), SessionEnd> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Ok(());
        };
        // What rustls holds goes out first, making room.
        let mut wrote = flush_tls(tls, &self.stream)?;
        if tls.wants_write() {
            // The socket is full: refill rustls only once it has drained.
            // Handing it queue slices now would build up to MAX_IOVECS
            // slices per turn for the few bytes it has room for (7 % of the
            // server's CPU in the 1M x 100 fan-out over TLS).
            if wrote {
                *progress = Instant::now();
            }
            return Ok(());
        }
        let slices = self
            .out
            .slices_bytes(data_budget.min(crate::tls::SEND_BUFFER_LIMIT));
        if !slices.is_empty() {
            let n = tls
                .writer()
                .write_vectored(&slices)
                .map_err(SessionEnd::Io)?;
            if n > 0 {
                let now = Instant::now().into_std();
                self.pacer.on_sent(n, now);
                self.out.advance(n);
                role.written(n, &self.out, now);
            }
            wrote |= flush_tls(tls, &self.stream)?;
        }
        if wrote {
            *progress = Instant::now();
        }
        Ok(())
    }

    /// [`Link::read_some`] over TLS: socket bytes into rustls, its
    /// plaintext into the read buffer, then the frames as usual. A TLS
    /// error (a fatal alert, a bad record) or the peer's close_notify ends
    /// the session after the frames before it were handled.
    fn read_some_tls<R: LinkRole>(&mut self, role: &mut R) -> Result<(), SessionEnd> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Ok(());
        };
        let mut got = 0;
        let mut plain = false;
        let mut eof = false;
        let mut failed = None;
        loop {
            match tls.process_new_packets() {
                Ok(state) => {
                    let n = state.plaintext_bytes_to_read();
                    if n > 0 {
                        let start = self.rbuf.len();
                        self.rbuf.resize(start + n, 0);
                        tls.reader()
                            .read_exact(&mut self.rbuf[start..])
                            .map_err(SessionEnd::Io)?;
                        plain = true;
                    }
                    if state.peer_has_closed() {
                        eof = true;
                        break;
                    }
                }
                Err(e) => {
                    // Best effort: tell the peer why (rustls queued an alert).
                    let _ = tls.write_tls(&mut SocketIo(&self.stream));
                    failed = Some(e);
                    break;
                }
            }
            // Let other sessions run; the socket stays readable.
            if got >= READ_BUFFER {
                break;
            }
            match tls.read_tls(&mut SocketIo(&self.stream)) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    got += n;
                    role.bytes_in(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(SessionEnd::Io(e)),
            }
        }
        if plain {
            let now = Instant::now().into_std();
            let handled = self.handle_frames(role, now);
            role.read_done(now);
            handled?;
        }
        if let Some(e) = failed {
            return Err(SessionEnd::Tls(e));
        }
        if eof {
            return Err(if self.rbuf.is_empty() {
                SessionEnd::PeerClosed
            } else {
                SessionEnd::TruncatedFrame(self.rbuf.len())
            });
        }
        if self.rbuf.is_empty() {
            // An idle session holds no read buffer (ADR 0011).
            self.rbuf = BytesMut::new();
        }
        Ok(())
    }

    /// Feeds every whole frame in the read buffer to the session.
    fn handle_frames<R: LinkRole>(
        &mut self,
        role: &mut R,
        now: std::time::Instant,
    ) -> Result<(), SessionEnd> {
        loop {
            // Read per frame: the HELLO just handled may have negotiated
            // an extension whose messages follow in the same read.
            let accept = self.session.accepted_extensions();
            let frame = match decode_frame_with(&mut self.rbuf, accept) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err(SessionEnd::Decode(e)),
            };
            role.frame_in(&frame);
            match frame {
                Frame::Message(msg) => {
                    if matches!(msg, Message::Keepalive) {
                        // Pauses before this one no longer matter.
                        self.paused_credit = Duration::ZERO;
                        // Once per keepalive interval: what a burst left
                        // drained goes back (before the echo is queued).
                        self.out.release_if_drained();
                        role.release_if_idle();
                    }
                    self.session
                        .handle_message(msg, now)
                        .map_err(SessionEnd::Protocol)?;
                    self.collect(role, now);
                }
                Frame::Unknown { msg_type, len } => {
                    info!(msg_type, len, "skipped a frame of unknown message type");
                }
            }
        }
    }

    /// Moves the session's frames to the control lane and its events to
    /// the role. `read_at`: when the input that caused them was read.
    fn collect<R: LinkRole>(&mut self, role: &mut R, read_at: std::time::Instant) {
        role.state(self.session.state());
        while let Some(msg) = self.session.poll_transmit() {
            // An echo is most of what a session ever sends: no allocation.
            let frame = if matches!(msg, Message::Keepalive) {
                Bytes::from_static(&KEEPALIVE_FRAME)
            } else {
                let mut buf = BytesMut::with_capacity(16);
                encode_message(&msg, &mut buf);
                buf.freeze()
            };
            self.out.push_control(frame);
            role.message_out(&msg, self.out.control_pushed(), read_at);
        }
        while let Some(event) = self.session.poll_event() {
            if let Event::Negotiated(_) = event {
                // Only metalbondd peers offer extensions (PROTOCOL.md
                // section 8), and they read whole streams: pacing protects
                // Go reference peers, which never negotiate (ADR 0006).
                self.pacer.peer_reads_streams();
            }
            role.event(event, &mut self.out);
        }
    }

    /// How many bytes of route data may be written now, or how to wait
    /// before looking again.
    fn pace(&mut self, fd: RawFd) -> (usize, Option<PaceWait>) {
        let paced = self.pace_decision(fd);
        if !matches!(paced.1, Some(PaceWait::Yield)) {
            // Not re-checking quickly: the place goes to another session.
            self.spin_slot = None;
        }
        paced
    }

    /// Whether this session may re-check quickly (taking a place if it
    /// holds none).
    fn holds_spin_slot(&mut self) -> bool {
        if self.spin_slot.is_none() {
            self.spin_slot = SpinSlot::take();
        }
        self.spin_slot.is_some()
    }

    /// [`Link::pace`], holding a [`SpinSlot`] if it yields.
    fn pace_decision(&mut self, fd: RawFd) -> (usize, Option<PaceWait>) {
        if !self.out.has_data() {
            return (0, None);
        }
        if self.pacer.is_disabled() {
            return (usize::MAX, None);
        }
        let written = self.out.data_written() + self.out.control_written();
        let queued = (self.out.data_pushed() - self.out.data_written()) as usize;
        if let Some(allowed) = self.pacer.allowance(written, queued) {
            return (allowed, None);
        }
        let probe = pacing::unacked_bytes(fd).and_then(|unacked| {
            if self.pacer.must_wait(unacked) {
                return Ok(None);
            }
            Ok(Some(pacing::SocketProbe {
                unacked,
                peer: pacing::peer_info(fd)?,
            }))
        });
        // Whether an acknowledgement is on its way (rather than the peer's
        // application having left data unread).
        let (decision, ack_pending) = match probe {
            Ok(Some(probe)) => {
                let decision = self
                    .pacer
                    .decide_at(probe, Instant::now().into_std(), written);
                tracing::trace!(unacked = probe.unacked, window = ?probe.peer.window, ?decision, queued = self.out.len(), "pacing");
                (decision, probe.unacked > 0)
            }
            Ok(None) => (Decision::Wait(pacing::RECHECK), true),
            Err(e) => {
                debug!(error = %e, "cannot read socket state; writing unpaced");
                return (usize::MAX, None);
            }
        };
        match decision {
            Decision::Send(n) => {
                self.pace_spins = 0;
                (n, None)
            }
            // A fast reader's ACK comes within microseconds, and the kernel
            // wakes nobody for an ACK: look again after yielding to other
            // tasks a few times before falling back to the timer. Not for
            // data the peer has not read yet (only its window holds us
            // back): it reads when it gets the CPU, and spinning would take
            // that CPU from it.
            Decision::Wait(_)
                if ack_pending && self.pace_spins < PACE_SPINS && self.holds_spin_slot() =>
            {
                self.pace_spins += 1;
                (0, Some(PaceWait::Yield))
            }
            Decision::Wait(d) => (0, Some(PaceWait::Until(Instant::now() + d))),
        }
    }
}

/// Runs `op`, a read or write of up to `asked` bytes on `stream`; when it
/// comes back short (the socket had less to read, or took less), also
/// forgets the readiness for `interest`, as tokio's own `poll_read` and
/// `poll_write` do. `try_read_buf` and `try_write_vectored` forget it only
/// on `EAGAIN`: after a KEEPALIVE the next turn found the socket still
/// "readable", read nothing and only then waited, a wasted turn and
/// syscall per echo. The readiness is captured before `op` runs, so an
/// event that arrives after that is kept (tokio clears only what it saw).
fn io_clearing_when_short(
    stream: &TcpStream,
    interest: tokio::io::Interest,
    asked: usize,
    op: impl FnOnce() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut short = None;
    let done = stream.try_io(interest, || {
        let n = op()?;
        if 0 < n && n < asked {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
        None => done,
    }
}

/// Writes the TLS records rustls holds until the socket takes no more;
/// whether anything was written.
fn flush_tls(tls: &mut rustls::Connection, stream: &TcpStream) -> Result<bool, SessionEnd> {
    let mut wrote = false;
    while tls.wants_write() {
        match tls.write_tls(&mut SocketIo(stream)) {
            Ok(0) => return Err(SessionEnd::PeerClosed),
            Ok(_) => wrote = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(SessionEnd::Io(e)),
        }
    }
    Ok(wrote)
}

/// The socket as blocking-style I/O for rustls, without waiting: a
/// would-block is an error rustls passes back to us.
struct SocketIo<'a>(&'a TcpStream);

impl Read for SocketIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for SocketIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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

/// Sleeps until `deadline`; never wakes without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_slots_are_limited_and_given_back() {
        static HOLDERS: AtomicUsize = AtomicUsize::new(0);
        let mut held: Vec<SpinSlot> = (0..3)
            .map_while(|_| SpinSlot::take_from(&HOLDERS, 3))
            .collect();
        assert_eq!(held.len(), 3);
        assert!(SpinSlot::take_from(&HOLDERS, 3).is_none(), "all taken");
        held.pop();
        assert_eq!(HOLDERS.load(Relaxed), 2, "a dropped slot is given back");
        held.push(SpinSlot::take_from(&HOLDERS, 3).expect("free again"));
        drop(held);
        assert_eq!(HOLDERS.load(Relaxed), 0);
    }
    use std::task::Poll;
    use tokio::io::{AsyncWriteExt, Interest};
    use tokio::net::TcpListener;

    /// A connected pair on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap());
        let (near, far) = tokio::join!(near, listener.accept());
        (near.unwrap(), far.unwrap().0)
    }

    /// Whether the socket is ready for `interest` without waiting.
    async fn ready_now(stream: &TcpStream, interest: Interest) -> bool {
        poll_fn(|cx| {
            let ready = if interest.is_readable() {
                stream.poll_read_ready(cx)
            } else {
                stream.poll_write_ready(cx)
            };
            Poll::Ready(ready.is_ready())
        })
        .await
    }

    #[tokio::test]
    async fn a_short_read_forgets_readiness_and_new_data_brings_it_back() {
        let (reader, mut peer) = pair().await;
        peer.write_all(&KEEPALIVE_FRAME).await.unwrap();
        reader.readable().await.unwrap();
        let mut buf = BytesMut::with_capacity(1024);
        let spare = buf.capacity();
        let read = || reader.try_read_buf(&mut buf);
        let n = io_clearing_when_short(&reader, Interest::READABLE, spare, read).unwrap();
        assert_eq!(n, KEEPALIVE_FRAME.len());
        assert!(
            !ready_now(&reader, Interest::READABLE).await,
            "a drained socket still looked readable"
        );
        peer.write_all(&KEEPALIVE_FRAME).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), reader.readable())
            .await
            .expect("new data did not make the socket readable again")
            .unwrap();
    }

    #[tokio::test]
    async fn a_short_write_forgets_readiness() {
        let (writer, _peer) = pair().await;
        // More than the send buffer and the unread peer's receive buffer hold.
        let big = vec![0u8; 64 << 20];
        let slices = [io::IoSlice::new(&big)];
        writer.writable().await.unwrap();
        let write = || writer.try_write_vectored(&slices);
        let n = io_clearing_when_short(&writer, Interest::WRITABLE, big.len(), write).unwrap();
        assert!(0 < n && n < big.len(), "wrote {n}");
        assert!(
            !ready_now(&writer, Interest::WRITABLE).await,
            "a full socket still looked writable"
        );
    }
}
