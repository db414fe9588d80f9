//! The tonic implementation of `thali.notifications.v1.NotificationService` (each method acts
//! for the calling user only) and the service's event sink.
use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use thali_platform::{errors, server::principal};
use thali_proto::{events::v1::Event, notifications::v1 as pb};
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::{
    domain::{
        EmailPreference, Incoming, Notification, NotificationError, WebhookDelivery, WebhookEndpoint, check_endpoint,
    },
    store::NotificationStore,
    templates::Templates,
};

/// The notifications gRPC service and event sink.
#[derive(Clone)]
pub struct NotificationsGrpc {
    store: NotificationStore,
    templates: Arc<Templates>,
    /// Webhook endpoints may be http and private addresses (development and tests only).
    allow_insecure: bool,
}

impl NotificationsGrpc {
    pub fn new(store: NotificationStore, templates: Arc<Templates>, allow_insecure: bool) -> Self {
        Self {
            store,
            templates,
            allow_insecure,
        }
    }
}

impl From<NotificationError> for Status {
    fn from(err: NotificationError) -> Self {
        match err {
            NotificationError::Invalid(violations) => errors::invalid_argument(&violations),
            NotificationError::Unauthenticated => {
                errors::with_reason(Code::Unauthenticated, "UNAUTHENTICATED", err.to_string())
            }
            NotificationError::NotFound => {
                errors::with_reason(Code::NotFound, "NOTIFICATION_NOT_FOUND", err.to_string())
            }
            NotificationError::EndpointNotFound => {
                errors::with_reason(Code::NotFound, "WEBHOOK_ENDPOINT_NOT_FOUND", err.to_string())
            }
            NotificationError::DeliveryNotFound => {
                errors::with_reason(Code::NotFound, "WEBHOOK_DELIVERY_NOT_FOUND", err.to_string())
            }
            NotificationError::TooManyEndpoints => {
                errors::with_reason(Code::FailedPrecondition, "TOO_MANY_WEBHOOK_ENDPOINTS", err.to_string())
            }
            NotificationError::DeliveryInFlight => {
                errors::with_reason(Code::FailedPrecondition, "DELIVERY_IN_FLIGHT", err.to_string())
            }
            NotificationError::EndpointDisabled => {
                errors::with_reason(Code::FailedPrecondition, "WEBHOOK_ENDPOINT_DISABLED", err.to_string())
            }
            NotificationError::Unavailable => {
                errors::unavailable("DATABASE_UNAVAILABLE", err.to_string(), Duration::from_secs(2))
            }
            NotificationError::RecipientPending => {
                errors::unavailable("RECIPIENT_NOT_YET_KNOWN", err.to_string(), Duration::from_secs(2))
            }
            NotificationError::Internal(cause) => errors::internal(&cause),
        }
    }
}

/// The account the call acts for. Partner API keys and service tokens without a user are
/// refused: a user's notifications are read by that user.
fn caller<T>(request: &Request<T>) -> Result<Uuid, NotificationError> {
    let p = principal(request).ok_or(NotificationError::Unauthenticated)?;
    if p.api_key.is_some() {
        return Err(NotificationError::Unauthenticated);
    }
    Uuid::parse_str(&p.subject).map_err(|_| NotificationError::Unauthenticated)
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn notification_pb(n: Notification) -> pb::Notification {
    pb::Notification {
        id: n.id.to_string(),
        event_type: n.event_type,
        title: n.title,
        body: n.body,
        created_at: Some(timestamp(n.created_at)),
        read_at: n.read_at.map(timestamp),
    }
}

fn endpoint_pb(e: WebhookEndpoint) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        id: e.id.to_string(),
        url: e.url,
        event_types: e.event_types,
        state: e.state,
        disabled_reason: e.disabled_reason.unwrap_or_default(),
        created_at: Some(timestamp(e.created_at)),
        previous_secret_until: e.previous_secret_until.map(timestamp),
    }
}

fn delivery_pb(d: WebhookDelivery) -> pb::WebhookDelivery {
    pb::WebhookDelivery {
        id: d.id.to_string(),
        event_id: d.event_id.to_string(),
        event_type: d.event_type,
        state: d.state,
        created_at: Some(timestamp(d.created_at)),
        attempts: d
            .attempts
            .into_iter()
            .map(|a| pb::WebhookAttempt {
                attempted_at: Some(timestamp(a.attempted_at)),
                status_code: a.status_code.unwrap_or(0),
                latency_ms: a.latency_ms,
                error: a.error.unwrap_or_default(),
            })
            .collect(),
    }
}

/// An id in a path: not a UUID is not found, like any id that is not the caller's.
fn id_of(value: &str, missing: NotificationError) -> Result<Uuid, NotificationError> {
    Uuid::parse_str(value).map_err(|_| missing)
}

