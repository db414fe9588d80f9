//! Identity routes: register, login, refresh, logout, me, partner API keys, JWKS.
use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use thali_proto::identity::v1 as pb;

use super::{created, idempotency_key, missing};
use crate::{
    FacadeState,
    dto::{self, CreateApiKey, ListApiKeysQuery, Login, RefreshToken, Register},
    middleware::{ApiJson, ApiPath, ApiQuery, Caller, ClientIp},
    problem::Problem,
};

/// Token answers must not be kept by any cache (RFC 6749 §5.1).
fn no_store(body: impl serde::Serialize) -> Response {
    (
        [
            (axum::http::header::CACHE_CONTROL, "no-store"),
            (axum::http::header::PRAGMA, "no-cache"),
        ],
        Json(body),
    )
        .into_response()
}

/// Create an account. The answer is the same whether or not the email already has an account
/// (so it tells nobody which emails do); the owner of an existing one is told by email. Sign in
/// next with the same email and password.
#[utoipa::path(
    post, path = "/api/v1/auth/register", tag = "auth",
    request_body = Register,
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[\x21-\x7E]{1,200}$")),
    responses(
        (status = 202, description = "Accepted: sign in next; a verification link is on its way", body = dto::Accepted),
        (status = 400, description = "A field breaks its rules", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
    )
)]
pub async fn register(
    State(state): State<FacadeState>,
    client: ClientIp,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<Register>,
) -> Response {
    if let Err(refused) = state.limits.register(client).await {
        return refused;
    }
    register_call(state, client, headers, body).await.into_response()
}

async fn register_call(
    state: FacadeState,
    ClientIp(client): ClientIp,
    headers: axum::http::HeaderMap,
    body: Register,
) -> Result<Response, Problem> {
    let req = pb::RegisterRequest {
        email: body.email,
        password: body.password,
        display_name: body.display_name,
        role: dto::Role::from(body.role).to_pb() as i32,
        idempotency_key: idempotency_key(&headers)?,
        client_address: client.to_string(),
    };
    // Created or not, the caller learns the same thing.
    state
        .identity
        .call(req, |mut c, r| async move { c.register(r).await })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(dto::Accepted {
            status: "accepted: sign in with this email and password; a verification link is on its way".into(),
        }),
    )
        .into_response())
}

/// Log in with email and password. Repeated failures answer 429 with Retry-After.
#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "auth",
    request_body = Login,
    responses(
        (status = 200, description = "Signed in", body = dto::Session),
        (status = 429, description = "Too many failed logins (LOGIN_THROTTLED) or attempts (RATE_LIMITED); see Retry-After", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
    )
)]
pub async fn login(State(state): State<FacadeState>, client: ClientIp, ApiJson(body): ApiJson<Login>) -> Response {
    if let Err(refused) = state.limits.login(&body.email, client).await {
        return refused;
    }
    login_call(state, client, body).await.into_response()
}

async fn login_call(state: FacadeState, ClientIp(client): ClientIp, body: Login) -> Result<Response, Problem> {
    let req = pb::LoginRequest {
        email: body.email,
        password: body.password,
        client_address: client.to_string(),
    };
    let res = state
        .identity
        .call(req, |mut c, r| async move { c.login(r).await })
        .await?
        .into_inner();
    Ok(no_store(dto::Session {
        account: res.account.ok_or_else(|| missing("account"))?.into(),
        tokens: res.tokens.ok_or_else(|| missing("tokens"))?.into(),
    }))
}

/// Trade a refresh token for new tokens. Each refresh token works once; presenting a used one
/// signs out every session descended from the same login.
#[utoipa::path(
    post, path = "/api/v1/auth/refresh", tag = "auth",
    request_body = RefreshToken,
    responses((status = 200, description = "New tokens", body = dto::Tokens))
)]
pub async fn refresh(
    State(state): State<FacadeState>,
    ClientIp(client): ClientIp,
    ApiJson(body): ApiJson<RefreshToken>,
) -> Result<Response, Problem> {
    let req = pb::RefreshRequest {
        refresh_token: body.refresh_token,
        client_address: client.to_string(),
    };
    let res = state
        .identity
        .call(req, |mut c, r| async move { c.refresh(r).await })
        .await?
        .into_inner();
    Ok(no_store(dto::Tokens::from(
        res.tokens.ok_or_else(|| missing("tokens"))?,
    )))
}

