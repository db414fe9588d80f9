//! Accounts erased by their owners (ADR 0032), as notifications learnt it: an event about one of
//! them still in flight when the erasure came (a booking's confirmation, say) is taken without
//! writing the personal fields it carries. Only the account id is kept.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ErasedAccounts {
    Table,
    AccountId,
    ErasedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ErasedAccounts::Table)
                    .col(uuid(ErasedAccounts::AccountId).primary_key())
                    .col(timestamp_with_time_zone(ErasedAccounts::ErasedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ErasedAccounts::Table).to_owned())
            .await
    }
}
