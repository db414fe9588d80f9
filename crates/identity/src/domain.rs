//! Identity rules: emails, passwords, roles, API key format and scopes, login throttling. Pure:
//! no I/O, no database, no gRPC.
use std::time::Duration;

use chrono::{DateTime, Utc};
use thali_platform::errors::Violation;
use uuid::Uuid;

pub const EMAIL_MAX: usize = 254;
pub const PASSWORD_MIN: usize = 12;
pub const PASSWORD_MAX: usize = 128;
pub const DISPLAY_NAME_MAX: usize = 80;
pub const KEY_NAME_MAX: usize = 80;
/// Access tokens live a week and are renewed on activity.
pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// A token older than this is renewed when its holder makes a request.
pub const RENEW_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Refresh tokens live 30 days, and each works once.
pub const REFRESH_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Failed logins of one account from one client address before that pair waits (ADR 0006):
/// an attacker elsewhere never makes the owner wait.
pub const PAIR_FAILURES_ALLOWED: i32 = 5;
/// Failed logins from one client address, whatever the accounts, before that address waits.
pub const ADDRESS_FAILURES_ALLOWED: i32 = 30;
/// First lockout; it doubles with every further failure up to [`LOCKOUT_MAX`].
pub const LOCKOUT_BASE: Duration = Duration::from_secs(30);
pub const LOCKOUT_MAX: Duration = Duration::from_secs(3600);
/// Prefix of every partner API key.
pub const API_KEY_PREFIX: &str = "thali_pk_";
/// Scopes a partner API key can hold; each service adds its own.
pub const SCOPES: &[&str] = &["storefront.read", "storefront.write", "booking.read", "booking.write"];

/// Everything that can go wrong in an identity use case.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid request")]
    Invalid(Vec<Violation>),
    #[error("authentication required")]
    Unauthenticated,
    #[error("email or password is wrong")]
    BadCredentials,
    #[error("too many failed logins; try again later")]
    Throttled { retry_after: Duration },
    #[error("the account is not active")]
    AccountInactive,
    #[error("an account with this email exists")]
    EmailTaken,
    #[error("the refresh token is not valid")]
    BadRefreshToken,
    #[error("the API key is not valid")]
    BadApiKey,
    #[error("not allowed")]
    Forbidden,
    #[error("no such API key")]
    ApiKeyNotFound,
    #[error("no such account")]
    AccountNotFound,
    #[error("the idempotency key was used for a different request")]
    IdempotencyKeyReused,
    #[error("the link is not valid: it was used already, has expired, or never existed")]
    BadToken,
    #[error("the password is not the account's")]
    PasswordIncorrect,
    #[error("the account was erased by its owner")]
    AccountErased,
    #[error("the database does not answer")]
    Unavailable,
    #[error("internal: {0}")]
    Internal(String),
}

impl IdentityError {
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::Invalid(vec![Violation::new(field, description)])
    }
}

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Role {
    Buyer,
    Creator,
    RestaurantOwner,
    Admin,
}

impl Role {
    /// Name in tokens and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Buyer => "buyer",
            Role::Creator => "creator",
            Role::RestaurantOwner => "restaurant_owner",
            Role::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "buyer" => Role::Buyer,
            "creator" => Role::Creator,
            "restaurant_owner" => Role::RestaurantOwner,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// Whether an account may sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    Locked,
    Disabled,
    /// Erased by its owner (ADR 0032). Stored as `disabled` with `erased_at` set.
    Erased,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Locked => "locked",
            AccountStatus::Disabled => "disabled",
            AccountStatus::Erased => "erased",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "active" => AccountStatus::Active,
            "locked" => AccountStatus::Locked,
            "disabled" => AccountStatus::Disabled,
            _ => return None,
        })
    }
}

/// The display name an erased account keeps (the column needs one).
pub const ERASED_DISPLAY_NAME: &str = "Erased account";

