//! The idempotency rules every service uses (`platform::idempotency::Keys`, ADR 0005), on SQLite
//! and PostgreSQL, against a service's real table.
use sea_orm::TransactionTrait;
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::{
    idempotency::{Idempotency, Keys, Replay, WINDOW},
    testing,
};
use uuid::Uuid;

const KEYS: Keys = Keys::new("storefront_idempotency");

#[tokio::test]
async fn a_key_replays_its_request_refuses_another_and_expires() {
    for t in testing::all().await {
        Migrator::up(&t.db, None).await.unwrap();
        let now = chrono::Utc::now();
        let idem = Idempotency::new("k-1".into(), &("chai", 4900));
        assert_eq!(
            KEYS.replay(&t.db, "create", "asha", &idem, now).await.unwrap(),
            Replay::Fresh
        );
        let id = Uuid::now_v7();
        let txn = t.db.begin().await.unwrap();
        assert!(KEYS.claim(&txn, "create", "asha", &idem, id, now).await.unwrap());
        txn.commit().await.unwrap();

        assert_eq!(
            KEYS.replay(&t.db, "create", "asha", &idem, now).await.unwrap(),
            Replay::Same(id)
        );
        let other = Idempotency::new("k-1".into(), &("chai", 5000));
        assert_eq!(
            KEYS.replay(&t.db, "create", "asha", &other, now).await.unwrap(),
            Replay::Conflict,
            "{}",
            t.backend
        );
        // Another subject or scope has its own keys.
        assert_eq!(
            KEYS.replay(&t.db, "create", "ravi", &idem, now).await.unwrap(),
            Replay::Fresh
        );
        assert_eq!(
            KEYS.replay(&t.db, "update", "asha", &idem, now).await.unwrap(),
            Replay::Fresh
        );
        // After the window the key is free again, and housekeeping removes what is left.
        let later = now + WINDOW + chrono::TimeDelta::minutes(1);
        assert_eq!(
            KEYS.replay(&t.db, "create", "asha", &other, later).await.unwrap(),
            Replay::Fresh
        );
        let txn = t.db.begin().await.unwrap();
        assert!(
            KEYS.claim(&txn, "create", "ravi", &idem, Uuid::now_v7(), now)
                .await
                .unwrap()
        );
        txn.commit().await.unwrap();
        assert_eq!(KEYS.prune(&t.db, later).await.unwrap(), 1, "{}", t.backend);
    }
}

#[tokio::test]
async fn of_two_racing_claims_of_one_key_exactly_one_wins() {
    for t in testing::all().await {
        Migrator::up(&t.db, None).await.unwrap();
        let now = chrono::Utc::now();
        let idem = Idempotency::new("race".into(), &"same body");
        let claim = |id: Uuid| {
            let db = t.db.clone();
            let idem = idem.clone();
            async move {
                let txn = db.begin().await.unwrap();
                let won = KEYS.claim(&txn, "create", "asha", &idem, id, now).await.unwrap();
                if won {
                    txn.commit().await.unwrap();
                }
                won
            }
        };
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (won_a, won_b) = tokio::join!(claim(a), claim(b));
        assert!(
            won_a ^ won_b,
            "{}: exactly one claim wins ({won_a}, {won_b})",
            t.backend
        );
        let winner = if won_a { a } else { b };
        assert_eq!(
            KEYS.replay(&t.db, "create", "asha", &idem, now).await.unwrap(),
            Replay::Same(winner)
        );
    }
}
