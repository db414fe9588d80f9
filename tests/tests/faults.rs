//! Fault tests of the split mesh (ADR 0010): identity, two storefront replicas and the facade as
//! separate parts (each its own runtime, killed for real), on PostgreSQL and Redis under CI.
mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::split::{Proc, Shared};
use thali::Part;
use thali_platform::{
    client::{Client, ClientSettings, GrpcChannel, ServiceIdentity, Target, endpoint_channel},
    server::{AuthPolicy, Health},
};
use thali_proto::storefront::v1::{
    self as pb,
    storefront_service_client::StorefrontServiceClient,
    storefront_service_server::{StorefrontService, StorefrontServiceServer},
};
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;

fn http() -> reqwest::Client {
    // reqwest's rustls (on for the payments gateway) needs the process's provider (ADR 0002).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn create_creator(facade: &Proc, token: &str, username: &str) {
    let res = http()
        .post(facade.http_url("/api/v1/creators"))
        .bearer_auth(token)
        .json(&json!({"username": username, "display_name": "Chai"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED, "{}", res.text().await.unwrap());
}

async fn metrics_of(proc: &Proc) -> String {
    support::metrics_page(&http(), proc.admin_url("/metrics")).await
}

/// The value of the first sample whose line starts with `prefix` and contains every of `parts`.
fn sample(text: &str, prefix: &str, parts: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Identity, storefront ×2 and the facade over both replicas.
struct SplitMesh {
    shared: Shared,
    identity: Proc,
    storefronts: Vec<Proc>,
    facade: Proc,
    token: String,
}

impl SplitMesh {
    async fn start(redis: Option<String>, facade_env: &[(&str, &str)]) -> Self {
        let shared = Shared::new(redis, &[]).await;
        let identity = Proc::start(Part::Identity, &shared.env);
        let storefront_env = shared.with(&[("THALI_IDENTITY_URL", identity.grpc_url())]);
        let storefronts: Vec<Proc> = (0..2).map(|_| Proc::start(Part::Storefront, &storefront_env)).collect();
        let mut env = shared.with(&[
            (
                "THALI_STOREFRONT_URL",
                storefronts.iter().map(Proc::grpc_url).collect::<Vec<_>>().join(","),
            ),
            ("THALI_IDENTITY_URL", identity.grpc_url()),
        ]);
        for (k, v) in facade_env {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let facade = Proc::start(Part::Facade, &env);
        let token = shared
            .signer()
            .mint("alice", &["creator".into()], Duration::from_secs(600));
        Self {
            shared,
            identity,
            storefronts,
            facade,
            token,
        }
    }

    async fn read_signed_in(&self, username: &str) -> reqwest::Response {
        http()
            .get(self.facade.http_url(&format!("/api/v1/store/{username}")))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }
}

/// a. Storefront reads under steady load while one replica is killed: no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_under_load_survive_a_storefront_replica_killed() {
    let mut mesh = SplitMesh::start(None, &[]).await;
    for i in 0..10 {
        create_creator(&mesh.facade, &mesh.token, &format!("loaded_{i}")).await;
    }
    let mesh_facade = mesh.facade.http_url("");
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (base, token, done, failures) =
                (mesh_facade.clone(), mesh.token.clone(), done.clone(), failures.clone());
            tokio::spawn(async move {
                let client = http();
                for i in 0..150 {
                    let url = format!("{base}/api/v1/store/loaded_{}", (w + i) % 10);
                    // Signed in: no-store, so every read reaches a storefront replica.
                    let res = client.get(url).bearer_auth(&token).send().await;
                    if !matches!(&res, Ok(r) if r.status() == StatusCode::OK) {
                        failures.fetch_add(1, Ordering::SeqCst);
                        eprintln!("failed read: {:?}", res.map(|r| r.status()));
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    while done.load(Ordering::SeqCst) < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut killed = mesh.storefronts.remove(0);
    let killed_at = killed.grpc.unwrap();
    tokio::task::spawn_blocking(move || killed.kill()).await.unwrap();
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 1200);
    assert_eq!(failures.load(Ordering::SeqCst), 0, "reads failed while a replica died");
    // The facade noticed: the dead endpoint's breaker opened, or its calls were retried.
    let metrics = metrics_of(&mesh.facade).await;
    let opened = sample(&metrics, "circuit_breaker_state{", &[&killed_at.to_string()]) == Some(2.0);
    let retried = sample(&metrics, "rpc_client_retries_total{", &["target=\"storefront\""]).unwrap_or(0.0) > 0.0;
    assert!(opened || retried, "{metrics}");
}

/// Accepts and drops every connection on `addr`, counting them: a dead endpoint we can watch.
async fn counting_listener(addr: std::net::SocketAddr) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let mut bound = thali_platform::net::bind(addr);
    for _ in 0..40 {
        if bound.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        bound = thali_platform::net::bind(addr);
    }
    let listener = bound.expect("the killed replica's port is free again");
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (count, task)
}

/// b. Every storefront replica down: uncached reads get 503 + Retry-After, cached pages still
/// answer (stale after their freshness), and dead endpoints see at most one probe per backoff.
/// c. Replicas back: half-open → closed, reads succeed again without restarting the facade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_down_then_back() {
    let Some(redis) = thali_platform::testing::redis_url() else {
        return;
    };
    let mut mesh = SplitMesh::start(
        Some(redis),
        &[
            ("THALI_BREAKER_BACKOFF_MIN_MS", "400"),
            ("THALI_BREAKER_BACKOFF_MAX_MS", "400"),
            ("THALI_RPC_TIMEOUT_MS", "2000"),
        ],
    )
    .await;
    create_creator(&mesh.facade, &mesh.token, "warm_shop").await;
    create_creator(&mesh.facade, &mesh.token, "cold_shop").await;
    let anonymous = |path: &str| http().get(mesh.facade.http_url(path)).send();
    let warm = anonymous("/api/v1/store/warm_shop").await.unwrap();
    assert_eq!(warm.status(), StatusCode::OK);
    let cached_at = Instant::now();
    let warm_body: Value = warm.json().await.unwrap();
    assert_eq!(warm_body["stale"], false);

    // Both replicas die; something we control sits on their ports and counts connections.
    let addrs: Vec<_> = mesh.storefronts.iter().map(|p| p.grpc.unwrap()).collect();
    let mut dead: Vec<Proc> = std::mem::take(&mut mesh.storefronts);
    tokio::task::spawn_blocking(move || dead.iter_mut().for_each(Proc::kill))
        .await
        .unwrap();
    let mut listeners = Vec::new();
    for addr in &addrs {
        listeners.push(counting_listener(*addr).await);
    }

    // Uncached reads: 503 with Retry-After, until both breakers are open. A connection the
    // client opened to a counting listener after it took the port is accepted and never
    // answered: that call ends at its deadline, 504 (which one comes first is a race on a busy
    // machine).
    let opened_by = Instant::now() + Duration::from_secs(10);
    loop {
        let res = mesh.read_signed_in("cold_shop").await;
        let status = res.status();
        assert!(
            status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::GATEWAY_TIMEOUT,
            "{status}"
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(res.headers().contains_key("retry-after"));
        }
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["status"], status.as_u16());
        let metrics = metrics_of(&mesh.facade).await;
        let open = addrs
            .iter()
            .all(|a| sample(&metrics, "circuit_breaker_state{", &[&a.to_string()]) == Some(2.0));
        if open {
            break;
        }
        assert!(Instant::now() < opened_by, "breakers never opened: {metrics}");
    }

    // With the breakers open, 3 s of steady reads: at most one probe per 300-400 ms backoff each.
    let before: Vec<usize> = listeners.iter().map(|(c, _)| c.load(Ordering::SeqCst)).collect();
    let window = Instant::now();
    let mut answered = 0;
    while window.elapsed() < Duration::from_secs(3) {
        let res = mesh.read_signed_in("cold_shop").await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry_after >= 1);
        answered += 1;
        let cached = anonymous("/api/v1/store/warm_shop").await.unwrap();
        assert_eq!(
            cached.status(),
            StatusCode::OK,
            "a cached page answers while every replica is down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered > 20);
    for (i, (count, _)) in listeners.iter().enumerate() {
        let probes = count.load(Ordering::SeqCst) - before[i];
        eprintln!(
            "endpoint {}: {probes} connection attempts in 3 s with its breaker open",
            addrs[i]
        );
        // 3 s / 300 ms (the shortest jittered backoff) = 10 periods, plus one in progress.
        assert!(
            probes <= 11,
            "endpoint {} saw {probes} connection attempts in 3 s",
            addrs[i]
        );
    }

    // Past its 5 s freshness, the cached page is served stale (RFC 5861 stale-if-error).
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(cached_at.elapsed())).await;
    let stale = anonymous("/api/v1/store/warm_shop").await.unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(stale.headers()["cache-control"], "no-cache");
    let stale_body: Value = stale.json().await.unwrap();
    assert_eq!(stale_body["stale"], true);
    assert_eq!(stale_body["creator"], warm_body["creator"]);

    // c. The replicas come back on the same addresses; the facade is not restarted.
    for (_, task) in &listeners {
        task.abort();
    }
    for (_, task) in listeners {
        let _ = task.await;
    }
    let env = mesh.shared.with(&[("THALI_IDENTITY_URL", mesh.identity.grpc_url())]);
    for addr in &addrs {
        let mut env = env.clone();
        env.insert("THALI_GRPC_ADDR".into(), addr.to_string());
        mesh.storefronts.push(Proc::start(Part::Storefront, &env));
    }
    let back_by = Instant::now() + Duration::from_secs(10);
    loop {
        let res = mesh.read_signed_in("cold_shop").await;
        if res.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < back_by, "reads never recovered: {}", res.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed_by = Instant::now() + Duration::from_secs(10);
    loop {
        for _ in 0..4 {
            let _ = mesh.read_signed_in("cold_shop").await;
        }
        let metrics = metrics_of(&mesh.facade).await;
        if addrs
            .iter()
            .all(|a| sample(&metrics, "circuit_breaker_state{", &[&a.to_string()]) == Some(0.0))
        {
            break;
        }
        assert!(Instant::now() < closed_by, "breakers did not close: {metrics}");
    }
    let fresh = anonymous("/api/v1/store/warm_shop").await.unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    assert_eq!(fresh.json::<Value>().await.unwrap()["stale"], false);
}

/// d. Identity down: a partner's API-key call is UNAVAILABLE, not UNAUTHENTICATED, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_down_makes_api_key_calls_unavailable_not_unauthenticated() {
    let mut mesh = SplitMesh::start(None, &[]).await;
    let client = http();
    let register = client
        .post(mesh.facade.http_url("/api/v1/auth/register"))
        .json(&json!({"email": "partner@example.com", "password": "correct horse battery", "display_name": "P", "role": "creator"}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), StatusCode::ACCEPTED);
    let login: Value = client
        .post(mesh.facade.http_url("/api/v1/auth/login"))
        .json(&json!({"email": "partner@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["tokens"]["access_token"].as_str().unwrap();
    let key: Value = client
        .post(mesh.facade.http_url("/api/v1/api-keys"))
        .bearer_auth(token)
        .json(&json!({"name": "pos", "scopes": ["storefront.read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = key["secret"].as_str().unwrap().to_owned();

    tokio::task::block_in_place(|| mesh.identity.kill());

    let storefront = &mesh.storefronts[0];
    let channel = tonic::transport::Endpoint::from_shared(storefront.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut partner = StorefrontServiceClient::new(channel);
    let mut req = Request::new(pb::GetStorefrontRequest {
        username: "nobody_here".into(),
    });
    req.set_timeout(Duration::from_secs(3));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    let status = partner.get_storefront(req).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.get_details_error_info().unwrap().reason, "AUTH_UNAVAILABLE");
    assert!(status.get_details_retry_info().is_some());
    let metrics = metrics_of(storefront).await;
    assert!(
        sample(
            &metrics,
            "rpc_server_call_duration_seconds_count{",
            &["StorefrontService/GetStorefront", "code=\"Unavailable\""]
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

/// A storefront whose reads take `delay`: enough to hold a call in flight.
struct SlowStorefront {
    delay: Duration,
    served: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl StorefrontService for SlowStorefront {
    async fn create_creator(
        &self,
        _: Request<pb::CreateCreatorRequest>,
    ) -> Result<Response<pb::CreateCreatorResponse>, Status> {
        Err(Status::unimplemented("slow test server"))
    }
    async fn get_creator(&self, _: Request<pb::GetCreatorRequest>) -> Result<Response<pb::GetCreatorResponse>, Status> {
        Err(Status::unimplemented("slow test server"))
    }
    async fn update_profile(
        &self,
        _: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::UpdateProfileResponse>, Status> {
        Err(Status::unimplemented("slow test server"))
    }
    async fn create_product(
        &self,
        _: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        Err(Status::unimplemented("slow test server"))
    }
    async fn update_product(
        &self,
        _: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        Err(Status::unimplemented("slow test server"))
    }
    async fn archive_product(
        &self,
        _: Request<pb::ArchiveProductRequest>,
    ) -> Result<Response<pb::ArchiveProductResponse>, Status> {
        Err(Status::unimplemented("slow test server"))
    }
    async fn upload_media(
        &self,
        _: Request<tonic::Streaming<pb::UploadMediaRequest>>,
    ) -> Result<Response<pb::UploadMediaResponse>, Status> {
        Err(Status::unimplemented("slow test server"))
    }
    async fn list_products(
        &self,
        _: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        Err(Status::unimplemented("slow test server"))
    }
    async fn reserve_stock(
        &self,
        _: Request<pb::ReserveStockRequest>,
    ) -> Result<Response<pb::ReserveStockResponse>, Status> {
        Err(Status::unimplemented("slow test server"))
    }
    async fn commit_reservation(
        &self,
        _: Request<pb::CommitReservationRequest>,
    ) -> Result<Response<pb::CommitReservationResponse>, Status> {
        Err(Status::unimplemented("slow test server"))
    }
    async fn release_reservation(
        &self,
        _: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, Status> {
        Err(Status::unimplemented("slow test server"))
    }
    async fn get_storefront(
        &self,
        req: Request<pb::GetStorefrontRequest>,
    ) -> Result<Response<pb::GetStorefrontResponse>, Status> {
        tokio::time::sleep(self.delay).await;
        self.served.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(pb::GetStorefrontResponse {
            creator: Some(pb::Creator {
                username: req.into_inner().username,
                display_name: "Slow".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

/// A slow storefront server behind the platform stack, with at most `limit` calls at once.
struct SlowServer {
    url: String,
    served: Arc<AtomicUsize>,
    health: Health,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn slow_server(keys: &std::path::Path, limit: usize, delay: Duration) -> SlowServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let service = StorefrontServiceServer::new(SlowStorefront {
        delay,
        served: served.clone(),
    });
    let health = Health::new();
    health.serving::<StorefrontServiceServer<SlowStorefront>>().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let policy = AuthPolicy::new(thali_platform::Verifier::load(keys).unwrap());
    let server_health = health.clone();
    let task = tokio::spawn(async move {
        thali_platform::server::serve(
            listener,
            tonic::service::Routes::new(service),
            &server_health,
            policy,
            limit,
            async {
                let _ = stopped.await;
            },
        )
        .await
    });
    SlowServer {
        url,
        served,
        health,
        stop: Some(stop),
        task,
    }
}

fn caller(keys: &std::path::Path) -> ServiceIdentity {
    ServiceIdentity {
        name: "facade".into(),
        signer: Arc::new(thali_platform::Signer::load(keys).unwrap()),
    }
}

fn raw(url: &str, me: &ServiceIdentity) -> StorefrontServiceClient<GrpcChannel> {
    StorefrontServiceClient::new(endpoint_channel(url, "storefront", me, Duration::from_secs(2)).unwrap())
}

fn read(username: &str) -> pb::GetStorefrontRequest {
    pb::GetStorefrontRequest {
        username: username.into(),
    }
}

fn keys() -> std::path::PathBuf {
    let keys = std::env::temp_dir().join(format!("thali-fault-keys-{}", uuid::Uuid::now_v7()));
    thali_platform::auth::ensure_key_pair(&keys).unwrap();
    keys
}

/// e. A server at its concurrency limit sheds the next call with UNAVAILABLE + RetryInfo (503 +
/// Retry-After over REST); with a second replica free, the client stack's retry lands there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_sheds_and_the_retry_lands_on_a_free_replica() {
    let keys = keys();
    let me = caller(&keys);
    let busy = slow_server(&keys, 1, Duration::from_secs(3)).await;
    let free = slow_server(&keys, 1_000, Duration::ZERO).await;

    let holder = tokio::spawn({
        let mut client = raw(&busy.url, &me);
        async move { client.get_storefront(read("held")).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // gRPC: shed, with the reason and when to come back.
    let shed = raw(&busy.url, &me).get_storefront(read("second")).await.unwrap_err();
    assert_eq!(shed.code(), Code::Unavailable);
    assert_eq!(shed.get_details_error_info().unwrap().reason, "OVERLOADED");
    assert_eq!(
        shed.get_details_retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(1))
    );

    // REST: the facade over the busy replica alone answers 503 with Retry-After.
    let data_dir = std::env::temp_dir().join(format!("thali-fault-facade-{}", uuid::Uuid::now_v7()));
    let env: std::collections::HashMap<String, String> = [
        ("THALI_DATA_DIR", data_dir.display().to_string()),
        ("THALI_KEYS_DIR", keys.display().to_string()),
        ("THALI_STOREFRONT_URL", busy.url.clone()),
        ("THALI_IDENTITY_URL", busy.url.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let facade = Proc::start(Part::Facade, &env);
    let res = http()
        .get(facade.http_url("/api/v1/store/second"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);

    // Both replicas behind one target: every call succeeds, the shed ones on the free replica.
    let target = Target::new(
        "storefront",
        &format!("{},{}", busy.url, free.url),
        &me,
        ClientSettings::default(),
    )
    .await
    .unwrap();
    let client = Client::new(target, StorefrontServiceClient::new);
    for i in 0..10 {
        let answer = client
            .call(read(&format!("shop_{i}")), |mut c, r| async move {
                c.get_storefront(r).await
            })
            .await;
        assert!(answer.is_ok(), "{answer:?}");
    }
    assert_eq!(free.served.load(Ordering::SeqCst), 10);
    assert_eq!(
        busy.served.load(Ordering::SeqCst),
        0,
        "the busy replica is still on its first call"
    );
    assert!(holder.await.unwrap().is_ok());
}

/// g. Shutdown during a burst of calls: NOT_SERVING at once, and every call in flight completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_every_call_in_flight_complete() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let keys = keys();
    let me = caller(&keys);
    let mut server = slow_server(&keys, 1_000, Duration::from_millis(800)).await;
    let burst: Vec<_> = (0..20)
        .map(|i| {
            let mut client = raw(&server.url, &me);
            tokio::spawn(async move { client.get_storefront(read(&format!("burst_{i}"))).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.served.load(Ordering::SeqCst), 0, "the burst is in flight");

    // What Platform::shutdown does on SIGTERM: NOT_SERVING, then stop accepting and drain.
    server.health.drain().await;
    let mut health =
        HealthClient::new(endpoint_channel(&server.url, "storefront", &me, Duration::from_secs(2)).unwrap());
    let status = health
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    server.stop.take().unwrap().send(()).unwrap();
    for call in burst {
        let answer = call.await.unwrap();
        assert!(answer.is_ok(), "an in-flight call failed during the drain: {answer:?}");
    }
    assert_eq!(server.served.load(Ordering::SeqCst), 20);
    tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .expect("the server stops once drained")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(server.url.trim_start_matches("http://"))
            .await
            .is_err(),
        "no new connections after the drain"
    );
}

/// g, whole process: requests held inside their handlers (PostgreSQL: the `creators` table is
/// locked, and `pg_stat_activity` shows them waiting) when the drain starts; the drain waits for
/// them, every one completes, and the process stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_drains_requests_in_flight() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let shared = Shared::new(None, &[]).await;
    let Some(database_url) = shared.env.get("THALI_DATABASE_URL").cloned() else {
        eprintln!("PostgreSQL not configured: the whole-process drain test runs in CI");
        return;
    };
    let mut platform = Proc::start(Part::All, &shared.env);
    let base = platform.http_url("");
    let token = shared
        .signer()
        .mint("alice", &["creator".into()], Duration::from_secs(600));
    for i in 0..4 {
        create_creator(&platform, &token, &format!("held_{i}")).await;
    }

    // Hold every read of creators at the database.
    let db = thali_platform::db::connect(&database_url).await.unwrap();
    let lock = db.begin().await.unwrap();
    lock.execute_unprepared("LOCK TABLE creators IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let reads: Vec<_> = (0..4)
        .map(|i| {
            let (url, token) = (format!("{base}/api/v1/creators/held_{i}"), token.clone());
            tokio::spawn(async move { http().get(url).bearer_auth(token).send().await.map(|r| r.status()) })
        })
        .collect();
    let waiting = "SELECT count(*) AS n FROM pg_stat_activity \
                   WHERE wait_event_type = 'Lock' AND datname = current_database()";
    let in_flight_by = Instant::now() + Duration::from_secs(10);
    loop {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), waiting))
            .await
            .unwrap()
            .unwrap();
        if row.try_get::<i64>("", "n").unwrap() >= 4 {
            break;
        }
        assert!(Instant::now() < in_flight_by, "the reads never reached the database");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // SIGTERM's drain, while all four are inside their handlers.
    let drain = tokio::spawn(async move { platform.drain().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!drain.is_finished(), "the drain waits for the requests in flight");
    lock.commit().await.unwrap();
    drain.await.unwrap().expect("a clean drain");
    for read in reads {
        assert_eq!(read.await.unwrap().unwrap(), StatusCode::OK);
    }
    assert!(http().get(format!("{base}/api/v1/store/x")).send().await.is_err());
}
