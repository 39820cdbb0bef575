//! The shared state on etcd (shell, ADR 0031): the watcher task that keeps
//! the table's `LOCAL_API` routes equal to etcd's `{prefix}routes/` keys,
//! and the write path of `RouteService` Announce/Withdraw.
//!
//! The watcher ranges the routes at revision R, applies the difference to
//! the table ([`Applied::resync`]: unchanged routes cause nothing on the
//! wire), then watches from R + 1. While etcd is unreachable it keeps what
//! the table has, reports degraded and retries with back-off; once etcd
//! answers again it resyncs from a snapshot. Each applied difference is
//! mirrored into the local redb store in the background, so a restart
//! during an etcd outage still announces the last state seen.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::client::{EtcdClient, EtcdError, EtcdSettings, TxnOp, WatchItem};
use super::reconcile::{route_key, Applied, Delta};
use crate::store::Store;
use crate::table::LOCAL_API;
use crate::table_task::{Op, TableHandle};
use crate::wire::Route;

/// etcd's default `--max-txn-ops`: where a refused transaction size falls
/// back to.
const ETCD_DEFAULT_TXN_OPS: usize = 128;
/// Transactions of one API call in flight at once.
const TXNS_IN_FLIGHT: usize = 128;
/// Watch responses already received that the watcher applies as one table
/// batch (a large API call arrives as one response per transaction).
const COALESCE_RESPONSES: usize = 256;
/// The local cache is written at most this often (each write is an fsync).
const MIRROR_EVERY: Duration = Duration::from_millis(250);
/// The longest a difference waits for the local cache.
const MIRROR_MAX: Duration = Duration::from_secs(5);
/// How long an API write waits for this server's watcher to apply it.
const READ_YOUR_WRITES: Duration = Duration::from_secs(1);
/// Back-off of the watcher while etcd is unreachable.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// At most one WARN about skipped keys per this many seconds.
const SKIP_WARN_EVERY: Duration = Duration::from_secs(10);

/// What the shared state reports (status, health, metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedStatus {
    /// etcd could not be reached (the routes in force are the last seen).
    pub degraded: bool,
    /// Why, when degraded.
    pub reason: String,
    /// The revision applied last.
    pub revision: i64,
    /// Routes applied from the shared state.
    pub routes: u64,
}

/// The shared state: the etcd client, the applied routes and their status.
pub struct SharedState {
    client: EtcdClient,
    settings: EtcdSettings,
    applied: Mutex<Applied>,
    /// The revision applied to the table, for read-your-writes.
    revision: watch::Sender<i64>,
    /// Degraded, for the health service.
    degraded: watch::Sender<bool>,
    reason: Mutex<String>,
    watch_healthy: AtomicBool,
    /// Operations per transaction: `max_txn_ops`, lowered to what etcd
    /// accepts once it refused more.
    txn_ops: AtomicUsize,
    /// Resyncs from a snapshot after the first.
    pub resyncs: AtomicU64,
    /// Keys under the prefix that are not routes.
    pub skipped_keys: AtomicU64,
}

/// An API write that did not (completely) reach etcd.
#[derive(Debug)]
pub struct WriteError {
    /// Routes committed before the failure.
    pub committed: usize,
    /// Routes asked for.
    pub total: usize,
    /// etcd's error.
    pub error: EtcdError,
}

impl SharedState {
    /// Sets up the client (no connection yet) and the applied set from the
    /// routes cached in the local store.
    pub fn new(settings: EtcdSettings, cached: Vec<Route>) -> Result<Arc<SharedState>, String> {
        let client = EtcdClient::new(&settings).map_err(|e| e.to_string())?;
        Ok(Arc::new(SharedState {
            applied: Mutex::new(Applied::with_cached(&settings.prefix, cached)),
            txn_ops: AtomicUsize::new(settings.max_txn_ops.max(1)),
            client,
            settings,
            revision: watch::channel(0).0,
            degraded: watch::channel(false).0,
            reason: Mutex::new(String::new()),
            watch_healthy: AtomicBool::new(false),
            resyncs: AtomicU64::new(0),
            skipped_keys: AtomicU64::new(0),
        }))
    }

    /// The etcd client (the fleet registration uses it too).
    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    /// The settings.
    pub fn settings(&self) -> &EtcdSettings {
        &self.settings
    }

