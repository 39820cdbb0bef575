//! The hypervisor agent: the shell around the [`Planner`] (PROTOCOL.md
//! section 5).
//!
//! One task owns the planner, the [`Client`] connections, the
//! [`Dataplane`] (the kernel [`Installer`] when VNIs are mapped to routing
//! tables) and the operator's state store. It receives the connections'
//! [`ClientEvent`]s, the API's [`AgentRequest`]s and the planner's timer,
//! passes each to the planner with `now`, runs the [`Planned`] operations
//! on the dataplane in order (feeding each outcome back), and arms the
//! planner's next deadline. What to do — hold, stale, reconcile, retries,
//! loop prevention — is the planner's; this module only moves events and
//! operations, keeps the servers' status for the API, and counts.
//!
//! Operator changes ([`ClientChange`], the API's ClientService) are made
//! here in one place: checked by the planner, stored durably
//! ([`super::operator`], when the agent has a store), then applied (to the
//! planner and the connections). The API sends one request and maps the
//! typed [`Refused`] to a status; there is nothing to undo, because nothing
//! is stored before the checks (including opening the kernel installer for
//! a first mapping) passed, and no lock, because the task is the only owner.
//! The subscriptions are the planner's ([`Planner::desired`]); a new
//! connection task starts from a copy.
//!
//! At a clean exit ([`Agent::shutdown`]: SIGINT, SIGTERM, API Shutdown)
//! the routes stay in the kernel, so that a restart does not flap the data
//! plane, unless `cleanup` is set: then, as the Go reference's `--cleanup`
//! ("Cleanup routes upon exit"), every protocol-254 route of the mapped
//! tables is deleted after the sessions are closed.
//!
//! Counters ([`AgentStats`], shared with the connection tasks): every
//! dataplane operation is counted by kind and outcome where it is run; the
//! gauges of configured and established servers and of received routes are
//! set from the planner after each event and each API request; the
//! installed routes per table follow each successful replace and delete of
//! a route change (`InstalledRoutes`), so routes kept from an earlier run
//! count once they are confirmed and stop counting when the reconciliation
//! (after the hold or the stale time) deletes them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::dataplane::Dataplane;
use super::executor::Executor;
use super::feed::{Feed, FeedFilter, WatchStart};
use super::operator::{self, Override, StoredClientState};
use super::planner::{
    check_table, DeltaKind, OwnerDelta, Planned, Planner, PlannerConfig, CONFIG_OWNER,
};
pub use super::planner::{
    ClientChange, ReceivedEntry, Refused, DEFAULT_HOLD_TIME, DEFAULT_STALE_TIME, QUIET_AFTER_DUMP,
};
use super::reload::ClientDiff;
pub use super::stats::{AgentStats, NetlinkOpCounters};
use super::{Client, ClientCommand, ClientConfig, ClientEvent, Desired, ServerAddr, ServerId};
use crate::kernel::Installer;
use crate::store::Store;
use crate::wire::{Action, Extensions, Route, Vni};

/// Depth of the event channel from the connection tasks to the agent.
const EVENT_QUEUE: usize = 1024;

/// Most UPDATEs the agent handles in one wake-up (see
/// `Agent::handle_ready_updates`): a burst's operations go to the dataplane
/// together, while the other inputs (API, timers, finished operations) still
/// get their turn often.
const UPDATE_BATCH: usize = 256;

