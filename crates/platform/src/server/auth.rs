//! Authentication and scope checks of gRPC calls, one layer for every service:
//!
//! - `authorization: Bearer <user JWT>` (audience `thali-api`): the account, with its roles;
//! - `authorization: Bearer <service token>` (audience `thali-<service called>`): another Thali
//!   service; the end user it acts for, if any, comes in `x-thali-user-token` as a user JWT;
//! - `authorization: Bearer thali_pk_…`: a partner API key, resolved through identity (cached
//!   briefly) and held to the scope the method requires.
//!
//! Only health and reflection answer without credentials. Missing or bad credentials:
//! UNAUTHENTICATED; a key without the method's scope: PERMISSION_DENIED.
use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tower::{Layer, Service};

use crate::{
    audit::{SecurityEvent, security_event},
    auth::{AuthError, Principal, Verifier, service_audience},
};

/// Header carrying the end user's token on a service-to-service call.
pub const USER_TOKEN_HEADER: &str = "x-thali-user-token";

/// Resolves a presented partner API key into its owner and scopes.
pub trait ApiKeyResolver: Send + Sync + 'static {
    fn resolve(&self, key: &str) -> Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send + '_>>;
}

/// The calling Thali service, on a service-to-service call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCaller(pub String);

/// Who may call what.
#[derive(Clone)]
pub struct AuthPolicy {
    verifier: Verifier,
    api_keys: Option<Arc<dyn ApiKeyResolver>>,
    /// Method path (`/pkg.Service/Method`) → scope an API key needs to call it.
    scopes: Arc<HashMap<String, String>>,
    limits: Option<Arc<GrpcLimits>>,
}

/// Rate limits of the callers that reach a gRPC server directly (ADR 0026): a partner API key
/// (its own quota when identity sets one, else `api_key`) and an account calling with its own
/// token (`signed_in`). Other Thali services are not limited here: the facade counted the end
/// user already.
pub struct GrpcLimits {
    pub limiter: crate::ratelimit::RateLimiter,
    pub api_key: crate::ratelimit::Quota,
    pub signed_in: crate::ratelimit::Quota,
}

impl AuthPolicy {
    /// A policy verifying tokens with `verifier`; API keys are refused until a resolver is set.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            api_keys: None,
            scopes: Arc::default(),
            limits: None,
        }
    }

    /// Limits partner API keys and accounts calling directly (see [`GrpcLimits`]).
    pub fn with_limits(mut self, limits: GrpcLimits) -> Self {
        self.limits = Some(Arc::new(limits));
        self
    }

    /// Counts one call of `key` under `policy`; RESOURCE_EXHAUSTED with `RetryInfo` when over.
    async fn take(
        &self,
        policy: &'static str,
        quota: &crate::ratelimit::Quota,
        key: &str,
        path: &str,
        peer: &str,
    ) -> Result<(), tonic::Status> {
        let Some(limits) = &self.limits else { return Ok(()) };
        let decision = limits.limiter.check(policy, quota, key).await;
        if decision.allowed {
            return Ok(());
        }
        security_event(SecurityEvent::RateLimited, key, path, peer, policy);
        let wait = decision.retry_after.max(std::time::Duration::from_millis(1));
        Err(crate::errors::resource_exhausted(
            "RATE_LIMITED",
            format!(
                "{} calls per {} s allowed; try again in {} ms",
                quota.limit,
                quota.period.as_secs(),
                wait.as_millis()
            ),
            wait,
        ))
    }

    /// Accepts partner API keys through `resolver`, for the methods in `scopes`.
    pub fn with_api_keys(mut self, resolver: Arc<dyn ApiKeyResolver>, scopes: &[(&str, &str)]) -> Self {
        self.api_keys = Some(resolver);
        self.scopes = Arc::new(scopes.iter().map(|(m, s)| ((*m).to_owned(), (*s).to_owned())).collect());
        self
    }

    async fn authenticate(&self, path: &str, headers: &http::HeaderMap, peer: &str) -> Result<Grant, tonic::Status> {
        let unauthenticated = |why: &str| tonic::Status::unauthenticated(why.to_owned());
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| unauthenticated("credentials required"))?
            .to_str()
            .map_err(|_| unauthenticated("the token is malformed"))?;
        let token =
            crate::auth::bearer_token(value).ok_or_else(|| unauthenticated("expected `authorization: Bearer …`"))?;

        if token.starts_with("thali_pk_") {
            let resolver = self
                .api_keys
                .as_ref()
                .ok_or_else(|| unauthenticated("API keys are not accepted here"))?;
            let principal = match resolver.resolve(token).await {
                Ok(principal) => principal,
                // Identity could not say: the key is not denied, the call can succeed later.
                Err(AuthError::Unavailable) => {
                    return Err(crate::errors::unavailable(
                        "AUTH_UNAVAILABLE",
                        "API keys cannot be checked right now; try again",
                        std::time::Duration::from_secs(1),
                    ));
                }
                Err(e) => {
                    security_event(SecurityEvent::ApiKeyDenied, key_hint(token), path, peer, &e.to_string());
                    return Err(unauthenticated(&e.to_string()));
                }
            };
            let grant = principal.api_key.as_ref().expect("a resolved key carries its grant");
            let needed = self.scopes.get(path);
            if !needed.is_some_and(|scope| grant.scopes.iter().any(|s| s == scope)) {
                security_event(SecurityEvent::AccessDenied, &grant.key_id, path, peer, "missing scope");
                let message = match needed {
                    Some(scope) => format!("this API key lacks the `{scope}` scope"),
                    None => "API keys may not call this method".to_owned(),
                };
                return Err(tonic::Status::permission_denied(message));
            }
            security_event(SecurityEvent::ApiKeyUsed, &grant.key_id, path, peer, "");
            if let Some(limits) = &self.limits {
                let quota = grant
                    .rate_limit_per_minute
                    .map_or(limits.api_key, crate::ratelimit::Quota::per_minute);
                self.take("api_key", &quota, &grant.key_id, path, peer).await?;
            }
            return Ok(Grant {
                principal: Some(principal),
                service: None,
            });
        }

        let audience = Verifier::peek_audience(token).unwrap_or_default();
        if audience == crate::auth::AUDIENCE {
            let principal = self
                .verifier
                .verify_fresh(token)
                .await
                .map_err(|e| unauthenticated(&e.to_string()))?;
            if let Some(limits) = &self.limits {
                self.take("signed_in", &limits.signed_in, &principal.subject, path, peer)
                    .await?;
            }
            return Ok(Grant {
                principal: Some(principal),
                service: None,
            });
        }
        let wanted = service_audience(audience_service(path, headers));
        let service = self
            .verifier
            .verify_service_fresh(token, &wanted)
            .await
            .map_err(|e| unauthenticated(&e.to_string()))?;
        let principal = match headers.get(USER_TOKEN_HEADER) {
            Some(user) => {
                let user = user
                    .to_str()
                    .map_err(|_| unauthenticated("the user token is malformed"))?;
                Some(
                    self.verifier
                        .verify_fresh(user)
                        .await
                        .map_err(|e| unauthenticated(&e.to_string()))?,
                )
            }
            None => None,
        };
        Ok(Grant {
            principal,
            service: Some(ServiceCaller(service)),
        })
    }
}

