//! The order state machine, a pure function: [`apply`] takes an order and one thing the gateway
//! (or the clock) says happened, and answers the next order and the effects to carry out. The
//! store runs it inside the transaction that records the event, so an event is applied once.
//!
//! ```text
//!            captured                  refund (part)          refund (rest)
//!  pending ───────────▶ paid ───────▶ partially_refunded ───▶ refunded
//!     │                   └───────────── refund (all) ─────────▲
//!     ├── gave up (every attempt failed) ──▶ failed
//!     └── expired (no capture in time) ────▶ expired
//! ```
//!
//! `failed`, `expired` and `refunded` are final: nothing leaves them. A payment captured for an
//! order that is final, or a second payment captured for an order already paid, is money the
//! buyer should not have paid: the effect is to refund it (once per payment). A failed payment
//! attempt does not fail the order: Razorpay Checkout lets the buyer try again until the order
//! expires; the reconciler gives up on an order whose attempts all failed ([`Event::GaveUp`]).

mod account;
mod checkout;
mod deposit;
mod fulfilment;
mod webhook;
pub use account::*;
pub use checkout::*;
pub use deposit::*;
pub use fulfilment::*;
pub use webhook::*;

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Pending,
    Paid,
    Failed,
    Expired,
    PartiallyRefunded,
    Refunded,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Paid,
        Status::Failed,
        Status::Expired,
        Status::PartiallyRefunded,
        Status::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Paid => "paid",
            Status::Failed => "failed",
            Status::Expired => "expired",
            Status::PartiallyRefunded => "partially_refunded",
            Status::Refunded => "refunded",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Nothing leaves a final state.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Failed | Status::Expired | Status::Refunded)
    }

    /// The buyer's money was taken for this order (and not all of it given back).
    pub fn is_paid(self) -> bool {
        matches!(self, Status::Paid | Status::PartiallyRefunded)
    }
}

/// An order as the state machine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub status: Status,
    /// Minor units, > 0.
    pub amount: i64,
    /// The payment that paid the order, once captured.
    pub paid_by: Option<String>,
    /// Minor units refunded so far (processed refunds).
    pub refunded: i64,
    /// Refund ids already counted: a refund event delivered twice counts once.
    pub refunds: Vec<String>,
    /// Payments whose refund this order has asked for (late or duplicate captures): asked once.
    pub refunding: Vec<String>,
    /// Failed payment attempts seen.
    pub failed_attempts: u32,
}

impl Order {
    /// A new order awaiting payment.
    pub fn new(amount: i64) -> Self {
        Self {
            status: Status::Pending,
            amount,
            paid_by: None,
            refunded: 0,
            refunds: Vec::new(),
            refunding: Vec::new(),
            failed_attempts: 0,
        }
    }
}

/// What happened, as the gateway's webhooks or the reconciler report it, or the clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `payment.authorized`: the money is held, not yet taken.
    Authorized { payment: String, amount: i64 },
    /// `payment.captured` (or `order.paid`): the money is taken.
    Captured { payment: String, amount: i64 },
    /// `payment.failed`: one attempt failed; the buyer may try again.
    PaymentFailed { payment: String },
    /// The reconciler found only failed attempts on an order past its retry time.
    GaveUp,
    /// The order's time ran out without a capture (its stock or table goes back).
    Expired,
    /// `refund.processed`.
    Refunded { refund: String, amount: i64 },
}

/// Why a payment is refunded without anyone asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundReason {
    /// Captured after the order had failed or expired: the stock or table is gone.
    LateCapture,
    /// A second payment captured for an order already paid.
    DuplicatePayment,
    /// Captured for another amount than the order's.
    WrongAmount,
}

/// What the caller must do after applying an event (in the same transaction, through the outbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Capture an authorized payment of a pending order (auto-capture), for the order's amount.
    Capture { payment: String, amount: i64 },
    /// The order is paid: commit its stock reservation (or confirm its booking).
    Commit,
    /// The order will not be paid: release its stock reservation (or its table).
    Release,
    /// Give a payment back in full, and tell the buyer why.
    Refund {
        payment: String,
        amount: i64,
        reason: RefundReason,
    },
    /// Publish `order.paid`, `order.failed`, `order.expired` or `order.refunded`.
    Publish(Status),
}

