//! Thali's REST facade: authenticates, takes JSON, calls one gRPC method, maps the answer. No
//! business rule lives here.
#![forbid(unsafe_code)]

pub mod dto;
pub mod edge;
pub mod limits;
pub mod middleware;
pub mod openapi;
pub mod problem;
pub mod routes;
pub mod tls;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{HeaderName, HeaderValue, StatusCode, header},
    routing::{delete, get, patch, post, put},
};
use thali_platform::{
    auth::Verifier,
    client::{Client, GrpcChannel, Target},
};
use thali_proto::{
    booking::v1::booking_service_client::BookingServiceClient,
    identity::v1::identity_service_client::IdentityServiceClient,
    notifications::v1::notification_service_client::NotificationServiceClient,
    payments::v1::payments_service_client::PaymentsServiceClient,
    storefront::v1::storefront_service_client::StorefrontServiceClient,
};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use utoipa_swagger_ui::SwaggerUi;

use crate::problem::Problem;

/// What every handler shares; axum clones it for every request, so it is one `Arc`.
#[derive(Clone)]
pub struct FacadeState(Arc<FacadeInner>);

impl std::ops::Deref for FacadeState {
    type Target = FacadeInner;
    fn deref(&self) -> &FacadeInner {
        &self.0
    }
}

/// The clients, keys and caches behind [`FacadeState`].
pub struct FacadeInner {
    pub storefront: Client<StorefrontServiceClient<GrpcChannel>>,
    pub identity: Client<IdentityServiceClient<GrpcChannel>>,
    pub notifications: Client<NotificationServiceClient<GrpcChannel>>,
    pub booking: Client<BookingServiceClient<GrpcChannel>>,
    pub payments: Client<PaymentsServiceClient<GrpcChannel>>,
    pub verifier: Verifier,
    /// Response cache of anonymous storefront reads, where invalidations reach the facade.
    pub edge: Option<edge::EdgeCache>,
    /// Rate limits (ADR 0026).
    pub limits: limits::EdgeLimits,
    /// The embedded object store whose signed links `GET /media/{key}` serves (ADR 0033).
    pub media: Option<Arc<thali_platform::objects::LocalStore>>,
}

/// Where the facade reaches each service.
pub struct Services {
    pub storefront: Target,
    pub identity: Target,
    pub notifications: Target,
    pub booking: Target,
    pub payments: Target,
}

impl FacadeState {
    /// State over the client stack of each service; `edge` keeps anonymous storefront answers
    /// (see [`edge`]).
    pub fn new(
        services: Services,
        verifier: Verifier,
        edge: Option<edge::EdgeCache>,
        limits: limits::EdgeLimits,
    ) -> Self {
        Self(Arc::new(FacadeInner {
            storefront: Client::new(services.storefront, StorefrontServiceClient::new),
            identity: Client::new(services.identity, IdentityServiceClient::new),
            notifications: Client::new(services.notifications, NotificationServiceClient::new),
            booking: Client::new(services.booking, BookingServiceClient::new),
            payments: Client::new(services.payments, PaymentsServiceClient::new),
            verifier,
            edge,
            limits,
            media: None,
        }))
    }

    /// Serves the signed links of `store` at `GET /media/{key}`. Called before the state is
    /// shared.
    pub fn with_media(mut self, store: Arc<thali_platform::objects::LocalStore>) -> Self {
        Arc::get_mut(&mut self.0)
            .expect("media is set before the state is shared")
            .media = Some(store);
        self
    }
}

/// How the facade's HTTP edge behaves (from `Config`).
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest image upload, in bytes (the upload routes' own body limit).
    pub max_upload_bytes: usize,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: thali_platform::net::TrustedProxies,
    /// Exact origins allowed to call from a browser; empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// The facade serves HTTPS: answers carry HSTS.
    pub hsts: bool,
}

impl HttpSettings {
    pub fn from_config(cfg: &thali_platform::config::Config) -> Self {
        Self {
            max_body_bytes: cfg.max_body_bytes,
            max_upload_bytes: cfg.max_upload_bytes,
            trusted_proxies: cfg.trusted_proxies(),
            cors_origins: cfg.cors_origins(),
            hsts: cfg.tls_files().is_some(),
        }
    }
}

