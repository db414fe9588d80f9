//! Refunds a seller or an admin asks for. Asking is one transaction under the order's row lock:
//! what is left is the order's amount less what was refunded and what is asked and not yet
//! processed, so refunds asked at once can never give back more than was paid; the request row,
//! its idempotency key and the job that asks the gateway commit together.
use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QuerySelect, Set};
use thali_platform::{
    db::statement,
    idempotency::{Idempotency, Keys, Replay},
    jobs::NewJob,
};
use uuid::Uuid;

use super::{PaymentsStore, order};
use crate::domain::{self, PaymentsError, RefundRefused, Status};

pub mod refund {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "refunds")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub order_id: Uuid,
        pub amount_minor: i64,
        pub reason: String,
        pub status: String,
        #[sea_orm(unique)]
        pub gateway_refund_id: Option<String>,
        pub requested_by: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The job that asks the gateway for a requested refund.
pub const REFUND_REQUEST: &str = "payments.refund_request";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefundRequestJob {
    pub refund_id: Uuid,
}

/// A refund as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRecord {
    pub id: Uuid,
    pub order_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    /// `requested`, `processed` or `failed`.
    pub status: String,
    pub gateway_refund_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Who asks for a refund, with what.
#[derive(Debug, Clone)]
pub struct RefundAsk<'a> {
    pub caller: &'a str,
    pub admin: bool,
    pub order_id: Uuid,
    pub amount_minor: Option<i64>,
    pub reason: &'a str,
}

const KEYS: Keys = Keys::new("payments_idempotency");
const SCOPE: &str = "refund_order";

fn record(row: refund::Model, currency: &str) -> RefundRecord {
    RefundRecord {
        id: row.id,
        order_id: row.order_id,
        amount_minor: row.amount_minor,
        currency: currency.to_owned(),
        reason: row.reason,
        status: row.status,
        gateway_refund_id: row.gateway_refund_id,
        created_at: row.created_at,
    }
}

impl PaymentsStore {
    /// Asks for a refund (see the module's rules). The same key and request answer the same
    /// refund.
    pub async fn request_refund(
        &self,
        ask: &RefundAsk<'_>,
        idem: Option<&Idempotency>,
    ) -> Result<RefundRecord, PaymentsError> {
        if let Some(idem) = idem {
            match KEYS.replay(&self.db, SCOPE, ask.caller, idem, self.now()).await? {
                Replay::Fresh => {}
                Replay::Same(id) => return self.refund(id).await,
                Replay::Conflict => return Err(PaymentsError::IdempotencyKeyReused),
            }
        }
        let now = self.now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let row = order::Entity::find_by_id(ask.order_id)
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or(PaymentsError::OrderNotFound)?;
        if !domain::may_see(ask.caller, ask.admin, &row.buyer_subject, &row.seller_subject) {
            return Err(PaymentsError::OrderNotFound);
        }
        if !ask.admin && ask.caller != row.seller_subject {
            return Err(PaymentsError::NotSeller);
        }
        let id = Uuid::now_v7();
        if let Some(idem) = idem
            && !KEYS.claim(&txn, SCOPE, ask.caller, idem, id, now).await?
        {
            drop(txn);
            return match KEYS.replay(&self.db, SCOPE, ask.caller, idem, self.now()).await? {
                Replay::Same(winner) => self.refund(winner).await,
                _ => Err(PaymentsError::Unavailable),
            };
        }
        let inserted = self
            .insert_refund(&txn, &row, id, ask.amount_minor, ask.reason, ask.caller)
            .await?;
        txn.commit().await?;
        Ok(record(inserted, &row.currency))
    }

