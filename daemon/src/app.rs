//! The daemon as a whole: resolved settings in, running services out.
//!
//! `main.rs` turns flags and the config file into [`Settings`]; [`run`]
//! opens the state store, starts the route server, restores the operator's
//! injected routes and the configured static routes, starts the control API,
//! and handles signals and API requests: SIGTERM/SIGINT/Shutdown stop,
//! SIGHUP/Reload re-read the configuration.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use metalbond_proto::api as pb;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::api::{self, ApiState, ControlRequest, ReloadError};
use crate::client::{Agent, ClientSettings};
use crate::http::{self, HttpState, Readiness};
use crate::logging::LogControl;
use crate::metrics::Telemetry;
use crate::notify;
use crate::server::{Server, ServerConfig};
use crate::store::Store;
use crate::table::{LOCAL_API, LOCAL_CONFIG};
use crate::table_task::Op;
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
    /// A route watcher this many bytes behind the update log is told it lagged.
    pub watch_max_lag_bytes: u64,
}

/// Metrics settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Address of the metrics listener; off when `None`.
    pub listen: Option<SocketAddr>,
    /// Most VNIs with their own `vni` label.
    pub vni_label_limit: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            listen: None,
            vni_label_limit: crate::metrics::DEFAULT_VNI_LABEL_LIMIT,
        }
    }
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
    /// The status page listener (`--http`, as in the Go reference).
    pub http: Option<SocketAddr>,
    /// The Prometheus metrics listener.
    pub metrics: MetricsSettings,
    /// The hypervisor (client) role, when enabled (`metalbondd client`, or a
    /// `[client]` section in the config file).
    pub client: Option<ClientSettings>,
}

/// Re-reads the settings (the config file) on SIGHUP or an API Reload.
pub type Reloader = Box<dyn Fn() -> Result<Settings, String> + Send + Sync>;

