//! [`Gateway`] over Razorpay's HTTP API (`https://api.razorpay.com`, or the sandbox on loopback):
//! basic auth with the account's key id and secret, JSON bodies, reqwest on rustls with the ring
//! provider and the webpki roots (ADR 0017).
//!
//! Errors are mapped from the status and Razorpay's `{"error":{…}}` body; a body that does not
//! parse still maps by status. Each call is a tracing span and one observation of the histogram
//! `gateway_call_duration_seconds{call, outcome}`; neither bodies nor secrets are logged.
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::Instrument;

use super::{
    BoxFuture, Credentials, Gateway, GatewayError, GatewayOrder, GatewayPayment, GatewayRefund, NewGatewayOrder,
};

/// Razorpay's production API.
pub const RAZORPAY_API: &str = "https://api.razorpay.com";

/// Razorpay's answer for an id that does not exist, or belongs to another account.
const UNKNOWN_ID: &str = "The id provided does not exist";

/// A Razorpay client shared by every account (credentials come with each call).
#[derive(Clone, Debug)]
pub struct RazorpayGateway {
    client: reqwest::Client,
    base_url: Url,
}

impl RazorpayGateway {
    /// A client for the API at `base_url` (`https://…`, or `http://` for the sandbox on loopback).
    /// `connect_timeout` bounds the TCP+TLS handshake, `total_timeout` the whole call.
    pub fn new(base_url: &str, connect_timeout: Duration, total_timeout: Duration) -> Result<Self, GatewayError> {
        let base_url = Url::parse(base_url.trim_end_matches('/'))
            .map_err(|e| GatewayError::Transport(format!("invalid gateway base URL: {e}")))?;
        if !matches!(base_url.scheme(), "http" | "https") || base_url.cannot_be_a_base() {
            return Err(GatewayError::Transport(
                "the gateway base URL must be http(s)://host[:port]".into(),
            ));
        }
        let client = http_client(connect_timeout, total_timeout)
            .map_err(|e| GatewayError::Transport(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { client, base_url })
    }

    /// The API root this client talks to.
    pub fn base_url(&self) -> &str {
        self.base_url.as_str()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url.as_str().trim_end_matches('/'))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        call: &'static str,
        credentials: &Credentials,
        method: Method,
        path: String,
        body: Option<Value>,
    ) -> Result<T, GatewayError> {
        let span = tracing::info_span!(
            "gateway_call",
            call,
            otel.kind = "client",
            outcome = tracing::field::Empty,
            http.status = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = self
            .send(credentials, method, path, body)
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        span.record("outcome", outcome);
        metrics::histogram!("gateway_call_duration_seconds", "call" => call, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => tracing::debug!(parent: &span, call, "gateway call succeeded"),
            Err(e) if e.is_retryable() => tracing::warn!(parent: &span, call, error = %e, "gateway call failed"),
            Err(e) => tracing::info!(parent: &span, call, error = %e, "gateway refused the call"),
        }
        result
    }

    async fn send<T: DeserializeOwned>(
        &self,
        credentials: &Credentials,
        method: Method,
        path: String,
        body: Option<Value>,
    ) -> Result<T, GatewayError> {
        let mut request = self
            .client
            .request(method, self.url(&path))
            .basic_auth(&credentials.key_id, Some(credentials.key_secret.expose()))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        tracing::Span::current().record("http.status", status.as_u16());
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(transport_error)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| decode_error(&e));
        }
        Err(map_error(status, &headers, &bytes))
    }
}

/// An HTTP client on rustls with the ring provider; the provider is installed process-wide first
/// because reqwest's `rustls-tls-*-no-provider` features panic without one.
pub(crate) fn http_client(connect_timeout: Duration, total_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    // Err means a provider is installed already (ours, or the process's own): either is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(total_timeout)
        // The API never redirects; following one would send the account's credentials elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("thali-payments/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn transport_error(error: reqwest::Error) -> GatewayError {
    if error.is_timeout() {
        return GatewayError::Timeout;
    }
    let is_decode = error.is_decode();
    // The URL is left out (it is known from the span); the causes say what failed.
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if is_decode {
        GatewayError::Decode(text)
    } else {
        GatewayError::Transport(text)
    }
}

/// Where and what kind of decoding failed, without the offending text (which is gateway data).
fn decode_error(error: &serde_json::Error) -> GatewayError {
    GatewayError::Decode(format!(
        "{:?} error at line {} column {}",
        error.classify(),
        error.line(),
        error.column()
    ))
}

#[derive(Deserialize, Default)]
struct ErrorEnvelope {
    #[serde(default)]
    error: ErrorBody,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    code: Option<String>,
    description: Option<String>,
    field: Option<String>,
    reason: Option<String>,
}

