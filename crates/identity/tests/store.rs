//! Identity store on every configured backend (SQLite always; PostgreSQL with
//! THALI_TEST_DATABASE_URL, required under CI=true).
use thali_identity::{
    domain::{AccountStatus, IdentityError, NewAccount, Role, parse_api_key},
    store::{IdentityStore, RotateError},
};
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::testing;

async fn stores() -> Vec<(&'static str, IdentityStore)> {
    let mut out = Vec::new();
    for t in testing::all().await {
        Migrator::up(&t.db, None).await.unwrap();
        out.push((t.backend, IdentityStore::new(t.db)));
    }
    out
}

async fn account(store: &IdentityStore, email: &str) -> uuid::Uuid {
    let new = NewAccount::parse(email, "correct horse battery", "Someone", Some(Role::Creator)).unwrap();
    store
        .register(
            &new,
            "$argon2id$not-checked-here".into(),
            AccountStatus::Active,
            None,
            None,
        )
        .await
        .unwrap()
        .id
}

#[tokio::test]
async fn emails_are_unique_in_the_database() {
    for (backend, store) in stores().await {
        account(&store, "same@example.com").await;
        let again = NewAccount::parse("same@example.com", "correct horse battery", "Other", Some(Role::Buyer)).unwrap();
        let err = store
            .register(&again, "x".into(), AccountStatus::Active, None, None)
            .await
            .unwrap_err();
        assert!(matches!(err, IdentityError::EmailTaken), "{backend}: {err:?}");
    }
}

#[tokio::test]
async fn two_racing_rotations_of_one_token_leave_one_winner_and_kill_the_family() {
    for (backend, store) in stores().await {
        let id = account(&store, "race@example.com").await;
        let first = store.start_family(id).await.unwrap();
        let (a, b) = tokio::join!(store.rotate(&first.token), store.rotate(&first.token));
        let winners = [&a, &b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "{backend}: exactly one rotation wins");
        let loser_reused = [&a, &b].iter().any(|r| matches!(r, Err(RotateError::Reused { .. })));
        assert!(loser_reused, "{backend}: the other is a reuse");
        let (_, issued) = [a, b].into_iter().find_map(Result::ok).unwrap();
        assert!(
            matches!(store.rotate(&issued.token).await, Err(RotateError::Invalid)),
            "{backend}: family revoked"
        );
    }
}

#[tokio::test]
async fn api_keys_verify_only_while_valid() {
    for (backend, store) in stores().await {
        let owner = account(&store, "keys@example.com").await;
        let scopes = vec!["storefront.read".to_owned()];
        let (key, secret) = store.create_api_key(owner, "pos", &scopes, None).await.unwrap();
        let presented = parse_api_key(&secret).expect("a minted key has the key shape");
        let (found, found_owner) = store.verify_api_key(&presented).await.unwrap();
        assert_eq!((found.id, found_owner.id), (key.id, owner), "{backend}");
        assert!(found.last_used_at.is_none());
        assert!(
            store.api_keys(owner).await.unwrap()[0].last_used_at.is_some(),
            "{backend}: use is noted"
        );

        let forged = format!("{}{}", &secret[..secret.len() - 3], "AAA");
        let forged = parse_api_key(&forged).unwrap();
        assert!(
            matches!(store.verify_api_key(&forged).await, Err(IdentityError::BadApiKey)),
            "{backend}"
        );

        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        let (_, expired) = store.create_api_key(owner, "old", &scopes, Some(past)).await.unwrap();
        let expired = parse_api_key(&expired).unwrap();
        assert!(
            matches!(store.verify_api_key(&expired).await, Err(IdentityError::BadApiKey)),
            "{backend}"
        );

        store.revoke_api_key(owner, false, key.id).await.unwrap();
        assert!(
            matches!(store.verify_api_key(&presented).await, Err(IdentityError::BadApiKey)),
            "{backend}"
        );
        let stranger = account(&store, "stranger@example.com").await;
        assert!(matches!(
            store.revoke_api_key(stranger, false, key.id).await,
            Err(IdentityError::ApiKeyNotFound)
        ));
    }
}

