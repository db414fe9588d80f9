//! What the payments tests share: fresh migrated databases and orders as a checkout writes them.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use thali_migrations::{Migrator, MigratorTrait};
use thali_payments::{
    domain::{GatewayCall, OrderLine, OrderRecord, Status},
    store::{NewOrder, PaymentsStore},
};
use thali_platform::testing::{self, TestDatabase};
use uuid::Uuid;

/// Every configured backend (SQLite always, PostgreSQL with `THALI_TEST_DATABASE_URL`, required
/// under CI=true), each a fresh database, migrated.
pub async fn backends() -> Vec<TestDatabase> {
    let dbs = testing::all().await;
    for t in &dbs {
        Migrator::up(&t.db, None)
            .await
            .unwrap_or_else(|e| panic!("migrating {}: {e}", t.backend));
    }
    dbs
}

/// A pending order of `quantity` masala chai at 4900 paise from `chai_point` (buyer `buyer`,
/// seller `seller`) for the gateway order `gateway_order_id`, created `now`.
pub fn pending(gateway_order_id: &str, quantity: i64, now: DateTime<Utc>) -> OrderRecord {
    OrderRecord {
        id: Uuid::now_v7(),
        status: Status::Pending,
        buyer_subject: "buyer".into(),
        username: "chai_point".into(),
        seller_subject: "seller".into(),
        lines: vec![OrderLine {
            product_id: Uuid::now_v7(),
            title: "Masala chai".into(),
            quantity,
            unit_price_minor: 4900,
        }],
        amount_minor: 4900 * quantity,
        currency: "INR".into(),
        refunded_minor: 0,
        gateway: "sandbox".into(),
        key_id: "rzp_test_1".into(),
        gateway_order_id: gateway_order_id.to_owned(),
        expires_at: now + chrono::TimeDelta::minutes(15),
        created_at: now,
        updated_at: now,
        paid_at: None,
        fulfilment: None,
        payment_account_id: None,
        reference: None,
    }
}

/// The gateway call that created `order`'s gateway order.
pub fn created(order: &OrderRecord) -> GatewayCall {
    GatewayCall {
        order_id: order.id,
        call: "create_order",
        source: "checkout",
        outcome: "ok",
        gateway_ref: Some(order.gateway_order_id.clone()),
        latency_ms: 12,
    }
}

/// Writes `order` as a checkout would (no idempotency key).
pub async fn insert(store: &PaymentsStore, order: OrderRecord) {
    let call = created(&order);
    store
        .insert_order(&NewOrder { record: order }, None, &call)
        .await
        .unwrap();
}

/// Data keys in a fresh file of their own.
pub fn keyring() -> std::sync::Arc<thali_platform::crypto::Keyring> {
    let path = std::env::temp_dir()
        .join(format!("thali-payments-keys-{}", Uuid::now_v7()))
        .join("data-keys.json");
    std::sync::Arc::new(thali_platform::crypto::Keyring::open(&path).unwrap())
}
