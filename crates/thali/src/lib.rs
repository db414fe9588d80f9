//! Starting Thali: the whole platform in one process (`all`), or one part per process. In `all`
//! mode the facade still reaches the storefront over real gRPC on loopback, so every layer runs
//! in both modes. Every process also serves its admin listener (`/metrics`, `/healthz`,
//! `/readyz`) and drains on shutdown: NOT_SERVING, no new connections, in-flight calls finish
//! within the grace period.
#![forbid(unsafe_code)]

pub mod dev_certs;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, routing::get};
use sea_orm::DatabaseConnection;
use thali_identity::grpc::IdentityGrpc;
use thali_migrations::{Migrator, MigratorTrait};
use thali_notifications::mail::Mailer;
use thali_platform::{
    Config,
    api_keys::IdentityApiKeys,
    auth::{Signer, Verifier, ensure_key_pair},
    cache::Redis,
    client::{ServiceIdentity, Target},
    events::{Sinks, Subscribers},
    health::Health,
    jobs::Queue,
    server::AuthPolicy,
};
use thali_proto::{
    booking::v1::booking_service_server::BookingServiceServer,
    identity::v1::identity_service_server::IdentityServiceServer,
    notifications::v1::notification_service_server::NotificationServiceServer,
    payments::v1::payments_service_server::PaymentsServiceServer,
    storefront::v1::storefront_service_server::StorefrontServiceServer,
};
use thali_storefront::grpc::StorefrontGrpc;
use tokio::{sync::watch, task::JoinSet};

/// Which part of the platform a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Every service and the facade, embedded defaults (SQLite, generated keys).
    All,
    /// The identity gRPC service.
    Identity,
    /// The storefront gRPC service.
    Storefront,
    /// The notifications gRPC service (and its event sink).
    Notifications,
    /// The booking gRPC service.
    Booking,
    /// The payments gRPC service (needs THALI_RAZORPAY_URL and the account's key files).
    Payments,
    /// The REST facade.
    Facade,
}

impl Part {
    fn runs_identity(self) -> bool {
        matches!(self, Part::All | Part::Identity)
    }
    fn runs_storefront(self) -> bool {
        matches!(self, Part::All | Part::Storefront)
    }
    fn runs_notifications(self) -> bool {
        matches!(self, Part::All | Part::Notifications)
    }
    fn runs_booking(self) -> bool {
        matches!(self, Part::All | Part::Booking)
    }
    fn runs_payments(self) -> bool {
        matches!(self, Part::All | Part::Payments)
    }
    fn runs_facade(self) -> bool {
        matches!(self, Part::All | Part::Facade)
    }
    /// The name this part signs its service tokens with (and owns its keys under: ADR 0029).
    pub fn service_name(self) -> &'static str {
        match self {
            Part::All => "thali",
            Part::Identity => "identity",
            Part::Storefront => "storefront",
            Part::Notifications => "notifications",
            Part::Booking => "booking",
            Part::Payments => "payments",
            Part::Facade => "facade",
        }
    }
}

/// A running platform: where it listens and how to stop it.
pub struct Platform {
    /// REST facade, when this part runs it.
    pub http_addr: Option<SocketAddr>,
    /// gRPC services.
    pub grpc_addr: Option<SocketAddr>,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin_addr: SocketAddr,
    /// The built-in sandbox gateway, when this process runs it (embedded mode).
    pub sandbox_addr: Option<SocketAddr>,
    health: Health,
    grace: Duration,
    /// Stops the public HTTP server, then (`grpc_stop`) the gRPC server: a facade request in
    /// flight may still need this process's own services.
    stop: watch::Sender<bool>,
    grpc_stop: watch::Sender<bool>,
    tasks: JoinSet<anyhow::Result<()>>,
    grpc_tasks: JoinSet<anyhow::Result<()>>,
    admin_stop: watch::Sender<bool>,
    admin: tokio::task::JoinHandle<anyhow::Result<()>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
    /// Stops the job workers, after the servers: a call in flight may enqueue.
    jobs_stop: watch::Sender<bool>,
    job_workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Platform {
    /// Drains and stops: reports NOT_SERVING (and `/readyz` 503), stops accepting connections,
    /// lets the calls in flight finish for up to the grace period (then cuts them), and stops
    /// the admin listener last.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.health.drain().await;
        tracing::info!(
            grace_s = self.grace.as_secs(),
            "draining: no new calls; in-flight calls finish"
        );
        let (stop, grpc_stop) = (&self.stop, &self.grpc_stop);
        let (tasks, grpc_tasks) = (&mut self.tasks, &mut self.grpc_tasks);
        let drained = tokio::time::timeout(self.grace, async {
            let _ = stop.send(true);
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            let _ = grpc_stop.send(true);
            while let Some(done) = grpc_tasks.join_next().await {
                done??;
            }
            anyhow::Ok(())
        })
        .await;
        let result = match drained {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!("calls still in flight at the end of the grace period; stopping them");
                self.tasks.abort_all();
                self.grpc_tasks.abort_all();
                Ok(())
            }
        };
        // Job workers finish what they run (their own drain bound); what is cut off runs again
        // when its lease ends.
        let _ = self.jobs_stop.send(true);
        for worker in self.job_workers.drain(..) {
            let _ = worker.await;
        }
        for watcher in &self.watchers {
            watcher.abort();
        }
        let _ = self.admin_stop.send(true);
        let _ = (&mut self.admin).await;
        result
    }

    /// This process's health (readiness and dependencies).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Waits until a server stops on its own (an error) or `signal` completes, then shuts down.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            _ = signal => {}
            Some(done) = self.grpc_tasks.join_next() => {
                done??;
                anyhow::bail!("a server stopped unexpectedly");
            }
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
    let db = thali_platform::db::connect_sized(&cfg.database_url(), cfg.db_max_connections)
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

