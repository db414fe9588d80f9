//! HTTP middleware and extractors: tracing + RED metrics per route, authentication of the
//! caller, and JSON/path/query extractors whose rejections are problem+json.
use std::time::Instant;

use axum::{
    extract::{FromRequest, FromRequestParts, MatchedPath, Request, State},
    http::{HeaderValue, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use opentelemetry::trace::TraceContextExt;
use thali_platform::{
    audit::{SecurityEvent, security_event},
    auth::{Principal, bearer_token},
    server::USER_TOKEN_HEADER,
};
use thali_proto::identity::v1::RenewAccessTokenRequest;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{FacadeState, problem::Problem};

/// The client's address as [`thali_platform::net::TrustedProxies`] resolved it (the socket
/// peer, or the rightmost untrusted `X-Forwarded-For` entry behind a trusted proxy). Every
/// route that needs it (login throttling, rate limits, security events) reads it from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub std::net::IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .unwrap_or(ClientIp(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))))
    }
}

/// Resolves [`ClientIp`] once per request (in [`observe`], before anything else reads it).
fn resolve_client(proxies: &thali_platform::net::TrustedProxies, req: &mut Request) -> ClientIp {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::tls::Peer>>()
        .map(|c| c.0.0.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let ip = ClientIp(proxies.client_ip(
        peer,
        req.headers().get_all("x-forwarded-for").iter().map(|v| v.as_bytes()),
    ));
    req.extensions_mut().insert(ip);
    ip
}

/// Content-Security-Policy of every answer but the API docs: JSON needs nothing.
const CSP_API: HeaderValue = HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'");
/// The docs page (Swagger UI) loads only its own scripts, styles and images.
const CSP_DOCS: HeaderValue = HeaderValue::from_static(
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
);

/// What the edge middleware needs from the configuration.
pub struct Edge {
    pub proxies: thali_platform::net::TrustedProxies,
    /// The facade serves HTTPS: answers carry `Strict-Transport-Security`.
    pub hsts: bool,
}

/// Security headers on every REST answer, and caching rules that keep one caller's answer out of
/// another's cache: `Cache-Control: no-store` on anything answered to a request that carried
/// credentials, `Vary: Authorization` on any cacheable answer to one that did not.
fn set_security_headers(headers: &mut axum::http::HeaderMap, signed_in: bool, docs: bool, hsts: bool) {
    headers.reserve(8);
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(CORP, HeaderValue::from_static("same-site"));
    headers.insert(header::CONTENT_SECURITY_POLICY, if docs { CSP_DOCS } else { CSP_API });
    if hsts {
        // Two years, subdomains included.
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }
    if signed_in {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    } else if headers
        .get(header::CACHE_CONTROL)
        .is_some_and(|v| v.as_bytes().starts_with(b"public") || v.as_bytes().windows(7).any(|w| w == b"max-age"))
    {
        headers.append(header::VARY, HeaderValue::from_static("authorization"));
    }
}

const CORP: axum::http::HeaderName = axum::http::HeaderName::from_static("cross-origin-resource-policy");

/// JSON answers with `<`, `>` and `&` written as `\u003c`, `\u003e`, `\u0026`: the same JSON to
/// any parser, but a page that inlines an answer in a `<script>` block cannot be broken out of
/// by a user's text (`</script>`), and HTML-sniffing has nothing to find. Those bytes can only
/// stand inside JSON strings, so the rewrite is a byte-for-byte swap; answers without them
/// pass untouched.
async fn escape_json(response: Response) -> Response {
    if response.extensions().get::<JsonEscaped>().is_some() {
        return response;
    }
    let json = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/json") || v.starts_with(b"application/problem+json")
    });
    if !json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Problem::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "the answer could not be written",
        )
        .into_response();
    };
    let Some(out) = escape_json_bytes(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(out))
}

/// Marks an answer whose JSON body went through [`escape_json_bytes`] already (a cached page,
/// escaped once when cached): [`observe`] does not scan it again.
#[derive(Clone, Copy)]
pub struct JsonEscaped;

/// `json` with `<`, `>`, `&` written as `\u003c`, `\u003e`, `\u0026`; None when it has none.
pub fn escape_json_bytes(json: &[u8]) -> Option<Vec<u8>> {
    if !json.iter().any(|b| matches!(b, b'<' | b'>' | b'&')) {
        return None;
    }
    let mut out = Vec::with_capacity(json.len() + 32);
    for &b in json {
        match b {
            b'<' => out.extend_from_slice(b"\\u003c"),
            b'>' => out.extend_from_slice(b"\\u003e"),
            b'&' => out.extend_from_slice(b"\\u0026"),
            _ => out.push(b),
        }
    }
    Some(out)
}

