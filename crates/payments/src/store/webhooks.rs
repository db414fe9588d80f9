//! Gateway webhooks in the store. Taking an event is one transaction: its id into
//! `payment_events` (unique: a redelivery stops there), the order locked, the state machine
//! applied, the order written back and each effect enqueued as a job (capture, commit or release
//! the stock, refund). An event whose processing fails goes to `webhook_dlq`, retried on the
//! brief's schedule until it succeeds (the row is deleted in the transaction of its effect) or is
//! dead.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use chrono::TimeDelta;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use thali_platform::{
    db::{is_unique_violation, statement},
    jobs::NewJob,
};
use uuid::Uuid;

use super::{PaymentsStore, order};
use crate::domain::{self, Effect, Event, PaymentsError, RefundReason, Status, read_webhook};

pub mod payment_event {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "payment_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub account: String,
        pub event_type: String,
        pub gateway_order_id: Option<String>,
        pub outcome: String,
        pub received_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod dlq {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_dlq")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub account: String,
        #[sea_orm(unique)]
        pub event_id: String,
        pub event_type: String,
        #[sea_orm(column_type = "Text")]
        pub webhook_payload: String,
        pub retry_count: i32,
        pub next_retry_at: DateTimeUtc,
        #[sea_orm(column_type = "Text")]
        pub error_message: String,
        pub status: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Job kinds of the state machine's effects.
pub const CAPTURE: &str = "payments.capture";
pub const COMMIT_STOCK: &str = "payments.commit_stock";
pub const RELEASE_STOCK: &str = "payments.release_stock";
pub const REFUND: &str = "payments.refund";

/// Capture an authorized payment for the order's amount.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaptureJob {
    pub order_id: Uuid,
    pub payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
}

/// Commit or release an order's stock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StockJob {
    pub order_id: Uuid,
}

/// Give a payment back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefundJob {
    pub order_id: Uuid,
    pub payment_id: String,
    pub amount_minor: i64,
    /// `late_capture`, `duplicate_payment`, `wrong_amount`, `stock_released`.
    pub reason: String,
}

/// The waits before each retry of a dead-lettered webhook: 30 s, 1 min, 5 min, 30 min, 1 h; the
/// fifth retry's failure makes it dead.
pub const DLQ_DELAYS: [Duration; 5] = [
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
];

/// How long a sweep holds the rows it claimed (another replica takes them after).
pub const DLQ_LEASE: Duration = Duration::from_secs(300);

/// What taking a webhook came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Applied to its order: the order's status now.
    Applied { order_id: Uuid, status: Status },
    /// Taken before: nothing was done again.
    Duplicate,
    /// Recorded and nothing to do (a type that changes nothing, an order that is not Thali's, a
    /// body that cannot be read).
    Ignored,
}

/// Failures injected into webhook processing, for tests and the benchmark (never set from
/// configuration): the next `n` fail, and/or a share of all of them.
#[derive(Debug, Default)]
pub struct ProcessingFaults {
    next: AtomicU32,
    per_mille: AtomicU32,
}

impl ProcessingFaults {
    /// The next `n` webhook processings fail.
    pub fn fail_next(&self, n: u32) {
        self.next.store(n, Ordering::SeqCst);
    }

    /// `rate` (0.0–1.0) of webhook processings fail.
    pub fn fail_rate(&self, rate: f64) {
        let per_mille = (rate.clamp(0.0, 1.0) * 1000.0).round() as u32;
        self.per_mille.store(per_mille, Ordering::SeqCst);
    }

    fn strikes(&self) -> bool {
        let taken = self
            .next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        taken || fastrand::u32(0..1000) < self.per_mille.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Settlement {
    refunds: Vec<String>,
    refunding: Vec<String>,
}

fn reason_name(reason: RefundReason) -> &'static str {
    match reason {
        RefundReason::LateCapture => "late_capture",
        RefundReason::DuplicatePayment => "duplicate_payment",
        RefundReason::WrongAmount => "wrong_amount",
    }
}

impl PaymentsStore {
    /// The faults injected into webhook processing (tests, benchmark).
    pub fn faults(&self) -> &Arc<ProcessingFaults> {
        &self.faults
    }

