//! Store tests on every configured backend: SQLite always, PostgreSQL with
//! `THALI_TEST_DATABASE_URL` (required under CI=true).
use sea_orm::{ActiveModelTrait, DatabaseConnection, Set};
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::testing::{self, TestDatabase};
use thali_storefront::{
    domain::{NewCreator, NewProduct, ProductChanges, ProfileChanges, StorefrontError},
    store::{Idempotency, StorefrontStore, product},
};

async fn backends() -> Vec<TestDatabase> {
    let dbs = testing::all().await;
    for t in &dbs {
        Migrator::up(&t.db, None)
            .await
            .unwrap_or_else(|e| panic!("migrating {}: {e}", t.backend));
    }
    dbs
}

fn creator(username: &str) -> NewCreator {
    NewCreator::parse(username, "Chai Point", "Tea and snacks").unwrap()
}

fn chai(price: i64) -> NewProduct {
    NewProduct::parse("Masala chai", "Strong, sweet", Some((price, "INR")), Some(20), None).unwrap()
}

#[tokio::test]
async fn every_migration_runs_down_and_up_again() {
    for t in testing::all().await {
        Migrator::up(&t.db, None).await.unwrap();
        Migrator::down(&t.db, None)
            .await
            .unwrap_or_else(|e| panic!("{}: down: {e}", t.backend));
        Migrator::up(&t.db, None)
            .await
            .unwrap_or_else(|e| panic!("{}: up again: {e}", t.backend));
        assert!(Migrator::get_pending_migrations(&t.db).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn usernames_are_unique_whoever_asks() {
    for t in backends().await {
        let store = StorefrontStore::new(t.db.clone());
        let made = store
            .create_creator("alice", &creator("chai_point"), None)
            .await
            .unwrap();
        assert_eq!(made.owner_subject, "alice");
        assert_eq!(store.creator("chai_point").await.unwrap(), made);
        let err = store
            .create_creator("bob", &creator("chai_point"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, StorefrontError::UsernameTaken), "{}: {err:?}", t.backend);
    }
}

#[tokio::test]
async fn concurrent_creates_of_one_username_leave_one_winner() {
    for t in backends().await {
        let store = StorefrontStore::new(t.db.clone());
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .create_creator(&format!("user-{i}"), &creator("race_me"), None)
                        .await
                })
            })
            .collect();
        let mut won = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => won += 1,
                Err(StorefrontError::UsernameTaken) => {}
                Err(other) => panic!("{}: unexpected {other:?}", t.backend),
            }
        }
        assert_eq!(won, 1, "{}", t.backend);
    }
}

#[tokio::test]
async fn idempotency_key_replays_and_refuses_a_different_request() {
    for t in backends().await {
        let store = StorefrontStore::new(t.db.clone());
        let new = creator("idem_shop");
        let key = Idempotency::new("key-1".into(), &new);
        let first = store.create_creator("alice", &new, Some(&key)).await.unwrap();
        let again = store.create_creator("alice", &new, Some(&key)).await.unwrap();
        assert_eq!(first, again, "{}", t.backend);

        let other = creator("other_shop");
        let reused = Idempotency::new("key-1".into(), &other);
        let err = store.create_creator("alice", &other, Some(&reused)).await.unwrap_err();
        assert!(
            matches!(err, StorefrontError::IdempotencyKeyReused),
            "{}: {err:?}",
            t.backend
        );

        // Keys belong to the caller: bob's key-1 is his own.
        let bobs = store.create_creator("bob", &other, Some(&reused)).await.unwrap();
        assert_eq!(bobs.username, "other_shop");

        let p1 = store
            .create_product(
                "alice",
                "idem_shop",
                &chai(4900),
                Some(&Idempotency::new("p".into(), &chai(4900))),
            )
            .await
            .unwrap();
        let p2 = store
            .create_product(
                "alice",
                "idem_shop",
                &chai(4900),
                Some(&Idempotency::new("p".into(), &chai(4900))),
            )
            .await
            .unwrap();
        assert_eq!(p1.id, p2.id);
        let (listed, _) = store.list_products(Some("alice"), "idem_shop", 50, None).await.unwrap();
        assert_eq!(
            listed.len(),
            1,
            "{}: a replay must not create a second product",
            t.backend
        );
    }
}

