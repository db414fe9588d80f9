//! Payments persistence: sea-orm entities and one transaction per use case. An order, its lines,
//! the idempotency key of its checkout and the record of the gateway call that created it commit
//! together; rules that must hold whatever writes a row (amounts, states, one order per gateway
//! order) are constraints in the migration.
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use thali_platform::idempotency::{Idempotency, Keys, Replay};
use uuid::Uuid;

use crate::domain::{GatewayCall, OrderLine, OrderRecord, PaymentsError, Status};

mod accounts;
mod fulfilment;
mod privacy;
mod reconcile;
mod refunds;
mod webhooks;
pub use accounts::{Accounts, ConnectedAccount, RotatedPage, payment_account};
pub use reconcile::{DueOrder, RECONCILE_AGE, RECONCILE_BATCH, RECONCILE_LEASE};
pub use refunds::{REFUND_REQUEST, RefundAsk, RefundRecord, RefundRequestJob, refund};
pub use webhooks::{
    CAPTURE, COMMIT_STOCK, CaptureJob, DLQ_DELAYS, DLQ_LEASE, ProcessingFaults, REFUND, RELEASE_STOCK, RefundJob,
    StockJob, Taken, dlq, payment_event,
};

pub mod order {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "orders")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub buyer_subject: String,
        pub username: String,
        pub seller_subject: String,
        pub status: String,
        pub amount_minor: i64,
        pub currency: String,
        pub refunded_minor: i64,
        pub gateway: String,
        pub key_id: String,
        #[sea_orm(unique)]
        pub gateway_order_id: String,
        pub paid_by: Option<String>,
        pub failed_attempts: i32,
        #[sea_orm(column_type = "Text")]
        pub settlement: String,
        pub expires_at: DateTimeUtc,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub paid_at: Option<DateTimeUtc>,
        pub reconcile_after: Option<DateTimeUtc>,
        pub reconcile_failures: i32,
        pub fulfilment: Option<String>,
        /// The creator's own account that created the gateway order; None: the platform's.
        pub payment_account_id: Option<Uuid>,
        /// `booking:{id}` for a deposit; None for a checkout.
        pub reference: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod order_line {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "order_lines")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub order_id: Uuid,
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

pub mod transaction {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "transactions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub order_id: Uuid,
        pub call: String,
        pub source: String,
        pub outcome: String,
        pub http_status: Option<i32>,
        pub gateway_ref: Option<String>,
        pub latency_ms: i64,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

impl From<DbErr> for PaymentsError {
    fn from(err: DbErr) -> Self {
        if thali_platform::db::is_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            PaymentsError::Unavailable
        } else {
            PaymentsError::Internal(err.to_string())
        }
    }
}

/// The payments service's idempotency keys (ADR 0005).
const KEYS: Keys = Keys::new("payments_idempotency");
const CHECKOUT_SCOPE: &str = "create_order";

/// The service's name on the job queue.
pub const SERVICE: &str = "payments";

/// An order about to be written, with the gateway order created for it.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub record: OrderRecord,
}

/// Whose orders a list shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrdersOf {
    /// A buyer's purchases.
    Buyer(String),
    /// A store's orders, as its seller sees them (only orders where the seller is this account).
    Store { username: String, seller: Option<String> },
    /// Every order (admins).
    All,
}

/// What writing a new order came to.
#[derive(Debug, Clone)]
pub enum Written {
    Created(OrderRecord),
    /// A concurrent checkout with the same key committed first: its order.
    Replayed(OrderRecord),
}

/// The payments database.
#[derive(Debug, Clone)]
pub struct PaymentsStore {
    db: DatabaseConnection,
    queue: thali_platform::jobs::Queue,
    faults: std::sync::Arc<ProcessingFaults>,
}

