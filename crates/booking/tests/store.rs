//! The booking store on every configured backend (SQLite always; PostgreSQL with
//! THALI_TEST_DATABASE_URL, required under CI=true): a table is never booked twice, however many
//! guests race for it.
use std::sync::Arc;

use chrono::{Duration, Utc};
use thali_booking::{
    domain::{
        Booking, BookingError, NewBooking, NewTable, PolicyMinutes, RestaurantChanges, TableChanges, parse_closure,
    },
    store::BookingStore,
};
use thali_platform::idempotency::Idempotency;
use uuid::Uuid;

mod support;
use support::{at, outbox, places, request};

/// The store's answers without the cache bookkeeping.
trait Plain {
    async fn book_v(
        &self,
        guest: Uuid,
        req: &NewBooking,
        idem: Option<&Idempotency>,
        now: chrono::DateTime<Utc>,
    ) -> Result<Booking, BookingError>;
    async fn cancel_v(
        &self,
        id: Uuid,
        by: Uuid,
        reason: &str,
        now: chrono::DateTime<Utc>,
    ) -> Result<Booking, BookingError>;
}

impl Plain for BookingStore {
    async fn book_v(
        &self,
        guest: Uuid,
        req: &NewBooking,
        idem: Option<&Idempotency>,
        now: chrono::DateTime<Utc>,
    ) -> Result<Booking, BookingError> {
        self.book(guest, req, idem, now).await.map(|c| c.value)
    }
    async fn cancel_v(
        &self,
        id: Uuid,
        by: Uuid,
        reason: &str,
        now: chrono::DateTime<Utc>,
    ) -> Result<Booking, BookingError> {
        self.cancel(id, by, reason, now).await.map(|c| c.value)
    }
}

