//! Booking service schema.
use sea_orm_migration::MigrationTrait;

mod m20261122_000009_booking;
mod m20261122_000010_booking_owner_routes;
mod m20261203_000017_booking_deposits;

pub(crate) fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![
        Box::new(m20261122_000009_booking::Migration),
        Box::new(m20261122_000010_booking_owner_routes::Migration),
        Box::new(m20261203_000017_booking_deposits::Migration),
    ]
}
