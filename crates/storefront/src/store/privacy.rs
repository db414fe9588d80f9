//! Personal data in the storefront store (ADR 0032). An erased account's stores stay as rows
//! (orders and reservations point at them) but are found by no name: the username becomes the
//! pseudonym payments gives the same store, the display name and bio go, and every product is
//! archived.
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, sea_query::Expr};
use thali_platform::{db::begin_write, privacy::erased_handle};
use uuid::Uuid;

use super::{StorefrontStore, creator, media_row, product};
use crate::domain::StorefrontError;

/// What an erased store is called (the column needs a name).
pub const ERASED_STORE: &str = "Erased store";

/// What an erasure took away: the stores' former usernames (for the cache to forget) and the
/// objects of their media (for the object store to delete once committed).
#[derive(Debug, Clone, Default)]
pub struct Erased {
    pub usernames: Vec<String>,
    pub objects: Vec<String>,
}

impl StorefrontStore {
    /// Erases the stores `account` owns, once per event (the inbox), in one transaction: their
    /// avatars and product images go too. Returns what was taken, or None for an event taken
    /// before.
    pub async fn erase_owner(
        &self,
        event_id: Uuid,
        account: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<Erased>, StorefrontError> {
        let txn = begin_write(&self.db).await?;
        if !thali_platform::events::accept(
            &txn,
            crate::workers::SERVICE,
            event_id,
            thali_platform::privacy::ERASED,
            now,
        )
        .await?
        {
            return Ok(None);
        }
        let owned = creator::Entity::find()
            .filter(creator::Column::OwnerSubject.eq(account.to_string()))
            .filter(creator::Column::ErasedAt.is_null())
            .lock_exclusive()
            .all(&txn)
            .await?;
        let mut names = Vec::with_capacity(owned.len());
        let mut objects = Vec::new();
        for c in owned {
            let media = media_row::Entity::find()
                .filter(media_row::Column::CreatorId.eq(c.id))
                .all(&txn)
                .await?;
            objects.extend(media.into_iter().map(|m| m.object_key));
            media_row::Entity::delete_many()
                .filter(media_row::Column::CreatorId.eq(c.id))
                .exec(&txn)
                .await?;
            creator::Entity::update_many()
                .col_expr(
                    creator::Column::Username,
                    Expr::value(erased_handle(account, &c.username)),
                )
                .col_expr(creator::Column::DisplayName, Expr::value(ERASED_STORE))
                .col_expr(creator::Column::Bio, Expr::value(""))
                .col_expr(creator::Column::ErasedAt, Expr::value(now))
                .col_expr(creator::Column::UpdatedAt, Expr::value(now))
                .filter(creator::Column::Id.eq(c.id))
                .exec(&txn)
                .await?;
            product::Entity::update_many()
                .col_expr(product::Column::Active, Expr::value(false))
                .col_expr(product::Column::ArchivedAt, Expr::value(now))
                .col_expr(product::Column::UpdatedAt, Expr::value(now))
                .filter(product::Column::CreatorId.eq(c.id))
                .filter(product::Column::ArchivedAt.is_null())
                .exec(&txn)
                .await?;
            // The store's read count is kept under its name.
            super::popularity::Entity::delete_by_id(c.username.clone())
                .exec(&txn)
                .await?;
            thali_platform::privacy::forget_delivered_events(
                &txn,
                crate::workers::SERVICE,
                &[format!("creator:{}", c.id)],
            )
            .await?;
            names.push(c.username);
        }
        txn.commit().await?;
        tracing::info!(%account, stores = names.len(), objects = objects.len(), "stores of an erased account erased");
        Ok(Some(Erased {
            usernames: names,
            objects,
        }))
    }

    /// What storefront holds about `account`: the stores it owns and their products.
    pub async fn personal_data(&self, account: Uuid) -> Result<serde_json::Value, DbErr> {
        let owned = creator::Entity::find()
            .filter(creator::Column::OwnerSubject.eq(account.to_string()))
            .order_by_asc(creator::Column::CreatedAt)
            .all(&self.db)
            .await?;
        let mut stores = Vec::with_capacity(owned.len());
        for c in owned {
            let products = product::Entity::find()
                .filter(product::Column::CreatorId.eq(c.id))
                .order_by_asc(product::Column::CreatedAt)
                .all(&self.db)
                .await?;
            let media = media_row::Entity::find()
                .filter(media_row::Column::CreatorId.eq(c.id))
                .order_by_asc(media_row::Column::CreatedAt)
                .all(&self.db)
                .await?;
            stores.push(serde_json::json!({
                "id": c.id,
                "username": c.username,
                "display_name": c.display_name,
                "bio": c.bio,
                "created_at": c.created_at,
                "updated_at": c.updated_at,
                "erased_at": c.erased_at,
                "products": products.iter().map(|p| serde_json::json!({
                    "id": p.id,
                    "title": p.title,
                    "description": p.description,
                    "price_minor": p.price_minor,
                    "currency": p.currency,
                    "active": p.active,
                    "stock": p.stock,
                    "created_at": p.created_at,
                    "archived_at": p.archived_at,
                })).collect::<Vec<_>>(),
                "media": media.iter().map(|m| serde_json::json!({
                    "id": m.object_key,
                    "kind": m.kind,
                    "product_id": m.product_id,
                    "content_type": m.content_type,
                    "size_bytes": m.size_bytes,
                    "created_at": m.created_at,
                })).collect::<Vec<_>>(),
            }));
        }
        Ok(serde_json::json!({ "stores": stores }))
    }
}