/// Pairs of holding bookings on one table whose times overlap (must be none).
async fn overlaps(db: &sea_orm::DatabaseConnection) -> i64 {
    use sea_orm::ConnectionTrait;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM bookings a JOIN bookings b ON a.table_id = b.table_id AND a.id < b.id \
             WHERE a.status <> 'cancelled' AND b.status <> 'cancelled' \
             AND a.starts_at < b.ends_at AND b.starts_at < a.ends_at",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

#[tokio::test]
async fn sixty_four_guests_racing_for_one_slot_get_exactly_the_fitting_tables() {
    // Three tables seat a party of 4; one does not.
    for p in places(&[(2, 4), (4, 6), (2, 8), (1, 2)]).await {
        let store = Arc::new(p.store.clone());
        let start = at("19:00");
        let tries = (0..64).map(|_| {
            let store = store.clone();
            let req = request(p.restaurant, 4, start);
            async move { store.book_v(Uuid::now_v7(), &req, None, Utc::now()).await }
        });
        let results = futures::future::join_all(tries).await;
        let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let taken = results
            .iter()
            .filter(|r| matches!(r, Err(BookingError::SlotTaken)))
            .count();
        assert_eq!(won.len(), 3, "{}: {:?}", p.backend, results.iter().find(|r| r.is_err()));
        assert_eq!(taken, 61, "{}", p.backend);
        let mut tables: Vec<Uuid> = won.iter().map(|b| b.table_id).collect();
        tables.sort();
        tables.dedup();
        assert_eq!(tables.len(), 3, "{}: three different tables", p.backend);
        assert_eq!(overlaps(&p.db).await, 0, "{}", p.backend);
    }
}

#[tokio::test]
async fn racing_overlapping_starts_never_share_a_table() {
    for p in places(&[(2, 4)]).await {
        let store = Arc::new(p.store.clone());
        // 64 guests over starts 18:00 … 21:15: a 90-minute sitting overlaps its neighbours.
        let tries = (0..64).map(|i| {
            let store = store.clone();
            let minutes = 18 * 60 + (i % 14) * 15;
            let req = request(p.restaurant, 2, at(&format!("{:02}:{:02}", minutes / 60, minutes % 60)));
            async move { store.book_v(Uuid::now_v7(), &req, None, Utc::now()).await }
        });
        let results = futures::future::join_all(tries).await;
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert!(won >= 1, "{}", p.backend);
        assert!(
            results
                .iter()
                .all(|r| r.is_ok() || matches!(r, Err(BookingError::SlotTaken))),
            "{}: {:?}",
            p.backend,
            results
                .iter()
                .find(|r| !matches!(r, Ok(_) | Err(BookingError::SlotTaken)))
        );
        // Starts 18:00–21:15 with 90-minute sittings fit at most 3 on one table.
        assert!(won <= 3, "{}: {won}", p.backend);
        assert_eq!(overlaps(&p.db).await, 0, "{}", p.backend);
    }
}

#[tokio::test]
async fn the_same_key_and_body_is_the_same_booking_and_another_body_is_refused() {
    for p in places(&[(2, 4), (2, 4)]).await {
        let guest = Uuid::now_v7();
        let req = request(p.restaurant, 2, at("20:00"));
        let idem = Idempotency::new("book-1".into(), &req);
        let first = p.store.book_v(guest, &req, Some(&idem), Utc::now()).await.unwrap();
        let again = p.store.book_v(guest, &req, Some(&idem), Utc::now()).await.unwrap();
        assert_eq!(first, again, "{}", p.backend);
        let other = request(p.restaurant, 3, at("20:00"));
        let err = p
            .store
            .book_v(
                guest,
                &other,
                Some(&Idempotency::new("book-1".into(), &other)),
                Utc::now(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, BookingError::IdempotencyKeyReused),
            "{}: {err:?}",
            p.backend
        );
    }
}

#[tokio::test]
async fn a_cancelled_booking_frees_its_table_and_only_its_guest_or_owner_may_cancel() {
    for p in places(&[(2, 4)]).await {
        let guest = Uuid::now_v7();
        let start = at("19:00");
        let booked = p
            .store
            .book_v(guest, &request(p.restaurant, 2, start), None, Utc::now())
            .await
            .unwrap();
        let err = p
            .store
            .book_v(Uuid::now_v7(), &request(p.restaurant, 2, start), None, Utc::now())
            .await
            .unwrap_err();
        assert!(matches!(err, BookingError::SlotTaken), "{}", p.backend);

        // Another guest: as if it did not exist.
        let err = p
            .store
            .cancel_v(booked.id, Uuid::now_v7(), "", Utc::now())
            .await
            .unwrap_err();
        assert!(matches!(err, BookingError::BookingNotFound));
        // The guest, inside the cutoff: too late; the owner may.
        let late = start - Duration::minutes(30);
        let err = p.store.cancel_v(booked.id, guest, "", late).await.unwrap_err();
        assert!(matches!(err, BookingError::TooLateToCancel), "{}", p.backend);
        let cancelled = p
            .store
            .cancel_v(booked.id, p.owner, "kitchen closed", late)
            .await
            .unwrap();
        assert_eq!(cancelled.status, "cancelled");
        // The owner's cancellation is in booking's audit trail, with its reason; the refused
        // attempts left nothing there.
        let trail = thali_platform::audit_log::chain_now(&p.db, "booking").await.unwrap();
        assert_eq!(trail.len(), 1, "{}: {trail:?}", p.backend);
        assert_eq!(trail[0].action, "booking.cancelled_by_owner");
        assert_eq!(trail[0].actor, format!("acct:{}", p.owner));
        assert_eq!(trail[0].target, format!("booking:{}", booked.id));
        assert!(trail[0].details.contains("kitchen closed"), "{}", trail[0].details);

        let again = p
            .store
            .book_v(Uuid::now_v7(), &request(p.restaurant, 2, start), None, Utc::now())
            .await
            .unwrap();
        assert_eq!(
            again.table_id, booked.table_id,
            "{}: the table is free again",
            p.backend
        );
    }
}

#[tokio::test]
async fn rules_of_the_restaurant_refuse_with_their_reasons() {
    for p in places(&[(2, 4)]).await {
        let now = Utc::now();
        let err = p
            .store
            .book_v(Uuid::now_v7(), &request(p.restaurant, 9, at("19:00")), None, now)
            .await
            .unwrap_err();
        assert!(matches!(err, BookingError::PartyTooLarge), "{}", p.backend);
        // 22:00 + 90 min runs past 23:00.
        let err = p
            .store
            .book_v(Uuid::now_v7(), &request(p.restaurant, 2, at("22:00")), None, now)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                BookingError::Start(thali_booking::domain::StartRefused::OutsideHours)
            ),
            "{}: {err:?}",
            p.backend
        );
        let err = p
            .store
            .book_v(Uuid::now_v7(), &request(Uuid::now_v7(), 2, at("19:00")), None, now)
            .await
            .unwrap_err();
        assert!(matches!(err, BookingError::RestaurantNotFound));
    }
}

