//! Counters the server keeps about itself. Plain atomics: cheap on the hot
//! path, read by the API's status and mirrored into the Prometheus registry
//! at scrape time (`crate::metrics`). The two latency distributions are
//! Prometheus histograms (also lock-free atomics), observed per write batch,
//! never per route.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use prometheus::{Histogram, HistogramOpts};

/// Server-wide counters.
#[derive(Debug)]
pub struct Metrics {
    /// Connections accepted.
    pub sessions_accepted: AtomicU64,
    /// Connections refused because the session limit was reached.
    pub sessions_rejected: AtomicU64,
    /// Connections closed at accept: their address had its policy class's
    /// `max_sessions_per_address` sessions open.
    pub rejected_sessions_per_address: AtomicU64,
    /// Connections closed at accept: over their address's `connect_rate`.
    pub rejected_connect_rate: AtomicU64,
    /// Sessions currently open.
    pub sessions_active: AtomicU64,
    /// Accept errors (e.g. out of file descriptors).
    pub accept_errors: AtomicU64,
    /// Frames received (all types).
    pub frames_in: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Frames of unknown type skipped.
    pub unknown_frames: AtomicU64,
    /// UPDATEs received.
    pub updates_in: AtomicU64,
    /// Sessions that completed the handshake (ESTABLISHED).
    pub sessions_established: AtomicU64,
    /// UPDATEs queued for peers (dump entries and live updates).
    pub updates_out: AtomicU64,
    /// SUBSCRIBE dumps sent.
    pub dumps: AtomicU64,
    /// Routes sent in SUBSCRIBE dumps.
    pub dump_routes: AtomicU64,
    /// From a SUBSCRIBE's arrival to the last byte of its dump written to
    /// the subscriber's socket.
    pub dump_duration: Histogram,
    /// From an UPDATE's arrival (or an API/config change) to the frame
    /// written to a subscriber's socket; the oldest update of each write
    /// batch is observed.
    pub propagation: Histogram,
    /// From the read of a KEEPALIVE to the write of its echo: the margin a
    /// loaded server keeps before its peers' keepalive timeouts.
    pub keepalive_echo: Histogram,
    /// Sessions closed, by reason label.
    closes: Mutex<BTreeMap<&'static str, u64>>,
    /// Policy refusals by class name (one counter per
    /// [`crate::policy::Reason`]); a session takes its class's counters
    /// once at start, so counting a refusal is one atomic add.
    policy_refused: Mutex<BTreeMap<String, Arc<PolicyCounters>>>,
    /// TLS handshakes that failed, by [`crate::tls::FAILURE_REASONS`] index.
    tls_failures: [AtomicU64; crate::tls::FAILURE_REASONS.len()],
}

/// One policy class's refusals, by [`crate::policy::Reason`] number.
#[derive(Debug, Default)]
pub struct PolicyCounters(pub [AtomicU64; crate::policy::Reason::ALL.len()]);

impl Default for Metrics {
    fn default() -> Self {
        Self {
            sessions_accepted: AtomicU64::new(0),
            sessions_rejected: AtomicU64::new(0),
            rejected_sessions_per_address: AtomicU64::new(0),
            rejected_connect_rate: AtomicU64::new(0),
            sessions_active: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            unknown_frames: AtomicU64::new(0),
            updates_in: AtomicU64::new(0),
            sessions_established: AtomicU64::new(0),
            updates_out: AtomicU64::new(0),
            dumps: AtomicU64::new(0),
            dump_routes: AtomicU64::new(0),
            dump_duration: histogram(
                "metalbondd_subscribe_dump_duration_seconds",
                "Time from a SUBSCRIBE's arrival to the last byte of its dump written to the subscriber's socket.",
                DUMP_BUCKETS,
            ),
            propagation: histogram(
                "metalbondd_update_propagation_seconds",
                "Time from an UPDATE's arrival (or an API or config change) to its frame written to a subscriber's socket; the oldest update of each write batch is observed.",
                PROPAGATION_BUCKETS,
            ),
            keepalive_echo: histogram(
                "metalbondd_keepalive_echo_latency_seconds",
                "Time from reading a peer's KEEPALIVE to writing its echo to the socket.",
                PROPAGATION_BUCKETS,
            ),
            closes: Mutex::new(BTreeMap::new()),
            policy_refused: Mutex::new(BTreeMap::new()),
            tls_failures: Default::default(),
        }
    }
}

/// Buckets of [`Metrics::propagation`]: 10 us to 10 s.
const PROPAGATION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of [`Metrics::dump_duration`]: 100 us to 2 min.
const DUMP_BUCKETS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0,
];

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid histogram options")
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Counts a closed session under `reason` (a short stable label).
    pub fn session_closed(&self, reason: &'static str) {
        *self
            .closes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// The refusal counters of policy class `class` (created on first use;
    /// kept across reloads, by name).
    pub fn policy_counters(&self, class: &str) -> Arc<PolicyCounters> {
        let mut map = self
            .policy_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(class) {
            return c.clone();
        }
        let c = Arc::new(PolicyCounters::default());
        map.insert(class.to_string(), c.clone());
        c
    }

    /// Policy refusals: (class, reason label, count) for every class seen.
    pub fn policy_refusals(&self) -> Vec<(String, &'static str, u64)> {
        let map = self
            .policy_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (class, counters) in map.iter() {
            for reason in crate::policy::Reason::ALL {
                let n = counters.0[reason as usize].load(Relaxed);
                out.push((class.clone(), reason.label(), n));
            }
        }
        out
    }

    /// Counts a failed TLS handshake under `reason` (one of
    /// [`crate::tls::FAILURE_REASONS`]).
    pub fn tls_handshake_failed(&self, reason: &str) {
        if let Some(i) = crate::tls::FAILURE_REASONS
            .iter()
            .position(|r| *r == reason)
        {
            self.tls_failures[i].fetch_add(1, Relaxed);
        }
    }

    /// Failed TLS handshakes: (reason, count), every reason.
    pub fn tls_handshake_failures(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        crate::tls::FAILURE_REASONS
            .iter()
            .zip(&self.tls_failures)
            .map(|(r, n)| (*r, n.load(Relaxed)))
    }

    /// Closed sessions by reason.
    pub fn closes(&self) -> BTreeMap<&'static str, u64> {
        self.closes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
