//! API request metrics in one place: a tower layer in front of every
//! service of a listener that counts each request by method and final gRPC
//! status, and times it. The status is in the response headers for errors
//! (trailers-only responses) and in the trailers otherwise, so the response
//! body is wrapped to see them; a stream the client abandons counts as
//! `Canceled`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use super::BoxFuture;

use crate::metrics::ApiMetrics;

/// See the module documentation.
#[derive(Clone)]
pub struct MeteredLayer {
    metrics: Arc<ApiMetrics>,
}

impl MeteredLayer {
    /// A layer counting into `metrics`.
    pub fn new(metrics: Arc<ApiMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MeteredLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`MeteredLayer`].
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: Arc<ApiMetrics>,
}

impl<S, B> Service<http::Request<B>> for Metered<S>
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
        let recorder = Recorder {
            metrics: self.metrics.clone(),
            path: req.uri().path().to_string(),
            started: Instant::now(),
        };
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            if let Some(code) = grpc_status(response.headers()) {
                recorder.record(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(ObservedBody {
                    inner: body,
                    recorder: Some(recorder),
                })
            }))
        })
    }
}

/// The `grpc-status` of a header map, if present.
fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|v| tonic::Code::from_bytes(v.as_bytes()))
}

struct Recorder {
    metrics: Arc<ApiMetrics>,
    path: String,
    started: Instant,
}

impl Recorder {
    fn record(self, code: tonic::Code) {
        self.metrics
            .observe(&self.path, code, self.started.elapsed());
    }
}

/// A response body that records the status from its trailers.
struct ObservedBody {
    inner: tonic::body::Body,
    /// Taken when the request is counted.
    recorder: Option<Recorder>,
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    if let Some(r) = self.recorder.take() {
                        r.record(code);
                    }
                }
            }
            Poll::Ready(Some(Err(status))) => {
                if let Some(r) = self.recorder.take() {
                    r.record(status.code());
                }
            }
            Poll::Ready(None) => {
                // Ended without a status: not a well-formed gRPC response.
                if let Some(r) = self.recorder.take() {
                    r.record(tonic::Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // Never claim the end early: the trailers are what is counted.
        false
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // The client went away before the end (e.g. a watch it stopped).
        if let Some(r) = self.recorder.take() {
            r.record(tonic::Code::Cancelled);
        }
    }
}
