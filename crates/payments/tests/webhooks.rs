//! Webhooks in the store, on every configured backend (SQLite always, PostgreSQL with
//! `THALI_TEST_DATABASE_URL`, required under CI=true): one effect per event however often and
//! however concurrently it arrives, events out of order, and the dead-letter queue's schedule
//! (30 s, 1 min, 5 min, 30 min, 1 h, then dead) on a clock the test moves.
use std::{sync::Arc, time::Duration};

mod support;

use chrono::Utc;
use sea_orm::EntityTrait;
use serde_json::json;
use support::backends;
use thali_payments::{
    domain::Status,
    store::{CAPTURE, COMMIT_STOCK, PaymentsStore, Taken, dlq},
};
use thali_platform::{
    jobs::{ManualClock, Queue, admin},
    testing::{self, TestDatabase},
};
use uuid::Uuid;

fn store_on(t: &TestDatabase) -> (PaymentsStore, ManualClock) {
    let clock = ManualClock::new(testing::ten_past_the_hour());
    let queue = Queue::with_clock(thali_payments::workers::SERVICE, Arc::new(clock.clone()));
    (PaymentsStore::with_queue(t.db.clone(), queue), clock)
}

/// A pending order of 4900 paise; returns (its id, its gateway order id).
async fn pending_order(store: &PaymentsStore) -> (Uuid, String) {
    let order = support::pending(&format!("order_{}", Uuid::now_v7().simple()), 1, Utc::now());
    let answer = (order.id, order.gateway_order_id.clone());
    support::insert(store, order).await;
    answer
}

fn event(kind: &str, gateway_order: &str, payment: &str, amount: i64) -> Vec<u8> {
    json!({"entity": "event", "account_id": "acc_1", "event": kind, "contains": ["payment"],
        "payload": {"payment": {"entity": {"id": payment, "order_id": gateway_order, "amount": amount,
            "currency": "INR", "status": "captured", "method": "upi"}}}, "created_at": 1})
    .to_string()
    .into_bytes()
}

/// Jobs of `kind` in the payments queue.
async fn jobs(t: &TestDatabase, kind: &str) -> usize {
    let filter = admin::Filter {
        service: Some(thali_payments::workers::SERVICE.into()),
        kind: Some(kind.into()),
        state: None,
    };
    admin::list(&t.db, &filter, 100).await.unwrap().len()
}

#[tokio::test]
async fn the_same_event_three_times_and_concurrently_has_one_effect() {
    for t in backends().await {
        let (store, _) = store_on(&t);
        let (order, gateway) = pending_order(&store).await;
        let captured = event("payment.captured", &gateway, "pay_1", 4900);
        let first = store.take_webhook("platform", "evt_1", &captured).await.unwrap();
        assert_eq!(
            first,
            Taken::Applied {
                order_id: order,
                status: Status::Paid
            }
        );
        for _ in 0..2 {
            assert_eq!(
                store.take_webhook("platform", "evt_1", &captured).await.unwrap(),
                Taken::Duplicate
            );
        }
        // order.paid, another event about the same capture: applied, nothing new to do.
        let paid = event("order.paid", &gateway, "pay_1", 4900);
        store.take_webhook("platform", "evt_2", &paid).await.unwrap();
        assert_eq!(
            jobs(&t, COMMIT_STOCK).await,
            1,
            "{}: the stock is committed once",
            t.backend
        );
        let stored = store.order(order).await.unwrap();
        assert_eq!(stored.status, Status::Paid);
        assert!(stored.paid_at.is_some());

        // Eight deliveries of one event at once: one applies it.
        let (second, gateway) = pending_order(&store).await;
        let body = event("payment.captured", &gateway, "pay_2", 4900);
        let mut racers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (store, body) = (store.clone(), body.clone());
            racers.spawn(async move { store.take_webhook("platform", "evt_3", &body).await });
        }
        let mut applied = 0;
        while let Some(taken) = racers.join_next().await {
            match taken.unwrap().unwrap_or_else(|e| panic!("{}: {e:?}", t.backend)) {
                Taken::Applied { order_id, .. } => {
                    assert_eq!(order_id, second);
                    applied += 1;
                }
                Taken::Duplicate => {}
                Taken::Ignored => panic!("not ignored"),
            }
        }
        assert_eq!(applied, 1, "{}: one delivery applies it", t.backend);
        assert_eq!(jobs(&t, COMMIT_STOCK).await, 2, "{}", t.backend);
    }
}

