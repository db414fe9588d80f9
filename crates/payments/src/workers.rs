//! The payments service's job worker: the effects of settled orders (capture an authorized
//! payment, commit or release the stock, refund a payment that should not have been taken), the
//! webhook dead-letter queue's sweep every 30 s, the reconciler every 2 minutes, and hourly
//! housekeeping.
use std::{sync::Arc, time::Duration};

use thali_platform::{
    client::{Client, GrpcChannel},
    jobs::{Job, JobError, Queue, RetrySchedule, Worker},
};
use thali_proto::storefront::v1::{self as storefront, storefront_service_client::StorefrontServiceClient};
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    domain::{Event, GatewayCall, PaymentsError},
    gateway::Credentials,
    gateway::{Gateway, GatewayError, GatewayPaymentStatus},
    store::{
        Accounts, CAPTURE, COMMIT_STOCK, CaptureJob, DueOrder, PaymentsStore, RECONCILE_BATCH, REFUND, REFUND_REQUEST,
        RELEASE_STOCK, RefundJob, RefundRequestJob, StockJob, Taken,
    },
};

pub use crate::store::SERVICE;

pub const PRUNE_IDEMPOTENCY: &str = "payments.prune_idempotency";

/// The dead-letter queue's sweep.
pub const DLQ_SWEEP: &str = "payments.dlq_sweep";
/// How often the dead-letter queue is swept.
pub const DLQ_EVERY: Duration = Duration::from_secs(30);
/// Rows one sweep retries.
pub const DLQ_BATCH: u64 = 100;

/// The reconciler's periodic job.
pub const RECONCILE: &str = "payments.reconcile";
/// How often the reconciler runs.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(120);

/// What carrying out an effect needs: the gateway, the storefront and the accounts.
#[derive(Clone)]
pub struct Settler {
    pub store: PaymentsStore,
    pub gateway: Arc<dyn Gateway>,
    pub storefront: Client<StorefrontServiceClient<GrpcChannel>>,
    pub accounts: Accounts,
}

/// Effects are retried for about a day with backoff: a gateway or storefront outage delays them,
/// it does not lose them; past that they are dead and the dead-job alert fires.
pub fn effect_schedule() -> RetrySchedule {
    RetrySchedule::exponential(20, Duration::from_secs(2), Duration::from_secs(3600))
        .with_timeout(Duration::from_secs(30))
}

/// The payments job worker.
pub fn job_worker(settler: Settler, queue: Queue) -> Worker {
    // The counters exist at 0 from the start, so the first death is an increase an alert sees.
    metrics::counter!("events_dead_total").increment(0);
    metrics::counter!("events_retried_total").increment(0);
    let prune = settler.store.clone();
    let (capture, commit, release, refund, requested, sweep) = (
        settler.clone(),
        settler.clone(),
        settler.clone(),
        settler.clone(),
        settler.clone(),
        settler.store.clone(),
    );
    let reconciler = Reconciler {
        store: settler.store.clone(),
        gateway: settler.gateway.clone(),
        accounts: settler.accounts.clone(),
    };
    Worker::new(settler.store.connection().clone(), queue)
        .with_housekeeping()
        .prune_every(PRUNE_IDEMPOTENCY, Duration::from_secs(3600), move |now| {
            let store = prune.clone();
            async move { store.prune_idempotency(now).await }
        })
        .handle(CAPTURE, effect_schedule(), move |job| capture.clone().capture(job))
        .handle(COMMIT_STOCK, effect_schedule(), move |job| commit.clone().commit(job))
        .handle(RELEASE_STOCK, effect_schedule(), move |job| {
            release.clone().release(job)
        })
        .handle(REFUND, effect_schedule(), move |job| refund.clone().refund(job))
        .handle(REFUND_REQUEST, effect_schedule(), move |job| {
            requested.clone().refund_request(job)
        })
        .handle(
            DLQ_SWEEP,
            RetrySchedule::exponential(3, Duration::from_secs(5), Duration::from_secs(20)),
            move |_| sweep_dlq(sweep.clone()),
        )
        .every(DLQ_SWEEP, DLQ_EVERY)
        .handle(
            RECONCILE,
            RetrySchedule::exponential(2, Duration::from_secs(10), Duration::from_secs(10))
                .with_timeout(Duration::from_secs(110)),
            move |_| {
                let reconciler = reconciler.clone();
                async move {
                    let report = reconciler.run_cycle().await.map_err(JobError::retry)?;
                    if report.checked > 0 {
                        tracing::info!(?report, "reconciler cycle");
                    }
                    Ok(())
                }
            },
        )
        .every(RECONCILE, RECONCILE_EVERY)
}

