//! The worker: claims its service's due jobs, runs each kind's handler under a renewed lease and a
//! timeout, and records the outcome (done, retry on the schedule, dead).
use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::{DatabaseConnection, DbBackend, DbErr};
use tokio::{
    sync::{Notify, Semaphore, watch},
    task::{JoinHandle, JoinSet},
};

use super::{Job, JobError, NewJob, Queue, RetrySchedule, sql};

/// What runs a kind of job. Handlers are idempotent: a job runs at least once.
pub type Handler = Arc<dyn Fn(Job) -> Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>> + Send + Sync>;

/// The kind of the housekeeping job that deletes old done jobs.
pub const PURGE_DONE_KIND: &str = "jobs.purge_done";

/// Days a done job is kept.
pub const DONE_RETENTION_DAYS: i64 = 7;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Jobs run at once by this worker.
    pub concurrency: usize,
    /// How long a claim holds a job; renewed every third of it while the handler runs. A job
    /// whose worker died runs again once this has passed.
    pub lease: Duration,
    /// How often the queue is polled when nothing wakes the worker (PostgreSQL wakes it on
    /// `NOTIFY`; SQLite relies on this).
    pub poll_interval: Duration,
    /// How often the queue gauges are refreshed.
    pub stats_interval: Duration,
    /// At shutdown, how long running jobs may take to finish before they are left to their
    /// lease.
    pub drain: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            stats_interval: Duration::from_secs(10),
            drain: Duration::from_secs(10),
        }
    }
}

struct Kind {
    schedule: RetrySchedule,
    handler: Handler,
}

struct Periodic {
    kind: String,
    period: Duration,
}

struct Inner {
    db: DatabaseConnection,
    queue: Queue,
    id: String,
    kinds: HashMap<String, Kind>,
    kind_names: Vec<String>,
    periodic: Vec<Periodic>,
    options: WorkerOptions,
}

/// A service's job worker. Build it with [`Worker::handle`] and [`Worker::every`], then
/// [`Worker::spawn`] it (or drive it with [`Worker::run_once`] in tests).
pub struct Worker {
    inner: Inner,
}

/// How one run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    Retry,
    Dead,
    /// The lease was lost (another worker holds the job now) or the result could not be saved.
    Abandoned,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Done => "ok",
            Outcome::Retry => "retry",
            Outcome::Dead => "dead",
            Outcome::Abandoned => "abandoned",
        }
    }
}

impl Worker {
    pub fn new(db: DatabaseConnection, queue: Queue) -> Self {
        let id = format!("{}-{}", queue.service(), uuid::Uuid::now_v7().simple());
        Self {
            inner: Inner {
                db,
                queue,
                id,
                kinds: HashMap::new(),
                kind_names: Vec::new(),
                periodic: Vec::new(),
                options: WorkerOptions::default(),
            },
        }
    }

    pub fn with_options(mut self, options: WorkerOptions) -> Self {
        assert!(options.concurrency >= 1, "a worker runs at least one job at a time");
        assert!(options.lease >= Duration::from_millis(30), "a lease of at least 30 ms");
        self.inner.options = options;
        self
    }

