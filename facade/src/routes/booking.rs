//! Booking routes: restaurants and their set-up (owners), search and availability (public),
//! reservations (guests).
use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use thali_proto::booking::v1 as pb;

use super::{created, idempotency_key, missing};
use crate::{
    FacadeState,
    dto::booking::{
        self as dto, AvailabilityQuery, CancelBooking, CreateBooking, CreateClosure, CreateRestaurant, CreateTable,
        Hours, ListBookingsQuery, SearchQuery, UpdateRestaurant, UpdateTable,
    },
    middleware::{ApiJson, ApiPath, ApiQuery, Caller, request_as},
    problem::Problem,
};

/// Open a restaurant; the caller (role `restaurant_owner`) becomes its owner.
#[utoipa::path(
    post, path = "/api/v1/restaurants", tag = "restaurants",
    request_body = CreateRestaurant,
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[\x21-\x7E]{1,200}$", description = "Same key and body: the same restaurant is returned")),
    responses(
        (status = 201, description = "Created", body = dto::Restaurant),
        (status = 403, description = "RESTAURANT_OWNER_ROLE_REQUIRED"),
    ),
    security(("bearer" = []))
)]
pub async fn create_restaurant(
    State(state): State<FacadeState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateRestaurant>,
) -> Result<Response, Problem> {
    let req = pb::CreateRestaurantRequest {
        name: body.name,
        city: body.city,
        cuisines: body.cuisines,
        address: body.address,
        time_zone: body.time_zone,
        policy: body.policy.map(Into::into),
        idempotency_key: idempotency_key(&headers)?,
    };
    let r = state
        .booking
        .call(
            caller.request(req),
            |mut c, r| async move { c.create_restaurant(r).await },
        )
        .await?
        .into_inner()
        .restaurant;
    let r = dto::Restaurant::from(r.ok_or_else(|| missing("restaurant"))?);
    Ok(created(format!("/api/v1/restaurants/{}", r.id), r))
}

/// A restaurant with its opening hours (public).
#[utoipa::path(
    get, path = "/api/v1/restaurants/{id}", tag = "restaurants",
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, description = "The restaurant", body = dto::Restaurant))
)]
pub async fn get_restaurant(
    State(state): State<FacadeState>,
    caller: Option<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<dto::Restaurant>, Problem> {
    let req = request_as(&caller, pb::GetRestaurantRequest { restaurant_id: id });
    let r = state
        .booking
        .call(req, |mut c, r| async move { c.get_restaurant(r).await })
        .await?
        .into_inner()
        .restaurant;
    Ok(Json(r.ok_or_else(|| missing("restaurant"))?.into()))
}

/// Change a restaurant (owner only).
#[utoipa::path(
    patch, path = "/api/v1/restaurants/{id}", tag = "restaurants",
    params(("id" = String, Path, format = Uuid)),
    request_body = UpdateRestaurant,
    responses((status = 200, description = "The updated restaurant", body = dto::Restaurant)),
    security(("bearer" = []))
)]
pub async fn update_restaurant(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateRestaurant>,
) -> Result<Json<dto::Restaurant>, Problem> {
    let req = pb::UpdateRestaurantRequest {
        restaurant_id: id,
        name: body.name,
        city: body.city,
        cuisines: body.cuisines.map(|cuisines| pb::CuisineList { cuisines }),
        address: body.address,
        time_zone: body.time_zone,
        policy: body.policy.map(Into::into),
    };
    let r = state
        .booking
        .call(
            caller.request(req),
            |mut c, r| async move { c.update_restaurant(r).await },
        )
        .await?
        .into_inner()
        .restaurant;
    Ok(Json(r.ok_or_else(|| missing("restaurant"))?.into()))
}

