//! Uploaded media (ADR 0033): one row per stored object, a product's image or a creator's avatar.
//! The object's key is random; a creator has at most one avatar (a partial unique index).
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Media {
    Table,
    ObjectKey,
    CreatorId,
    ProductId,
    Kind,
    ContentType,
    Width,
    Height,
    SizeBytes,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Creators {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Products {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Media::Table)
                    .col(string_len(Media::ObjectKey, 64).primary_key())
                    .col(uuid(Media::CreatorId))
                    .col(uuid_null(Media::ProductId))
                    .col(string_len(Media::Kind, 10))
                    .col(string_len(Media::ContentType, 20))
                    .col(integer(Media::Width))
                    .col(integer(Media::Height))
                    .col(big_integer(Media::SizeBytes))
                    .col(timestamp_with_time_zone(Media::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_media_creator")
                            .from(Media::Table, Media::CreatorId)
                            .to(Creators::Table, Creators::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_media_product")
                            .from(Media::Table, Media::ProductId)
                            .to(Products::Table, Products::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .check(Expr::cust(
                        "(kind = 'avatar' AND product_id IS NULL) OR (kind = 'product' AND product_id IS NOT NULL)",
                    ))
                    .check(Expr::cust(
                        "content_type IN ('image/jpeg', 'image/png', 'image/webp', 'image/avif')",
                    ))
                    .check(Expr::cust("width > 0 AND height > 0 AND size_bytes > 0"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_media_product")
                    .table(Media::Table)
                    .col(Media::ProductId)
                    .col(Media::CreatedAt)
                    .to_owned(),
            )
            .await?;
        // One avatar per creator, kept by the database.
        manager
            .get_connection()
            .execute_unprepared("CREATE UNIQUE INDEX idx_media_one_avatar ON media (creator_id) WHERE kind = 'avatar'")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Media::Table).to_owned()).await
    }
}
