//! Checkout rules and the service's errors: the shape of a checkout request, how long an order
//! waits for its payment, who may see an order. Pure: no I/O.
use chrono::{DateTime, TimeDelta, Utc};
use thali_platform::errors::Violation;
use uuid::Uuid;

/// Lines in one order, and units of one product in a line (the storefront's own limits).
pub const LINES_MAX: usize = 50;
pub const QUANTITY_MAX: i64 = 1000;

/// A pending order not paid within this expires (the reconciler settles it) and its stock goes
/// back on sale.
pub const ORDER_TTL: TimeDelta = TimeDelta::minutes(15);

/// How long the storefront holds the stock: past the order's expiry by two reconciler periods and
/// more, so a buyer who paid in time is never refunded because the storefront's own expiry sweep
/// released the stock first. The storefront's sweep is the backstop for an order payments lost.
pub const STOCK_HOLD_SECONDS: i32 = 30 * 60;

/// Default and largest page of `ListOrders`.
pub const PAGE_SIZE_DEFAULT: u64 = 50;
pub const PAGE_SIZE_MAX: u64 = 100;

/// Everything that can go wrong in a payments use case.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PaymentsError {
    #[error("invalid request")]
    Invalid(Vec<Violation>),
    #[error("authentication required")]
    Unauthenticated,
    #[error("no order with this id")]
    OrderNotFound,
    #[error("the idempotency key was used for a different request")]
    IdempotencyKeyReused,
    #[error("the payment signature does not match this order")]
    InvalidSignature,
    #[error("only the store's owner or an admin may refund its orders")]
    NotSeller,
    #[error("only a paid order can be refunded")]
    NotPaid,
    #[error("{0}")]
    Fulfilment(super::StepRefused),
    #[error("no payment account with this id")]
    AccountNotFound,
    #[error("this store has no payment account of its own; the platform's account takes its payments")]
    PaymentAccountNotFound,
    #[error("the gateway refused this key id and secret")]
    InvalidCredentials,
    #[error("only the store's owner or an admin may manage its payment account")]
    NotStoreOwner,
    #[error("only Thali services may call this")]
    ServiceOnly,
    #[error("the webhook could not be stored; deliver it again")]
    WebhookNotStored,
    #[error("the payment gateway refused the order: {0}")]
    GatewayRefused(String),
    #[error("the payment gateway does not answer; try again")]
    GatewayUnavailable,
    /// The storefront answered a status the buyer should see as it is (out of stock, no such
    /// product, mixed currencies): passed on with its reason and details.
    #[error("{}", .0.message())]
    Storefront(tonic::Status),
    #[error("the storefront does not answer; try again")]
    StorefrontUnavailable,
    #[error("the database does not answer")]
    Unavailable,
    #[error("internal: {0}")]
    Internal(String),
}

impl PaymentsError {
    /// One invalid field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::Invalid(vec![Violation::new(field, description)])
    }
}

/// A validated checkout: the store and its lines, sorted by product (the storefront prices them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckoutRequest {
    pub username: String,
    pub lines: Vec<(Uuid, i64)>,
}

impl CheckoutRequest {
    /// Checks every field, naming each one that breaks a rule. The username's own rules are the
    /// storefront's: one that cannot exist is answered there (CREATOR_NOT_FOUND).
    pub fn parse(username: &str, lines: &[(&str, i64)]) -> Result<Self, PaymentsError> {
        let mut violations = Vec::new();
        if username.is_empty() || username.len() > 30 {
            violations.push(Violation::new("username", "1 to 30 characters"));
        }
        if lines.is_empty() || lines.len() > LINES_MAX {
            violations.push(Violation::new("lines", format!("1 to {LINES_MAX} lines")));
        }
        let mut parsed: Vec<(Uuid, i64)> = Vec::with_capacity(lines.len());
        for (i, (product, quantity)) in lines.iter().enumerate() {
            match Uuid::parse_str(product) {
                Ok(p) if parsed.iter().any(|(q, _)| *q == p) => violations.push(Violation::new(
                    format!("lines[{i}].product_id"),
                    "each product at most once",
                )),
                Ok(p) => parsed.push((p, *quantity)),
                Err(_) => violations.push(Violation::new(format!("lines[{i}].product_id"), "must be a UUID")),
            }
            if !(1..=QUANTITY_MAX).contains(quantity) {
                violations.push(Violation::new(
                    format!("lines[{i}].quantity"),
                    format!("1 to {QUANTITY_MAX}"),
                ));
            }
        }
        if !violations.is_empty() {
            return Err(PaymentsError::Invalid(violations));
        }
        parsed.sort_by_key(|(p, _)| *p);
        Ok(Self {
            username: username.to_owned(),
            lines: parsed,
        })
    }
}