    /// Takes a webhook whose signature held: records its id and applies it to its order, once.
    pub async fn take_webhook(&self, account: &str, event_id: &str, body: &[u8]) -> Result<Taken, PaymentsError> {
        let received = std::time::Instant::now();
        let taken = self.process(account, event_id, body, None).await?;
        if matches!(taken, Taken::Applied { .. }) {
            processed_after(received.elapsed().as_secs_f64());
        }
        Ok(taken)
    }

    /// One processing of an event; `from_dlq` is its dead-letter row, deleted in the same
    /// transaction when it succeeds.
    async fn process(
        &self,
        account: &str,
        event_id: &str,
        body: &[u8],
        from_dlq: Option<Uuid>,
    ) -> Result<Taken, PaymentsError> {
        if self.faults.strikes() {
            return Err(PaymentsError::Internal("injected processing fault".into()));
        }
        let now = self.now();
        let read = read_webhook(body);
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let (event_type, gateway_order_id, outcome) = match &read {
            Ok(w) => (w.event_type.clone(), w.gateway_order_id.clone(), "applied"),
            Err(e) => {
                tracing::error!(event_id, error = %e, "signed webhook body cannot be read; recorded and ignored");
                ("unreadable".to_owned(), None, "unreadable")
            }
        };
        let seen = payment_event::ActiveModel {
            event_id: Set(event_id.to_owned()),
            account: Set(account.to_owned()),
            event_type: Set(truncate(&event_type, 48)),
            gateway_order_id: Set(gateway_order_id.as_deref().map(|g| truncate(g, 64))),
            outcome: Set(outcome.to_owned()),
            received_at: Set(now),
        }
        .insert(&txn)
        .await;
        match seen {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                drop(txn);
                if let Some(id) = from_dlq {
                    self.dlq_remove(id).await?;
                }
                return Ok(Taken::Duplicate);
            }
            Err(e) => return Err(e.into()),
        }
        let (taken, moved) = match (&read, gateway_order_id) {
            (Ok(w), Some(gateway_order)) if w.event.is_some() => {
                let event = w.event.as_ref().expect("checked is_some");
                match self
                    .apply_to_order(&txn, &gateway_order, event, w.refund_of.as_deref(), Some(account))
                    .await?
                {
                    Some((taken, moved)) => (Some(taken), moved),
                    None => (None, None),
                }
            }
            _ => (None, None),
        };
        let taken = match taken {
            Some(applied) => applied,
            None => {
                // An unreadable body keeps its own outcome.
                if read.is_ok() {
                    self.mark_event(&txn, event_id, "ignored").await?;
                }
                Taken::Ignored
            }
        };
        if let Some(id) = from_dlq {
            dlq::Entity::delete_by_id(id).exec(&txn).await?;
        }
        txn.commit().await?;
        if let Some(moved) = moved {
            moved.count();
        }
        Ok(taken)
    }

    async fn mark_event(&self, txn: &DatabaseTransaction, event_id: &str, outcome: &str) -> Result<(), PaymentsError> {
        txn.execute_raw(statement(
            txn.get_database_backend(),
            "UPDATE payment_events SET outcome = $1 WHERE event_id = $2",
            vec![outcome.into(), event_id.into()],
        ))
        .await?;
        Ok(())
    }

