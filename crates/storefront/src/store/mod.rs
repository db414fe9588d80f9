//! Storefront persistence: sea-orm entities and one transaction per use case. Returns domain
//! types; rules that must hold under races (unique usernames, positive prices, one resource
//! per idempotency key) are database constraints.
use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use thali_platform::db::is_unique_violation;
pub use thali_platform::idempotency::Idempotency;
use thali_platform::idempotency::{Keys, Replay};
use uuid::Uuid;

use crate::domain::{
    Creator, Money, NewCreator, NewProduct, Product, ProductChanges, ProfileChanges, STOREFRONT_PRODUCTS_MAX,
    StorefrontError,
};

mod media;
mod privacy;
mod reservations;
pub use media::{MediaFor, MediaTarget, StoredMedia, media_row};
pub use privacy::Erased;
pub use reservations::{EXPIRE_BATCH, ReservationChange, reservation, reservation_line};

pub mod creator {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "creators")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        #[sea_orm(unique)]
        pub username: String,
        pub display_name: String,
        #[sea_orm(column_type = "Text")]
        pub bio: String,
        pub owner_subject: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        /// Erased with its owner's account (ADR 0032): found by no name any more.
        pub erased_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod product {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "products")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub creator_id: Uuid,
        pub title: String,
        #[sea_orm(column_type = "Text")]
        pub description: String,
        pub price_minor: i64,
        pub currency: String,
        pub active: bool,
        pub stock: Option<i64>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub archived_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod popularity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "storefront_popularity")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub username: String,
        pub reads: i64,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

impl From<DbErr> for StorefrontError {
    fn from(err: DbErr) -> Self {
        if thali_platform::db::is_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            StorefrontError::Unavailable
        } else {
            StorefrontError::Internal(err.to_string())
        }
    }
}

