//! Background work of identity, on the service's job queue: hourly housekeeping of the tables
//! that would otherwise grow forever (expired refresh tokens and their sessions, forgotten
//! login-throttle rows, idempotency records past their window), and the queue's own.
use std::time::Duration;

use thali_platform::jobs::{Queue, Worker};

use crate::store::IdentityStore;

/// The service's name on the job queue.
pub const SERVICE: &str = "identity";

pub const PRUNE_REFRESH_TOKENS: &str = "identity.prune_refresh_tokens";
pub const PRUNE_LOGIN_THROTTLE: &str = "identity.prune_login_throttle";
pub const PRUNE_IDEMPOTENCY: &str = "identity.prune_idempotency";
pub const PRUNE_REVOCATIONS: &str = "identity.prune_revocations";

const HOUR: Duration = Duration::from_secs(3600);

/// The identity worker: its housekeeping jobs, each once an hour across every replica.
pub fn worker(store: IdentityStore, queue: Queue) -> Worker {
    let (a, b, c, d) = (store.clone(), store.clone(), store.clone(), store.clone());
    Worker::new(store.connection().clone(), queue)
        .with_housekeeping()
        .prune_every(PRUNE_REFRESH_TOKENS, HOUR, move |now| {
            let s = a.clone();
            async move { s.prune_refresh_tokens(now).await }
        })
        .prune_every(PRUNE_LOGIN_THROTTLE, HOUR, move |now| {
            let s = b.clone();
            async move { s.prune_login_throttle(now).await }
        })
        .prune_every(PRUNE_IDEMPOTENCY, HOUR, move |now| {
            let s = c.clone();
            async move { s.prune_idempotency(now).await }
        })
        .prune_every(PRUNE_REVOCATIONS, HOUR, move |now| {
            let s = d.clone();
            async move { s.prune_revocations(now).await }
        })
}
