//! Storefront service: creators, their profiles and products, and the public storefront read.
#![forbid(unsafe_code)]

pub mod domain;
pub mod grpc;
pub mod store;

use sea_orm::DatabaseConnection;
use thali_proto::storefront::v1::storefront_service_server::StorefrontServiceServer;

/// Scope a partner API key needs for each storefront method.
pub const API_KEY_SCOPES: &[(&str, &str)] = &[
    ("/thali.storefront.v1.StorefrontService/GetCreator", "storefront.read"),
    ("/thali.storefront.v1.StorefrontService/ListProducts", "storefront.read"),
    (
        "/thali.storefront.v1.StorefrontService/GetStorefront",
        "storefront.read",
    ),
    (
        "/thali.storefront.v1.StorefrontService/CreateCreator",
        "storefront.write",
    ),
    (
        "/thali.storefront.v1.StorefrontService/UpdateProfile",
        "storefront.write",
    ),
    (
        "/thali.storefront.v1.StorefrontService/CreateProduct",
        "storefront.write",
    ),
    (
        "/thali.storefront.v1.StorefrontService/UpdateProduct",
        "storefront.write",
    ),
    (
        "/thali.storefront.v1.StorefrontService/ArchiveProduct",
        "storefront.write",
    ),
];

/// The storefront gRPC service over `db`, ready to add to a server.
pub fn service(db: DatabaseConnection) -> StorefrontServiceServer<grpc::StorefrontGrpc> {
    StorefrontServiceServer::new(grpc::StorefrontGrpc::new(store::StorefrontStore::new(db)))
}
