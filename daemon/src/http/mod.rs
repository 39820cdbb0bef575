//! The HTTP listener(s) for operators: Prometheus metrics, a health check
//! and, for parity with the Go reference's `--http`, its status page.
//!
//! | path | served on | what |
//! |---|---|---|
//! | `/metrics` | every listener | Prometheus text format |
//! | `/healthz` | every listener | 200 `serving` once the daemon serves, 503 before and while stopping |
//! | `/routes.json`, `/routes.yaml` | `--http` | received routes in the Go reference's (v0.5.0) shape |
//! | `/` | `--http` | sessions and routes per VNI (HTML) |
//!
//! A `--metrics` listener serves only the first two, so metrics can be
//! exposed more widely than the route table. When `--http` and `--metrics`
//! name the same address, one listener serves everything.

mod go_yaml;
pub mod status;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info};

use crate::client::{AgentHandle, AgentRequest};
use crate::metrics::Telemetry;
use crate::server::registry::Registry as Sessions;
use crate::table_task::{Query, RouteQuery, TableHandle};
use crate::wire::Extensions;
use status::{PeerRow, RouteView};

/// Routes fetched from the table per request to it, so a big status page
/// never holds the table task for long.
const PAGE: usize = 10_000;

/// Where the daemon is in its life, for `/healthz`.
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const STOPPING: u8 = 2;

impl Readiness {
    /// Every listener is bound and the daemon's routes are in the table.
    pub fn serving(&self) {
        self.0.store(SERVING, Relaxed);
    }

    /// Shutdown started.
    pub fn stopping(&self) {
        self.0.store(STOPPING, Relaxed);
    }

    /// True while serving.
    pub fn is_serving(&self) -> bool {
        self.0.load(Relaxed) == SERVING
    }

    fn describe(&self) -> &'static str {
        match self.0.load(Relaxed) {
            STARTING => "starting",
            SERVING => "serving",
            _ => "stopping",
        }
    }
}

/// What the endpoints read.
pub struct HttpState {
    /// The metrics.
    pub telemetry: Arc<Telemetry>,
    /// The route server's table.
    pub table: TableHandle,
    /// The route server's sessions.
    pub sessions: Arc<Sessions>,
    /// The hypervisor role, when it runs.
    pub agent: Option<AgentHandle>,
    /// For `/healthz`.
    pub readiness: Arc<Readiness>,
    /// The shared state on etcd, when configured (its degradation is
    /// named in `/healthz`'s body).
    pub shared: Option<Arc<crate::etcd::shared::SharedState>>,
    /// The fleet view, shown on `/` (route server only).
    pub fleet: Option<Arc<crate::fleet::FleetDirectory>>,
}

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// `/metrics` and `/healthz`.
    Metrics,
    /// Everything, the status page included.
    All,
}

/// One listener to start: address and endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen {
    /// Where.
    pub addr: SocketAddr,
    /// What.
    pub endpoints: Endpoints,
}

/// The listeners for `--metrics` and `--http`: one per distinct address,
/// serving everything when both flags name the same one.
pub fn plan(metrics: Option<SocketAddr>, http: Option<SocketAddr>) -> Vec<Listen> {
    match (metrics, http) {
        // Port 0 asks for a fresh port each: never the same listener.
        (Some(m), Some(h)) if m == h && m.port() != 0 => vec![Listen {
            addr: h,
            endpoints: Endpoints::All,
        }],
        (m, h) => m
            .map(|addr| Listen {
                addr,
                endpoints: Endpoints::Metrics,
            })
            .into_iter()
            .chain(h.map(|addr| Listen {
                addr,
                endpoints: Endpoints::All,
            }))
            .collect(),
    }
}

/// The bound addresses of the metrics-only listener and of the status page
/// listener, if there are such listeners.
pub fn bound_addrs(bound: &[(TcpListener, Endpoints)]) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let addr_of = |want: Endpoints| {
        bound
            .iter()
            .find(|(_, e)| *e == want)
            .and_then(|(l, _)| l.local_addr().ok())
    };
    (addr_of(Endpoints::Metrics), addr_of(Endpoints::All))
}

/// Binds every planned listener (a failure is a startup error naming the
/// address).
pub async fn bind(plan: &[Listen]) -> std::io::Result<Vec<(TcpListener, Endpoints)>> {
    let mut bound = Vec::new();
    for l in plan {
        let listener = TcpListener::bind(l.addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {} for HTTP: {e}", l.addr),
            )
        })?;
        bound.push((listener, l.endpoints));
    }
    Ok(bound)
}

/// Serves the bound listeners until `shutdown` becomes true.
pub fn serve(
    bound: Vec<(TcpListener, Endpoints)>,
    state: Arc<HttpState>,
    shutdown: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    bound
        .into_iter()
        .map(|(listener, endpoints)| {
            let addr = listener.local_addr().ok();
            let what = match endpoints {
                Endpoints::Metrics => "/metrics /healthz",
                Endpoints::All => "/ /routes.json /routes.yaml /metrics /healthz",
            };
            if let Some(addr) = addr {
                info!(%addr, endpoints = what, "serving HTTP");
            }
            let app = router(endpoints, state.clone());
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let stop = async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    error!(?addr, error = %e, "HTTP listener failed");
                }
            })
        })
        .collect()
}

fn router(endpoints: Endpoints, state: Arc<HttpState>) -> Router {
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz));
    if endpoints == Endpoints::All {
        app = app
            .route("/", get(index))
            .route("/routes.json", get(routes_json))
            .route("/routes.yaml", get(routes_yaml));
    }
    app.with_state(state)
}

