//! A creator's own gateway account: the shape of its key pair and webhook secret, and how a
//! secret may be shown. Pure: no I/O.
use thali_platform::errors::Violation;

use super::PaymentsError;

/// The table and columns whose values are encrypted (they are the AAD of each value, ADR 0015).
pub const ACCOUNTS_TABLE: &str = "payment_accounts";
pub const KEY_SECRET_COLUMN: &str = "key_secret";
pub const WEBHOOK_SECRET_COLUMN: &str = "webhook_secret";

/// A creator's key pair and webhook secret as they asked to connect it, checked for shape.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountSecrets {
    pub key_id: String,
    pub key_secret: String,
    pub webhook_secret: String,
}

impl std::fmt::Debug for AccountSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSecrets")
            .field("key_id", &self.key_id)
            .field("key_secret", &"***")
            .field("webhook_secret", &"***")
            .finish()
    }
}

impl AccountSecrets {
    /// Razorpay's key ids are `rzp_test_…` or `rzp_live_…` followed by letters and digits;
    /// secrets are printable ASCII without spaces. Every violation is reported at once; a
    /// violation never repeats the secret it is about.
    pub fn parse(key_id: &str, key_secret: &str, webhook_secret: &str) -> Result<Self, PaymentsError> {
        let mut violations = Vec::new();
        let id_ok = ["rzp_test_", "rzp_live_"].iter().any(|prefix| {
            key_id
                .strip_prefix(prefix)
                .is_some_and(|rest| (1..=40).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
        });
        if !id_ok {
            violations.push(Violation::new(
                "key_id",
                "rzp_test_ or rzp_live_ followed by 1 to 40 letters and digits",
            ));
        }
        for (field, secret) in [("key_secret", key_secret), ("webhook_secret", webhook_secret)] {
            if !(8..=128).contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_graphic()) {
                violations.push(Violation::new(
                    field,
                    "8 to 128 printable ASCII characters without spaces",
                ));
            }
        }
        if !violations.is_empty() {
            return Err(PaymentsError::Invalid(violations));
        }
        Ok(Self {
            key_id: key_id.to_owned(),
            key_secret: key_secret.to_owned(),
            webhook_secret: webhook_secret.to_owned(),
        })
    }
}

/// A secret as it may be shown: `••••` and its last four characters (nothing of one shorter than
/// twelve, so at most a third of it ever shows).
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return "••••".to_owned();
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("••••{tail}")
}

/// The REST path a connected account's webhooks are sent to.
pub fn webhook_path(account_id: uuid::Uuid) -> String {
    format!("/api/v1/webhooks/razorpay/{account_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_and_secrets_are_checked_for_shape_and_errors_never_echo_a_secret() {
        assert!(AccountSecrets::parse("rzp_test_AbC123", "s3cr3t-value", "whsec-value").is_ok());
        assert!(AccountSecrets::parse("rzp_live_Z9", "s3cr3t-value", "whsec-value").is_ok());
        let Err(PaymentsError::Invalid(v)) = AccountSecrets::parse("pk_test_1", "short", "has space in it") else {
            panic!("accepted")
        };
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["key_id", "key_secret", "webhook_secret"]);
        assert!(
            v.iter()
                .all(|v| !v.description.contains("short") && !v.description.contains("space in"))
        );
        assert!(AccountSecrets::parse("rzp_test_", "s3cr3t-value", "whsec-value").is_err());
        assert!(AccountSecrets::parse("rzp_test_a-b", "s3cr3t-value", "whsec-value").is_err());
        let debug = format!(
            "{:?}",
            AccountSecrets::parse("rzp_test_A1", "s3cr3t-value", "whsec-value").unwrap()
        );
        assert!(!debug.contains("s3cr3t") && !debug.contains("whsec"), "{debug}");
    }

    #[test]
    fn a_masked_secret_shows_at_most_its_last_four_characters() {
        assert_eq!(mask("abcdefghijklmnop"), "••••mnop");
        assert_eq!(mask("abcdefghijk"), "••••");
        assert_eq!(mask(""), "••••");
    }
}