    /// Applies `event` to the order of `gateway_order` under its row lock; None when no order
    /// of Thali's has that gateway id, or when `account` (the account whose secret signed the
    /// webhook: `platform` or a connected account's id) did not create the order.
    pub(super) async fn apply_to_order(
        &self,
        txn: &DatabaseTransaction,
        gateway_order: &str,
        event: &Event,
        refund_of: Option<&str>,
        account: Option<&str>,
    ) -> Result<Option<(Taken, Option<Moved>)>, PaymentsError> {
        let Some(row) = order::Entity::find()
            .filter(order::Column::GatewayOrderId.eq(gateway_order))
            .lock_exclusive()
            .one(txn)
            .await?
        else {
            tracing::warn!(gateway_order, "webhook for an order Thali does not have; ignored");
            return Ok(None);
        };
        let owner = row
            .payment_account_id
            .map_or_else(|| "platform".to_owned(), |id| id.to_string());
        if let Some(signer) = account
            && signer != owner
        {
            // One creator's webhook secret must not settle another's (or the platform's) orders.
            thali_platform::audit::security_event(
                thali_platform::audit::SecurityEvent::AccessDenied,
                &format!("payment account {signer}"),
                &format!("order {}", row.id),
                "",
                "webhook signed by another account than the order's",
            );
            return Ok(None);
        }
        if let Some(payment) = refund_of
            && row.paid_by.as_deref() != Some(payment)
        {
            // A refund of a payment that did not pay this order (late or duplicate) gives back
            // money the order never counted.
            tracing::info!(order_id = %row.id, payment, "refund of another payment than the order's; not counted");
            return Ok(None);
        }
        let status = Status::parse(&row.status)
            .ok_or_else(|| PaymentsError::Internal(format!("order {} has status {}", row.id, row.status)))?;
        let settlement: Settlement = serde_json::from_str(&row.settlement).unwrap_or_default();
        let current = domain::Order {
            status,
            amount: row.amount_minor,
            paid_by: row.paid_by.clone(),
            refunded: row.refunded_minor,
            refunds: settlement.refunds,
            refunding: settlement.refunding,
            failed_attempts: u32::try_from(row.failed_attempts).unwrap_or(0),
        };
        let outcome = domain::apply(&current, event);
        let next = &outcome.order;
        let now = self.now();
        if *next != current {
            let mut update: order::ActiveModel = row.clone().into();
            update.status = Set(next.status.as_str().to_owned());
            update.paid_by = Set(next.paid_by.clone());
            update.refunded_minor = Set(next.refunded);
            update.failed_attempts = Set(i32::try_from(next.failed_attempts).unwrap_or(i32::MAX));
            update.settlement = Set(serde_json::to_string(&Settlement {
                refunds: next.refunds.clone(),
                refunding: next.refunding.clone(),
            })
            .map_err(|e| PaymentsError::Internal(e.to_string()))?);
            if next.status == Status::Paid && current.status != Status::Paid {
                update.paid_at = Set(Some(now));
            }
            update.updated_at = Set(now);
            update.update(txn).await?;
        }
        for effect in &outcome.effects {
            self.enqueue_effect(txn, &row, next, effect).await?;
        }
        if let Event::Refunded { refund, .. } = event {
            self.refund_processed(txn, refund).await?;
        }
        let moved = (next.status != current.status).then(|| Moved {
            order_id: row.id,
            from: current.status,
            to: next.status,
            amount_minor: row.amount_minor,
            currency: row.currency.clone(),
        });
        Ok(Some((
            Taken::Applied {
                order_id: row.id,
                status: next.status,
            },
            moved,
        )))
    }

    async fn enqueue_effect(
        &self,
        txn: &DatabaseTransaction,
        row: &order::Model,
        next: &domain::Order,
        effect: &Effect,
    ) -> Result<(), PaymentsError> {
        let job = match effect {
            Effect::Capture { payment, amount } => NewJob::new(
                CAPTURE,
                &CaptureJob {
                    order_id: row.id,
                    payment_id: payment.clone(),
                    amount_minor: *amount,
                    currency: row.currency.clone(),
                },
            )
            .unique(format!("capture:{payment}")),
            // A deposit holds no stock: nothing to commit or give back.
            Effect::Commit | Effect::Release if row.reference.is_some() => return Ok(()),
            Effect::Commit => {
                NewJob::new(COMMIT_STOCK, &StockJob { order_id: row.id }).unique(format!("commit:{}", row.id))
            }
            Effect::Release => {
                NewJob::new(RELEASE_STOCK, &StockJob { order_id: row.id }).unique(format!("release:{}", row.id))
            }
            Effect::Refund {
                payment,
                amount,
                reason,
            } => {
                // The buyer is told once per payment given back (the job is unique per payment).
                let job = self.refund_job(row.id, payment, *amount, reason_name(*reason));
                if self.queue.enqueue(txn, job).await?.is_some() {
                    self.publish_returned(txn, row, *amount, reason_name(*reason)).await?;
                }
                return Ok(());
            }
            Effect::Publish(status) => return self.publish_order(txn, row, next, *status).await,
        };
        self.queue.enqueue(txn, job).await?;
        Ok(())
    }

