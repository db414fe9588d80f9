//! Events between services (ADR 0011): the transactional outbox on the producer's side, the
//! relay that delivers over gRPC through the client stack, and the inbox on the receiver's side.
//!
//! - [`publish`] writes the event in the caller's transaction, as a relay job ordered by the
//!   event's aggregate: it exists exactly when the change that caused it committed, and one
//!   aggregate's events are delivered in the order they were written.
//! - The relay (a job kind added to the producer's worker by [`relay`]) calls
//!   `EventSink.Deliver` on every service subscribed to the event's type. Any failure retries the
//!   job (and so holds back that aggregate's later events) until it is dead; then the aggregate's
//!   later events go on and the dead-job alert fires.
//! - A receiver calls [`accept`] in the transaction of the event's effect: the (service, event id)
//!   primary key turns a redelivery into a no-op.
use std::{collections::HashMap, sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use prost::Message;
use sea_orm::{ConnectionTrait, DbErr};
use thali_proto::events::v1::{DeliverRequest, Event, event::Payload, event_sink_client::EventSinkClient};
use tonic::Code;

use crate::{
    client::{Client, GrpcChannel, Target},
    jobs::{JobError, NewJob, Queue, RetrySchedule, Worker},
};

/// Metadata naming the subscriber an event is delivered to: one process may host several
/// subscribers behind its one `EventSink` (see [`Sinks`]), and the service token is addressed to
/// this subscriber.
pub const SUBSCRIBER_HEADER: &str = "x-thali-subscriber";

/// The job kind that delivers one event to its subscribers.
pub const RELAY_KIND: &str = "events.relay";

/// The type name of a payload, as subscribers select it.
pub fn type_of(payload: &Payload) -> &'static str {
    match payload {
        Payload::AccountCreated(_) => "account.created",
        Payload::AccountLoginNewAddress(_) => "account.login_new_address",
        Payload::ProductOutOfStock(_) => "product.out_of_stock",
        Payload::AccountEmailVerificationRequested(_) => "account.email_verification_requested",
        Payload::AccountPasswordResetRequested(_) => "account.password_reset_requested",
        Payload::AccountRegistrationAttempted(_) => "account.registration_attempted",
        Payload::AccountErased(_) => "account.erased",
        Payload::BookingConfirmed(_) => "booking.confirmed",
        Payload::BookingCancelled(_) => "booking.cancelled",
        Payload::BookingReminder(_) => "booking.reminder",
        Payload::OrderPaid(_) => "order.paid",
        Payload::OrderFailed(_) => "order.failed",
        Payload::OrderExpired(_) => "order.expired",
        Payload::OrderRefunded(_) => "order.refunded",
        Payload::BookingDepositRefundRequested(_) => "booking.deposit_refund_requested",
        Payload::OrderPaymentReturned(_) => "order.payment_returned",
    }
}

