//! The tonic implementation of `thali.identity.v1.IdentityService`, and the one mapping of
//! identity errors to `Status`.
use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use thali_platform::{
    audit::{SecurityEvent, security_event},
    auth::{Principal, Signer},
    errors,
    server::{ServiceCaller, principal},
};
use thali_proto::identity::v1 as pb;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::{
    domain::{
        self, ACCESS_TOKEN_TTL, ADDRESS_FAILURES_ALLOWED, Account, AccountStatus, IdentityError, KEY_NAME_MAX,
        NewAccount, PAIR_FAILURES_ALLOWED, Role,
    },
    passwords,
    store::{ApiKey, Idempotency, IdentityStore, RotateError},
};

/// The identity gRPC service.
pub struct IdentityGrpc {
    store: IdentityStore,
    signer: Arc<Signer>,
}

impl IdentityGrpc {
    pub fn new(store: IdentityStore, signer: Arc<Signer>) -> Self {
        Self { store, signer }
    }

    /// An access token of `account` in login session `session` (its refresh-token family).
    fn access_token(&self, account: &Account, session: Option<Uuid>) -> (String, DateTime<Utc>) {
        let (subject, roles) = (account.id.to_string(), [account.role.as_str().to_owned()]);
        let token = match session {
            Some(sid) => self
                .signer
                .mint_session(&subject, &roles, ACCESS_TOKEN_TTL, &sid.to_string()),
            None => self.signer.mint(&subject, &roles, ACCESS_TOKEN_TTL),
        };
        (
            token,
            Utc::now() + chrono::Duration::from_std(ACCESS_TOKEN_TTL).expect("a week fits"),
        )
    }
}

impl From<IdentityError> for Status {
    fn from(err: IdentityError) -> Self {
        let message = err.to_string();
        match err {
            IdentityError::Invalid(violations) => errors::invalid_argument(&violations),
            IdentityError::Unauthenticated => errors::with_reason(Code::Unauthenticated, "UNAUTHENTICATED", message),
            IdentityError::BadCredentials => errors::with_reason(Code::Unauthenticated, "BAD_CREDENTIALS", message),
            IdentityError::Throttled { retry_after } => {
                errors::resource_exhausted("LOGIN_THROTTLED", message, retry_after)
            }
            IdentityError::AccountInactive => errors::with_reason(Code::PermissionDenied, "ACCOUNT_INACTIVE", message),
            IdentityError::EmailTaken => errors::with_reason(Code::AlreadyExists, "EMAIL_TAKEN", message),
            IdentityError::BadRefreshToken => {
                errors::with_reason(Code::Unauthenticated, "REFRESH_TOKEN_INVALID", message)
            }
            IdentityError::BadApiKey => errors::with_reason(Code::Unauthenticated, "API_KEY_INVALID", message),
            IdentityError::Forbidden => errors::with_reason(Code::PermissionDenied, "FORBIDDEN", message),
            IdentityError::ApiKeyNotFound => errors::with_reason(Code::NotFound, "API_KEY_NOT_FOUND", message),
            IdentityError::AccountNotFound => errors::with_reason(Code::NotFound, "ACCOUNT_NOT_FOUND", message),
            IdentityError::AccountErased => errors::with_reason(Code::FailedPrecondition, "ACCOUNT_ERASED", message),
            IdentityError::PasswordIncorrect => {
                errors::with_reason(Code::PermissionDenied, "PASSWORD_INCORRECT", message)
            }
            IdentityError::BadToken => errors::with_reason(Code::InvalidArgument, "TOKEN_INVALID", message),
            IdentityError::IdempotencyKeyReused => {
                errors::with_reason(Code::Aborted, "IDEMPOTENCY_KEY_REUSED", message)
            }
            IdentityError::Unavailable => errors::unavailable("DATABASE_UNAVAILABLE", message, Duration::from_secs(2)),
            IdentityError::Internal(cause) => errors::internal(&cause),
        }
    }
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn role_pb(role: Role) -> pb::Role {
    match role {
        Role::Buyer => pb::Role::Buyer,
        Role::Creator => pb::Role::Creator,
        Role::RestaurantOwner => pb::Role::RestaurantOwner,
        Role::Admin => pb::Role::Admin,
    }
}

fn role_from_pb(role: i32) -> Option<Role> {
    match pb::Role::try_from(role).ok()? {
        pb::Role::Buyer => Some(Role::Buyer),
        pb::Role::Creator => Some(Role::Creator),
        pb::Role::RestaurantOwner => Some(Role::RestaurantOwner),
        pb::Role::Admin => Some(Role::Admin),
        pb::Role::Unspecified => None,
    }
}

fn account_pb(a: &Account) -> pb::Account {
    pb::Account {
        id: a.id.to_string(),
        email: a.email.clone(),
        display_name: a.display_name.clone(),
        role: role_pb(a.role) as i32,
        status: match a.status {
            AccountStatus::Active => pb::AccountStatus::Active,
            AccountStatus::Locked => pb::AccountStatus::Locked,
            AccountStatus::Disabled => pb::AccountStatus::Disabled,
            AccountStatus::Erased => pb::AccountStatus::Erased,
        } as i32,
        create_time: Some(timestamp(a.created_at)),
        email_verify_time: a.email_verified_at.map(timestamp),
    }
}

fn api_key_pb(k: ApiKey) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id.to_string(),
        owner_id: k.owner_id.to_string(),
        name: k.name,
        prefix: k.prefix,
        scopes: k.scopes,
        create_time: Some(timestamp(k.created_at)),
        expire_time: k.expires_at.map(timestamp),
        last_use_time: k.last_used_at.map(timestamp),
        revoke_time: k.revoked_at.map(timestamp),
        rate_limit_per_minute: k.rate_limit_per_minute.unwrap_or(0),
    }
}

