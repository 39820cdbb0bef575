//! The hypervisor role's metrics, mirrored from the agent's counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::families::{counter_vec, gauge, gauge_vec, mirror, set};
use super::SessionFamilies;
use crate::client::{AgentStats, NetlinkOpCounters};

/// The `role` label value of the agent's sessions with route servers.
const ROLE: &str = "client";

pub struct ClientMirror {
    stats: Arc<AgentStats>,
    shared: SessionFamilies,
    servers: IntGauge,
    received_routes: IntGauge,
    kernel_routes: IntGaugeVec,
    netlink_ops: IntCounterVec,
    netlink_errors: IntCounterVec,
}

impl ClientMirror {
    pub fn new(registry: &Registry, shared: SessionFamilies, stats: Arc<AgentStats>) -> Self {
        Self {
            stats,
            shared,
            servers: gauge(
                registry,
                "metalbondd_route_servers",
                "Route servers the hypervisor role is configured to use.",
            ),
            received_routes: gauge(
                registry,
                "metalbondd_received_routes",
                "Distinct routes the hypervisor role holds from its route servers.",
            ),
            kernel_routes: gauge_vec(
                registry,
                "metalbondd_kernel_routes",
                "Routes installed in the kernel by the hypervisor role, per routing table.",
                &["table"],
            ),
            netlink_ops: counter_vec(
                registry,
                "metalbondd_netlink_operations_total",
                "Netlink route operations attempted, by operation (replace, delete, dump).",
                &["op"],
            ),
            netlink_errors: counter_vec(
                registry,
                "metalbondd_netlink_errors_total",
                "Netlink route operations that failed, by operation (each failure is retried).",
                &["op"],
            ),
        }
    }

    pub fn refresh(&self) {
        let st = &self.stats;
        let sh = &self.shared;
        let get = |a: &AtomicU64| a.load(Relaxed);
        let configured = get(&st.servers_configured);
        let up = get(&st.servers_up).min(configured);
        set(&sh.sessions.with_label_values(&[ROLE, "established"]), up);
        set(
            &sh.sessions.with_label_values(&[ROLE, "down"]),
            configured - up,
        );
        set(&self.servers, configured);
        mirror(&sh.ups.with_label_values(&[ROLE]), get(&st.session_ups));
        mirror(
            &sh.updates_in.with_label_values(&[ROLE]),
            get(&st.updates_in),
        );
        mirror(
            &sh.updates_out.with_label_values(&[ROLE]),
            get(&st.updates_out),
        );
        mirror(&sh.bytes_in.with_label_values(&[ROLE]), get(&st.bytes_in));
        mirror(&sh.bytes_out.with_label_values(&[ROLE]), get(&st.bytes_out));
        sh.mirror_ends(ROLE, &st.session_downs(), None);
        set(&self.received_routes, get(&st.received_routes));
        self.kernel_routes.reset();
        for (table, n) in st.installed_routes() {
            set(
                &self.kernel_routes.with_label_values(&[&table.to_string()]),
                n,
            );
        }
        for (op, counters) in [
            ("replace", &st.netlink_replace),
            ("delete", &st.netlink_delete),
            ("dump", &st.netlink_dump),
        ] {
            self.mirror_netlink(op, counters);
        }
    }

    fn mirror_netlink(&self, op: &str, c: &NetlinkOpCounters) {
        let ok = c.ok.load(Relaxed);
        let failed = c.failed.load(Relaxed);
        mirror(&self.netlink_ops.with_label_values(&[op]), ok + failed);
        mirror(&self.netlink_errors.with_label_values(&[op]), failed);
    }
}