/// Settles orders whose webhooks did not (lost, or the process died between the capture and the
/// webhook) by asking the gateway: pending orders older than 5 minutes, at most 100 a cycle,
/// oldest first, each claimed by one replica. Captured → paid; authorized → captured; past the
/// order's expiry with no capture → expired, or failed when every attempt failed (stock released).
/// Every gateway call is a row in `transactions`; a 429 or 5xx backs the order off exponentially
/// (from 2 minutes to an hour, or the gateway's Retry-After), and a 429 ends the cycle's calls.
#[derive(Clone)]
pub struct Reconciler {
    pub store: PaymentsStore,
    pub gateway: Arc<dyn Gateway>,
    pub accounts: Accounts,
}

/// What one cycle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleReport {
    /// Orders claimed.
    pub checked: usize,
    /// Orders whose status changed.
    pub settled: usize,
    /// Orders backed off (the gateway failed, or the cycle was rate limited).
    pub deferred: usize,
    /// The gateway said 429: the rest of the cycle's orders wait.
    pub rate_limited: bool,
}

/// The wait before the reconciler looks at an order again after `failures` gateway failures.
pub fn reconcile_backoff(failures: i32, hint: Option<Duration>) -> Duration {
    let exp = u32::try_from(failures.clamp(0, 10)).unwrap_or(0);
    let wait = Duration::from_secs(120)
        .saturating_mul(1 << exp)
        .min(Duration::from_secs(3600));
    wait.max(hint.unwrap_or_default())
}

impl Reconciler {
    /// One cycle (see the type's rules).
    pub async fn run_cycle(&self) -> Result<CycleReport, PaymentsError> {
        let due = self.store.claim_for_reconcile(RECONCILE_BATCH).await?;
        let mut report = CycleReport {
            checked: due.len(),
            ..CycleReport::default()
        };
        let mut pause: Option<Duration> = None;
        for order in due {
            if let Some(wait) = pause {
                self.store.reconcile_later(order.id, wait, false).await?;
                report.deferred += 1;
                continue;
            }
            match self.check(&order).await {
                Ok(changed) => {
                    report.settled += usize::from(changed);
                    self.store.reconcile_done(order.id).await?;
                }
                Err(e) if e.is_retryable() => {
                    let wait = reconcile_backoff(order.failures, e.backoff_hint());
                    tracing::warn!(order_id = %order.id, error = %e, wait_s = wait.as_secs(), "reconciler: gateway failed; backing off");
                    self.store.reconcile_later(order.id, wait, true).await?;
                    report.deferred += 1;
                    if matches!(e, GatewayError::RateLimited { .. }) {
                        report.rate_limited = true;
                        // The rest of this cycle's orders wait for the next cycle at least.
                        pause = Some(e.backoff_hint().unwrap_or_default().max(RECONCILE_EVERY));
                    }
                }
                Err(e) => {
                    tracing::error!(order_id = %order.id, error = %e, "reconciler: the gateway refused the check");
                    self.store
                        .reconcile_later(order.id, Duration::from_secs(1800), true)
                        .await?;
                    report.deferred += 1;
                }
            }
        }
        metrics::counter!("reconciler_orders_checked_total").increment(report.checked as u64);
        metrics::counter!("reconciler_orders_settled_total").increment(report.settled as u64);
        Ok(report)
    }