/// Connects to a database that must already be migrated.
pub async fn migrated(cfg: &Config) -> anyhow::Result<DatabaseConnection> {
    let db = thali_platform::db::connect_sized(&cfg.database_url(), cfg.db_max_connections)
        .await
        .context("connecting to the database")?;
    let pending = Migrator::get_pending_migrations(&db).await?;
    anyhow::ensure!(
        pending.is_empty(),
        "{} migration(s) pending: run `thali migrate` first",
        pending.len()
    );
    Ok(db)
}

/// Starts `part` with `cfg`. Listens on the configured addresses (port 0 picks a free port).
pub async fn start(cfg: &Config, part: Part) -> anyhow::Result<Platform> {
    let (stop, stop_rx) = watch::channel(false);
    let (grpc_stop, grpc_stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut grpc_tasks = JoinSet::new();
    let mut watchers = Vec::new();
    let (jobs_stop, jobs_stop_rx) = watch::channel(false);
    let mut job_workers = Vec::new();
    let health = Health::new();
    let mut client_settings = cfg.client_settings();
    client_settings.tls = cfg.client_tls()?;
    let keys_dir = cfg.keys_dir();
    if part == Part::All {
        ensure_key_pair(&keys_dir).context("creating the JWT key pair")?;
    }
    // Key custody (ADR 0029): one process running every part holds one key; a part alone holds
    // its own keys (identity's sign user tokens, every other part's only its service tokens) and
    // trusts the other parts' public keys from files and identity's open key set.
    let verifier = if part == Part::All {
        Verifier::load(&keys_dir)
    } else {
        Verifier::for_part(
            &keys_dir,
            part.service_name(),
            part.runs_identity(),
            Some(&cfg.trusted_keys_dir()),
        )
    }
    .with_context(|| format!("loading JWT public keys from {}", keys_dir.display()))?;
    let signer = Arc::new(
        Signer::load(&keys_dir).with_context(|| format!("loading the signing key from {}", keys_dir.display()))?,
    );
    watchers.push(thali_platform::auth::spawn_refresh(
        signer.clone(),
        verifier.clone(),
        cfg.keys_refresh(),
    ));
    let identity = ServiceIdentity {
        name: part.service_name().to_owned(),
        signer: signer.clone(),
    };
    let metrics = thali_platform::telemetry::metrics_handle();

    // Rate limits (ADR 0026): one limiter per process for the facade's and the gRPC server's
    // budgets (their keys are policy-named), shared across replicas through Redis if there is one.
    let limiter = thali_platform::ratelimit::RateLimiter::new(
        &cfg.tenant,
        match &cfg.redis_url {
            Some(url) => Some(Redis::connect(url.expose()).await.context("redis_url")?),
            None => None,
        },
    );

    // gRPC: every service this part runs, on one server.
    let mut grpc_addr = None;
    // Whether this process already follows identity's revocations (one feed per process).
    let mut revocation_feed = false;
    let mut storefront_invalidations = None;
    let mut sandbox_addr = None;
    // The embedded sandbox and the platform account's key id: its webhooks go to this
    // process's facade once it listens.
    let mut embedded_sandbox: Option<(thali_payments::sandbox::Sandbox, String)> = None;
    if part.runs_identity()
        || part.runs_storefront()
        || part.runs_notifications()
        || part.runs_booking()
        || part.runs_payments()
    {
        let db = if part == Part::All {
            migrate(cfg).await?
        } else {
            migrated(cfg).await?
        };
        cfg.check_plaintext("gRPC", cfg.grpc_addr)?;
        let listener =
            thali_platform::net::bind(cfg.grpc_addr).with_context(|| format!("binding {}", cfg.grpc_addr))?;
        let own = listener.local_addr()?;
        grpc_addr = Some(own);
        let identity_url = cfg.identity_url.clone().unwrap_or_else(|| cfg.own_grpc_url(own));
        let identity_target = Target::new("identity", &identity_url, &identity, client_settings.clone()).await?;
        if !part.runs_identity() {
            let target = identity_target.clone();
            watchers.push(health.watch_flag("identity", HEALTH_INTERVAL, move || target.is_up()));
        }
        let scopes: Vec<(&str, &str)> = thali_storefront::API_KEY_SCOPES
            .iter()
            .chain(thali_identity::API_KEY_SCOPES)
            .chain(thali_booking::API_KEY_SCOPES)
            .copied()
            .collect();
        // Revoked sessions and accounts, read from identity every second (ADR 0027).
        watchers.push(thali_platform::revocations::spawn_feed(
            verifier.revocations(),
            identity_target.clone(),
            thali_platform::revocations::POLL_EVERY,
        ));
        revocation_feed = true;
        if !part.runs_identity() {
            verifier.follow_identity(thali_platform::revocations::identity_key_set(identity_target.clone()));
        }
        // Partner API keys and accounts calling directly are rate limited here (ADR 0026).
        let quota = |spec: &str| thali_platform::ratelimit::Quota::parse(spec).expect("validated at load");
        let policy = AuthPolicy::new(verifier.clone())
            .with_api_keys(Arc::new(IdentityApiKeys::new(identity_target)), &scopes)
            .with_limits(thali_platform::server::GrpcLimits {
                limiter: limiter.clone(),
                api_key: quota(&cfg.rate_limit_api_key),
                signed_in: quota(&cfg.rate_limit_signed_in),
            });

        let probe_db = db.clone();
        watchers.push(health.watch_dependency("database", HEALTH_INTERVAL, move || {
            let db = probe_db.clone();
            async move {
                let up = db.ping().await.is_ok();
                thali_platform::db::record_pool(&db);
                up
            }
        }));
        let subscribers = subscribers(cfg, part, own, &identity, &client_settings).await?;
        let mut routes = tonic::service::RoutesBuilder::default();
        // The subscribers this process hosts behind its one EventSink.
        let mut sinks = Sinks::default();
        // The services whose personal data this process exports (ADR 0032).
        let mut exporters = thali_platform::privacy::Exporters::default();
        if part.runs_identity() {
            let worker = thali_identity::workers::worker(
                thali_identity::store::IdentityStore::new(db.clone()),
                Queue::new(thali_identity::workers::SERVICE),
            );
            let worker = thali_platform::events::relay(worker, subscribers.clone());
            job_workers.push(worker.spawn(jobs_stop_rx.clone()));
            // Identity's audit chain: one writer appends what its transactions recorded (ADR 0031).
            job_workers.push(thali_platform::audit_log::spawn_writer(
                db.clone(),
                thali_identity::workers::SERVICE,
                signer.clone(),
                AUDIT_APPEND_EVERY,
                jobs_stop_rx.clone(),
            ));
            exporters = exporters.with(
                thali_identity::workers::SERVICE,
                thali_identity::personal_data(db.clone()),
            );
            routes.add_service(thali_identity::service(db.clone(), signer.clone()));
            health.serving::<IdentityServiceServer<IdentityGrpc>>().await;
        }
        if part.runs_storefront() {
            let redis = match &cfg.redis_url {
                Some(url) => Some(Redis::connect(url.expose()).await.context("redis_url")?),
                None => None,
            };
            let storefront = thali_storefront::Storefront::new(db.clone(), redis, &cfg.tenant)
                .await
                .with_media(media_store(cfg)?, cfg.max_upload_bytes);
            // The most-read storefronts are in the cache before the service says SERVING.
            storefront.warm().await;
            storefront_invalidations = Some(storefront.invalidations());
            watchers.push(storefront.spawn_workers(Duration::from_secs(30)));
            let worker = storefront.job_worker(Queue::new(thali_storefront::workers::SERVICE));
            let worker = thali_platform::events::relay(worker, subscribers.clone());
            job_workers.push(worker.spawn(jobs_stop_rx.clone()));
            if cfg.redis_url.is_some() {
                watchers.push(health.watch_flag("redis", HEALTH_INTERVAL, storefront.redis_probe()));
            }
            sinks = sinks.with(thali_storefront::workers::SERVICE, storefront.sink());
            exporters = exporters.with(thali_storefront::workers::SERVICE, storefront.personal_data());
            routes.add_service(storefront.server());
            health.serving::<StorefrontServiceServer<StorefrontGrpc>>().await;
        }
        if part.runs_booking() {
            let redis = match &cfg.redis_url {
                Some(url) => Some(Redis::connect(url.expose()).await.context("redis_url")?),
                None => None,
            };
            // Deposits are asked of payments (this process's own address when unset).
            let payments_url = cfg.payments_url.clone().unwrap_or_else(|| cfg.own_grpc_url(own));
            let payments = Target::new("payments", &payments_url, &identity, client_settings.clone()).await?;
            let booking = thali_booking::Booking::new(db.clone(), redis, &cfg.tenant, Some(payments)).await;
            sinks = sinks.with(thali_booking::workers::SERVICE, booking.sink());
            exporters = exporters.with(thali_booking::workers::SERVICE, booking.personal_data());
            let worker = booking.job_worker(Queue::new(thali_booking::workers::SERVICE));
            let worker = thali_platform::events::relay(worker, subscribers.clone());
            job_workers.push(worker.spawn(jobs_stop_rx.clone()));
            job_workers.push(thali_platform::audit_log::spawn_writer(
                db.clone(),
                thali_booking::workers::SERVICE,
                signer.clone(),
                AUDIT_APPEND_EVERY,
                jobs_stop_rx.clone(),
            ));
            if cfg.redis_url.is_some() && !part.runs_storefront() {
                watchers.push(health.watch_flag("redis", HEALTH_INTERVAL, booking.redis_probe()));
            }
            routes.add_service(booking.server());
            health
                .serving::<BookingServiceServer<thali_booking::grpc::BookingGrpc>>()
                .await;
        }
        if part.runs_payments() {
            let (gateway, account, sandbox) = payments_gateway(cfg, part).await?;
            if let Some((sandbox, listener)) = sandbox {
                sandbox_addr = Some(listener.local_addr()?);
                embedded_sandbox = Some((sandbox.clone(), account.credentials.key_id.clone()));
                let shutdown = stopped(grpc_stop_rx.clone());
                grpc_tasks.spawn(async move { sandbox.serve(listener, shutdown).await.context("sandbox gateway") });
            }
            let storefront_url = cfg.storefront_url.clone().unwrap_or_else(|| cfg.own_grpc_url(own));
            let storefront = Target::new("storefront", &storefront_url, &identity, client_settings.clone()).await?;
            if !part.runs_storefront() {
                let target = storefront.clone();
                watchers.push(health.watch_flag("storefront", HEALTH_INTERVAL, move || target.is_up()));
            }
            // Creators' gateway secrets are encrypted with these (ADR 0015).
            let data_keys = cfg.data_keys_file();
            let keys = thali_platform::crypto::Keyring::open(&data_keys)
                .with_context(|| format!("data keys ({})", data_keys.display()))?;
            let payments = thali_payments::Payments::new(db.clone(), storefront, gateway, account, Arc::new(keys))
                .limit_webhooks(thali_payments::grpc::WebhookLimit {
                    limiter: limiter.clone(),
                    quota: quota(&cfg.rate_limit_webhook),
                });
            sinks = sinks.with(thali_payments::workers::SERVICE, payments.sink());
            exporters = exporters.with(thali_payments::workers::SERVICE, payments.personal_data());
            let worker = payments.job_worker(Queue::new(thali_payments::workers::SERVICE));
            let worker = thali_platform::events::relay(worker, subscribers.clone());
            job_workers.push(worker.spawn(jobs_stop_rx.clone()));
            job_workers.push(thali_platform::audit_log::spawn_writer(
                db.clone(),
                thali_payments::workers::SERVICE,
                signer.clone(),
                AUDIT_APPEND_EVERY,
                jobs_stop_rx.clone(),
            ));
            routes.add_service(payments.server());
            health
                .serving::<PaymentsServiceServer<thali_payments::grpc::PaymentsGrpc>>()
                .await;
        }
        if part.runs_notifications() {
            let mailer = match &cfg.smtp_url {
                Some(url) => Mailer::smtp(
                    url,
                    cfg.smtp_password_file.as_deref(),
                    &cfg.mail_from,
                    cfg.mail_timeout(),
                ),
                None => Mailer::files(cfg.mail_dir(), &cfg.mail_from),
            }
            .context("mail settings")?;
            tracing::info!(mail = %mailer.describe(), "notifications: where mail goes");
            if cfg.webhooks_allow_insecure {
                tracing::warn!(
                    "THALI_WEBHOOKS_ALLOW_INSECURE=true: webhook endpoints may be http:// and private or \
                     loopback addresses; never in production"
                );
            }
            let webhooks = thali_notifications::webhooks::Sender::new(WEBHOOK_TIMEOUT, cfg.webhooks_allow_insecure);
            let notifications = thali_notifications::Notifications::new(db.clone(), mailer, webhooks, &cfg.app_url)
                .context("notification templates")?;
            sinks = sinks.with(thali_notifications::workers::SERVICE, notifications.sink());
            exporters = exporters.with(thali_notifications::workers::SERVICE, notifications.personal_data());
            job_workers.push(
                notifications
                    .job_worker(Queue::new(thali_notifications::workers::SERVICE))
                    .spawn(jobs_stop_rx.clone()),
            );
            routes.add_service(notifications.server());
            health
                .serving::<NotificationServiceServer<thali_notifications::grpc::NotificationsGrpc>>()
                .await;
        }
        if !sinks.is_empty() {
            routes.add_service(sinks.server());
        }
        if !exporters.is_empty() {
            routes.add_service(thali_platform::privacy::grpc::server(exporters));
        }
        // The audit chains this process keeps, for admins (ADR 0031).
        let chains: Vec<&'static str> = [
            (part.runs_identity(), thali_identity::workers::SERVICE),
            (part.runs_booking(), thali_booking::workers::SERVICE),
            (part.runs_payments(), thali_payments::workers::SERVICE),
        ]
        .into_iter()
        .filter_map(|(runs, service)| runs.then_some(service))
        .collect();
        if !chains.is_empty() {
            routes.add_service(thali_platform::audit_log::grpc::server(db.clone(), chains));
        }
        let routes = routes.routes();
        let shutdown = stopped(grpc_stop_rx);
        let server_health = health.clone();
        let max_concurrent_rpcs = cfg.max_concurrent_rpcs;
        let grpc_tls = match cfg.tls_files() {
            Some(files) => {
                Some(thali_platform::tls::server_config(&files, &[b"h2"]).context("the gRPC TLS certificate")?)
            }
            None => None,
        };
        grpc_tasks.spawn(async move {
            thali_platform::server::serve_with_tls(
                listener,
                grpc_tls,
                routes,
                &server_health,
                policy,
                max_concurrent_rpcs,
                shutdown,
            )
            .await
            .context("gRPC server")
        });
    }

    // HTTP: the facade.
    let mut http_addr = None;
    if part.runs_facade() {
        let url_of = |configured: &Option<String>| match (configured, grpc_addr) {
            (Some(url), _) => url.clone(),
            (None, Some(addr)) => cfg.own_grpc_url(addr),
            (None, None) => cfg.own_grpc_url(cfg.grpc_addr),
        };
        let storefront_url = url_of(&cfg.storefront_url);
        let identity_url = url_of(&cfg.identity_url);
        let notifications_url = url_of(&cfg.notifications_url);
        let booking_url = url_of(&cfg.booking_url);
        let payments_url = url_of(&cfg.payments_url);
        let storefront = Target::new("storefront", &storefront_url, &identity, client_settings.clone()).await?;
        let identity_service = Target::new("identity", &identity_url, &identity, client_settings.clone()).await?;
        if !revocation_feed {
            watchers.push(thali_platform::revocations::spawn_feed(
                verifier.revocations(),
                identity_service.clone(),
                thali_platform::revocations::POLL_EVERY,
            ));
        }
        if !part.runs_identity() {
            verifier.follow_identity(thali_platform::revocations::identity_key_set(identity_service.clone()));
        }
        let notifications =
            Target::new("notifications", &notifications_url, &identity, client_settings.clone()).await?;
        let booking = Target::new("booking", &booking_url, &identity, client_settings.clone()).await?;
        let payments = Target::new("payments", &payments_url, &identity, client_settings.clone()).await?;
        for (name, target) in [
            ("booking", &booking),
            ("payments", &payments),
            ("storefront", &storefront),
            ("identity", &identity_service),
            ("notifications", &notifications),
        ] {
            let target = target.clone();
            watchers.push(health.watch_flag(name, HEALTH_INTERVAL, move || target.is_up()));
        }
        // The response cache needs the storefront's invalidations: in-process, or through Redis.
        let invalidations = match (storefront_invalidations, &cfg.redis_url) {
            (Some(local), _) => Some(local),
            (None, Some(url)) => {
                let redis = Redis::connect(url.expose()).await.context("redis_url")?;
                let probe = redis.clone();
                watchers.push(health.watch_flag("redis", HEALTH_INTERVAL, move || probe.is_up()));
                Some(thali_platform::cache::invalidation_feed(&redis, "storefront").await)
            }
            (None, None) => None,
        };
        let edge = match invalidations {
            Some(feed) => Some(
                thali_facade::edge::EdgeCache::new(&cfg.tenant, feed, Duration::from_secs(cfg.edge_stale_if_error_s))
                    .await,
            ),
            None => None,
        };
        let state = thali_facade::FacadeState::new(
            thali_facade::Services {
                storefront,
                identity: identity_service,
                notifications,
                booking,
                payments,
            },
            verifier,
            edge,
            thali_facade::limits::EdgeLimits::from_config(cfg, limiter.clone()),
        );
        // The local store's links are served here; an S3-compatible store serves its own.
        let state = match cfg.s3_url {
            Some(_) => state,
            None => state.with_media(local_media(cfg)?),
        };
        let router = thali_facade::router(state, &thali_facade::HttpSettings::from_config(cfg));
        cfg.check_plaintext("HTTP", cfg.http_addr)?;
        let listener =
            thali_platform::net::bind(cfg.http_addr).with_context(|| format!("binding {}", cfg.http_addr))?;
        http_addr = Some(listener.local_addr()?);
        let http_tls = match cfg.tls_files() {
            // Browsers and apps present no certificate: mutual TLS is for the gRPC hops.
            Some(files) => Some(
                thali_platform::tls::server_config(
                    &thali_platform::tls::TlsFiles {
                        client_auth: false,
                        ..files
                    },
                    &[b"h2", b"http/1.1"],
                )
                .context("the facade's TLS certificate")?,
            ),
            None => None,
        };
        if let (Some((sandbox, key_id)), Some(addr)) = (&embedded_sandbox, http_addr) {
            let url = format!("http://{addr}/api/v1/webhooks/razorpay");
            sandbox
                .set_webhook_url(key_id, Some(url.clone()))
                .context("pointing the sandbox's webhooks at the facade")?;
            tracing::info!(%url, "sandbox gateway: webhooks go to the facade");
        }
        let shutdown = stopped(stop_rx);
        let service = router.into_make_service_with_connect_info::<thali_facade::tls::Peer>();
        match http_tls {
            Some(config) => {
                let listener = thali_facade::tls::TlsListener::new(listener, config)?;
                tasks.spawn(async move {
                    axum::serve(listener, service)
                        .with_graceful_shutdown(shutdown)
                        .await
                        .context("HTTPS server")
                });
            }
            None => {
                tasks.spawn(async move {
                    axum::serve(listener, service)
                        .with_graceful_shutdown(shutdown)
                        .await
                        .context("HTTP server")
                });
            }
        }
    }

    // Admin: metrics, liveness with every dependency's state, readiness of this process.
    let (admin_stop, admin_stop_rx) = watch::channel(false);
    let listener =
        thali_platform::net::bind(cfg.admin_addr).with_context(|| format!("binding {} (admin)", cfg.admin_addr))?;
    let admin_addr = listener.local_addr()?;
    let router = admin_router(metrics, health.clone());
    let admin = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stopped(admin_stop_rx))
            .await
            .context("admin server")
    });
    health.set_ready();

    Ok(Platform {
        http_addr,
        grpc_addr,
        admin_addr,
        sandbox_addr,
        health,
        grace: cfg.shutdown_grace(),
        stop,
        grpc_stop,
        tasks,
        grpc_tasks,
        admin_stop,
        admin,
        watchers,
        jobs_stop,
        job_workers,
    })
}

