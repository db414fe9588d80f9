//! Booking deposits (issue 10, part 9). A restaurant may ask a deposit per guest (minor units of
//! INR; 0: none). A booking at such a restaurant is `pending_payment` until its deposit is paid:
//! it holds its table like a confirmed one (the no-overlap constraint and the SQLite cells cover
//! it) until `payment_due_at`; `deposit_order_id` is the payments order, `deposit_status` where
//! the money stands. `no_show_at` is when the owner marked a guest who never came (the deposit
//! is kept).
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Restaurants {
    Table,
    DepositPerGuestMinor,
}

#[derive(DeriveIden)]
enum Bookings {
    Table,
    DepositMinor,
    DepositOrderId,
    DepositStatus,
    PaymentDueAt,
    NoShowAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Restaurants::Table)
                    .add_column(
                        big_integer(Restaurants::DepositPerGuestMinor)
                            .default(0)
                            .check(Expr::cust(
                                "deposit_per_guest_minor = 0 OR deposit_per_guest_minor BETWEEN 100 AND 1000000",
                            )),
                    )
                    .to_owned(),
            )
            .await?;
        // SQLite adds one column per ALTER.
        let columns = [
            big_integer_null(Bookings::DepositMinor)
                .check(Expr::cust("deposit_minor IS NULL OR deposit_minor > 0"))
                .to_owned(),
            uuid_null(Bookings::DepositOrderId),
            string_len_null(Bookings::DepositStatus, 16)
                .check(Expr::cust(
                    "deposit_status IS NULL OR deposit_status IN ('pending', 'paid', 'refund_requested', \
                     'refunded', 'expired', 'failed', 'void', 'kept')",
                ))
                .to_owned(),
            timestamp_with_time_zone_null(Bookings::PaymentDueAt),
            timestamp_with_time_zone_null(Bookings::NoShowAt),
        ];
        for column in columns {
            manager
                .alter_table(Table::alter().table(Bookings::Table).add_column(column).to_owned())
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            Bookings::DepositMinor,
            Bookings::DepositOrderId,
            Bookings::DepositStatus,
            Bookings::PaymentDueAt,
            Bookings::NoShowAt,
        ] {
            manager
                .alter_table(Table::alter().table(Bookings::Table).drop_column(column).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Restaurants::Table)
                    .drop_column(Restaurants::DepositPerGuestMinor)
                    .to_owned(),
            )
            .await
    }
}