/// Log out: the refresh token's whole family stops working.
#[utoipa::path(
    post, path = "/api/v1/auth/logout", tag = "auth",
    request_body = RefreshToken,
    responses((status = 204, description = "Signed out"))
)]
pub async fn logout(
    State(state): State<FacadeState>,
    ApiJson(body): ApiJson<RefreshToken>,
) -> Result<StatusCode, Problem> {
    state
        .identity
        .call(
            pb::LogoutRequest {
                refresh_token: body.refresh_token,
            },
            |mut c, r| async move { c.logout(r).await },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Confirm an email address with the code from the verification email (once, within 30 minutes).
#[utoipa::path(
    post, path = "/api/v1/auth/verify-email", tag = "auth",
    request_body = dto::VerifyEmail,
    responses((status = 200, description = "Verified", body = dto::Account))
)]
pub async fn verify_email(
    State(state): State<FacadeState>,
    ApiJson(body): ApiJson<dto::VerifyEmail>,
) -> Result<Json<dto::Account>, Problem> {
    let res = state
        .identity
        .call(pb::VerifyEmailRequest { token: body.token }, |mut c, r| async move {
            c.verify_email(r).await
        })
        .await?;
    Ok(Json(res.into_inner().account.ok_or_else(|| missing("account"))?.into()))
}

/// Email the signed-in account a new verification link (nothing when already verified).
#[utoipa::path(
    post, path = "/api/v1/auth/verify-email/resend", tag = "auth",
    responses((status = 202, description = "A new link is on its way if the address is unverified", body = dto::Accepted)),
    security(("bearer" = []))
)]
pub async fn resend_verification(
    State(state): State<FacadeState>,
    caller: Caller,
) -> Result<(StatusCode, Json<dto::Accepted>), Problem> {
    state
        .identity
        .call(
            caller.request(pb::RequestEmailVerificationRequest {}),
            |mut c, r| async move { c.request_email_verification(r).await },
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(dto::Accepted {
            status: "if the address is not verified yet, a new link is on its way".into(),
        }),
    ))
}

/// Ask for a password reset link. The answer is the same whether or not the address has an
/// account.
#[utoipa::path(
    post, path = "/api/v1/auth/password-reset", tag = "auth",
    request_body = dto::PasswordResetRequest,
    responses((status = 202, description = "A link is on its way if the address has an account", body = dto::Accepted))
)]
pub async fn password_reset(
    State(state): State<FacadeState>,
    ApiJson(body): ApiJson<dto::PasswordResetRequest>,
) -> Result<(StatusCode, Json<dto::Accepted>), Problem> {
    state
        .identity
        .call(
            pb::RequestPasswordResetRequest { email: body.email },
            |mut c, r| async move { c.request_password_reset(r).await },
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(dto::Accepted {
            status: "if this address has an account, a reset link is on its way".into(),
        }),
    ))
}

/// Set a new password with the code from the reset email (once, within 30 minutes). Every
/// session of the account ends.
#[utoipa::path(
    post, path = "/api/v1/auth/password-reset/confirm", tag = "auth",
    request_body = dto::PasswordResetConfirm,
    responses((status = 204, description = "Password changed; every session ended"))
)]
pub async fn password_reset_confirm(
    State(state): State<FacadeState>,
    ApiJson(body): ApiJson<dto::PasswordResetConfirm>,
) -> Result<StatusCode, Problem> {
    let req = pb::ResetPasswordRequest {
        token: body.token,
        new_password: body.new_password,
    };
    state
        .identity
        .call(req, |mut c, r| async move { c.reset_password(r).await })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The signed-in account.
#[utoipa::path(
    get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, description = "The account", body = dto::Account)),
    security(("bearer" = []))
)]
pub async fn me(State(state): State<FacadeState>, caller: Caller) -> Result<Json<dto::Account>, Problem> {
    let res = state
        .identity
        .call(
            caller.request(pb::MeRequest {}),
            |mut c, r| async move { c.me(r).await },
        )
        .await?;
    Ok(Json(res.into_inner().account.ok_or_else(|| missing("account"))?.into()))
}