/// The email an erased account keeps: unique, reserved (`.invalid` never resolves), naming no one.
pub fn erased_email(id: uuid::Uuid) -> String {
    format!("erased-{}@erased.invalid", id.simple())
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub status: AccountStatus,
    pub created_at: DateTime<Utc>,
    /// When the owner followed the verification link.
    pub email_verified_at: Option<DateTime<Utc>>,
}

/// What an emailed token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    VerifyEmail,
    PasswordReset,
}

impl TokenPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenPurpose::VerifyEmail => "verify_email",
            TokenPurpose::PasswordReset => "password_reset",
        }
    }
}

/// How long an emailed token works.
pub const EMAILED_TOKEN_TTL: chrono::TimeDelta = chrono::TimeDelta::minutes(30);

/// Reset requests one address may cause per lockout window before further ones are dropped
/// (quietly: the answer is the same), so the endpoint cannot flood a mailbox.
pub const RESET_REQUESTS_ALLOWED: i32 = 5;

/// A validated registration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NewAccount {
    pub email: String,
    pub display_name: String,
    pub role: Role,
}

/// Trims and lower-cases an email and checks its shape (one `@`, a dot in the domain, no spaces).
pub fn normalize_email(raw: &str) -> Result<String, String> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() || email.len() > EMAIL_MAX {
        return Err(format!("must be 3 to {EMAIL_MAX} characters"));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("must be an email address".into());
    };
    let valid = !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err("must be an email address".into())
    }
}

/// The login-throttle keys of `email` (normalised) from `address`: the pair's (hashed, so any
/// email fits the column and none is stored in clear) and the address's.
pub fn throttle_keys(email: &str, address: &str) -> (String, String) {
    let pair = thali_platform::idempotency::sha256_hex(format!("{email}|{address}").as_bytes());
    (format!("pair:{pair}"), format!("address:{address}"))
}

/// OWASP ASVS length rules: 12–128 characters, no composition rules.
pub fn check_password(password: &str) -> Result<(), String> {
    let len = password.chars().count();
    if len < PASSWORD_MIN {
        return Err(format!("must be at least {PASSWORD_MIN} characters"));
    }
    if len > PASSWORD_MAX {
        return Err(format!("must be at most {PASSWORD_MAX} characters"));
    }
    Ok(())
}

impl NewAccount {
    /// Validates a registration; `role` must be one a person may choose (not admin).
    pub fn parse(email: &str, password: &str, display_name: &str, role: Option<Role>) -> Result<Self, IdentityError> {
        let mut violations = Vec::new();
        let email = normalize_email(email).unwrap_or_else(|why| {
            violations.push(Violation::new("email", why));
            String::new()
        });
        if let Err(why) = check_password(password) {
            violations.push(Violation::new("password", why));
        }
        let display_name = thali_platform::text::field(
            "display_name",
            display_name,
            thali_platform::text::Rules::line(1, DISPLAY_NAME_MAX),
            &mut violations,
        );
        let role = match role {
            Some(r @ (Role::Buyer | Role::Creator | Role::RestaurantOwner)) => r,
            Some(Role::Admin) => {
                violations.push(Violation::new("role", "admins are created by an operator"));
                Role::Buyer
            }
            None => {
                violations.push(Violation::new("role", "must be buyer, creator or restaurant_owner"));
                Role::Buyer
            }
        };
        if violations.is_empty() {
            Ok(Self {
                email,
                display_name,
                role,
            })
        } else {
            Err(IdentityError::Invalid(violations))
        }
    }
}

/// How long a key is locked after `failures` failures, `allowed` of which are free.
pub fn lockout(failures: i32, allowed: i32) -> Option<Duration> {
    if failures < allowed {
        return None;
    }
    let doublings = (failures - allowed).min(16) as u32;
    Some(LOCKOUT_BASE.saturating_mul(1 << doublings).min(LOCKOUT_MAX))
}

/// A partner API key as presented: `thali_pk_<prefix>_<secret>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub prefix: &'a str,
    pub whole: &'a str,
}

