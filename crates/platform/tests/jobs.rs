//! The durable job queue on SQLite and on PostgreSQL (THALI_TEST_DATABASE_URL; required under
//! CI=true). Time moves by setting the injected clock; tokio time is never paused while a query
//! is in flight.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, TimeZone, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::{
    jobs::{
        Job, JobError, JobState, ManualClock, NewJob, Queue, RetrySchedule, Worker, WorkerOptions,
        admin::{self, Filter},
    },
    testing::{self, TestDatabase},
};

async fn databases() -> Vec<TestDatabase> {
    let mut dbs = testing::all().await;
    for t in &mut dbs {
        Migrator::up(&t.db, None).await.expect("migrations apply");
    }
    dbs
}

async fn postgres() -> Option<TestDatabase> {
    let t = testing::postgres().await?;
    Migrator::up(&t.db, None).await.expect("migrations apply");
    Some(t)
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 1).unwrap()
}

fn queue(clock: &ManualClock) -> Queue {
    Queue::with_clock("svc", Arc::new(clock.clone()))
}

fn fast() -> WorkerOptions {
    WorkerOptions {
        concurrency: 8,
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_millis(50),
        stats_interval: Duration::from_secs(1),
        drain: Duration::from_secs(5),
    }
}

/// Counts runs per payload.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<u32, u32>>>);

impl Runs {
    fn record(&self, job: &Job) -> u32 {
        let n: u32 = job.payload().expect("a number");
        *self.0.lock().unwrap().entry(n).or_default() += 1;
        n
    }
    fn total(&self) -> u32 {
        self.0.lock().unwrap().values().sum()
    }
    fn of(&self, n: u32) -> u32 {
        self.0.lock().unwrap().get(&n).copied().unwrap_or(0)
    }
}

fn counting_worker(db: &DatabaseConnection, q: &Queue, runs: &Runs) -> Worker {
    let runs = runs.clone();
    Worker::new(db.clone(), q.clone())
        .with_options(fast())
        .handle("count", RetrySchedule::default(), move |job| {
            let runs = runs.clone();
            async move {
                runs.record(&job);
                Ok(())
            }
        })
}

async fn job(db: &DatabaseConnection, id: i64) -> admin::JobRow {
    admin::list(db, &Filter::default(), 10_000)
        .await
        .expect("jobs list")
        .into_iter()
        .find(|j| j.id == id)
        .expect("the job exists")
}

#[tokio::test]
async fn a_job_enqueued_in_a_rolled_back_transaction_never_runs() {
    for t in databases().await {
        let clock = ManualClock::new(t0());
        let q = queue(&clock);
        let runs = Runs::default();
        let txn = t.db.begin().await.unwrap();
        q.enqueue(&txn, NewJob::new("count", &1u32))
            .await
            .unwrap()
            .expect("an id");
        txn.rollback().await.unwrap();
        let txn = t.db.begin().await.unwrap();
        q.enqueue(&txn, NewJob::new("count", &2u32))
            .await
            .unwrap()
            .expect("an id");
        txn.commit().await.unwrap();

        let worker = counting_worker(&t.db, &q, &runs);
        assert_eq!(worker.run_once().await.unwrap(), 1, "{}", t.backend);
        assert_eq!(worker.run_once().await.unwrap(), 0, "{}", t.backend);
        assert_eq!((runs.of(1), runs.of(2)), (0, 1), "{}", t.backend);
    }
}

#[tokio::test]
async fn a_job_runs_only_when_due_and_only_for_its_own_service() {
    for t in databases().await {
        let clock = ManualClock::new(t0());
        let q = queue(&clock);
        let other = Queue::with_clock("other", Arc::new(clock.clone()));
        let runs = Runs::default();
        q.enqueue(
            &t.db,
            NewJob::new("count", &1u32).run_at(t0() + chrono::TimeDelta::seconds(60)),
        )
        .await
        .unwrap();
        other.enqueue(&t.db, NewJob::new("count", &2u32)).await.unwrap();
        let worker = counting_worker(&t.db, &q, &runs);
        assert_eq!(worker.run_once().await.unwrap(), 0, "not due yet ({})", t.backend);
        clock.advance(Duration::from_secs(60));
        assert_eq!(worker.run_once().await.unwrap(), 1, "{}", t.backend);
        assert_eq!((runs.of(1), runs.of(2)), (1, 0), "another service's job is not ours");
        let others = admin::list(
            &t.db,
            &Filter {
                service: Some("other".into()),
                ..Filter::default()
            },
            10,
        )
        .await
        .unwrap();
        assert_eq!(others.len(), 1);
        assert_eq!(others[0].state, "queued");
    }
}

