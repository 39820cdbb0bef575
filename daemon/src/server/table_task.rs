//! The task that owns the route table and the update log.
//!
//! Sessions send it commands over one bounded channel; it applies them in
//! order, encodes what subscribers must hear into the shared log once, and
//! never waits for any session (ARCHITECTURE.md properties 3 and 4).

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::metrics::Metrics;
use crate::table::log::{Entry, LogCursor, LogWatch, LogWriter, SubscribedMarker};
use crate::table::{
    is_local, Announced, PageCursor, RouteTable, SessionId, TableStats, VniStats, Withdrawn, NOBODY,
};
use crate::wire::{encode_update, Action, Address, Destination, NextHopType, Route, Vni};

/// Commands handled per wake-up at most (then the log is sealed and published).
const BATCH: usize = 256;
/// Dump frames are grouped into buffers of about this size: big enough for
/// few syscalls, small enough that a keepalive echo is never held up long.
const DUMP_BUFFER_BYTES: usize = 16 * 1024;
/// How often to consider returning freed heap memory to the system.
const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// Only after at least this much was appended to the log since the last time.
const TRIM_AFTER_BYTES: u64 = 16 << 20;
/// Capacity of the command channel.
pub const COMMAND_QUEUE: usize = 1024;

/// One operation of a session on the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// UPDATE ADD.
    Announce(Route),
    /// UPDATE REMOVE.
    Withdraw(Route),
    /// SUBSCRIBE.
    Subscribe(Vni),
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
    /// An atomic snapshot of the routes matching `query` and a log cursor
    /// positioned exactly after it: every later change comes through the cursor.
    Watch {
        /// Which routes.
        query: RouteQuery,
        /// Answer.
        reply: oneshot::Sender<(Vec<Route>, LogCursor)>,
    },
}

/// Handle to the table task.
#[derive(Clone)]
pub struct TableHandle {
    /// Command channel.
    pub commands: mpsc::Sender<Command>,
    /// Watch of the update log, for new session cursors.
    pub log: LogWatch,
}

impl TableHandle {
    /// Current table counts (None if the task is gone).
    pub async fn stats(&self) -> Option<TableStats> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Stats { reply }).await.ok()?;
        rx.await.ok()
    }

    /// Asks a question; None if the task is gone (shutting down).
    pub async fn query<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Query) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Query(make(reply))).await.ok()?;
        rx.await.ok()
    }

    /// Applies the daemon's own operations and waits until they are in the
    /// table. Per operation: true if it changed what `session` announces.
    pub async fn local_ops(&self, session: SessionId, ops: Vec<Op>) -> Option<Vec<bool>> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::LocalOps {
                session,
                ops,
                done,
                received: Instant::now(),
            })
            .await
            .ok()?;
        rx.await.ok()
    }
}

/// Starts the table task.
pub fn spawn(metrics: Arc<Metrics>) -> TableHandle {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let log = LogWriter::new();
    let handle = TableHandle {
        commands: tx,
        log: log.watch(),
    };
    let task = TableTask {
        table: RouteTable::new(),
        log,
        metrics,
        dumped_bytes: 0,
    };
    tokio::spawn(task.run(rx));
    handle
}

struct TableTask {
    table: RouteTable,
    log: LogWriter,
    metrics: Arc<Metrics>,
    /// Bytes of SUBSCRIBE dumps encoded so far.
    dumped_bytes: u64,
}

