//! How fast the durable job queue runs on PostgreSQL (THALI_TEST_DATABASE_URL, a server where
//! this may create a database): no-op jobs claimed and completed per second by 4 workers, and
//! the latency from an enqueue's commit to its handler starting (NOTIFY wake-up, workers idle).
//!
//! `cargo run --release -p thali-tests --example jobs_bench -- [jobs] [latency samples]`
//! Prints a Markdown report (docs/perf/jobs.md keeps one).
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::jobs::{NewJob, Queue, RetrySchedule, Worker, WorkerOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20_000);
    let samples: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(300);
    let t = thali_platform::testing::postgres()
        .await
        .ok_or_else(|| anyhow::anyhow!("set THALI_TEST_DATABASE_URL"))?;
    Migrator::up(&t.db, None).await?;
    let db = t.db.clone();

    // Throughput: a backlog of no-op jobs, then 4 workers drain it.
    let queue = Queue::new("bench");
    let started = Instant::now();
    for chunk in 0..jobs.div_ceil(1000) {
        let txn = db.begin().await?;
        for i in 0..1000.min(jobs - chunk * 1000) {
            queue.enqueue(&txn, NewJob::new("noop", &i)).await?;
        }
        txn.commit().await?;
    }
    let enqueue_took = started.elapsed();
    eprintln!("enqueued {jobs} jobs in {enqueue_took:?}");
    let options = WorkerOptions {
        concurrency: 32,
        poll_interval: Duration::from_millis(100),
        ..WorkerOptions::default()
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            Worker::new(db.clone(), queue.clone())
                .with_options(options.clone())
                .handle("noop", RetrySchedule::default(), |_| async { Ok(()) })
                .spawn(stopped.clone())
        })
        .collect();
    loop {
        let done = count_done(&db, "bench").await?;
        eprint!("\rdone {done}/{jobs}");
        if done >= jobs as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_took = started.elapsed();
    eprintln!();
    let _ = stop.send(true);
    for w in workers {
        w.await?;
    }

    // Latency: one job at a time, committed while the workers wait on LISTEN.
    let latency_queue = Queue::new("latency");
    let seen: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let base = Instant::now();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let seen = seen.clone();
            Worker::new(db.clone(), latency_queue.clone())
                .with_options(WorkerOptions {
                    poll_interval: Duration::from_secs(5),
                    ..options.clone()
                })
                .handle("stamp", RetrySchedule::default(), move |job| {
                    let seen = seen.clone();
                    async move {
                        let committed_us: u64 = job.payload()?;
                        let now_us = base.elapsed().as_micros() as u64;
                        seen.lock()
                            .unwrap()
                            .push(Duration::from_micros(now_us.saturating_sub(committed_us)));
                        Ok(())
                    }
                })
                .spawn(stopped.clone())
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..samples {
        let txn = db.begin().await?;
        // The stamp is taken just before the commit: what is measured is commit + wake + claim.
        let stamp = base.elapsed().as_micros() as u64;
        latency_queue.enqueue(&txn, NewJob::new("stamp", &stamp)).await?;
        txn.commit().await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        eprint!("\rlatency sample {}/{samples}", i + 1);
    }
    while seen.lock().unwrap().len() < samples {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!();
    let _ = stop.send(true);
    for w in workers {
        w.await?;
    }
    let mut lat = seen.lock().unwrap().clone();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("| measure | value |");
    println!("|---|---|");
    println!("| machine | {cores} cores; PostgreSQL on the same host |");
    println!(
        "| enqueue, 1,000 per transaction | {:.0} jobs/s |",
        jobs as f64 / enqueue_took.as_secs_f64()
    );
    println!(
        "| no-op jobs claimed and completed, 4 workers × 32 | {:.0} jobs/s ({jobs} in {:.2} s) |",
        jobs as f64 / drain_took.as_secs_f64(),
        drain_took.as_secs_f64()
    );
    println!(
        "| commit → handler start (NOTIFY), {samples} samples | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    let _ = db.close().await;
    Ok(())
}

async fn count_done(db: &sea_orm::DatabaseConnection, service: &str) -> anyhow::Result<i64> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM jobs WHERE service = $1 AND state = 'done'",
            [service.into()],
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no count"))?;
    Ok(row.try_get("", "n")?)
}