#[tokio::test]
async fn only_the_owner_changes_a_restaurant_its_tables_hours_and_closures() {
    for p in places(&[(2, 4)]).await {
        let stranger = Uuid::now_v7();
        let changes =
            RestaurantChanges::parse(Some("Mine now"), None, None, None, None, PolicyMinutes::default()).unwrap();
        let err = p
            .store
            .update_restaurant(stranger, p.restaurant, &changes, Utc::now())
            .await
            .unwrap_err();
        assert!(matches!(err, BookingError::NotOwner), "{}: {err:?}", p.backend);
        let table = NewTable::parse("X1", 1, 2).unwrap();
        let err = p.store.add_table(stranger, p.restaurant, &table).await.unwrap_err();
        assert!(matches!(err, BookingError::NotOwner));
        let err = p.store.set_hours(stranger, p.restaurant, &[]).await.unwrap_err();
        assert!(matches!(err, BookingError::NotOwner));
        let (closure, reason) = parse_closure("2030-01-01", "2030-01-02", "").unwrap();
        let err = p
            .store
            .add_closure(stranger, p.restaurant, closure, &reason)
            .await
            .unwrap_err();
        assert!(matches!(err, BookingError::NotOwner));
        let err = p.store.tables(stranger, p.restaurant).await.unwrap_err();
        assert!(matches!(err, BookingError::NotOwner));
        let t = p.store.tables(p.owner, p.restaurant).await.unwrap()[0].id;
        let err = p
            .store
            .update_table(stranger, t, &TableChanges::default())
            .await
            .unwrap_err();
        assert!(matches!(err, BookingError::NotOwner));
        let err = p.store.remove_table(stranger, t, Utc::now()).await.unwrap_err();
        assert!(matches!(err, BookingError::NotOwner));
        // Nothing changed.
        assert_eq!(p.store.restaurant(p.restaurant).await.unwrap().name, "Chai Point");
        // The owner may, and a policy change is checked against the rules.
        let renamed = p
            .store
            .update_restaurant(p.owner, p.restaurant, &changes, Utc::now())
            .await
            .unwrap();
        assert_eq!(renamed.value.name, "Mine now");
    }
}

#[tokio::test]
async fn a_table_with_bookings_to_come_is_deactivated_not_removed() {
    for p in places(&[(2, 4)]).await {
        let table = p.store.tables(p.owner, p.restaurant).await.unwrap()[0].id;
        let guest = Uuid::now_v7();
        let booked = p
            .store
            .book_v(guest, &request(p.restaurant, 2, at("19:00")), None, Utc::now())
            .await
            .unwrap();
        let err = p.store.remove_table(p.owner, table, Utc::now()).await.unwrap_err();
        assert!(matches!(err, BookingError::TableHasBookings), "{}: {err:?}", p.backend);
        // Deactivated: the booking stays, no new one is taken.
        let off = TableChanges::parse(None, None, None, Some(false)).unwrap();
        p.store.update_table(p.owner, table, &off).await.unwrap();
        assert_eq!(p.store.booking(booked.id).await.unwrap().status, "confirmed");
        let err = p
            .store
            .book_v(Uuid::now_v7(), &request(p.restaurant, 2, at("12:00")), None, Utc::now())
            .await
            .unwrap_err();
        assert!(matches!(err, BookingError::PartyTooLarge), "{}: {err:?}", p.backend);
        // Once the booking is cancelled the table may go; its label is free again, and the old
        // booking still names its table.
        p.store.cancel_v(booked.id, guest, "", Utc::now()).await.unwrap();
        p.store.remove_table(p.owner, table, Utc::now()).await.unwrap();
        assert!(p.store.tables(p.owner, p.restaurant).await.unwrap().is_empty());
        let again = NewTable::parse("T0", 2, 4).unwrap();
        p.store.add_table(p.owner, p.restaurant, &again).await.unwrap();
        let err = p.store.add_table(p.owner, p.restaurant, &again).await.unwrap_err();
        assert!(matches!(err, BookingError::LabelTaken), "{}: {err:?}", p.backend);
        assert_eq!(p.store.booking(booked.id).await.unwrap().table_id, table);
    }
}

