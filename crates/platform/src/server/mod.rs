//! The gRPC server stack, assembled in one place and read top to bottom in the order a request
//! meets it: metrics (every call counted, refused ones too) → trace extraction → the caller's
//! deadline kept for outgoing calls → global concurrency limit with load shedding →
//! authentication → the service. Health and reflection (v1 and v1alpha) are added to every
//! server.
mod auth;
mod deadline;
mod metrics;
mod shed;
mod trace;

use std::future::Future;

use tokio::net::TcpListener;
use tonic::{service::Routes, transport::server::TcpIncoming};
use tonic_health::{pb::health_server::HealthServer, server::HealthService};
use tower::ServiceBuilder;

pub use crate::health::Health;
pub use auth::{
    ApiKeyResolver, AuthLayer, AuthPolicy, GrpcLimits, ServiceCaller, USER_TOKEN_HEADER, addressed_elsewhere, principal,
};
pub use deadline::DeadlineScopeLayer;
pub use metrics::MetricsLayer;
pub use shed::ShedLayer;
pub use trace::TraceLayer;

/// Serves `routes` plus health and reflection on `listener`, behind the platform stack, with at
/// most `max_concurrent_rpcs` calls in progress, until `shutdown` completes; then stops
/// accepting and lets the calls in flight finish (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    health: &Health,
    policy: AuthPolicy,
    max_concurrent_rpcs: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    serve_with_tls(listener, None, routes, health, policy, max_concurrent_rpcs, shutdown).await
}

/// [`serve`], over TLS when `tls` is given (see [`crate::tls::server_config`]; ALPN `h2`).
pub async fn serve_with_tls(
    listener: TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    routes: Routes,
    health: &Health,
    policy: AuthPolicy,
    max_concurrent_rpcs: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let stack = ServiceBuilder::new()
        .layer(MetricsLayer)
        .layer(TraceLayer)
        .layer(DeadlineScopeLayer)
        .layer(ShedLayer::new(max_concurrent_rpcs))
        .layer(AuthLayer::new(policy))
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
    let health = HealthServer::new(HealthService::from_health_reporter(health.reporter()));
    let all = routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let server = tonic::transport::Server::builder().layer(stack).add_routes(all);
    match tls {
        None => {
            server
                .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
                .await
        }
        Some(config) => {
            let accepted = crate::tls::spawn_acceptor(listener, config, "grpc");
            let incoming = futures::stream::unfold(accepted, |mut rx| async move {
                let (tls, _peer) = rx.recv().await?;
                Some((Ok::<_, std::io::Error>(tls), rx))
            });
            server.serve_with_incoming_shutdown(incoming, shutdown).await
        }
    }
}
