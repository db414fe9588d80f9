//! Stock held for orders while they are paid for (issue 10). A reservation's units are taken off
//! the product's stock in the transaction that writes it; the products' `stock >= 0` check is the
//! last word on overselling. A reservation moves held → committed | released, never back.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum StockReservations {
    Table,
    Id,
    CreatorId,
    State,
    Currency,
    TotalMinor,
    RequestHash,
    ExpiresAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum StockReservationLines {
    Table,
    ReservationId,
    ProductId,
    Title,
    Quantity,
    UnitPriceMinor,
}

#[derive(DeriveIden)]
enum Creators {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Products {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(StockReservations::Table)
                    .col(uuid(StockReservations::Id).primary_key())
                    .col(uuid(StockReservations::CreatorId))
                    .col(string_len(StockReservations::State, 16))
                    .col(string_len(StockReservations::Currency, 3))
                    .col(big_integer(StockReservations::TotalMinor))
                    .col(string_len(StockReservations::RequestHash, 64))
                    .col(timestamp_with_time_zone(StockReservations::ExpiresAt))
                    .col(timestamp_with_time_zone(StockReservations::CreatedAt))
                    .col(timestamp_with_time_zone(StockReservations::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_stock_reservations_creator")
                            .from(StockReservations::Table, StockReservations::CreatorId)
                            .to(Creators::Table, Creators::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .check(Expr::cust("state IN ('held', 'committed', 'released')"))
                    .check(Expr::cust("total_minor > 0"))
                    .to_owned(),
            )
            .await?;
        // The expiry sweep reads held reservations by expiry time.
        manager
            .create_index(
                Index::create()
                    .name("idx_stock_reservations_state_expires")
                    .table(StockReservations::Table)
                    .col(StockReservations::State)
                    .col(StockReservations::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(StockReservationLines::Table)
                    .col(uuid(StockReservationLines::ReservationId))
                    .col(uuid(StockReservationLines::ProductId))
                    .col(string_len(StockReservationLines::Title, 120))
                    .col(big_integer(StockReservationLines::Quantity))
                    .col(big_integer(StockReservationLines::UnitPriceMinor))
                    .primary_key(
                        Index::create()
                            .col(StockReservationLines::ReservationId)
                            .col(StockReservationLines::ProductId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_stock_reservation_lines_reservation")
                            .from(StockReservationLines::Table, StockReservationLines::ReservationId)
                            .to(StockReservations::Table, StockReservations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_stock_reservation_lines_product")
                            .from(StockReservationLines::Table, StockReservationLines::ProductId)
                            .to(Products::Table, Products::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .check(Expr::cust("quantity BETWEEN 1 AND 1000"))
                    .check(Expr::cust("unit_price_minor > 0"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_stock_reservation_lines_product")
                    .table(StockReservationLines::Table)
                    .col(StockReservationLines::ProductId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(StockReservationLines::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(StockReservations::Table).to_owned())
            .await
    }
}
