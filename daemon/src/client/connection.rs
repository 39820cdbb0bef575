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
//! The session runs on the shared driver ([`crate::link::Link`]), which
//! reassembles frames across reads and writes only whole frames, batched
//! into vectored writes; this module adds the client's part (`ClientLink`).
//!
//! Every task counts into the client's [`AgentStats`]: session ups, UPDATE
//! frames and bytes in both directions (relaxed atomic adds), and, once per
//! ended attempt, its reason label ([`AgentStats::session_downs`]; the
//! protocol errors among them are [`AgentStats::protocol_errors`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::stats::{AgentStats, ServerCounters};
use super::{ServerAddr, ServerId};
use crate::link::outbound::Outbound;
use crate::link::{Link, LinkRole, LinkSettings, SessionEnd};
use crate::session::{self, Event, Role, Session};
use crate::wire::{encode_update, Action, Extensions, Frame, Message, Route, Update, Vni};

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
#[derive(Clone, Debug, PartialEq)]
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
    /// Offer the extensions this build supports (PROTOCOL.md section 8) in
    /// every HELLO. Off (`--no-sync`, `client.sync = false`), the HELLO
    /// carries no extension field at all: byte for byte a reference
    /// client's, for a peer that misbehaves with the extension.
    pub sync: bool,
    /// `[client.tls]`: for servers given as `tls://HOST:PORT` (ADR 0026);
    /// a reload replaces its configuration in place.
    pub tls: Option<crate::tls::ClientTls>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            keepalive_secs: 0,
            backoff: BackoffConfig::default(),
            stable_after: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            sync: true,
            tls: None,
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
        /// The session negotiated SYNC (PROTOCOL.md section 8): a
        /// [`ClientEvent::Synced`] will follow the dump of every VNI.
        sync: bool,
    },
    /// `server` completed the dump of `vni` (extension SYNC): everything
    /// it holds for `vni` has been reported as [`ClientEvent::Update`]s
    /// before this event.
    Synced {
        /// The server.
        server: ServerId,
        /// The VNI.
        vni: Vni,
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientCommand {
    /// Subscribe to a VNI (on every current and future session).
    Subscribe(Vni),
    /// Unsubscribe from a VNI.
    Unsubscribe(Vni),
    /// Announce a route.
    Announce(Route),
    /// Withdraw an announced route.
    Withdraw(Route),
    /// Announce ([`Action::Add`]) and withdraw ([`Action::Remove`]) many
    /// routes, in order: one queue slot and one write for a whole API call
    /// (shared by every connection).
    Batch(Arc<[(Action, Route)]>),
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
            ClientCommand::Batch(list) => {
                let mut changed = false;
                for (action, r) in list.iter() {
                    changed |= self.apply_route(*action, r);
                }
                changed
            }
        }
    }

    /// Announces (`Add`) or withdraws `r`; false if that changed nothing.
    fn apply_route(&mut self, action: Action, r: &Route) -> bool {
        match action {
            Action::Add => self.announcements.insert(*r),
            Action::Remove => self.announcements.remove(r),
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
            self.config.clone(),
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
            let _ = s.commands.send(cmd.clone()).await;
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

/// How one attempt ended.
enum Outcome {
    /// Shutdown requested or nobody listens to events any more: stop.
    Stop,
    /// The attempt or session ended; reconnect. `established_for` is how
    /// long the session was established, if it got that far.
    Ended {
        end: SessionEnd,
        established_for: Option<Duration>,
    },
}

/// The connection task of one server: attempts sessions until shutdown.
/// It stops (without a `Down` event) when `shutdown` becomes true or its
/// sender is dropped, when the command channel closes, or when the receiver
/// of `events` is dropped; the open session, if any, is simply closed.
/// Every attempt that ends otherwise is counted in `stats` (by label) before
/// its `Down` event is sent. The
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
            config: config.clone(),
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
        let reason = end.describe(Role::Client);
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

fn ended(end: SessionEnd, established_at: Option<Instant>) -> Outcome {
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
            Err(e) => return ended(SessionEnd::Resolve(e), None),
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
        let (stream, tls) = if addr.tls() {
            let handshake = tokio::select! {
                r = tls_handshake(self.config.tls.as_ref(), addr, stream) => r,
                _ = self.shutdown.changed() => return Outcome::Stop,
            };
            match handshake {
                Ok((stream, conn)) => (stream, Some(conn)),
                Err(end) => return ended(end, None),
            }
        } else {
            (stream, None)
        };
        self.run_session(stream, tls, peer).await
    }

    async fn run_session(
        &mut self,
        stream: TcpStream,
        tls: Option<rustls::Connection>,
        peer: SocketAddr,
    ) -> Outcome {
        let mut session = Session::new(
            session::Config {
                role: Role::Client,
                keepalive_secs: self.config.keepalive_secs,
                extensions: if self.config.sync {
                    Extensions::SUPPORTED
                } else {
                    Extensions::NONE
                },
            },
            Instant::now().into_std(),
        );
        // Queued in the session; they go out right when it is established.
        for &vni in &self.desired.subscriptions {
            session.subscribe(vni);
        }
        // Unpaced: a client announces its own few routes, far from the
        // bursts that make a Go server reset. No write timeout: the
        // keepalives tell a dead server.
        let settings = LinkSettings {
            write_timeout: None,
            pace_limit: 0,
        };
        let link = Link::new(stream, session, settings);
        let mut link = match tls {
            Some(tls) => link.with_tls(tls),
            None => link,
        };
        let mut role = ClientLink {
            server: self.server,
            peer,
            resolved: &self.resolved,
            desired: &mut *self.desired,
            commands: &mut *self.commands,
            events: self.events,
            stats: self.stats,
            counters: self.counters,
            established_at: None,
            sync: false,
            pending: Vec::new(),
            shutdown: &mut *self.shutdown,
        };
        match link.run(&mut role).await {
            SessionEnd::Shutdown => Outcome::Stop,
            end => ended(end, role.established_at),
        }
    }
}

/// The client's part of a session on the shared driver: events to the
/// agent, commands from it.
struct ClientLink<'a> {
    server: ServerId,
    /// The address connected to.
    peer: SocketAddr,
    /// What the server's address resolved to for this attempt.
    resolved: &'a [SocketAddr],
    desired: &'a mut Desired,
    commands: &'a mut mpsc::Receiver<ClientCommand>,
    events: &'a mpsc::Sender<ClientEvent>,
    stats: &'a AgentStats,
    counters: &'a ServerCounters,
    established_at: Option<Instant>,
    /// The session negotiated SYNC.
    sync: bool,
    /// Events of the frames just handled, in order, sent (waiting while the
    /// channel is full) before the next turn.
    pending: Vec<ClientEvent>,
    /// Changes when the client shuts down.
    shutdown: &'a mut watch::Receiver<bool>,
}

