//! Control API request metrics: requests by service, method and gRPC status
//! code, and their duration. Only methods the daemon serves get their own
//! label values, so a client sending arbitrary paths cannot grow the label
//! set (they count as `unknown`).

use std::collections::HashSet;
use std::time::Duration;

use prometheus::{HistogramVec, IntCounterVec, Registry};
use prost::Message;

use super::families::{counter_vec, histogram_vec};

/// Buckets of the request duration: 100 us to 10 s (watch streams that last
/// longer all land in +Inf).
const DURATION_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// See the module documentation.
pub struct ApiMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    known: HashSet<String>,
}

impl ApiMetrics {
    pub(super) fn new(registry: &Registry) -> Self {
        Self {
            requests: counter_vec(
                registry,
                "metalbondd_api_requests_total",
                "Control API requests handled, by gRPC service, method and status code.",
                &["service", "method", "code"],
            ),
            duration: histogram_vec(
                registry,
                "metalbondd_api_request_duration_seconds",
                "Control API request duration (for streams: until the stream ended), by gRPC service and method.",
                &["service", "method"],
                DURATION_BUCKETS,
            ),
            known: known_methods(),
        }
    }

    /// Counts one finished request to `path` (`/package.Service/Method`).
    pub fn observe(&self, path: &str, code: tonic::Code, took: Duration) {
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .filter(|_| self.known.contains(path))
            .unwrap_or(("unknown", "unknown"));
        self.requests
            .with_label_values(&[service, method, code_name(code)])
            .inc();
        self.duration
            .with_label_values(&[service, method])
            .observe(took.as_secs_f64());
    }
}

/// The canonical gRPC status code names (as grpc-go spells them).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Every method path the API server serves: ours, health and reflection.
fn known_methods() -> HashSet<String> {
    let sets = [
        metalbond_proto::api::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut known = HashSet::new();
    for bytes in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
            continue;
        };
        for file in set.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    known.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                }
            }
        }
    }
    known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_are_known_and_others_are_not() {
        let known = known_methods();
        for path in [
            "/metalbondd.v1.RouteService/ListRoutes",
            "/metalbondd.v1.DaemonService/GetStatus",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(known.contains(path), "{path} missing from {known:?}");
        }
        assert!(!known.contains("/evil.Service/Anything"));
    }

    #[test]
    fn unknown_paths_share_one_label() {
        let registry = Registry::new();
        let m = ApiMetrics::new(&registry);
        for i in 0..100 {
            m.observe(
                &format!("/x{i}.S/M"),
                tonic::Code::Unimplemented,
                Duration::ZERO,
            );
        }
        m.observe(
            "/metalbondd.v1.RouteService/ListRoutes",
            tonic::Code::Ok,
            Duration::ZERO,
        );
        assert_eq!(
            m.requests
                .with_label_values(&["unknown", "unknown", "Unimplemented"])
                .get(),
            100
        );
        assert_eq!(
            m.requests
                .with_label_values(&["metalbondd.v1.RouteService", "ListRoutes", "OK"])
                .get(),
            1
        );
    }
}
