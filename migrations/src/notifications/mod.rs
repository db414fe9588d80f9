//! Notifications service schema.
use sea_orm_migration::MigrationTrait;

mod m20261122_000005_notifications;
mod m20261122_000006_webhooks;

pub(crate) fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![
        Box::new(m20261122_000005_notifications::Migration),
        Box::new(m20261122_000006_webhooks::Migration),
    ]
}
