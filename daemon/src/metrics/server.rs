//! The route server's metrics, mirrored from its atomics, its session
//! registry and the table task (its counters and answers) at scrape time.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::families::{adopt_histogram, counter, counter_vec, gauge, gauge_vec, mirror, set};
use super::SessionFamilies;
use crate::server::metrics::Metrics;
use crate::server::registry::Registry as Sessions;
use crate::server::Server;
use crate::session::State;
use crate::table_task::{Query, TableHandle, COMMAND_QUEUE};

/// The `role` label value of sessions the route server accepted.
const ROLE: &str = "server";

/// Session states as label values, in protocol order.
const STATES: [(State, &str); 4] = [
    (State::Connecting, "connecting"),
    (State::HelloSent, "hello_sent"),
    (State::HelloReceived, "hello_received"),
    (State::Established, "established"),
];

/// Session end reasons whose series exist from the start (the others,
/// mostly protocol errors, appear when they first happen).
const COMMON_END_REASONS: [&str; 8] = [
    "peer_closed",
    "io_error",
    "reset",
    "write_timeout",
    "lagging",
    "keepalive_timeout",
    "handshake_timeout_hello",
    "handshake_timeout_keepalive",
];

pub struct ServerMirror {
    fleet: Option<Arc<crate::fleet::FleetDirectory>>,
    metrics: Arc<Metrics>,
    sessions: Arc<Sessions>,
    table: TableHandle,
    vni_label_limit: usize,
    shared: SessionFamilies,
    families: Families,
}

/// The families only the route server fills (the session families shared
/// with the client role are in [`SessionFamilies`]).
struct Families {
    slow_consumers: IntCounterVec,
    policy_refused: IntCounterVec,
    tls_failures: IntCounterVec,
    accepted: IntCounter,
    rejected: IntCounterVec,
    accept_errors: IntCounter,
    unknown_frames: IntCounter,
    unknown_withdrawals: IntCounter,
    duplicate_subscribes: IntCounter,
    dumps: IntCounter,
    dump_routes: IntCounter,
    queue_bytes: IntGauge,
    queue_max_bytes: IntGauge,
    paced_sessions: IntGauge,
    lag_max_bytes: IntGauge,
    table_queue: IntGauge,
    routes: IntGauge,
    vnis: IntGauge,
    next_hops: IntGauge,
    announcers: IntGauge,
    subscribers: IntGauge,
    vni_routes: IntGaugeVec,
    vni_announcers: IntGaugeVec,
    vni_subscribers: IntGaugeVec,
    vni_digest: IntGaugeVec,
    fleet_members: IntGauge,
    fleet_disagreeing: IntGauge,
    fleet_settling: IntGauge,
}

