//! Orders, their lines, every call made to the gateway about them (`transactions`), and the
//! idempotency keys of checkouts. The state machine's rules live in `thali_payments::domain`; what
//! must hold whatever code writes a row is checked here.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    BuyerSubject,
    Username,
    SellerSubject,
    Status,
    AmountMinor,
    Currency,
    RefundedMinor,
    Gateway,
    KeyId,
    GatewayOrderId,
    PaidBy,
    FailedAttempts,
    Settlement,
    ExpiresAt,
    CreatedAt,
    UpdatedAt,
    PaidAt,
    ReconcileAfter,
    ReconcileFailures,
    Fulfilment,
}

#[derive(DeriveIden)]
enum OrderLines {
    Table,
    OrderId,
    ProductId,
    Title,
    Quantity,
    UnitPriceMinor,
}

#[derive(DeriveIden)]
enum Transactions {
    Table,
    Id,
    OrderId,
    Call,
    Source,
    Outcome,
    HttpStatus,
    GatewayRef,
    LatencyMs,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Orders::Table)
                    .col(uuid(Orders::Id).primary_key())
                    .col(string_len(Orders::BuyerSubject, 128))
                    .col(string_len(Orders::Username, 30))
                    .col(string_len(Orders::SellerSubject, 128))
                    .col(string_len(Orders::Status, 24))
                    .col(big_integer(Orders::AmountMinor))
                    .col(string_len(Orders::Currency, 3))
                    .col(big_integer(Orders::RefundedMinor).default(0))
                    .col(string_len(Orders::Gateway, 16))
                    .col(string_len(Orders::KeyId, 64))
                    .col(string_len(Orders::GatewayOrderId, 64).unique_key())
                    .col(string_len_null(Orders::PaidBy, 64))
                    .col(integer(Orders::FailedAttempts).default(0))
                    // The state machine's lists (refund ids counted, payments being refunded), JSON.
                    .col(text(Orders::Settlement))
                    .col(timestamp_with_time_zone(Orders::ExpiresAt))
                    .col(timestamp_with_time_zone(Orders::CreatedAt))
                    .col(timestamp_with_time_zone(Orders::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Orders::PaidAt))
                    // The reconciler's bookkeeping (ADR 0021): when it may look at the order again
                    // (a claim's lease, the time of its last check, or a backoff) and how many
                    // times in a row the gateway failed it.
                    .col(timestamp_with_time_zone_null(Orders::ReconcileAfter))
                    .col(integer(Orders::ReconcileFailures).default(0))
                    // A vendor's steps once paid: accepted → ready → completed, or rejected.
                    .col(string_len_null(Orders::Fulfilment, 16))
                    .check(Expr::cust(
                        "status IN ('pending', 'paid', 'failed', 'expired', 'partially_refunded', 'refunded')",
                    ))
                    .check(Expr::cust("amount_minor > 0"))
                    .check(Expr::cust("refunded_minor >= 0 AND refunded_minor <= amount_minor"))
                    .check(Expr::cust("failed_attempts >= 0"))
                    .check(Expr::cust("reconcile_failures >= 0"))
                    .check(Expr::cust(
                        "fulfilment IS NULL OR fulfilment IN ('accepted', 'ready', 'completed', 'rejected')",
                    ))
                    // Paid (or refunded after paying) means a payment paid it.
                    .check(Expr::cust(
                        "status NOT IN ('paid', 'partially_refunded', 'refunded') OR paid_by IS NOT NULL",
                    ))
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_orders_buyer", Orders::BuyerSubject),
            ("idx_orders_username", Orders::Username),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Orders::Table)
                        .col(col)
                        .col(Orders::Id)
                        .to_owned(),
                )
                .await?;
        }
        // The reconciler reads pending orders oldest first.
        manager
            .create_index(
                Index::create()
                    .name("idx_orders_status_created")
                    .table(Orders::Table)
                    .col(Orders::Status)
                    .col(Orders::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(OrderLines::Table)
                    .col(uuid(OrderLines::OrderId))
                    .col(uuid(OrderLines::ProductId))
                    .col(string_len(OrderLines::Title, 120))
                    .col(big_integer(OrderLines::Quantity))
                    .col(big_integer(OrderLines::UnitPriceMinor))
                    .primary_key(Index::create().col(OrderLines::OrderId).col(OrderLines::ProductId))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_order_lines_order")
                            .from(OrderLines::Table, OrderLines::OrderId)
                            .to(Orders::Table, Orders::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .check(Expr::cust("quantity BETWEEN 1 AND 1000"))
                    .check(Expr::cust("unit_price_minor > 0"))
                    .to_owned(),
            )
            .await?;
        // A log of gateway calls: kept for an order that was never written (the gateway call
        // that failed before it), so no foreign key.
        manager
            .create_table(
                Table::create()
                    .table(Transactions::Table)
                    .col(uuid(Transactions::Id).primary_key())
                    .col(uuid(Transactions::OrderId))
                    .col(string_len(Transactions::Call, 32))
                    .col(string_len(Transactions::Source, 16))
                    .col(string_len(Transactions::Outcome, 32))
                    .col(integer_null(Transactions::HttpStatus))
                    .col(string_len_null(Transactions::GatewayRef, 64))
                    .col(big_integer(Transactions::LatencyMs))
                    .col(timestamp_with_time_zone(Transactions::CreatedAt))
                    .check(Expr::cust("latency_ms >= 0"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_transactions_order")
                    .table(Transactions::Table)
                    .col(Transactions::OrderId)
                    .col(Transactions::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(crate::shared::idempotency_table("payments_idempotency"))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Alias::new("payments_idempotency")).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Transactions::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(OrderLines::Table).to_owned())
            .await?;
        manager.drop_table(Table::drop().table(Orders::Table).to_owned()).await
    }
}