impl LinkRole for ClientLink<'_> {
    fn bytes_in(&mut self, n: usize) {
        self.stats.bytes_in.fetch_add(n as u64, Relaxed);
    }

    fn frame_in(&mut self, frame: &Frame) {
        if matches!(frame, Frame::Message(Message::Update(_))) {
            self.stats.updates_in.fetch_add(1, Relaxed);
            self.counters.updates_in.fetch_add(1, Relaxed);
        }
    }

    fn event(&mut self, event: Event, out: &mut Outbound) {
        match event {
            Event::Established { keepalive } => {
                // `sync`: the server is a metalbondd peer (SYNC negotiated,
                // before this event), which is not paced.
                info!(server = %self.server, keepalive_secs = keepalive.as_secs(), sync = self.sync, "session with route server established");
                self.established_at = Some(Instant::now());
                self.stats.session_ups.fetch_add(1, Relaxed);
                // The SUBSCRIBEs were queued by the session (control lane,
                // so they go first); then every announcement, in one batch.
                let mut buf = BytesMut::new();
                for r in &self.desired.announcements {
                    encode_update(Action::Add, r, &mut buf);
                }
                out.push_data(buf.freeze());
                self.count_updates_out(self.desired.announcements.len() as u64);
                self.pending.push(ClientEvent::Up {
                    server: self.server,
                    peer: self.peer,
                    resolved: self.resolved.to_vec(),
                    sync: self.sync,
                });
            }
            Event::Negotiated(extensions) => {
                debug!(server = %self.server, extensions = extensions.0, "extensions negotiated");
                self.sync = extensions.contains(Extensions::SYNC);
            }
            Event::Sync(vni) => self.pending.push(ClientEvent::Synced {
                server: self.server,
                vni,
            }),
            Event::Update(update) => self.pending.push(ClientEvent::Update {
                server: self.server,
                update,
            }),
            // A server never subscribes to a client; ignore it.
            Event::Subscribe(vni) | Event::Unsubscribe(vni) => {
                debug!(server = %self.server, %vni, "ignoring (UN)SUBSCRIBE from a route server");
            }
        }
    }

    fn written(&mut self, n: usize, _out: &Outbound, _now: std::time::Instant) {
        self.stats.bytes_out.fetch_add(n as u64, Relaxed);
    }

    async fn wait(&mut self, session: &mut Session, out: &mut Outbound) -> Result<(), SessionEnd> {
        let command = tokio::select! {
            command = self.commands.recv() => command,
            _ = self.shutdown.changed() => return Err(SessionEnd::Shutdown),
        };
        match command {
            Some(cmd) => {
                self.on_command(cmd, session, out);
                Ok(())
            }
            // The client handle is gone.
            None => Err(SessionEnd::Shutdown),
        }
    }

    /// Sends the events in order; nobody listening any more stops the task.
    async fn deliver(&mut self) -> Result<(), SessionEnd> {
        for event in self.pending.drain(..) {
            if self.events.send(event).await.is_err() {
                return Err(SessionEnd::Shutdown);
            }
        }
        Ok(())
    }
}