/// Runs the daemon until SIGTERM, SIGINT or an API Shutdown.
pub async fn run(
    settings: Settings,
    reload: Option<Reloader>,
    log: Option<LogControl>,
) -> Result<(), String> {
    // First, so that a SIGTERM at any later moment is a graceful stop.
    let mut signals = Signals::new().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let store_dir = settings.state_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&store_dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let store = Arc::new(store);
    info!(path = %store.path().display(), "state store open");

    // The hypervisor role, before anything is exposed: a missing tunnel
    // device is a startup failure.
    // The operator's API changes to it are merged in (stored wins; see
    // `client::operator`).
    let agent = match &settings.client {
        Some(client) => Some(Agent::start_with(client.clone(), Some(store.clone())).await?),
        None => None,
    };

    // Bound before the route server starts, so the socket exists by the time
    // the daemon says it listens; requests wait in the backlog until served.
    let unix = api::bind_unix_socket(
        &settings.api.socket,
        settings.api.socket_mode,
        settings.api.socket_group.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    info!(socket = %settings.api.socket.display(), "control API listening");
    let http_listeners = http::bind(&http::plan(settings.metrics.listen, settings.http))
        .await
        .map_err(|e| e.to_string())?;
    let (metrics_only_addr, http_addr) = http::bound_addrs(&http_listeners);
    // With `--metrics` and `--http` on one address, one listener serves both.
    let metrics_addr = settings.metrics.listen.and(metrics_only_addr.or(http_addr));

    let server = Server::start(settings.server.clone(), crate::table_task::spawn())
        .await
        .map_err(|e| e.to_string())?;
    let mut telemetry = Telemetry::new();
    // The route server's families only where it listens (not for
    // `metalbondd client`, whose table holds nothing but API routes).
    if !server.local_addrs.is_empty() {
        telemetry = telemetry.with_server(&server, settings.metrics.vni_label_limit);
    }
    if let Some(agent) = &agent {
        telemetry = telemetry.with_client(agent.stats.clone());
    }
    let telemetry = Arc::new(telemetry);

    // The daemon's own routes, before any peer can subscribe and ask for a dump.
    let reader = store.clone();
    let injected = tokio::task::spawn_blocking(move || reader.routes())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let restored = injected.len();
    server
        .table
        .local_ops(LOCAL_API, injected.into_iter().map(Op::Announce).collect())
        .await;
    server
        .table
        .local_ops(
            LOCAL_CONFIG,
            settings
                .static_routes
                .iter()
                .copied()
                .map(Op::Announce)
                .collect(),
        )
        .await;
    info!(
        injected_routes = restored,
        static_routes = settings.static_routes.len(),
        "daemon routes announced"
    );

    let (control_tx, mut control) = mpsc::channel(8);
    let (api_shutdown, api_stop) = watch::channel(false);
    let state = Arc::new(ApiState {
        table: server.table.clone(),
        registry: server.registry.clone(),
        store: store.clone(),
        inject_lock: tokio::sync::Mutex::new(()),
        started_at: SystemTime::now(),
        started: Instant::now(),
        listen: server.local_addrs.clone(),
        api_socket: settings.api.socket.clone(),
        static_routes: settings.static_routes.len().into(),
        control: control_tx,
        watch_max_lag_bytes: settings.api.watch_max_lag_bytes,
        client: agent.as_ref().map(Agent::handle),
        client_stats: agent.as_ref().map(|a| a.stats.clone()),
        overrides: agent
            .as_ref()
            .map(|a| a.overrides.clone())
            .unwrap_or_default(),
        metrics: telemetry.api(),
        metrics_addr,
        http_addr,
    });
    let tcp = settings
        .api
        .tcp_listen
        .map(|addr| (addr, settings.api.tcp_read_only));
    let api_tasks = api::serve(state.clone(), unix, tcp, api_stop.clone())
        .await
        .map_err(|e| e.to_string())?;
    let readiness = Arc::new(Readiness::default());
    let http_tasks = http::serve(
        http_listeners,
        Arc::new(HttpState {
            telemetry,
            table: server.table.clone(),
            sessions: server.registry.clone(),
            agent: agent.as_ref().map(Agent::handle),
            readiness: readiness.clone(),
        }),
        api_stop,
    );

    // Every listener is bound and the daemon's routes are in the table.
    readiness.serving();
    let status = serving_status(
        &server.local_addrs,
        settings.client.as_ref(),
        &settings.api.socket,
    );
    notify::ready(&status);
    let watchdog = notify::watchdog_interval().map(|every| {
        info!(interval = ?every, "systemd watchdog enabled");
        tokio::spawn(notify::watchdog(every))
    });

    info!(
        version = env!("CARGO_PKG_VERSION"),
        keepalive_secs = settings.server.session.keepalive_secs,
        "metalbondd running"
    );
    let mut running = settings;
    loop {
        let request = tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop => break,
                Signal::Reload => None,
            },
            request = control.recv() => match request {
                Some(ControlRequest::Shutdown) | None => break,
                Some(ControlRequest::Reload(reply)) => Some(reply),
            },
        };
        notify::reloading();
        let outcome = match &reload {
            None => Err(ReloadError::NoConfigFile),
            Some(reload) => match reload() {
                Ok(new) => Ok(apply(&mut running, new, &server, &state, log.as_ref()).await),
                Err(e) => Err(ReloadError::Rejected(e)),
            },
        };
        match &outcome {
            Ok(r) => {
                info!(applied = ?r.applied, needs_restart = ?r.needs_restart, "configuration reloaded")
            }
            // The operator asked for something this daemon has not got; the
            // daemon itself is fine.
            Err(e @ ReloadError::NoConfigFile) => warn!("reload requested: {e}"),
            Err(ReloadError::Rejected(e)) => {
                error!("configuration not reloaded, keeping the running one: {e}")
            }
        }
        notify::ready(&status);
        if let Some(reply) = request {
            let _ = reply.send(outcome);
        }
    }
    info!("shutting down");
    readiness.stopping();
    notify::stopping();
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    if let Some(agent) = agent {
        agent.shutdown().await;
    }
    api_shutdown.send_replace(true);
    server.shutdown();
    // Listeners drain their requests; a client that does not let go (an
    // endless watch, a stalled connection) does not hold the exit up.
    let drain = join_or_abort(api_tasks.into_iter().chain(http_tasks).collect());
    if tokio::time::timeout(SHUTDOWN_DRAIN, drain).await.is_err() {
        warn!(
            after = ?SHUTDOWN_DRAIN,
            "API or HTTP clients still connected at shutdown; closing them"
        );
    }
    let _ = std::fs::remove_file(&running.api.socket);
    Ok(())
}