    /// An event about `row` through the outbox (aggregate `order:{id}`, owned by its seller).
    async fn publish_about(
        &self,
        txn: &DatabaseTransaction,
        row: &order::Model,
        payload: thali_proto::events::v1::event::Payload,
    ) -> Result<(), PaymentsError> {
        let event = thali_platform::events::new_event(
            super::SERVICE,
            format!("order:{}", row.id),
            Uuid::parse_str(&row.seller_subject).ok(),
            payload,
            self.now(),
        );
        thali_platform::events::publish(txn, &self.queue, &event).await?;
        Ok(())
    }

    /// `order.payment_returned`: the buyer is told why a payment comes back unasked.
    async fn publish_returned(
        &self,
        txn: &DatabaseTransaction,
        row: &order::Model,
        amount: i64,
        reason: &str,
    ) -> Result<(), PaymentsError> {
        use thali_proto::events::v1::{OrderPaymentReturned, OrderSummary, event::Payload};
        let payload = Payload::OrderPaymentReturned(OrderPaymentReturned {
            order: Some(OrderSummary {
                order_id: row.id.to_string(),
                buyer_account_id: row.buyer_subject.clone(),
                store: row.username.clone(),
                amount_minor: row.amount_minor,
                currency: row.currency.clone(),
                refunded_minor: row.refunded_minor,
                reference: row.reference.clone().unwrap_or_default(),
            }),
            returned_minor: amount,
            reason: reason.to_owned(),
        });
        self.publish_about(txn, row, payload).await
    }

    /// `order.paid`, `order.failed`, `order.expired` or `order.refunded` through the outbox, in
    /// the transaction of the change: the buyer is emailed, the seller told in-app.
    async fn publish_order(
        &self,
        txn: &DatabaseTransaction,
        row: &order::Model,
        next: &domain::Order,
        status: Status,
    ) -> Result<(), PaymentsError> {
        use thali_proto::events::v1::{
            OrderExpired, OrderFailed, OrderPaid, OrderRefunded, OrderSummary, event::Payload,
        };
        let order = Some(OrderSummary {
            order_id: row.id.to_string(),
            buyer_account_id: row.buyer_subject.clone(),
            store: row.username.clone(),
            amount_minor: row.amount_minor,
            currency: row.currency.clone(),
            refunded_minor: next.refunded,
            reference: row.reference.clone().unwrap_or_default(),
        });
        let payload = match status {
            Status::Paid => Payload::OrderPaid(OrderPaid { order }),
            Status::Failed => Payload::OrderFailed(OrderFailed { order }),
            Status::Expired => Payload::OrderExpired(OrderExpired { order }),
            Status::Refunded | Status::PartiallyRefunded => Payload::OrderRefunded(OrderRefunded { order }),
            Status::Pending => return Ok(()),
        };
        self.publish_about(txn, row, payload).await
    }

    fn refund_job(&self, order_id: Uuid, payment: &str, amount: i64, reason: &str) -> NewJob {
        NewJob::new(
            REFUND,
            &RefundJob {
                order_id,
                payment_id: payment.to_owned(),
                amount_minor: amount,
                reason: reason.to_owned(),
            },
        )
        .unique(format!("refund:{payment}"))
    }

