//! What the platform client stack costs: the unary `GetStorefront` a partner or another service
//! makes, through `Client::call` (deadline, retry budget, balancer, breaker) and on a raw tonic
//! channel (credentials and trace context only), against the same server in the same run,
//! alternated so drift hits both; then how fast a call fails when every breaker is open.
//!
//! `cargo run --release -p thali-tests --example client_stack -- [seconds per round] [concurrency]`
//! Prints a Markdown report (docs/perf/resilience.md keeps one).
use std::{collections::HashMap, sync::Arc, time::Duration};

use thali::Part;
use thali_platform::{
    Config,
    client::{Client, ClientSettings, GrpcChannel, ServiceIdentity, Target, endpoint_channel},
    config::Overrides,
};
use thali_proto::storefront::v1::{GetStorefrontRequest, storefront_service_client::StorefrontServiceClient};
use tokio::time::Instant;

struct Round {
    calls: usize,
    errors: usize,
    latencies_us: Vec<u32>,
    took: Duration,
}

impl Round {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.took.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> f64 {
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

#[derive(Clone)]
enum Path {
    Raw(StorefrontServiceClient<GrpcChannel>),
    Stack(Client<StorefrontServiceClient<GrpcChannel>>),
}

impl Path {
    async fn call(&self) -> bool {
        let req = GetStorefrontRequest {
            username: "bench_shop".into(),
        };
        match self {
            Path::Raw(client) => client.clone().get_storefront(req).await.is_ok(),
            Path::Stack(client) => client
                .call(req, |mut c, r| async move { c.get_storefront(r).await })
                .await
                .is_ok(),
        }
    }
}

async fn round(path: &Path, seconds: u64, concurrency: usize) -> Round {
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0);
                while Instant::now() < until {
                    let at = Instant::now();
                    if !path.call().await {
                        errors += 1;
                    }
                    latencies.push(at.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Round {
        calls: 0,
        errors: 0,
        latencies_us: Vec::new(),
        took: Duration::ZERO,
    };
    for worker in workers {
        let (latencies, errors) = worker.await.unwrap();
        all.calls += latencies.len();
        all.errors += errors;
        all.latencies_us.extend(latencies);
    }
    all.took = started.elapsed();
    all.latencies_us.sort_unstable();
    all
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(10, |s| s.parse().expect("seconds"));
    let concurrency: usize = args.next().map_or(64, |s| s.parse().expect("concurrency"));

    let data_dir = std::env::temp_dir().join(format!("thali-bench-{}", uuid::Uuid::now_v7()));
    let env: HashMap<String, String> = [
        ("THALI_DATA_DIR", data_dir.display().to_string()),
        ("THALI_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("THALI_GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("THALI_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        // Every load comes from 127.0.0.1: rate limits are on (their cost is measured) but set
        // far above what this run sends.
        ("THALI_RATE_LIMIT_ANONYMOUS", "1000000000/min".to_owned()),
        ("THALI_RATE_LIMIT_SIGNED_IN", "1000000000/min".to_owned()),
        ("THALI_RATE_LIMIT_LOGIN", "1000000000/min".to_owned()),
        ("THALI_RATE_LIMIT_LOGIN_ADDRESS", "1000000000/min".to_owned()),
        ("THALI_RATE_LIMIT_REGISTER", "1000000000/min".to_owned()),
        ("THALI_RATE_LIMIT_API_KEY", "1000000000/min".to_owned()),
        ("THALI_RATE_LIMIT_WEBHOOK", "1000000000/min".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let cfg = Config::load_from(None, Some(env), &Overrides::default()).unwrap();
    let platform = thali::start(&cfg, Part::All).await.unwrap();
    let signer = Arc::new(thali_platform::Signer::load(&cfg.keys_dir()).unwrap());
    let token = signer.mint("bench", &["creator".into()], Duration::from_secs(3600));
    let created = reqwest::Client::new()
        .post(format!("http://{}/api/v1/creators", platform.http_addr.unwrap()))
        .bearer_auth(token)
        .json(&serde_json::json!({"username": "bench_shop", "display_name": "Bench"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let url = format!("http://{}", platform.grpc_addr.unwrap());
    let me = ServiceIdentity {
        name: "bench".into(),
        signer,
    };
    let raw = Path::Raw(StorefrontServiceClient::new(
        endpoint_channel(&url, "storefront", &me, Duration::from_secs(2)).unwrap(),
    ));
    let target = Target::new("storefront", &url, &me, ClientSettings::default())
        .await
        .unwrap();
    let stack = Path::Stack(Client::new(target, StorefrontServiceClient::new));

    // Warm both paths (connections, caches), then alternate.
    round(&raw, 2, concurrency).await;
    round(&stack, 2, concurrency).await;
    let mut rows = Vec::new();
    for n in 1..=3 {
        for (name, path) in [("raw channel", &raw), ("client stack", &stack)] {
            let r = round(path, seconds, concurrency).await;
            eprintln!("round {n} {name}: {:.0} calls/s", r.rate());
            rows.push((n, name, r));
        }
    }

    // Fail fast: one endpoint where nothing listens; its breaker opens after 5 failures.
    let dead = Target::new("storefront", "http://127.0.0.1:1", &me, ClientSettings::default())
        .await
        .unwrap();
    let dead = Client::new(dead, StorefrontServiceClient::new);
    let call_dead = || {
        dead.call(
            GetStorefrontRequest {
                username: "bench_shop".into(),
            },
            |mut c, r| async move { c.get_storefront(r).await },
        )
    };
    while dead.target().endpoints()[0].1 != thali_platform::client::BreakerState::Open {
        let _ = call_dead().await;
    }
    let mut fast = Vec::with_capacity(20_000);
    let mut circuit_open = 0;
    for _ in 0..20_000 {
        let at = Instant::now();
        let answer = call_dead().await;
        fast.push(at.elapsed().as_nanos() as u64);
        if let Err(status) = answer
            && status.code() == tonic::Code::Unavailable
            && status.message().contains("no endpoint takes calls")
        {
            circuit_open += 1;
        }
    }
    fast.sort_unstable();
    let pct = |p: f64| fast[((fast.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;

    println!("| round | path | calls/s | errors | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for (n, name, r) in &rows {
        println!(
            "| {n} | {name} | {:.0} | {} | {:.2} | {:.2} |",
            r.rate(),
            r.errors,
            r.percentile(0.5),
            r.percentile(0.99)
        );
    }
    let mean = |name: &str| {
        let rates: Vec<f64> = rows
            .iter()
            .filter(|(_, n, _)| *n == name)
            .map(|(_, _, r)| r.rate())
            .collect();
        rates.iter().sum::<f64>() / rates.len() as f64
    };
    let (raw_rate, stack_rate) = (mean("raw channel"), mean("client stack"));
    println!();
    println!(
        "Mean over the rounds: raw {raw_rate:.0} calls/s, stack {stack_rate:.0} calls/s: the stack costs {:.1} % of throughput.",
        (1.0 - stack_rate / raw_rate) * 100.0
    );
    println!();
    println!(
        "Breaker open, 20,000 calls: {circuit_open} failed fast with UNAVAILABLE; p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs.",
        pct(0.5),
        pct(0.99),
        fast[fast.len() - 1] as f64 / 1000.0
    );
    platform.shutdown().await.unwrap();
}