impl ClientLink<'_> {
    /// Counts `n` UPDATEs queued for the server.
    fn count_updates_out(&self, n: u64) {
        self.stats.updates_out.fetch_add(n, Relaxed);
        self.counters.updates_out.fetch_add(n, Relaxed);
    }

    /// Applies a command to the desired state and, when established, to
    /// the live session (the driver then queues the session's
    /// SUBSCRIBE/UNSUBSCRIBE frames).
    fn on_command(&mut self, cmd: ClientCommand, session: &mut Session, out: &mut Outbound) {
        if let ClientCommand::Batch(list) = &cmd {
            // What changed goes out in one buffer (before establishment
            // nothing: the whole desired set goes out then).
            let mut buf = BytesMut::new();
            let mut n = 0;
            for (action, r) in list.iter() {
                if self.desired.apply_route(*action, r) && session.is_established() {
                    encode_update(*action, r, &mut buf);
                    n += 1;
                }
            }
            if n > 0 {
                out.push_data(buf.freeze());
                self.count_updates_out(n);
            }
            return;
        }
        if !self.desired.apply(cmd.clone()) {
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
            ClientCommand::Announce(_) | ClientCommand::Withdraw(_) | ClientCommand::Batch(_) => {}
        }
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

/// The TLS handshake with a `tls://` server, verified for its host name
/// against `[client.tls] ca`; the socket and the connection apart, for the
/// link driver.
async fn tls_handshake(
    tls: Option<&crate::tls::ClientTls>,
    addr: &ServerAddr,
    stream: TcpStream,
) -> Result<(TcpStream, rustls::Connection), SessionEnd> {
    let Some(tls) = tls else {
        return Err(SessionEnd::TlsHandshake(
            "the server is tls:// but [client.tls] is not configured".into(),
        ));
    };
    let name = rustls::pki_types::ServerName::try_from(addr.host())
        .map_err(|e| SessionEnd::TlsHandshake(format!("bad server name: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(tls.config());
    match tokio::time::timeout(
        crate::tls::HANDSHAKE_TIMEOUT,
        connector.connect(name, stream),
    )
    .await
    {
        Ok(Ok(s)) => {
            let (stream, conn) = s.into_inner();
            Ok((stream, rustls::Connection::Client(conn)))
        }
        Ok(Err(e)) => Err(SessionEnd::TlsHandshake(e.to_string())),
        Err(_) => Err(SessionEnd::TlsHandshake(format!(
            "timed out after {:?}",
            crate::tls::HANDSHAKE_TIMEOUT
        ))),
    }
}

/// Connects to the first of `addrs` that accepts, in order, each attempt
/// bounded by `timeout`. With one address, its error as it is; with
/// several, every address's error in one.
async fn connect_any(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), SessionEnd> {
    let mut errors = Vec::new();
    let mut last = None;
    for &addr in addrs {
        let (end, why) = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(e)) => {
                let why = e.to_string();
                (SessionEnd::ConnectFailed(e), why)
            }
            Err(_) => (
                SessionEnd::ConnectTimeout(timeout),
                format!("timed out after {timeout:?}"),
            ),
        };
        debug!(%addr, error = %why, "cannot connect");
        errors.push(format!("{addr}: {why}"));
        last = Some(end);
    }
    let Some(end) = last else {
        return Err(SessionEnd::Resolve("no address to connect to".into()));
    };
    if errors.len() == 1 {
        return Err(end);
    }
    let kind = match &end {
        SessionEnd::ConnectFailed(e) => e.kind(),
        _ => std::io::ErrorKind::TimedOut,
    };
    Err(SessionEnd::ConnectFailed(std::io::Error::new(
        kind,
        format!("every address failed: {}", errors.join("; ")),
    )))
}

fn push_update(out: &mut Outbound, action: Action, route: &Route) {
    let mut buf = BytesMut::with_capacity(64);
    encode_update(action, route, &mut buf);
    out.push_data(buf.freeze());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
        let Err(SessionEnd::ConnectFailed(e)) = connect_any(&[refused, refused], t).await else {
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
            extensions: 0,
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
