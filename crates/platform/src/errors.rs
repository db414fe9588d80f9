//! Building `tonic::Status` values with `google.rpc` details, the one shape every service uses.
use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// Domain written into every `ErrorInfo`.
pub const ERROR_DOMAIN: &str = "thali";

/// One field that failed validation: the field path and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// INVALID_ARGUMENT with a `BadRequest` listing every bad field and `ErrorInfo` reason
/// `VALIDATION_FAILED`.
/// A requested page size: 0 means `default`, otherwise 1 to `max` (the violation names
/// `page_size`).
pub fn page_size(requested: i32, default: u64, max: u64) -> Result<u64, Violation> {
    match requested {
        0 => Ok(default),
        n if n < 0 || n as u64 > max => Err(Violation::new("page_size", format!("must be between 0 and {max}"))),
        n => Ok(n as u64),
    }
}

/// A keyset page token for the last row `id` of a page (opaque to clients).
pub fn page_token(id: uuid::Uuid) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

/// The row id in a page token [`page_token`] issued; empty means the first page.
pub fn parse_page_token(raw: &str) -> Result<Option<uuid::Uuid>, Violation> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    if raw.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|bytes| uuid::Uuid::from_slice(&bytes).ok())
        .map(Some)
        .ok_or_else(|| Violation::new("page_token", "is not a token this service issued"))
}

pub fn invalid_argument(violations: &[Violation]) -> Status {
    let mut details = ErrorDetails::with_bad_request(
        violations
            .iter()
            .map(|v| FieldViolation::new(&v.field, &v.description))
            .collect::<Vec<_>>(),
    );
    details.set_error_info("VALIDATION_FAILED", ERROR_DOMAIN, HashMap::new());
    let message = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// A status carrying an `ErrorInfo` with a stable machine-readable `reason`.
pub fn with_reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
    )
}

/// As [`with_reason`], with `ErrorInfo` metadata a caller can act on (which product ran out, how
/// many are left). Never internals.
pub fn with_metadata(code: Code, reason: &str, message: impl Into<String>, metadata: &[(&str, String)]) -> Status {
    let metadata: HashMap<String, String> = metadata.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

/// UNAVAILABLE with `RetryInfo` telling the caller when to try again. A `reason` ending in
/// `_UNAVAILABLE` (`DATABASE_UNAVAILABLE`) says a dependency shared by every replica is down:
/// callers neither retry it elsewhere nor count it against this endpoint's breaker.
pub fn unavailable(reason: &str, message: impl Into<String>, retry_after: Duration) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(retry_after));
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(Code::Unavailable, message, details)
}

/// RESOURCE_EXHAUSTED with `RetryInfo` (throttling): the facade answers 429 with Retry-After.
pub fn resource_exhausted(reason: &str, message: impl Into<String>, retry_after: Duration) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(retry_after));
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

/// INTERNAL with a generic message; the cause goes to the log (with the trace id), never to
/// the caller.
pub fn internal(cause: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %cause, "internal error");
    with_reason(Code::Internal, "INTERNAL", "internal error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_every_violation() {
        let status = invalid_argument(&[
            Violation::new("username", "too short"),
            Violation::new("bio", "too long"),
        ]);
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status.get_details_bad_request().expect("BadRequest detail");
        let fields: Vec<_> = bad.field_violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["username", "bio"]);
        assert_eq!(status.get_details_error_info().unwrap().reason, "VALIDATION_FAILED");
    }

    #[test]
    fn unavailable_tells_when_to_retry() {
        let status = unavailable("DATABASE_UNAVAILABLE", "try later", Duration::from_secs(2));
        let retry = status.get_details_retry_info().unwrap();
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(2)));
    }
}