    /// Asks the gateway about one order and applies what it says. True when the order moved.
    async fn check(&self, order: &DueOrder) -> Result<bool, GatewayError> {
        let credentials = match self.accounts.for_order(&self.store, order.payment_account_id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(order_id = %order.id, error = %e, "reconciler: the order's account cannot be used");
                return Err(GatewayError::Unauthorized);
            }
        };
        let started = std::time::Instant::now();
        let answer = self.gateway.order_payments(&credentials, &order.gateway_order_id).await;
        let call = GatewayCall {
            order_id: order.id,
            call: "order_payments",
            source: "reconciler",
            outcome: match &answer {
                Ok(_) => "ok",
                Err(e) => e.outcome(),
            },
            gateway_ref: Some(order.gateway_order_id.clone()),
            latency_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        };
        if let Err(e) = self.store.record_call(&call).await {
            tracing::warn!(order_id = %order.id, error = %e, "gateway call not recorded");
        }
        let payments = match answer {
            Ok(payments) => payments,
            // The gateway never heard of it: nothing was paid.
            Err(GatewayError::NotFound) => Vec::new(),
            Err(e) => return Err(e),
        };
        let apply = |key: String, event: Event| async move {
            match self.store.apply_reconciled(&key, &order.gateway_order_id, &event).await {
                Ok(Taken::Applied { status, .. }) => Ok(Some(status)),
                Ok(_) => Ok(None),
                Err(e) => Err(GatewayError::Transport(format!("applying what the gateway said: {e}"))),
            }
        };
        let mut moved = false;
        let captured =
            |s: &GatewayPaymentStatus| matches!(s, GatewayPaymentStatus::Captured | GatewayPaymentStatus::Refunded);
        for p in payments.iter().filter(|p| captured(&p.status)) {
            let before = self.status_of(order.id).await;
            let after = apply(
                format!("rec:{}:captured", p.id),
                Event::Captured {
                    payment: p.id.clone(),
                    amount: p.amount,
                },
            )
            .await?;
            moved |= after.is_some() && after != before;
        }
        let authorized: Vec<_> = payments
            .iter()
            .filter(|p| p.status == GatewayPaymentStatus::Authorized)
            .collect();
        for p in &authorized {
            apply(
                format!("rec:{}:authorized", p.id),
                Event::Authorized {
                    payment: p.id.clone(),
                    amount: p.amount,
                },
            )
            .await?;
        }
        for p in payments.iter().filter(|p| p.status == GatewayPaymentStatus::Failed) {
            apply(
                format!("rec:{}:failed", p.id),
                Event::PaymentFailed { payment: p.id.clone() },
            )
            .await?;
        }
        let money_in_flight = payments.iter().any(|p| captured(&p.status)) || !authorized.is_empty();
        if !money_in_flight && self.store.now() >= order.expires_at {
            let (key, event) =
                if !payments.is_empty() && payments.iter().all(|p| p.status == GatewayPaymentStatus::Failed) {
                    (format!("rec:{}:gave_up", order.id), Event::GaveUp)
                } else {
                    (format!("rec:{}:expired", order.id), Event::Expired)
                };
            let before = self.status_of(order.id).await;
            let after = apply(key, event).await?;
            moved |= after.is_some() && after != before;
        }
        Ok(moved)
    }

    async fn status_of(&self, id: uuid::Uuid) -> Option<crate::domain::Status> {
        self.store.order(id).await.ok().map(|o| o.status)
    }
}

/// Retries the due dead-lettered webhooks, and refreshes the queue's gauges.
pub async fn sweep_dlq(store: PaymentsStore) -> Result<(), JobError> {
    loop {
        let due = store.dlq_claim(DLQ_BATCH).await.map_err(JobError::retry)?;
        let full = due.len() as u64 == DLQ_BATCH;
        for row in &due {
            store.dlq_retry(row).await.map_err(JobError::retry)?;
        }
        if !full {
            break;
        }
    }
    let (pending, dead) = store.dlq_size().await.map_err(JobError::retry)?;
    metrics::gauge!("dlq_size", "status" => "pending").set(pending as f64);
    metrics::gauge!("dlq_size", "status" => "dead").set(dead as f64);
    Ok(())
}

/// A gateway failure as a job outcome: transient ones retry (after the gateway's Retry-After
/// when it gave one), refusals are dead.
fn gateway_failure(e: GatewayError) -> JobError {
    if e.is_retryable() {
        JobError::Retry {
            error: e.to_string(),
            after: e.backoff_hint(),
        }
    } else {
        JobError::Fatal(e.to_string())
    }
}

