//! Runs the planner's dataplane operations with many in flight at once
//! (ADR 0022).
//!
//! The agent hands every [`Planned`] operation to [`Executor::submit`]; the
//! executor starts as many as [`MAX_IN_FLIGHT`] allow, and the agent task
//! polls [`Executor::next_done`] next to its other inputs and gives each
//! outcome to [`Executor::complete`], which counts it, feeds it back to
//! [`Planner::completed`] (follow-up operations are queued behind what is
//! waiting) and starts the next ones. Ordering rule: operations on the same
//! (table, prefix) run one after another in the order they were submitted
//! (one waits while an earlier one on its key is in flight); operations on
//! different keys overlap. A dump is a barrier: it starts when nothing is in
//! flight, and nothing starts while it runs, so it sees every change planned
//! before it and none planned after it.
//!
//! [`Executor::backlog`] (waiting + in flight) is what the agent bounds: it
//! stops reading connection events above [`MAX_BACKLOG`], so that memory
//! stays bounded when a server sends faster than the kernel takes routes.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;

use super::dataplane::{Dataplane, DataplaneOp, Executed};
use super::planner::{Planned, Planner};
use super::stats::{AgentStats, InstalledRoutes};
use crate::kernel::{KernelError, Prefix};

/// Most operations in flight on the dataplane at once: enough to keep the
/// kernel busy while the agent builds and sends the next messages, small
/// enough that the netlink socket's receive buffer holds every answer.
pub const MAX_IN_FLIGHT: usize = 512;

/// Above this many operations waiting or in flight, the agent stops reading
/// connection events until the backlog is below it again.
pub const MAX_BACKLOG: usize = 16_384;

/// Most finished operations [`Executor::complete_ready`] takes at once.
const COMPLETE_BATCH: usize = 1024;

/// The key operations are ordered by: (table, prefix); a dump has none.
type Key = (u32, Prefix);

type Running = Pin<Box<dyn Future<Output = (Planned, Result<Executed, KernelError>)> + Send>>;

/// The planner's operations in flight and waiting, see the module
/// documentation.
pub(super) struct Executor {
    /// `None` until a mapping opened the installer (the planner asks for
    /// nothing without a dataplane).
    pub(super) dataplane: Option<Box<dyn Dataplane>>,
    /// What the agent installed and has not deleted since (the
    /// installed-routes gauges).
    installed: InstalledRoutes,
    pub(super) stats: Arc<AgentStats>,
    /// Submitted, not started, in order.
    queue: VecDeque<Planned>,
    /// Per key with an operation in flight: the later operations on that
    /// key, in order (present, maybe empty, exactly while the key is busy).
    blocked: HashMap<Key, VecDeque<Planned>>,
    /// Operations waiting in `blocked` (for the backlog).
    blocked_len: usize,
    running: FuturesUnordered<Running>,
    /// A dump is in flight.
    barrier: bool,
    /// Dumps in `queue`.
    dumps_queued: usize,
    max_in_flight: usize,
    max_backlog: usize,
}

impl Executor {
    /// An executor with `dataplane` (if any), counting into `stats`.
    pub(super) fn new(dataplane: Option<Box<dyn Dataplane>>, stats: Arc<AgentStats>) -> Self {
        Executor {
            dataplane,
            installed: InstalledRoutes::new(stats.clone()),
            stats,
            queue: VecDeque::new(),
            blocked: HashMap::new(),
            blocked_len: 0,
            running: FuturesUnordered::new(),
            barrier: false,
            dumps_queued: 0,
            max_in_flight: MAX_IN_FLIGHT,
            max_backlog: MAX_BACKLOG,
        }
    }

    /// Sets the in-flight and backlog bounds (tests).
    #[cfg(test)]
    pub(super) fn set_limits(&mut self, in_flight: usize, backlog: usize) {
        self.max_in_flight = in_flight.max(1);
        self.max_backlog = backlog.max(1);
    }

    /// True while the agent may read connection events: the backlog is
    /// below its bound and no dump is due (then the events wait, as when
    /// operations ran one at a time, so that a reconciliation's dump answer
    /// is applied before later updates are planned).
    pub(super) fn accepts_events(&self) -> bool {
        self.backlog() < self.max_backlog && !self.dump_pending()
    }

    /// Operations waiting or in flight.
    pub(super) fn backlog(&self) -> usize {
        self.queue.len() + self.blocked_len + self.running.len()
    }

