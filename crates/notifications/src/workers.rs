//! The notifications service's job worker: sending email (a job per email, retried with backoff
//! and bounded by the mailer's whole-send timeout) and the queue's housekeeping.
use std::time::Duration;

use thali_platform::jobs::{JobError, Queue, RetrySchedule, Worker};
use uuid::Uuid;

use crate::{mail::Mailer, store::NotificationStore};

/// The service's name on the job queue and in the inbox.
pub const SERVICE: &str = "notifications";

/// Sends one stored email.
pub const SEND_EMAIL: &str = "notifications.send_email";

/// Payload of [`SEND_EMAIL`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SendEmail {
    pub email_id: Uuid,
}

/// Email retries: 8 attempts, from 30 s doubling to an hour (about 3 h in all), each run cut at
/// 90 s (the mailer's own whole-send timeout is shorter).
pub fn email_schedule() -> RetrySchedule {
    RetrySchedule::exponential(8, Duration::from_secs(30), Duration::from_secs(3600))
        .with_timeout(Duration::from_secs(90))
}

/// The notifications job worker.
pub fn job_worker(store: NotificationStore, queue: Queue, mailer: Mailer) -> Worker {
    job_worker_with_schedule(store, queue, mailer, email_schedule())
}

/// [`job_worker`] with another email schedule (tests).
pub fn job_worker_with_schedule(
    store: NotificationStore,
    queue: Queue,
    mailer: Mailer,
    schedule: RetrySchedule,
) -> Worker {
    let clock = queue.clone();
    Worker::new(store.connection().clone(), queue)
        .with_housekeeping()
        .handle(SEND_EMAIL, schedule, move |job| {
            let (store, mailer, clock) = (store.clone(), mailer.clone(), clock.clone());
            async move {
                let SendEmail { email_id } = job.payload()?;
                let email = store
                    .email(email_id)
                    .await
                    .map_err(JobError::retry)?
                    .ok_or_else(|| JobError::Fatal(format!("no email {email_id}")))?;
                // Sent (or refused for good) on an earlier run whose completion was lost.
                if email.state != "queued" {
                    return Ok(());
                }
                match mailer.send(&email.outgoing).await {
                    Ok(to) => {
                        store
                            .record_attempt(email_id, Ok(&to), clock.now())
                            .await
                            .map_err(JobError::retry)?;
                        tracing::info!(%email_id, template = %email.template, %to, "email sent");
                        Ok(())
                    }
                    Err(e) => {
                        store
                            .record_attempt(email_id, Err((&e.message, e.permanent)), clock.now())
                            .await
                            .map_err(JobError::retry)?;
                        tracing::warn!(%email_id, template = %email.template, error = %e, permanent = e.permanent, "email not sent");
                        if e.permanent {
                            Err(JobError::Fatal(e.message))
                        } else {
                            Err(JobError::retry(e.message))
                        }
                    }
                }
            }
        })
}
