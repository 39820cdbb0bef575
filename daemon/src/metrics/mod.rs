//! Prometheus metrics: one registry of the daemon's own (no global
//! registry), rendered in the text exposition format for `/metrics`.
//!
//! Components keep their counters as plain atomics on their hot paths (the
//! server's [`crate::server::metrics::Metrics`], each session's
//! [`crate::server::registry::SessionInfo`], the agent's
//! [`crate::client::AgentStats`]). A scrape mirrors them into the registry
//! (counters only ever move up by the difference, gauges are set), asks the
//! table task for its counts, then gathers. The latency histograms and the
//! API request counters are Prometheus types observed directly.
//! See docs/OPERATIONS.md for the list of metrics.

mod api;
mod client;
mod families;
mod server;

pub use api::ApiMetrics;

use std::sync::Arc;
use std::time::SystemTime;

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::client::AgentStats;
use crate::link::EndClass;
use crate::server::Server;

/// Most VNIs given their own `vni` label by default; the others are summed
/// under `vni="other"`.
pub const DEFAULT_VNI_LABEL_LIMIT: usize = metalbondd_config::DEFAULT_METRICS_VNI_LABEL_LIMIT;

/// The daemon's metrics.
pub struct Telemetry {
    registry: Registry,
    server: Option<server::ServerMirror>,
    client: Option<client::ClientMirror>,
    shared: Option<SharedStateMirror>,
    api: Arc<ApiMetrics>,
    sessions: SessionFamilies,
    /// One scrape at a time: mirroring reads a counter and adds the rest.
    scrape: tokio::sync::Mutex<()>,
}