impl ServerMirror {
    pub fn new(
        registry: &Registry,
        shared: SessionFamilies,
        server: &Server,
        vni_label_limit: usize,
        fleet: Option<Arc<crate::fleet::FleetDirectory>>,
    ) -> Self {
        let families = Families {
            slow_consumers: counter_vec(
                registry,
                "metalbondd_slow_consumer_events_total",
                "Sessions closed because the peer did not read fast enough, by kind (write_timeout, lagging).",
                &["kind"],
            ),
            policy_refused: counter_vec(
                registry,
                "metalbondd_policy_refused_total",
                "SUBSCRIBEs and routes the peer policy refused (never applied or distributed), by policy class and reason (subscribe_vni, announce_vni, next_hop, route_type, max_routes).",
                &["class", "reason"],
            ),
            tls_failures: counter_vec(
                registry,
                "metalbondd_tls_handshake_failures_total",
                "TLS handshakes on the TLS listeners that failed (connection closed), by reason (expired, unknown_ca, bad_certificate, no_certificate, not_tls, alert, other, timeout, io).",
                &["reason"],
            ),
            accepted: counter(
                registry,
                "metalbondd_connections_accepted_total",
                "TCP connections accepted by the route server.",
            ),
            rejected: counter_vec(
                registry,
                "metalbondd_connections_rejected_total",
                "TCP connections closed at accept, by reason.",
                &["reason"],
            ),
            accept_errors: counter(
                registry,
                "metalbondd_accept_errors_total",
                "Errors accepting connections (e.g. out of file descriptors).",
            ),
            unknown_frames: counter(
                registry,
                "metalbondd_unknown_frames_total",
                "Frames of an unknown message type skipped.",
            ),
            unknown_withdrawals: counter(
                registry,
                "metalbondd_unknown_withdrawals_total",
                "REMOVEs of routes the session never announced (ignored).",
            ),
            duplicate_subscribes: counter(
                registry,
                "metalbondd_duplicate_subscribes_total",
                "SUBSCRIBEs to a VNI the session was already subscribed to (ignored).",
            ),
            dumps: counter(
                registry,
                "metalbondd_subscribe_dumps_total",
                "SUBSCRIBE dumps sent.",
            ),
            dump_routes: counter(
                registry,
                "metalbondd_subscribe_dump_routes_total",
                "Routes sent in SUBSCRIBE dumps.",
            ),
            queue_bytes: gauge(
                registry,
                "metalbondd_outbound_queue_bytes",
                "Bytes queued for writing, summed over the route server's sessions.",
            ),
            queue_max_bytes: gauge(
                registry,
                "metalbondd_outbound_queue_max_bytes",
                "Bytes queued for writing in the fullest session.",
            ),
            paced_sessions: gauge(
                registry,
                "metalbondd_paced_sessions",
                "Sessions whose route data is paced for a possible Go reference peer: no extension negotiated, no fast reader's window seen (ADR 0006).",
            ),
            lag_max_bytes: gauge(
                registry,
                "metalbondd_update_log_lag_max_bytes",
                "Bytes of the update log the furthest-behind session has not read yet (closed above the lag limit).",
            ),
            table_queue: gauge(
                registry,
                "metalbondd_table_queue_depth",
                "Commands waiting for the route table task.",
            ),
            routes: gauge(
                registry,
                "metalbondd_routes",
                "Distinct routes (VNI, prefix, next hop) in the route server's table.",
            ),
            vnis: gauge(
                registry,
                "metalbondd_vnis",
                "VNIs with at least one route or subscriber.",
            ),
            next_hops: gauge(
                registry,
                "metalbondd_next_hops",
                "Distinct next hops in the route server's table.",
            ),
            announcers: gauge(
                registry,
                "metalbondd_announcers",
                "Sessions announcing at least one route.",
            ),
            subscribers: gauge(
                registry,
                "metalbondd_subscribers",
                "Sessions subscribed to at least one VNI.",
            ),
            vni_routes: gauge_vec(
                registry,
                "metalbondd_vni_routes",
                "Routes per VNI (the biggest VNIs up to the label limit; the rest summed under vni=\"other\").",
                &["vni"],
            ),
            vni_announcers: gauge_vec(
                registry,
                "metalbondd_vni_announcers",
                "Announcers per VNI (same VNIs as metalbondd_vni_routes; \"other\" sums the rest).",
                &["vni"],
            ),
            vni_subscribers: gauge_vec(
                registry,
                "metalbondd_vni_subscribers",
                "Subscribers per VNI (same VNIs as metalbondd_vni_routes; \"other\" sums the rest).",
                &["vni"],
            ),
            vni_digest: gauge_vec(
                registry,
                "metalbondd_vni_digest_info",
                "Always 1: the order-independent digest of a VNI's routes (16 hex digits; equal on servers holding the same routes, ADR 0029) as a label, for the VNIs of metalbondd_vni_routes that have routes (no \"other\").",
                &["vni", "digest"],
            ),
            fleet_members: gauge(
                registry,
                "metalbondd_fleet_members",
                "Route servers in this server's fleet view, itself included (1 without a shared registry; ADR 0030).",
            ),
            fleet_disagreeing: gauge(
                registry,
                "metalbondd_fleet_disagreeing_vnis",
                "VNIs whose digest has not been the same on every member of the fleet view for at least 5 s (settled disagreements; ADR 0030).",
            ),
            fleet_settling: gauge(
                registry,
                "metalbondd_fleet_settling_vnis",
                "VNIs whose members have disagreed for less than 5 s: usually a route change whose member records are still on their way (ADR 0030).",
            ),
        };
        // Series that exist from the start, so that rate() and alerts work
        // before the first occurrence.
        for kind in ["write_timeout", "lagging"] {
            families.slow_consumers.with_label_values(&[kind]);
        }
        shared.handshake_timeouts.with_label_values(&[ROLE]);
        shared.keepalive_timeouts.with_label_values(&[ROLE]);
        for reason in COMMON_END_REASONS {
            shared.downs.with_label_values(&[ROLE, reason]);
        }
        adopt_histogram(registry, &server.metrics.propagation);
        adopt_histogram(registry, &server.metrics.dump_duration);
        adopt_histogram(registry, &server.metrics.keepalive_echo);
        Self {
            metrics: server.metrics.clone(),
            sessions: server.registry.clone(),
            table: server.table.clone(),
            vni_label_limit,
            shared,
            families,
            fleet,
        }
    }