/// Settings of the hypervisor role.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientSettings {
    /// Route servers to connect to (each is a [`ServerId`] by its index),
    /// by IP address or by name (resolved on every connection attempt).
    pub servers: Vec<ServerAddr>,
    /// VNIs to subscribe to.
    pub subscriptions: Vec<Vni>,
    /// Routes this node announces (also the loop-prevention set).
    pub announcements: Vec<Route>,
    /// VNI -> routing tables the VNI's received routes are installed in.
    /// Table 0 is invalid. Empty: nothing touches the kernel.
    pub install_routes: BTreeMap<Vni, BTreeSet<u32>>,
    /// Tunnel device of the installed routes (needed with `install_routes`).
    pub tun: Option<String>,
    /// Ignore received routes with an IPv6 destination.
    pub ipv4_only: bool,
    /// Connection settings (keepalive, backoff).
    pub connection: ClientConfig,
    /// Longest time routes found in the mapped tables at start are kept
    /// before the reconciliation (see the module documentation).
    pub hold_time: Duration,
    /// How long installed routes stay after the last server was lost.
    pub stale_time: Duration,
    /// Delete the protocol-254 routes of the mapped tables at a clean exit
    /// (the Go reference's `--cleanup`).
    pub cleanup: bool,
    /// Delete the protocol-254 routes of the mapped tables at start instead
    /// of keeping and reconciling them.
    pub flush_at_start: bool,
}

/// A running agent.
pub struct Agent {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    control: mpsc::Sender<AgentRequest>,
    /// The agent's counters (and those of its connections), for the
    /// metrics; see [`AgentStats`].
    pub stats: Arc<AgentStats>,
    /// The settings given at start that stored API changes replaced (each
    /// was logged as a WARN).
    pub overrides: Vec<Override>,
}

/// One configured route server, as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    /// Its address, as configured (an IP address or a name).
    pub addr: ServerAddr,
    /// What the address resolved to at the last attempt (empty before the
    /// first, or when the name did not resolve).
    pub resolved: Vec<SocketAddr>,
    /// The address of the established session.
    pub connected: Option<SocketAddr>,
    /// The session is established.
    pub up: bool,
    /// Why the last attempt or session ended while the server is down
    /// (cleared when a session is established: an old failure next to `up`
    /// would only mislead).
    pub last_error: String,
    /// When it entered its current state (or was added).
    pub since: SystemTime,
    /// UPDATEs received from it (all its sessions).
    pub updates_in: u64,
    /// UPDATEs sent to it (all its sessions).
    pub updates_out: u64,
    /// The extensions the established session negotiated (none while
    /// down).
    pub extensions: Extensions,
}

/// What the API asks of the agent.
#[derive(Debug)]
pub enum AgentRequest {
    /// The configured servers.
    Servers(oneshot::Sender<Vec<ServerStatus>>),
    /// The subscribed VNIs.
    Subscriptions(oneshot::Sender<Vec<Vni>>),
    /// The VNI -> tables mappings.
    Mappings(oneshot::Sender<BTreeMap<Vni, BTreeSet<u32>>>),
    /// The received routes, of one VNI if given.
    Received(Option<Vni>, oneshot::Sender<Vec<ReceivedEntry>>),
    /// An operator change: checked, stored, applied; the reply means
    /// "durable and applied" (with what an announcement change did to its
    /// owner's routes), or says why nothing was.
    Change(ClientChange, oneshot::Sender<Result<Applied, Refused>>),
    /// The announced routes with their owners, sorted by route.
    Announcements(oneshot::Sender<Vec<(Route, Vec<String>)>>),
    /// Starts a watch of the received routes: the snapshot and the events
    /// after it (ADR 0024).
    WatchReceived(FeedFilter, oneshot::Sender<WatchStart>),
    /// A configuration reload's difference (ADR 0023): the keys the API
    /// changed are left out, the rest applied through the paths of the
    /// API's changes but not stored. The reply lists what was applied
    /// ([`ClientDiff::applied`]), or says why nothing was.
    Reconfigure(ClientDiff, oneshot::Sender<Result<Vec<String>, Refused>>),
}

/// What an operator change did; the counts are those of an announcement
/// change (0 for the others).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Routes the owner started announcing.
    pub added: usize,
    /// Routes the owner stopped announcing.
    pub removed: usize,
    /// Routes of the request that changed nothing (announced already, or
    /// not announced for a withdrawal).
    pub unchanged: usize,
}

/// Sends requests to a running agent; `None` once it stopped.
#[derive(Clone, Debug)]
pub struct AgentHandle {
    control: mpsc::Sender<AgentRequest>,
}

