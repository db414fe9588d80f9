//! What each call does to the state, with Razorpay's rules and error texts. Every function
//! checks everything before it changes anything, so an error leaves the state as it was.
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::state::{Order, Payment, PaymentError, Refund, State, now_unix};
use crate::gateway::{GatewayOrderStatus, GatewayPaymentStatus, GatewayRefundStatus, MAX_NOTES, MAX_RECEIPT_CHARS};
use crate::signature::sign_hex;

/// The most an order may ask for (keeps every sum far from overflow).
const MAX_AMOUNT: i64 = 1_000_000_000_000;
const MAX_NOTE_CHARS: usize = 256;

/// What the buyer's payment attempt ends as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayOutcome {
    /// Authorized and captured at once (Razorpay's auto-capture).
    Captured,
    /// Authorized only: the merchant captures it through the API.
    Authorized,
    /// Declined.
    Failed,
}

impl PayOutcome {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "captured" => Some(Self::Captured),
            "authorized" | "authorized-only" => Some(Self::Authorized),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// What the sandbox's checkout hands the buyer's browser after an attempt.
#[derive(Clone, Debug)]
pub struct CheckoutAnswer {
    pub razorpay_order_id: String,
    pub razorpay_payment_id: String,
    /// hex HMAC-SHA256(key secret, `order_id|payment_id`); none for a failed attempt.
    pub razorpay_signature: Option<String>,
    /// Razorpay's payment entity.
    pub payment: Value,
    /// Razorpay's order entity after the attempt.
    pub order: Value,
}

fn reject_unknown(fields: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(extra) => Err(ApiError::invalid(
            extra,
            format!("{extra} is/are not required and should not be sent"),
        )),
        None => Ok(()),
    }
}

/// An integer field; form bodies carry it as digits.
fn integer(fields: &Map<String, Value>, name: &str) -> Result<Option<i64>, ApiError> {
    let not_integer = || ApiError::invalid(name, format!("The {name} must be an integer."));
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(not_integer),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| not_integer()),
        Some(_) => Err(not_integer()),
    }
}

fn string(fields: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(ApiError::invalid(name, format!("The {name} must be a string."))),
    }
}

fn boolean(fields: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Number(n)) if n.as_i64() == Some(0) => Ok(false),
        Some(Value::Number(n)) if n.as_i64() == Some(1) => Ok(true),
        Some(Value::String(s)) if matches!(s.as_str(), "0" | "false") => Ok(false),
        Some(Value::String(s)) if matches!(s.as_str(), "1" | "true") => Ok(true),
        Some(_) => Err(ApiError::invalid(
            name,
            format!("The {name} field must be true or false."),
        )),
    }
}

fn notes(fields: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let notes = match fields.get("notes") {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::Array(items)) if items.is_empty() => return Ok(Map::new()),
        Some(Value::Object(notes)) => notes,
        Some(_) => return Err(ApiError::invalid("notes", "notes should be a key-value object")),
    };
    if notes.len() > MAX_NOTES {
        return Err(ApiError::invalid(
            "notes",
            format!("Number of fields in notes should be less than or equal to {MAX_NOTES}"),
        ));
    }
    for (key, value) in notes {
        let text_len = match value {
            Value::String(s) => s.chars().count(),
            Value::Number(_) | Value::Bool(_) | Value::Null => 0,
            _ => {
                return Err(ApiError::invalid(
                    "notes",
                    format!("notes.{key} must be a string or a number"),
                ));
            }
        };
        if key.chars().count() > MAX_NOTE_CHARS || text_len > MAX_NOTE_CHARS {
            return Err(ApiError::invalid(
                "notes",
                format!("notes keys and values may not be greater than {MAX_NOTE_CHARS} characters"),
            ));
        }
    }
    Ok(notes.clone())
}

/// The smallest amount Razorpay accepts: ₹1.00 for INR, one minor unit otherwise.
fn minimum_amount(currency: &str) -> i64 {
    if currency == "INR" { 100 } else { 1 }
}

