//! Structured logs on stderr (tracing), with a log level that a reload can
//! change at runtime.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log level of the running daemon.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set: it wins over the configuration, also on reload.
    env_override: bool,
}

/// Installs the global subscriber: `RUST_LOG` if set and valid, else `level`
/// (a tracing `EnvFilter` directive such as `info` or `metalbondd=debug`).
pub fn init(level: &str, json: bool) -> LogControl {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_override = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    // Colours only for a person at a terminal, never in files or journald.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry.with(fmt.json()).init();
    } else if stderr_is_journal() {
        // journald stamps every line itself: no second timestamp.
        registry.with(fmt.without_time()).init();
    } else {
        registry.with(fmt).init();
    }
    LogControl {
        handle,
        env_override,
    }
}

/// True when stderr is connected to the systemd journal: `$JOURNAL_STREAM`
/// names the device and inode of that stream (systemd.exec(5)).
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream
        .to_str()
        .and_then(|s| s.split_once(':'))
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
    else {
        return false;
    };
    // SAFETY: fstat on the process's stderr descriptor into a zeroed stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

impl LogControl {
    /// Switches to `level`. Returns what happened, for the reload report.
    pub fn set_level(&self, level: &str) -> Result<String, String> {
        if self.env_override {
            return Ok(format!(
                "log level {level:?} not applied: RUST_LOG is set and wins"
            ));
        }
        let filter = EnvFilter::try_new(level).map_err(|e| format!("log level {level:?}: {e}"))?;
        self.handle
            .reload(filter)
            .map_err(|e| format!("log level {level:?}: {e}"))?;
        Ok(format!("log.level = {level}"))
    }
}