/// A storefront failure as a job outcome: everything but a refusal retries.
fn storefront_failure(status: &tonic::Status) -> JobError {
    JobError::retry(format!("storefront: {:?} {}", status.code(), status.message()))
}

/// Refunds `payment` once under `receipt`. On a retry the last try's answer may have been lost
/// after the gateway acted (a timeout, a crash before the answer was recorded): the payment's
/// refunds are read first, and one with this receipt is the answer instead of a second refund.
pub async fn refund_once(
    gateway: &dyn Gateway,
    credentials: &Credentials,
    payment: &str,
    amount_minor: Option<i64>,
    receipt: &str,
    retried: bool,
) -> Result<crate::gateway::GatewayRefund, GatewayError> {
    if retried
        && let Some(done) = gateway
            .payment_refunds(credentials, payment)
            .await?
            .into_iter()
            .find(|r| r.receipt.as_deref() == Some(receipt))
    {
        tracing::info!(payment, receipt, refund = %done.id, "refund found at the gateway: not asked again");
        return Ok(done);
    }
    gateway.refund(credentials, payment, amount_minor, Some(receipt)).await
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

impl Settler {
    /// The credentials of the account that created `order_id`.
    async fn credentials(&self, order_id: uuid::Uuid) -> Result<Credentials, JobError> {
        let order = self.store.order(order_id).await.map_err(JobError::retry)?;
        self.accounts
            .for_order(&self.store, order.payment_account_id)
            .await
            .map_err(JobError::retry)
    }

    async fn record(&self, call: GatewayCall) {
        if let Err(e) = self.store.record_call(&call).await {
            tracing::warn!(order_id = %call.order_id, error = %e, "gateway call not recorded");
        }
    }

    /// Captures an authorized payment (auto-capture). A payment captured already is done.
    async fn capture(self, job: Job) -> Result<(), JobError> {
        let CaptureJob {
            order_id,
            payment_id,
            amount_minor,
            currency,
        } = job.payload()?;
        let credentials = self.credentials(order_id).await?;
        let started = std::time::Instant::now();
        let result = self
            .gateway
            .capture(&credentials, &payment_id, amount_minor, &currency)
            .await;
        let already = matches!(&result, Err(GatewayError::BadRequest { description, .. }) if description.contains("already been captured"));
        self.record(GatewayCall {
            order_id,
            call: "capture",
            source: "webhook",
            outcome: match &result {
                Ok(_) => "ok",
                Err(e) => e.outcome(),
            },
            gateway_ref: Some(payment_id.clone()),
            latency_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        })
        .await;
        match result {
            Ok(_) => {
                tracing::info!(%order_id, payment_id, "authorized payment captured");
                Ok(())
            }
            Err(_) if already => Ok(()),
            Err(e) => Err(gateway_failure(e)),
        }
    }

    /// The order is paid: its stock is sold. Stock the storefront already released (the payment
    /// came after the hold ran out) cannot be sold: the buyer gets the money back.
    async fn commit(self, job: Job) -> Result<(), JobError> {
        let StockJob { order_id } = job.payload()?;
        let request = storefront::CommitReservationRequest {
            reservation_id: order_id.to_string(),
        };
        match self
            .storefront
            .call(request, |mut c, r| async move { c.commit_reservation(r).await })
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::FailedPrecondition && reason(&status) == "RESERVATION_RELEASED" => {
                tracing::warn!(%order_id, "paid after the stock went back on sale: refunding the buyer");
                self.store
                    .refund_paid_order(order_id, "stock_released")
                    .await
                    .map_err(JobError::retry)
            }
            Err(status) if status.code() == Code::NotFound => {
                Err(JobError::Fatal(format!("the storefront has no reservation {order_id}")))
            }
            Err(status) => Err(storefront_failure(&status)),
        }
    }

    /// The order will not be paid: its stock goes back on sale.
    async fn release(self, job: Job) -> Result<(), JobError> {
        let StockJob { order_id } = job.payload()?;
        let request = storefront::ReleaseReservationRequest {
            reservation_id: order_id.to_string(),
        };
        match self
            .storefront
            .call(request, |mut c, r| async move { c.release_reservation(r).await })
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) if status.code() == Code::FailedPrecondition => {
                tracing::error!(%order_id, reason = %reason(&status), "stock of an unpaid order cannot be released");
                Err(JobError::Fatal(status.message().to_owned()))
            }
            Err(status) => Err(storefront_failure(&status)),
        }
    }

    /// Asks the gateway for a refund a seller or admin requested; a processed refund counts on
    /// the order at once (the `refund.processed` webhook then changes nothing), a refused one is
    /// marked failed and no longer counts against what is left.
    pub async fn refund_request(self, job: Job) -> Result<(), JobError> {
        let RefundRequestJob { refund_id } = job.payload()?;
        let (row, order) = self.store.refund_target(refund_id).await.map_err(JobError::retry)?;
        if row.status != "requested" || row.gateway_refund_id.is_some() {
            return Ok(());
        }
        let Some(payment) = order.paid_by.clone() else {
            return Err(JobError::Fatal(format!("order {} has no payment to refund", order.id)));
        };
        let credentials = self
            .accounts
            .for_order(&self.store, order.payment_account_id)
            .await
            .map_err(JobError::retry)?;
        let started = std::time::Instant::now();
        let receipt = format!("rf_{}", refund_id.simple());
        let result = refund_once(
            &*self.gateway,
            &credentials,
            &payment,
            Some(row.amount_minor),
            &receipt,
            job.attempt > 1,
        )
        .await;
        self.record(GatewayCall {
            order_id: order.id,
            call: "refund",
            source: "refund",
            outcome: match &result {
                Ok(_) => "ok",
                Err(e) => e.outcome(),
            },
            gateway_ref: Some(
                result
                    .as_ref()
                    .map(|r| r.id.clone())
                    .unwrap_or_else(|_| payment.clone()),
            ),
            latency_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        })
        .await;
        match result {
            Ok(done) => {
                let processed = done.status == crate::gateway::GatewayRefundStatus::Processed;
                self.store
                    .refund_taken(refund_id, &done.id, processed)
                    .await
                    .map_err(JobError::retry)?;
                if processed {
                    self.store
                        .apply_reconciled(
                            &format!("rfnd:{}", done.id),
                            &order.gateway_order_id,
                            &Event::Refunded {
                                refund: done.id.clone(),
                                amount: done.amount,
                            },
                        )
                        .await
                        .map_err(JobError::retry)?;
                }
                tracing::info!(order_id = %order.id, %refund_id, gateway_refund_id = %done.id, "refund asked of the gateway");
                Ok(())
            }
            Err(e) if e.is_retryable() => Err(gateway_failure(e)),
            Err(e) => {
                tracing::error!(order_id = %order.id, %refund_id, error = %e, "the gateway refused the refund");
                self.store.refund_failed(refund_id).await.map_err(JobError::retry)?;
                Ok(())
            }
        }
    }

    /// Gives a payment back.
    async fn refund(self, job: Job) -> Result<(), JobError> {
        let RefundJob {
            order_id,
            payment_id,
            amount_minor,
            reason,
        } = job.payload()?;
        let credentials = self.credentials(order_id).await?;
        let started = std::time::Instant::now();
        let receipt: String = format!("auto_{payment_id}")
            .chars()
            .take(crate::gateway::MAX_RECEIPT_CHARS)
            .collect();
        let result = refund_once(
            &*self.gateway,
            &credentials,
            &payment_id,
            Some(amount_minor),
            &receipt,
            job.attempt > 1,
        )
        .await;
        self.record(GatewayCall {
            order_id,
            call: "refund",
            source: "webhook",
            outcome: match &result {
                Ok(_) => "ok",
                Err(e) => e.outcome(),
            },
            gateway_ref: Some(
                result
                    .as_ref()
                    .map(|r| r.id.clone())
                    .unwrap_or_else(|_| payment_id.clone()),
            ),
            latency_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        })
        .await;
        match result {
            Ok(refund) => {
                tracing::info!(%order_id, payment_id, refund_id = %refund.id, reason, "payment refunded");
                Ok(())
            }
            Err(e) => {
                if !e.is_retryable() {
                    tracing::error!(%order_id, payment_id, reason, error = %e, "refund refused by the gateway");
                }
                Err(gateway_failure(e))
            }
        }
    }
}