/// A non-2xx answer → the error the caller reasons with.
pub(crate) fn map_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GatewayError {
    let ErrorBody {
        code,
        description,
        field,
        reason,
    } = serde_json::from_slice::<ErrorEnvelope>(body)
        .map(|envelope| envelope.error)
        .unwrap_or_default();
    let code = code.unwrap_or_else(|| default_code(status).to_owned());
    let description = description.unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
    match status.as_u16() {
        401 => GatewayError::Unauthorized,
        404 => GatewayError::NotFound,
        429 => GatewayError::RateLimited {
            retry_after: retry_after(headers),
        },
        500..=599 => GatewayError::Server {
            status: status.as_u16(),
            code,
            description,
        },
        400..=499 if description.trim_end_matches('.').eq_ignore_ascii_case(UNKNOWN_ID) => GatewayError::NotFound,
        400..=499 => GatewayError::BadRequest {
            code,
            description,
            field,
            reason,
        },
        other => GatewayError::Decode(format!("unexpected HTTP status {other}")),
    }
}

fn default_code(status: StatusCode) -> &'static str {
    if status.is_server_error() {
        "SERVER_ERROR"
    } else {
        "BAD_REQUEST_ERROR"
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Razorpay and is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

/// Gateway ids go into the path: anything but `[A-Za-z0-9_]` is refused before a call is made.
fn path_id<'a>(field: &str, id: &'a str) -> Result<&'a str, GatewayError> {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(id)
    } else {
        Err(GatewayError::BadRequest {
            code: "BAD_REQUEST_ERROR".into(),
            description: format!("{field} is not a gateway id"),
            field: Some(field.into()),
            reason: Some("input_validation_failed".into()),
        })
    }
}

#[derive(Deserialize)]
struct Collection<T> {
    items: Vec<T>,
}

