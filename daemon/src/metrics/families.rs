//! Small helpers shared by the mirrors: metric constructors, mirroring of
//! atomics into counters, and the classification of session end reasons.

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use super::register;

/// The metric just built (its options are constants, so building cannot
/// fail), registered in `registry`.
fn registered<M: Collector + Clone + 'static>(
    registry: &Registry,
    built: prometheus::Result<M>,
) -> M {
    let metric = built.expect("valid metric");
    register(registry, metric.clone());
    metric
}

/// A registered counter.
pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::new(name, help))
}

/// A registered counter with labels.
pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

/// A registered gauge.
pub fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help))
}

/// A registered gauge with labels.
pub fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

/// A registered histogram with labels.
pub fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    registered(
        registry,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        ),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

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
