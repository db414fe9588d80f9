//! When an account was erased by its owner (ADR 0032). An erased account keeps its row (orders,
//! bookings and the audit trail name its id) with every personal field anonymised; it is also
//! `disabled`, so nothing that checks the status lets it in.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Accounts {
    Table,
    ErasedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Accounts::Table)
                    .add_column(
                        timestamp_with_time_zone_null(Accounts::ErasedAt)
                            .check(Expr::cust("erased_at IS NULL OR status = 'disabled'")),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Accounts::Table)
                    .drop_column(Accounts::ErasedAt)
                    .to_owned(),
            )
            .await
    }
}