/// The route template a request matched, carried from the router back out to [`observe`].
#[derive(Clone)]
struct RouteTag(MatchedPath);

/// Inner layer (on matched routes only): tags the response with its route template (a shared
/// string: no copy per request).
pub async fn tag_route(matched: MatchedPath, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    response.extensions_mut().insert(RouteTag(matched));
    response
}

type Histograms = std::collections::HashMap<String, std::collections::HashMap<(&'static str, u16), metrics::Histogram>>;

/// `http_server_request_duration_seconds` handles, registered once per route, method and status:
/// the request path looks one up (a read lock and a hash) instead of building its labels.
static HISTOGRAMS: std::sync::LazyLock<std::sync::RwLock<Histograms>> = std::sync::LazyLock::new(Default::default);

fn duration_histogram(route: &str, method: &'static str, status: u16) -> metrics::Histogram {
    if let Some(h) = HISTOGRAMS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(route)
        .and_then(|by| by.get(&(method, status)))
    {
        return h.clone();
    }
    // Kept for good: the recorder must be installed before (a handle made without it counts
    // nothing).
    thali_platform::telemetry::metrics_handle();
    let h = metrics::histogram!(
        "http_server_request_duration_seconds",
        "route" => route.to_owned(),
        "method" => method,
        "status" => status.to_string(),
    );
    HISTOGRAMS
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(route.to_owned())
        .or_default()
        .insert((method, status), h.clone());
    h
}

/// The edge, one layer (each `from_fn` layer costs a boxed service per request): resolves the
/// client's address, continues the caller's trace (W3C `traceparent`) in a server span, escapes
/// JSON answers and sets the security headers on every answer, and records
/// `http_server_request_duration_seconds{route, method, status}`.
pub async fn observe(State(edge): State<std::sync::Arc<Edge>>, mut req: Request, next: Next) -> Response {
    let client = resolve_client(&edge.proxies, &mut req);
    let signed_in = req.headers().contains_key(header::AUTHORIZATION);
    let docs = req.uri().path().starts_with("/docs");
    // Only standard methods become label values, so odd methods cannot grow the registry.
    let method: &'static str = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    };
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let span = tracing::info_span!(
        "http.server",
        otel.name = %method,
        otel.kind = "server",
        http.request.method = %method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        request_id = %request_id,
    );
    // A missing or malformed traceparent starts a new trace.
    let _ = span.set_parent(thali_platform::telemetry::extract_context(req.headers()));
    let started = Instant::now();
    let mut response = escape_json(next.run(req).instrument(span.clone()).await).await;
    set_security_headers(response.headers_mut(), signed_in, docs, edge.hsts);
    let route = response
        .extensions()
        .get::<RouteTag>()
        .map(|r| r.0.as_str())
        .unwrap_or("unmatched");
    let status = response.status().as_u16();
    span.record("http.route", route);
    // The route is known only after routing, when the OTel span has already started; a span
    // that is not sampled is not renamed (nobody sees its name).
    let otel = span.context();
    if otel.span().span_context().is_sampled() {
        otel.span().update_name(format!("{method} {route}"));
    }
    span.record("http.response.status_code", status);
    if status >= 500 {
        // A server error (the collector's tail sampling keeps the trace); a 4xx is the caller's.
        span.record("otel.status_code", "error");
    }
    // A refusal by a service (PERMISSION_DENIED) is a security event at the edge too, with the
    // client's address, which the service does not see.
    if status == 403 {
        let client = client.0.to_string();
        span.in_scope(|| security_event(SecurityEvent::AccessDenied, "", route, &client, "403"));
    }
    duration_histogram(route, method, status).record(started.elapsed().as_secs_f64());
    // Metrics above count every request; the access line follows THALI_ACCESS_LOG.
    if thali_platform::telemetry::access_line_wanted(status >= 400) {
        let elapsed_ms = started.elapsed().as_millis() as u64;
        span.in_scope(|| {
            if status >= 500 {
                tracing::warn!(target: "thali::access", status, elapsed_ms, "request");
            } else {
                tracing::info!(target: "thali::access", status, elapsed_ms, "request");
            }
        });
    }
    response
}

/// An authenticated caller: its verified principal and the bearer token to forward.
pub struct Caller {
    pub principal: Principal,
    token: String,
}

impl Caller {
    /// Wraps `message` in a gRPC request made for this user: the client stack adds the
    /// facade's service token, the user's own token travels in `x-thali-user-token`.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        let value = self.token.parse().expect("a verified token is a valid header value");
        req.metadata_mut().insert(USER_TOKEN_HEADER, value);
        req
    }
}