#[tokio::test]
async fn events_out_of_order_settle_an_order_once() {
    for t in backends().await {
        let (store, _) = store_on(&t);
        // Captured before authorized: paid, and the late authorization captures nothing.
        let (a, gateway) = pending_order(&store).await;
        store
            .take_webhook("platform", "e1", &event("payment.captured", &gateway, "pay_a", 4900))
            .await
            .unwrap();
        store
            .take_webhook("platform", "e2", &event("payment.authorized", &gateway, "pay_a", 4900))
            .await
            .unwrap();
        assert_eq!(store.order(a).await.unwrap().status, Status::Paid);
        assert_eq!(jobs(&t, CAPTURE).await, 0, "{}: nothing to capture", t.backend);

        // Authorized first: payments captures it; the capture then pays the order.
        let (b, gateway) = pending_order(&store).await;
        store
            .take_webhook("platform", "e3", &event("payment.authorized", &gateway, "pay_b", 4900))
            .await
            .unwrap();
        assert_eq!(store.order(b).await.unwrap().status, Status::Pending);
        assert_eq!(jobs(&t, CAPTURE).await, 1, "{}: auto-capture", t.backend);
        // A failed attempt leaves the order open for another try.
        store
            .take_webhook("platform", "e4", &event("payment.failed", &gateway, "pay_x", 4900))
            .await
            .unwrap();
        store
            .take_webhook("platform", "e5", &event("payment.captured", &gateway, "pay_b", 4900))
            .await
            .unwrap();
        assert_eq!(store.order(b).await.unwrap().status, Status::Paid);

        // An order Thali does not have, and a type that changes nothing: recorded, ignored.
        assert_eq!(
            store
                .take_webhook(
                    "platform",
                    "e6",
                    &event("payment.captured", "order_unknown", "pay_z", 100)
                )
                .await
                .unwrap(),
            Taken::Ignored
        );
        assert_eq!(
            store
                .take_webhook("platform", "e7", &event("refund.failed", &gateway, "pay_b", 4900))
                .await
                .unwrap(),
            Taken::Ignored
        );
        assert_eq!(
            store.take_webhook("platform", "e8", b"{not json").await.unwrap(),
            Taken::Ignored,
            "{}: a signed body that cannot be read is recorded, not retried forever",
            t.backend
        );
        let outcomes: Vec<(String, String)> = thali_payments::store::payment_event::Entity::find()
            .all(&t.db)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.event_id, e.outcome))
            .filter(|(id, _)| id == "e6" || id == "e8")
            .collect();
        assert_eq!(outcomes.len(), 2);
        for (id, outcome) in outcomes {
            let want = if id == "e8" { "unreadable" } else { "ignored" };
            assert_eq!(outcome, want, "{}: {id}", t.backend);
        }
    }
}

async fn dlq_rows(store: &PaymentsStore) -> Vec<dlq::Model> {
    store.dlq_list(false, 100).await.unwrap()
}

#[tokio::test]
async fn a_failed_processing_waits_in_the_dlq_and_a_retry_on_schedule_applies_it() {
    for t in backends().await {
        let (store, clock) = store_on(&t);
        let (order, gateway) = pending_order(&store).await;
        let body = event("payment.captured", &gateway, "pay_1", 4900);
        store.faults().fail_next(1);
        let failure = store.take_webhook("platform", "evt_dlq", &body).await.unwrap_err();
        store
            .dead_letter("platform", "evt_dlq", &body, &failure.to_string())
            .await
            .unwrap();
        // Dead-lettering twice keeps one row.
        store.dead_letter("platform", "evt_dlq", &body, "again").await.unwrap();
        let rows = dlq_rows(&store).await;
        assert_eq!(rows.len(), 1, "{}", t.backend);
        assert_eq!((rows[0].status.as_str(), rows[0].retry_count), ("pending", 0));
        assert_eq!(rows[0].event_type, "payment.captured");
        assert!(rows[0].error_message.contains("injected"), "{}", rows[0].error_message);
        assert_eq!(store.order(order).await.unwrap().status, Status::Pending);

        assert!(store.dlq_claim(10).await.unwrap().is_empty(), "not due before 30 s");
        clock.advance(Duration::from_secs(30));
        let due = store.dlq_claim(10).await.unwrap();
        assert_eq!(due.len(), 1, "{}", t.backend);
        assert!(
            store.dlq_claim(10).await.unwrap().is_empty(),
            "{}: claimed once",
            t.backend
        );
        assert!(store.dlq_retry(&due[0]).await.unwrap());
        assert!(
            dlq_rows(&store).await.is_empty(),
            "{}: success removes the row",
            t.backend
        );
        assert_eq!(store.order(order).await.unwrap().status, Status::Paid);
        assert_eq!(jobs(&t, COMMIT_STOCK).await, 1);
    }
}

