//! The hypervisor agent: client connections, received routes and kernel
//! installation wired together (PROTOCOL.md section 5).
//!
//! One task owns a [`ReceivedRoutes`] and, when VNIs are mapped to routing
//! tables, an [`Installer`]. It reads the [`ClientEvent`]s of the
//! connections:
//!
//! - `Up`: logged, nothing else (the server sends its dump next);
//! - `Down`: every route of that server is dropped ([`ReceivedRoutes::drop_server`]);
//!   routes another server still provides stay installed;
//! - `Update`: the route is added or removed.
//!
//! Each resulting [`Change`] of a mapped VNI becomes an
//! [`Installer::replace`] (next hops left) or [`Installer::delete`] (none
//! left) in every table the VNI is mapped to. A failed kernel call is logged
//! with the route and the table, counted, and, when the error may go away,
//! retried every second with the then-current desired state. Kernel errors
//! are never fatal.
//!
//! No data-plane flap on restarts (issue 4):
//!
//! - At start the agent dumps the protocol-254 routes of every mapped table
//!   and keeps them ("held"), unless `flush_at_start` is set, which deletes
//!   them first. Held routes are never deleted before the reconciliation; a held
//!   (table, prefix) that a server sends is replaced in place. The
//!   reconciliation runs when the hold time has passed since start, or
//!   earlier once every configured server is established and has delivered
//!   its dump, approximated as "established and no UPDATE from it for
//!   [`QUIET_AFTER_DUMP`]". It deletes every held route the received routes
//!   do not confirm and replaces the confirmed ones with the current next
//!   hops (usually a no-op).
//! - When the last established server goes down, the kernel keeps what it
//!   has: the server's routes are dropped from the received table but not
//!   from the kernel, and every installed route becomes held for the stale
//!   time. If no server comes back in time, the held routes are deleted when
//!   it expires. If one comes back, the reconciliation runs as soon as that
//!   server has delivered its dump (or at the latest the hold time after it
//!   came back). While at least one other server is up, a server's Down
//!   applies at once.
//!
//! Runtime management (the API's ClientService) goes through an
//! [`AgentHandle`]: servers are added (a new connection task) and removed
//! (its task stopped, its routes dropped as on a Down, events it had queued
//! ignored), VNIs subscribed and unsubscribed (the unsubscribed VNI's
//! received routes are dropped; updates of VNIs not subscribed are ignored),
//! and VNI -> table mappings set or removed (the VNI's current routes are
//! installed into the new table and deleted from the old ones). Durability
//! is the API's job ([`super::operator`]).
//!
//! At a clean exit ([`Agent::shutdown`]: SIGINT, SIGTERM, API Shutdown)
//! the routes stay in the kernel, so that a restart does not flap the data
//! plane, unless `cleanup` is set: then, as the Go reference's `--cleanup`
//! ("Cleanup routes upon exit"), every protocol-254 route of the mapped
//! tables is deleted after the sessions are closed.
//!
//! Counters ([`AgentStats`], shared with the connection tasks): every
//! netlink call is counted by kind and outcome where it is made; the gauges
//! of configured and established servers and of received routes are set
//! from the task's state after each event and each API request; the
//! installed routes per table follow each successful replace and delete
//! (`InstalledRoutes`), so routes kept from an earlier run count once they
//! are confirmed and stop counting when the reconciliation (after the hold
//! or the stale time) deletes them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::operator::{Override, StoredClientState};
use super::stats::InstalledRoutes;
pub use super::stats::{AgentStats, NetlinkOpCounters};
use super::{
    Change, Client, ClientConfig, ClientEvent, Desired, ReceivedRoutes, ServerAddr, ServerId,
};
use crate::kernel::{Installer, KernelRoute, Prefix};
use crate::wire::{Action, Destination, Route, Vni};

/// Depth of the event channel from the connection tasks to the agent.
const EVENT_QUEUE: usize = 1024;
/// Interval between retries of failed kernel changes.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// A session established with no UPDATE for this long is taken as having
/// delivered its subscription dumps (the protocol has no end-of-dump marker).
pub const QUIET_AFTER_DUMP: Duration = Duration::from_secs(1);
/// How often the agent checks whether held routes can be reconciled.
const HOLD_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Default hold time after start (`--hold-time`).
pub const DEFAULT_HOLD_TIME: Duration = Duration::from_secs(30);
/// Default stale time after losing every server (`--stale-time`).
pub const DEFAULT_STALE_TIME: Duration = Duration::from_secs(60);

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
}

/// One received route, as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedEntry {
    /// The route.
    pub route: Route,
    /// The servers that provide it.
    pub servers: Vec<ServerAddr>,
    /// The tables its destination is installed in (as far as the agent
    /// knows: mapped, installable, and no failed kernel call pending).
    pub installed_tables: Vec<u32>,
}

/// Why the agent refused a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// It is there already.
    AlreadyExists(String),
    /// It is not there.
    NotFound(String),
    /// It cannot be done in this state.
    Precondition(String),
}