#[tokio::test]
async fn failures_lock_a_key_and_success_clears_it() {
    for (backend, store) in stores().await {
        let key = "account:lock@example.com";
        for attempt in 1..=4 {
            assert_eq!(
                store.record_failure(key, 5).await.unwrap(),
                (attempt, None),
                "{backend}"
            );
        }
        let (failures, lock) = store.record_failure(key, 5).await.unwrap();
        assert_eq!(failures, 5);
        assert_eq!(lock.expect("the fifth failure locks").as_secs(), 30, "{backend}");
        let left = store
            .throttled(&[key.to_owned(), "address:1.2.3.4".into()])
            .await
            .unwrap()
            .unwrap();
        assert!(left.as_secs() <= 30 && left.as_secs() >= 28, "{backend}: {left:?}");
        let (_, doubled) = store.record_failure(key, 5).await.unwrap();
        assert_eq!(doubled.unwrap().as_secs(), 60, "{backend}: doubles");
        store.clear_failures(key).await.unwrap();
        assert_eq!(store.throttled(&[key.to_owned()]).await.unwrap(), None, "{backend}");
    }
}

/// Rows of `table` in the store's database.
async fn rows(store: &IdentityStore, table: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    let db = store.connection();
    let sql = format!("SELECT COUNT(*) AS n FROM {table}");
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

#[tokio::test]
async fn hourly_housekeeping_deletes_what_no_request_can_use_and_keeps_the_rest() {
    use std::{sync::Arc, time::Duration};

    use thali_identity::workers;
    use thali_platform::{
        idempotency::Idempotency,
        jobs::{ManualClock, Queue},
    };
    for (backend, store) in stores().await {
        let new = NewAccount::parse("keep@example.com", "correct horse battery", "Keep", Some(Role::Buyer)).unwrap();
        let idem = Idempotency::new("key-1".into(), &"register keep");
        let account = store
            .register(&new, "x".into(), AccountStatus::Active, None, Some(&idem))
            .await
            .unwrap();
        let session = store.start_family(account.id).await.unwrap();
        store.record_failure("login:someone@example.com", 5).await.unwrap();
        assert_eq!(rows(&store, "login_throttle").await, 1);

        // An hour on: the throttle row is forgotten; the session and the idempotency key are not.
        let clock = ManualClock::new(chrono::Utc::now());
        clock.advance(Duration::from_secs(3600));
        let worker = workers::worker(
            store.clone(),
            Queue::with_clock(workers::SERVICE, Arc::new(clock.clone())),
        );
        assert_eq!(
            worker.run_once().await.unwrap(),
            4,
            "{backend}: three prunes and the queue's own"
        );
        assert_eq!(rows(&store, "login_throttle").await, 0, "{backend}");
        assert_eq!(rows(&store, "refresh_tokens").await, 1, "{backend}");
        assert_eq!(rows(&store, "identity_idempotency").await, 1, "{backend}");
        assert!(store.session_is_live(session.family_id).await.unwrap());
        assert_eq!(worker.run_once().await.unwrap(), 0, "{backend}: once per hour");

        // Past the refresh token's 30 days: the session and the key's 24 h are over.
        clock.advance(Duration::from_secs(31 * 24 * 3600));
        assert_eq!(worker.run_once().await.unwrap(), 4, "{backend}");
        assert_eq!(rows(&store, "refresh_tokens").await, 0, "{backend}");
        assert_eq!(rows(&store, "identity_idempotency").await, 0, "{backend}");
        assert_eq!(rows(&store, "accounts").await, 1, "accounts stay");
    }
}

#[tokio::test]
async fn a_new_account_and_its_account_created_event_commit_together() {
    use thali_platform::jobs::admin;
    for (backend, store) in stores().await {
        let filter = admin::Filter {
            service: Some(thali_identity::workers::SERVICE.into()),
            kind: Some(thali_platform::events::RELAY_KIND.into()),
            state: None,
        };
        account(&store, "first@example.com").await;
        assert_eq!(
            admin::list(store.connection(), &filter, 10).await.unwrap().len(),
            1,
            "{backend}"
        );
        // A refused registration writes no event.
        let again =
            NewAccount::parse("first@example.com", "correct horse battery", "Again", Some(Role::Buyer)).unwrap();
        assert!(
            store
                .register(&again, "x".into(), AccountStatus::Active, None, None)
                .await
                .is_err()
        );
        assert_eq!(
            admin::list(store.connection(), &filter, 10).await.unwrap().len(),
            1,
            "{backend}"
        );
    }
}
