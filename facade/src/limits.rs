//! Rate limits at the REST edge (ADR 0026): every request is counted once against the budget of
//! who sends it — a signed-in account (its verified token's subject) or, anonymous, the client
//! address — and the routes an attacker would hammer have budgets of their own (login per
//! (account, address) and per address, register per address). Answers carry the IETF
//! `RateLimit-Policy` and `RateLimit` fields; a refusal is 429 problem+json `RATE_LIMITED` with
//! `Retry-After`.
use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};
use thali_platform::{
    audit::{SecurityEvent, security_event},
    auth::{Principal, bearer_token},
    config::Config,
    ratelimit::{Decision, Quota, RateLimiter},
};

use crate::{FacadeState, middleware::ClientIp, problem::Problem};

/// The budgets (each a setting; see the README's table).
#[derive(Clone)]
pub struct EdgeLimits {
    pub limiter: RateLimiter,
    pub anonymous: Quota,
    pub signed_in: Quota,
    pub login: Quota,
    pub login_address: Quota,
    pub register: Quota,
    /// `RateLimit-Policy` of the two budgets every request takes from, made once.
    anonymous_policy: HeaderValue,
    signed_in_policy: HeaderValue,
}

impl EdgeLimits {
    /// The budgets of `cfg`, counted by `limiter`.
    pub fn from_config(cfg: &Config, limiter: RateLimiter) -> Self {
        let q = |spec: &str| Quota::parse(spec).expect("quotas are validated at load");
        let (anonymous, signed_in) = (q(&cfg.rate_limit_anonymous), q(&cfg.rate_limit_signed_in));
        Self {
            limiter,
            anonymous,
            signed_in,
            login: q(&cfg.rate_limit_login),
            login_address: q(&cfg.rate_limit_login_address),
            register: q(&cfg.rate_limit_register),
            anonymous_policy: policy_value("anonymous", &anonymous),
            signed_in_policy: policy_value("signed_in", &signed_in),
        }
    }

    /// A login attempt for `email` from `ip`: 10/min for the pair, 30/min for the address.
    pub async fn login(&self, email: &str, ip: ClientIp) -> Result<(), Response> {
        let address = ip.0.to_string();
        self.take("login_address", &self.login_address, &address, &address)
            .await?;
        let email = email.trim().to_lowercase();
        let pair = thali_platform::idempotency::sha256_hex(format!("{email}|{address}").as_bytes());
        self.take("login", &self.login, &pair[..32], &address).await
    }

    /// A registration from `ip`: 5/min.
    pub async fn register(&self, ip: ClientIp) -> Result<(), Response> {
        let address = ip.0.to_string();
        self.take("register", &self.register, &address, &address).await
    }

    async fn take(&self, policy: &'static str, quota: &Quota, key: &str, address: &str) -> Result<(), Response> {
        let decision = self.limiter.check(policy, quota, key).await;
        if decision.allowed {
            Ok(())
        } else {
            Err(refusal(policy, quota, &decision, address))
        }
    }
}

/// A token the rate limiter already verified, for the extractors after it.
#[derive(Clone)]
pub struct Verified(pub Principal);

/// Route layer: counts the request against its caller's budget. A bad token is counted as
/// anonymous (the route answers 401). Razorpay's webhooks are not counted per address: their
/// signature is what authenticates them, and the gateway sends from few addresses.
pub async fn rate_limit(State(state): State<FacadeState>, mut req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/api/v1/webhooks/") {
        return next.run(req).await;
    }
    let limits = &state.limits;
    let ip = req
        .extensions()
        .get::<ClientIp>()
        .copied()
        .unwrap_or(ClientIp(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)));
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let verified = match token {
        Some(token) => state.verifier.verify_fresh(token).await.ok(),
        None => None,
    };
    let (policy, quota, policy_header, decision) = match verified {
        Some(principal) => {
            let decision = limits
                .limiter
                .check("signed_in", &limits.signed_in, &principal.subject)
                .await;
            req.extensions_mut().insert(Verified(principal));
            ("signed_in", &limits.signed_in, &limits.signed_in_policy, decision)
        }
        None => {
            let decision = limits
                .limiter
                .check("anonymous", &limits.anonymous, &Address::of(ip.0))
                .await;
            ("anonymous", &limits.anonymous, &limits.anonymous_policy, decision)
        }
    };
    if !decision.allowed {
        return refusal(policy, quota, &decision, &ip.0.to_string());
    }
    let mut response = next.run(req).await;
    // A route's own budget (login, register) speaks for itself when it refused.
    if !response.headers().contains_key(RATELIMIT) {
        set_fields(response.headers_mut(), policy, policy_header.clone(), &decision);
    }
    response
}

/// A client address as text on the stack (an IPv6 address is at most 45 characters): the
/// anonymous budget's key, with no allocation per request.
struct Address {
    buf: [u8; 48],
    len: usize,
}

impl Address {
    fn of(ip: std::net::IpAddr) -> Self {
        use std::fmt::Write;
        let mut address = Self { buf: [0; 48], len: 0 };
        write!(address, "{ip}").expect("an IP address fits in 48 bytes");
        address
    }
}

impl std::fmt::Write for Address {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl std::ops::Deref for Address {
    type Target = str;
    fn deref(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("written from a str")
    }
}

/// `"anonymous";q=100;w=60`
fn policy_value(policy: &str, quota: &Quota) -> HeaderValue {
    HeaderValue::try_from(format!("\"{policy}\";q={};w={}", quota.limit, quota.period.as_secs()))
        .expect("a policy name and two numbers are a valid header value")
}

/// `"anonymous";r=42;t=25`
fn remaining_value(policy: &str, decision: &Decision) -> HeaderValue {
    let secs = |d: std::time::Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::try_from(format!(
        "\"{policy}\";r={};t={}",
        decision.remaining,
        secs(decision.reset)
    ))
    .expect("a policy name and two numbers are a valid header value")
}

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// `RateLimit-Policy: "anonymous";q=100;w=60` and `RateLimit: "anonymous";r=42;t=25`
/// (draft-ietf-httpapi-ratelimit-headers).
fn set_fields(headers: &mut HeaderMap, policy: &str, policy_header: HeaderValue, decision: &Decision) {
    headers.insert(RATELIMIT_POLICY, policy_header);
    headers.insert(RATELIMIT, remaining_value(policy, decision));
}

/// 429 problem+json `RATE_LIMITED` with `Retry-After` and the RateLimit fields; a security event.
fn refusal(policy: &'static str, quota: &Quota, decision: &Decision, address: &str) -> Response {
    security_event(SecurityEvent::RateLimited, "", policy, address, "");
    let retry = decision.retry_after.as_secs() + u64::from(decision.retry_after.subsec_nanos() > 0);
    let mut response = Problem::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        format!("too many requests; try again in {} s", retry.max(1)),
    )
    .with_retry_after(retry)
    .into_response();
    set_fields(response.headers_mut(), policy, policy_value(policy, quota), decision);
    response
}