#[tokio::test]
async fn five_failed_retries_make_it_dead_and_a_redrive_brings_it_back() {
    for t in backends().await {
        let (store, clock) = store_on(&t);
        let (order, gateway) = pending_order(&store).await;
        let body = event("payment.captured", &gateway, "pay_1", 4900);
        store
            .dead_letter("platform", "evt_dead", &body, "first failure")
            .await
            .unwrap();
        store.faults().fail_next(5);
        let waits = [30u64, 60, 300, 1800, 3600];
        for (i, wait) in waits.iter().enumerate() {
            clock.advance(Duration::from_secs(wait - 1));
            assert!(
                store.dlq_claim(10).await.unwrap().is_empty(),
                "{}: retry {} not due before {wait} s",
                t.backend,
                i + 1
            );
            clock.advance(Duration::from_secs(1));
            let due = store.dlq_claim(10).await.unwrap();
            assert_eq!(due.len(), 1, "{}: retry {} due after {wait} s", t.backend, i + 1);
            assert!(!store.dlq_retry(&due[0]).await.unwrap());
            let row = &dlq_rows(&store).await[0];
            assert_eq!(row.retry_count, i as i32 + 1);
            let expected = if i == 4 { "dead" } else { "pending" };
            assert_eq!(row.status, expected, "{}", t.backend);
        }
        clock.advance(Duration::from_secs(7200));
        assert!(
            store.dlq_claim(10).await.unwrap().is_empty(),
            "a dead row is not retried"
        );
        assert_eq!(store.dlq_size().await.unwrap(), (0, 1));
        assert_eq!(store.order(order).await.unwrap().status, Status::Pending);

        // An operator fixes the cause and redrives it.
        let id = dlq_rows(&store).await[0].id;
        assert!(store.dlq_redrive(id).await.unwrap());
        let due = store.dlq_claim(10).await.unwrap();
        assert!(store.dlq_retry(&due[0]).await.unwrap(), "{}", t.backend);
        assert_eq!(store.order(order).await.unwrap().status, Status::Paid);
        assert!(!store.dlq_redrive(Uuid::now_v7()).await.unwrap());
    }
}

#[tokio::test]
async fn a_dead_letter_queue_that_cannot_be_written_is_an_error() {
    use sea_orm::ConnectionTrait;
    for t in backends().await {
        let (store, _) = store_on(&t);
        let fail = match t.backend {
            "postgres" => {
                "CREATE FUNCTION dlq_down() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'dlq down'; END $$ \
                 LANGUAGE plpgsql; CREATE TRIGGER dlq_down BEFORE INSERT ON webhook_dlq FOR EACH ROW EXECUTE FUNCTION dlq_down()"
            }
            _ => "CREATE TRIGGER dlq_down BEFORE INSERT ON webhook_dlq BEGIN SELECT RAISE(ABORT, 'dlq down'); END",
        };
        t.db.execute_unprepared(fail).await.unwrap();
        let body = event("payment.captured", "order_x", "pay_1", 4900);
        assert!(
            store.dead_letter("platform", "evt_x", &body, "failed").await.is_err(),
            "{}: the caller must learn the event was not stored",
            t.backend
        );
    }
}

