//! The task that owns the route table and the update log, and the messages
//! through which everyone else reaches it.
//!
//! Sessions send it commands over one bounded channel; it applies them in
//! order, encodes what subscribers must hear once, hands it to the
//! subscribers of each touched VNI through their mailboxes (ADR 0011), and
//! never waits for any session (ARCHITECTURE.md properties 3 and 4). The
//! API, the status page, the metrics and the config path ask it questions
//! and apply the daemon's own routes through the same channel.
//!
//! * [`messages`]: what the task accepts (commands, operations, queries) and
//!   what it answers (pages of routes, watch snapshots).
//! * [`handle`]: [`TableHandle`], what callers hold, and the task's counters.
//! * `task`: the task itself (batches, fan-out bookkeeping, dumps, delayed
//!   withdrawals, returning freed memory).
//!
//! The pure table and fan-out it drives are in [`crate::table`]; this module
//! is the tokio shell around them, below `server` (which only runs sessions).

pub mod handle;
pub mod messages;
mod task;

pub use handle::{TableCounters, TableHandle};
pub use messages::{AnnouncerQuery, Command, Op, Query, RoutePage, RouteQuery};
pub use task::spawn;

/// Capacity of the command channel.
pub const COMMAND_QUEUE: usize = 1024;
