//! The table task: applies commands in batches to the [`RouteTable`],
//! appends what changed to the [`FanOut`] once per change and seals it after
//! each batch, answers SUBSCRIBEs with dumps, answers queries and watches
//! between batches, and withdraws the routes of ended sessions when their
//! delay is over. It never waits for a session.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tracing::debug;

use super::handle::{TableCounters, TableHandle};
use super::messages::{Command, Op, Query};
use super::COMMAND_QUEUE;
use crate::table::log::{FanOut, Mail, Mailbox};
use crate::table::{Announced, RouteTable, SessionId, Withdrawn, NOBODY};
use crate::wire::{encode_message, encode_update, Action, Message, Route, Vni};

/// Commands handled per wake-up at most (then what they changed is delivered).
const BATCH: usize = 256;
/// Longest the task handles commands before it lets other tasks (sessions
/// echoing KEEPALIVEs) run; the rest of the batch follows in the next turn.
/// Far below any keepalive timeout (2.5 s at the shortest interval), and
/// long enough that a bulk stream's batches are rarely cut: every cut lets
/// the subscribers run and write smaller pieces (ADR 0033, stop-22 addendum).
const TURN_TIME: Duration = Duration::from_millis(50);
/// Dump frames are grouped into buffers of about this size: big enough for
/// few syscalls, small enough that a keepalive echo is never held up long.
const DUMP_BUFFER_BYTES: usize = 16 * 1024;
/// Bytes an encoded IPv4 ADD frame takes, about (for sizing a dump's first buffer).
const DUMP_BYTES_PER_ROUTE: usize = 40;
/// Routes of a session's listing (a policy re-check) resolved per turn of
/// the task: a listing of 1M routes is cut into parts with other sessions'
/// batches between them, so the fan-out never waits for all of it.
const LISTING_PART: usize = 65_536;
/// How often to consider returning freed heap memory to the system.
const TRIM_INTERVAL: Duration = Duration::from_secs(2);
/// Only after at least this much was appended to the log since the last time.
const TRIM_AFTER_BYTES: u64 = 16 << 20;
/// Or after anything was appended, once the last trim is this old: the
/// tail of a burst (the buffers sessions free after the last big trim) goes
/// back too, instead of staying in the heap for as long as the fleet is
/// quiet. At most one trim per this long under light churn.
const TRIM_SETTLE: Duration = Duration::from_secs(10);

/// While the readers of the last seal are behind, the fan-out seals at most
/// once per this interval; a change that finds them keeping up, or comes
/// after a quiet interval, is sealed at once (ADR 0032). A reconnect storm's
/// changes then reach each subscriber in a few large mails instead of a
/// small one per batch of commands.
const SEAL_INTERVAL: Duration = Duration::from_millis(20);

/// Starts the table task (once per daemon).
pub fn spawn() -> TableHandle {
    spawn_with_turn_time(TURN_TIME)
}

/// [`spawn`] with another [`TURN_TIME`] (tests pick zero or forever).
fn spawn_with_turn_time(turn_time: Duration) -> TableHandle {
    return_large_frees_to_the_system();
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let counters = Arc::new(TableCounters::default());
    let handle = TableHandle {
        commands: tx,
        counters: counters.clone(),
    };
    let mut task = TableTask::new(counters);
    task.turn_time = turn_time;
    tokio::spawn(task.run(rx));
    handle
}

struct TableTask {
    table: RouteTable,
    log: FanOut,
    /// Ended sessions whose routes are withdrawn later: (when, who), in
    /// order of time.
    expiring: VecDeque<(Instant, SessionId)>,
    counters: Arc<TableCounters>,
    /// Bytes of SUBSCRIBE dumps encoded so far.
    dumped_bytes: u64,
    /// Sessions' route listings being resolved a part per turn, in order.
    listings: VecDeque<Listing>,
    /// Longest the task handles a batch's commands before it lets the
    /// other tasks run ([`TURN_TIME`]).
    turn_time: Duration,
}

/// A [`Query::SessionRoutes`] being answered a part at a time. The session
/// reads nothing meanwhile, so its routes (and their slots) stay put; if it
/// ends, its answer is thrown away.
struct Listing {
    session: SessionId,
    keys: Vec<(u32, u32)>,
    routes: Vec<Route>,
    reply: tokio::sync::oneshot::Sender<(Vec<Route>, Vec<Vni>)>,
}