fn preferences_pb(prefs: Vec<EmailPreference>) -> pb::Preferences {
    pb::Preferences {
        email: prefs
            .into_iter()
            .map(|p| pb::EmailPreference {
                event_type: p.event_type,
                email: p.email,
                required: p.required,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::notification_service_server::NotificationService for NotificationsGrpc {
    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let account = caller(&request)?;
        let req = request.into_inner();
        let page = self
            .store
            .list(account, req.page_size, &req.page_token, req.unread_only)
            .await?;
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: page.notifications.into_iter().map(notification_pb).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn mark_read(&self, request: Request<pb::MarkReadRequest>) -> Result<Response<pb::MarkReadResponse>, Status> {
        let account = caller(&request)?;
        // Not a UUID: no such notification (the same answer as another account's id).
        let id = Uuid::parse_str(&request.get_ref().id).map_err(|_| NotificationError::NotFound)?;
        let n = self.store.mark_read(account, id).await?;
        Ok(Response::new(pb::MarkReadResponse {
            notification: Some(notification_pb(n)),
        }))
    }

    async fn unread_count(
        &self,
        request: Request<pb::UnreadCountRequest>,
    ) -> Result<Response<pb::UnreadCountResponse>, Status> {
        let account = caller(&request)?;
        let count = self.store.unread_count(account).await?;
        Ok(Response::new(pb::UnreadCountResponse {
            count: i64::try_from(count).unwrap_or(i64::MAX),
        }))
    }

    async fn get_preferences(
        &self,
        request: Request<pb::GetPreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        let account = caller(&request)?;
        Ok(Response::new(preferences_pb(self.store.preferences(account).await?)))
    }

    async fn update_preferences(
        &self,
        request: Request<pb::UpdatePreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        let account = caller(&request)?;
        let mut changes: Vec<(String, bool)> = request.into_inner().email.into_iter().collect();
        changes.sort();
        Ok(Response::new(preferences_pb(
            self.store.set_preferences(account, &changes).await?,
        )))
    }

    async fn create_webhook_endpoint(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpointWithSecret>, Status> {
        let account = caller(&request)?;
        let req = request.into_inner();
        let types = check_endpoint(&req.url, &req.event_types, self.allow_insecure)?;
        let (endpoint, secret) = self.store.create_endpoint(account, &req.url, &types).await?;
        Ok(Response::new(pb::WebhookEndpointWithSecret {
            endpoint: Some(endpoint_pb(endpoint)),
            secret,
        }))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Result<Response<pb::ListWebhookEndpointsResponse>, Status> {
        let account = caller(&request)?;
        let endpoints = self.store.endpoints(account).await?;
        Ok(Response::new(pb::ListWebhookEndpointsResponse {
            endpoints: endpoints.into_iter().map(endpoint_pb).collect(),
        }))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Result<Response<pb::DeleteWebhookEndpointResponse>, Status> {
        let account = caller(&request)?;
        let id = id_of(&request.get_ref().id, NotificationError::EndpointNotFound)?;
        self.store.delete_endpoint(account, id).await?;
        Ok(Response::new(pb::DeleteWebhookEndpointResponse {}))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::WebhookEndpointWithSecret>, Status> {
        let account = caller(&request)?;
        let id = id_of(&request.get_ref().id, NotificationError::EndpointNotFound)?;
        let (endpoint, secret) = self.store.rotate_secret(account, id).await?;
        Ok(Response::new(pb::WebhookEndpointWithSecret {
            endpoint: Some(endpoint_pb(endpoint)),
            secret,
        }))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let account = caller(&request)?;
        let req = request.into_inner();
        let endpoint = id_of(&req.endpoint_id, NotificationError::EndpointNotFound)?;
        let (deliveries, next_page_token) = self
            .store
            .deliveries(account, endpoint, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListWebhookDeliveriesResponse {
            deliveries: deliveries.into_iter().map(delivery_pb).collect(),
            next_page_token,
        }))
    }

    async fn resend_webhook_delivery(
        &self,
        request: Request<pb::ResendWebhookDeliveryRequest>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        let account = caller(&request)?;
        let req = request.into_inner();
        let endpoint = id_of(&req.endpoint_id, NotificationError::EndpointNotFound)?;
        let delivery = id_of(&req.delivery_id, NotificationError::DeliveryNotFound)?;
        let resent = self.store.resend(account, endpoint, delivery).await?;
        Ok(Response::new(delivery_pb(resent)))
    }
}

#[tonic::async_trait]
impl thali_platform::events::Sink for NotificationsGrpc {
    async fn take(&self, event: Event) -> Result<bool, Status> {
        if let Some(thali_proto::events::v1::event::Payload::AccountErased(p)) = &event.payload {
            let account = Uuid::parse_str(&p.account_id)
                .map_err(|_| Status::invalid_argument("account_erased.account_id is not a UUID"))?;
            let event_id =
                Uuid::parse_str(&event.id).map_err(|_| Status::invalid_argument("event.id is not a UUID"))?;
            return Ok(self.store.erase_account(event_id, account).await?);
        }
        let incoming = Incoming::from_event(&event)?;
        let new = self.store.take(&incoming, &self.templates).await?;
        tracing::debug!(event_id = %incoming.event_id, event_type = incoming.event_type, new, "event taken");
        Ok(new)
    }
}
