//! Does a flood of failed logins slow identity's writes? (issue 13 part 2, ADR 0031) On
//! PostgreSQL (THALI_TEST_DATABASE_URL, a server where this may create a database), through
//! identity's own store, so the database side of the audit trail is what is measured: the
//! argon2id hash a real login pays, and its throttle, are left out on purpose (they only make a
//! flood smaller).
//!
//! Writers and flooders share identity's one pool (20 connections), and together stay within
//! it (8 + 8 by default), so what is measured is the database, not waiting for a connection.
//!
//! `writers` tasks register accounts one after another (account row, outbox event and audit
//! record in one transaction) for `seconds` per phase; each write's latency is kept.
//!
//! 1. quiet: the writers alone, identity's audit writer chaining every 250 ms as in `thali serve`;
//! 2. flood of 200/s: the same, while `flooders` tasks record 200 failed logins a second
//!    between them (each its own transaction, as identity does), chained by the one writer in
//!    batches: the design Thali uses, at more than the rate argon2id lets a real flood reach;
//! 3. flood flat out: the same, the failed logins as fast as the database takes them;
//! 4. flood flat out, chained in the request: every action (the writers' and the flood's) appends its
//!    record to the chain itself before it answers, under the chain lock: the design not taken,
//!    for comparison.
//!
//! `cargo run --release -p thali-tests --example audit_flood_bench -- [seconds] [writers] [flooders]`
//! Prints a Markdown report (docs/perf/audit.md keeps one).
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, DatabaseConnection};
use thali_identity::{
    domain::{AccountStatus, NewAccount, Role},
    store::IdentityStore,
};
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::audit_log;

const SERVICE: &str = "identity";

/// Failed logins per second in the paced phase: more than argon2id can verify on this machine
/// (about 20 a second on 2 cores), so more than a real flood reaching identity's database.
const PACED_RATE: u64 = 200;

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Quiet,
    FloodPaced,
    Flood,
    FloodChainedInRequest,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Quiet => "quiet (writers only)",
            Phase::FloodPaced => "flood of 200/s, chained by the one writer (Thali)",
            Phase::Flood => "flood flat out, chained by the one writer (Thali)",
            Phase::FloodChainedInRequest => "flood flat out, chained in each request (not taken)",
        }
    }
}

struct Outcome {
    writes: Vec<Duration>,
    failed_logins: u64,
    backlog_at_end: i64,
    drained_in: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let writers: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8);
    let flooders: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let t = thali_platform::testing::postgres()
        .await
        .ok_or_else(|| anyhow::anyhow!("set THALI_TEST_DATABASE_URL"))?;
    Migrator::up(&t.db, None).await?;
    let db = t.db.clone();
    let keys = std::env::temp_dir().join(format!("thali-audit-bench-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&keys)?;
    thali_platform::auth::ensure_key_pair(&keys)?;
    let signer = Arc::new(thali_platform::Signer::load(&keys)?);

    let mut report = Vec::new();
    for phase in [
        Phase::Quiet,
        Phase::FloodPaced,
        Phase::Flood,
        Phase::FloodChainedInRequest,
    ] {
        eprintln!("{} for {seconds} s …", phase.name());
        let outcome = run(&db, signer.clone(), phase, seconds, writers, flooders).await?;
        report.push((phase, outcome));
    }
    let verified = audit_log::verify(&db, SERVICE, None, |_| {}).await?;
    let rows = audit_log::count(&db, SERVICE).await?;
    let _ = std::fs::remove_dir_all(&keys);

    println!("| phase | writes/s | write p50 | p95 | p99 | max | failed logins/s | backlog at end | chained in |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (phase, o) in &report {
        let mut w = o.writes.clone();
        w.sort();
        let q = |p: f64| ms(w[((w.len() as f64 - 1.0) * p) as usize]);
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {:.0} | {} | {} |",
            phase.name(),
            w.len() as f64 / seconds as f64,
            q(0.50),
            q(0.95),
            q(0.99),
            ms(*w.last().unwrap()),
            o.failed_logins as f64 / seconds as f64,
            o.backlog_at_end,
            ms(o.drained_in),
        );
    }
    println!();
    println!(
        "{writers} writers, {flooders} flooders, {seconds} s per phase; the chain holds {rows} rows and {}.",
        match verified {
            Ok(v) => format!("verifies ({} rows walked)", v.rows),
            Err(broken) => format!("DOES NOT VERIFY: {broken}"),
        }
    );
    Ok(())
}

