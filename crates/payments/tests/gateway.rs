//! The Razorpay adapter against the sandbox gateway on 127.0.0.1:0, the sandbox's webhooks,
//! faults and state file, and Razorpay's official Python SDK against the sandbox.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use thali_payments::gateway::{
    Credentials, Gateway, GatewayError, GatewayOrderStatus, GatewayPaymentStatus, GatewayRefundStatus, NewGatewayOrder,
    RazorpayGateway,
};
use thali_payments::sandbox::{Faults, Sandbox, SandboxAccount, SandboxOptions};
use thali_payments::signature::{checkout_is_valid, webhook_is_valid};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// A sandbox serving on an ephemeral loopback port.
struct Running {
    sandbox: Sandbox,
    base_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(sandbox: Sandbox) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sandbox.clone().serve(listener, async {
            let _ = stopped.await;
        }));
        Running {
            sandbox,
            base_url,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }

    fn gateway(&self) -> RazorpayGateway {
        self.gateway_with_timeout(Duration::from_secs(10))
    }

    fn gateway_with_timeout(&self, total: Duration) -> RazorpayGateway {
        RazorpayGateway::new(&self.base_url, Duration::from_secs(2), total).unwrap()
    }

    /// `POST /sandbox/orders/{id}/pay`, as the buyer's browser would.
    async fn pay(&self, order_id: &str, outcome: &str) -> Value {
        let response = reqwest::Client::new()
            .post(format!("{}/sandbox/orders/{order_id}/pay", self.base_url))
            .json(&json!({ "outcome": outcome }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }
}

fn options() -> SandboxOptions {
    SandboxOptions {
        webhook_first_backoff: Duration::from_millis(50),
        webhook_max_backoff: Duration::from_millis(200),
        ..SandboxOptions::default()
    }
}

async fn sandbox() -> Running {
    Running::start(Sandbox::new(options()).unwrap()).await
}

fn new_order(amount_minor: i64) -> NewGatewayOrder {
    NewGatewayOrder {
        amount_minor,
        currency: "INR".into(),
        receipt: "thali-order-1".into(),
        notes: BTreeMap::from([("shop".to_owned(), "chai corner".to_owned())]),
    }
}

/// One webhook as the receiver saw it.
#[derive(Debug, Clone)]
struct Hook {
    event_id: String,
    signature: Option<String>,
    content_type: String,
    body: Bytes,
    json: Value,
}

impl Hook {
    fn event(&self) -> &str {
        self.json["event"].as_str().unwrap()
    }
}

/// A webhook endpoint: answers 500 to the first `refuse_first` requests (all when `None`), 200 after.
struct Receiver {
    url: String,
    hooks: mpsc::UnboundedReceiver<Hook>,
    attempts: Arc<Mutex<usize>>,
}

impl Receiver {
    async fn start(refuse_first: Option<usize>) -> Receiver {
        let (tx, hooks) = mpsc::unbounded_channel();
        let attempts = Arc::new(Mutex::new(0usize));
        let counter = attempts.clone();
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let tx = tx.clone();
                let counter = counter.clone();
                async move {
                    let attempt = {
                        let mut n = counter.lock().unwrap();
                        *n += 1;
                        *n
                    };
                    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
                    let hook = Hook {
                        event_id: header("x-razorpay-event-id").unwrap_or_default(),
                        signature: header("x-razorpay-signature"),
                        content_type: header("content-type").unwrap_or_default(),
                        json: serde_json::from_slice(&body).unwrap(),
                        body,
                    };
                    if refuse_first.is_none_or(|n| attempt <= n) {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let _ = tx.send(hook);
                    StatusCode::OK
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, hooks, attempts }
    }

    async fn next(&mut self) -> Hook {
        // Long enough for the backoff and delays of the paused-time tests (virtual seconds there).
        tokio::time::timeout(Duration::from_secs(120), self.hooks.recv())
            .await
            .expect("no webhook within 120 s")
            .unwrap()
    }

    async fn take(&mut self, n: usize) -> Vec<Hook> {
        let mut hooks = Vec::new();
        for _ in 0..n {
            hooks.push(self.next().await);
        }
        hooks
    }

    fn attempts(&self) -> usize {
        *self.attempts.lock().unwrap()
    }
}

#[tokio::test]
async fn an_order_is_created_and_read_back() {
    let running = sandbox().await;
    let account = running.sandbox.create_account(None).unwrap();
    let gateway = running.gateway();
    let order = gateway
        .create_order(&account.credentials(), &new_order(50_000))
        .await
        .unwrap();
    assert!(order.id.starts_with("order_"), "{}", order.id);
    assert_eq!((order.amount, order.amount_paid, order.amount_due), (50_000, 0, 50_000));
    assert_eq!(order.status, GatewayOrderStatus::Created);
    assert_eq!(order.receipt.as_deref(), Some("thali-order-1"));
    assert_eq!(order.attempts, 0);
    assert!(order.created_at > 1_700_000_000);
    let fetched = gateway.fetch_order(&account.credentials(), &order.id).await.unwrap();
    assert_eq!(fetched, order);
    assert!(
        gateway
            .order_payments(&account.credentials(), &order.id)
            .await
            .unwrap()
            .is_empty()
    );
    let refused = gateway
        .create_order(&account.credentials(), &new_order(99))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, GatewayError::BadRequest { field: Some(f), .. } if f == "amount"),
        "{refused:?}"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_captured_payment_pays_the_order() {
    let running = sandbox().await;
    let account = running.sandbox.create_account(None).unwrap();
    let credentials = account.credentials();
    let gateway = running.gateway();
    let order = gateway.create_order(&credentials, &new_order(50_000)).await.unwrap();
    let answer = running.pay(&order.id, "captured").await;
    let payment_id = answer["razorpay_payment_id"].as_str().unwrap();
    assert!(checkout_is_valid(
        credentials.key_secret.expose().as_bytes(),
        &order.id,
        payment_id,
        answer["razorpay_signature"].as_str().unwrap()
    ));
    let order = gateway.fetch_order(&credentials, &order.id).await.unwrap();
    assert_eq!(order.status, GatewayOrderStatus::Paid);
    assert_eq!((order.amount_paid, order.amount_due, order.attempts), (50_000, 0, 1));
    let payments = gateway.order_payments(&credentials, &order.id).await.unwrap();
    assert_eq!(payments.len(), 1);
    let payment = gateway.fetch_payment(&credentials, payment_id).await.unwrap();
    assert_eq!(payments[0], payment);
    assert_eq!(payment.status, GatewayPaymentStatus::Captured);
    assert!(payment.captured);
    assert_eq!(payment.order_id.as_deref(), Some(order.id.as_str()));
    assert!(matches!(payment.method.as_deref(), Some("upi" | "card")));
    assert_eq!(payment.error_code, None);
    running.stop().await;
}

#[tokio::test]
async fn an_authorized_payment_is_captured_once() {
    let running = sandbox().await;
    let credentials = running.sandbox.create_account(None).unwrap().credentials();
    let gateway = running.gateway();
    let order = gateway.create_order(&credentials, &new_order(25_000)).await.unwrap();
    let answer = running.pay(&order.id, "authorized").await;
    let payment_id = answer["razorpay_payment_id"].as_str().unwrap();
    let order_now = gateway.fetch_order(&credentials, &order.id).await.unwrap();
    assert_eq!(order_now.status, GatewayOrderStatus::Attempted);
    assert_eq!(order_now.amount_paid, 0);
    let wrong_amount = gateway
        .capture(&credentials, payment_id, 24_999, "INR")
        .await
        .unwrap_err();
    assert!(
        matches!(wrong_amount, GatewayError::BadRequest { .. }),
        "{wrong_amount:?}"
    );
    let payment = gateway.capture(&credentials, payment_id, 25_000, "INR").await.unwrap();
    assert_eq!(payment.status, GatewayPaymentStatus::Captured);
    assert!(payment.captured);
    let twice = gateway
        .capture(&credentials, payment_id, 25_000, "INR")
        .await
        .unwrap_err();
    match &twice {
        GatewayError::BadRequest { code, description, .. } => {
            assert_eq!(code, "BAD_REQUEST_ERROR");
            assert_eq!(description, "This payment has already been captured");
        }
        other => panic!("expected BadRequest, got {other:?}"),
    }
    assert!(!twice.is_retryable());
    let order_now = gateway.fetch_order(&credentials, &order.id).await.unwrap();
    assert_eq!(order_now.status, GatewayOrderStatus::Paid);
    running.stop().await;
}

#[tokio::test]
async fn a_failed_payment_carries_its_error() {
    let running = sandbox().await;
    let credentials = running.sandbox.create_account(None).unwrap().credentials();
    let gateway = running.gateway();
    let order = gateway.create_order(&credentials, &new_order(10_000)).await.unwrap();
    let answer = running.pay(&order.id, "failed").await;
    assert!(
        answer.get("razorpay_signature").is_none(),
        "a failed attempt is not signed"
    );
    assert_eq!(answer["error"]["reason"], "payment_failed");
    let payment_id = answer["razorpay_payment_id"].as_str().unwrap();
    let payment = gateway.fetch_payment(&credentials, payment_id).await.unwrap();
    assert_eq!(payment.status, GatewayPaymentStatus::Failed);
    assert!(!payment.captured);
    assert_eq!(payment.error_code.as_deref(), Some("BAD_REQUEST_ERROR"));
    assert!(payment.error_description.is_some() && payment.error_source.is_some() && payment.error_step.is_some());
    let order = gateway.fetch_order(&credentials, &order.id).await.unwrap();
    assert_eq!((order.status, order.attempts), (GatewayOrderStatus::Attempted, 1));
    let capture = gateway
        .capture(&credentials, payment_id, 10_000, "INR")
        .await
        .unwrap_err();
    assert!(matches!(capture, GatewayError::BadRequest { .. }), "{capture:?}");
    // The buyer tries again on the same order, and it works.
    running.pay(&order.id, "captured").await;
    let payments = gateway.order_payments(&credentials, &order.id).await.unwrap();
    let statuses: Vec<_> = payments.iter().map(|p| p.status.clone()).collect();
    assert_eq!(statuses, [GatewayPaymentStatus::Captured, GatewayPaymentStatus::Failed]);
    running.stop().await;
}

#[tokio::test]
async fn a_refund_takes_part_then_the_rest_and_never_more() {
    let running = sandbox().await;
    let credentials = running.sandbox.create_account(None).unwrap().credentials();
    let gateway = running.gateway();
    let order = gateway.create_order(&credentials, &new_order(50_000)).await.unwrap();
    let payment_id = running.pay(&order.id, "captured").await["razorpay_payment_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let over = gateway
        .refund(&credentials, &payment_id, Some(50_001), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&over, GatewayError::BadRequest { field: Some(f), .. } if f == "amount"),
        "{over:?}"
    );
    let part = gateway
        .refund(&credentials, &payment_id, Some(20_000), None)
        .await
        .unwrap();
    assert!(part.id.starts_with("rfnd_"));
    assert_eq!(
        (part.amount, part.status, part.payment_id.as_str()),
        (20_000, GatewayRefundStatus::Processed, payment_id.as_str())
    );
    let payment = gateway.fetch_payment(&credentials, &payment_id).await.unwrap();
    assert_eq!(
        (payment.amount_refunded, payment.status),
        (20_000, GatewayPaymentStatus::Captured)
    );
    let over = gateway
        .refund(&credentials, &payment_id, Some(30_001), None)
        .await
        .unwrap_err();
    assert!(matches!(over, GatewayError::BadRequest { .. }), "{over:?}");
    let rest = gateway.refund(&credentials, &payment_id, None, None).await.unwrap();
    assert_eq!(rest.amount, 30_000);
    let payment = gateway.fetch_payment(&credentials, &payment_id).await.unwrap();
    assert_eq!(
        (payment.amount_refunded, payment.status),
        (50_000, GatewayPaymentStatus::Refunded)
    );
    let again = gateway.refund(&credentials, &payment_id, None, None).await.unwrap_err();
    assert!(matches!(again, GatewayError::BadRequest { .. }), "{again:?}");
    running.stop().await;
}

#[tokio::test]
async fn a_refund_retried_after_its_answer_was_lost_is_not_made_twice() {
    let running = sandbox().await;
    let credentials = running.sandbox.create_account(None).unwrap().credentials();
    let gateway = running.gateway();
    let order = gateway.create_order(&credentials, &new_order(50_000)).await.unwrap();
    let payment_id = running.pay(&order.id, "captured").await["razorpay_payment_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The first try reached the gateway, but its answer never came back (the process died).
    let first =
        thali_payments::workers::refund_once(&gateway, &credentials, &payment_id, Some(20_000), "rf_one", false)
            .await
            .unwrap();
    assert_eq!(first.receipt.as_deref(), Some("rf_one"));
    // The retry finds it by its receipt instead of refunding again.
    let retry = thali_payments::workers::refund_once(&gateway, &credentials, &payment_id, Some(20_000), "rf_one", true)
        .await
        .unwrap();
    assert_eq!(retry.id, first.id);
    let payment = gateway.fetch_payment(&credentials, &payment_id).await.unwrap();
    assert_eq!(payment.amount_refunded, 20_000, "refunded once");
    // Another refund (another receipt) is made; the list shows both, newest first.
    let second = thali_payments::workers::refund_once(&gateway, &credentials, &payment_id, Some(5_000), "rf_two", true)
        .await
        .unwrap();
    assert_ne!(second.id, first.id);
    let listed = gateway.payment_refunds(&credentials, &payment_id).await.unwrap();
    let receipts: Vec<_> = listed.iter().map(|r| r.receipt.clone().unwrap_or_default()).collect();
    assert_eq!(receipts.len(), 2);
    assert!(receipts.contains(&"rf_one".to_owned()) && receipts.contains(&"rf_two".to_owned()));
    // A receipt longer than Razorpay takes is refused before the call.
    let long = "r".repeat(41);
    let refused = gateway
        .refund(&credentials, &payment_id, Some(100), Some(&long))
        .await
        .unwrap_err();
    assert!(matches!(refused, GatewayError::BadRequest { .. }), "{refused:?}");
    running.stop().await;
}

#[tokio::test]
async fn credentials_are_checked_and_accounts_see_only_their_own() {
    let running = sandbox().await;
    let mine = running.sandbox.create_account(None).unwrap().credentials();
    let theirs = running.sandbox.create_account(None).unwrap().credentials();
    let gateway = running.gateway();
    let order = gateway.create_order(&mine, &new_order(10_000)).await.unwrap();
    let payment_id = running.pay(&order.id, "authorized").await["razorpay_payment_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let wrong_secret = Credentials::new(mine.key_id.clone(), "not-the-secret");
    let error = gateway.fetch_order(&wrong_secret, &order.id).await.unwrap_err();
    assert_eq!(error, GatewayError::Unauthorized);
    assert!(!error.to_string().contains("not-the-secret") && !format!("{error:?}").contains("not-the-secret"));
    let unknown_key = Credentials::new("rzp_test_nobody", "x");
    assert_eq!(
        gateway.create_order(&unknown_key, &new_order(100)).await.unwrap_err(),
        GatewayError::Unauthorized
    );
    assert_eq!(
        gateway.fetch_order(&theirs, &order.id).await.unwrap_err(),
        GatewayError::NotFound
    );
    assert_eq!(
        gateway.order_payments(&theirs, &order.id).await.unwrap_err(),
        GatewayError::NotFound
    );
    assert_eq!(
        gateway.fetch_payment(&theirs, &payment_id).await.unwrap_err(),
        GatewayError::NotFound
    );
    assert_eq!(
        gateway.capture(&theirs, &payment_id, 10_000, "INR").await.unwrap_err(),
        GatewayError::NotFound
    );
    assert_eq!(
        gateway.fetch_order(&mine, "order_DoesNotExist01").await.unwrap_err(),
        GatewayError::NotFound
    );
    running.stop().await;
}

#[tokio::test]
async fn injected_429_and_5xx_are_retryable_and_change_nothing() {
    let running = sandbox().await;
    let credentials = running.sandbox.create_account(None).unwrap().credentials();
    let gateway = running.gateway();
    let faults = reqwest::Client::new();
    let set = |body: Value| {
        faults
            .post(format!("{}/sandbox/faults", running.base_url))
            .json(&body)
            .send()
    };
    assert_eq!(set(json!({"rate_429": 1.0})).await.unwrap().status(), StatusCode::OK);
    let error = gateway
        .create_order(&credentials, &new_order(10_000))
        .await
        .unwrap_err();
    assert_eq!(
        error,
        GatewayError::RateLimited {
            retry_after: Some(Duration::from_secs(1))
        }
    );
    assert!(error.is_retryable());
    assert_eq!(error.backoff_hint(), Some(Duration::from_secs(1)));
    assert_eq!(set(json!({"rate_5xx": 1.0})).await.unwrap().status(), StatusCode::OK);
    let error = gateway
        .create_order(&credentials, &new_order(10_000))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, GatewayError::Server { status: 500..=599, code, .. } if code == "SERVER_ERROR"),
        "{error:?}"
    );
    assert!(error.is_retryable());
    for bad in [
        json!({"rate_5xx": 1.5}),
        json!({"rate_429": -1}),
        json!({"rate_4299": 0.1}),
        json!({"api_latency_ms": "x"}),
    ] {
        let response = set(bad.clone()).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "BAD_REQUEST_ERROR", "{bad}");
    }
    let current: Value = faults
        .get(format!("{}/sandbox/faults", running.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        current["rate_5xx"], 1.0,
        "a refused change leaves the faults as they were"
    );
    faults
        .delete(format!("{}/sandbox/faults", running.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(running.sandbox.faults(), Faults::default());
    gateway.create_order(&credentials, &new_order(10_000)).await.unwrap();
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_call_without_an_answer_times_out_within_the_clients_timeout() {
    let running = sandbox().await;
    let credentials = running.sandbox.create_account(None).unwrap().credentials();
    let gateway = running.gateway_with_timeout(Duration::from_secs(3));
    running
        .sandbox
        .set_faults(Faults {
            api_timeout_rate: 1.0,
            ..Faults::default()
        })
        .unwrap();
    let started = tokio::time::Instant::now();
    let error = gateway
        .create_order(&credentials, &new_order(10_000))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(error, GatewayError::Timeout);
    assert!(error.is_retryable());
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    running.sandbox.set_faults(Faults::default()).unwrap();
    gateway.create_order(&credentials, &new_order(10_000)).await.unwrap();
    running.stop().await;
}

fn assert_signed(hook: &Hook, account: &SandboxAccount) {
    assert!(
        webhook_is_valid(
            account.webhook_secret.expose().as_bytes(),
            &hook.body,
            hook.signature.as_deref()
        ),
        "bad signature on {}",
        hook.event()
    );
    assert!(!webhook_is_valid(
        b"another-secret",
        &hook.body,
        hook.signature.as_deref()
    ));
    assert_eq!(hook.content_type, "application/json");
    assert!(hook.event_id.starts_with("evt_"), "{}", hook.event_id);
    assert_eq!(hook.json["entity"], "event");
    assert_eq!(hook.json["account_id"], account.account_id.as_str());
    assert!(hook.json["created_at"].as_i64().unwrap() > 1_700_000_000);
}

#[tokio::test]
async fn webhooks_are_signed_and_come_in_order() {
    let running = sandbox().await;
    let mut receiver = Receiver::start(Some(0)).await;
    let account = running.sandbox.create_account(Some(receiver.url.clone())).unwrap();
    let credentials = account.credentials();
    let gateway = running.gateway();

    let order = gateway.create_order(&credentials, &new_order(50_000)).await.unwrap();
    running.pay(&order.id, "captured").await;
    let hooks = receiver.take(3).await;
    let events: Vec<&str> = hooks.iter().map(Hook::event).collect();
    assert_eq!(events, ["payment.authorized", "payment.captured", "order.paid"]);
    for hook in &hooks {
        assert_signed(hook, &account);
    }
    assert_eq!(hooks[0].json["contains"], json!(["payment"]));
    assert_eq!(hooks[0].json["payload"]["payment"]["entity"]["status"], "authorized");
    assert_eq!(hooks[1].json["payload"]["payment"]["entity"]["status"], "captured");
    assert_eq!(hooks[2].json["contains"], json!(["payment", "order"]));
    assert_eq!(hooks[2].json["payload"]["order"]["entity"]["status"], "paid");
    let ids: std::collections::HashSet<_> = hooks.iter().map(|h| h.event_id.clone()).collect();
    assert_eq!(ids.len(), 3, "every event has its own id");

    // Authorized only: one event; the capture through the API sends the other two.
    let order = gateway.create_order(&credentials, &new_order(20_000)).await.unwrap();
    let payment_id = running.pay(&order.id, "authorized").await["razorpay_payment_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(receiver.next().await.event(), "payment.authorized");
    gateway.capture(&credentials, &payment_id, 20_000, "INR").await.unwrap();
    let events: Vec<String> = receiver.take(2).await.iter().map(|h| h.event().to_owned()).collect();
    assert_eq!(events, ["payment.captured", "order.paid"]);

    gateway
        .refund(&credentials, &payment_id, Some(5_000), None)
        .await
        .unwrap();
    let refund = receiver.next().await;
    assert_signed(&refund, &account);
    assert_eq!(refund.event(), "refund.processed");
    assert_eq!(refund.json["contains"], json!(["refund", "payment"]));
    assert_eq!(refund.json["payload"]["refund"]["entity"]["amount"], 5_000);

    let order = gateway.create_order(&credentials, &new_order(20_000)).await.unwrap();
    running.pay(&order.id, "failed").await;
    let failed = receiver.next().await;
    assert_eq!(failed.event(), "payment.failed");
    assert_eq!(
        failed.json["payload"]["payment"]["entity"]["error_reason"],
        "payment_failed"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_webhook_comes_again_with_the_same_event_id() {
    let running = Running::start(
        Sandbox::new(SandboxOptions {
            webhook_first_backoff: Duration::from_secs(5),
            ..SandboxOptions::default()
        })
        .unwrap(),
    )
    .await;
    let mut receiver = Receiver::start(Some(2)).await;
    let account = running.sandbox.create_account(Some(receiver.url.clone())).unwrap();
    let gateway = running.gateway();
    let order = gateway
        .create_order(&account.credentials(), &new_order(10_000))
        .await
        .unwrap();
    let payment_id = running.pay(&order.id, "authorized").await["razorpay_payment_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = tokio::time::Instant::now();
    let hook = receiver.next().await;
    assert_eq!(receiver.attempts(), 3, "two refusals, then accepted");
    assert!(started.elapsed() >= Duration::from_secs(15), "5 s then 10 s of backoff");
    assert_signed(&hook, &account);
    assert_eq!(hook.json["payload"]["payment"]["entity"]["id"], payment_id.as_str());
    // The receiver saw the body before its 200 reached the sandbox.
    for _ in 0..100 {
        if running.sandbox.pending_webhooks() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        running.sandbox.pending_webhooks(),
        0,
        "acknowledged, so no longer queued"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn webhooks_are_given_up_after_the_retry_window() {
    let running = Running::start(
        Sandbox::new(SandboxOptions {
            webhook_first_backoff: Duration::from_secs(10),
            webhook_max_backoff: Duration::from_secs(60),
            webhook_retry_for: Duration::from_secs(300),
            ..SandboxOptions::default()
        })
        .unwrap(),
    )
    .await;
    let receiver = Receiver::start(None).await;
    let account = running.sandbox.create_account(Some(receiver.url.clone())).unwrap();
    let order = running
        .gateway()
        .create_order(&account.credentials(), &new_order(10_000))
        .await
        .unwrap();
    running.pay(&order.id, "failed").await;
    tokio::time::sleep(Duration::from_secs(30 * 60)).await;
    assert_eq!(running.sandbox.pending_webhooks(), 0, "given up");
    // Attempts at 0, 10, 30, 70, 130, 190, 250 and 310 s (backoff 10 s doubling, at most 60 s):
    // the eighth is the first past the 300 s window, and the last.
    assert_eq!(receiver.attempts(), 8);
    running.stop().await;
}

#[tokio::test]
async fn duplicated_webhooks_share_their_event_id_and_dropped_ones_never_come() {
    let running = sandbox().await;
    let mut receiver = Receiver::start(Some(0)).await;
    let account = running.sandbox.create_account(Some(receiver.url.clone())).unwrap();
    let gateway = running.gateway();

    running
        .sandbox
        .set_faults(Faults {
            webhook_duplicate_rate: 1.0,
            ..Faults::default()
        })
        .unwrap();
    let order = gateway
        .create_order(&account.credentials(), &new_order(10_000))
        .await
        .unwrap();
    running.pay(&order.id, "failed").await;
    let hooks = receiver.take(2).await;
    assert_eq!(hooks[0].event_id, hooks[1].event_id);
    assert_eq!(hooks[0].body, hooks[1].body);
    assert_signed(&hooks[1], &account);

    running
        .sandbox
        .set_faults(Faults {
            webhook_drop_rate: 1.0,
            ..Faults::default()
        })
        .unwrap();
    let dropped = gateway
        .create_order(&account.credentials(), &new_order(10_000))
        .await
        .unwrap();
    running.pay(&dropped.id, "captured").await;
    assert_eq!(running.sandbox.pending_webhooks(), 0, "nothing queued");

    running.sandbox.set_faults(Faults::default()).unwrap();
    let kept = gateway
        .create_order(&account.credentials(), &new_order(10_000))
        .await
        .unwrap();
    running.pay(&kept.id, "failed").await;
    let hook = receiver.next().await;
    assert_eq!(hook.json["payload"]["payment"]["entity"]["order_id"], kept.id.as_str());
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn delayed_and_reordered_webhooks() {
    let running = sandbox().await;
    let mut receiver = Receiver::start(Some(0)).await;
    let account = running.sandbox.create_account(Some(receiver.url.clone())).unwrap();
    let gateway = running.gateway();
    running
        .sandbox
        .set_faults(Faults {
            webhook_delay_ms: 60_000,
            webhook_reorder: true,
            ..Faults::default()
        })
        .unwrap();
    let order = gateway
        .create_order(&account.credentials(), &new_order(10_000))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    running.pay(&order.id, "captured").await;
    let events: Vec<String> = receiver.take(3).await.iter().map(|h| h.event().to_owned()).collect();
    assert!(started.elapsed() >= Duration::from_secs(60), "delayed by a minute");
    assert_eq!(events, ["order.paid", "payment.captured", "payment.authorized"]);
    running.stop().await;
}

#[tokio::test]
async fn orders_payments_and_undelivered_webhooks_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("thali-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sandbox-state.json");
    let _ = std::fs::remove_file(&path);

    let first = Running::start(Sandbox::with_state_file(options(), &path).unwrap()).await;
    let account = first.sandbox.create_account(None).unwrap();
    let order = first
        .gateway()
        .create_order(&account.credentials(), &new_order(30_000))
        .await
        .unwrap();
    let payment_id = first.pay(&order.id, "authorized").await["razorpay_payment_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The webhook endpoint is down while the process dies: payment.authorized is still owed.
    first
        .sandbox
        .set_webhook_url(&account.key_id, Some("http://127.0.0.1:9/unreachable".into()))
        .unwrap();
    first.pay(&order.id, "failed").await;
    first.stop().await;

    let second = Running::start(Sandbox::with_state_file(options(), &path).unwrap()).await;
    assert_eq!(
        second.sandbox.pending_webhooks(),
        1,
        "the undelivered payment.failed came back"
    );
    let gateway = second.gateway();
    let credentials = account.credentials();
    let fetched = gateway.fetch_order(&credentials, &order.id).await.unwrap();
    assert_eq!((fetched.status, fetched.attempts), (GatewayOrderStatus::Attempted, 2));
    let payment = gateway.capture(&credentials, &payment_id, 30_000, "INR").await.unwrap();
    assert_eq!(payment.status, GatewayPaymentStatus::Captured);
    let mut receiver = Receiver::start(Some(0)).await;
    second
        .sandbox
        .set_webhook_url(&account.key_id, Some(receiver.url.clone()))
        .unwrap();
    let events: Vec<String> = receiver.take(3).await.iter().map(|h| h.event().to_owned()).collect();
    assert_eq!(events, ["payment.failed", "payment.captured", "order.paid"]);
    second.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The state file is written behind the changes, not inside each: a burst of orders lands in
/// it once the burst settles, and what the writer has not written yet goes out when the
/// sandbox stops.
#[tokio::test]
async fn the_state_file_follows_a_burst_of_orders_and_is_complete_after_a_stop() {
    let dir = std::env::temp_dir().join(format!("thali-sandbox-burst-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.json");
    let orders_in_file = || -> usize {
        let state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap_or_default()).unwrap_or(Value::Null);
        state["orders"].as_object().map_or(0, |orders| orders.len())
    };

    let running = Running::start(Sandbox::with_state_file(options(), &path).unwrap()).await;
    let account = running.sandbox.create_account(None).unwrap();
    let gateway = running.gateway();
    for _ in 0..40 {
        gateway
            .create_order(&account.credentials(), &new_order(10_000))
            .await
            .unwrap();
    }
    let mut waited = 0;
    while orders_in_file() < 40 {
        assert!(
            waited < 100,
            "the burst never reached the state file ({} of 40)",
            orders_in_file()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    // One more, and the sandbox stops at once: the stop writes it.
    gateway
        .create_order(&account.credentials(), &new_order(10_000))
        .await
        .unwrap();
    running.stop().await;
    assert_eq!(orders_in_file(), 41);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bad_input_gets_razorpays_error_body_and_never_a_5xx() {
    let running = sandbox().await;
    let account = running.sandbox.create_account(None).unwrap();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", running.base_url);
    let key_secret = Some(account.key_secret.expose().to_owned());
    let cases = [
        (http.post(url("/v1/orders")).body("{not json"), 400),
        (
            http.post(url("/v1/orders"))
                .json(&json!({"amount": 50, "currency": "INR"})),
            400,
        ),
        (http.post(url("/v1/orders")).json(&json!([1, 2])), 400),
        (
            http.post(url("/v1/payments/pay_Nope/capture"))
                .json(&json!({"amount": "x"})),
            400,
        ),
        (http.get(url("/v1/orders/%FF%FE")), 400),
        (http.get(url("/v1/nothing-here")), 404),
        (http.delete(url("/v1/orders")), 405),
    ];
    for (request, status) in cases {
        let response = request
            .basic_auth(&account.key_id, key_secret.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{}", response.url());
        let body: Value = response.json().await.unwrap();
        let error = &body["error"];
        for key in ["code", "description", "source", "step", "reason", "metadata", "field"] {
            assert!(error.get(key).is_some(), "{key} missing in {body}");
        }
    }
    let response = http.get(url("/v1/orders/order_X")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "BAD_REQUEST_ERROR");

    // Form bodies, as curl sends them.
    let response = http
        .post(url("/v1/orders"))
        .basic_auth(&account.key_id, key_secret.clone())
        .form(&[("amount", "12345"), ("currency", "INR"), ("notes[table]", "4")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let order: Value = response.json().await.unwrap();
    assert_eq!(
        (order["amount"].as_i64(), order["notes"]["table"].as_str()),
        (Some(12_345), Some("4"))
    );
    let order_id = order["id"].as_str().unwrap();

    let pay = |id: &str, body: Value| http.post(url(&format!("/sandbox/orders/{id}/pay"))).json(&body).send();
    assert_eq!(
        pay("order_Nope", json!({"outcome": "captured"}))
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        pay(order_id, json!({"outcome": "maybe"})).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    let response = http
        .post(url("/sandbox/accounts"))
        .json(&json!({"webhook_url": "javascript:alert(1)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // The checkout page: three buttons, and what it shows is escaped.
    let page = http
        .get(url(&format!("/sandbox/checkout/{order_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let html = page.text().await.unwrap();
    assert_eq!(html.matches("<form method=\"post\"").count(), 3);
    assert!(
        html.contains("INR 123.45") && !html.contains("<script") && !html.contains("http"),
        "{html}"
    );
    let missing = http.get(url("/sandbox/checkout/%3Cscript%3E")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let paid = http
        .post(url(&format!("/sandbox/orders/{order_id}/pay")))
        .form(&[("outcome", "captured")])
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), StatusCode::OK);
    let html = paid.text().await.unwrap();
    assert!(
        html.contains("razorpay_signature") && html.contains("Payment captured"),
        "{html}"
    );
    running.stop().await;
}

#[tokio::test]
async fn the_official_razorpay_python_sdk_works_against_the_sandbox() {
    let has_sdk = std::process::Command::new("python3")
        .args(["-c", "import razorpay"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_sdk {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: Razorpay's Python SDK must be installed (python3 -m pip install razorpay)"
        );
        eprintln!("skipped: Razorpay's Python SDK is not installed (python3 -m pip install razorpay)");
        return;
    }
    let running = sandbox().await;
    let mut receiver = Receiver::start(Some(0)).await;
    let account = running.sandbox.create_account(Some(receiver.url.clone())).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/razorpay_sdk.py");
    let run = |step: &'static str, extra: Vec<(&'static str, String)>| {
        let mut command = tokio::process::Command::new("python3");
        command
            .arg(script)
            .arg(step)
            .env("RAZORPAY_BASE_URL", &running.base_url)
            .env("RAZORPAY_KEY_ID", &account.key_id)
            .env("RAZORPAY_KEY_SECRET", account.key_secret.expose())
            .envs(extra);
        async move {
            let out = command.output().await.unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "razorpay_sdk.py {step} failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_str::<Value>(stdout.trim().lines().last().unwrap()).unwrap()
        }
    };
    let created = run("create", vec![]).await;
    let order_id = created["order_id"].as_str().unwrap().to_owned();
    let answer = running.pay(&order_id, "authorized").await;
    let hook = receiver.next().await;
    let settled = run(
        "settle",
        vec![
            ("ORDER_ID", order_id.clone()),
            ("PAYMENT_ID", answer["razorpay_payment_id"].as_str().unwrap().to_owned()),
            (
                "CHECKOUT_SIGNATURE",
                answer["razorpay_signature"].as_str().unwrap().to_owned(),
            ),
            ("WEBHOOK_BODY", String::from_utf8(hook.body.to_vec()).unwrap()),
            ("WEBHOOK_SIGNATURE", hook.signature.clone().unwrap()),
            ("WEBHOOK_SECRET", account.webhook_secret.expose().to_owned()),
        ],
    )
    .await;
    assert_eq!(settled["payment_status"], "refunded");
    eprintln!("razorpay SDK {} passed against the sandbox", settled["sdk_version"]);
    running.stop().await;
}
