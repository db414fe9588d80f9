//! Stock reservations in the store. Holding units is one conditional decrement per product
//! (`… WHERE stock IS NULL OR stock >= quantity`), in product-id order, in the transaction that
//! writes the reservation: the database, not a read in Rust, decides who gets the last unit, and
//! the products' `stock >= 0` check backs it up. Commit and release move the reservation's state
//! with a conditional update too, so an expiry sweep racing a commit settles it one way only.
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use thali_platform::db::{is_unique_violation, statement};
use thali_proto::events::v1::{ProductOutOfStock, event::Payload};
use uuid::Uuid;

use super::{StorefrontStore, creator};
use crate::domain::{
    Money, Reservation, ReservationRequest, ReservationState, ReservedLine, StorefrontError, reservation_total,
};

pub mod reservation {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "stock_reservations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub creator_id: Uuid,
        pub state: String,
        pub currency: String,
        pub total_minor: i64,
        pub request_hash: String,
        pub expires_at: DateTimeUtc,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod reservation_line {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "stock_reservation_lines")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub reservation_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub product_id: Uuid,
        pub title: String,
        pub quantity: i64,
        pub unit_price_minor: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What a reservation call did.
#[derive(Debug, Clone)]
pub struct ReservationChange {
    pub reservation: Reservation,
    /// Limited stock of some product moved: the page's cached storefront is out of date.
    pub stock_changed: bool,
}

/// Held reservations the expiry sweep releases per run.
pub const EXPIRE_BATCH: u64 = 100;

impl StorefrontStore {
    /// Holds the units of `req` at the products' current prices (see the module's rules).
    /// Replays the reservation an earlier call with the same id and request made.
    pub async fn reserve_stock(&self, req: &ReservationRequest) -> Result<ReservationChange, StorefrontError> {
        let hash = thali_platform::idempotency::Idempotency::new(String::new(), req).request_hash;
        if let Some(existing) = self.replay_reservation(req.id, &hash).await? {
            return Ok(existing);
        }
        let now = self.queue.now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let owner = creator::Entity::find()
            .filter(creator::Column::Username.eq(&req.username))
            .one(&txn)
            .await?
            .ok_or(StorefrontError::CreatorNotFound)?;
        let backend = txn.get_database_backend();
        let mut lines = Vec::with_capacity(req.lines.len());
        let mut stock_changed = false;
        let mut sold_out = Vec::new();
        for (product_id, quantity) in &req.lines {
            let taken = txn
                .query_one_raw(statement(
                    backend,
                    "UPDATE products SET stock = stock - $1, updated_at = $2 \
                     WHERE id = $3 AND creator_id = $4 AND active = $5 AND archived_at IS NULL \
                     AND (stock IS NULL OR stock >= $1) \
                     RETURNING title, price_minor, currency, stock",
                    vec![
                        (*quantity).into(),
                        now.into(),
                        (*product_id).into(),
                        owner.id.into(),
                        true.into(),
                    ],
                ))
                .await?;
            let Some(row) = taken else {
                return Err(why_not_taken(&txn, owner.id, *product_id).await?);
            };
            let title: String = row.try_get("", "title")?;
            let left: Option<i64> = row.try_get("", "stock")?;
            if let Some(left) = left {
                stock_changed = true;
                if left == 0 {
                    sold_out.push((*product_id, title.clone()));
                }
            }
            lines.push(ReservedLine {
                product_id: *product_id,
                title,
                quantity: *quantity,
                unit_price: Money {
                    amount_minor: row.try_get("", "price_minor")?,
                    currency: row.try_get("", "currency")?,
                },
            });
        }
        let total = reservation_total(&lines)?;
        let row = reservation::ActiveModel {
            id: Set(req.id),
            creator_id: Set(owner.id),
            state: Set(ReservationState::Held.as_str().to_owned()),
            currency: Set(total.currency.clone()),
            total_minor: Set(total.amount_minor),
            request_hash: Set(hash.clone()),
            expires_at: Set(req.expires_at(now)),
            created_at: Set(now),
            updated_at: Set(now),
        };
        let inserted = match row.insert(&txn).await {
            Ok(inserted) => inserted,
            // A concurrent call with the same id committed first: answer as it did.
            Err(e) if is_unique_violation(&e) => {
                drop(txn);
                return self
                    .replay_reservation(req.id, &hash)
                    .await?
                    .ok_or(StorefrontError::Unavailable);
            }
            Err(e) => return Err(e.into()),
        };
        reservation_line::Entity::insert_many(lines.iter().map(|l| reservation_line::ActiveModel {
            reservation_id: Set(req.id),
            product_id: Set(l.product_id),
            title: Set(l.title.clone()),
            quantity: Set(l.quantity),
            unit_price_minor: Set(l.unit_price.amount_minor),
        }))
        .exec_without_returning(&txn)
        .await?;
        for (product_id, title) in sold_out {
            self.publish_sold_out(&txn, owner.id, &owner.username, product_id, title, &owner.owner_subject)
                .await?;
        }
        txn.commit().await?;
        Ok(ReservationChange {
            reservation: assemble(inserted, owner, lines),
            stock_changed,
        })
    }

