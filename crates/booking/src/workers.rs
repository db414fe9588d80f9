//! The booking service's job worker: hourly housekeeping of idempotency records and the queue.
use std::time::Duration;

use thali_platform::jobs::{Queue, Worker};

use crate::store::BookingStore;

/// The service's name on the job queue.
pub const SERVICE: &str = "booking";

pub const PRUNE_IDEMPOTENCY: &str = "booking.prune_idempotency";

/// The booking job worker.
pub fn job_worker(store: BookingStore, queue: Queue) -> Worker {
    Worker::new(store.connection().clone(), queue)
        .with_housekeeping()
        .prune_every(PRUNE_IDEMPOTENCY, Duration::from_secs(3600), move |now| {
            let store = store.clone();
            async move { store.prune_idempotency(now).await }
        })
}
