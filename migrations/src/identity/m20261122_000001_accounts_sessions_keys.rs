//! Accounts, refresh-token families, partner API keys, login throttling and the idempotency
//! record of creating calls.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Accounts {
    Table,
    Id,
    Email,
    DisplayName,
    Role,
    Status,
    PasswordHash,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RefreshTokens {
    Table,
    Id,
    FamilyId,
    AccountId,
    TokenHash,
    CreatedAt,
    ExpiresAt,
    UsedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    OwnerId,
    Name,
    Prefix,
    KeyHash,
    Scopes,
    CreatedAt,
    ExpiresAt,
    LastUsedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum LoginThrottle {
    Table,
    ThrottleKey,
    Failures,
    LastFailureAt,
    LockedUntil,
}

#[derive(DeriveIden)]
enum IdentityIdempotency {
    Table,
    Scope,
    Subject,
    IdempotencyKey,
    RequestHash,
    ResourceId,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Accounts::Table)
                    .col(uuid(Accounts::Id).primary_key())
                    .col(string_len(Accounts::Email, 254).unique_key())
                    .col(string_len(Accounts::DisplayName, 80))
                    .col(string_len(Accounts::Role, 20))
                    .col(string_len(Accounts::Status, 10))
                    .col(text(Accounts::PasswordHash))
                    .col(timestamp_with_time_zone(Accounts::CreatedAt))
                    .col(timestamp_with_time_zone(Accounts::UpdatedAt))
                    .check(Expr::cust("role IN ('buyer', 'creator', 'restaurant_owner', 'admin')"))
                    .check(Expr::cust("status IN ('active', 'locked', 'disabled')"))
                    .check(Expr::cust("email = lower(email) AND length(email) >= 3"))
                    .check(Expr::cust("length(display_name) BETWEEN 1 AND 80"))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(RefreshTokens::Table)
                    .col(uuid(RefreshTokens::Id).primary_key())
                    .col(uuid(RefreshTokens::FamilyId))
                    .col(uuid(RefreshTokens::AccountId))
                    .col(string_len(RefreshTokens::TokenHash, 64).unique_key())
                    .col(timestamp_with_time_zone(RefreshTokens::CreatedAt))
                    .col(timestamp_with_time_zone(RefreshTokens::ExpiresAt))
                    .col(timestamp_with_time_zone_null(RefreshTokens::UsedAt))
                    .col(timestamp_with_time_zone_null(RefreshTokens::RevokedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_refresh_tokens_account")
                            .from(RefreshTokens::Table, RefreshTokens::AccountId)
                            .to(Accounts::Table, Accounts::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_refresh_tokens_family")
                    .table(RefreshTokens::Table)
                    .col(RefreshTokens::FamilyId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .col(uuid(ApiKeys::Id).primary_key())
                    .col(uuid(ApiKeys::OwnerId))
                    .col(string_len(ApiKeys::Name, 80))
                    .col(string_len(ApiKeys::Prefix, 12).unique_key())
                    .col(string_len(ApiKeys::KeyHash, 64))
                    .col(string_len(ApiKeys::Scopes, 400))
                    .col(timestamp_with_time_zone(ApiKeys::CreatedAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::ExpiresAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::LastUsedAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::RevokedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_api_keys_owner")
                            .from(ApiKeys::Table, ApiKeys::OwnerId)
                            .to(Accounts::Table, Accounts::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .check(Expr::cust(
                        "length(prefix) = 12 AND length(key_hash) = 64 AND length(scopes) >= 1",
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_api_keys_owner")
                    .table(ApiKeys::Table)
                    .col(ApiKeys::OwnerId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(LoginThrottle::Table)
                    .col(string_len(LoginThrottle::ThrottleKey, 300).primary_key())
                    .col(integer(LoginThrottle::Failures))
                    .col(timestamp_with_time_zone(LoginThrottle::LastFailureAt))
                    .col(timestamp_with_time_zone_null(LoginThrottle::LockedUntil))
                    .check(Expr::cust("failures >= 0"))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(IdentityIdempotency::Table)
                    .col(string_len(IdentityIdempotency::Scope, 40))
                    .col(string_len(IdentityIdempotency::Subject, 128))
                    .col(string_len(IdentityIdempotency::IdempotencyKey, 200))
                    .col(string_len(IdentityIdempotency::RequestHash, 64))
                    .col(uuid(IdentityIdempotency::ResourceId))
                    .col(timestamp_with_time_zone(IdentityIdempotency::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(IdentityIdempotency::Scope)
                            .col(IdentityIdempotency::Subject)
                            .col(IdentityIdempotency::IdempotencyKey),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            IdentityIdempotency::Table.into_iden(),
            LoginThrottle::Table.into_iden(),
            ApiKeys::Table.into_iden(),
            RefreshTokens::Table.into_iden(),
            Accounts::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
