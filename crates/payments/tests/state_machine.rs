//! Property tests of the order state machine: random orders of gateway events (late, repeated,
//! out of order, with a few payment and refund ids so that duplicates are common) keep every
//! promise the domain makes.
use proptest::prelude::*;
use thali_payments::domain::{Effect, Event, Order, Status, apply};

const AMOUNT: i64 = 1_000;

fn event() -> impl Strategy<Value = Event> {
    let payment = (0..3u8).prop_map(|n| format!("pay_{n}"));
    let amount = prop_oneof![8 => Just(AMOUNT), 1 => 1..AMOUNT * 2];
    prop_oneof![
        1 => (payment.clone(), amount.clone()).prop_map(|(payment, amount)| Event::Authorized { payment, amount }),
        3 => (payment.clone(), amount).prop_map(|(payment, amount)| Event::Captured { payment, amount }),
        1 => payment.prop_map(|payment| Event::PaymentFailed { payment }),
        1 => Just(Event::GaveUp),
        1 => Just(Event::Expired),
        2 => ((0..4u8).prop_map(|n| format!("rfnd_{n}")), 1..AMOUNT)
            .prop_map(|(refund, amount)| Event::Refunded { refund, amount }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_sequence_keeps_the_promises(events in proptest::collection::vec(event(), 0..40)) {
        let mut order = Order::new(AMOUNT);
        let (mut commits, mut releases) = (0, 0);
        let mut refunded_payments: Vec<String> = Vec::new();
        let mut captured: Vec<String> = Vec::new();
        for e in &events {
            let before = order.clone();
            let out = apply(&order, e);
            if let Event::Captured { payment, .. } = e
                && !captured.contains(payment)
            {
                captured.push(payment.clone());
            }
            for effect in &out.effects {
                match effect {
                    Effect::Commit => commits += 1,
                    Effect::Release => releases += 1,
                    Effect::Refund { payment, .. } => refunded_payments.push(payment.clone()),
                    Effect::Capture { amount, .. } => {
                        prop_assert_eq!(before.status, Status::Pending);
                        prop_assert_eq!(*amount, AMOUNT, "captures the order's amount, whatever was authorized");
                    }
                    Effect::Publish(_) => {}
                }
            }
            // Nothing leaves a final state; a final order only gives money back.
            if before.status.is_final() {
                prop_assert_eq!(out.order.status, before.status);
                let only_refunds = out.effects.iter().all(|f| matches!(f, Effect::Refund { .. }));
                prop_assert!(only_refunds, "a final order did {:?}", out.effects);
            }
            // Paid never goes back.
            if before.status.is_paid() || before.status == Status::Refunded {
                prop_assert!(out.order.status.is_paid() || out.order.status == Status::Refunded);
            }
            prop_assert!(out.order.refunded <= AMOUNT && out.order.refunded >= before.refunded);
            prop_assert_eq!(
                out.order.status == Status::Refunded,
                out.order.paid_by.is_some() && out.order.refunded == AMOUNT
            );
            // The same event again right away changes nothing that matters.
            if !matches!(e, Event::Authorized { .. } | Event::PaymentFailed { .. }) {
                let again = apply(&out.order, e);
                prop_assert!(again.effects.is_empty(), "{e:?} twice: {:?}", again.effects);
                prop_assert_eq!(&again.order, &out.order);
            }
            order = out.order;
        }
        // Stock is committed or released at most once, never both.
        prop_assert!(commits <= 1 && releases <= 1 && commits + releases <= 1);
        prop_assert_eq!(commits == 1, order.paid_by.is_some());
        // Every captured payment is either the one that paid or given back, exactly once.
        let mut refunded_sorted = refunded_payments.clone();
        refunded_sorted.sort();
        refunded_sorted.dedup();
        prop_assert_eq!(refunded_sorted.len(), refunded_payments.len(), "a payment refunded twice");
        for p in &captured {
            let kept = order.paid_by.as_ref() == Some(p);
            let given_back = refunded_payments.contains(p);
            prop_assert!(kept != given_back, "{p}: kept {kept}, given back {given_back}");
        }
    }
}