impl Telemetry {
    /// A registry with build info, start time, process metrics and the API
    /// request metrics; add the roles with [`Telemetry::with_server`] and
    /// [`Telemetry::with_client`].
    pub fn new() -> Self {
        let registry = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new(
                "metalbondd_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        register(&registry, build);
        let start = IntGauge::new(
            "metalbondd_start_time_seconds",
            "Start time of the daemon, in seconds since the Unix epoch.",
        )
        .expect("valid metric");
        start.set(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
        register(&registry, start);
        #[cfg(target_os = "linux")]
        register(
            &registry,
            prometheus::process_collector::ProcessCollector::for_self(),
        );
        let api = Arc::new(ApiMetrics::new(&registry));
        let sessions = SessionFamilies::new(&registry);
        Self {
            registry,
            server: None,
            client: None,
            shared: None,
            api,
            sessions,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// Adds the route server's metrics; routes per VNI get their own label
    /// for at most `vni_label_limit` VNIs (the biggest); `fleet`: the fleet
    /// view's gauges (members, disagreeing VNIs).
    pub fn with_server(
        mut self,
        server: &Server,
        vni_label_limit: usize,
        fleet: Option<Arc<crate::fleet::FleetDirectory>>,
    ) -> Self {
        self.server = Some(server::ServerMirror::new(
            &self.registry,
            self.sessions.clone(),
            server,
            vni_label_limit,
            fleet,
        ));
        self
    }

    /// Adds the hypervisor role's metrics.
    pub fn with_client(mut self, stats: Arc<AgentStats>) -> Self {
        self.client = Some(client::ClientMirror::new(
            &self.registry,
            self.sessions.clone(),
            stats,
        ));
        self
    }

    /// Adds the shared state's metrics (ADR 0031).
    pub fn with_shared_state(mut self, shared: Arc<crate::etcd::shared::SharedState>) -> Self {
        use families::{counter, gauge};
        let r = &self.registry;
        self.shared = Some(SharedStateMirror {
            degraded: gauge(r, "metalbondd_shared_state_degraded", "1 while the shared state (etcd) is unreachable and the routes last seen are kept, else 0."),
            revision: gauge(r, "metalbondd_shared_state_revision", "etcd revision of the shared state applied last."),
            resyncs: counter(r, "metalbondd_shared_state_resyncs_total", "Resyncs of the shared state from an etcd snapshot (after compaction or an outage)."),
            routes: gauge(r, "metalbondd_shared_state_routes", "Routes applied from the shared state (etcd)."),
            skipped: counter(r, "metalbondd_shared_state_skipped_keys_total", "Keys under the shared-state prefix skipped because they are not canonical routes."),
            shared,
        });
        self
    }

    /// The API request metrics, for the API's tower layer.
    pub fn api(&self) -> Arc<ApiMetrics> {
        self.api.clone()
    }

    /// Brings every mirrored value up to date and renders the registry in
    /// the Prometheus text format.
    pub async fn render(&self) -> String {
        let _one_at_a_time = self.scrape.lock().await;
        if let Some(server) = &self.server {
            server.refresh().await;
        }
        if let Some(client) = &self.client {
            client.refresh();
        }
        if let Some(shared) = &self.shared {
            shared.refresh();
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

/// The shared state's metrics, mirrored at scrape time.
struct SharedStateMirror {
    shared: Arc<crate::etcd::shared::SharedState>,
    degraded: IntGauge,
    revision: IntGauge,
    resyncs: prometheus::IntCounter,
    routes: IntGauge,
    skipped: prometheus::IntCounter,
}

impl SharedStateMirror {
    fn refresh(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let status = self.shared.status();
        self.degraded.set(i64::from(status.degraded));
        self.revision.set(status.revision);
        self.routes.set(status.routes as i64);
        families::mirror(&self.resyncs, self.shared.resyncs.load(Relaxed));
        families::mirror(&self.skipped, self.shared.skipped_keys.load(Relaxed));
    }
}

/// Registers a collector built from constant options: a failure is a bug
/// (a duplicate name), not a runtime condition.
fn register<C: prometheus::core::Collector + 'static>(registry: &Registry, c: C) {
    registry
        .register(Box::new(c))
        .expect("metric names are unique");
}

/// Session families both roles fill, told apart by the `role` label
/// (`server`: sessions the route server accepted; `client`: the hypervisor
/// role's sessions with route servers).
#[derive(Clone)]
struct SessionFamilies {
    sessions: IntGaugeVec,
    ups: IntCounterVec,
    downs: IntCounterVec,
    protocol_errors: IntCounterVec,
    handshake_timeouts: IntCounterVec,
    keepalive_timeouts: IntCounterVec,
    updates_in: IntCounterVec,
    updates_out: IntCounterVec,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
}

impl SessionFamilies {
    fn new(registry: &Registry) -> Self {
        use families::{counter_vec, gauge_vec};
        let role = &["role"];
        Self {
            sessions: gauge_vec(
                registry,
                "metalbondd_sessions",
                "Sessions by role and state (client role: established, or connecting/retrying as state=\"down\").",
                &["role", "state"],
            ),
            ups: counter_vec(
                registry,
                "metalbondd_session_ups_total",
                "Sessions that completed the handshake (ESTABLISHED).",
                role,
            ),
            downs: counter_vec(
                registry,
                "metalbondd_session_downs_total",
                "Sessions (and client connection attempts) that ended, by reason.",
                &["role", "reason"],
            ),
            protocol_errors: counter_vec(
                registry,
                "metalbondd_protocol_errors_total",
                "Sessions closed for a malformed frame or a protocol violation, by reason.",
                &["role", "reason"],
            ),
            handshake_timeouts: counter_vec(
                registry,
                "metalbondd_handshake_timeouts_total",
                "Sessions closed because the peer did not complete the handshake in time.",
                role,
            ),
            keepalive_timeouts: counter_vec(
                registry,
                "metalbondd_keepalive_timeouts_total",
                "Sessions closed because the peer's keepalives stopped.",
                role,
            ),
            updates_in: counter_vec(
                registry,
                "metalbondd_updates_received_total",
                "UPDATE messages received.",
                role,
            ),
            updates_out: counter_vec(
                registry,
                "metalbondd_updates_sent_total",
                "UPDATE messages sent (dump entries and live updates).",
                role,
            ),
            bytes_in: counter_vec(
                registry,
                "metalbondd_received_bytes_total",
                "Bytes received on MetalBond sessions.",
                role,
            ),
            bytes_out: counter_vec(
                registry,
                "metalbondd_sent_bytes_total",
                "Bytes sent on MetalBond sessions.",
                role,
            ),
        }
    }

    /// Mirrors session ends by reason into `downs` and the families derived
    /// from it; slow-consumer ends also go to `slow_consumers` if given.
    fn mirror_ends(
        &self,
        role: &str,
        ends: &std::collections::BTreeMap<&'static str, u64>,
        slow_consumers: Option<&IntCounterVec>,
    ) {
        use families::mirror;
        let (mut handshake, mut keepalive) = (0, 0);
        for (&reason, &n) in ends {
            mirror(&self.downs.with_label_values(&[role, reason]), n);
            match EndClass::of_label(reason) {
                EndClass::ProtocolError => {
                    mirror(&self.protocol_errors.with_label_values(&[role, reason]), n)
                }
                EndClass::HandshakeTimeout => handshake += n,
                EndClass::KeepaliveTimeout => keepalive += n,
                EndClass::SlowConsumer => {
                    if let Some(slow) = slow_consumers {
                        mirror(&slow.with_label_values(&[reason]), n);
                    }
                }
                // Counted by reason in the downs and in
                // metalbondd_policy_refused_total.
                EndClass::Normal | EndClass::Policy => {}
            }
        }
        mirror(
            &self.handshake_timeouts.with_label_values(&[role]),
            handshake,
        );
        mirror(
            &self.keepalive_timeouts.with_label_values(&[role]),
            keepalive,
        );
    }
}
