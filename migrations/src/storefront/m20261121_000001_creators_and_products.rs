//! Creators, products and the idempotency record of creating calls. Every rule that must hold
//! however requests race is a constraint here, not a check in Rust.
use sea_orm_migration::{prelude::*, schema::*, sea_orm::DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Creators {
    Table,
    Id,
    Username,
    DisplayName,
    Bio,
    OwnerSubject,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Products {
    Table,
    Id,
    CreatorId,
    Title,
    Description,
    PriceMinor,
    Currency,
    Active,
    Stock,
    CreatedAt,
    UpdatedAt,
    ArchivedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Character-class rules need each engine's own pattern syntax.
        let username_chars = match manager.get_database_backend() {
            DatabaseBackend::Postgres => "username ~ '^[a-z0-9_-]+$'",
            _ => "username NOT GLOB '*[^a-z0-9_-]*'",
        };
        let currency_chars = match manager.get_database_backend() {
            DatabaseBackend::Postgres => "currency ~ '^[A-Z]{3}$'",
            _ => "length(currency) = 3 AND currency NOT GLOB '*[^A-Z]*'",
        };

        manager
            .create_table(
                Table::create()
                    .table(Creators::Table)
                    .col(uuid(Creators::Id).primary_key())
                    .col(string_len(Creators::Username, 30).unique_key())
                    .col(string_len(Creators::DisplayName, 80))
                    .col(text(Creators::Bio))
                    .col(string_len(Creators::OwnerSubject, 128))
                    .col(timestamp_with_time_zone(Creators::CreatedAt))
                    .col(timestamp_with_time_zone(Creators::UpdatedAt))
                    .check(Expr::cust("length(username) BETWEEN 3 AND 30"))
                    .check(Expr::cust(username_chars))
                    .check(Expr::cust("length(display_name) BETWEEN 1 AND 80"))
                    .check(Expr::cust("length(bio) <= 1000"))
                    .check(Expr::cust("length(owner_subject) >= 1"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_creators_owner_subject")
                    .table(Creators::Table)
                    .col(Creators::OwnerSubject)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Products::Table)
                    .col(uuid(Products::Id).primary_key())
                    .col(uuid(Products::CreatorId))
                    .col(string_len(Products::Title, 120))
                    .col(text(Products::Description))
                    .col(big_integer(Products::PriceMinor))
                    .col(string_len(Products::Currency, 3))
                    .col(boolean(Products::Active))
                    .col(big_integer_null(Products::Stock))
                    .col(timestamp_with_time_zone(Products::CreatedAt))
                    .col(timestamp_with_time_zone(Products::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Products::ArchivedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_products_creator")
                            .from(Products::Table, Products::CreatorId)
                            .to(Creators::Table, Creators::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .check(Expr::cust("price_minor > 0"))
                    .check(Expr::cust(currency_chars))
                    .check(Expr::cust("stock IS NULL OR stock >= 0"))
                    .check(Expr::cust("length(title) BETWEEN 1 AND 120"))
                    .check(Expr::cust("length(description) <= 5000"))
                    // An archived product is never on sale again.
                    .check(Expr::cust("archived_at IS NULL OR active = false"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_products_creator_id")
                    .table(Products::Table)
                    .col(Products::CreatorId)
                    .col(Products::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(crate::shared::idempotency_table("storefront_idempotency"))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Alias::new("storefront_idempotency")).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Products::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Creators::Table).to_owned())
            .await
    }
}
