//! A process-wide limit on calls in progress, with load shedding: a call over the limit is
//! answered at once with UNAVAILABLE + RetryInfo and ErrorInfo `OVERLOADED` (it did not run, so
//! the caller's client stack may send it to another replica), and counted in
//! `rpc_server_shed_total{method}`. tonic's own `load_shed` and `concurrency_limit_per_connection` act
//! per connection; this limit is shared by every connection of the server. Health and
//! reflection are never shed.
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::client::retry::OVERLOADED;

/// Layer adding [`Shed`] to a gRPC server.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
}

impl ShedLayer {
    /// At most `max` calls in progress at once.
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// See [`ShedLayer`].
#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

/// How long a shed caller is told to wait before trying this replica again.
const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

impl<S, B> Service<http::Request<B>> for Shed<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if super::auth::is_open(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let future = self.inner.call(req);
                Box::pin(async move {
                    let response = future.await;
                    drop(permit);
                    response
                })
            }
            Err(_) => {
                let method = super::metrics::method_label(req.uri().path());
                metrics::counter!("rpc_server_shed_total", "method" => method).increment(1);
                let status = crate::errors::unavailable(
                    OVERLOADED,
                    "the server is at its limit of calls in progress; try another replica",
                    SHED_RETRY_AFTER,
                );
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    #[tokio::test(start_paused = true)]
    async fn over_the_limit_a_call_is_shed_with_retry_info() {
        let (release, released) = tokio::sync::watch::channel(false);
        let slow = tower::service_fn(move |_req: http::Request<()>| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
            }
        });
        let layer = ShedLayer::new(1);
        let mut first_svc = layer.layer(slow.clone());
        let mut second_svc = layer.layer(slow);
        let path = |p: &str| http::Request::builder().uri(p).body(()).unwrap();
        let first = tokio::spawn(first_svc.call(path("/thali.storefront.v1.StorefrontService/GetStorefront")));
        tokio::task::yield_now().await;
        let shed = second_svc
            .call(path("/thali.storefront.v1.StorefrontService/GetStorefront"))
            .await
            .unwrap();
        let status = tonic::Status::from_header_map(shed.headers()).expect("a trailers-only status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.get_details_error_info().unwrap().reason, OVERLOADED);
        assert_eq!(
            status.get_details_retry_info().unwrap().retry_delay,
            Some(SHED_RETRY_AFTER)
        );
        // Health is never shed.
        let health = second_svc.call(path("/grpc.health.v1.Health/Check"));
        release.send(true).unwrap();
        assert_eq!(health.await.unwrap().status(), 200);
        first.await.unwrap().unwrap();
        // The permit is back: the next call runs.
        let again = second_svc
            .call(path("/thali.storefront.v1.StorefrontService/GetStorefront"))
            .await
            .unwrap();
        assert!(tonic::Status::from_header_map(again.headers()).is_none());
    }
}
