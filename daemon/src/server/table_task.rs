//! The task that owns the route table and the update log.
//!
//! Sessions send it commands over one bounded channel; it applies them in
//! order, encodes what subscribers must hear once, hands it to the
//! subscribers of each touched VNI through their mailboxes (ADR 0011), and
//! never waits for any session (ARCHITECTURE.md properties 3 and 4).

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::metrics::Metrics;
use crate::table::log::{FanOut, Mail, Mailbox};
use crate::table::{
    is_local, Announced, PageCursor, RouteTable, SessionId, TableStats, VniStats, Withdrawn, NOBODY,
};
use crate::wire::{encode_update, Action, Address, Destination, NextHopType, Route, Vni};

/// Commands handled per wake-up at most (then what they changed is delivered).
const BATCH: usize = 256;
/// Dump frames are grouped into buffers of about this size: big enough for
/// few syscalls, small enough that a keepalive echo is never held up long.
const DUMP_BUFFER_BYTES: usize = 16 * 1024;
/// Bytes an encoded IPv4 ADD frame takes, about (for sizing a dump's first buffer).
const DUMP_BYTES_PER_ROUTE: usize = 40;
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
        withdraw_delay: std::time::Duration,
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

/// Handle to the table task.
#[derive(Clone)]
pub struct TableHandle {
    /// Command channel.
    pub commands: mpsc::Sender<Command>,
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
    let handle = TableHandle { commands: tx };
    let task = TableTask {
        table: RouteTable::new(),
        log: FanOut::new(),
        expiring: Default::default(),
        metrics,
        dumped_bytes: 0,
    };
    tokio::spawn(task.run(rx));
    handle
}

