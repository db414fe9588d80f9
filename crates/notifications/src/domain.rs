//! Notification rules: which events reach whom, on which channel, and what a user may turn off.
//! Pure: no I/O, no database, no gRPC.
use chrono::{DateTime, Utc};
use thali_platform::errors::Violation;
use thali_proto::events::v1::{Event, event::Payload};
use uuid::Uuid;

/// Whether an event type is emailed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailPolicy {
    /// Never emailed.
    Never,
    /// Emailed unless the user turned it off.
    Optional,
    /// Security and account messages: always emailed, cannot be turned off.
    Required,
}

/// How one event type is told to its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channels {
    pub event_type: &'static str,
    /// In-app notifications cannot be turned off.
    pub in_app: bool,
    pub email: EmailPolicy,
    /// The owner of the event's resource (`owner_account_id`, when another account) is told
    /// in-app too: a restaurant's owner hears of its bookings.
    pub owner_in_app: bool,
}

/// Every event type the service tells users about.
pub const CATALOGUE: &[Channels] = &[
    Channels {
        event_type: "account.created",
        in_app: true,
        email: EmailPolicy::Optional,
        owner_in_app: false,
    },
    Channels {
        event_type: "account.login_new_address",
        in_app: true,
        email: EmailPolicy::Required,
        owner_in_app: false,
    },
    Channels {
        event_type: "product.out_of_stock",
        in_app: true,
        email: EmailPolicy::Optional,
        owner_in_app: false,
    },
    // Links with a single-use token, to the account's own address only.
    Channels {
        event_type: "account.email_verification_requested",
        in_app: false,
        email: EmailPolicy::Required,
        owner_in_app: false,
    },
    Channels {
        event_type: "account.password_reset_requested",
        in_app: false,
        email: EmailPolicy::Required,
        owner_in_app: false,
    },
    // Someone tried to register the account's email: told to the owner only, by email.
    Channels {
        event_type: "account.registration_attempted",
        in_app: false,
        email: EmailPolicy::Required,
        owner_in_app: false,
    },
    // The guest by email (a receipt: always sent), the restaurant's owner in-app.
    Channels {
        event_type: "booking.confirmed",
        in_app: false,
        email: EmailPolicy::Required,
        owner_in_app: true,
    },
    Channels {
        event_type: "booking.cancelled",
        in_app: false,
        email: EmailPolicy::Required,
        owner_in_app: true,
    },
    // Orders: the buyer by email (paid and refunded are receipts: always sent), the store's owner
    // in-app.
    Channels {
        event_type: "order.paid",
        in_app: false,
        email: EmailPolicy::Required,
        owner_in_app: true,
    },
    Channels {
        event_type: "order.failed",
        in_app: false,
        email: EmailPolicy::Optional,
        owner_in_app: true,
    },
    Channels {
        event_type: "order.expired",
        in_app: false,
        email: EmailPolicy::Optional,
        owner_in_app: true,
    },
    Channels {
        event_type: "order.refunded",
        in_app: false,
        email: EmailPolicy::Required,
        owner_in_app: true,
    },
    // A payment given back unasked: the buyer is always told why.
    Channels {
        event_type: "order.payment_returned",
        in_app: false,
        email: EmailPolicy::Required,
        owner_in_app: true,
    },
    // The day before: the guest by email, unless they turned reminders off.
    Channels {
        event_type: "booking.reminder",
        in_app: false,
        email: EmailPolicy::Optional,
        owner_in_app: false,
    },
];

/// Event types whose email carries a secret (a single-use token): their bodies are blanked
/// once sent, and they are never sent to partner webhooks.
pub const SECRET_BEARING: &[&str] = &[
    "account.email_verification_requested",
    "account.password_reset_requested",
];

/// The channels of `event_type`, if the service knows it.
pub fn channels(event_type: &str) -> Option<&'static Channels> {
    CATALOGUE.iter().find(|c| c.event_type == event_type)
}