impl AgentHandle {
    /// Sends the request made by `make` and waits for its reply.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> AgentRequest) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.control.send(make(tx)).await.ok()?;
        rx.await.ok()
    }
}

impl Agent {
    /// Validates `settings`, opens the kernel installer when VNIs are mapped
    /// and starts the connections and the agent task, with nothing stored:
    /// API changes are applied but not kept.
    pub async fn start(settings: ClientSettings) -> Result<Agent, String> {
        Self::start_with(settings, None).await
    }

    /// Like [`Agent::start`], with the operator's changes stored in `store`:
    /// those of earlier runs are merged into `settings` after their
    /// validation (stored changes win; see [`super::operator`]; with them,
    /// the agent may start with no server), and new ones are stored before
    /// they apply. An error (table 0, a mapping without tunnel device, a
    /// missing tunnel device, an unreadable store) is a startup failure, in
    /// one line.
    pub async fn start_with(
        mut settings: ClientSettings,
        store: Option<Arc<Store>>,
    ) -> Result<Agent, String> {
        if settings.servers.is_empty() {
            return Err("client: no route server given (--server ADDR)".into());
        }
        for (vni, tables) in &settings.install_routes {
            for &table in tables {
                if let Err(why) = check_table(table) {
                    return Err(format!(
                        "client: --install-routes {vni}#{table}: table {why}"
                    ));
                }
            }
        }
        let stored = match &store {
            Some(store) => {
                let reader = store.clone();
                tokio::task::spawn_blocking(move || StoredClientState::load(&reader))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?
            }
            None => StoredClientState::default(),
        };
        let overrides = stored.overrides(&settings);
        for o in &overrides {
            warn!(
                setting = %o.setting,
                replaced_by = %o.replaced_by,
                "a setting given at start is overridden by a change stored through the API (change it back through the API to return it to the configuration)"
            );
        }
        if !stored.is_empty() {
            stored.apply(&mut settings);
            info!(
                servers = settings.servers.len(),
                subscriptions = settings.subscriptions.len(),
                mapped_vnis = settings.install_routes.len(),
                "client settings merged with the changes stored through the API"
            );
        }
        let dataplane: Option<Box<dyn Dataplane>> = if settings.install_routes.is_empty() {
            None
        } else {
            let tun = settings
                .tun
                .as_deref()
                .ok_or("client: --install-routes needs the tunnel device (--tun DEV)")?;
            let installer = Installer::new(tun).await.map_err(|e| {
                format!("client: cannot install routes through tunnel device {tun:?}: {e}")
            })?;
            info!(
                tun,
                tun_index = installer.tun_index(),
                "kernel route installation ready"
            );
            Some(Box::new(Arc::new(installer)))
        };
        let mut agent = Self::start_on(settings, store, dataplane).await;
        agent.overrides = overrides;
        Ok(agent)
    }