    /// Runs jobs of `kind` with `handler`, retrying failures on `schedule`.
    pub fn handle<F, Fut>(mut self, kind: &str, schedule: RetrySchedule, handler: F) -> Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |job| Box::pin(handler(job)));
        if self
            .inner
            .kinds
            .insert(kind.to_owned(), Kind { schedule, handler })
            .is_none()
        {
            self.inner.kind_names.push(kind.to_owned());
        }
        self
    }

    /// Enqueues a job of `kind` (already handled) once per `period`, aligned to the epoch, however
    /// many workers of the service run: each occurrence has a unique key.
    pub fn every(mut self, kind: &str, period: Duration) -> Self {
        assert!(
            self.inner.kinds.contains_key(kind),
            "`every` needs a handler for {kind}"
        );
        assert!(period >= Duration::from_secs(1), "a period of at least a second");
        self.inner.periodic.push(Periodic {
            kind: kind.to_owned(),
            period,
        });
        self
    }

    /// Adds the queue's own housekeeping: every hour, the service's jobs that finished `done`
    /// more than 7 days ago are deleted. (Dead jobs stay until an operator purges them.)
    pub fn with_housekeeping(self) -> Self {
        let db = self.inner.db.clone();
        let service = self.inner.queue.service().to_owned();
        self.prune_every(PURGE_DONE_KIND, Duration::from_secs(3600), move |now| {
            let filter = super::admin::Filter {
                service: Some(service.clone()),
                ..super::admin::Filter::default()
            };
            let db = db.clone();
            async move {
                let before = now - TimeDelta::days(DONE_RETENTION_DAYS);
                super::admin::purge(&db, super::JobState::Done, &filter, before).await
            }
        })
    }

    /// Housekeeping: once per `period`, `delete(now)` removes what has expired and returns how
    /// many rows; the count is logged. A database error retries on the default schedule.
    pub fn prune_every<F, Fut>(self, kind: &'static str, period: Duration, delete: F) -> Self
    where
        F: Fn(DateTime<Utc>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<u64, DbErr>> + Send + 'static,
    {
        let queue = self.inner.queue.clone();
        self.handle(kind, RetrySchedule::default(), move |_| {
            let deleting = delete(queue.now());
            async move {
                let deleted = deleting.await.map_err(JobError::retry)?;
                tracing::info!(kind, deleted, "housekeeping");
                Ok(())
            }
        })
        .every(kind, period)
    }

    /// This worker's name in `locked_by`.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Enqueues the current occurrence of every periodic job (a no-op where it exists).
    pub async fn schedule_periodic(&self) -> Result<(), DbErr> {
        self.inner.schedule_periodic().await
    }

    /// Claims what is due (up to the concurrency), runs it to the end and records the outcomes.
    /// Returns how many jobs ran.
    pub async fn run_once(&self) -> Result<usize, DbErr> {
        let inner = &self.inner;
        inner.schedule_periodic().await?;
        let jobs = inner.claim(inner.options.concurrency).await?;
        let n = jobs.len();
        futures::future::join_all(jobs.into_iter().map(|job| inner.execute(job, None))).await;
        Ok(n)
    }

    /// Refreshes the queue gauges (`jobs_queued`, `jobs_oldest_due_age_seconds`).
    pub async fn refresh_gauges(&self) -> Result<(), DbErr> {
        self.inner.refresh_gauges().await
    }

    /// Runs until `shutdown` turns true: claims as slots free up, wakes on `NOTIFY` (PostgreSQL)
    /// or the poll interval, schedules periodic jobs, refreshes the gauges. At shutdown running
    /// jobs get `drain` to finish; any still running then are left to their lease.
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let inner = Arc::new(self.inner);
        tokio::spawn(async move {
            let wake = Arc::new(Notify::new());
            let listener = (inner.db.get_database_backend() == DbBackend::Postgres)
                .then(|| tokio::spawn(listen(inner.db.clone(), inner.queue.service().to_owned(), wake.clone())));
            let slots = Arc::new(Semaphore::new(inner.options.concurrency));
            let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
            let completer = tokio::spawn(complete_in_batches(inner.clone(), done_rx));
            let mut running = JoinSet::new();
            let mut next_periodic = Instant::now();
            let mut next_stats = Instant::now();
            let period_check = inner
                .periodic
                .iter()
                .map(|p| p.period)
                .min()
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(60));
            // The counters exist from the start, so the first retry or death is an increase.
            for kind in &inner.kind_names {
                let labels = [("service", inner.queue.service().to_owned()), ("kind", kind.clone())];
                metrics::counter!("jobs_dead_total", &labels).increment(0);
                metrics::counter!("jobs_retried_total", &labels).increment(0);
            }
            tracing::info!(worker = %inner.id, kinds = ?inner.kind_names, "job worker started");
            loop {
                if *shutdown.borrow() {
                    break;
                }
                let now = Instant::now();
                if now >= next_periodic {
                    next_periodic = now + period_check;
                    if let Err(e) = inner.schedule_periodic().await {
                        tracing::warn!(error = %e, "periodic jobs not scheduled");
                    }
                }
                if now >= next_stats {
                    next_stats = now + inner.options.stats_interval;
                    if let Err(e) = inner.refresh_gauges().await {
                        tracing::warn!(error = %e, "job gauges not refreshed");
                    }
                }
                let free = slots.available_permits();
                let mut claimed = 0;
                if free > 0 {
                    match inner.claim(free).await {
                        Ok(jobs) => {
                            claimed = jobs.len();
                            for job in jobs {
                                let permit = slots.clone().try_acquire_owned().expect("a free slot per claimed job");
                                let inner = inner.clone();
                                let done = done_tx.clone();
                                running.spawn(async move {
                                    inner.execute(job, Some(&done)).await;
                                    drop(permit);
                                });
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "claiming jobs failed; polling again"),
                    }
                }
                if claimed > 0 && claimed == free {
                    // Every slot filled: there may be more due. Claim again once a slot frees,
                    // gathering the runs that end within the next 2 ms, so a busy worker claims
                    // in batches rather than one job per statement.
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        Some(_) = running.join_next() => {
                            let gather = tokio::time::sleep(Duration::from_millis(2));
                            tokio::pin!(gather);
                            loop {
                                tokio::select! {
                                    _ = &mut gather => break,
                                    next = running.join_next() => if next.is_none() { break },
                                }
                            }
                        }
                    }
                    continue;
                }
                tokio::select! {
                    _ = shutdown.changed() => {}
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(inner.options.poll_interval) => {}
                    Some(_) = running.join_next(), if !running.is_empty() => {}
                }
            }
            if let Some(listener) = listener {
                listener.abort();
            }
            let drained = tokio::time::timeout(inner.options.drain, async {
                while running.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    worker = %inner.id,
                    still_running = running.len(),
                    "jobs still running at the end of the drain; they run again when their lease ends"
                );
                running.abort_all();
            }
            drop(running);
            drop(done_tx);
            let _ = completer.await;
            tracing::info!(worker = %inner.id, "job worker stopped");
        })
    }
}