/// Create a partner API key. The secret is in this answer once and never again. A retry with
/// the same `Idempotency-Key` answers with the same key and a new secret (the first stops
/// working): the secret is kept only as a hash.
#[utoipa::path(
    post, path = "/api/v1/api-keys", tag = "api-keys",
    request_body = CreateApiKey,
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[\x21-\x7E]{1,200}$")),
    responses((status = 201, description = "Created", body = dto::CreatedApiKey)),
    security(("bearer" = []))
)]
pub async fn create_api_key(
    State(state): State<FacadeState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<CreateApiKey>,
) -> Result<Response, Problem> {
    let expire_time = match body.expires_at.as_deref() {
        Some(text) => {
            let at = chrono::DateTime::parse_from_rfc3339(text).map_err(|_| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "VALIDATION_FAILED",
                    "expires_at must be an RFC 3339 time",
                )
                .with_errors(vec![crate::problem::FieldError {
                    field: "expires_at".into(),
                    message: "must be an RFC 3339 time".into(),
                }])
            })?;
            Some(prost_types::Timestamp {
                seconds: at.timestamp(),
                nanos: at.timestamp_subsec_nanos() as i32,
            })
        }
        None => None,
    };
    let req = pb::CreateApiKeyRequest {
        name: body.name,
        scopes: body.scopes,
        expire_time,
        owner_id: body.owner_id.unwrap_or_default(),
        rate_limit_per_minute: body.rate_limit_per_minute.unwrap_or(0),
        idempotency_key: idempotency_key(&headers)?,
    };
    let res = state
        .identity
        .call(caller.request(req), |mut c, r| async move { c.create_api_key(r).await })
        .await?
        .into_inner();
    let key = dto::ApiKey::from(res.api_key.ok_or_else(|| missing("api_key"))?);
    let mut response = created(
        format!("/api/v1/api-keys/{}", key.id),
        dto::CreatedApiKey {
            api_key: key,
            secret: res.secret,
        },
    );
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// The caller's API keys (admins: any account's with `owner_id`).
#[utoipa::path(
    get, path = "/api/v1/api-keys", tag = "api-keys",
    params(ListApiKeysQuery),
    responses((status = 200, description = "API keys", body = dto::ApiKeyList)),
    security(("bearer" = []))
)]
pub async fn list_api_keys(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListApiKeysQuery>,
) -> Result<Json<dto::ApiKeyList>, Problem> {
    if query.owner_id.as_deref() == Some("") {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
            "owner_id must be an account id",
        )
        .with_errors(vec![crate::problem::FieldError {
            field: "owner_id".into(),
            message: "must be a UUID".into(),
        }]));
    }
    let req = pb::ListApiKeysRequest {
        owner_id: query.owner_id.unwrap_or_default(),
    };
    let res = state
        .identity
        .call(caller.request(req), |mut c, r| async move { c.list_api_keys(r).await })
        .await?
        .into_inner();
    Ok(Json(dto::ApiKeyList {
        api_keys: res.api_keys.into_iter().map(Into::into).collect(),
    }))
}