/// The local object store for uploaded media (ADR 0033): a private directory under the data
/// dir, whose signed links the facade serves.
fn local_media(cfg: &Config) -> anyhow::Result<Arc<thali_platform::objects::LocalStore>> {
    let dir = cfg.media_dir();
    let store = thali_platform::objects::LocalStore::open(&dir)
        .with_context(|| format!("opening the media store ({})", dir.display()))?;
    Ok(Arc::new(store))
}

/// Where uploaded media goes: the S3-compatible bucket when `THALI_S3_URL` is set, else the
/// local store.
fn media_store(cfg: &Config) -> anyhow::Result<Arc<dyn thali_platform::objects::ObjectStore>> {
    let store: Arc<dyn thali_platform::objects::ObjectStore> = match &cfg.s3_url {
        Some(url) => {
            let path = cfg
                .s3_secret_access_key_file
                .as_ref()
                .context("s3_secret_access_key_file")?;
            let secret = thali_platform::secret::read_file(path).map_err(|e| anyhow::anyhow!("reading {e}"))?;
            Arc::new(
                thali_platform::objects::S3Store::new(
                    url,
                    cfg.s3_bucket.as_deref().context("s3_bucket")?,
                    &cfg.s3_region,
                    cfg.s3_path_style,
                    cfg.s3_access_key_id.as_deref().context("s3_access_key_id")?,
                    &secret,
                    Duration::from_secs(30),
                )
                .context("the S3-compatible media store")?,
            )
        }
        None => local_media(cfg)?,
    };
    tracing::info!(store = %store.describe(), "storefront: where media goes");
    Ok(store)
}

