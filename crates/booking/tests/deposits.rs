//! Deposits in the booking store on every configured backend (SQLite always; PostgreSQL with
//! THALI_TEST_DATABASE_URL, required under CI=true): a booking waiting for its deposit holds its
//! table; payments' word moves it once per event (paid → confirmed; expired or failed → released);
//! the backstop releases a booking payments never spoke of; a paid deposit goes back when the
//! booking is cancelled in time or paid too late, and is kept for a no-show.
mod support;

use chrono::{Duration, Utc};
use support::{Place, at, outbox, places_with, request};
use thali_booking::{
    domain::{BookingError, DepositOutcome, PolicyMinutes},
    store::BookingStore,
};
use uuid::Uuid;

/// A restaurant with one table for 2–4 that asks ₹250 a guest.
async fn deposit_places() -> Vec<Place> {
    places_with(
        &[(2, 4)],
        PolicyMinutes {
            deposit_per_guest: Some(25_000),
            ..PolicyMinutes::default()
        },
    )
    .await
}

async fn jobs(db: &sea_orm::DatabaseConnection, kind: &str, key: &str) -> Option<chrono::DateTime<Utc>> {
    use sea_orm::ConnectionTrait;
    db.query_one_raw(thali_platform::db::statement(
        db.get_database_backend(),
        "SELECT run_at FROM jobs WHERE service = 'booking' AND kind = $1 AND unique_key = $2",
        vec![kind.into(), key.into()],
    ))
    .await
    .unwrap()
    .map(|r| r.try_get::<chrono::DateTime<Utc>>("", "run_at").unwrap())
}

