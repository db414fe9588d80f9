//! Razorpay's `/v1` API as the sandbox answers it: basic auth with an account's key pair, JSON
//! (or form) bodies, Razorpay's error shape for everything that goes wrong, and the API faults.
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use super::Sandbox;
use super::error::ApiError;
use super::faults::happens;
use super::ops;

pub(crate) fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/v1/orders", post(create_order))
        .route("/v1/orders/{id}", get(fetch_order))
        .route("/v1/orders/{id}/payments", get(order_payments))
        .route("/v1/payments/{id}", get(fetch_payment))
        .route("/v1/payments/{id}/capture", post(capture))
        .route("/v1/payments/{id}/refund", post(refund))
        .route("/v1/payments/{id}/refunds", get(payment_refunds))
        .route_layer(middleware::from_fn_with_state(sandbox.clone(), api_faults))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(sandbox)
}

async fn unknown_route() -> ApiError {
    ApiError::not_found("The requested URL was not found on the server.")
}

async fn method_not_allowed() -> ApiError {
    ApiError::with_status(
        StatusCode::METHOD_NOT_ALLOWED,
        "The requested method is not allowed for this URL.",
    )
}

/// Latency, no answer, 429 and 5xx, drawn per call; a faulted call has no effect.
async fn api_faults(State(sandbox): State<Sandbox>, request: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    let faults = sandbox.faults();
    if faults.api_latency_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(faults.api_latency_ms)).await;
    }
    if happens(faults.api_timeout_rate) {
        let mut stopping = sandbox.inner.stopping.subscribe();
        tokio::select! {
            () = tokio::time::sleep(sandbox.inner.options.api_hang) => {}
            _ = stopping.wait_for(|stop| *stop) => {}
        }
        return ApiError::injected_server_error().into_response();
    }
    if happens(faults.rate_429) {
        return ApiError::rate_limited().into_response();
    }
    if happens(faults.rate_5xx) {
        return ApiError::injected_server_error().into_response();
    }
    next.run(request).await
}

/// The account a `/v1` call acts for, from its `Authorization: Basic` header.
pub(crate) struct Caller(pub String);

impl FromRequestParts<Sandbox> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, sandbox: &Sandbox) -> Result<Self, ApiError> {
        let missing = || ApiError::unauthorized("Please provide your api key for authentication purposes.");
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(missing)?;
        let (scheme, encoded) = value.trim().split_once(' ').ok_or_else(missing)?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(missing());
        }
        let decoded = STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(missing)?;
        let (key_id, key_secret) = decoded.split_once(':').ok_or_else(missing)?;
        let known = sandbox.inner.read(|state| {
            state
                .accounts
                .get(key_id)
                .is_some_and(|account| secrets_match(&account.key_secret, key_secret))
        });
        if known {
            Ok(Caller(key_id.to_owned()))
        } else {
            Err(ApiError::unauthorized("Authentication failed"))
        }
    }
}

/// Equal secrets, compared in constant time (HMAC of a fixed message under each).
fn secrets_match(stored: &str, given: &str) -> bool {
    use ring::hmac;
    if stored.is_empty() || given.is_empty() {
        return false;
    }
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, given.as_bytes()),
        b"sandbox-basic-auth",
    );
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, stored.as_bytes()),
        b"sandbox-basic-auth",
        tag.as_ref(),
    )
    .is_ok()
}

/// A path id; a path that does not decode is an id that does not exist.
pub(crate) struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::unknown_id())?;
        Ok(Id(id))
    }
}

/// A request body as named fields: JSON object, or `application/x-www-form-urlencoded`
/// (`notes[key]=value` becomes a `notes` object). An empty body is no fields.
pub(crate) struct Fields {
    pub map: Map<String, Value>,
    /// Posted by an HTML form (the checkout page), so a page is the better answer.
    pub from_form: bool,
}

