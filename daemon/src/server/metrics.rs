//! Counters the server keeps about itself. Plain atomics: cheap on the hot
//! path, read by the status and metrics endpoints.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Server-wide counters.
#[derive(Default, Debug)]
pub struct Metrics {
    /// Connections accepted.
    pub sessions_accepted: AtomicU64,
    /// Connections refused because the session limit was reached.
    pub sessions_rejected: AtomicU64,
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
    /// REMOVEs for routes the session never announced (ignored).
    pub unknown_withdrawals: AtomicU64,
    /// Duplicate SUBSCRIBEs (no second dump).
    pub duplicate_subscribes: AtomicU64,
    /// Sessions closed, by reason label.
    closes: Mutex<BTreeMap<&'static str, u64>>,
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

    /// Closed sessions by reason.
    pub fn closes(&self) -> BTreeMap<&'static str, u64> {
        self.closes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
