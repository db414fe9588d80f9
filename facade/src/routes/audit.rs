//! The audit trail for admins (ADR 0031): each chain is read from the service that keeps it.
use axum::{Json, extract::State, http::StatusCode};
use thali_platform::client::Client;
use thali_proto::audit::v1::{self as pb, audit_service_client::AuditServiceClient};

use crate::{
    FacadeState,
    dto::{self, AuditQuery},
    middleware::{ApiQuery, Caller},
    problem::{FieldError, Problem},
};

fn invalid(field: &str, message: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
        format!("{field} {message}"),
    )
    .with_errors(vec![FieldError {
        field: field.into(),
        message: message.into(),
    }])
}

/// One page of a service's audit chain, oldest first (admins only).
#[utoipa::path(
    get, path = "/api/v1/admin/audit", tag = "admin",
    params(AuditQuery),
    responses(
        (status = 200, description = "One page of the chain", body = dto::AuditPage),
        (status = 400, description = "A parameter breaks its rules", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
        (status = 403, description = "Not an administrator (ADMIN_REQUIRED)", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<dto::AuditPage>, Problem> {
    // Which service keeps the chain: where the call goes, not a rule about the records.
    let target = match query.service.as_str() {
        "identity" => state.identity.target().clone(),
        "payments" => state.payments.target().clone(),
        "booking" => state.booking.target().clone(),
        _ => return Err(invalid("service", "must be identity, payments or booking")),
    };
    let since = match query.since.as_deref() {
        Some(text) => {
            let at =
                chrono::DateTime::parse_from_rfc3339(text).map_err(|_| invalid("since", "must be an RFC 3339 time"))?;
            Some(prost_types::Timestamp {
                seconds: at.timestamp(),
                nanos: at.timestamp_subsec_nanos() as i32,
            })
        }
        None => None,
    };
    let chain = query.service.clone();
    let req = pb::ListAuditRecordsRequest {
        service: query.service,
        action: query.action.unwrap_or_default(),
        actor: query.actor.unwrap_or_default(),
        target: query.target.unwrap_or_default(),
        since,
        page_size: query.page_size.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
    };
    let mut request = caller.request(req);
    // The service token goes to the service that keeps the chain.
    request.metadata_mut().insert(
        thali_platform::audit_log::SERVICE_HEADER,
        chain
            .parse()
            .map_err(|_| invalid("service", "must be identity, payments or booking"))?,
    );
    let page = Client::new(target, AuditServiceClient::new)
        .call(request, |mut c, r| async move { c.list_audit_records(r).await })
        .await?
        .into_inner();
    Ok(Json(dto::AuditPage {
        records: page
            .records
            .into_iter()
            .map(|r| dto::AuditRecord {
                details: serde_json::from_str(&r.details).unwrap_or(serde_json::Value::String(r.details)),
                service: r.service,
                seq: r.seq,
                at: dto::rfc3339(r.at),
                actor: r.actor,
                actor_address: r.actor_address,
                action: r.action,
                target: r.target,
                prev_hash: r.prev_hash,
                hash: r.hash,
            })
            .collect(),
        next_page_token: Some(page.next_page_token).filter(|t| !t.is_empty()),
    }))
}
