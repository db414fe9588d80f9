//! The tonic implementation of `thali.notifications.v1.NotificationService` (each method acts
//! for the calling user only) and the service's event sink.
use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use thali_platform::{errors, server::principal};
use thali_proto::{events::v1::Event, notifications::v1 as pb};
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::{
    domain::{EmailPreference, Incoming, Notification, NotificationError},
    store::NotificationStore,
    templates::Templates,
};

/// The notifications gRPC service and event sink.
#[derive(Clone)]
pub struct NotificationsGrpc {
    store: NotificationStore,
    templates: Arc<Templates>,
}

impl NotificationsGrpc {
    pub fn new(store: NotificationStore, templates: Arc<Templates>) -> Self {
        Self { store, templates }
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
            NotificationError::Unavailable => {
                errors::unavailable("DATABASE_UNAVAILABLE", err.to_string(), Duration::from_secs(2))
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
}

#[tonic::async_trait]
impl thali_platform::events::Sink for NotificationsGrpc {
    async fn take(&self, event: Event) -> Result<bool, Status> {
        let incoming = Incoming::from_event(&event)?;
        let new = self.store.take(&incoming, &self.templates).await?;
        tracing::debug!(event_id = %incoming.event_id, event_type = incoming.event_type, new, "event taken");
        Ok(new)
    }
}
