//! Where the hypervisor agent's routes go: the [`Dataplane`] trait, its
//! vocabulary ([`DataplaneOp`], [`Executed`]), the kernel implementation
//! (the rtnetlink [`Installer`]) and an in-memory one ([`MemoryDataplane`])
//! for tests and for consumers without a kernel.
//!
//! The trait is command-based: the planner ([`super::planner`]) decides,
//! without I/O, which operations to run and gets each outcome back; a
//! dataplane carries out single operations, many of them in flight at once
//! (the agent's executor orders those on the same key). One method, one
//! value in and one result out, so a new implementation is a `match`, and
//! the planner's decisions are plain values that tests compare.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv6Addr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::kernel::{Installer, KernelError, KernelOp, KernelRoute, Prefix, Target};

/// One operation on the routes of protocol 254 (see [`crate::kernel`] for
/// their layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataplaneOp {
    /// Installs the route of (table, prefix) with exactly these next hops,
    /// replacing what was there.
    Replace(KernelRoute),
    /// Deletes the route of (table, prefix); a route already gone is a
    /// success.
    Delete {
        /// The routing table.
        table: u32,
        /// The destination prefix.
        prefix: Prefix,
    },
    /// Lists the prefixes routed in a table.
    Dump {
        /// The routing table.
        table: u32,
    },
}

/// What a successful [`DataplaneOp`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Executed {
    /// A replace or a delete was done.
    Done,
    /// What a dump found.
    Dumped(Vec<Prefix>),
}

/// A future a [`Dataplane`] returns: boxed, so that the agent can hold any
/// dataplane as a `Box<dyn Dataplane>`, and owning what it needs (`'static`),
/// so that many can be in flight at once (ADR 0022).
pub type DataplaneFuture =
    Pin<Box<dyn Future<Output = Result<Executed, KernelError>> + Send + 'static>>;

/// Carries out the planner's operations. Failures are [`KernelError`]s, so
/// that [`KernelError::is_retryable`] decides retries the same way for
/// every implementation.
///
/// `execute` takes `&self` and returns a future that borrows nothing: the
/// agent's executor keeps many operations in flight and orders those on the
/// same (table, prefix) itself, so an implementation must not assume one
/// call at a time, only that two calls on the same key never overlap.
pub trait Dataplane: Send + Sync {
    /// Starts one operation; the future completes with its outcome.
    fn execute(&self, op: DataplaneOp) -> DataplaneFuture;
}

/// The kernel installer, shared by the operations in flight. Replaces and
/// deletes are queued to its batched netlink writer when `execute` is called
/// (so they reach the kernel in submission order, many per socket write);
/// dumps go through its rtnetlink handle.
impl Dataplane for Arc<Installer> {
    fn execute(&self, op: DataplaneOp) -> DataplaneFuture {
        match op {
            DataplaneOp::Replace(route) => {
                let done = self.replace_owned(route);
                Box::pin(async move { done.await.map(|()| Executed::Done) })
            }
            DataplaneOp::Delete { table, prefix } => {
                let done = self.delete_queued(table, prefix);
                Box::pin(async move { done.await.map(|_| Executed::Done) })
            }
            DataplaneOp::Dump { table } => {
                let installer = Arc::clone(self);
                Box::pin(async move {
                    installer.dump(table).await.map(|routes| {
                        Executed::Dumped(routes.into_iter().map(|r| r.dest).collect())
                    })
                })
            }
        }
    }
}

/// A dataplane in memory: a map (table, prefix) -> next hops, a record of
/// every operation run, and failures injected per (table, prefix). Clones
/// share one state, so a test keeps a clone to look at what the agent did.
#[derive(Clone, Debug, Default)]
pub struct MemoryDataplane {
    state: Arc<Mutex<MemoryState>>,
}

#[derive(Debug, Default)]
struct MemoryState {
    routes: BTreeMap<(u32, Prefix), Vec<Ipv6Addr>>,
    /// (table, prefix) -> the errno its replace or delete fails with.
    failing: BTreeMap<(u32, Prefix), i32>,
    ops: Vec<DataplaneOp>,
    /// Operations complete only when released ([`MemoryDataplane::manual`]).
    manual: bool,
    /// Started, not yet released, in the order started.
    in_flight: Vec<(DataplaneOp, tokio::sync::oneshot::Sender<()>)>,
}