/// What the API asks of the agent.
#[derive(Debug)]
pub enum AgentRequest {
    /// The configured servers.
    Servers(oneshot::Sender<Vec<ServerStatus>>),
    /// Connect to one more server.
    AddServer(ServerAddr, oneshot::Sender<Result<(), Refused>>),
    /// Stop using a server.
    RemoveServer(ServerAddr, oneshot::Sender<Result<(), Refused>>),
    /// The subscribed VNIs.
    Subscriptions(oneshot::Sender<Vec<Vni>>),
    /// Subscribe to a VNI.
    Subscribe(Vni, oneshot::Sender<Result<(), Refused>>),
    /// Unsubscribe from a VNI.
    Unsubscribe(Vni, oneshot::Sender<Result<(), Refused>>),
    /// The VNI -> tables mappings.
    Mappings(oneshot::Sender<BTreeMap<Vni, BTreeSet<u32>>>),
    /// Map a VNI to exactly one table (not 0).
    SetMapping(Vni, u32, oneshot::Sender<Result<(), Refused>>),
    /// Remove a VNI's mapping.
    RemoveMapping(Vni, oneshot::Sender<Result<(), Refused>>),
    /// The received routes, of one VNI if given.
    Received(Option<Vni>, oneshot::Sender<Vec<ReceivedEntry>>),
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
    /// and starts the connections and the agent task. An error (table 0, a
    /// mapping without tunnel device, a missing tunnel device) is a startup
    /// failure, in one line.
    pub async fn start(settings: ClientSettings) -> Result<Agent, String> {
        Self::start_with(settings, &StoredClientState::default()).await
    }

