//! `thali dlq list | redrive` against an embedded (SQLite) data directory, as an operator runs
//! them after a webhook died in the dead-letter queue.
mod support;

use support::thali;

#[tokio::test]
async fn an_operator_lists_dead_webhooks_and_redrives_one() {
    let dir = std::env::temp_dir().join(format!("thali-dlq-cli-{}", uuid::Uuid::now_v7()));
    let (ok, _, err) = thali(&dir, &["migrate"]);
    assert!(ok, "migrate: {err}");
    let url = format!("sqlite://{}?mode=rwc", dir.join("thali.db").display());
    let db = thali_platform::db::connect(&url).await.unwrap();
    let store = thali_payments::store::PaymentsStore::new(db.clone());
    let body = br#"{"entity":"event","event":"payment.captured","payload":{"payment":{"entity":{"id":"pay_1","order_id":"order_1","amount":100}}}}"#;
    store
        .dead_letter("platform", "evt_cli", body, "database timeout")
        .await
        .unwrap();
    {
        use sea_orm::ConnectionTrait;
        db.execute_unprepared("UPDATE webhook_dlq SET status = 'dead', retry_count = 5")
            .await
            .unwrap();
    }

    let (ok, out, err) = thali(&dir, &["dlq", "list", "--dead"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("evt_cli") && out.contains("payment.captured") && out.contains("database timeout"),
        "{out}"
    );
    let id = out
        .lines()
        .find(|l| l.contains("evt_cli"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();

    let (ok, out, err) = thali(&dir, &["dlq", "redrive", &id]);
    assert!(ok, "{err}");
    assert!(out.contains("due now"), "{out}");
    let (ok, out, _) = thali(&dir, &["dlq", "list", "--dead"]);
    assert!(ok && !out.contains("evt_cli"), "redriven: no longer dead: {out}");
    let (ok, out, _) = thali(&dir, &["dlq", "list"]);
    assert!(ok && out.contains("pending"), "{out}");

    let (ok, _, err) = thali(&dir, &["dlq", "redrive", "01900000-0000-7000-8000-000000000000"]);
    assert!(!ok && err.contains("no dead-letter row"), "{err}");
    let (ok, _, err) = thali(&dir, &["dlq", "redrive", "nope"]);
    assert!(!ok && err.contains("UUID"), "{err}");
}
