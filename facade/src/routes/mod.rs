//! REST handlers: authenticate, take the JSON, call one RPC, map the answer.
pub mod audit;
pub mod booking;
pub mod http_cache;
pub mod identity;
pub mod media;
pub mod notifications;
pub mod payments;
pub mod privacy;
pub mod storefront;

use axum::{
    Json,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::problem::Problem;

fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    match headers.get("idempotency-key") {
        None => Ok(String::new()),
        // Present but empty is a malformed key, not "no key".
        Some(v) => v
            .to_str()
            .ok()
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_HEADER",
                    "Idempotency-Key must be 1-200 visible ASCII characters",
                )
            }),
    }
}

fn created<T: serde::Serialize>(location: String, body: T) -> Response {
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn missing(what: &str) -> Problem {
    tracing::error!(what, "service answered without a required field");
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "internal error")
}
