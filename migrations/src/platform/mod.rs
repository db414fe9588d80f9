//! Tables the platform keeps in every service's database: the durable job queue (which is also
//! the transactional outbox), the inbox of events a service has received, and the audit trail.
use sea_orm_migration::MigrationTrait;

mod m20261122_000003_jobs;
mod m20261122_000004_inbox;
mod m20261122_000008_jobs_claim_index;
mod m20261203_000020_audit_log;

pub(crate) fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![
        Box::new(m20261122_000003_jobs::Migration),
        Box::new(m20261122_000004_inbox::Migration),
        Box::new(m20261122_000008_jobs_claim_index::Migration),
        Box::new(m20261203_000020_audit_log::Migration),
    ]
}
