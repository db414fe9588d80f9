//! The gRPC client stack, assembled in one place and read top to bottom in the order a call
//! meets it: per-call deadline → [retry and circuit breaker slot in here] → service token →
//! trace injection → one lazily connected channel per target.
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use crate::auth::{Signer, service_audience};

use tonic::transport::{Channel, Endpoint};
use tower::{Layer, Service, ServiceBuilder};

/// What every typed client in Thali is built on.
pub type GrpcChannel = Deadline<ServiceToken<InjectTrace<Channel>>>;

/// Who this process is when it calls another Thali service.
#[derive(Clone)]
pub struct ServiceIdentity {
    /// This service's name, e.g. `facade`.
    pub name: String,
    pub signer: Arc<Signer>,
}

/// A boxed error, as tonic's clients expect from their transport.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the client stack towards `url`. The channel connects on first use, so a target that
/// is down at start does not stop the caller from starting.
pub fn channel(
    url: &str,
    target: &str,
    identity: &ServiceIdentity,
    connect_timeout: Duration,
    deadline: Duration,
) -> Result<GrpcChannel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(ServiceBuilder::new()
        .layer(DeadlineLayer::new(deadline))
        // Retry (with budget) and the circuit breaker come here, between the deadline that
        // bounds the whole call and the credentials and trace context every attempt carries.
        .layer(ServiceTokenLayer::new(identity.clone(), target))
        .layer(InjectTraceLayer)
        .service(endpoint.connect_lazy()))
}

/// Bounds every call: sets `grpc-timeout` (so the server stops working on an abandoned call)
/// unless the caller set its own, and fails the call with DEADLINE_EXCEEDED when it passes.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    deadline: Duration,
}

impl DeadlineLayer {
    pub fn new(deadline: Duration) -> Self {
        Self { deadline }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            deadline: self.deadline,
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    deadline: Duration,
}

fn parse_grpc_timeout(value: &http::HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S, B, ResBody> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let deadline = match req.headers().get("grpc-timeout").and_then(parse_grpc_timeout) {
            Some(own) => own.min(self.deadline),
            None => self.deadline,
        };
        let millis = deadline.as_millis().clamp(1, 99_999_999);
        req.headers_mut().insert(
            "grpc-timeout",
            http::HeaderValue::from_str(&format!("{millis}m")).expect("digits are a valid header"),
        );
        let future = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(deadline, future).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(tonic::Status::deadline_exceeded(format!(
                    "no answer within {} ms",
                    deadline.as_millis()
                ))) as BoxError),
            }
        })
    }
}

/// Life of a service token; it is re-minted a minute before it ends.
const SERVICE_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Authenticates every call as this service with a short-lived token addressed to the target
/// service, unless the call already carries credentials.
#[derive(Clone)]
pub struct ServiceTokenLayer {
    /// Shared by every clone: a client is cloned for each call, so this must cost one Arc.
    shared: Arc<TokenSource>,
}

struct TokenSource {
    identity: ServiceIdentity,
    audience: String,
    cached: Mutex<Option<(http::HeaderValue, Instant)>>,
}

impl ServiceTokenLayer {
    pub fn new(identity: ServiceIdentity, target: &str) -> Self {
        Self {
            shared: Arc::new(TokenSource {
                identity,
                audience: service_audience(target),
                cached: Mutex::default(),
            }),
        }
    }

    fn header(&self) -> http::HeaderValue {
        let source = &*self.shared;
        let mut cached = source.cached.lock().expect("service token cache lock");
        if let Some((value, minted)) = cached.as_ref()
            && minted.elapsed() < SERVICE_TOKEN_TTL - Duration::from_secs(60)
        {
            return value.clone();
        }
        let token = source
            .identity
            .signer
            .mint_service(&source.identity.name, &source.audience, SERVICE_TOKEN_TTL);
        let value = http::HeaderValue::try_from(format!("Bearer {token}")).expect("a JWT is a valid header value");
        *cached = Some((value.clone(), Instant::now()));
        value
    }
}

impl<S> Layer<S> for ServiceTokenLayer {
    type Service = ServiceToken<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServiceToken {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`ServiceTokenLayer`].
#[derive(Clone)]
pub struct ServiceToken<S> {
    inner: S,
    layer: ServiceTokenLayer,
}

impl<S, B> Service<http::Request<B>> for ServiceToken<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !req.headers().contains_key(http::header::AUTHORIZATION) {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, self.layer.header());
        }
        self.inner.call(req)
    }
}

/// Writes the current span's W3C trace context into the call's metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct InjectTraceLayer;

impl<S> Layer<S> for InjectTraceLayer {
    type Service = InjectTrace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InjectTrace { inner }
    }
}

/// See [`InjectTraceLayer`].
#[derive(Debug, Clone)]
pub struct InjectTrace<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for InjectTrace<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        crate::telemetry::inject_context(req.headers_mut());
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_is_parsed() {
        assert_eq!(
            parse_grpc_timeout(&http::HeaderValue::from_static("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_grpc_timeout(&http::HeaderValue::from_static("3S")),
            Some(Duration::from_secs(3))
        );
        assert_eq!(parse_grpc_timeout(&http::HeaderValue::from_static("x")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_fails_with_deadline_exceeded() {
        let slow = tower::service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, BoxError>(http::Response::new(()))
        });
        let mut svc = DeadlineLayer::new(Duration::from_millis(100)).layer(slow);
        let err = svc.call(http::Request::new(())).await.unwrap_err();
        let status = err.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_travels_as_grpc_timeout() {
        let echo = tower::service_fn(|req: http::Request<()>| async move {
            Ok::<_, BoxError>(http::Response::new(req.headers().get("grpc-timeout").cloned()))
        });
        let mut svc = DeadlineLayer::new(Duration::from_millis(1500)).layer(echo);
        let res = svc.call(http::Request::new(())).await.unwrap();
        assert_eq!(res.into_body().unwrap(), "1500m");
    }
}
