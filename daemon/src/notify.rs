//! systemd's service notification protocol (`sd_notify(3)`), without
//! libsystemd: one datagram per state change to `$NOTIFY_SOCKET`.
//!
//! The daemon says `READY=1` once every listener is bound and its own routes
//! are in the table, `RELOADING=1` … `READY=1` around a reload, `STOPPING=1`
//! when it starts shutting down, and `WATCHDOG=1` every half watchdog
//! interval if the unit sets `WatchdogSec=`. Without `$NOTIFY_SOCKET` (not
//! started by systemd) every call does nothing.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tracing::{debug, warn};

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to the service
/// manager. Returns `Ok(false)` when not started with `$NOTIFY_SOCKET`.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket address.
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
            return Ok(true);
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "abstract NOTIFY_SOCKET",
            ));
        }
    }
    socket.send_to(state.as_bytes(), &path)?;
    Ok(true)
}

/// Like [`notify`], logging a failure instead of returning it: a missing
/// notification must not stop the daemon (systemd will time it out and say
/// so).
pub fn tell(state: &str) {
    match notify(state) {
        Ok(true) => debug!(state, "told the service manager"),
        Ok(false) => {}
        Err(e) => warn!(state, error = %e, "cannot notify the service manager"),
    }
}

/// The daemon is serving.
pub fn ready(status: &str) {
    tell(&format!("READY=1\nSTATUS={status}"));
}

/// A reload started.
pub fn reloading() {
    tell("RELOADING=1");
}

/// The daemon is shutting down.
pub fn stopping() {
    tell("STOPPING=1\nSTATUS=shutting down");
}

/// The keepalive interval the service manager asks for, if any: half of
/// `$WATCHDOG_USEC`, when `$WATCHDOG_PID` is unset or is this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Pings the watchdog until the task is dropped or aborted. The pings come
/// from the async runtime, so a wedged runtime stops them and systemd
/// restarts the daemon.
pub async fn watchdog(every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        tell("WATCHDOG=1");
    }
}

#[cfg(test)]
mod tests {
    // The environment is process-wide: the tests that set NOTIFY_SOCKET live
    // in the end-to-end tests, which start the daemon as a child process.
    use super::*;

    #[test]
    fn without_notify_socket_nothing_is_sent() {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            assert!(!notify("READY=1").unwrap());
        }
    }
}