/// Add a table (owner only).
#[utoipa::path(
    post, path = "/api/v1/restaurants/{id}/tables", tag = "restaurants",
    params(("id" = String, Path, format = Uuid)),
    request_body = CreateTable,
    responses(
        (status = 201, description = "Created", body = dto::Table),
        (status = 409, description = "LABEL_TAKEN"),
    ),
    security(("bearer" = []))
)]
pub async fn create_table(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CreateTable>,
) -> Result<Response, Problem> {
    let req = pb::CreateTableRequest {
        restaurant_id: id,
        label: body.label,
        min_seats: body.min_seats,
        max_seats: body.max_seats,
    };
    let t = state
        .booking
        .call(caller.request(req), |mut c, r| async move { c.create_table(r).await })
        .await?
        .into_inner()
        .table;
    let t = dto::Table::from(t.ok_or_else(|| missing("table"))?);
    Ok(created(format!("/api/v1/tables/{}", t.id), t))
}

/// A restaurant's tables (owner only).
#[utoipa::path(
    get, path = "/api/v1/restaurants/{id}/tables", tag = "restaurants",
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, description = "The tables, by label", body = dto::TableList)),
    security(("bearer" = []))
)]
pub async fn list_tables(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<dto::TableList>, Problem> {
    let req = pb::ListTablesRequest { restaurant_id: id };
    let res = state
        .booking
        .call(caller.request(req), |mut c, r| async move { c.list_tables(r).await })
        .await?
        .into_inner();
    Ok(Json(dto::TableList {
        tables: res.tables.into_iter().map(Into::into).collect(),
    }))
}

/// Change a table; `"active": false` stops new bookings and keeps existing ones (owner only).
#[utoipa::path(
    patch, path = "/api/v1/tables/{id}", tag = "restaurants",
    params(("id" = String, Path, format = Uuid)),
    request_body = UpdateTable,
    responses((status = 200, description = "The updated table", body = dto::Table)),
    security(("bearer" = []))
)]
pub async fn update_table(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateTable>,
) -> Result<Json<dto::Table>, Problem> {
    let req = pb::UpdateTableRequest {
        table_id: id,
        label: body.label,
        min_seats: body.min_seats,
        max_seats: body.max_seats,
        active: body.active,
    };
    let t = state
        .booking
        .call(caller.request(req), |mut c, r| async move { c.update_table(r).await })
        .await?
        .into_inner()
        .table;
    Ok(Json(t.ok_or_else(|| missing("table"))?.into()))
}

/// Remove a table (owner only). A table with bookings still to come answers 400
/// `TABLE_HAS_BOOKINGS`: deactivate it instead.
#[utoipa::path(
    delete, path = "/api/v1/tables/{id}", tag = "restaurants",
    params(("id" = String, Path, format = Uuid)),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "TABLE_HAS_BOOKINGS"),
    ),
    security(("bearer" = []))
)]
pub async fn delete_table(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, Problem> {
    let req = pb::DeleteTableRequest { table_id: id };
    state
        .booking
        .call(caller.request(req), |mut c, r| async move { c.delete_table(r).await })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Replace the week's opening hours (owner only).
#[utoipa::path(
    put, path = "/api/v1/restaurants/{id}/hours", tag = "restaurants",
    params(("id" = String, Path, format = Uuid)),
    request_body = Hours,
    responses((status = 200, description = "The week's hours", body = Hours)),
    security(("bearer" = []))
)]
pub async fn set_hours(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Hours>,
) -> Result<Json<Hours>, Problem> {
    let req = pb::SetHoursRequest {
        restaurant_id: id,
        hours: body
            .hours
            .into_iter()
            .map(|h| pb::OpeningHours {
                weekday: h.weekday,
                opens: h.opens,
                closes: h.closes,
            })
            .collect(),
    };
    let res = state
        .booking
        .call(caller.request(req), |mut c, r| async move { c.set_hours(r).await })
        .await?
        .into_inner();
    Ok(Json(Hours {
        hours: res.hours.into_iter().map(Into::into).collect(),
    }))
}

