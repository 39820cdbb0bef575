//! The hypervisor agent's decisions, without I/O (PROTOCOL.md section 5).
//!
//! A [`Planner`] is told what happened — a server came up or went down, an
//! UPDATE, an operator change, the outcome of a dataplane operation, a
//! timer — together with `now`, and answers with the [`Planned`] dataplane
//! operations to run and, through [`Planner::next_deadline`], when it wants
//! to be woken next. It owns the client role's decision state: the
//! configured servers and which are up, the subscriptions and
//! announcements ([`Desired`]), the VNI -> table mappings, the received
//! routes ([`ReceivedRoutes`]), the routes held from an earlier run or after
//! losing every server, and the failed operations to retry. It reads no
//! clock, runs no task and does no I/O: the agent ([`super::agent`]) is the
//! shell that feeds it and runs what it asks for on a
//! [`super::dataplane::Dataplane`].
//!
//! Each [`Change`] of a mapped VNI becomes a replace (next hops left) or a
//! delete (none left) in every table the VNI is mapped to. A failed
//! operation is logged with the route and the table and, whatever the error,
//! retried every [`RETRY_INTERVAL`] with the then-current desired state: even
//! an error that looks permanent may go away when the desired state or the
//! device changes.
//!
//! No data-plane flap on restarts (issue 4):
//!
//! - At start ([`Planner::start`]) the planner dumps every mapped table and
//!   holds the routes found, unless `flush_at_start` is set, which deletes
//!   them. Held routes are never deleted before the reconciliation; a held
//!   (table, prefix) that a server sends is replaced in place. The
//!   reconciliation runs when the hold time has passed since start, or
//!   earlier once every configured server is established and has delivered
//!   its dump. A server that negotiated the SYNC extension (PROTOCOL.md
//!   section 8) says so exactly: it has delivered its dumps once it sent a
//!   SYNC for every subscribed VNI ([`Planner::synced`]), and the
//!   reconciliation runs at that event, without waiting. For a server
//!   without SYNC (a reference server) it is approximated as "established
//!   and no UPDATE from it for [`QUIET_AFTER_DUMP`]". It deletes every held route the received routes
//!   do not confirm and replaces the confirmed ones with the current next
//!   hops (usually a no-op).
//! - When the last established server goes down, the dataplane keeps what
//!   it has: the server's routes are dropped from the received routes but
//!   not from the dataplane, and every installed route becomes held for the
//!   stale time. If no server comes back in time, the held routes are deleted
//!   when it expires. If one comes back, the reconciliation runs as soon as
//!   that server has delivered its dump (or at the latest the hold time after
//!   it came back). While at least one other server is up, a server's Down
//!   applies at once.
//!
//! Operator changes ([`ClientChange`]) are checked ([`Planner::check`])
//! before the agent stores them, and applied after: an unsubscribed VNI's
//! received routes are dropped (updates of VNIs not subscribed are ignored),
//! a mapping change installs the VNI's current routes into the new table and
//! deletes them from the old ones.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

mod announcements;
mod feed;

pub use feed::FeedEvent;

pub use announcements::{
    check_owner, Announcements, DeltaKind, OwnerDelta, CONFIG_OWNER, DEFAULT_OWNER, MAX_OWNER_LEN,
};

use super::connection::{ClientCommand, Desired};
use super::dataplane::{DataplaneOp, Executed};
use super::received::MAX_SERVERS;
use super::{Change, ReceivedRoutes, ServerAddr, ServerId};
use crate::kernel::{KernelError, KernelRoute, Prefix};
use crate::wire::{Action, Destination, Route, Update, Vni};

/// Interval between retries of failed dataplane operations.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// A session established with no UPDATE for this long is taken as having
/// delivered its subscription dumps, for servers without the SYNC extension
/// (MetalBond v1 has no end-of-dump marker; SYNC servers say so exactly).
pub const QUIET_AFTER_DUMP: Duration = Duration::from_secs(1);
/// Default hold time after start (`--hold-time`).
pub const DEFAULT_HOLD_TIME: Duration = Duration::from_secs(30);
/// Default stale time after losing every server (`--stale-time`).
pub const DEFAULT_STALE_TIME: Duration = Duration::from_secs(60);

/// The one rule for routing tables (configuration, API, planner): table 0
/// (`RT_TABLE_UNSPEC`) means "main" on add and "all" on delete, so it is
/// never valid. The error reads after a field name: `table: 0 is ...`.
pub fn check_table(table: u32) -> Result<u32, &'static str> {
    if table == 0 {
        return Err("0 is not a valid routing table");
    }
    Ok(table)
}