    /// Asks for a full refund of the payment that paid `order_id` (its stock was gone when the
    /// payment arrived). Asked once per payment.
    pub async fn refund_paid_order(&self, order_id: Uuid, reason: &str) -> Result<(), PaymentsError> {
        let order = order::Entity::find_by_id(order_id)
            .one(&self.db)
            .await?
            .ok_or(PaymentsError::OrderNotFound)?;
        let Some(payment) = order.paid_by.clone() else {
            return Ok(());
        };
        let amount = order.amount_minor - order.refunded_minor;
        let job = self.refund_job(order_id, &payment, amount, reason);
        let txn = thali_platform::db::begin_write(&self.db).await?;
        if self.queue.enqueue(&txn, job).await?.is_some() {
            self.publish_returned(&txn, &order, amount, reason).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Puts an event whose processing failed in the dead-letter queue (first retry in 30 s). An
    /// event already there is left as it is.
    pub async fn dead_letter(
        &self,
        account: &str,
        event_id: &str,
        body: &[u8],
        error: &str,
    ) -> Result<(), PaymentsError> {
        let now = self.now();
        let event_type = read_webhook(body)
            .map(|w| w.event_type)
            .unwrap_or_else(|_| "unreadable".into());
        let row = dlq::ActiveModel {
            id: Set(Uuid::now_v7()),
            account: Set(account.to_owned()),
            event_id: Set(event_id.to_owned()),
            event_type: Set(truncate(&event_type, 48)),
            webhook_payload: Set(String::from_utf8_lossy(body).into_owned()),
            retry_count: Set(0),
            next_retry_at: Set(now + delta(DLQ_DELAYS[0])),
            error_message: Set(truncate(error, 2000)),
            status: Set("pending".into()),
            created_at: Set(now),
            updated_at: Set(now),
        };
        match row.insert(&self.db).await {
            Ok(_) => {
                metrics::counter!("events_dead_lettered_total").increment(1);
                Ok(())
            }
            Err(e) if is_unique_violation(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Claims up to `limit` due dead-letter rows for [`DLQ_LEASE`] (other replicas skip them).
    pub async fn dlq_claim(&self, limit: u64) -> Result<Vec<dlq::Model>, PaymentsError> {
        let now = self.now();
        let backend = self.db.get_database_backend();
        let lock = match backend {
            sea_orm::DbBackend::Postgres => " FOR UPDATE SKIP LOCKED",
            _ => "",
        };
        let sql = format!(
            "UPDATE webhook_dlq SET next_retry_at = $1 WHERE id IN (SELECT id FROM webhook_dlq \
             WHERE status = 'pending' AND next_retry_at <= $2 ORDER BY next_retry_at LIMIT $3{lock}) RETURNING id"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .db
            .query_all_raw(statement(
                backend,
                &sql,
                vec![(now + delta(DLQ_LEASE)).into(), now.into(), limit.into()],
            ))
            .await?;
        let ids: Vec<Uuid> = rows
            .iter()
            .map(|r| r.try_get_by_index::<Uuid>(0))
            .collect::<Result<_, _>>()?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(dlq::Entity::find()
            .filter(dlq::Column::Id.is_in(ids))
            .order_by_asc(dlq::Column::CreatedAt)
            .all(&self.db)
            .await?)
    }

    /// Retries one dead-lettered event: success removes the row with the effect; failure counts
    /// the retry and schedules the next, or makes the row dead after the fifth. Returns whether
    /// it succeeded.
    pub async fn dlq_retry(&self, row: &dlq::Model) -> Result<bool, PaymentsError> {
        metrics::counter!("events_retried_total").increment(1);
        match self
            .process(
                &row.account,
                &row.event_id,
                row.webhook_payload.as_bytes(),
                Some(row.id),
            )
            .await
        {
            Ok(taken) => {
                // From its arrival (when it was dead-lettered) to now.
                if matches!(taken, Taken::Applied { .. }) {
                    processed_after((self.now() - row.created_at).as_seconds_f64().max(0.0));
                }
                tracing::info!(event_id = %row.event_id, retry = row.retry_count + 1, ?taken, "dead-lettered webhook processed");
                Ok(true)
            }
            Err(e) => {
                self.dlq_failed(row, &e.to_string()).await?;
                Ok(false)
            }
        }
    }

    async fn dlq_failed(&self, row: &dlq::Model, error: &str) -> Result<(), PaymentsError> {
        let now = self.now();
        let count = row.retry_count + 1;
        let retries = DLQ_DELAYS.len() as i32;
        let mut update: dlq::ActiveModel = row.clone().into();
        update.retry_count = Set(count.min(retries));
        update.error_message = Set(truncate(error, 2000));
        update.updated_at = Set(now);
        if count >= retries {
            update.status = Set("dead".into());
            metrics::counter!("events_dead_total").increment(1);
            tracing::error!(
                event_id = %row.event_id,
                event_type = %row.event_type,
                error,
                alert = "WebhookDead",
                "webhook dead after five retries: `thali dlq list` shows it, `thali dlq redrive` retries it"
            );
        } else {
            let wait = DLQ_DELAYS[usize::try_from(count).unwrap_or(0).min(DLQ_DELAYS.len() - 1)];
            update.next_retry_at = Set(now + delta(wait));
            tracing::warn!(event_id = %row.event_id, retry = count, error, "dead-lettered webhook failed again");
        }
        update.update(&self.db).await?;
        Ok(())
    }

    async fn dlq_remove(&self, id: Uuid) -> Result<(), PaymentsError> {
        dlq::Entity::delete_by_id(id).exec(&self.db).await?;
        Ok(())
    }

    /// Dead-letter rows, oldest first; `dead_only` for the dead ones.
    pub async fn dlq_list(&self, dead_only: bool, limit: u64) -> Result<Vec<dlq::Model>, PaymentsError> {
        let mut query = dlq::Entity::find();
        if dead_only {
            query = query.filter(dlq::Column::Status.eq("dead"));
        }
        Ok(query
            .order_by_asc(dlq::Column::CreatedAt)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// Sends a row back to the queue with fresh retries, due now. False when there is no such row.
    pub async fn dlq_redrive(&self, id: Uuid) -> Result<bool, PaymentsError> {
        let now = self.now();
        let moved = self
            .db
            .execute_raw(statement(
                self.db.get_database_backend(),
                "UPDATE webhook_dlq SET status = 'pending', retry_count = 0, next_retry_at = $1, updated_at = $1 \
                 WHERE id = $2",
                vec![now.into(), id.into()],
            ))
            .await?;
        Ok(moved.rows_affected() == 1)
    }

    /// Rows waiting in the dead-letter queue (pending and dead), for the `dlq_size` gauge.
    pub async fn dlq_size(&self) -> Result<(u64, u64), PaymentsError> {
        let count = |status: &'static str| {
            dlq::Entity::find()
                .filter(dlq::Column::Status.eq(status))
                .count(&self.db)
        };
        Ok((count("pending").await?, count("dead").await?))
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// At most `max` characters of `text`.
fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// An order's status change, counted once its transaction has committed (a failed commit is
/// retried from the dead-letter queue and must not count twice).
pub(super) struct Moved {
    order_id: Uuid,
    from: Status,
    to: Status,
    amount_minor: i64,
    currency: String,
}

impl Moved {
    pub(super) fn count(self) {
        tracing::info!(order_id = %self.order_id, from = self.from.as_str(), to = self.to.as_str(), "order moved");
        metrics::counter!("payments_orders_settled_total", "status" => self.to.as_str()).increment(1);
        if self.to == Status::Paid && self.from != Status::Paid {
            // Gross merchandise value in minor units (paise), per currency: a business KPI.
            metrics::counter!("payments_paid_minor_total", "currency" => self.currency)
                .increment(u64::try_from(self.amount_minor).unwrap_or(0));
        }
    }
}

/// Webhook processing lag (a business KPI): from a webhook's arrival to its processing committed,
/// at once or after retries from the dead-letter queue.
fn processed_after(seconds: f64) {
    metrics::histogram!("webhook_processing_lag_seconds").record(seconds);
}
