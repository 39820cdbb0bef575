//! Client connections: one tokio task per configured route server.
//!
//! Each task keeps one session to its server up for as long as the client
//! runs (PROTOCOL.md sections 3 and 5):
//!
//! 1. resolve the server's name, if it has one (again on every attempt,
//!    so a service that moved is followed), and connect to the first
//!    resolved address that accepts, trying them in order (TCP_NODELAY on,
//!    each bounded by the connect timeout);
//! 2. run a [`Session`] in the client role: HELLO first, keepalives at the
//!    negotiated cadence, timeouts;
//! 3. once ESTABLISHED: send every desired SUBSCRIBE, then every
//!    announcement (UPDATE ADD), and report [`ClientEvent::Up`];
//! 4. report every received UPDATE as [`ClientEvent::Update`];
//! 5. on any end (EOF, socket error, protocol error, timeout) report
//!    [`ClientEvent::Down`], wait a jittered exponential backoff and start
//!    again at 1 with a fresh session, which re-sends everything.
//!
//! Commands ([`ClientCommand`]) change the desired state (subscriptions and
//! announcements) that every future session starts from, and apply at once
//! to the live session when it is established. The task ends when the
//! shutdown signal fires, or when the [`Client`] or the receiver of its
//! events is dropped.
//!
//! Writes are not paced: a client announces its own few routes, far from
//! the 64 KiB bursts that make a Go server reset (PROTOCOL.md section 6).
//!
//! Reads reassemble frames across TCP reads ([`decode_frame`] on a
//! `BytesMut`); writes go through the server's [`Outbound`] queue, so only
//! whole frames are written, batched into vectored writes.
//!
//! Every task counts into the client's [`AgentStats`]: session ups, UPDATE
//! frames and bytes in both directions (relaxed atomic adds), and, once per
//! ended attempt, its reason label ([`AgentStats::session_downs`]) and, for
//! a malformed frame or a protocol violation, a protocol error
//! ([`AgentStats::protocol_errors`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::stats::{AgentStats, ServerCounters};
use super::{ServerAddr, ServerId};
use crate::server::outbound::Outbound;
use crate::session::{self, CloseReason, Event, Role, Session};
use crate::wire::{
    decode_frame, encode_message, encode_update, Action, DecodeError, Frame, Message, Route,
    Update, Vni,
};

/// Read buffer size (frames are reassembled across reads).
const READ_BUFFER: usize = 16 * 1024;
/// Depth of each connection task's command channel.
const COMMAND_QUEUE: usize = 1024;

/// Reconnect backoff settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffConfig {
    /// Delay before the first reconnect (before jitter).
    pub initial: Duration,
    /// Largest delay, jitter included.
    pub max: Duration,
    /// Growth factor per failed attempt.
    pub factor: u32,
    /// Relative jitter: each delay is multiplied by a uniform factor in
    /// `[1 - jitter, 1 + jitter]`, so that clients that lost the same server
    /// at the same moment do not all come back at the same instant.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            factor: 2,
            jitter: 0.2,
        }
    }
}

/// The delay before reconnect attempt number `attempt` (0 for the first
/// reconnect after a session ended), given `unit`, a uniform random number in
/// `[0, 1]`: `initial * factor^attempt`, multiplied by the jitter factor
/// `1 + jitter * (2 * unit - 1)`, and capped at `max`. Pure, so that it is
/// unit-tested; the caller draws `unit`.
pub fn backoff_delay(cfg: &BackoffConfig, attempt: u32, unit: f64) -> Duration {
    let growth = cfg.factor.max(1).checked_pow(attempt).unwrap_or(u32::MAX);
    let base = cfg
        .initial
        .checked_mul(growth)
        .unwrap_or(cfg.max)
        .min(cfg.max);
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let jitter = if cfg.jitter.is_finite() {
        cfg.jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let scaled = base.as_secs_f64() * (1.0 + jitter * (2.0 * unit - 1.0));
    Duration::try_from_secs_f64(scaled)
        .unwrap_or(cfg.max)
        .min(cfg.max)
}

/// Settings of the client connections.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClientConfig {
    /// Keepalive interval the client proposes, in seconds (0 means 5).
    pub keepalive_secs: u32,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// A session that stayed established this long resets the backoff: the
    /// next reconnect waits `backoff.initial` again.
    pub stable_after: Duration,
    /// Bound on one TCP connect.
    pub connect_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            keepalive_secs: 0,
            backoff: BackoffConfig::default(),
            stable_after: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What a connection task reports to the client logic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The session with `server` is established; subscriptions and
    /// announcements have been queued for it.
    Up {
        /// The server.
        server: ServerId,
        /// The address connected to.
        peer: SocketAddr,
        /// What the server's address resolved to for this attempt.
        resolved: Vec<SocketAddr>,
    },
    /// An attempt or a session with `server` ended. Comes after every
    /// [`ClientEvent::Up`], and also after a failed connect or handshake
    /// (without an `Up` before it). Everything received from `server` is
    /// void from now on: the next session gets a fresh dump.
    Down {
        /// The server.
        server: ServerId,
        /// Why, for logs and the API.
        reason: String,
        /// Why, as a short stable label (the key counted in
        /// [`AgentStats::session_downs`]).
        label: &'static str,
        /// What the server's address resolved to for the attempt (empty
        /// if its name did not resolve).
        resolved: Vec<SocketAddr>,
    },
    /// `server` sent an UPDATE (a dump entry or a live update).
    Update {
        /// The server.
        server: ServerId,
        /// The update as received.
        update: Update,
    },
}