/// A finished run waiting to be recorded as done.
type Finished = (i64, u32);

/// Records finished runs as done, many per statement under load: it takes one, then whatever else
/// has finished meanwhile (up to 500), so an idle worker records at once and a busy one does not
/// pay a commit per job. A failure to record leaves the jobs to their lease (they run again).
async fn complete_in_batches(inner: Arc<Inner>, mut finished: tokio::sync::mpsc::UnboundedReceiver<Finished>) {
    let mut batch = Vec::with_capacity(500);
    while let Some(first) = finished.recv().await {
        batch.push(first);
        while batch.len() < 500 {
            match finished.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        match sql::complete(&inner.db, &inner.id, &batch, inner.queue.now()).await {
            Ok(n) if n as usize == batch.len() => {}
            Ok(n) => tracing::warn!(
                recorded = n,
                finished = batch.len(),
                "some jobs finished after their lease was taken; the other runs' results stand"
            ),
            Err(e) => {
                tracing::warn!(error = %e, jobs = batch.len(), "finished jobs not recorded; they run again after their lease")
            }
        }
        batch.clear();
    }
}

/// Wakes the worker whenever its service's jobs are enqueued (PostgreSQL `LISTEN`). A lost
/// connection is re-established; the worker's polling covers the gap.
async fn listen(db: DatabaseConnection, service: String, wake: Arc<Notify>) {
    use sea_orm::sqlx::postgres::PgListener;
    loop {
        let mut listener = match PgListener::connect_with(db.get_postgres_connection_pool()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "job listener cannot connect; polling");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(super::NOTIFY_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; polling");
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        // Anything enqueued while not listening is found now.
        wake.notify_one();
        loop {
            match listener.recv().await {
                Ok(n) if n.payload() == service => wake.notify_one(),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "job listener lost its connection; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn lease_until(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    now + TimeDelta::from_std(lease).unwrap_or(TimeDelta::MAX)
}

impl Inner {
    async fn claim(&self, limit: usize) -> Result<Vec<Job>, DbErr> {
        let now = self.queue.now();
        sql::claim(
            &self.db,
            self.queue.service(),
            &self.id,
            &self.kind_names,
            limit,
            now,
            lease_until(now, self.options.lease),
        )
        .await
    }

    async fn schedule_periodic(&self) -> Result<(), DbErr> {
        let now = self.queue.now();
        for p in &self.periodic {
            let period_ms = i64::try_from(p.period.as_millis()).unwrap_or(i64::MAX);
            let slot_ms = now.timestamp_millis().div_euclid(period_ms) * period_ms;
            let slot = DateTime::<Utc>::from_timestamp_millis(slot_ms).unwrap_or(now);
            let job = NewJob::new(&p.kind, &serde_json::json!({ "occurrence": slot }))
                .run_at(slot)
                .unique(format!("periodic:{}:{slot_ms}", p.kind));
            self.queue.enqueue(&self.db, job).await?;
        }
        Ok(())
    }

    async fn refresh_gauges(&self) -> Result<(), DbErr> {
        let now = self.queue.now();
        let stats = sql::stats(&self.db, self.queue.service(), now).await?;
        let service = self.queue.service().to_owned();
        for kind in &self.kind_names {
            let (queued, oldest) = stats
                .iter()
                .find(|(k, _, _)| k == kind)
                .map(|(_, n, oldest)| (*n, *oldest))
                .unwrap_or((0, None));
            let age = oldest.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
            metrics::gauge!("jobs_queued", "service" => service.clone(), "kind" => kind.clone()).set(queued as f64);
            metrics::gauge!("jobs_oldest_due_age_seconds", "service" => service.clone(), "kind" => kind.clone())
                .set(age);
        }
        Ok(())
    }

    /// Runs one claimed job and records how it ended: a success directly, or through `batch`
    /// (the running worker's batched completions) when given.
    async fn execute(&self, job: Job, batch: Option<&tokio::sync::mpsc::UnboundedSender<Finished>>) -> Outcome {
        let Some(kind) = self.kinds.get(&job.kind) else {
            // Claimed only kinds with a handler; nothing to do but let the lease lapse.
            return Outcome::Abandoned;
        };
        let service = self.queue.service().to_owned();
        let labels = [("service", service.clone()), ("kind", job.kind.clone())];
        let max = kind.schedule.max_attempts();
        if job.attempt > max {
            // Its last attempt's worker died or stalled past the lease.
            let error = "the lease ended during the last attempt (the worker died or stalled)";
            return self.finish_dead(&job, error, &labels).await;
        }
        let running = metrics::gauge!("jobs_running", &labels);
        running.increment(1.0);
        let started = Instant::now();
        let result = self.run_with_lease(kind, &job).await;
        running.decrement(1.0);
        let outcome = match result {
            Ok(()) if batch.is_some_and(|b| b.send((job.id, job.attempt)).is_ok()) => Outcome::Done,
            Ok(()) => {
                let now = self.queue.now();
                match sql::complete(&self.db, &self.id, &[(job.id, job.attempt)], now).await {
                    Ok(1) => Outcome::Done,
                    Ok(_) => {
                        tracing::warn!(job_id = job.id, kind = %job.kind, "job finished after its lease was taken; the other run's result stands");
                        Outcome::Abandoned
                    }
                    Err(e) => {
                        tracing::warn!(job_id = job.id, kind = %job.kind, error = %e, "job done but not recorded; it runs again after its lease");
                        Outcome::Abandoned
                    }
                }
            }
            Err(JobError::Fatal(error)) => self.finish_dead(&job, &error, &labels).await,
            Err(err @ JobError::Retry { .. }) if job.attempt >= max => {
                self.finish_dead(&job, err.message(), &labels).await
            }
            Err(JobError::Retry { error, after }) => {
                let delay = after
                    .or_else(|| kind.schedule.delay_after(job.attempt))
                    .unwrap_or(Duration::from_secs(1));
                let run_at = lease_until(self.queue.now(), delay);
                match sql::retry_later(&self.db, &self.id, &job, run_at, &error).await {
                    Ok(1) => {
                        metrics::counter!("jobs_retried_total", &labels).increment(1);
                        tracing::warn!(job_id = job.id, kind = %job.kind, attempt = job.attempt, max_attempts = max, retry_in_ms = delay.as_millis() as u64, error = %error, "job failed; retrying");
                        Outcome::Retry
                    }
                    Ok(_) => Outcome::Abandoned,
                    Err(e) => {
                        tracing::warn!(job_id = job.id, error = %e, "job retry not recorded; it runs again after its lease");
                        Outcome::Abandoned
                    }
                }
            }
        };
        metrics::histogram!(
            "job_duration_seconds",
            "service" => service,
            "kind" => job.kind.clone(),
            "outcome" => outcome.label()
        )
        .record(started.elapsed().as_secs_f64());
        outcome
    }

    async fn finish_dead(&self, job: &Job, error: &str, labels: &[(&'static str, String); 2]) -> Outcome {
        match sql::bury(&self.db, &self.id, job, self.queue.now(), error).await {
            Ok(1) => {
                metrics::counter!("jobs_dead_total", labels).increment(1);
                tracing::error!(job_id = job.id, kind = %job.kind, attempts = job.attempt, error = %error, "job is dead: no more attempts");
                Outcome::Dead
            }
            Ok(_) => Outcome::Abandoned,
            Err(e) => {
                tracing::warn!(job_id = job.id, error = %e, "dead job not recorded; it is claimed again after its lease");
                Outcome::Abandoned
            }
        }
    }

    /// Runs the handler in a task of its own (a panic is a failed attempt), under the kind's
    /// timeout, renewing the lease every third of it meanwhile.
    async fn run_with_lease(&self, kind: &Kind, job: &Job) -> Result<(), JobError> {
        let mut task = tokio::spawn((kind.handler)(job.clone()));
        let timeout = tokio::time::sleep(kind.schedule.timeout);
        tokio::pin!(timeout);
        let mut renew = tokio::time::interval(self.options.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        loop {
            tokio::select! {
                joined = &mut task => {
                    return match joined {
                        Ok(result) => result,
                        Err(e) if e.is_panic() => Err(JobError::retry("the handler panicked")),
                        Err(e) => Err(JobError::retry(format!("the handler was cancelled: {e}"))),
                    };
                }
                _ = &mut timeout => {
                    task.abort();
                    return Err(JobError::retry(format!("timed out after {:?}", kind.schedule.timeout)));
                }
                _ = renew.tick() => {
                    let until = lease_until(self.queue.now(), self.options.lease);
                    match sql::renew(&self.db, &self.id, job, until).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(job_id = job.id, kind = %job.kind, "lease lost: another worker may run this job too"),
                        Err(e) => tracing::warn!(job_id = job.id, error = %e, "lease not renewed"),
                    }
                }
            }
        }
    }
}
