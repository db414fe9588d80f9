//! Stock held for orders (issue 10): on every configured backend (SQLite always, PostgreSQL with
//! `THALI_TEST_DATABASE_URL`, required under CI=true), the last units go to exactly as many
//! buyers as there are units however many race, stock never goes below zero, and held units come
//! back on expiry or release, never after a commit.
mod support;

use std::{sync::Arc, time::Duration};

use sea_orm::{ConnectionTrait, DatabaseConnection};
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::{
    jobs::{ManualClock, Queue},
    testing::{self, TestDatabase},
};
use thali_proto::storefront::v1 as pb;
use thali_storefront::{
    domain::{NewCreator, NewProduct, Product, ProductChanges, ReservationRequest, ReservationState, StorefrontError},
    store::StorefrontStore,
};
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

async fn backends() -> Vec<TestDatabase> {
    let dbs = testing::all().await;
    for t in &dbs {
        Migrator::up(&t.db, None)
            .await
            .unwrap_or_else(|e| panic!("migrating {}: {e}", t.backend));
    }
    dbs
}

/// A store on a clock the test moves, with one creator page.
async fn shop(db: &DatabaseConnection, username: &str) -> (StorefrontStore, ManualClock) {
    let clock = ManualClock::new(testing::ten_past_the_hour());
    let queue = Queue::with_clock(thali_storefront::workers::SERVICE, Arc::new(clock.clone()));
    let store = StorefrontStore::with_queue(db.clone(), queue);
    let page = NewCreator::parse(username, "Chai Point", "Tea and snacks").unwrap();
    store.create_creator("owner", &page, None).await.unwrap();
    (store, clock)
}

async fn product(store: &StorefrontStore, username: &str, price: i64, currency: &str, stock: Option<i64>) -> Product {
    let new = NewProduct::parse("Masala chai", "", Some((price, currency)), stock, None).unwrap();
    store.create_product("owner", username, &new, None).await.unwrap()
}

fn request(username: &str, lines: &[(Uuid, i64)]) -> ReservationRequest {
    let lines: Vec<(String, i64)> = lines.iter().map(|(p, q)| (p.to_string(), *q)).collect();
    let lines: Vec<(&str, i64)> = lines.iter().map(|(p, q)| (p.as_str(), *q)).collect();
    ReservationRequest::parse(&Uuid::now_v7().to_string(), username, &lines, 0).unwrap()
}

