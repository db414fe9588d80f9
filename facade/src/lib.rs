//! Thali's REST facade: authenticates, takes JSON, calls one gRPC method, maps the answer. No
//! business rule lives here.
#![forbid(unsafe_code)]

pub mod dto;
pub mod middleware;
pub mod openapi;
pub mod problem;
pub mod routes;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, patch, post},
};
use metrics_exporter_prometheus::PrometheusHandle;
use thali_platform::{auth::Verifier, client::GrpcChannel};
use thali_proto::storefront::v1::storefront_service_client::StorefrontServiceClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
};
use utoipa_swagger_ui::SwaggerUi;

use crate::problem::Problem;

/// What every handler shares.
#[derive(Clone)]
pub struct FacadeState {
    pub storefront: StorefrontServiceClient<GrpcChannel>,
    pub storefront_health: HealthClient<GrpcChannel>,
    pub verifier: Verifier,
    pub metrics: PrometheusHandle,
}

impl FacadeState {
    /// State over one channel to the storefront service.
    pub fn new(storefront: GrpcChannel, verifier: Verifier, metrics: PrometheusHandle) -> Self {
        Self {
            storefront: StorefrontServiceClient::new(storefront.clone()),
            storefront_health: HealthClient::new(storefront),
            verifier,
            metrics,
        }
    }
}

/// The whole REST surface, with its middleware, read top to bottom in the order a request
/// meets it: request id → trace + metrics → security headers → body limit → route.
pub fn router(state: FacadeState, max_body_bytes: usize) -> Router {
    let x_request_id = HeaderName::from_static("x-request-id");
    let api = Router::new()
        .route("/api/v1/creators", post(routes::create_creator))
        .route(
            "/api/v1/creators/{username}",
            get(routes::get_creator).patch(routes::update_profile),
        )
        .route(
            "/api/v1/creators/{username}/products",
            post(routes::create_product).get(routes::list_products),
        )
        .route("/api/v1/products/{id}", patch(routes::update_product))
        .route("/api/v1/products/{id}/archive", post(routes::archive_product))
        .route("/api/v1/store/{username}", get(routes::get_storefront))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .merge(SwaggerUi::new("/docs").url("/api/v1/openapi.json", openapi::document()))
        .route_layer(axum::middleware::from_fn(middleware::tag_route));
    api.fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(axum::middleware::from_fn(middleware::observe))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
}

async fn not_found() -> Problem {
    Problem::not_found("no such route")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "this route does not take that method",
    )
}

/// The process is alive.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// The services behind the facade answer SERVING.
async fn readyz(State(state): State<FacadeState>) -> Response {
    let check = HealthCheckRequest {
        service: "thali.storefront.v1.StorefrontService".into(),
    };
    match state.storefront_health.clone().check(check).await {
        Ok(res) if res.get_ref().status == ServingStatus::Serving as i32 => {
            Json(serde_json::json!({ "status": "ready", "storefront": "SERVING" })).into_response()
        }
        Ok(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT_READY",
            "storefront is not serving",
        )
        .into_response(),
        Err(status) => {
            tracing::warn!(error = %status, "readiness: storefront health check failed");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "NOT_READY",
                "storefront does not answer",
            )
            .into_response()
        }
    }
}

/// Prometheus text exposition.
async fn metrics(State(state): State<FacadeState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
        .into_response()
}
