//! JSON shapes of the order routes. The payments service validates; the schema states its rules
//! so clients know the contract.
use serde::{Deserialize, Serialize};
use thali_proto::payments::v1 as pb;
use utoipa::{IntoParams, ToSchema};

use super::{Money, integer, rfc3339};

/// One line of a checkout.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutLine {
    #[schema(format = Uuid)]
    pub product_id: String,
    #[serde(deserialize_with = "integer")]
    #[schema(example = 2, minimum = 1, maximum = 1000)]
    pub quantity: i64,
}

/// Body of `POST /api/v1/orders`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// The store (creator or vendor) whose products these are.
    #[schema(example = "chai_point")]
    pub username: String,
    /// 1-50 lines, each product at most once. Prices are the store's current ones, never the
    /// client's.
    pub lines: Vec<CheckoutLine>,
}

/// Body of `POST /api/v1/orders/{id}/verify`: what Razorpay Checkout handed the browser.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyPayment {
    #[schema(example = "pay_29QQoUBi66xm2f")]
    pub razorpay_payment_id: String,
    /// Razorpay's `razorpay_order_id`; when given it must be the order's.
    #[serde(default)]
    pub razorpay_order_id: Option<String>,
    /// Hex HMAC-SHA256 of `order_id|payment_id` under the key secret.
    pub razorpay_signature: String,
}

/// Query of `GET /api/v1/orders`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListOrdersQuery {
    /// A store you own (admins: any): its orders. Absent: your own purchases.
    pub username: Option<String>,
    /// 1-100; 0 or absent means 50.
    #[param(minimum = 0, maximum = 100)]
    pub page_size: Option<i32>,
    pub page_token: Option<String>,
}

/// A line of an order, priced when it was placed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderLine {
    pub product_id: String,
    pub title: String,
    pub quantity: i64,
    pub unit_price: Option<Money>,
}

/// What Razorpay Checkout is opened with.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Checkout {
    /// `razorpay`, or `sandbox` on the built-in sandbox gateway.
    pub gateway: String,
    /// Checkout's `order_id`.
    pub gateway_order_id: String,
    /// Checkout's `key`.
    pub key_id: String,
    pub amount: Option<Money>,
}

/// An order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Order {
    pub id: String,
    /// `pending`, `paid`, `failed`, `expired`, `partially_refunded` or `refunded`.
    #[schema(example = "pending")]
    pub status: String,
    pub buyer_id: String,
    pub username: String,
    pub seller_id: String,
    pub lines: Vec<OrderLine>,
    pub total: Option<Money>,
    pub refunded: Option<Money>,
    pub checkout: Option<Checkout>,
    /// A pending order not paid by then expires and its stock goes back on sale.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
    #[schema(format = DateTime)]
    pub paid_at: Option<String>,
    /// A vendor's step once paid: `accepted`, `ready`, `completed` or `rejected`; absent while
    /// awaiting the vendor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fulfilment: Option<String>,
    /// What the order pays for when it is not a checkout: `booking:{id}` for a booking's deposit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

fn status_name(status: i32) -> String {
    match pb::OrderStatus::try_from(status).unwrap_or(pb::OrderStatus::Unspecified) {
        pb::OrderStatus::Pending => "pending",
        pb::OrderStatus::Paid => "paid",
        pb::OrderStatus::Failed => "failed",
        pb::OrderStatus::Expired => "expired",
        pb::OrderStatus::PartiallyRefunded => "partially_refunded",
        pb::OrderStatus::Refunded => "refunded",
        pb::OrderStatus::Unspecified => "unspecified",
    }
    .to_owned()
}

impl From<pb::Order> for Order {
    fn from(o: pb::Order) -> Self {
        Self {
            id: o.id,
            status: status_name(o.status),
            buyer_id: o.buyer_subject,
            username: o.username,
            seller_id: o.seller_subject,
            lines: o
                .lines
                .into_iter()
                .map(|l| OrderLine {
                    product_id: l.product_id,
                    title: l.title,
                    quantity: l.quantity,
                    unit_price: l.unit_price.map(Into::into),
                })
                .collect(),
            total: o.total.map(Into::into),
            refunded: o.refunded.map(Into::into),
            checkout: o.checkout.map(|c| Checkout {
                gateway: c.gateway,
                gateway_order_id: c.gateway_order_id,
                key_id: c.key_id,
                amount: c.amount.map(Into::into),
            }),
            expires_at: rfc3339(o.expire_time),
            created_at: rfc3339(o.create_time),
            updated_at: rfc3339(o.update_time),
            paid_at: rfc3339(o.paid_time),
            fulfilment: Some(o.fulfilment).filter(|f| !f.is_empty()),
            reference: Some(o.reference).filter(|r| !r.is_empty()),
        }
    }
}

