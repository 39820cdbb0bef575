//! Configuration for metalbondd.
//!
//! This crate holds the defaults and limits shared by the daemon and its
//! tools, and the TOML configuration file ([`Config`]): every section and key
//! is optional and defaults to the value the command line uses; anything
//! unknown or invalid is a [`ConfigError`] that names the file, line and
//! column (`FILE:LINE:COL: message`).
//!
//! The crate knows nothing of the daemon: static routes stay strings here
//! (with their position in the file) and the daemon parses them, reporting a
//! bad one with [`Config::error_at`].

#![warn(missing_docs)]

mod addr;
mod error;
mod file;
mod parse;
mod policy;
mod recover;
mod store;

#[cfg(test)]
mod tests;

pub use addr::{listen_addr, no_duplicate_listen, ServerAddr};
pub use error::{line_col, ConfigError, ConfigErrors};
pub use file::{
    ApiSection, ClientSection, ClientTls, Config, LogFormat, LogSection, MetricsSection,
    RoutesSection, RuntimeSection, ServerSection, ServerTls, StateSection,
};
pub use parse::http_addr;
pub use policy::{
    canonical, Cidr, CidrValue, ConnectRate, DestinationRule, MaxRoutesAction, NextHopRule,
    PolicyClass, PolicySection, SpannedNames, VniRange,
};
pub use store::{
    etcd_endpoint, parse_duration, EtcdSection, StoreBackend, StoreSection,
    DEFAULT_ETCD_DIAL_TIMEOUT, DEFAULT_ETCD_MAX_TXN_OPS, DEFAULT_ETCD_PREFIX,
    DEFAULT_ETCD_REQUEST_TIMEOUT,
};
/// A value together with its byte range in the configuration file.
pub use toml::Spanned;

/// Default MetalBond TCP port.
pub const DEFAULT_PORT: u16 = 4711;

/// Address a server listens on when started with no arguments: loopback only,
/// so a first run exposes nothing.
pub const DEFAULT_LISTEN: &str = "[::1]:4711";

/// Default keepalive interval in seconds (PROTOCOL.md section 3). A configured
/// 0 means this default.
pub const DEFAULT_KEEPALIVE_SECS: u32 = 5;

/// Largest keepalive interval, in seconds, the configuration file accepts
/// (one hour; a session is declared dead after 2.5 intervals of silence).
pub const MAX_KEEPALIVE_SECS: u32 = 3600;

/// Default limit on concurrent sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;

/// Default limit, in bytes, on how far one session may fall behind the shared
/// update log before it is closed so that its client reconnects and resyncs.
pub const DEFAULT_MAX_SESSION_LAG_BYTES: u64 = 1 << 30;

/// Default time, in seconds, a session's socket may accept no data before
/// the session is closed.
pub const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 60;

/// Default limit, in bytes, on route data a paced peer may have
/// unacknowledged (docs/adr/0006); 0 disables pacing.
pub const DEFAULT_PACE_LIMIT_BYTES: usize = 16 * 1024;

/// Port of the Prometheus metrics listener in the documentation, the
/// examples and the packaging (the listener is off unless configured).
pub const DEFAULT_METRICS_PORT: u16 = 9711;

/// Default limit on VNIs with their own `vni` label in the per-VNI metrics.
pub const DEFAULT_METRICS_VNI_LABEL_LIMIT: usize = 1000;

/// Path of the control API's Unix socket of a route server run as root (the
/// daemon's default when it may create `/run/metalbondd`; otherwise, and for
/// the client role, see `metalbondd::store::default_api_socket`).
pub const DEFAULT_API_SOCKET: &str = "/run/metalbondd/api.sock";

/// Default permission bits of the control API's Unix socket.
pub const DEFAULT_API_SOCKET_MODE: u32 = 0o660;

/// By default the optional TCP control API listener serves read-only RPCs only.
pub const DEFAULT_API_TCP_READ_ONLY: bool = true;

/// Default limit, in bytes, on how far a route watcher may fall behind the
/// update log before it gets a `lagged` event and its stream ends.
pub const DEFAULT_WATCH_MAX_LAG_BYTES: u64 = 64 << 20;

/// Directory of the state store of a route server run as root (the daemon's
/// default when it may create it; otherwise, and for the client role, see
/// `metalbondd::store::default_state_dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/metalbondd";

/// Default hold time, in seconds: how long the hypervisor role keeps the
/// routes of an earlier run at start before deleting those the servers do not
/// confirm.
pub const DEFAULT_HOLD_TIME_SECS: u64 = 30;

/// Default stale time, in seconds: how long the hypervisor role keeps its
/// installed routes after losing every server.
pub const DEFAULT_STALE_TIME_SECS: u64 = 60;

/// Default first reconnect delay of the client role, in seconds.
pub const DEFAULT_RECONNECT_MIN_SECS: u64 = 1;

/// Default largest reconnect delay of the client role, in seconds.
pub const DEFAULT_RECONNECT_MAX_SECS: u64 = 30;

/// Largest hold or stale time, in seconds, the configuration accepts (a day).
pub const MAX_HOLD_SECS: u64 = 86_400;

/// Parses an `--install-routes` / `client.install_routes` mapping
/// `VNI#TABLE` (table not 0) into (VNI, table).
pub fn parse_install_route(text: &str) -> Result<(u32, u32), String> {
    let (vni, table) = text
        .split_once('#')
        .ok_or("expected VNI#TABLE, e.g. 100#100")?;
    let vni: u32 = vni
        .trim()
        .parse()
        .map_err(|_| format!("bad VNI {vni:?}: expected a number"))?;
    let table: u32 = table
        .trim()
        .parse()
        .map_err(|_| format!("bad table {table:?}: expected a number 1..4294967295"))?;
    if table == 0 {
        return Err(
            "table 0 is not a valid routing table (the kernel reads it as \"all tables\")".into(),
        );
    }
    Ok((vni, table))
}

/// Default warning threshold of a policy class's `max_routes`, in percent.
pub const DEFAULT_MAX_ROUTES_WARN_PERCENT: u8 = 80;

/// Default log filter (a tracing `EnvFilter` directive).
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// Worker threads of the route server's async runtime (`[runtime]
/// threads`, `--threads`). One: its work is one table task and many small
/// session tasks, and spreading those over more workers cost more in
/// cross-thread wake-ups and cache traffic than it gained (ADR 0033).
pub const DEFAULT_SERVER_THREADS: usize = 1;

/// Worker threads of the hypervisor role's runtime: two, so that reading
/// and decoding a large sync overlaps with the agent's bookkeeping (its 1M
/// routes arrive about 20 % sooner than with one; ADR 0033).
pub const DEFAULT_CLIENT_THREADS: usize = 2;

/// Resolves a configured keepalive interval: 0 means the default.
pub fn effective_keepalive_secs(configured: u32) -> u32 {
    if configured == 0 {
        DEFAULT_KEEPALIVE_SECS
    } else {
        configured
    }
}
