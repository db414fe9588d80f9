//! Identity persistence: accounts, refresh-token families, API keys, login throttling. One
//! transaction per use case; uniqueness and one-time use of refresh tokens are enforced by the
//! database (unique hashes, conditional updates), not by read-then-write.
use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use ring::rand::{SecureRandom, SystemRandom};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, ExprTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
    sea_query::{Expr, OnConflict},
};
use thali_platform::audit_log::{self, Entry};
use thali_platform::db::is_unique_violation;
pub use thali_platform::idempotency::Idempotency;
use thali_platform::idempotency::{Keys, Replay};
use thali_proto::events::v1::{
    AccountCreated, AccountEmailVerificationRequested, AccountErased, AccountLoginNewAddress,
    AccountPasswordResetRequested, AccountRegistrationAttempted, event::Payload,
};
use uuid::Uuid;

use crate::domain::{
    API_KEY_PREFIX, Account, AccountStatus, EMAILED_TOKEN_TTL, IdentityError, NewAccount, PresentedKey,
    REFRESH_TOKEN_TTL, Role, TokenPurpose, lockout,
};

/// Locks the rows of admin `by` and of account `id` (in id order, so two admins acting on each
/// other cannot deadlock) and checks that `by`, when it is an account, is still an active admin:
/// of two admins demoting or disabling each other at once, the second finds itself no longer
/// one. (`by` need not be an account: an operator's token minted with `thali token`.)
async fn lock_for_admin_action(txn: &sea_orm::DatabaseTransaction, by: Uuid, id: Uuid) -> Result<(), IdentityError> {
    let rows = account::Entity::find()
        .filter(account::Column::Id.is_in([by, id]))
        .order_by_asc(account::Column::Id)
        .lock_exclusive()
        .all(txn)
        .await?;
    if let Some(admin) = rows.iter().find(|a| a.id == by)
        && (admin.role != Role::Admin.as_str()
            || admin.status != AccountStatus::Active.as_str()
            || admin.erased_at.is_some())
    {
        return Err(IdentityError::Forbidden);
    }
    Ok(())
}

/// Commits an admin change to account `id` and answers the account as it now is, and whether
/// the change changed anything.
async fn commit_with_account(
    txn: sea_orm::DatabaseTransaction,
    id: Uuid,
    changed: bool,
) -> Result<(Account, bool), IdentityError> {
    let account = account::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or(IdentityError::AccountNotFound)?;
    txn.commit().await?;
    Ok((account.try_into()?, changed))
}

/// Account `id`, locked for this transaction (PostgreSQL; SQLite's write transaction already
/// is), unless it was erased.
async fn live_account_locked(txn: &sea_orm::DatabaseTransaction, id: Uuid) -> Result<account::Model, IdentityError> {
    let found = account::Entity::find_by_id(id)
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or(IdentityError::AccountNotFound)?;
    if found.erased_at.is_some() {
        return Err(IdentityError::AccountErased);
    }
    Ok(found)
}

/// Ends every session of account `id`: its refresh tokens are revoked, and a revocation makes
/// every verifier refuse the access tokens it was issued until `now`.
/// Returns how many refresh tokens were live.
async fn end_sessions(txn: &sea_orm::DatabaseTransaction, id: Uuid, now: DateTime<Utc>) -> Result<u64, IdentityError> {
    let revoked = refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::RevokedAt, Expr::value(now))
        .filter(refresh_token::Column::AccountId.eq(id))
        .filter(refresh_token::Column::RevokedAt.is_null())
        .exec(txn)
        .await?;
    record_revocation(txn, "account", &id.to_string(), now).await?;
    Ok(revoked.rows_affected)
}

/// The admin an admin action is by, and the address the request came from (for the audit
/// trail); a bare id when there is no address (an operator tool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acting {
    pub id: Uuid,
    pub address: String,
}

impl From<Uuid> for Acting {
    fn from(id: Uuid) -> Self {
        Self {
            id,
            address: String::new(),
        }
    }
}

/// Whose API key is made, and by whom: the owner themselves, or an admin acting for them (the
/// audit trail names the admin as the actor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFor {
    pub owner: Uuid,
    pub by: Uuid,
}

impl From<Uuid> for KeyFor {
    /// The owner's own key.
    fn from(owner: Uuid) -> Self {
        Self { owner, by: owner }
    }
}