/// A change of the client's desired state, sent to every connection task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCommand {
    /// Subscribe to a VNI (on every current and future session).
    Subscribe(Vni),
    /// Unsubscribe from a VNI.
    Unsubscribe(Vni),
    /// Announce a route.
    Announce(Route),
    /// Withdraw an announced route.
    Withdraw(Route),
}

/// The client's desired state: what every new session subscribes to and
/// announces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// VNIs to subscribe to, in the order they were added.
    pub subscriptions: Vec<Vni>,
    /// Routes to announce, in a stable order.
    pub announcements: BTreeSet<Route>,
}

impl Desired {
    /// Applies `cmd`; returns false if it changed nothing (a duplicate
    /// subscribe or announce, or removing something absent).
    pub fn apply(&mut self, cmd: ClientCommand) -> bool {
        match cmd {
            ClientCommand::Subscribe(vni) => {
                if self.subscriptions.contains(&vni) {
                    return false;
                }
                self.subscriptions.push(vni);
                true
            }
            ClientCommand::Unsubscribe(vni) => {
                let before = self.subscriptions.len();
                self.subscriptions.retain(|&v| v != vni);
                self.subscriptions.len() != before
            }
            ClientCommand::Announce(r) => self.announcements.insert(r),
            ClientCommand::Withdraw(r) => self.announcements.remove(&r),
        }
    }
}

/// The client connections: one task per server, sharing one event channel
/// and one shutdown signal. Servers can be added and removed at runtime
/// ([`Client::add_server`], [`Client::remove_server`]); a [`ServerId`] is
/// never reused. The desired state is the caller's (the agent's planner):
/// each task starts from a copy and follows the commands.
pub struct Client {
    servers: BTreeMap<ServerId, ServerHandle>,
    shutdown: watch::Sender<bool>,
    config: ClientConfig,
    /// Weak, so that the event channel still closes when every task ended.
    events: mpsc::WeakSender<ClientEvent>,
    next_id: usize,
    /// What every connection task counts into.
    stats: Arc<AgentStats>,
}

struct ServerHandle {
    commands: mpsc::Sender<ClientCommand>,
    task: JoinHandle<()>,
    counters: Arc<ServerCounters>,
}

impl Client {
    /// Starts one connection task per address in `servers`; the server at
    /// index `i` is [`ServerId`]`(i)`. Every session starts from `desired`.
    /// Must be called within a tokio runtime. The caller must keep reading
    /// `events`: a full channel stalls the connections (and a stalled
    /// session eventually times out). The tasks count into a fresh
    /// [`AgentStats`] ([`Client::stats`]).
    pub fn start(
        servers: &[ServerAddr],
        config: ClientConfig,
        desired: Desired,
        events: mpsc::Sender<ClientEvent>,
    ) -> Client {
        Self::start_with_stats(
            servers,
            config,
            desired,
            events,
            Arc::new(AgentStats::default()),
        )
    }

    /// Like [`Client::start`], with the connection tasks counting into
    /// `stats` (the agent's).
    pub fn start_with_stats(
        servers: &[ServerAddr],
        config: ClientConfig,
        desired: Desired,
        events: mpsc::Sender<ClientEvent>,
        stats: Arc<AgentStats>,
    ) -> Client {
        let (shutdown, _) = watch::channel(false);
        let mut client = Client {
            servers: BTreeMap::new(),
            shutdown,
            config,
            events: events.downgrade(),
            next_id: 0,
            stats,
        };
        for addr in servers {
            client.spawn(addr.clone(), &events, desired.clone());
        }
        client
    }

    fn spawn(
        &mut self,
        addr: ServerAddr,
        events: &mpsc::Sender<ClientEvent>,
        desired: Desired,
    ) -> ServerId {
        let id = ServerId(self.next_id);
        self.next_id += 1;
        let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let counters = Arc::new(ServerCounters::default());
        let task = tokio::spawn(run(
            id,
            addr,
            self.config,
            desired,
            commands_rx,
            events.clone(),
            self.shutdown.subscribe(),
            (self.stats.clone(), counters.clone()),
        ));
        self.servers.insert(
            id,
            ServerHandle {
                commands,
                task,
                counters,
            },
        );
        id
    }

    /// Starts a connection task for one more server, from `desired` (the
    /// current desired state). `None` if the event channel is closed
    /// (nobody listens).
    pub fn add_server(&mut self, addr: ServerAddr, desired: &Desired) -> Option<ServerId> {
        let events = self.events.upgrade()?;
        Some(self.spawn(addr, &events, desired.clone()))
    }

    /// Stops the connection task of `server` (its session is closed; no
    /// `Down` event is sent). Events it queued before may still arrive: the
    /// caller ignores events of servers it removed. False if unknown.
    pub fn remove_server(&mut self, server: ServerId) -> bool {
        match self.servers.remove(&server) {
            Some(handle) => {
                handle.task.abort();
                true
            }
            None => false,
        }
    }

    /// The counters of `server` (`None` if unknown).
    pub fn server_counters(&self, server: ServerId) -> Option<&ServerCounters> {
        self.servers.get(&server).map(|h| &*h.counters)
    }

