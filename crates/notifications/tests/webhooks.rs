//! Partner webhooks (Standard Webhooks) on every configured backend: deliveries to a real HTTP
//! receiver, signatures checked with an independent HMAC (RustCrypto, not the sender's ring code),
//! retries on 500 and timeouts, Retry-After, 410 Gone, exhausted retries, resend, rotation, SSRF
//! refusal at connect time, and the owner-only rule.
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thali_migrations::{Migrator, MigratorTrait};
use thali_notifications::{
    Notifications,
    domain::NotificationError,
    mail::Mailer,
    store::NotificationStore,
    webhooks::{EndpointUrl, Failure, Sender},
    workers::{self, SERVICE},
};
use thali_platform::{
    events,
    jobs::{Clock, ManualClock, Queue, RetrySchedule, Worker},
    testing::{self, TestDatabase},
};
use thali_proto::events::v1::{Event, ProductOutOfStock, event::Payload};
use uuid::Uuid;

#[derive(Clone, Copy)]
enum Reply {
    Status(u16),
    RetryAfter(u16, u64),
    /// Answers only after the sender has given up.
    Stall,
}

#[derive(Clone)]
struct Hit {
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A partner's endpoint: records every request and answers from its script (then 200).
#[derive(Clone)]
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

impl Receiver {
    async fn start(script: &[Reply]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Self {
            url: format!("http://{}/hooks/thali", listener.local_addr().unwrap()),
            hits: Arc::default(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
        };
        let app = Router::new()
            .route("/hooks/thali", post(hook))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    r.hits.lock().unwrap().push(Hit {
        headers,
        body: body.to_vec(),
    });
    let reply = r.script.lock().unwrap().pop_front();
    match reply {
        None => StatusCode::OK.into_response(),
        Some(Reply::Status(s)) => StatusCode::from_u16(s).unwrap().into_response(),
        Some(Reply::RetryAfter(s, after)) => {
            (StatusCode::from_u16(s).unwrap(), [("retry-after", after.to_string())]).into_response()
        }
        Some(Reply::Stall) => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            StatusCode::OK.into_response()
        }
    }
}

/// Standard Webhooks verification, written from the spec with RustCrypto's HMAC: the signed
/// content is `{webhook-id}.{webhook-timestamp}.{body}`, the key the base64 after `whsec_`, and
/// the header a space-separated list of `v1,<base64 signature>`.
fn verify(secret: &str, hit: &Hit) -> bool {
    let header = |name: &str| hit.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(&hit.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    header("webhook-signature").split(' ').any(|s| s == expected)
}

struct Setup {
    n: Notifications,
    clock: Arc<ManualClock>,
    worker: Worker,
}

impl Setup {
    fn store(&self) -> &NotificationStore {
        self.n.store()
    }
}

/// The service on `t` with a manual clock and a webhook schedule of `delays` (no jitter).
async fn setup(t: &TestDatabase, delays: &[u64]) -> Setup {
    let clock = Arc::new(ManualClock::new(testing::ten_past_the_hour()));
    let queue = Queue::with_clock(SERVICE, clock.clone());
    let mail = std::env::temp_dir().join(format!("thali-mail-{}", Uuid::now_v7()));
    let n = Notifications::with_queue(
        t.db.clone(),
        queue.clone(),
        Mailer::files(mail, "Thali <no-reply@thali.test>").unwrap(),
        Sender::new(Duration::from_secs(2), true),
        "https://app.thali.test",
    )
    .unwrap();
    let delays: Vec<Duration> = delays.iter().map(|s| Duration::from_secs(*s)).collect();
    let worker = workers::job_worker_with(
        n.store().clone(),
        queue,
        n.outbound().clone(),
        workers::email_schedule(),
        RetrySchedule::fixed(&delays).with_jitter(0.0),
    );
    // Its hourly housekeeping runs now, so later runs count only deliveries.
    worker.run_once().await.unwrap();
    Setup { n, clock, worker }
}

async fn backends() -> Vec<TestDatabase> {
    let dbs = testing::all().await;
    for t in &dbs {
        Migrator::up(&t.db, None)
            .await
            .unwrap_or_else(|e| panic!("migrating {}: {e}", t.backend));
    }
    dbs
}

fn out_of_stock(owner: Uuid, product: &str) -> Event {
    events::new_event(
        "storefront",
        format!("creator:{owner}"),
        Some(owner),
        Payload::ProductOutOfStock(ProductOutOfStock {
            creator_id: Uuid::now_v7().to_string(),
            username: "chai_point".into(),
            product_id: Uuid::now_v7().to_string(),
            product_name: product.to_owned(),
        }),
        chrono::Utc::now(),
    )
}

fn types() -> Vec<String> {
    vec!["product.out_of_stock".to_owned()]
}

#[tokio::test]
async fn a_delivery_is_signed_so_an_independent_verifier_accepts_it() {
    for t in backends().await {
        let s = setup(&t, &[5]).await;
        let receiver = Receiver::start(&[]).await;
        let owner = Uuid::now_v7();
        let (endpoint, secret) = s.store().create_endpoint(owner, &receiver.url, &types()).await.unwrap();
        assert!(secret.starts_with("whsec_"));
        let event = out_of_stock(owner, "Masala chai");
        s.n.sink().take(event.clone()).await.unwrap();
        // Delivered again by the relay: still one delivery.
        s.n.sink().take(event.clone()).await.unwrap();
        assert_eq!(s.worker.run_once().await.unwrap(), 1, "{}", t.backend);

        let hits = receiver.hits();
        assert_eq!(hits.len(), 1);
        let hit = &hits[0];
        assert!(verify(&secret, hit), "{}: the signature verifies", t.backend);
        assert_eq!(hit.headers["webhook-id"], event.id.as_str());
        assert_eq!(hit.headers["content-type"], "application/json");
        let sent_at: i64 = hit.headers["webhook-timestamp"].to_str().unwrap().parse().unwrap();
        assert!((sent_at - s.clock.now().timestamp()).abs() <= 1);
        let body: serde_json::Value = serde_json::from_slice(&hit.body).unwrap();
        assert_eq!(body["type"], "product.out_of_stock");
        assert_eq!(body["data"]["product_name"], "Masala chai");
        // The verifier is not a rubber stamp: a changed body or another secret fails.
        let mut tampered = hit.clone();
        tampered.body = br#"{"type":"product.out_of_stock","data":{"product_name":"Free"}}"#.to_vec();
        assert!(!verify(&secret, &tampered));
        assert!(!verify(&thali_notifications::webhooks::new_secret(), hit));

        let (deliveries, _) = s.store().deliveries(owner, endpoint.id, 0, "").await.unwrap();
        assert_eq!(deliveries.len(), 1);
        assert_eq!(deliveries[0].state, "succeeded");
        assert_eq!(deliveries[0].attempts.len(), 1);
        assert_eq!(deliveries[0].attempts[0].status_code, Some(200));
    }
}

#[tokio::test]
async fn a_500_and_a_timeout_are_retried_on_schedule_and_retry_after_is_honoured() {
    for t in backends().await {
        let s = setup(&t, &[10, 10, 10, 10]).await;
        let receiver = Receiver::start(&[Reply::Status(500), Reply::Stall, Reply::RetryAfter(429, 120)]).await;
        let owner = Uuid::now_v7();
        let (endpoint, secret) = s.store().create_endpoint(owner, &receiver.url, &types()).await.unwrap();
        s.n.sink().take(out_of_stock(owner, "Samosa")).await.unwrap();

        assert_eq!(s.worker.run_once().await.unwrap(), 1); // 500
        assert_eq!(s.worker.run_once().await.unwrap(), 0, "not due before its 10 s");
        s.clock.advance(Duration::from_secs(11));
        assert_eq!(s.worker.run_once().await.unwrap(), 1); // stalls past the 2 s timeout
        s.clock.advance(Duration::from_secs(11));
        assert_eq!(s.worker.run_once().await.unwrap(), 1); // 429, Retry-After: 120
        s.clock.advance(Duration::from_secs(11));
        assert_eq!(
            s.worker.run_once().await.unwrap(),
            0,
            "{}: Retry-After wins over the schedule",
            t.backend
        );
        s.clock.advance(Duration::from_secs(110));
        assert_eq!(s.worker.run_once().await.unwrap(), 1); // 200

        let (deliveries, _) = s.store().deliveries(owner, endpoint.id, 0, "").await.unwrap();
        let d = &deliveries[0];
        assert_eq!(d.state, "succeeded", "{}", t.backend);
        let statuses: Vec<Option<i32>> = d.attempts.iter().map(|a| a.status_code).collect();
        assert_eq!(statuses, [Some(500), None, Some(429), Some(200)]);
        assert!(d.attempts[1].error.as_deref().unwrap().contains("no answer"));
        // Every attempt carried the same id, each correctly signed.
        let hits = receiver.hits();
        assert_eq!(hits.len(), 4);
        assert!(hits.iter().all(|h| verify(&secret, h)));
        assert!(
            hits.iter()
                .all(|h| h.headers["webhook-id"] == hits[0].headers["webhook-id"])
        );
    }
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_tells_its_owner() {
    for t in backends().await {
        let s = setup(&t, &[5]).await;
        let receiver = Receiver::start(&[Reply::Status(410)]).await;
        let owner = Uuid::now_v7();
        let (endpoint, _) = s.store().create_endpoint(owner, &receiver.url, &types()).await.unwrap();
        s.n.sink().take(out_of_stock(owner, "Samosa")).await.unwrap();
        assert_eq!(s.worker.run_once().await.unwrap(), 1);

        let listed = s.store().endpoints(owner).await.unwrap();
        assert_eq!(listed[0].state, "disabled", "{}", t.backend);
        let (deliveries, _) = s.store().deliveries(owner, endpoint.id, 0, "").await.unwrap();
        assert_eq!(deliveries[0].state, "failed");
        let page = s.store().list(owner, 0, "", false).await.unwrap();
        assert!(
            page.notifications
                .iter()
                .any(|n| n.event_type == "webhook.endpoint_disabled" && n.title.contains(&receiver.url)),
            "{}: the owner is told",
            t.backend
        );
        // Nothing more is sent to it, and its deliveries cannot be resent.
        s.n.sink().take(out_of_stock(owner, "Chai")).await.unwrap();
        assert_eq!(s.worker.run_once().await.unwrap(), 0);
        assert_eq!(receiver.hits().len(), 1);
        let err = s
            .store()
            .resend(owner, endpoint.id, deliveries[0].id)
            .await
            .unwrap_err();
        assert!(matches!(err, NotificationError::EndpointDisabled));
    }
}

#[tokio::test]
async fn exhausted_retries_fail_the_delivery_tell_the_owner_and_a_resend_goes_again() {
    for t in backends().await {
        let s = setup(&t, &[1]).await;
        let receiver = Receiver::start(&[Reply::Status(500), Reply::Status(502)]).await;
        let owner = Uuid::now_v7();
        let (endpoint, _) = s.store().create_endpoint(owner, &receiver.url, &types()).await.unwrap();
        s.n.sink().take(out_of_stock(owner, "Samosa")).await.unwrap();
        assert_eq!(s.worker.run_once().await.unwrap(), 1);
        s.clock.advance(Duration::from_secs(2));
        assert_eq!(s.worker.run_once().await.unwrap(), 1);

        let (deliveries, _) = s.store().deliveries(owner, endpoint.id, 0, "").await.unwrap();
        let failed = &deliveries[0];
        assert_eq!(failed.state, "failed", "{}", t.backend);
        assert_eq!(failed.attempts.len(), 2);
        let page = s.store().list(owner, 0, "", false).await.unwrap();
        let notice = page
            .notifications
            .iter()
            .find(|n| n.event_type == "webhook.delivery_failed")
            .expect("the owner is told");
        assert!(notice.body.contains("HTTP 502"), "{}", notice.body);
        // No job is left dead: a partner's endpoint does not page the operator.
        let dead = thali_platform::jobs::admin::list(
            &t.db,
            &thali_platform::jobs::admin::Filter {
                service: Some(SERVICE.into()),
                kind: None,
                state: Some(thali_platform::jobs::JobState::Dead),
            },
            10,
        )
        .await
        .unwrap();
        assert!(dead.is_empty(), "{}", t.backend);

        // Resent: a fresh schedule, and this time it lands.
        let resent = s.store().resend(owner, endpoint.id, failed.id).await.unwrap();
        assert_eq!(resent.state, "pending");
        let again = s.store().resend(owner, endpoint.id, failed.id).await.unwrap_err();
        assert!(matches!(again, NotificationError::DeliveryInFlight));
        assert_eq!(s.worker.run_once().await.unwrap(), 1);
        let (deliveries, _) = s.store().deliveries(owner, endpoint.id, 0, "").await.unwrap();
        assert_eq!(deliveries[0].state, "succeeded");
        assert_eq!(deliveries[0].attempts.len(), 3);
    }
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one_for_a_day() {
    for t in backends().await {
        let s = setup(&t, &[5]).await;
        let receiver = Receiver::start(&[]).await;
        let owner = Uuid::now_v7();
        let (endpoint, old) = s.store().create_endpoint(owner, &receiver.url, &types()).await.unwrap();
        let (rotated, new) = s.store().rotate_secret(owner, endpoint.id).await.unwrap();
        assert_ne!(old, new);
        assert!(rotated.previous_secret_until.is_some());

        s.n.sink().take(out_of_stock(owner, "Samosa")).await.unwrap();
        s.worker.run_once().await.unwrap();
        let hit = receiver.hits().pop().unwrap();
        assert!(
            verify(&new, &hit) && verify(&old, &hit),
            "{}: both secrets sign",
            t.backend
        );
        assert_eq!(hit.headers["webhook-signature"].to_str().unwrap().split(' ').count(), 2);

        s.clock.advance(Duration::from_secs(25 * 3600));
        s.n.sink().take(out_of_stock(owner, "Chai")).await.unwrap();
        s.worker.run_once().await.unwrap();
        let hit = receiver.hits().pop().unwrap();
        assert!(verify(&new, &hit), "{}", t.backend);
        assert!(!verify(&old, &hit), "{}: the old secret stopped signing", t.backend);
    }
}

#[tokio::test]
async fn an_endpoint_gets_only_its_owners_events_and_no_one_else_can_touch_it() {
    for t in backends().await {
        let s = setup(&t, &[5]).await;
        let (asha_hook, ravi_hook) = (Receiver::start(&[]).await, Receiver::start(&[]).await);
        let (asha, ravi) = (Uuid::now_v7(), Uuid::now_v7());
        let (ashas, _) = s.store().create_endpoint(asha, &asha_hook.url, &types()).await.unwrap();
        s.store().create_endpoint(ravi, &ravi_hook.url, &types()).await.unwrap();
        s.n.sink().take(out_of_stock(asha, "Samosa")).await.unwrap();
        s.worker.run_once().await.unwrap();
        assert_eq!(asha_hook.hits().len(), 1);
        assert!(
            ravi_hook.hits().is_empty(),
            "{}: never another account's event",
            t.backend
        );

        let store = s.store();
        assert!(store.endpoints(ravi).await.unwrap().iter().all(|e| e.id != ashas.id));
        let (deliveries, _) = store.deliveries(asha, ashas.id, 0, "").await.unwrap();
        let not_found = |e: NotificationError| matches!(e, NotificationError::EndpointNotFound);
        assert!(not_found(store.deliveries(ravi, ashas.id, 0, "").await.unwrap_err()));
        assert!(not_found(store.rotate_secret(ravi, ashas.id).await.unwrap_err()));
        assert!(not_found(
            store.resend(ravi, ashas.id, deliveries[0].id).await.unwrap_err()
        ));
        assert!(not_found(store.delete_endpoint(ravi, ashas.id).await.unwrap_err()));
        // Asha's endpoint is untouched; she can delete it, with its deliveries.
        assert_eq!(store.endpoints(asha).await.unwrap().len(), 1);
        store.delete_endpoint(asha, ashas.id).await.unwrap();
        assert!(not_found(store.deliveries(asha, ashas.id, 0, "").await.unwrap_err()));
    }
}

#[tokio::test]
async fn private_and_loopback_addresses_are_refused_when_connecting() {
    // A receiver that would answer: nothing must reach it.
    let receiver = Receiver::start(&[]).await;
    let port: u16 = receiver
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let sender = Sender::new(Duration::from_secs(2), false);
    for host in ["localhost", "127.0.0.1", "::1"] {
        // Built by hand past the URL rules: the connect step alone must refuse what the name
        // resolves to.
        let url = EndpointUrl {
            https: false,
            host: host.to_owned(),
            port,
            path: "/hooks/thali".into(),
        };
        let err = sender.post(&url, &[], bytes_of("{}")).await.unwrap_err();
        assert!(matches!(err, Failure::Refused(_)), "{host}: {err:?}");
    }
    assert!(receiver.hits().is_empty());

    // And the service refuses such endpoints when they are registered.
    for url in [
        "https://10.0.0.7/hook",
        "https://[fd00::1]/hook",
        "http://hooks.example.com/",
        "https://localhost/x",
    ] {
        assert!(
            thali_notifications::domain::check_endpoint(url, &types(), false).is_err(),
            "{url}"
        );
    }
}

fn bytes_of(s: &str) -> bytes::Bytes {
    bytes::Bytes::from(s.to_owned())
}
