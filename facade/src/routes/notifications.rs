//! Notification routes: the caller's in-app notifications and their preferences.
use axum::{Json, extract::State};
use thali_proto::notifications::v1 as pb;

use super::missing;
use crate::{
    FacadeState,
    dto::{self, ListNotificationsQuery, UpdateNotificationPreferences},
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