/// An operator change of the client role (the API's ClientService).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientChange {
    /// Connect to one more server.
    AddServer(ServerAddr),
    /// Stop using a server.
    RemoveServer(ServerAddr),
    /// Subscribe to a VNI.
    Subscribe(Vni),
    /// Unsubscribe from a VNI.
    Unsubscribe(Vni),
    /// Map a VNI to exactly one table.
    SetMapping(Vni, u32),
    /// Remove a VNI's mapping.
    RemoveMapping(Vni),
    /// `owner` announces `routes` too (ADR 0021). Unless `allow_existing`,
    /// a route the owner announces already is ALREADY_EXISTS.
    Announce {
        /// The owner (checked: [`check_owner`]).
        owner: String,
        /// The routes (`routes[i]` in messages).
        routes: Vec<Route>,
        /// Routes the owner announces already are no error.
        allow_existing: bool,
    },
    /// `owner` stops announcing `routes`. Unless `allow_missing`, a route
    /// the owner does not announce is NOT_FOUND.
    Withdraw {
        /// The owner.
        owner: String,
        /// The routes.
        routes: Vec<Route>,
        /// Routes the owner does not announce are no error.
        allow_missing: bool,
    },
    /// `owner`'s routes become exactly `routes` (empty: none).
    SetAnnouncements {
        /// The owner.
        owner: String,
        /// The complete set.
        routes: Vec<Route>,
    },
}

impl ClientChange {
    /// The difference an announcement change makes to its owner's set,
    /// given the current `announced` (`None` for other changes).
    fn owner_delta(&self, announced: &Announcements) -> Option<OwnerDelta> {
        let (owner, routes, how) = match self {
            ClientChange::Announce { owner, routes, .. } => (owner, routes, DeltaKind::Announce),
            ClientChange::Withdraw { owner, routes, .. } => (owner, routes, DeltaKind::Withdraw),
            ClientChange::SetAnnouncements { owner, routes } => (owner, routes, DeltaKind::Exact),
            _ => return None,
        };
        Some(announced.delta(owner, routes, how))
    }
}

/// Why the agent refused a change; each message is the full text the API
/// returns (field name first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Bad input.
    Invalid(String),
    /// It is there already.
    AlreadyExists(String),
    /// It is not there.
    NotFound(String),
    /// It cannot be done in this state.
    Precondition(String),
    /// The state store failed; nothing was applied.
    Unavailable(String),
    /// The store's worker failed; nothing was applied.
    Internal(String),
}

impl Refused {
    /// The message (field name first), whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            Refused::Invalid(m)
            | Refused::AlreadyExists(m)
            | Refused::NotFound(m)
            | Refused::Precondition(m)
            | Refused::Unavailable(m)
            | Refused::Internal(m) => m,
        }
    }
}

/// One received route, as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedEntry {
    /// The route.
    pub route: Route,
    /// The servers that provide it.
    pub servers: Vec<ServerAddr>,
    /// The tables its destination is installed in (as far as the agent
    /// knows: mapped, installable, and no failed operation pending).
    pub installed_tables: Vec<u32>,
}

/// Why the planner asked for an operation; given back with its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Bring (table, VNI, destination) to the received routes' next hops.
    Route {
        /// The route's VNI.
        vni: Vni,
        /// The route's destination.
        dest: Destination,
        /// A retry of an operation that failed.
        retrying: bool,
    },
    /// Delete a held route the servers did not confirm.
    Unconfirmed {
        /// A retry of a deletion that failed.
        retrying: bool,
    },
    /// A dump or a deletion of the sweep at start or at exit (not a route
    /// change of this run: not counted as one).
    Sweep,
}

impl Purpose {
    /// Whether the operation changes a route this run manages (counted as
    /// a kernel change or error, and in the installed-routes gauges).
    pub fn is_route_change(&self) -> bool {
        !matches!(self, Purpose::Sweep)
    }
}

/// A dataplane operation and why it was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// What to run.
    pub op: DataplaneOp,
    /// Why (hand it back to [`Planner::completed`]).
    pub purpose: Purpose,
}

/// The planner's start settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannerConfig {
    /// The configured servers, with their ids.
    pub servers: Vec<(ServerId, ServerAddr)>,
    /// Subscriptions (deduplicated) and announcements (also the
    /// loop-prevention set).
    pub desired: Desired,
    /// VNI -> tables.
    pub tables: BTreeMap<Vni, BTreeSet<u32>>,
    /// Ignore received routes with an IPv6 destination.
    pub ipv4_only: bool,
    /// Hold time after start (and after a server is back).
    pub hold_time: Duration,
    /// How long installed routes stay after the last server was lost.
    pub stale_time: Duration,
    /// Delete the routes found at start instead of holding them.
    pub flush_at_start: bool,
}

/// Whether routes are being held back from deletion.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Changes apply at once.
    Normal,
    /// Held routes wait for the servers' resync; reconcile at `deadline`, or
    /// earlier once every configured server (`all_servers`) or any one
    /// server has been established and quiet for [`QUIET_AFTER_DUMP`].
    Hold {
        since: Instant,
        deadline: Instant,
        all_servers: bool,
    },
    /// Every server is lost; held routes are deleted at `deadline` unless a
    /// server comes back.
    Stale { deadline: Instant },
}

/// A dump-then-delete (or dump-then-hold) of the mapped tables in progress.
#[derive(Debug)]
struct Sweep {
    /// Delete what is found (else hold it); the log's `what`.
    delete: Option<&'static str>,
    dumps_pending: usize,
    deletes_pending: usize,
    found: BTreeSet<(u32, Prefix)>,
    deleted: usize,
}

/// One configured server.
#[derive(Clone, Debug)]
struct Server {
    addr: ServerAddr,
    /// When it last sent an UPDATE or came up; `None` while it is down.
    quiet_since: Option<Instant>,
    /// The current session negotiated SYNC: the VNIs whose dump it has
    /// completed on this session, and when the last one was; `None` for a
    /// server without SYNC (or down).
    sync: Option<Synced>,
}

