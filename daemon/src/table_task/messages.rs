//! What the table task accepts and what it answers: the vocabulary every
//! caller (sessions, API, status page, metrics, config) uses to reach the
//! route table. The task defines its own messages, so callers depend on
//! `table_task`, never on the server shell that runs the sessions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::table::log::Mailbox;
use crate::table::{is_local, PageCursor, SessionId, TableStats, VniStats};
use crate::wire::{Address, Destination, NextHopType, Route, Vni};

/// One operation of a session on the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// UPDATE ADD.
    Announce(Route),
    /// UPDATE REMOVE.
    Withdraw(Route),
    /// SUBSCRIBE; with `sync` (the session negotiated the SYNC extension,
    /// PROTOCOL.md section 8) the dump is followed by a SYNC frame in the
    /// same mail. A duplicate gets neither.
    Subscribe {
        /// The VNI.
        vni: Vni,
        /// Append a SYNC frame to the dump.
        sync: bool,
    },
    /// UNSUBSCRIBE.
    Unsubscribe(Vni),
}

/// A command for the table task.
#[derive(Debug)]
pub enum Command {
    /// Operations of one session, in the order received.
    Ops {
        /// Whose.
        session: SessionId,
        /// What, in order.
        ops: Vec<Op>,
        /// When they were read from the socket.
        received: Instant,
        /// Where the session's updates and dumps go.
        mailbox: Arc<Mailbox>,
    },
    /// Operations of the daemon itself (API or config); `done` is answered
    /// once they are applied, with how many changed something.
    LocalOps {
        /// [`crate::table::LOCAL_API`] or [`crate::table::LOCAL_CONFIG`].
        session: SessionId,
        /// What, in order.
        ops: Vec<Op>,
        /// Per operation: true if it changed what this announcer announces.
        done: oneshot::Sender<Vec<bool>>,
        /// When they were asked for.
        received: Instant,
    },
    /// A read-only question.
    Query(Query),
    /// The session ended: withdraw its routes, drop its subscriptions.
    Disconnect {
        /// Which.
        session: SessionId,
        /// When it ended.
        at: Instant,
        /// Keep its routes this long before withdrawing them (0: at once),
        /// so a successor that re-announces them takes them over without
        /// a REMOVE and an ADD reaching every subscriber (ADR 0011).
        withdraw_delay: Duration,
    },
    /// Table counts.
    Stats {
        /// Where to answer.
        reply: oneshot::Sender<TableStats>,
    },
}

/// Which routes a listing wants.
#[derive(Clone, Debug, Default)]
pub struct RouteQuery {
    /// Only this VNI.
    pub vni: Option<Vni>,
    /// Only this exact destination.
    pub dest: Option<Destination>,
    /// Only next hops with this address.
    pub next_hop: Option<Address>,
    /// Only this next-hop type.
    pub kind: Option<NextHopType>,
    /// Only routes this announcer announces.
    pub announcer: Option<AnnouncerQuery>,
}

/// Announcer filter of a [`RouteQuery`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnouncerQuery {
    /// This session.
    Session(SessionId),
    /// The daemon itself (API or config).
    Local,
}

impl RouteQuery {
    /// Whether a route with these announcers matches.
    pub fn matches(&self, route: &Route, announcers: &[SessionId]) -> bool {
        self.matches_route(route)
            && match self.announcer {
                None => true,
                Some(AnnouncerQuery::Session(s)) => announcers.contains(&s),
                Some(AnnouncerQuery::Local) => announcers.iter().any(|&a| is_local(a)),
            }
    }

    /// Whether a route matches, ignoring announcers (watches).
    pub fn matches_route(&self, route: &Route) -> bool {
        self.vni.is_none_or(|v| v == route.vni)
            && self.dest.is_none_or(|d| d == route.dest)
            && self.next_hop.is_none_or(|a| a == route.next_hop.addr)
            && self.kind.is_none_or(|k| k == route.next_hop.kind)
    }
}

/// A page of routes with their announcers.
pub type RoutePage = (Vec<(Route, Vec<SessionId>)>, Option<PageCursor>);

/// Read-only questions to the table task.
#[derive(Debug)]
pub enum Query {
    /// A page of routes.
    Routes {
        /// Which.
        query: RouteQuery,
        /// Continue after this.
        after: Option<PageCursor>,
        /// At most this many.
        limit: usize,
        /// Answer.
        reply: oneshot::Sender<RoutePage>,
    },
    /// Counts per VNI.
    Vnis {
        /// Only this VNI.
        only: Option<Vni>,
        /// Answer.
        reply: oneshot::Sender<Vec<VniStats>>,
    },
    /// Routes announced and VNIs subscribed, per session.
    Sessions {
        /// Which sessions.
        ids: Vec<SessionId>,
        /// Answer, in the same order.
        reply: oneshot::Sender<Vec<(usize, Vec<Vni>)>>,
    },
    /// Every route one session announces and the VNIs it subscribes to
    /// (a policy reload re-checks them; ADR 0028).
    SessionRoutes {
        /// Which session.
        session: SessionId,
        /// Answer: its routes (in no particular order) and subscriptions.
        reply: oneshot::Sender<(Vec<Route>, Vec<Vni>)>,
    },
    /// An atomic snapshot of the routes matching `query` and a mailbox that
    /// receives every change sealed after it.
    Watch {
        /// Which routes.
        query: RouteQuery,
        /// The watcher's lag limit in bytes (its mailbox overflows beyond).
        max_lag_bytes: u64,
        /// Answer.
        reply: oneshot::Sender<(Vec<Route>, Arc<Mailbox>)>,
    },
}