/// Event types a partner webhook endpoint may subscribe to.
pub const WEBHOOK_EVENT_TYPES: &[&str] = &[
    "account.created",
    "account.login_new_address",
    "product.out_of_stock",
    "booking.confirmed",
    "booking.cancelled",
];
/// Endpoints one account may register.
pub const ENDPOINTS_MAX: u64 = 10;

/// Default and largest page of `ListNotifications`.
pub const PAGE_SIZE_DEFAULT: u64 = 20;
pub const PAGE_SIZE_MAX: u64 = 100;

/// Everything that can go wrong in a notifications use case.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotificationError {
    #[error("invalid request")]
    Invalid(Vec<Violation>),
    #[error("authentication required")]
    Unauthenticated,
    #[error("no notification with this id")]
    NotFound,
    #[error("no webhook endpoint with this id")]
    EndpointNotFound,
    #[error("no delivery with this id on this endpoint")]
    DeliveryNotFound,
    #[error("an account may register at most 10 webhook endpoints")]
    TooManyEndpoints,
    #[error("this delivery is being sent already")]
    DeliveryInFlight,
    #[error("the endpoint is disabled: register it again")]
    EndpointDisabled,
    #[error("the database is unavailable")]
    Unavailable,
    /// An event to email an account whose address has not arrived yet (its `account.created`
    /// may still be on its way from identity): the sender retries it.
    #[error("the recipient's address is not known yet")]
    RecipientPending,
    #[error("internal error: {0}")]
    Internal(String),
}

/// How long an event waits (through the relay's retries) for its recipient's address before it
/// is told in-app only: events of different services are not ordered, so a booking made right
/// after signing up can arrive before the welcome.
pub const RECIPIENT_GRACE: chrono::Duration = chrono::Duration::minutes(10);

/// Event types that wait for their recipient's address (the guest of a booking often signs up
/// moments before booking). Other types are told in-app only when the address is unknown.
pub const AWAITS_RECIPIENT: &[&str] = &[
    "booking.confirmed",
    "booking.cancelled",
    "booking.reminder",
    "order.paid",
    "order.failed",
    "order.expired",
    "order.refunded",
    "order.payment_returned",
];

impl NotificationError {
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::Invalid(vec![Violation::new(field, description)])
    }
}

/// One in-app notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: Uuid,
    pub event_type: String,
    pub title: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
}

/// A user's email preference for one event type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailPreference {
    pub event_type: String,
    pub email: bool,
    pub required: bool,
}

/// A partner's webhook endpoint (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub account_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub state: String,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub previous_secret_until: Option<DateTime<Utc>>,
}

/// One try of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAttempt {
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

/// One event sent to one endpoint, with its attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub attempts: Vec<WebhookAttempt>,
}

/// Checks a new endpoint: its URL (see [`crate::webhooks::check_url`]) and its event types (known,
/// at least one, no repeats). Returns the types sorted.
pub fn check_endpoint(
    url: &str,
    event_types: &[String],
    allow_insecure: bool,
) -> Result<Vec<String>, NotificationError> {
    let mut violations = Vec::new();
    if let Err(why) = crate::webhooks::check_url(url, allow_insecure) {
        violations.push(Violation::new("url", why));
    }
    let mut types: Vec<String> = event_types.to_vec();
    types.sort();
    types.dedup();
    if types.is_empty() {
        violations.push(Violation::new("event_types", "name at least one event type"));
    }
    for t in &types {
        if !WEBHOOK_EVENT_TYPES.contains(&t.as_str()) {
            violations.push(Violation::new(
                "event_types",
                format!("{t:?} is not one of {}", WEBHOOK_EVENT_TYPES.join(", ")),
            ));
        }
    }
    if violations.is_empty() {
        Ok(types)
    } else {
        Err(NotificationError::Invalid(violations))
    }
}

/// Who a message goes to, as learnt from `account.created`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub account_id: Uuid,
    pub email: String,
    pub display_name: String,
}