/// The services that take each event type, reached through the client stack: notifications at
/// `notifications_url` (unset: this process's own gRPC address).
async fn subscribers(
    cfg: &Config,
    part: Part,
    own: SocketAddr,
    identity: &ServiceIdentity,
    settings: &thali_platform::client::ClientSettings,
) -> anyhow::Result<Subscribers> {
    if cfg.notifications_url.is_none() && part != Part::All && part != Part::Notifications {
        tracing::warn!(
            "THALI_NOTIFICATIONS_URL is unset: this process's events go to its own address, where no \
             subscriber takes them (they go dead; set it and retry them)"
        );
    }
    let url = cfg.notifications_url.clone().unwrap_or_else(|| cfg.own_grpc_url(own));
    let target = Target::new(thali_notifications::workers::SERVICE, &url, identity, settings.clone()).await?;
    // Deposits: payments tells booking about deposit orders; booking asks payments for refunds.
    let booking_url = cfg.booking_url.clone().unwrap_or_else(|| cfg.own_grpc_url(own));
    let booking = Target::new(
        thali_booking::workers::SERVICE,
        &booking_url,
        identity,
        settings.clone(),
    )
    .await?;
    let payments_url = cfg.payments_url.clone().unwrap_or_else(|| cfg.own_grpc_url(own));
    let payments = Target::new(
        thali_payments::workers::SERVICE,
        &payments_url,
        identity,
        settings.clone(),
    )
    .await?;
    // Erasure: storefront erases an erased account's stores (ADR 0032).
    let storefront_url = cfg.storefront_url.clone().unwrap_or_else(|| cfg.own_grpc_url(own));
    let storefront = Target::new(
        thali_storefront::workers::SERVICE,
        &storefront_url,
        identity,
        settings.clone(),
    )
    .await?;
    Ok(Subscribers::default()
        .subscribe(
            thali_notifications::workers::SERVICE,
            target,
            thali_notifications::SUBSCRIBES_TO,
        )
        .subscribe(
            thali_booking::workers::SERVICE,
            booking,
            thali_booking::grpc::SUBSCRIBES_TO,
        )
        .subscribe(
            thali_payments::workers::SERVICE,
            payments,
            thali_payments::grpc::SUBSCRIBES_TO,
        )
        .subscribe(
            thali_storefront::workers::SERVICE,
            storefront,
            thali_storefront::grpc::SUBSCRIBES_TO,
        ))
}