/// A gRPC request for `caller`, or an anonymous one.
pub fn request_as<T>(caller: &Option<Caller>, message: T) -> tonic::Request<T> {
    match caller {
        Some(c) => c.request(message),
        None => tonic::Request::new(message),
    }
}

/// 401 with the challenge RFC 6750 asks for.
pub struct Unauthorized(Problem);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let mut response = self.0.into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

impl FromRequestParts<FacadeState> for Caller {
    type Rejection = Unauthorized;

    async fn from_request_parts(parts: &mut Parts, state: &FacadeState) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| Unauthorized(Problem::unauthorized("this operation needs a bearer token")))?;
        let token = value
            .to_str()
            .ok()
            .and_then(bearer_token)
            .ok_or_else(|| Unauthorized(Problem::unauthorized("expected `Authorization: Bearer <token>`")))?;
        // The rate limiter verified it already (once per request).
        if let Some(crate::limits::Verified(principal)) = parts.extensions.get() {
            return Ok(Caller {
                principal: principal.clone(),
                token: token.to_owned(),
            });
        }
        match state.verifier.verify_fresh(token).await {
            Ok(principal) => Ok(Caller {
                principal,
                token: token.to_owned(),
            }),
            Err(e) => {
                let client = parts
                    .extensions
                    .get::<ClientIp>()
                    .map(|ip| ip.0.to_string())
                    .unwrap_or_default();
                security_event(
                    SecurityEvent::AuthenticationFailed,
                    "",
                    parts.uri.path(),
                    &client,
                    &e.to_string(),
                );
                Err(Unauthorized(Problem::unauthorized(e.to_string())))
            }
        }
    }
}

impl axum::extract::OptionalFromRequestParts<FacadeState> for Caller {
    type Rejection = Unauthorized;

    /// No credentials: an anonymous caller. Bad credentials: refused, never downgraded.
    async fn from_request_parts(parts: &mut Parts, state: &FacadeState) -> Result<Option<Self>, Self::Rejection> {
        if parts.headers.contains_key(header::AUTHORIZATION) {
            <Caller as FromRequestParts<FacadeState>>::from_request_parts(parts, state)
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Response header carrying a renewed access token.
pub const RENEWED_TOKEN_HEADER: &str = "x-thali-access-token";

/// Keeps active users signed in: when a request succeeds with a user token older than a day,
/// the answer carries a fresh token in `X-Thali-Access-Token`.
pub async fn renew_token(State(state): State<FacadeState>, req: Request, next: Next) -> Response {
    let verified = req.extensions().get::<crate::limits::Verified>().map(|v| &v.0);
    let stale = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .and_then(|t| {
            let principal = match verified {
                Some(p) => p.clone(),
                None => state.verifier.verify(t).ok()?,
            };
            Some((t.to_owned(), principal))
        })
        .filter(|(_, p)| chrono::Utc::now().timestamp() - p.issued_at > RENEW_AFTER_SECS);
    let mut response = next.run(req).await;
    if let Some((token, principal)) = stale
        && response.status().is_success()
    {
        let caller = Caller { principal, token };
        match state
            .identity
            .call(caller.request(RenewAccessTokenRequest {}), |mut c, r| async move {
                c.renew_access_token(r).await
            })
            .await
        {
            Ok(renewed) => {
                if let Ok(value) = HeaderValue::from_str(&renewed.into_inner().access_token) {
                    response.headers_mut().insert(RENEWED_TOKEN_HEADER, value);
                }
            }
            Err(status) => tracing::warn!(error = %status, "token renewal failed"),
        }
    }
    response
}

/// Tokens older than this are renewed on use (one day).
const RENEW_AFTER_SECS: i64 = 24 * 3600;

/// `axum::Json` whose rejections are problem+json.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(Problem))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Path` whose rejections are problem+json.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Problem))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` whose rejections are problem+json.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Problem))]
pub struct ApiQuery<T>(pub T);
