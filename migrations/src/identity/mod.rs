//! Identity service schema.
use sea_orm_migration::MigrationTrait;

mod m20261122_000001_accounts_sessions_keys;
mod m20261122_000007_account_tokens;
mod m20261203_000018_revocations;
mod m20261203_000019_api_key_rate_limits;
mod m20261207_000021_account_erasure;

pub(crate) fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![
        Box::new(m20261122_000001_accounts_sessions_keys::Migration),
        Box::new(m20261122_000007_account_tokens::Migration),
        Box::new(m20261203_000018_revocations::Migration),
        Box::new(m20261203_000019_api_key_rate_limits::Migration),
        Box::new(m20261207_000021_account_erasure::Migration),
    ]
}