/// Splits a presented key; None when it does not have Thali's shape.
pub fn parse_api_key(key: &str) -> Option<PresentedKey<'_>> {
    let rest = key.strip_prefix(API_KEY_PREFIX)?;
    let (prefix, secret) = rest.split_once('_')?;
    let ok = prefix.len() == 12
        && secret.len() == 43
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(PresentedKey { prefix, whole: key })
}

/// Checks requested scopes: known, not repeated, at least one.
pub fn check_scopes(scopes: &[String]) -> Result<Vec<String>, IdentityError> {
    if scopes.is_empty() {
        return Err(IdentityError::invalid("scopes", "name at least one scope"));
    }
    let mut out: Vec<String> = Vec::new();
    for s in scopes {
        if !SCOPES.contains(&s.as_str()) {
            return Err(IdentityError::invalid(
                "scopes",
                format!("unknown scope `{s}`; known: {}", SCOPES.join(", ")),
            ));
        }
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out.sort();
    Ok(out)
}

/// Checks an idempotency key: empty means none (the rule is the platform's).
pub fn parse_idempotency_key(key: &str) -> Result<Option<String>, IdentityError> {
    thali_platform::idempotency::parse_key(key).map_err(|v| IdentityError::Invalid(vec![v]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(normalize_email("  Asha@Example.COM ").unwrap(), "asha@example.com");
        for bad in [
            "",
            "no-at-sign",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            "@x.com",
            "a@.com",
            "a@x.",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_follow_length_rules() {
        assert!(check_password("correct horse battery").is_ok());
        assert!(check_password("short").is_err());
        assert!(check_password(&"x".repeat(129)).is_err());
        assert!(
            check_password("ünïcödé pässwörd").is_ok(),
            "length counts characters, not bytes"
        );
    }

    #[test]
    fn admins_cannot_register_themselves() {
        let err = NewAccount::parse("a@x.com", "long enough password", "A", Some(Role::Admin)).unwrap_err();
        assert!(matches!(err, IdentityError::Invalid(v) if v[0].field == "role"));
        assert!(NewAccount::parse("a@x.com", "long enough password", "A", None).is_err());
        assert_eq!(
            NewAccount::parse("A@X.com", "long enough password", " A ", Some(Role::Creator))
                .unwrap()
                .email,
            "a@x.com"
        );
    }

    #[test]
    fn throttle_keys_fit_their_column_whatever_the_email() {
        let long = format!("{}@example.com", "a".repeat(10_000));
        let (pair, address) = throttle_keys(&long, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff");
        assert!(pair.len() <= 80 && address.len() <= 80, "{pair} {address}");
        assert_ne!(
            throttle_keys("a@x.io", "1.2.3.4").0,
            throttle_keys("a@x.io", "1.2.3.5").0
        );
        assert!(!pair.contains("example"), "no email in clear");
    }

    #[test]
    fn lockout_starts_after_the_allowance_and_doubles_to_a_cap() {
        assert_eq!(lockout(4, 5), None);
        assert_eq!(lockout(5, 5), Some(Duration::from_secs(30)));
        assert_eq!(lockout(6, 5), Some(Duration::from_secs(60)));
        assert_eq!(lockout(8, 5), Some(Duration::from_secs(240)));
        assert_eq!(lockout(40, 5), Some(LOCKOUT_MAX));
    }

    #[test]
    fn api_keys_have_one_shape() {
        let key = format!("thali_pk_AbCdEf123456_{}", "s".repeat(43));
        assert_eq!(parse_api_key(&key).unwrap().prefix, "AbCdEf123456");
        assert!(parse_api_key("thali_pk_short_x").is_none());
        assert!(parse_api_key(&key.replace("thali_pk_", "other_")).is_none());
        assert!(parse_api_key("eyJhbGciOi.jwt.token").is_none());
    }

    #[test]
    fn scopes_must_be_known() {
        assert_eq!(
            check_scopes(&[
                "storefront.write".into(),
                "storefront.read".into(),
                "storefront.read".into()
            ])
            .unwrap(),
            ["storefront.read", "storefront.write"]
        );
        assert!(check_scopes(&[]).is_err());
        assert!(check_scopes(&["admin.everything".into()]).is_err());
    }
}