impl TableTask {
    fn new(counters: Arc<TableCounters>) -> Self {
        Self {
            table: RouteTable::new(),
            log: FanOut::new(),
            expiring: VecDeque::new(),
            counters,
            dumped_bytes: 0,
            listings: VecDeque::new(),
            turn_time: TURN_TIME,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut trim = tokio::time::interval(TRIM_INTERVAL);
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trimmed_at = 0u64;
        let mut last_trim = Instant::now();
        let mut seals = SealClock::default();
        let mut turn = Turn::new();
        loop {
            tokio::select! {
                n = recv_batch(&mut rx, &mut batch, &mut turn) => {
                    if n == 0 {
                        return;
                    }
                    self.handle_batch(&mut batch, &mut turn).await;
                    // A table that has had to cut its work into turns since
                    // it last waited for commands is busy: its seal is paced
                    // as if the readers were behind (they ran between the
                    // turns, so they are rarely behind).
                    if self.log.has_pending()
                        && seals.seal_now(tokio::time::Instant::now(), || {
                            turn.cut || self.log.readers_behind()
                        })
                    {
                        self.log.seal();
                    }
                    turn.end_if_over(self.turn_time).await;
                }
                _ = sleep_until_opt(seals.due()) => {
                    self.log.seal();
                    seals.sealed(tokio::time::Instant::now());
                }
                _ = sleep_until_opt(self.expiring.front().map(|e| e.0)) => {
                    self.expire(Instant::now());
                    self.log.seal();
                }
                _ = std::future::ready(()), if !self.listings.is_empty() => {
                    self.continue_listing();
                }
                _ = trim.tick() => {
                    // Bursts of updates and dumps allocate log chunks that are
                    // freed once every session has sent them; give that memory
                    // back to the system instead of keeping it in the heap.
                    let churn = self.log.sealed_bytes() + self.dumped_bytes;
                    let grown = churn - trimmed_at;
                    if grown >= TRIM_AFTER_BYTES
                        || (grown > 0 && last_trim.elapsed() >= TRIM_SETTLE)
                    {
                        trimmed_at = churn;
                        last_trim = Instant::now();
                        tokio::task::spawn_blocking(release_free_memory);
                    }
                }
            }
        }
    }

    /// Handles the commands of `batch` in order, ending the `turn` between
    /// two of them once it has lasted `turn_time`. A batch can hold 256
    /// reads of 1,600 routes each: with one runtime worker, every KEEPALIVE
    /// echo waits for the task to let go. What the batch appends stays
    /// unsealed until it is done, so that its subscribers get it as one mail
    /// however many turns it took.
    async fn handle_batch(&mut self, batch: &mut Vec<Command>, turn: &mut Turn) {
        let mut commands = batch.drain(..);
        while let Some(command) = commands.next() {
            self.handle(command);
            if commands.len() > 0 {
                turn.end_if_over(self.turn_time).await;
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

    /// Resolves the next part of the oldest listing; answers it when done.
    fn continue_listing(&mut self) {
        let Some(listing) = self.listings.front_mut() else {
            return;
        };
        let from = listing.keys.len().saturating_sub(LISTING_PART);
        for (vni, slot) in listing.keys.drain(from..) {
            if let Some(route) = self.table.route_at(vni, slot) {
                listing.routes.push(route);
            }
        }
        if !listing.keys.is_empty() {
            return;
        }
        if let Some(done) = self.listings.pop_front() {
            debug!(
                session = done.session,
                routes = done.routes.len(),
                "session routes listed for a policy re-check"
            );
            let subscriptions = self.table.subscriptions_of(done.session);
            let _ = done.reply.send((done.routes, subscriptions));
        }
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
            Query::SessionRoutes { session, reply } => {
                let keys = self.table.route_keys_of(session);
                self.listings.push_back(Listing {
                    session,
                    routes: Vec::with_capacity(keys.len()),
                    keys,
                    reply,
                });
                self.continue_listing();
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
                    self.counters.unknown_withdrawals.fetch_add(1, Relaxed);
                    debug!(session, %route, "REMOVE of a route the session never announced ignored");
                    false
                }
            },
            Op::Subscribe { vni, sync } => {
                if !self.table.subscribe(session, vni) {
                    self.counters.duplicate_subscribes.fetch_add(1, Relaxed);
                    debug!(session, %vni, "duplicate SUBSCRIBE ignored");
                    return false;
                }
                let Some(mailbox) = mailbox else {
                    return true;
                };
                // Updates appended before go to the earlier subscribers only
                // (they are in the dump); later ones to this one too.
                self.log.subscribe(vni, session, mailbox.clone());
                let (mut frames, routes) = self.dump(vni, session);
                if sync {
                    // Right after the dump's last ADD, in the same mail:
                    // nothing of the VNI can come between (PROTOCOL.md 8).
                    append_sync(&mut frames, vni);
                }
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

/// Appends a SYNC frame for `vni` to a dump's buffers (in a buffer of its
/// own: the dump's are frozen).
fn append_sync(frames: &mut Vec<Bytes>, vni: Vni) {
    let mut buf = BytesMut::with_capacity(8);
    encode_message(&Message::Sync(vni), &mut buf);
    frames.push(buf.freeze());
}

/// Decides when the fan-out seals what the table's commands appended: at
/// once if the last seal was at least [`SEAL_INTERVAL`] ago or the table is
/// not busy (none of its readers is behind, and it has not cut its work
/// into turns since it last waited for commands),
/// otherwise when that interval has passed (as Nagle's algorithm holds a
/// small segment only while one is unacknowledged).
/// Uses tokio's clock (tests pause it).
#[derive(Debug, Default)]
struct SealClock {
    last: Option<tokio::time::Instant>,
    due: Option<tokio::time::Instant>,
}

impl SealClock {
    /// Changes are pending at `now`: true to seal them now (recorded as a
    /// seal); false if a seal is due at [`SealClock::due`]. `busy` (asked
    /// only within the interval): the last seal's mail is not all taken yet,
    /// or the task has cut its work into turns since it last waited.
    fn seal_now(&mut self, now: tokio::time::Instant, busy: impl FnOnce() -> bool) -> bool {
        match self.last {
            Some(last) if now < last + SEAL_INTERVAL && busy() => {
                self.due = Some(last + SEAL_INTERVAL);
                false
            }
            _ => {
                self.last = Some(now);
                self.due = None;
                true
            }
        }
    }

    /// When the pending changes are sealed, if they wait.
    fn due(&self) -> Option<tokio::time::Instant> {
        self.due
    }

    /// The due seal happened at `now`.
    fn sealed(&mut self, now: tokio::time::Instant) {
        self.last = Some(now);
        self.due = None;
    }
}

/// The table task's hold on the worker since it last let go. Batches taken
/// one after the other without a wait are one turn: tokio's LIFO slot makes
/// most batches one command (ADR 0032, stop-20 addendum), and its budget
/// alone would let a chain of them run for 128 batches.
#[derive(Debug)]
struct Turn {
    start: Instant,
    /// The task has cut its work into turns since it last waited for
    /// commands: it is busy.
    cut: bool,
}

impl Turn {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            cut: false,
        }
    }

    /// Lets the other tasks run if the turn has lasted `turn_time`.
    async fn end_if_over(&mut self, turn_time: Duration) {
        if self.start.elapsed() >= turn_time {
            tokio::task::yield_now().await;
            self.start = Instant::now();
            self.cut = true;
        }
    }

    /// The task waited for commands: the other tasks ran, the table is idle.
    fn waited(&mut self) {
        self.start = Instant::now();
        self.cut = false;
    }
}

/// Takes up to [`BATCH`] commands into `batch`, waiting for one if there is
/// none (then a new `turn` starts).
async fn recv_batch(
    rx: &mut mpsc::Receiver<Command>,
    batch: &mut Vec<Command>,
    turn: &mut Turn,
) -> usize {
    let mut waited = false;
    let n = std::future::poll_fn(|cx| {
        let polled = rx.poll_recv_many(cx, batch, BATCH);
        waited |= polled.is_pending();
        polled
    })
    .await;
    if waited {
        turn.waited();
    }
    n
}

/// Sleeps until `at`, or forever if there is none (a `select!` branch that
/// is off). Takes the std clock's instants and tokio's.
async fn sleep_until_opt(at: Option<impl Into<tokio::time::Instant>>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Makes large buffers (update-log chunks, dumps, table arrays) separate
/// mappings that go back to the system as soon as they are freed, instead of
/// heap memory that glibc keeps. Called before the table's first allocations.
fn return_large_frees_to_the_system() {
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
#[path = "task_tests.rs"]
mod tests;
