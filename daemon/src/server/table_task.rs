//! The task that owns the route table and the update log.
//!
//! Sessions send it commands over one bounded channel; it applies them in
//! order, encodes what subscribers must hear into the shared log once, and
//! never waits for any session (ARCHITECTURE.md properties 3 and 4).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::metrics::Metrics;
use crate::table::log::{Entry, LogWatch, LogWriter, SubscribedMarker};
use crate::table::{Announced, RouteTable, SessionId, TableStats, Withdrawn};
use crate::wire::{encode_update, Action, Route, Vni};

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
    },
    /// The session ended: withdraw its routes, drop its subscriptions.
    Disconnect {
        /// Which.
        session: SessionId,
    },
    /// Table counts.
    Stats {
        /// Where to answer.
        reply: oneshot::Sender<TableStats>,
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
            Command::Ops { session, ops } => {
                for op in ops {
                    self.apply(session, op);
                }
            }
            Command::Disconnect { session } => {
                let log = &mut self.log;
                self.table.remove_session(session, |route| {
                    log.append_update(Action::Remove, route, session);
                });
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.table.stats());
            }
        }
    }

    fn apply(&mut self, session: SessionId, op: Op) {
        match op {
            Op::Announce(route) => match self.table.announce(session, &route) {
                Announced::New => self.log.append_update(Action::Add, &route, session),
                Announced::Joined => {}
                Announced::Duplicate => debug!(session, %route, "repeated ADD ignored"),
            },
            Op::Withdraw(route) => match self.table.withdraw(session, &route) {
                Withdrawn::Gone => self.log.append_update(Action::Remove, &route, session),
                Withdrawn::StillAnnounced => {}
                Withdrawn::NotAnnounced => {
                    Metrics::inc(&self.metrics.unknown_withdrawals);
                    debug!(session, %route, "REMOVE of a route the session never announced ignored");
                }
            },
            Op::Subscribe(vni) => {
                if !self.table.subscribe(session, vni) {
                    Metrics::inc(&self.metrics.duplicate_subscribes);
                    debug!(session, %vni, "duplicate SUBSCRIBE ignored");
                    return;
                }
                let (dump, routes) = self.dump(vni, session);
                self.log
                    .append_marker(Entry::Subscribed(Box::new(SubscribedMarker {
                        session,
                        vni,
                        dump,
                        routes,
                    })));
            }
            Op::Unsubscribe(vni) => {
                if self.table.unsubscribe(session, vni) {
                    self.log.append_marker(Entry::Unsubscribed { session, vni });
                } else {
                    debug!(session, %vni, "UNSUBSCRIBE of a VNI not subscribed ignored");
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
