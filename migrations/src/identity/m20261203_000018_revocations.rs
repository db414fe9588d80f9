//! Revocations every token verifier follows (ADR 0027): a login session ended (logout, refresh
//! reuse) or every token of an account issued up to a moment (password reset, account disabled,
//! sessions ended by an admin). Rows live as long as the tokens they refuse could (7 days).
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Revocations {
    Table,
    Id,
    Kind,
    Subject,
    RevokedAt,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Revocations::Table)
                    .col(big_integer(Revocations::Id).auto_increment().primary_key())
                    .col(string_len(Revocations::Kind, 16))
                    .col(string_len(Revocations::Subject, 64))
                    .col(timestamp_with_time_zone(Revocations::RevokedAt))
                    .col(timestamp_with_time_zone(Revocations::ExpiresAt))
                    .check(Expr::cust("kind IN ('session', 'account')"))
                    .check(Expr::cust("expires_at > revoked_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_revocations_expires_at")
                    .table(Revocations::Table)
                    .col(Revocations::ExpiresAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Revocations::Table).to_owned())
            .await
    }
}
