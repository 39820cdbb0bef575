//! Read-only enforcement in one place: a tower layer in front of every
//! service of a listener marked read-only. Methods that change state answer
//! PERMISSION_DENIED; everything else passes.

use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::BoxFuture;

/// gRPC methods that change state.
const MUTATING: &[&str] = &[
    "/metalbondd.v1.RouteService/AnnounceRoutes",
    "/metalbondd.v1.RouteService/WithdrawRoutes",
    "/metalbondd.v1.PeerService/ResetPeer",
    "/metalbondd.v1.DaemonService/Reload",
    "/metalbondd.v1.DaemonService/Shutdown",
    "/metalbondd.v1.ClientService/AddServer",
    "/metalbondd.v1.ClientService/RemoveServer",
    "/metalbondd.v1.ClientService/Subscribe",
    "/metalbondd.v1.ClientService/Unsubscribe",
    "/metalbondd.v1.ClientService/SetTableMapping",
    "/metalbondd.v1.ClientService/RemoveTableMapping",
    "/metalbondd.v1.ClientService/Announce",
    "/metalbondd.v1.ClientService/Withdraw",
    "/metalbondd.v1.ClientService/SetAnnouncements",
];

/// True if `path` (`/package.Service/Method`) changes state.
pub fn is_mutating(path: &str) -> bool {
    MUTATING.contains(&path)
}

/// See the module documentation.
#[derive(Clone, Copy, Debug)]
pub struct ReadOnlyLayer {
    enabled: bool,
}

impl ReadOnlyLayer {
    /// A layer that rejects mutating methods when `enabled`.
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }
}

impl<S> Layer<S> for ReadOnlyLayer {
    type Service = ReadOnly<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadOnly {
            inner,
            enabled: self.enabled,
        }
    }
}

/// The service of [`ReadOnlyLayer`].
#[derive(Clone, Debug)]
pub struct ReadOnly<S> {
    inner: S,
    enabled: bool,
}

impl<S, B> Service<http::Request<B>> for ReadOnly<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if self.enabled && is_mutating(req.uri().path()) {
            let status = tonic::Status::permission_denied(format!(
                "{} changes state; this API listener is read-only (use the Unix socket)",
                req.uri().path()
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_state_changing_methods_are_mutating() {
        assert!(is_mutating("/metalbondd.v1.RouteService/AnnounceRoutes"));
        assert!(is_mutating("/metalbondd.v1.DaemonService/Shutdown"));
        assert!(is_mutating("/metalbondd.v1.ClientService/SetTableMapping"));
        assert!(!is_mutating("/metalbondd.v1.FleetService/GetFleet"));
        assert!(!is_mutating(
            "/metalbondd.v1.ClientService/ListReceivedRoutes"
        ));
        assert!(!is_mutating("/metalbondd.v1.RouteService/ListRoutes"));
        assert!(!is_mutating("/metalbondd.v1.RouteService/WatchRoutes"));
        assert!(!is_mutating("/metalbondd.v1.ClientService/WatchReceived"));
        assert!(!is_mutating("/grpc.health.v1.Health/Check"));
    }
}
