//! Booking service schema.
use sea_orm_migration::MigrationTrait;

mod m20261122_000009_booking;

pub(crate) fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(m20261122_000009_booking::Migration)]
}
