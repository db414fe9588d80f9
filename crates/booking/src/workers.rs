//! The booking service's job worker: the day-before reminders (each a `booking.reminder` event,
//! relayed to notifications) and hourly housekeeping of idempotency records and the queue.
use std::time::Duration;

use thali_platform::jobs::{Job, JobError, Queue, RetrySchedule, Worker};

use crate::store::{BookingStore, REMIND, Remind};

/// The service's name on the job queue.
pub const SERVICE: &str = "booking";

pub const PRUNE_IDEMPOTENCY: &str = "booking.prune_idempotency";

/// A reminder is retried for about an hour; past that it is dead (and the dead-job alert fires).
pub fn remind_schedule() -> RetrySchedule {
    RetrySchedule::exponential(8, Duration::from_secs(5), Duration::from_secs(900))
}

/// The booking job worker.
pub fn job_worker(store: BookingStore, queue: Queue) -> Worker {
    let prune = store.clone();
    Worker::new(store.connection().clone(), queue)
        .with_housekeeping()
        .prune_every(PRUNE_IDEMPOTENCY, Duration::from_secs(3600), move |now| {
            let store = prune.clone();
            async move { store.prune_idempotency(now).await }
        })
        .handle(REMIND, remind_schedule(), move |job| remind(store.clone(), job))
}

/// Sends one booking's reminder. A booking cancelled since, or reminded already (a job run
/// twice), sends nothing.
async fn remind(store: BookingStore, job: Job) -> Result<(), JobError> {
    let Remind { booking_id } = job.payload()?;
    let sent = store.remind(booking_id).await.map_err(JobError::retry)?;
    tracing::info!(%booking_id, sent, "booking reminder");
    Ok(())
}