/// `POST /v1/orders`.
pub(crate) fn create_order(state: &mut State, key_id: &str, fields: &Map<String, Value>) -> Result<Value, ApiError> {
    reject_unknown(
        fields,
        &[
            "amount",
            "currency",
            "receipt",
            "notes",
            "partial_payment",
            "first_payment_min_amount",
            "payment_capture",
        ],
    )?;
    let amount =
        integer(fields, "amount")?.ok_or_else(|| ApiError::invalid("amount", "The amount field is required."))?;
    let currency =
        string(fields, "currency")?.ok_or_else(|| ApiError::invalid("currency", "The currency field is required."))?;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ApiError::invalid("currency", "The selected currency is invalid."));
    }
    if amount < minimum_amount(&currency) {
        return Err(ApiError::invalid(
            "amount",
            "Order amount less than minimum amount allowed",
        ));
    }
    if amount > MAX_AMOUNT {
        return Err(ApiError::invalid("amount", "Amount exceeds maximum amount allowed."));
    }
    let receipt = string(fields, "receipt")?;
    if receipt.as_ref().is_some_and(|r| r.chars().count() > MAX_RECEIPT_CHARS) {
        return Err(ApiError::invalid(
            "receipt",
            format!("The receipt may not be greater than {MAX_RECEIPT_CHARS} characters."),
        ));
    }
    let notes = notes(fields)?;
    let partial_payment = boolean(fields, "partial_payment")?;
    integer(fields, "first_payment_min_amount")?;
    boolean(fields, "payment_capture")?;

    let order = Order {
        id: state.new_id("order_"),
        key_id: key_id.to_owned(),
        amount,
        amount_paid: 0,
        currency,
        receipt,
        notes,
        partial_payment,
        status: GatewayOrderStatus::Created,
        attempts: 0,
        created_at: now_unix(),
        payment_ids: Vec::new(),
    };
    let json = order.to_json();
    state.orders.insert(order.id.clone(), order);
    Ok(json)
}

fn own_order<'a>(state: &'a State, key_id: &str, order_id: &str) -> Result<&'a Order, ApiError> {
    state
        .orders
        .get(order_id)
        .filter(|o| o.key_id == key_id)
        .ok_or_else(ApiError::unknown_id)
}

fn own_payment<'a>(state: &'a State, key_id: &str, payment_id: &str) -> Result<&'a Payment, ApiError> {
    state
        .payments
        .get(payment_id)
        .filter(|p| p.key_id == key_id)
        .ok_or_else(ApiError::unknown_id)
}

/// `GET /v1/orders/{id}`.
pub(crate) fn fetch_order(state: &State, key_id: &str, order_id: &str) -> Result<Value, ApiError> {
    own_order(state, key_id, order_id).map(Order::to_json)
}

/// `GET /v1/orders/{id}/payments`: newest first, like Razorpay's lists.
pub(crate) fn order_payments(state: &State, key_id: &str, order_id: &str) -> Result<Value, ApiError> {
    let order = own_order(state, key_id, order_id)?;
    let items: Vec<Value> = order
        .payment_ids
        .iter()
        .rev()
        .filter_map(|id| state.payments.get(id))
        .map(Payment::to_json)
        .collect();
    Ok(json!({"entity": "collection", "count": items.len(), "items": items}))
}

/// `GET /v1/payments/{id}`.
pub(crate) fn fetch_payment(state: &State, key_id: &str, payment_id: &str) -> Result<Value, ApiError> {
    own_payment(state, key_id, payment_id).map(Payment::to_json)
}

/// Adds a captured payment to its order; raises `order.paid` when that pays it.
fn credit_order(state: &mut State, payment_id: &str) {
    let Some(payment) = state.payments.get(payment_id).cloned() else {
        return;
    };
    let Some(order) = state.orders.get_mut(&payment.order_id) else {
        return;
    };
    order.amount_paid += payment.amount;
    if order.status != GatewayOrderStatus::Paid && order.amount_paid >= order.amount {
        order.status = GatewayOrderStatus::Paid;
        let order_json = order.to_json();
        let payload = json!({"payment": {"entity": payment.to_json()}, "order": {"entity": order_json}});
        state.raise(
            &payment.key_id,
            &payment.order_id,
            "order.paid",
            &["payment", "order"],
            payload,
        );
    }
}

fn raise_payment_event(state: &mut State, payment: &Payment, event: &str) {
    let payload = json!({"payment": {"entity": payment.to_json()}});
    state.raise(&payment.key_id, &payment.order_id, event, &["payment"], payload);
}

