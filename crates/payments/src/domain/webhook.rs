//! What a Razorpay webhook says, read from its JSON once the signature over the raw body holds:
//! the gateway order it is about and the state machine's [`Event`]. Pure: no I/O.
use serde_json::Value;

use super::Event;

/// A webhook read into what the state machine needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayWebhook {
    /// `payment.captured`, `refund.processed`, …
    pub event_type: String,
    /// The gateway order (`order_…`) it is about, when it names one.
    pub gateway_order_id: Option<String>,
    /// What it means for the order; None for types that change nothing (`refund.failed`, and
    /// types Thali does not subscribe to).
    pub event: Option<Event>,
    /// For a refund: the payment it gives back. Only a refund of the payment that paid the order
    /// counts on the order (a late or duplicate payment's refund returns money it never counted).
    pub refund_of: Option<String>,
}

/// Why a signed body cannot be read. Trying again cannot help: it is dead at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the webhook body is not a Razorpay event: {0}")]
pub struct Unreadable(pub String);

fn text(v: &Value, path: &[&str]) -> Option<String> {
    let mut at = v;
    for key in path {
        at = at.get(*key)?;
    }
    at.as_str().map(str::to_owned)
}

fn amount(v: &Value, path: &[&str]) -> Option<i64> {
    let mut at = v;
    for key in path {
        at = at.get(*key)?;
    }
    at.as_i64()
}

/// Reads a webhook body (already authenticated by its signature).
pub fn read_webhook(body: &[u8]) -> Result<GatewayWebhook, Unreadable> {
    let v: Value = serde_json::from_slice(body).map_err(|e| Unreadable(format!("not JSON: {e}")))?;
    let event_type = text(&v, &["event"]).ok_or_else(|| Unreadable("no `event`".into()))?;
    let payment_id = text(&v, &["payload", "payment", "entity", "id"]);
    let payment_amount = amount(&v, &["payload", "payment", "entity", "amount"]);
    let gateway_order_id = text(&v, &["payload", "payment", "entity", "order_id"])
        .or_else(|| text(&v, &["payload", "order", "entity", "id"]));
    let payment = || {
        payment_id
            .clone()
            .ok_or_else(|| Unreadable(format!("{event_type} without payload.payment.entity.id")))
    };
    let paid_amount = || payment_amount.ok_or_else(|| Unreadable(format!("{event_type} without a payment amount")));
    let event = match event_type.as_str() {
        "payment.authorized" => Some(Event::Authorized {
            payment: payment()?,
            amount: paid_amount()?,
        }),
        // order.paid carries the capturing payment too: the same capture, counted once.
        "payment.captured" | "order.paid" => Some(Event::Captured {
            payment: payment()?,
            amount: paid_amount()?,
        }),
        "payment.failed" => Some(Event::PaymentFailed { payment: payment()? }),
        "refund.processed" => Some(Event::Refunded {
            refund: text(&v, &["payload", "refund", "entity", "id"])
                .ok_or_else(|| Unreadable("refund.processed without payload.refund.entity.id".into()))?,
            amount: amount(&v, &["payload", "refund", "entity", "amount"])
                .ok_or_else(|| Unreadable("refund.processed without a refund amount".into()))?,
        }),
        _ => None,
    };
    let refund_of = text(&v, &["payload", "refund", "entity", "payment_id"]).or_else(|| payment_id.clone());
    Ok(GatewayWebhook {
        refund_of: matches!(event, Some(Event::Refunded { .. }))
            .then_some(refund_of)
            .flatten(),
        event_type,
        gateway_order_id,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(event: &str, payload: Value) -> Vec<u8> {
        serde_json::json!({"entity": "event", "account_id": "acc_1", "event": event,
            "contains": ["payment"], "payload": payload, "created_at": 1})
        .to_string()
        .into_bytes()
    }

    fn payment(status: &str) -> Value {
        serde_json::json!({"payment": {"entity": {"id": "pay_1", "order_id": "order_1", "amount": 4900,
            "currency": "INR", "status": status, "card": {"last4": "1111"}}}})
    }

    #[test]
    fn payment_events_become_state_machine_events() {
        let captured = read_webhook(&body("payment.captured", payment("captured"))).unwrap();
        assert_eq!(captured.gateway_order_id.as_deref(), Some("order_1"));
        assert_eq!(
            captured.event,
            Some(Event::Captured {
                payment: "pay_1".into(),
                amount: 4900
            })
        );
        let paid = read_webhook(&body("order.paid", payment("captured"))).unwrap();
        assert_eq!(paid.event, captured.event, "order.paid is the same capture");
        assert_eq!(
            read_webhook(&body("payment.failed", payment("failed"))).unwrap().event,
            Some(Event::PaymentFailed {
                payment: "pay_1".into()
            })
        );
        let mut refund = payment("refunded");
        refund["refund"] = serde_json::json!({"entity": {"id": "rfnd_1", "payment_id": "pay_1", "amount": 900}});
        assert_eq!(
            read_webhook(&body("refund.processed", refund)).unwrap().event,
            Some(Event::Refunded {
                refund: "rfnd_1".into(),
                amount: 900
            })
        );
        let other = read_webhook(&body("refund.failed", payment("captured"))).unwrap();
        assert_eq!((other.event_type.as_str(), other.event), ("refund.failed", None));
    }

    #[test]
    fn a_body_without_what_its_type_needs_is_unreadable() {
        assert!(read_webhook(b"not json").is_err());
        assert!(read_webhook(b"{}").is_err());
        assert!(read_webhook(&body("payment.captured", serde_json::json!({}))).is_err());
        assert!(read_webhook(&body("refund.processed", payment("refunded"))).is_err());
    }
}