    /// Number of servers.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// The counters the connection tasks update (session ups and downs,
    /// protocol errors, UPDATE frames and bytes). The gauges the agent keeps
    /// (servers, received and installed routes) stay 0 without an agent.
    pub fn stats(&self) -> &Arc<AgentStats> {
        &self.stats
    }

    /// Sends `cmd` to every connection task (waits only if a task's command
    /// queue is full). Servers added later start from the desired state
    /// given to [`Client::add_server`].
    pub async fn command(&self, cmd: ClientCommand) {
        for s in self.servers.values() {
            // A task that ended (shutdown) has nothing left to update.
            let _ = s.commands.send(cmd).await;
        }
    }

    /// Subscribes to `vni` on every server.
    pub async fn subscribe(&self, vni: Vni) {
        self.command(ClientCommand::Subscribe(vni)).await;
    }

    /// Unsubscribes from `vni` on every server.
    pub async fn unsubscribe(&self, vni: Vni) {
        self.command(ClientCommand::Unsubscribe(vni)).await;
    }

    /// Announces `route` to every server.
    pub async fn announce(&self, route: Route) {
        self.command(ClientCommand::Announce(route)).await;
    }

    /// Withdraws `route` from every server.
    pub async fn withdraw(&self, route: Route) {
        self.command(ClientCommand::Withdraw(route)).await;
    }

    /// Closes every session and waits for the tasks to end. No `Down`
    /// events are sent for a shutdown. (Dropping the `Client` also stops the
    /// tasks, without waiting for them.)
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for s in self.servers.into_values() {
            let _ = s.task.await;
        }
    }
}

/// Why an attempt or a session ended: the log text (and the `Down`
/// event's and the API's `reason`) is its [`fmt::Display`], the metric label
/// [`End::label`].
#[derive(Debug)]
enum End {
    /// The server's name did not resolve.
    Resolve(String),
    /// The TCP connect failed (to every resolved address).
    ConnectFailed(std::io::Error),
    /// The TCP connect did not complete within the connect timeout.
    ConnectTimeout(Duration),
    /// The session state machine closed the session (protocol violation or
    /// timeout).
    Protocol(CloseReason),
    /// The server sent a malformed frame.
    Decode(DecodeError),
    /// The server closed the connection (at a frame boundary).
    PeerClosed,
    /// The server closed the connection after this many bytes of a frame.
    TruncatedFrame(usize),
    /// Reading or writing the socket failed.
    Io(std::io::Error),
}

