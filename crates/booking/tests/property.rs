//! Availability against the database's truth, for random tables, hours and bookings (SQLite; the
//! store's rules are the same on PostgreSQL, whose races the other store tests cover):
//!
//! - no start is offered that holding bookings cover on every table fitting the party;
//! - booking any offered start succeeds.
use std::sync::OnceLock;

use chrono::{Duration, NaiveDate, Utc};
use proptest::prelude::*;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use thali_booking::{
    domain::{BookingError, NewBooking, NewRestaurant, NewTable, PolicyMinutes, local_start, parse_hours, parse_zone},
    store::{BookingStore, booking, table},
};
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::testing;
use uuid::Uuid;

/// One runtime and one migrated database for every case (each case has its own restaurant).
fn world() -> &'static (tokio::runtime::Runtime, BookingStore) {
    static WORLD: OnceLock<(tokio::runtime::Runtime, BookingStore)> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = rt.block_on(async {
            let t = testing::sqlite().await;
            Migrator::up(&t.db, None).await.unwrap();
            BookingStore::new(t.db)
        });
        (rt, store)
    })
}

fn new_booking(restaurant: Uuid, party: i32, start: chrono::DateTime<Utc>) -> NewBooking {
    NewBooking {
        restaurant_id: restaurant,
        party_size: party,
        starts_at: start,
        guest_name: "Guest".into(),
        phone: "+91 90000 00000".into(),
        note: String::new(),
    }
}

/// Sets up a restaurant, places the bookings, and checks the offered starts of `party`.
async fn case(
    store: &BookingStore,
    tables: &[(i32, i32)],
    opens: u32,
    hours_long: u32,
    bookings: &[(u32, i32)],
    party: i32,
    pick: prop::sample::Index,
) -> Result<(), TestCaseError> {
    let owner = Uuid::now_v7();
    let new = NewRestaurant::parse("Prop", "Propcity", &[], "", "Asia/Kolkata", PolicyMinutes::default()).unwrap();
    let r = store.create_restaurant(owner, &new, None, Utc::now()).await.unwrap().id;
    for (i, (min, extra)) in tables.iter().enumerate() {
        let t = NewTable::parse(&format!("T{i}"), *min, (*min + *extra).min(50)).unwrap();
        store.add_table(owner, r, &t).await.unwrap();
    }
    let opens_at = format!("{opens:02}:00");
    let closes_at = format!("{:02}:00", (opens + hours_long) % 24);
    let days = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let week: Vec<(&str, &str, &str)> = days
        .iter()
        .map(|d| (*d, opens_at.as_str(), closes_at.as_str()))
        .collect();
    store.set_hours(owner, r, &parse_hours(&week).unwrap()).await.unwrap();

    let tz = parse_zone("Asia/Kolkata").unwrap();
    let now = Utc::now();
    let date: NaiveDate = (now + Duration::days(3)).with_timezone(&tz).date_naive();
    let first = local_start(tz, &format!("{date}T{opens_at}")).unwrap();
    // Bookings at random grid starts of that opening (some refused: taken, or past closing).
    for (slot, size) in bookings {
        let start = first + Duration::minutes(15 * i64::from(*slot));
        match store
            .book(Uuid::now_v7(), &new_booking(r, *size, start), None, now)
            .await
        {
            Ok(_) | Err(BookingError::SlotTaken | BookingError::PartyTooLarge | BookingError::Start(_)) => {}
            Err(e) => return Err(TestCaseError::fail(format!("unexpected {e:?}"))),
        }
    }

    let row = store.restaurant_row(r).await.unwrap();
    let day = store.days(std::slice::from_ref(&row), date).await.unwrap().remove(0);
    let offered: Vec<_> = day.starts_for(party, now).collect();

    // The truth: tables and holding bookings as stored.
    let db = store.connection();
    let tables = table::Entity::find()
        .filter(table::Column::RestaurantId.eq(r))
        .all(db)
        .await
        .unwrap();
    let holds = booking::Entity::find()
        .filter(booking::Column::RestaurantId.eq(r))
        .filter(booking::Column::Status.eq("confirmed"))
        .all(db)
        .await
        .unwrap();
    let sitting = Duration::minutes(90);
    for s in &offered {
        let free_fit = tables.iter().any(|t| {
            t.active
                && t.min_seats <= party
                && party <= t.max_seats
                && !holds
                    .iter()
                    .any(|b| b.table_id == t.id && b.starts_at < *s + sitting && *s < b.ends_at)
        });
        prop_assert!(free_fit, "{s} offered for {party} but every fitting table is held");
    }
    if !offered.is_empty() {
        let s = offered[pick.index(offered.len())];
        let booked = store.book(Uuid::now_v7(), &new_booking(r, party, s), None, now).await;
        prop_assert!(booked.is_ok(), "offered {s} for {party} but booking it gave {booked:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn offered_starts_have_a_free_fitting_table_and_book(
        tables in prop::collection::vec((1..=6i32, 0..=4i32), 1..=4),
        opens in 6u32..=20,
        hours_long in 2u32..=14,
        bookings in prop::collection::vec((0u32..40, 1..=8i32), 0..=12),
        party in 1..=8i32,
        pick in any::<prop::sample::Index>(),
    ) {
        let (rt, store) = world();
        rt.block_on(case(store, &tables, opens, hours_long, &bookings, party, pick))?;
    }
}
