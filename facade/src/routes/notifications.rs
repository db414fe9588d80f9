//! Notification routes: the caller's in-app notifications, their preferences, and the caller's
//! partner webhook endpoints.
use axum::{Json, extract::State, http::StatusCode, response::Response};
use thali_proto::notifications::v1 as pb;

use super::{created, missing};
use crate::{
    FacadeState,
    dto::{self, CreateWebhookEndpoint, ListDeliveriesQuery, ListNotificationsQuery, UpdateNotificationPreferences},
    middleware::{ApiJson, ApiPath, ApiQuery, Caller},
    problem::Problem,
};

/// The caller's notifications, newest first.
#[utoipa::path(
    get, path = "/api/v1/notifications", tag = "notifications",
    params(ListNotificationsQuery),
    responses((status = 200, description = "One page of notifications", body = dto::NotificationPage)),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListNotificationsQuery>,
) -> Result<Json<dto::NotificationPage>, Problem> {
    let req = pb::ListNotificationsRequest {
        page_size: query.page_size.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
        unread_only: query.unread_only.unwrap_or(false),
    };
    let page = state
        .notifications
        .call(
            caller.request(req),
            |mut c, r| async move { c.list_notifications(r).await },
        )
        .await?
        .into_inner();
    Ok(Json(dto::NotificationPage {
        notifications: page.notifications.into_iter().map(Into::into).collect(),
        next_page_token: Some(page.next_page_token).filter(|t| !t.is_empty()),
    }))
}

/// Mark one of the caller's notifications read (again: no change).
#[utoipa::path(
    post, path = "/api/v1/notifications/{id}/read", tag = "notifications",
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, description = "The notification, read", body = dto::Notification)),
    security(("bearer" = []))
)]
pub async fn mark_read(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<dto::Notification>, Problem> {
    let res = state
        .notifications
        .call(caller.request(pb::MarkReadRequest { id }), |mut c, r| async move {
            c.mark_read(r).await
        })
        .await?;
    Ok(Json(
        res.into_inner()
            .notification
            .ok_or_else(|| missing("notification"))?
            .into(),
    ))
}

/// How many of the caller's notifications are unread.
#[utoipa::path(
    get, path = "/api/v1/notifications/unread-count", tag = "notifications",
    responses((status = 200, description = "The unread count", body = dto::UnreadCount)),
    security(("bearer" = []))
)]
pub async fn unread_count(State(state): State<FacadeState>, caller: Caller) -> Result<Json<dto::UnreadCount>, Problem> {
    let res = state
        .notifications
        .call(caller.request(pb::UnreadCountRequest {}), |mut c, r| async move {
            c.unread_count(r).await
        })
        .await?;
    Ok(Json(dto::UnreadCount {
        count: res.into_inner().count,
    }))
}

/// The caller's email preference for every event type.
#[utoipa::path(
    get, path = "/api/v1/notification-preferences", tag = "notifications",
    responses((status = 200, description = "The preferences", body = dto::NotificationPreferences)),
    security(("bearer" = []))
)]
pub async fn get_preferences(
    State(state): State<FacadeState>,
    caller: Caller,
) -> Result<Json<dto::NotificationPreferences>, Problem> {
    let res = state
        .notifications
        .call(caller.request(pb::GetPreferencesRequest {}), |mut c, r| async move {
            c.get_preferences(r).await
        })
        .await?;
    Ok(Json(res.into_inner().into()))
}

/// Turn email on or off per event type. Security messages cannot be turned off (400).
#[utoipa::path(
    put, path = "/api/v1/notification-preferences", tag = "notifications",
    request_body = UpdateNotificationPreferences,
    responses((status = 200, description = "The preferences after the change", body = dto::NotificationPreferences)),
    security(("bearer" = []))
)]
pub async fn put_preferences(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiJson(body): ApiJson<UpdateNotificationPreferences>,
) -> Result<Json<dto::NotificationPreferences>, Problem> {
    let req = pb::UpdatePreferencesRequest { email: body.email };
    let res = state
        .notifications
        .call(
            caller.request(req),
            |mut c, r| async move { c.update_preferences(r).await },
        )
        .await?;
    Ok(Json(res.into_inner().into()))
}