impl End {
    /// Short stable label for metrics (the server side's labels where the
    /// same thing happens there).
    fn label(&self) -> &'static str {
        match self {
            End::Resolve(_) => "resolve_failed",
            End::ConnectFailed(_) => "connect_failed",
            End::ConnectTimeout(_) => "connect_timeout",
            End::Protocol(r) => r.label(),
            End::Decode(e) => e.label(),
            End::PeerClosed => "peer_closed",
            End::TruncatedFrame(_) => "truncated_frame",
            End::Io(_) => "io_error",
        }
    }

    /// A malformed frame or a protocol violation of the server (not a
    /// timeout, not a connection failure).
    fn is_protocol_error(&self) -> bool {
        match self {
            End::Decode(_) => true,
            End::Protocol(r) => matches!(
                r,
                CloseReason::ZeroKeepaliveInterval
                    | CloseReason::DuplicateHello
                    | CloseReason::KeepaliveBeforeHello
            ),
            _ => false,
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Resolve(e) => write!(f, "cannot resolve: {e}"),
            End::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            End::ConnectTimeout(t) => write!(f, "connect timed out after {t:?}"),
            End::Protocol(r) => write!(f, "{r}"),
            End::Decode(e) => write!(f, "malformed frame: {e}"),
            End::PeerClosed => f.write_str("server closed the connection"),
            End::TruncatedFrame(n) => write!(
                f,
                "server closed the connection in the middle of a frame ({n} bytes)"
            ),
            End::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

/// How one attempt ended.
enum Outcome {
    /// Shutdown requested or nobody listens to events any more: stop.
    Stop,
    /// The attempt or session ended; reconnect. `established_for` is how
    /// long the session was established, if it got that far.
    Ended {
        end: End,
        established_for: Option<Duration>,
    },
}

/// The connection task of one server: attempts sessions until shutdown.
/// It stops (without a `Down` event) when `shutdown` becomes true or its
/// sender is dropped, when the command channel closes, or when the receiver
/// of `events` is dropped; the open session, if any, is simply closed.
/// Every attempt that ends otherwise is counted in `stats` (by label, and as
/// a protocol error when it is one) before its `Down` event is sent. The
/// server's own UPDATE counters go to `counters` too.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    server: ServerId,
    addr: ServerAddr,
    config: ClientConfig,
    mut desired: Desired,
    mut commands: mpsc::Receiver<ClientCommand>,
    events: mpsc::Sender<ClientEvent>,
    mut shutdown: watch::Receiver<bool>,
    (stats, counters): (Arc<AgentStats>, Arc<ServerCounters>),
) {
    let mut attempt: u32 = 0;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut conn = Conn {
            server,
            config,
            desired: &mut desired,
            commands: &mut commands,
            events: &events,
            shutdown: &mut shutdown,
            stats: &stats,
            resolved: Vec::new(),
            counters: &counters,
        };
        let outcome = conn.attempt(&addr).await;
        let resolved = std::mem::take(&mut conn.resolved);
        let (end, established_for) = match outcome {
            Outcome::Stop => return,
            Outcome::Ended {
                end,
                established_for,
            } => (end, established_for),
        };
        let label = end.label();
        stats.record_session_down(label);
        if end.is_protocol_error() {
            stats.record_protocol_error(label);
        }
        let reason = end.to_string();
        if established_for.is_some_and(|d| d >= config.stable_after) {
            attempt = 0;
        }
        let delay = backoff_delay(&config.backoff, attempt, rand::random::<f64>());
        attempt = attempt.saturating_add(1);
        if established_for.is_some() {
            warn!(%server, %addr, %reason, label, retry_in = ?delay, "session with route server ended");
        } else {
            debug!(%server, %addr, %reason, label, retry_in = ?delay, "cannot reach route server");
        }
        if events
            .send(ClientEvent::Down {
                server,
                reason,
                label,
                resolved,
            })
            .await
            .is_err()
        {
            return;
        }
        // RETRY: wait, still taking commands so the desired state is current
        // when the next session starts.
        let wake = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => break,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => {
                        desired.apply(cmd);
                    }
                    // The client handle is gone.
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// One connection attempt and its session.
struct Conn<'a> {
    server: ServerId,
    config: ClientConfig,
    desired: &'a mut Desired,
    commands: &'a mut mpsc::Receiver<ClientCommand>,
    events: &'a mpsc::Sender<ClientEvent>,
    shutdown: &'a mut watch::Receiver<bool>,
    stats: &'a AgentStats,
    /// What the server's address resolved to for this attempt.
    resolved: Vec<SocketAddr>,
    counters: &'a ServerCounters,
}

fn ended(end: End, established_at: Option<Instant>) -> Outcome {
    Outcome::Ended {
        end,
        established_for: established_at.map(|t| t.elapsed()),
    }
}

impl Conn<'_> {
    async fn attempt(&mut self, addr: &ServerAddr) -> Outcome {
        let timeout = self.config.connect_timeout;
        let resolved = tokio::select! {
            r = resolve(addr, timeout) => r,
            _ = self.shutdown.changed() => return Outcome::Stop,
        };
        self.resolved = match resolved {
            Ok(addrs) => addrs,
            Err(e) => return ended(End::Resolve(e), None),
        };
        if addr.name().is_some() {
            debug!(server = %self.server, %addr, resolved = ?self.resolved, "resolved");
        }
        let (stream, peer) = tokio::select! {
            r = connect_any(&self.resolved, timeout) => match r {
                Ok(connected) => connected,
                Err(end) => return ended(end, None),
            },
            _ = self.shutdown.changed() => return Outcome::Stop,
        };
        if let Err(e) = stream.set_nodelay(true) {
            // Only latency suffers; keep going.
            debug!(error = %e, "cannot set TCP_NODELAY");
        }
        debug!(server = %self.server, %addr, %peer, "connected");
        self.run_session(stream, peer).await
    }

    async fn run_session(&mut self, mut stream: TcpStream, peer: SocketAddr) -> Outcome {
        let mut session = Session::new(
            session::Config {
                role: Role::Client,
                keepalive_secs: self.config.keepalive_secs,
            },
            Instant::now().into_std(),
        );
        // Queued in the session; they go out right when it is established.
        for &vni in &self.desired.subscriptions {
            session.subscribe(vni);
        }
        let mut out = Outbound::default();
        let mut established_at: Option<Instant> = None;
        let mut rbuf = BytesMut::with_capacity(READ_BUFFER);
        let (mut rd, mut wr) = stream.split();
        // HELLO.
        if let Some(o) = self
            .collect(&mut session, &mut out, &mut established_at, peer)
            .await
        {
            return o;
        }
        loop {
            let deadline = session.poll_timeout().map(Instant::from_std);
            let can_write = !out.is_empty();
            tokio::select! {
                read = rd.read_buf(&mut rbuf) => match read {
                    Ok(0) if rbuf.is_empty() => return ended(End::PeerClosed, established_at),
                    Ok(0) => return ended(End::TruncatedFrame(rbuf.len()), established_at),
                    Ok(n) => {
                        self.stats.bytes_in.fetch_add(n as u64, Relaxed);
                        let now = Instant::now().into_std();
                        loop {
                            match decode_frame(&mut rbuf) {
                                Ok(Some(Frame::Message(msg))) => {
                                    if matches!(msg, Message::Update(_)) {
                                        self.stats.updates_in.fetch_add(1, Relaxed);
                                        self.counters.updates_in.fetch_add(1, Relaxed);
                                    }
                                    if let Err(reason) = session.handle_message(msg, now) {
                                        return ended(End::Protocol(reason), established_at);
                                    }
                                    if let Some(o) = self.collect(&mut session, &mut out, &mut established_at, peer).await {
                                        return o;
                                    }
                                }
                                Ok(Some(Frame::Unknown { msg_type, len })) => {
                                    info!(msg_type, len, "skipped a frame of unknown message type");
                                }
                                Ok(None) => break,
                                Err(e) => return ended(End::Decode(e), established_at),
                            }
                        }
                        if rbuf.capacity() - rbuf.len() < 1024 {
                            rbuf.reserve(READ_BUFFER);
                        }
                    }
                    Err(e) => return ended(End::Io(e), established_at),
                },
                written = async {
                    let slices = out.slices(usize::MAX);
                    wr.write_vectored(&slices).await
                }, if can_write => match written {
                    Ok(0) => return ended(End::PeerClosed, established_at),
                    Ok(n) => {
                        self.stats.bytes_out.fetch_add(n as u64, Relaxed);
                        out.advance(n);
                    }
                    Err(e) => return ended(End::Io(e), established_at),
                },
                _ = sleep_until_opt(deadline) => {
                    if let Err(reason) = session.handle_timeout(Instant::now().into_std()) {
                        return ended(End::Protocol(reason), established_at);
                    }
                    if let Some(o) = self.collect(&mut session, &mut out, &mut established_at, peer).await {
                        return o;
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd, &mut session, &mut out),
                    // The client handle is gone.
                    None => return Outcome::Stop,
                },
                _ = self.shutdown.changed() => return Outcome::Stop,
            }
        }
    }

    /// Counts `n` UPDATEs queued for the server.
    fn count_updates_out(&self, n: u64) {
        self.stats.updates_out.fetch_add(n, Relaxed);
        self.counters.updates_out.fetch_add(n, Relaxed);
    }

    /// Applies a command to the desired state and, when established, to
    /// the live session.
    fn on_command(&mut self, cmd: ClientCommand, session: &mut Session, out: &mut Outbound) {
        if !self.desired.apply(cmd) {
            return;
        }
        match cmd {
            // The session sends these now if established, or at
            // establishment; it never sends one SUBSCRIBE twice.
            ClientCommand::Subscribe(vni) => {
                session.subscribe(vni);
            }
            ClientCommand::Unsubscribe(vni) => {
                session.unsubscribe(vni);
            }
            // Before establishment nothing is sent: the whole desired set
            // goes out at establishment.
            ClientCommand::Announce(r) if session.is_established() => {
                push_update(out, Action::Add, &r);
                self.count_updates_out(1);
            }
            ClientCommand::Withdraw(r) if session.is_established() => {
                push_update(out, Action::Remove, &r);
                self.count_updates_out(1);
            }
            ClientCommand::Announce(_) | ClientCommand::Withdraw(_) => {}
        }
        // The session's SUBSCRIBE/UNSUBSCRIBE frames.
        while let Some(msg) = session.poll_transmit() {
            let mut buf = BytesMut::with_capacity(16);
            encode_message(&msg, &mut buf);
            out.push_control(buf.freeze());
        }
    }

    /// Moves the session's frames to `out` and acts on its events. Returns
    /// `Some` when the task must stop (nobody listens to events any more).
    async fn collect(
        &mut self,
        session: &mut Session,
        out: &mut Outbound,
        established_at: &mut Option<Instant>,
        peer: SocketAddr,
    ) -> Option<Outcome> {
        while let Some(msg) = session.poll_transmit() {
            let mut buf = BytesMut::with_capacity(16);
            encode_message(&msg, &mut buf);
            out.push_control(buf.freeze());
        }
        while let Some(event) = session.poll_event() {
            match event {
                Event::Established { keepalive } => {
                    info!(server = %self.server, keepalive_secs = keepalive.as_secs(), "session with route server established");
                    *established_at = Some(Instant::now());
                    self.stats.session_ups.fetch_add(1, Relaxed);
                    // The SUBSCRIBEs were queued above (control lane, so
                    // they go first); then every announcement, in one batch.
                    let mut buf = BytesMut::new();
                    for r in &self.desired.announcements {
                        encode_update(Action::Add, r, &mut buf);
                    }
                    out.push_data(buf.freeze());
                    self.count_updates_out(self.desired.announcements.len() as u64);
                    if self
                        .events
                        .send(ClientEvent::Up {
                            server: self.server,
                            peer,
                            resolved: self.resolved.clone(),
                        })
                        .await
                        .is_err()
                    {
                        return Some(Outcome::Stop);
                    }
                }
                Event::Update(update) => {
                    if self
                        .events
                        .send(ClientEvent::Update {
                            server: self.server,
                            update,
                        })
                        .await
                        .is_err()
                    {
                        return Some(Outcome::Stop);
                    }
                }
                // A server never subscribes to a client; ignore it.
                Event::Subscribe(vni) | Event::Unsubscribe(vni) => {
                    debug!(server = %self.server, %vni, "ignoring (UN)SUBSCRIBE from a route server");
                }
            }
        }
        None
    }
}

