//! Tables the platform keeps in every service's database: the durable job queue (which is also
//! the transactional outbox) and the inbox of events a service has received.
use sea_orm_migration::MigrationTrait;

mod m20261122_000003_jobs;
mod m20261122_000004_inbox;
mod m20261122_000008_jobs_claim_index;

pub(crate) fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![
        Box::new(m20261122_000003_jobs::Migration),
        Box::new(m20261122_000004_inbox::Migration),
        Box::new(m20261122_000008_jobs_claim_index::Migration),
    ]
}
