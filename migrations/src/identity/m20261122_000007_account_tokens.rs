//! Email verification and password reset tokens (stored as SHA-256 hashes, single use, with an
//! expiry), the addresses each account has signed in from (a new one raises
//! `account.login_new_address`), and when an account's email was verified.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Accounts {
    Table,
    Id,
    EmailVerifiedAt,
}

#[derive(DeriveIden)]
enum AccountTokens {
    Table,
    Id,
    AccountId,
    Purpose,
    TokenHash,
    CreatedAt,
    ExpiresAt,
    UsedAt,
}

#[derive(DeriveIden)]
enum LoginAddresses {
    Table,
    AccountId,
    Address,
    FirstSeenAt,
    LastSeenAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Accounts::Table)
                    .add_column(timestamp_with_time_zone_null(Accounts::EmailVerifiedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AccountTokens::Table)
                    .col(uuid(AccountTokens::Id).primary_key())
                    .col(uuid(AccountTokens::AccountId))
                    .col(string_len(AccountTokens::Purpose, 20))
                    .col(string_len(AccountTokens::TokenHash, 64).unique_key())
                    .col(timestamp_with_time_zone(AccountTokens::CreatedAt))
                    .col(timestamp_with_time_zone(AccountTokens::ExpiresAt))
                    .col(timestamp_with_time_zone_null(AccountTokens::UsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_account_tokens_account")
                            .from(AccountTokens::Table, AccountTokens::AccountId)
                            .to(Accounts::Table, Accounts::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .check(Expr::cust("purpose IN ('verify_email', 'password_reset')"))
                    .check(Expr::cust("expires_at > created_at"))
                    .check(Expr::cust("length(token_hash) = 64"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_account_tokens_account")
                    .table(AccountTokens::Table)
                    .col(AccountTokens::AccountId)
                    .col(AccountTokens::Purpose)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LoginAddresses::Table)
                    .col(uuid(LoginAddresses::AccountId))
                    .col(string_len(LoginAddresses::Address, 64))
                    .col(timestamp_with_time_zone(LoginAddresses::FirstSeenAt))
                    .col(timestamp_with_time_zone(LoginAddresses::LastSeenAt))
                    .primary_key(
                        Index::create()
                            .col(LoginAddresses::AccountId)
                            .col(LoginAddresses::Address),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_login_addresses_account")
                            .from(LoginAddresses::Table, LoginAddresses::AccountId)
                            .to(Accounts::Table, Accounts::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .check(Expr::cust("length(address) >= 1"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(LoginAddresses::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(AccountTokens::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Accounts::Table)
                    .drop_column(Accounts::EmailVerifiedAt)
                    .to_owned(),
            )
            .await
    }
}
