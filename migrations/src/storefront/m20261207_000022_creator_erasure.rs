//! When a store was erased with its owner's account (ADR 0032): its personal fields are
//! anonymised, its products archived, and it is no longer found by any name.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Creators {
    Table,
    ErasedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Creators::Table)
                    .add_column(timestamp_with_time_zone_null(Creators::ErasedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Creators::Table)
                    .drop_column(Creators::ErasedAt)
                    .to_owned(),
            )
            .await
    }
}