type Shared = State<Arc<HttpState>>;

async fn metrics(State(s): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        s.telemetry.render().await,
    )
        .into_response()
}

async fn healthz(State(s): Shared) -> Response {
    let code = if s.readiness.is_serving() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = s.readiness.describe().to_string();
    if let Some(shared) = &s.shared {
        let status = shared.status();
        if status.degraded {
            // Still 200 while serving: the routes in force are served;
            // the body says what is wrong for the operator.
            body.push_str(&format!("; shared state degraded: {}", status.reason));
        }
    }
    (code, format!("{body}\n")).into_response()
}

async fn routes_json(State(s): Shared) -> Response {
    route_document(&s, status::routes_json, "application/json").await
}

async fn routes_yaml(State(s): Shared) -> Response {
    route_document(&s, status::routes_yaml, "text/yaml").await
}

/// The route table rendered by `render` (the reference's JSON or YAML).
async fn route_document(
    s: &HttpState,
    render: fn(&RouteView, &str, &str) -> String,
    content_type: &'static str,
) -> Response {
    let view = route_view(s).await;
    let date = status::date_text(SystemTime::now());
    // A million routes take a while to render: not on the runtime's worker,
    // where the sessions' keepalives wait for it (ADR 0033).
    let rendered =
        tokio::task::spawn_blocking(move || render(&view, &date, env!("CARGO_PKG_VERSION"))).await;
    match rendered {
        Ok(body) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn index(State(s): Shared) -> Response {
    let view = route_view(&s).await;
    let peers = peer_rows(&s).await;
    let date = status::date_text(SystemTime::now());
    // Off the runtime's worker, as the route documents.
    let rendered = tokio::task::spawn_blocking(move || {
        status::index_html(&peers, &view, &date, env!("CARGO_PKG_VERSION"))
    })
    .await;
    let mut body = match rendered {
        Ok(body) => body,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    // The fleet section goes after everything the Go page has.
    if let Some(fleet) = &s.fleet {
        if let (Some(view), Some(end)) = (fleet.view().await, body.rfind("</body>")) {
            body.insert_str(end, &status::fleet_html(&view));
        }
    }
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// The received routes: the route server's table and, when the hypervisor
/// role runs, the routes it received from its route servers.
async fn route_view(s: &HttpState) -> RouteView {
    let mut view = RouteView::default();
    let mut after = None;
    loop {
        let Some((page, next)) = s
            .table
            .query(|reply| Query::Routes {
                query: RouteQuery::default(),
                after,
                limit: PAGE,
                reply,
            })
            .await
        else {
            break;
        };
        view.extend(page.into_iter().map(|(route, _)| route));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    if let Some(agent) = &s.agent {
        if let Some(received) = agent.ask(|tx| AgentRequest::Received(None, tx)).await {
            view.extend(received.into_iter().map(|e| e.route));
        }
    }
    view
}

async fn peer_rows(s: &HttpState) -> Vec<PeerRow> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut rows: Vec<PeerRow> = s
        .sessions
        .all()
        .iter()
        .map(|p| PeerRow {
            role: "server",
            remote: p.remote.to_string(),
            state: format!("{:?}", p.state()),
            uptime: p.started.elapsed(),
            updates_in: p.updates_in.load(Relaxed),
            updates_out: p.updates_out.load(Relaxed),
            last_error: p.last_error(),
            extensions: Extensions(p.extensions.load(Relaxed)).names().join(","),
        })
        .collect();
    if let Some(agent) = &s.agent {
        if let Some(servers) = agent.ask(AgentRequest::Servers).await {
            rows.extend(servers.into_iter().map(|srv| {
                PeerRow {
                    role: "client",
                    remote: srv.addr.to_string(),
                    state: if srv.up { "Established" } else { "Down" }.into(),
                    uptime: SystemTime::now()
                        .duration_since(srv.since)
                        .unwrap_or_default(),
                    updates_in: srv.updates_in,
                    updates_out: srv.updates_out,
                    last_error: srv.last_error,
                    extensions: srv.extensions.names().join(","),
                }
            }));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn healthz_of(readiness: Arc<Readiness>) -> (StatusCode, String) {
        let state = Arc::new(HttpState {
            telemetry: Arc::new(Telemetry::new()),
            table: crate::table_task::spawn(),
            sessions: Arc::new(Sessions::default()),
            agent: None,
            readiness,
            shared: None,
            fleet: None,
        });
        let response = router(Endpoints::Metrics, state)
            .oneshot(
                axum::http::Request::get("/healthz")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).to_string())
    }

    #[tokio::test]
    async fn healthz_is_ok_only_while_serving() {
        let readiness = Arc::new(Readiness::default());
        assert_eq!(
            healthz_of(readiness.clone()).await,
            (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
        );
        readiness.serving();
        assert_eq!(
            healthz_of(readiness.clone()).await,
            (StatusCode::OK, "serving\n".into())
        );
        readiness.stopping();
        assert_eq!(
            healthz_of(readiness).await,
            (StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into())
        );
    }

    #[test]
    fn one_listener_per_address() {
        let a: SocketAddr = "127.0.0.1:9711".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            plan(Some(a), Some(a)),
            vec![Listen {
                addr: a,
                endpoints: Endpoints::All
            }]
        );
        assert_eq!(
            plan(Some(a), Some(b)),
            vec![
                Listen {
                    addr: a,
                    endpoints: Endpoints::Metrics
                },
                Listen {
                    addr: b,
                    endpoints: Endpoints::All
                }
            ]
        );
        assert!(plan(None, None).is_empty());
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(plan(Some(any), Some(any)).len(), 2);
    }
}