    /// Follows the revision applied to the table.
    pub fn revision_watch(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// Follows the degraded flag (the health service does).
    pub fn degraded_watch(&self) -> watch::Receiver<bool> {
        self.degraded.subscribe()
    }

    /// The current status.
    pub fn status(&self) -> SharedStatus {
        let applied = self.applied.lock().expect("applied lock");
        SharedStatus {
            degraded: *self.degraded.borrow(),
            reason: self.reason.lock().expect("reason lock").clone(),
            revision: applied.revision(),
            routes: applied.len() as u64,
        }
    }

    /// Per route: whether the shared state holds it (as applied here).
    pub fn contains(&self, routes: &[Route]) -> Vec<bool> {
        let applied = self.applied.lock().expect("applied lock");
        routes.iter().map(|r| applied.contains(r)).collect()
    }

    /// Every route applied (sorted).
    pub fn routes(&self) -> Vec<Route> {
        let mut routes: Vec<Route> = self
            .applied
            .lock()
            .expect("applied lock")
            .routes()
            .copied()
            .collect();
        routes.sort_unstable();
        routes
    }

    fn set_degraded(&self, reason: String) {
        let was = *self.degraded.borrow();
        *self.reason.lock().expect("reason lock") = reason.clone();
        self.degraded.send_replace(true);
        if !was {
            warn!(%reason, "shared state (etcd) degraded: keeping the routes last seen");
        }
    }

    fn set_healthy(&self) {
        if self.degraded.send_replace(false) {
            info!("shared state (etcd) reachable again");
        }
        self.reason.lock().expect("reason lock").clear();
    }

    /// The etcd key of each route, or the first that has none.
    pub fn keys(&self, routes: &[Route]) -> Result<Vec<Vec<u8>>, (usize, String)> {
        routes
            .iter()
            .enumerate()
            .map(|(i, r)| route_key(&self.settings.prefix, r).map_err(|e| (i, e)))
            .collect()
    }

    /// Writes `ops` to etcd in transactions of at most `max_txn_ops` (lowered
    /// to what etcd accepts, see [`lower_txn_ops`]), several in flight;
    /// returns after every commit and after this server's watcher applied
    /// them (bounded by [`READ_YOUR_WRITES`]).
    pub async fn write(&self, ops: Vec<TxnOp>) -> Result<(), WriteError> {
        let total = ops.len();
        let begun = tokio::time::Instant::now();
        let mut committed = 0;
        let mut newest = 0;
        let mut error = None;
        let mut pending = ops;
        while !pending.is_empty() {
            let size = self.txn_ops.load(Relaxed).max(1);
            let chunks: Vec<Vec<TxnOp>> = pending.chunks(size).map(<[TxnOp]>::to_vec).collect();
            pending = Vec::new();
            let results: Vec<(Vec<TxnOp>, Result<i64, EtcdError>)> = stream::iter(chunks)
                .map(|c| async move {
                    let result = self.client.txn(&c).await;
                    (c, result)
                })
                .buffer_unordered(TXNS_IN_FLIGHT)
                .collect()
                .await;
            // The largest transaction etcd refused as too large.
            let mut refused = 0;
            for (chunk, result) in results {
                match result {
                    Ok(revision) => {
                        committed += chunk.len();
                        newest = newest.max(revision);
                    }
                    // Nothing of it was applied: again, in smaller ones.
                    Err(EtcdError::TooManyOps) if chunk.len() > 1 => {
                        refused = refused.max(chunk.len());
                        pending.extend(chunk);
                    }
                    Err(e) => error = Some(e),
                }
            }
            if refused > 0 {
                self.lower_txn_ops(refused);
            }
        }
        if let Some(error) = error {
            if matches!(error, EtcdError::Unreachable(_)) {
                self.set_degraded(reason(&error));
            }
            return Err(WriteError {
                committed,
                total,
                error,
            });
        }
        // Read your writes: the table has them when the watcher applied
        // that revision (bounded: a slow watcher does not fail the write).
        let committed_after = begun.elapsed();
        let mut applied = self.revision.subscribe();
        let _ = tokio::time::timeout(READ_YOUR_WRITES, applied.wait_for(|&r| r >= newest)).await;
        tracing::debug!(
            keys = total,
            revision = newest,
            commit_ms = committed_after.as_millis() as u64,
            applied_ms = begun.elapsed().as_millis() as u64,
            "shared state written"
        );
        Ok(())
    }

    /// etcd refused a transaction of `refused` operations (its
    /// `--max-txn-ops` is lower than `max_txn_ops`): from now on send at
    /// most etcd's default (128), or half of what was refused if that is
    /// not more. Logged once per change.
    fn lower_txn_ops(&self, refused: usize) {
        let lower = if refused > ETCD_DEFAULT_TXN_OPS {
            ETCD_DEFAULT_TXN_OPS
        } else {
            (refused / 2).max(1)
        };
        if self.txn_ops.fetch_min(lower, Relaxed) > lower {
            warn!(
                refused,
                now = lower,
                "etcd refuses transactions this large (its --max-txn-ops); writing smaller ones. \
                 Bulk writes are faster with etcd's --max-txn-ops and store.etcd.max_txn_ops at 1024"
            );
        }
    }

    fn note_skipped(&self, delta: &Delta, last_warn: &mut Option<tokio::time::Instant>) {
        if delta.skipped.is_empty() {
            return;
        }
        self.skipped_keys
            .fetch_add(delta.skipped.len() as u64, Relaxed);
        let now = tokio::time::Instant::now();
        if last_warn.is_none_or(|t| now.duration_since(t) >= SKIP_WARN_EVERY) {
            *last_warn = Some(now);
            let (key, why) = &delta.skipped[0];
            warn!(
                skipped = delta.skipped.len(),
                key = %key,
                reason = %why,
                "keys under the shared-state prefix that are not routes were skipped"
            );
        }
    }

    /// Runs the watcher until the table task stops.
    pub async fn run(self: Arc<Self>, table: TableHandle, store: Arc<Store>) {
        let mirror = spawn_mirror(store);
        let prefix = self
            .applied
            .lock()
            .expect("applied lock")
            .routes_prefix()
            .to_vec();
        let mut backoff = BACKOFF_MIN;
        let mut first = true;
        let mut last_warn = None;
        loop {
            // A snapshot, then the difference to what the table has.
            let (kvs, revision) = match self.client.range_prefix(&prefix).await {
                Ok(snapshot) => snapshot,
                Err(e) => {
                    self.set_degraded(reason(&e));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let delta = self
                .applied
                .lock()
                .expect("applied lock")
                .resync(kvs.iter().map(|kv| &kv.key[..]), revision);
            if !first {
                self.resyncs.fetch_add(1, Relaxed);
            }
            info!(
                revision,
                announced = delta.announce.len(),
                withdrawn = delta.withdraw.len(),
                resync = !first,
                "shared state (etcd) snapshot applied"
            );
            first = false;
            self.note_skipped(&delta, &mut last_warn);
            if !self.apply(&table, delta, &mirror).await {
                return;
            }
            self.revision.send_replace(revision);
            let mut from = revision + 1;
            // Watch; a broken watch is re-created from the next revision
            // (another member takes over), a compaction means a resync.
            'watching: loop {
                let mut watch = match self.client.watch_prefix(&prefix, from).await {
                    Ok(w) => w,
                    Err(EtcdError::Compacted(at)) => {
                        log_compacted(at, from);
                        break 'watching;
                    }
                    Err(e) => {
                        self.set_degraded(reason(&e));
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        break 'watching;
                    }
                };
                self.watch_healthy.store(true, Relaxed);
                self.set_healthy();
                // Writes (and this watch's successors) go to the leader;
                // on its own task, so a hung member delays nothing here.
                let client = self.client.clone();
                tokio::spawn(async move { client.prefer_leader().await });
                backoff = BACKOFF_MIN;
                loop {
                    match watch.next().await {
                        Ok(WatchItem::Events(mut events, mut revision)) => {
                            // Take what has arrived already, to apply it as
                            // one batch (`next` is cancel safe).
                            let mut ended = None;
                            for _ in 0..COALESCE_RESPONSES {
                                use futures_util::FutureExt;
                                match watch.next().now_or_never() {
                                    None => break,
                                    Some(Ok(WatchItem::Events(more, r))) => {
                                        events.extend(more);
                                        revision = r;
                                    }
                                    Some(Ok(WatchItem::Progress(r))) => revision = revision.max(r),
                                    Some(Err(e)) => {
                                        ended = Some(e);
                                        break;
                                    }
                                }
                            }
                            let delta = self
                                .applied
                                .lock()
                                .expect("applied lock")
                                .apply(&events, revision);
                            self.note_skipped(&delta, &mut last_warn);
                            if !self.apply(&table, delta, &mirror).await {
                                return;
                            }
                            self.revision.send_replace(revision);
                            from = revision + 1;
                            match ended {
                                None => {}
                                Some(EtcdError::Compacted(at)) => {
                                    log_compacted(at, from);
                                    break 'watching;
                                }
                                Some(e) => {
                                    info!(error = %e, "shared-state watch ended; watching again");
                                    continue 'watching;
                                }
                            }
                        }
                        Ok(WatchItem::Progress(revision)) => {
                            self.applied
                                .lock()
                                .expect("applied lock")
                                .progress(revision);
                            self.revision.send_replace(revision);
                            from = revision + 1;
                        }
                        Err(EtcdError::Compacted(at)) => {
                            log_compacted(at, from);
                            break 'watching;
                        }
                        Err(e) => {
                            info!(error = %e, "shared-state watch ended; watching again");
                            continue 'watching;
                        }
                    }
                }
            }
        }
    }

    /// Applies a difference to the table and hands it to the mirror; false
    /// when the table task stopped.
    async fn apply(
        &self,
        table: &TableHandle,
        delta: Delta,
        mirror: &mpsc::UnboundedSender<Delta>,
    ) -> bool {
        if delta.is_empty() {
            return true;
        }
        let ops: Vec<Op> = delta
            .withdraw
            .iter()
            .copied()
            .map(Op::Withdraw)
            .chain(delta.announce.iter().copied().map(Op::Announce))
            .collect();
        if table.local_ops(LOCAL_API, ops).await.is_none() {
            return false;
        }
        let _ = mirror.send(delta);
        true
    }
}

/// The degraded reason shown for an etcd error.
fn reason(e: &EtcdError) -> String {
    match e {
        EtcdError::Unreachable(_) => format!("etcd unreachable: {e}"),
        other => other.to_string(),
    }
}

/// Mirrors applied differences into the local redb store, in order, off
/// the watcher's path.
fn spawn_mirror(store: Arc<Store>) -> mpsc::UnboundedSender<Delta> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Delta>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // A large change arrives as many differences: one write (one
            // fsync) once they stop coming (at most every MIRROR_MAX), so
            // the cache costs no CPU while etcd and the watch are busy.
            let mut batch = vec![first];
            let started = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(MIRROR_EVERY).await;
                let before = batch.len();
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                if batch.len() == before || started.elapsed() >= MIRROR_MAX {
                    break;
                }
            }
            let store = store.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                // The net change of the batch, in two transactions.
                let mut net: hashbrown::HashMap<Route, bool> = hashbrown::HashMap::new();
                for delta in batch {
                    net.extend(delta.withdraw.into_iter().map(|r| (r, false)));
                    net.extend(delta.announce.into_iter().map(|r| (r, true)));
                }
                let (add, remove): (Vec<_>, Vec<_>) =
                    net.into_iter().partition(|&(_, present)| present);
                let remove: Vec<Route> = remove.into_iter().map(|(r, _)| r).collect();
                let add: Vec<Route> = add.into_iter().map(|(r, _)| r).collect();
                store.update_shared_cache(&add, &remove)?;
                Ok::<_, crate::store::StoreError>((add.len(), remove.len()))
            })
            .await;
            match outcome {
                Ok(Ok((added, removed))) => {
                    tracing::debug!(added, removed, "shared-state cache written")
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot mirror the shared state into the local store")
                }
                Err(_) => {}
            }
        }
    });
    tx
}
/// Logs that the revision a watch wanted was compacted away (the next step
/// is a resync from a snapshot, which applies only the differences).
fn log_compacted(compact_revision: i64, from: i64) {
    info!(
        compact_revision,
        from, "shared-state watch: revision compacted; resyncing from a snapshot"
    );
}