impl MemoryDataplane {
    /// An empty dataplane.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `op` at once (what [`Dataplane::execute`] does).
    pub fn apply(&self, op: &DataplaneOp) -> Result<Executed, KernelError> {
        let mut s = self.state();
        s.ops.push(op.clone());
        let (kind, table, prefix) = match op {
            DataplaneOp::Replace(r) => (KernelOp::Replace, r.table, Some(r.dest)),
            DataplaneOp::Delete { table, prefix } => (KernelOp::Delete, *table, Some(*prefix)),
            DataplaneOp::Dump { table } => (KernelOp::Dump, *table, None),
        };
        let target = Target { table, prefix };
        if table == 0 {
            return Err(KernelError::InvalidTable { op: kind, target });
        }
        if let Some(&errno) = prefix.and_then(|p| s.failing.get(&(table, p))) {
            return Err(KernelError::Netlink {
                op: kind,
                target,
                errno,
                message: std::io::Error::from_raw_os_error(errno).to_string(),
            });
        }
        Ok(match op {
            DataplaneOp::Replace(r) => {
                let mut hops = r.next_hops.clone();
                hops.sort_unstable();
                hops.dedup();
                s.routes.insert((r.table, r.dest), hops);
                Executed::Done
            }
            DataplaneOp::Delete { table, prefix } => {
                s.routes.remove(&(*table, *prefix));
                Executed::Done
            }
            DataplaneOp::Dump { table } => Executed::Dumped(
                s.routes
                    .keys()
                    .filter(|(t, _)| t == table)
                    .map(|&(_, p)| p)
                    .collect(),
            ),
        })
    }

    /// Puts a route there without recording an operation (a route left by
    /// an earlier run).
    pub fn insert(&self, table: u32, prefix: Prefix, next_hops: Vec<Ipv6Addr>) {
        self.state().routes.insert((table, prefix), next_hops);
    }

    /// From now on, replacing or deleting (table, prefix) fails with `errno`.
    pub fn fail(&self, table: u32, prefix: Prefix, errno: i32) {
        self.state().failing.insert((table, prefix), errno);
    }

    /// Replacing or deleting (table, prefix) works again.
    pub fn heal(&self, table: u32, prefix: Prefix) {
        self.state().failing.remove(&(table, prefix));
    }

    /// From now on, an operation stays in flight until
    /// [`MemoryDataplane::release`] lets it complete (in any order the test
    /// picks); [`MemoryDataplane::in_flight`] lists those started.
    pub fn manual(&self) {
        self.state().manual = true;
    }

    /// The operations started and not yet released, in the order started.
    pub fn in_flight(&self) -> Vec<DataplaneOp> {
        self.state()
            .in_flight
            .iter()
            .map(|(op, _)| op.clone())
            .collect()
    }

    /// Lets the in-flight operations for which `pick` is true complete
    /// (they are applied when the executor polls them); returns how many.
    pub fn release(&self, pick: impl Fn(&DataplaneOp) -> bool) -> usize {
        let mut s = self.state();
        let (go, stay): (Vec<_>, Vec<_>) = std::mem::take(&mut s.in_flight)
            .into_iter()
            .partition(|(op, _)| pick(op));
        s.in_flight = stay;
        let n = go.len();
        for (_, tx) in go {
            let _ = tx.send(());
        }
        n
    }

    /// The routes, per (table, prefix).
    pub fn routes(&self) -> BTreeMap<(u32, Prefix), Vec<Ipv6Addr>> {
        self.state().routes.clone()
    }

    /// Every operation run so far (failed ones included), in order, and
    /// forgets them.
    pub fn take_ops(&self) -> Vec<DataplaneOp> {
        std::mem::take(&mut self.state().ops)
    }
}

impl Dataplane for MemoryDataplane {
    fn execute(&self, op: DataplaneOp) -> DataplaneFuture {
        let mut s = self.state();
        if !s.manual {
            drop(s);
            return Box::pin(std::future::ready(self.apply(&op)));
        }
        // Manual completion: the operation is in flight until a test
        // releases it, then it is applied.
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.in_flight.push((op.clone(), tx));
        drop(s);
        let this = self.clone();
        Box::pin(async move {
            let _ = rx.await;
            this.apply(&op)
        })
    }
}