/// Revoke an API key: calls with it are refused within seconds.
#[utoipa::path(
    delete, path = "/api/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, description = "The revoked key", body = dto::ApiKey)),
    security(("bearer" = []))
)]
pub async fn revoke_api_key(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<dto::ApiKey>, Problem> {
    let res = state
        .identity
        .call(caller.request(pb::RevokeApiKeyRequest { id }), |mut c, r| async move {
            c.revoke_api_key(r).await
        })
        .await?;
    Ok(Json(res.into_inner().api_key.ok_or_else(|| missing("api_key"))?.into()))
}

/// Admins: disable an account. It can no longer sign in, its refresh tokens stop working at
/// once and every access token it holds is refused everywhere within seconds.
#[utoipa::path(
    post, path = "/api/v1/admin/accounts/{id}/disable", tag = "admin",
    params(("id" = String, Path, description = "The account")),
    request_body = dto::AdminReason,
    responses(
        (status = 200, description = "Disabled (or already was)", body = dto::Account),
        (status = 403, description = "Not an admin", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn disable_account(
    State(state): State<FacadeState>,
    caller: Caller,
    ClientIp(client): ClientIp,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<dto::AdminReason>,
) -> Result<Json<dto::Account>, Problem> {
    let req = pb::DisableAccountRequest {
        account_id: id,
        reason: body.reason,
        client_address: client.to_string(),
    };
    let res = state
        .identity
        .call(
            caller.request(req),
            |mut c, r| async move { c.disable_account(r).await },
        )
        .await?;
    Ok(Json(res.into_inner().account.ok_or_else(|| missing("account"))?.into()))
}

/// Admins: enable a disabled account again (never an erased one). It signs in with its
/// password; the tokens it held when it was disabled stay refused.
#[utoipa::path(
    post, path = "/api/v1/admin/accounts/{id}/enable", tag = "admin",
    params(("id" = String, Path, description = "The account")),
    request_body = dto::AdminReason,
    responses(
        (status = 200, description = "Enabled (or was not disabled)", body = dto::Account),
        (status = 403, description = "Not an admin", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
        (status = 400, description = "No reason, or `ACCOUNT_ERASED`: erased by its owner", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn enable_account(
    State(state): State<FacadeState>,
    caller: Caller,
    ClientIp(client): ClientIp,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<dto::AdminReason>,
) -> Result<Json<dto::Account>, Problem> {
    let req = pb::EnableAccountRequest {
        account_id: id,
        reason: body.reason,
        client_address: client.to_string(),
    };
    let res = state
        .identity
        .call(caller.request(req), |mut c, r| async move { c.enable_account(r).await })
        .await?;
    Ok(Json(res.into_inner().account.ok_or_else(|| missing("account"))?.into()))
}

/// Admins: give another account a role. When the role changes, the account's sessions end and
/// every token it holds is refused everywhere within seconds: it signs in again and its new
/// tokens carry the new role. The change, with the role before and after, is audited.
#[utoipa::path(
    put, path = "/api/v1/admin/accounts/{id}/role", tag = "admin",
    params(("id" = String, Path, description = "The account")),
    request_body = dto::SetAccountRole,
    responses(
        (status = 200, description = "The account with its role (unchanged if it had it)", body = dto::Account),
        (status = 400, description = "Own account, no reason, or `ACCOUNT_ERASED`: erased by its owner",
         body = crate::problem::ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn set_account_role(
    State(state): State<FacadeState>,
    caller: Caller,
    ClientIp(client): ClientIp,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<dto::SetAccountRole>,
) -> Result<Json<dto::Account>, Problem> {
    let req = pb::SetAccountRoleRequest {
        account_id: id,
        role: body.role.to_pb() as i32,
        reason: body.reason,
        client_address: client.to_string(),
    };
    let res = state
        .identity
        .call(
            caller.request(req),
            |mut c, r| async move { c.set_account_role(r).await },
        )
        .await?;
    Ok(Json(res.into_inner().account.ok_or_else(|| missing("account"))?.into()))
}

/// Public keys that verify Thali user access tokens: identity's keys only (the active one, one
/// published ahead of its activation, one retiring; ADR 0029).
#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "JWKS of identity's signing keys", body = dto::Jwks))
)]
pub async fn jwks(State(state): State<FacadeState>) -> Result<Response, Problem> {
    let res = state
        .identity
        .call(pb::ListSigningKeysRequest {}, |mut c, r| async move {
            c.list_signing_keys(r).await
        })
        .await?
        .into_inner();
    let keys = res
        .keys
        .into_iter()
        .map(|k| dto::Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            alg: "EdDSA".into(),
            usage: "sig".into(),
            kid: k.kid,
            x: k.x,
        })
        .collect();
    Ok((
        [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
        Json(dto::Jwks { keys }),
    )
        .into_response())
}