struct Grant {
    principal: Option<Principal>,
    service: Option<ServiceCaller>,
}

/// `storefront` for `/thali.storefront.v1.StorefrontService/GetStorefront`.
fn service_of(path: &str) -> &str {
    path.trim_start_matches('/')
        .strip_prefix("thali.")
        .and_then(|rest| rest.split('.').next())
        .unwrap_or("")
}

/// The service a service token for `path` must be addressed to. An event delivery
/// (`thali.events.v1.EventSink`) is addressed to the subscriber it names in
/// [`crate::events::SUBSCRIBER_HEADER`], an audit listing (`thali.audit.v1.AuditService`) to the
/// service whose chain it reads ([`crate::audit_log::SERVICE_HEADER`]), a personal-data export
/// to the service asked ([`crate::privacy::SERVICE_HEADER`]): one process can host
/// several services.
fn audience_service<'a>(path: &'a str, headers: &'a http::HeaderMap) -> &'a str {
    let service = service_of(path);
    let named_by = match service {
        "events" => crate::events::SUBSCRIBER_HEADER,
        "audit" => crate::audit_log::SERVICE_HEADER,
        "privacy" => crate::privacy::SERVICE_HEADER,
        _ => return service,
    };
    headers.get(named_by).and_then(|v| v.to_str().ok()).unwrap_or(service)
}

/// The service a request is addressed to in `header` (see [`audience_service`]), when it is not
/// `asked`, the service its body names: the call is refused rather than answered for a service
/// its token was not meant for.
pub fn addressed_elsewhere(
    metadata: &tonic::metadata::MetadataMap,
    header: &str,
    asked: &str,
) -> Option<crate::errors::Violation> {
    let addressed = metadata.get(header).and_then(|v| v.to_str().ok())?;
    (addressed != asked)
        .then(|| crate::errors::Violation::new("service", format!("must be the service named in {header}")))
}

/// The public prefix of a key, safe to log.
fn key_hint(key: &str) -> &str {
    key.get(..21).unwrap_or("thali_pk_")
}

/// Identity's key set: the public keys that verify user tokens are open to everyone, as health
/// is (ADR 0029).
pub const OPEN_KEY_SET: &str = "/thali.identity.v1.IdentityService/ListSigningKeys";

pub(crate) fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.") || path == OPEN_KEY_SET
}

/// Layer adding [`Auth`] to a gRPC server.
#[derive(Clone)]
pub struct AuthLayer {
    policy: AuthPolicy,
}

impl AuthLayer {
    pub fn new(policy: AuthPolicy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    policy: AuthPolicy,
}

/// The verified account behind a request, if the caller acts for one.
pub fn principal<T>(request: &tonic::Request<T>) -> Option<&Principal> {
    request.extensions().get::<Principal>()
}

impl<S, B> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if is_open(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        // The ready inner service goes with this call; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            // The caller's address as this server sees it (a partner, or the facade).
            let peer = req
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|c| c.remote_addr())
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            match policy.authenticate(&path, req.headers(), &peer).await {
                Ok(grant) => {
                    if let Some(p) = grant.principal {
                        req.extensions_mut().insert(p);
                    }
                    if let Some(s) = grant.service {
                        req.extensions_mut().insert(s);
                    }
                    inner.call(req).await
                }
                Err(status) => {
                    if status.code() == tonic::Code::Unauthenticated {
                        security_event(SecurityEvent::AuthenticationFailed, "", &path, &peer, status.message());
                    }
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_called_service_is_read_from_the_path() {
        assert_eq!(
            super::service_of("/thali.storefront.v1.StorefrontService/GetStorefront"),
            "storefront"
        );
        assert_eq!(super::service_of("/thali.identity.v1.IdentityService/Me"), "identity");
        assert_eq!(super::service_of("/other.Service/M"), "");
    }
}