    /// Like [`Agent::start`], with the operator's stored API changes merged
    /// into `settings` after their validation (stored changes win; see
    /// [`super::operator`]). With them, the agent may start with no server.
    pub async fn start_with(
        mut settings: ClientSettings,
        stored: &StoredClientState,
    ) -> Result<Agent, String> {
        if settings.servers.is_empty() {
            return Err("client: no route server given (--server ADDR)".into());
        }
        for (vni, tables) in &settings.install_routes {
            if tables.contains(&0) {
                return Err(format!(
                    "client: --install-routes {vni}#0: table 0 is not a valid routing table"
                ));
            }
        }
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
        let installer = if settings.install_routes.is_empty() {
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
            Some(installer)
        };

        let stats = Arc::new(AgentStats::default());
        let mut held = BTreeSet::new();
        if let Some(installer) = &installer {
            held = startup_routes(
                installer,
                &settings.install_routes,
                settings.flush_at_start,
                &stats,
            )
            .await;
        }

        let mut received = ReceivedRoutes::new();
        let _ = received
            .set_local_announcements(settings.announcements.iter().map(|r| (r.vni, r.dest)));
        let desired = Desired {
            subscriptions: dedup(&settings.subscriptions),
            announcements: settings.announcements.iter().copied().collect(),
        };
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let client = Client::start_with_stats(
            &settings.servers,
            settings.connection,
            desired.clone(),
            events_tx,
            stats.clone(),
        );
        let (stop, stop_rx) = watch::channel(false);
        let (control, control_rx) = mpsc::channel(64);
        info!(
            servers = settings.servers.len(),
            subscriptions = settings.subscriptions.len(),
            announcements = settings.announcements.len(),
            mapped_vnis = settings.install_routes.len(),
            ipv4_only = settings.ipv4_only,
            "hypervisor agent started"
        );
        let state = AgentTask {
            servers: initial_servers(&settings.servers),
            client,
            subscriptions: desired.subscriptions.clone(),
            tun: settings.tun.clone(),
            tables: settings.install_routes,
            ipv4_only: settings.ipv4_only,
            installer,
            received,
            up: HashSet::new(),
            retry: BTreeSet::new(),
            installed: InstalledRoutes::new(stats.clone()),
            stats: stats.clone(),
            mode: if held.is_empty() {
                Mode::Normal
            } else {
                info!(
                    routes = held.len(),
                    hold_secs = settings.hold_time.as_secs_f64(),
                    "keeping the routes of an earlier run until the servers confirm them"
                );
                Mode::Hold {
                    deadline: Instant::now() + settings.hold_time,
                    all_servers: true,
                }
            },
            held,
            held_retry: BTreeSet::new(),
            quiet_since: HashMap::new(),
            hold_time: settings.hold_time,
            stale_time: settings.stale_time,
            cleanup: settings.cleanup,
        };
        state.publish_gauges();
        let task = tokio::spawn(state.run(events, control_rx, stop_rx));
        Ok(Agent {
            stop,
            task,
            control,
            stats,
            overrides,
        })
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

/// The kernel prefix of a MetalBond destination.
fn prefix_of(dest: Destination) -> Prefix {
    Prefix::new(dest.addr.to_ip(), dest.prefix_len)
}

/// Dumps the protocol-254 routes of every mapped table. With
/// `flush_at_start` they are deleted and nothing is returned; otherwise they
/// are returned to be held until the reconciliation. Errors are logged,
/// never fatal. The netlink calls are counted in `stats`; the routes found
/// are not counted as installed (they are once a server confirms them).
async fn startup_routes(
    installer: &Installer,
    tables: &BTreeMap<Vni, BTreeSet<u32>>,
    flush_at_start: bool,
    stats: &AgentStats,
) -> BTreeSet<(u32, Prefix)> {
    let found = dump_mapped(installer, tables, stats).await;
    if !flush_at_start {
        return found;
    }
    delete_all(installer, &found, stats, "flush at start").await;
    BTreeSet::new()
}

/// The protocol-254 routes in every table of `tables` (a table that cannot
/// be read is logged and skipped).
async fn dump_mapped(
    installer: &Installer,
    tables: &BTreeMap<Vni, BTreeSet<u32>>,
    stats: &AgentStats,
) -> BTreeSet<(u32, Prefix)> {
    let all: BTreeSet<u32> = tables.values().flatten().copied().collect();
    let mut found = BTreeSet::new();
    for table in all {
        let dumped = installer.dump(table).await;
        stats.netlink_dump.record(&dumped);
        match dumped {
            Ok(routes) => found.extend(routes.into_iter().map(|r| (table, r.dest))),
            Err(e) => warn!(table, error = %e, "cannot read the protocol-254 routes of a table"),
        }
    }
    found
}

/// Deletes `routes` (a failure is logged and counted, never fatal) and
/// logs how many went, under `what`.
async fn delete_all(
    installer: &Installer,
    routes: &BTreeSet<(u32, Prefix)>,
    stats: &AgentStats,
    what: &str,
) -> usize {
    let mut deleted = 0usize;
    for (table, prefix) in routes {
        let result = installer.delete(*table, *prefix).await;
        stats.netlink_delete.record(&result);
        match result {
            Ok(_) => deleted += 1,
            Err(e) => warn!(table, %prefix, error = %e, what, "cannot delete route"),
        }
    }
    info!(
        deleted,
        found = routes.len(),
        what,
        "protocol-254 routes of the mapped tables removed"
    );
    deleted
}

/// Whether kernel routes are being held back from deletion.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Changes apply at once.
    Normal,
    /// Held routes wait for the servers' resync; reconcile at `deadline`, or
    /// earlier once every configured server (`all_servers`) or any one
    /// server has been established and quiet for [`QUIET_AFTER_DUMP`].
    Hold {
        deadline: Instant,
        all_servers: bool,
    },
    /// Every server is lost; held routes are deleted at `deadline` unless a
    /// server comes back.
    Stale { deadline: Instant },
}

/// The configured servers at start: ids in order, none up yet.
fn initial_servers(servers: &[ServerAddr]) -> BTreeMap<ServerId, ServerStatus> {
    let now = SystemTime::now();
    servers
        .iter()
        .enumerate()
        .map(|(i, addr)| (ServerId(i), ServerStatus::new(addr.clone(), now)))
        .collect()
}

impl ServerStatus {
    /// A server just configured: down, never tried.
    fn new(addr: ServerAddr, since: SystemTime) -> Self {
        Self {
            addr,
            resolved: Vec::new(),
            connected: None,
            up: false,
            last_error: String::new(),
            since,
            updates_in: 0,
            updates_out: 0,
        }
    }
}

struct AgentTask {
    /// The configured servers (ids of removed servers are never reused).
    servers: BTreeMap<ServerId, ServerStatus>,
    client: Client,
    /// Subscribed VNIs; updates of other VNIs are ignored.
    subscriptions: Vec<Vni>,
    /// Tunnel device, to open the installer when a first mapping is set.
    tun: Option<String>,
    tables: BTreeMap<Vni, BTreeSet<u32>>,
    ipv4_only: bool,
    installer: Option<Installer>,
    received: ReceivedRoutes,
    /// Servers whose session is established.
    up: HashSet<ServerId>,
    /// (table, VNI, destination) whose last kernel call failed, to retry.
    retry: BTreeSet<(u32, Vni, Destination)>,
    /// What the agent installed and has not deleted since (the
    /// installed-routes gauges).
    installed: InstalledRoutes,
    stats: Arc<AgentStats>,
    mode: Mode,
    /// Kernel routes not deleted before the next reconciliation.
    held: BTreeSet<(u32, Prefix)>,
    /// Reconciliation deletions that failed, to retry.
    held_retry: BTreeSet<(u32, Prefix)>,
    /// Per established server, when it last sent an UPDATE (or came up).
    quiet_since: HashMap<ServerId, Instant>,
    hold_time: Duration,
    stale_time: Duration,
    /// Delete the routes of the mapped tables at exit.
    cleanup: bool,
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
        if self.cleanup {
            if let Some(installer) = &self.installer {
                // What is in the tables now, not only what this run
                // installed: held routes of an earlier run go too.
                let found = dump_mapped(installer, &self.tables, &self.stats).await;
                delete_all(installer, &found, &self.stats, "cleanup at exit").await;
            }
        }
    }

