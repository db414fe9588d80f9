//! Payments service schema.
use sea_orm_migration::MigrationTrait;

mod m20261202_000012_orders;
mod m20261202_000013_webhooks;
mod m20261202_000014_refunds;
mod m20261203_000015_payment_accounts;
mod m20261203_000016_deposit_orders;

pub(crate) fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![
        Box::new(m20261202_000012_orders::Migration),
        Box::new(m20261202_000013_webhooks::Migration),
        Box::new(m20261202_000014_refunds::Migration),
        Box::new(m20261203_000015_payment_accounts::Migration),
        Box::new(m20261203_000016_deposit_orders::Migration),
    ]
}