async fn run(
    db: &DatabaseConnection,
    signer: Arc<thali_platform::Signer>,
    phase: Phase,
    seconds: u64,
    writers: usize,
    flooders: usize,
) -> anyhow::Result<Outcome> {
    let (stop_chain, chain_stopped) = tokio::sync::watch::channel(false);
    let chain = (phase != Phase::FloodChainedInRequest)
        .then(|| audit_log::spawn_writer(db.clone(), SERVICE, signer, Duration::from_millis(250), chain_stopped));
    let inline = phase == Phase::FloodChainedInRequest;
    let running = Arc::new(AtomicBool::new(true));
    let failed = Arc::new(AtomicU64::new(0));

    let mut flood = Vec::new();
    if phase != Phase::Quiet {
        for f in 0..flooders {
            let (db, running, failed) = (db.clone(), running.clone(), failed.clone());
            flood.push(tokio::spawn(async move {
                let store = IdentityStore::new(db.clone());
                let address = format!("198.51.{}.{}", f / 250, f % 250 + 1);
                let mut pace = (phase == Phase::FloodPaced).then(|| {
                    let every = Duration::from_secs_f64(flooders as f64 / PACED_RATE as f64);
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tick
                });
                while running.load(Ordering::Relaxed) {
                    if let Some(tick) = pace.as_mut() {
                        tick.tick().await;
                    }
                    store.record_login_failure(None, &address, "bad credentials").await?;
                    if inline {
                        audit_log::append_pending(&db, SERVICE).await?;
                    }
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
    }
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let store = IdentityStore::new(db.clone());
            let mut took = Vec::new();
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let email = format!("w{w}-{n}-{}@bench.example", uuid::Uuid::now_v7().simple());
                let new = NewAccount::parse(&email, "correct horse battery", "Bench", Some(Role::Buyer))?;
                let started = Instant::now();
                store
                    .register(&new, "$bench$".into(), AccountStatus::Active, None, None, "203.0.113.7")
                    .await?;
                if inline {
                    audit_log::append_pending(&db, SERVICE).await?;
                }
                took.push(started.elapsed());
            }
            anyhow::Ok(took)
        }));
    }
    // The chain's lag, once a second, on standard error.
    let sampler = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            let mut lags = Vec::new();
            while Instant::now() < until {
                every.tick().await;
                lags.push(pending(&db).await.unwrap_or(-1));
            }
            eprintln!("  pending records, once a second: {lags:?}");
        })
    };
    let mut writes = Vec::new();
    for t in tasks {
        writes.extend(t.await??);
    }
    running.store(false, Ordering::Relaxed);
    sampler.await?;
    for f in flood {
        f.await??;
    }
    let failed_logins = failed.load(Ordering::Relaxed);
    let backlog_at_end = pending(db).await?;
    let drained = Instant::now();
    let _ = stop_chain.send(true);
    if let Some(chain) = chain {
        chain.await?;
    }
    audit_log::append_all(db, SERVICE).await?;
    Ok(Outcome {
        writes,
        failed_logins,
        backlog_at_end,
        drained_in: drained.elapsed(),
    })
}

async fn pending(db: &DatabaseConnection) -> anyhow::Result<i64> {
    let row = db
        .query_one_raw(thali_platform::db::statement(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM audit_pending WHERE service = $1",
            vec![SERVICE.into()],
        ))
        .await?
        .expect("a count");
    Ok(row.try_get("", "n")?)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
