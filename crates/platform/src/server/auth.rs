//! Authentication of gRPC calls: a bearer token in the `authorization` metadata is verified and
//! its [`Principal`] put in the request extensions for the handler. A call without credentials
//! goes on without a principal (each RPC decides whether it needs one); a call with bad
//! credentials stops here with UNAUTHENTICATED. Health and reflection never need credentials.
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tower::{Layer, Service};

use crate::auth::{Principal, Verifier};

/// Layer adding [`Auth`] to a gRPC server.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: Verifier,
}

impl AuthLayer {
    pub fn new(verifier: Verifier) -> Self {
        Self { verifier }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    verifier: Verifier,
}

/// The verified caller of a request, if it sent credentials.
pub fn principal<T>(request: &tonic::Request<T>) -> Option<&Principal> {
    request.extensions().get::<Principal>()
}

fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

impl<S, B> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !is_open(req.uri().path())
            && let Some(value) = req.headers().get(http::header::AUTHORIZATION)
        {
            let verified = value
                .to_str()
                .map_err(|_| crate::auth::AuthError::Malformed)
                .and_then(|v| self.verifier.verify_bearer(v));
            match verified {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                }
                Err(e) => {
                    tracing::info!(reason = %e, path = req.uri().path(), "gRPC call refused: bad credentials");
                    let status = tonic::Status::unauthenticated(e.to_string());
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        let future = self.inner.call(req);
        Box::pin(future)
    }
}