impl TableTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut trim = tokio::time::interval(TRIM_INTERVAL);
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trimmed_at = 0u64;
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    for command in batch.drain(..) {
                        self.handle(command);
                    }
                    self.log.seal();
                }
                _ = trim.tick() => {
                    // Bursts of updates and dumps allocate log chunks that are
                    // freed once every session has sent them; give that memory
                    // back to the system instead of keeping it in the heap.
                    let churn = self.log.end() + self.dumped_bytes;
                    if churn - trimmed_at >= TRIM_AFTER_BYTES {
                        trimmed_at = churn;
                        tokio::task::spawn_blocking(release_free_memory);
                    }
                }
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Ops {
                session,
                ops,
                received,
            } => {
                self.log.set_cause_time(received);
                for op in ops {
                    self.apply(session, op, received);
                }
            }
            Command::Disconnect { session, at } => {
                self.log.set_cause_time(at);
                let log = &mut self.log;
                self.table.remove_session(session, |route| {
                    log.append_update(Action::Remove, route, session);
                });
            }
            Command::LocalOps {
                session,
                ops,
                done,
                received,
            } => {
                self.log.set_cause_time(received);
                let changed = ops
                    .into_iter()
                    .map(|op| self.apply(session, op, received))
                    .collect();
                let _ = done.send(changed);
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.table.stats());
            }
            Command::Query(query) => self.answer(query),
        }
    }

    fn answer(&mut self, query: Query) {
        match query {
            Query::Routes {
                query,
                after,
                limit,
                reply,
            } => {
                let page = self.table.page(after, limit, |route, announcers| {
                    query.matches(route, announcers)
                });
                let _ = reply.send(page);
            }
            Query::Vnis { only, reply } => {
                let _ = reply.send(self.table.vni_stats(only));
            }
            Query::Sessions { ids, reply } => {
                let answer = ids
                    .iter()
                    .map(|&s| (self.table.announced_by(s), self.table.subscriptions_of(s)))
                    .collect();
                let _ = reply.send(answer);
            }
            Query::Watch { query, reply } => {
                // Publish everything appended so far: the cursor then starts
                // exactly where this snapshot ends.
                self.log.seal();
                let mut routes = Vec::new();
                let mut collect = |route: &Route| {
                    if query.matches_route(route) {
                        routes.push(*route);
                    }
                };
                match query.vni {
                    Some(vni) => self.table.for_each_route_in(vni, NOBODY, &mut collect),
                    None => self.table.for_each_route(&mut collect),
                }
                let _ = reply.send((routes, LogCursor::new(self.log.watch())));
            }
        }
    }

    /// Applies one operation; true if it changed something for `session`.
    fn apply(&mut self, session: SessionId, op: Op, received: Instant) -> bool {
        match op {
            Op::Announce(route) => match self.table.announce(session, &route) {
                Announced::New => {
                    self.log.append_update(Action::Add, &route, session);
                    true
                }
                Announced::Joined => true,
                Announced::Duplicate => {
                    debug!(session, %route, "repeated ADD ignored");
                    false
                }
            },
            Op::Withdraw(route) => match self.table.withdraw(session, &route) {
                Withdrawn::Gone => {
                    self.log.append_update(Action::Remove, &route, session);
                    true
                }
                Withdrawn::StillAnnounced => true,
                Withdrawn::NotAnnounced => {
                    Metrics::inc(&self.metrics.unknown_withdrawals);
                    debug!(session, %route, "REMOVE of a route the session never announced ignored");
                    false
                }
            },
            Op::Subscribe(vni) => {
                if !self.table.subscribe(session, vni) {
                    Metrics::inc(&self.metrics.duplicate_subscribes);
                    debug!(session, %vni, "duplicate SUBSCRIBE ignored");
                    return false;
                }
                let (dump, routes) = self.dump(vni, session);
                self.log
                    .append_marker(Entry::Subscribed(Box::new(SubscribedMarker {
                        session,
                        vni,
                        dump,
                        routes,
                        requested_at: received,
                    })));
                true
            }
            Op::Unsubscribe(vni) => {
                if self.table.unsubscribe(session, vni) {
                    self.log.append_marker(Entry::Unsubscribed { session, vni });
                    true
                } else {
                    debug!(session, %vni, "UNSUBSCRIBE of a VNI not subscribed ignored");
                    false
                }
            }
        }
    }

    /// Encodes every route of `vni` (except `session`'s own) as ADD frames.
    fn dump(&mut self, vni: Vni, session: SessionId) -> (Vec<Bytes>, usize) {
        let mut buffers = Vec::new();
        let mut buf = BytesMut::with_capacity(DUMP_BUFFER_BYTES + 256);
        let mut routes = 0;
        self.table.for_each_route_in(vni, session, |route| {
            encode_update(Action::Add, route, &mut buf);
            routes += 1;
            if buf.len() >= DUMP_BUFFER_BYTES {
                let full =
                    std::mem::replace(&mut buf, BytesMut::with_capacity(DUMP_BUFFER_BYTES + 256));
                buffers.push(full.freeze());
            }
        });
        if !buf.is_empty() {
            buffers.push(buf.freeze());
        }
        self.dumped_bytes += buffers.iter().map(|b| b.len() as u64).sum::<u64>();
        (buffers, routes)
    }
}

/// Makes large buffers (update-log chunks, dumps, table arrays) separate
/// mappings that go back to the system as soon as they are freed, instead of
/// heap memory that glibc keeps. Call once at start.
pub fn return_large_frees_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before the heavy
    // allocations start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

/// Returns free heap pages to the system (glibc keeps them otherwise).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