/// One page of orders, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderPage {
    pub orders: Vec<Order>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// The answer to a gateway webhook.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookAccepted {
    #[schema(example = "ok")]
    pub status: String,
    /// The event was taken before; nothing was done again.
    pub duplicate: bool,
}

/// Body of `POST /api/v1/orders/{id}/refund`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundOrder {
    /// Minor units; absent: all that is left to refund.
    #[serde(default, deserialize_with = "super::optional_integer")]
    #[schema(example = 1000, minimum = 1)]
    pub amount_minor: Option<i64>,
    /// Up to 200 characters, shown to the buyer.
    #[serde(default)]
    pub reason: String,
}

/// A refund as asked: `requested` until the gateway processed it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Refund {
    pub id: String,
    pub order_id: String,
    pub amount: Option<Money>,
    /// `requested`, `processed` or `failed`.
    #[schema(example = "requested")]
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_refund_id: Option<String>,
    pub reason: String,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
}

/// The order and the refund just asked for.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RefundAnswer {
    pub order: Order,
    pub refund: Refund,
}

impl From<pb::Refund> for Refund {
    fn from(r: pb::Refund) -> Self {
        let status = match pb::RefundStatus::try_from(r.status).unwrap_or(pb::RefundStatus::Unspecified) {
            pb::RefundStatus::Requested => "requested",
            pb::RefundStatus::Processed => "processed",
            pb::RefundStatus::Failed => "failed",
            pb::RefundStatus::Unspecified => "unspecified",
        };
        Self {
            id: r.id,
            order_id: r.order_id,
            amount: r.amount.map(Into::into),
            status: status.into(),
            gateway_refund_id: Some(r.gateway_refund_id).filter(|g| !g.is_empty()),
            reason: r.reason,
            created_at: rfc3339(r.create_time),
        }
    }
}

/// Body of `POST /api/v1/orders/{id}/fulfilment`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FulfilOrder {
    /// `accept`, `ready`, `complete` or `reject` (before ready: everything left is refunded).
    #[schema(example = "accept")]
    pub step: String,
    /// Up to 200 characters; a rejection's reason is shown to the buyer.
    #[serde(default)]
    pub reason: String,
}

/// Body of `PUT /api/v1/creators/{username}/payment-account`: a creator's own Razorpay account.
/// The secrets are stored encrypted and never shown again.
#[derive(Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutPaymentAccount {
    #[schema(example = "rzp_test_1DP5mmOlF5G5ag")]
    pub key_id: String,
    /// 8-128 printable characters.
    pub key_secret: String,
    /// The secret the account's webhooks are signed with (Razorpay dashboard → Webhooks).
    pub webhook_secret: String,
}

impl std::fmt::Debug for PutPaymentAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutPaymentAccount")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A creator's connected gateway account, secrets masked.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PaymentAccount {
    /// Thali's id of the account: the last segment of its webhook URL.
    #[schema(format = Uuid)]
    pub id: String,
    pub username: String,
    pub key_id: String,
    /// `••••` and the last four characters.
    #[schema(example = "••••x9Qa")]
    pub key_secret: String,
    #[schema(example = "••••7fG2")]
    pub webhook_secret: String,
    /// The data key that encrypts the secrets at rest.
    pub data_key_id: String,
    /// Set this as the webhook URL in the Razorpay dashboard (on the API's public host).
    #[schema(example = "/api/v1/webhooks/razorpay/01938c6e-7b9a-7cc1-9a51-0a1b2c3d4e5f")]
    pub webhook_path: String,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl From<pb::PaymentAccount> for PaymentAccount {
    fn from(a: pb::PaymentAccount) -> Self {
        Self {
            id: a.id,
            username: a.username,
            key_id: a.key_id,
            key_secret: a.key_secret_masked,
            webhook_secret: a.webhook_secret_masked,
            data_key_id: a.data_key_id,
            webhook_path: a.webhook_path,
            created_at: rfc3339(a.create_time),
            updated_at: rfc3339(a.update_time),
        }
    }
}
