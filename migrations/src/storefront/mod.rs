//! Storefront service schema.
use sea_orm_migration::MigrationTrait;

mod m20261121_000001_creators_and_products;
mod m20261122_000002_storefront_popularity;
mod m20261202_000011_stock_reservations;
mod m20261207_000022_creator_erasure;
mod m20261207_000024_media;

pub(crate) fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![
        Box::new(m20261121_000001_creators_and_products::Migration),
        Box::new(m20261122_000002_storefront_popularity::Migration),
        Box::new(m20261202_000011_stock_reservations::Migration),
        Box::new(m20261207_000022_creator_erasure::Migration),
        Box::new(m20261207_000024_media::Migration),
    ]
}
