//! The booking store on every configured backend (SQLite always; PostgreSQL with
//! THALI_TEST_DATABASE_URL, required under CI=true): a table is never booked twice, however many
//! guests race for it.
use std::sync::Arc;

use chrono::{Duration, Utc};
use thali_booking::{
    domain::{BookingError, NewBooking, local_start, parse_hours},
    store::BookingStore,
};
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::{idempotency::Idempotency, testing};
use uuid::Uuid;

struct Place {
    store: BookingStore,
    backend: &'static str,
    db: sea_orm::DatabaseConnection,
    restaurant: Uuid,
    owner: Uuid,
}

/// A restaurant in Kolkata open every day 08:00–23:00 with `tables` (min, max seats).
async fn places(tables: &[(i32, i32)]) -> Vec<Place> {
    let mut out = Vec::new();
    for t in testing::all().await {
        Migrator::up(&t.db, None).await.unwrap();
        let store = BookingStore::new(t.db.clone());
        let owner = Uuid::now_v7();
        let restaurant = store
            .create_restaurant(owner, "Chai Point", "Bengaluru", "Asia/Kolkata")
            .await
            .unwrap();
        for (i, (min, max)) in tables.iter().enumerate() {
            store.add_table(restaurant, &format!("T{i}"), *min, *max).await.unwrap();
        }
        let days = [
            "monday",
            "tuesday",
            "wednesday",
            "thursday",
            "friday",
            "saturday",
            "sunday",
        ];
        let hours: Vec<(&str, &str, &str)> = days.iter().map(|d| (*d, "08:00", "23:00")).collect();
        store
            .set_hours(restaurant, &parse_hours(&hours).unwrap())
            .await
            .unwrap();
        out.push(Place {
            store,
            backend: t.backend,
            db: t.db,
            restaurant,
            owner,
        });
    }
    out
}

/// `HH:MM` local, three days from now.
fn at(time: &str) -> chrono::DateTime<Utc> {
    let tz = thali_booking::domain::parse_zone("Asia/Kolkata").unwrap();
    let day = (Utc::now() + Duration::days(3)).with_timezone(&tz).date_naive();
    local_start(tz, &format!("{}T{time}", day.format("%Y-%m-%d"))).unwrap()
}

fn request(restaurant: Uuid, party: i32, start: chrono::DateTime<Utc>) -> NewBooking {
    NewBooking {
        restaurant_id: restaurant,
        party_size: party,
        starts_at: start,
        guest_name: "Asha".into(),
        phone: "+91 98450 00000".into(),
        note: String::new(),
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
            async move { store.book(Uuid::now_v7(), &req, None, Utc::now()).await }
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
            async move { store.book(Uuid::now_v7(), &req, None, Utc::now()).await }
        });
        let results = futures::future::join_all(tries).await;
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert!(won >= 1, "{}", p.backend);
        assert!(
            results
                .iter()
                .all(|r| r.is_ok() || matches!(r, Err(BookingError::SlotTaken))),
            "{}",
            p.backend
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
        let first = p.store.book(guest, &req, Some(&idem), Utc::now()).await.unwrap();
        let again = p.store.book(guest, &req, Some(&idem), Utc::now()).await.unwrap();
        assert_eq!(first, again, "{}", p.backend);
        let other = request(p.restaurant, 3, at("20:00"));
        let err = p
            .store
            .book(
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
            .book(guest, &request(p.restaurant, 2, start), None, Utc::now())
            .await
            .unwrap();
        let err = p
            .store
            .book(Uuid::now_v7(), &request(p.restaurant, 2, start), None, Utc::now())
            .await
            .unwrap_err();
        assert!(matches!(err, BookingError::SlotTaken), "{}", p.backend);

        // Another guest: as if it did not exist.
        let err = p
            .store
            .cancel(booked.id, Uuid::now_v7(), "", Utc::now())
            .await
            .unwrap_err();
        assert!(matches!(err, BookingError::BookingNotFound));
        // The guest, inside the cutoff: too late; the owner may.
        let late = start - Duration::minutes(30);
        let err = p.store.cancel(booked.id, guest, "", late).await.unwrap_err();
        assert!(matches!(err, BookingError::TooLateToCancel), "{}", p.backend);
        let cancelled = p
            .store
            .cancel(booked.id, p.owner, "kitchen closed", late)
            .await
            .unwrap();
        assert_eq!(cancelled.status, "cancelled");

        let again = p
            .store
            .book(Uuid::now_v7(), &request(p.restaurant, 2, start), None, Utc::now())
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
            .book(Uuid::now_v7(), &request(p.restaurant, 9, at("19:00")), None, now)
            .await
            .unwrap_err();
        assert!(matches!(err, BookingError::PartyTooLarge), "{}", p.backend);
        // 22:00 + 90 min runs past 23:00.
        let err = p
            .store
            .book(Uuid::now_v7(), &request(p.restaurant, 2, at("22:00")), None, now)
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
            .book(Uuid::now_v7(), &request(Uuid::now_v7(), 2, at("19:00")), None, now)
            .await
            .unwrap_err();
        assert!(matches!(err, BookingError::RestaurantNotFound));
    }
}
