//! The caller's personal data (ADR 0032): the export gathers each service's part; erasure is
//! identity's, which tells every other service through `account.erased`.
use axum::{
    Json,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use thali_platform::client::{Client, Target};
use thali_proto::privacy::v1::{self as pb, personal_data_service_client::PersonalDataServiceClient};

use crate::{
    FacadeState,
    dto::{self, EraseAccount},
    middleware::{ApiJson, Caller, ClientIp},
    problem::Problem,
};

/// One service's part of the export.
async fn part(caller: &Caller, service: &'static str, target: Target) -> Result<serde_json::Value, Problem> {
    let mut request = caller.request(pb::ExportPersonalDataRequest {
        service: service.to_owned(),
    });
    // The service token goes to the service asked (one process may host several).
    request.metadata_mut().insert(
        thali_platform::privacy::SERVICE_HEADER,
        tonic::metadata::MetadataValue::from_static(service),
    );
    let answer = Client::new(target, PersonalDataServiceClient::new)
        .call(request, |mut c, r| async move { c.export_personal_data(r).await })
        .await?
        .into_inner();
    serde_json::from_str(&answer.json).map_err(|_| {
        tracing::error!(service, "a service's personal-data export is not JSON");
        Problem::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "EXPORT_UNAVAILABLE",
            "the export cannot be put together now",
        )
    })
}

/// Everything Thali holds about the signed-in account, as one JSON document. Every service's
/// part is in it, or the answer is an error: never a partial export presented as complete.
#[utoipa::path(
    get, path = "/api/v1/me/export", tag = "auth",
    responses(
        (status = 200, description = "The caller's data", body = dto::PersonalDataExport),
        (status = 401, description = "Not signed in", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
        (status = 403, description = "A partner API key (SIGNED_IN_ACCOUNT_REQUIRED)",
         body = crate::problem::ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "A service could not answer", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn export(State(state): State<FacadeState>, caller: Caller) -> Result<Response, Problem> {
    let (identity, storefront, booking, payments, notifications) = tokio::try_join!(
        part(&caller, "identity", state.identity.target().clone()),
        part(&caller, "storefront", state.storefront.target().clone()),
        part(&caller, "booking", state.booking.target().clone()),
        part(&caller, "payments", state.payments.target().clone()),
        part(&caller, "notifications", state.notifications.target().clone()),
    )?;
    let document = dto::PersonalDataExport {
        account_id: caller.principal.subject.clone(),
        exported_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        identity,
        storefront,
        booking,
        payments,
        notifications,
    };
    let mut response = Json(document).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"thali-export.json\""),
    );
    Ok(response)
}

/// Erases the signed-in account (needs its password): personal fields are anonymised in every
/// service, sessions and API keys end at once. Orders and bookings stay for accounting under the
/// account id, which then names no one.
#[utoipa::path(
    delete, path = "/api/v1/me", tag = "auth",
    request_body = EraseAccount,
    responses(
        (status = 200, description = "Erased", body = dto::ErasedAccount),
        (status = 400, description = "No password given", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
        (status = 403, description = "Wrong password (PASSWORD_INCORRECT) or a partner API key",
         body = crate::problem::ProblemDetails, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong passwords", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn erase(
    State(state): State<FacadeState>,
    caller: Caller,
    ClientIp(client): ClientIp,
    ApiJson(body): ApiJson<EraseAccount>,
) -> Result<Json<dto::ErasedAccount>, Problem> {
    let req = thali_proto::identity::v1::EraseAccountRequest {
        password: body.password,
        client_address: client.to_string(),
    };
    let erased = state
        .identity
        .call(caller.request(req), |mut c, r| async move { c.erase_account(r).await })
        .await?
        .into_inner();
    Ok(Json(dto::ErasedAccount {
        account_id: erased.account_id,
        erased_at: dto::rfc3339(erased.erased_at),
    }))
}
