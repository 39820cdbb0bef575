//! metalbondd: a MetalBond v1 route server and hypervisor agent.
//!
//! Data flow: bytes -> [`wire`] frame decoder -> [`session`] state machine ->
//! [`table`] (single owner) -> shared update log -> per-session batched writes.
//! The protocol core ([`wire`], [`session`], [`table`]) does no I/O;
//! [`table_task`] is the task that owns the table and defines the messages
//! that reach it; [`link`] is the socket loop around one session that both
//! roles configure: the [`server`] module is the route server, [`client`]
//! the hypervisor role. [`api`] is the gRPC control API, [`metrics`] and [`http`] the
//! Prometheus metrics and the HTTP status listener, [`notify`] systemd's
//! readiness protocol.

#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod client;
pub mod etcd;
pub mod fleet;
pub mod http;
pub mod kernel;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod server;
pub mod session;
pub mod settings;
pub mod signal;
pub mod store;
pub mod table;
pub mod table_task;
pub mod tls;
pub mod wire;
