//! Deposits in the booking store: the booking that waits for its deposit holds its table; what
//! payments says about the deposit's order (paid, expired, failed, refunded) moves it, each event
//! taken once (the inbox) in the transaction of its effect; a paid deposit that must go back is a
//! `booking.deposit_refund_requested` event for payments, written in the same transaction.
use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, EntityTrait, QuerySelect};
use thali_platform::{
    db::{begin_write, statement},
    jobs::NewJob,
};
use thali_proto::events::v1::{BookingCancelled, BookingConfirmed, BookingDepositRefundRequested, event::Payload};
use uuid::Uuid;

use super::{BookingStore, Changed, REMIND, REMIND_BEFORE, Remind, booking, restaurant, summary};
use crate::domain::{Booking, BookingError, DepositOutcome, may_mark_no_show};

/// The job that asks payments for a booking's deposit order (until payments answers).
pub const REQUEST_DEPOSIT: &str = "booking.request_deposit";
/// The job that gives the table back when payments never said the deposit was paid.
pub const RELEASE_UNPAID: &str = "booking.release_unpaid";

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct DepositJob {
    pub booking_id: Uuid,
}

/// What payments needs to create a booking's deposit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositAsk {
    pub booking_id: Uuid,
    pub guest: Uuid,
    pub owner: Uuid,
    pub restaurant_name: String,
    pub guests: i64,
    pub per_guest_minor: i64,
}

impl BookingStore {
    /// A booking is confirmed: `booking.confirmed`, and the day-before reminder.
    pub(super) async fn confirmed(
        &self,
        txn: &impl ConnectionTrait,
        row: &booking::Model,
        r: &restaurant::Model,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        let confirmed = Payload::BookingConfirmed(BookingConfirmed {
            booking: Some(summary(row, r)),
        });
        self.publish(txn, row, r, confirmed).await?;
        let remind_at = row.starts_at - REMIND_BEFORE;
        if remind_at > now {
            let job = NewJob::new(REMIND, &Remind { booking_id: row.id })
                .run_at(remind_at)
                .unique(format!("remind:{}", row.id));
            self.queue.enqueue(txn, job).await?;
        }
        Ok(())
    }

    /// Asks payments, through the outbox, to give a paid deposit back.
    pub(super) async fn refund_deposit(
        &self,
        txn: &impl ConnectionTrait,
        row: &booking::Model,
        r: &restaurant::Model,
        why: &str,
    ) -> Result<(), DbErr> {
        let Some(order_id) = row.deposit_order_id else {
            return Ok(());
        };
        let payload = Payload::BookingDepositRefundRequested(BookingDepositRefundRequested {
            booking_id: row.id.to_string(),
            order_id: order_id.to_string(),
            reason: why.to_owned(),
        });
        self.publish(txn, row, r, payload).await
    }

