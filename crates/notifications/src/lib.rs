//! Notifications service: what users hear about the events of the other services — in-app
//! notifications (always on), email (per event type, unless it is a security message) — and
//! their preferences. It subscribes to events through the outbox relay (ADR 0011) and keeps
//! what it needs to reach a user (the address from `account.created`) in its own tables.
#![forbid(unsafe_code)]

pub mod domain;
pub mod grpc;
pub mod mail;
pub mod store;
pub mod templates;
pub mod webhooks;
pub mod workers;

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use thali_platform::jobs::{Queue, Worker};
use thali_proto::notifications::v1::notification_service_server::NotificationServiceServer;

/// The event types the service subscribes to.
pub const SUBSCRIBES_TO: &[&str] = &[
    "account.created",
    "account.login_new_address",
    "account.email_verification_requested",
    "account.password_reset_requested",
    "account.registration_attempted",
    "product.out_of_stock",
    "booking.confirmed",
    "booking.cancelled",
    "booking.reminder",
    "order.paid",
    "order.failed",
    "order.expired",
    "order.refunded",
    "order.payment_returned",
    thali_platform::privacy::ERASED,
];

/// The notifications service: its gRPC handlers, event sink and mailer.
pub struct Notifications {
    grpc: Arc<grpc::NotificationsGrpc>,
    store: store::NotificationStore,
    outbound: workers::Outbound,
}

impl Notifications {
    /// The service over `db`, sending mail with `mailer` and webhooks with `webhooks`. Fails if a
    /// template does not compile.
    /// Links in messages point at `app_url` (the web app).
    pub fn new(
        db: DatabaseConnection,
        mailer: mail::Mailer,
        webhooks: webhooks::Sender,
        app_url: &str,
    ) -> Result<Self, templates::TemplateError> {
        Self::with_queue(db, Queue::new(workers::SERVICE), mailer, webhooks, app_url)
    }

    /// The service writing its jobs on `queue` (tests pass one with a manual clock).
    pub fn with_queue(
        db: DatabaseConnection,
        queue: Queue,
        mailer: mail::Mailer,
        webhooks: webhooks::Sender,
        app_url: &str,
    ) -> Result<Self, templates::TemplateError> {
        let store = store::NotificationStore::with_queue(db, queue);
        let templates = Arc::new(templates::Templates::new(app_url)?);
        let grpc = Arc::new(grpc::NotificationsGrpc::new(
            store.clone(),
            templates.clone(),
            webhooks.allows_insecure(),
        ));
        let outbound = workers::Outbound {
            mailer,
            webhooks,
            templates,
        };
        Ok(Self { grpc, store, outbound })
    }

    /// What the job worker sends with (tests build workers with other schedules).
    pub fn outbound(&self) -> &workers::Outbound {
        &self.outbound
    }

    /// The store (tests, tools).
    pub fn store(&self) -> &store::NotificationStore {
        &self.store
    }

    /// The handler of the events the service subscribes to, for the process's `EventSink`.
    pub fn sink(&self) -> Arc<dyn thali_platform::events::Sink> {
        self.grpc.clone()
    }

    /// What notifications holds about an account, for its owner's export (ADR 0032).
    pub fn personal_data(&self) -> Arc<dyn thali_platform::privacy::PersonalData> {
        Arc::new(self.store.clone())
    }

    /// The service's job worker on `queue` (email, housekeeping), ready to spawn.
    pub fn job_worker(&self, queue: Queue) -> Worker {
        workers::job_worker(self.store.clone(), queue, self.outbound.clone())
    }

    /// The gRPC service, ready to add to a server.
    pub fn server(&self) -> NotificationServiceServer<grpc::NotificationsGrpc> {
        NotificationServiceServer::from_arc(self.grpc.clone())
    }
}

#[tonic::async_trait]
impl thali_platform::privacy::PersonalData for store::NotificationStore {
    async fn export(&self, account: uuid::Uuid) -> Result<serde_json::Value, sea_orm::DbErr> {
        self.personal_data(account).await
    }
}
