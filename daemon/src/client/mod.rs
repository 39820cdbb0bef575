//! The hypervisor (client) role: connections to route servers and the
//! bookkeeping of the routes they send (PROTOCOL.md sections 3 and 5).
//!
//! - [`received`]: [`ReceivedRoutes`], a pure data structure that
//!   reference-counts received routes per server session and says what the
//!   kernel should hold for each (VNI, destination).
//! - [`connection`]: one tokio task per configured server that keeps a
//!   session up (reconnecting with jittered exponential backoff), re-sends
//!   subscriptions and announcements on every new session, and reports what
//!   it receives as [`ClientEvent`]s.
//!
//! - [`planner`]: the agent's decisions without I/O: events and `now` in,
//!   dataplane operations and the next deadline out (hold, stale,
//!   reconciliation, retries, subscriptions, mappings).
//! - [`dataplane`]: the [`Dataplane`] trait the planner's operations run
//!   on, implemented by the kernel installer and in memory.
//! - [`operator`]: the operator's API changes, stored durably, and how
//!   they merge with the configuration at start.
//! - [`agent`]: the hypervisor agent, the shell that feeds the planner
//!   with the connections' events, the API's requests and its timer, runs
//!   its operations on the dataplane, and owns the operator's changes
//!   (check, store, apply).
//! - [`feed`]: the received-routes feed's fan-out to the API's watches.
//! - [`reload`]: the difference a configuration reload applies to the
//!   running agent (pure; ADR 0023).
//! - [`stats`]: the role's counters ([`AgentStats`]), read by the metrics.

pub mod agent;
pub mod connection;
pub mod dataplane;
mod executor;
pub mod feed;
pub mod operator;
pub mod planner;
pub mod received;
pub mod reload;
pub mod stats;

use std::fmt;

pub use agent::{
    Agent, AgentHandle, AgentRequest, AgentStats, Applied, ClientSettings, ServerStatus,
};
pub use connection::{
    backoff_delay, BackoffConfig, Client, ClientCommand, ClientConfig, ClientEvent, Desired,
};
pub use dataplane::{Dataplane, DataplaneOp, Executed, MemoryDataplane};
pub use metalbondd_config::ServerAddr;
pub use planner::{
    ClientChange, Planner, ReceivedEntry, Refused, DEFAULT_HOLD_TIME, DEFAULT_STALE_TIME,
    QUIET_AFTER_DUMP,
};
pub use received::{Change, ReceivedRoutes};
pub use stats::NetlinkOpCounters;

/// Identifies one configured route server (its index in the configured
/// list). Stable across reconnects: received routes are counted per server,
/// and a reconnect replaces all routes of the server's previous session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub usize);

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server#{}", self.0)
    }
}
