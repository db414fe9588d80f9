//! Personal data in the payments store (ADR 0032). Orders, refunds and transactions are
//! accounting records and stay, under the account ids that name no one after identity's
//! erasure. What goes when `account.erased` arrives: the store's username wherever payments keeps
//! it for a seller (replaced by the pseudonym storefront gives the same store), and the delivered
//! events about the account's orders.
use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, Condition, DbErr, EntityTrait, QueryFilter, QueryOrder, sea_query::Expr};
use thali_platform::{db::begin_write, privacy::erased_handle};
use uuid::Uuid;

use super::{PaymentsStore, accounts::payment_account, order, refunds::refund};
use crate::domain::PaymentsError;

impl PaymentsStore {
    /// Anonymises what payments keeps of `account`, once per event (the inbox), in one
    /// transaction. Returns false for an event taken before.
    pub async fn erase_account(
        &self,
        event_id: Uuid,
        account: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, PaymentsError> {
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
        let subject = account.to_string();
        let orders = order::Entity::find()
            .filter(
                Condition::any()
                    .add(order::Column::BuyerSubject.eq(subject.as_str()))
                    .add(order::Column::SellerSubject.eq(subject.as_str())),
            )
            .all(&txn)
            .await?;
        let stores: BTreeSet<String> = orders
            .iter()
            .filter(|o| o.seller_subject == subject)
            .map(|o| o.username.clone())
            .chain(
                payment_account::Entity::find()
                    .filter(payment_account::Column::SellerSubject.eq(subject.as_str()))
                    .all(&txn)
                    .await?
                    .into_iter()
                    .map(|a| a.username),
            )
            .collect();
        for name in &stores {
            let handle = erased_handle(account, name);
            order::Entity::update_many()
                .col_expr(order::Column::Username, Expr::value(handle.as_str()))
                .filter(order::Column::SellerSubject.eq(subject.as_str()))
                .filter(order::Column::Username.eq(name.as_str()))
                .exec(&txn)
                .await?;
            payment_account::Entity::update_many()
                .col_expr(payment_account::Column::Username, Expr::value(handle.as_str()))
                .filter(payment_account::Column::SellerSubject.eq(subject.as_str()))
                .filter(payment_account::Column::Username.eq(name.as_str()))
                .exec(&txn)
                .await?;
        }
        let aggregates: Vec<String> = orders.iter().map(|o| format!("order:{}", o.id)).collect();
        thali_platform::privacy::forget_delivered_events(&txn, crate::workers::SERVICE, &aggregates).await?;
        txn.commit().await?;
        tracing::info!(%account, orders = orders.len(), stores = stores.len(), "payments records anonymised");
        Ok(true)
    }

    /// What payments holds about `account`: the orders it placed, the orders its stores took,
    /// its stores' payment accounts (never their secrets) and the refunds it asked for.
    pub async fn personal_data(&self, account: Uuid) -> Result<serde_json::Value, DbErr> {
        let subject = account.to_string();
        let order_json = |o: &order::Model| {
            serde_json::json!({
                "id": o.id,
                "store": o.username,
                "status": o.status,
                "amount_minor": o.amount_minor,
                "currency": o.currency,
                "refunded_minor": o.refunded_minor,
                "reference": o.reference,
                "created_at": o.created_at,
                "paid_at": o.paid_at,
            })
        };
        let bought = order::Entity::find()
            .filter(order::Column::BuyerSubject.eq(subject.as_str()))
            .order_by_asc(order::Column::CreatedAt)
            .all(&self.db)
            .await?;
        let sold = order::Entity::find()
            .filter(order::Column::SellerSubject.eq(subject.as_str()))
            .order_by_asc(order::Column::CreatedAt)
            .all(&self.db)
            .await?;
        let accounts = payment_account::Entity::find()
            .filter(payment_account::Column::SellerSubject.eq(subject.as_str()))
            .all(&self.db)
            .await?;
        let refunds = refund::Entity::find()
            .filter(refund::Column::RequestedBy.eq(subject.as_str()))
            .order_by_asc(refund::Column::CreatedAt)
            .all(&self.db)
            .await?;
        Ok(serde_json::json!({
            "orders_placed": bought.iter().map(order_json).collect::<Vec<_>>(),
            "orders_received": sold.iter().map(order_json).collect::<Vec<_>>(),
            "payment_accounts": accounts.iter().map(|a| serde_json::json!({
                "id": a.id,
                "store": a.username,
                "key_id": a.key_id,
                "created_at": a.created_at,
                "updated_at": a.updated_at,
            })).collect::<Vec<_>>(),
            "refunds_requested": refunds.iter().map(|r| serde_json::json!({
                "id": r.id,
                "order_id": r.order_id,
                "amount_minor": r.amount_minor,
                "reason": r.reason,
                "status": r.status,
                "created_at": r.created_at,
            })).collect::<Vec<_>>(),
        }))
    }
}
