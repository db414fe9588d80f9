//! The layers every attempt goes through on its way to one endpoint: the service token that
//! authenticates this process, then the W3C trace context.
use std::{
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tower::{Layer, Service};

use super::ServiceIdentity;
use crate::auth::service_audience;

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