impl PaymentsStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self::with_queue(db, thali_platform::jobs::Queue::new(SERVICE))
    }

    /// The store on `queue` (its clock and outbox).
    pub fn with_queue(db: DatabaseConnection, queue: thali_platform::jobs::Queue) -> Self {
        Self {
            db,
            queue,
            faults: std::sync::Arc::default(),
        }
    }

    /// The connection, for health checks and the job worker.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The store's job queue (its clock and outbox).
    pub fn queue(&self) -> &thali_platform::jobs::Queue {
        &self.queue
    }

    /// Now, on the store's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.queue.now()
    }

    /// Housekeeping: deletes idempotency records past their window. Returns how many.
    pub async fn prune_idempotency(&self, now: DateTime<Utc>) -> Result<u64, DbErr> {
        KEYS.prune(&self.db, now).await
    }

    /// The order an earlier checkout of `buyer` with the same key made, if any.
    pub async fn replay_checkout(&self, buyer: &str, idem: &Idempotency) -> Result<Option<OrderRecord>, PaymentsError> {
        match KEYS.replay(&self.db, CHECKOUT_SCOPE, buyer, idem, self.now()).await? {
            Replay::Fresh => Ok(None),
            Replay::Same(id) => Ok(Some(self.order(id).await?)),
            Replay::Conflict => Err(PaymentsError::IdempotencyKeyReused),
        }
    }

    /// Writes a checkout's order, its lines, its key and the gateway call that created it, in
    /// one transaction.
    pub async fn insert_order(
        &self,
        new: &NewOrder,
        idem: Option<&Idempotency>,
        call: &GatewayCall,
    ) -> Result<Written, PaymentsError> {
        let r = &new.record;
        let txn = thali_platform::db::begin_write(&self.db).await?;
        if let Some(idem) = idem
            && !KEYS
                .claim(&txn, CHECKOUT_SCOPE, &r.buyer_subject, idem, r.id, self.now())
                .await?
        {
            drop(txn);
            return match self.replay_checkout(&r.buyer_subject, idem).await? {
                Some(winner) => Ok(Written::Replayed(winner)),
                None => Err(PaymentsError::Unavailable),
            };
        }
        let inserted = order::ActiveModel {
            id: Set(r.id),
            buyer_subject: Set(r.buyer_subject.clone()),
            username: Set(r.username.clone()),
            seller_subject: Set(r.seller_subject.clone()),
            status: Set(r.status.as_str().to_owned()),
            amount_minor: Set(r.amount_minor),
            currency: Set(r.currency.clone()),
            refunded_minor: Set(r.refunded_minor),
            gateway: Set(r.gateway.clone()),
            key_id: Set(r.key_id.clone()),
            gateway_order_id: Set(r.gateway_order_id.clone()),
            paid_by: Set(None),
            failed_attempts: Set(0),
            settlement: Set(r#"{"refunds":[],"refunding":[]}"#.to_owned()),
            expires_at: Set(r.expires_at),
            created_at: Set(r.created_at),
            updated_at: Set(r.updated_at),
            paid_at: Set(None),
            reconcile_after: Set(None),
            reconcile_failures: Set(0),
            fulfilment: Set(None),
            payment_account_id: Set(r.payment_account_id),
            reference: Set(r.reference.clone()),
        }
        .insert(&txn)
        .await;
        match inserted {
            Ok(_) => {}
            // Another request for the same reference (a deposit asked twice) wrote it first.
            Err(e) if r.reference.is_some() && thali_platform::db::is_unique_violation(&e) => {
                drop(txn);
                let reference = r.reference.as_deref().unwrap_or_default();
                return match self.order_by_reference(reference).await? {
                    Some(winner) => Ok(Written::Replayed(winner)),
                    None => Err(PaymentsError::Unavailable),
                };
            }
            Err(e) => return Err(e.into()),
        }
        order_line::Entity::insert_many(r.lines.iter().map(|l| order_line::ActiveModel {
            order_id: Set(r.id),
            product_id: Set(l.product_id),
            title: Set(l.title.clone()),
            quantity: Set(l.quantity),
            unit_price_minor: Set(l.unit_price_minor),
        }))
        .exec_without_returning(&txn)
        .await?;
        self.insert_call(&txn, call).await?;
        txn.commit().await?;
        // Checkouts started (a business KPI; paid ÷ created is the conversion): counted once the
        // order is kept, never for a replay.
        let kind = if r.reference.is_some() { "deposit" } else { "checkout" };
        metrics::counter!("payments_orders_created_total", "kind" => kind).increment(1);
        Ok(Written::Created(r.clone()))
    }

    /// The order that pays for `reference` (`booking:{id}`), if one was written.
    pub async fn order_by_reference(&self, reference: &str) -> Result<Option<OrderRecord>, PaymentsError> {
        let Some(row) = order::Entity::find()
            .filter(order::Column::Reference.eq(reference))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        self.order(row.id).await.map(Some)
    }

    /// Records a gateway call on its own (one that failed before any order was written).
    pub async fn record_call(&self, call: &GatewayCall) -> Result<(), PaymentsError> {
        self.insert_call(&self.db, call).await
    }

    async fn insert_call(&self, conn: &impl ConnectionTrait, call: &GatewayCall) -> Result<(), PaymentsError> {
        transaction::ActiveModel {
            id: Set(Uuid::now_v7()),
            order_id: Set(call.order_id),
            call: Set(call.call.to_owned()),
            source: Set(call.source.to_owned()),
            outcome: Set(call.outcome.to_owned()),
            http_status: Set(None),
            gateway_ref: Set(call.gateway_ref.clone()),
            latency_ms: Set(call.latency_ms.max(0)),
            created_at: Set(self.now()),
        }
        .insert(conn)
        .await?;
        Ok(())
    }

    /// The gateway calls made about an order, oldest first.
    pub async fn calls(&self, order_id: Uuid) -> Result<Vec<transaction::Model>, PaymentsError> {
        Ok(transaction::Entity::find()
            .filter(transaction::Column::OrderId.eq(order_id))
            .order_by_asc(transaction::Column::CreatedAt)
            .order_by_asc(transaction::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// An order with its lines.
    pub async fn order(&self, id: Uuid) -> Result<OrderRecord, PaymentsError> {
        let row = order::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or(PaymentsError::OrderNotFound)?;
        let mut orders = self.with_lines(vec![row]).await?;
        orders.pop().ok_or(PaymentsError::OrderNotFound)
    }

    /// One page of orders, newest first; and the id to continue after, if there may be more.
    pub async fn list_orders(
        &self,
        of: &OrdersOf,
        page_size: u64,
        after: Option<Uuid>,
    ) -> Result<(Vec<OrderRecord>, Option<Uuid>), PaymentsError> {
        let mut query = order::Entity::find();
        match of {
            OrdersOf::Buyer(buyer) => query = query.filter(order::Column::BuyerSubject.eq(buyer)),
            OrdersOf::Store { username, seller } => {
                query = query.filter(order::Column::Username.eq(username));
                if let Some(seller) = seller {
                    query = query.filter(order::Column::SellerSubject.eq(seller));
                }
            }
            OrdersOf::All => {}
        }
        if let Some(after) = after {
            query = query.filter(order::Column::Id.lt(after));
        }
        let mut rows = query
            .order_by_desc(order::Column::Id)
            .limit(page_size + 1)
            .all(&self.db)
            .await?;
        let more = rows.len() as u64 > page_size;
        rows.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
        let next = if more { rows.last().map(|r| r.id) } else { None };
        Ok((self.with_lines(rows).await?, next))
    }

    /// Orders with their lines, read in one query.
    async fn with_lines(&self, rows: Vec<order::Model>) -> Result<Vec<OrderRecord>, PaymentsError> {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let mut lines = if ids.is_empty() {
            Vec::new()
        } else {
            order_line::Entity::find()
                .filter(order_line::Column::OrderId.is_in(ids))
                .order_by_asc(order_line::Column::ProductId)
                .all(&self.db)
                .await?
        };
        rows.into_iter()
            .map(|row| {
                let mine: Vec<OrderLine> = lines
                    .extract_if(.., |l| l.order_id == row.id)
                    .map(|l| OrderLine {
                        product_id: l.product_id,
                        title: l.title,
                        quantity: l.quantity,
                        unit_price_minor: l.unit_price_minor,
                    })
                    .collect();
                record(row, mine)
            })
            .collect()
    }
}

fn record(row: order::Model, lines: Vec<OrderLine>) -> Result<OrderRecord, PaymentsError> {
    let status = Status::parse(&row.status)
        .ok_or_else(|| PaymentsError::Internal(format!("order {} has status {}", row.id, row.status)))?;
    Ok(OrderRecord {
        id: row.id,
        status,
        buyer_subject: row.buyer_subject,
        username: row.username,
        seller_subject: row.seller_subject,
        lines,
        amount_minor: row.amount_minor,
        currency: row.currency,
        refunded_minor: row.refunded_minor,
        gateway: row.gateway,
        key_id: row.key_id,
        gateway_order_id: row.gateway_order_id,
        expires_at: row.expires_at,
        created_at: row.created_at,
        updated_at: row.updated_at,
        paid_at: row.paid_at,
        fulfilment: row.fulfilment.as_deref().and_then(crate::domain::Fulfilment::parse),
        payment_account_id: row.payment_account_id,
        reference: row.reference,
    })
}
