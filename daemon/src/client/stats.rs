//! Counters of the hypervisor role, read at scrape time by the metrics
//! endpoint.
//!
//! Everything a scrape reads is a plain atomic, or a small map behind a
//! mutex that is locked only when a session ends, when a routing table gets
//! its first installed route, and by the scrape itself.
//! Per frame, per read or write and per route the writers only do relaxed
//! atomic adds or stores:
//!
//! - the connection tasks ([`super::connection`]) count session ups,
//!   UPDATE frames, bytes and session ends by reason (protocol errors are
//!   the ends of that class);
//! - the agent task ([`super::agent`]) counts netlink calls, keeps the gauges
//!   of configured and established servers and of received routes, and,
//!   through `InstalledRoutes`, the routes installed per table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::kernel::Prefix;
use crate::link::EndClass;

/// Outcome counters of one kind of netlink operation.
#[derive(Debug, Default)]
pub struct NetlinkOpCounters {
    /// Calls that succeeded (a delete of a route that was already gone
    /// included).
    pub ok: AtomicU64,
    /// Calls that failed (first attempts and retries alike).
    pub failed: AtomicU64,
}

impl NetlinkOpCounters {
    /// Counts the outcome of one call.
    pub(crate) fn record<T, E>(&self, result: &Result<T, E>) {
        match result {
            Ok(_) => self.ok.fetch_add(1, Relaxed),
            Err(_) => self.failed.fetch_add(1, Relaxed),
        };
    }
}

/// Counters of the hypervisor agent (exposed as metrics). Counters only go
/// up; the fields documented as gauges go up and down.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Kernel calls that failed (first attempts and retries).
    pub kernel_errors: AtomicU64,
    /// Kernel changes applied successfully.
    pub kernel_changes: AtomicU64,
    /// Route replace (add/change) calls.
    pub netlink_replace: NetlinkOpCounters,
    /// Route delete calls (route changes, reconciliation, the flush at
    /// start, the cleanup at exit).
    pub netlink_delete: NetlinkOpCounters,
    /// Route dumps (start-up reconciliation, flush at start, cleanup at exit).
    pub netlink_dump: NetlinkOpCounters,
    /// Gauge: received routes, i.e. distinct (vni, prefix, next hop) the
    /// agent currently holds from any server (what the API's received list
    /// shows; routes of VNIs not subscribed or, with `ipv4_only`, IPv6
    /// destinations are never held). Set after each event the agent handles.
    pub received_routes: AtomicU64,
    /// Gauge: configured route servers (follows the API's add and remove).
    pub servers_configured: AtomicU64,
    /// Gauge: configured servers with an established session (follows the
    /// connections' Up and Down events, and the removal of a server).
    pub servers_up: AtomicU64,
    /// Sessions with route servers that reached ESTABLISHED.
    pub session_ups: AtomicU64,
    /// UPDATE frames received from servers (dump entries and live updates,
    /// before any filtering by the agent).
    pub updates_in: AtomicU64,
    /// UPDATE frames sent to servers (announcements and withdrawals),
    /// counted when queued for the socket.
    pub updates_out: AtomicU64,
    /// Bytes read from server sockets.
    pub bytes_in: AtomicU64,
    /// Bytes written to server sockets.
    pub bytes_out: AtomicU64,
    /// Ends of attempts and sessions, by reason label.
    session_downs: Mutex<BTreeMap<&'static str, u64>>,
    /// Per routing table, the number of routes installed in it. The agent
    /// keeps a clone of each `Arc`, so an install or delete is one atomic
    /// add; the map is locked only when a table is first used.
    installed: Mutex<BTreeMap<u32, Arc<AtomicU64>>>,
}

impl AgentStats {
    /// Attempts or sessions that ended, by reason label (a short stable
    /// snake_case label). Every end of a connection attempt counts, whether
    /// a session was established or not: a connection that could not be
    /// made counts as `connect_failed` or `connect_timeout` (a server name
    /// that did not resolve as `resolve_failed`), a handshake
    /// that timed out as `handshake_timeout_hello` or
    /// `handshake_timeout_keepalive`. Other labels: `keepalive_timeout`,
    /// `peer_closed` (the server closed the connection), `truncated_frame`
    /// (it closed it in the middle of a frame), `io_error`, and the protocol
    /// error labels (see [`AgentStats::protocol_errors`]). Removing a server
    /// through the API and shutting down are not counted.
    pub fn session_downs(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.session_downs).clone()
    }

    /// Protocol errors by reason label: the [`AgentStats::session_downs`]
    /// of class [`EndClass::ProtocolError`], i.e. malformed frames (the
    /// labels of [`crate::wire::DecodeError::label`]), `truncated_frame`
    /// and protocol violations (`zero_keepalive_interval`,
    /// `duplicate_hello`, `keepalive_before_hello`). Not timeouts, not
    /// connection failures. The metrics export the same counts (as
    /// `metalbondd_protocol_errors_total` with `role="client"`).
    pub fn protocol_errors(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.session_downs)
            .iter()
            .filter(|(label, _)| EndClass::of_label(label) == EndClass::ProtocolError)
            .map(|(&label, &n)| (label, n))
            .collect()
    }

    /// Routes currently installed in the kernel, per routing table: one per
    /// (table, prefix) the agent installed successfully and has not deleted
    /// since, i.e. what the agent believes is installed. Routes kept from an
    /// earlier run count once the reconciliation (or a server) confirmed
    /// them. A table stays listed, at 0, after its last route is deleted.
    pub fn installed_routes(&self) -> BTreeMap<u32, u64> {
        lock(&self.installed)
            .iter()
            .map(|(&table, n)| (table, n.load(Relaxed)))
            .collect()
    }

    /// Counts the end of an attempt or session.
    pub(crate) fn record_session_down(&self, label: &'static str) {
        *lock(&self.session_downs).entry(label).or_insert(0) += 1;
    }

    /// The gauge of routes installed in `table` (created at 0).
    fn installed_gauge(&self, table: u32) -> Arc<AtomicU64> {
        lock(&self.installed).entry(table).or_default().clone()
    }
}

