//! The booking service's job worker: the day-before reminders (each a `booking.reminder` event,
//! relayed to notifications), deposits (asking payments for a waiting booking's order; giving
//! the table back when payments never said it was paid) and hourly housekeeping of idempotency
//! records and the queue.
use std::time::Duration;

use thali_platform::{
    client::{Client, GrpcChannel},
    jobs::{Job, JobError, Queue, RetrySchedule, Worker},
};
use thali_proto::{
    common::v1::Money,
    payments::v1::{CreateDepositOrderRequest, payments_service_client::PaymentsServiceClient},
};
use tonic::Code;
use uuid::Uuid;

use crate::{
    domain::DEPOSIT_CURRENCY,
    store::{BookingStore, DepositJob, RELEASE_UNPAID, REMIND, REQUEST_DEPOSIT, Remind},
};

/// The service's name on the job queue.
pub const SERVICE: &str = "booking";

pub const PRUNE_IDEMPOTENCY: &str = "booking.prune_idempotency";

/// Booking's client of the payments service.
pub type PaymentsClient = Client<PaymentsServiceClient<GrpcChannel>>;

/// A reminder is retried for about an hour; past that it is dead (and the dead-job alert fires).
pub fn remind_schedule() -> RetrySchedule {
    RetrySchedule::exponential(8, Duration::from_secs(5), Duration::from_secs(900))
}

/// Asking for a deposit order is retried for the booking's hold (about 15 minutes); past that
/// the table goes back anyway.
pub fn deposit_schedule() -> RetrySchedule {
    RetrySchedule::exponential(8, Duration::from_secs(2), Duration::from_secs(300))
        .with_timeout(Duration::from_secs(30))
}

/// The booking job worker; deposits are asked of `payments`.
pub fn job_worker(store: BookingStore, queue: Queue, payments: Option<PaymentsClient>) -> Worker {
    let prune = store.clone();
    let (ask, release) = (store.clone(), store.clone());
    Worker::new(store.connection().clone(), queue)
        .with_housekeeping()
        .prune_every(PRUNE_IDEMPOTENCY, Duration::from_secs(3600), move |now| {
            let store = prune.clone();
            async move { store.prune_idempotency(now).await }
        })
        .handle(REMIND, remind_schedule(), move |job| remind(store.clone(), job))
        .handle(REQUEST_DEPOSIT, deposit_schedule(), move |job| {
            let (store, payments) = (ask.clone(), payments.clone());
            async move {
                let DepositJob { booking_id } = job.payload()?;
                let payments = payments.ok_or_else(|| JobError::retry("no payments service is configured"))?;
                request_deposit(&store, &payments, booking_id).await.map(|_| ())
            }
        })
        .handle(RELEASE_UNPAID, remind_schedule(), move |job| {
            let store = release.clone();
            async move {
                let DepositJob { booking_id } = job.payload()?;
                let now = store.now();
                let released = store.release_unpaid(booking_id, now).await.map_err(JobError::retry)?;
                if released.is_some() {
                    tracing::info!(%booking_id, "deposit never paid: table released");
                }
                Ok(())
            }
        })
}

/// Asks payments for booking `id`'s deposit order (payments answers the same order however often
/// it is asked: the booking id is the key) and records it. None when the booking needs none now.
pub async fn request_deposit(
    store: &BookingStore,
    payments: &PaymentsClient,
    id: Uuid,
) -> Result<Option<Uuid>, JobError> {
    let Some(ask) = store.deposit_ask(id).await.map_err(JobError::retry)? else {
        return Ok(None);
    };
    let request = CreateDepositOrderRequest {
        booking_id: ask.booking_id.to_string(),
        buyer_subject: ask.guest.to_string(),
        seller_subject: ask.owner.to_string(),
        restaurant_name: ask.restaurant_name.clone(),
        guests: ask.guests,
        per_guest: Some(Money {
            amount_minor: ask.per_guest_minor,
            currency: DEPOSIT_CURRENCY.to_owned(),
        }),
    };
    let answer = payments
        .call(request, |mut c, r| async move { c.create_deposit_order(r).await })
        .await;
    let order = match answer {
        Ok(res) => res
            .into_inner()
            .order
            .ok_or_else(|| JobError::retry("payments answered no order"))?,
        // Payments will never take this request as it is.
        Err(s) if matches!(s.code(), Code::InvalidArgument | Code::PermissionDenied) => {
            return Err(JobError::Fatal(format!("payments refused the deposit order: {s}")));
        }
        Err(s) => return Err(JobError::retry(format!("payments: {:?} {}", s.code(), s.message()))),
    };
    let order_id = Uuid::parse_str(&order.id).map_err(|_| JobError::Fatal("payments sent a bad order id".into()))?;
    store.set_deposit_order(id, order_id).await.map_err(JobError::retry)?;
    tracing::info!(booking_id = %id, %order_id, "deposit order created");
    Ok(Some(order_id))
}

/// Sends one booking's reminder. A booking cancelled since, or reminded already (a job run
/// twice), sends nothing.
async fn remind(store: BookingStore, job: Job) -> Result<(), JobError> {
    let Remind { booking_id } = job.payload()?;
    let sent = store.remind(booking_id).await.map_err(JobError::retry)?;
    tracing::info!(%booking_id, sent, "booking reminder");
    Ok(())
}
