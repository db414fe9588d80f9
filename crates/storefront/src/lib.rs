//! Storefront service: creators, their profiles and products, the cached public storefront, and
//! stock held for orders while they are paid for.
#![forbid(unsafe_code)]

pub mod domain;
pub mod grpc;
pub mod store;
pub mod workers;

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use thali_platform::cache::{CacheSettings, Redis, TwoLevelCache};
use thali_proto::storefront::v1::storefront_service_server::StorefrontServiceServer;

/// Scope a partner API key needs for each storefront method.
pub const API_KEY_SCOPES: &[(&str, &str)] = &[
    ("/thali.storefront.v1.StorefrontService/GetCreator", "storefront.read"),
    ("/thali.storefront.v1.StorefrontService/ListProducts", "storefront.read"),
    (
        "/thali.storefront.v1.StorefrontService/GetStorefront",
        "storefront.read",
    ),
    (
        "/thali.storefront.v1.StorefrontService/CreateCreator",
        "storefront.write",
    ),
    (
        "/thali.storefront.v1.StorefrontService/UpdateProfile",
        "storefront.write",
    ),
    (
        "/thali.storefront.v1.StorefrontService/CreateProduct",
        "storefront.write",
    ),
    ("/thali.storefront.v1.StorefrontService/UploadMedia", "storefront.write"),
    (
        "/thali.storefront.v1.StorefrontService/UpdateProduct",
        "storefront.write",
    ),
    (
        "/thali.storefront.v1.StorefrontService/ArchiveProduct",
        "storefront.write",
    ),
    // ReserveStock, CommitReservation and ReleaseReservation take no API key: Thali services only.
];

/// The storefront cache policy: entries fresh 60 s (`store:{username}`), L1 copies 5 s when
/// Redis is there, stale copies served up to 5 minutes when the database is down.
pub fn cache_settings() -> CacheSettings {
    CacheSettings {
        name: "storefront",
        ttl: Duration::from_secs(60),
        l1_ttl: Duration::from_secs(5),
        stale_for: Duration::from_secs(300),
        l1_max_bytes: 64 * 1024 * 1024,
        load_timeout: Duration::from_secs(2),
    }
}

/// How many of the most-read storefronts are loaded before the service reports SERVING.
pub const WARM_TOP: u64 = 200;

/// The storefront service: its gRPC handlers, cache and read counter.
pub struct Storefront {
    grpc: Arc<grpc::StorefrontGrpc>,
    store: store::StorefrontStore,
    reads: Arc<workers::ReadCounter>,
}

impl Storefront {
    /// The service over `db`, caching in-process and, when given, in Redis.
    pub async fn new(db: DatabaseConnection, redis: Option<Redis>, tenant: &str) -> Self {
        Self::with_settings(db, redis, tenant, cache_settings()).await
    }

    /// The service with another cache policy (tests use short lifetimes).
    pub async fn with_settings(
        db: DatabaseConnection,
        redis: Option<Redis>,
        tenant: &str,
        settings: CacheSettings,
    ) -> Self {
        let cache = TwoLevelCache::new(settings, redis).await;
        Self::with_cache(db, cache, tenant)
    }

    /// The service over `db` with a cache built by the caller (tests).
    pub fn with_cache(db: DatabaseConnection, cache: Arc<TwoLevelCache>, tenant: &str) -> Self {
        Self::with_store(store::StorefrontStore::new(db), cache, tenant)
    }

    /// The service over a store built by the caller (tests give it a queue on a manual clock).
    pub fn with_store(store: store::StorefrontStore, cache: Arc<TwoLevelCache>, tenant: &str) -> Self {
        let reads = Arc::new(workers::ReadCounter::default());
        let grpc = Arc::new(grpc::StorefrontGrpc::new(
            store.clone(),
            cache,
            tenant.to_owned(),
            reads.clone(),
        ));
        Self { grpc, store, reads }
    }

    /// Loads the most-read storefronts into the cache; call before reporting SERVING. Returns
    /// how many were loaded.
    pub async fn warm(&self) -> usize {
        let names = match self.store.most_read(WARM_TOP).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "cache warming skipped");
                return 0;
            }
        };
        let mut loaded = 0;
        for name in names {
            if self.grpc.cached_storefront(&name).await.is_ok() {
                loaded += 1;
            }
        }
        tracing::info!(loaded, "storefront cache warmed");
        loaded
    }

    /// Starts the background flush of read counts.
    pub fn spawn_workers(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        workers::spawn_read_flush(self.store.clone(), self.reads.clone(), every)
    }

    /// The service's job worker on `queue` (housekeeping), ready to spawn.
    pub fn job_worker(&self, queue: thali_platform::jobs::Queue) -> thali_platform::jobs::Worker {
        workers::job_worker(self.store.clone(), self.grpc.clone(), queue)
    }

    /// Flushes the read counts now (tests, shutdown).
    pub async fn flush_reads(&self) -> Result<(), domain::StorefrontError> {
        self.store.record_reads(&self.reads.drain()).await
    }

    /// Storefront cache keys dropped from now on (for the facade's response cache).
    pub fn invalidations(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.grpc.invalidations()
    }

    /// A probe of the cache's Redis for health reporting (true without Redis).
    pub fn redis_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let grpc = self.grpc.clone();
        move || grpc.redis_up().unwrap_or(true)
    }

    /// The gRPC service, ready to add to a server.
    pub fn server(&self) -> StorefrontServiceServer<grpc::StorefrontGrpc> {
        StorefrontServiceServer::from_arc(self.grpc.clone())
    }

    /// Takes uploads into `objects` (ADR 0033), at most `max_upload_bytes` each. Called before
    /// the service is shared.
    pub fn with_media(
        mut self,
        objects: Arc<dyn thali_platform::objects::ObjectStore>,
        max_upload_bytes: usize,
    ) -> Self {
        Arc::get_mut(&mut self.grpc)
            .expect("media is set before the service is shared")
            .with_media(grpc::Media {
                objects,
                max_upload_bytes,
            });
        self
    }

    /// The service's event subscriber (erased accounts' stores).
    pub fn sink(&self) -> Arc<dyn thali_platform::events::Sink> {
        self.grpc.clone()
    }

    /// What storefront holds about an account, for its owner's export (ADR 0032).
    pub fn personal_data(&self) -> Arc<dyn thali_platform::privacy::PersonalData> {
        Arc::new(self.store.clone())
    }
}

#[tonic::async_trait]
impl thali_platform::privacy::PersonalData for store::StorefrontStore {
    async fn export(&self, account: uuid::Uuid) -> Result<serde_json::Value, sea_orm::DbErr> {
        self.personal_data(account).await
    }
}
