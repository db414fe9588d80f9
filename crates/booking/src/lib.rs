//! Booking service: restaurants, tables, opening hours, availability and reservations that can
//! never double-book (issue 9): domain rules (hours, closures, the booking window, slot
//! arithmetic across DST changes, table choice, cancellation), the store whose constraint keeps a
//! table from being booked twice, the gRPC service with its cached days, and the job worker.
#![forbid(unsafe_code)]

pub mod domain;
pub mod grpc;
pub mod store;
pub mod workers;

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use thali_platform::{
    cache::{CacheSettings, Redis, TwoLevelCache},
    client::{Client, Target},
};
use thali_proto::{
    booking::v1::booking_service_server::BookingServiceServer,
    payments::v1::payments_service_client::PaymentsServiceClient,
};

const READ: &str = "booking.read";
const WRITE: &str = "booking.write";

/// Scope a partner API key needs for each booking method: `booking.read` to search and read
/// availability, restaurants and bookings; `booking.write` to book, cancel and run a restaurant.
pub const API_KEY_SCOPES: &[(&str, &str)] = &[
    ("/thali.booking.v1.BookingService/GetRestaurant", READ),
    ("/thali.booking.v1.BookingService/ListTables", READ),
    ("/thali.booking.v1.BookingService/SearchRestaurants", READ),
    ("/thali.booking.v1.BookingService/GetAvailability", READ),
    ("/thali.booking.v1.BookingService/GetBooking", READ),
    ("/thali.booking.v1.BookingService/ListBookings", READ),
    ("/thali.booking.v1.BookingService/CreateRestaurant", WRITE),
    ("/thali.booking.v1.BookingService/UpdateRestaurant", WRITE),
    ("/thali.booking.v1.BookingService/CreateTable", WRITE),
    ("/thali.booking.v1.BookingService/UpdateTable", WRITE),
    ("/thali.booking.v1.BookingService/DeleteTable", WRITE),
    ("/thali.booking.v1.BookingService/SetHours", WRITE),
    ("/thali.booking.v1.BookingService/AddClosure", WRITE),
    ("/thali.booking.v1.BookingService/CreateBooking", WRITE),
    ("/thali.booking.v1.BookingService/CancelBooking", WRITE),
    ("/thali.booking.v1.BookingService/MarkNoShow", WRITE),
];

/// The availability cache policy: days fresh 30 s (every change drops them at once; the TTL
/// bounds what a missed invalidation can cost), L1 copies 2 s when Redis is there, stale copies
/// served up to a minute when the database is down.
pub fn cache_settings() -> CacheSettings {
    CacheSettings {
        name: "booking",
        ttl: Duration::from_secs(30),
        l1_ttl: Duration::from_secs(2),
        stale_for: Duration::from_secs(60),
        l1_max_bytes: 64 * 1024 * 1024,
        load_timeout: Duration::from_secs(2),
    }
}

/// The booking service: its gRPC handlers and cache.
pub struct Booking {
    grpc: Arc<grpc::BookingGrpc>,
    store: store::BookingStore,
    payments: Option<workers::PaymentsClient>,
}

impl Booking {
    /// The service over `db`, caching in-process and, when given, in Redis; deposits are asked
    /// of the payments service at `payments`.
    pub async fn new(db: DatabaseConnection, redis: Option<Redis>, tenant: &str, payments: Option<Target>) -> Self {
        Self::with_settings(db, redis, tenant, cache_settings(), payments).await
    }

    /// The service with another cache policy (tests).
    pub async fn with_settings(
        db: DatabaseConnection,
        redis: Option<Redis>,
        tenant: &str,
        settings: CacheSettings,
        payments: Option<Target>,
    ) -> Self {
        let cache = TwoLevelCache::new(settings, redis).await;
        let store = store::BookingStore::new(db);
        let payments = payments.map(|t| Client::new(t, PaymentsServiceClient::new));
        let grpc = Arc::new(grpc::BookingGrpc::new(
            store.clone(),
            cache,
            tenant.to_owned(),
            payments.clone(),
        ));
        Self { grpc, store, payments }
    }

    /// The service's event subscriber (deposit orders' news).
    pub fn sink(&self) -> Arc<dyn thali_platform::events::Sink> {
        self.grpc.clone()
    }

    /// What booking holds about an account, for its owner's export (ADR 0032).
    pub fn personal_data(&self) -> Arc<dyn thali_platform::privacy::PersonalData> {
        Arc::new(self.store.clone())
    }

    /// The service's job worker on `queue`, ready to spawn.
    pub fn job_worker(&self, queue: thali_platform::jobs::Queue) -> thali_platform::jobs::Worker {
        workers::job_worker(self.store.clone(), queue, self.payments.clone())
    }

    /// A probe of the cache's Redis for health reporting (true without Redis).
    pub fn redis_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let grpc = self.grpc.clone();
        move || grpc.redis_up().unwrap_or(true)
    }

    /// The gRPC service, ready to add to a server.
    pub fn server(&self) -> BookingServiceServer<grpc::BookingGrpc> {
        BookingServiceServer::from_arc(self.grpc.clone())
    }
}

#[tonic::async_trait]
impl thali_platform::privacy::PersonalData for store::BookingStore {
    async fn export(&self, account: uuid::Uuid) -> Result<serde_json::Value, sea_orm::DbErr> {
        self.personal_data(account).await
    }
}