async fn settle(store: &BookingStore, booking: Uuid, order: Uuid, outcome: DepositOutcome) -> bool {
    store
        .deposit_settled(Uuid::now_v7(), booking, order, outcome, Utc::now())
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn a_paid_deposit_confirms_the_booking_and_a_cancellation_in_time_refunds_it() {
    for p in deposit_places().await {
        let guest = Uuid::now_v7();
        let start = at("19:00");
        let now = Utc::now();
        let b = p
            .store
            .book(guest, &request(p.restaurant, 3, start), None, now)
            .await
            .unwrap()
            .value;
        assert_eq!(b.status, "pending_payment", "{}", p.backend);
        let deposit = b.deposit.clone().unwrap();
        assert_eq!((deposit.amount_minor, deposit.status.as_str()), (75_000, "pending"));
        let pay_by = deposit.pay_by.unwrap();
        assert!(pay_by > now + Duration::minutes(14) && pay_by <= now + Duration::minutes(15));
        // Payments is asked for the order, and the backstop waits past the hold.
        assert!(
            jobs(&p.db, "booking.request_deposit", &format!("deposit:{}", b.id))
                .await
                .is_some()
        );
        let release = jobs(&p.db, "booking.release_unpaid", &format!("release-unpaid:{}", b.id))
            .await
            .unwrap();
        assert!(release >= pay_by + Duration::minutes(14));
        // Not confirmed yet: nobody is told, no reminder.
        assert_eq!(outbox(&p.db, b.id).await, (vec![], None), "{}", p.backend);

        // The table is held: another party at that time finds none.
        let other = p
            .store
            .book(Uuid::now_v7(), &request(p.restaurant, 2, start), None, now)
            .await;
        assert!(
            matches!(other, Err(BookingError::SlotTaken)),
            "{}: {other:?}",
            p.backend
        );

        // What payments needs; the order is recorded once.
        let ask = p.store.deposit_ask(b.id).await.unwrap().unwrap();
        assert_eq!(
            (ask.guests, ask.per_guest_minor, ask.guest, ask.owner),
            (3, 25_000, guest, p.owner)
        );
        let order = Uuid::now_v7();
        p.store.set_deposit_order(b.id, order).await.unwrap();
        p.store.set_deposit_order(b.id, Uuid::now_v7()).await.unwrap();
        assert!(p.store.deposit_ask(b.id).await.unwrap().is_none(), "asked already");

        // order.paid confirms it, once: a redelivery changes nothing.
        let event = Uuid::now_v7();
        let (new, changed) = p
            .store
            .deposit_settled(event, b.id, order, DepositOutcome::Paid, Utc::now())
            .await
            .unwrap();
        assert!(new && changed.is_some());
        let (again, _) = p
            .store
            .deposit_settled(event, b.id, order, DepositOutcome::Paid, Utc::now())
            .await
            .unwrap();
        assert!(!again, "{}", p.backend);
        let b = p.store.booking(b.id).await.unwrap();
        assert_eq!(b.status, "confirmed");
        let d = b.deposit.clone().unwrap();
        assert_eq!((d.status.as_str(), d.order_id), ("paid", Some(order)));
        let (events, remind) = outbox(&p.db, b.id).await;
        assert_eq!(events, ["booking.confirmed"], "{}", p.backend);
        assert!(remind.is_some());
        // Another order's news is not this booking's.
        assert!(settle(&p.store, b.id, Uuid::now_v7(), DepositOutcome::Expired).await);
        assert_eq!(p.store.booking(b.id).await.unwrap().status, "confirmed");

        // The guest cancels in time: the deposit goes back through payments.
        let cancelled = p
            .store
            .cancel(b.id, guest, "plans changed", Utc::now())
            .await
            .unwrap()
            .value;
        assert_eq!(cancelled.deposit.unwrap().status, "refund_requested");
        let (events, _) = outbox(&p.db, b.id).await;
        assert_eq!(
            events,
            [
                "booking.confirmed",
                "booking.cancelled",
                "booking.deposit_refund_requested"
            ],
            "{}",
            p.backend
        );
        // Part of it back is not yet all of it; all of it is refunded.
        settle(&p.store, b.id, order, DepositOutcome::Refunded { full: false }).await;
        assert_eq!(
            p.store.booking(b.id).await.unwrap().deposit.unwrap().status,
            "refund_requested"
        );
        settle(&p.store, b.id, order, DepositOutcome::Refunded { full: true }).await;
        assert_eq!(p.store.booking(b.id).await.unwrap().deposit.unwrap().status, "refunded");
    }
}

#[tokio::test]
async fn an_unpaid_deposit_releases_the_table_and_a_late_payment_goes_back() {
    for p in deposit_places().await {
        let start = at("20:00");
        let now = Utc::now();
        let guest = Uuid::now_v7();
        let b = p
            .store
            .book(guest, &request(p.restaurant, 2, start), None, now)
            .await
            .unwrap()
            .value;
        let order = Uuid::now_v7();
        p.store.set_deposit_order(b.id, order).await.unwrap();

        // Payments says the order expired: released, the guest told, the table free again.
        assert!(settle(&p.store, b.id, order, DepositOutcome::Expired).await);
        let gone = p.store.booking(b.id).await.unwrap();
        assert_eq!(gone.status, "cancelled", "{}", p.backend);
        assert_eq!(gone.deposit.unwrap().status, "expired");
        assert_eq!(gone.cancel_reason.as_deref(), Some("The deposit was not paid in time"));
        assert_eq!(outbox(&p.db, b.id).await.0, ["booking.cancelled"]);
        let next = p
            .store
            .book(Uuid::now_v7(), &request(p.restaurant, 2, start), None, now)
            .await;
        assert!(next.is_ok(), "{}: the table is free: {next:?}", p.backend);
        let next = next.unwrap().value;

        // A payment that still came: the money goes back, the table stays with the next guest.
        assert!(settle(&p.store, b.id, order, DepositOutcome::Paid).await);
        let late = p.store.booking(b.id).await.unwrap();
        assert_eq!(
            (late.status.as_str(), late.deposit.unwrap().status.as_str()),
            ("cancelled", "refund_requested")
        );
        assert_eq!(
            outbox(&p.db, b.id).await.0,
            ["booking.cancelled", "booking.deposit_refund_requested"]
        );

        // The backstop: payments never said anything of the next guest's deposit.
        assert!(
            p.store
                .release_unpaid(next.id, now + Duration::minutes(20))
                .await
                .unwrap()
                .is_none(),
            "not due yet"
        );
        let released = p
            .store
            .release_unpaid(next.id, now + Duration::minutes(31))
            .await
            .unwrap()
            .expect("released");
        assert_eq!(released.value.status, "cancelled");
        assert_eq!(released.value.deposit.unwrap().status, "expired");
        assert!(
            p.store
                .release_unpaid(next.id, now + Duration::minutes(40))
                .await
                .unwrap()
                .is_none(),
            "once"
        );

        // A failed payment releases too; cancelling before paying voids the deposit.
        let third = p
            .store
            .book(guest, &request(p.restaurant, 2, start), None, now)
            .await
            .unwrap()
            .value;
        assert!(settle(&p.store, third.id, Uuid::now_v7(), DepositOutcome::Failed).await);
        assert_eq!(
            p.store.booking(third.id).await.unwrap().deposit.unwrap().status,
            "failed"
        );
        let fourth = p
            .store
            .book(guest, &request(p.restaurant, 2, start), None, now)
            .await
            .unwrap()
            .value;
        let void = p.store.cancel(fourth.id, guest, "", Utc::now()).await.unwrap().value;
        assert_eq!(void.deposit.unwrap().status, "void", "{}", p.backend);
        assert_eq!(
            outbox(&p.db, fourth.id).await.0,
            ["booking.cancelled"],
            "nothing to refund"
        );
    }
}

#[tokio::test]
async fn a_no_show_keeps_the_deposit_and_only_the_owner_marks_it_after_the_start() {
    for p in deposit_places().await {
        let guest = Uuid::now_v7();
        let start = at("12:00");
        let b = p
            .store
            .book(guest, &request(p.restaurant, 2, start), None, Utc::now())
            .await
            .unwrap()
            .value;
        let order = Uuid::now_v7();
        p.store.set_deposit_order(b.id, order).await.unwrap();
        settle(&p.store, b.id, order, DepositOutcome::Paid).await;

        let early = p.store.mark_no_show(b.id, p.owner, Utc::now()).await;
        assert!(
            matches!(early, Err(BookingError::NoShowRefused)),
            "{}: {early:?}",
            p.backend
        );
        let guest_marks = p.store.mark_no_show(b.id, guest, start + Duration::minutes(30)).await;
        assert!(matches!(guest_marks, Err(BookingError::NotOwner)));
        let stranger = p
            .store
            .mark_no_show(b.id, Uuid::now_v7(), start + Duration::minutes(30))
            .await;
        assert!(matches!(stranger, Err(BookingError::BookingNotFound)));

        let marked = p
            .store
            .mark_no_show(b.id, p.owner, start + Duration::minutes(30))
            .await
            .unwrap();
        assert!(marked.no_show_at.is_some());
        assert_eq!(marked.deposit.unwrap().status, "kept", "{}", p.backend);
        let again = p
            .store
            .mark_no_show(b.id, p.owner, start + Duration::minutes(40))
            .await
            .unwrap();
        assert_eq!(again.no_show_at, marked.no_show_at, "marking twice changes nothing");
        // Nobody cancels it afterwards (and so nothing is refunded).
        let cancel = p.store.cancel(b.id, p.owner, "", start + Duration::minutes(45)).await;
        assert!(matches!(cancel, Err(BookingError::MarkedNoShow)), "{cancel:?}");
        assert_eq!(outbox(&p.db, b.id).await.0, ["booking.confirmed"]);
    }
}
