//! Identity service: accounts, argon2id passwords, access and refresh tokens, login throttling,
//! partner API keys.
#![forbid(unsafe_code)]

pub mod domain;
pub mod grpc;
pub mod passwords;
pub mod store;
pub mod workers;

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use thali_platform::auth::Signer;
use thali_proto::identity::v1::identity_service_server::IdentityServiceServer;

/// Methods partner API keys may call on identity: none (keys cannot manage accounts or keys).
pub const API_KEY_SCOPES: &[(&str, &str)] = &[];

/// The identity gRPC service over `db`, minting tokens with `signer`.
pub fn service(db: DatabaseConnection, signer: Arc<Signer>) -> IdentityServiceServer<grpc::IdentityGrpc> {
    IdentityServiceServer::new(grpc::IdentityGrpc::new(store::IdentityStore::new(db), signer))
}

/// What identity holds about an account, for its owner's export (ADR 0032).
pub fn personal_data(db: DatabaseConnection) -> Arc<dyn thali_platform::privacy::PersonalData> {
    Arc::new(store::IdentityStore::new(db))
}

#[tonic::async_trait]
impl thali_platform::privacy::PersonalData for store::IdentityStore {
    async fn export(&self, account: uuid::Uuid) -> Result<serde_json::Value, sea_orm::DbErr> {
        self.personal_data(account).await
    }
}
