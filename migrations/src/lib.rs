//! Schema migrations for every Thali service, on SQLite (embedded) and PostgreSQL (distributed).
//! Each service owns a module set; [`Migrator`] runs them all in order.
#![forbid(unsafe_code)]

pub use sea_orm_migration::prelude::*;

mod booking;
mod identity;
mod notifications;
mod payments;
mod platform;
mod shared;
mod storefront;

/// Every migration of the platform, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        // Applied in name (date) order across services.
        let mut all = storefront::migrations();
        all.extend(identity::migrations());
        all.extend(platform::migrations());
        all.extend(notifications::migrations());
        all.extend(booking::migrations());
        all.extend(payments::migrations());
        all.sort_by_key(|m| m.name().to_owned());
        all
    }
}