impl Gateway for RazorpayGateway {
    fn create_order<'a>(
        &'a self,
        credentials: &'a Credentials,
        order: &'a NewGatewayOrder,
    ) -> BoxFuture<'a, Result<GatewayOrder, GatewayError>> {
        Box::pin(async move {
            order.validate()?;
            let mut body = json!({
                "amount": order.amount_minor,
                "currency": order.currency,
                "notes": order.notes,
                "partial_payment": false,
            });
            if !order.receipt.is_empty() {
                body["receipt"] = json!(order.receipt);
            }
            self.call(
                "create_order",
                credentials,
                Method::POST,
                "/v1/orders".into(),
                Some(body),
            )
            .await
        })
    }

    fn fetch_order<'a>(
        &'a self,
        credentials: &'a Credentials,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<GatewayOrder, GatewayError>> {
        Box::pin(async move {
            let path = format!("/v1/orders/{}", path_id("order_id", order_id)?);
            self.call("fetch_order", credentials, Method::GET, path, None).await
        })
    }

    fn order_payments<'a>(
        &'a self,
        credentials: &'a Credentials,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<GatewayPayment>, GatewayError>> {
        Box::pin(async move {
            let path = format!("/v1/orders/{}/payments", path_id("order_id", order_id)?);
            let collection: Collection<GatewayPayment> = self
                .call("order_payments", credentials, Method::GET, path, None)
                .await?;
            Ok(collection.items)
        })
    }

    fn fetch_payment<'a>(
        &'a self,
        credentials: &'a Credentials,
        payment_id: &'a str,
    ) -> BoxFuture<'a, Result<GatewayPayment, GatewayError>> {
        Box::pin(async move {
            let path = format!("/v1/payments/{}", path_id("payment_id", payment_id)?);
            self.call("fetch_payment", credentials, Method::GET, path, None).await
        })
    }

    fn capture<'a>(
        &'a self,
        credentials: &'a Credentials,
        payment_id: &'a str,
        amount_minor: i64,
        currency: &'a str,
    ) -> BoxFuture<'a, Result<GatewayPayment, GatewayError>> {
        Box::pin(async move {
            let path = format!("/v1/payments/{}/capture", path_id("payment_id", payment_id)?);
            let body = json!({ "amount": amount_minor, "currency": currency });
            self.call("capture", credentials, Method::POST, path, Some(body)).await
        })
    }

    fn refund<'a>(
        &'a self,
        credentials: &'a Credentials,
        payment_id: &'a str,
        amount_minor: Option<i64>,
        receipt: Option<&'a str>,
    ) -> BoxFuture<'a, Result<GatewayRefund, GatewayError>> {
        Box::pin(async move {
            let path = format!("/v1/payments/{}/refund", path_id("payment_id", payment_id)?);
            let mut body = serde_json::Map::new();
            if let Some(amount) = amount_minor {
                body.insert("amount".into(), amount.into());
            }
            if let Some(receipt) = receipt {
                if receipt.chars().count() > super::MAX_RECEIPT_CHARS {
                    return Err(GatewayError::BadRequest {
                        code: "BAD_REQUEST_ERROR".into(),
                        description: "receipt: at most 40 characters".into(),
                        field: Some("receipt".into()),
                        reason: None,
                    });
                }
                body.insert("receipt".into(), receipt.into());
            }
            self.call("refund", credentials, Method::POST, path, Some(body.into()))
                .await
        })
    }

    fn payment_refunds<'a>(
        &'a self,
        credentials: &'a Credentials,
        payment_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<GatewayRefund>, GatewayError>> {
        Box::pin(async move {
            let path = format!("/v1/payments/{}/refunds", path_id("payment_id", payment_id)?);
            let collection: Collection<GatewayRefund> = self
                .call("payment_refunds", credentials, Method::GET, path, None)
                .await?;
            Ok(collection.items)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn error_body(code: &str, description: &str, field: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&json!({"error": {
            "code": code, "description": description, "source": "business", "step": "payment_initiation",
            "reason": "input_validation_failed", "metadata": {}, "field": field,
        }}))
        .unwrap()
    }

    #[test]
    fn errors_map_from_status_and_body() {
        let none = HeaderMap::new();
        let body = error_body(
            "BAD_REQUEST_ERROR",
            "The amount must be atleast INR 1.00",
            Some("amount"),
        );
        assert_eq!(
            map_error(StatusCode::BAD_REQUEST, &none, &body),
            GatewayError::BadRequest {
                code: "BAD_REQUEST_ERROR".into(),
                description: "The amount must be atleast INR 1.00".into(),
                field: Some("amount".into()),
                reason: Some("input_validation_failed".into()),
            }
        );
        let unknown = error_body("BAD_REQUEST_ERROR", "The id provided does not exist", Some("id"));
        assert_eq!(
            map_error(StatusCode::BAD_REQUEST, &none, &unknown),
            GatewayError::NotFound
        );
        assert_eq!(map_error(StatusCode::NOT_FOUND, &none, b""), GatewayError::NotFound);
        assert_eq!(
            map_error(StatusCode::UNAUTHORIZED, &none, &body),
            GatewayError::Unauthorized
        );
        assert!(matches!(
            map_error(StatusCode::UNPROCESSABLE_ENTITY, &none, b"<html>"),
            GatewayError::BadRequest { code, .. } if code == "BAD_REQUEST_ERROR"
        ));
    }

    #[test]
    fn unparsable_bodies_still_map_by_status() {
        let none = HeaderMap::new();
        assert_eq!(
            map_error(StatusCode::BAD_GATEWAY, &none, b"<html>bad gateway</html>"),
            GatewayError::Server {
                status: 502,
                code: "SERVER_ERROR".into(),
                description: "Bad Gateway".into()
            }
        );
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(
            map_error(StatusCode::TOO_MANY_REQUESTS, &headers, b"not json"),
            GatewayError::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        headers.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2026 07:28:00 GMT"));
        assert_eq!(
            map_error(StatusCode::TOO_MANY_REQUESTS, &headers, b""),
            GatewayError::RateLimited { retry_after: None }
        );
    }

    #[test]
    fn ids_that_would_change_the_path_are_refused() {
        assert_eq!(path_id("order_id", "order_Abc123"), Ok("order_Abc123"));
        for bad in ["", "../v1/payments", "order_1?x=1", "order 1", "order_1/capture"] {
            assert!(path_id("order_id", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn base_urls_must_be_http() {
        let t = Duration::from_secs(1);
        assert!(RazorpayGateway::new("http://127.0.0.1:8090/", t, t).is_ok());
        assert!(RazorpayGateway::new(RAZORPAY_API, t, t).is_ok());
        assert!(RazorpayGateway::new("ftp://example.com", t, t).is_err());
        assert!(RazorpayGateway::new("not a url", t, t).is_err());
    }

    #[test]
    fn decode_errors_do_not_quote_the_body() {
        let error =
            serde_json::from_str::<GatewayOrder>(r#"{"id": "secret-looking-value", "amount": "x"}"#).unwrap_err();
        let GatewayError::Decode(text) = decode_error(&error) else {
            panic!("not a decode error")
        };
        assert!(
            !text.contains("secret-looking-value") && !text.contains("\"x\""),
            "{text}"
        );
    }
}