/// A listening sandbox gateway, ready to serve.
type EmbeddedSandbox = (thali_payments::sandbox::Sandbox, tokio::net::TcpListener);

/// The gateway payments creates orders at, and the platform account it uses:
///
/// - `THALI_RAZORPAY_URL` set: Razorpay (or any server speaking its API) with the key id and the
///   secrets read from their files;
/// - unset in embedded mode (`all`): the built-in sandbox, started here on `THALI_SANDBOX_ADDR`
///   with its state and the platform account's generated credentials under
///   `<data dir>/sandbox-gateway/`;
/// - unset for `serve payments`: an error (a real deployment names its gateway).
async fn payments_gateway(
    cfg: &Config,
    part: Part,
) -> anyhow::Result<(
    Arc<dyn thali_payments::gateway::Gateway>,
    thali_payments::gateway::PlatformAccount,
    Option<EmbeddedSandbox>,
)> {
    use thali_payments::gateway::{PlatformAccount, RazorpayGateway};
    const CONNECT: Duration = Duration::from_secs(3);
    if let Some(url) = &cfg.razorpay_url {
        let read = |key: &str, path: &Option<std::path::PathBuf>| -> anyhow::Result<String> {
            let path = path
                .as_ref()
                .with_context(|| format!("{key} is required with razorpay_url"))?;
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {key} ({})", path.display()))?;
            let text = text.trim().to_owned();
            anyhow::ensure!(!text.is_empty(), "{key} ({}) is empty", path.display());
            Ok(text)
        };
        let key_id = cfg.razorpay_key_id.clone().context("razorpay_key_id is required")?;
        let secret = read("razorpay_key_secret_file", &cfg.razorpay_key_secret_file)?;
        let webhook_secret = read("razorpay_webhook_secret_file", &cfg.razorpay_webhook_secret_file)?;
        let gateway = RazorpayGateway::new(url, CONNECT, cfg.gateway_timeout()).context("razorpay_url")?;
        let account = PlatformAccount {
            gateway: "razorpay".into(),
            credentials: thali_payments::gateway::Credentials::new(key_id, secret),
            webhook_secret: thali_payments::gateway::KeySecret::new(webhook_secret),
        };
        return Ok((Arc::new(gateway), account, None));
    }
    anyhow::ensure!(
        part == Part::All,
        "THALI_RAZORPAY_URL is not set: `serve payments` needs a gateway (https://api.razorpay.com, or a \
         `thali sandbox-gateway`) with THALI_RAZORPAY_KEY_ID, THALI_RAZORPAY_KEY_SECRET_FILE and \
         THALI_RAZORPAY_WEBHOOK_SECRET_FILE"
    );
    let dir = cfg.sandbox_dir();
    let credentials = sandbox_credentials(&dir)?;
    let sandbox = thali_payments::sandbox::Sandbox::with_state_file(
        thali_payments::sandbox::SandboxOptions::default(),
        dir.join("state.json"),
    )
    .context("starting the sandbox gateway")?;
    sandbox
        .add_account(&credentials.0, &credentials.1, &credentials.2, None)
        .context("registering the platform account with the sandbox gateway")?;
    let listener = thali_platform::net::bind(cfg.sandbox_addr)
        .with_context(|| format!("binding {} (sandbox gateway)", cfg.sandbox_addr))?;
    let url = format!("http://{}", listener.local_addr()?);
    let gateway = RazorpayGateway::new(&url, CONNECT, cfg.gateway_timeout()).context("sandbox gateway URL")?;
    let account = PlatformAccount {
        gateway: "sandbox".into(),
        credentials: thali_payments::gateway::Credentials::new(credentials.0, credentials.1),
        webhook_secret: thali_payments::gateway::KeySecret::new(credentials.2),
    };
    Ok((Arc::new(gateway), account, Some((sandbox, listener))))
}

