//! The notifications service's job worker: sending email (a job per email, retried with backoff
//! and bounded by the mailer's whole-send timeout), delivering partner webhooks (a job per
//! delivery, on the Standard Webhooks retry schedule) and the queue's housekeeping.
use std::{sync::Arc, time::Duration};

use thali_platform::jobs::{Job, JobError, Queue, RetrySchedule, Worker};
use uuid::Uuid;

use crate::{
    domain::WebhookAttempt,
    mail::Mailer,
    store::NotificationStore,
    templates::Templates,
    webhooks::{self, Sender},
};

/// The service's name on the job queue and in the inbox.
pub const SERVICE: &str = "notifications";

/// Sends one stored email.
pub const SEND_EMAIL: &str = "notifications.send_email";

/// Sends one webhook delivery.
pub const DELIVER_WEBHOOK: &str = "notifications.deliver_webhook";

/// Hourly housekeeping of the service's own tables.
pub const PRUNE: &str = "notifications.prune";

/// Payload of [`SEND_EMAIL`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SendEmail {
    pub email_id: Uuid,
}

/// Payload of [`DELIVER_WEBHOOK`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DeliverWebhook {
    pub delivery_id: Uuid,
}

/// Email retries: 8 attempts, from 30 s doubling to an hour (about 3 h in all), each run cut at
/// 90 s (the mailer's own whole-send timeout is shorter).
pub fn email_schedule() -> RetrySchedule {
    RetrySchedule::exponential(8, Duration::from_secs(30), Duration::from_secs(3600))
        .with_timeout(Duration::from_secs(90))
}

/// Webhook retries (Standard Webhooks): after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h, each
/// moved by the schedule's jitter; a `Retry-After` on 429 or 503 replaces the next wait.
pub fn webhook_schedule() -> RetrySchedule {
    RetrySchedule::fixed(&[
        Duration::from_secs(5),
        Duration::from_secs(5 * 60),
        Duration::from_secs(30 * 60),
        Duration::from_secs(2 * 3600),
        Duration::from_secs(5 * 3600),
        Duration::from_secs(10 * 3600),
        Duration::from_secs(10 * 3600),
    ])
    .with_timeout(Duration::from_secs(60))
}

/// What the worker sends with.
#[derive(Clone)]
pub struct Outbound {
    pub mailer: Mailer,
    pub webhooks: Sender,
    pub templates: Arc<Templates>,
}

/// The notifications job worker.
pub fn job_worker(store: NotificationStore, queue: Queue, out: Outbound) -> Worker {
    job_worker_with(store, queue, out, email_schedule(), webhook_schedule())
}

/// [`job_worker`] with other schedules (tests).
pub fn job_worker_with(
    store: NotificationStore,
    queue: Queue,
    out: Outbound,
    email: RetrySchedule,
    webhook: RetrySchedule,
) -> Worker {
    let webhook_attempts = webhook.max_attempts();
    let (email_store, email_clock, mailer) = (store.clone(), queue.clone(), out.mailer.clone());
    let (hook_store, hook_clock) = (store.clone(), queue.clone());
    let prune_store = store.clone();
    Worker::new(store.connection().clone(), queue)
        .with_housekeeping()
        .prune_every(PRUNE, Duration::from_secs(3600), move |now| {
            let store = prune_store.clone();
            async move { store.prune(now).await }
        })
        .handle(SEND_EMAIL, email, move |job| {
            send_email(email_store.clone(), email_clock.clone(), mailer.clone(), job)
        })
        .handle(DELIVER_WEBHOOK, webhook, move |job| {
            deliver_webhook(
                hook_store.clone(),
                hook_clock.clone(),
                out.clone(),
                webhook_attempts,
                job,
            )
        })
}

