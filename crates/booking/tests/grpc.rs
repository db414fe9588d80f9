//! The booking service over gRPC, behind the platform server stack: an owner sets up a
//! restaurant and guests book; who may read and change what (BOLA/BFLA); the stable error
//! reasons; and availability that is fresh after every change, on two replicas sharing Redis.
mod support;

use std::path::PathBuf;

use chrono::{Duration, Utc};
use support::{Harness, as_user, bad_fields, every_day, reason};
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::{cache::Redis, testing};
use thali_proto::booking::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

fn keys() -> PathBuf {
    std::env::temp_dir().join(format!("thali-booking-keys-{}", Uuid::now_v7()))
}

fn tenant() -> String {
    Uuid::now_v7().simple().to_string()
}

/// Three days from now, in Kolkata.
fn day() -> String {
    let tz: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
    (Utc::now() + Duration::days(3))
        .with_timezone(&tz)
        .format("%Y-%m-%d")
        .to_string()
}

struct Setup {
    restaurant: String,
    owner: String,
}

/// An owner's restaurant in `city` with two tables (2–4 and 4–6 seats), open 08:00–23:00.
async fn restaurant(h: &Harness, city: &str) -> Setup {
    let owner = h.token(Uuid::now_v7(), "restaurant_owner");
    let r = h
        .client()
        .create_restaurant(as_user(
            &owner,
            pb::CreateRestaurantRequest {
                name: "Dosa Corner".into(),
                city: city.into(),
                cuisines: vec!["South Indian".into()],
                address: "1 MG Road".into(),
                time_zone: "Asia/Kolkata".into(),
                policy: None,
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .restaurant
        .unwrap();
    for (label, min, max) in [("T1", 2, 4), ("T2", 4, 6)] {
        h.client()
            .create_table(as_user(
                &owner,
                pb::CreateTableRequest {
                    restaurant_id: r.id.clone(),
                    label: label.into(),
                    min_seats: min,
                    max_seats: max,
                },
            ))
            .await
            .unwrap();
    }
    h.client()
        .set_hours(as_user(
            &owner,
            pb::SetHoursRequest {
                restaurant_id: r.id.clone(),
                hours: every_day(),
            },
        ))
        .await
        .unwrap();
    Setup {
        restaurant: r.id,
        owner,
    }
}

async fn free(h: &Harness, restaurant: &str, party: i32) -> Vec<String> {
    h.client()
        .get_availability(pb::GetAvailabilityRequest {
            restaurant_id: restaurant.into(),
            date: day(),
            party_size: party,
        })
        .await
        .unwrap()
        .into_inner()
        .slots
        .into_iter()
        .map(|s| s.local[11..].to_owned())
        .collect()
}

fn booking(restaurant: &str, party: i32, time: &str, key: &str) -> pb::CreateBookingRequest {
    pb::CreateBookingRequest {
        restaurant_id: restaurant.into(),
        party_size: party,
        start: format!("{}T{time}", day()),
        guest_name: "Asha".into(),
        phone: "+91 98450 00000".into(),
        note: String::new(),
        idempotency_key: key.into(),
    }
}

async fn harness() -> (Harness, sea_orm::DatabaseConnection) {
    let t = testing::sqlite().await;
    Migrator::up(&t.db, None).await.unwrap();
    (Harness::start(t.db.clone(), None, &tenant(), &keys()).await, t.db)
}

#[tokio::test]
async fn an_owner_sets_up_and_a_guest_searches_books_and_cancels() {
    let (h, _db) = harness().await;
    let s = restaurant(&h, "Chennai").await;
    let before = free(&h, &s.restaurant, 2).await;
    assert_eq!(before.len(), 55, "08:00 … 21:30 every 15 minutes");
    assert!(free(&h, &s.restaurant, 7).await.is_empty(), "no table seats 7");

    let search = |time: &str, cuisine: &str| pb::SearchRestaurantsRequest {
        city: "chennai".into(),
        cuisine: cuisine.into(),
        party_size: 2,
        date: day(),
        time: time.into(),
        page_size: 0,
        page_token: String::new(),
    };
    let found = h
        .client()
        .search_restaurants(search("19:00", "south indian"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.results.len(), 1);
    let hit = &found.results[0];
    assert_eq!(hit.restaurant.as_ref().unwrap().id, s.restaurant);
    // Within an hour either side: 18:00 … 20:00.
    assert_eq!(hit.slots.len(), 9);
    assert!(hit.slots[0].local.ends_with("T18:00"));
    let none = h
        .client()
        .search_restaurants(search("19:00", "thai"))
        .await
        .unwrap()
        .into_inner();
    assert!(none.results.is_empty(), "another cuisine");

    let guest = h.token(Uuid::now_v7(), "buyer");
    let b = h
        .client()
        .create_booking(as_user(&guest, booking(&s.restaurant, 2, "19:00", "")))
        .await
        .unwrap()
        .into_inner()
        .booking
        .unwrap();
    assert_eq!(b.status, "confirmed");
    assert_eq!(b.local_start, format!("{}T19:00", day()));
    // The 2–4 table is taken from 17:45 to 20:15; the 4–6 table still seats a party of 4.
    let after = free(&h, &s.restaurant, 2).await;
    assert!(!after.contains(&"19:00".to_owned()) && !after.contains(&"17:45".to_owned()));
    assert!(after.contains(&"17:30".to_owned()) && after.contains(&"20:30".to_owned()));
    assert_eq!(free(&h, &s.restaurant, 4).await, before, "the bigger table is free");

    // The owner sees it; the guest cancels; the start is offered again.
    let listed = h
        .client()
        .list_bookings(as_user(
            &s.owner,
            pb::ListBookingsRequest {
                restaurant_id: s.restaurant.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.bookings.len(), 1);
    let cancelled = h
        .client()
        .cancel_booking(as_user(
            &guest,
            pb::CancelBookingRequest {
                booking_id: b.id.clone(),
                reason: "plans changed".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .booking
        .unwrap();
    assert_eq!(cancelled.status, "cancelled");
    assert_eq!(free(&h, &s.restaurant, 2).await, before);
}

#[tokio::test]
async fn guests_and_owners_reach_only_their_own() {
    let (h, _db) = harness().await;
    let s = restaurant(&h, "Pune").await;
    let guest = h.token(Uuid::now_v7(), "buyer");
    let other_guest = h.token(Uuid::now_v7(), "buyer");
    let other_owner = h.token(Uuid::now_v7(), "restaurant_owner");
    let b = h
        .client()
        .create_booking(as_user(&guest, booking(&s.restaurant, 2, "19:00", "")))
        .await
        .unwrap()
        .into_inner()
        .booking
        .unwrap();

    // A buyer cannot open a restaurant.
    let err = h
        .client()
        .create_restaurant(as_user(
            &guest,
            pb::CreateRestaurantRequest {
                name: "Mine".into(),
                city: "Pune".into(),
                time_zone: "Asia/Kolkata".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(reason(&err), "RESTAURANT_OWNER_ROLE_REQUIRED");

    // Another guest: the booking does not exist for them.
    for who in [&other_guest, &other_owner] {
        let err = h
            .client()
            .get_booking(as_user(
                who,
                pb::GetBookingRequest {
                    booking_id: b.id.clone(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = h
            .client()
            .cancel_booking(as_user(
                who,
                pb::CancelBookingRequest {
                    booking_id: b.id.clone(),
                    reason: String::new(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    let theirs = h
        .client()
        .list_bookings(as_user(&other_guest, pb::ListBookingsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.bookings.is_empty(), "a guest lists only their own");
    let mine = h
        .client()
        .list_bookings(as_user(&guest, pb::ListBookingsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.bookings.len(), 1);
    // The owner of the restaurant and an admin may read it.
    let admin = h.token(Uuid::now_v7(), "admin");
    for who in [&s.owner, &admin] {
        h.client()
            .get_booking(as_user(
                who,
                pb::GetBookingRequest {
                    booking_id: b.id.clone(),
                },
            ))
            .await
            .unwrap();
    }
    let err = h
        .client()
        .list_bookings(as_user(
            &guest,
            pb::ListBookingsRequest {
                all: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let all = h
        .client()
        .list_bookings(as_user(
            &admin,
            pb::ListBookingsRequest {
                all: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.bookings.len(), 1);

    // Another owner cannot touch this restaurant or read its bookings.
    let err = h
        .client()
        .list_bookings(as_user(
            &other_owner,
            pb::ListBookingsRequest {
                restaurant_id: s.restaurant.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "NOT_OWNER");
    let err = h
        .client()
        .update_restaurant(as_user(
            &other_owner,
            pb::UpdateRestaurantRequest {
                restaurant_id: s.restaurant.clone(),
                name: Some("Taken over".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "NOT_OWNER");
    let err = h
        .client()
        .set_hours(as_user(
            &other_owner,
            pb::SetHoursRequest {
                restaurant_id: s.restaurant.clone(),
                hours: Vec::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "NOT_OWNER");
    let err = h
        .client()
        .list_tables(as_user(
            &other_owner,
            pb::ListTablesRequest {
                restaurant_id: s.restaurant.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "NOT_OWNER");
    // Public reads do not show who owns it.
    let public = h
        .client()
        .get_restaurant(pb::GetRestaurantRequest {
            restaurant_id: s.restaurant.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .restaurant
        .unwrap();
    assert!(public.owner_id.is_empty());
    assert_eq!(public.hours.len(), 7);
    assert_eq!(free(&h, &s.restaurant, 2).await.len(), 55 - 11, "nothing changed");
}

#[tokio::test]
async fn refusals_carry_stable_reasons() {
    let (h, _db) = harness().await;
    let s = restaurant(&h, "Kochi").await;
    let guest = h.token(Uuid::now_v7(), "buyer");
    let book = |req| {
        let c = h.client();
        let t = guest.clone();
        async move { c.clone().create_booking(as_user(&t, req)).await.unwrap_err() }
    };
    let err = book(booking(&s.restaurant, 7, "19:00", "")).await;
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "PARTY_TOO_LARGE")
    );
    let err = book(booking(&s.restaurant, 2, "22:00", "")).await;
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "OUTSIDE_HOURS")
    );
    let err = book(booking(&s.restaurant, 2, "19:05", "")).await;
    assert_eq!(reason(&err), "NOT_A_SLOT");
    let err = book(booking(&s.restaurant, 2, "25:00", "")).await;
    assert_eq!(bad_fields(&err), ["start"]);
    let mut bad = booking(&s.restaurant, 0, "19:00", "");
    bad.guest_name = " ".into();
    bad.phone = "call me".into();
    let err = book(bad).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), ["party_size", "guest_name", "phone"]);
    let err = book(booking(&Uuid::now_v7().to_string(), 2, "19:00", "")).await;
    assert_eq!(reason(&err), "RESTAURANT_NOT_FOUND");

    // Both tables taken at 19:00 for a party of 4: SLOT_TAKEN.
    h.client()
        .create_booking(as_user(&guest, booking(&s.restaurant, 4, "19:00", "")))
        .await
        .unwrap();
    h.client()
        .create_booking(as_user(&guest, booking(&s.restaurant, 4, "19:00", "")))
        .await
        .unwrap();
    let err = book(booking(&s.restaurant, 4, "19:00", "")).await;
    assert_eq!((err.code(), reason(&err).as_str()), (Code::Aborted, "SLOT_TAKEN"));

    // The same key and body is the same booking; another body is refused.
    let first = h
        .client()
        .create_booking(as_user(&guest, booking(&s.restaurant, 2, "12:00", "k-1")))
        .await
        .unwrap()
        .into_inner()
        .booking
        .unwrap();
    let again = h
        .client()
        .create_booking(as_user(&guest, booking(&s.restaurant, 2, "12:00", "k-1")))
        .await
        .unwrap()
        .into_inner()
        .booking
        .unwrap();
    assert_eq!(first.id, again.id);
    let err = book(booking(&s.restaurant, 3, "12:00", "k-1")).await;
    assert_eq!(reason(&err), "IDEMPOTENCY_KEY_REUSED");

    // A table with a booking to come is not removed; deactivating it is the way.
    let tables = h
        .client()
        .list_tables(as_user(
            &s.owner,
            pb::ListTablesRequest {
                restaurant_id: s.restaurant.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .tables;
    let err = h
        .client()
        .delete_table(as_user(
            &s.owner,
            pb::DeleteTableRequest {
                table_id: tables[0].id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "TABLE_HAS_BOOKINGS")
    );
}

#[tokio::test]
async fn a_local_time_skipped_by_a_dst_change_is_refused() {
    let (h, _db) = harness().await;
    let owner = h.token(Uuid::now_v7(), "restaurant_owner");
    let r = h
        .client()
        .create_restaurant(as_user(
            &owner,
            pb::CreateRestaurantRequest {
                name: "Diner".into(),
                city: "New York".into(),
                time_zone: "America/New_York".into(),
                policy: Some(pb::PolicyChanges {
                    window_days: Some(365),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .restaurant
        .unwrap();
    let guest = h.token(Uuid::now_v7(), "buyer");
    let mut req = booking(&r.id, 2, "02:30", "");
    req.start = "2027-03-14T02:30".into();
    let err = h.client().create_booking(as_user(&guest, req)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), ["start"]);
    let why = err
        .get_details_bad_request()
        .map(|b| b.field_violations[0].description.clone())
        .unwrap_or_default();
    assert!(why.contains("daylight-saving"), "{why}");
}

#[tokio::test]
async fn availability_is_fresh_on_two_replicas_after_a_booking_a_cancellation_and_an_hours_change() {
    let Some(url) = testing::redis_url() else { return };
    for t in testing::all().await {
        Migrator::up(&t.db, None).await.unwrap();
        let (tenant, keys) = (tenant(), keys());
        let a = Harness::start(t.db.clone(), Some(Redis::connect(&url).await.unwrap()), &tenant, &keys).await;
        let b = Harness::start(t.db.clone(), Some(Redis::connect(&url).await.unwrap()), &tenant, &keys).await;
        let s = restaurant(&a, &format!("Goa {}", t.backend)).await;
        let before = free(&b, &s.restaurant, 2).await;
        assert_eq!(before.len(), 55, "{}", t.backend);
        // Read through both replicas so both hold the day.
        assert_eq!(free(&a, &s.restaurant, 2).await, before);

        let guest = a.token(Uuid::now_v7(), "buyer");
        let booked = a
            .client()
            .create_booking(as_user(&guest, booking(&s.restaurant, 2, "19:00", "")))
            .await
            .unwrap()
            .into_inner()
            .booking
            .unwrap();
        assert_eq!(
            free(&b, &s.restaurant, 2).await.len(),
            55 - 11,
            "{}: after a booking",
            t.backend
        );

        b.client()
            .cancel_booking(as_user(
                &guest,
                pb::CancelBookingRequest {
                    booking_id: booked.id,
                    reason: String::new(),
                },
            ))
            .await
            .unwrap();
        assert_eq!(
            free(&a, &s.restaurant, 2).await,
            before,
            "{}: after a cancellation",
            t.backend
        );

        // Both replicas book at noon, so both hold the restaurant's set-up in memory.
        for (replica, at) in [(&a, "12:00"), (&b, "13:30")] {
            replica
                .client()
                .create_booking(as_user(&guest, booking(&s.restaurant, 2, at, "")))
                .await
                .unwrap();
        }

        let mut evenings = every_day();
        for h in &mut evenings {
            h.opens = "18:00".into();
        }
        a.client()
            .set_hours(as_user(
                &s.owner,
                pb::SetHoursRequest {
                    restaurant_id: s.restaurant.clone(),
                    hours: evenings,
                },
            ))
            .await
            .unwrap();
        let now = free(&b, &s.restaurant, 2).await;
        assert_eq!(
            now.first().map(String::as_str),
            Some("18:00"),
            "{}: after an hours change",
            t.backend
        );
        assert_eq!(now.len(), 15);

        // The set-up a booking reads is fresh too: at once on the replica that made the change,
        // and on the other as soon as the invalidation reaches it (well inside its 30 s TTL).
        let noon = |replica: &Harness| {
            let c = replica.client();
            let t = guest.clone();
            let req = booking(&s.restaurant, 2, "15:00", "");
            async move { c.clone().create_booking(as_user(&t, req)).await }
        };
        let err = noon(&a).await.unwrap_err();
        assert_eq!(reason(&err), "OUTSIDE_HOURS", "{}: the changing replica", t.backend);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let err = noon(&b).await.unwrap_err();
        assert_eq!(reason(&err), "OUTSIDE_HOURS", "{}: the other replica", t.backend);
    }
}