struct TableTask {
    table: RouteTable,
    log: FanOut,
    /// Ended sessions whose routes are withdrawn later: (when, who), in
    /// order of time.
    expiring: std::collections::VecDeque<(Instant, SessionId)>,
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
                _ = sleep_until_opt(self.expiring.front().map(|e| e.0)) => {
                    self.expire(Instant::now());
                    self.log.seal();
                }
                _ = trim.tick() => {
                    // Bursts of updates and dumps allocate log chunks that are
                    // freed once every session has sent them; give that memory
                    // back to the system instead of keeping it in the heap.
                    let churn = self.log.sealed_bytes() + self.dumped_bytes;
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
                mailbox,
            } => {
                self.log.set_cause_time(received);
                for op in ops {
                    self.apply(session, op, received, Some(&mailbox));
                }
            }
            Command::Disconnect {
                session,
                at,
                withdraw_delay,
            } => {
                for vni in self.table.subscriptions_of(session) {
                    self.log.unsubscribe(vni, session);
                    if !withdraw_delay.is_zero() {
                        self.table.unsubscribe(session, vni);
                    }
                }
                if withdraw_delay.is_zero() {
                    self.withdraw_all(session, at);
                } else {
                    let when = at + withdraw_delay;
                    let i = self.expiring.partition_point(|e| e.0 <= when);
                    self.expiring.insert(i, (when, session));
                }
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
                    .map(|op| self.apply(session, op, received, None))
                    .collect();
                let _ = done.send(changed);
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.table.stats());
            }
            Command::Query(query) => self.answer(query),
        }
    }

    /// Withdraws every route `session` announced (those left without an
    /// announcer reach the subscribers as REMOVEs) and forgets it.
    fn withdraw_all(&mut self, session: SessionId, at: Instant) {
        self.log.set_cause_time(at);
        let log = &mut self.log;
        self.table.remove_session(session, |route| {
            log.append_update(Action::Remove, route, session);
        });
    }

    /// Withdraws the routes of ended sessions whose delay is over.
    fn expire(&mut self, now: Instant) {
        while let Some(&(when, session)) = self.expiring.front() {
            if when > now {
                break;
            }
            self.expiring.pop_front();
            self.withdraw_all(session, when);
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
            Query::Watch {
                query,
                max_lag_bytes,
                reply,
            } => {
                // Deliver everything appended so far: the watcher's mailbox
                // then starts exactly where this snapshot ends.
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
                let mailbox = Mailbox::new(max_lag_bytes);
                self.log.watch(query.vni, mailbox.clone());
                let _ = reply.send((routes, mailbox));
            }
        }
    }

    /// Applies one operation; true if it changed something for `session`.
    /// `mailbox` is where a SUBSCRIBE's dump and later updates go (none for
    /// the daemon's own operations, which never subscribe).
    fn apply(
        &mut self,
        session: SessionId,
        op: Op,
        received: Instant,
        mailbox: Option<&Arc<Mailbox>>,
    ) -> bool {
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
                let Some(mailbox) = mailbox else {
                    return true;
                };
                // Updates appended before go to the earlier subscribers only
                // (they are in the dump); later ones to this one too.
                self.log.seal_vni(vni);
                self.log.subscribe(vni, session, mailbox.clone());
                let (frames, routes) = self.dump(vni, session);
                mailbox.push(Mail::Dump {
                    vni,
                    frames,
                    routes,
                    requested_at: received,
                });
                true
            }
            Op::Unsubscribe(vni) => {
                if self.table.unsubscribe(session, vni) {
                    // It still hears what was appended before its UNSUBSCRIBE.
                    self.log.seal_vni(vni);
                    self.log.unsubscribe(vni, session);
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
        // Sized to the VNI (most are small in a fleet: 50,000 dumps in a
        // reconnect storm must not each take 16 KiB); grows if IPv6 needs more.
        let first = (self.table.routes_in(vni) * DUMP_BYTES_PER_ROUTE).min(DUMP_BUFFER_BYTES) + 256;
        let mut buf = BytesMut::with_capacity(first);
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

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
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

#[cfg(test)]
mod tests {
    //! The table task's fan-out against a naive model: every subscriber of
    //! a VNI (and only it) hears each ADD/REMOVE exactly once, never its
    //! own, in order, and its dump sits exactly between the updates before
    //! and after its SUBSCRIBE, wherever the batches are sealed.
    use super::*;
    use crate::wire::{decode_frame, Frame, Message, Update};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    /// What a subscriber sees of one VNI, in order.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Seen {
        Dump(BTreeSet<Route>),
        Add(Route),
        Remove(Route),
    }

    #[derive(Clone, Debug)]
    enum Step {
        Announce(usize, usize),
        Withdraw(usize, usize),
        Subscribe(usize, u32),
        Unsubscribe(usize, u32),
        /// The session of this slot ends (its routes withdrawn at once, or
        /// only at the next `Expire`); a new one takes the slot.
        Disconnect(usize, bool),
        /// Delayed withdrawals fall due.
        Expire,
        /// End of a batch.
        Seal,
    }

    const SLOTS: usize = 4;

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            5 => (0..SLOTS, 0usize..16).prop_map(|(s, r)| Step::Announce(s, r)),
            3 => (0..SLOTS, 0usize..16).prop_map(|(s, r)| Step::Withdraw(s, r)),
            2 => (0..SLOTS, 1u32..4).prop_map(|(s, v)| Step::Subscribe(s, v)),
            1 => (0..SLOTS, 1u32..4).prop_map(|(s, v)| Step::Unsubscribe(s, v)),
            1 => (0..SLOTS, any::<bool>()).prop_map(|(s, d)| Step::Disconnect(s, d)),
            1 => Just(Step::Expire),
            2 => Just(Step::Seal),
        ]
    }

    fn universe() -> Vec<Route> {
        (0..16)
            .map(|i| {
                format!("{}#10.0.{}.0/24@2001:db8::{}", i % 3 + 1, i % 4, i % 2 + 1)
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    fn task() -> TableTask {
        TableTask {
            table: RouteTable::new(),
            log: FanOut::new(),
            expiring: Default::default(),
            metrics: Arc::new(Metrics::default()),
            dumped_bytes: 0,
        }
    }

    fn decode_all(bytes: &[u8]) -> Vec<Update> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(frame) = decode_frame(&mut buf).unwrap() {
            let Frame::Message(Message::Update(u)) = frame else {
                panic!("not an UPDATE: {frame:?}");
            };
            out.push(u);
        }
        assert!(buf.is_empty(), "a partial frame was delivered");
        out
    }

    /// Takes a mailbox's mail, appended to `seen` per VNI.
    fn collect(mailbox: &Mailbox, seen: &mut BTreeMap<u32, Vec<Seen>>) {
        mailbox.take_while(|mail| {
            match mail {
                Mail::Updates { frames, count, .. } => {
                    let updates = decode_all(&frames);
                    assert_eq!(updates.len(), count as usize);
                    for u in updates {
                        seen.entry(u.route.vni.0).or_default().push(match u.action {
                            Action::Add => Seen::Add(u.route),
                            Action::Remove => Seen::Remove(u.route),
                        });
                    }
                }
                Mail::Dump {
                    vni,
                    frames,
                    routes,
                    ..
                } => {
                    let set: BTreeSet<Route> = frames
                        .iter()
                        .flat_map(|f| decode_all(f))
                        .map(|u| {
                            assert_eq!(u.action, Action::Add);
                            assert_eq!(u.route.vni, vni);
                            u.route
                        })
                        .collect();
                    assert_eq!(set.len(), routes);
                    seen.entry(vni.0).or_default().push(Seen::Dump(set));
                }
            }
            Ok(())
        });
    }

    /// Between two dumps, the order of updates of different routes is free
    /// (a session's end withdraws its routes in any order): keep each
    /// route's own sequence, and the dumps where they are.
    type Segments = Vec<(Option<BTreeSet<Route>>, BTreeMap<Route, Vec<bool>>)>;

    fn per_route(list: Vec<Seen>) -> Segments {
        let mut out: Segments = vec![(None, BTreeMap::new())];
        for seen in list {
            match seen {
                Seen::Dump(set) => out.push((Some(set), BTreeMap::new())),
                Seen::Add(r) => out.last_mut().unwrap().1.entry(r).or_default().push(true),
                Seen::Remove(r) => out.last_mut().unwrap().1.entry(r).or_default().push(false),
            }
        }
        out
    }

    /// The naive model: who announces what, who subscribes to what, and
    /// what each session must have seen per VNI.
    #[derive(Default)]
    struct Model {
        announcers: BTreeMap<Route, BTreeSet<SessionId>>,
        subs: BTreeMap<SessionId, BTreeSet<u32>>,
        expect: HashMap<SessionId, BTreeMap<u32, Vec<Seen>>>,
    }

    impl Model {
        /// `s` leaves every announcer set; routes left without one are
        /// withdrawn from the subscribers.
        fn withdraw_all(&mut self, s: SessionId) {
            let gone: Vec<Route> = self
                .announcers
                .iter_mut()
                .filter_map(|(r, set)| (set.remove(&s) && set.is_empty()).then_some(*r))
                .collect();
            for r in gone {
                self.tell(s, r, Seen::Remove(r));
            }
        }

        fn tell(&mut self, origin: SessionId, route: Route, seen: Seen) {
            for (s, vnis) in &self.subs {
                if *s != origin && vnis.contains(&route.vni.0) {
                    self.expect
                        .entry(*s)
                        .or_default()
                        .entry(route.vni.0)
                        .or_default()
                        .push(seen.clone());
                }
            }
        }
    }

    fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
        let routes = universe();
        let mut t = task();
        let mut model = Model::default();
        let mut ids: Vec<SessionId> = (0..SLOTS as u32).map(|i| 100 + i).collect();
        let mut next_id = 200;
        let mut boxes: HashMap<SessionId, Arc<Mailbox>> = HashMap::new();
        let mut seen: HashMap<SessionId, BTreeMap<u32, Vec<Seen>>> = HashMap::new();
        let at = Instant::now();
        let mut ghosts: Vec<SessionId> = Vec::new();
        for step in steps {
            let ops = |session: SessionId, op: Op, boxes: &mut HashMap<SessionId, Arc<Mailbox>>| {
                Command::Ops {
                    session,
                    ops: vec![op],
                    received: at,
                    mailbox: boxes
                        .entry(session)
                        .or_insert_with(|| Mailbox::new(u64::MAX))
                        .clone(),
                }
            };
            match step {
                Step::Announce(slot, i) => {
                    let (s, r) = (ids[slot], routes[i]);
                    let set = model.announcers.entry(r).or_default();
                    let new = set.is_empty() && set.insert(s);
                    set.insert(s);
                    if new {
                        model.tell(s, r, Seen::Add(r));
                    }
                    t.handle(ops(s, Op::Announce(r), &mut boxes));
                }
                Step::Withdraw(slot, i) => {
                    let (s, r) = (ids[slot], routes[i]);
                    let set = model.announcers.entry(r).or_default();
                    if set.remove(&s) && set.is_empty() {
                        model.tell(s, r, Seen::Remove(r));
                    }
                    t.handle(ops(s, Op::Withdraw(r), &mut boxes));
                }
                Step::Subscribe(slot, v) => {
                    let s = ids[slot];
                    if model.subs.entry(s).or_default().insert(v) {
                        let dump = model
                            .announcers
                            .iter()
                            .filter(|(r, set)| r.vni.0 == v && !set.is_empty() && !set.contains(&s))
                            .map(|(r, _)| *r)
                            .collect();
                        model
                            .expect
                            .entry(s)
                            .or_default()
                            .entry(v)
                            .or_default()
                            .push(Seen::Dump(dump));
                    }
                    t.handle(ops(s, Op::Subscribe(Vni(v)), &mut boxes));
                }
                Step::Unsubscribe(slot, v) => {
                    let s = ids[slot];
                    model.subs.entry(s).or_default().remove(&v);
                    t.handle(ops(s, Op::Unsubscribe(Vni(v)), &mut boxes));
                }
                Step::Disconnect(slot, delayed) => {
                    let s = ids[slot];
                    ids[slot] = next_id;
                    next_id += 1;
                    // As the session shell does: it stops hearing first.
                    if let Some(b) = boxes.get(&s) {
                        b.close();
                    }
                    model.subs.remove(&s);
                    model.expect.remove(&s);
                    seen.remove(&s);
                    if delayed {
                        ghosts.push(s);
                    } else {
                        model.withdraw_all(s);
                    }
                    t.handle(Command::Disconnect {
                        session: s,
                        at,
                        withdraw_delay: if delayed {
                            std::time::Duration::from_secs(1)
                        } else {
                            std::time::Duration::ZERO
                        },
                    });
                }
                Step::Expire => {
                    for s in ghosts.drain(..) {
                        model.withdraw_all(s);
                    }
                    t.expire(at + std::time::Duration::from_secs(2));
                }
                Step::Seal => t.log.seal(),
            }
            // Readers take their mail at arbitrary moments.
            for (s, b) in &boxes {
                if !b.is_closed() {
                    collect(b, seen.entry(*s).or_default());
                }
            }
        }
        t.log.seal();
        for (s, b) in &boxes {
            if !b.is_closed() {
                collect(b, seen.entry(*s).or_default());
            }
        }
        for s in ids {
            let got = seen.remove(&s).unwrap_or_default();
            let want = model.expect.remove(&s).unwrap_or_default();
            let got: BTreeMap<_, _> = got
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(v, l)| (v, per_route(l)))
                .collect();
            let want: BTreeMap<_, _> = want.into_iter().map(|(v, l)| (v, per_route(l))).collect();
            prop_assert_eq!(got, want, "session {}", s);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn subscribers_hear_exactly_their_vnis_in_order(steps in proptest::collection::vec(step(), 0..120)) {
            run(steps)?;
        }
    }

    #[test]
    fn an_update_reaches_only_the_subscribers_of_its_vni_and_never_its_origin() {
        let routes = universe();
        let mut t = task();
        let a = Mailbox::new(u64::MAX);
        let b = Mailbox::new(u64::MAX);
        let c = Mailbox::new(u64::MAX);
        let at = Instant::now();
        for (s, mb, vni) in [(20, &a, 1), (21, &b, 1), (22, &c, 2)] {
            t.handle(Command::Ops {
                session: s,
                ops: vec![Op::Subscribe(Vni(vni))],
                received: at,
                mailbox: mb.clone(),
            });
        }
        t.log.seal();
        let vni1 = routes.iter().find(|r| r.vni.0 == 1).copied().unwrap();
        t.handle(Command::Ops {
            session: 20,
            ops: vec![Op::Announce(vni1)],
            received: at,
            mailbox: a.clone(),
        });
        t.log.seal();
        let mut seen = [BTreeMap::new(), BTreeMap::new(), BTreeMap::new()];
        for (mb, seen) in [&a, &b, &c].into_iter().zip(seen.iter_mut()) {
            collect(mb, seen);
        }
        assert_eq!(seen[0][&1], vec![Seen::Dump(BTreeSet::new())]);
        assert_eq!(
            seen[1][&1],
            vec![Seen::Dump(BTreeSet::new()), Seen::Add(vni1)]
        );
        assert_eq!(seen[2].len(), 1, "only its own dump: {:?}", seen[2]);
    }

    #[test]
    fn a_mailbox_over_its_limit_overflows_and_the_table_goes_on() {
        let routes = universe();
        let mut t = task();
        let slow = Mailbox::new(100);
        let at = Instant::now();
        t.handle(Command::Ops {
            session: 20,
            ops: vec![Op::Subscribe(Vni(1))],
            received: at,
            mailbox: slow.clone(),
        });
        for (i, r) in routes.iter().filter(|r| r.vni.0 == 1).enumerate() {
            t.handle(Command::Ops {
                session: 30 + i as u32,
                ops: vec![Op::Announce(*r)],
                received: at,
                mailbox: Mailbox::new(u64::MAX),
            });
            t.log.seal();
        }
        assert!(slow.overflowed().is_some_and(|lag| lag > 100));
        assert_eq!(
            slow.queued_bytes(),
            0,
            "an overflowed mailbox holds nothing"
        );
    }
}