async fn stock(db: &DatabaseConnection, id: Uuid) -> Option<i64> {
    let row = db
        .query_one_raw(thali_platform::db::statement(
            db.get_database_backend(),
            "SELECT stock FROM products WHERE id = $1",
            vec![id.into()],
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<Option<i64>>(0).unwrap()
}

/// `product.out_of_stock` events waiting in the storefront's outbox.
async fn sold_out_events(db: &DatabaseConnection) -> usize {
    use thali_platform::jobs::admin;
    let filter = admin::Filter {
        service: Some(thali_storefront::workers::SERVICE.into()),
        kind: Some(thali_platform::events::RELAY_KIND.into()),
        state: None,
    };
    admin::list(db, &filter, 100).await.unwrap().len()
}

#[tokio::test]
async fn a_hundred_buyers_racing_for_the_last_ten_units_hold_exactly_ten() {
    for t in backends().await {
        let (store, _) = shop(&t.db, "drop_day").await;
        let chai = product(&store, "drop_day", 4900, "INR", Some(10)).await;
        let mut racers = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let (store, req) = (store.clone(), request("drop_day", &[(chai.id, 1)]));
            racers.spawn(async move { store.reserve_stock(&req).await });
        }
        let (mut held, mut refused) = (0, 0);
        while let Some(outcome) = racers.join_next().await {
            match outcome.unwrap() {
                Ok(change) => {
                    assert_eq!(change.reservation.state, ReservationState::Held);
                    assert_eq!(change.reservation.total.amount_minor, 4900);
                    held += 1;
                }
                Err(StorefrontError::OutOfStock { product_id, available }) => {
                    assert_eq!((product_id, available), (chai.id, 0), "{}", t.backend);
                    refused += 1;
                }
                Err(other) => panic!("{}: unexpected {other:?}", t.backend),
            }
        }
        assert_eq!((held, refused), (10, 90), "{}: exactly one buyer per unit", t.backend);
        assert_eq!(stock(&t.db, chai.id).await, Some(0), "{}", t.backend);
        let units: i64 =
            t.db.query_one_raw(thali_platform::db::statement(
                t.db.get_database_backend(),
                "SELECT CAST(SUM(quantity) AS BIGINT) FROM stock_reservation_lines WHERE product_id = $1",
                vec![chai.id.into()],
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index(0)
            .unwrap();
        assert_eq!(units, 10, "{}: the held units are the units sold", t.backend);
        assert_eq!(
            sold_out_events(&t.db).await,
            1,
            "{}: one product.out_of_stock",
            t.backend
        );

        // Whatever writes it, the database refuses a negative stock.
        let negative =
            t.db.execute_raw(thali_platform::db::statement(
                t.db.get_database_backend(),
                "UPDATE products SET stock = $1 WHERE id = $2",
                vec![(-1i64).into(), chai.id.into()],
            ))
            .await;
        assert!(negative.is_err(), "{}: stock below zero is refused", t.backend);
    }
}

#[tokio::test]
async fn buyers_asking_for_several_units_never_hold_more_than_the_stock() {
    for t in backends().await {
        let (store, _) = shop(&t.db, "samosa_stall").await;
        let samosa = product(&store, "samosa_stall", 1500, "INR", Some(25)).await;
        let mut racers = tokio::task::JoinSet::new();
        for i in 0..40 {
            let (store, req) = (store.clone(), request("samosa_stall", &[(samosa.id, 1 + i % 4)]));
            racers.spawn(async move { store.reserve_stock(&req).await.map(|c| c.reservation.lines[0].quantity) });
        }
        let mut held = 0;
        while let Some(outcome) = racers.join_next().await {
            match outcome.unwrap() {
                Ok(quantity) => held += quantity,
                Err(StorefrontError::OutOfStock { .. }) => {}
                Err(other) => panic!("{}: unexpected {other:?}", t.backend),
            }
        }
        let left = stock(&t.db, samosa.id).await.unwrap();
        assert!(left >= 0, "{}", t.backend);
        assert_eq!(held + left, 25, "{}: every unit is either held or on sale", t.backend);
    }
}

#[tokio::test]
async fn held_units_come_back_on_expiry_and_a_late_commit_is_refused() {
    for t in backends().await {
        let (store, clock) = shop(&t.db, "late_buyer").await;
        let chai = product(&store, "late_buyer", 4900, "INR", Some(5)).await;
        let held = store
            .reserve_stock(&request("late_buyer", &[(chai.id, 3)]))
            .await
            .unwrap();
        assert!(held.stock_changed);
        assert_eq!(stock(&t.db, chai.id).await, Some(2));

        // Not yet: 14 minutes in, the sweep leaves it held.
        clock.advance(Duration::from_secs(14 * 60));
        assert!(store.release_expired().await.unwrap().is_empty(), "{}", t.backend);
        assert_eq!(stock(&t.db, chai.id).await, Some(2));

        clock.advance(Duration::from_secs(2 * 60));
        assert_eq!(
            store.release_expired().await.unwrap(),
            vec!["late_buyer".to_owned()],
            "{}: the page whose cached stock is stale",
            t.backend
        );
        assert_eq!(stock(&t.db, chai.id).await, Some(5), "{}: back on sale", t.backend);
        let id = held.reservation.id;
        assert_eq!(store.reservation(id).await.unwrap().state, ReservationState::Released);
        assert!(
            matches!(
                store.commit_reservation(id).await,
                Err(StorefrontError::ReservationReleased)
            ),
            "{}",
            t.backend
        );
        // Releasing again changes nothing (and gives nothing back twice).
        let again = store.release_reservation(id).await.unwrap();
        assert_eq!(again.reservation.state, ReservationState::Released);
        assert!(!again.stock_changed);
        assert_eq!(stock(&t.db, chai.id).await, Some(5), "{}", t.backend);
    }
}

#[tokio::test]
async fn the_job_worker_sweeps_expired_holds_every_thirty_seconds() {
    for t in backends().await {
        let (store, clock) = shop(&t.db, "sweep_shop").await;
        let chai = product(&store, "sweep_shop", 4900, "INR", Some(5)).await;
        let cache = thali_platform::cache::TwoLevelCache::new(thali_storefront::cache_settings(), None).await;
        let service = thali_storefront::Storefront::with_store(store.clone(), cache, "t");
        let mut dropped = service.invalidations();
        let queue = Queue::with_clock(thali_storefront::workers::SERVICE, Arc::new(clock.clone()));
        let worker = service.job_worker(queue);
        store
            .reserve_stock(&request("sweep_shop", &[(chai.id, 4)]))
            .await
            .unwrap();
        assert!(worker.run_once().await.unwrap() >= 1, "{}", t.backend);
        assert_eq!(stock(&t.db, chai.id).await, Some(1));
        clock.advance(Duration::from_secs(15 * 60 + 30));
        assert!(
            worker.run_once().await.unwrap() >= 1,
            "{}: the next sweep is due",
            t.backend
        );
        assert_eq!(
            stock(&t.db, chai.id).await,
            Some(5),
            "{}: the sweep released it",
            t.backend
        );
        let key = dropped.try_recv().expect("the storefront's cached page was dropped");
        assert!(key.ends_with("store:sweep_shop"), "{key}");
    }
}

#[tokio::test]
async fn a_commit_sells_for_good() {
    for t in backends().await {
        let (store, clock) = shop(&t.db, "paid_order").await;
        let chai = product(&store, "paid_order", 4900, "INR", Some(5)).await;
        let held = store
            .reserve_stock(&request("paid_order", &[(chai.id, 2)]))
            .await
            .unwrap();
        let id = held.reservation.id;
        let sold = store.commit_reservation(id).await.unwrap();
        assert_eq!(sold.reservation.state, ReservationState::Committed);
        assert_eq!(
            store.commit_reservation(id).await.unwrap().reservation.state,
            ReservationState::Committed,
            "{}: committing twice is a no-op",
            t.backend
        );
        assert!(matches!(
            store.release_reservation(id).await,
            Err(StorefrontError::ReservationCommitted)
        ));
        clock.advance(Duration::from_secs(3600));
        assert!(store.release_expired().await.unwrap().is_empty());
        assert_eq!(
            stock(&t.db, chai.id).await,
            Some(3),
            "{}: sold units stay sold",
            t.backend
        );
        assert!(matches!(
            store.commit_reservation(Uuid::now_v7()).await,
            Err(StorefrontError::ReservationNotFound)
        ));
    }
}

#[tokio::test]
async fn one_reservation_id_holds_once_and_refuses_another_request() {
    for t in backends().await {
        let (store, _) = shop(&t.db, "retry_shop").await;
        let chai = product(&store, "retry_shop", 4900, "INR", Some(50)).await;
        let req = request("retry_shop", &[(chai.id, 2)]);
        let mut racers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (store, req) = (store.clone(), req.clone());
            racers.spawn(async move { store.reserve_stock(&req).await });
        }
        while let Some(outcome) = racers.join_next().await {
            let change = outcome.unwrap().unwrap_or_else(|e| panic!("{}: {e:?}", t.backend));
            assert_eq!(change.reservation.id, req.id);
        }
        assert_eq!(stock(&t.db, chai.id).await, Some(48), "{}: held once", t.backend);
        // A replay after a release answers the released reservation; it does not hold again.
        store.release_reservation(req.id).await.unwrap();
        let replay = store.reserve_stock(&req).await.unwrap();
        assert_eq!(replay.reservation.state, ReservationState::Released);
        assert_eq!(stock(&t.db, chai.id).await, Some(50), "{}", t.backend);

        let mut other = request("retry_shop", &[(chai.id, 3)]);
        other.id = req.id;
        assert!(matches!(
            store.reserve_stock(&other).await,
            Err(StorefrontError::IdempotencyKeyReused)
        ));
    }
}

#[tokio::test]
async fn lines_are_priced_now_and_what_is_not_on_sale_holds_nothing() {
    for t in backends().await {
        let (store, _) = shop(&t.db, "price_shop").await;
        let chai = product(&store, "price_shop", 4900, "INR", Some(5)).await;
        let samosa = product(&store, "price_shop", 1500, "INR", None).await;
        let dollars = product(&store, "price_shop", 300, "USD", Some(5)).await;
        let (other_store, _) = shop(&t.db, "other_shop").await;
        let foreign = product(&other_store, "other_shop", 100, "INR", Some(5)).await;

        let change = ProductChanges::parse(None, None, Some((5900, "INR")), None, None).unwrap();
        store.update_product("owner", chai.id, &change).await.unwrap();
        let held = store
            .reserve_stock(&request("price_shop", &[(chai.id, 2), (samosa.id, 3)]))
            .await
            .unwrap()
            .reservation;
        assert_eq!(
            held.total.amount_minor,
            2 * 5900 + 3 * 1500,
            "{}: today's price",
            t.backend
        );
        assert_eq!(held.owner_subject, "owner");
        assert_eq!(
            stock(&t.db, samosa.id).await,
            None,
            "{}: unlimited stays unlimited",
            t.backend
        );

        let refused = |lines: Vec<(Uuid, i64)>| {
            let store = store.clone();
            async move { store.reserve_stock(&request("price_shop", &lines)).await.unwrap_err() }
        };
        assert!(matches!(
            refused(vec![(chai.id, 1), (dollars.id, 1)]).await,
            StorefrontError::MixedCurrencies
        ));
        assert!(matches!(
            refused(vec![(chai.id, 1), (foreign.id, 1)]).await,
            StorefrontError::ProductNotFound
        ));
        assert!(matches!(
            refused(vec![(chai.id, 1), (Uuid::now_v7(), 1)]).await,
            StorefrontError::ProductNotFound
        ));
        let off = ProductChanges::parse(None, None, None, Some(false), None).unwrap();
        store.update_product("owner", samosa.id, &off).await.unwrap();
        assert!(matches!(
            refused(vec![(chai.id, 1), (samosa.id, 1)]).await,
            StorefrontError::ProductUnavailable(p) if p == samosa.id
        ));
        assert!(matches!(
            refused(vec![(chai.id, 4)]).await,
            StorefrontError::OutOfStock { available: 3, .. }
        ));
        // Every refusal rolled back whatever it had taken on the way.
        assert_eq!(stock(&t.db, chai.id).await, Some(3), "{}", t.backend);
        assert_eq!(stock(&t.db, dollars.id).await, Some(5), "{}", t.backend);
        assert!(matches!(
            store.reserve_stock(&request("no_such_page", &[(chai.id, 1)])).await,
            Err(StorefrontError::CreatorNotFound)
        ));
    }
}

/// Over gRPC: only Thali services hold stock, errors carry their reasons, and the cached
/// storefront shows the stock that is left.
#[tokio::test]
async fn over_grpc_only_services_hold_stock_and_the_storefront_shows_what_is_left() {
    let h = support::Harness::start().await;
    let mut client = h.client();
    let owner = h.token("owner-1");
    let created = client
        .create_creator(support::as_user(
            &owner,
            pb::CreateCreatorRequest {
                username: "grpc_chai".into(),
                display_name: "Chai".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert!(created.get_ref().creator.is_some());
    let chai = client
        .create_product(support::as_user(
            &owner,
            pb::CreateProductRequest {
                username: "grpc_chai".into(),
                title: "Chai".into(),
                price: support::inr(4900),
                stock: Some(4),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    let storefront_stock = |mut client: pb::storefront_service_client::StorefrontServiceClient<_>| async move {
        client
            .get_storefront(pb::GetStorefrontRequest {
                username: "grpc_chai".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .products[0]
            .stock
    };
    assert_eq!(storefront_stock(h.client()).await, Some(4));

    let reserve = |quantity: i64| pb::ReserveStockRequest {
        reservation_id: Uuid::now_v7().to_string(),
        username: "grpc_chai".into(),
        lines: vec![pb::ReservationLine {
            product_id: chai.id.clone(),
            quantity,
        }],
        hold_seconds: 0,
    };
    // A buyer (or the page's owner) cannot hold stock.
    let denied = client
        .reserve_stock(support::as_user(&h.buyer_token("buyer-1"), reserve(1)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(denied.get_error_details().error_info().unwrap().reason, "SERVICE_ONLY");

    let held = client
        .reserve_stock(reserve(3))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(held.state(), pb::ReservationState::Held);
    assert_eq!(held.total.as_ref().unwrap().amount_minor, 3 * 4900);
    assert_eq!(held.lines[0].line_total.as_ref().unwrap().amount_minor, 3 * 4900);
    assert_eq!(
        storefront_stock(h.client()).await,
        Some(1),
        "the cached page was dropped"
    );

    let short = client.reserve_stock(reserve(2)).await.unwrap_err();
    assert_eq!(short.code(), Code::FailedPrecondition);
    let info = short.get_error_details().error_info().unwrap().clone();
    assert_eq!(info.reason, "OUT_OF_STOCK");
    assert_eq!(info.metadata.get("product_id"), Some(&chai.id));
    assert_eq!(info.metadata.get("available").map(String::as_str), Some("1"));

    let released = client
        .release_reservation(pb::ReleaseReservationRequest {
            reservation_id: held.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(released.state(), pb::ReservationState::Released);
    assert_eq!(storefront_stock(h.client()).await, Some(4));
    let late = client
        .commit_reservation(pb::CommitReservationRequest {
            reservation_id: held.id,
        })
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(
        late.get_error_details().error_info().unwrap().reason,
        "RESERVATION_RELEASED"
    );

    let bad = client
        .reserve_stock(pb::ReserveStockRequest {
            reservation_id: "not-a-uuid".into(),
            username: "grpc_chai".into(),
            lines: vec![],
            hold_seconds: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let fields: Vec<String> = bad
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(fields, vec!["reservation_id", "lines", "hold_seconds"]);
}
