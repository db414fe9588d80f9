//! Razorpay's error answer: always a JSON body
//! `{"error":{"code","description","source","step","reason","metadata","field"}}`.
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Razorpay's description for an id that does not exist (or is another account's).
pub(crate) const UNKNOWN_ID: &str = "The id provided does not exist";

/// An error the sandbox answers, shaped like Razorpay's. The code, source, step and reason
/// follow from the status: a 400 is a business refusal of the input, anything else is "NA".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub description: String,
    pub field: Option<String>,
}

impl ApiError {
    /// 400 for a request that breaks a rule about one field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_owned()),
            ..Self::bad_request(description)
        }
    }

    /// 400 for a request the business rules refuse.
    pub fn bad_request(description: impl Into<String>) -> Self {
        Self::with_status(StatusCode::BAD_REQUEST, description)
    }

    pub fn with_status(status: StatusCode, description: impl Into<String>) -> Self {
        Self {
            status,
            description: description.into(),
            field: None,
        }
    }

    /// What Razorpay answers for an unknown id, or one of another account.
    pub fn unknown_id() -> Self {
        Self::invalid("id", UNKNOWN_ID)
    }

    /// 404 for a route or a sandbox object that does not exist.
    pub fn not_found(description: impl Into<String>) -> Self {
        Self::with_status(StatusCode::NOT_FOUND, description)
    }

    pub fn unauthorized(description: &str) -> Self {
        Self::with_status(StatusCode::UNAUTHORIZED, description)
    }

    /// 429, with `Retry-After: 1`.
    pub fn rate_limited() -> Self {
        Self::with_status(StatusCode::TOO_MANY_REQUESTS, "Too many requests")
    }

    /// An injected server failure (the only 5xx the sandbox gives on purpose).
    pub fn injected_server_error() -> Self {
        let status = [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
        ][fastrand::usize(..3)];
        Self::with_status(
            status,
            "The server encountered an error. The incident has been reported to admins.",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = if self.status.is_server_error() {
            "SERVER_ERROR"
        } else {
            "BAD_REQUEST_ERROR"
        };
        let (source, step, reason) = if self.status == StatusCode::BAD_REQUEST {
            ("business", "payment_initiation", "input_validation_failed")
        } else {
            ("NA", "NA", "NA")
        };
        let body = json!({"error": {
            "code": code,
            "description": self.description,
            "source": source,
            "step": step,
            "reason": reason,
            "metadata": {},
            "field": self.field,
        }});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
