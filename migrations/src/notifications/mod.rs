//! Notifications service schema.
use sea_orm_migration::MigrationTrait;

mod m20261122_000005_notifications;
mod m20261122_000006_webhooks;
mod m20261207_000023_notification_subjects;
mod m20261207_000025_erased_accounts;

pub(crate) fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![
        Box::new(m20261122_000005_notifications::Migration),
        Box::new(m20261122_000006_webhooks::Migration),
        Box::new(m20261207_000023_notification_subjects::Migration),
        Box::new(m20261207_000025_erased_accounts::Migration),
    ]
}