/// The `STATUS=` text systemd shows while the daemon serves.
fn serving_status(
    listen: &[SocketAddr],
    client: Option<&ClientSettings>,
    api_socket: &std::path::Path,
) -> String {
    let mut roles = Vec::new();
    if !listen.is_empty() {
        let addrs: Vec<String> = listen.iter().map(ToString::to_string).collect();
        roles.push(format!("route server on {}", addrs.join(", ")));
    }
    if let Some(c) = client {
        roles.push(format!(
            "hypervisor role with {} route server(s)",
            c.servers.len()
        ));
    }
    format!(
        "serving: {}; API at {}",
        roles.join(" and "),
        api_socket.display()
    )
}

/// How long API and HTTP clients may take to finish at shutdown.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits for every task; dropping the future aborts those still running.
async fn join_or_abort(tasks: Vec<tokio::task::JoinHandle<()>>) {
    struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            for t in &self.0 {
                t.abort();
            }
        }
    }
    let mut guard = AbortOnDrop(tasks);
    for task in guard.0.iter_mut() {
        let _ = task.await;
    }
}

/// Applies what can change at runtime; reports the rest.
async fn apply(
    running: &mut Settings,
    new: Settings,
    server: &Server,
    state: &ApiState,
    log: Option<&LogControl>,
) -> pb::ReloadResponse {
    let mut applied = Vec::new();
    let mut needs_restart = Vec::new();

    let old_routes: BTreeSet<Route> = running.static_routes.iter().copied().collect();
    let new_routes: BTreeSet<Route> = new.static_routes.iter().copied().collect();
    let withdraw: Vec<Op> = old_routes
        .difference(&new_routes)
        .copied()
        .map(Op::Withdraw)
        .collect();
    let announce: Vec<Op> = new_routes
        .difference(&old_routes)
        .copied()
        .map(Op::Announce)
        .collect();
    if !withdraw.is_empty() || !announce.is_empty() {
        applied.push(format!(
            "static routes: {} announced, {} withdrawn",
            announce.len(),
            withdraw.len()
        ));
        let ops = withdraw.into_iter().chain(announce).collect();
        server.table.local_ops(LOCAL_CONFIG, ops).await;
        state.static_routes.store(new_routes.len(), Relaxed);
    }

    if new.server.session != running.server.session {
        server.set_session_settings(new.server.session.clone());
        applied.push("server keepalive, timeouts, lag limit and pacing (for new sessions)".into());
    }
    if new.server.max_sessions != running.server.max_sessions {
        server.set_max_sessions(new.server.max_sessions);
        applied.push(format!("server.max_sessions = {}", new.server.max_sessions));
    }
    let mut log_level = running.log_level.clone();
    if new.log_level != running.log_level {
        match log.map(|l| l.set_level(&new.log_level)) {
            Some(Ok(done)) => {
                applied.push(done);
                log_level = new.log_level.clone();
            }
            Some(Err(e)) => needs_restart.push(e),
            None => needs_restart.push("log.level".into()),
        }
    }
    for (what, changed) in [
        ("server.listen", new.server.listen != running.server.listen),
        ("api", new.api != running.api),
        ("state.dir", new.state_dir != running.state_dir),
        ("server.http", new.http != running.http),
        ("metrics", new.metrics != running.metrics),
        ("client", new.client != running.client),
    ] {
        if changed {
            needs_restart.push(what.to_string());
        }
    }

    let still_running = Settings {
        static_routes: new.static_routes,
        log_level,
        server: ServerConfig {
            session: new.server.session,
            max_sessions: new.server.max_sessions,
            ..running.server.clone()
        },
        ..running.clone()
    };
    *running = still_running;
    pb::ReloadResponse {
        applied,
        needs_restart,
    }
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
