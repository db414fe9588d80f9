//! Starting Thali: the whole platform in one process (`all`), or one part per process. In `all`
//! mode the facade still reaches the storefront over real gRPC on loopback, so every layer runs
//! in both modes.
#![forbid(unsafe_code)]

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use axum::{Router, routing::get};
use sea_orm::DatabaseConnection;
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::{
    Config,
    auth::{Verifier, ensure_key_pair},
    server::Health,
};
use thali_proto::storefront::v1::storefront_service_server::StorefrontServiceServer;
use thali_storefront::grpc::StorefrontGrpc;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

/// Which part of the platform a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Every service and the facade, embedded defaults (SQLite, generated keys).
    All,
    /// The storefront gRPC service (plus /metrics and /healthz on the HTTP address).
    Storefront,
    /// The REST facade.
    Facade,
}

/// A running platform: where it listens and how to stop it.
pub struct Platform {
    /// REST facade (or, for `storefront`, the metrics/health endpoint).
    pub http_addr: Option<SocketAddr>,
    /// gRPC services.
    pub grpc_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Platform {
    /// Asks every server to stop and waits for them.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        while let Some(done) = self.tasks.join_next().await {
            done??;
        }
        Ok(())
    }

    /// Waits until a server stops on its own (an error) or `signal` completes, then shuts down.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            _ = signal => {}
            Some(done) = self.tasks.join_next() => {
                done??;
                anyhow::bail!("a server stopped unexpectedly");
            }
        }
        self.shutdown().await
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Connects to the database and applies pending migrations, printing each one.
pub async fn migrate(cfg: &Config) -> anyhow::Result<DatabaseConnection> {
    let db = thali_platform::db::connect(&cfg.database_url())
        .await
        .context("connecting to the database")?;
    let pending = Migrator::get_pending_migrations(&db).await?;
    let total = pending.len();
    for (i, migration) in pending.iter().enumerate() {
        eprintln!("migrate [{}/{total}] {} …", i + 1, migration.name());
        Migrator::up(&db, Some(1))
            .await
            .with_context(|| format!("applying {}", migration.name()))?;
    }
    if total > 0 {
        eprintln!("migrate: {total} migration(s) applied");
    }
    Ok(db)
}

/// Starts `part` with `cfg`. Listens on the configured addresses (port 0 picks a free port).
pub async fn start(cfg: &Config, part: Part) -> anyhow::Result<Platform> {
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let keys_dir = cfg.keys_dir();
    if part == Part::All {
        ensure_key_pair(&keys_dir).context("creating the JWT key pair")?;
    }
    let verifier =
        Verifier::load(&keys_dir).with_context(|| format!("loading JWT public keys from {}", keys_dir.display()))?;
    let metrics = thali_platform::telemetry::metrics_handle();

    let mut grpc_addr = None;
    if matches!(part, Part::All | Part::Storefront) {
        let db = if part == Part::All {
            migrate(cfg).await?
        } else {
            let db = thali_platform::db::connect(&cfg.database_url())
                .await
                .context("connecting to the database")?;
            let pending = Migrator::get_pending_migrations(&db).await?;
            anyhow::ensure!(
                pending.is_empty(),
                "{} migration(s) pending: run `thali migrate` first",
                pending.len()
            );
            db
        };
        let listener = TcpListener::bind(cfg.grpc_addr)
            .await
            .with_context(|| format!("binding {}", cfg.grpc_addr))?;
        grpc_addr = Some(listener.local_addr()?);
        let health = Health::new();
        health.watch_database::<StorefrontServiceServer<StorefrontGrpc>>(db.clone(), Duration::from_secs(2));
        let routes = tonic::service::Routes::new(thali_storefront::service(db));
        let verifier = verifier.clone();
        let shutdown = stopped(stop_rx.clone());
        tasks.spawn(async move {
            thali_platform::server::serve(listener, routes, health, verifier, shutdown)
                .await
                .context("gRPC server")
        });
    }

    let mut http_addr = None;
    let router = match part {
        Part::All | Part::Facade => {
            let target = match (&cfg.storefront_url, grpc_addr) {
                (Some(url), _) => url.clone(),
                (None, Some(addr)) => format!("http://{addr}"),
                (None, None) => format!("http://{}", cfg.grpc_addr),
            };
            let channel = thali_platform::client::channel(&target, cfg.connect_timeout(), cfg.rpc_timeout())
                .with_context(|| format!("storefront_url `{target}`"))?;
            let state = thali_facade::FacadeState::new(channel, verifier, metrics);
            thali_facade::router(state, cfg.max_body_bytes)
        }
        Part::Storefront => ops_router(metrics),
    };
    let listener = TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("binding {}", cfg.http_addr))?;
    http_addr = http_addr.or(Some(listener.local_addr()?));
    let shutdown = stopped(stop_rx);
    tasks.spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("HTTP server")
    });

    Ok(Platform {
        http_addr,
        grpc_addr,
        stop,
        tasks,
    })
}

/// `/metrics` and `/healthz` for a process that serves no REST API.
fn ops_router(metrics: metrics_exporter_prometheus::PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/metrics", get(move || async move { metrics.render() }))
}