    pub async fn refresh(&self) {
        self.mirror_counters();
        let sessions = self.sessions.all();
        let f = &self.families;
        let (mut queued, mut queue_max, mut lag_max, mut paced) = (0u64, 0u64, 0u64, 0u64);
        let mut by_state = [0i64; STATES.len()];
        for s in &sessions {
            let q = s.queue_bytes.load(Relaxed);
            queued += q;
            queue_max = queue_max.max(q);
            lag_max = lag_max.max(s.lag_bytes.load(Relaxed));
            paced += u64::from(s.paced.load(Relaxed));
            if let Some(i) = STATES.iter().position(|(st, _)| *st == s.state()) {
                by_state[i] += 1;
            }
        }
        for ((_, name), n) in STATES.iter().zip(by_state) {
            self.shared.sessions.with_label_values(&[ROLE, name]).set(n);
        }
        set(&f.queue_bytes, queued);
        set(&f.queue_max_bytes, queue_max);
        set(&f.paced_sessions, paced);
        set(&f.lag_max_bytes, lag_max);
        set(
            &f.table_queue,
            (COMMAND_QUEUE - self.table.commands.capacity()) as u64,
        );

        // The table task answers between batches; on a shutting-down daemon
        // it is gone and the table gauges keep their last values.
        let stats = self.table.stats().await;
        if let Some(stats) = &stats {
            set(&f.routes, stats.routes as u64);
            set(&f.vnis, stats.vnis as u64);
            set(&f.next_hops, stats.next_hops as u64);
        }
        let ids: Vec<_> = sessions.iter().map(|s| s.id).collect();
        let mut ids_with_local = ids.clone();
        ids_with_local.extend([crate::table::LOCAL_API, crate::table::LOCAL_CONFIG]);
        if let Some(per_session) = self
            .table
            .query(|reply| Query::Sessions {
                ids: ids_with_local,
                reply,
            })
            .await
        {
            let announcing = per_session.iter().filter(|(routes, _)| *routes > 0).count();
            let subscribed = per_session
                .iter()
                .filter(|(_, vnis)| !vnis.is_empty())
                .count();
            set(&f.announcers, announcing as u64);
            set(&f.subscribers, subscribed as u64);
        }
        if let Some(mut per_vni) = self
            .table
            .query(|reply| Query::Vnis { only: None, reply })
            .await
        {
            if let (Some(fleet), Some(stats)) = (&self.fleet, &stats) {
                let view = fleet.view_with(fleet.record_of(stats.routes as u64, &per_vni));
                set(&f.fleet_members, view.members.len() as u64);
                let settled = view.settled_count();
                set(&f.fleet_disagreeing, settled as u64);
                set(
                    &f.fleet_settling,
                    (view.disagreements.len() - settled) as u64,
                );
            }
            per_vni.sort_by(|a, b| b.routes.cmp(&a.routes).then(a.vni.cmp(&b.vni)));
            f.vni_digest.reset();
            f.vni_routes.reset();
            f.vni_announcers.reset();
            f.vni_subscribers.reset();
            let split = per_vni.len().min(self.vni_label_limit);
            for v in &per_vni[..split] {
                let vni = v.vni.0.to_string();
                set(&f.vni_routes.with_label_values(&[&vni]), v.routes as u64);
                if v.routes > 0 {
                    let digest = crate::table::digest::to_hex(v.digest);
                    set(&f.vni_digest.with_label_values(&[&vni, &digest]), 1);
                }
                set(
                    &f.vni_announcers.with_label_values(&[&vni]),
                    v.announcers as u64,
                );
                set(
                    &f.vni_subscribers.with_label_values(&[&vni]),
                    v.subscribers as u64,
                );
            }
            if split < per_vni.len() {
                let rest = &per_vni[split..];
                let sum = |f: fn(&crate::table::VniStats) -> usize| {
                    rest.iter().map(f).sum::<usize>() as u64
                };
                set(
                    &f.vni_routes.with_label_values(&["other"]),
                    sum(|v| v.routes),
                );
                set(
                    &f.vni_announcers.with_label_values(&["other"]),
                    sum(|v| v.announcers),
                );
                set(
                    &f.vni_subscribers.with_label_values(&["other"]),
                    sum(|v| v.subscribers),
                );
            }
        }
    }

