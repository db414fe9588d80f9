//! `thali jobs list | retry | purge` against an embedded (SQLite) data directory, as an operator
//! runs them.
mod support;

use std::sync::Arc;

use support::thali;

use thali_platform::jobs::{JobError, ManualClock, NewJob, Queue, RetrySchedule, Worker};

#[tokio::test]
async fn an_operator_lists_retries_and_purges_dead_jobs() {
    let dir = std::env::temp_dir().join(format!("thali-cli-{}", uuid_like()));
    let (ok, _, err) = thali(&dir, &["migrate"]);
    assert!(ok, "migrate: {err}");

    // A job that fails for good, on the identity queue, 40 days ago.
    let url = format!("sqlite://{}?mode=rwc", dir.join("thali.db").display());
    let db = thali_platform::db::connect(&url).await.unwrap();
    let clock = ManualClock::new(chrono::Utc::now() - chrono::TimeDelta::days(40));
    let queue = Queue::with_clock("identity", Arc::new(clock));
    let id = queue
        .enqueue(&db, NewJob::new("test.fatal", &"x"))
        .await
        .unwrap()
        .unwrap();
    queue.enqueue(&db, NewJob::new("test.other", &"y")).await.unwrap();
    let worker = Worker::new(db.clone(), queue).handle("test.fatal", RetrySchedule::default(), |_| async {
        Err(JobError::Fatal("the target is gone".into()))
    });
    assert_eq!(worker.run_once().await.unwrap(), 1);

    let (ok, out, err) = thali(&dir, &["jobs", "list", "--dead"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("test.fatal") && out.contains("the target is gone"),
        "{out}"
    );
    assert!(!out.contains("test.other"), "only dead jobs: {out}");
    let (ok, out, _) = thali(&dir, &["jobs", "list", "--service", "storefront"]);
    assert!(ok && !out.contains("test."), "another service's jobs: {out}");

    let (ok, out, err) = thali(&dir, &["jobs", "retry", &id.to_string()]);
    assert!(ok, "{err}");
    assert!(out.contains("queued again"), "{out}");
    let (ok, _, err) = thali(&dir, &["jobs", "retry", &id.to_string()]);
    assert!(
        !ok && err.contains("not a dead job"),
        "a queued job is not retried: {err}"
    );
    let (ok, out, _) = thali(&dir, &["jobs", "list", "--state", "queued", "--kind", "test.fatal"]);
    assert!(ok && out.contains("test.fatal"), "{out}");

    // Dead again; purge keeps what died recently and removes what died 40 days ago.
    assert_eq!(
        worker.run_once().await.unwrap(),
        0,
        "the retried job is due now, not 40 days ago"
    );
    let worker =
        Worker::new(db.clone(), Queue::new("identity")).handle("test.fatal", RetrySchedule::default(), |_| async {
            Err(JobError::Fatal("still gone".into()))
        });
    assert_eq!(worker.run_once().await.unwrap(), 1);
    let (ok, out, _) = thali(&dir, &["jobs", "purge", "--dead", "--older-than", "30d"]);
    assert!(ok && out.starts_with("0 dead job(s) purged"), "{out}");
    let (ok, _, err) = thali(&dir, &["jobs", "purge", "--dead", "--older-than", "thirty"]);
    assert!(!ok && err.contains("not an age"), "{err}");
    let (ok, out, _) = thali(&dir, &["jobs", "purge", "--dead", "--older-than", "0s"]);
    assert!(ok && out.starts_with("1 dead job(s) purged"), "{out}");
    let (ok, _, err) = thali(&dir, &["jobs", "retry", "--all-dead"]);
    assert!(!ok && err.contains("--kind"), "--all-dead needs a kind: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