#[tokio::test]
async fn a_failed_create_does_not_use_up_its_key() {
    for t in backends().await {
        let store = StorefrontStore::new(t.db.clone());
        store
            .create_creator("alice", &creator("taken_name"), None)
            .await
            .unwrap();
        let new = creator("taken_name");
        let key = Idempotency::new("k".into(), &new);
        assert!(matches!(
            store.create_creator("bob", &new, Some(&key)).await,
            Err(StorefrontError::UsernameTaken)
        ));
        assert!(matches!(
            store.create_creator("bob", &new, Some(&key)).await,
            Err(StorefrontError::UsernameTaken)
        ));
    }
}

#[tokio::test]
async fn only_the_owner_changes_a_page_and_its_products() {
    for t in backends().await {
        let store = StorefrontStore::new(t.db.clone());
        store
            .create_creator("alice", &creator("alice_snacks"), None)
            .await
            .unwrap();
        let changes = ProfileChanges::parse(Some("Alice's Snacks"), None).unwrap();
        assert!(matches!(
            store.update_profile("bob", "alice_snacks", &changes).await,
            Err(StorefrontError::NotOwner)
        ));
        let updated = store.update_profile("alice", "alice_snacks", &changes).await.unwrap();
        assert_eq!(updated.display_name, "Alice's Snacks");
        assert_eq!(updated.bio, "Tea and snacks");

        assert!(matches!(
            store.create_product("bob", "alice_snacks", &chai(100), None).await,
            Err(StorefrontError::NotOwner)
        ));
        let product = store
            .create_product("alice", "alice_snacks", &chai(100), None)
            .await
            .unwrap();
        let price = ProductChanges::parse(None, None, Some((150, "INR")), None, Some(None)).unwrap();
        assert!(matches!(
            store.update_product("bob", product.id, &price).await,
            Err(StorefrontError::NotOwner)
        ));
        let (changed, page) = store.update_product("alice", product.id, &price).await.unwrap();
        assert_eq!(
            page, "alice_snacks",
            "the page to invalidate, from the same transaction"
        );
        assert_eq!(changed.price.amount_minor, 150);
        assert_eq!(changed.stock, None, "stock cleared means unlimited");
        assert!(matches!(
            store.archive_product("bob", product.id).await,
            Err(StorefrontError::NotOwner)
        ));
        assert!(matches!(
            store.update_profile("alice", "nobody_here", &changes).await,
            Err(StorefrontError::CreatorNotFound)
        ));
    }
}

#[tokio::test]
async fn archived_products_leave_the_storefront_and_stay_archived() {
    for t in backends().await {
        let store = StorefrontStore::new(t.db.clone());
        store
            .create_creator("alice", &creator("archive_me"), None)
            .await
            .unwrap();
        let keep = store
            .create_product("alice", "archive_me", &chai(100), None)
            .await
            .unwrap();
        let gone = store
            .create_product("alice", "archive_me", &chai(200), None)
            .await
            .unwrap();
        let hidden = NewProduct::parse("Samosa", "", Some((30, "INR")), None, Some(false)).unwrap();
        let hidden = store
            .create_product("alice", "archive_me", &hidden, None)
            .await
            .unwrap();

        let (archived, _) = store.archive_product("alice", gone.id).await.unwrap();
        assert!(archived.archived_at.is_some() && !archived.active);
        assert_eq!(
            store.archive_product("alice", gone.id).await.unwrap().0,
            archived,
            "archiving twice is a no-op"
        );
        let reactivate = ProductChanges::parse(None, None, None, Some(true), None).unwrap();
        assert!(matches!(
            store.update_product("alice", gone.id, &reactivate).await,
            Err(StorefrontError::ProductArchived)
        ));

        let (_, shown) = store.storefront("archive_me").await.unwrap();
        assert_eq!(
            shown.iter().map(|p| p.id).collect::<Vec<_>>(),
            [keep.id],
            "{}",
            t.backend
        );
        let (owner_view, _) = store
            .list_products(Some("alice"), "archive_me", 50, None)
            .await
            .unwrap();
        assert_eq!(
            owner_view.iter().map(|p| p.id).collect::<Vec<_>>(),
            [hidden.id, keep.id]
        );
        let (public_view, _) = store.list_products(None, "archive_me", 50, None).await.unwrap();
        assert_eq!(public_view.iter().map(|p| p.id).collect::<Vec<_>>(), [keep.id]);
    }
}

