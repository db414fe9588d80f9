//! The outbox relay and the inbox, on SQLite and PostgreSQL: events delivered over real gRPC,
//! through the client stack, to a subscriber that keeps each event id under its primary key.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sea_orm::{DatabaseConnection, TransactionTrait};
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::{
    auth::{Signer, ensure_key_pair},
    client::{ClientSettings, ServiceIdentity, Target},
    events::{self, Subscribers},
    jobs::{ManualClock, Queue, RetrySchedule, Worker, WorkerOptions, admin},
    testing,
};
use thali_proto::events::v1::{
    AccountCreated, DeliverRequest, DeliverResponse, Event,
    event::Payload,
    event_sink_server::{EventSink, EventSinkServer},
};
use tonic::{Request, Response, Status};

/// A subscriber: takes each event once (inbox row and effect in one transaction) and, while
/// `lose_answers` is above zero, loses its answer after committing (the caller sees UNAVAILABLE).
#[derive(Clone)]
struct Sink {
    db: DatabaseConnection,
    calls: Arc<AtomicUsize>,
    effects: Arc<Mutex<Vec<String>>>,
    lose_answers: Arc<AtomicUsize>,
    refuse_all: Arc<std::sync::atomic::AtomicBool>,
}

#[tonic::async_trait]
impl EventSink for Sink {
    async fn deliver(&self, request: Request<DeliverRequest>) -> Result<Response<DeliverResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.refuse_all.load(Ordering::SeqCst) {
            return Err(Status::unavailable("down"));
        }
        let event = request
            .into_inner()
            .event
            .ok_or_else(|| Status::invalid_argument("no event"))?;
        let id = uuid::Uuid::parse_str(&event.id).map_err(|_| Status::invalid_argument("bad id"))?;
        let txn = self.db.begin().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let new = events::accept(&txn, "sink", id, &event.r#type, chrono::Utc::now())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if new {
            self.effects.lock().unwrap().push(event.aggregate.clone());
        }
        txn.commit().await.map_err(|e| Status::unavailable(e.to_string()))?;
        if self
            .lose_answers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Status::unavailable("answer lost"));
        }
        Ok(Response::new(DeliverResponse { duplicate: !new }))
    }
}

async fn start_sink(db: DatabaseConnection) -> (Sink, String) {
    let sink = Sink {
        db,
        calls: Arc::default(),
        effects: Arc::default(),
        lose_answers: Arc::default(),
        refuse_all: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(EventSinkServer::new(sink.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    (sink, format!("http://{addr}"))
}

fn identity() -> ServiceIdentity {
    let dir = std::env::temp_dir().join(format!("thali-events-{}", uuid::Uuid::now_v7()));
    ensure_key_pair(&dir).unwrap();
    ServiceIdentity {
        name: "producer".into(),
        signer: Arc::new(Signer::load(&dir).unwrap()),
    }
}

fn account_created(n: u32, aggregate: &str) -> Event {
    events::new_event(
        "producer",
        aggregate.to_owned(),
        None,
        Payload::AccountCreated(AccountCreated {
            display_name: format!("#{n}"),
            ..Default::default()
        }),
        chrono::Utc::now(),
    )
}

async fn relay_worker(db: &DatabaseConnection, queue: &Queue, url: &str) -> Worker {
    // A quick breaker: the test waits out its ejections in real time.
    let mut settings = ClientSettings::default();
    settings.breaker.backoff_min = Duration::from_millis(50);
    settings.breaker.backoff_max = Duration::from_millis(100);
    settings.deadline = Duration::from_secs(1);
    let target = Target::new("sink", url, &identity(), settings).await.unwrap();
    let subscribers = Subscribers::default().subscribe("sink", target, &["account.created"]);
    let schedule = RetrySchedule::fixed(&[Duration::from_secs(10); 9]);
    events::relay_with_schedule(
        Worker::new(db.clone(), queue.clone()).with_options(WorkerOptions {
            concurrency: 4,
            ..WorkerOptions::default()
        }),
        subscribers,
        schedule,
    )
}

#[tokio::test]
async fn an_event_delivered_three_times_has_one_effect() {
    for t in testing::all().await {
        Migrator::up(&t.db, None).await.unwrap();
        let (sink, url) = start_sink(t.db.clone()).await;
        let clock = ManualClock::new(chrono::Utc::now());
        let queue = Queue::with_clock("producer", Arc::new(clock.clone()));
        let txn = t.db.begin().await.unwrap();
        events::publish(&txn, &queue, &account_created(1, "account:a"))
            .await
            .unwrap();
        txn.commit().await.unwrap();
        let worker = relay_worker(&t.db, &queue, &url).await;

        // The first two answers are lost after the sink committed: the caller retries.
        sink.lose_answers.store(2, Ordering::SeqCst);
        let mut runs = 0;
        while sink.calls.load(Ordering::SeqCst) < 3 && runs < 10 {
            runs += worker.run_once().await.unwrap();
            clock.advance(Duration::from_secs(13));
        }
        assert_eq!(
            sink.calls.load(Ordering::SeqCst),
            3,
            "{}: delivered three times",
            t.backend
        );
        assert_eq!(sink.effects.lock().unwrap().len(), 1, "{}: one effect", t.backend);
        let done = admin::list(&t.db, &admin::Filter::default(), 10).await.unwrap();
        assert_eq!(done[0].state, "done", "{}", t.backend);
    }
}

#[tokio::test]
async fn a_failing_event_holds_back_its_aggregate_until_it_is_dead_then_the_rest_go_on() {
    for t in testing::all().await {
        Migrator::up(&t.db, None).await.unwrap();
        let (sink, url) = start_sink(t.db.clone()).await;
        let clock = ManualClock::new(chrono::Utc::now());
        let queue = Queue::with_clock("producer", Arc::new(clock.clone()));
        for n in 1..=3 {
            events::publish(&t.db, &queue, &account_created(n, "creator:a"))
                .await
                .unwrap();
        }
        let worker = relay_worker(&t.db, &queue, &url).await;
        sink.refuse_all.store(true, Ordering::SeqCst);
        let first = admin::list(&t.db, &admin::Filter::default(), 10)
            .await
            .unwrap()
            .last()
            .unwrap()
            .id;
        for _ in 0..20 {
            worker.run_once().await.unwrap();
            clock.advance(Duration::from_secs(13));
            let jobs = admin::list(&t.db, &admin::Filter::default(), 10).await.unwrap();
            if jobs.iter().any(|j| j.id == first && j.state == "dead") {
                break;
            }
        }
        assert!(sink.effects.lock().unwrap().is_empty());
        let jobs = admin::list(&t.db, &admin::Filter::default(), 10).await.unwrap();
        let states: Vec<(&str, i32)> = jobs.iter().rev().map(|j| (j.state.as_str(), j.attempts)).collect();
        assert_eq!(
            states,
            vec![("dead", 10), ("queued", 0), ("queued", 0)],
            "{}: 2 and 3 waited, never tried",
            t.backend
        );

        // The subscriber is back (the client's breaker may need a moment to let a call through).
        sink.refuse_all.store(false, Ordering::SeqCst);
        for _ in 0..50 {
            worker.run_once().await.unwrap();
            if sink.effects.lock().unwrap().len() == 2 {
                break;
            }
            clock.advance(Duration::from_secs(13));
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert_eq!(sink.effects.lock().unwrap().len(), 2, "{}: the rest went on", t.backend);
    }
}
