//! A vendor's steps on a paid order, under the order's row lock. Rejecting refunds everything
//! that is left in the same transaction (the refund request and its job commit with the step).
use sea_orm::{ActiveModelTrait, EntityTrait, QuerySelect, Set};
use uuid::Uuid;

use super::{PaymentsStore, order};
use crate::domain::{self, Fulfilment, PaymentsError, Status, Step};

impl PaymentsStore {
    /// Takes `step` on `order_id` for `caller` (its seller, or an admin). Returns whether it
    /// changed anything and the refund a rejection asked for.
    pub async fn fulfil(
        &self,
        order_id: Uuid,
        caller: &str,
        admin: bool,
        step: Step,
        reason: &str,
    ) -> Result<Option<Uuid>, PaymentsError> {
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let row = order::Entity::find_by_id(order_id)
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or(PaymentsError::OrderNotFound)?;
        if !domain::may_see(caller, admin, &row.buyer_subject, &row.seller_subject) {
            return Err(PaymentsError::OrderNotFound);
        }
        if !admin && caller != row.seller_subject {
            return Err(PaymentsError::NotSeller);
        }
        let status = Status::parse(&row.status)
            .ok_or_else(|| PaymentsError::Internal(format!("order {} has status {}", row.id, row.status)))?;
        let now_at = row.fulfilment.as_deref().and_then(Fulfilment::parse);
        let (next, changed) = domain::next_fulfilment(status, now_at, step).map_err(PaymentsError::Fulfilment)?;
        if !changed {
            return Ok(None);
        }
        let mut refund = None;
        if next == Fulfilment::Rejected {
            let id = Uuid::now_v7();
            self.insert_refund(&txn, &row, id, None, reason, caller).await?;
            refund = Some(id);
        }
        let mut update: order::ActiveModel = row.into();
        update.fulfilment = Set(Some(next.as_str().to_owned()));
        update.updated_at = Set(self.now());
        update.update(&txn).await?;
        txn.commit().await?;
        Ok(refund)
    }
}