/// The next order and the effects of `event` on `order`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub order: Order,
    pub effects: Vec<Effect>,
}

/// Applies `event` to `order`. Total: every event in every state has an answer (often "nothing
/// changes"), because gateway events arrive late, twice and out of order.
pub fn apply(order: &Order, event: &Event) -> Outcome {
    let mut next = order.clone();
    let mut effects = Vec::new();
    match event {
        Event::Authorized { payment, .. } => {
            // Captured or refunded already, or past hope: an authorization alone takes no money
            // (Razorpay returns uncaptured payments by itself), so it is left alone.
            if order.status == Status::Pending {
                effects.push(Effect::Capture {
                    payment: payment.clone(),
                    amount: order.amount,
                });
            }
        }
        Event::Captured { payment, amount } => {
            if order.paid_by.as_ref() == Some(payment) {
                // The capture that paid the order, again: nothing new.
            } else if order.status == Status::Pending && *amount == order.amount && !order.refunding.contains(payment) {
                next.status = Status::Paid;
                next.paid_by = Some(payment.clone());
                effects.push(Effect::Commit);
                effects.push(Effect::Publish(Status::Paid));
            } else if !order.refunding.contains(payment) {
                let reason = if order.status == Status::Pending {
                    RefundReason::WrongAmount
                } else if order.status.is_paid() || order.paid_by.is_some() {
                    RefundReason::DuplicatePayment
                } else {
                    RefundReason::LateCapture
                };
                next.refunding.push(payment.clone());
                effects.push(Effect::Refund {
                    payment: payment.clone(),
                    amount: *amount,
                    reason,
                });
            }
        }
        Event::PaymentFailed { .. } => {
            if order.status == Status::Pending {
                next.failed_attempts = order.failed_attempts.saturating_add(1);
            }
        }
        Event::GaveUp | Event::Expired => {
            if order.status == Status::Pending {
                next.status = if *event == Event::GaveUp {
                    Status::Failed
                } else {
                    Status::Expired
                };
                effects.push(Effect::Release);
                effects.push(Effect::Publish(next.status));
            }
        }
        Event::Refunded { refund, amount } => {
            // Refunds of the order's own payment count; a late or duplicate payment's refund
            // gives back money the order never counted.
            if order.status.is_paid() && !order.refunds.contains(refund) && *amount > 0 {
                next.refunds.push(refund.clone());
                next.refunded = (order.refunded + amount).min(order.amount);
                next.status = if next.refunded >= order.amount {
                    Status::Refunded
                } else {
                    Status::PartiallyRefunded
                };
                effects.push(Effect::Publish(Status::Refunded));
            }
        }
    }
    Outcome { order: next, effects }
}

/// Why a refund cannot be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefundRefused {
    #[error("only a paid order can be refunded")]
    NotPaid,
    #[error("the amount must be between 1 and what is left to refund")]
    BadAmount,
}

