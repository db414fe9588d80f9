//! A booking service behind the platform server stack on an ephemeral port, and helpers.
#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use thali_booking::{Booking, grpc::BookingGrpc};
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
        let booking = Booking::new(db, redis, tenant).await;
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
