//! Storefront service: creators, their profiles and products, and the public storefront read.
#![forbid(unsafe_code)]

pub mod domain;
pub mod grpc;
pub mod store;

use sea_orm::DatabaseConnection;
use thali_proto::storefront::v1::storefront_service_server::StorefrontServiceServer;

/// The storefront gRPC service over `db`, ready to add to a server.
pub fn service(db: DatabaseConnection) -> StorefrontServiceServer<grpc::StorefrontGrpc> {
    StorefrontServiceServer::new(grpc::StorefrontGrpc::new(store::StorefrontStore::new(db)))
}