/// `POST /sandbox/orders/{id}/pay`: the buyer's attempt in the checkout.
pub(crate) fn pay(
    state: &mut State,
    order_id: &str,
    outcome: PayOutcome,
    method: Option<&str>,
) -> Result<CheckoutAnswer, ApiError> {
    let order = state
        .orders
        .get(order_id)
        .ok_or_else(|| ApiError::not_found("No order with this id"))?;
    if order.status == GatewayOrderStatus::Paid {
        return Err(ApiError::bad_request("This order has already been paid"));
    }
    let method = match method {
        None => ["upi", "card"][fastrand::usize(..2)],
        Some(m @ ("upi" | "card" | "netbanking" | "wallet" | "emi")) => m,
        Some(_) => {
            return Err(ApiError::invalid(
                "method",
                "method must be upi, card, netbanking, wallet or emi",
            ));
        }
    };
    let key_id = order.key_id.clone();
    let key_secret = state
        .accounts
        .get(&key_id)
        .map(|a| a.key_secret.clone())
        .ok_or_else(|| ApiError::not_found("The order's account no longer exists"))?;
    let mut payment = Payment {
        id: state.new_id("pay_"),
        key_id: key_id.clone(),
        order_id: order_id.to_owned(),
        amount: order.amount_due(),
        currency: order.currency.clone(),
        status: GatewayPaymentStatus::Authorized,
        captured: false,
        method: method.to_owned(),
        amount_refunded: 0,
        error: None,
        created_at: now_unix(),
    };
    if let Some(order) = state.orders.get_mut(order_id) {
        order.attempts += 1;
        order.payment_ids.push(payment.id.clone());
        if order.status == GatewayOrderStatus::Created {
            order.status = GatewayOrderStatus::Attempted;
        }
    }
    match outcome {
        PayOutcome::Failed => {
            payment.status = GatewayPaymentStatus::Failed;
            payment.error = Some(PaymentError {
                code: "BAD_REQUEST_ERROR".into(),
                description: "Payment failed because the bank declined it.".into(),
                source: "bank".into(),
                step: "payment_authorization".into(),
                reason: "payment_failed".into(),
            });
            raise_payment_event(state, &payment, "payment.failed");
            state.payments.insert(payment.id.clone(), payment.clone());
        }
        PayOutcome::Authorized => {
            raise_payment_event(state, &payment, "payment.authorized");
            state.payments.insert(payment.id.clone(), payment.clone());
        }
        PayOutcome::Captured => {
            raise_payment_event(state, &payment, "payment.authorized");
            payment.status = GatewayPaymentStatus::Captured;
            payment.captured = true;
            raise_payment_event(state, &payment, "payment.captured");
            state.payments.insert(payment.id.clone(), payment.clone());
            credit_order(state, &payment.id);
        }
    }
    let order = state.orders.get(order_id).map(Order::to_json).unwrap_or(Value::Null);
    let razorpay_signature = (outcome != PayOutcome::Failed)
        .then(|| sign_hex(key_secret.as_bytes(), format!("{order_id}|{}", payment.id).as_bytes()));
    Ok(CheckoutAnswer {
        razorpay_order_id: order_id.to_owned(),
        razorpay_payment_id: payment.id.clone(),
        razorpay_signature,
        payment: payment.to_json(),
        order,
    })
}

/// `POST /v1/payments/{id}/capture`.
pub(crate) fn capture(
    state: &mut State,
    key_id: &str,
    payment_id: &str,
    fields: &Map<String, Value>,
) -> Result<Value, ApiError> {
    reject_unknown(fields, &["amount", "currency"])?;
    let payment = own_payment(state, key_id, payment_id)?;
    let amount =
        integer(fields, "amount")?.ok_or_else(|| ApiError::invalid("amount", "The amount field is required."))?;
    let currency = string(fields, "currency")?;
    match payment.status {
        GatewayPaymentStatus::Authorized => {}
        GatewayPaymentStatus::Captured | GatewayPaymentStatus::Refunded => {
            return Err(ApiError::bad_request("This payment has already been captured"));
        }
        _ => {
            return Err(ApiError::bad_request(
                "Only payments which have been authorized and not yet captured can be captured",
            ));
        }
    }
    if amount != payment.amount {
        return Err(ApiError::invalid(
            "amount",
            "Capture amount must be equal to the amount authorized",
        ));
    }
    if currency.is_some_and(|c| c != payment.currency) {
        return Err(ApiError::invalid(
            "currency",
            "Currency should be same as payment currency",
        ));
    }
    let mut payment = payment.clone();
    payment.status = GatewayPaymentStatus::Captured;
    payment.captured = true;
    raise_payment_event(state, &payment, "payment.captured");
    let json = payment.to_json();
    state.payments.insert(payment.id.clone(), payment);
    credit_order(state, payment_id);
    Ok(json)
}

/// `GET /v1/payments/{id}/refunds`: newest first.
pub(crate) fn payment_refunds(state: &State, key_id: &str, payment_id: &str) -> Result<Value, ApiError> {
    own_payment(state, key_id, payment_id)?;
    let mut items: Vec<&Refund> = state.refunds.values().filter(|r| r.payment_id == payment_id).collect();
    items.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
    let items: Vec<Value> = items.into_iter().map(Refund::to_json).collect();
    Ok(json!({"entity": "collection", "count": items.len(), "items": items}))
}

