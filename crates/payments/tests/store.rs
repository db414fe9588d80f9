//! The payments store on every configured backend (SQLite always, PostgreSQL with
//! `THALI_TEST_DATABASE_URL`, required under CI=true): one order per checkout key however many
//! retries race, the gateway calls recorded, and lists that show each viewer only their orders.
mod support;

use chrono::Utc;
use support::{backends, created as call};
use thali_payments::{
    domain::{OrderRecord, PaymentsError, Status},
    store::{NewOrder, OrdersOf, PaymentsStore, Written},
};
use thali_platform::idempotency::Idempotency;
use uuid::Uuid;

fn order(buyer: &str, seller: &str, username: &str) -> OrderRecord {
    let mut order = support::pending("", 2, Utc::now());
    order.gateway_order_id = format!("order_{}", order.id.simple());
    order.buyer_subject = buyer.into();
    order.seller_subject = seller.into();
    order.username = username.into();
    order
}

#[tokio::test]
async fn racing_checkouts_with_one_key_write_one_order() {
    for t in backends().await {
        let store = PaymentsStore::new(t.db.clone());
        let idem = Idempotency::new("cart-1".into(), &"the same cart");
        let mut racers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (store, idem, o) = (store.clone(), idem.clone(), order("buyer", "seller", "chai_point"));
            racers.spawn(async move {
                store
                    .insert_order(&NewOrder { record: o.clone() }, Some(&idem), &call(&o))
                    .await
            });
        }
        let mut created = Vec::new();
        let mut replayed = Vec::new();
        while let Some(outcome) = racers.join_next().await {
            match outcome.unwrap().unwrap_or_else(|e| panic!("{}: {e:?}", t.backend)) {
                Written::Created(o) => created.push(o.id),
                Written::Replayed(o) => replayed.push(o.id),
            }
        }
        assert_eq!(created.len(), 1, "{}: one order", t.backend);
        assert!(replayed.iter().all(|id| *id == created[0]), "{}", t.backend);
        let stored = store.order(created[0]).await.unwrap();
        assert_eq!(stored.lines.len(), 1);
        assert_eq!(stored.status, Status::Pending);
        let calls = store.calls(created[0]).await.unwrap();
        assert_eq!(calls.len(), 1, "{}: the winner's gateway call", t.backend);
        assert_eq!(calls[0].call, "create_order");

        // The key answers the same order; another request under it is refused.
        assert_eq!(
            store.replay_checkout("buyer", &idem).await.unwrap().map(|o| o.id),
            Some(created[0])
        );
        let other = Idempotency::new("cart-1".into(), &"another cart");
        assert!(matches!(
            store.replay_checkout("buyer", &other).await,
            Err(PaymentsError::IdempotencyKeyReused)
        ));
        // Keys are per buyer.
        assert!(store.replay_checkout("someone else", &idem).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn lists_show_a_buyer_their_purchases_and_a_seller_their_sales_page_by_page() {
    for t in backends().await {
        let store = PaymentsStore::new(t.db.clone());
        let mut written = Vec::new();
        for (buyer, seller, page) in [
            ("ravi", "asha", "chai_point"),
            ("ravi", "asha", "chai_point"),
            ("mira", "asha", "chai_point"),
            ("ravi", "zoya", "zoya_art"),
        ] {
            let o = order(buyer, seller, page);
            store
                .insert_order(&NewOrder { record: o.clone() }, None, &call(&o))
                .await
                .unwrap();
            written.push(o.id);
        }
        let ids = |orders: Vec<OrderRecord>| orders.into_iter().map(|o| o.id).collect::<Vec<_>>();
        let (first, next) = store
            .list_orders(&OrdersOf::Buyer("ravi".into()), 2, None)
            .await
            .unwrap();
        assert_eq!(ids(first), vec![written[3], written[1]], "{}: newest first", t.backend);
        let (rest, end) = store
            .list_orders(&OrdersOf::Buyer("ravi".into()), 2, next)
            .await
            .unwrap();
        assert_eq!(ids(rest), vec![written[0]]);
        assert!(end.is_none());

        let sales = OrdersOf::Store {
            username: "chai_point".into(),
            seller: Some("asha".into()),
        };
        assert_eq!(store.list_orders(&sales, 50, None).await.unwrap().0.len(), 3);
        let not_theirs = OrdersOf::Store {
            username: "chai_point".into(),
            seller: Some("zoya".into()),
        };
        assert!(
            store.list_orders(&not_theirs, 50, None).await.unwrap().0.is_empty(),
            "{}",
            t.backend
        );
        assert_eq!(store.list_orders(&OrdersOf::All, 50, None).await.unwrap().0.len(), 4);
        assert!(matches!(
            store.order(Uuid::now_v7()).await,
            Err(PaymentsError::OrderNotFound)
        ));
    }
}

#[tokio::test]
async fn the_database_refuses_orders_that_break_the_rules() {
    use sea_orm::ConnectionTrait;
    for t in backends().await {
        let store = PaymentsStore::new(t.db.clone());
        let o = order("ravi", "asha", "chai_point");
        store
            .insert_order(&NewOrder { record: o.clone() }, None, &call(&o))
            .await
            .unwrap();
        let backend = t.db.get_database_backend();
        for (sql, values) in [
            (
                "UPDATE orders SET status = $1 WHERE id = $2",
                vec!["shipped".into(), o.id.into()],
            ),
            (
                "UPDATE orders SET status = $1 WHERE id = $2",
                vec!["paid".into(), o.id.into()],
            ),
            (
                "UPDATE orders SET refunded_minor = $1 WHERE id = $2",
                vec![9801i64.into(), o.id.into()],
            ),
            (
                "UPDATE orders SET amount_minor = $1 WHERE id = $2",
                vec![0i64.into(), o.id.into()],
            ),
        ] {
            let refused =
                t.db.execute_raw(thali_platform::db::statement(backend, sql, values))
                    .await;
            assert!(refused.is_err(), "{}: {sql} must be refused", t.backend);
        }
        // One order per gateway order.
        let mut twin = order("ravi", "asha", "chai_point");
        twin.gateway_order_id = o.gateway_order_id.clone();
        assert!(
            store
                .insert_order(&NewOrder { record: twin.clone() }, None, &call(&twin))
                .await
                .is_err(),
            "{}",
            t.backend
        );
    }
}
