//! The payment gateway as the payments service sees it: one method per flow (create an order, read
//! it and its payments, read a payment, capture, refund), domain types that carry gateway ids,
//! amounts, statuses and method names only (never card, VPA, bank or contact data: serde drops
//! those fields), and one error type that says whether trying again makes sense.
//!
//! Every call takes the [`Credentials`] of the account it acts for, because a creator may connect
//! their own Razorpay account while the client (connection pool, timeouts) is shared.
//! [`RazorpayGateway`] speaks Razorpay's HTTP API, to Razorpay itself or to the
//! [sandbox](crate::sandbox).
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod razorpay;

pub use razorpay::RazorpayGateway;

/// The future every [`Gateway`] method returns, so the trait is usable as `Arc<dyn Gateway>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A payment gateway: Razorpay, or anything that speaks like it.
///
/// A call that ends in [`GatewayError::Timeout`] or [`GatewayError::Transport`] may have taken
/// effect at the gateway: read the state back (`fetch_order`, `order_payments`) before repeating
/// a creating call.
pub trait Gateway: Send + Sync + 'static {
    /// Creates an order the buyer then pays in the gateway's checkout.
    fn create_order<'a>(
        &'a self,
        credentials: &'a Credentials,
        order: &'a NewGatewayOrder,
    ) -> BoxFuture<'a, Result<GatewayOrder, GatewayError>>;

    /// Reads an order (status, amount paid, attempts).
    fn fetch_order<'a>(
        &'a self,
        credentials: &'a Credentials,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<GatewayOrder, GatewayError>>;

    /// Every payment attempted on an order, whatever its status.
    fn order_payments<'a>(
        &'a self,
        credentials: &'a Credentials,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<GatewayPayment>, GatewayError>>;

    /// Reads one payment.
    fn fetch_payment<'a>(
        &'a self,
        credentials: &'a Credentials,
        payment_id: &'a str,
    ) -> BoxFuture<'a, Result<GatewayPayment, GatewayError>>;

    /// Captures an authorized payment; `amount_minor` must be the authorized amount.
    fn capture<'a>(
        &'a self,
        credentials: &'a Credentials,
        payment_id: &'a str,
        amount_minor: i64,
        currency: &'a str,
    ) -> BoxFuture<'a, Result<GatewayPayment, GatewayError>>;

    /// Refunds `amount_minor` of a captured payment, or all that is left of it when `None`.
    /// `receipt` (at most 40 characters) is Thali's name for the refund: the gateway keeps it,
    /// so a refund whose answer was lost can be found again with [`Gateway::payment_refunds`].
    fn refund<'a>(
        &'a self,
        credentials: &'a Credentials,
        payment_id: &'a str,
        amount_minor: Option<i64>,
        receipt: Option<&'a str>,
    ) -> BoxFuture<'a, Result<GatewayRefund, GatewayError>>;

    /// Every refund of a payment, with its receipt.
    fn payment_refunds<'a>(
        &'a self,
        credentials: &'a Credentials,
        payment_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<GatewayRefund>, GatewayError>>;
}

/// An API key or webhook secret: shown as `***` by Debug and Display, so it cannot reach a log
/// by accident (the platform's [`thali_platform::Secret`]).
pub type KeySecret = thali_platform::Secret<String>;

/// The account a call acts for: the platform's, or a creator's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub key_id: String,
    pub key_secret: KeySecret,
}

impl Credentials {
    pub fn new(key_id: impl Into<String>, key_secret: impl Into<String>) -> Self {
        Self {
            key_id: key_id.into(),
            key_secret: KeySecret::new(key_secret.into()),
        }
    }
}

/// The platform's own gateway account: it takes every payment of a store that connected none.
#[derive(Clone, Debug)]
pub struct PlatformAccount {
    /// `razorpay`, or `sandbox` when the platform runs on its built-in sandbox.
    pub gateway: String,
    pub credentials: Credentials,
    /// Signs the account's webhooks.
    pub webhook_secret: KeySecret,
}

/// Razorpay's limits on an order's receipt and notes.
pub const MAX_RECEIPT_CHARS: usize = 40;
pub const MAX_NOTES: usize = 15;

/// What we ask the gateway to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewGatewayOrder {
    pub amount_minor: i64,
    /// ISO 4217, e.g. `INR`.
    pub currency: String,
    /// Our reference (at most 40 characters), shown in the gateway's dashboard.
    pub receipt: String,
    /// At most 15 pairs.
    pub notes: BTreeMap<String, String>,
}