    /// What to ask payments for booking `id`'s deposit; None when it needs no order (no deposit,
    /// asked already, or no longer waiting for one).
    pub async fn deposit_ask(&self, id: Uuid) -> Result<Option<DepositAsk>, BookingError> {
        let Some(b) = booking::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(None);
        };
        if b.status != "pending_payment" || b.deposit_order_id.is_some() {
            return Ok(None);
        }
        let Some(amount) = b.deposit_minor else {
            return Ok(None);
        };
        let r = self.restaurant_row(b.restaurant_id).await?;
        let guests = i64::from(b.party_size.max(1));
        Ok(Some(DepositAsk {
            booking_id: b.id,
            guest: b.guest_id,
            owner: r.owner_id,
            restaurant_name: r.name,
            guests,
            per_guest_minor: amount / guests,
        }))
    }

    /// Records the payments order of booking `id`'s deposit (the first answer wins; payments
    /// answers the same order to every ask).
    pub async fn set_deposit_order(&self, id: Uuid, order_id: Uuid) -> Result<(), BookingError> {
        self.db
            .execute_raw(statement(
                self.db.get_database_backend(),
                "UPDATE bookings SET deposit_order_id = $1 WHERE id = $2 AND deposit_order_id IS NULL",
                vec![order_id.into(), id.into()],
            ))
            .await?;
        Ok(())
    }

    /// Applies what payments said of booking `booking_id`'s deposit order, once per event.
    /// Paid: a waiting booking is confirmed; one released or cancelled meanwhile gets its money
    /// back. Expired or failed: a waiting booking is released. Refunded in full: noted. Answers
    /// the booking when its table changed hands (the caller drops cached days), and whether the
    /// event was new.
    pub async fn deposit_settled(
        &self,
        event_id: Uuid,
        booking_id: Uuid,
        order_id: Uuid,
        outcome: DepositOutcome,
        now: DateTime<Utc>,
    ) -> Result<(bool, Option<Changed<Booking>>), BookingError> {
        let now = now.trunc_subsecs(6);
        let txn = begin_write(&self.db).await?;
        if !thali_platform::events::accept(&txn, crate::workers::SERVICE, event_id, outcome.event_type(), now).await? {
            return Ok((false, None));
        }
        let Some(row) = booking::Entity::find_by_id(booking_id)
            .lock_exclusive()
            .one(&txn)
            .await?
        else {
            return Err(BookingError::BookingNotFound);
        };
        if row.deposit_order_id.is_some_and(|known| known != order_id) {
            // Not this booking's deposit order: nothing to do (and nothing to retry).
            tracing::warn!(%booking_id, %order_id, "event for another deposit order than the booking's");
            txn.commit().await?;
            return Ok((true, None));
        }
        let r = self.restaurant_row(row.restaurant_id).await?;
        let backend = txn.get_database_backend();
        let waiting = row.status == "pending_payment";
        let mut changed = None;
        let mut released = false;
        match outcome {
            DepositOutcome::Paid if waiting => {
                txn.execute_raw(statement(
                    backend,
                    "UPDATE bookings SET status = 'confirmed', deposit_status = 'paid', deposit_order_id = $1 WHERE id = $2",
                    vec![order_id.into(), booking_id.into()],
                ))
                .await?;
                self.confirmed(&txn, &row, &r, now).await?;
                changed = Some(());
            }
            DepositOutcome::Paid => {
                // Paid after the table went back (or the guest cancelled first): give it back.
                let owed = matches!(
                    row.deposit_status.as_deref(),
                    Some("pending" | "void" | "expired" | "failed")
                );
                if owed {
                    txn.execute_raw(statement(
                        backend,
                        "UPDATE bookings SET deposit_status = 'refund_requested', deposit_order_id = $1 WHERE id = $2",
                        vec![order_id.into(), booking_id.into()],
                    ))
                    .await?;
                    let row = booking::Model {
                        deposit_order_id: Some(order_id),
                        ..row.clone()
                    };
                    self.refund_deposit(&txn, &row, &r, "the deposit was paid after the table was released")
                        .await?;
                }
            }
            DepositOutcome::Expired | DepositOutcome::Failed if waiting => {
                let (status, reason) = if outcome == DepositOutcome::Expired {
                    ("expired", "The deposit was not paid in time")
                } else {
                    ("failed", "The deposit payment failed")
                };
                self.release(&txn, &row, &r, status, reason, now).await?;
                changed = Some(());
                released = true;
            }
            DepositOutcome::Expired | DepositOutcome::Failed => {}
            DepositOutcome::Refunded { full } => {
                if full
                    && matches!(
                        row.deposit_status.as_deref(),
                        Some("paid" | "refund_requested" | "kept")
                    )
                {
                    txn.execute_raw(statement(
                        backend,
                        "UPDATE bookings SET deposit_status = 'refunded' WHERE id = $1",
                        vec![booking_id.into()],
                    ))
                    .await?;
                }
            }
        }
        txn.commit().await?;
        if released {
            count_unpaid_release();
        }
        let changed = match changed {
            Some(()) => Some(Changed {
                value: self.booking(booking_id).await?,
                restaurant: r,
                old_city_key: None,
            }),
            None => None,
        };
        Ok((true, changed))
    }

    /// The backstop: a booking still waiting for its deposit once its hold and the grace are
    /// over gives its table back. Answers the booking when it did.
    pub async fn release_unpaid(&self, id: Uuid, now: DateTime<Utc>) -> Result<Option<Changed<Booking>>, BookingError> {
        let now = now.trunc_subsecs(6);
        let txn = begin_write(&self.db).await?;
        let Some(row) = booking::Entity::find_by_id(id).lock_exclusive().one(&txn).await? else {
            return Ok(None);
        };
        let due = row
            .payment_due_at
            .map(|d| d + crate::domain::DEPOSIT_GRACE)
            .is_some_and(|d| d <= now);
        if row.status != "pending_payment" || !due {
            return Ok(None);
        }
        let r = self.restaurant_row(row.restaurant_id).await?;
        self.release(&txn, &row, &r, "expired", "The deposit was not paid in time", now)
            .await?;
        txn.commit().await?;
        count_unpaid_release();
        Ok(Some(Changed {
            value: self.booking(id).await?,
            restaurant: r,
            old_city_key: None,
        }))
    }

    /// A waiting booking stops holding its table: cancelled with `reason`, the deposit
    /// `deposit_status`, the guest told (`booking.cancelled`).
    async fn release(
        &self,
        txn: &impl ConnectionTrait,
        row: &booking::Model,
        r: &restaurant::Model,
        deposit_status: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        let backend = txn.get_database_backend();
        txn.execute_raw(statement(
            backend,
            "UPDATE bookings SET status = 'cancelled', cancelled_at = $1, cancel_reason = $2, deposit_status = $3 \
             WHERE id = $4",
            vec![
                now.into(),
                reason.to_owned().into(),
                deposit_status.to_owned().into(),
                row.id.into(),
            ],
        ))
        .await?;
        if backend != DbBackend::Postgres {
            txn.execute_raw(statement(
                backend,
                "DELETE FROM booking_cells WHERE booking_id = $1",
                vec![row.id.into()],
            ))
            .await?;
        }
        let cancelled = Payload::BookingCancelled(BookingCancelled {
            booking: Some(summary(row, r)),
            by_restaurant: false,
            reason: reason.to_owned(),
        });
        self.publish(txn, row, r, cancelled).await
    }

    /// The owner marks a guest who never came: a confirmed booking whose start has passed. A
    /// paid deposit is kept. Marking twice answers the booking as it is.
    pub async fn mark_no_show(&self, id: Uuid, by: Uuid, now: DateTime<Utc>) -> Result<Booking, BookingError> {
        let found = booking::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or(BookingError::BookingNotFound)?;
        let r = self.restaurant_row(found.restaurant_id).await?;
        if r.owner_id != by {
            // The guest (or anyone else) is told nothing more than that it is not theirs to mark.
            return Err(if found.guest_id == by {
                BookingError::NotOwner
            } else {
                BookingError::BookingNotFound
            });
        }
        if found.no_show_at.is_some() {
            return Ok(found.into());
        }
        if !may_mark_no_show(&found.status, found.starts_at, now) {
            return Err(BookingError::NoShowRefused);
        }
        let now = now.trunc_subsecs(6);
        self.db
            .execute_raw(statement(
                self.db.get_database_backend(),
                "UPDATE bookings SET no_show_at = $1, deposit_status = CASE WHEN deposit_status = 'paid' \
                 THEN 'kept' ELSE deposit_status END WHERE id = $2 AND status = 'confirmed' AND no_show_at IS NULL",
                vec![now.into(), id.into()],
            ))
            .await?;
        self.booking(id).await
    }
}

/// A booking held for its deposit was counted as created when it took its table: its release
/// for want of payment (payments said so, or the backstop ran) is a cancellation for the KPIs.
fn count_unpaid_release() {
    metrics::counter!("bookings_total", "event" => "cancelled", "by" => "unpaid").increment(1);
}