/// An event the service takes, checked: its id, who it is for, and what the templates show.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub event_id: Uuid,
    pub event_type: &'static str,
    /// The account told about it.
    pub account_id: Uuid,
    /// A recipient the event introduces or updates (`account.created`).
    pub recipient: Option<Recipient>,
    /// The address the event names for its own email (a token goes to the address it was
    /// requested for, not to one learnt earlier).
    pub to: Option<String>,
    /// Values the templates show (besides the recipient's name).
    pub context: serde_json::Value,
    /// The account whose resource the event is about: only its webhook endpoints receive it.
    pub owner: Option<Uuid>,
    /// The `data` of the webhook body.
    pub data: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
}

fn account(field: &str, value: &str) -> Result<Uuid, NotificationError> {
    Uuid::parse_str(value).map_err(|_| NotificationError::invalid(field, "must be a UUID"))
}

/// Who a booking event is for (the guest) and what its messages say. `when` is the local
/// start written for people (`2026-11-25 19:30`).
fn booking_context(
    b: Option<&thali_proto::events::v1::BookingSummary>,
    by_restaurant: bool,
    reason: &str,
) -> Result<(Uuid, Option<Recipient>, serde_json::Value), NotificationError> {
    let b = b.ok_or_else(|| NotificationError::invalid("booking", "is required"))?;
    let guest = account("booking.guest_account_id", &b.guest_account_id)?;
    let short = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    Ok((
        guest,
        None,
        serde_json::json!({
            "booking_id": b.booking_id,
            "restaurant_name": short(&b.restaurant_name, 120),
            "guest_name": short(&b.guest_name, 120),
            "party_size": b.party_size,
            "when": short(&b.local_start, 16).replacen('T', " ", 1),
            "time_zone": short(&b.time_zone, 64),
            "by_restaurant": by_restaurant,
            "reason": short(reason, 500),
        }),
    ))
}

/// An amount for people: `INR 98.00` (two-decimal currencies, which are the ones Thali sells in).
fn money_text(amount_minor: i64, currency: &str) -> String {
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    format!("{currency} {sign}{}.{:02}", abs / 100, abs % 100)
}

/// Who an order event is for (the buyer) and what its messages say.
fn order_context(
    o: Option<&thali_proto::events::v1::OrderSummary>,
) -> Result<(Uuid, Option<Recipient>, serde_json::Value), NotificationError> {
    let o = o.ok_or_else(|| NotificationError::invalid("order", "is required"))?;
    let buyer = account("order.buyer_account_id", &o.buyer_account_id)?;
    let currency: String = o.currency.chars().take(3).collect();
    Ok((
        buyer,
        None,
        serde_json::json!({
            "order_id": o.order_id,
            "store": o.store.chars().take(30).collect::<String>(),
            "total": money_text(o.amount_minor, &currency),
            "refunded": money_text(o.refunded_minor, &currency),
        }),
    ))
}

/// Why a payment came back, as the buyer reads it.
fn returned_why(reason: &str) -> &'static str {
    match reason {
        "late_capture" => {
            "it arrived after your order had expired or failed, and what you ordered was no longer held for you"
        }
        "duplicate_payment" => "your order had already been paid by another payment",
        "wrong_amount" => "its amount was not your order's",
        "stock_released" => "what you ordered had gone back on sale before it arrived",
        _ => "your order could not keep it",
    }
}

/// An order event as partner webhooks would receive it.
fn order_data(o: Option<&thali_proto::events::v1::OrderSummary>) -> serde_json::Value {
    let Some(o) = o else { return serde_json::Value::Null };
    serde_json::json!({
        "order_id": o.order_id,
        "store": o.store,
        "amount_minor": o.amount_minor,
        "currency": o.currency,
        "refunded_minor": o.refunded_minor,
    })
}

