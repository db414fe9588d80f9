//! The gRPC server stack, assembled in one place and read top to bottom in the order a request
//! meets it: trace extraction → authentication → metrics → the service. Health and reflection
//! (v1 and v1alpha) are added to every server.
mod auth;
mod metrics;
mod trace;

use std::{future::Future, time::Duration};

use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tonic::{server::NamedService, service::Routes, transport::server::TcpIncoming};
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};
use tower::ServiceBuilder;

pub use auth::{ApiKeyResolver, AuthLayer, AuthPolicy, ServiceCaller, USER_TOKEN_HEADER, principal};
pub use metrics::MetricsLayer;
pub use trace::TraceLayer;

/// The health service of one process, and the handle that changes what it answers.
pub struct Health {
    pub reporter: HealthReporter,
}

impl Health {
    /// A health service where nothing is SERVING until a watcher says so.
    pub fn new() -> Self {
        Self {
            reporter: HealthReporter::new(),
        }
    }

    /// Pings `db` every `interval` and answers SERVING for `S` (and for the whole server, "")
    /// only while it answers. Runs until the process ends.
    pub fn watch_database<S: NamedService>(
        &self,
        db: DatabaseConnection,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let reporter = self.reporter.clone();
        tokio::spawn(async move {
            let mut last: Option<bool> = None;
            loop {
                let up = tokio::time::timeout(interval.max(Duration::from_secs(1)), db.ping())
                    .await
                    .is_ok_and(|r| r.is_ok());
                if last != Some(up) {
                    let status = if up {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    reporter.set_service_status(S::NAME, status).await;
                    reporter.set_service_status("", status).await;
                    if up {
                        tracing::info!(service = S::NAME, "database answers: SERVING");
                    } else {
                        tracing::warn!(service = S::NAME, "database does not answer: NOT_SERVING");
                    }
                    last = Some(up);
                }
                tokio::time::sleep(interval).await;
            }
        })
    }
}

impl Health {
    /// Reports `name` SERVING while `probe` says up (every `interval`), for dependencies that
    /// degrade the service without stopping it (e.g. the cache's Redis: `grpc.health.v1` check of
    /// service "redis").
    pub fn watch_dependency(
        &self,
        name: &'static str,
        interval: Duration,
        probe: impl Fn() -> bool + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let reporter = self.reporter.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let up = probe();
                if last != Some(up) {
                    let status = if up {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    reporter.set_service_status(name, status).await;
                    if up {
                        tracing::info!(dependency = name, "dependency answers");
                    } else {
                        tracing::warn!(dependency = name, "dependency does not answer; degraded");
                    }
                    last = Some(up);
                }
                tokio::time::sleep(interval).await;
            }
        })
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `routes` plus health and reflection on `listener`, behind the platform stack, until
/// `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    health: Health,
    policy: AuthPolicy,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let stack = ServiceBuilder::new()
        .layer(TraceLayer)
        .layer(AuthLayer::new(policy))
        .layer(MetricsLayer)
        .into_inner();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(thali_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(thali_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");
    let health = HealthServer::new(HealthService::from_health_reporter(health.reporter));
    let all = routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    tonic::transport::Server::builder()
        .layer(stack)
        .add_routes(all)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
}