/// The account acting through a user token (API keys cannot manage accounts or keys).
fn account_caller<T>(request: &Request<T>) -> Result<(Uuid, bool), IdentityError> {
    let p: &Principal = principal(request).ok_or(IdentityError::Unauthenticated)?;
    if p.api_key.is_some() {
        return Err(IdentityError::Forbidden);
    }
    let id = Uuid::parse_str(&p.subject).map_err(|_| IdentityError::Unauthenticated)?;
    Ok((id, p.has_role("admin")))
}

/// An admin call, read: the admin and the address it came from, the account it is about, and
/// why (for the audit trail).
struct AdminCall {
    by: crate::store::Acting,
    target: Uuid,
    reason: String,
}

impl AdminCall {
    /// Reads `request` of admin RPC `rpc` (named in a refusal's security event); `fields`
    /// answers its account id, reason and client address.
    fn read<T>(request: Request<T>, rpc: &str, fields: impl Fn(&T) -> [&str; 3]) -> Result<(Self, T), Status> {
        let (caller, is_admin) = account_caller(&request)?;
        if !is_admin {
            if let Some(p) = principal(&request) {
                thali_platform::audit::access_denied(p, rpc, "admin role required");
            }
            return Err(IdentityError::Forbidden.into());
        }
        let address = client_address(&request);
        let req = request.into_inner();
        let [account_id, reason, client] = fields(&req);
        let target =
            Uuid::parse_str(account_id.trim()).map_err(|_| IdentityError::invalid("account_id", "must be a UUID"))?;
        let reason = thali_platform::text::plain(reason, thali_platform::text::Rules::multiline(1, 500))
            .map_err(|why| IdentityError::invalid("reason", why))?;
        let by = crate::store::Acting {
            id: caller,
            address: address(client)?,
        };
        Ok((Self { by, target, reason }, req))
    }

    /// Refuses a call on the admin's own account.
    fn not_on_self(&self, what: &str) -> Result<(), Status> {
        if self.target == self.by.id {
            return Err(IdentityError::invalid("account_id", format!("an admin cannot {what}")).into());
        }
        Ok(())
    }

    /// The security event of a change made (`detail`: what it was).
    fn logged(&self, event: SecurityEvent, detail: &str) {
        security_event(
            event,
            &self.by.id.to_string(),
            &self.target.to_string(),
            &self.by.address,
            detail,
        );
    }
}

fn owner_for(caller: (Uuid, bool), requested: &str) -> Result<Uuid, IdentityError> {
    if requested.is_empty() {
        return Ok(caller.0);
    }
    let wanted = Uuid::parse_str(requested).map_err(|_| IdentityError::invalid("owner_id", "must be a UUID"))?;
    if wanted != caller.0 && !caller.1 {
        return Err(IdentityError::Forbidden);
    }
    Ok(wanted)
}