impl<S: Send + Sync> FromRequest<S> for Fields {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let from_form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/x-www-form-urlencoded"));
        if from_form {
            let axum::Form(pairs) = axum::Form::<Vec<(String, String)>>::from_request(request, state)
                .await
                .map_err(|e| ApiError::bad_request(format!("The request body could not be read: {}", e.body_text())))?;
            return Ok(Fields {
                map: form_fields(pairs),
                from_form,
            });
        }
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("The request body could not be read: {}", e.body_text())))?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Fields {
                map: Map::new(),
                from_form,
            });
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => Ok(Fields { map, from_form }),
            _ => Err(ApiError::bad_request("The request body must be a JSON object")),
        }
    }
}

fn form_fields(pairs: Vec<(String, String)>) -> Map<String, Value> {
    let mut map = Map::new();
    for (key, value) in pairs {
        let nested = key
            .strip_suffix(']')
            .and_then(|k| k.split_once('['))
            .filter(|(outer, inner)| !outer.is_empty() && !inner.contains(['[', ']']));
        match nested {
            Some((outer, inner)) => {
                let entry = map.entry(outer.to_owned()).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(object) = entry {
                    object.insert(inner.to_owned(), Value::String(value));
                }
            }
            None => {
                map.insert(key, Value::String(value));
            }
        }
    }
    map
}

async fn create_order(
    State(sandbox): State<Sandbox>,
    Caller(key_id): Caller,
    fields: Fields,
) -> Result<Json<Value>, ApiError> {
    sandbox
        .inner
        .apply(|state| ops::create_order(state, &key_id, &fields.map))
        .map(Json)
}

async fn fetch_order(
    State(sandbox): State<Sandbox>,
    Caller(key_id): Caller,
    Id(id): Id,
) -> Result<Json<Value>, ApiError> {
    sandbox
        .inner
        .read(|state| ops::fetch_order(state, &key_id, &id))
        .map(Json)
}

async fn order_payments(
    State(sandbox): State<Sandbox>,
    Caller(key_id): Caller,
    Id(id): Id,
) -> Result<Json<Value>, ApiError> {
    sandbox
        .inner
        .read(|state| ops::order_payments(state, &key_id, &id))
        .map(Json)
}

async fn fetch_payment(
    State(sandbox): State<Sandbox>,
    Caller(key_id): Caller,
    Id(id): Id,
) -> Result<Json<Value>, ApiError> {
    sandbox
        .inner
        .read(|state| ops::fetch_payment(state, &key_id, &id))
        .map(Json)
}

async fn capture(
    State(sandbox): State<Sandbox>,
    Caller(key_id): Caller,
    Id(id): Id,
    fields: Fields,
) -> Result<Json<Value>, ApiError> {
    sandbox
        .inner
        .apply(|state| ops::capture(state, &key_id, &id, &fields.map))
        .map(Json)
}

async fn payment_refunds(
    State(sandbox): State<Sandbox>,
    Caller(key_id): Caller,
    Id(id): Id,
) -> Result<Json<Value>, ApiError> {
    sandbox
        .inner
        .read(|state| ops::payment_refunds(state, &key_id, &id))
        .map(Json)
}

async fn refund(
    State(sandbox): State<Sandbox>,
    Caller(key_id): Caller,
    Id(id): Id,
    fields: Fields,
) -> Result<Json<Value>, ApiError> {
    sandbox
        .inner
        .apply(|state| ops::refund(state, &key_id, &id, &fields.map))
        .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_bodies_become_fields() {
        let map = form_fields(vec![
            ("amount".into(), "50000".into()),
            ("notes[shop]".into(), "chai".into()),
            ("notes[table]".into(), "4".into()),
            ("odd[".into(), "x".into()),
        ]);
        assert_eq!(
            Value::Object(map),
            json!({"amount": "50000", "notes": {"shop": "chai", "table": "4"}, "odd[": "x"})
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(secrets_match("abc", "abc"));
        assert!(!secrets_match("abc", "abd"));
        assert!(!secrets_match("abc", "ab"));
        assert!(!secrets_match("", ""));
    }
}