impl NewGatewayOrder {
    /// Razorpay's shape rules, checked before a call is spent on them.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let refuse = |field: &str, description: String| {
            Err(GatewayError::BadRequest {
                code: "BAD_REQUEST_ERROR".into(),
                description,
                field: Some(field.into()),
                reason: Some("input_validation_failed".into()),
            })
        };
        if self.amount_minor < 1 {
            return refuse("amount", "The amount must be at least 1 minor unit.".into());
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return refuse("currency", "The currency must be an ISO 4217 code.".into());
        }
        if self.receipt.chars().count() > MAX_RECEIPT_CHARS {
            return refuse(
                "receipt",
                format!("The receipt may not be greater than {MAX_RECEIPT_CHARS} characters."),
            );
        }
        if self.notes.len() > MAX_NOTES {
            return refuse(
                "notes",
                format!("Number of fields in notes should be less than or equal to {MAX_NOTES}"),
            );
        }
        Ok(())
    }
}

/// Defines a gateway status: known values as variants, anything else kept as `Other(text)` so a
/// new status from the gateway does not break decoding.
macro_rules! gateway_status {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)+
            /// A status this code does not know yet.
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $($text => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Ok(Self::from(text.as_str()))
            }
        }
    };
}

gateway_status!(
    /// `created` → `attempted` (a payment was tried) → `paid` (a payment was captured; final).
    GatewayOrderStatus {
        Created => "created",
        Attempted => "attempted",
        Paid => "paid",
    }
);

gateway_status!(
    /// A payment's status at the gateway.
    GatewayPaymentStatus {
        Created => "created",
        Authorized => "authorized",
        Captured => "captured",
        Refunded => "refunded",
        Failed => "failed",
    }
);

gateway_status!(
    /// A refund's status at the gateway.
    GatewayRefundStatus {
        Pending => "pending",
        Processed => "processed",
        Failed => "failed",
    }
);

/// An order as the gateway has it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct GatewayOrder {
    pub id: String,
    pub amount: i64,
    pub amount_paid: i64,
    pub amount_due: i64,
    pub currency: String,
    #[serde(default)]
    pub receipt: Option<String>,
    pub status: GatewayOrderStatus,
    #[serde(default)]
    pub attempts: u32,
    /// Unix seconds.
    pub created_at: i64,
}

/// A payment as the gateway has it: ids, amounts, status, method name and failure reason only.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct GatewayPayment {
    pub id: String,
    #[serde(default)]
    pub order_id: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub status: GatewayPaymentStatus,
    #[serde(default)]
    pub captured: bool,
    /// `upi`, `card`, `netbanking`, … (the name only).
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub amount_refunded: i64,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub error_description: Option<String>,
    #[serde(default)]
    pub error_source: Option<String>,
    #[serde(default)]
    pub error_step: Option<String>,
    #[serde(default)]
    pub error_reason: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// A refund as the gateway has it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct GatewayRefund {
    pub id: String,
    pub payment_id: String,
    pub amount: i64,
    pub status: GatewayRefundStatus,
    /// Thali's name for the refund, as sent.
    #[serde(default)]
    pub receipt: Option<String>,
}

/// Why a gateway call did not give an answer we can use.
///
/// No variant ever holds a key secret or a request/response body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No complete answer within the client's timeout (the call may still have taken effect).
    #[error("the gateway did not answer in time")]
    Timeout,
    /// HTTP 429.
    #[error("the gateway is rate limiting this account")]
    RateLimited { retry_after: Option<Duration> },
    /// HTTP 5xx.
    #[error("the gateway failed (HTTP {status}): {code}: {description}")]
    Server {
        status: u16,
        code: String,
        description: String,
    },
    /// HTTP 400/422 and other refusals of the request itself: repeating it will not help.
    #[error("the gateway refused the request: {code}: {description}")]
    BadRequest {
        code: String,
        description: String,
        field: Option<String>,
        reason: Option<String>,
    },
    /// HTTP 401: wrong key id or secret.
    #[error("the gateway refused the account's credentials")]
    Unauthorized,
    /// HTTP 404, or Razorpay's 400 "The id provided does not exist" (also for another account's id).
    #[error("the gateway does not know this id")]
    NotFound,
    /// The connection failed (refused, reset, TLS).
    #[error("could not reach the gateway: {0}")]
    Transport(String),
    /// The answer was not what the API documents.
    #[error("could not read the gateway's answer: {0}")]
    Decode(String),
}

