//! How callers reach the table task: its command channel, the requests that
//! wait for an answer, and the counters the task keeps.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::messages::{Command, Op, Query};
use crate::table::{SessionId, TableStats};

/// Handle to the table task.
#[derive(Clone)]
pub struct TableHandle {
    /// Command channel (capacity [`super::COMMAND_QUEUE`]).
    pub commands: mpsc::Sender<Command>,
    /// What the task counts as it applies operations.
    pub counters: Arc<TableCounters>,
}

/// Operations the table task ignored, counted (plain atomics, read by the
/// metrics at scrape time).
#[derive(Debug, Default)]
pub struct TableCounters {
    /// REMOVEs for routes the session never announced.
    pub unknown_withdrawals: AtomicU64,
    /// Duplicate SUBSCRIBEs (no second dump).
    pub duplicate_subscribes: AtomicU64,
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
