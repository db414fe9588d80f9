//! Outbox latency on PostgreSQL (THALI_TEST_DATABASE_URL, a server where this may create a
//! database): from the commit of a registration (account + `account.created` in one
//! transaction) to the welcome notification stored by the notifications service. The path is
//! the whole platform in one process: identity's worker wakes on NOTIFY, relays the event over
//! gRPC through the client stack, and notifications takes it in its own transaction.
//!
//! `cargo run --release -p thali-tests --example outbox_bench -- [samples]`
//! Prints a Markdown table row set (docs/perf/jobs.md keeps one).
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, Statement};
use thali_identity::{
    domain::{AccountStatus, NewAccount, Role},
    store::IdentityStore,
};
use thali_platform::{Config, config::Overrides};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let samples: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(300);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let t = thali_platform::testing::postgres()
        .await
        .ok_or_else(|| anyhow::anyhow!("set THALI_TEST_DATABASE_URL"))?;
    let data_dir = std::env::temp_dir().join(format!("thali-outbox-bench-{}", uuid::Uuid::now_v7()));
    let env: HashMap<String, String> = [
        ("THALI_DATA_DIR", data_dir.display().to_string()),
        ("THALI_DATABASE_URL", t.url.clone()),
        ("THALI_HTTP_ADDR", "127.0.0.1:0".into()),
        ("THALI_GRPC_ADDR", "127.0.0.1:0".into()),
        ("THALI_ADMIN_ADDR", "127.0.0.1:0".into()),
        // Every load comes from 127.0.0.1: rate limits are on (their cost is measured) but set
        // far above what this run sends.
        ("THALI_RATE_LIMIT_ANONYMOUS", "1000000000/min".into()),
        ("THALI_RATE_LIMIT_SIGNED_IN", "1000000000/min".into()),
        ("THALI_RATE_LIMIT_LOGIN", "1000000000/min".into()),
        ("THALI_RATE_LIMIT_LOGIN_ADDRESS", "1000000000/min".into()),
        ("THALI_RATE_LIMIT_REGISTER", "1000000000/min".into()),
        ("THALI_RATE_LIMIT_API_KEY", "1000000000/min".into()),
        ("THALI_RATE_LIMIT_WEBHOOK", "1000000000/min".into()),
        ("THALI_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let cfg = Config::load_from(None, Some(env), &Overrides::default())?;
    let platform = thali::start(&cfg, thali::Part::All).await?;
    let store = IdentityStore::new(t.db.clone());

    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let new = NewAccount::parse(
            &format!("bench{i}@example.com"),
            "correct horse battery",
            "Bench",
            Some(Role::Buyer),
        )
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let account = store
            .register(&new, "$argon2id$bench".into(), AccountStatus::Active, None, None, "")
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        // The registration has committed (register returns after its commit): from here to the
        // welcome notification.
        let started = Instant::now();
        let deadline = started + Duration::from_secs(10);
        loop {
            let found =
                t.db.query_one_raw(Statement::from_sql_and_values(
                    t.db.get_database_backend(),
                    "SELECT 1 AS found FROM notifications WHERE account_id = $1",
                    [account.id.into()],
                ))
                .await?;
            if found.is_some() {
                latencies.push(started.elapsed());
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "no notification for sample {i} within 10 s");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        eprint!("\rsample {}/{samples}", i + 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!();
    platform.shutdown().await?;

    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| registration commit → welcome notification stored, {samples} samples | **p50 {}, p99 {}**, max {} |",
        ms(at(0.50)),
        ms(at(0.99)),
        ms(*latencies.last().unwrap())
    );
    println!("| p90 | {} |", ms(at(0.90)));
    Ok(())
}
