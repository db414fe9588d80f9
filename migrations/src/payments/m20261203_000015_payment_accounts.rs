//! Creators' own gateway accounts: the key pair and webhook secret a creator connects, the
//! secrets encrypted at rest (AES-256-GCM, ADR 0015; the stored text names its data key), one
//! account per seller. An order remembers which account created it, so its capture, refunds and
//! reconciliation use the same account even after the creator connects another.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PaymentAccounts {
    Table,
    Id,
    SellerSubject,
    Username,
    KeyId,
    KeySecret,
    WebhookSecret,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    PaymentAccountId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PaymentAccounts::Table)
                    .col(uuid(PaymentAccounts::Id).primary_key())
                    .col(string_len(PaymentAccounts::SellerSubject, 128).unique_key())
                    .col(string_len(PaymentAccounts::Username, 64))
                    .col(string_len(PaymentAccounts::KeyId, 64))
                    .col(text(PaymentAccounts::KeySecret))
                    .col(text(PaymentAccounts::WebhookSecret))
                    .col(timestamp_with_time_zone(PaymentAccounts::CreatedAt))
                    .col(timestamp_with_time_zone(PaymentAccounts::UpdatedAt))
                    // Only ciphertext is ever stored (`aes256gcm:{key id}:…`).
                    .check(Expr::cust("key_secret LIKE 'aes256gcm:%'"))
                    .check(Expr::cust("webhook_secret LIKE 'aes256gcm:%'"))
                    .to_owned(),
            )
            .await?;
        // NULL: the platform's own account.
        manager
            .alter_table(
                Table::alter()
                    .table(Orders::Table)
                    .add_column(uuid_null(Orders::PaymentAccountId))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Orders::Table)
                    .drop_column(Orders::PaymentAccountId)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(PaymentAccounts::Table).to_owned())
            .await
    }
}