/// A booking event as partner webhooks receive it.
fn booking_data(
    b: Option<&thali_proto::events::v1::BookingSummary>,
    cancelled: Option<(bool, &String)>,
) -> serde_json::Value {
    let Some(b) = b else { return serde_json::Value::Null };
    let mut data = serde_json::json!({
        "booking_id": b.booking_id,
        "restaurant_id": b.restaurant_id,
        "party_size": b.party_size,
        "start": b.local_start,
        "time_zone": b.time_zone,
        "guest_name": b.guest_name,
    });
    if let (Some((by_restaurant, reason)), Some(map)) = (cancelled, data.as_object_mut()) {
        map.insert("by_restaurant".into(), by_restaurant.into());
        map.insert("reason".into(), reason.clone().into());
    }
    data
}

/// What a notification that named an erased account's person says instead (ADR 0032).
pub const ERASED_TITLE: &str = "About an erased account";
pub const ERASED_BODY: &str = "This notification named a person whose account has since been erased.";

impl Incoming {
    /// Checks an event and picks who it is for. INVALID_ARGUMENT (never retried by the relay)
    /// for an event that can never be taken.
    pub fn from_event(event: &Event) -> Result<Self, NotificationError> {
        let event_id =
            Uuid::parse_str(&event.id).map_err(|_| NotificationError::invalid("event.id", "must be a UUID"))?;
        let payload = event
            .payload
            .as_ref()
            .ok_or_else(|| NotificationError::invalid("event.payload", "is required"))?;
        let event_type = thali_platform::events::type_of(payload);
        if event.r#type != event_type {
            return Err(NotificationError::invalid(
                "event.type",
                format!("says {:?} but the payload is {event_type}", event.r#type),
            ));
        }
        let occurred_at = event
            .occurred_at
            .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
            .unwrap_or_else(Utc::now);
        let owner = match event.owner_account_id.as_str() {
            "" => None,
            id => Some(account("owner_account_id", id)?),
        };
        let (account_id, recipient, context) = match payload {
            Payload::AccountCreated(p) => {
                let id = account("account_created.account_id", &p.account_id)?;
                if p.email.len() < 3 || p.email.len() > 254 || !p.email.contains('@') {
                    return Err(NotificationError::invalid("account_created.email", "is not an address"));
                }
                let recipient = Recipient {
                    account_id: id,
                    email: p.email.clone(),
                    display_name: p.display_name.chars().take(200).collect(),
                };
                (id, Some(recipient), serde_json::json!({ "role": p.role }))
            }
            Payload::AccountLoginNewAddress(p) => (
                account("account_login_new_address.account_id", &p.account_id)?,
                None,
                serde_json::json!({
                    "ip_address": p.ip_address,
                    "at": occurred_at.format("%Y-%m-%d %H:%M UTC").to_string(),
                }),
            ),
            Payload::AccountEmailVerificationRequested(p) => (
                account("account_email_verification_requested.account_id", &p.account_id)?,
                None,
                serde_json::json!({ "token": p.token, "to": p.email }),
            ),
            Payload::AccountPasswordResetRequested(p) => (
                account("account_password_reset_requested.account_id", &p.account_id)?,
                None,
                serde_json::json!({ "token": p.token, "to": p.email }),
            ),
            Payload::AccountRegistrationAttempted(p) => (
                account("account_registration_attempted.account_id", &p.account_id)?,
                None,
                serde_json::json!({
                    "to": p.email,
                    "at": occurred_at.format("%Y-%m-%d %H:%M UTC").to_string(),
                }),
            ),
            Payload::ProductOutOfStock(p) => (
                account("owner_account_id", &event.owner_account_id)?,
                None,
                serde_json::json!({
                    "username": p.username,
                    "product_id": p.product_id,
                    "product_name": p.product_name,
                }),
            ),
            Payload::BookingConfirmed(p) => booking_context(p.booking.as_ref(), false, "")?,
            Payload::BookingCancelled(p) => booking_context(p.booking.as_ref(), p.by_restaurant, &p.reason)?,
            Payload::BookingReminder(p) => booking_context(p.booking.as_ref(), false, "")?,
            Payload::OrderPaid(p) => order_context(p.order.as_ref())?,
            Payload::OrderFailed(p) => order_context(p.order.as_ref())?,
            Payload::OrderExpired(p) => order_context(p.order.as_ref())?,
            Payload::OrderRefunded(p) => order_context(p.order.as_ref())?,
            Payload::OrderPaymentReturned(p) => {
                let (account, recipient, mut context) = order_context(p.order.as_ref())?;
                let currency: String = p
                    .order
                    .as_ref()
                    .map(|o| o.currency.chars().take(3).collect())
                    .unwrap_or_default();
                if let Some(map) = context.as_object_mut() {
                    map.insert("returned".into(), money_text(p.returned_minor, &currency).into());
                    map.insert("why".into(), returned_why(&p.reason).into());
                }
                (account, recipient, context)
            }
            // Taken by the sink itself (the account's data is erased), never a notification.
            Payload::AccountErased(_) => {
                return Err(NotificationError::invalid(
                    "event.type",
                    "account.erased is not a notification",
                ));
            }
            // Between booking and payments: nobody is told of it.
            Payload::BookingDepositRefundRequested(_) => {
                return Err(NotificationError::invalid(
                    "event.type",
                    "booking.deposit_refund_requested is not a notification",
                ));
            }
        };
        let to = match payload {
            Payload::AccountEmailVerificationRequested(p) => Some(p.email.clone()),
            Payload::AccountPasswordResetRequested(p) => Some(p.email.clone()),
            Payload::AccountRegistrationAttempted(p) => Some(p.email.clone()),
            _ => None,
        };
        let data = match payload {
            Payload::AccountCreated(p) => serde_json::json!({
                "account_id": p.account_id,
                "email": p.email,
                "display_name": p.display_name,
                "role": p.role,
            }),
            Payload::AccountLoginNewAddress(p) => serde_json::json!({
                "account_id": p.account_id,
                "ip_address": p.ip_address,
            }),
            // Never leaves for a webhook (see SECRET_BEARING); no token in it regardless.
            Payload::AccountEmailVerificationRequested(p) => serde_json::json!({ "account_id": p.account_id }),
            Payload::AccountPasswordResetRequested(p) => serde_json::json!({ "account_id": p.account_id }),
            Payload::AccountRegistrationAttempted(p) => serde_json::json!({ "account_id": p.account_id }),
            Payload::ProductOutOfStock(p) => serde_json::json!({
                "creator_id": p.creator_id,
                "username": p.username,
                "product_id": p.product_id,
                "product_name": p.product_name,
            }),
            Payload::BookingConfirmed(p) => booking_data(p.booking.as_ref(), None),
            Payload::BookingCancelled(p) => booking_data(p.booking.as_ref(), Some((p.by_restaurant, &p.reason))),
            Payload::BookingReminder(p) => booking_data(p.booking.as_ref(), None),
            Payload::OrderPaid(p) => order_data(p.order.as_ref()),
            Payload::OrderFailed(p) => order_data(p.order.as_ref()),
            Payload::OrderExpired(p) => order_data(p.order.as_ref()),
            Payload::OrderRefunded(p) => order_data(p.order.as_ref()),
            Payload::OrderPaymentReturned(p) => serde_json::json!({
                "order": order_data(p.order.as_ref()),
                "returned_minor": p.returned_minor,
                "reason": p.reason,
            }),
            Payload::AccountErased(p) => serde_json::json!({ "account_id": p.account_id }),
            Payload::BookingDepositRefundRequested(p) => serde_json::json!({
                "booking_id": p.booking_id,
                "order_id": p.order_id,
            }),
        };
        Ok(Self {
            event_id,
            event_type,
            account_id,
            recipient,
            to,
            context,
            owner,
            data,
            occurred_at,
        })
    }

