//! Configuration for metalbondd.
//!
//! For now this holds the defaults and limits shared by the daemon and its
//! tools; the TOML file format builds on it.

#![warn(missing_docs)]

/// Default MetalBond TCP port.
pub const DEFAULT_PORT: u16 = 4711;

/// Address a server listens on when started with no arguments: loopback only,
/// so a first run exposes nothing.
pub const DEFAULT_LISTEN: &str = "[::1]:4711";

/// Default keepalive interval in seconds (PROTOCOL.md section 3). A configured
/// 0 means this default.
pub const DEFAULT_KEEPALIVE_SECS: u32 = 5;

/// Default limit on concurrent sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;

/// Default limit, in bytes, on how far one session may fall behind the shared
/// update log before it is closed so that its client reconnects and resyncs.
pub const DEFAULT_MAX_SESSION_LAG_BYTES: u64 = 1 << 30;

/// Resolves a configured keepalive interval: 0 means the default.
pub fn effective_keepalive_secs(configured: u32) -> u32 {
    if configured == 0 {
        DEFAULT_KEEPALIVE_SECS
    } else {
        configured
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_keepalive_means_default() {
        assert_eq!(effective_keepalive_secs(0), 5);
        assert_eq!(effective_keepalive_secs(3), 3);
    }
}