    /// Inside `txn`, which holds the order row's lock: checks what is left, writes the refund
    /// request `id` and the job that asks the gateway.
    pub(super) async fn insert_refund(
        &self,
        txn: &DatabaseTransaction,
        row: &order::Model,
        id: Uuid,
        requested: Option<i64>,
        reason: &str,
        caller: &str,
    ) -> Result<refund::Model, PaymentsError> {
        let now = self.now();
        let status = Status::parse(&row.status)
            .ok_or_else(|| PaymentsError::Internal(format!("order {} has status {}", row.id, row.status)))?;
        // SUM of a bigint is NUMERIC on PostgreSQL: cast back.
        let in_flight = txn
            .query_one_raw(statement(
                txn.get_database_backend(),
                "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM refunds WHERE order_id = $1 AND status = $2",
                vec![row.id.into(), "requested".into()],
            ))
            .await?
            .map(|r| r.try_get_by_index::<i64>(0))
            .transpose()?
            .unwrap_or(0);
        let current = domain::Order {
            status,
            amount: row.amount_minor,
            paid_by: row.paid_by.clone(),
            refunded: row.refunded_minor,
            refunds: Vec::new(),
            refunding: Vec::new(),
            failed_attempts: 0,
        };
        let amount = match domain::refund_amount(&current, requested, in_flight) {
            Ok(amount) => amount,
            Err(RefundRefused::NotPaid) => return Err(PaymentsError::NotPaid),
            Err(RefundRefused::BadAmount) => {
                let left = row.amount_minor - row.refunded_minor - in_flight;
                return Err(PaymentsError::invalid(
                    "amount_minor",
                    format!("1 to {} (what is left to refund)", left.max(0)),
                ));
            }
        };
        let inserted = refund::ActiveModel {
            id: Set(id),
            order_id: Set(row.id),
            amount_minor: Set(amount),
            reason: Set(reason.chars().take(200).collect()),
            status: Set("requested".into()),
            gateway_refund_id: Set(None),
            requested_by: Set(caller.to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(txn)
        .await?;
        self.queue
            .enqueue(
                txn,
                NewJob::new(REFUND_REQUEST, &RefundRequestJob { refund_id: id }).unique(format!("refund-request:{id}")),
            )
            .await?;
        // Every refund, whoever asked (the seller, an admin, a rejected fulfilment, a deposit),
        // goes in the audit trail with its request (ADR 0031).
        thali_platform::audit_log::record(
            txn,
            crate::workers::SERVICE,
            &thali_platform::audit_log::Entry::new(
                audit_actor(caller),
                "refund.requested",
                format!("order:{}", row.id),
            )
            .with_details(serde_json::json!({
                "refund": id,
                "amount_minor": amount,
                "currency": row.currency,
                "reason": inserted.reason,
            })),
        )
        .await?;
        Ok(inserted)
    }

    /// A refund request.
    pub async fn refund(&self, id: Uuid) -> Result<RefundRecord, PaymentsError> {
        let row = refund::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or_else(|| PaymentsError::Internal(format!("refund {id} is gone")))?;
        let order = order::Entity::find_by_id(row.order_id)
            .one(&self.db)
            .await?
            .ok_or(PaymentsError::OrderNotFound)?;
        Ok(record(row, &order.currency))
    }

    /// The gateway took the request: its id, and whether it is processed already.
    pub async fn refund_taken(&self, id: Uuid, gateway_refund_id: &str, processed: bool) -> Result<(), PaymentsError> {
        self.db
            .execute_raw(statement(
                self.db.get_database_backend(),
                "UPDATE refunds SET gateway_refund_id = $1, status = $2, updated_at = $3 WHERE id = $4 AND status = 'requested'",
                vec![
                    gateway_refund_id.into(),
                    if processed { "processed" } else { "requested" }.into(),
                    self.now().into(),
                    id.into(),
                ],
            ))
            .await?;
        Ok(())
    }

    /// The gateway refused the request: nothing was given back, and its amount no longer counts.
    pub async fn refund_failed(&self, id: Uuid) -> Result<(), PaymentsError> {
        self.db
            .execute_raw(statement(
                self.db.get_database_backend(),
                "UPDATE refunds SET status = 'failed', updated_at = $1 WHERE id = $2 AND status = 'requested'",
                vec![self.now().into(), id.into()],
            ))
            .await?;
        Ok(())
    }

    /// A `refund.processed` for `gateway_refund_id`: its request (if it was one) is processed.
    pub(super) async fn refund_processed(
        &self,
        conn: &impl ConnectionTrait,
        gateway_refund_id: &str,
    ) -> Result<(), PaymentsError> {
        conn.execute_raw(statement(
            conn.get_database_backend(),
            "UPDATE refunds SET status = 'processed', updated_at = $1 WHERE gateway_refund_id = $2",
            vec![self.now().into(), gateway_refund_id.into()],
        ))
        .await?;
        Ok(())
    }

    /// The order row behind a refund: its gateway order and the payment that paid it.
    pub async fn refund_target(&self, refund_id: Uuid) -> Result<(refund::Model, order::Model), PaymentsError> {
        let row = refund::Entity::find_by_id(refund_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| PaymentsError::Internal(format!("refund {refund_id} is gone")))?;
        let order = order::Entity::find_by_id(row.order_id)
            .one(&self.db)
            .await?
            .ok_or(PaymentsError::OrderNotFound)?;
        Ok((row, order))
    }
}

/// The audit actor of a subject: `acct:<id>` for an account, the subject itself otherwise
/// (`svc:<part>` for another service).
pub(crate) fn audit_actor(subject: &str) -> String {
    if subject.starts_with("svc:") {
        subject.to_owned()
    } else {
        thali_platform::audit_log::account(subject)
    }
}
