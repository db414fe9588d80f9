//! Webhook delivery: one task per account works through that account's deliveries, signing each
//! body like Razorpay (`X-Razorpay-Signature` = hex HMAC-SHA256(webhook secret, raw body)) and
//! retrying a non-2xx answer or no answer within the timeout with exponential backoff, until the
//! retry window (24 h by default) has passed since the first attempt.
//!
//! Deliveries of one order go out in the order their events were raised: a later event of an
//! order waits while an earlier one is being retried. Orders do not wait for each other. With
//! the `webhook_reorder` fault the newest due delivery goes first.
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Inner;
use super::state::State;
use crate::signature::sign_hex;

/// What an account's task does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Deliver the delivery with this `seq` now.
    Deliver(u64),
    /// Nothing is due before this instant.
    WaitUntil(Instant),
    /// Nothing is queued.
    Idle,
}

/// The account's next delivery at `now`.
pub(crate) fn next_delivery(state: &State, key_id: &str, now: Instant) -> Next {
    let queued = state.outbox.iter().filter(|d| d.key_id == key_id);
    let is_due = |due: Option<Instant>| due.is_none_or(|t| t <= now);
    let chosen = if state.faults.webhook_reorder {
        queued.clone().rev().find(|d| is_due(d.due))
    } else {
        let mut waiting_orders: Vec<&str> = Vec::new();
        let mut chosen = None;
        for delivery in queued.clone() {
            if waiting_orders.contains(&delivery.order_id.as_str()) {
                continue;
            }
            if is_due(delivery.due) {
                chosen = Some(delivery);
                break;
            }
            waiting_orders.push(&delivery.order_id);
        }
        chosen
    };
    if let Some(delivery) = chosen {
        return Next::Deliver(delivery.seq);
    }
    match queued.filter_map(|d| d.due).min() {
        Some(at) => Next::WaitUntil(at),
        None => Next::Idle,
    }
}

/// The wait after the `attempts`-th failed attempt: `first`, doubling, at most `max`.
pub(crate) fn backoff(attempts: u32, first: Duration, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(31));
    first.saturating_mul(factor).min(max)
}

/// What one attempt needs, copied out of the state so no lock is held while sending.
struct Attempt {
    seq: u64,
    url: Option<String>,
    secret: String,
    event_id: String,
    body: String,
}

/// Runs until the sandbox is dropped.
pub(crate) async fn deliver_forever(inner: Weak<Inner>, key_id: String, wake: Arc<Notify>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let now = Instant::now();
        let (next, attempt) = {
            let state = strong.lock();
            let next = next_delivery(&state, &key_id, now);
            let attempt = match next {
                Next::Deliver(seq) => state.outbox.iter().find(|d| d.seq == seq).map(|d| {
                    let account = state.accounts.get(&key_id);
                    Attempt {
                        seq,
                        url: account.and_then(|a| a.webhook_url.clone()),
                        secret: account.map(|a| a.webhook_secret.clone()).unwrap_or_default(),
                        event_id: d.event_id.clone(),
                        body: d.body.clone(),
                    }
                }),
                _ => None,
            };
            (next, attempt)
        };
        let client = strong.webhook_client.clone();
        // Hold no strong reference while waiting, so dropping the sandbox ends this task.
        drop(strong);
        match (next, attempt) {
            (Next::Deliver(_), Some(attempt)) => {
                let delivered = send(&client, &attempt).await;
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                strong.record_attempt(attempt.seq, delivered);
            }
            (Next::WaitUntil(at), _) => {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            _ => wake.notified().await,
        }
    }
}

/// One POST; true on a 2xx answer within the client's timeout.
async fn send(client: &reqwest::Client, attempt: &Attempt) -> bool {
    let Some(url) = &attempt.url else {
        return false;
    };
    let signature = sign_hex(attempt.secret.as_bytes(), attempt.body.as_bytes());
    let result = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Razorpay-Signature", signature)
        .header("X-Razorpay-Event-Id", &attempt.event_id)
        .body(attempt.body.clone())
        .send()
        .await;
    match result {
        Ok(response) if response.status().is_success() => true,
        Ok(response) => {
            tracing::debug!(status = response.status().as_u16(), event_id = %attempt.event_id, "sandbox: webhook refused");
            false
        }
        Err(error) => {
            tracing::debug!(error = %error, event_id = %attempt.event_id, "sandbox: webhook not delivered");
            false
        }
    }
}

impl Inner {
    /// Removes a delivered delivery, or schedules the next try of a failed one (or gives up when
    /// the retry window has passed).
    fn record_attempt(&self, seq: u64, delivered: bool) {
        let now = Instant::now();
        self.change(|state| {
            let Some(index) = state.outbox.iter().position(|d| d.seq == seq) else {
                return;
            };
            if delivered {
                state.outbox.remove(index);
                return;
            }
            let delivery = &mut state.outbox[index];
            delivery.attempts += 1;
            let first = *delivery.first_attempt.get_or_insert(now);
            if now.duration_since(first) >= self.options.webhook_retry_for {
                tracing::warn!(
                    event = %delivery.event,
                    event_id = %delivery.event_id,
                    attempts = delivery.attempts,
                    "sandbox: webhook given up after its retry window"
                );
                state.outbox.remove(index);
                return;
            }
            let wait = backoff(
                delivery.attempts,
                self.options.webhook_first_backoff,
                self.options.webhook_max_backoff,
            );
            delivery.due = Some(now + wait);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::state::Delivery;

    fn delivery(seq: u64, order_id: &str, due: Option<Instant>) -> Delivery {
        Delivery {
            seq,
            key_id: "k".into(),
            order_id: order_id.into(),
            event_id: format!("evt_{seq}"),
            event: "payment.captured".into(),
            body: "{}".into(),
            attempts: 0,
            due,
            first_attempt: None,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (first, max) = (Duration::from_secs(5), Duration::from_secs(60));
        let waits: Vec<u64> = (1..=6).map(|n| backoff(n, first, max).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        assert_eq!(backoff(u32::MAX, first, max), max);
    }

    #[tokio::test(start_paused = true)]
    async fn an_order_waits_for_its_earlier_event_but_not_for_other_orders() {
        let now = Instant::now();
        let later = now + Duration::from_secs(30);
        let mut state = State {
            outbox: vec![
                delivery(1, "order_A", Some(later)),
                delivery(2, "order_A", None),
                delivery(3, "order_B", None),
            ],
            ..State::default()
        };
        assert_eq!(next_delivery(&state, "k", now), Next::Deliver(3));
        assert_eq!(next_delivery(&state, "other", now), Next::Idle);
        state.outbox.remove(2);
        assert_eq!(next_delivery(&state, "k", now), Next::WaitUntil(later));
        assert_eq!(next_delivery(&state, "k", later), Next::Deliver(1));
        state.faults.webhook_reorder = true;
        assert_eq!(
            next_delivery(&state, "k", now),
            Next::Deliver(2),
            "reordered: newest due first"
        );
    }
}
