//! Personal data in the booking store (ADR 0032): a guest's export, and the erasure that
//! `account.erased` asks for. A guest's bookings stay (restaurants account for them, deposits
//! point at them) under the guest's account id, which names no one after identity's erasure;
//! the name, phone number, note and cancellation reason the guest typed go, and so do the
//! delivered events that carried them.
use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, sea_query::Expr};
use thali_platform::db::begin_write;
use uuid::Uuid;

use super::{BookingStore, booking, restaurant};
use crate::domain::BookingError;

/// What an erased guest's bookings say instead of their name.
pub const ERASED_GUEST: &str = "Erased guest";

impl BookingStore {
    /// Anonymises the bookings of `account` as a guest, once per event (the inbox), in one
    /// transaction. Restaurants the account owns are the business's records, not personal
    /// fields, and stay as they are. Returns false for an event taken before.
    pub async fn erase_guest(&self, event_id: Uuid, account: Uuid, now: DateTime<Utc>) -> Result<bool, BookingError> {
        let now = now.trunc_subsecs(6);
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
            return Ok(false);
        }
        let ids: Vec<Uuid> = booking::Entity::find()
            .filter(booking::Column::GuestId.eq(account))
            .all(&txn)
            .await?
            .into_iter()
            .map(|b| b.id)
            .collect();
        booking::Entity::update_many()
            .col_expr(booking::Column::GuestName, Expr::value(ERASED_GUEST))
            .col_expr(booking::Column::Phone, Expr::value(""))
            .col_expr(booking::Column::Note, Expr::value(""))
            .filter(booking::Column::GuestId.eq(account))
            .exec(&txn)
            .await?;
        booking::Entity::update_many()
            .col_expr(booking::Column::CancelReason, Expr::value("erased"))
            .filter(booking::Column::GuestId.eq(account))
            .filter(booking::Column::CancelReason.is_not_null())
            .exec(&txn)
            .await?;
        let aggregates: Vec<String> = ids.iter().map(|id| format!("booking:{id}")).collect();
        thali_platform::privacy::forget_delivered_events(&txn, crate::workers::SERVICE, &aggregates).await?;
        txn.commit().await?;
        tracing::info!(%account, bookings = ids.len(), "guest's bookings anonymised");
        Ok(true)
    }

    /// What booking holds about `account`: its bookings as a guest and the restaurants it owns.
    pub async fn personal_data(&self, account: Uuid) -> Result<serde_json::Value, DbErr> {
        let bookings = booking::Entity::find()
            .filter(booking::Column::GuestId.eq(account))
            .order_by_asc(booking::Column::StartsAt)
            .all(&self.db)
            .await?;
        let restaurants = restaurant::Entity::find()
            .filter(restaurant::Column::OwnerId.eq(account))
            .order_by_asc(restaurant::Column::CreatedAt)
            .all(&self.db)
            .await?;
        Ok(serde_json::json!({
            "bookings": bookings.iter().map(|b| serde_json::json!({
                "id": b.id,
                "restaurant_id": b.restaurant_id,
                "party_size": b.party_size,
                "starts_at": b.starts_at,
                "ends_at": b.ends_at,
                "status": b.status,
                "guest_name": b.guest_name,
                "phone": b.phone,
                "note": b.note,
                "created_at": b.created_at,
                "cancelled_at": b.cancelled_at,
                "cancel_reason": b.cancel_reason,
                "deposit_minor": b.deposit_minor,
                "deposit_status": b.deposit_status,
            })).collect::<Vec<_>>(),
            "restaurants": restaurants.iter().map(|r| serde_json::json!({
                "id": r.id,
                "name": r.name,
                "city": r.city,
                "address": r.address,
                "time_zone": r.time_zone,
                "created_at": r.created_at,
            })).collect::<Vec<_>>(),
        }))
    }
}
