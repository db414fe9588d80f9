//! The reconciler against the sandbox gateway, on every configured backend (SQLite always,
//! PostgreSQL with `THALI_TEST_DATABASE_URL`, required under CI=true). The sandbox's account has
//! no webhook URL: every webhook is lost, as when the process died between the gateway's capture
//! and the webhook, and only the reconciler can settle the orders.
use std::{sync::Arc, time::Duration};

mod support;

use chrono::Utc;
use support::backends;
use thali_payments::{
    domain::Status,
    gateway::{Credentials, Gateway, KeySecret, NewGatewayOrder, RazorpayGateway},
    grpc::PlatformAccount,
    sandbox::{Faults, PayOutcome, Sandbox, SandboxOptions},
    store::{Accounts, CAPTURE, COMMIT_STOCK, PaymentsStore, RELEASE_STOCK},
    workers::{CycleReport, Reconciler},
};
use thali_platform::{
    jobs::{ManualClock, Queue, admin},
    testing::TestDatabase,
};
use uuid::Uuid;

struct World {
    sandbox: Sandbox,
    gateway: Arc<dyn Gateway>,
    account: PlatformAccount,
    store: PaymentsStore,
    clock: ManualClock,
}

impl World {
    async fn start(t: &TestDatabase) -> World {
        let sandbox = Sandbox::new(SandboxOptions::default()).unwrap();
        // No webhook URL: every webhook of this account is lost.
        let created = sandbox.create_account(None).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(sandbox.clone().serve(listener, std::future::pending()));
        let gateway: Arc<dyn Gateway> =
            Arc::new(RazorpayGateway::new(&url, Duration::from_secs(2), Duration::from_secs(5)).unwrap());
        let account = PlatformAccount {
            gateway: "sandbox".into(),
            credentials: Credentials::new(created.key_id.clone(), created.key_secret.expose()),
            webhook_secret: KeySecret::new(created.webhook_secret.expose().to_owned()),
        };
        let clock = ManualClock::new(Utc::now());
        let queue = Queue::with_clock(thali_payments::workers::SERVICE, Arc::new(clock.clone()));
        let store = PaymentsStore::with_queue(t.db.clone(), queue);
        World {
            sandbox,
            gateway,
            account,
            store,
            clock,
        }
    }

    fn reconciler(&self) -> Reconciler {
        Reconciler {
            store: self.store.clone(),
            gateway: self.gateway.clone(),
            accounts: Accounts::new(self.account.clone(), support::keyring()),
        }
    }

    /// A checkout's order: the gateway order and ours, created now. Returns (our id, gateway id).
    async fn order(&self) -> (Uuid, String) {
        let receipt = Uuid::now_v7().simple().to_string();
        let gateway_order = self
            .gateway
            .create_order(
                &self.account.credentials,
                &NewGatewayOrder {
                    amount_minor: 4900,
                    currency: "INR".into(),
                    receipt,
                    notes: Default::default(),
                },
            )
            .await
            .unwrap();
        let mut order = support::pending(&gateway_order.id, 1, self.store.now());
        order.key_id = self.account.credentials.key_id.clone();
        let id = order.id;
        support::insert(&self.store, order).await;
        (id, gateway_order.id)
    }

    async fn status(&self, id: Uuid) -> Status {
        self.store.order(id).await.unwrap().status
    }
}

async fn jobs(t: &TestDatabase, kind: &str) -> usize {
    let filter = admin::Filter {
        service: Some(thali_payments::workers::SERVICE.into()),
        kind: Some(kind.into()),
        state: None,
    };
    admin::list(&t.db, &filter, 1000).await.unwrap().len()
}

#[tokio::test]
async fn captured_failed_and_forgotten_orders_are_settled_from_what_the_gateway_says() {
    for t in backends().await {
        let w = World::start(&t).await;
        let (captured, gw_captured) = w.order().await;
        let (authorized, gw_authorized) = w.order().await;
        let (failed, gw_failed) = w.order().await;
        let (forgotten, _) = w.order().await;
        // The buyers pay; the webhooks never arrive (the process died between capture and webhook).
        w.sandbox.pay(&gw_captured, PayOutcome::Captured).unwrap();
        w.sandbox.pay(&gw_authorized, PayOutcome::Authorized).unwrap();
        w.sandbox.pay(&gw_failed, PayOutcome::Failed).unwrap();

        // Younger than 5 minutes: the webhooks still have their chance.
        assert_eq!(w.reconciler().run_cycle().await.unwrap().checked, 0, "{}", t.backend);

        w.clock.advance(Duration::from_secs(6 * 60));
        let report = w.reconciler().run_cycle().await.unwrap();
        assert_eq!(report.checked, 4, "{}: {report:?}", t.backend);
        assert_eq!(w.status(captured).await, Status::Paid, "{}", t.backend);
        assert_eq!(jobs(&t, COMMIT_STOCK).await, 1, "{}: its stock is committed", t.backend);
        assert_eq!(w.status(authorized).await, Status::Pending);
        assert_eq!(
            jobs(&t, CAPTURE).await,
            1,
            "{}: the authorized payment is captured",
            t.backend
        );
        assert_eq!(
            w.status(failed).await,
            Status::Pending,
            "a failed attempt may be retried"
        );
        assert_eq!(w.status(forgotten).await, Status::Pending, "not yet expired");
        // Every check is a recorded gateway call.
        let calls = w.store.calls(captured).await.unwrap();
        assert!(
            calls
                .iter()
                .any(|c| c.call == "order_payments" && c.source == "reconciler" && c.outcome == "ok"),
            "{calls:?}"
        );

        // Past the 15-minute expiry: the only-failed order failed, the unpaid one expired, and
        // both give their stock back. The paid order is not looked at again.
        w.clock.advance(Duration::from_secs(10 * 60));
        let report = w.reconciler().run_cycle().await.unwrap();
        assert_eq!(w.status(failed).await, Status::Failed, "{}: {report:?}", t.backend);
        assert_eq!(w.status(forgotten).await, Status::Expired, "{}", t.backend);
        assert_eq!(jobs(&t, RELEASE_STOCK).await, 2, "{}", t.backend);
        assert_eq!(
            w.status(authorized).await,
            Status::Pending,
            "money in flight is not expired"
        );
        assert_eq!(report.checked, 3, "{}: pending orders only: {report:?}", t.backend);
        // Settled twice? Another cycle changes nothing.
        let again = w.reconciler().run_cycle().await.unwrap();
        assert_eq!(again.settled, 0, "{}: {again:?}", t.backend);
        assert_eq!(jobs(&t, COMMIT_STOCK).await, 1);
        assert_eq!(jobs(&t, RELEASE_STOCK).await, 2);
    }
}