    /// Starts the connections and the agent task on `dataplane` (`None`:
    /// routes are only received until a first mapping opens the kernel
    /// installer), with `settings` as they are (validated and merged by the
    /// caller). The routes of the mapped tables are dumped (held, or deleted
    /// with `flush_at_start`) before this returns.
    pub async fn start_on(
        settings: ClientSettings,
        store: Option<Arc<Store>>,
        dataplane: Option<Box<dyn Dataplane>>,
    ) -> Agent {
        let stats = Arc::new(AgentStats::default());
        let ids: Vec<(ServerId, ServerAddr)> = settings
            .servers
            .iter()
            .enumerate()
            .map(|(i, addr)| (ServerId(i), addr.clone()))
            .collect();
        let mut planner = Planner::new(
            PlannerConfig {
                servers: ids.clone(),
                desired: Desired {
                    subscriptions: dedup(&settings.subscriptions),
                    announcements: settings.announcements.iter().copied().collect(),
                },
                tables: settings.install_routes.clone(),
                ipv4_only: settings.ipv4_only,
                hold_time: settings.hold_time,
                stale_time: settings.stale_time,
                flush_at_start: settings.flush_at_start,
            },
            dataplane.is_some(),
        );
        let mut executor = Executor::new(dataplane, stats.clone());
        // The routes announced through the API in earlier runs, before the
        // first session: every session starts with them.
        if let Some(store) = &store {
            let reader = store.clone();
            match tokio::task::spawn_blocking(move || StoredClientState::load(&reader)).await {
                Ok(Ok(stored)) => {
                    for (owner, routes) in stored.announcements {
                        let routes: Vec<Route> = routes.into_iter().collect();
                        let change = ClientChange::Announce {
                            owner,
                            routes,
                            allow_existing: true,
                        };
                        if let Some(delta) = planner.announcement_delta(&change) {
                            let _ = planner.apply_announcements(&delta);
                        }
                    }
                }
                Ok(Err(e)) => warn!(error = %e, "cannot read the stored announcements"),
                Err(e) => warn!(error = %e, "cannot read the stored announcements"),
            }
        }
        // Before the connections start: nothing a server sends can be
        // confused with what an earlier run left.
        let start = planner.start();
        executor.submit(start);
        executor.drain(&mut planner, now).await;

        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let client = Client::start_with_stats(
            &settings.servers,
            settings.connection,
            planner.desired().clone(),
            events_tx,
            stats.clone(),
        );
        let (stop, stop_rx) = watch::channel(false);
        let (control, control_rx) = mpsc::channel(64);
        info!(
            servers = settings.servers.len(),
            subscriptions = settings.subscriptions.len(),
            announcements = planner.desired().announcements.len(),
            mapped_vnis = settings.install_routes.len(),
            ipv4_only = settings.ipv4_only,
            "hypervisor agent started"
        );
        let now = SystemTime::now();
        let task = AgentTask {
            planner,
            executor,
            client,
            links: ids.iter().map(|(id, _)| (*id, Link::new(now))).collect(),
            tun: settings.tun,
            store,
            cleanup: settings.cleanup,
            feed: Feed::default(),
        };
        task.publish_gauges();
        let task = tokio::spawn(task.run(events, control_rx, stop_rx));
        Agent {
            stop,
            task,
            control,
            stats,
            overrides: Vec::new(),
        }
    }

    /// A handle for runtime changes (the API).
    pub fn handle(&self) -> AgentHandle {
        AgentHandle {
            control: self.control.clone(),
        }
    }

    /// Closes the sessions and stops the agent task. Installed routes stay
    /// in the kernel, unless `cleanup` is set: then the protocol-254 routes
    /// of the mapped tables are deleted before this returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn dedup(vnis: &[Vni]) -> Vec<Vni> {
    let mut out = Vec::with_capacity(vnis.len());
    for v in vnis {
        if !out.contains(v) {
            out.push(*v);
        }
    }
    out
}

/// The time the planner is given (tokio's clock, so that tests with a
/// paused clock drive it).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What the API shows of a server's connection, besides what the planner
/// knows (its address, whether it is up).
#[derive(Clone, Debug)]
struct Link {
    resolved: Vec<SocketAddr>,
    connected: Option<SocketAddr>,
    last_error: String,
    since: SystemTime,
    /// The established session negotiated SYNC.
    sync: bool,
}

impl Link {
    /// A server just configured: down, never tried.
    fn new(since: SystemTime) -> Self {
        Link {
            resolved: Vec::new(),
            connected: None,
            last_error: String::new(),
            since,
            sync: false,
        }
    }
}

struct AgentTask {
    /// The decisions and the state they need.
    planner: Planner,
    executor: Executor,
    client: Client,
    /// Per configured server, what the API shows of its connection.
    links: BTreeMap<ServerId, Link>,
    /// Tunnel device, to open the installer when a first mapping is set.
    tun: Option<String>,
    /// Where operator changes are kept (`None`: not kept).
    store: Option<Arc<Store>>,
    /// Delete the routes of the mapped tables at exit.
    cleanup: bool,
    /// The received-routes feed (published after each step).
    feed: Feed,
}