/// The address a request comes from, as a parser of the request's `client_address` field: only
/// another Thali service (the facade) may say which address a call comes from; anyone else is
/// taken at the address they connect from. The address is checked and made canonical.
fn client_address<T>(request: &Request<T>) -> impl FnOnce(&str) -> Result<String, Status> + use<T> {
    let trusted = request.extensions().get::<ServiceCaller>().is_some();
    let peer = request.remote_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    move |claimed: &str| {
        let address = if trusted { claimed.trim().to_owned() } else { peer };
        match address.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(thali_platform::net::canonical(ip).to_string()),
            Err(_) if address.is_empty() => Ok(address),
            Err(_) => Err(IdentityError::invalid("client_address", "must be an IP address").into()),
        }
    }
}

#[tonic::async_trait]
impl pb::identity_service_server::IdentityService for IdentityGrpc {
    async fn request_email_verification(
        &self,
        request: Request<pb::RequestEmailVerificationRequest>,
    ) -> Result<Response<pb::RequestEmailVerificationResponse>, Status> {
        let (id, _) = account_caller(&request)?;
        self.store.request_email_verification(id).await?;
        Ok(Response::new(pb::RequestEmailVerificationResponse {}))
    }

    async fn verify_email(
        &self,
        request: Request<pb::VerifyEmailRequest>,
    ) -> Result<Response<pb::VerifyEmailResponse>, Status> {
        let token = request.into_inner().token;
        if token.is_empty() || token.len() > 200 {
            return Err(IdentityError::BadToken.into());
        }
        let account = self.store.verify_email(&token).await?;
        security_event(SecurityEvent::EmailVerified, &account.id.to_string(), "", "", "");
        Ok(Response::new(pb::VerifyEmailResponse {
            account: Some(account_pb(&account)),
        }))
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Result<Response<pb::RequestPasswordResetResponse>, Status> {
        let raw = request.into_inner().email;
        // A malformed address is an input error; a well-formed one answers the same whether
        // or not it has an account.
        let email = domain::normalize_email(&raw).map_err(|why| IdentityError::invalid("email", why))?;
        let key = format!("reset:{email}");
        let (requests, _) = self.store.record_failure(&key, domain::RESET_REQUESTS_ALLOWED).await?;
        if requests > domain::RESET_REQUESTS_ALLOWED {
            security_event(
                SecurityEvent::PasswordResetRequested,
                &email,
                "",
                "",
                "dropped: too many requests",
            );
        } else {
            let sent = self.store.request_password_reset(&email).await?;
            let note = if sent { "link sent" } else { "no active account" };
            security_event(SecurityEvent::PasswordResetRequested, &email, "", "", note);
        }
        Ok(Response::new(pb::RequestPasswordResetResponse {}))
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let req = request.into_inner();
        if req.token.is_empty() || req.token.len() > 200 {
            return Err(IdentityError::BadToken.into());
        }
        domain::check_password(&req.new_password).map_err(|why| IdentityError::invalid("new_password", why))?;
        let hash = passwords::hash_async(req.new_password)
            .await
            .map_err(|_| IdentityError::Unavailable)?;
        let (account, revoked) = self.store.reset_password(&req.token, hash).await?;
        security_event(
            SecurityEvent::PasswordReset,
            &account.to_string(),
            "",
            "",
            &format!("{revoked} refresh token(s) revoked"),
        );
        Ok(Response::new(pb::ResetPasswordResponse {}))
    }

    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let address = client_address(&request);
        let req = request.into_inner();
        let address = address(&req.client_address)?;
        let new = NewAccount::parse(&req.email, &req.password, &req.display_name, role_from_pb(req.role))?;
        let idem = domain::parse_idempotency_key(&req.idempotency_key)?.map(|k| Idempotency::new(k, &new));
        let hash = passwords::hash_async(req.password)
            .await
            .map_err(|_| IdentityError::Unavailable)?;
        let account = match self
            .store
            .register(&new, hash, AccountStatus::Active, None, idem.as_ref(), &address)
            .await
        {
            Ok(account) => account,
            // The same answer as for a new email (no account in it either way the facade
            // shows); the owner is told by email instead (ADR 0006).
            Err(IdentityError::EmailTaken) => {
                self.store.registration_attempted(&new.email).await?;
                security_event(SecurityEvent::RegistrationOfTakenEmail, "", "", "", "");
                return Ok(Response::new(pb::RegisterResponse { account: None }));
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(account_id = %account.id, role = account.role.as_str(), "account registered");
        Ok(Response::new(pb::RegisterResponse {
            account: Some(account_pb(&account)),
        }))
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let address = client_address(&request);
        let req = request.into_inner();
        let address = address(&req.client_address)?;
        // Shapes first: nothing unchecked reaches SQL or the password hasher.
        let email = domain::normalize_email(&req.email).map_err(|why| IdentityError::invalid("email", why))?;
        if req.password.is_empty() || req.password.chars().count() > domain::PASSWORD_MAX {
            return Err(IdentityError::invalid(
                "password",
                format!("must be 1 to {} characters", domain::PASSWORD_MAX),
            )
            .into());
        }
        // Throttled per (account, address) and per address, never per account alone: a guesser
        // elsewhere cannot make the owner wait (ADR 0006).
        let (pair_key, address_key) = domain::throttle_keys(&email, &address);
        let keys = if address.is_empty() {
            vec![pair_key.clone()]
        } else {
            vec![pair_key.clone(), address_key.clone()]
        };
        if let Some(retry_after) = self.store.throttled(&keys).await? {
            security_event(SecurityEvent::LoginFailed, &email, "", &address, "throttled");
            self.store.record_login_failure(None, &address, "throttled").await?;
            return Err(IdentityError::Throttled {
                retry_after: retry_after.max(Duration::from_secs(1)),
            }
            .into());
        }
        // The attempt counts before the password is checked, so parallel guesses cannot slip
        // past the limit together; a success clears it.
        let (attempts, lock) = self.store.record_failure(&pair_key, PAIR_FAILURES_ALLOWED).await?;
        if attempts > PAIR_FAILURES_ALLOWED {
            security_event(SecurityEvent::LoginFailed, &email, "", &address, "throttled");
            self.store.record_login_failure(None, &address, "throttled").await?;
            let retry_after = lock.unwrap_or(domain::LOCKOUT_BASE);
            return Err(IdentityError::Throttled { retry_after }.into());
        }
        let found = self.store.account_for_login(&email).await?;
        let (account, hash) = match found {
            Some((account, hash)) => (Some(account), Some(hash)),
            None => (None, None),
        };
        let ok = passwords::verify_async(req.password, hash)
            .await
            .map_err(|_| IdentityError::Unavailable)?;
        let known = account.as_ref().map(|a| a.id);
        let Some(account) = account.filter(|_| ok) else {
            security_event(SecurityEvent::LoginFailed, &email, "", &address, "bad credentials");
            self.store
                .record_login_failure(known, &address, "bad credentials")
                .await?;
            let mut locked = lock;
            if !address.is_empty() {
                locked = locked.max(
                    self.store
                        .record_failure(&address_key, ADDRESS_FAILURES_ALLOWED)
                        .await?
                        .1,
                );
            }
            if let Some(lock) = locked {
                security_event(
                    SecurityEvent::LockedOut,
                    &email,
                    "",
                    &address,
                    &format!("{} s", lock.as_secs()),
                );
            }
            return Err(IdentityError::BadCredentials.into());
        };
        self.store.clear_failures(&pair_key).await?;
        if account.status != AccountStatus::Active {
            security_event(
                SecurityEvent::LoginFailed,
                &account.id.to_string(),
                "",
                &address,
                "account not active",
            );
            self.store
                .record_login_failure(Some(account.id), &address, "account not active")
                .await?;
            return Err(IdentityError::AccountInactive.into());
        }
        let refresh = self.store.start_family(account.id, &address).await?;
        // A sign-in from an address the account has not used before is told to its owner.
        self.store.note_login_address(account.id, &address).await?;
        let (access, access_expires) = self.access_token(&account, Some(refresh.family_id));
        security_event(SecurityEvent::LoginSucceeded, &account.id.to_string(), "", &address, "");
        Ok(Response::new(pb::LoginResponse {
            account: Some(account_pb(&account)),
            tokens: Some(pb::Tokens {
                access_token: access,
                access_token_expire_time: Some(timestamp(access_expires)),
                refresh_token: refresh.token,
                refresh_token_expire_time: Some(timestamp(refresh.expires_at)),
            }),
        }))
    }

    async fn refresh(&self, request: Request<pb::RefreshRequest>) -> Result<Response<pb::RefreshResponse>, Status> {
        let req = request.into_inner();
        let (account, refresh) = match self.store.rotate(&req.refresh_token).await {
            Ok(pair) => pair,
            Err(RotateError::Invalid) => return Err(IdentityError::BadRefreshToken.into()),
            Err(RotateError::Reused {
                account_id,
                family_id,
                revoked,
            }) => {
                security_event(
                    SecurityEvent::RefreshReused,
                    &account_id.to_string(),
                    &family_id.to_string(),
                    &req.client_address,
                    &format!("family revoked ({revoked} live tokens)"),
                );
                return Err(IdentityError::BadRefreshToken.into());
            }
            Err(RotateError::Store(e)) => return Err(e.into()),
        };
        if account.status != AccountStatus::Active {
            return Err(IdentityError::AccountInactive.into());
        }
        let (access, access_expires) = self.access_token(&account, Some(refresh.family_id));
        Ok(Response::new(pb::RefreshResponse {
            tokens: Some(pb::Tokens {
                access_token: access,
                access_token_expire_time: Some(timestamp(access_expires)),
                refresh_token: refresh.token,
                refresh_token_expire_time: Some(timestamp(refresh.expires_at)),
            }),
        }))
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        if let Some(account) = self.store.logout(&request.get_ref().refresh_token).await? {
            security_event(
                SecurityEvent::Logout,
                &account.to_string(),
                "",
                "",
                "refresh family revoked",
            );
        }
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn me(&self, request: Request<pb::MeRequest>) -> Result<Response<pb::MeResponse>, Status> {
        let (id, _) = account_caller(&request)?;
        let account = self.store.account(id).await?;
        Ok(Response::new(pb::MeResponse {
            account: Some(account_pb(&account)),
        }))
    }

    async fn renew_access_token(
        &self,
        request: Request<pb::RenewAccessTokenRequest>,
    ) -> Result<Response<pb::RenewAccessTokenResponse>, Status> {
        let (id, _) = account_caller(&request)?;
        // A token of a login session is renewed only while that session lives: after logout or
        // a detected refresh-token reuse, its access tokens run out instead of renewing forever.
        let session = match principal(&request).and_then(|p| p.session.as_deref()) {
            Some(sid) => {
                let sid = Uuid::parse_str(sid).map_err(|_| IdentityError::Unauthenticated)?;
                if !self.store.session_is_live(sid).await? {
                    return Err(IdentityError::Unauthenticated.into());
                }
                Some(sid)
            }
            None => None,
        };
        let account = self.store.account(id).await?;
        if account.status != AccountStatus::Active {
            return Err(IdentityError::AccountInactive.into());
        }
        let (access, expires) = self.access_token(&account, session);
        Ok(Response::new(pb::RenewAccessTokenResponse {
            access_token: access,
            access_token_expire_time: Some(timestamp(expires)),
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let caller = account_caller(&request)?;
        let req = request.into_inner();
        let owner = owner_for(caller, &req.owner_id)?;
        let name = thali_platform::text::plain(&req.name, thali_platform::text::Rules::line(1, KEY_NAME_MAX))
            .map_err(|why| IdentityError::invalid("name", why))?;
        let name = name.as_str();
        let scopes = domain::check_scopes(&req.scopes)?;
        let expires_at = match req.expire_time {
            Some(t) => {
                let at = DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
                    .filter(|at| *at > Utc::now())
                    .ok_or_else(|| IdentityError::invalid("expire_time", "must be in the future"))?;
                Some(at)
            }
            None => None,
        };
        let rate_limit = match req.rate_limit_per_minute {
            0 => None,
            n @ 1..=1_000_000 if caller.1 => Some(n),
            1..=1_000_000 => {
                return Err(IdentityError::Forbidden.into());
            }
            _ => {
                return Err(IdentityError::invalid("rate_limit_per_minute", "must be 1 to 1000000").into());
            }
        };
        let idem = domain::parse_idempotency_key(&req.idempotency_key)?
            .map(|k| Idempotency::new(k, &(owner, caller.0, name, &scopes, expires_at, rate_limit)));
        let (key, secret) = self
            .store
            .create_api_key(
                crate::store::KeyFor { owner, by: caller.0 },
                name,
                &scopes,
                expires_at,
                rate_limit,
                idem.as_ref(),
            )
            .await?;
        security_event(
            SecurityEvent::ApiKeyCreated,
            &caller.0.to_string(),
            &key.id.to_string(),
            "",
            &scopes.join(" "),
        );
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(api_key_pb(key)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let caller = account_caller(&request)?;
        let owner = owner_for(caller, &request.get_ref().owner_id)?;
        let keys = self.store.api_keys(owner).await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: keys.into_iter().map(api_key_pb).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let caller = account_caller(&request)?;
        let id = Uuid::parse_str(&request.get_ref().id).map_err(|_| IdentityError::ApiKeyNotFound)?;
        let key = self.store.revoke_api_key(caller.0, caller.1, id).await?;
        security_event(
            SecurityEvent::ApiKeyRevoked,
            &caller.0.to_string(),
            &key.id.to_string(),
            "",
            "",
        );
        Ok(Response::new(pb::RevokeApiKeyResponse {
            api_key: Some(api_key_pb(key)),
        }))
    }

    async fn list_revocations(
        &self,
        request: Request<pb::ListRevocationsRequest>,
    ) -> Result<Response<pb::ListRevocationsResponse>, Status> {
        if request.extensions().get::<ServiceCaller>().is_none() {
            return Err(IdentityError::Forbidden.into());
        }
        let req = request.into_inner();
        let limit = match req.page_size {
            0 => 500,
            n @ 1..=1000 => n as u64,
            _ => return Err(IdentityError::invalid("page_size", "must be 0 to 1000").into()),
        };
        let rows = self.store.revocations_after(req.after_id.max(0), limit).await?;
        Ok(Response::new(pb::ListRevocationsResponse {
            revocations: rows
                .into_iter()
                .map(|r| pb::Revocation {
                    id: r.id,
                    kind: r.kind,
                    subject: r.subject,
                    revoke_time: Some(timestamp(r.revoked_at)),
                })
                .collect(),
        }))
    }

    async fn disable_account(
        &self,
        request: Request<pb::DisableAccountRequest>,
    ) -> Result<Response<pb::DisableAccountResponse>, Status> {
        let (call, _) = AdminCall::read(request, "DisableAccount", |r| {
            [&r.account_id, &r.reason, &r.client_address]
        })?;
        call.not_on_self("disable their own account")?;
        let (account, changed) = self
            .store
            .disable_account(call.target, call.by.clone(), &call.reason)
            .await?;
        if changed {
            call.logged(SecurityEvent::AccountDisabled, &call.reason);
        }
        Ok(Response::new(pb::DisableAccountResponse {
            account: Some(account_pb(&account)),
        }))
    }

    async fn enable_account(
        &self,
        request: Request<pb::EnableAccountRequest>,
    ) -> Result<Response<pb::EnableAccountResponse>, Status> {
        let (call, _) = AdminCall::read(request, "EnableAccount", |r| {
            [&r.account_id, &r.reason, &r.client_address]
        })?;
        let (account, changed) = self
            .store
            .enable_account(call.target, call.by.clone(), &call.reason)
            .await?;
        if changed {
            call.logged(SecurityEvent::AccountEnabled, &call.reason);
        }
        Ok(Response::new(pb::EnableAccountResponse {
            account: Some(account_pb(&account)),
        }))
    }

    async fn set_account_role(
        &self,
        request: Request<pb::SetAccountRoleRequest>,
    ) -> Result<Response<pb::SetAccountRoleResponse>, Status> {
        let (call, req) = AdminCall::read(request, "SetAccountRole", |r| {
            [&r.account_id, &r.reason, &r.client_address]
        })?;
        let role = role_from_pb(req.role)
            .ok_or_else(|| IdentityError::invalid("role", "must be buyer, creator, restaurant_owner or admin"))?;
        // Also keeps the last admin from demoting themselves.
        call.not_on_self("change their own role")?;
        let (account, changed) = self
            .store
            .set_account_role(call.target, role, call.by.clone(), &call.reason)
            .await?;
        if changed {
            call.logged(
                SecurityEvent::RoleChanged,
                &format!("{}: {}", role.as_str(), call.reason),
            );
        }
        Ok(Response::new(pb::SetAccountRoleResponse {
            account: Some(account_pb(&account)),
        }))
    }

    async fn erase_account(
        &self,
        request: Request<pb::EraseAccountRequest>,
    ) -> Result<Response<pb::EraseAccountResponse>, Status> {
        let address = client_address(&request);
        let (id, _) = account_caller(&request)?;
        let req = request.into_inner();
        let address = address(&req.client_address)?;
        if req.password.is_empty() || req.password.chars().count() > domain::PASSWORD_MAX {
            return Err(IdentityError::invalid(
                "password",
                format!("must be 1 to {} characters", domain::PASSWORD_MAX),
            )
            .into());
        }
        let account = self.store.account(id).await?;
        if account.status == AccountStatus::Erased {
            return Err(IdentityError::Unauthenticated.into());
        }
        // The password is guessed no faster here than at login: the same (account, address)
        // throttle counts the attempt before the check.
        let (pair_key, _) = domain::throttle_keys(&account.email, &address);
        if let Some(retry_after) = self.store.throttled(std::slice::from_ref(&pair_key)).await? {
            return Err(IdentityError::Throttled {
                retry_after: retry_after.max(Duration::from_secs(1)),
            }
            .into());
        }
        let (attempts, lock) = self.store.record_failure(&pair_key, PAIR_FAILURES_ALLOWED).await?;
        if attempts > PAIR_FAILURES_ALLOWED {
            let retry_after = lock.unwrap_or(domain::LOCKOUT_BASE);
            return Err(IdentityError::Throttled { retry_after }.into());
        }
        let hash = self
            .store
            .account_for_login(&account.email)
            .await?
            .map(|(_, hash)| hash);
        let ok = passwords::verify_async(req.password, hash)
            .await
            .map_err(|_| IdentityError::Unavailable)?;
        if !ok {
            security_event(
                SecurityEvent::LoginFailed,
                &account.email,
                "",
                &address,
                "wrong password to erase the account",
            );
            self.store
                .record_login_failure(Some(id), &address, "wrong password to erase the account")
                .await?;
            return Err(IdentityError::PasswordIncorrect.into());
        }
        let erased_at = self.store.erase_account(id, &address).await?;
        tracing::info!(account = %id, "account erased at its owner's request");
        Ok(Response::new(pb::EraseAccountResponse {
            account_id: id.to_string(),
            erased_at: Some(timestamp(erased_at)),
        }))
    }

    async fn verify_api_key(
        &self,
        request: Request<pb::VerifyApiKeyRequest>,
    ) -> Result<Response<pb::VerifyApiKeyResponse>, Status> {
        if request.extensions().get::<ServiceCaller>().is_none() {
            return Err(IdentityError::Forbidden.into());
        }
        let req = request.into_inner();
        let presented = domain::parse_api_key(&req.key).ok_or(IdentityError::BadApiKey)?;
        let (key, owner) = self.store.verify_api_key(&presented).await?;
        Ok(Response::new(pb::VerifyApiKeyResponse {
            key_id: key.id.to_string(),
            owner_id: owner.id.to_string(),
            owner_role: role_pb(owner.role) as i32,
            rate_limit_per_minute: key.rate_limit_per_minute.unwrap_or(0),
            scopes: key.scopes,
        }))
    }

    async fn list_signing_keys(
        &self,
        _request: Request<pb::ListSigningKeysRequest>,
    ) -> Result<Response<pb::ListSigningKeysResponse>, Status> {
        // Identity's own keys (the active one, one published ahead of activation, one
        // retiring): the keys that sign user tokens. Open to every caller (ADR 0029); the dir is
        // re-read at most once a second, so a key just added is listed by every replica.
        self.signer.reload_if_older(std::time::Duration::from_secs(1));
        let keys = self
            .signer
            .public_keys()
            .into_iter()
            .map(|(kid, x)| pb::SigningKey { kid, x })
            .collect();
        Ok(Response::new(pb::ListSigningKeysResponse { keys }))
    }
}