    async fn serve(
        &mut self,
        events: &mut mpsc::Receiver<ClientEvent>,
        control: &mut mpsc::Receiver<AgentRequest>,
        stop: &mut watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(RETRY_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hold_tick = tokio::time::interval(HOLD_CHECK_INTERVAL);
        hold_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => {
                        self.handle(ev).await;
                        self.publish_gauges();
                    }
                    None => return,
                },
                Some(req) = control.recv() => {
                    self.request(req).await;
                    self.publish_gauges();
                }
                _ = tick.tick(), if !self.retry.is_empty() || !self.held_retry.is_empty() => {
                    self.retry_failed().await
                }
                _ = hold_tick.tick(), if self.mode != Mode::Normal => self.check_hold().await,
                r = stop.changed() => if r.is_err() || *stop.borrow() {
                    return;
                },
            }
        }
    }

    /// Sets the gauges of servers and received routes from the agent's
    /// state (after each event or request: a few relaxed stores).
    fn publish_gauges(&self) {
        let s = &self.stats;
        s.servers_configured
            .store(self.servers.len() as u64, Relaxed);
        s.servers_up.store(self.up.len() as u64, Relaxed);
        s.received_routes
            .store(self.received.route_count() as u64, Relaxed);
    }

    fn addr(&self, server: ServerId) -> String {
        self.servers
            .get(&server)
            .map(|s| s.addr.to_string())
            .unwrap_or_default()
    }

    async fn handle(&mut self, ev: ClientEvent) {
        let server = match &ev {
            ClientEvent::Up { server, .. }
            | ClientEvent::Down { server, .. }
            | ClientEvent::Update { server, .. } => *server,
        };
        let Some(status) = self.servers.get_mut(&server) else {
            // Queued by a server removed since.
            return;
        };
        match &ev {
            ClientEvent::Up { peer, resolved, .. } => {
                status.up = true;
                status.since = SystemTime::now();
                status.connected = Some(*peer);
                status.resolved = resolved.clone();
                status.last_error.clear();
            }
            ClientEvent::Down {
                reason, resolved, ..
            } => {
                if status.up || status.last_error.is_empty() {
                    status.since = SystemTime::now();
                }
                status.up = false;
                status.connected = None;
                status.resolved = resolved.clone();
                status.last_error = reason.clone();
            }
            ClientEvent::Update { .. } => {}
        }
        let changes = match ev {
            ClientEvent::Up { server, peer, .. } => {
                self.up.insert(server);
                self.quiet_since.insert(server, Instant::now());
                info!(%server, addr = %self.addr(server), %peer, "route server up");
                if let Mode::Stale { .. } = self.mode {
                    info!(%server, "a route server is back: reconciling after its resync");
                    self.mode = Mode::Hold {
                        deadline: Instant::now() + self.hold_time,
                        all_servers: false,
                    };
                }
                return;
            }
            ClientEvent::Down {
                server,
                reason,
                label,
                ..
            } => {
                self.quiet_since.remove(&server);
                if self.up.remove(&server) {
                    info!(%server, addr = %self.addr(server), %reason, label, "route server down");
                    if self.up.is_empty() && self.installer.is_some() {
                        self.enter_stale();
                        let _ = self.received.drop_server(server);
                        return;
                    }
                } else {
                    debug!(%server, addr = %self.addr(server), %reason, label, "route server unreachable");
                }
                self.received.drop_server(server)
            }
            ClientEvent::Update { server, update } => {
                self.quiet_since.insert(server, Instant::now());
                let route = update.route;
                if self.ipv4_only && route.dest.addr.is_ipv6() {
                    return;
                }
                if !self.subscriptions.contains(&route.vni) {
                    // Sent before an unsubscribe reached the server.
                    return;
                }
                // Debug only: a server's dump is thousands of these.
                tracing::debug!(server = server.0, action = ?update.action, %route, "received");
                match update.action {
                    Action::Add => self.received.add(server, route),
                    Action::Remove => self.received.remove(server, route),
                }
            }
        };
        for change in changes {
            self.apply(change).await;
        }
    }

    async fn apply(&mut self, change: Change) {
        let Some(tables) = self.tables.get(&change.vni) else {
            return;
        };
        for table in tables.clone() {
            self.install(table, change.vni, change.dest, &change.next_hops, false)
                .await;
        }
    }

    /// Brings (table, dest) to `next_hops` (empty: delete). Failures are
    /// logged, counted and queued for a retry with the state desired then:
    /// even an error that looks permanent (the kernel rejecting the route)
    /// may go away when the desired state or the device changes. A retry
    /// that fails again is logged at debug level only.
    async fn install(
        &mut self,
        table: u32,
        vni: Vni,
        dest: Destination,
        next_hops: &[Ipv6Addr],
        retrying: bool,
    ) {
        let Some(installer) = &self.installer else {
            return;
        };
        let prefix = prefix_of(dest);
        if next_hops.is_empty() && self.held.contains(&(table, prefix)) {
            // Held until the reconciliation, which decides.
            self.retry.remove(&(table, vni, dest));
            debug!(table, %vni, %prefix, "kernel route deletion deferred to the reconciliation");
            return;
        }
        let result = if next_hops.is_empty() {
            let r = installer.delete(table, prefix).await.map(|_| ());
            self.stats.netlink_delete.record(&r);
            if r.is_ok() {
                self.installed.removed(table, prefix);
            }
            r
        } else {
            let r = installer
                .replace(&KernelRoute {
                    table,
                    dest: prefix,
                    next_hops: next_hops.to_vec(),
                })
                .await;
            self.stats.netlink_replace.record(&r);
            if r.is_ok() {
                self.installed.installed(table, prefix);
            }
            r
        };
        let key = (table, vni, dest);
        match result {
            Ok(()) => {
                self.stats.kernel_changes.fetch_add(1, Relaxed);
                let was_failed = self.retry.remove(&key);
                if next_hops.is_empty() {
                    debug!(table, %vni, %prefix, "kernel route deleted");
                } else {
                    debug!(table, %vni, %prefix, next_hops = ?next_hops, "kernel route installed");
                }
                if was_failed {
                    info!(table, %vni, %prefix, "kernel route change succeeded after a retry");
                }
            }
            Err(e) => {
                self.stats.kernel_errors.fetch_add(1, Relaxed);
                self.retry.insert(key);
                let transient = e.is_retryable();
                if retrying {
                    debug!(table, %vni, %prefix, error = %e, transient, "kernel route retry failed");
                } else {
                    warn!(table, %vni, %prefix, error = %e, transient, "kernel route change failed; retrying every second");
                }
            }
        }
    }

    /// Retries every failed (table, destination) with what is desired now.
    async fn retry_failed(&mut self) {
        let pending: Vec<_> = self.retry.iter().copied().collect();
        for (table, vni, dest) in pending {
            // ipv4_only routes never reach the retry set; a table the VNI
            // is no longer mapped to gets a deletion.
            let mapped = self.tables.get(&vni).is_some_and(|t| t.contains(&table));
            let hops = if mapped {
                self.received.next_hops(vni, dest)
            } else {
                Vec::new()
            };
            self.install(table, vni, dest, &hops, true).await;
        }
        if self.held_retry.is_empty() {
            return;
        }
        let desired = self.desired();
        let pending: Vec<_> = self.held_retry.iter().copied().collect();
        for key in pending {
            if self.held.contains(&key) || desired.contains_key(&key) {
                self.held_retry.remove(&key);
                continue;
            }
            self.reconcile_delete(key, true).await;
        }
    }

    /// What the kernel should hold now, per (table, prefix).
    fn desired(&self) -> BTreeMap<(u32, Prefix), (Vni, Destination, Vec<Ipv6Addr>)> {
        let mut out = BTreeMap::new();
        for (vni, dest, hops) in self.received.snapshot() {
            let Some(tables) = self.tables.get(&vni) else {
                continue;
            };
            for &table in tables {
                out.entry((table, prefix_of(dest)))
                    .or_insert_with(|| (vni, dest, hops.clone()));
            }
        }
        out
    }

    /// The last established server is gone: keep every installed route
    /// for the stale time.
    fn enter_stale(&mut self) {
        let installed: Vec<(u32, Prefix)> = self.desired().into_keys().collect();
        self.held.extend(installed);
        let deadline = Instant::now() + self.stale_time;
        self.mode = Mode::Stale { deadline };
        warn!(
            routes = self.held.len(),
            stale_secs = self.stale_time.as_secs_f64(),
            "every route server is lost: keeping the installed routes for the stale time"
        );
    }

    /// Reconciles when the mode's condition is met.
    async fn check_hold(&mut self) {
        let now = Instant::now();
        let resynced = |s: &ServerId| {
            self.up.contains(s)
                && self
                    .quiet_since
                    .get(s)
                    .is_some_and(|t| now.duration_since(*t) >= QUIET_AFTER_DUMP)
        };
        let why = match self.mode {
            Mode::Normal => return,
            Mode::Stale { deadline } => {
                if now < deadline {
                    return;
                }
                "stale time expired with no route server"
            }
            Mode::Hold {
                deadline,
                all_servers,
            } => {
                if now >= deadline {
                    "hold time expired"
                } else if all_servers && self.servers.keys().all(resynced) {
                    "every route server resynced"
                } else if !all_servers && self.up.iter().any(resynced) {
                    "a route server resynced"
                } else {
                    return;
                }
            }
        };
        self.reconcile(why).await;
    }

    /// Deletes the held routes the servers do not confirm and replaces the
    /// confirmed ones with the current next hops.
    async fn reconcile(&mut self, why: &str) {
        self.mode = Mode::Normal;
        let held = std::mem::take(&mut self.held);
        let desired = self.desired();
        let (mut kept, mut deleted) = (0usize, 0usize);
        for key in held {
            match desired.get(&key) {
                Some((vni, dest, hops)) => {
                    kept += 1;
                    let hops = hops.clone();
                    self.install(key.0, *vni, *dest, &hops, false).await;
                }
                None => {
                    deleted += 1;
                    self.reconcile_delete(key, false).await;
                }
            }
        }
        info!(kept, deleted, reason = why, "kernel routes reconciled");
    }

    /// Answers one request of the API.
    async fn request(&mut self, req: AgentRequest) {
        match req {
            AgentRequest::Servers(reply) => {
                let servers = self
                    .servers
                    .iter()
                    .map(|(&id, status)| {
                        let mut status = status.clone();
                        if let Some(c) = self.client.server_counters(id) {
                            status.updates_in = c.updates_in.load(Relaxed);
                            status.updates_out = c.updates_out.load(Relaxed);
                        }
                        status
                    })
                    .collect();
                let _ = reply.send(servers);
            }
            AgentRequest::AddServer(addr, reply) => {
                let _ = reply.send(self.add_server(addr));
            }
            AgentRequest::RemoveServer(addr, reply) => {
                let _ = reply.send(self.remove_server(addr).await);
            }
            AgentRequest::Subscriptions(reply) => {
                let _ = reply.send(self.subscriptions.clone());
            }
            AgentRequest::Subscribe(vni, reply) => {
                let result = if self.subscriptions.contains(&vni) {
                    Err(Refused::AlreadyExists(format!(
                        "VNI {vni} is subscribed already"
                    )))
                } else {
                    self.subscriptions.push(vni);
                    self.client.subscribe(vni).await;
                    info!(%vni, "subscribed (API)");
                    Ok(())
                };
                let _ = reply.send(result);
            }
            AgentRequest::Unsubscribe(vni, reply) => {
                let _ = reply.send(self.unsubscribe(vni).await);
            }
            AgentRequest::Mappings(reply) => {
                let _ = reply.send(self.tables.clone());
            }
            AgentRequest::SetMapping(vni, table, reply) => {
                let _ = reply.send(self.set_mapping(vni, Some(table)).await);
            }
            AgentRequest::RemoveMapping(vni, reply) => {
                let _ = reply.send(self.set_mapping(vni, None).await);
            }
            AgentRequest::Received(vni, reply) => {
                let _ = reply.send(self.received_entries(vni));
            }
        }
    }

    fn add_server(&mut self, addr: ServerAddr) -> Result<(), Refused> {
        if self.servers.values().any(|s| s.addr == addr) {
            return Err(Refused::AlreadyExists(format!(
                "server {addr} is configured already"
            )));
        }
        let id = self
            .client
            .add_server(addr.clone())
            .ok_or_else(|| Refused::Precondition("the client role is stopping".into()))?;
        self.servers
            .insert(id, ServerStatus::new(addr.clone(), SystemTime::now()));
        info!(server = %id, %addr, "route server added (API)");
        Ok(())
    }

    async fn remove_server(&mut self, addr: ServerAddr) -> Result<(), Refused> {
        let Some(id) = self
            .servers
            .iter()
            .find(|(_, s)| s.addr == addr)
            .map(|(id, _)| *id)
        else {
            return Err(Refused::NotFound(format!(
                "server {addr} is not configured"
            )));
        };
        self.client.remove_server(id);
        self.servers.remove(&id);
        self.up.remove(&id);
        self.quiet_since.remove(&id);
        info!(server = %id, %addr, "route server removed (API)");
        for change in self.received.drop_server(id) {
            self.apply(change).await;
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, vni: Vni) -> Result<(), Refused> {
        if !self.subscriptions.contains(&vni) {
            return Err(Refused::NotFound(format!("VNI {vni} is not subscribed")));
        }
        self.subscriptions.retain(|&v| v != vni);
        self.client.unsubscribe(vni).await;
        // The server sends no withdrawals for an unsubscribe.
        let ids: Vec<ServerId> = self.servers.keys().copied().collect();
        let mut changes = Vec::new();
        for id in ids {
            let routes: Vec<Route> = self
                .received
                .routes_of(id)
                .filter(|r| r.vni == vni)
                .copied()
                .collect();
            for route in routes {
                changes.extend(self.received.remove(id, route));
            }
        }
        for change in changes {
            self.apply(change).await;
        }
        info!(%vni, "unsubscribed (API)");
        Ok(())
    }

    /// Maps `vni` to exactly `table`, or (`None`) removes its mapping; the
    /// VNI's routes move accordingly.
    async fn set_mapping(&mut self, vni: Vni, table: Option<u32>) -> Result<(), Refused> {
        let old = self.tables.get(&vni).cloned().unwrap_or_default();
        match table {
            None if old.is_empty() => {
                return Err(Refused::NotFound(format!("VNI {vni} is not mapped")));
            }
            Some(0) => {
                return Err(Refused::Precondition(
                    "table: 0 is not a valid routing table".into(),
                ))
            }
            Some(_) if self.installer.is_none() => {
                let Some(tun) = self.tun.clone() else {
                    return Err(Refused::Precondition(
                        "no tunnel device: start the client with --tun DEV to install routes"
                            .into(),
                    ));
                };
                let installer = Installer::new(&tun).await.map_err(|e| {
                    Refused::Precondition(format!(
                        "cannot install routes through tunnel device {tun:?}: {e}"
                    ))
                })?;
                self.installer = Some(installer);
            }
            _ => {}
        }
        let new: BTreeSet<u32> = table.into_iter().collect();
        if new.is_empty() {
            self.tables.remove(&vni);
        } else {
            self.tables.insert(vni, new.clone());
        }
        let routes: Vec<_> = self
            .received
            .snapshot()
            .into_iter()
            .filter(|(v, _, _)| *v == vni)
            .collect();
        for (_, dest, hops) in &routes {
            for &t in new.difference(&old) {
                self.install(t, vni, *dest, hops, false).await;
            }
            for &t in old.difference(&new) {
                self.install(t, vni, *dest, &[], false).await;
            }
        }
        info!(%vni, ?table, old = ?old, routes = routes.len(), "table mapping changed (API)");
        Ok(())
    }

    fn received_entries(&self, vni: Option<Vni>) -> Vec<ReceivedEntry> {
        let mut by_route: BTreeMap<Route, Vec<ServerAddr>> = BTreeMap::new();
        for (id, status) in &self.servers {
            for route in self.received.routes_of(*id) {
                if vni.is_none_or(|v| v == route.vni) {
                    by_route
                        .entry(*route)
                        .or_default()
                        .push(status.addr.clone());
                }
            }
        }
        by_route
            .into_iter()
            .map(|(route, mut servers)| {
                servers.sort();
                let hops = self.received.next_hops(route.vni, route.dest);
                let installable = self.installer.is_some()
                    && matches!(route.next_hop.addr.to_ip(), std::net::IpAddr::V6(a) if hops.contains(&a));
                let installed_tables = match self.tables.get(&route.vni) {
                    Some(tables) if installable => tables
                        .iter()
                        .copied()
                        .filter(|t| !self.retry.contains(&(*t, route.vni, route.dest)))
                        .collect(),
                    _ => Vec::new(),
                };
                ReceivedEntry {
                    route,
                    servers,
                    installed_tables,
                }
            })
            .collect()
    }

    /// Deletes an unconfirmed route at the reconciliation.
    async fn reconcile_delete(&mut self, key: (u32, Prefix), retrying: bool) {
        let Some(installer) = &self.installer else {
            return;
        };
        let (table, prefix) = key;
        let result = installer.delete(table, prefix).await;
        self.stats.netlink_delete.record(&result);
        match result {
            Ok(_) => {
                self.stats.kernel_changes.fetch_add(1, Relaxed);
                self.installed.removed(table, prefix);
                self.held_retry.remove(&key);
                debug!(table, %prefix, "unconfirmed kernel route deleted");
            }
            Err(e) => {
                self.stats.kernel_errors.fetch_add(1, Relaxed);
                self.held_retry.insert(key);
                let transient = e.is_retryable();
                if retrying {
                    debug!(table, %prefix, error = %e, transient, "kernel route retry failed");
                } else {
                    warn!(table, %prefix, error = %e, transient, "unconfirmed kernel route not deleted; retrying every second");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Update;

    /// An agent task without installer for `servers` (listeners that accept
    /// and stay silent, so no connection task reports anything soon),
    /// subscribed to VNI 100, as `Agent::start` builds it; also the
    /// listeners (a third one for a server added later) and the event
    /// receiver, which the test never reads.
    async fn task() -> (
        AgentTask,
        Vec<tokio::net::TcpListener>,
        mpsc::Receiver<ClientEvent>,
    ) {
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let servers: Vec<ServerAddr> = listeners[..2]
            .iter()
            .map(|l| l.local_addr().unwrap().into())
            .collect();
        let stats = Arc::new(AgentStats::default());
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let desired = Desired {
            subscriptions: vec![Vni(100)],
            announcements: BTreeSet::new(),
        };
        let client = Client::start_with_stats(
            &servers,
            ClientConfig::default(),
            desired.clone(),
            events_tx,
            stats.clone(),
        );
        let task = AgentTask {
            servers: initial_servers(&servers),
            client,
            subscriptions: desired.subscriptions,
            tun: None,
            tables: BTreeMap::new(),
            ipv4_only: false,
            installer: None,
            received: ReceivedRoutes::new(),
            up: HashSet::new(),
            retry: BTreeSet::new(),
            installed: InstalledRoutes::new(stats.clone()),
            stats,
            mode: Mode::Normal,
            held: BTreeSet::new(),
            held_retry: BTreeSet::new(),
            quiet_since: HashMap::new(),
            hold_time: DEFAULT_HOLD_TIME,
            stale_time: DEFAULT_STALE_TIME,
            cleanup: false,
        };
        task.publish_gauges();
        (task, listeners, events_rx)
    }

    /// What the serve loop does with one event.
    async fn event(t: &mut AgentTask, ev: ClientEvent) {
        t.handle(ev).await;
        t.publish_gauges();
    }

    /// What the serve loop does with one request.
    async fn request<T>(
        t: &mut AgentTask,
        make: impl FnOnce(oneshot::Sender<T>) -> AgentRequest,
    ) -> T {
        let (tx, rx) = oneshot::channel();
        t.request(make(tx)).await;
        t.publish_gauges();
        rx.await.unwrap()
    }

    fn add(server: usize, route: &str) -> ClientEvent {
        ClientEvent::Update {
            server: ServerId(server),
            update: Update {
                action: Action::Add,
                route: route.parse().unwrap(),
            },
        }
    }

    fn down(server: usize) -> ClientEvent {
        ClientEvent::Down {
            server: ServerId(server),
            reason: "server closed the connection".into(),
            label: "peer_closed",
            resolved: Vec::new(),
        }
    }

    fn up(server: usize) -> ClientEvent {
        let peer: SocketAddr = "[::1]:4711".parse().unwrap();
        ClientEvent::Up {
            server: ServerId(server),
            peer,
            resolved: vec![peer],
        }
    }

    /// (configured, up, received)
    fn gauges(t: &AgentTask) -> (u64, u64, u64) {
        let s = &t.stats;
        (
            s.servers_configured.load(Relaxed),
            s.servers_up.load(Relaxed),
            s.received_routes.load(Relaxed),
        )
    }

    #[tokio::test]
    async fn gauges_follow_events_and_api_changes() {
        let (mut t, listeners, _events) = task().await;
        assert_eq!(gauges(&t), (2, 0, 0));
        event(&mut t, up(0)).await;
        event(&mut t, up(1)).await;
        assert_eq!(gauges(&t), (2, 2, 0));

        // Distinct routes, whoever provides them; a NAT next hop differing
        // only in its ports is another route.
        event(&mut t, add(0, "100#10.0.1.0/24@2001:db8::1")).await;
        event(&mut t, add(1, "100#10.0.1.0/24@2001:db8::1")).await;
        event(&mut t, add(0, "100#10.0.2.0/24@2001:db8::2")).await;
        event(&mut t, add(0, "100#10.0.3.0/24@2001:db8::3#nat#0#1023")).await;
        event(&mut t, add(0, "100#10.0.3.0/24@2001:db8::3#nat#1024#2047")).await;
        // Not subscribed: not held.
        event(&mut t, add(0, "200#10.0.4.0/24@2001:db8::4")).await;
        assert_eq!(gauges(&t), (2, 2, 4));

        // Server 0 down: only what server 1 provides is left.
        event(&mut t, down(0)).await;
        assert_eq!(gauges(&t), (2, 1, 1));
        // A failed attempt (no Up before) changes no gauge.
        event(&mut t, down(0)).await;
        assert_eq!(gauges(&t), (2, 1, 1));

        // Removing an established server through the API: not up any more,
        // its routes gone; no session down is counted for it.
        let addr1 = t.servers[&ServerId(1)].addr.clone();
        request(&mut t, |r| AgentRequest::RemoveServer(addr1, r))
            .await
            .unwrap();
        assert_eq!(gauges(&t), (1, 0, 0));
        // Events it had queued are ignored.
        event(&mut t, up(1)).await;
        event(&mut t, add(1, "100#10.0.1.0/24@2001:db8::1")).await;
        assert_eq!(gauges(&t), (1, 0, 0));

        let addr2: ServerAddr = listeners[2].local_addr().unwrap().into();
        request(&mut t, |r| AgentRequest::AddServer(addr2.clone(), r))
            .await
            .unwrap();
        // Refused: no change.
        assert!(request(&mut t, |r| AgentRequest::AddServer(addr2, r))
            .await
            .is_err());
        assert_eq!(gauges(&t), (2, 0, 0));

        // Unsubscribing drops the VNI's received routes.
        event(&mut t, up(0)).await;
        event(&mut t, add(0, "100#10.0.1.0/24@2001:db8::1")).await;
        assert_eq!(gauges(&t), (2, 1, 1));
        request(&mut t, |r| AgentRequest::Unsubscribe(Vni(100), r))
            .await
            .unwrap();
        assert_eq!(gauges(&t), (2, 1, 0));
        // No route was installed (no table mapped): nothing counted.
        assert!(t.stats.installed_routes().is_empty());
        assert_eq!(t.stats.netlink_replace.ok.load(Relaxed), 0);
    }
}