#[tokio::test]
async fn products_page_newest_first_without_gaps_or_repeats() {
    for t in backends().await {
        let store = StorefrontStore::new(t.db.clone());
        store
            .create_creator("alice", &creator("many_items"), None)
            .await
            .unwrap();
        let mut made = Vec::new();
        for i in 0..7 {
            made.push(
                store
                    .create_product("alice", "many_items", &chai(100 + i), None)
                    .await
                    .unwrap()
                    .id,
            );
        }
        made.reverse();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = store.list_products(None, "many_items", 3, after).await.unwrap();
            assert!(page.len() <= 3);
            seen.extend(page.iter().map(|p| p.id));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, made, "{}", t.backend);
    }
}

/// The rules hold in the database itself, whatever code writes to it.
#[tokio::test]
async fn the_database_refuses_rows_that_break_the_rules() {
    for t in backends().await {
        let store = StorefrontStore::new(t.db.clone());
        let owner = store.create_creator("alice", &creator("db_rules"), None).await.unwrap();
        let base = |price: i64, currency: &str, stock: Option<i64>| {
            let now = chrono::Utc::now();
            product::ActiveModel {
                id: Set(uuid::Uuid::now_v7()),
                creator_id: Set(owner.id),
                title: Set("x".into()),
                description: Set(String::new()),
                price_minor: Set(price),
                currency: Set(currency.into()),
                active: Set(true),
                stock: Set(stock),
                created_at: Set(now),
                updated_at: Set(now),
                archived_at: Set(None),
            }
        };
        let db: &DatabaseConnection = &t.db;
        assert!(
            base(0, "INR", None).insert(db).await.is_err(),
            "{}: zero price accepted",
            t.backend
        );
        assert!(
            base(-1, "INR", None).insert(db).await.is_err(),
            "{}: negative price accepted",
            t.backend
        );
        assert!(
            base(1, "inr", None).insert(db).await.is_err(),
            "{}: lower-case currency accepted",
            t.backend
        );
        assert!(
            base(1, "INR", Some(-1)).insert(db).await.is_err(),
            "{}: negative stock accepted",
            t.backend
        );
        let mut orphan = base(1, "INR", None);
        orphan.creator_id = Set(uuid::Uuid::now_v7());
        assert!(
            orphan.insert(db).await.is_err(),
            "{}: product without creator accepted",
            t.backend
        );
        let mut archived_active = base(1, "INR", None);
        archived_active.archived_at = Set(Some(chrono::Utc::now()));
        assert!(
            archived_active.insert(db).await.is_err(),
            "{}: archived yet active accepted",
            t.backend
        );
        assert!(
            base(1, "INR", None).insert(db).await.is_ok(),
            "{}: a valid row must pass",
            t.backend
        );

        use thali_storefront::store::creator;
        let now = chrono::Utc::now();
        let bad_name = creator::ActiveModel {
            id: Set(uuid::Uuid::now_v7()),
            username: Set("Bad Name".into()),
            display_name: Set("x".into()),
            bio: Set(String::new()),
            owner_subject: Set("alice".into()),
            created_at: Set(now),
            updated_at: Set(now),
            erased_at: Set(None),
        };
        assert!(
            bad_name.insert(db).await.is_err(),
            "{}: invalid username accepted",
            t.backend
        );
    }
}

