//! `just bench-hot-path`: the per-request cost of Thali's stacks, side by side with bare
//! handlers serving the same bytes, measured from outside with wrk (REST) and h2load (gRPC).
//!
//! 1. Starts the embedded platform (release build, the process's own telemetry as configured:
//!    `THALI_ACCESS_LOG`, `THALI_TRACE_SAMPLE_RATIO`, `THALI_LOG_FORMAT`), a creator with 12
//!    products, and a partner API key with `storefront.read`.
//! 2. Starts a bare axum handler answering the storefront page's exact JSON bytes, and a bare
//!    tonic `StorefrontService` answering `GetStorefront` with the exact same message.
//! 3. wrk: the cached anonymous `GET /api/v1/store/{username}` vs the bare handler.
//!    h2load: `GetStorefront` with the API key vs bare tonic. h2load sees only HTTP statuses, so
//!    the gRPC answers are checked: one call through a tonic client first, and the server's
//!    `rpc_server_call_duration_seconds_count{code="OK"}` must grow by what h2load completed.
//! 4. Prints both ratios (goal: REST ≥ 0.5, gRPC ≥ 0.6).
//!
//! Arguments: seconds per run (default 10), wrk connections (256), h2load clients (64),
//! streams per client (8).
use std::{collections::HashMap, process::Command, time::Duration};

use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};
use thali_platform::{Config, config::Overrides};
use thali_proto::storefront::v1::{
    self as pb,
    storefront_service_client::StorefrontServiceClient,
    storefront_service_server::{StorefrontService, StorefrontServiceServer},
};
use tonic::{Request, Response, Status};

#[derive(Clone)]
struct Bare {
    page: pb::GetStorefrontResponse,
}

