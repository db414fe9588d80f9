//! The payments service's job worker: hourly housekeeping of idempotency records and of the
//! queue. (The reconciler and the webhook dead-letter queue run here as they are built.)
use std::time::Duration;

use thali_platform::jobs::{Queue, Worker};

use crate::store::PaymentsStore;

pub use crate::store::SERVICE;

pub const PRUNE_IDEMPOTENCY: &str = "payments.prune_idempotency";

/// The payments job worker.
pub fn job_worker(store: PaymentsStore, queue: Queue) -> Worker {
    let prune = store.clone();
    Worker::new(store.connection().clone(), queue)
        .with_housekeeping()
        .prune_every(PRUNE_IDEMPOTENCY, Duration::from_secs(3600), move |now| {
            let store = prune.clone();
            async move { store.prune_idempotency(now).await }
        })
}
