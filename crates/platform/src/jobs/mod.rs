//! Durable jobs (ADR 0011): a queue in each service's own database, and the transactional outbox
//! built on it.
//!
//! - [`Queue::enqueue`] writes a job inside the caller's transaction: the job exists exactly when
//!   the business change committed.
//! - A [`Worker`] claims its service's due jobs without blocking other workers, holds a lease it
//!   renews while the handler runs, and retries failures on the kind's [`RetrySchedule`] until the
//!   job is `dead`. A job whose worker died runs again once its lease ends: at-least-once, so
//!   handlers are idempotent.
//! - Periodic jobs run once per period however many replicas run: each occurrence is a row with a
//!   unique key.
//! - Every time is taken from an injected [`Clock`], never from the database's `now()`, so tests
//!   move time by setting the clock.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr};

pub mod admin;
mod sql;
mod worker;

pub use worker::{DONE_RETENTION_DAYS, Handler, PURGE_DONE_KIND, Worker, WorkerOptions};

/// The `NOTIFY` channel PostgreSQL workers listen on; the payload is the service name.
pub const NOTIFY_CHANNEL: &str = "thali_jobs";

/// Where the time comes from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(at)))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().expect("clock lock");
        *now += chrono::TimeDelta::from_std(by).expect("a representable duration");
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}

/// A job's state. The transitions: queued → running → done | queued (retry) | dead; a running
/// job whose lease ended is claimed again as if queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Dead,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "dead" => JobState::Dead,
            _ => return None,
        })
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub(crate) kind: String,
    pub(crate) payload: String,
    pub(crate) run_at: Option<DateTime<Utc>>,
    pub(crate) ordering_key: Option<String>,
    pub(crate) unique_key: Option<String>,
}

impl NewJob {
    /// A job of `kind` whose handler receives `payload` (as JSON).
    pub fn new(kind: &str, payload: &impl serde::Serialize) -> Self {
        Self {
            kind: kind.to_owned(),
            payload: serde_json::to_string(payload).expect("job payloads serialise"),
            run_at: None,
            ordering_key: None,
            unique_key: None,
        }
    }

    /// Not before `at` (default: now).
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Runs only after every earlier job with the same key is done or dead (the outbox's
    /// per-aggregate order).
    pub fn ordered_by(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    /// At most one job with this key ever exists for the service: a second enqueue is a no-op.
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
}

/// A service's handle on its queue: its name and its clock.
#[derive(Clone)]
pub struct Queue {
    service: Arc<str>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("service", &self.service).finish()
    }
}

impl Queue {
    /// The queue of `service`, on the wall clock.
    pub fn new(service: &str) -> Self {
        Self::with_clock(service, Arc::new(SystemClock))
    }

    pub fn with_clock(service: &str, clock: Arc<dyn Clock>) -> Self {
        assert!(
            !service.is_empty() && service.len() <= 40,
            "a service name is 1 to 40 characters"
        );
        Self {
            service: service.into(),
            clock,
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Writes `job` on `conn` — pass the transaction of the change that causes it, so the job
    /// commits (or rolls back) with it. Returns its id, or None when a job with the same unique
    /// key already exists. On PostgreSQL the enqueue of a job due now also notifies the service's
    /// workers, in the same statement; the notification is delivered at commit, and not at all on
    /// rollback.
    pub async fn enqueue<C: ConnectionTrait>(&self, conn: &C, job: NewJob) -> Result<Option<i64>, DbErr> {
        sql::insert(conn, &self.service, &job, self.now()).await
    }
}

/// A claimed job, as its handler sees it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    /// 1 on the first run.
    pub attempt: u32,
    pub ordering_key: Option<String>,
    pub(crate) payload: String,
}

impl Job {
    /// The payload, decoded. A payload that does not decode is a permanent failure.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_str(&self.payload).map_err(|e| JobError::Fatal(format!("payload does not decode: {e}")))
    }
}

/// Why a run failed, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Try again: after `after` when the other side said when (`Retry-After`), else on the
    /// kind's schedule. The last attempt's failure makes the job dead.
    Retry { error: String, after: Option<Duration> },
    /// Trying again cannot help (a payload that does not decode, a target that is gone): dead now.
    Fatal(String),
}

impl JobError {
    pub fn retry(error: impl std::fmt::Display) -> Self {
        JobError::Retry {
            error: error.to_string(),
            after: None,
        }
    }

    fn message(&self) -> &str {
        match self {
            JobError::Retry { error, .. } | JobError::Fatal(error) => error,
        }
    }
}

/// How a kind retries: the delay before each retry (so `delays.len() + 1` attempts), each moved by
/// up to ±`jitter` of itself so that jobs failing together do not come back together; and how long
/// one run may take before it counts as failed.
#[derive(Debug, Clone)]
pub struct RetrySchedule {
    pub delays: Vec<Duration>,
    pub jitter: f64,
    pub timeout: Duration,
}

impl RetrySchedule {
    /// `attempts` runs in all, the delay doubling from `first` up to `cap`.
    pub fn exponential(attempts: u32, first: Duration, cap: Duration) -> Self {
        let delays = (0..attempts.saturating_sub(1))
            .map(|i| first.saturating_mul(1u32 << i.min(20)).min(cap))
            .collect();
        Self {
            delays,
            jitter: 0.2,
            timeout: Duration::from_secs(60),
        }
    }

    /// The given delays between runs.
    pub fn fixed(delays: &[Duration]) -> Self {
        Self {
            delays: delays.to_vec(),
            jitter: 0.2,
            timeout: Duration::from_secs(60),
        }
    }

    /// Each run may take at most `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// How many runs a job gets.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX - 1) + 1
    }

    /// The delay after failed attempt `attempt` (1-based), jittered; None after the last one.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        let base = *self.delays.get(usize::try_from(attempt).ok()?.checked_sub(1)?)?;
        let factor = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        Some(base.mul_f64(factor.max(0.0)))
    }
}

impl Default for RetrySchedule {
    /// Five runs: after 10 s, 20 s, 40 s and 80 s.
    fn default() -> Self {
        Self::exponential(5, Duration::from_secs(10), Duration::from_secs(3600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_schedule_doubles_up_to_its_cap() {
        let s = RetrySchedule::exponential(6, Duration::from_secs(1), Duration::from_secs(5)).with_jitter(0.0);
        assert_eq!(s.max_attempts(), 6);
        let delays: Vec<_> = (1..=6).map(|a| s.delay_after(a)).collect();
        assert_eq!(
            delays,
            vec![
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(5)),
                Some(Duration::from_secs(5)),
                None
            ]
        );
        assert_eq!(s.delay_after(0), None);
    }

    #[test]
    fn jitter_stays_within_its_bound_and_varies() {
        let s = RetrySchedule::fixed(&[Duration::from_secs(100)]);
        let seen: Vec<Duration> = (0..200).map(|_| s.delay_after(1).expect("a retry")).collect();
        assert!(
            seen.iter()
                .all(|d| *d >= Duration::from_secs(80) && *d <= Duration::from_secs(120))
        );
        assert!(seen.iter().any(|d| *d != seen[0]), "jitter spreads the retries");
    }
}