#[tokio::test]
async fn the_day_offers_only_starts_with_a_free_fitting_table() {
    for p in places(&[(2, 4)]).await {
        let now = Utc::now();
        let tz = thali_booking::domain::parse_zone("Asia/Kolkata").unwrap();
        let date = at("19:00").with_timezone(&tz).date_naive();
        let row = p.store.restaurant_row(p.restaurant).await.unwrap();
        let local = |t: chrono::DateTime<Utc>| t.with_timezone(&tz).format("%H:%M").to_string();
        let starts =
            |day: &thali_booking::domain::Day, party| day.starts_for(party, now).map(local).collect::<Vec<_>>();
        let day = &p.store.days(std::slice::from_ref(&row), date).await.unwrap()[0];
        let all = starts(day, 2);
        // 08:00 … 21:30 every 15 minutes: the last sitting ends at 23:00.
        assert_eq!(all.first().map(String::as_str), Some("08:00"));
        assert_eq!(all.last().map(String::as_str), Some("21:30"));
        assert_eq!(all.len(), 55, "{}", p.backend);
        assert!(starts(day, 5).is_empty(), "no table seats 5");

        let guest = Uuid::now_v7();
        let booked = p
            .store
            .book_v(guest, &request(p.restaurant, 2, at("19:00")), None, now)
            .await
            .unwrap();
        let day = &p.store.days(std::slice::from_ref(&row), date).await.unwrap()[0];
        let left = starts(day, 2);
        // A sitting from 17:45 would end 19:15; one from 20:30 starts when the booking ends.
        assert!(left.contains(&"17:30".to_owned()) && left.contains(&"20:30".to_owned()));
        for gone in ["17:45", "18:00", "19:00", "20:15"] {
            assert!(!left.contains(&gone.to_owned()), "{}: {gone} offered", p.backend);
        }
        assert_eq!(left.len(), 55 - 11);

        p.store.cancel_v(booked.id, guest, "", now).await.unwrap();
        let day = &p.store.days(std::slice::from_ref(&row), date).await.unwrap()[0];
        assert_eq!(starts(day, 2), all, "{}: free again", p.backend);

        // A closure covering the day leaves nothing.
        let d = date.format("%Y-%m-%d").to_string();
        let (closure, reason) = parse_closure(&d, &d, "private event").unwrap();
        p.store
            .add_closure(p.owner, p.restaurant, closure, &reason)
            .await
            .unwrap();
        let day = &p.store.days(std::slice::from_ref(&row), date).await.unwrap()[0];
        assert!(starts(day, 2).is_empty(), "{}", p.backend);
    }
}

#[tokio::test]
async fn a_booking_and_its_cancellation_commit_their_events_and_the_reminder_goes_out_once() {
    for p in places(&[(2, 4)]).await {
        let guest = Uuid::now_v7();
        let start = at("19:00");
        let b = p
            .store
            .book_v(guest, &request(p.restaurant, 2, start), None, Utc::now())
            .await
            .unwrap();
        let (types, remind) = outbox(&p.db, b.id).await;
        assert_eq!(types, ["booking.confirmed"], "{}", p.backend);
        assert_eq!(
            remind,
            Some(start - Duration::hours(24)),
            "{}: the day before",
            p.backend
        );

        // The reminder: once, however often its job runs.
        assert!(p.store.remind(b.id).await.unwrap(), "{}", p.backend);
        assert!(!p.store.remind(b.id).await.unwrap(), "{}: not twice", p.backend);
        assert_eq!(outbox(&p.db, b.id).await.0, ["booking.confirmed", "booking.reminder"]);

        p.store.cancel_v(b.id, guest, "ill", Utc::now()).await.unwrap();
        // Cancelling again tells nobody twice.
        p.store.cancel_v(b.id, guest, "ill", Utc::now()).await.unwrap();
        assert_eq!(
            outbox(&p.db, b.id).await.0,
            ["booking.confirmed", "booking.reminder", "booking.cancelled"],
            "{}",
            p.backend
        );

        // A cancelled booking is not reminded; a booking in less than a day has no reminder job.
        let other = p
            .store
            .book_v(Uuid::now_v7(), &request(p.restaurant, 2, at("12:00")), None, Utc::now())
            .await
            .unwrap();
        p.store.cancel_v(other.id, p.owner, "closed", Utc::now()).await.unwrap();
        assert!(!p.store.remind(other.id).await.unwrap());
        let soon = p
            .store
            .book_v(
                Uuid::now_v7(),
                &request(p.restaurant, 2, start),
                None,
                start - Duration::hours(3),
            )
            .await
            .unwrap();
        assert_eq!(outbox(&p.db, soon.id).await.1, None, "{}", p.backend);
    }
}
