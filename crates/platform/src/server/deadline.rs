//! Keeps the caller's deadline (`grpc-timeout`) for the handler's own outgoing calls: the
//! handler runs inside [`crate::deadline::scope`], so the client stack sends on what is left of
//! it instead of a fresh budget.
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tokio::time::Instant;
use tower::{Layer, Service};

/// Layer adding [`DeadlineScope`] to a gRPC server.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineScopeLayer;

impl<S> Layer<S> for DeadlineScopeLayer {
    type Service = DeadlineScope<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineScope { inner }
    }
}

/// See [`DeadlineScopeLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineScope<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for DeadlineScope<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::deadline::parse_grpc_timeout)
            .map(|left| Instant::now() + left);
        Box::pin(crate::deadline::scope(deadline, self.inner.call(req)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_handler_sees_the_callers_deadline() {
        let handler = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(crate::deadline::current())
        });
        let mut svc = DeadlineScopeLayer.layer(handler);
        let mut req = http::Request::new(());
        req.headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("300m"));
        let seen = svc.call(req).await.unwrap().expect("a deadline");
        assert_eq!(seen - Instant::now(), Duration::from_millis(300));
        assert_eq!(svc.call(http::Request::new(())).await.unwrap(), None);
    }
}