impl From<creator::Model> for Creator {
    fn from(m: creator::Model) -> Self {
        Creator {
            id: m.id,
            username: m.username,
            display_name: m.display_name,
            bio: m.bio,
            owner_subject: m.owner_subject,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

impl From<product::Model> for Product {
    fn from(m: product::Model) -> Self {
        Product {
            id: m.id,
            creator_id: m.creator_id,
            title: m.title,
            description: m.description,
            price: Money {
                amount_minor: m.price_minor,
                currency: m.currency,
            },
            active: m.active,
            stock: m.stock,
            created_at: m.created_at,
            updated_at: m.updated_at,
            archived_at: m.archived_at,
        }
    }
}

/// The storefront's idempotency keys (ADR 0005; the rules live in `platform::idempotency`).
const KEYS: Keys = Keys::new("storefront_idempotency");

/// The storefront's database.
#[derive(Debug, Clone)]
pub struct StorefrontStore {
    db: DatabaseConnection,
    /// The service's job queue, where its events are written (the outbox).
    queue: thali_platform::jobs::Queue,
}

impl StorefrontStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self::with_queue(db, thali_platform::jobs::Queue::new(crate::workers::SERVICE))
    }

    /// The store writing its events on `queue`.
    pub fn with_queue(db: DatabaseConnection, queue: thali_platform::jobs::Queue) -> Self {
        Self { db, queue }
    }

    /// The connection, for health checks.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Housekeeping: deletes idempotency records past their window. Returns how many.
    pub async fn prune_idempotency(&self, now: chrono::DateTime<Utc>) -> Result<u64, sea_orm::DbErr> {
        KEYS.prune(&self.db, now).await
    }

    /// Looks up a key already used by `subject` in `scope`.
    async fn replay(&self, scope: &str, subject: &str, idem: &Idempotency) -> Result<Option<Uuid>, StorefrontError> {
        match KEYS.replay(&self.db, scope, subject, idem, Utc::now()).await? {
            Replay::Fresh => Ok(None),
            Replay::Same(id) => Ok(Some(id)),
            Replay::Conflict => Err(StorefrontError::IdempotencyKeyReused),
        }
    }

    /// Records the key inside `txn`, pointing at the resource about to be created there. False
    /// when a concurrent request with the same key committed first.
    async fn claim(
        &self,
        txn: &impl ConnectionTrait,
        scope: &str,
        subject: &str,
        idem: &Idempotency,
        resource_id: Uuid,
    ) -> Result<bool, StorefrontError> {
        Ok(KEYS.claim(txn, scope, subject, idem, resource_id, Utc::now()).await?)
    }

    /// Creates a creator page owned by `owner`.
    pub async fn create_creator(
        &self,
        owner: &str,
        new: &NewCreator,
        idem: Option<&Idempotency>,
    ) -> Result<Creator, StorefrontError> {
        const SCOPE: &str = "create_creator";
        if let Some(idem) = idem
            && let Some(id) = self.replay(SCOPE, owner, idem).await?
        {
            return self.creator_by_id(id).await;
        }
        let id = Uuid::now_v7();
        let now = Utc::now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        if let Some(idem) = idem
            && !self.claim(&txn, SCOPE, owner, idem, id).await?
        {
            drop(txn);
            let id = self
                .replay(SCOPE, owner, idem)
                .await?
                .ok_or(StorefrontError::Unavailable)?;
            return self.creator_by_id(id).await;
        }
        let row = creator::ActiveModel {
            id: Set(id),
            username: Set(new.username.clone()),
            display_name: Set(new.display_name.clone()),
            bio: Set(new.bio.clone()),
            owner_subject: Set(owner.to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
            erased_at: Set(None),
        };
        let model = match row.insert(&txn).await {
            Ok(model) => model,
            Err(e) if is_unique_violation(&e) => return Err(StorefrontError::UsernameTaken),
            Err(e) => return Err(e.into()),
        };
        txn.commit().await?;
        Ok(model.into())
    }

    async fn creator_by_id(&self, id: Uuid) -> Result<Creator, StorefrontError> {
        creator::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .map(Into::into)
            .ok_or(StorefrontError::CreatorNotFound)
    }

    /// The creator page with this username.
    pub async fn creator(&self, username: &str) -> Result<Creator, StorefrontError> {
        creator::Entity::find()
            .filter(creator::Column::Username.eq(username))
            .filter(creator::Column::ErasedAt.is_null())
            .one(&self.db)
            .await?
            .map(Into::into)
            .ok_or(StorefrontError::CreatorNotFound)
    }

    async fn owned_creator(
        &self,
        txn: &impl ConnectionTrait,
        caller: &str,
        username: &str,
    ) -> Result<creator::Model, StorefrontError> {
        let found = creator::Entity::find()
            .filter(creator::Column::Username.eq(username))
            .filter(creator::Column::ErasedAt.is_null())
            .one(txn)
            .await?
            .ok_or(StorefrontError::CreatorNotFound)?;
        if found.owner_subject != caller {
            return Err(StorefrontError::NotOwner);
        }
        Ok(found)
    }

    /// Changes the profile of `username`, if `caller` owns it.
    pub async fn update_profile(
        &self,
        caller: &str,
        username: &str,
        changes: &ProfileChanges,
    ) -> Result<Creator, StorefrontError> {
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let found = self.owned_creator(&txn, caller, username).await?;
        if changes.display_name.is_none() && changes.bio.is_none() {
            return Ok(found.into());
        }
        let mut row: creator::ActiveModel = found.into();
        if let Some(d) = &changes.display_name {
            row.display_name = Set(d.clone());
        }
        if let Some(b) = &changes.bio {
            row.bio = Set(b.clone());
        }
        row.updated_at = Set(Utc::now());
        let model = row.update(&txn).await?;
        txn.commit().await?;
        Ok(model.into())
    }

    /// Adds a product to `username`'s page, if `caller` owns it.
    pub async fn create_product(
        &self,
        caller: &str,
        username: &str,
        new: &NewProduct,
        idem: Option<&Idempotency>,
    ) -> Result<Product, StorefrontError> {
        // The username is part of the fingerprint (see grpc.rs), not of the scope.
        let scope = "create_product".to_owned();
        if let Some(idem) = idem
            && let Some(id) = self.replay(&scope, caller, idem).await?
        {
            return self.product(id).await;
        }
        let id = Uuid::now_v7();
        let now = Utc::now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let owner = self.owned_creator(&txn, caller, username).await?;
        if let Some(idem) = idem
            && !self.claim(&txn, &scope, caller, idem, id).await?
        {
            drop(txn);
            let id = self
                .replay(&scope, caller, idem)
                .await?
                .ok_or(StorefrontError::Unavailable)?;
            return self.product(id).await;
        }
        let row = product::ActiveModel {
            id: Set(id),
            creator_id: Set(owner.id),
            title: Set(new.title.clone()),
            description: Set(new.description.clone()),
            price_minor: Set(new.price.amount_minor),
            currency: Set(new.price.currency.clone()),
            active: Set(new.active),
            stock: Set(new.stock),
            created_at: Set(now),
            updated_at: Set(now),
            archived_at: Set(None),
        };
        let model = row.insert(&txn).await?;
        txn.commit().await?;
        Ok(model.into())
    }

    async fn product(&self, id: Uuid) -> Result<Product, StorefrontError> {
        product::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .map(Into::into)
            .ok_or(StorefrontError::ProductNotFound)
    }

    /// Loads a product and checks `caller` owns its creator page; also returns the page's
    /// username, read in the same transaction (the cache key the write must invalidate).
    async fn owned_product(
        &self,
        txn: &impl ConnectionTrait,
        caller: &str,
        id: Uuid,
    ) -> Result<(product::Model, String), StorefrontError> {
        // Locked, so an archive cannot slip between this read and the update (PostgreSQL);
        // SQLite's IMMEDIATE transaction already holds the write lock.
        let found = product::Entity::find_by_id(id)
            .lock_exclusive()
            .one(txn)
            .await?
            .ok_or(StorefrontError::ProductNotFound)?;
        let owner = creator::Entity::find_by_id(found.creator_id)
            .one(txn)
            .await?
            .ok_or(StorefrontError::ProductNotFound)?;
        if owner.owner_subject != caller {
            return Err(StorefrontError::NotOwner);
        }
        Ok((found, owner.username))
    }

    /// Changes a product, if `caller` owns it and it is not archived. Returns it with the
    /// username of its page.
    pub async fn update_product(
        &self,
        caller: &str,
        id: Uuid,
        changes: &ProductChanges,
    ) -> Result<(Product, String), StorefrontError> {
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let (found, page) = self.owned_product(&txn, caller, id).await?;
        // An empty change changes nothing, archived or not.
        if changes.is_empty() {
            return Ok((found.into(), page));
        }
        if found.archived_at.is_some() {
            return Err(StorefrontError::ProductArchived);
        }
        let sold_out = changes.stock == Some(Some(0)) && found.stock != Some(0);
        let mut row: product::ActiveModel = found.into();
        if let Some(t) = &changes.title {
            row.title = Set(t.clone());
        }
        if let Some(d) = &changes.description {
            row.description = Set(d.clone());
        }
        if let Some(p) = &changes.price {
            row.price_minor = Set(p.amount_minor);
            row.currency = Set(p.currency.clone());
        }
        if let Some(a) = changes.active {
            row.active = Set(a);
        }
        if let Some(s) = changes.stock {
            row.stock = Set(s);
        }
        row.updated_at = Set(Utc::now());
        let model = row.update(&txn).await?;
        if sold_out {
            // After the product's row (whose lock orders concurrent writers), in the same commit.
            self.publish_sold_out(
                &txn,
                model.creator_id,
                &page,
                model.id,
                model.title.clone(),
                // The caller owns the page (owned_product checked it).
                caller,
            )
            .await?;
        }
        txn.commit().await?;
        Ok((model.into(), page))
    }

    /// Archives a product (kept for orders, never shown again). Archiving twice is a no-op.
    /// Returns it with the username of its page.
    pub async fn archive_product(&self, caller: &str, id: Uuid) -> Result<(Product, String), StorefrontError> {
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let (found, page) = self.owned_product(&txn, caller, id).await?;
        if found.archived_at.is_some() {
            return Ok((found.into(), page));
        }
        let now = Utc::now();
        let mut row: product::ActiveModel = found.into();
        row.active = Set(false);
        row.archived_at = Set(Some(now));
        row.updated_at = Set(now);
        let model = row.update(&txn).await?;
        txn.commit().await?;
        Ok((model.into(), page))
    }

    /// One page of a creator's unarchived products, newest first; inactive ones only for the
    /// owner. Returns the page and the id to continue after, if there may be more.
    pub async fn list_products(
        &self,
        caller: Option<&str>,
        username: &str,
        page_size: u64,
        after: Option<Uuid>,
    ) -> Result<(Vec<Product>, Option<Uuid>), StorefrontError> {
        let owner = self.creator(username).await?;
        let mut query = product::Entity::find()
            .filter(product::Column::CreatorId.eq(owner.id))
            .filter(product::Column::ArchivedAt.is_null());
        if caller != Some(owner.owner_subject.as_str()) {
            query = query.filter(product::Column::Active.eq(true));
        }
        if let Some(after) = after {
            query = query.filter(product::Column::Id.lt(after));
        }
        let mut rows = query
            .order_by_desc(product::Column::Id)
            .limit(page_size + 1)
            .all(&self.db)
            .await?;
        let more = rows.len() as u64 > page_size;
        rows.truncate(page_size as usize);
        let next = if more { rows.last().map(|r| r.id) } else { None };
        Ok((rows.into_iter().map(Into::into).collect(), next))
    }

    /// The public storefront: the profile and its active products, newest first.
    pub async fn storefront(&self, username: &str) -> Result<(Creator, Vec<Product>), StorefrontError> {
        let owner = self.creator(username).await?;
        let rows = product::Entity::find()
            .filter(product::Column::CreatorId.eq(owner.id))
            .filter(product::Column::ArchivedAt.is_null())
            .filter(product::Column::Active.eq(true))
            .order_by_desc(product::Column::Id)
            .limit(STOREFRONT_PRODUCTS_MAX)
            .all(&self.db)
            .await?;
        Ok((owner, rows.into_iter().map(Into::into).collect()))
    }

    /// Adds read counts of storefronts (an atomic upsert per username).
    pub async fn record_reads(&self, counts: &[(String, u64)]) -> Result<(), StorefrontError> {
        use sea_orm::{ExprTrait, sea_query::OnConflict};
        let now = Utc::now();
        for (username, reads) in counts {
            let reads = i64::try_from(*reads).unwrap_or(i64::MAX);
            let row = popularity::ActiveModel {
                username: Set(username.clone()),
                reads: Set(reads),
                updated_at: Set(now),
            };
            popularity::Entity::insert(row)
                .on_conflict(
                    OnConflict::column(popularity::Column::Username)
                        .value(
                            popularity::Column::Reads,
                            sea_orm::sea_query::Expr::col((popularity::Entity, popularity::Column::Reads)).add(reads),
                        )
                        .value(popularity::Column::UpdatedAt, now)
                        .to_owned(),
                )
                .exec_without_returning(&self.db)
                .await?;
        }
        Ok(())
    }

    /// The most-read storefronts, most read first.
    pub async fn most_read(&self, limit: u64) -> Result<Vec<String>, StorefrontError> {
        let rows = popularity::Entity::find()
            .order_by_desc(popularity::Column::Reads)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|r| r.username).collect())
    }
}
