//! The reconciler's side of the store: claiming pending orders older than 5 minutes (one replica
//! at a time per order, oldest first), backing an order off after the gateway failed it, and
//! applying what the gateway says through the same state machine and effects as a webhook.
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::{ActiveModelTrait, ConnectionTrait, Set};
use thali_platform::db::{is_unique_violation, statement};
use uuid::Uuid;

use super::{PaymentsStore, Taken, payment_event};
use crate::domain::{Event, PaymentsError};

/// Orders one reconciler cycle looks at, at most.
pub const RECONCILE_BATCH: u64 = 100;
/// A pending order is the reconciler's once it is this old (webhooks usually settle it first).
pub const RECONCILE_AGE: TimeDelta = TimeDelta::minutes(5);
/// How long a claim keeps other replicas off an order.
pub const RECONCILE_LEASE: Duration = Duration::from_secs(300);

/// A pending order claimed for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueOrder {
    pub id: Uuid,
    pub gateway_order_id: String,
    pub expires_at: DateTime<Utc>,
    /// Gateway failures in a row for this order (the backoff's exponent).
    pub failures: i32,
    /// The creator's account that created it (None: the platform's).
    pub payment_account_id: Option<Uuid>,
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

impl PaymentsStore {
    /// Claims up to `limit` pending orders older than [`RECONCILE_AGE`] and not backed off, for
    /// [`RECONCILE_LEASE`] (a concurrent cycle, on another replica, skips them): never-checked
    /// orders oldest first, then those checked longest ago.
    pub async fn claim_for_reconcile(&self, limit: u64) -> Result<Vec<DueOrder>, PaymentsError> {
        let now = self.now();
        let backend = self.db.get_database_backend();
        let lock = match backend {
            sea_orm::DbBackend::Postgres => " FOR UPDATE SKIP LOCKED",
            _ => "",
        };
        let sql = format!(
            "UPDATE orders SET reconcile_after = $1 WHERE id IN (SELECT id FROM orders WHERE status = 'pending' \
             AND created_at <= $2 AND (reconcile_after IS NULL OR reconcile_after <= $3) \
             ORDER BY COALESCE(reconcile_after, created_at), created_at, id LIMIT $4{lock}) \
             RETURNING id, gateway_order_id, expires_at, reconcile_failures, created_at, payment_account_id"
        );
        let rows = self
            .db
            .query_all_raw(statement(
                backend,
                &sql,
                vec![
                    (now + delta(RECONCILE_LEASE)).into(),
                    (now - RECONCILE_AGE).into(),
                    now.into(),
                    i64::try_from(limit).unwrap_or(i64::MAX).into(),
                ],
            ))
            .await?;
        let mut due = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<DateTime<Utc>>("", "created_at")?,
                    DueOrder {
                        id: r.try_get("", "id")?,
                        gateway_order_id: r.try_get("", "gateway_order_id")?,
                        expires_at: r.try_get("", "expires_at")?,
                        failures: r.try_get("", "reconcile_failures")?,
                        payment_account_id: r.try_get("", "payment_account_id")?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, sea_orm::DbErr>>()?;
        // RETURNING does not keep the subquery's order.
        due.sort_by_key(|(created, o)| (*created, o.id));
        Ok(due.into_iter().map(|(_, o)| o).collect())
    }

    /// The gateway failed this order's check: look again after `wait`, one more failure counted.
    pub async fn reconcile_later(&self, id: Uuid, wait: Duration, count_failure: bool) -> Result<(), PaymentsError> {
        let sql = if count_failure {
            "UPDATE orders SET reconcile_after = $1, reconcile_failures = reconcile_failures + 1 WHERE id = $2"
        } else {
            "UPDATE orders SET reconcile_after = $1 WHERE id = $2"
        };
        self.db
            .execute_raw(statement(
                self.db.get_database_backend(),
                sql,
                vec![(self.now() + delta(wait)).into(), id.into()],
            ))
            .await?;
        Ok(())
    }

    /// The check went through: the order is free for the next cycle, its failures forgotten. It
    /// queues behind orders never checked and those checked longer ago (claims order by
    /// `reconcile_after`, the time of the last check), so a backlog of more than a cycle's worth
    /// of pending orders is worked through, never starved.
    pub async fn reconcile_done(&self, id: Uuid) -> Result<(), PaymentsError> {
        self.db
            .execute_raw(statement(
                self.db.get_database_backend(),
                "UPDATE orders SET reconcile_after = $1, reconcile_failures = 0 WHERE id = $2",
                vec![self.now().into(), id.into()],
            ))
            .await?;
        Ok(())
    }

    /// Applies what the gateway said about `gateway_order_id`, once per `key` (e.g.
    /// `rec:pay_…:captured`), through the same state machine and effects as a webhook. A capture
    /// the webhook already applied changes nothing a second time (the state machine knows the
    /// payment).
    pub async fn apply_reconciled(
        &self,
        key: &str,
        gateway_order_id: &str,
        event: &Event,
    ) -> Result<Taken, PaymentsError> {
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let kind = match event {
            Event::Authorized { .. } => "reconciler.authorized",
            Event::Captured { .. } => "reconciler.captured",
            Event::PaymentFailed { .. } => "reconciler.failed",
            Event::GaveUp => "reconciler.gave_up",
            Event::Expired => "reconciler.expired",
            Event::Refunded { .. } => "reconciler.refunded",
        };
        let seen = payment_event::ActiveModel {
            event_id: Set(key.chars().take(64).collect()),
            account: Set("platform".into()),
            event_type: Set(kind.into()),
            gateway_order_id: Set(Some(gateway_order_id.to_owned())),
            outcome: Set("applied".into()),
            received_at: Set(self.now()),
        }
        .insert(&txn)
        .await;
        match seen {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Ok(Taken::Duplicate),
            Err(e) => return Err(e.into()),
        }
        let (taken, moved) = self
            .apply_to_order(&txn, gateway_order_id, event, None, None)
            .await?
            .unwrap_or((Taken::Ignored, None));
        txn.commit().await?;
        if let Some(moved) = moved {
            moved.count();
        }
        Ok(taken)
    }
}
