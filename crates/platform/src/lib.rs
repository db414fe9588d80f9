//! What every Thali service shares: configuration, telemetry, the gRPC server and client stacks,
//! authentication, database connections and status details.
#![forbid(unsafe_code)]

pub mod api_keys;
pub mod audit;
pub mod audit_log;
pub mod auth;
pub mod cache;
pub mod client;
pub mod config;
pub mod crypto;
pub mod db;
pub mod deadline;
pub mod errors;
pub mod events;
pub mod health;
pub mod idempotency;
pub mod jobs;
pub mod logwriter;
pub mod money;
pub mod net;
pub mod objects;
pub mod privacy;
pub mod ratelimit;
pub mod revocations;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod text;
pub mod tls;

pub use auth::{Principal, Signer, Verifier};
pub use config::Config;
pub use secret::Secret;
pub mod testing;