/// A new event (UUIDv7 id) about `aggregate`, owned by `owner` (an account id, or empty).
pub fn new_event(
    producer: &str,
    aggregate: String,
    owner: Option<uuid::Uuid>,
    payload: Payload,
    now: DateTime<Utc>,
) -> Event {
    Event {
        id: uuid::Uuid::now_v7().to_string(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: now.timestamp(),
            nanos: i32::try_from(now.timestamp_subsec_nanos()).unwrap_or(0),
        }),
        aggregate,
        r#type: type_of(&payload).to_owned(),
        producer: producer.to_owned(),
        owner_account_id: owner.map(|o| o.to_string()).unwrap_or_default(),
        payload: Some(payload),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RelayPayload {
    /// The encoded `Event`, base64.
    event: String,
}

/// The relay jobs of one aggregate's events are ordered under this key.
pub fn ordering_key(aggregate: &str) -> String {
    format!("event:{aggregate}")
}

/// Writes `event` on `conn` — the transaction of the change that caused it.
pub async fn publish<C: ConnectionTrait>(conn: &C, queue: &Queue, event: &Event) -> Result<(), DbErr> {
    let payload = RelayPayload {
        event: STANDARD.encode(event.encode_to_vec()),
    };
    let job = NewJob::new(RELAY_KIND, &payload).ordered_by(ordering_key(&event.aggregate));
    queue.enqueue(conn, job).await?;
    Ok(())
}

/// A subscribing service: its name and its client.
type Subscriber = (Arc<str>, Client<EventSinkClient<GrpcChannel>>);

/// Which services take which event types, and how to reach them.
#[derive(Clone, Default)]
pub struct Subscribers {
    by_type: HashMap<String, Vec<Subscriber>>,
}

impl Subscribers {
    /// `name` (reached through `target`) takes events of `types`.
    pub fn subscribe(mut self, name: &str, target: Target, types: &[&str]) -> Self {
        let client = Client::new(target, EventSinkClient::new);
        for t in types {
            self.by_type
                .entry((*t).to_owned())
                .or_default()
                .push((name.into(), client.clone()));
        }
        self
    }

    fn of(&self, event_type: &str) -> &[Subscriber] {
        self.by_type.get(event_type).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// The relay's retry schedule: 12 attempts, the wait from 1 s doubling to 15 min (about 32 min
/// of waiting in all) before the event is dead and its aggregate's later events go on.
pub fn relay_schedule() -> RetrySchedule {
    RetrySchedule::exponential(12, Duration::from_secs(1), Duration::from_secs(900))
        .with_timeout(Duration::from_secs(30))
}

/// Adds the relay to a producer's worker.
pub fn relay(worker: Worker, subscribers: Subscribers) -> Worker {
    relay_with_schedule(worker, subscribers, relay_schedule())
}

/// [`relay`] with another schedule (tests).
pub fn relay_with_schedule(worker: Worker, subscribers: Subscribers, schedule: RetrySchedule) -> Worker {
    let subscribers = Arc::new(subscribers);
    worker.handle(RELAY_KIND, schedule, move |job| {
        let subscribers = subscribers.clone();
        async move {
            let payload: RelayPayload = job.payload()?;
            let bytes = STANDARD
                .decode(payload.event)
                .map_err(|e| JobError::Fatal(format!("event is not base64: {e}")))?;
            let event = Event::decode(bytes.as_slice()).map_err(|e| JobError::Fatal(format!("event does not decode: {e}")))?;
            for (name, client) in subscribers.of(&event.r#type) {
                let mut request = tonic::Request::new(DeliverRequest { event: Some(event.clone()) });
                let value = name
                    .parse()
                    .map_err(|_| JobError::Fatal(format!("subscriber name {name:?} is not a header value")))?;
                request.metadata_mut().insert(SUBSCRIBER_HEADER, value);
                let delivered = client
                    .call(request, |mut c, r| async move { c.deliver(r).await })
                    .await;
                match delivered {
                    Ok(_) => {
                        tracing::debug!(event_id = %event.id, event_type = %event.r#type, subscriber = %name, "event delivered");
                    }
                    // The subscriber will never take this event: trying again cannot help.
                    Err(s) if matches!(s.code(), Code::InvalidArgument | Code::Unimplemented) => {
                        return Err(JobError::Fatal(format!("{name} refused {}: {s}", event.r#type)));
                    }
                    Err(s) => {
                        return Err(JobError::retry(format!(
                            "{name} did not take {} {}: {:?} {}",
                            event.r#type,
                            event.id,
                            s.code(),
                            s.message()
                        )));
                    }
                }
            }
            Ok(())
        }
    })
}

/// A service's handling of the events it subscribes to. `take` answers whether the event was
/// new (false: it had been taken before and nothing was done again). An error the relay must
/// not retry is INVALID_ARGUMENT; anything else is tried again.
#[tonic::async_trait]
pub trait Sink: Send + Sync + 'static {
    async fn take(&self, event: Event) -> Result<bool, tonic::Status>;
}

/// The `EventSink` a process serves: it hands each delivery to the subscriber named in
/// [`SUBSCRIBER_HEADER`]. Only Thali services may deliver (a user's token cannot inject events).
#[derive(Clone, Default)]
pub struct Sinks {
    by_name: HashMap<String, Arc<dyn Sink>>,
}

impl Sinks {
    /// Hands deliveries for `name` to `sink`.
    pub fn with(mut self, name: &str, sink: Arc<dyn Sink>) -> Self {
        self.by_name.insert(name.to_owned(), sink);
        self
    }

    /// Whether any subscriber is hosted.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The gRPC service.
    pub fn server(self) -> thali_proto::events::v1::event_sink_server::EventSinkServer<Self> {
        thali_proto::events::v1::event_sink_server::EventSinkServer::new(self)
    }
}

#[tonic::async_trait]
impl thali_proto::events::v1::event_sink_server::EventSink for Sinks {
    async fn deliver(
        &self,
        request: tonic::Request<DeliverRequest>,
    ) -> Result<tonic::Response<thali_proto::events::v1::DeliverResponse>, tonic::Status> {
        if request.extensions().get::<crate::server::ServiceCaller>().is_none() {
            return Err(tonic::Status::permission_denied("only Thali services deliver events"));
        }
        let name = request
            .metadata()
            .get(SUBSCRIBER_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let sink = self
            .by_name
            .get(&name)
            .ok_or_else(|| tonic::Status::unimplemented(format!("no subscriber {name:?} here")))?;
        let event = request
            .into_inner()
            .event
            .ok_or_else(|| tonic::Status::invalid_argument("a delivery carries an event"))?;
        let new = sink.take(event).await?;
        Ok(tonic::Response::new(thali_proto::events::v1::DeliverResponse {
            duplicate: !new,
        }))
    }
}

/// Records that `service` took `event` (inside the transaction of its effect). False when it had
/// taken it before: the caller then does nothing again.
pub async fn accept<C: ConnectionTrait>(
    conn: &C,
    service: &str,
    event_id: uuid::Uuid,
    event_type: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let stmt = crate::db::statement(
        conn.get_database_backend(),
        "INSERT INTO inbox_events (service, event_id, event_type, received_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
        vec![service.into(), event_id.into(), event_type.into(), now.into()],
    );
    let done = conn.execute_raw(stmt).await?;
    Ok(done.rows_affected() == 1)
}

/// Housekeeping of the inbox: deletes `service`'s records of events taken before `before`.
/// Keep them longer than any redelivery can come (the relay gives up after about 32 minutes; an
/// operator may retry a dead relay job later, so days, not minutes).
pub async fn prune_inbox<C: ConnectionTrait>(conn: &C, service: &str, before: DateTime<Utc>) -> Result<u64, DbErr> {
    let stmt = crate::db::statement(
        conn.get_database_backend(),
        "DELETE FROM inbox_events WHERE service = $1 AND received_at < $2",
        vec![service.into(), before.into()],
    );
    Ok(conn.execute_raw(stmt).await?.rows_affected())
}

#[cfg(test)]
mod tests {
    use thali_proto::events::v1::ProductOutOfStock;

    use super::*;

    #[test]
    fn an_event_carries_its_type_owner_and_a_time_ordered_id() {
        let owner = uuid::Uuid::now_v7();
        let first = new_event(
            "storefront",
            "creator:1".into(),
            Some(owner),
            Payload::ProductOutOfStock(ProductOutOfStock::default()),
            Utc::now(),
        );
        let second = new_event(
            "storefront",
            "creator:1".into(),
            None,
            Payload::ProductOutOfStock(ProductOutOfStock::default()),
            Utc::now(),
        );
        assert_eq!(first.r#type, "product.out_of_stock");
        assert_eq!(first.owner_account_id, owner.to_string());
        assert_eq!(second.owner_account_id, "");
        let (a, b) = (
            uuid::Uuid::parse_str(&first.id).unwrap(),
            uuid::Uuid::parse_str(&second.id).unwrap(),
        );
        assert_eq!(a.get_version_num(), 7);
        assert!(a < b, "UUIDv7 ids sort by time");
    }
}