/// Register a partner webhook endpoint. The signing secret is in this answer only.
#[utoipa::path(
    post, path = "/api/v1/webhook-endpoints", tag = "webhooks",
    request_body = CreateWebhookEndpoint,
    responses((status = 201, description = "Registered", body = dto::WebhookEndpointWithSecret)),
    security(("bearer" = []))
)]
pub async fn create_endpoint(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateWebhookEndpoint>,
) -> Result<Response, Problem> {
    let req = pb::CreateWebhookEndpointRequest {
        url: body.url,
        event_types: body.event_types,
    };
    let made = state
        .notifications
        .call(caller.request(req), |mut c, r| async move {
            c.create_webhook_endpoint(r).await
        })
        .await?
        .into_inner();
    let made = dto::WebhookEndpointWithSecret::from(made);
    if made.endpoint.id.is_empty() {
        return Err(missing("endpoint"));
    }
    Ok(created(format!("/api/v1/webhook-endpoints/{}", made.endpoint.id), made))
}

/// The caller's webhook endpoints.
#[utoipa::path(
    get, path = "/api/v1/webhook-endpoints", tag = "webhooks",
    responses((status = 200, description = "The endpoints", body = dto::WebhookEndpointList)),
    security(("bearer" = []))
)]
pub async fn list_endpoints(
    State(state): State<FacadeState>,
    caller: Caller,
) -> Result<Json<dto::WebhookEndpointList>, Problem> {
    let res = state
        .notifications
        .call(
            caller.request(pb::ListWebhookEndpointsRequest {}),
            |mut c, r| async move { c.list_webhook_endpoints(r).await },
        )
        .await?;
    Ok(Json(dto::WebhookEndpointList {
        endpoints: res.into_inner().endpoints.into_iter().map(Into::into).collect(),
    }))
}

/// Delete one of the caller's endpoints, with its deliveries.
#[utoipa::path(
    delete, path = "/api/v1/webhook-endpoints/{id}", tag = "webhooks",
    params(("id" = String, Path, format = Uuid)),
    responses((status = 204, description = "Deleted")),
    security(("bearer" = []))
)]
pub async fn delete_endpoint(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, Problem> {
    state
        .notifications
        .call(
            caller.request(pb::DeleteWebhookEndpointRequest { id }),
            |mut c, r| async move { c.delete_webhook_endpoint(r).await },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new signing secret; the previous one keeps signing too for 24 hours.
#[utoipa::path(
    post, path = "/api/v1/webhook-endpoints/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, description = "The endpoint and its new secret", body = dto::WebhookEndpointWithSecret)),
    security(("bearer" = []))
)]
pub async fn rotate_secret(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<dto::WebhookEndpointWithSecret>, Problem> {
    let res = state
        .notifications
        .call(
            caller.request(pb::RotateWebhookSecretRequest { id }),
            |mut c, r| async move { c.rotate_webhook_secret(r).await },
        )
        .await?;
    Ok(Json(res.into_inner().into()))
}

/// An endpoint's deliveries, newest first, each with every attempt.
#[utoipa::path(
    get, path = "/api/v1/webhook-endpoints/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, format = Uuid), ListDeliveriesQuery),
    responses((status = 200, description = "One page of deliveries", body = dto::WebhookDeliveryPage)),
    security(("bearer" = []))
)]
pub async fn list_deliveries(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListDeliveriesQuery>,
) -> Result<Json<dto::WebhookDeliveryPage>, Problem> {
    let req = pb::ListWebhookDeliveriesRequest {
        endpoint_id: id,
        page_size: query.page_size.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
    };
    let page = state
        .notifications
        .call(caller.request(req), |mut c, r| async move {
            c.list_webhook_deliveries(r).await
        })
        .await?
        .into_inner();
    Ok(Json(dto::WebhookDeliveryPage {
        deliveries: page.deliveries.into_iter().map(Into::into).collect(),
        next_page_token: Some(page.next_page_token).filter(|t| !t.is_empty()),
    }))
}

/// Send a delivery that is not in flight again, on a fresh retry schedule.
#[utoipa::path(
    post, path = "/api/v1/webhook-endpoints/{id}/deliveries/{delivery_id}/resend", tag = "webhooks",
    params(("id" = String, Path, format = Uuid), ("delivery_id" = String, Path, format = Uuid)),
    responses((status = 202, description = "Queued again", body = dto::WebhookDelivery)),
    security(("bearer" = []))
)]
pub async fn resend_delivery(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath((id, delivery_id)): ApiPath<(String, String)>,
) -> Result<(StatusCode, Json<dto::WebhookDelivery>), Problem> {
    let req = pb::ResendWebhookDeliveryRequest {
        endpoint_id: id,
        delivery_id,
    };
    let res = state
        .notifications
        .call(caller.request(req), |mut c, r| async move {
            c.resend_webhook_delivery(r).await
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(res.into_inner().into())))
}
