//! How often each storefront is read, so a restarted service warms its cache with the pages
//! buyers actually open.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum StorefrontPopularity {
    Table,
    Username,
    Reads,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(StorefrontPopularity::Table)
                    .col(string_len(StorefrontPopularity::Username, 30).primary_key())
                    .col(big_integer(StorefrontPopularity::Reads))
                    .col(timestamp_with_time_zone(StorefrontPopularity::UpdatedAt))
                    .check(Expr::cust("reads >= 0"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_storefront_popularity_reads")
                    .table(StorefrontPopularity::Table)
                    .col(StorefrontPopularity::Reads)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(StorefrontPopularity::Table).to_owned())
            .await
    }
}