    /// The reservation `id` made by the same request, if there is one; IDEMPOTENCY_KEY_REUSED
    /// when the id was used for another request.
    async fn replay_reservation(&self, id: Uuid, hash: &str) -> Result<Option<ReservationChange>, StorefrontError> {
        let Some(row) = reservation::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(None);
        };
        if row.request_hash != hash {
            return Err(StorefrontError::IdempotencyKeyReused);
        }
        Ok(Some(ReservationChange {
            reservation: self.load_reservation(&self.db, row).await?,
            stock_changed: false,
        }))
    }

    async fn reservation_row(&self, id: Uuid) -> Result<reservation::Model, StorefrontError> {
        reservation::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or(StorefrontError::ReservationNotFound)
    }

    async fn load_reservation(
        &self,
        conn: &impl ConnectionTrait,
        row: reservation::Model,
    ) -> Result<Reservation, StorefrontError> {
        let owner = creator::Entity::find_by_id(row.creator_id)
            .one(conn)
            .await?
            .ok_or_else(|| StorefrontError::Internal(format!("reservation {} has no creator", row.id)))?;
        let lines = reservation_line::Entity::find()
            .filter(reservation_line::Column::ReservationId.eq(row.id))
            .order_by_asc(reservation_line::Column::ProductId)
            .all(conn)
            .await?
            .into_iter()
            .map(|l| ReservedLine {
                product_id: l.product_id,
                title: l.title,
                quantity: l.quantity,
                unit_price: Money {
                    amount_minor: l.unit_price_minor,
                    currency: row.currency.clone(),
                },
            })
            .collect();
        Ok(assemble(row, owner, lines))
    }

    /// The reservation `id`, as it stands.
    pub async fn reservation(&self, id: Uuid) -> Result<Reservation, StorefrontError> {
        let row = self.reservation_row(id).await?;
        self.load_reservation(&self.db, row).await
    }

    /// Sells the held units for good. Committing twice answers the committed reservation.
    pub async fn commit_reservation(&self, id: Uuid) -> Result<ReservationChange, StorefrontError> {
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let (reservation, _) = self.settle(&txn, id, ReservationState::Committed).await?;
        txn.commit().await?;
        Ok(ReservationChange {
            reservation,
            stock_changed: false,
        })
    }

    /// Puts the held units back on sale. Releasing twice answers the released reservation.
    pub async fn release_reservation(&self, id: Uuid) -> Result<ReservationChange, StorefrontError> {
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let (reservation, moved) = self.settle(&txn, id, ReservationState::Released).await?;
        let mut stock_changed = false;
        if moved {
            let backend = txn.get_database_backend();
            let now = self.queue.now();
            for line in &reservation.lines {
                let back = txn
                    .execute_raw(statement(
                        backend,
                        "UPDATE products SET stock = stock + $1, updated_at = $2 WHERE id = $3 AND stock IS NOT NULL",
                        vec![line.quantity.into(), now.into(), line.product_id.into()],
                    ))
                    .await?;
                stock_changed |= back.rows_affected() == 1;
            }
        }
        txn.commit().await?;
        Ok(ReservationChange {
            reservation,
            stock_changed,
        })
    }

    /// Moves a held reservation to `to` and loads it. Already there: not moved, no error. In the
    /// other final state: that state's error.
    async fn settle(
        &self,
        txn: &DatabaseTransaction,
        id: Uuid,
        to: ReservationState,
    ) -> Result<(Reservation, bool), StorefrontError> {
        let moved = self.move_state(txn, id, to).await?;
        let row = reservation::Entity::find_by_id(id)
            .one(txn)
            .await?
            .ok_or(StorefrontError::ReservationNotFound)?;
        let now = ReservationState::parse(&row.state);
        if !moved && now != Some(to) {
            return Err(match now {
                Some(ReservationState::Released) => StorefrontError::ReservationReleased,
                Some(ReservationState::Committed) => StorefrontError::ReservationCommitted,
                _ => StorefrontError::Internal(format!("reservation {id} in state {}", row.state)),
            });
        }
        Ok((self.load_reservation(txn, row).await?, moved))
    }