#[tonic::async_trait]
impl StorefrontService for Bare {
    async fn get_storefront(
        &self,
        _: Request<pb::GetStorefrontRequest>,
    ) -> Result<Response<pb::GetStorefrontResponse>, Status> {
        Ok(Response::new(self.page.clone()))
    }
    async fn create_creator(
        &self,
        _: Request<pb::CreateCreatorRequest>,
    ) -> Result<Response<pb::CreateCreatorResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn get_creator(&self, _: Request<pb::GetCreatorRequest>) -> Result<Response<pb::GetCreatorResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn update_profile(
        &self,
        _: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::UpdateProfileResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn create_product(
        &self,
        _: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn update_product(
        &self,
        _: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn archive_product(
        &self,
        _: Request<pb::ArchiveProductRequest>,
    ) -> Result<Response<pb::ArchiveProductResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn list_products(
        &self,
        _: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn upload_media(
        &self,
        _: Request<tonic::Streaming<pb::UploadMediaRequest>>,
    ) -> Result<Response<pb::UploadMediaResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn reserve_stock(
        &self,
        _: Request<pb::ReserveStockRequest>,
    ) -> Result<Response<pb::ReserveStockResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn commit_reservation(
        &self,
        _: Request<pb::CommitReservationRequest>,
    ) -> Result<Response<pb::CommitReservationResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn release_reservation(
        &self,
        _: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
}

fn tool(name: &str) -> anyhow::Result<()> {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()?;
    anyhow::ensure!(
        found.status.success(),
        "{name} is missing: apt-get install wrk nghttp2-client (the Justfile recipe does)"
    );
    Ok(())
}

/// Requests per second that wrk measured against `url`, and its non-2xx count.
fn wrk(url: &str, seconds: u64, connections: u32) -> anyhow::Result<(f64, u64)> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("wrk {url}\n{text}");
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("wrk printed no Requests/sec"))?;
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok((rps, non_2xx))
}

/// Requests per second and completed requests of h2load posting one gRPC frame to `url`.
fn h2load(
    url: &str,
    body: &std::path::Path,
    headers: &[String],
    seconds: u64,
    clients: u32,
    streams: u32,
) -> anyhow::Result<(f64, u64)> {
    let mut cmd = Command::new("h2load");
    cmd.args([
        "-c",
        &clients.to_string(),
        "-m",
        &streams.to_string(),
        "-t",
        "2",
        "-D",
        &seconds.to_string(),
        "-d",
        &body.display().to_string(),
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("h2load {url}\n{text}");
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.trim_end_matches(" req/s").trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("h2load printed no req/s"))?;
    let ok = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((rps, ok))
}

/// `rpc_server_call_duration_seconds_count` of GetStorefront answered OK, from `/metrics`.
async fn grpc_ok(http: &reqwest::Client, admin: &str) -> anyhow::Result<f64> {
    let text = http.get(format!("{admin}/metrics")).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("rpc_server_call_duration_seconds_count{"))
        .filter(|l| l.contains("GetStorefront") && l.contains(r#"code="Ok""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let connections: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(256);
    let clients: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let streams: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8);
    tool("wrk")?;
    tool("h2load")?;
    let _ = rustls::crypto::ring::default_provider().install_default();

    // 1. The platform, as configured by the environment (a fresh embedded data dir).
    let data_dir = std::env::temp_dir().join(format!("thali-hot-path-{}", uuid::Uuid::now_v7()));
    let mut env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("THALI_")).collect();
    for (k, v) in [
        ("THALI_DATA_DIR", data_dir.display().to_string()),
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
    ] {
        env.insert(k.to_owned(), v);
    }
    env.remove("THALI_DATABASE_URL");
    env.entry("THALI_LOG".into()).or_insert_with(|| "warn".into());
    let cfg = Config::load_from(None, Some(env), &Overrides::default())?;
    let telemetry = thali_platform::telemetry::init(&cfg, "thali-hot-path-bench")?;
    let platform = thali::start(&cfg, thali::Part::All).await?;
    let base = format!("http://{}", platform.http_addr.expect("the facade runs"));
    let grpc = format!("http://{}", platform.grpc_addr.expect("the services run"));
    let admin = format!("http://{}", platform.admin_addr);
    let http = reqwest::Client::new();

    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut req = http.post(format!("{base}{path}")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let sign_up = |email: &'static str, role: &'static str| {
        let post = &post;
        async move {
            let password = "correct horse battery";
            let res = post(
                "/api/v1/auth/register",
                None,
                json!({"email": email, "password": password, "display_name": "Bench", "role": role}),
            )
            .await?;
            anyhow::ensure!(res.status() == StatusCode::ACCEPTED, "register: {}", res.text().await?);
            let session: Value = post(
                "/api/v1/auth/login",
                None,
                json!({"email": email, "password": password}),
            )
            .await?
            .json()
            .await?;
            Ok::<String, anyhow::Error>(
                session["tokens"]["access_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    };
    let creator = sign_up("creator@bench.example", "creator").await?;
    let res = post(
        "/api/v1/creators",
        Some(&creator),
        json!({"username": "chai_point", "display_name": "Chai Point"}),
    )
    .await?;
    anyhow::ensure!(res.status() == StatusCode::CREATED, "creator: {}", res.text().await?);
    for i in 0..12 {
        let body = json!({"title": format!("Snack {i}"), "description": "Crisp, fresh, made this morning.",
            "price": {"amount_minor": 1500 + i * 100, "currency": "INR"}});
        let res = post("/api/v1/creators/chai_point/products", Some(&creator), body).await?;
        anyhow::ensure!(res.status() == StatusCode::CREATED, "product: {}", res.text().await?);
    }
    let partner = sign_up("partner@bench.example", "buyer").await?;
    let key: Value = post(
        "/api/v1/api-keys",
        Some(&partner),
        json!({"name": "bench", "scopes": ["storefront.read"]}),
    )
    .await?
    .json()
    .await?;
    let key = key["secret"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no API key: {key}"))?
        .to_owned();

    // The page as the facade serves it (now cached), and the message as the service answers it.
    let page_url = format!("{base}/api/v1/store/chai_point");
    let page = http.get(&page_url).send().await?;
    anyhow::ensure!(page.status() == StatusCode::OK, "page: {}", page.status());
    let content_type = page.headers().get("content-type").cloned();
    let page = page.bytes().await?;
    let mut client =
        StorefrontServiceClient::new(tonic::transport::Endpoint::from_shared(grpc.clone())?.connect().await?);
    let mut ask = Request::new(pb::GetStorefrontRequest {
        username: "chai_point".into(),
    });
    ask.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse()?);
    let message = client.get_storefront(ask).await?.into_inner();
    anyhow::ensure!(message.products.len() == 12, "the partner reads the real page");

    // 2. The bare handlers.
    // The same socket settings as Thali's listeners (backlog, TCP_NODELAY), so the stacks are
    // what differs.
    let bare_http = thali_platform::net::bind("127.0.0.1:0".parse()?)?;
    let bare_http_addr = bare_http.local_addr()?;
    let bytes = page.clone();
    let app = axum::Router::new().route(
        "/page",
        axum::routing::get(move || {
            let bytes = bytes.clone();
            let content_type = content_type.clone();
            async move {
                let mut res = axum::response::Response::new(axum::body::Body::from(bytes));
                if let Some(ct) = content_type {
                    res.headers_mut().insert("content-type", ct);
                }
                res
            }
        }),
    );
    tokio::spawn(async move { axum::serve(bare_http, app).await });
    let bare_grpc = thali_platform::net::bind("127.0.0.1:0".parse()?)?;
    let bare_grpc_addr = bare_grpc.local_addr()?;
    let bare = Bare { page: message.clone() };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(StorefrontServiceServer::new(bare))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(bare_grpc).with_nodelay(Some(true)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 3. REST.
    let (thali_rps, thali_bad) = wrk(&page_url, seconds, connections)?;
    let (bare_rps, bare_bad) = wrk(&format!("http://{bare_http_addr}/page"), seconds, connections)?;
    anyhow::ensure!(
        thali_bad == 0 && bare_bad == 0,
        "non-2xx answers: thali {thali_bad}, bare {bare_bad}"
    );

    // gRPC: one framed request body, the same for both.
    let frame = {
        let msg = pb::GetStorefrontRequest {
            username: "chai_point".into(),
        }
        .encode_to_vec();
        let mut f = vec![0u8];
        f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        f.extend_from_slice(&msg);
        f
    };
    let body = data_dir.join("get_storefront.bin");
    std::fs::write(&body, frame)?;
    let path = "/thali.storefront.v1.StorefrontService/GetStorefront";
    let grpc_headers = |auth: Option<&str>| {
        let mut h = vec!["content-type: application/grpc".to_owned(), "te: trailers".to_owned()];
        if let Some(key) = auth {
            h.push(format!("authorization: Bearer {key}"));
        }
        h
    };
    let before = grpc_ok(&http, &admin).await?;
    let (thali_grpc, thali_done) = h2load(
        &format!("{grpc}{path}"),
        &body,
        &grpc_headers(Some(&key)),
        seconds,
        clients,
        streams,
    )?;
    tokio::time::sleep(Duration::from_secs(6)).await; // the metrics' upkeep folds the samples in
    let answered = grpc_ok(&http, &admin).await? - before;
    anyhow::ensure!(
        answered >= thali_done as f64 * 0.99,
        "h2load counted {thali_done} 200s but the service answered OK only {answered} times"
    );
    let (bare_grpc_rps, _) = h2load(
        &format!("http://{bare_grpc_addr}{path}"),
        &body,
        &grpc_headers(None),
        seconds,
        clients,
        streams,
    )?;

    // 4. The ratios.
    println!(
        "machine: {} cores; {seconds} s per run",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "REST  cached storefront page: thali {thali_rps:.0} req/s, bare axum {bare_rps:.0} req/s, ratio {:.2} (goal ≥ 0.50)",
        thali_rps / bare_rps
    );
    println!(
        "gRPC  GetStorefront with an API key: thali {thali_grpc:.0} req/s ({answered:.0} answered OK), bare tonic {bare_grpc_rps:.0} req/s, ratio {:.2} (goal ≥ 0.60)",
        thali_grpc / bare_grpc_rps
    );
    platform.shutdown().await?;
    telemetry.shutdown();
    Ok(())
}
