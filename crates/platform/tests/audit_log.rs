//! The audit trail on SQLite and on PostgreSQL (THALI_TEST_DATABASE_URL; required under CI=true):
//! a record commits or rolls back with its change; the writer chains records in order; a row
//! edited, deleted or reordered makes `verify` name it; UPDATE and DELETE are refused by the
//! database itself.
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, TransactionTrait};
use serde_json::json;
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::{
    audit_log::{self, Broken, Entry},
    testing::{self, TestDatabase},
};

async fn databases() -> Vec<TestDatabase> {
    let mut dbs = testing::all().await;
    for t in &mut dbs {
        Migrator::up(&t.db, None).await.expect("migrations apply");
    }
    dbs
}

fn entry(n: usize) -> Entry {
    Entry::new(
        audit_log::account(format!("0000-{n}")),
        "login.succeeded",
        format!("account:{n}"),
    )
    .from_address("203.0.113.7")
    .with_details(json!({"n": n}))
}

async fn chain(db: &DatabaseConnection, service: &str, n: usize) {
    let txn = db.begin().await.unwrap();
    for i in 1..=n {
        audit_log::record(&txn, service, &entry(i)).await.unwrap();
    }
    txn.commit().await.unwrap();
    assert_eq!(audit_log::append_all(db, service).await.unwrap(), n as u64);
}

async fn verify(db: &DatabaseConnection, service: &str) -> Result<audit_log::Verified, Broken> {
    audit_log::verify(db, service, None, |_| {}).await.unwrap()
}