impl AgentTask {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<ClientEvent>,
        mut control: mpsc::Receiver<AgentRequest>,
        mut stop: watch::Receiver<bool>,
    ) {
        self.serve(&mut events, &mut control, &mut stop).await;
        // Dropping the receiver unblocks tasks waiting to send an event.
        drop(events);
        self.client.shutdown().await;
        // What was started finishes (and is counted) before the exit.
        self.executor.drain(&mut self.planner, now).await;
        if self.cleanup {
            // What is in the tables now, not only what this run installed:
            // held routes of an earlier run go too.
            let ops = self.planner.cleanup();
            self.executor.submit(ops);
            self.executor.drain(&mut self.planner, now).await;
        }
    }

    async fn serve(
        &mut self,
        events: &mut mpsc::Receiver<ClientEvent>,
        control: &mut mpsc::Receiver<AgentRequest>,
        stop: &mut watch::Receiver<bool>,
    ) {
        loop {
            let due = self
                .planner
                .next_deadline()
                .map(tokio::time::Instant::from_std);
            // Bounded backlog: above the limit (or while a dump is due) the
            // connection events wait in their channel, whose senders then
            // stop reading their sockets.
            let read_events = self.executor.accepts_events();
            let busy = self.executor.in_flight() > 0;
            tokio::select! {
                (job, result) = self.executor.next_done(), if busy => {
                    let now = now();
                    self.executor.complete(&mut self.planner, job, result, now);
                    self.executor.complete_ready(&mut self.planner, now);
                }
                ev = events.recv(), if read_events => match ev {
                    Some(ev) => {
                        let more = matches!(ev, ClientEvent::Update { .. });
                        self.handle(ev).await;
                        if more {
                            self.handle_ready_updates(events).await;
                        }
                        self.publish_feed();
                        self.publish_gauges();
                    }
                    None => return,
                },
                Some(req) = control.recv() => {
                    self.request(req).await;
                    self.publish_feed();
                    self.publish_gauges();
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    let ops = self.planner.on_timer(now());
                    self.executor.submit(ops);
                    self.publish_feed();
                }
                r = stop.changed() => if r.is_err() || *stop.borrow() {
                    return;
                },
            }
        }
    }

    /// Handles the UPDATEs already waiting in `events` (up to
    /// [`UPDATE_BATCH`], while the backlog allows), in one wake-up of the
    /// agent task: their operations are queued together and reach the
    /// dataplane's writer as one batch, and the feed and gauges are
    /// published once. Another kind of event ends the batch (handled after
    /// the UPDATEs' feed events are published, so the feed keeps the order
    /// of events).
    async fn handle_ready_updates(&mut self, events: &mut mpsc::Receiver<ClientEvent>) {
        for _ in 1..UPDATE_BATCH {
            if !self.executor.accepts_events() {
                return;
            }
            let Ok(ev) = events.try_recv() else {
                return;
            };
            if !matches!(ev, ClientEvent::Update { .. }) {
                self.publish_feed();
                self.publish_gauges();
                self.handle(ev).await;
                return;
            }
            self.handle(ev).await;
        }
    }

    /// Publishes the feed events of the last step.
    fn publish_feed(&mut self) {
        self.feed.publish(self.planner.take_feed());
    }

    /// Sets the gauges of servers and received routes from the planner
    /// (after each event or request: a few relaxed stores).
    fn publish_gauges(&self) {
        let s = &self.executor.stats;
        let p = &self.planner;
        s.servers_configured.store(p.server_count() as u64, Relaxed);
        s.servers_up.store(p.up_count() as u64, Relaxed);
        s.received_routes.store(p.received_count() as u64, Relaxed);
    }

    fn addr(&self, server: ServerId) -> String {
        self.planner
            .server_addr(server)
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    async fn handle(&mut self, ev: ClientEvent) {
        let server = match &ev {
            ClientEvent::Up { server, .. }
            | ClientEvent::Down { server, .. }
            | ClientEvent::Update { server, .. }
            | ClientEvent::Synced { server, .. } => *server,
        };
        let Some(link) = self.links.get_mut(&server) else {
            // Queued by a server removed since.
            return;
        };
        let ops = match ev {
            ClientEvent::Up {
                peer,
                resolved,
                sync,
                ..
            } => {
                link.since = SystemTime::now();
                link.connected = Some(peer);
                link.resolved = resolved;
                link.last_error.clear();
                link.sync = sync;
                info!(%server, addr = %self.addr(server), %peer, sync, "route server up");
                self.planner.server_up_with(server, sync, now());
                return;
            }
            ClientEvent::Down {
                reason,
                label,
                resolved,
                ..
            } => {
                let was_up = link.connected.is_some();
                if was_up || link.last_error.is_empty() {
                    link.since = SystemTime::now();
                }
                link.connected = None;
                link.sync = false;
                link.resolved = resolved;
                link.last_error.clone_from(&reason);
                if was_up {
                    info!(%server, addr = %self.addr(server), %reason, label, "route server down");
                } else {
                    debug!(%server, addr = %self.addr(server), %reason, label, "route server unreachable");
                }
                self.planner.server_down(server, now())
            }
            ClientEvent::Update { update, .. } => self.planner.update(server, update, now()),
            ClientEvent::Synced { vni, .. } => self.planner.synced(server, vni, now()),
        };
        self.executor.submit(ops);
    }

    /// Answers one request of the API.
    async fn request(&mut self, req: AgentRequest) {
        match req {
            AgentRequest::Servers(reply) => {
                let servers = self
                    .planner
                    .servers()
                    .map(|(id, addr, up)| self.status(id, addr, up))
                    .collect();
                let _ = reply.send(servers);
            }
            AgentRequest::Subscriptions(reply) => {
                let _ = reply.send(self.planner.desired().subscriptions.clone());
            }
            AgentRequest::Mappings(reply) => {
                let _ = reply.send(self.planner.tables().clone());
            }
            AgentRequest::Received(vni, reply) => {
                let _ = reply.send(self.planner.received(vni));
            }
            AgentRequest::Change(change, reply) => {
                let _ = reply.send(self.change(change).await);
            }
            AgentRequest::Announcements(reply) => {
                let _ = reply.send(self.planner.announcements());
            }
            AgentRequest::WatchReceived(filter, reply) => {
                // Every event of earlier steps is published (after each
                // step), so the snapshot and the receiver fit exactly.
                let (routes, synced) = self.planner.feed_snapshot(|v| filter.accepts(v));
                let _ = reply.send(WatchStart {
                    routes,
                    synced,
                    events: self.feed.subscribe(),
                });
            }
            AgentRequest::Reconfigure(diff, reply) => {
                let _ = reply.send(self.reconfigure(diff).await);
            }
        }
    }

    /// A configuration reload's difference: the keys the API changed are
    /// left out; the checks that can fail (table 0, opening the kernel
    /// installer for a first mapping, reading the store) come before any
    /// change, so a refusal changes nothing. Then, through the API's
    /// paths: removed servers (their sessions close, their routes go),
    /// subscriptions, the configuration's announcements as one exact set
    /// (one batch of the wire difference to every connection), mappings,
    /// and last the added servers, whose sessions start from the new
    /// subscriptions and announcements. Servers that did not change keep
    /// their sessions. Nothing is stored: these are not API changes.
    async fn reconfigure(&mut self, diff: ClientDiff) -> Result<Vec<String>, Refused> {
        let diff = match self.store.clone() {
            Some(store) => {
                let stored = tokio::task::spawn_blocking(move || StoredClientState::load(&store))
                    .await
                    .map_err(|e| Refused::Internal(format!("state store task failed: {e}")))?
                    .map_err(|e| Refused::Unavailable(format!("state store: {e}")))?;
                diff.without_api_keys(&stored)
            }
            None => diff,
        };
        for (vni, tables) in &diff.mappings {
            for &table in tables {
                check_table(table).map_err(|why| {
                    Refused::Invalid(format!("client.install_routes {vni}#{table}: table {why}"))
                })?;
            }
        }
        if diff.maps_any() && !self.planner.has_dataplane() {
            self.open_dataplane().await?;
        }
        for key in &diff.kept_by_api {
            warn!(key, "configuration change not applied: the API changed this key (change it through the API)");
        }
        for addr in &diff.remove_servers {
            let Some(id) = self.planner.server_id(addr) else {
                continue;
            };
            self.client.remove_server(id);
            self.links.remove(&id);
            info!(server = %id, %addr, "route server removed (reload)");
            let ops = self.planner.remove_server(id, now());
            self.run_all(ops).await;
        }
        for &vni in &diff.unsubscribe {
            if !self.planner.desired().subscriptions.contains(&vni) {
                continue;
            }
            self.client.unsubscribe(vni).await;
            info!(%vni, "unsubscribed (reload)");
            let ops = self.planner.unsubscribe(vni);
            self.run_all(ops).await;
        }
        for &vni in &diff.subscribe {
            if self.planner.desired().subscriptions.contains(&vni) {
                continue;
            }
            self.planner.subscribe(vni);
            self.client.subscribe(vni).await;
            info!(%vni, "subscribed (reload)");
        }
        if let Some(routes) = &diff.announcements {
            let delta = self
                .planner
                .announced_delta(CONFIG_OWNER, routes, DeltaKind::Exact);
            self.apply_delta(&delta, "reload").await;
        }
        for (vni, tables) in &diff.mappings {
            let ops = self.planner.set_tables(*vni, tables.clone());
            self.run_all(ops).await;
        }
        for addr in &diff.add_servers {
            if self.planner.server_id(addr).is_some() {
                continue;
            }
            let id = self
                .client
                .add_server(addr.clone(), self.planner.desired())
                .ok_or_else(|| Refused::Precondition("the client role is stopping".into()))?;
            self.links.insert(id, Link::new(SystemTime::now()));
            self.planner.add_server(id, addr.clone());
            info!(server = %id, %addr, "route server added (reload)");
        }
        Ok(diff.applied())
    }

    fn status(&self, id: ServerId, addr: &ServerAddr, up: bool) -> ServerStatus {
        let link = self
            .links
            .get(&id)
            .cloned()
            .unwrap_or_else(|| Link::new(SystemTime::now()));
        let counters = self.client.server_counters(id);
        ServerStatus {
            addr: addr.clone(),
            resolved: link.resolved,
            connected: link.connected,
            up,
            last_error: link.last_error,
            since: link.since,
            updates_in: counters.map_or(0, |c| c.updates_in.load(Relaxed)),
            updates_out: counters.map_or(0, |c| c.updates_out.load(Relaxed)),
            extensions: if up && link.sync {
                Extensions::SYNC
            } else {
                Extensions::NONE
            },
        }
    }

    /// An operator change: check, store, apply.
    async fn change(&mut self, change: ClientChange) -> Result<Applied, Refused> {
        self.planner.check(&change)?;
        if let Some(delta) = self.planner.announcement_delta(&change) {
            return self.announcements(delta).await;
        }
        if matches!(change, ClientChange::SetMapping(..)) && !self.planner.has_dataplane() {
            self.open_dataplane().await?;
        }
        self.store(&change).await?;
        let ops = match change {
            ClientChange::AddServer(addr) => {
                let id = self
                    .client
                    .add_server(addr.clone(), self.planner.desired())
                    .ok_or_else(|| Refused::Precondition("the client role is stopping".into()))?;
                self.links.insert(id, Link::new(SystemTime::now()));
                self.planner.add_server(id, addr.clone());
                info!(server = %id, %addr, "route server added (API)");
                Vec::new()
            }
            ClientChange::RemoveServer(addr) => {
                let Some(id) = self.planner.server_id(&addr) else {
                    return Ok(Applied::default());
                };
                self.client.remove_server(id);
                self.links.remove(&id);
                info!(server = %id, %addr, "route server removed (API)");
                self.planner.remove_server(id, now())
            }
            ClientChange::Subscribe(vni) => {
                self.planner.subscribe(vni);
                self.client.subscribe(vni).await;
                info!(%vni, "subscribed (API)");
                Vec::new()
            }
            ClientChange::Unsubscribe(vni) => {
                self.client.unsubscribe(vni).await;
                info!(%vni, "unsubscribed (API)");
                self.planner.unsubscribe(vni)
            }
            ClientChange::SetMapping(vni, table) => self.planner.set_mapping(vni, Some(table)),
            ClientChange::RemoveMapping(vni) => self.planner.set_mapping(vni, None),
            // Handled above (their difference is what is stored).
            ClientChange::Announce { .. }
            | ClientChange::Withdraw { .. }
            | ClientChange::SetAnnouncements { .. } => Vec::new(),
        };
        // An operator change answers once its operations ran, as before.
        self.run_all(ops).await;
        Ok(Applied::default())
    }

    /// An owner's announcement difference (checked): stored, then applied
    /// to the planner, then sent to every connection (only the routes that
    /// appear on or leave the wire; nothing when the difference is empty).
    async fn announcements(&mut self, delta: OwnerDelta) -> Result<Applied, Refused> {
        let applied = Applied {
            added: delta.add.len(),
            removed: delta.remove.len(),
            unchanged: delta.unchanged,
        };
        if delta.add.is_empty() && delta.remove.is_empty() {
            return Ok(applied);
        }
        if let Some(store) = self.store.clone() {
            let d = delta.clone();
            match tokio::task::spawn_blocking(move || operator::record_announcements(&store, &d))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Refused::Unavailable(format!("state store: {e}"))),
                Err(e) => return Err(Refused::Internal(format!("state store task failed: {e}"))),
            }
        }
        self.apply_delta(&delta, "API").await;
        Ok(applied)
    }

    /// Applies an owner's difference (checked, and stored if it is to be)
    /// to the planner and sends the wire difference to every connection
    /// in one command; `source` (`API`, `reload`) is for the log.
    async fn apply_delta(&mut self, delta: &OwnerDelta, source: &str) {
        if delta.add.is_empty() && delta.remove.is_empty() {
            return;
        }
        let (commands, ops) = self.planner.apply_announcements(delta);
        info!(
            owner = %delta.owner,
            added = delta.add.len(),
            removed = delta.remove.len(),
            wire_changes = commands.len(),
            "announcements changed ({source})"
        );
        // One command for the whole difference: one queue slot and one
        // write per connection.
        let batch: Vec<(Action, Route)> = commands
            .into_iter()
            .filter_map(|c| match c {
                ClientCommand::Announce(r) => Some((Action::Add, r)),
                ClientCommand::Withdraw(r) => Some((Action::Remove, r)),
                _ => None,
            })
            .collect();
        if !batch.is_empty() {
            self.client
                .command(ClientCommand::Batch(batch.into()))
                .await;
        }
        // An operator change answers once its operations ran, as before.
        self.run_all(ops).await;
    }

    /// Runs `ops` and everything in flight to the end.
    async fn run_all(&mut self, ops: Vec<Planned>) {
        self.executor.submit(ops);
        self.executor.drain(&mut self.planner, now).await;
    }

    /// Opens the kernel installer for a first mapping.
    async fn open_dataplane(&mut self) -> Result<(), Refused> {
        let Some(tun) = self.tun.clone() else {
            return Err(Refused::Precondition(
                "no tunnel device: start the client with --tun DEV to install routes".into(),
            ));
        };
        let installer = Installer::new(&tun).await.map_err(|e| {
            Refused::Precondition(format!(
                "cannot install routes through tunnel device {tun:?}: {e}"
            ))
        })?;
        self.executor.dataplane = Some(Box::new(Arc::new(installer)));
        self.planner.set_dataplane();
        Ok(())
    }

    /// Stores `change` durably (nothing without a store).
    async fn store(&mut self, change: &ClientChange) -> Result<(), Refused> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let change = change.clone();
        match tokio::task::spawn_blocking(move || operator::record(&store, &change)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Refused::Unavailable(format!("state store: {e}"))),
            Err(e) => Err(Refused::Internal(format!("state store task failed: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests;