/// CORS for the listed origins only: methods and headers named one by one, no credentials mode
/// (tokens travel in `Authorization`, never in cookies), preflights cached for ten minutes.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::Method;
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_NONE_MATCH,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("traceparent"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::ETAG,
                header::LOCATION,
                header::RETRY_AFTER,
                HeaderName::from_static("ratelimit"),
                HeaderName::from_static("ratelimit-policy"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static(middleware::RENEWED_TOKEN_HEADER),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// The whole REST surface, with its middleware, read top to bottom in the order a request
/// meets it: request id → edge (client address, trace + metrics, JSON escaping and security
/// headers on the way out) → CORS → body limit → route: rate limit → token renewal → handler.
pub fn router(state: FacadeState, settings: &HttpSettings) -> Router {
    let x_request_id = HeaderName::from_static("x-request-id");
    let api = Router::new()
        .route("/api/v1/auth/register", post(routes::identity::register))
        .route("/api/v1/auth/login", post(routes::identity::login))
        .route("/api/v1/auth/refresh", post(routes::identity::refresh))
        .route("/api/v1/auth/logout", post(routes::identity::logout))
        .route("/api/v1/auth/me", get(routes::identity::me))
        .route("/api/v1/me", delete(routes::privacy::erase))
        .route("/api/v1/me/export", get(routes::privacy::export))
        .route("/api/v1/auth/verify-email", post(routes::identity::verify_email))
        .route(
            "/api/v1/auth/verify-email/resend",
            post(routes::identity::resend_verification),
        )
        .route("/api/v1/auth/password-reset", post(routes::identity::password_reset))
        .route(
            "/api/v1/auth/password-reset/confirm",
            post(routes::identity::password_reset_confirm),
        )
        .route(
            "/api/v1/api-keys",
            post(routes::identity::create_api_key).get(routes::identity::list_api_keys),
        )
        .route("/api/v1/api-keys/{id}", delete(routes::identity::revoke_api_key))
        .route("/.well-known/jwks.json", get(routes::identity::jwks))
        .route(
            "/api/v1/admin/accounts/{id}/disable",
            post(routes::identity::disable_account),
        )
        .route(
            "/api/v1/admin/accounts/{id}/enable",
            post(routes::identity::enable_account),
        )
        .route(
            "/api/v1/admin/accounts/{id}/role",
            put(routes::identity::set_account_role),
        )
        .route("/api/v1/admin/audit", get(routes::audit::list))
        .route("/api/v1/creators", post(routes::storefront::create_creator))
        .route(
            "/api/v1/creators/{username}",
            get(routes::storefront::get_creator).patch(routes::storefront::update_profile),
        )
        .route(
            "/api/v1/creators/{username}/products",
            post(routes::storefront::create_product).get(routes::storefront::list_products),
        )
        .route("/api/v1/products/{id}", patch(routes::storefront::update_product))
        .route(
            "/api/v1/products/{id}/images",
            post(routes::media::add_product_image).layer(DefaultBodyLimit::max(settings.max_upload_bytes)),
        )
        .route(
            "/api/v1/creators/{username}/avatar",
            put(routes::media::set_avatar).layer(DefaultBodyLimit::max(settings.max_upload_bytes)),
        )
        .route("/media/{key}", get(routes::media::read))
        .route(
            "/api/v1/products/{id}/archive",
            post(routes::storefront::archive_product),
        )
        .route("/api/v1/store/{username}", get(routes::storefront::get_storefront))
        .route(
            "/api/v1/restaurants",
            post(routes::booking::create_restaurant).get(routes::booking::search),
        )
        .route(
            "/api/v1/restaurants/{id}",
            get(routes::booking::get_restaurant).patch(routes::booking::update_restaurant),
        )
        .route(
            "/api/v1/restaurants/{id}/tables",
            post(routes::booking::create_table).get(routes::booking::list_tables),
        )
        .route("/api/v1/restaurants/{id}/hours", put(routes::booking::set_hours))
        .route("/api/v1/restaurants/{id}/closures", post(routes::booking::add_closure))
        .route(
            "/api/v1/restaurants/{id}/availability",
            get(routes::booking::availability),
        )
        .route(
            "/api/v1/tables/{id}",
            patch(routes::booking::update_table).delete(routes::booking::delete_table),
        )
        .route(
            "/api/v1/bookings",
            post(routes::booking::create_booking).get(routes::booking::list_bookings),
        )
        .route("/api/v1/bookings/{id}", get(routes::booking::get_booking))
        .route("/api/v1/bookings/{id}/cancel", post(routes::booking::cancel_booking))
        .route("/api/v1/bookings/{id}/no-show", post(routes::booking::mark_no_show))
        .route(
            "/api/v1/orders",
            post(routes::payments::create_order).get(routes::payments::list_orders),
        )
        .route("/api/v1/orders/{id}", get(routes::payments::get_order))
        .route("/api/v1/orders/{id}/verify", post(routes::payments::verify_payment))
        .route("/api/v1/orders/{id}/refund", post(routes::payments::refund_order))
        .route("/api/v1/orders/{id}/fulfilment", post(routes::payments::fulfil_order))
        .route(
            "/api/v1/creators/{username}/payment-account",
            put(routes::payments::put_payment_account).get(routes::payments::get_payment_account),
        )
        .route("/api/v1/webhooks/razorpay", post(routes::payments::razorpay_webhook))
        .route(
            "/api/v1/webhooks/razorpay/{account_id}",
            post(routes::payments::razorpay_account_webhook),
        )
        .route("/api/v1/notifications", get(routes::notifications::list))
        .route(
            "/api/v1/notifications/unread-count",
            get(routes::notifications::unread_count),
        )
        .route(
            "/api/v1/notifications/{id}/read",
            post(routes::notifications::mark_read),
        )
        .route(
            "/api/v1/notification-preferences",
            get(routes::notifications::get_preferences).put(routes::notifications::put_preferences),
        )
        .route(
            "/api/v1/webhook-endpoints",
            post(routes::notifications::create_endpoint).get(routes::notifications::list_endpoints),
        )
        .route(
            "/api/v1/webhook-endpoints/{id}",
            delete(routes::notifications::delete_endpoint),
        )
        .route(
            "/api/v1/webhook-endpoints/{id}/rotate-secret",
            post(routes::notifications::rotate_secret),
        )
        .route(
            "/api/v1/webhook-endpoints/{id}/deliveries",
            get(routes::notifications::list_deliveries),
        )
        .route(
            "/api/v1/webhook-endpoints/{id}/deliveries/{delivery_id}/resend",
            post(routes::notifications::resend_delivery),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::renew_token,
        ))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        .merge(SwaggerUi::new("/docs").url("/api/v1/openapi.json", openapi::document()))
        .route_layer(axum::middleware::from_fn_with_state(state, limits::rate_limit))
        .route_layer(axum::middleware::from_fn(middleware::tag_route));
    let mut api = api
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(settings.max_body_bytes));
    if let Some(cors) = cors(&settings.cors_origins) {
        api = api.layer(cors);
    }
    let edge = Arc::new(middleware::Edge {
        proxies: settings.trusted_proxies.clone(),
        hsts: settings.hsts,
    });
    api.layer(axum::middleware::from_fn_with_state(edge, middleware::observe))
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