/// The addresses of `server`: its IP address, or what its name resolves to
/// now (bounded by `timeout`), without duplicates, in the resolver's order.
pub async fn resolve(server: &ServerAddr, timeout: Duration) -> Result<Vec<SocketAddr>, String> {
    if let Some(addr) = server.socket_addr() {
        return Ok(vec![addr]);
    }
    let name = server.name().unwrap_or_default();
    let lookup = tokio::net::lookup_host((name, server.port()));
    let found = match tokio::time::timeout(timeout, lookup).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return Err(format!("{name}: {e}")),
        Err(_) => return Err(format!("{name}: no answer within {timeout:?}")),
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in found {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err(format!("{name}: no address"));
    }
    Ok(out)
}

/// Connects to the first of `addrs` that accepts, in order, each attempt
/// bounded by `timeout`. With one address, its error as it is; with
/// several, every address's error in one.
async fn connect_any(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), End> {
    let mut errors = Vec::new();
    let mut last = None;
    for &addr in addrs {
        let (end, why) = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(e)) => {
                let why = e.to_string();
                (End::ConnectFailed(e), why)
            }
            Err(_) => (
                End::ConnectTimeout(timeout),
                format!("timed out after {timeout:?}"),
            ),
        };
        debug!(%addr, error = %why, "cannot connect");
        errors.push(format!("{addr}: {why}"));
        last = Some(end);
    }
    let Some(end) = last else {
        return Err(End::Resolve("no address to connect to".into()));
    };
    if errors.len() == 1 {
        return Err(end);
    }
    let kind = match &end {
        End::ConnectFailed(e) => e.kind(),
        _ => std::io::ErrorKind::TimedOut,
    };
    Err(End::ConnectFailed(std::io::Error::new(
        kind,
        format!("every address failed: {}", errors.join("; ")),
    )))
}