    /// The webhook body (Standard Webhooks): `{"type", "timestamp", "data"}`.
    pub fn webhook_body(&self) -> String {
        serde_json::json!({
            "type": self.event_type,
            "timestamp": self.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": self.data,
        })
        .to_string()
    }
}

/// Checks a preference change: known types only, and required emails stay on.
pub fn check_preferences(changes: &[(String, bool)]) -> Result<(), NotificationError> {
    let mut violations = Vec::new();
    for (event_type, email) in changes {
        let field = format!("email.{event_type}");
        match channels(event_type) {
            None => violations.push(Violation::new(field, "is not an event type users are told about")),
            Some(c) if c.email == EmailPolicy::Never && *email => {
                violations.push(Violation::new(field, "is never emailed"));
            }
            Some(c) if c.email == EmailPolicy::Required && !*email => {
                violations.push(Violation::new(field, "is a security message and is always emailed"));
            }
            Some(_) => {}
        }
    }
    if changes.is_empty() {
        violations.push(Violation::new("email", "name at least one event type"));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(NotificationError::Invalid(violations))
    }
}

/// Every type's preference, from the ones the user set (the rest take the policy's default).
pub fn effective_preferences(set: &[(String, bool)]) -> Vec<EmailPreference> {
    CATALOGUE
        .iter()
        .map(|c| {
            let chosen = set.iter().find(|(t, _)| t == c.event_type).map(|(_, e)| *e);
            let email = match c.email {
                EmailPolicy::Never => false,
                EmailPolicy::Required => true,
                EmailPolicy::Optional => chosen.unwrap_or(true),
            };
            EmailPreference {
                event_type: c.event_type.to_owned(),
                email,
                required: c.email == EmailPolicy::Required,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use thali_proto::events::v1::{AccountCreated, ProductOutOfStock};

    use super::*;

    fn event(payload: Payload, owner: &str) -> Event {
        thali_platform::events::new_event("test", "a".into(), owner.parse().ok(), payload, Utc::now())
    }

    #[test]
    fn an_out_of_stock_event_is_for_the_owner_and_needs_one() {
        let owner = Uuid::now_v7();
        let e = event(
            Payload::ProductOutOfStock(ProductOutOfStock {
                product_name: "Masala chai".into(),
                ..Default::default()
            }),
            &owner.to_string(),
        );
        let incoming = Incoming::from_event(&e).unwrap();
        assert_eq!(incoming.account_id, owner);
        assert_eq!(incoming.context["product_name"], "Masala chai");

        let orphan = event(Payload::ProductOutOfStock(ProductOutOfStock::default()), "");
        assert!(matches!(
            Incoming::from_event(&orphan),
            Err(NotificationError::Invalid(_))
        ));
    }

    #[test]
    fn an_event_whose_type_disagrees_with_its_payload_is_refused() {
        let id = Uuid::now_v7();
        let mut e = event(
            Payload::AccountCreated(AccountCreated {
                account_id: id.to_string(),
                email: "a@example.com".into(),
                ..Default::default()
            }),
            "",
        );
        assert!(Incoming::from_event(&e).unwrap().recipient.is_some());
        e.r#type = "product.out_of_stock".into();
        assert!(matches!(Incoming::from_event(&e), Err(NotificationError::Invalid(_))));
        e.r#type = "account.created".into();
        e.id = "not-a-uuid".into();
        assert!(matches!(Incoming::from_event(&e), Err(NotificationError::Invalid(_))));
    }

    #[test]
    fn security_email_cannot_be_turned_off_and_unknown_types_are_refused() {
        assert!(check_preferences(&[("product.out_of_stock".into(), false)]).is_ok());
        let Err(NotificationError::Invalid(v)) = check_preferences(&[
            ("account.login_new_address".into(), false),
            ("order.teleported".into(), true),
        ]) else {
            panic!("expected a validation error");
        };
        assert_eq!(v.len(), 2);
        assert!(check_preferences(&[]).is_err());
    }

    #[test]
    fn preferences_default_to_email_on() {
        let prefs = effective_preferences(&[("product.out_of_stock".into(), false)]);
        let of = |t: &str| prefs.iter().find(|p| p.event_type == t).unwrap().clone();
        assert!(!of("product.out_of_stock").email);
        assert!(of("account.created").email);
        assert!(of("account.login_new_address").email && of("account.login_new_address").required);
    }
}
