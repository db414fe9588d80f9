//! Continues the caller's trace: reads W3C `traceparent` from the request metadata and runs the
//! call inside a server span whose parent is the caller's span.
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Layer adding [`Trace`] to a gRPC server.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Trace { inner }
    }
}

/// See [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
}

impl<S, B, ResBody> Service<http::Request<B>> for Trace<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().trim_start_matches('/').to_owned();
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let parent = crate::telemetry::extract_context(req.headers());
        // A missing or malformed traceparent starts a new trace; that is not an error.
        let _ = span.set_parent(parent);
        let future = span.in_scope(|| self.inner.call(req));
        let record = span.clone();
        Box::pin(
            async move {
                let response = future.await?;
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0);
                record.record("rpc.grpc.status_code", code);
                if crate::telemetry::is_server_fault(tonic::Code::from_i32(code)) {
                    record.record("otel.status_code", "error");
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}