/// The embedded platform account on the sandbox: key id, key secret and webhook secret, each in a
/// file of its own under `dir` (created 0600 on first start, read afterwards).
fn sandbox_credentials(dir: &std::path::Path) -> anyhow::Result<(String, String, String)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let value = |name: &str, fresh: &dyn Fn() -> String| -> anyhow::Result<String> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
            _ => {
                let text = fresh();
                write_private(&path, &text).with_context(|| format!("writing {}", path.display()))?;
                Ok(text)
            }
        }
    };
    let random = || uuid::Uuid::new_v4().simple().to_string();
    let key_id = value("key_id", &|| format!("rzp_test_{}", &random()[..14]))?;
    let key_secret = value("key_secret", &random)?;
    let webhook_secret = value("webhook_secret", &random)?;
    Ok((key_id, key_secret, webhook_secret))
}

/// Writes a secret readable by this user only.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

/// Longest time one webhook request may take (Standard Webhooks: 15 s).
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(15);

/// How often each dependency is probed.
/// How often a service's audit writer moves pending records into its chain.
const AUDIT_APPEND_EVERY: Duration = Duration::from_millis(500);

const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// The admin listener: `/metrics` (Prometheus), `/healthz` (alive, with each dependency's
/// state), `/readyz` (this process takes traffic: started and not draining; never follows a
/// dependency).
fn admin_router(metrics: metrics_exporter_prometheus::PrometheusHandle, health: Health) -> Router {
    let ready = health.clone();
    Router::new()
        .route("/healthz", get(move || async move { axum::Json(health.report()) }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.is_ready() {
                    (
                        axum::http::StatusCode::OK,
                        axum::Json(serde_json::json!({ "status": "ready" })),
                    )
                } else {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(serde_json::json!({ "status": "draining" })),
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics.render(),
                )
            }),
        )
}