async fn send_email(store: NotificationStore, clock: Queue, mailer: Mailer, job: Job) -> Result<(), JobError> {
    let SendEmail { email_id } = job.payload()?;
    let Some(email) = store.email(email_id).await.map_err(JobError::retry)? else {
        // Erased with its account (ADR 0032) before it went out: nothing to send.
        tracing::info!(%email_id, "email no longer exists (its account was erased); not sent");
        return Ok(());
    };
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

/// One try of one delivery. A partner's failing endpoint is the partner's to fix, not an
/// operator's: when the retries run out (or the endpoint answers 410) the delivery is `failed`,
/// its owner gets an in-app notice, and the job ends done — it does not page anyone as a dead job.
async fn deliver_webhook(
    store: NotificationStore,
    clock: Queue,
    out: Outbound,
    max_attempts: u32,
    job: Job,
) -> Result<(), JobError> {
    let DeliverWebhook { delivery_id } = job.payload()?;
    // Gone with its endpoint, or settled by an earlier run.
    let Some((delivery, endpoint)) = store.delivery_to_send(delivery_id).await.map_err(JobError::retry)? else {
        return Ok(());
    };
    let now = clock.now();
    let settle = |status: Option<i32>, latency_ms: i64, error: Option<String>, state: Option<&'static str>| {
        let store = store.clone();
        async move {
            let attempt = WebhookAttempt {
                attempted_at: now,
                status_code: status,
                latency_ms,
                error,
            };
            store
                .record_webhook_attempt(delivery_id, &attempt, state)
                .await
                .map_err(JobError::retry)
        }
    };
    let notice = |kind: &'static str, error: String| {
        let (store, templates) = (store.clone(), out.templates.clone());
        let context = serde_json::json!({
            "url": endpoint.url,
            "event_type": delivery.event_type,
            "error": error,
        });
        let account = endpoint.account_id;
        async move {
            let text = templates
                .in_app(kind, &context)
                .map_err(|e| JobError::Fatal(e.to_string()))?;
            store
                .notify(account, delivery_id, kind, text)
                .await
                .map_err(JobError::retry)
        }
    };
    if endpoint.state != "active" {
        return settle(None, 0, Some("the endpoint is disabled".into()), Some("failed")).await;
    }
    let url = match webhooks::check_url(&endpoint.url, out.webhooks.allows_insecure()) {
        Ok(url) => url,
        Err(why) => return settle(None, 0, Some(format!("endpoint URL {why}")), Some("failed")).await,
    };
    let timestamp = now.timestamp();
    let id = delivery.event_id.to_string();
    let signature = webhooks::signature_header(
        &endpoint.signing_secrets(now),
        &id,
        timestamp,
        delivery.payload.as_bytes(),
    );
    let headers = [
        ("webhook-id", id.clone()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ];
    let sent = out
        .webhooks
        .post(&url, &headers, bytes::Bytes::from(delivery.payload.clone()))
        .await;
    let last = job.attempt >= max_attempts;
    let (status, latency_ms, error, retry_after) = match sent {
        Ok(answer) if (200..300).contains(&answer.status) => {
            let ms = answer.latency.as_millis() as i64;
            settle(Some(i32::from(answer.status)), ms, None, Some("succeeded")).await?;
            tracing::debug!(%delivery_id, status = answer.status, "webhook delivered");
            return Ok(());
        }
        Ok(answer) if answer.status == 410 => {
            let ms = answer.latency.as_millis() as i64;
            let error = "the endpoint answered 410 Gone: disabled".to_owned();
            settle(Some(410), ms, Some(error.clone()), Some("failed")).await?;
            store
                .disable_endpoint(endpoint.id, "the endpoint answered 410 Gone")
                .await
                .map_err(JobError::retry)?;
            tracing::warn!(endpoint_id = %endpoint.id, "webhook endpoint answered 410 Gone: disabled");
            return notice("webhook.endpoint_disabled", error).await;
        }
        Ok(answer) => (
            Some(i32::from(answer.status)),
            answer.latency.as_millis() as i64,
            format!("HTTP {}", answer.status),
            if matches!(answer.status, 429 | 503) {
                answer.retry_after
            } else {
                None
            },
        ),
        Err(failure) => (None, 0, failure.to_string(), None),
    };
    if last {
        settle(status, latency_ms, Some(error.clone()), Some("failed")).await?;
        tracing::warn!(%delivery_id, endpoint_id = %endpoint.id, %error, "webhook delivery failed after its last attempt");
        return notice("webhook.delivery_failed", error).await;
    }
    settle(status, latency_ms, Some(error.clone()), None).await?;
    Err(JobError::Retry {
        error,
        after: retry_after,
    })
}