    /// Operations in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.running.len()
    }

    /// True while a dump waits or runs.
    fn dump_pending(&self) -> bool {
        self.barrier || self.dumps_queued > 0
    }

    fn enqueue(&mut self, ops: Vec<Planned>) {
        for job in ops {
            if matches!(job.op, DataplaneOp::Dump { .. }) {
                self.dumps_queued += 1;
            }
            self.queue.push_back(job);
        }
    }

    /// Queues `ops` (in order) and starts what the rules allow.
    pub(super) fn submit(&mut self, ops: Vec<Planned>) {
        if self.dataplane.is_none() {
            return;
        }
        self.enqueue(ops);
        self.fill();
    }

    /// The next finished operation; pending forever while none is in flight
    /// (a `select!` branch guarded by `in_flight() > 0`).
    pub(super) async fn next_done(&mut self) -> (Planned, Result<Executed, KernelError>) {
        match self.running.next().await {
            Some(done) => done,
            None => std::future::pending().await,
        }
    }

    /// Counts a finished operation, gives it to the planner, queues the
    /// follow-ups and starts what can start now.
    pub(super) fn complete(
        &mut self,
        planner: &mut Planner,
        job: Planned,
        result: Result<Executed, KernelError>,
        now: Instant,
    ) {
        self.count(&job, &result);
        match key(&job.op) {
            Some(k) => self.release(k),
            None => self.barrier = false,
        }
        let follow = planner.completed(job, result.as_ref(), now);
        self.enqueue(follow);
        self.fill();
    }

    /// Completes (as [`Executor::complete`]) the operations already finished,
    /// up to [`COMPLETE_BATCH`], without waiting: one wake-up of the agent
    /// task takes a whole batch of answers.
    pub(super) fn complete_ready(&mut self, planner: &mut Planner, now: Instant) {
        for _ in 0..COMPLETE_BATCH {
            match self.running.next().now_or_never() {
                Some(Some((job, result))) => self.complete(planner, job, result, now),
                _ => return,
            }
        }
    }

    /// Runs everything submitted (and every follow-up) to the end.
    pub(super) async fn drain(&mut self, planner: &mut Planner, now: impl Fn() -> Instant) {
        while self.in_flight() > 0 {
            let (job, result) = self.next_done().await;
            self.complete(planner, job, result, now());
        }
    }

    /// Starts the next operation on `k`, or frees the key.
    fn release(&mut self, k: Key) {
        let next = self.blocked.get_mut(&k).and_then(VecDeque::pop_front);
        match next {
            Some(job) => {
                self.blocked_len -= 1;
                self.start(job);
            }
            None => {
                self.blocked.remove(&k);
            }
        }
    }

    /// Starts queued operations up to the in-flight bound.
    fn fill(&mut self) {
        while !self.barrier && self.running.len() < self.max_in_flight {
            let Some(job) = self.queue.front() else {
                return;
            };
            match key(&job.op) {
                None => {
                    // A dump waits for everything before it.
                    if !self.running.is_empty() {
                        return;
                    }
                    let job = self.queue.pop_front().expect("front exists");
                    self.dumps_queued -= 1;
                    self.barrier = true;
                    self.start(job);
                }
                Some(k) => {
                    let job = self.queue.pop_front().expect("front exists");
                    if let Some(waiting) = self.blocked.get_mut(&k) {
                        waiting.push_back(job);
                        self.blocked_len += 1;
                    } else {
                        self.blocked.insert(k, VecDeque::new());
                        self.start(job);
                    }
                }
            }
        }
    }

    fn start(&mut self, job: Planned) {
        let Some(dataplane) = self.dataplane.as_ref() else {
            return;
        };
        let fut = dataplane.execute(job.op.clone());
        self.running.push(Box::pin(async move { (job, fut.await) }));
    }

    fn count(&mut self, job: &Planned, result: &Result<Executed, KernelError>) {
        let s = &self.stats;
        let changes_route = job.purpose.is_route_change();
        match &job.op {
            DataplaneOp::Replace(route) => {
                s.netlink_replace.record(result);
                if changes_route && result.is_ok() {
                    self.installed.installed(route.table, route.dest);
                }
            }
            DataplaneOp::Delete { table, prefix } => {
                s.netlink_delete.record(result);
                if changes_route && result.is_ok() {
                    self.installed.removed(*table, *prefix);
                }
            }
            DataplaneOp::Dump { .. } => s.netlink_dump.record(result),
        }
        if changes_route {
            match result {
                Ok(_) => s.kernel_changes.fetch_add(1, Relaxed),
                Err(_) => s.kernel_errors.fetch_add(1, Relaxed),
            };
        }
    }
}

fn key(op: &DataplaneOp) -> Option<Key> {
    match op {
        DataplaneOp::Replace(r) => Some((r.table, r.dest)),
        DataplaneOp::Delete { table, prefix } => Some((*table, *prefix)),
        DataplaneOp::Dump { .. } => None,
    }
}
