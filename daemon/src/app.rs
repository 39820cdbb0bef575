//! The daemon as a whole: resolved settings in, running services out.
//!
//! [`crate::settings`] turns flags and the config file into [`Settings`];
//! [`run`] takes the daemon through three steps, each its own function:
//! [`Daemon::start`] opens the state store, starts the hypervisor role,
//! binds every listener, starts the route server and restores the
//! operator's injected routes and the configured static routes;
//! [`Daemon::serve`] reports ready and handles signals and API requests
//! (SIGHUP/Reload re-read the configuration) until SIGTERM/SIGINT/Shutdown;
//! [`Daemon::stop`] shuts down, /healthz and systemd told first.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use metalbond_proto::api as pb;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::api::{self, ApiState, ControlRequest, ReloadError};
use crate::client::reload::ClientDiff;
use crate::client::{Agent, AgentHandle, AgentRequest, ClientSettings};
use crate::fleet::FleetDirectory;
use crate::http::{self, Endpoints, HttpState, Readiness};
use crate::logging::LogControl;
use crate::metrics::Telemetry;
use crate::notify;
use crate::server::{Server, ServerConfig};
use crate::settings::{Reloader, Settings};
use crate::store::Store;
use crate::table::{LOCAL_API, LOCAL_CONFIG};
use crate::table_task::Op;
use crate::wire::Route;

/// Runs the daemon until SIGTERM, SIGINT or an API Shutdown.
pub async fn run(
    settings: Settings,
    reload: Option<Reloader>,
    log: Option<LogControl>,
) -> Result<(), String> {
    // First, so that a SIGTERM at any later moment is a graceful stop.
    let mut signals = Signals::new().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let mut daemon = Daemon::start(settings).await?;
    daemon
        .serve(&mut signals, reload.as_ref(), log.as_ref())
        .await;
    daemon.stop().await;
    Ok(())
}

/// The running daemon: its services, the tasks serving its listeners and
/// the settings in force.
struct Daemon {
    /// The settings in force (a reload changes what it can apply).
    running: Settings,
    server: Server,
    agent: Option<Agent>,
    api: Arc<ApiState>,
    /// API requests for the daemon itself (reload, shutdown).
    control: mpsc::Receiver<ControlRequest>,
    readiness: Arc<Readiness>,
    /// Tells the API and HTTP listeners to stop.
    listeners_stop: watch::Sender<bool>,
    /// The API and HTTP listener tasks.
    listener_tasks: Vec<JoinHandle<()>>,
    /// The systemd watchdog task, once serving (if systemd asks for one).
    watchdog: Option<JoinHandle<()>>,
}

/// The API and HTTP listeners, bound before the route server starts.
struct Listeners {
    unix: UnixListener,
    http: Vec<(TcpListener, Endpoints)>,
}

impl Listeners {
    /// Binds the API socket and the HTTP listeners. Bound before the route
    /// server starts, so the socket exists by the time the daemon says it
    /// listens; requests wait in the backlog until served.
    async fn bind(settings: &Settings) -> Result<Listeners, String> {
        let unix = api::bind_unix_socket(
            &settings.api.socket,
            settings.api.socket_mode,
            settings.api.socket_group.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        info!(socket = %settings.api.socket.display(), "control API listening");
        let http = http::bind(&http::plan(settings.metrics.listen, settings.http))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Listeners { unix, http })
    }
}

