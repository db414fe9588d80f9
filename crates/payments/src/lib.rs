//! Payments service (issue 10), being built in steps. Today: the order state machine (a pure
//! function from an order and a gateway event to the next order and its effects), Razorpay's
//! signature checks, the gateway adapter (a [`gateway::Gateway`] trait and its Razorpay
//! implementation over HTTPS), a Razorpay-compatible [`sandbox`] gateway, the checkout (stock held
//! in the storefront, the gateway order created, the order stored and readable), and webhooks
//! taken once and applied to their order (auto-capture, stock committed or released, money that
//! should not have been taken given back) with a dead-letter queue, the reconciler, refunds asked
//! by sellers, fulfilment, order events, and creators' own gateway accounts (secrets encrypted at
//! rest), and booking deposits (an order per booking, refunded when booking asks).
#![forbid(unsafe_code)]

pub mod domain;
pub mod gateway;
pub mod grpc;
pub mod sandbox;
pub mod signature;
pub mod store;
pub mod workers;

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use thali_platform::{
    client::{Client, Target},
    crypto::Keyring,
    jobs::{Queue, Worker},
};
use thali_proto::{
    payments::v1::payments_service_server::PaymentsServiceServer,
    storefront::v1::storefront_service_client::StorefrontServiceClient,
};

/// The payments service: its gRPC handlers and its store.
pub struct Payments {
    grpc: Arc<grpc::PaymentsGrpc>,
    settler: workers::Settler,
}

impl Payments {
    /// The service over `db`, holding stock through `storefront` and creating orders at
    /// `gateway` with the platform `account`, or a creator's own account (its secrets encrypted
    /// with `keys`).
    pub fn new(
        db: DatabaseConnection,
        storefront: Target,
        gateway: Arc<dyn gateway::Gateway>,
        account: gateway::PlatformAccount,
        keys: Arc<Keyring>,
    ) -> Self {
        Self::with_store(store::PaymentsStore::new(db), storefront, gateway, account, keys)
    }

    /// The service over a store built by the caller (tests give it a queue on a manual clock).
    pub fn with_store(
        store: store::PaymentsStore,
        storefront: Target,
        gateway: Arc<dyn gateway::Gateway>,
        account: gateway::PlatformAccount,
        keys: Arc<Keyring>,
    ) -> Self {
        let storefront = Client::new(storefront, StorefrontServiceClient::new);
        let accounts = store::Accounts::new(account, keys);
        let grpc = Arc::new(grpc::PaymentsGrpc::new(
            store.clone(),
            storefront.clone(),
            gateway.clone(),
            accounts.clone(),
        ));
        let settler = workers::Settler {
            store,
            gateway,
            storefront,
            accounts,
        };
        Self { grpc, settler }
    }

    /// Limits Razorpay's signed webhook deliveries per payment account (ADR 0026).
    pub fn limit_webhooks(mut self, limit: grpc::WebhookLimit) -> Self {
        Arc::get_mut(&mut self.grpc)
            .expect("limits are set before the service is shared")
            .limit_webhooks(limit);
        self
    }

    /// The service's job worker on `queue` (effects, the dead-letter sweep, housekeeping).
    pub fn job_worker(&self, queue: Queue) -> Worker {
        workers::job_worker(self.settler.clone(), queue)
    }

    /// The service's store (tests, operator commands).
    pub fn store(&self) -> &store::PaymentsStore {
        &self.settler.store
    }

    /// The service's event subscriber (booking deposits to refund).
    pub fn sink(&self) -> Arc<dyn thali_platform::events::Sink> {
        self.grpc.clone()
    }

    /// What payments holds about an account, for its owner's export (ADR 0032).
    pub fn personal_data(&self) -> Arc<dyn thali_platform::privacy::PersonalData> {
        Arc::new(self.settler.store.clone())
    }

    /// The gRPC service, ready to add to a server.
    pub fn server(&self) -> PaymentsServiceServer<grpc::PaymentsGrpc> {
        PaymentsServiceServer::from_arc(self.grpc.clone())
    }
}

#[tonic::async_trait]
impl thali_platform::privacy::PersonalData for store::PaymentsStore {
    async fn export(&self, account: uuid::Uuid) -> Result<serde_json::Value, sea_orm::DbErr> {
        self.personal_data(account).await
    }
}