impl GatewayError {
    /// Whether the same call may succeed later: timeouts, 429, 5xx and connection failures.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::RateLimited { .. } | Self::Server { .. } | Self::Transport(_)
        )
    }

    /// How long the gateway asked us to wait (`Retry-After` on a 429), when it said.
    pub fn backoff_hint(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// A short stable label for metrics and logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::RateLimited { .. } => "rate_limited",
            Self::Server { .. } => "server_error",
            Self::BadRequest { .. } => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::Transport(_) => "transport",
            Self::Decode(_) => "decode",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_secret_never_prints() {
        let credentials = Credentials::new("rzp_test_abc", "very-secret");
        let shown = format!("{credentials:?} {}", credentials.key_secret);
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("rzp_test_abc") && shown.contains("***"));
    }

    #[test]
    fn statuses_keep_unknown_values() {
        let status: GatewayPaymentStatus = serde_json::from_str(r#""captured""#).unwrap();
        assert_eq!(status, GatewayPaymentStatus::Captured);
        let status: GatewayPaymentStatus = serde_json::from_str(r#""disputed""#).unwrap();
        assert_eq!(status, GatewayPaymentStatus::Other("disputed".into()));
        assert_eq!(serde_json::to_string(&status).unwrap(), r#""disputed""#);
        assert_eq!(GatewayOrderStatus::from("paid"), GatewayOrderStatus::Paid);
        assert_eq!(GatewayRefundStatus::from("processed").as_str(), "processed");
    }

    #[test]
    fn a_payment_drops_card_and_contact_data() {
        let payment: GatewayPayment = serde_json::from_str(
            r#"{"id":"pay_1","entity":"payment","amount":5000,"currency":"INR","status":"failed",
                "order_id":"order_1","method":"card","captured":false,"amount_refunded":0,
                "card":{"last4":"1111","network":"Visa"},"card_id":"card_1","vpa":"a@b","bank":"HDFC",
                "email":"a@example.com","contact":"+919999999999","notes":[],
                "error_code":"BAD_REQUEST_ERROR","error_description":"declined","error_source":"bank",
                "error_step":"payment_authorization","error_reason":"payment_failed","created_at":1700000000}"#,
        )
        .unwrap();
        assert_eq!(payment.method.as_deref(), Some("card"));
        assert_eq!(payment.error_reason.as_deref(), Some("payment_failed"));
        let shown = format!("{payment:?}");
        for leaked in ["1111", "a@b", "HDFC", "example.com", "+91"] {
            assert!(!shown.contains(leaked), "{leaked} in {shown}");
        }
    }

    #[test]
    fn an_order_shape_is_checked_before_any_call() {
        let mut order = NewGatewayOrder {
            amount_minor: 50_000,
            currency: "INR".into(),
            receipt: "r".repeat(40),
            notes: (0..15).map(|i| (format!("k{i}"), "v".into())).collect(),
        };
        assert_eq!(order.validate(), Ok(()));
        order.receipt.push('r');
        assert!(matches!(order.validate(), Err(GatewayError::BadRequest { field: Some(f), .. }) if f == "receipt"));
        order.receipt.pop();
        order.notes.insert("k15".into(), "v".into());
        assert!(matches!(order.validate(), Err(GatewayError::BadRequest { field: Some(f), .. }) if f == "notes"));
    }

    #[test]
    fn retryable_errors_are_the_transient_ones() {
        assert!(GatewayError::Timeout.is_retryable());
        let limited = GatewayError::RateLimited {
            retry_after: Some(Duration::from_secs(2)),
        };
        assert!(limited.is_retryable());
        assert_eq!(limited.backoff_hint(), Some(Duration::from_secs(2)));
        assert!(
            GatewayError::Server {
                status: 503,
                code: "SERVER_ERROR".into(),
                description: String::new()
            }
            .is_retryable()
        );
        assert!(GatewayError::Transport("refused".into()).is_retryable());
        assert!(!GatewayError::Unauthorized.is_retryable());
        assert!(!GatewayError::NotFound.is_retryable());
        assert!(!GatewayError::Decode("x".into()).is_retryable());
        assert_eq!(GatewayError::NotFound.backoff_hint(), None);
    }
}