/// A line of an order: what the storefront priced when it held the stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub product_id: Uuid,
    pub title: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
}

/// An order as the service keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub id: Uuid,
    pub status: super::Status,
    pub buyer_subject: String,
    pub username: String,
    pub seller_subject: String,
    pub lines: Vec<OrderLine>,
    pub amount_minor: i64,
    pub currency: String,
    pub refunded_minor: i64,
    /// `razorpay` or `sandbox`.
    pub gateway: String,
    /// The gateway key id the order was created with (Checkout opens with it).
    pub key_id: String,
    pub gateway_order_id: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    /// A vendor's step once paid (none yet: awaiting the vendor).
    pub fulfilment: Option<super::Fulfilment>,
    /// The creator's own gateway account that created it; None: the platform's.
    pub payment_account_id: Option<Uuid>,
    /// What it pays for when not a checkout (`booking:{id}`): no stock is held for it.
    pub reference: Option<String>,
}

/// One call made to the gateway about an order, as `transactions` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayCall {
    pub order_id: Uuid,
    /// `create_order`, `order_payments`, `capture`, `refund`, …
    pub call: &'static str,
    /// `checkout`, `webhook`, `reconciler`, `refund`.
    pub source: &'static str,
    /// `ok` or the error's label.
    pub outcome: &'static str,
    /// The gateway's id of what the call touched (`order_…`, `pay_…`, `rfnd_…`).
    pub gateway_ref: Option<String>,
    pub latency_ms: i64,
}

/// Whether `roles` include the platform's admin role.
pub fn is_admin(roles: &[String]) -> bool {
    roles.iter().any(|r| r == "admin")
}

/// Who may see an order: its buyer, its seller, an admin. Anyone else is told it does not exist.
pub fn may_see(viewer: &str, admin: bool, buyer: &str, seller: &str) -> bool {
    admin || viewer == buyer || viewer == seller
}

/// Checks an idempotency key: empty means none (the rule is the platform's).
pub fn parse_idempotency_key(key: &str) -> Result<Option<String>, PaymentsError> {
    thali_platform::idempotency::parse_key(key).map_err(|v| PaymentsError::Invalid(vec![v]))
}

/// A requested page size: 0 means the default.
pub fn page_size(requested: i32) -> Result<u64, PaymentsError> {
    thali_platform::errors::page_size(requested, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)
        .map_err(|v| PaymentsError::Invalid(vec![v]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "01900000-0000-7000-8000-00000000000a";
    const B: &str = "01900000-0000-7000-8000-00000000000b";

    fn fields(err: PaymentsError) -> Vec<String> {
        match err {
            PaymentsError::Invalid(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_checkout_is_sorted_by_product_and_every_broken_field_is_named() {
        let ok = CheckoutRequest::parse("chai_point", &[(B, 2), (A, 1)]).unwrap();
        assert_eq!(ok.lines[0].0.to_string(), A);
        assert_eq!(
            fields(CheckoutRequest::parse("", &[(A, 0), (A, 1), ("x", 1001)]).unwrap_err()),
            vec![
                "username",
                "lines[0].quantity",
                "lines[1].product_id",
                "lines[2].product_id",
                "lines[2].quantity"
            ]
        );
        assert_eq!(
            fields(CheckoutRequest::parse("chai_point", &[]).unwrap_err()),
            vec!["lines"]
        );
    }

    #[test]
    fn an_order_is_seen_by_its_buyer_its_seller_and_admins_only() {
        assert!(may_see("buyer", false, "buyer", "seller"));
        assert!(may_see("seller", false, "buyer", "seller"));
        assert!(may_see("someone", true, "buyer", "seller"));
        assert!(!may_see("someone", false, "buyer", "seller"));
    }

    #[test]
    fn the_stock_outlives_the_order_by_more_than_two_reconciler_periods() {
        assert!(TimeDelta::seconds(i64::from(STOCK_HOLD_SECONDS)) >= ORDER_TTL + TimeDelta::minutes(10));
    }
}
