//! A booking service behind the platform server stack on an ephemeral port, and helpers.
#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use chrono::{Duration as Days, Utc};
use thali_booking::{Booking, grpc::BookingGrpc};
use thali_booking::{
    domain::{NewBooking, NewRestaurant, NewTable, PolicyMinutes, local_start, parse_hours},
    store::BookingStore,
};
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::testing;
use thali_platform::{
    auth::{Signer, Verifier, ensure_key_pair},
    cache::Redis,
    client::{GrpcChannel, ServiceIdentity, endpoint_channel},
    server::{AuthPolicy, Health, serve},
};
use thali_proto::booking::v1::{
    self as pb, booking_service_client::BookingServiceClient, booking_service_server::BookingServiceServer,
};
use tokio::sync::oneshot;
use tonic::{Request, service::Routes};
use tonic_types::StatusExt;
use uuid::Uuid;

pub struct Harness {
    pub signer: Arc<Signer>,
    url: String,
    _stop: oneshot::Sender<()>,
}

impl Harness {
    /// On `db` (already migrated), caching in Redis too when given, under `tenant`; tokens are
    /// signed with the key pair in `keys` (replicas share it).
    pub async fn start(
        db: sea_orm::DatabaseConnection,
        redis: Option<Redis>,
        tenant: &str,
        keys: &std::path::Path,
    ) -> Self {
        ensure_key_pair(keys).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let health = Health::new();
        health.serving::<BookingServiceServer<BookingGrpc>>().await;
        let booking = Booking::new(db, redis, tenant, None).await;
        let routes = Routes::new(booking.server());
        let (stop, stopped) = oneshot::channel::<()>();
        let verifier = Verifier::load(keys).unwrap();
        tokio::spawn(async move {
            serve(listener, routes, &health, AuthPolicy::new(verifier), 1_000, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            signer: Arc::new(Signer::load(keys).unwrap()),
            url,
            _stop: stop,
        }
    }

    pub fn client(&self) -> BookingServiceClient<GrpcChannel> {
        let me = ServiceIdentity {
            name: "test".into(),
            signer: self.signer.clone(),
        };
        BookingServiceClient::new(endpoint_channel(&self.url, "booking", &me, Duration::from_secs(5)).unwrap())
    }

    /// A token for account `id` with `role`.
    pub fn token(&self, id: uuid::Uuid, role: &str) -> String {
        self.signer
            .mint(&id.to_string(), &[role.into()], Duration::from_secs(600))
    }
}

pub fn as_user<T>(token: &str, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

pub fn reason(status: &tonic::Status) -> String {
    status.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Every day 08:00–23:00.
pub fn every_day() -> Vec<pb::OpeningHours> {
    [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ]
    .iter()
    .map(|d| pb::OpeningHours {
        weekday: (*d).into(),
        opens: "08:00".into(),
        closes: "23:00".into(),
    })
    .collect()
}

pub struct Place {
    pub store: BookingStore,
    pub backend: &'static str,
    pub db: sea_orm::DatabaseConnection,
    pub restaurant: Uuid,
    pub owner: Uuid,
}

/// A restaurant in Kolkata open every day 08:00–23:00 with `tables` (min, max seats).
pub async fn places(tables: &[(i32, i32)]) -> Vec<Place> {
    places_with(tables, PolicyMinutes::default()).await
}

/// [`places`] with its booking rules.
pub async fn places_with(tables: &[(i32, i32)], policy: PolicyMinutes) -> Vec<Place> {
    let mut out = Vec::new();
    for t in testing::all().await {
        Migrator::up(&t.db, None).await.unwrap();
        let store = BookingStore::new(t.db.clone());
        let owner = Uuid::now_v7();
        let new = NewRestaurant::parse(
            "Chai Point",
            "Bengaluru",
            &["south indian".into()],
            "12 MG Road",
            "Asia/Kolkata",
            policy,
        )
        .unwrap();
        let restaurant = store.create_restaurant(owner, &new, None, Utc::now()).await.unwrap().id;
        for (i, (min, max)) in tables.iter().enumerate() {
            let table = NewTable::parse(&format!("T{i}"), *min, *max).unwrap();
            store.add_table(owner, restaurant, &table).await.unwrap();
        }
        let days = [
            "monday",
            "tuesday",
            "wednesday",
            "thursday",
            "friday",
            "saturday",
            "sunday",
        ];
        let hours: Vec<(&str, &str, &str)> = days.iter().map(|d| (*d, "08:00", "23:00")).collect();
        store
            .set_hours(owner, restaurant, &parse_hours(&hours).unwrap())
            .await
            .unwrap();
        out.push(Place {
            store,
            backend: t.backend,
            db: t.db,
            restaurant,
            owner,
        });
    }
    out
}

/// `HH:MM` local, three days from now.
pub fn at(time: &str) -> chrono::DateTime<Utc> {
    let tz = thali_booking::domain::parse_zone("Asia/Kolkata").unwrap();
    let day = (Utc::now() + Days::days(3)).with_timezone(&tz).date_naive();
    local_start(tz, &format!("{}T{time}", day.format("%Y-%m-%d"))).unwrap()
}

pub fn request(restaurant: Uuid, party: i32, start: chrono::DateTime<Utc>) -> NewBooking {
    NewBooking {
        restaurant_id: restaurant,
        party_size: party,
        starts_at: start,
        guest_name: "Asha".into(),
        phone: "+91 98450 00000".into(),
        note: String::new(),
    }
}

/// The event types relayed for `booking`, in the order written, and the run time of its
/// reminder job (if any).
pub async fn outbox(db: &sea_orm::DatabaseConnection, booking: Uuid) -> (Vec<String>, Option<chrono::DateTime<Utc>>) {
    use base64::Engine;
    use prost::Message;
    use sea_orm::ConnectionTrait;
    let rows = db
        .query_all_raw(thali_platform::db::statement(
            db.get_database_backend(),
            "SELECT payload FROM jobs WHERE service = 'booking' AND kind = 'events.relay' AND ordering_key = $1 \
             ORDER BY id",
            vec![format!("event:booking:{booking}").into()],
        ))
        .await
        .unwrap();
    let types = rows
        .iter()
        .map(|r| {
            let payload: String = r.try_get("", "payload").unwrap();
            let json: serde_json::Value = serde_json::from_str(&payload).unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(json["event"].as_str().unwrap())
                .unwrap();
            let event = thali_proto::events::v1::Event::decode(&bytes[..]).unwrap();
            event.r#type
        })
        .collect();
    let remind = db
        .query_one_raw(thali_platform::db::statement(
            db.get_database_backend(),
            "SELECT run_at FROM jobs WHERE service = 'booking' AND kind = 'booking.remind' AND unique_key = $1",
            vec![format!("remind:{booking}").into()],
        ))
        .await
        .unwrap()
        .map(|r| r.try_get::<chrono::DateTime<Utc>>("", "run_at").unwrap());
    (types, remind)
}