    fn mirror_counters(&self) {
        let m = &self.metrics;
        let f = &self.families;
        let s = &self.shared;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
        mirror(
            &s.ups.with_label_values(&[ROLE]),
            get(&m.sessions_established),
        );
        mirror(&f.accepted, get(&m.sessions_accepted));
        mirror(
            &f.rejected.with_label_values(&["session_limit"]),
            get(&m.sessions_rejected),
        );
        mirror(
            &f.rejected.with_label_values(&["sessions_per_address"]),
            get(&m.rejected_sessions_per_address),
        );
        mirror(
            &f.rejected.with_label_values(&["connect_rate"]),
            get(&m.rejected_connect_rate),
        );
        mirror(&f.accept_errors, get(&m.accept_errors));
        mirror(&f.unknown_frames, get(&m.unknown_frames));
        mirror(&s.updates_in.with_label_values(&[ROLE]), get(&m.updates_in));
        mirror(
            &s.updates_out.with_label_values(&[ROLE]),
            get(&m.updates_out),
        );
        mirror(&s.bytes_in.with_label_values(&[ROLE]), get(&m.bytes_in));
        mirror(&s.bytes_out.with_label_values(&[ROLE]), get(&m.bytes_out));
        let t = &self.table.counters;
        mirror(&f.unknown_withdrawals, get(&t.unknown_withdrawals));
        mirror(&f.duplicate_subscribes, get(&t.duplicate_subscribes));
        mirror(&f.dumps, get(&m.dumps));
        mirror(&f.dump_routes, get(&m.dump_routes));
        s.mirror_ends(ROLE, &m.closes(), Some(&f.slow_consumers));
        // Classes are few (the config file's); every class a session fell
        // in has all its reasons, 0 included.
        for (class, reason, n) in m.policy_refusals() {
            mirror(&f.policy_refused.with_label_values(&[&class, reason]), n);
        }
        for (reason, n) in m.tls_handshake_failures() {
            mirror(&f.tls_failures.with_label_values(&[reason]), n);
        }
    }
}