/// Close the restaurant for a range of local dates (owner only).
#[utoipa::path(
    post, path = "/api/v1/restaurants/{id}/closures", tag = "restaurants",
    params(("id" = String, Path, format = Uuid)),
    request_body = CreateClosure,
    responses((status = 201, description = "Created", body = dto::Closure)),
    security(("bearer" = []))
)]
pub async fn add_closure(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CreateClosure>,
) -> Result<Response, Problem> {
    let req = pb::AddClosureRequest {
        restaurant_id: id.clone(),
        from: body.from.clone(),
        to: body.to.clone(),
        reason: body.reason.clone(),
    };
    let res = state
        .booking
        .call(caller.request(req), |mut c, r| async move { c.add_closure(r).await })
        .await?
        .into_inner();
    let closure = dto::Closure {
        id: res.closure_id,
        from: body.from,
        to: body.to,
        reason: body.reason.trim().to_owned(),
    };
    Ok(created(format!("/api/v1/restaurants/{id}"), closure))
}

/// Search: restaurants in a city with a table free for the party within an hour of the time,
/// nearest free start first (public, cached).
#[utoipa::path(
    get, path = "/api/v1/restaurants", tag = "restaurants",
    params(SearchQuery),
    responses((status = 200, description = "One page of results", body = dto::SearchPage))
)]
pub async fn search(
    State(state): State<FacadeState>,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<Json<dto::SearchPage>, Problem> {
    let req = pb::SearchRestaurantsRequest {
        city: query.city,
        cuisine: query.cuisine.unwrap_or_default(),
        party_size: query.party_size,
        date: query.date,
        time: query.time.unwrap_or_default(),
        page_size: query.page_size.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
    };
    let res = state
        .booking
        .call(req, |mut c, r| async move { c.search_restaurants(r).await })
        .await?
        .into_inner();
    let mut results = Vec::with_capacity(res.results.len());
    for r in res.results {
        results.push(dto::SearchResult {
            restaurant: r.restaurant.ok_or_else(|| missing("restaurant"))?.into(),
            slots: r.slots.into_iter().map(Into::into).collect(),
        });
    }
    Ok(Json(dto::SearchPage {
        results,
        next_page_token: Some(res.next_page_token).filter(|t| !t.is_empty()),
    }))
}

/// A day's free starts for a party (public, cached).
#[utoipa::path(
    get, path = "/api/v1/restaurants/{id}/availability", tag = "restaurants",
    params(("id" = String, Path, format = Uuid), AvailabilityQuery),
    responses((status = 200, description = "The free starts", body = dto::Availability))
)]
pub async fn availability(
    State(state): State<FacadeState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<AvailabilityQuery>,
) -> Result<Json<dto::Availability>, Problem> {
    let req = pb::GetAvailabilityRequest {
        restaurant_id: id,
        date: query.date,
        party_size: query.party_size,
    };
    let res = state
        .booking
        .call(req, |mut c, r| async move { c.get_availability(r).await })
        .await?
        .into_inner();
    Ok(Json(dto::Availability {
        restaurant_id: res.restaurant_id,
        date: res.date,
        time_zone: res.time_zone,
        party_size: query.party_size,
        slots: res.slots.into_iter().map(Into::into).collect(),
    }))
}

/// Reserve the smallest free table that fits. A lost race answers 409 `SLOT_TAKEN` when no
/// other fitting table is free.
#[utoipa::path(
    post, path = "/api/v1/bookings", tag = "bookings",
    request_body = CreateBooking,
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[\x21-\x7E]{1,200}$", description = "Same key and body: the same booking is returned")),
    responses(
        (status = 201, description = "Confirmed", body = dto::Booking),
        (status = 400, description = "OUTSIDE_HOURS, NOT_A_SLOT, TOO_SOON, TOO_FAR, PARTY_TOO_LARGE, or an invalid field"),
        (status = 409, description = "SLOT_TAKEN, or IDEMPOTENCY_KEY_REUSED"),
    ),
    security(("bearer" = []))
)]
pub async fn create_booking(
    State(state): State<FacadeState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateBooking>,
) -> Result<Response, Problem> {
    let req = pb::CreateBookingRequest {
        restaurant_id: body.restaurant_id,
        party_size: body.party_size,
        start: body.start,
        guest_name: body.guest_name,
        phone: body.phone,
        note: body.note,
        idempotency_key: idempotency_key(&headers)?,
    };
    let b = state
        .booking
        .call(caller.request(req), |mut c, r| async move { c.create_booking(r).await })
        .await?
        .into_inner()
        .booking;
    let b = dto::Booking::from(b.ok_or_else(|| missing("booking"))?);
    Ok(created(format!("/api/v1/bookings/{}", b.id), b))
}

