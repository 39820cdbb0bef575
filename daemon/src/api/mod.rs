//! The gRPC control API (package `metalbondd.v1`), over a Unix socket and,
//! optionally, TCP; plus the standard health service and server reflection
//! (v1 and v1alpha), so `grpcurl` works with no .proto files at hand.

mod client_service;
mod convert;
mod daemon_service;
mod fleet_service;
mod listeners;
mod metered;
mod peer_service;
mod read_only;
mod received_watch;
mod route_service;
mod vni_service;

pub use convert::MAX_API_VNI;
pub use listeners::bind_unix_socket;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use metalbond_proto::api as pb;
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tracing::{error, info};

use crate::server::registry::Registry;
use crate::store::Store;
use crate::table_task::TableHandle;

/// Largest RouteService request: one call may carry a few hundred
/// thousand routes (about 50 bytes each).
const MAX_ROUTE_MESSAGE: usize = 64 << 20;

/// What the daemon asks of the application loop (`app::run`).
#[derive(Debug)]
pub enum ControlRequest {
    /// Re-read the configuration file; answer what was applied.
    Reload(oneshot::Sender<Result<pb::ReloadResponse, ReloadError>>),
    /// Stop gracefully.
    Shutdown,
}

/// Why a reload did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadError {
    /// The daemon was started without `--config`: there is no file to
    /// re-read. Not a failure of the daemon, so it is not logged as one.
    NoConfigFile,
    /// The file does not validate (the reason, `FILE:LINE:COL: ...`); the
    /// running configuration is kept.
    Rejected(String),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::NoConfigFile => {
                f.write_str("no configuration file to reload: started without --config")
            }
            ReloadError::Rejected(e) => {
                write!(f, "configuration rejected, the running one is kept: {e}")
            }
        }
    }
}

/// Everything the API services read and act on.
pub struct ApiState {
    /// The table task.
    pub table: TableHandle,
    /// Live sessions.
    pub registry: Arc<Registry>,
    /// The daemon's durable state.
    pub store: Arc<Store>,
    /// The shared state on etcd, when `[store] backend = "etcd"` (the
    /// injected routes live there; `store` caches them).
    pub shared: Option<Arc<crate::etcd::shared::SharedState>>,
    /// Serialises changes to injected routes (check, store, apply).
    pub inject_lock: Mutex<()>,
    /// Wall-clock start.
    pub started_at: SystemTime,
    /// Monotonic start.
    pub started: Instant,
    /// MetalBond listen addresses.
    pub listen: Vec<SocketAddr>,
    /// API socket path.
    pub api_socket: PathBuf,
    /// Number of static routes from the configuration.
    pub static_routes: std::sync::atomic::AtomicUsize,
    /// Requests to the application loop.
    pub control: mpsc::Sender<ControlRequest>,
    /// A watcher this many bytes behind the update log is told it lagged.
    pub watch_max_lag_bytes: u64,
    /// The client role's agent, when the daemon runs it.
    pub client: Option<crate::client::AgentHandle>,
    /// The client role's counters, when it runs.
    pub client_stats: Option<Arc<crate::client::stats::AgentStats>>,
    /// Settings given at start that stored API changes replaced.
    pub overrides: Vec<crate::client::operator::Override>,
    /// Request counters.
    pub metrics: Arc<crate::metrics::ApiMetrics>,
    /// Bound address of the metrics listener, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// Bound address of the status page listener, if any.
    pub http_addr: Option<SocketAddr>,
    /// The route server's session settings in force (the peer policy).
    pub session_settings: watch::Receiver<crate::server::SessionSettings>,
    /// The fleet view: this server's record and the members it knows of.
    pub fleet: Arc<crate::fleet::FleetDirectory>,
}