#[tokio::test]
async fn hourly_housekeeping_forgets_idempotency_keys_past_their_day() {
    use std::{sync::Arc, time::Duration};

    use sea_orm::{ConnectionTrait, Statement};
    use thali_platform::jobs::{ManualClock, Queue};
    for t in backends().await {
        let store = StorefrontStore::new(t.db.clone());
        let idem = Idempotency::new("k1".into(), &"create chai_point");
        store
            .create_creator("alice", &creator("chai_point"), Some(&idem))
            .await
            .unwrap();
        let count = || async {
            let sql = "SELECT COUNT(*) AS n FROM storefront_idempotency";
            let row =
                t.db.query_one_raw(Statement::from_string(t.db.get_database_backend(), sql))
                    .await
                    .unwrap()
                    .unwrap();
            row.try_get::<i64>("", "n").unwrap()
        };
        let clock = ManualClock::new(chrono::Utc::now());
        let queue = Queue::with_clock(thali_storefront::workers::SERVICE, Arc::new(clock.clone()));
        let cache = thali_platform::cache::TwoLevelCache::new(thali_storefront::cache_settings(), None).await;
        let service = thali_storefront::Storefront::with_store(store.clone(), cache, "t");
        let worker = service.job_worker(queue);
        // Three periodic jobs: queue housekeeping, idempotency housekeeping, the expiry sweep.
        assert_eq!(worker.run_once().await.unwrap(), 3, "{}", t.backend);
        assert_eq!(count().await, 1, "{}: still inside its window", t.backend);
        clock.advance(Duration::from_secs(25 * 3600));
        assert_eq!(worker.run_once().await.unwrap(), 3, "{}", t.backend);
        assert_eq!(count().await, 0, "{}", t.backend);
        // The key is free again: the same request creates nothing new, it is simply refused as taken.
        let again = store.create_creator("alice", &creator("chai_point"), Some(&idem)).await;
        assert!(
            matches!(again, Err(StorefrontError::UsernameTaken)),
            "{}: {again:?}",
            t.backend
        );
    }
}

/// Relay jobs (outbox events) waiting in the storefront's queue.
async fn outbox(t: &TestDatabase) -> usize {
    use thali_platform::jobs::admin;
    let filter = admin::Filter {
        service: Some(thali_storefront::workers::SERVICE.into()),
        kind: Some(thali_platform::events::RELAY_KIND.into()),
        state: None,
    };
    admin::list(&t.db, &filter, 100).await.unwrap().len()
}

#[tokio::test]
async fn selling_out_and_its_event_commit_together_or_not_at_all() {
    use sea_orm::ConnectionTrait;
    for t in backends().await {
        let store = StorefrontStore::new(t.db.clone());
        store
            .create_creator("alice", &creator("alice_snacks"), None)
            .await
            .unwrap();
        let product = store
            .create_product("alice", "alice_snacks", &chai(100), None)
            .await
            .unwrap();
        let sold_out = ProductChanges::parse(None, None, None, None, Some(Some(0))).unwrap();

        // The outbox refuses writes: the stock change rolls back with the event.
        let (fail, undo) = match t.backend {
            "postgres" => (
                "CREATE FUNCTION outbox_down() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'outbox down'; END $$ \
                 LANGUAGE plpgsql; CREATE TRIGGER outbox_down BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION outbox_down()",
                "DROP TRIGGER outbox_down ON jobs",
            ),
            _ => (
                "CREATE TRIGGER outbox_down BEFORE INSERT ON jobs BEGIN SELECT RAISE(ABORT, 'outbox down'); END",
                "DROP TRIGGER outbox_down",
            ),
        };
        t.db.execute_unprepared(fail).await.unwrap();
        assert!(store.update_product("alice", product.id, &sold_out).await.is_err());
        let page = store
            .list_products(Some("alice"), "alice_snacks", 10, None)
            .await
            .unwrap();
        assert_eq!(page.0[0].stock, Some(20), "{}: the stock change rolled back", t.backend);
        assert_eq!(outbox(&t).await, 0, "{}", t.backend);

        t.db.execute_unprepared(undo).await.unwrap();
        let (changed, _) = store.update_product("alice", product.id, &sold_out).await.unwrap();
        assert_eq!(changed.stock, Some(0));
        assert_eq!(outbox(&t).await, 1, "{}: one product.out_of_stock", t.backend);
        // Already sold out: no second event.
        store.update_product("alice", product.id, &sold_out).await.unwrap();
        let price = ProductChanges::parse(None, None, Some((120, "INR")), None, None).unwrap();
        store.update_product("alice", product.id, &price).await.unwrap();
        assert_eq!(outbox(&t).await, 1, "{}", t.backend);
    }
}