/// A booking: its guest, the restaurant's owner or an admin; anyone else gets 404.
#[utoipa::path(
    get, path = "/api/v1/bookings/{id}", tag = "bookings",
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, description = "The booking", body = dto::Booking)),
    security(("bearer" = []))
)]
pub async fn get_booking(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<dto::Booking>, Problem> {
    let req = pb::GetBookingRequest { booking_id: id };
    let b = state
        .booking
        .call(caller.request(req), |mut c, r| async move { c.get_booking(r).await })
        .await?
        .into_inner()
        .booking;
    Ok(Json(b.ok_or_else(|| missing("booking"))?.into()))
}

/// Bookings, newest first: your own as a guest; `?restaurant_id=` one of your restaurants';
/// `?all=true` every booking (admins).
#[utoipa::path(
    get, path = "/api/v1/bookings", tag = "bookings",
    params(ListBookingsQuery),
    responses((status = 200, description = "One page of bookings", body = dto::BookingPage)),
    security(("bearer" = []))
)]
pub async fn list_bookings(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListBookingsQuery>,
) -> Result<Json<dto::BookingPage>, Problem> {
    let req = pb::ListBookingsRequest {
        restaurant_id: query.restaurant_id.unwrap_or_default(),
        all: query.all.unwrap_or(false),
        page_size: query.page_size.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
    };
    let res = state
        .booking
        .call(caller.request(req), |mut c, r| async move { c.list_bookings(r).await })
        .await?
        .into_inner();
    Ok(Json(dto::BookingPage {
        bookings: res.bookings.into_iter().map(Into::into).collect(),
        next_page_token: Some(res.next_page_token).filter(|t| !t.is_empty()),
    }))
}

/// Cancel a booking: the guest until the cutoff (then 400 `TOO_LATE_TO_CANCEL`), the owner
/// until it ends. Cancelling twice answers the cancelled booking.
#[utoipa::path(
    post, path = "/api/v1/bookings/{id}/cancel", tag = "bookings",
    params(("id" = String, Path, format = Uuid)),
    request_body = CancelBooking,
    responses(
        (status = 200, description = "The cancelled booking", body = dto::Booking),
        (status = 400, description = "TOO_LATE_TO_CANCEL"),
    ),
    security(("bearer" = []))
)]
pub async fn cancel_booking(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CancelBooking>,
) -> Result<Json<dto::Booking>, Problem> {
    let req = pb::CancelBookingRequest {
        booking_id: id,
        reason: body.reason,
    };
    let b = state
        .booking
        .call(caller.request(req), |mut c, r| async move { c.cancel_booking(r).await })
        .await?
        .into_inner()
        .booking;
    Ok(Json(b.ok_or_else(|| missing("booking"))?.into()))
}

/// The owner marks a guest who never came: a confirmed booking whose start has passed. A paid
/// deposit is kept. Marking twice answers the booking as it is.
#[utoipa::path(
    post, path = "/api/v1/bookings/{id}/no-show", tag = "bookings",
    params(("id" = String, Path, format = Uuid)),
    responses(
        (status = 200, description = "The booking, marked", body = dto::Booking),
        (status = 400, description = "NO_SHOW_REFUSED: not confirmed, or its start has not come"),
        (status = 403, description = "NOT_OWNER"),
        (status = 404, description = "BOOKING_NOT_FOUND"),
    ),
    security(("bearer" = []))
)]
pub async fn mark_no_show(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<dto::Booking>, Problem> {
    let req = pb::MarkNoShowRequest { booking_id: id };
    let b = state
        .booking
        .call(caller.request(req), |mut c, r| async move { c.mark_no_show(r).await })
        .await?
        .into_inner()
        .booking;
    Ok(Json(b.ok_or_else(|| missing("booking"))?.into()))
}