/// `POST /v1/payments/{id}/refund`: processed at once.
pub(crate) fn refund(
    state: &mut State,
    key_id: &str,
    payment_id: &str,
    fields: &Map<String, Value>,
) -> Result<Value, ApiError> {
    reject_unknown(fields, &["amount", "speed", "notes", "receipt"])?;
    let payment = own_payment(state, key_id, payment_id)?;
    match payment.status {
        GatewayPaymentStatus::Captured => {}
        GatewayPaymentStatus::Refunded => {
            return Err(ApiError::bad_request("The payment has been fully refunded already"));
        }
        _ => return Err(ApiError::bad_request("Only captured payments can be refunded")),
    }
    let left = payment.amount - payment.amount_refunded;
    let amount = integer(fields, "amount")?.unwrap_or(left);
    if amount < minimum_amount(&payment.currency).min(left) || amount < 1 {
        return Err(ApiError::invalid("amount", "The amount must be atleast INR 1.00"));
    }
    if amount > left {
        return Err(ApiError::invalid(
            "amount",
            "The refund amount provided is greater than amount captured",
        ));
    }
    if let Some(speed) = string(fields, "speed")?
        && !matches!(speed.as_str(), "normal" | "optimum")
    {
        return Err(ApiError::invalid("speed", "The selected speed is invalid."));
    }
    let notes = notes(fields)?;
    let receipt = string(fields, "receipt")?;

    let mut payment = payment.clone();
    payment.amount_refunded += amount;
    if payment.amount_refunded >= payment.amount {
        payment.status = GatewayPaymentStatus::Refunded;
    }
    let refund = Refund {
        id: state.new_id("rfnd_"),
        key_id: key_id.to_owned(),
        payment_id: payment.id.clone(),
        amount,
        currency: payment.currency.clone(),
        status: GatewayRefundStatus::Processed,
        notes,
        receipt,
        created_at: now_unix(),
    };
    let json = refund.to_json();
    let payload = json!({"refund": {"entity": json}, "payment": {"entity": payment.to_json()}});
    state.raise(
        key_id,
        &payment.order_id,
        "refund.processed",
        &["refund", "payment"],
        payload,
    );
    state.refunds.insert(refund.id.clone(), refund);
    state.payments.insert(payment.id.clone(), payment);
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::state::Account;

    fn fields(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    fn state_with_account() -> State {
        let mut state = State::default();
        state.accounts.insert(
            "rzp_test_a".into(),
            Account {
                key_id: "rzp_test_a".into(),
                key_secret: "secret_a".into(),
                webhook_secret: "wh_a".into(),
                webhook_url: Some("http://127.0.0.1:9/hook".into()),
                account_id: "acc_a".into(),
            },
        );
        state
    }

    #[test]
    fn orders_follow_razorpays_shape_rules() {
        let mut state = state_with_account();
        let bad = [
            (json!({"currency": "INR"}), "amount"),
            (json!({"amount": 99, "currency": "INR"}), "amount"),
            (json!({"amount": 100.5, "currency": "INR"}), "amount"),
            (json!({"amount": "lots", "currency": "INR"}), "amount"),
            (json!({"amount": 100, "currency": "inr"}), "currency"),
            (
                json!({"amount": 100, "currency": "INR", "receipt": "r".repeat(41)}),
                "receipt",
            ),
            (json!({"amount": 100, "currency": "INR", "colour": "red"}), "colour"),
            (json!({"amount": 100, "currency": "INR", "notes": "text"}), "notes"),
        ];
        for (body, field) in bad {
            let error = create_order(&mut state, "rzp_test_a", &fields(body.clone())).unwrap_err();
            assert_eq!(error.field.as_deref(), Some(field), "{body}");
            assert_eq!(error.status.as_u16(), 400);
        }
        let many: Map<String, Value> = (0..16).map(|i| (format!("k{i}"), json!("v"))).collect();
        let error = create_order(
            &mut state,
            "rzp_test_a",
            &fields(json!({"amount": 100, "currency": "INR", "notes": many})),
        )
        .unwrap_err();
        assert_eq!(error.field.as_deref(), Some("notes"));
        assert!(state.orders.is_empty(), "refusals leave no order behind");
        let order = create_order(
            &mut state,
            "rzp_test_a",
            &fields(json!({"amount": "100", "currency": "INR"})),
        )
        .unwrap();
        assert_eq!(order["amount_due"], 100);
        assert_eq!(order["notes"], json!([]));
    }

    #[test]
    fn a_captured_attempt_pays_the_order_and_raises_three_events() {
        let mut state = state_with_account();
        let order = create_order(
            &mut state,
            "rzp_test_a",
            &fields(json!({"amount": 500, "currency": "INR"})),
        )
        .unwrap();
        let id = order["id"].as_str().unwrap();
        let answer = pay(&mut state, id, PayOutcome::Captured, Some("upi")).unwrap();
        assert_eq!(answer.order["status"], "paid");
        assert_eq!(answer.order["amount_due"], 0);
        let events: Vec<&str> = state.outbox.iter().map(|d| d.event.as_str()).collect();
        assert_eq!(events, ["payment.authorized", "payment.captured", "order.paid"]);
        assert!(
            pay(&mut state, id, PayOutcome::Captured, None).is_err(),
            "a paid order takes no more payments"
        );
    }
}