/// The amount of a refund asked for `order` (all that is left when `requested` is None), with
/// `in_flight` minor units already asked for and not yet processed.
pub fn refund_amount(order: &Order, requested: Option<i64>, in_flight: i64) -> Result<i64, RefundRefused> {
    if !order.status.is_paid() {
        return Err(RefundRefused::NotPaid);
    }
    let left = order.amount - order.refunded - in_flight.max(0);
    let amount = requested.unwrap_or(left);
    if amount < 1 || amount > left {
        return Err(RefundRefused::BadAmount);
    }
    Ok(amount)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(p: &str, amount: i64) -> Event {
        Event::Captured {
            payment: p.into(),
            amount,
        }
    }

    fn refund(payment: &str, amount: i64, reason: RefundReason) -> Effect {
        Effect::Refund {
            payment: payment.into(),
            amount,
            reason,
        }
    }

    fn refunded(refund: &str, amount: i64) -> Event {
        Event::Refunded {
            refund: refund.into(),
            amount,
        }
    }

    #[test]
    fn an_authorized_payment_is_captured_then_the_capture_pays_the_order() {
        let o = Order::new(4900);
        let auth = apply(
            &o,
            &Event::Authorized {
                payment: "pay_1".into(),
                amount: 4900,
            },
        );
        assert_eq!(auth.order, o);
        assert_eq!(
            auth.effects,
            vec![Effect::Capture {
                payment: "pay_1".into(),
                amount: 4900
            }]
        );
        let paid = apply(&auth.order, &captured("pay_1", 4900));
        assert_eq!(paid.order.status, Status::Paid);
        assert_eq!(paid.effects, vec![Effect::Commit, Effect::Publish(Status::Paid)]);
        // Delivered again, or authorized after the capture (out of order): nothing more.
        assert!(apply(&paid.order, &captured("pay_1", 4900)).effects.is_empty());
        let late_auth = apply(
            &paid.order,
            &Event::Authorized {
                payment: "pay_1".into(),
                amount: 4900,
            },
        );
        assert!(late_auth.effects.is_empty());
        assert_eq!(late_auth.order, paid.order);
    }

    #[test]
    fn a_failed_attempt_leaves_the_order_open_until_the_reconciler_gives_up() {
        let o = apply(
            &Order::new(100),
            &Event::PaymentFailed {
                payment: "pay_1".into(),
            },
        )
        .order;
        assert_eq!((o.status, o.failed_attempts), (Status::Pending, 1));
        let retried = apply(&o, &captured("pay_2", 100));
        assert_eq!(retried.order.status, Status::Paid, "the buyer tried again and paid");
        let gave_up = apply(&o, &Event::GaveUp);
        assert_eq!(gave_up.order.status, Status::Failed);
        assert_eq!(gave_up.effects, vec![Effect::Release, Effect::Publish(Status::Failed)]);
    }

    #[test]
    fn a_capture_after_expiry_is_refunded_once_and_the_order_stays_expired() {
        let expired = apply(&Order::new(500), &Event::Expired);
        assert_eq!(expired.order.status, Status::Expired);
        assert_eq!(expired.effects, vec![Effect::Release, Effect::Publish(Status::Expired)]);
        let late = apply(&expired.order, &captured("pay_9", 500));
        assert_eq!(late.order.status, Status::Expired);
        assert_eq!(late.effects, vec![refund("pay_9", 500, RefundReason::LateCapture)]);
        assert!(
            apply(&late.order, &captured("pay_9", 500)).effects.is_empty(),
            "asked once"
        );
    }

    #[test]
    fn a_second_payment_for_a_paid_order_is_given_back() {
        let paid = apply(&Order::new(500), &captured("pay_1", 500)).order;
        let twice = apply(&paid, &captured("pay_2", 500));
        assert_eq!(twice.order.status, Status::Paid);
        assert_eq!(
            twice.effects,
            vec![refund("pay_2", 500, RefundReason::DuplicatePayment)]
        );
        let wrong = apply(&Order::new(500), &captured("pay_3", 499));
        assert_eq!(wrong.order.status, Status::Pending);
        assert!(matches!(
            wrong.effects[..],
            [Effect::Refund {
                reason: RefundReason::WrongAmount,
                ..
            }]
        ));
    }

    #[test]
    fn refunds_count_once_and_end_in_refunded() {
        let paid = apply(&Order::new(1000), &captured("pay_1", 1000)).order;
        assert_eq!(refund_amount(&paid, None, 0), Ok(1000));
        assert_eq!(refund_amount(&paid, Some(1001), 0), Err(RefundRefused::BadAmount));
        assert_eq!(refund_amount(&paid, Some(0), 0), Err(RefundRefused::BadAmount));
        assert_eq!(refund_amount(&paid, Some(600), 500), Err(RefundRefused::BadAmount));
        let part = apply(&paid, &refunded("rfnd_1", 400));
        assert_eq!(
            (part.order.status, part.order.refunded),
            (Status::PartiallyRefunded, 400)
        );
        let again = apply(&part.order, &refunded("rfnd_1", 400));
        assert_eq!(again.order, part.order, "the same refund twice counts once");
        let rest = apply(&part.order, &refunded("rfnd_2", 600));
        assert_eq!((rest.order.status, rest.order.refunded), (Status::Refunded, 1000));
        assert_eq!(refund_amount(&rest.order, None, 0), Err(RefundRefused::NotPaid));
        assert_eq!(refund_amount(&Order::new(5), None, 0), Err(RefundRefused::NotPaid));
    }

    #[test]
    fn statuses_have_stable_names() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("PAID"), None);
    }
}