impl Daemon {
    /// Opens the store, starts the hypervisor role, binds every listener,
    /// starts the route server, restores the daemon's own routes and serves
    /// the API and HTTP listeners. Not yet reported ready.
    async fn start(settings: Settings) -> Result<Daemon, String> {
        let store = open_store(&settings).await?;
        // The hypervisor role, before anything is exposed: a missing tunnel
        // device is a startup failure.
        let agent = match &settings.client {
            Some(client) => Some(start_agent(client, &store).await?),
            None => None,
        };
        let listeners = Listeners::bind(&settings).await?;
        let server = Server::start(settings.server.clone(), crate::table_task::spawn())
            .await
            .map_err(|e| e.to_string())?;
        let fleet = Arc::new(FleetDirectory::new(
            settings
                .name
                .clone()
                .unwrap_or_else(|| crate::fleet::default_name(&server.local_addrs)),
            server.local_addrs.clone(),
            server.table.clone(),
            server.registry.clone(),
        ));
        fleet.add_api_address(settings.api.socket.display().to_string());
        let injected = injected_routes(&store, settings.etcd.is_some()).await?;
        restore_routes(&server, &injected, &settings.static_routes).await;
        let shared = match &settings.etcd {
            Some(etcd) => Some(start_shared_state(etcd, &server, &store, injected).await?),
            None => None,
        };
        let mut telemetry = telemetry(&settings, &server, agent.as_ref(), &fleet);
        if let Some(shared) = &shared {
            telemetry = telemetry.with_shared_state(shared.clone());
        }
        let telemetry = Arc::new(telemetry);

        let (metrics_only_addr, http_addr) = http::bound_addrs(&listeners.http);
        // With `--metrics` and `--http` on one address, one listener serves both.
        let metrics_addr = settings.metrics.listen.and(metrics_only_addr.or(http_addr));
        let (control_tx, control) = mpsc::channel(8);
        let (listeners_stop, stopped) = watch::channel(false);
        let api = Arc::new(ApiState {
            table: server.table.clone(),
            registry: server.registry.clone(),
            store,
            shared,
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
            session_settings: server.settings_watch(),
            fleet: fleet.clone(),
        });
        let tcp = settings
            .api
            .tcp_listen
            .map(|addr| (addr, settings.api.tcp_read_only));
        let mut listener_tasks = api::serve(api.clone(), listeners.unix, tcp, stopped.clone())
            .await
            .map_err(|e| e.to_string())?;
        let readiness = Arc::new(Readiness::default());
        listener_tasks.extend(http::serve(
            listeners.http,
            Arc::new(HttpState {
                telemetry,
                table: server.table.clone(),
                sessions: server.registry.clone(),
                agent: agent.as_ref().map(Agent::handle),
                readiness: readiness.clone(),
                shared: api.shared.clone(),
                // Only where the route server listens (as its metrics).
                fleet: (!server.local_addrs.is_empty()).then(|| fleet.clone()),
            }),
            stopped.clone(),
        ));
        // With etcd, the route server registers itself and follows the
        // fleet's members (after the API is bound: its addresses are in the
        // record). Joined at stop, so the lease is revoked before exit.
        if let (Some(shared), false) = (&api.shared, server.local_addrs.is_empty()) {
            listener_tasks.push(tokio::spawn(crate::etcd::registration::run(
                shared.client().clone(),
                shared.settings().prefix.clone(),
                fleet.clone(),
                stopped,
            )));
        }
        Ok(Daemon {
            running: settings,
            server,
            agent,
            api,
            control,
            readiness,
            listeners_stop,
            listener_tasks,
            watchdog: None,
        })
    }

    /// Reports ready (every listener is bound and the daemon's routes are in
    /// the table), then handles reloads until a stop signal or an API
    /// Shutdown.
    async fn serve(
        &mut self,
        signals: &mut Signals,
        reload: Option<&Reloader>,
        log: Option<&LogControl>,
    ) {
        self.readiness.serving();
        let status = serving_status(
            &self.server.local_addrs,
            self.running.client.as_ref(),
            &self.running.api.socket,
        );
        notify::ready(&status);
        self.watchdog = notify::watchdog_interval().map(|every| {
            info!(interval = ?every, "systemd watchdog enabled");
            tokio::spawn(notify::watchdog(every))
        });
        info!(
            version = env!("CARGO_PKG_VERSION"),
            keepalive_secs = self.running.server.session.keepalive_secs,
            // What the runtime really has, not what was asked for.
            worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            "metalbondd running"
        );
        loop {
            let request = tokio::select! {
                signal = signals.next() => match signal {
                    Signal::Stop => return,
                    Signal::Reload => None,
                },
                request = self.control.recv() => match request {
                    Some(ControlRequest::Shutdown) | None => return,
                    Some(ControlRequest::Reload(reply)) => Some(reply),
                },
            };
            notify::reloading();
            let outcome = self.reload(reload, log).await;
            // The number of route servers may have changed.
            let status = serving_status(
                &self.server.local_addrs,
                self.running.client.as_ref(),
                &self.running.api.socket,
            );
            notify::ready(&status);
            if let Some(reply) = request {
                let _ = reply.send(outcome);
            }
        }
    }

