//! A storefront service behind the platform server stack on an ephemeral port, and helpers.
#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::{
    auth::{Signer, Verifier, ensure_key_pair},
    cache::Redis,
    client::{GrpcChannel, ServiceIdentity, endpoint_channel},
    server::{AuthPolicy, Health, serve},
    testing,
};
use thali_proto::{
    common::v1::Money,
    storefront::v1::{
        self as pb, storefront_service_client::StorefrontServiceClient,
        storefront_service_server::StorefrontServiceServer,
    },
};
use thali_storefront::{Storefront, grpc::StorefrontGrpc};
use tokio::sync::oneshot;
use tonic::{Request, service::Routes};
use tonic_types::StatusExt;

pub struct Harness {
    pub url: String,
    pub signer: Arc<Signer>,
    pub db: sea_orm::DatabaseConnection,
    pub storefront: Arc<Storefront>,
    _stop: oneshot::Sender<()>,
}

impl Harness {
    /// On a fresh SQLite database, caching in-process only.
    pub async fn start() -> Self {
        let t = testing::sqlite().await;
        Migrator::up(&t.db, None).await.unwrap();
        Self::start_on(t.db, None, &uuid::Uuid::now_v7().simple().to_string()).await
    }

    /// On `db` (already migrated), caching in Redis too when given, under `tenant`.
    pub async fn start_on(db: sea_orm::DatabaseConnection, redis: Option<Redis>, tenant: &str) -> Self {
        Self::start_with(db, redis, tenant, thali_storefront::cache_settings()).await
    }

    /// As [`Harness::start_on`], with a cache policy of the test's own.
    pub async fn start_with(
        db: sea_orm::DatabaseConnection,
        redis: Option<Redis>,
        tenant: &str,
        settings: thali_platform::cache::CacheSettings,
    ) -> Self {
        let keys = std::env::temp_dir().join(format!("thali-grpc-keys-{}", uuid::Uuid::now_v7()));
        ensure_key_pair(&keys).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let health = Health::new();
        let probe = db.clone();
        health.watch_dependency("database", Duration::from_millis(50), move || {
            let db = probe.clone();
            async move { db.ping().await.is_ok() }
        });
        health.serving::<StorefrontServiceServer<StorefrontGrpc>>().await;
        let storefront = Arc::new(Storefront::with_settings(db.clone(), redis, tenant, settings).await);
        let routes = Routes::new(storefront.server());
        let (stop, stopped) = oneshot::channel::<()>();
        let verifier = Verifier::load(&keys).unwrap();
        tokio::spawn(async move {
            serve(listener, routes, &health, AuthPolicy::new(verifier), 1_000, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            url,
            signer: Arc::new(Signer::load(&keys).unwrap()),
            db,
            storefront,
            _stop: stop,
        }
    }

    /// One endpoint's channel with a service token, as another Thali service (here: a test)
    /// would call this server.
    pub fn channel(&self) -> GrpcChannel {
        let me = ServiceIdentity {
            name: "test".into(),
            signer: self.signer.clone(),
        };
        endpoint_channel(&self.url, "storefront", &me, Duration::from_secs(2)).unwrap()
    }

    pub fn client(&self) -> StorefrontServiceClient<GrpcChannel> {
        StorefrontServiceClient::new(self.channel())
    }

    pub fn token(&self, subject: &str) -> String {
        self.signer.mint(subject, &["creator".into()], Duration::from_secs(600))
    }

    pub fn buyer_token(&self, subject: &str) -> String {
        self.signer.mint(subject, &["buyer".into()], Duration::from_secs(600))
    }
}

pub fn as_user<T>(token: &str, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

pub fn inr(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: "INR".into(),
    })
}

pub fn new_creator(username: &str) -> pb::CreateCreatorRequest {
    pb::CreateCreatorRequest {
        username: username.into(),
        display_name: "Chai Point".into(),
        bio: "Tea".into(),
        idempotency_key: String::new(),
    }
}

pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

pub fn reason(status: &tonic::Status) -> String {
    status.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}
