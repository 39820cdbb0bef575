//! Small helpers shared by the mirrors: metric constructors, mirroring of
//! atomics into counters, and the classification of session end reasons.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use super::register;

/// A registered counter.
pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    register(registry, c.clone());
    c
}

/// A registered counter with labels.
pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    register(registry, c.clone());
    c
}

/// A registered gauge.
pub fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    register(registry, g.clone());
    g
}

/// A registered gauge with labels.
pub fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    register(registry, g.clone());
    g
}

/// A registered histogram with labels.
pub fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    register(registry, h.clone());
    h
}

/// Registers a histogram that a component observes itself.
pub fn adopt_histogram(registry: &Registry, h: &Histogram) {
    register(registry, h.clone());
}

/// Moves `counter` up to `value` (a monotonic atomic it mirrors).
pub fn mirror(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

/// Sets a gauge from an unsigned count.
pub fn set(gauge: &IntGauge, value: u64) {
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
}

/// What a session end reason means to an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndClass {
    /// An ordinary end: the peer or an operator closed it, a connection
    /// could not be made, the daemon stopped.
    Normal,
    /// The peer sent something malformed or broke the protocol.
    ProtocolError,
    /// The peer did not complete the handshake in time.
    HandshakeTimeout,
    /// The peer stopped sending keepalives.
    KeepaliveTimeout,
    /// The peer did not read fast enough (write timeout, update-log lag).
    SlowConsumer,
}

/// Classifies a session end `reason` label (see `Ended::label`,
/// `CloseReason::label` and `DecodeError::label`). Unknown labels are
/// protocol errors: every label not listed here comes from the decoder or
/// from a protocol violation.
pub fn classify_end(label: &str) -> EndClass {
    match label {
        "handshake_timeout_hello" | "handshake_timeout_keepalive" => EndClass::HandshakeTimeout,
        "keepalive_timeout" => EndClass::KeepaliveTimeout,
        "write_timeout" | "lagging" => EndClass::SlowConsumer,
        "peer_closed" | "io_error" | "reset" | "shutdown" | "connect_failed"
        | "connect_timeout" | "resolve_failed" => EndClass::Normal,
        _ => EndClass::ProtocolError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::CloseReason;
    use crate::wire::DecodeError;
    use std::time::Duration;

    #[test]
    fn decode_errors_and_protocol_violations_are_protocol_errors() {
        let decode = [
            DecodeError::BadVersion(2),
            DecodeError::MissingDestination,
            DecodeError::MissingNextHop,
            DecodeError::PortOutOfRange(70000),
            DecodeError::UnknownAction(7),
        ];
        for e in decode {
            assert_eq!(classify_end(e.label()), EndClass::ProtocolError, "{e}");
        }
        for r in [
            CloseReason::ZeroKeepaliveInterval,
            CloseReason::DuplicateHello,
            CloseReason::KeepaliveBeforeHello,
        ] {
            assert_eq!(classify_end(r.label()), EndClass::ProtocolError, "{r}");
        }
        assert_eq!(classify_end("truncated_frame"), EndClass::ProtocolError);
    }

    #[test]
    fn timeouts_and_slow_consumers_are_told_apart() {
        let waited = Duration::from_secs(5);
        assert_eq!(
            classify_end(CloseReason::HandshakeNoHello { waited }.label()),
            EndClass::HandshakeTimeout
        );
        assert_eq!(
            classify_end(CloseReason::HandshakeNoKeepalive { waited }.label()),
            EndClass::HandshakeTimeout
        );
        assert_eq!(
            classify_end(CloseReason::KeepaliveTimeout { waited }.label()),
            EndClass::KeepaliveTimeout
        );
        assert_eq!(classify_end("write_timeout"), EndClass::SlowConsumer);
        assert_eq!(classify_end("lagging"), EndClass::SlowConsumer);
        for normal in [
            "peer_closed",
            "io_error",
            "reset",
            "shutdown",
            "connect_failed",
            "resolve_failed",
        ] {
            assert_eq!(classify_end(normal), EndClass::Normal);
        }
    }

    #[test]
    fn mirroring_moves_counters_up_only() {
        let r = Registry::new();
        let c = counter(&r, "t_total", "t");
        mirror(&c, 5);
        mirror(&c, 3);
        assert_eq!(c.get(), 5);
        mirror(&c, 9);
        assert_eq!(c.get(), 9);
    }
}