    /// Re-reads the configuration and applies what can change at runtime;
    /// logs the outcome.
    async fn reload(
        &mut self,
        reload: Option<&Reloader>,
        log: Option<&LogControl>,
    ) -> Result<pb::ReloadResponse, ReloadError> {
        let outcome = match reload {
            None => Err(ReloadError::NoConfigFile),
            Some(reload) => match reload() {
                Ok(new) => {
                    let agent = self.agent.as_ref().map(Agent::handle);
                    apply(&mut self.running, new, &self.server, &self.api, agent, log).await
                }
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
        outcome
    }

    /// Stops: /healthz answers 503 and systemd hears STOPPING=1 before any
    /// session closes; then the hypervisor role, the listeners and the route
    /// server stop, and the API socket is removed.
    async fn stop(self) {
        info!("shutting down");
        self.readiness.stopping();
        notify::stopping();
        if let Some(watchdog) = self.watchdog {
            watchdog.abort();
        }
        if let Some(agent) = self.agent {
            agent.shutdown().await;
        }
        self.listeners_stop.send_replace(true);
        self.server.shutdown();
        // Listeners drain their requests; a client that does not let go (an
        // endless watch, a stalled connection) does not hold the exit up.
        let drain = join_or_abort(self.listener_tasks);
        if tokio::time::timeout(SHUTDOWN_DRAIN, drain).await.is_err() {
            warn!(
                after = ?SHUTDOWN_DRAIN,
                "API or HTTP clients still connected at shutdown; closing them"
            );
        }
        let _ = std::fs::remove_file(&self.running.api.socket);
    }
}

/// Opens the daemon's state store (blocking I/O, off the runtime's threads).
async fn open_store(settings: &Settings) -> Result<Arc<Store>, String> {
    let dir = settings.state_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    info!(path = %store.path().display(), "state store open");
    Ok(Arc::new(store))
}

/// Starts the hypervisor role with the operator's API changes to it merged
/// in (stored wins; see `client::operator`).
async fn start_agent(client: &ClientSettings, store: &Arc<Store>) -> Result<Agent, String> {
    Agent::start_with(client.clone(), Some(store.clone())).await
}

/// The metric families of the roles that run.
fn telemetry(
    settings: &Settings,
    server: &Server,
    agent: Option<&Agent>,
    fleet: &Arc<FleetDirectory>,
) -> Telemetry {
    let mut telemetry = Telemetry::new();
    // The route server's families only where it listens (not for
    // `metalbondd client`, whose table holds nothing but API routes).
    if !server.local_addrs.is_empty() {
        telemetry = telemetry.with_server(
            server,
            settings.metrics.vni_label_limit,
            Some(fleet.clone()),
        );
    }
    if let Some(agent) = agent {
        telemetry = telemetry.with_client(agent.stats.clone());
    }
    telemetry
}

/// The operator's injected routes to announce at start: with the redb
/// backend the store's, with etcd the local cache of the shared state (the
/// last state seen, until the first snapshot corrects it). Routes injected
/// earlier under the redb backend stay in the store, unannounced, with a
/// warning: the operator state of an etcd fleet is what etcd holds.
async fn injected_routes(store: &Arc<Store>, etcd: bool) -> Result<Vec<Route>, String> {
    let reader = store.clone();
    let (injected, left_in_redb) = tokio::task::spawn_blocking(move || {
        if etcd {
            Ok((reader.shared_cache_routes()?, reader.route_count()?))
        } else {
            reader.routes().map(|routes| (routes, 0))
        }
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e: crate::store::StoreError| e.to_string())?;
    if left_in_redb > 0 {
        warn!(
            routes = left_in_redb,
            store = %store.path().display(),
            "routes injected under the redb backend are not announced with backend \"etcd\"; \
             inject them again through the API to put them into the shared state"
        );
    }
    Ok(injected)
}

/// Announces the daemon's own routes (the operator's injected ones, then
/// the configured static ones), before any peer can subscribe and ask for
/// a dump.
async fn restore_routes(server: &Server, injected: &[Route], static_routes: &[Route]) {
    server
        .table
        .local_ops(
            LOCAL_API,
            injected.iter().copied().map(Op::Announce).collect(),
        )
        .await;
    server
        .table
        .local_ops(
            LOCAL_CONFIG,
            static_routes.iter().copied().map(Op::Announce).collect(),
        )
        .await;
    info!(
        injected_routes = injected.len(),
        static_routes = static_routes.len(),
        "daemon routes announced"
    );
}

/// Starts the shared state on etcd (ADR 0031): its applied set starts from
/// the routes cached in the local store (announced already), its watcher
/// applies etcd's difference. Waits (bounded) for the first snapshot, so
/// that peers subscribing right after start see etcd's routes in their dump.
async fn start_shared_state(
    settings: &crate::etcd::client::EtcdSettings,
    server: &Server,
    store: &Arc<Store>,
    cached: Vec<Route>,
) -> Result<Arc<crate::etcd::shared::SharedState>, String> {
    let shared = crate::etcd::shared::SharedState::new(settings.clone(), cached)
        .map_err(|e| format!("store.etcd: {e}"))?;
    let mut revision = shared.revision_watch();
    tokio::spawn(shared.clone().run(server.table.clone(), store.clone()));
    let first = tokio::time::timeout(settings.request_timeout, revision.wait_for(|&r| r > 0)).await;
    match first {
        Ok(_) => info!(
            endpoints = ?settings.endpoints,
            prefix = %settings.prefix,
            routes = shared.status().routes,
            "shared state (etcd) in sync"
        ),
        Err(_) => warn!(
            endpoints = ?settings.endpoints,
            "shared state (etcd) not reachable at start: serving the routes cached locally, retrying"
        ),
    }
    Ok(shared)
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

/// Applies what can change at runtime; reports the rest. The client role's
/// difference goes first: if the agent refuses it (it checks everything
/// before changing anything), nothing of the reload is applied.
async fn apply(
    running: &mut Settings,
    new: Settings,
    server: &Server,
    state: &ApiState,
    agent: Option<AgentHandle>,
    log: Option<&LogControl>,
) -> Result<pb::ReloadResponse, ReloadError> {
    let mut applied = Vec::new();
    let mut needs_restart = Vec::new();

    let mut client = running.client.clone();
    match (running.client.as_ref(), new.client.as_ref(), agent) {
        (Some(old), Some(new_client), Some(agent)) => {
            let diff = ClientDiff::between(old, new_client);
            needs_restart.extend(diff.needs_restart.iter().map(ToString::to_string));
            if !diff.is_empty() {
                let reply = agent
                    .ask(|tx| AgentRequest::Reconfigure(diff, tx))
                    .await
                    .ok_or_else(|| ReloadError::Rejected("client: the agent stopped".into()))?;
                applied.extend(
                    reply.map_err(|r| ReloadError::Rejected(format!("client: {}", r.message())))?,
                );
            }
            // What runs now: the runtime keys of the new file, the
            // start-only ones of the old (reported again until a restart).
            client = Some(ClientSettings {
                servers: new_client.servers.clone(),
                subscriptions: new_client.subscriptions.clone(),
                announcements: new_client.announcements.clone(),
                install_routes: new_client.install_routes.clone(),
                ..old.clone()
            });
        }
        (old, new_client, _) if old != new_client => needs_restart.push("client".into()),
        _ => {}
    }

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
        if new.server.session.policy != running.server.session.policy {
            // Each live session re-matches its class and withdraws what the
            // new one refuses (ADR 0028), on its own task.
            applied.push("policy (new sessions, and open sessions re-checked)".into());
        }
        applied.push("server keepalive, timeouts, lag limit and pacing (for new sessions)".into());
    }
    // The certificate files were read again by the reload (a bad one
    // failed it, keeping these): handshakes from now on use them.
    let mut server_tls = running.server.tls.clone();
    match (&running.server.tls, &new.server.tls) {
        (Some(old), Some(newer)) => {
            old.replace_with(newer);
            server_tls = Some(crate::tls::ServerTls {
                files: newer.files.clone(),
                current: old.current.clone(),
            });
            applied.push("server TLS certificates (for new handshakes)".into());
        }
        (None, None) => {}
        _ => needs_restart.push("server.tls".into()),
    }
    if let (Some(old), Some(newer)) = (
        running
            .client
            .as_ref()
            .and_then(|c| c.connection.tls.as_ref()),
        new.client.as_ref().and_then(|c| c.connection.tls.as_ref()),
    ) {
        old.replace_with(newer);
        applied.push("client TLS certificates (for new connections)".into());
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
        (
            "server.tls_listen",
            new.server.tls_listen != running.server.tls_listen,
        ),
        ("api", new.api != running.api),
        ("state.dir", new.state_dir != running.state_dir),
        ("store", new.etcd != running.etcd),
        ("server.http", new.http != running.http),
        ("metrics", new.metrics != running.metrics),
        ("server.name", new.name != running.name),
        ("runtime.threads", new.threads != running.threads),
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
            tls: server_tls,
            ..running.server.clone()
        },
        client,
        ..running.clone()
    };
    *running = still_running;
    Ok(pb::ReloadResponse {
        applied,
        needs_restart,
    })
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
