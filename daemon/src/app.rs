//! The daemon as a whole: resolved settings in, running services out.
//!
//! `main.rs` turns flags and the config file into [`Settings`]; [`run`]
//! starts the route server (and, as they arrive, the control API and the
//! client role) and handles signals: SIGTERM/SIGINT stop, SIGHUP reloads.

use std::net::SocketAddr;
use std::path::PathBuf;

use tracing::{error, info, warn};

use crate::server::{Server, ServerConfig};
use crate::wire::Route;

/// Control API settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiSettings {
    /// Unix socket path.
    pub socket: PathBuf,
    /// Permission bits of the socket file (e.g. 0o660).
    pub socket_mode: u32,
    /// Group owning the socket file, if set.
    pub socket_group: Option<String>,
    /// Optional TCP listener (loopback by default when enabled).
    pub tcp_listen: Option<SocketAddr>,
    /// The TCP listener serves read-only RPCs only.
    pub tcp_read_only: bool,
}

/// Everything the daemon needs to run, resolved from flags and the config file.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The MetalBond route server.
    pub server: ServerConfig,
    /// The control API.
    pub api: ApiSettings,
    /// Directory of the daemon's own state store.
    pub state_dir: PathBuf,
    /// Routes announced by the daemon itself, from the config file.
    pub static_routes: Vec<Route>,
    /// Log filter directive (e.g. `info`, `debug`).
    pub log_level: String,
    /// Accepted for compatibility with the Go reference; not served yet.
    pub http: Option<String>,
}

/// Re-reads the settings (the config file) on SIGHUP.
pub type Reloader = Box<dyn Fn() -> Result<Settings, String> + Send + Sync>;

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(settings: Settings, reload: Option<Reloader>) -> Result<(), String> {
    if let Some(http) = &settings.http {
        warn!(addr = %http, "--http is accepted for compatibility but not served yet");
    }
    let server = Server::start(settings.server.clone())
        .await
        .map_err(|e| e.to_string())?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        keepalive_secs = settings.server.session.keepalive_secs,
        "metalbondd running"
    );
    let mut signals = Signals::new().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    loop {
        match signals.next().await {
            Signal::Stop => break,
            Signal::Reload => match &reload {
                Some(reload) => match reload() {
                    Ok(_new) => warn!(
                        "SIGHUP: configuration re-read; applying changes is not implemented yet"
                    ),
                    Err(e) => {
                        error!("SIGHUP: configuration rejected, keeping the running one: {e}")
                    }
                },
                None => info!("SIGHUP ignored: no configuration file"),
            },
        }
    }
    info!("shutting down");
    server.shutdown();
    Ok(())
}

enum Signal {
    Stop,
    Reload,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