/// Runs `sql` with the append-only triggers out of the way, as someone with the owner's rights
/// (or a restored dump) could.
async fn tamper(db: &DatabaseConnection, sql: &[&str]) {
    let backend = db.get_database_backend();
    if backend == DbBackend::Postgres {
        db.execute_unprepared("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change")
            .await
            .unwrap();
    } else {
        db.execute_unprepared("DROP TRIGGER audit_log_no_update").await.unwrap();
        db.execute_unprepared("DROP TRIGGER audit_log_no_delete").await.unwrap();
    }
    for s in sql {
        db.execute_unprepared(s).await.unwrap();
    }
    if backend == DbBackend::Postgres {
        db.execute_unprepared("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_change")
            .await
            .unwrap();
    } else {
        db.execute_unprepared(
            "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log \
             BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused'); END",
        )
        .await
        .unwrap();
        db.execute_unprepared(
            "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log \
             BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END",
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_record_commits_and_rolls_back_with_its_change_and_chains_in_order() {
    for t in databases().await {
        let db = &t.db;
        // Rolled back: no record.
        let txn = db.begin().await.unwrap();
        audit_log::record(&txn, "identity", &entry(1)).await.unwrap();
        txn.rollback().await.unwrap();
        assert_eq!(audit_log::append_all(db, "identity").await.unwrap(), 0, "{}", t.backend);
        assert_eq!(audit_log::head(db, "identity").await.unwrap(), None);

        // Committed: chained, in the order they were recorded, each service on its own chain.
        chain(db, "identity", 3).await;
        chain(db, "payments", 2).await;
        let rows = audit_log::rows_since(db, chrono::DateTime::UNIX_EPOCH, Some("identity"), None, 100)
            .await
            .unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(rows[0].prev_hash, audit_log::GENESIS);
        assert_eq!(rows[1].prev_hash, rows[0].hash);
        assert_eq!(rows[2].target, "account:3");
        assert_eq!(rows[2].actor_address, "203.0.113.7");
        assert_eq!(rows[2].details, r#"{"n":3}"#);
        let ok = verify(db, "identity").await.unwrap();
        assert_eq!(ok.rows, 3);
        assert_eq!(ok.head, Some((3, rows[2].hash.clone())));
        assert_eq!(verify(db, "payments").await.unwrap().rows, 2);
        // A head logged earlier must still be on the chain.
        let head = (3, rows[2].hash.as_str());
        assert!(
            audit_log::verify(db, "identity", Some(head), |_| {})
                .await
                .unwrap()
                .is_ok()
        );
        let later = audit_log::verify(db, "identity", Some((4, head.1)), |_| {})
            .await
            .unwrap();
        assert!(
            matches!(
                later,
                Err(Broken::Truncated {
                    expected: 4,
                    found: 3,
                    ..
                })
            ),
            "{later:?}"
        );
        // More records continue the chain; the writer's batches keep the order across calls.
        chain(db, "identity", 2).await;
        assert_eq!(verify(db, "identity").await.unwrap().rows, 5);
        let services = audit_log::services(db).await.unwrap();
        assert_eq!(services, ["identity", "payments"]);
    }
}

#[tokio::test]
async fn update_and_delete_are_refused_by_the_database() {
    for t in databases().await {
        let db = &t.db;
        chain(db, "identity", 2).await;
        for sql in [
            "UPDATE audit_log SET actor = 'someone else' WHERE seq = 1",
            "DELETE FROM audit_log WHERE seq = 2",
        ] {
            let err = db.execute_unprepared(sql).await.unwrap_err().to_string();
            assert!(err.contains("append-only"), "{}: {sql}: {err}", t.backend);
        }
        if db.get_database_backend() == DbBackend::Postgres {
            let err = db
                .execute_unprepared("TRUNCATE audit_log")
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("append-only"), "{err}");
        }
        assert_eq!(verify(db, "identity").await.unwrap().rows, 2);
    }
}

#[tokio::test]
async fn verify_names_a_row_edited_deleted_or_reordered() {
    for t in databases().await {
        let db = &t.db;
        for service in ["edited", "deleted", "reordered"] {
            chain(db, service, 5).await;
            assert!(verify(db, service).await.is_ok());
        }
        tamper(
            db,
            &[
                "UPDATE audit_log SET actor = 'acct:someone-else' WHERE service = 'edited' AND seq = 3",
                "DELETE FROM audit_log WHERE service = 'deleted' AND seq = 2",
                "UPDATE audit_log SET seq = 100 WHERE service = 'reordered' AND seq = 2",
                "UPDATE audit_log SET seq = 2 WHERE service = 'reordered' AND seq = 3",
                "UPDATE audit_log SET seq = 3 WHERE service = 'reordered' AND seq = 100",
            ],
        )
        .await;
        let edited = verify(db, "edited").await.unwrap_err();
        assert_eq!(
            edited,
            Broken::Edited {
                service: "edited".into(),
                seq: 3
            },
            "{}",
            t.backend
        );
        assert!(edited.to_string().contains("seq 3 was edited"), "{edited}");
        let deleted = verify(db, "deleted").await.unwrap_err();
        assert_eq!(
            deleted,
            Broken::Missing {
                service: "deleted".into(),
                expected: 2,
                found: 3
            }
        );
        let reordered = verify(db, "reordered").await.unwrap_err();
        assert_eq!(
            reordered,
            Broken::Unlinked {
                service: "reordered".into(),
                seq: 2,
                previous: 1
            }
        );
    }
}

#[tokio::test]
async fn the_logged_head_is_signed_by_the_part_and_verifies_against_its_public_key() {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use tracing_subscriber::layer::SubscriberExt;

    let t = testing::sqlite().await;
    Migrator::up(&t.db, None).await.unwrap();
    chain(&t.db, "identity", 2).await;
    let dir = std::env::temp_dir().join(format!("thali-audit-head-{}", uuid::Uuid::now_v7()));
    thali_platform::auth::ensure_key_pair(&dir).unwrap();
    let signer = thali_platform::auth::Signer::load(&dir).unwrap();

    let out = testing::CapturedWriter::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(move || writer.clone()),
    );
    {
        let _guard = tracing::subscriber::set_default(subscriber);
        audit_log::log_signed_head(&t.db, "identity", &signer).await.unwrap();
    }
    let line: serde_json::Value = serde_json::from_str(out.text().lines().last().unwrap()).unwrap();
    let f = &line["fields"];
    assert_eq!(line["target"], "thali::audit");
    assert_eq!(f["message"], "audit chain head");
    let (seq, hash) = audit_log::head(&t.db, "identity").await.unwrap().unwrap();
    assert_eq!(f["seq"], seq);
    assert_eq!(f["hash"], hash.as_str());
    let message = format!(
        "thali.audit_log.head\nidentity\n{seq}\n{hash}\n{}",
        f["signed_at"].as_str().unwrap()
    );
    let (kid, public) = signer.public_keys().into_iter().next().unwrap();
    assert_eq!(f["kid"], kid.as_str());
    let key =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, URL_SAFE_NO_PAD.decode(public).unwrap());
    let signature = URL_SAFE_NO_PAD.decode(f["signature"].as_str().unwrap()).unwrap();
    key.verify(message.as_bytes(), &signature)
        .expect("the head's signature verifies");
    // Another head does not verify with that signature.
    let forged = message.replace(&format!("\n{seq}\n"), &format!("\n{}\n", seq + 1));
    assert!(key.verify(forged.as_bytes(), &signature).is_err());
}
