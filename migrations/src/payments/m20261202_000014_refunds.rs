//! Refunds a seller or an admin asked for: one row per request, `requested` until the gateway
//! processed (or refused) it. Requested amounts count against what is left to refund, so two
//! refunds asked at once can never give back more than was paid.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Refunds {
    Table,
    Id,
    OrderId,
    AmountMinor,
    Reason,
    Status,
    GatewayRefundId,
    RequestedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Refunds::Table)
                    .col(uuid(Refunds::Id).primary_key())
                    .col(uuid(Refunds::OrderId))
                    .col(big_integer(Refunds::AmountMinor))
                    .col(string_len(Refunds::Reason, 200))
                    .col(string_len(Refunds::Status, 16))
                    .col(string_len_null(Refunds::GatewayRefundId, 64).unique_key())
                    .col(string_len(Refunds::RequestedBy, 128))
                    .col(timestamp_with_time_zone(Refunds::CreatedAt))
                    .col(timestamp_with_time_zone(Refunds::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_refunds_order")
                            .from(Refunds::Table, Refunds::OrderId)
                            .to(Orders::Table, Orders::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .check(Expr::cust("amount_minor > 0"))
                    .check(Expr::cust("status IN ('requested', 'processed', 'failed')"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_refunds_order")
                    .table(Refunds::Table)
                    .col(Refunds::OrderId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Refunds::Table).to_owned()).await
    }
}
