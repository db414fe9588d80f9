//! RFC 9457 `application/problem+json` answers, and the one mapping from gRPC status codes to
//! HTTP statuses (the grpc-gateway table).
use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tonic::Code;
use tonic_types::StatusExt;
use utoipa::ToSchema;

/// A field that failed validation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// Path of the field in the request, e.g. `price.amount_minor`.
    pub field: String,
    /// Why it was refused.
    pub message: String,
}

/// An error answer (RFC 9457). Boxed: it travels in every handler's `Err`.
#[derive(Debug, Clone)]
pub struct Problem(Box<ProblemDetails>);

impl std::ops::Deref for Problem {
    type Target = ProblemDetails;
    fn deref(&self) -> &ProblemDetails {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut ProblemDetails {
        &mut self.0
    }
}

/// The body of an error answer (RFC 9457 problem details).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDetails {
    /// URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Stable machine-readable code, e.g. `USERNAME_TAKEN`.
    pub code: String,
    /// Trace id of the request, to quote when asking for help.
    pub trace_id: String,
    /// Every invalid field, for validation problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip)]
    retry_after: Option<u64>,
}

impl Problem {
    /// A problem with this status, stable code and detail.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self(Box::new(ProblemDetails {
            kind: format!(
                "https://thali.dev/problems/{}",
                code.to_ascii_lowercase().replace('_', "-")
            ),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: Some(detail.into()),
            code: code.to_owned(),
            trace_id: thali_platform::telemetry::current_trace_id(),
            errors: Vec::new(),
            retry_after: None,
        }))
    }

    /// Adds `Retry-After` (whole seconds, at least 1).
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", detail)
    }
}

/// The grpc-gateway mapping of gRPC codes to HTTP statuses.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status code"),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl From<tonic::Status> for Problem {
    fn from(status: tonic::Status) -> Self {
        let http = http_status(status.code());
        let details = status.get_error_details();
        let code = details
            .error_info()
            .map(|i| i.reason.clone())
            .unwrap_or_else(|| code_name(status.code()).to_owned());
        // Server-side failures keep their cause in the log; the caller gets the trace id.
        let detail = if http.is_server_error() {
            tracing::warn!(grpc_code = ?status.code(), message = status.message(), "upstream call failed");
            match status.code() {
                Code::Unavailable => "the service is temporarily unavailable".to_owned(),
                Code::DeadlineExceeded => "the service did not answer in time".to_owned(),
                _ => "internal error".to_owned(),
            }
        } else {
            status.message().to_owned()
        };
        let mut problem = Problem::new(http, &code, detail);
        if let Some(bad) = details.bad_request() {
            problem.errors = bad
                .field_violations
                .iter()
                .map(|v| FieldError {
                    field: v.field.clone(),
                    message: v.description.clone(),
                })
                .collect();
        }
        if http == StatusCode::SERVICE_UNAVAILABLE || http == StatusCode::TOO_MANY_REQUESTS {
            let delay = details
                .retry_info()
                .and_then(|r| r.retry_delay)
                .map(|d| d.as_secs().max(1))
                .unwrap_or(1);
            problem.retry_after = Some(delay);
        }
        problem
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match &rejection {
            JsonRejection::MissingJsonContentType(_) => "UNSUPPORTED_MEDIA_TYPE",
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
            _ => "INVALID_JSON",
        };
        // Axum answers 422 for well-formed JSON of the wrong shape; Thali answers every
        // malformed body with 400, as for any other invalid argument.
        let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        Problem::new(status, code, rejection.body_text())
    }
}

impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "INVALID_PATH", rejection.body_text())
    }
}

impl From<QueryRejection> for Problem {
    fn from(rejection: QueryRejection) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "INVALID_QUERY", rejection.body_text())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after;
        let mut response = (status, Json(*self.0)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_like_grpc_gateway() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
            (Code::Unknown, 500),
            (Code::DataLoss, 500),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn internal_detail_never_reaches_the_client() {
        let problem = Problem::from(tonic::Status::internal(
            "duplicate key value violates constraint at /src/x.rs",
        ));
        assert_eq!(problem.status, 500);
        assert_eq!(problem.detail.as_deref(), Some("internal error"));
    }

    #[test]
    fn field_violations_become_errors() {
        let status = thali_platform::errors::invalid_argument(&[thali_platform::errors::Violation::new(
            "username",
            "too short",
        )]);
        let problem = Problem::from(status);
        assert_eq!(problem.status, 400);
        assert_eq!(problem.code, "VALIDATION_FAILED");
        assert_eq!(problem.errors[0].field, "username");
    }
}