    /// held → `to`, only from held. True when this call moved it.
    async fn move_state(
        &self,
        txn: &DatabaseTransaction,
        id: Uuid,
        to: ReservationState,
    ) -> Result<bool, StorefrontError> {
        let moved = txn
            .execute_raw(statement(
                txn.get_database_backend(),
                "UPDATE stock_reservations SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4",
                vec![
                    to.as_str().into(),
                    self.queue.now().into(),
                    id.into(),
                    ReservationState::Held.as_str().into(),
                ],
            ))
            .await?;
        Ok(moved.rows_affected() == 1)
    }

    /// Held reservations past their expiry, oldest first (at most [`EXPIRE_BATCH`]).
    pub async fn expired_reservations(&self, now: DateTime<Utc>) -> Result<Vec<Uuid>, StorefrontError> {
        Ok(reservation::Entity::find()
            .select_only()
            .column(reservation::Column::Id)
            .filter(reservation::Column::State.eq(ReservationState::Held.as_str()))
            .filter(reservation::Column::ExpiresAt.lte(now))
            .order_by_asc(reservation::Column::ExpiresAt)
            .limit(EXPIRE_BATCH)
            .into_tuple::<Uuid>()
            .all(&self.db)
            .await?)
    }

    /// Releases every held reservation past its expiry (in batches). Returns the usernames whose
    /// storefront stock changed, once each.
    pub async fn release_expired(&self) -> Result<Vec<String>, StorefrontError> {
        let mut pages = Vec::new();
        loop {
            let due = self.expired_reservations(self.queue.now()).await?;
            let full = due.len() as u64 == EXPIRE_BATCH;
            for id in due {
                match self.release_reservation(id).await {
                    Ok(change) => {
                        tracing::info!(reservation_id = %id, "held stock expired and released");
                        if change.stock_changed && !pages.contains(&change.reservation.username) {
                            pages.push(change.reservation.username);
                        }
                    }
                    // Committed in the meantime: it is sold, nothing to release.
                    Err(StorefrontError::ReservationCommitted) => {}
                    Err(e) => return Err(e),
                }
            }
            if !full {
                return Ok(pages);
            }
        }
    }

    /// Writes `product.out_of_stock` for a product whose stock just reached zero, in `txn`. The
    /// event is the page owner's (`owner_subject`, an account id): notifications tells that
    /// account, whoever's checkout took the last unit.
    pub(super) async fn publish_sold_out(
        &self,
        txn: &DatabaseTransaction,
        creator_id: Uuid,
        username: &str,
        product_id: Uuid,
        title: String,
        owner_subject: &str,
    ) -> Result<(), StorefrontError> {
        let event = thali_platform::events::new_event(
            crate::workers::SERVICE,
            format!("creator:{creator_id}"),
            Uuid::parse_str(owner_subject).ok(),
            Payload::ProductOutOfStock(ProductOutOfStock {
                creator_id: creator_id.to_string(),
                username: username.to_owned(),
                product_id: product_id.to_string(),
                product_name: title,
            }),
            self.queue.now(),
        );
        thali_platform::events::publish(txn, &self.queue, &event).await?;
        Ok(())
    }
}

/// Why a product's conditional decrement matched no row: gone or another page's, off sale, or
/// not enough left. Read in the same transaction (on PostgreSQL after the failed update, so it
/// sees what that update saw or later).
async fn why_not_taken(
    txn: &DatabaseTransaction,
    creator_id: Uuid,
    product_id: Uuid,
) -> Result<StorefrontError, StorefrontError> {
    use super::product;
    let Some(found) = product::Entity::find_by_id(product_id).one(txn).await? else {
        return Ok(StorefrontError::ProductNotFound);
    };
    Ok(if found.creator_id != creator_id {
        StorefrontError::ProductNotFound
    } else if !found.active || found.archived_at.is_some() {
        StorefrontError::ProductUnavailable(product_id)
    } else {
        StorefrontError::OutOfStock {
            product_id,
            available: found.stock.unwrap_or(0),
        }
    })
}

fn assemble(row: reservation::Model, owner: creator::Model, lines: Vec<ReservedLine>) -> Reservation {
    Reservation {
        id: row.id,
        creator_id: row.creator_id,
        username: owner.username,
        owner_subject: owner.owner_subject,
        lines,
        total: Money {
            amount_minor: row.total_minor,
            currency: row.currency,
        },
        state: ReservationState::parse(&row.state).unwrap_or(ReservationState::Held),
        expires_at: row.expires_at,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}