/// The SYNCs a server sent on its current session.
#[derive(Clone, Debug, Default)]
struct Synced {
    vnis: BTreeSet<Vni>,
    last: Option<Instant>,
}

impl Server {
    fn new(addr: ServerAddr) -> Server {
        Server {
            addr,
            quiet_since: None,
            sync: None,
        }
    }

    /// When this server had delivered the dumps of every VNI in
    /// `subscriptions`, as far as known: at its last needed SYNC if it
    /// negotiated SYNC (`None` until then), else [`QUIET_AFTER_DUMP`] after
    /// its last UPDATE. `None` while it is down.
    fn resynced_at(&self, subscriptions: &[Vni]) -> Option<Instant> {
        let up = self.quiet_since?;
        match &self.sync {
            Some(sync) => subscriptions
                .iter()
                .all(|v| sync.vnis.contains(v))
                .then(|| sync.last.unwrap_or(up)),
            None => Some(up + QUIET_AFTER_DUMP),
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Planner {
    /// Configured servers (ids of removed servers are never reused).
    servers: BTreeMap<ServerId, Server>,
    /// The one subscription set (and the announcements); connection tasks
    /// start from a copy.
    desired: Desired,
    /// The announcements by owner; `desired.announcements` is their union.
    announced: Announcements,
    tables: BTreeMap<Vni, BTreeSet<u32>>,
    ipv4_only: bool,
    /// A dataplane is there to run operations (without one, none are asked).
    dataplane: bool,
    received: ReceivedRoutes,
    /// (table, VNI, destination) whose last operation failed, to retry.
    retry: BTreeSet<(u32, Vni, Destination)>,
    /// Reconciliation deletions that failed, to retry.
    held_retry: BTreeSet<(u32, Prefix)>,
    /// When the failed operations are retried next.
    retry_at: Option<Instant>,
    /// Routes not deleted before the next reconciliation.
    held: BTreeSet<(u32, Prefix)>,
    mode: Mode,
    sweep: Option<Sweep>,
    hold_time: Duration,
    stale_time: Duration,
    flush_at_start: bool,
    /// The received-routes feed's synced VNIs.
    feed: feed::FeedSync,
}

/// The kernel prefix of a MetalBond destination.
pub fn prefix_of(dest: Destination) -> Prefix {
    Prefix::new(dest.addr.to_ip(), dest.prefix_len)
}

impl Planner {
    /// A planner in normal mode; `dataplane` says whether operations can be
    /// run (see [`Planner::set_dataplane`]).
    pub fn new(config: PlannerConfig, dataplane: bool) -> Planner {
        let mut received = ReceivedRoutes::new();
        let _ = received
            .set_local_announcements(config.desired.announcements.iter().map(|r| (r.vni, r.dest)));
        let mut announced = Announcements::default();
        let configured: Vec<Route> = config.desired.announcements.iter().copied().collect();
        announced.apply(&announced.delta(CONFIG_OWNER, &configured, DeltaKind::Exact));
        let feed = feed::FeedSync::new(&config.desired.subscriptions);
        Planner {
            feed,
            servers: config
                .servers
                .into_iter()
                .map(|(id, addr)| (id, Server::new(addr)))
                .collect(),
            desired: config.desired,
            announced,
            tables: config.tables,
            ipv4_only: config.ipv4_only,
            dataplane,
            received,
            retry: BTreeSet::new(),
            held_retry: BTreeSet::new(),
            retry_at: None,
            held: BTreeSet::new(),
            mode: Mode::Normal,
            sweep: None,
            hold_time: config.hold_time,
            stale_time: config.stale_time,
            flush_at_start: config.flush_at_start,
        }
    }

    /// A dataplane is there from now on (opened for a first mapping).
    pub fn set_dataplane(&mut self) {
        self.dataplane = true;
    }

    /// Whether a dataplane is there.
    pub fn has_dataplane(&self) -> bool {
        self.dataplane
    }

    /// Subscriptions and announcements, what a new connection starts from.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The VNI -> tables mappings.
    pub fn tables(&self) -> &BTreeMap<Vni, BTreeSet<u32>> {
        &self.tables
    }

    /// The configured servers and whether each is up, by id.
    pub fn servers(&self) -> impl Iterator<Item = (ServerId, &ServerAddr, bool)> {
        self.servers
            .iter()
            .map(|(&id, s)| (id, &s.addr, s.quiet_since.is_some()))
    }

    /// The address of a configured server.
    pub fn server_addr(&self, server: ServerId) -> Option<&ServerAddr> {
        self.servers.get(&server).map(|s| &s.addr)
    }

    /// Number of configured servers.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// Number of servers whose session is established.
    pub fn up_count(&self) -> usize {
        self.servers
            .values()
            .filter(|s| s.quiet_since.is_some())
            .count()
    }

    /// Number of distinct received routes.
    pub fn received_count(&self) -> usize {
        self.received.route_count()
    }

    /// The sweep at start: dump every mapped table, to hold what is found
    /// (or delete it with `flush_at_start`). The hold time starts when the
    /// last dump completes.
    pub fn start(&mut self) -> Vec<Planned> {
        let delete = self.flush_at_start.then_some("flush at start");
        self.sweep(delete)
    }

    /// The cleanup at exit: dump every mapped table and delete what is found.
    pub fn cleanup(&mut self) -> Vec<Planned> {
        self.sweep(Some("cleanup at exit"))
    }

    fn sweep(&mut self, delete: Option<&'static str>) -> Vec<Planned> {
        if !self.dataplane {
            return Vec::new();
        }
        let tables: BTreeSet<u32> = self.tables.values().flatten().copied().collect();
        let out: Vec<Planned> = tables
            .into_iter()
            .map(|table| Planned {
                op: DataplaneOp::Dump { table },
                purpose: Purpose::Sweep,
            })
            .collect();
        self.sweep = Some(Sweep {
            delete,
            dumps_pending: out.len(),
            deletes_pending: 0,
            found: BTreeSet::new(),
            deleted: 0,
        });
        if out.is_empty() {
            // Nothing to dump: the sweep is over (a flush logs that it
            // found nothing). No time is needed: nothing is held.
            self.sweep = None;
            if let Some(what) = delete {
                info!(
                    deleted = 0,
                    found = 0,
                    what,
                    "protocol-254 routes of the mapped tables removed"
                );
            }
        }
        out
    }

    /// The session with `server` is established, without SYNC.
    pub fn server_up(&mut self, server: ServerId, now: Instant) {
        self.server_up_with(server, false, now);
    }

    /// The session with `server` is established; `sync`: it negotiated
    /// SYNC, so its dumps end with [`Planner::synced`] events.
    pub fn server_up_with(&mut self, server: ServerId, sync: bool, now: Instant) {
        let Some(s) = self.servers.get_mut(&server) else {
            return;
        };
        s.quiet_since = Some(now);
        s.sync = sync.then(Synced::default);
        if let Mode::Stale { .. } = self.mode {
            info!(%server, "a route server is back: reconciling after its resync");
            self.mode = Mode::Hold {
                since: now,
                deadline: now + self.hold_time,
                all_servers: false,
            };
        }
        self.check_feed(now);
    }

    /// An attempt or a session with `server` ended: its routes go, unless
    /// it was the last one up (then the installed routes are held for the
    /// stale time).
    pub fn server_down(&mut self, server: ServerId, now: Instant) -> Vec<Planned> {
        let Some(s) = self.servers.get_mut(&server) else {
            return Vec::new();
        };
        let was_up = s.quiet_since.take().is_some();
        s.sync = None;
        if was_up && self.up_count() == 0 && self.dataplane {
            self.enter_stale(now);
            let _ = self.received.drop_server(server);
            return Vec::new();
        }
        let changes = self.received.drop_server(server);
        // The servers left may all have synced what waits.
        self.check_feed(now);
        self.apply_changes(changes)
    }

    /// `server` sent an UPDATE.
    pub fn update(&mut self, server: ServerId, update: Update, now: Instant) -> Vec<Planned> {
        let Some(s) = self.servers.get_mut(&server) else {
            // Queued by a server removed since.
            return Vec::new();
        };
        s.quiet_since = Some(now);
        let route = update.route;
        if self.ipv4_only && route.dest.addr.is_ipv6() {
            return Vec::new();
        }
        if !self.desired.subscriptions.contains(&route.vni) {
            // Sent before an unsubscribe reached the server.
            return Vec::new();
        }
        // Debug only: a server's dump is thousands of these.
        debug!(server = server.0, action = ?update.action, %route, "received");
        let changes = match update.action {
            Action::Add => self.received.add(server, route),
            Action::Remove => self.received.remove(server, route),
        };
        self.apply_changes(changes)
    }

    /// `server` sent SYNC for `vni` (PROTOCOL.md section 8): it has sent
    /// everything it holds for `vni`. Once every server the hold waits for
    /// has synced every subscribed VNI, the held routes are reconciled at
    /// once.
    pub fn synced(&mut self, server: ServerId, vni: Vni, now: Instant) -> Vec<Planned> {
        let Some(sync) = self.servers.get_mut(&server).and_then(|s| s.sync.as_mut()) else {
            // A server removed since, or a session without SYNC.
            return Vec::new();
        };
        if sync.vnis.insert(vni) {
            sync.last = Some(now);
        }
        debug!(server = server.0, %vni, "route server synced");
        self.check_feed(now);
        let mut out = Vec::new();
        self.check_hold(now, &mut out);
        out
    }

    /// The feed events since the last call (route changes, then synced
    /// VNIs), for the agent to publish after each step.
    pub fn take_feed(&mut self) -> Vec<FeedEvent> {
        let mut out: Vec<FeedEvent> = self
            .received
            .take_deltas()
            .into_iter()
            .map(FeedEvent::from)
            .collect();
        out.extend(self.feed.take_events());
        out
    }

    /// The received routes of the VNIs `accept` accepts (sorted), and the
    /// synced VNIs among them: the start of a watch, consistent with the
    /// events taken so far ([`Planner::take_feed`]).
    pub fn feed_snapshot(&self, accept: impl Fn(Vni) -> bool) -> (Vec<Route>, Vec<Vni>) {
        let synced = self
            .feed
            .synced()
            .iter()
            .copied()
            .filter(|v| accept(*v))
            .collect();
        (self.received.route_list(accept), synced)
    }

    /// Declares synced the waiting VNIs that every established server
    /// (at least one) has sent SYNC for, or whose hold time passed.
    fn check_feed(&mut self, now: Instant) {
        let servers = &self.servers;
        self.feed.check(now, self.hold_time, |vni| {
            let mut up = servers
                .values()
                .filter(|s| s.quiet_since.is_some())
                .peekable();
            up.peek().is_some()
                && up.all(|s| s.sync.as_ref().is_some_and(|sync| sync.vnis.contains(&vni)))
        });
    }

    /// Whether `change` can be made now (the same messages the API returns).
    /// A mapping may still need a dataplane, which the agent opens.
    pub fn check(&self, change: &ClientChange) -> Result<(), Refused> {
        let configured = |addr: &ServerAddr| self.servers.values().any(|s| s.addr == *addr);
        let subscribed = |vni: &Vni| self.desired.subscriptions.contains(vni);
        match change {
            ClientChange::AddServer(addr) if configured(addr) => Err(Refused::AlreadyExists(
                format!("address: server {addr} is configured already"),
            )),
            ClientChange::AddServer(_) if self.servers.len() >= MAX_SERVERS => {
                Err(Refused::Precondition(format!(
                    "address: {MAX_SERVERS} route servers are configured, the most the client role takes"
                )))
            }
            ClientChange::RemoveServer(addr) if !configured(addr) => Err(Refused::NotFound(
                format!("address: server {addr} is not configured"),
            )),
            ClientChange::Subscribe(vni) if subscribed(vni) => Err(Refused::AlreadyExists(
                format!("vni: {vni} is subscribed already"),
            )),
            ClientChange::Unsubscribe(vni) if !subscribed(vni) => {
                Err(Refused::NotFound(format!("vni: {vni} is not subscribed")))
            }
            ClientChange::SetMapping(_, table) => check_table(*table)
                .map(drop)
                .map_err(|why| Refused::Invalid(format!("table: {why}"))),
            ClientChange::RemoveMapping(vni) if !self.tables.contains_key(vni) => {
                Err(Refused::NotFound(format!("vni: {vni} is not mapped")))
            }
            ClientChange::Announce {
                owner,
                routes,
                allow_existing,
            } => {
                self.check_owner_routes(owner, routes)?;
                match routes.iter().position(|r| self.announced.owns(owner, r)) {
                    Some(i) if !allow_existing => Err(Refused::AlreadyExists(format!(
                        "routes[{i}]: {} is announced by owner {owner:?} already",
                        routes[i]
                    ))),
                    _ => Ok(()),
                }
            }
            ClientChange::Withdraw {
                owner,
                routes,
                allow_missing,
            } => {
                self.check_owner_routes(owner, routes)?;
                match routes.iter().position(|r| !self.announced.owns(owner, r)) {
                    Some(i) if !allow_missing => Err(Refused::NotFound(format!(
                        "routes[{i}]: {} is not announced by owner {owner:?}",
                        routes[i]
                    ))),
                    _ => Ok(()),
                }
            }
            ClientChange::SetAnnouncements { owner, routes } => {
                check_owner(owner)
                    .map(drop)
                    .map_err(|why| Refused::Invalid(format!("owner: {why}")))?;
                self.check_duplicates(routes)
            }
            _ => Ok(()),
        }
    }

    /// The owner is a valid API owner and the list names each route once.
    fn check_owner_routes(&self, owner: &str, routes: &[Route]) -> Result<(), Refused> {
        check_owner(owner)
            .map(drop)
            .map_err(|why| Refused::Invalid(format!("owner: {why}")))?;
        if routes.is_empty() {
            return Err(Refused::Invalid(
                "routes: at least one route is required".into(),
            ));
        }
        self.check_duplicates(routes)
    }

    /// A route given twice is a caller's mistake, named by both indexes.
    fn check_duplicates(&self, routes: &[Route]) -> Result<(), Refused> {
        let mut first = std::collections::HashMap::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            if let Some(j) = first.insert(*r, i) {
                return Err(Refused::Invalid(format!(
                    "routes[{i}]: {r} is given twice (also routes[{j}])"
                )));
            }
        }
        Ok(())
    }

    /// The difference an announcement change (checked first) makes to its
    /// owner's routes; `None` for other changes. Stored by the agent before
    /// it is applied ([`Planner::apply_announcements`]).
    pub fn announcement_delta(&self, change: &ClientChange) -> Option<OwnerDelta> {
        change.owner_delta(&self.announced)
    }

    /// The difference `routes` makes to `owner`'s set, read as `how`,
    /// without the API's checks (a configuration reload's change of the
    /// reserved owner [`CONFIG_OWNER`]).
    pub fn announced_delta(&self, owner: &str, routes: &[Route], how: DeltaKind) -> OwnerDelta {
        self.announced.delta(owner, routes, how)
    }

    /// Applies an owner's difference: the routes that appear on or leave
    /// the wire (reference-counted over owners) become the commands every
    /// connection gets, and the loop-prevention set follows (received
    /// routes of a destination announced here are not installed).
    pub fn apply_announcements(
        &mut self,
        delta: &OwnerDelta,
    ) -> (Vec<ClientCommand>, Vec<Planned>) {
        let (appear, leave) = self.announced.apply(delta);
        let mut commands = Vec::with_capacity(appear.len() + leave.len());
        for &r in &leave {
            self.desired.apply(ClientCommand::Withdraw(r));
            commands.push(ClientCommand::Withdraw(r));
        }
        for &r in &appear {
            self.desired.apply(ClientCommand::Announce(r));
            commands.push(ClientCommand::Announce(r));
        }
        if commands.is_empty() {
            return (commands, Vec::new());
        }
        let changes = self.received.change_local_announcements(&appear, &leave);
        (commands, self.apply_changes(changes))
    }

    /// Every announced route with its owners ([`CONFIG_OWNER`] for those of
    /// the flags and the configuration file), sorted by route.
    pub fn announcements(&self) -> Vec<(Route, Vec<String>)> {
        self.announced.list()
    }

    /// A server added (its connection got `server`).
    pub fn add_server(&mut self, server: ServerId, addr: ServerAddr) {
        self.servers.insert(server, Server::new(addr));
    }

    /// The id of the configured server `addr`.
    pub fn server_id(&self, addr: &ServerAddr) -> Option<ServerId> {
        self.servers
            .iter()
            .find(|(_, s)| s.addr == *addr)
            .map(|(id, _)| *id)
    }

    /// A server removed: its routes go at once (as on a Down while another
    /// server is up), and events it had queued are ignored.
    pub fn remove_server(&mut self, server: ServerId, now: Instant) -> Vec<Planned> {
        self.servers.remove(&server);
        let changes = self.received.drop_server(server);
        self.check_feed(now);
        self.apply_changes(changes)
    }

    /// Subscribes to `vni` (checked first).
    pub fn subscribe(&mut self, vni: Vni) {
        self.desired.apply(ClientCommand::Subscribe(vni));
        self.feed.subscribed(vni);
        // A SYNC for `vni` of an earlier subscription says nothing about
        // the dump of this one (it comes after the new SUBSCRIBE's dump).
        for sync in self.servers.values_mut().filter_map(|s| s.sync.as_mut()) {
            sync.vnis.remove(&vni);
        }
    }

    /// Unsubscribes from `vni` (checked first): its received routes go, as
    /// the server sends no withdrawals for an unsubscribe.
    pub fn unsubscribe(&mut self, vni: Vni) -> Vec<Planned> {
        self.desired.apply(ClientCommand::Unsubscribe(vni));
        self.feed.unsubscribed(vni);
        let provided: Vec<(Route, Vec<ServerId>)> = self
            .received
            .routes(Some(vni))
            .map(|(r, servers)| (*r, servers))
            .collect();
        let mut changes = Vec::new();
        for (route, servers) in provided {
            for id in servers {
                changes.extend(self.received.remove(id, route));
            }
        }
        self.apply_changes(changes)
    }

    /// Maps `vni` to exactly `table`, or (`None`) removes its mapping
    /// (checked first); the VNI's routes move accordingly.
    pub fn set_mapping(&mut self, vni: Vni, table: Option<u32>) -> Vec<Planned> {
        self.set_tables(vni, table.into_iter().collect())
    }

    /// Maps `vni` to exactly the tables `new` (empty: removes its mapping;
    /// no table 0, checked first), as a configuration reload does; the
    /// VNI's routes move accordingly.
    pub fn set_tables(&mut self, vni: Vni, new: BTreeSet<u32>) -> Vec<Planned> {
        let old = self.tables.get(&vni).cloned().unwrap_or_default();
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
        let mut out = Vec::new();
        for (_, dest, hops) in &routes {
            for &t in new.difference(&old) {
                self.install(t, vni, *dest, hops.clone(), false, &mut out);
            }
            for &t in old.difference(&new) {
                self.install(t, vni, *dest, Vec::new(), false, &mut out);
            }
        }
        info!(%vni, tables = ?new, old = ?old, routes = routes.len(), "table mapping changed");
        out
    }

    /// The received routes (of one VNI if given), with the servers that
    /// provide each and the tables it is installed in.
    pub fn received(&self, vni: Option<Vni>) -> Vec<ReceivedEntry> {
        self.received
            .routes(vni)
            .map(|(route, ids)| {
                let route = *route;
                let mut servers: Vec<ServerAddr> = ids
                    .iter()
                    .filter_map(|id| self.servers.get(id).map(|s| s.addr.clone()))
                    .collect();
                servers.sort();
                let hops = self.received.next_hops(route.vni, route.dest);
                let installable = self.dataplane
                    && matches!(route.next_hop.addr.to_ip(), IpAddr::V6(a) if hops.contains(&a));
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

    /// When [`Planner::on_timer`] wants to run next: the next retry of
    /// failed operations, the end of the hold or stale time, or the moment
    /// the servers will have been quiet long enough to reconcile.
    pub fn next_deadline(&self) -> Option<Instant> {
        let retry = self
            .retry_at
            .filter(|_| !self.retry.is_empty() || !self.held_retry.is_empty());
        let hold = match self.mode {
            Mode::Normal => None,
            Mode::Stale { deadline } => Some(deadline),
            Mode::Hold {
                since,
                deadline,
                all_servers,
            } => {
                let subscriptions = &self.desired.subscriptions;
                let resynced_at = |s: &Server| s.resynced_at(subscriptions);
                let resync = if all_servers {
                    // Every server up, at the latest quiet time (at once
                    // with no server at all).
                    self.servers
                        .values()
                        .map(resynced_at)
                        .try_fold(since, |acc, t| t.map(|t| acc.max(t)))
                } else {
                    self.servers.values().filter_map(resynced_at).min()
                };
                Some(resync.map_or(deadline, |r| r.min(deadline)))
            }
        };
        let feed = self.feed.deadline(self.hold_time);
        [retry, hold, feed].into_iter().flatten().min()
    }

    /// The timer fired: retries what failed if due, and reconciles if the
    /// hold or stale condition is met.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Planned> {
        let mut out = Vec::new();
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.retry_failed(&mut out);
        }
        self.check_feed(now);
        self.check_hold(now, &mut out);
        out
    }

    /// The outcome of `job`; returns the operations that follow from it
    /// (the deletions of a flush after its dumps).
    pub fn completed(
        &mut self,
        job: Planned,
        result: Result<&Executed, &KernelError>,
        now: Instant,
    ) -> Vec<Planned> {
        let mut out = Vec::new();
        match (job.purpose, job.op) {
            (
                Purpose::Route {
                    vni,
                    dest,
                    retrying,
                },
                op,
            ) => {
                let (table, next_hops) = match op {
                    DataplaneOp::Replace(r) => (r.table, r.next_hops),
                    DataplaneOp::Delete { table, .. } | DataplaneOp::Dump { table } => {
                        (table, Vec::new())
                    }
                };
                self.route_done(table, vni, dest, &next_hops, retrying, result, now);
            }
            (Purpose::Unconfirmed { retrying }, op) => {
                let DataplaneOp::Delete { table, prefix } = op else {
                    return out;
                };
                self.unconfirmed_done((table, prefix), retrying, result, now);
            }
            (Purpose::Sweep, DataplaneOp::Dump { table }) => {
                let found = match result {
                    Ok(Executed::Dumped(found)) => Some((table, found.as_slice())),
                    Ok(Executed::Done) => Some((table, &[][..])),
                    Err(e) => {
                        warn!(table, error = %e, "cannot read the protocol-254 routes of a table");
                        None
                    }
                };
                self.sweep_dumped(found, now, &mut out);
            }
            (Purpose::Sweep, DataplaneOp::Delete { table, prefix }) => {
                self.sweep_deleted(table, prefix, result);
            }
            (Purpose::Sweep, DataplaneOp::Replace(_)) => {}
        }
        out
    }

    /// One dump of the sweep is done (`None`: it failed); once all are,
    /// holds what was found (the hold time starts `now`) or asks to delete
    /// it.
    fn sweep_dumped(
        &mut self,
        found: Option<(u32, &[Prefix])>,
        now: Instant,
        out: &mut Vec<Planned>,
    ) {
        let Some(sweep) = &mut self.sweep else {
            return;
        };
        if let Some((table, prefixes)) = found {
            sweep.found.extend(prefixes.iter().map(|&p| (table, p)));
        }
        sweep.dumps_pending = sweep.dumps_pending.saturating_sub(1);
        if sweep.dumps_pending > 0 {
            return;
        }
        if sweep.delete.is_none() {
            self.held = std::mem::take(&mut sweep.found);
            self.sweep = None;
            if !self.held.is_empty() {
                info!(
                    routes = self.held.len(),
                    hold_secs = self.hold_time.as_secs_f64(),
                    "keeping the routes of an earlier run until the servers confirm them"
                );
                self.mode = Mode::Hold {
                    since: now,
                    deadline: now + self.hold_time,
                    all_servers: true,
                };
            }
            return;
        }
        sweep.deletes_pending = sweep.found.len();
        out.extend(sweep.found.iter().map(|&(table, prefix)| Planned {
            op: DataplaneOp::Delete { table, prefix },
            purpose: Purpose::Sweep,
        }));
        if sweep.deletes_pending == 0 {
            self.sweep_finished();
        }
    }

    fn sweep_deleted(
        &mut self,
        table: u32,
        prefix: Prefix,
        result: Result<&Executed, &KernelError>,
    ) {
        let Some(sweep) = &mut self.sweep else {
            return;
        };
        match result {
            Ok(_) => sweep.deleted += 1,
            Err(e) => {
                warn!(table, %prefix, error = %e, what = sweep.delete, "cannot delete route")
            }
        }
        sweep.deletes_pending = sweep.deletes_pending.saturating_sub(1);
        if sweep.deletes_pending == 0 {
            self.sweep_finished();
        }
    }

    fn sweep_finished(&mut self) {
        if let Some(sweep) = self.sweep.take() {
            info!(
                deleted = sweep.deleted,
                found = sweep.found.len(),
                what = sweep.delete,
                "protocol-254 routes of the mapped tables removed"
            );
        }
    }

    fn apply_changes(&mut self, changes: Vec<Change>) -> Vec<Planned> {
        let mut out = Vec::new();
        for change in changes {
            let Some(tables) = self.tables.get(&change.vni) else {
                continue;
            };
            for table in tables.clone() {
                self.install(
                    table,
                    change.vni,
                    change.dest,
                    change.next_hops.clone(),
                    false,
                    &mut out,
                );
            }
        }
        out
    }

    /// Asks to bring (table, dest) to `next_hops` (empty: delete), unless
    /// the deletion of a held route waits for the reconciliation.
    fn install(
        &mut self,
        table: u32,
        vni: Vni,
        dest: Destination,
        next_hops: Vec<Ipv6Addr>,
        retrying: bool,
        out: &mut Vec<Planned>,
    ) {
        if !self.dataplane {
            return;
        }
        let prefix = prefix_of(dest);
        if next_hops.is_empty() && self.held.contains(&(table, prefix)) {
            // Held until the reconciliation, which decides.
            self.retry.remove(&(table, vni, dest));
            debug!(table, %vni, %prefix, "kernel route deletion deferred to the reconciliation");
            return;
        }
        let op = if next_hops.is_empty() {
            DataplaneOp::Delete { table, prefix }
        } else {
            DataplaneOp::Replace(KernelRoute {
                table,
                dest: prefix,
                next_hops,
            })
        };
        out.push(Planned {
            op,
            purpose: Purpose::Route {
                vni,
                dest,
                retrying,
            },
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn route_done(
        &mut self,
        table: u32,
        vni: Vni,
        dest: Destination,
        next_hops: &[Ipv6Addr],
        retrying: bool,
        result: Result<&Executed, &KernelError>,
        now: Instant,
    ) {
        let prefix = prefix_of(dest);
        let key = (table, vni, dest);
        match result {
            Ok(_) => {
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
                self.retry_later(now);
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

    fn unconfirmed_done(
        &mut self,
        key: (u32, Prefix),
        retrying: bool,
        result: Result<&Executed, &KernelError>,
        now: Instant,
    ) {
        let (table, prefix) = key;
        match result {
            Ok(_) => {
                self.held_retry.remove(&key);
                debug!(table, %prefix, "unconfirmed kernel route deleted");
            }
            Err(e) => {
                self.retry_later(now);
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

    /// Schedules the retry of a failure about to be queued: a retry
    /// already scheduled stays, one left from failures since resolved does
    /// not count.
    fn retry_later(&mut self, now: Instant) {
        let idle = self.retry.is_empty() && self.held_retry.is_empty();
        if idle || self.retry_at.is_none() {
            self.retry_at = Some(now + RETRY_INTERVAL);
        }
    }

    /// Retries every failed (table, destination) with what is desired now.
    fn retry_failed(&mut self, out: &mut Vec<Planned>) {
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
            self.install(table, vni, dest, hops, true, out);
        }
        if self.held_retry.is_empty() {
            return;
        }
        let wanted = self.wanted();
        let pending: Vec<_> = self.held_retry.iter().copied().collect();
        for key in pending {
            if self.held.contains(&key) || wanted.contains_key(&key) {
                self.held_retry.remove(&key);
                continue;
            }
            out.push(unconfirmed(key, true));
        }
    }

    /// What the dataplane should hold now, per (table, prefix).
    fn wanted(&self) -> BTreeMap<(u32, Prefix), (Vni, Destination, Vec<Ipv6Addr>)> {
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
    fn enter_stale(&mut self, now: Instant) {
        let installed: Vec<(u32, Prefix)> = self.wanted().into_keys().collect();
        self.held.extend(installed);
        self.mode = Mode::Stale {
            deadline: now + self.stale_time,
        };
        warn!(
            routes = self.held.len(),
            stale_secs = self.stale_time.as_secs_f64(),
            "every route server is lost: keeping the installed routes for the stale time"
        );
    }

    /// Reconciles when the mode's condition is met.
    fn check_hold(&mut self, now: Instant, out: &mut Vec<Planned>) {
        let subscriptions = &self.desired.subscriptions;
        let resynced = |s: &Server| s.resynced_at(subscriptions).is_some_and(|t| now >= t);
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
                ..
            } => {
                let by_sync = |s: &Server| resynced(s) && s.sync.is_some();
                if now >= deadline {
                    "hold time expired"
                } else if all_servers && self.servers.values().all(by_sync) {
                    "every route server sent SYNC"
                } else if all_servers && self.servers.values().all(resynced) {
                    "every route server resynced"
                } else if !all_servers && self.servers.values().any(by_sync) {
                    "a route server sent SYNC"
                } else if !all_servers && self.servers.values().any(resynced) {
                    "a route server resynced"
                } else {
                    return;
                }
            }
        };
        self.reconcile(why, out);
    }

    /// Deletes the held routes the servers do not confirm and replaces the
    /// confirmed ones with the current next hops.
    fn reconcile(&mut self, why: &str, out: &mut Vec<Planned>) {
        self.mode = Mode::Normal;
        let held = std::mem::take(&mut self.held);
        let wanted = self.wanted();
        let (mut kept, mut deleted) = (0usize, 0usize);
        for key in held {
            match wanted.get(&key) {
                Some((vni, dest, hops)) => {
                    kept += 1;
                    self.install(key.0, *vni, *dest, hops.clone(), false, out);
                }
                None => {
                    deleted += 1;
                    out.push(unconfirmed(key, false));
                }
            }
        }
        info!(kept, deleted, reason = why, "kernel routes reconciled");
    }
}

/// The deletion of a held route the servers did not confirm.
fn unconfirmed((table, prefix): (u32, Prefix), retrying: bool) -> Planned {
    Planned {
        op: DataplaneOp::Delete { table, prefix },
        purpose: Purpose::Unconfirmed { retrying },
    }
}

#[cfg(test)]
mod tests;