fn push_update(out: &mut Outbound, action: Action, route: &Route) {
    let mut buf = BytesMut::with_capacity(64);
    encode_update(action, route, &mut buf);
    out.push_data(buf.freeze());
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn cfg() -> BackoffConfig {
        BackoffConfig::default()
    }

    #[test]
    fn backoff_without_jitter_doubles_from_initial_to_cap() {
        let c = cfg();
        let got: Vec<u64> = (0..8)
            .map(|a| backoff_delay(&c, a, 0.5).as_millis() as u64)
            .collect();
        assert_eq!(
            got,
            vec![1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn backoff_jitter_is_plus_minus_twenty_percent() {
        let c = cfg();
        assert_eq!(backoff_delay(&c, 0, 0.0), Duration::from_millis(800));
        assert_eq!(backoff_delay(&c, 0, 1.0), Duration::from_millis(1200));
        assert_eq!(backoff_delay(&c, 2, 0.0), Duration::from_millis(3200));
        assert_eq!(backoff_delay(&c, 2, 1.0), Duration::from_millis(4800));
        for i in 0..=100 {
            let d = backoff_delay(&c, 1, f64::from(i) / 100.0);
            assert!(d >= Duration::from_millis(1600) && d <= Duration::from_millis(2400));
        }
    }

    #[test]
    fn backoff_never_exceeds_cap_even_with_jitter() {
        let c = cfg();
        for a in [4, 5, 6, 31, 32, 100, u32::MAX] {
            for u in [0.0, 0.5, 1.0] {
                assert!(backoff_delay(&c, a, u) <= c.max, "attempt {a} unit {u}");
            }
        }
        // At the cap the jitter only shortens.
        assert_eq!(backoff_delay(&c, 10, 0.0), Duration::from_secs(24));
    }

    #[test]
    fn backoff_is_robust_to_odd_inputs() {
        let c = cfg();
        // Out-of-range or NaN units are clamped / centred.
        assert_eq!(backoff_delay(&c, 0, -3.0), Duration::from_millis(800));
        assert_eq!(backoff_delay(&c, 0, 7.0), Duration::from_millis(1200));
        assert_eq!(backoff_delay(&c, 0, f64::NAN), Duration::from_secs(1));
        // Factor 0 or 1 means constant delay; no jitter is exact.
        let flat = BackoffConfig {
            factor: 0,
            jitter: 0.0,
            ..c
        };
        assert_eq!(backoff_delay(&flat, 5, 0.9), Duration::from_secs(1));
        // A cap below the initial delay wins.
        let tight = BackoffConfig {
            max: Duration::from_millis(100),
            ..c
        };
        assert_eq!(backoff_delay(&tight, 0, 1.0), Duration::from_millis(100));
    }

    #[test]
    fn end_labels_reasons_and_protocol_errors() {
        use crate::wire::DecodeError;
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let w = Duration::from_millis(12500);
        // (end, label, log/API reason, counted as a protocol error)
        let cases: Vec<(End, &str, String, bool)> = vec![
            (
                End::ConnectFailed(io()),
                "connect_failed",
                format!("connect failed: {}", io()),
                false,
            ),
            (
                End::ConnectTimeout(Duration::from_secs(2)),
                "connect_timeout",
                "connect timed out after 2s".into(),
                false,
            ),
            (
                End::PeerClosed,
                "peer_closed",
                "server closed the connection".into(),
                false,
            ),
            (
                End::TruncatedFrame(7),
                "truncated_frame",
                "server closed the connection in the middle of a frame (7 bytes)".into(),
                false,
            ),
            (
                End::Io(io()),
                "io_error",
                format!("socket error: {}", io()),
                false,
            ),
            (
                End::Decode(DecodeError::BadVersion(2)),
                "bad_version",
                format!("malformed frame: {}", DecodeError::BadVersion(2)),
                true,
            ),
            (
                End::Decode(DecodeError::MissingNextHop),
                "missing_next_hop",
                format!("malformed frame: {}", DecodeError::MissingNextHop),
                true,
            ),
            (
                End::Protocol(CloseReason::ZeroKeepaliveInterval),
                "zero_keepalive_interval",
                CloseReason::ZeroKeepaliveInterval.to_string(),
                true,
            ),
            (
                End::Protocol(CloseReason::DuplicateHello),
                "duplicate_hello",
                CloseReason::DuplicateHello.to_string(),
                true,
            ),
            (
                End::Protocol(CloseReason::KeepaliveBeforeHello),
                "keepalive_before_hello",
                CloseReason::KeepaliveBeforeHello.to_string(),
                true,
            ),
            (
                End::Protocol(CloseReason::HandshakeNoHello { waited: w }),
                "handshake_timeout_hello",
                CloseReason::HandshakeNoHello { waited: w }.to_string(),
                false,
            ),
            (
                End::Protocol(CloseReason::HandshakeNoKeepalive { waited: w }),
                "handshake_timeout_keepalive",
                CloseReason::HandshakeNoKeepalive { waited: w }.to_string(),
                false,
            ),
            (
                End::Protocol(CloseReason::KeepaliveTimeout { waited: w }),
                "keepalive_timeout",
                CloseReason::KeepaliveTimeout { waited: w }.to_string(),
                false,
            ),
        ];
        for (end, label, reason, protocol_error) in cases {
            assert_eq!(end.label(), label, "{end:?}");
            assert_eq!(end.to_string(), reason, "{end:?}");
            assert_eq!(end.is_protocol_error(), protocol_error, "{end:?}");
        }
    }

    /// Settings for the socket tests: quick retries, short connect timeout.
    fn test_config() -> ClientConfig {
        ClientConfig {
            backoff: BackoffConfig {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(200),
                ..BackoffConfig::default()
            },
            connect_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        }
    }

    /// The next `Down` of the client (bounded).
    async fn next_down(rx: &mut mpsc::Receiver<ClientEvent>) -> (String, &'static str) {
        let wait = Duration::from_secs(10);
        loop {
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(ClientEvent::Down { reason, label, .. })) => return (reason, label),
                Ok(Some(_)) => {}
                other => panic!("no Down within {wait:?}: {other:?}"),
            }
        }
    }

    fn frame(msg: &Message) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode_message(msg, &mut b);
        b.to_vec()
    }

    /// Reads from `s` until at least `want` more bytes arrived or EOF.
    async fn read_some(s: &mut TcpStream, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < want {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("client wrote nothing")
                .unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[tokio::test]
    async fn a_refused_connect_counts_as_a_down_not_a_protocol_error() {
        // A port nothing listens on.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let client = Client::start(&[addr.into()], test_config(), Desired::default(), tx);
        let (reason, label) = next_down(&mut rx).await;
        assert_eq!(label, "connect_failed");
        assert!(reason.starts_with("connect failed: "), "{reason}");
        let stats = client.stats().clone();
        assert!(stats.session_downs()["connect_failed"] >= 1);
        assert!(stats.protocol_errors().is_empty());
        assert_eq!(stats.session_ups.load(Relaxed), 0);
        client.shutdown().await;
    }

    #[tokio::test]
    async fn every_resolved_address_is_tried_in_order() {
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let t = Duration::from_secs(2);
        let (_, peer) = connect_any(&[refused, open], t).await.unwrap();
        assert_eq!(peer, open);
        let Err(End::ConnectFailed(e)) = connect_any(&[refused, refused], t).await else {
            panic!("two refused addresses connected");
        };
        let text = e.to_string();
        assert!(text.starts_with("every address failed: "), "{text}");
        assert_eq!(text.matches(&refused.to_string()).count(), 2, "{text}");
    }

    #[tokio::test]
    async fn names_are_resolved_and_bad_names_are_a_down() {
        let t = Duration::from_secs(2);
        let ip: ServerAddr = "[::1]:4711".parse().unwrap();
        assert_eq!(
            resolve(&ip, t).await.unwrap(),
            vec!["[::1]:4711".parse().unwrap()]
        );
        let local: ServerAddr = "localhost:4711".parse().unwrap();
        let addrs = resolve(&local, t).await.unwrap();
        assert!(
            !addrs.is_empty()
                && addrs
                    .iter()
                    .all(|a| a.ip().is_loopback() && a.port() == 4711)
        );

        let bad: ServerAddr = "no-such-host.invalid:4711".parse().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let client = Client::start(&[bad], test_config(), Desired::default(), tx);
        let (reason, label) = next_down(&mut rx).await;
        assert_eq!(label, "resolve_failed");
        assert!(
            reason.starts_with("cannot resolve: no-such-host.invalid"),
            "{reason}"
        );
        client.shutdown().await;
    }

    #[tokio::test]
    async fn a_malformed_frame_counts_as_a_protocol_error_and_a_down() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            // Version 2: rejected as soon as the first byte is read.
            s.write_all(&[2, 0, 0, 1]).await.unwrap();
            // Keep the socket open until the client closes it.
            let _ = read_some(&mut s, usize::MAX).await;
        });
        let (tx, mut rx) = mpsc::channel(16);
        let client = Client::start(&[addr.into()], test_config(), Desired::default(), tx);
        let (reason, label) = next_down(&mut rx).await;
        assert_eq!(label, "bad_version");
        assert!(reason.starts_with("malformed frame: "), "{reason}");
        let stats = client.stats().clone();
        client.shutdown().await;
        assert_eq!(
            stats.protocol_errors(),
            BTreeMap::from([("bad_version", 1)])
        );
        assert_eq!(stats.session_downs(), BTreeMap::from([("bad_version", 1)]));
        assert_eq!(stats.session_ups.load(Relaxed), 0);
        assert!(stats.bytes_in.load(Relaxed) >= 4);
        server.await.unwrap();
    }

    /// A fake route server's side of the handshake on `s`: waits for the
    /// client's HELLO, answers HELLO and KEEPALIVE, then sends `routes` as
    /// UPDATE ADDs.
    async fn handshake(s: &mut TcpStream, routes: &[Route]) {
        let hello = read_some(s, 1).await;
        assert!(!hello.is_empty());
        let mut out = frame(&Message::Hello(crate::wire::Hello {
            keepalive_secs: 5,
            is_server: true,
        }));
        out.extend(frame(&Message::Keepalive));
        let mut upd = BytesMut::new();
        for r in routes {
            encode_update(Action::Add, r, &mut upd);
        }
        out.extend_from_slice(&upd);
        s.write_all(&out).await.unwrap();
    }

    /// Waits (bounded) for the client's `Up`.
    async fn next_up(rx: &mut mpsc::Receiver<ClientEvent>) {
        let wait = Duration::from_secs(10);
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(ClientEvent::Up { .. })) => {}
            other => panic!("no Up within {wait:?}: {other:?}"),
        }
    }

    #[tokio::test]
    async fn removing_a_server_or_shutting_down_is_not_a_down() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                handshake(&mut s, &[]).await;
                // Until the client goes away.
                let _ = read_some(&mut s, usize::MAX).await;
            }
        });
        let (tx, mut rx) = mpsc::channel(16);
        let mut client = Client::start(&[addr.into()], test_config(), Desired::default(), tx);
        let stats = client.stats().clone();
        next_up(&mut rx).await;
        assert!(client.remove_server(ServerId(0)));
        let id = client.add_server(addr.into(), &Desired::default()).unwrap();
        assert_eq!(id, ServerId(1));
        next_up(&mut rx).await;
        client.shutdown().await;
        server.await.unwrap();
        assert_eq!(stats.session_ups.load(Relaxed), 2);
        assert!(
            stats.session_downs().is_empty(),
            "{:?}",
            stats.session_downs()
        );
        // Nothing but the two Ups was reported.
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_session_counts_ups_updates_bytes_and_its_end() {
        let r1: Route = "100#10.0.1.0/24@2001:db8::1".parse().unwrap();
        let mine: Route = "100#10.9.0.0/24@2001:db8::99".parse().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close_tx, close_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            handshake(&mut s, &[r1]).await;
            // Wait until the test saw everything, then close (peer_closed):
            // half-close, and read on until the client closes, so that
            // unread bytes do not turn the close into a reset.
            let _ = close_rx.await;
            s.shutdown().await.unwrap();
            let _ = read_some(&mut s, usize::MAX).await;
        });
        let (tx, mut rx) = mpsc::channel(16);
        let desired = Desired {
            subscriptions: vec![Vni(100)],
            announcements: BTreeSet::from([mine]),
        };
        let client = Client::start(&[addr.into()], test_config(), desired, tx);
        let stats = client.stats().clone();
        let wait = Duration::from_secs(10);
        loop {
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(ClientEvent::Update { update, .. })) => {
                    assert_eq!(update.route, r1);
                    break;
                }
                Ok(Some(ClientEvent::Up { .. })) => {}
                other => panic!("no UPDATE within {wait:?}: {other:?}"),
            }
        }
        assert_eq!(stats.session_ups.load(Relaxed), 1);
        assert_eq!(stats.updates_in.load(Relaxed), 1);
        // The one announcement, queued at establishment.
        assert_eq!(stats.updates_out.load(Relaxed), 1);
        assert!(stats.bytes_in.load(Relaxed) > 0);
        assert!(stats.session_downs().is_empty());
        close_tx.send(()).unwrap();
        let (reason, label) = next_down(&mut rx).await;
        assert_eq!(
            (reason.as_str(), label),
            ("server closed the connection", "peer_closed")
        );
        assert_eq!(stats.session_downs(), BTreeMap::from([("peer_closed", 1)]));
        assert!(stats.protocol_errors().is_empty());
        // HELLO at least was written.
        assert!(stats.bytes_out.load(Relaxed) > 0);
        client.shutdown().await;
        server.await.unwrap();
    }

    #[test]
    fn desired_state_ignores_duplicates_and_absent_removals() {
        let mut d = Desired::default();
        assert!(d.apply(ClientCommand::Subscribe(Vni(1))));
        assert!(!d.apply(ClientCommand::Subscribe(Vni(1))));
        assert!(d.apply(ClientCommand::Subscribe(Vni(2))));
        assert_eq!(d.subscriptions, vec![Vni(1), Vni(2)]);
        assert!(d.apply(ClientCommand::Unsubscribe(Vni(1))));
        assert!(!d.apply(ClientCommand::Unsubscribe(Vni(1))));
        let r: Route = "100#10.0.1.0/24@2001:db8::1".parse().unwrap();
        assert!(d.apply(ClientCommand::Announce(r)));
        assert!(!d.apply(ClientCommand::Announce(r)));
        assert!(d.apply(ClientCommand::Withdraw(r)));
        assert!(!d.apply(ClientCommand::Withdraw(r)));
    }
}