#[tokio::test]
async fn the_sweep_retries_what_is_due_and_leaves_the_rest() {
    for t in backends().await {
        let (store, clock) = store_on(&t);
        let (due_order, gateway) = pending_order(&store).await;
        store
            .dead_letter(
                "platform",
                "evt_a",
                &event("payment.captured", &gateway, "pay_a", 4900),
                "failed",
            )
            .await
            .unwrap();
        clock.advance(Duration::from_secs(20));
        let (later_order, gateway) = pending_order(&store).await;
        store
            .dead_letter(
                "platform",
                "evt_b",
                &event("payment.captured", &gateway, "pay_b", 4900),
                "failed",
            )
            .await
            .unwrap();
        clock.advance(Duration::from_secs(10));
        thali_payments::workers::sweep_dlq(store.clone()).await.unwrap();
        assert_eq!(
            store.order(due_order).await.unwrap().status,
            Status::Paid,
            "{}",
            t.backend
        );
        assert_eq!(store.order(later_order).await.unwrap().status, Status::Pending);
        assert_eq!(store.dlq_size().await.unwrap(), (1, 0), "{}", t.backend);
        clock.advance(Duration::from_secs(20));
        thali_payments::workers::sweep_dlq(store.clone()).await.unwrap();
        assert_eq!(store.order(later_order).await.unwrap().status, Status::Paid);
        assert_eq!(store.dlq_size().await.unwrap(), (0, 0));
    }
}

#[tokio::test]
async fn refunds_asked_at_once_never_give_back_more_than_was_paid() {
    use thali_payments::{
        domain::PaymentsError,
        store::{REFUND_REQUEST, RefundAsk},
    };
    for t in backends().await {
        let (store, _) = store_on(&t);
        let (order, gateway) = pending_order(&store).await;
        let ask = |caller: &'static str, amount: Option<i64>| RefundAsk {
            caller,
            admin: false,
            order_id: order,
            amount_minor: amount,
            reason: "",
        };
        assert!(
            matches!(
                store.request_refund(&ask("seller", None), None).await,
                Err(PaymentsError::NotPaid)
            ),
            "{}: a pending order is not refunded",
            t.backend
        );
        store
            .take_webhook(
                "platform",
                "evt_paid",
                &event("payment.captured", &gateway, "pay_1", 4900),
            )
            .await
            .unwrap();
        assert!(matches!(
            store.request_refund(&ask("buyer", None), None).await,
            Err(PaymentsError::NotSeller)
        ));
        assert!(matches!(
            store.request_refund(&ask("stranger", None), None).await,
            Err(PaymentsError::OrderNotFound)
        ));
        // Eight full refunds asked at once: one is taken, the others find nothing left.
        let mut racers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let store = store.clone();
            racers.spawn(async move {
                store
                    .request_refund(
                        &RefundAsk {
                            caller: "seller",
                            admin: false,
                            order_id: order,
                            amount_minor: None,
                            reason: "",
                        },
                        None,
                    )
                    .await
            });
        }
        let mut taken = 0;
        while let Some(outcome) = racers.join_next().await {
            match outcome.unwrap() {
                Ok(r) => {
                    assert_eq!(r.amount_minor, 4900);
                    taken += 1;
                }
                Err(PaymentsError::Invalid(v)) => assert_eq!(v[0].field, "amount_minor"),
                Err(other) => panic!("{}: {other:?}", t.backend),
            }
        }
        assert_eq!(taken, 1, "{}: one refund of everything", t.backend);
        assert_eq!(jobs(&t, REFUND_REQUEST).await, 1, "{}", t.backend);
        // One audit record, the taken refund's: the refused requests rolled back with theirs.
        let trail = thali_platform::audit_log::chain_now(&t.db, "payments").await.unwrap();
        assert_eq!(trail.len(), 1, "{}: {trail:?}", t.backend);
        assert_eq!(trail[0].action, "refund.requested");
        assert_eq!(trail[0].actor, "acct:seller");
        assert_eq!(trail[0].target, format!("order:{order}"));
        assert!(trail[0].details.contains("4900"), "{}", trail[0].details);
    }
}

#[tokio::test]
async fn a_rejected_order_asks_for_its_whole_refund_with_the_step() {
    use thali_payments::{
        domain::{Fulfilment, PaymentsError, Step, StepRefused},
        store::REFUND_REQUEST,
    };
    for t in backends().await {
        let (store, _) = store_on(&t);
        let (order, gateway) = pending_order(&store).await;
        assert!(matches!(
            store.fulfil(order, "seller", false, Step::Accept, "").await,
            Err(PaymentsError::Fulfilment(StepRefused::NotPaid))
        ));
        store
            .take_webhook("platform", "evt_f", &event("payment.captured", &gateway, "pay_f", 4900))
            .await
            .unwrap();
        assert!(matches!(
            store.fulfil(order, "buyer", false, Step::Accept, "").await,
            Err(PaymentsError::NotSeller)
        ));
        assert_eq!(
            store.fulfil(order, "seller", false, Step::Accept, "").await.unwrap(),
            None
        );
        let refund = store
            .fulfil(order, "seller", false, Step::Reject, "out of milk")
            .await
            .unwrap()
            .expect("a rejection asks for a refund");
        assert_eq!(store.refund(refund).await.unwrap().amount_minor, 4900, "{}", t.backend);
        assert_eq!(store.order(order).await.unwrap().fulfilment, Some(Fulfilment::Rejected));
        assert_eq!(
            store.fulfil(order, "seller", false, Step::Reject, "").await.unwrap(),
            None,
            "{}: rejecting again asks nothing more",
            t.backend
        );
        assert_eq!(jobs(&t, REFUND_REQUEST).await, 1, "{}", t.backend);
    }
}

