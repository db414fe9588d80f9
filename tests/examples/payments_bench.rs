//! Payments under load on PostgreSQL (THALI_TEST_DATABASE_URL, a server where this may create a
//! database), through the REST facade of the whole platform in one process:
//!
//! 1. seeds `orders` pending orders (default 2,000) through the store (progress on stderr);
//! 2. replays their signed webhooks — for each order `payment.captured` and `order.paid`, for one
//!    in ten a failed attempt first — shuffled (out of order), 10 % of them delivered twice, by 64
//!    concurrent clients, while a trigger makes 10 % of processings fail (they go to the
//!    dead-letter queue); reports webhooks/s and latency;
//! 3. drains the dead-letter queue (the trigger removed, the retries run on a clock moved past
//!    their due times) and checks that every order is paid, exactly once, and nothing is left;
//! 4. checkout p50/p95: `POST /api/v1/orders` against the sandbox gateway, 8 buyers at once.
//!
//! `cargo run --release -p thali-tests --example payments_bench -- [orders] [checkouts]`
//! (`just bench-payments`). Prints Markdown rows (docs/perf/payments.md keeps them).
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;
use thali_payments::{
    domain::{GatewayCall, OrderLine, OrderRecord, Status},
    store::{NewOrder, PaymentsStore},
};
use thali_platform::{Config, auth::Signer, config::Overrides, jobs::ManualClock};

const CLIENTS: usize = 64;