#[tokio::test]
async fn a_rate_limited_gateway_backs_the_reconciler_off() {
    for t in backends().await {
        let w = World::start(&t).await;
        let (first, gw) = w.order().await;
        let (second, _) = w.order().await;
        w.sandbox.pay(&gw, PayOutcome::Captured).unwrap();
        w.clock.advance(Duration::from_secs(6 * 60));
        w.sandbox
            .set_faults(Faults {
                rate_429: 1.0,
                ..Faults::default()
            })
            .unwrap();
        let report = w.reconciler().run_cycle().await.unwrap();
        assert!(report.rate_limited, "{}: {report:?}", t.backend);
        assert_eq!(
            (report.checked, report.deferred, report.settled),
            (2, 2, 0),
            "{report:?}"
        );
        let calls = w.store.calls(first).await.unwrap();
        assert!(calls.iter().any(|c| c.outcome == "rate_limited"), "{calls:?}");
        assert!(
            w.store
                .calls(second)
                .await
                .unwrap()
                .iter()
                .all(|c| c.source != "reconciler"),
            "{}: after a 429 the cycle makes no more calls",
            t.backend
        );

        // The gateway recovers, but the backed-off orders wait: the first for 2 minutes, the
        // rest of the rate-limited cycle until the next cycle.
        w.sandbox.set_faults(Faults::default()).unwrap();
        w.clock.advance(Duration::from_secs(30));
        assert_eq!(w.reconciler().run_cycle().await.unwrap().checked, 0, "{}", t.backend);
        w.clock.advance(Duration::from_secs(120));
        let report = w.reconciler().run_cycle().await.unwrap();
        assert_eq!(report.checked, 2, "{}: {report:?}", t.backend);
        assert_eq!(w.status(first).await, Status::Paid);
    }
}

#[tokio::test]
async fn a_cycle_takes_at_most_a_hundred_oldest_first_and_two_reconcilers_share_without_overlap() {
    for t in backends().await {
        let w = World::start(&t).await;
        let mut orders = Vec::new();
        for _ in 0..130 {
            orders.push(w.order().await);
            w.clock.advance(Duration::from_millis(10));
        }
        for (_, gw) in &orders {
            w.sandbox.pay(gw, PayOutcome::Captured).unwrap();
        }
        w.clock.advance(Duration::from_secs(6 * 60));
        // Two replicas' reconcilers at once: each order is checked by one of them.
        let (one, two) = (w.reconciler(), w.reconciler());
        let (a, b) = tokio::join!(
            tokio::spawn(async move { one.run_cycle().await }),
            tokio::spawn(async move { two.run_cycle().await })
        );
        let (a, b): (CycleReport, CycleReport) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        assert!(a.checked <= 100 && b.checked <= 100, "{}: {a:?} {b:?}", t.backend);
        assert_eq!(
            a.checked + b.checked,
            130,
            "{}: no order twice, none left: {a:?} {b:?}",
            t.backend
        );
        assert_eq!(a.settled + b.settled, 130);
        assert_eq!(jobs(&t, COMMIT_STOCK).await, 130, "{}: one commit per order", t.backend);

        // One reconciler alone: 100, oldest first; the next cycle takes the 20 never checked
        // before the ones it already saw (a backlog is worked through, never starved).
        let w = World::start(&t).await;
        let mut orders = Vec::new();
        for _ in 0..120 {
            orders.push(w.order().await);
            w.clock.advance(Duration::from_millis(10));
        }
        w.clock.advance(Duration::from_secs(6 * 60));
        let first = w.reconciler().run_cycle().await.unwrap();
        assert_eq!(first.checked, 100, "{}", t.backend);
        let checked = |id: Uuid| {
            let store = w.store.clone();
            async move {
                store
                    .calls(id)
                    .await
                    .unwrap()
                    .iter()
                    .filter(|c| c.source == "reconciler")
                    .count()
            }
        };
        assert_eq!(checked(orders[99].0).await, 1, "{}: the oldest 100", t.backend);
        assert_eq!(checked(orders[100].0).await, 0, "{}: the youngest wait", t.backend);
        let second = w.reconciler().run_cycle().await.unwrap();
        assert_eq!(second.checked, 100, "{}", t.backend);
        for (id, _) in &orders[100..] {
            assert_eq!(
                checked(*id).await,
                1,
                "{}: the 20 youngest go first in the next cycle",
                t.backend
            );
        }
        assert_eq!(
            checked(orders[0].0).await,
            2,
            "{}: then those checked longest ago",
            t.backend
        );
    }
}