#[tokio::test]
async fn a_refund_of_a_duplicate_payment_does_not_count_on_the_order() {
    use thali_payments::store::REFUND;
    for t in backends().await {
        let (store, _) = store_on(&t);
        let (order, gateway) = pending_order(&store).await;
        store
            .take_webhook("platform", "e1", &event("payment.captured", &gateway, "pay_1", 4900))
            .await
            .unwrap();
        // The buyer paid twice: the second payment is given back.
        store
            .take_webhook("platform", "e2", &event("payment.captured", &gateway, "pay_2", 4900))
            .await
            .unwrap();
        assert_eq!(jobs(&t, REFUND).await, 1, "{}", t.backend);
        let refunded = json!({"entity": "event", "account_id": "acc_1", "event": "refund.processed",
            "contains": ["refund", "payment"], "payload": {
                "refund": {"entity": {"id": "rfnd_dup", "payment_id": "pay_2", "amount": 4900, "status": "processed"}},
                "payment": {"entity": {"id": "pay_2", "order_id": gateway, "amount": 4900, "currency": "INR",
                    "status": "refunded"}}}, "created_at": 1})
        .to_string()
        .into_bytes();
        assert_eq!(
            store.take_webhook("platform", "e3", &refunded).await.unwrap(),
            Taken::Ignored
        );
        let stored = store.order(order).await.unwrap();
        assert_eq!(
            (stored.status, stored.refunded_minor),
            (Status::Paid, 0),
            "{}: the order's own payment stays whole",
            t.backend
        );
    }
}

#[tokio::test]
async fn a_deposit_order_is_one_per_booking_and_settles_without_touching_stock() {
    for t in backends().await {
        let (store, _) = store_on(&t);
        let booking = Uuid::now_v7();
        let reference = format!("booking:{booking}");
        let deposit = |gateway: &str| {
            let mut order = support::pending(gateway, 2, Utc::now());
            order.reference = Some(reference.clone());
            order
        };
        // Two asks for the same booking (a retry racing the first): one order.
        let first = deposit(&format!("order_{}", Uuid::now_v7().simple()));
        let second = deposit(&format!("order_{}", Uuid::now_v7().simple()));
        let call = support::created(&first);
        let a = store
            .insert_order(&thali_payments::store::NewOrder { record: first.clone() }, None, &call)
            .await
            .unwrap();
        let call = support::created(&second);
        let b = store
            .insert_order(&thali_payments::store::NewOrder { record: second }, None, &call)
            .await
            .unwrap();
        assert!(matches!(a, thali_payments::store::Written::Created(_)), "{}", t.backend);
        let thali_payments::store::Written::Replayed(winner) = b else {
            panic!("{}: a second order for one booking", t.backend)
        };
        assert_eq!(winner.id, first.id);
        let found = store.order_by_reference(&reference).await.unwrap().unwrap();
        assert_eq!(
            (found.id, found.reference.as_deref()),
            (first.id, Some(reference.as_str()))
        );

        // Paid: captured and published, but no stock to commit.
        let taken = store
            .take_webhook(
                "platform",
                "evt_dep_1",
                &event("payment.captured", &first.gateway_order_id, "pay_d", 9800),
            )
            .await
            .unwrap();
        assert_eq!(
            taken,
            Taken::Applied {
                order_id: first.id,
                status: Status::Paid
            },
            "{}",
            t.backend
        );
        assert_eq!(
            jobs(&t, COMMIT_STOCK).await,
            0,
            "{}: a deposit holds no stock",
            t.backend
        );
        assert_eq!(jobs(&t, "events.relay").await, 1, "order.paid, for booking to hear");
    }
}