pub mod account {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "accounts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        #[sea_orm(unique)]
        pub email: String,
        pub display_name: String,
        pub role: String,
        pub status: String,
        #[sea_orm(column_type = "Text")]
        pub password_hash: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub email_verified_at: Option<DateTimeUtc>,
        /// Erased by its owner (ADR 0032): every personal field above is anonymised.
        pub erased_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod login_address {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "login_addresses")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub address: String,
        pub first_seen_at: DateTimeUtc,
        pub last_seen_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod account_token {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "account_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub account_id: Uuid,
        pub purpose: String,
        #[sea_orm(unique)]
        pub token_hash: String,
        pub created_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        pub used_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod refresh_token {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "refresh_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub family_id: Uuid,
        pub account_id: Uuid,
        #[sea_orm(unique)]
        pub token_hash: String,
        pub created_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        pub used_at: Option<DateTimeUtc>,
        pub revoked_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod revocation {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "revocations")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        /// `session` (a login session id) or `account` (every token issued up to `revoked_at`).
        pub kind: String,
        pub subject: String,
        pub revoked_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod api_key {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub owner_id: Uuid,
        pub name: String,
        #[sea_orm(unique)]
        pub prefix: String,
        pub key_hash: String,
        pub scopes: String,
        pub created_at: DateTimeUtc,
        pub expires_at: Option<DateTimeUtc>,
        pub last_used_at: Option<DateTimeUtc>,
        pub revoked_at: Option<DateTimeUtc>,
        pub rate_limit_per_minute: Option<i32>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod login_throttle {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "login_throttle")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub throttle_key: String,
        pub failures: i32,
        pub last_failure_at: DateTimeUtc,
        pub locked_until: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

impl From<DbErr> for IdentityError {
    fn from(err: DbErr) -> Self {
        if thali_platform::db::is_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            IdentityError::Unavailable
        } else {
            IdentityError::Internal(err.to_string())
        }
    }
}

impl TryFrom<account::Model> for Account {
    type Error = IdentityError;
    fn try_from(m: account::Model) -> Result<Self, IdentityError> {
        Ok(Account {
            id: m.id,
            email: m.email,
            display_name: m.display_name,
            role: Role::parse(&m.role).ok_or_else(|| IdentityError::Internal(format!("unknown role {}", m.role)))?,
            status: match m.erased_at {
                Some(_) => AccountStatus::Erased,
                None => AccountStatus::parse(&m.status)
                    .ok_or_else(|| IdentityError::Internal(format!("unknown status {}", m.status)))?,
            },
            created_at: m.created_at,
            email_verified_at: m.email_verified_at,
        })
    }
}

/// An API key as stored (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Calls per minute; None: the platform default.
    pub rate_limit_per_minute: Option<i32>,
}

impl From<api_key::Model> for ApiKey {
    fn from(m: api_key::Model) -> Self {
        ApiKey {
            id: m.id,
            owner_id: m.owner_id,
            name: m.name,
            prefix: m.prefix,
            scopes: m.scopes.split_whitespace().map(str::to_owned).collect(),
            created_at: m.created_at,
            expires_at: m.expires_at,
            last_used_at: m.last_used_at,
            revoked_at: m.revoked_at,
            rate_limit_per_minute: m.rate_limit_per_minute,
        }
    }
}

/// A refresh token as handed to the client, with its expiry.
#[derive(Debug, Clone)]
pub struct IssuedRefresh {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// The login session (refresh-token family) it belongs to.
    pub family_id: Uuid,
}

/// SHA-256 of a secret, hex.
pub fn sha256_hex(secret: &str) -> String {
    thali_platform::idempotency::sha256_hex(secret.as_bytes())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out).expect("the OS random source works");
    out
}

fn random_alphanumeric(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes::<32>() {
            // Rejection sampling keeps every character equally likely.
            if (b as usize) < 248 && out.len() < len {
                out.push(ALPHABET[b as usize % 62] as char);
            }
        }
    }
    out
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Failures older than this are forgotten before a new one is counted.
const FAILURE_MEMORY: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// Adds `entry` to identity's audit trail, in `conn`'s transaction (ADR 0031).
async fn audit<C: sea_orm::ConnectionTrait>(conn: &C, entry: Entry) -> Result<(), DbErr> {
    audit_log::record(conn, crate::workers::SERVICE, &entry).await
}

/// Writes a revocation in `txn`, kept as long as an access token it refuses could live.
async fn record_revocation(
    txn: &impl sea_orm::ConnectionTrait,
    kind: &str,
    subject: &str,
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    let ttl = chrono::Duration::from_std(crate::domain::ACCESS_TOKEN_TTL).unwrap_or_default();
    revocation::ActiveModel {
        id: sea_orm::ActiveValue::NotSet,
        kind: Set(kind.to_owned()),
        subject: Set(subject.to_owned()),
        revoked_at: Set(at),
        expires_at: Set(at + ttl + chrono::Duration::minutes(5)),
    }
    .insert(txn)
    .await?;
    Ok(())
}

/// A new partner key secret under `prefix`: `thali_pk_<prefix>_<43 random characters>`.
fn api_key_secret(prefix: &str) -> String {
    format!(
        "{API_KEY_PREFIX}{prefix}_{}",
        URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    )
}

/// How long an idempotency key answers with its first result.
/// Identity's idempotency keys (ADR 0005; the rules live in `platform::idempotency`).
const KEYS: Keys = Keys::new("identity_idempotency");

/// The identity service's database.
#[derive(Debug, Clone)]
pub struct IdentityStore {
    db: DatabaseConnection,
    /// The service's job queue, where its events are written (the outbox).
    queue: thali_platform::jobs::Queue,
}

impl IdentityStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self::with_queue(db, thali_platform::jobs::Queue::new(crate::workers::SERVICE))
    }

    /// The store writing its events on `queue`.
    pub fn with_queue(db: DatabaseConnection, queue: thali_platform::jobs::Queue) -> Self {
        Self { db, queue }
    }

    /// The connection, for the service's workers.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Housekeeping: deletes refresh tokens (and so sessions) that expired before `now`.
    /// Returns how many.
    pub async fn prune_refresh_tokens(&self, now: DateTime<Utc>) -> Result<u64, DbErr> {
        let done = refresh_token::Entity::delete_many()
            .filter(refresh_token::Column::ExpiresAt.lt(now))
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected)
    }

    /// Housekeeping: deletes login-throttle rows that no longer count against anyone (their last
    /// failure is forgotten and any lockout is over). Returns how many.
    pub async fn prune_login_throttle(&self, now: DateTime<Utc>) -> Result<u64, DbErr> {
        let done = login_throttle::Entity::delete_many()
            .filter(login_throttle::Column::LastFailureAt.lt(now - FAILURE_MEMORY))
            .filter(
                login_throttle::Column::LockedUntil
                    .is_null()
                    .or(login_throttle::Column::LockedUntil.lt(now)),
            )
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected)
    }

    /// Housekeeping: deletes idempotency records past their window. Returns how many.
    pub async fn prune_idempotency(&self, now: DateTime<Utc>) -> Result<u64, DbErr> {
        KEYS.prune(&self.db, now).await
    }

    async fn replay(&self, scope: &str, subject: &str, idem: &Idempotency) -> Result<Option<Uuid>, IdentityError> {
        match KEYS.replay(&self.db, scope, subject, idem, Utc::now()).await? {
            Replay::Fresh => Ok(None),
            Replay::Same(id) => Ok(Some(id)),
            Replay::Conflict => Err(IdentityError::IdempotencyKeyReused),
        }
    }

    /// Creates an account. The email is unique in the database.
    pub async fn register(
        &self,
        new: &NewAccount,
        password_hash: String,
        status: AccountStatus,
        role_override: Option<Role>,
        idem: Option<&Idempotency>,
        address: &str,
    ) -> Result<Account, IdentityError> {
        const SCOPE: &str = "register";
        if let Some(idem) = idem
            && let Some(id) = self.replay(SCOPE, &new.email, idem).await?
        {
            return self.account(id).await;
        }
        let id = Uuid::now_v7();
        let now = Utc::now();
        let txn = self.db.begin().await?;
        if let Some(idem) = idem
            && !KEYS.claim(&txn, SCOPE, &new.email, idem, id, now).await?
        {
            // A concurrent request with the same key committed first: answer with its account.
            drop(txn);
            let id = self
                .replay(SCOPE, &new.email, idem)
                .await?
                .ok_or(IdentityError::Unavailable)?;
            return self.account(id).await;
        }
        let row = account::ActiveModel {
            id: Set(id),
            email: Set(new.email.clone()),
            display_name: Set(new.display_name.clone()),
            role: Set(role_override.unwrap_or(new.role).as_str().to_owned()),
            status: Set(status.as_str().to_owned()),
            password_hash: Set(password_hash),
            created_at: Set(now),
            updated_at: Set(now),
            email_verified_at: Set(None),
            erased_at: Set(None),
        };
        let model = match row.insert(&txn).await {
            Ok(m) => m,
            Err(e) if is_unique_violation(&e) => return Err(IdentityError::EmailTaken),
            Err(e) => return Err(e.into()),
        };
        let event = thali_platform::events::new_event(
            crate::workers::SERVICE,
            format!("account:{id}"),
            Some(id),
            Payload::AccountCreated(AccountCreated {
                account_id: id.to_string(),
                email: model.email.clone(),
                display_name: model.display_name.clone(),
                role: model.role.clone(),
            }),
            self.queue.now(),
        );
        thali_platform::events::publish(&txn, &self.queue, &event).await?;
        audit(
            &txn,
            Entry::new(audit_log::account(id), "account.registered", format!("account:{id}"))
                .from_address(address)
                .with_details(serde_json::json!({"role": model.role, "status": model.status})),
        )
        .await?;
        // The verification link goes out with the welcome.
        self.issue_token(&txn, &model, TokenPurpose::VerifyEmail).await?;
        txn.commit().await?;
        model.try_into()
    }
    /// Writes a new single-use token for `account` (only its hash is kept) and the event that
    /// mails it, in `txn`. Earlier unused tokens of the same purpose stop working.
    async fn issue_token(
        &self,
        txn: &impl sea_orm::ConnectionTrait,
        account: &account::Model,
        purpose: TokenPurpose,
    ) -> Result<(), IdentityError> {
        let now = self.queue.now();
        let prefix = match purpose {
            TokenPurpose::VerifyEmail => "thali_ve_",
            TokenPurpose::PasswordReset => "thali_pr_",
        };
        let token = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()));
        let expires_at = now + EMAILED_TOKEN_TTL;
        account_token::Entity::update_many()
            .col_expr(account_token::Column::UsedAt, Expr::value(now))
            .filter(account_token::Column::AccountId.eq(account.id))
            .filter(account_token::Column::Purpose.eq(purpose.as_str()))
            .filter(account_token::Column::UsedAt.is_null())
            .exec(txn)
            .await?;
        account_token::ActiveModel {
            id: Set(Uuid::now_v7()),
            account_id: Set(account.id),
            purpose: Set(purpose.as_str().to_owned()),
            token_hash: Set(sha256_hex(&token)),
            created_at: Set(now),
            expires_at: Set(expires_at),
            used_at: Set(None),
        }
        .insert(txn)
        .await?;
        let expires = Some(prost_types::Timestamp {
            seconds: expires_at.timestamp(),
            nanos: 0,
        });
        let payload = match purpose {
            TokenPurpose::VerifyEmail => {
                Payload::AccountEmailVerificationRequested(AccountEmailVerificationRequested {
                    account_id: account.id.to_string(),
                    email: account.email.clone(),
                    token,
                    expires_at: expires,
                })
            }
            TokenPurpose::PasswordReset => Payload::AccountPasswordResetRequested(AccountPasswordResetRequested {
                account_id: account.id.to_string(),
                email: account.email.clone(),
                token,
                expires_at: expires,
            }),
        };
        let event = thali_platform::events::new_event(
            crate::workers::SERVICE,
            format!("account:{}", account.id),
            Some(account.id),
            payload,
            now,
        );
        thali_platform::events::publish(txn, &self.queue, &event).await?;
        Ok(())
    }

    /// Mails `account_id` a new verification link, unless its email is verified already.
    pub async fn request_email_verification(&self, account_id: Uuid) -> Result<(), IdentityError> {
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let found = account::Entity::find_by_id(account_id)
            .one(&txn)
            .await?
            .ok_or(IdentityError::Unauthenticated)?;
        if found.email_verified_at.is_none() {
            self.issue_token(&txn, &found, TokenPurpose::VerifyEmail).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Mails a reset link to `email` if it has an active account. Answers `Ok` either way, so
    /// the caller learns nothing about which addresses have accounts; `false` says nothing was
    /// sent (for the audit log only).
    pub async fn request_password_reset(&self, email: &str) -> Result<bool, IdentityError> {
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let found = account::Entity::find()
            .filter(account::Column::Email.eq(email))
            .filter(account::Column::Status.eq(AccountStatus::Active.as_str()))
            .one(&txn)
            .await?;
        let Some(found) = found else {
            return Ok(false);
        };
        self.issue_token(&txn, &found, TokenPurpose::PasswordReset).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Uses `token` for `purpose` inside `txn`: it works once, before it expires. Returns its
    /// account.
    async fn use_token(
        &self,
        txn: &impl sea_orm::ConnectionTrait,
        token: &str,
        purpose: TokenPurpose,
    ) -> Result<Uuid, IdentityError> {
        let now = self.queue.now();
        let hash = sha256_hex(token);
        // Only one of two racing uses can flip used_at.
        let claimed = account_token::Entity::update_many()
            .col_expr(account_token::Column::UsedAt, Expr::value(now))
            .filter(account_token::Column::TokenHash.eq(hash.clone()))
            .filter(account_token::Column::Purpose.eq(purpose.as_str()))
            .filter(account_token::Column::UsedAt.is_null())
            .filter(account_token::Column::ExpiresAt.gt(now))
            .exec(txn)
            .await?;
        if claimed.rows_affected != 1 {
            return Err(IdentityError::BadToken);
        }
        let row = account_token::Entity::find()
            .filter(account_token::Column::TokenHash.eq(hash))
            .one(txn)
            .await?
            .ok_or(IdentityError::BadToken)?;
        Ok(row.account_id)
    }

    /// Verifies the email of the account `token` was mailed to.
    pub async fn verify_email(&self, token: &str) -> Result<Account, IdentityError> {
        let now = self.queue.now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let account_id = self.use_token(&txn, token, TokenPurpose::VerifyEmail).await?;
        account::Entity::update_many()
            .col_expr(account::Column::EmailVerifiedAt, Expr::value(now))
            .filter(account::Column::Id.eq(account_id))
            .filter(account::Column::EmailVerifiedAt.is_null())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        self.account(account_id).await
    }

    /// Sets the password of the account `token` was mailed to, and ends every session of it
    /// (all refresh-token families revoked). Returns the account id and how many refresh
    /// tokens were revoked.
    pub async fn reset_password(&self, token: &str, password_hash: String) -> Result<(Uuid, u64), IdentityError> {
        let now = self.queue.now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let account_id = self.use_token(&txn, token, TokenPurpose::PasswordReset).await?;
        account::Entity::update_many()
            .col_expr(account::Column::PasswordHash, Expr::value(password_hash))
            .col_expr(account::Column::UpdatedAt, Expr::value(now))
            .filter(account::Column::Id.eq(account_id))
            .exec(&txn)
            .await?;
        // Access tokens issued before the new password stop working too.
        let revoked = end_sessions(&txn, account_id, now).await?;
        txn.commit().await?;
        Ok((account_id, revoked))
    }

    /// Records a successful login of `account_id` from `address`. The first time the account
    /// signs in from an address it has not used before (and it has used another), the
    /// `account.login_new_address` event is written with the record.
    pub async fn note_login_address(&self, account_id: Uuid, address: &str) -> Result<bool, IdentityError> {
        if address.is_empty() {
            return Ok(false);
        }
        let address: String = address.chars().take(64).collect();
        let now = self.queue.now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let backend = sea_orm::ConnectionTrait::get_database_backend(&txn);
        let inserted = sea_orm::ConnectionTrait::execute_raw(
            &txn,
            thali_platform::db::statement(
                backend,
                "INSERT INTO login_addresses (account_id, address, first_seen_at, last_seen_at) \
                 VALUES ($1, $2, $3, $3) ON CONFLICT DO NOTHING",
                vec![account_id.into(), address.clone().into(), now.into()],
            ),
        )
        .await?;
        let new = inserted.rows_affected() == 1;
        if !new {
            login_address::Entity::update_many()
                .col_expr(login_address::Column::LastSeenAt, Expr::value(now))
                .filter(login_address::Column::AccountId.eq(account_id))
                .filter(login_address::Column::Address.eq(address.clone()))
                .exec(&txn)
                .await?;
        }
        let known = login_address::Entity::find()
            .filter(login_address::Column::AccountId.eq(account_id))
            .count(&txn)
            .await?;
        let tell = new && known > 1;
        if tell {
            let found = account::Entity::find_by_id(account_id)
                .one(&txn)
                .await?
                .ok_or(IdentityError::Unauthenticated)?;
            let event = thali_platform::events::new_event(
                crate::workers::SERVICE,
                format!("account:{account_id}"),
                Some(account_id),
                Payload::AccountLoginNewAddress(AccountLoginNewAddress {
                    account_id: account_id.to_string(),
                    email: found.email,
                    ip_address: address,
                }),
                now,
            );
            thali_platform::events::publish(&txn, &self.queue, &event).await?;
        }
        txn.commit().await?;
        Ok(tell)
    }

    /// Someone tried to register `email` (normalised), which has an account: its owner is told
    /// by email (`account.registration_attempted`). Returns whether the account exists.
    pub async fn registration_attempted(&self, email: &str) -> Result<bool, IdentityError> {
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let Some(found) = account::Entity::find()
            .filter(account::Column::Email.eq(email))
            .one(&txn)
            .await?
        else {
            return Ok(false);
        };
        let event = thali_platform::events::new_event(
            crate::workers::SERVICE,
            format!("account:{}", found.id),
            Some(found.id),
            Payload::AccountRegistrationAttempted(AccountRegistrationAttempted {
                account_id: found.id.to_string(),
                email: found.email,
            }),
            self.queue.now(),
        );
        thali_platform::events::publish(&txn, &self.queue, &event).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// The account with this id.
    pub async fn account(&self, id: Uuid) -> Result<Account, IdentityError> {
        account::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or(IdentityError::Unauthenticated)?
            .try_into()
    }

    /// The account with this (normalised) email and its password hash.
    pub async fn account_for_login(&self, email: &str) -> Result<Option<(Account, String)>, IdentityError> {
        match account::Entity::find()
            .filter(account::Column::Email.eq(email))
            .one(&self.db)
            .await?
        {
            Some(m) => {
                let hash = m.password_hash.clone();
                Ok(Some((m.try_into()?, hash)))
            }
            None => Ok(None),
        }
    }

    /// The longest lock still running on any of `keys`.
    pub async fn throttled(&self, keys: &[String]) -> Result<Option<Duration>, IdentityError> {
        let now = Utc::now();
        let rows = login_throttle::Entity::find()
            .filter(login_throttle::Column::ThrottleKey.is_in(keys.iter().cloned()))
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.locked_until)
            .filter(|until| *until > now)
            .map(|until| (until - now).to_std().unwrap_or_default())
            .max())
    }

    /// Counts a failed login against `key` (atomically) and locks it once it has failed more
    /// than `allowed` times. Returns the failures counted so far and the lock, if any.
    pub async fn record_failure(&self, key: &str, allowed: i32) -> Result<(i32, Option<Duration>), IdentityError> {
        let now = Utc::now();
        login_throttle::Entity::delete_many()
            .filter(login_throttle::Column::ThrottleKey.eq(key))
            .filter(login_throttle::Column::LastFailureAt.lt(now - FAILURE_MEMORY))
            .filter(
                login_throttle::Column::LockedUntil
                    .is_null()
                    .or(login_throttle::Column::LockedUntil.lt(now)),
            )
            .exec(&self.db)
            .await?;
        let row = login_throttle::ActiveModel {
            throttle_key: Set(key.to_owned()),
            failures: Set(1),
            last_failure_at: Set(now),
            locked_until: Set(None),
        };
        login_throttle::Entity::insert(row)
            .on_conflict(
                OnConflict::column(login_throttle::Column::ThrottleKey)
                    .value(
                        login_throttle::Column::Failures,
                        Expr::col((login_throttle::Entity, login_throttle::Column::Failures)).add(1),
                    )
                    .value(login_throttle::Column::LastFailureAt, now)
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        let failures = login_throttle::Entity::find_by_id(key.to_owned())
            .one(&self.db)
            .await?
            .map(|r| r.failures)
            .unwrap_or(1);
        let lock = lockout(failures, allowed);
        if let Some(lock) = lock {
            let until = now + chrono::Duration::from_std(lock).unwrap_or_default();
            login_throttle::Entity::update_many()
                .col_expr(login_throttle::Column::LockedUntil, Expr::value(until))
                .filter(login_throttle::Column::ThrottleKey.eq(key))
                .exec(&self.db)
                .await?;
        }
        Ok((failures, lock))
    }

    /// Forgets the failures of `key` (after a successful login).
    pub async fn clear_failures(&self, key: &str) -> Result<(), IdentityError> {
        login_throttle::Entity::delete_by_id(key.to_owned())
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Starts a refresh-token family for `account_id` (a login).
    pub async fn start_family(&self, account_id: Uuid, address: &str) -> Result<IssuedRefresh, IdentityError> {
        let txn = self.db.begin().await?;
        let issued = self.insert_refresh(&txn, account_id, Uuid::now_v7()).await?;
        audit(
            &txn,
            Entry::new(
                audit_log::account(account_id),
                "login.succeeded",
                format!("account:{account_id}"),
            )
            .from_address(address)
            .with_details(serde_json::json!({"session": issued.family_id})),
        )
        .await?;
        txn.commit().await?;
        Ok(issued)
    }

    /// Records a refused sign-in in the audit trail: `account` when the email has one, `why` the
    /// reason (`bad credentials`, `throttled`, `account not active`). The email itself is not
    /// kept (personal data an erasure could not remove from the chain).
    pub async fn record_login_failure(
        &self,
        account: Option<Uuid>,
        address: &str,
        why: &str,
    ) -> Result<(), IdentityError> {
        let (actor, target) = match account {
            Some(id) => (audit_log::account(id), format!("account:{id}")),
            None => ("anonymous".to_owned(), "account:unknown".to_owned()),
        };
        audit(
            &self.db,
            Entry::new(actor, "login.failed", target)
                .from_address(address)
                .with_details(serde_json::json!({"reason": why})),
        )
        .await?;
        Ok(())
    }

    async fn insert_refresh(
        &self,
        conn: &impl sea_orm::ConnectionTrait,
        account_id: Uuid,
        family_id: Uuid,
    ) -> Result<IssuedRefresh, IdentityError> {
        let token = format!("thali_rt_{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()));
        let now = Utc::now();
        let expires_at = now + chrono::Duration::from_std(REFRESH_TOKEN_TTL).expect("a month fits");
        refresh_token::ActiveModel {
            id: Set(Uuid::now_v7()),
            family_id: Set(family_id),
            account_id: Set(account_id),
            token_hash: Set(sha256_hex(&token)),
            created_at: Set(now),
            expires_at: Set(expires_at),
            used_at: Set(None),
            revoked_at: Set(None),
        }
        .insert(conn)
        .await?;
        Ok(IssuedRefresh {
            token,
            expires_at,
            family_id,
        })
    }

    /// Ends login session `family_id`: its refresh tokens stop working now, and its access
    /// tokens as soon as every verifier has read the revocation (within seconds).
    async fn revoke_family(&self, family_id: Uuid) -> Result<u64, IdentityError> {
        let now = Utc::now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let result = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::RevokedAt, Expr::value(now))
            .filter(refresh_token::Column::FamilyId.eq(family_id))
            .filter(refresh_token::Column::RevokedAt.is_null())
            .exec(&txn)
            .await?;
        record_revocation(&txn, "session", &family_id.to_string(), now).await?;
        txn.commit().await?;
        Ok(result.rows_affected)
    }

    /// Disables account `id` (an admin's decision): it can no longer sign in, every refresh
    /// token is revoked and every access token issued so far is refused. Returns the account
    /// and whether it was active until now.
    pub async fn disable_account(
        &self,
        id: Uuid,
        by: impl Into<Acting>,
        reason: &str,
    ) -> Result<(Account, bool), IdentityError> {
        let now = Utc::now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let by: Acting = by.into();
        lock_for_admin_action(&txn, by.id, id).await?;
        let changed = account::Entity::update_many()
            .col_expr(account::Column::Status, Expr::value(AccountStatus::Disabled.as_str()))
            .col_expr(account::Column::UpdatedAt, Expr::value(now))
            .filter(account::Column::Id.eq(id))
            .filter(account::Column::Status.ne(AccountStatus::Disabled.as_str()))
            .exec(&txn)
            .await?
            .rows_affected
            == 1;
        if changed {
            end_sessions(&txn, id, now).await?;
            audit(
                &txn,
                Entry::new(
                    audit_log::account(by.id),
                    "admin.account_disabled",
                    format!("account:{id}"),
                )
                .from_address(&by.address)
                .with_details(serde_json::json!({"reason": reason, "sessions_ended": true})),
            )
            .await?;
        }
        commit_with_account(txn, id, changed).await
    }

    /// Enables the disabled account `id` again (an admin's decision). An erased account stays
    /// erased. The tokens it held when it was disabled stay refused (their revocation stands);
    /// it signs in afresh. Returns the account and whether it was disabled until now.
    pub async fn enable_account(
        &self,
        id: Uuid,
        by: impl Into<Acting>,
        reason: &str,
    ) -> Result<(Account, bool), IdentityError> {
        let now = Utc::now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let by: Acting = by.into();
        lock_for_admin_action(&txn, by.id, id).await?;
        let found = live_account_locked(&txn, id).await?;
        let changed = account::Entity::update_many()
            .col_expr(account::Column::Status, Expr::value(AccountStatus::Active.as_str()))
            .col_expr(account::Column::UpdatedAt, Expr::value(now))
            .filter(account::Column::Id.eq(id))
            .filter(account::Column::Status.eq(AccountStatus::Disabled.as_str()))
            .filter(account::Column::ErasedAt.is_null())
            .exec(&txn)
            .await?
            .rows_affected
            == 1;
        if changed {
            audit(
                &txn,
                Entry::new(
                    audit_log::account(by.id),
                    "admin.account_enabled",
                    format!("account:{id}"),
                )
                .from_address(&by.address)
                .with_details(serde_json::json!({"reason": reason, "status_before": found.status})),
            )
            .await?;
        }
        commit_with_account(txn, id, changed).await
    }

    /// Gives account `id` the role `role` (an admin's decision). When the role changes, every
    /// session of the account ends and every token it holds is refused from now on (its tokens
    /// carry its role), and the change is audited with the role before and after. An erased
    /// account keeps the role it had. Returns the account and whether its role changed.
    pub async fn set_account_role(
        &self,
        id: Uuid,
        role: Role,
        by: impl Into<Acting>,
        reason: &str,
    ) -> Result<(Account, bool), IdentityError> {
        let now = Utc::now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        // Locked: two admins changing the role at once record what each really changed.
        let by: Acting = by.into();
        lock_for_admin_action(&txn, by.id, id).await?;
        let found = live_account_locked(&txn, id).await?;
        let changed = account::Entity::update_many()
            .col_expr(account::Column::Role, Expr::value(role.as_str()))
            .col_expr(account::Column::UpdatedAt, Expr::value(now))
            .filter(account::Column::Id.eq(id))
            .filter(account::Column::Role.ne(role.as_str()))
            .exec(&txn)
            .await?
            .rows_affected
            == 1;
        if changed {
            end_sessions(&txn, id, now).await?;
            audit(
                &txn,
                Entry::new(audit_log::account(by.id), "admin.role_changed", format!("account:{id}"))
                    .from_address(&by.address)
                    .with_details(serde_json::json!({
                        "reason": reason,
                        "from": found.role,
                        "to": role.as_str(),
                        "sessions_ended": true,
                    })),
            )
            .await?;
        }
        commit_with_account(txn, id, changed).await
    }

    /// Erases `id` at its owner's request (ADR 0032), in one transaction: the account row keeps
    /// its id (orders, bookings and the audit trail name it) with every personal field
    /// anonymised and its password unusable; its sessions, emailed tokens, known sign-in
    /// addresses and idempotency records go; its API keys are revoked and unnamed; every token it
    /// holds is refused from now on (a revocation); the delivered events about it, which carried
    /// its email, are forgotten; and `account.erased` tells every other service. Erasing an
    /// erased account answers when it was erased and does nothing again.
    pub async fn erase_account(&self, id: Uuid, address: &str) -> Result<DateTime<Utc>, IdentityError> {
        let now = self.queue.now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let found = account::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .ok_or(IdentityError::AccountNotFound)?;
        if let Some(at) = found.erased_at {
            return Ok(at);
        }
        let known_addresses: Vec<String> = login_address::Entity::find()
            .filter(login_address::Column::AccountId.eq(id))
            .all(&txn)
            .await?
            .into_iter()
            .map(|a| a.address)
            .collect();
        account::Entity::update_many()
            .col_expr(account::Column::Email, Expr::value(crate::domain::erased_email(id)))
            .col_expr(
                account::Column::DisplayName,
                Expr::value(crate::domain::ERASED_DISPLAY_NAME),
            )
            .col_expr(account::Column::PasswordHash, Expr::value("!erased"))
            .col_expr(account::Column::Status, Expr::value(AccountStatus::Disabled.as_str()))
            .col_expr(
                account::Column::EmailVerifiedAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(account::Column::ErasedAt, Expr::value(now))
            .col_expr(account::Column::UpdatedAt, Expr::value(now))
            .filter(account::Column::Id.eq(id))
            .exec(&txn)
            .await?;
        refresh_token::Entity::delete_many()
            .filter(refresh_token::Column::AccountId.eq(id))
            .exec(&txn)
            .await?;
        account_token::Entity::delete_many()
            .filter(account_token::Column::AccountId.eq(id))
            .exec(&txn)
            .await?;
        login_address::Entity::delete_many()
            .filter(login_address::Column::AccountId.eq(id))
            .exec(&txn)
            .await?;
        let throttled: Vec<String> = known_addresses
            .iter()
            .map(|a| crate::domain::throttle_keys(&found.email, a).0)
            .collect();
        if !throttled.is_empty() {
            login_throttle::Entity::delete_many()
                .filter(login_throttle::Column::ThrottleKey.is_in(throttled))
                .exec(&txn)
                .await?;
        }
        api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(now))
            .filter(api_key::Column::OwnerId.eq(id))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(&txn)
            .await?;
        api_key::Entity::update_many()
            .col_expr(api_key::Column::Name, Expr::value("erased"))
            .filter(api_key::Column::OwnerId.eq(id))
            .exec(&txn)
            .await?;
        // Registration's idempotency records are kept under the email.
        txn.execute_raw(thali_platform::db::statement(
            txn.get_database_backend(),
            "DELETE FROM identity_idempotency WHERE subject IN ($1, $2)",
            vec![found.email.clone().into(), id.to_string().into()],
        ))
        .await?;
        record_revocation(&txn, "account", &id.to_string(), now).await?;
        let aggregate = format!("account:{id}");
        thali_platform::privacy::forget_delivered_events(
            &txn,
            crate::workers::SERVICE,
            std::slice::from_ref(&aggregate),
        )
        .await?;
        let event = thali_platform::events::new_event(
            crate::workers::SERVICE,
            aggregate,
            Some(id),
            Payload::AccountErased(AccountErased {
                account_id: id.to_string(),
            }),
            now,
        );
        thali_platform::events::publish(&txn, &self.queue, &event).await?;
        audit(
            &txn,
            Entry::new(audit_log::account(id), "account.erased", format!("account:{id}"))
                .from_address(address)
                .with_details(serde_json::json!({"sessions_ended": true, "api_keys_revoked": true})),
        )
        .await?;
        txn.commit().await?;
        Ok(now)
    }

    /// What identity holds about `id`, for its owner's export (ADR 0032): the account, its
    /// sessions, API keys (never their secrets) and the addresses it signed in from.
    pub async fn personal_data(&self, id: Uuid) -> Result<serde_json::Value, DbErr> {
        let Some(account) = account::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(serde_json::json!({}));
        };
        let sessions = refresh_token::Entity::find()
            .filter(refresh_token::Column::AccountId.eq(id))
            .order_by_asc(refresh_token::Column::CreatedAt)
            .all(&self.db)
            .await?;
        let keys = api_key::Entity::find()
            .filter(api_key::Column::OwnerId.eq(id))
            .order_by_asc(api_key::Column::CreatedAt)
            .all(&self.db)
            .await?;
        let addresses = login_address::Entity::find()
            .filter(login_address::Column::AccountId.eq(id))
            .all(&self.db)
            .await?;
        Ok(serde_json::json!({
            "account": {
                "id": account.id,
                "email": account.email,
                "display_name": account.display_name,
                "role": account.role,
                "status": account.status,
                "created_at": account.created_at,
                "updated_at": account.updated_at,
                "email_verified_at": account.email_verified_at,
                "erased_at": account.erased_at,
            },
            "sessions": sessions.iter().map(|t| serde_json::json!({
                "session": t.family_id,
                "created_at": t.created_at,
                "expires_at": t.expires_at,
                "used_at": t.used_at,
                "revoked_at": t.revoked_at,
            })).collect::<Vec<_>>(),
            "api_keys": keys.iter().map(|k| serde_json::json!({
                "id": k.id,
                "name": k.name,
                "prefix": k.prefix,
                "scopes": k.scopes,
                "created_at": k.created_at,
                "expires_at": k.expires_at,
                "last_used_at": k.last_used_at,
                "revoked_at": k.revoked_at,
            })).collect::<Vec<_>>(),
            "sign_in_addresses": addresses.iter().map(|a| serde_json::json!({
                "address": a.address,
                "first_seen_at": a.first_seen_at,
                "last_seen_at": a.last_seen_at,
            })).collect::<Vec<_>>(),
        }))
    }

    /// Revocations after `after_id` that still matter, oldest first, at most `limit`.
    pub async fn revocations_after(&self, after_id: i64, limit: u64) -> Result<Vec<revocation::Model>, IdentityError> {
        Ok(revocation::Entity::find()
            .filter(revocation::Column::Id.gt(after_id))
            .filter(revocation::Column::ExpiresAt.gt(Utc::now()))
            .order_by_asc(revocation::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// Housekeeping: deletes revocations no token can outlive any more. Returns how many.
    pub async fn prune_revocations(&self, now: DateTime<Utc>) -> Result<u64, DbErr> {
        let done = revocation::Entity::delete_many()
            .filter(revocation::Column::ExpiresAt.lt(now))
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected)
    }

    /// Trades a refresh token for a new one in the same family. A token that was already used
    /// revokes its family: whoever holds the newer token (thief or owner) must log in again.
    /// Returns the account, the new token, and whether a reuse was detected.
    pub async fn rotate(&self, token: &str) -> Result<(Account, IssuedRefresh), RotateError> {
        let now = Utc::now();
        let found = refresh_token::Entity::find()
            .filter(refresh_token::Column::TokenHash.eq(sha256_hex(token)))
            .one(&self.db)
            .await?
            .ok_or(RotateError::Invalid)?;
        if found.revoked_at.is_some() || found.expires_at <= now {
            return Err(RotateError::Invalid);
        }
        if found.used_at.is_some() {
            let revoked = self.revoke_family(found.family_id).await?;
            return Err(RotateError::Reused {
                account_id: found.account_id,
                family_id: found.family_id,
                revoked,
            });
        }
        let txn = self.db.begin().await?;
        // Only one of two racing rotations of the same token can flip used_at.
        let claimed = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::UsedAt, Expr::value(now))
            .filter(refresh_token::Column::Id.eq(found.id))
            .filter(refresh_token::Column::UsedAt.is_null())
            .filter(refresh_token::Column::RevokedAt.is_null())
            .exec(&txn)
            .await?;
        if claimed.rows_affected != 1 {
            drop(txn);
            let revoked = self.revoke_family(found.family_id).await?;
            return Err(RotateError::Reused {
                account_id: found.account_id,
                family_id: found.family_id,
                revoked,
            });
        }
        let issued = self.insert_refresh(&txn, found.account_id, found.family_id).await?;
        txn.commit().await?;
        let account = self.account(found.account_id).await?;
        Ok((account, issued))
    }

    /// Whether login session `family_id` still has a live refresh token (not revoked, not
    /// expired): tokens of a revoked or ended session are not renewed.
    pub async fn session_is_live(&self, family_id: Uuid) -> Result<bool, IdentityError> {
        let live = refresh_token::Entity::find()
            .filter(refresh_token::Column::FamilyId.eq(family_id))
            .filter(refresh_token::Column::RevokedAt.is_null())
            .filter(refresh_token::Column::ExpiresAt.gt(Utc::now()))
            .one(&self.db)
            .await?;
        Ok(live.is_some())
    }

    /// Revokes the family of `token`; an unknown token is not an error (logout is idempotent).
    pub async fn logout(&self, token: &str) -> Result<Option<Uuid>, IdentityError> {
        let found = refresh_token::Entity::find()
            .filter(refresh_token::Column::TokenHash.eq(sha256_hex(token)))
            .one(&self.db)
            .await?;
        match found {
            Some(row) => {
                self.revoke_family(row.family_id).await?;
                Ok(Some(row.account_id))
            }
            None => Ok(None),
        }
    }

    /// Creates an API key for `owner`; returns it and the whole secret (shown once).
    pub async fn create_api_key(
        &self,
        owner: impl Into<KeyFor>,
        name: &str,
        scopes: &[String],
        expires_at: Option<DateTime<Utc>>,
        rate_limit_per_minute: Option<i32>,
        idem: Option<&Idempotency>,
    ) -> Result<(ApiKey, String), IdentityError> {
        const SCOPE: &str = "api_key";
        let KeyFor { owner, by } = owner.into();
        let subject = owner.to_string();
        if let Some(idem) = idem
            && let Some(id) = self.replay(SCOPE, &subject, idem).await?
        {
            return self.reissue_api_key_secret(id).await;
        }
        account::Entity::find_by_id(owner)
            .one(&self.db)
            .await?
            .ok_or(IdentityError::ApiKeyNotFound)?;
        for _ in 0..3 {
            let prefix = random_alphanumeric(12);
            let secret = api_key_secret(&prefix);
            let id = Uuid::now_v7();
            let row = api_key::ActiveModel {
                id: Set(id),
                owner_id: Set(owner),
                name: Set(name.to_owned()),
                prefix: Set(prefix),
                key_hash: Set(sha256_hex(&secret)),
                scopes: Set(scopes.join(" ")),
                created_at: Set(Utc::now()),
                expires_at: Set(expires_at),
                last_used_at: Set(None),
                revoked_at: Set(None),
                rate_limit_per_minute: Set(rate_limit_per_minute),
            };
            let txn = self.db.begin().await?;
            if let Some(idem) = idem
                && !KEYS.claim(&txn, SCOPE, &subject, idem, id, Utc::now()).await?
            {
                // A concurrent request with the same key committed first: answer with its key.
                drop(txn);
                let id = self
                    .replay(SCOPE, &subject, idem)
                    .await?
                    .ok_or(IdentityError::Unavailable)?;
                return self.reissue_api_key_secret(id).await;
            }
            match row.insert(&txn).await {
                Ok(model) => {
                    audit(
                        &txn,
                        Entry::new(audit_log::account(by), "api_key.created", format!("api_key:{id}")).with_details(
                            serde_json::json!({
                                "owner": owner,
                                "by_admin": by != owner,
                                "scopes": scopes,
                                "expires_at": expires_at,
                                "rate_limit_per_minute": rate_limit_per_minute,
                            }),
                        ),
                    )
                    .await?;
                    txn.commit().await?;
                    return Ok((model.into(), secret));
                }
                // A prefix collision (1 in 62^12): draw again.
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(IdentityError::Internal("could not draw a unique API key prefix".into()))
    }

    /// A retried creation: the key made the first time, with a new secret. The first secret
    /// was kept only as a hash, so it cannot be shown again; it stops working now, so no key
    /// lives on whose secret nobody holds (ADR 0025). A key revoked since comes back without a
    /// secret.
    async fn reissue_api_key_secret(&self, id: Uuid) -> Result<(ApiKey, String), IdentityError> {
        let found = api_key::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or(IdentityError::ApiKeyNotFound)?;
        if found.revoked_at.is_some() {
            return Ok((found.into(), String::new()));
        }
        let secret = api_key_secret(&found.prefix);
        api_key::Entity::update_many()
            .col_expr(api_key::Column::KeyHash, Expr::value(sha256_hex(&secret)))
            .filter(api_key::Column::Id.eq(id))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        Ok((found.into(), secret))
    }

    /// API keys of `owner`, newest first.
    pub async fn api_keys(&self, owner: Uuid) -> Result<Vec<ApiKey>, IdentityError> {
        let rows = api_key::Entity::find()
            .filter(api_key::Column::OwnerId.eq(owner))
            .order_by_desc(api_key::Column::Id)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Revokes key `id`, if `caller` owns it or is an admin. Unknown and foreign keys are both
    /// "not found", so ids of other accounts' keys cannot be probed.
    pub async fn revoke_api_key(&self, caller: Uuid, caller_is_admin: bool, id: Uuid) -> Result<ApiKey, IdentityError> {
        let found = api_key::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or(IdentityError::ApiKeyNotFound)?;
        if found.owner_id != caller && !caller_is_admin {
            return Err(IdentityError::ApiKeyNotFound);
        }
        if found.revoked_at.is_some() {
            return Ok(found.into());
        }
        let mut row: api_key::ActiveModel = found.into();
        row.revoked_at = Set(Some(Utc::now()));
        let txn = self.db.begin().await?;
        let revoked = row.update(&txn).await?;
        audit(
            &txn,
            Entry::new(audit_log::account(caller), "api_key.revoked", format!("api_key:{id}"))
                .with_details(serde_json::json!({"owner": revoked.owner_id, "by_admin": caller_is_admin && revoked.owner_id != caller})),
        )
        .await?;
        txn.commit().await?;
        Ok(revoked.into())
    }

    /// Resolves a presented key: it must exist, match its hash, be unrevoked and unexpired, and
    /// its owner must be active. Notes the use (at most once a minute per key).
    pub async fn verify_api_key(&self, presented: &PresentedKey<'_>) -> Result<(ApiKey, Account), IdentityError> {
        let found = api_key::Entity::find()
            .filter(api_key::Column::Prefix.eq(presented.prefix))
            .one(&self.db)
            .await?
            .ok_or(IdentityError::BadApiKey)?;
        let presented_hash = sha256_hex(presented.whole);
        if !constant_time_eq(presented_hash.as_bytes(), found.key_hash.as_bytes()) {
            return Err(IdentityError::BadApiKey);
        }
        let now = Utc::now();
        if found.revoked_at.is_some() || found.expires_at.is_some_and(|e| e <= now) {
            return Err(IdentityError::BadApiKey);
        }
        // An owner that is gone makes the key invalid; a database that does not answer does not.
        let owner = self.account(found.owner_id).await.map_err(|e| match e {
            IdentityError::Unauthenticated => IdentityError::BadApiKey,
            other => other,
        })?;
        if owner.status != AccountStatus::Active {
            return Err(IdentityError::BadApiKey);
        }
        if found
            .last_used_at
            .is_none_or(|t| now - t > chrono::Duration::minutes(1))
        {
            api_key::Entity::update_many()
                .col_expr(api_key::Column::LastUsedAt, Expr::value(now))
                .filter(api_key::Column::Id.eq(found.id))
                .exec(&self.db)
                .await?;
        }
        Ok((found.into(), owner))
    }
}

/// Why a refresh token was refused.
#[derive(Debug)]
pub enum RotateError {
    /// Unknown, expired or revoked.
    Invalid,
    /// Already used once: its family has been revoked.
    Reused {
        account_id: Uuid,
        family_id: Uuid,
        revoked: u64,
    },
    Store(IdentityError),
}

impl From<DbErr> for RotateError {
    fn from(e: DbErr) -> Self {
        RotateError::Store(e.into())
    }
}

impl From<IdentityError> for RotateError {
    fn from(e: IdentityError) -> Self {
        RotateError::Store(e)
    }
}