/// Counters of one route server (what the API and the status page show
/// per server), updated by its connection task next to [`AgentStats`].
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// UPDATE frames received from the server (all its sessions).
    pub updates_in: AtomicU64,
    /// UPDATE frames sent to the server (all its sessions), counted when
    /// queued for the socket.
    pub updates_out: AtomicU64,
}

/// A counter map stays usable after a panic elsewhere.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The agent's view of what it installed in the kernel: one entry per
/// (table, prefix), kept in step with [`AgentStats::installed_routes`].
/// The agent calls [`InstalledRoutes::installed`] after every successful
/// replace and [`InstalledRoutes::removed`] after every successful delete;
/// repeated calls for the same (table, prefix) count once.
#[derive(Debug)]
pub(crate) struct InstalledRoutes {
    routes: HashSet<(u32, Prefix)>,
    /// This table's gauge in `stats`, cached so that no lock is taken.
    gauges: HashMap<u32, Arc<AtomicU64>>,
    stats: Arc<AgentStats>,
}

impl InstalledRoutes {
    /// Nothing installed yet.
    pub(crate) fn new(stats: Arc<AgentStats>) -> Self {
        InstalledRoutes {
            routes: HashSet::new(),
            gauges: HashMap::new(),
            stats,
        }
    }

    /// (table, prefix) is installed now (a replace succeeded).
    pub(crate) fn installed(&mut self, table: u32, prefix: Prefix) {
        if self.routes.insert((table, prefix)) {
            self.gauge(table).fetch_add(1, Relaxed);
        }
    }

    /// (table, prefix) is gone (a delete succeeded, or found nothing).
    pub(crate) fn removed(&mut self, table: u32, prefix: Prefix) {
        if self.routes.remove(&(table, prefix)) {
            self.gauge(table).fetch_sub(1, Relaxed);
        }
    }

    /// Whether the agent believes (table, prefix) is installed.
    #[cfg(test)]
    pub(crate) fn contains(&self, table: u32, prefix: Prefix) -> bool {
        self.routes.contains(&(table, prefix))
    }

    fn gauge(&mut self, table: u32) -> &AtomicU64 {
        let stats = &self.stats;
        self.gauges
            .entry(table)
            .or_insert_with(|| stats.installed_gauge(table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        let (a, l) = s.split_once('/').unwrap();
        Prefix::new(a.parse().unwrap(), l.parse().unwrap())
    }

    #[test]
    fn netlink_outcomes_are_counted() {
        let c = NetlinkOpCounters::default();
        c.record::<(), ()>(&Ok(()));
        c.record::<bool, &str>(&Ok(false));
        c.record::<(), &str>(&Err("boom"));
        assert_eq!(c.ok.load(Relaxed), 2);
        assert_eq!(c.failed.load(Relaxed), 1);
    }

    #[test]
    fn downs_and_protocol_errors_are_counted_by_label() {
        let s = AgentStats::default();
        assert!(s.session_downs().is_empty());
        assert!(s.protocol_errors().is_empty());
        s.record_session_down("peer_closed");
        s.record_session_down("connect_failed");
        s.record_session_down("peer_closed");
        assert_eq!(
            s.session_downs(),
            BTreeMap::from([("connect_failed", 1), ("peer_closed", 2)])
        );
        assert!(s.protocol_errors().is_empty());
        // A protocol error is a down of that class.
        s.record_session_down("bad_version");
        s.record_session_down("truncated_frame");
        s.record_session_down("keepalive_timeout");
        assert_eq!(
            s.protocol_errors(),
            BTreeMap::from([("bad_version", 1), ("truncated_frame", 1)])
        );
        assert_eq!(s.session_downs().len(), 5);
    }

    #[test]
    fn installed_routes_follow_installs_and_deletes_per_table() {
        let stats = Arc::new(AgentStats::default());
        let mut inst = InstalledRoutes::new(stats.clone());
        assert!(stats.installed_routes().is_empty());
        inst.installed(100, p("10.0.1.0/24"));
        inst.installed(100, p("10.0.2.0/24"));
        inst.installed(200, p("10.0.1.0/24"));
        // A replace of an installed route (new next hops) is no new route.
        inst.installed(100, p("10.0.1.0/24"));
        assert_eq!(
            stats.installed_routes(),
            BTreeMap::from([(100, 2), (200, 1)])
        );
        assert!(inst.contains(100, p("10.0.1.0/24")));
        inst.removed(100, p("10.0.1.0/24"));
        // Deleting what was never installed (a route kept from an earlier
        // run, or one already gone) changes nothing.
        inst.removed(100, p("10.0.1.0/24"));
        inst.removed(100, p("10.9.0.0/16"));
        inst.removed(300, p("10.0.1.0/24"));
        assert_eq!(
            stats.installed_routes(),
            BTreeMap::from([(100, 1), (200, 1)])
        );
        inst.removed(200, p("10.0.1.0/24"));
        // The emptied table stays, at 0; the never-used table 300 is absent.
        assert_eq!(
            stats.installed_routes(),
            BTreeMap::from([(100, 1), (200, 0)])
        );
        assert!(!inst.contains(200, p("10.0.1.0/24")));
    }
}