/// Starts serving the API on the given listeners until `shutdown` becomes true.
pub async fn serve(
    state: Arc<ApiState>,
    unix: tokio::net::UnixListener,
    tcp: Option<(SocketAddr, bool)>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let router = |read_only: bool| {
        let (health_reporter, health) = tonic_health::server::health_reporter();
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the API descriptor set is valid");
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .expect("the API descriptor set is valid");
        let state = state.clone();
        (
            health_reporter,
            tonic::transport::Server::builder()
                .layer(metered::MeteredLayer::new(state.metrics.clone()))
                .layer(read_only::ReadOnlyLayer::new(read_only))
                .add_service(health)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(
                    pb::route_service_server::RouteServiceServer::new(route_service::Routes::new(
                        state.clone(),
                    ))
                    // A 100,000-route AnnounceRoutes is about 5 MB, past
                    // tonic's 4 MiB default.
                    .max_decoding_message_size(MAX_ROUTE_MESSAGE),
                )
                .add_service(pb::peer_service_server::PeerServiceServer::new(
                    peer_service::Peers::new(state.clone()),
                ))
                .add_service(pb::vni_service_server::VniServiceServer::new(
                    vni_service::Vnis::new(state.clone()),
                ))
                .add_service(pb::client_service_server::ClientServiceServer::new(
                    client_service::ClientApi::new(state.clone()),
                ))
                .add_service(pb::fleet_service_server::FleetServiceServer::new(
                    fleet_service::Fleet::new(state.clone()),
                ))
                .add_service(pb::daemon_service_server::DaemonServiceServer::new(
                    daemon_service::Daemon::new(state),
                )),
        )
    };
    let until = |mut shutdown: watch::Receiver<bool>| async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };

    let (reporter, unix_router) = router(false);
    mark_serving(&reporter).await;
    follow_shared_state(&reporter, &state);
    let serving = unix_router
        .serve_with_incoming_shutdown(UnixListenerStream::new(unix), until(shutdown.clone()));
    tasks.push(spawn_listener(serving, reporter, "unix socket"));

    if let Some((addr, read_only)) = tcp {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} for the API: {e}"),
            )
        })?;
        let local = listener.local_addr()?;
        info!(addr = %local, read_only, "control API listening on TCP");
        state.fleet.add_api_address(format!("tcp://{local}"));
        let (reporter, tcp_router) = router(read_only);
        mark_serving(&reporter).await;
        follow_shared_state(&reporter, &state);
        let serving = tcp_router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), until(shutdown));
        tasks.push(spawn_listener(serving, reporter, "tcp"));
    }
    Ok(tasks)
}

/// Runs one listener's `serving` future in a task, logging its failure as
/// `control API (<listener>) failed`; the health `reporter` lives as long
/// as the listener serves.
fn spawn_listener(
    serving: impl std::future::Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
    reporter: tonic_health::server::HealthReporter,
    listener: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = serving.await {
            error!(error = %e, "control API ({listener}) failed");
        }
        drop(reporter);
    })
}

/// The boxed future of the API's tower middlewares ([`metered`], [`read_only`]).
type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

/// The health service's name for the shared state (ADR 0031): SERVING
/// while etcd answers, NOT_SERVING while degraded. Registered only with
/// the etcd backend.
pub const SHARED_STATE_HEALTH: &str = "metalbondd.shared_state";

/// Keeps [`SHARED_STATE_HEALTH`] in step with the shared state, while the
/// listener's reporter lives.
fn follow_shared_state(reporter: &tonic_health::server::HealthReporter, state: &ApiState) {
    use tonic_health::ServingStatus;
    let Some(shared) = &state.shared else {
        return;
    };
    let mut degraded = shared.degraded_watch();
    let reporter = reporter.clone();
    tokio::spawn(async move {
        loop {
            let status = if *degraded.borrow_and_update() {
                ServingStatus::NotServing
            } else {
                ServingStatus::Serving
            };
            reporter
                .set_service_status(SHARED_STATE_HEALTH, status)
                .await;
            if degraded.changed().await.is_err() {
                return;
            }
        }
    });
}

async fn mark_serving(reporter: &tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    for service in [
        "metalbondd.v1.RouteService",
        "metalbondd.v1.PeerService",
        "metalbondd.v1.VniService",
        "metalbondd.v1.DaemonService",
        "metalbondd.v1.ClientService",
        "metalbondd.v1.FleetService",
    ] {
        reporter
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
}

/// Runs blocking store work off the async threads; a store failure is UNAVAILABLE.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, tonic::Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(tonic::Status::unavailable(format!("state store: {e}"))),
        Err(e) => Err(tonic::Status::internal(format!(
            "state store task failed: {e}"
        ))),
    }
}

/// The table task is gone: the daemon is shutting down.
fn shutting_down() -> tonic::Status {
    tonic::Status::unavailable("metalbondd is shutting down")
}
