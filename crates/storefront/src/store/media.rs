//! Uploaded media in the storefront store (ADR 0033): which object is which product's image or
//! which creator's avatar. The bytes live in the object store; a row is written only after its
//! object is stored, in a transaction that checks ownership again.
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use thali_platform::db::{begin_write, is_unique_violation};
use uuid::Uuid;

use super::{StorefrontStore, creator, product};
use crate::domain::{StorefrontError, media::Image};

pub mod media_row {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "media")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub object_key: String,
        pub creator_id: Uuid,
        pub product_id: Option<Uuid>,
        /// `avatar` or `product`.
        pub kind: String,
        pub content_type: String,
        pub width: i32,
        pub height: i32,
        pub size_bytes: i64,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What an upload is for, once its owner is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaFor {
    Product { product_id: Uuid },
    Avatar { username: String },
}

/// Where an accepted upload goes: the creator page it belongs to.
#[derive(Debug, Clone)]
pub struct MediaTarget {
    pub creator_id: Uuid,
    pub username: String,
    pub product_id: Option<Uuid>,
}

/// A stored upload: its row, and the object it replaced (an avatar's previous picture), which
/// the caller removes from the object store after the commit.
#[derive(Debug, Clone)]
pub struct StoredMedia {
    pub row: media_row::Model,
    pub username: String,
    pub replaced: Option<String>,
}

impl StorefrontStore {
    /// Checks that `caller` may add media to `target` (before any byte is read): the owner of
    /// the creator page, a product that is not archived.
    pub async fn media_target(&self, caller: &str, target: &MediaFor) -> Result<MediaTarget, StorefrontError> {
        let (owner, product_id) = match target {
            MediaFor::Product { product_id } => {
                let p = product::Entity::find_by_id(*product_id)
                    .one(&self.db)
                    .await?
                    .ok_or(StorefrontError::ProductNotFound)?;
                if p.archived_at.is_some() {
                    return Err(StorefrontError::ProductArchived);
                }
                let owner = creator::Entity::find_by_id(p.creator_id)
                    .filter(creator::Column::ErasedAt.is_null())
                    .one(&self.db)
                    .await?
                    .ok_or(StorefrontError::ProductNotFound)?;
                (owner, Some(p.id))
            }
            MediaFor::Avatar { username } => {
                let owner = creator::Entity::find()
                    .filter(creator::Column::Username.eq(username.as_str()))
                    .filter(creator::Column::ErasedAt.is_null())
                    .one(&self.db)
                    .await?
                    .ok_or(StorefrontError::CreatorNotFound)?;
                (owner, None)
            }
        };
        if owner.owner_subject != caller {
            return Err(StorefrontError::NotOwner);
        }
        Ok(MediaTarget {
            creator_id: owner.id,
            username: owner.username,
            product_id,
        })
    }

    /// Records the stored object `key` (`image`, `size` bytes) for `target`, checking again in
    /// the transaction that `caller` owns it. An avatar replaces the previous one.
    pub async fn add_media(
        &self,
        caller: &str,
        target: &MediaTarget,
        key: &str,
        image: Image,
        size: usize,
        now: DateTime<Utc>,
    ) -> Result<StoredMedia, StorefrontError> {
        let txn = begin_write(&self.db).await?;
        // Locked (PostgreSQL; SQLite's write transaction already is): an erasure cannot commit
        // between this check and the insert.
        let owner = creator::Entity::find_by_id(target.creator_id)
            .filter(creator::Column::ErasedAt.is_null())
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or(StorefrontError::CreatorNotFound)?;
        if owner.owner_subject != caller {
            return Err(StorefrontError::NotOwner);
        }
        let mut replaced = None;
        if let Some(product_id) = target.product_id {
            let p = product::Entity::find_by_id(product_id)
                .one(&txn)
                .await?
                .ok_or(StorefrontError::ProductNotFound)?;
            if p.archived_at.is_some() || p.creator_id != owner.id {
                return Err(StorefrontError::ProductArchived);
            }
        } else if let Some(old) = media_row::Entity::find()
            .filter(media_row::Column::CreatorId.eq(owner.id))
            .filter(media_row::Column::Kind.eq("avatar"))
            .one(&txn)
            .await?
        {
            media_row::Entity::delete_by_id(old.object_key.clone())
                .exec(&txn)
                .await?;
            replaced = Some(old.object_key);
        }
        let row = media_row::ActiveModel {
            object_key: Set(key.to_owned()),
            creator_id: Set(owner.id),
            product_id: Set(target.product_id),
            kind: Set(if target.product_id.is_some() {
                "product"
            } else {
                "avatar"
            }
            .to_owned()),
            content_type: Set(image.kind.content_type().to_owned()),
            width: Set(i32::try_from(image.width).unwrap_or(i32::MAX)),
            height: Set(i32::try_from(image.height).unwrap_or(i32::MAX)),
            size_bytes: Set(i64::try_from(size).unwrap_or(i64::MAX)),
            created_at: Set(now),
        };
        let row = match row.insert(&txn).await {
            Ok(row) => row,
            // Two avatars racing: the database keeps one; the loser may try again.
            Err(e) if is_unique_violation(&e) => return Err(StorefrontError::Unavailable),
            Err(e) => return Err(e.into()),
        };
        txn.commit().await?;
        Ok(StoredMedia {
            row,
            username: owner.username,
            replaced,
        })
    }

    /// The images of these products, oldest first, by product.
    pub async fn product_images(
        &self,
        products: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<media_row::Model>>, StorefrontError> {
        let mut out: HashMap<Uuid, Vec<media_row::Model>> = HashMap::new();
        if products.is_empty() {
            return Ok(out);
        }
        let rows = media_row::Entity::find()
            .filter(media_row::Column::ProductId.is_in(products.iter().copied()))
            .order_by_asc(media_row::Column::CreatedAt)
            .all(&self.db)
            .await?;
        for row in rows {
            if let Some(p) = row.product_id {
                out.entry(p).or_default().push(row);
            }
        }
        Ok(out)
    }

    /// The creator's avatar, if any.
    pub async fn avatar(&self, creator_id: Uuid) -> Result<Option<media_row::Model>, StorefrontError> {
        Ok(media_row::Entity::find()
            .filter(media_row::Column::CreatorId.eq(creator_id))
            .filter(media_row::Column::Kind.eq("avatar"))
            .one(&self.db)
            .await?)
    }
}
