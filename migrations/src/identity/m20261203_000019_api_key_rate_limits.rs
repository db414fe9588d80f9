//! A partner API key's own rate limit, calls per minute (ADR 0026); NULL means the platform's
//! default (`THALI_RATE_LIMIT_API_KEY`).
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    RateLimitPerMinute,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .add_column(
                        integer_null(ApiKeys::RateLimitPerMinute)
                            .check(Expr::cust("rate_limit_per_minute BETWEEN 1 AND 1000000")),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .drop_column(ApiKeys::RateLimitPerMinute)
                    .to_owned(),
            )
            .await
    }
}