fn pct(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn count(db: &sea_orm::DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    Ok(db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no count"))?
        .try_get("", "n")?)
}

fn event(kind: &str, gateway_order: &str, payment: &str, status: &str) -> String {
    json!({"entity": "event", "account_id": "acc_bench", "event": kind, "contains": ["payment"],
        "payload": {"payment": {"entity": {"id": payment, "order_id": gateway_order, "amount": 4900,
            "currency": "INR", "status": status, "method": "upi"}}}, "created_at": 1})
    .to_string()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let orders: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2_000);
    let checkouts: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(400);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let t = thali_platform::testing::postgres()
        .await
        .ok_or_else(|| anyhow::anyhow!("set THALI_TEST_DATABASE_URL"))?;
    let data_dir = std::env::temp_dir().join(format!("thali-payments-bench-{}", uuid::Uuid::now_v7()));
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
        ("THALI_SANDBOX_ADDR", "127.0.0.1:0".into()),
        ("THALI_LOG", "error".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let cfg = Config::load_from(None, Some(env), &Overrides::default())?;
    let platform = thali::start(&cfg, thali::Part::All).await?;
    let base = format!("http://{}", platform.http_addr.expect("the facade runs"));
    let secret = std::fs::read_to_string(cfg.sandbox_dir().join("webhook_secret"))?;
    let secret = secret.trim().to_owned();

    // 1. Seed pending orders.
    let store = PaymentsStore::new(t.db.clone());
    let started = Instant::now();
    let mut gateway_ids = Vec::with_capacity(orders);
    for i in 0..orders {
        let id = uuid::Uuid::now_v7();
        let now = Utc::now();
        let gateway_order_id = format!("order_bench{i:08}");
        let record = OrderRecord {
            id,
            status: Status::Pending,
            buyer_subject: format!("buyer-{}", i % 97),
            username: "bench_shop".into(),
            seller_subject: "seller".into(),
            lines: vec![OrderLine {
                product_id: uuid::Uuid::now_v7(),
                title: "Masala chai".into(),
                quantity: 1,
                unit_price_minor: 4900,
            }],
            amount_minor: 4900,
            currency: "INR".into(),
            refunded_minor: 0,
            gateway: "sandbox".into(),
            key_id: "rzp_test_bench".into(),
            gateway_order_id: gateway_order_id.clone(),
            expires_at: now + chrono::TimeDelta::minutes(15),
            created_at: now,
            updated_at: now,
            paid_at: None,
            fulfilment: None,
            payment_account_id: None,
            reference: None,
        };
        let call = GatewayCall {
            order_id: id,
            call: "create_order",
            source: "checkout",
            outcome: "ok",
            gateway_ref: Some(gateway_order_id.clone()),
            latency_ms: 0,
        };
        store.insert_order(&NewOrder { record }, None, &call).await?;
        gateway_ids.push(gateway_order_id);
        if (i + 1) % 500 == 0 {
            eprintln!("seeded {}/{orders} orders", i + 1);
        }
    }
    eprintln!("seeded {orders} orders in {:.1} s", started.elapsed().as_secs_f64());

    // 2. The webhooks: shuffled, 10 % twice, 10 % of processings failing.
    let mut deliveries: Vec<(String, String)> = Vec::new();
    for (i, gw) in gateway_ids.iter().enumerate() {
        let pay = format!("pay_bench{i:08}");
        if i % 10 == 0 {
            deliveries.push((
                format!("evt_{i}_f"),
                event("payment.failed", gw, &format!("pay_fail{i:08}"), "failed"),
            ));
        }
        deliveries.push((format!("evt_{i}_c"), event("payment.captured", gw, &pay, "captured")));
        deliveries.push((format!("evt_{i}_p"), event("order.paid", gw, &pay, "captured")));
    }
    let distinct = deliveries.len();
    let twice: Vec<_> = deliveries.iter().filter(|_| fastrand::u8(..10) == 0).cloned().collect();
    deliveries.extend(twice);
    fastrand::shuffle(&mut deliveries);
    t.db.execute_unprepared(
        "CREATE FUNCTION bench_fault() RETURNS trigger AS $$ BEGIN IF random() < 0.1 THEN \
         RAISE EXCEPTION 'injected processing fault'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER bench_fault BEFORE INSERT ON payment_events FOR EACH ROW EXECUTE FUNCTION bench_fault()",
    )
    .await?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build()?;
    let queue = Arc::new(std::sync::Mutex::new(deliveries));
    let total = queue.lock().expect("queue").len();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (queue, http, base, secret) = (queue.clone(), http.clone(), base.clone(), secret.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            loop {
                let next = queue.lock().expect("queue").pop();
                let Some((event_id, body)) = next else { break };
                let signature = thali_payments::signature::sign_hex(secret.as_bytes(), body.as_bytes());
                let sent = Instant::now();
                let res = http
                    .post(format!("{base}/api/v1/webhooks/razorpay"))
                    .header("content-type", "application/json")
                    .header("x-razorpay-signature", signature)
                    .header("x-razorpay-event-id", event_id)
                    .body(body)
                    .send()
                    .await;
                latencies.push(sent.elapsed());
                if !res.is_ok_and(|r| r.status().is_success()) {
                    failures += 1;
                }
            }
            (latencies, failures)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    let mut failures = 0;
    while let Some(done) = tasks.join_next().await {
        let (l, f) = done?;
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let dead_lettered = count(&t.db, "SELECT COUNT(*) AS n FROM webhook_dlq").await?;

    // 3. Drain the dead-letter queue and check every order.
    t.db.execute_unprepared("DROP TRIGGER bench_fault ON payment_events")
        .await?;
    let drained = Instant::now();
    let later = PaymentsStore::with_queue(
        t.db.clone(),
        thali_platform::jobs::Queue::with_clock(
            thali_payments::workers::SERVICE,
            Arc::new(ManualClock::new(Utc::now() + chrono::TimeDelta::hours(2))),
        ),
    );
    loop {
        thali_payments::workers::sweep_dlq(later.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if later.dlq_size().await? == (0, 0) {
            break;
        }
    }
    let drain = drained.elapsed();
    let paid = count(
        &t.db,
        "SELECT COUNT(*) AS n FROM orders WHERE status = 'paid' AND paid_by IS NOT NULL",
    )
    .await?;
    let events = count(&t.db, "SELECT COUNT(*) AS n FROM payment_events").await?;
    let commits = count(
        &t.db,
        "SELECT COUNT(*) AS n FROM jobs WHERE service = 'payments' AND kind = 'payments.commit_stock'",
    )
    .await?;
    let failed_attempts = count(
        &t.db,
        "SELECT COALESCE(SUM(failed_attempts), 0)::bigint AS n FROM orders",
    )
    .await?;
    anyhow::ensure!(failures == 0, "{failures} deliveries were not answered 2xx");
    anyhow::ensure!(paid == orders as i64, "{paid} of {orders} orders paid");
    anyhow::ensure!(
        events == distinct as i64,
        "{events} events taken, {distinct} distinct sent"
    );
    anyhow::ensure!(commits == orders as i64, "{commits} stock commits for {orders} orders");
    // A failed attempt counts only when it arrives before the capture (shuffled: some do not).
    anyhow::ensure!(
        (0..=orders.div_ceil(10) as i64).contains(&failed_attempts),
        "{failed_attempts} failed attempts counted"
    );

    // 4. Checkout through the sandbox gateway.
    let signer = Signer::load(&cfg.keys_dir())?;
    let creator = signer.mint("bench-creator", &["creator".into()], Duration::from_secs(3600));
    let res = http
        .post(format!("{base}/api/v1/creators"))
        .bearer_auth(&creator)
        .json(&json!({"username": "bench_shop", "display_name": "Bench"}))
        .send()
        .await?;
    anyhow::ensure!(res.status().is_success(), "creator: {}", res.text().await?);
    let product: serde_json::Value = http
        .post(format!("{base}/api/v1/creators/bench_shop/products"))
        .bearer_auth(&creator)
        .json(&json!({"title": "Chai", "price": {"amount_minor": 4900, "currency": "INR"}, "stock": 1_000_000}))
        .send()
        .await?
        .json()
        .await?;
    let product = product["id"].as_str().unwrap_or_default().to_owned();
    let mut buyers = tokio::task::JoinSet::new();
    for b in 0..8 {
        let (http, base, product) = (http.clone(), base.clone(), product.clone());
        let token = signer.mint(
            &format!("bench-buyer-{b}"),
            &["buyer".into()],
            Duration::from_secs(3600),
        );
        let n = checkouts / 8;
        buyers.spawn(async move {
            let mut latencies = Vec::with_capacity(n);
            for i in 0..n {
                let sent = Instant::now();
                let res = http
                    .post(format!("{base}/api/v1/orders"))
                    .bearer_auth(&token)
                    .header("idempotency-key", format!("bench-{b}-{i}"))
                    .json(&json!({"username": "bench_shop", "lines": [{"product_id": product, "quantity": 1}]}))
                    .send()
                    .await?;
                anyhow::ensure!(res.status().as_u16() == 201, "checkout: {}", res.text().await?);
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut checkout = Vec::new();
    while let Some(done) = buyers.join_next().await {
        checkout.extend(done??);
    }
    checkout.sort();

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| webhooks delivered (distinct + duplicates) | {total} ({distinct} + {}) |",
        total - distinct
    );
    println!(
        "| webhooks ingested and applied per second | {:.0} |",
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| webhook latency p50 / p99 | {} / {} |",
        ms(pct(&latencies, 0.5)),
        ms(pct(&latencies, 0.99))
    );
    println!("| processings failed (injected, 10 %) → dead-lettered | {dead_lettered} |");
    println!("| dead-letter queue drained in | {:.2} s |", drain.as_secs_f64());
    println!("| failed attempts counted (those that arrived before their capture) | {failed_attempts} |");
    println!(
        "| orders paid / stock commits / events taken | {paid} / {commits} / {events} (of {orders} / {orders} / {distinct}) |"
    );
    println!(
        "| checkout (sandbox gateway) p50 / p95 / p99, 8 buyers | {} / {} / {} |",
        ms(pct(&checkout, 0.5)),
        ms(pct(&checkout, 0.95)),
        ms(pct(&checkout, 0.99))
    );
    platform.shutdown().await?;
    Ok(())
}
