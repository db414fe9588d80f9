//! Background work of identity, on the service's job queue: hourly housekeeping of the tables
//! that would otherwise grow forever (expired refresh tokens and their sessions, forgotten
//! login-throttle rows, idempotency records past their window), and the queue's own.
use std::{future::Future, time::Duration};

use chrono::{DateTime, Utc};
use sea_orm::DbErr;
use thali_platform::jobs::{JobError, Queue, RetrySchedule, Worker};

use crate::store::IdentityStore;

/// The service's name on the job queue.
pub const SERVICE: &str = "identity";

pub const PRUNE_REFRESH_TOKENS: &str = "identity.prune_refresh_tokens";
pub const PRUNE_LOGIN_THROTTLE: &str = "identity.prune_login_throttle";
pub const PRUNE_IDEMPOTENCY: &str = "identity.prune_idempotency";

const HOUR: Duration = Duration::from_secs(3600);

/// The identity worker: its housekeeping jobs, each once an hour across every replica.
pub fn worker(store: IdentityStore, queue: Queue) -> Worker {
    let db = store.connection().clone();
    let w = Worker::new(db, queue.clone()).with_housekeeping();
    let w = prune(w, &store, &queue, PRUNE_REFRESH_TOKENS, |s, now| async move {
        s.prune_refresh_tokens(now).await
    });
    let w = prune(w, &store, &queue, PRUNE_LOGIN_THROTTLE, |s, now| async move {
        s.prune_login_throttle(now).await
    });
    prune(w, &store, &queue, PRUNE_IDEMPOTENCY, |s, now| async move {
        s.prune_idempotency(now).await
    })
}

fn prune<F, Fut>(worker: Worker, store: &IdentityStore, queue: &Queue, kind: &'static str, delete: F) -> Worker
where
    F: Fn(IdentityStore, DateTime<Utc>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<u64, DbErr>> + Send + 'static,
{
    let (store, queue) = (store.clone(), queue.clone());
    worker
        .handle(kind, RetrySchedule::default(), move |_| {
            let (store, now, delete) = (store.clone(), queue.now(), delete.clone());
            async move {
                let deleted = delete(store, now).await.map_err(JobError::retry)?;
                tracing::info!(kind, deleted, "housekeeping");
                Ok(())
            }
        })
        .every(kind, HOUR)
}