#[tokio::test]
async fn a_unique_key_makes_a_second_enqueue_a_no_op() {
    for t in databases().await {
        let q = queue(&ManualClock::new(t0()));
        let first = q.enqueue(&t.db, NewJob::new("count", &1u32).unique("k")).await.unwrap();
        let second = q.enqueue(&t.db, NewJob::new("count", &1u32).unique("k")).await.unwrap();
        assert!(first.is_some(), "{}", t.backend);
        assert_eq!(second, None, "{}", t.backend);
    }
}

#[tokio::test]
async fn two_workers_run_each_of_500_jobs_exactly_once() {
    let Some(t) = postgres().await else { return };
    let q = Queue::new("svc");
    let runs = Runs::default();
    let txn = t.db.begin().await.unwrap();
    for n in 0..500u32 {
        q.enqueue(&txn, NewJob::new("count", &n)).await.unwrap();
    }
    txn.commit().await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let a = counting_worker(&t.db, &q, &runs).spawn(stopped.clone());
    let b = counting_worker(&t.db, &q, &runs).spawn(stopped);
    for _ in 0..600 {
        if runs.total() >= 500 && done_count(&t.db).await == 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    a.await.unwrap();
    b.await.unwrap();
    assert_eq!(done_count(&t.db).await, 500);
    assert!((0..500).all(|n| runs.of(n) == 1), "every job ran exactly once");
}

async fn done_count(db: &DatabaseConnection) -> usize {
    admin::list(
        db,
        &Filter {
            state: Some(JobState::Done),
            ..Filter::default()
        },
        10_000,
    )
    .await
    .unwrap()
    .len()
}

#[tokio::test]
async fn a_job_whose_worker_died_runs_again_after_its_lease() {
    for t in databases().await {
        let clock = ManualClock::new(t0());
        let q = queue(&clock);
        let id = q.enqueue(&t.db, NewJob::new("work", &1u32)).await.unwrap().unwrap();
        let started = Arc::new(AtomicUsize::new(0));
        let options = WorkerOptions {
            lease: Duration::from_secs(5),
            ..fast()
        };
        // The first worker hangs in its handler and is then killed.
        let s = started.clone();
        let dying = Worker::new(t.db.clone(), q.clone())
            .with_options(options.clone())
            .handle("work", RetrySchedule::default(), move |_| {
                s.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<Result<(), JobError>>()
            });
        let run = tokio::spawn(async move { dying.run_once().await });
        while started.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        run.abort();
        let _ = run.await;
        assert_eq!(job(&t.db, id).await.state, "running");

        let finished = Arc::new(AtomicUsize::new(0));
        let f = finished.clone();
        let survivor = Worker::new(t.db.clone(), q.clone()).with_options(options).handle(
            "work",
            RetrySchedule::default(),
            move |job| {
                let f = f.clone();
                async move {
                    assert_eq!(job.attempt, 2, "the second attempt");
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
        );
        assert_eq!(
            survivor.run_once().await.unwrap(),
            0,
            "the lease still holds ({})",
            t.backend
        );
        clock.advance(Duration::from_secs(6));
        assert_eq!(survivor.run_once().await.unwrap(), 1, "{}", t.backend);
        assert_eq!(finished.load(Ordering::SeqCst), 1);
        assert_eq!(job(&t.db, id).await.state, "done");
    }
}

#[tokio::test]
async fn a_running_handler_keeps_its_lease() {
    for t in databases().await {
        let clock = ManualClock::new(t0());
        let q = queue(&clock);
        let id = q.enqueue(&t.db, NewJob::new("work", &1u32)).await.unwrap().unwrap();
        let options = WorkerOptions {
            lease: Duration::from_millis(300),
            ..fast()
        };
        let runs = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let worker = |runs: Arc<AtomicUsize>, release: Arc<tokio::sync::Notify>| {
            Worker::new(t.db.clone(), q.clone())
                .with_options(options.clone())
                .handle("work", RetrySchedule::default(), move |_| {
                    let (runs, release) = (runs.clone(), release.clone());
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        Ok(())
                    }
                })
        };
        let holder = worker(runs.clone(), release.clone());
        let run = tokio::spawn(async move { holder.run_once().await });
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Far past the first lease; the holder renews from the clock's new time.
        clock.advance(Duration::from_secs(60));
        let renewed_until = clock_now_plus(&clock, Duration::from_millis(300));
        for _ in 0..100 {
            if job(&t.db, id).await.locked_until.is_some_and(|u| u >= renewed_until) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let other = worker(runs.clone(), release.clone());
        assert_eq!(other.run_once().await.unwrap(), 0, "{}", t.backend);
        release.notify_one();
        assert_eq!(run.await.unwrap().unwrap(), 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(job(&t.db, id).await.state, "done");
    }
}

fn clock_now_plus(clock: &ManualClock, d: Duration) -> DateTime<Utc> {
    use thali_platform::jobs::Clock;
    clock.now() + chrono::TimeDelta::from_std(d).unwrap()
}

#[tokio::test]
async fn retries_follow_the_schedule_then_the_job_is_dead() {
    for t in databases().await {
        let clock = ManualClock::new(t0());
        let q = queue(&clock);
        let id = q.enqueue(&t.db, NewJob::new("flaky", &1u32)).await.unwrap().unwrap();
        let attempts = Arc::new(AtomicUsize::new(0));
        let a = attempts.clone();
        let schedule = RetrySchedule::fixed(&[Duration::from_secs(10), Duration::from_secs(60)]);
        let worker = Worker::new(t.db.clone(), q.clone())
            .with_options(fast())
            .handle("flaky", schedule, move |_| {
                a.fetch_add(1, Ordering::SeqCst);
                async { Err(JobError::retry("upstream said 500")) }
            });

        assert_eq!(worker.run_once().await.unwrap(), 1);
        let row = job(&t.db, id).await;
        assert_eq!((row.state.as_str(), row.attempts), ("queued", 1));
        assert_eq!(row.last_error.as_deref(), Some("upstream said 500"));
        let wait = (row.run_at - t0()).to_std().unwrap();
        assert!(
            wait >= Duration::from_secs(8) && wait <= Duration::from_secs(12),
            "10 s ± 20 %: {wait:?}"
        );
        clock.advance(Duration::from_millis(7_900));
        assert_eq!(worker.run_once().await.unwrap(), 0, "too early ({})", t.backend);
        clock.advance(Duration::from_millis(4_200));
        assert_eq!(worker.run_once().await.unwrap(), 1, "{}", t.backend);

        let row = job(&t.db, id).await;
        let since_second = (row.run_at - (t0() + chrono::TimeDelta::milliseconds(12_100)))
            .to_std()
            .unwrap();
        assert!(
            since_second >= Duration::from_secs(48) && since_second <= Duration::from_secs(72),
            "60 s ± 20 %: {since_second:?}"
        );
        clock.advance(Duration::from_secs(47));
        assert_eq!(worker.run_once().await.unwrap(), 0, "too early ({})", t.backend);
        clock.advance(Duration::from_secs(26));
        assert_eq!(worker.run_once().await.unwrap(), 1, "{}", t.backend);

        let row = job(&t.db, id).await;
        assert_eq!((row.state.as_str(), row.attempts), ("dead", 3), "{}", t.backend);
        assert!(row.finished_at.is_some());
        clock.advance(Duration::from_secs(86_400));
        assert_eq!(worker.run_once().await.unwrap(), 0, "a dead job stays dead");
        assert_eq!(attempts.load(Ordering::SeqCst), 3);

        // An operator sends it back: it gets a fresh set of attempts.
        assert!(
            admin::retry(&t.db, id, Some("svc"), clock_now_plus(&clock, Duration::ZERO))
                .await
                .unwrap()
        );
        assert!(
            !admin::retry(&t.db, id, Some("svc"), clock_now_plus(&clock, Duration::ZERO))
                .await
                .unwrap(),
            "no longer dead"
        );
        assert_eq!(worker.run_once().await.unwrap(), 1);
        assert_eq!(job(&t.db, id).await.attempts, 1);
    }
}

#[tokio::test]
async fn retry_after_is_honoured_and_a_fatal_error_is_dead_at_once() {
    for t in databases().await {
        let clock = ManualClock::new(t0());
        let q = queue(&clock);
        let later = q.enqueue(&t.db, NewJob::new("busy", &1u32)).await.unwrap().unwrap();
        let gone = q.enqueue(&t.db, NewJob::new("gone", &1u32)).await.unwrap().unwrap();
        let worker = Worker::new(t.db.clone(), q.clone())
            .with_options(fast())
            .handle("busy", RetrySchedule::default(), |_| async {
                Err(JobError::Retry {
                    error: "429".into(),
                    after: Some(Duration::from_secs(120)),
                })
            })
            .handle("gone", RetrySchedule::default(), |_| async {
                Err(JobError::Fatal("410 Gone".into()))
            });
        assert_eq!(worker.run_once().await.unwrap(), 2);
        let row = job(&t.db, later).await;
        assert_eq!(row.state, "queued");
        assert_eq!(row.run_at, t0() + chrono::TimeDelta::seconds(120), "{}", t.backend);
        let row = job(&t.db, gone).await;
        assert_eq!((row.state.as_str(), row.attempts), ("dead", 1));
        assert_eq!(row.last_error.as_deref(), Some("410 Gone"));
    }
}

#[tokio::test]
async fn a_periodic_job_runs_once_per_period_with_three_workers() {
    for t in databases().await {
        let clock = ManualClock::new(t0());
        let q = queue(&clock);
        let runs = Arc::new(AtomicUsize::new(0));
        let workers: Vec<Worker> = (0..3)
            .map(|_| {
                let runs = runs.clone();
                Worker::new(t.db.clone(), q.clone())
                    .with_options(fast())
                    .handle("tick", RetrySchedule::default(), move |_| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        async { Ok(()) }
                    })
                    .every("tick", Duration::from_secs(60))
            })
            .collect();
        let round = || async {
            futures::future::join_all(workers.iter().map(|w| w.run_once())).await;
            runs.load(Ordering::SeqCst)
        };
        assert_eq!(round().await, 1, "{}", t.backend);
        assert_eq!(round().await, 1, "the same period ({})", t.backend);
        clock.advance(Duration::from_secs(30));
        assert_eq!(round().await, 1, "still the same period ({})", t.backend);
        clock.advance(Duration::from_secs(30));
        assert_eq!(round().await, 2, "the next period ({})", t.backend);
        clock.advance(Duration::from_secs(60));
        assert_eq!(round().await, 3, "{}", t.backend);
    }
}

#[tokio::test]
async fn jobs_with_one_ordering_key_run_in_order_and_a_dead_one_lets_the_rest_go() {
    for t in databases().await {
        let clock = ManualClock::new(t0());
        let q = queue(&clock);
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = order.clone();
        let worker = Worker::new(t.db.clone(), q.clone()).with_options(fast()).handle(
            "event",
            RetrySchedule::fixed(&[Duration::from_secs(10)]),
            move |job| {
                let o = o.clone();
                async move {
                    let n: u32 = job.payload()?;
                    o.lock().unwrap().push(n);
                    if n == 1 {
                        return Err(JobError::retry("subscriber down"));
                    }
                    Ok(())
                }
            },
        );
        for n in 1..=3u32 {
            q.enqueue(&t.db, NewJob::new("event", &n).ordered_by("creator-a"))
                .await
                .unwrap();
        }
        q.enqueue(&t.db, NewJob::new("event", &10u32).ordered_by("creator-b"))
            .await
            .unwrap();

        assert_eq!(
            worker.run_once().await.unwrap(),
            2,
            "the head of each key ({})",
            t.backend
        );
        assert_eq!(
            worker.run_once().await.unwrap(),
            0,
            "1 holds back 2 and 3 while it retries"
        );
        clock.advance(Duration::from_secs(13));
        assert_eq!(worker.run_once().await.unwrap(), 1, "1 again, then dead");
        assert_eq!(worker.run_once().await.unwrap(), 1);
        assert_eq!(worker.run_once().await.unwrap(), 1);
        let order = order.lock().unwrap().clone();
        let a: Vec<u32> = order.iter().copied().filter(|n| *n < 10).collect();
        assert_eq!(a, vec![1, 1, 2, 3], "{}", t.backend);
    }
}

#[tokio::test]
async fn a_postgres_worker_wakes_on_notify_instead_of_waiting_for_its_poll() {
    let Some(t) = postgres().await else { return };
    let q = Queue::new("svc");
    let runs = Runs::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = counting_worker(&t.db, &q, &runs)
        .with_options(WorkerOptions {
            poll_interval: Duration::from_secs(3600),
            ..fast()
        })
        .spawn(stopped);
    // The first claim (at start) and the listener's own wake-up find nothing; then it sleeps.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let txn = t.db.begin().await.unwrap();
    q.enqueue(&txn, NewJob::new("count", &7u32)).await.unwrap();
    txn.commit().await.unwrap();
    for _ in 0..200 {
        if runs.of(7) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(runs.of(7), 1, "woken by NOTIFY, an hour before its next poll");
    stop.send(true).unwrap();
    worker.await.unwrap();
}

#[tokio::test]
async fn only_a_committed_new_job_due_now_notifies_the_workers() {
    use sea_orm::sqlx::postgres::PgListener;
    let Some(t) = postgres().await else { return };
    let q = Queue::new("notified");
    let mut listener = PgListener::connect_with(t.db.get_postgres_connection_pool())
        .await
        .unwrap();
    listener.listen(thali_platform::jobs::NOTIFY_CHANNEL).await.unwrap();
    async fn next(listener: &mut PgListener) -> Option<String> {
        tokio::time::timeout(Duration::from_millis(300), listener.try_recv())
            .await
            .ok()
            .map(|n| n.unwrap().unwrap().payload().to_owned())
    }

    // Due now, committed: the workers hear of it.
    let txn = t.db.begin().await.unwrap();
    q.enqueue(&txn, NewJob::new("count", &1u32).unique("once"))
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(next(&mut listener).await.as_deref(), Some("notified"));
    // A duplicate of a unique job inserts nothing and notifies no one.
    assert_eq!(
        q.enqueue(&t.db, NewJob::new("count", &1u32).unique("once"))
            .await
            .unwrap(),
        None
    );
    // Rolled back: no notification.
    let txn = t.db.begin().await.unwrap();
    q.enqueue(&txn, NewJob::new("count", &2u32)).await.unwrap();
    txn.rollback().await.unwrap();
    // Due tomorrow: stored, but waking a worker now would find nothing to claim.
    q.enqueue(
        &t.db,
        NewJob::new("count", &3u32).run_at(chrono::Utc::now() + chrono::TimeDelta::days(1)),
    )
    .await
    .unwrap()
    .expect("stored");
    assert_eq!(next(&mut listener).await, None);
}

#[tokio::test]
async fn purge_removes_only_old_finished_jobs() {
    for t in databases().await {
        let clock = ManualClock::new(t0());
        let q = queue(&clock);
        let runs = Runs::default();
        q.enqueue(&t.db, NewJob::new("count", &1u32)).await.unwrap();
        let queued = q
            .enqueue(
                &t.db,
                NewJob::new("count", &2u32).run_at(t0() + chrono::TimeDelta::days(30)),
            )
            .await
            .unwrap()
            .unwrap();
        counting_worker(&t.db, &q, &runs).run_once().await.unwrap();
        let filter = Filter::default();
        let before = t0() + chrono::TimeDelta::days(7);
        assert_eq!(admin::purge(&t.db, JobState::Dead, &filter, before).await.unwrap(), 0);
        assert_eq!(
            admin::purge(&t.db, JobState::Done, &filter, t0()).await.unwrap(),
            0,
            "not old enough"
        );
        assert_eq!(admin::purge(&t.db, JobState::Done, &filter, before).await.unwrap(), 1);
        let left = admin::list(&t.db, &filter, 10).await.unwrap();
        assert_eq!(
            left.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![queued],
            "{}",
            t.backend
        );
        t.db.execute_unprepared("SELECT 1").await.unwrap();
    }
}
