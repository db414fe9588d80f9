//! The tonic implementation of `thali.booking.v1.BookingService`: proto ↔ domain, the caller from
//! the platform auth layer, the cached days behind availability and search, and the one mapping
//! of domain errors to `Status`.
//!
//! Caching (ADR 0014): a restaurant's day (`t:{tenant}:v1:avail:{restaurant}:{date}`) and a
//! city's day (`t:{tenant}:v1:search:{city}:{date}`) hold what is free at every start of that
//! local date, independent of the clock. Every committed change drops the days it can touch: a
//! booking or a cancellation its start's date (and the day before, whose overnight opening may
//! reach it); a table, hours, closure or policy change every date of the booking window.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, NaiveDate, Utc};
use thali_platform::{
    audit::access_denied,
    auth::Principal,
    cache::{CacheKey, LoadError, TwoLevelCache},
    errors::{self, Violation},
    server::principal,
};
use thali_proto::booking::v1 as pb;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::{
    domain::{
        self, Booking, BookingError, BookingsOf, Day, HoursRange, LocalTimeError, NewBooking, NewRestaurant, NewTable,
        PolicyMinutes, Restaurant, RestaurantChanges, StartRefused, Table, TableChanges,
    },
    store::{BookingStore, Changed, Setup, restaurant},
};

/// Restaurants of one city a search looks at, at most.
pub const CITY_RESTAURANTS_MAX: u64 = 2_000;

/// A restaurant's day, as cached for availability.
#[derive(serde::Serialize, serde::Deserialize)]
struct RestaurantDay {
    time_zone: String,
    day: Day,
}

/// A restaurant as search lists it.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Listed {
    id: Uuid,
    name: String,
    city: String,
    cuisines: Vec<String>,
    address: String,
    time_zone: String,
    policy: [i32; 5],
    #[serde(default)]
    deposit_per_guest_minor: i64,
}

/// A city's day, as cached for search.
#[derive(serde::Serialize, serde::Deserialize)]
struct CityDay {
    restaurants: Vec<(Listed, Day)>,
}

/// How long a restaurant's set-up stays in process memory when no change is heard (a change
/// drops it at once; this bounds what a missed invalidation can cost).
pub const SETUP_TTL: Duration = Duration::from_secs(30);

/// The set-ups of restaurants being booked, in process memory: a booking reads its restaurant,
/// hours, closures and tables from here instead of four queries (ADR 0014). Every set-up change
/// drops the entry here and, as the key `t:{tenant}:v1:setup:{restaurant}` on the cache's
/// invalidation channel, on every replica. A load that raced a change is answered but not kept:
/// the epoch moved while it read.
struct Setups {
    entries: moka::future::Cache<Uuid, Arc<Setup>>,
    epoch: AtomicU64,
    /// `t:{tenant}:v1:setup:`, the prefix of the invalidation keys.
    prefix: String,
}

impl Setups {
    fn new(tenant: &str) -> Self {
        Self {
            entries: moka::future::Cache::builder()
                .max_capacity(50_000)
                .time_to_live(SETUP_TTL)
                .build(),
            epoch: AtomicU64::new(0),
            prefix: CacheKey::new(tenant, "setup", "").as_str().to_owned(),
        }
    }

    async fn forget(&self, restaurant: Uuid) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate(&restaurant).await;
    }

    fn forget_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }

    /// Drops the set-ups named by the keys the cache drops (here or on another replica's word).
    fn listen(self: &Arc<Self>, mut dropped: tokio::sync::broadcast::Receiver<String>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let received = dropped.recv().await;
                let Some(setups) = weak.upgrade() else { break };
                match received {
                    Ok(key) => {
                        if let Some(id) = key.strip_prefix(&setups.prefix).and_then(|id| Uuid::parse_str(id).ok()) {
                            setups.forget(id).await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => setups.forget_all(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
}

/// The booking gRPC service.
#[derive(Clone)]
pub struct BookingGrpc {
    store: BookingStore,
    cache: Arc<TwoLevelCache>,
    tenant: String,
    setups: Arc<Setups>,
    payments: Option<crate::workers::PaymentsClient>,
}

impl BookingGrpc {
    /// The service; spawns the task that hears set-up invalidations (call inside a runtime).
    /// Deposits are asked of `payments`.
    pub fn new(
        store: BookingStore,
        cache: Arc<TwoLevelCache>,
        tenant: String,
        payments: Option<crate::workers::PaymentsClient>,
    ) -> Self {
        let setups = Arc::new(Setups::new(&tenant));
        setups.listen(cache.invalidations());
        Self {
            store,
            cache,
            tenant,
            setups,
            payments,
        }
    }

    /// Asks payments for booking `id`'s deposit order now; None when it cannot (the job asks
    /// again).
    async fn ask_deposit(&self, id: Uuid) -> Option<Uuid> {
        let payments = self.payments.as_ref()?;
        match crate::workers::request_deposit(&self.store, payments, id).await {
            Ok(order) => order,
            Err(e) => {
                tracing::warn!(booking_id = %id, error = ?e, "deposit order not created yet; the job will ask again");
                None
            }
        }
    }

    /// A restaurant's set-up, from process memory when no change has been heard since it was read.
    async fn setup(&self, id: Uuid) -> Result<Arc<Setup>, BookingError> {
        if let Some(setup) = self.setups.entries.get(&id).await {
            return Ok(setup);
        }
        let epoch = self.setups.epoch.load(Ordering::SeqCst);
        let setup = Arc::new(self.store.setup(id).await?);
        if self.setups.epoch.load(Ordering::SeqCst) == epoch {
            self.setups.entries.insert(id, setup.clone()).await;
        }
        Ok(setup)
    }

    fn day_key(&self, restaurant: Uuid, date: NaiveDate) -> CacheKey {
        CacheKey::new(&self.tenant, "avail", &format!("{restaurant}:{date}"))
    }

    fn city_key(&self, city_key: &str, date: NaiveDate) -> CacheKey {
        CacheKey::new(&self.tenant, "search", &format!("{city_key}:{date}"))
    }

    /// Whether the cache's Redis answers (None without Redis).
    pub fn redis_up(&self) -> Option<bool> {
        self.cache.redis_up()
    }

    async fn restaurant_day(&self, id: Uuid, date: NaiveDate) -> Result<RestaurantDay, BookingError> {
        let store = self.store.clone();
        let cached = self
            .cache
            .get_or_load(&self.day_key(id, date), move || async move {
                let row = store.restaurant_row(id).await?;
                let day = store
                    .days(std::slice::from_ref(&row), date)
                    .await?
                    .pop()
                    .ok_or(BookingError::RestaurantNotFound)?;
                encode(&RestaurantDay {
                    time_zone: row.time_zone,
                    day,
                })
            })
            .await?;
        decode(&cached.bytes)
    }

    async fn city_day(&self, key: &str, date: NaiveDate) -> Result<CityDay, BookingError> {
        let store = self.store.clone();
        let owned = key.to_owned();
        let cached = self
            .cache
            .get_or_load(&self.city_key(key, date), move || async move {
                let rows = store.in_city(&owned, CITY_RESTAURANTS_MAX).await?;
                let days = store.days(&rows, date).await?;
                let restaurants = rows
                    .into_iter()
                    .zip(days)
                    .filter(|(_, day)| !day.is_full())
                    .map(|(r, day)| (listed(r), day))
                    .collect();
                encode(&CityDay { restaurants })
            })
            .await?;
        decode(&cached.bytes)
    }

    /// Drops the cached days `changed` can touch, once its write has committed. Runs in a task
    /// of its own, so a caller that goes away after the commit cannot skip it.
    async fn invalidate(&self, row: &restaurant::Model, old_city_key: Option<String>, dates: Vec<NaiveDate>) {
        let mut keys = Vec::with_capacity(dates.len() * 3);
        for date in dates {
            keys.push(self.day_key(row.id, date));
            keys.push(self.city_key(&row.city_key, date));
            if let Some(old) = &old_city_key {
                keys.push(self.city_key(old, date));
            }
        }
        let cache = self.cache.clone();
        let _ = tokio::spawn(async move {
            for key in keys {
                cache.invalidate(&key).await;
            }
        })
        .await;
    }

    /// After a booking or a cancellation: its start's local date and the day before.
    async fn booking_changed(&self, changed: &Changed<Booking>) {
        let date = changed.restaurant.local_date(changed.value.starts_at);
        let dates = [date.pred_opt(), Some(date)].into_iter().flatten().collect();
        self.invalidate(&changed.restaurant, None, dates).await;
    }

    /// After a change to the restaurant's tables, hours, closures or rules: every date a guest
    /// may book (with a day's margin either side).
    async fn setup_changed<T>(&self, changed: &Changed<T>) {
        let r = &changed.restaurant;
        // Here at once (read your writes); elsewhere through the invalidation channel.
        self.setups.forget(r.id).await;
        self.cache
            .invalidate(&CacheKey::new(&self.tenant, "setup", &r.id.to_string()))
            .await;
        let today = r.local_date(Utc::now());
        let days = i64::from(r.window_days.max(0)) + 2;
        let dates = (-1..days)
            .filter_map(|d| today.checked_add_signed(chrono::Duration::days(d)))
            .collect();
        self.invalidate(r, changed.old_city_key.clone(), dates).await;
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, BookingError> {
    serde_json::to_vec(value).map_err(|e| BookingError::Internal(format!("cache encode: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BookingError> {
    serde_json::from_slice(bytes).map_err(|e| BookingError::Internal(format!("cached day does not decode: {e}")))
}

fn listed(r: restaurant::Model) -> Listed {
    Listed {
        policy: [
            r.slot_minutes,
            r.sitting_minutes,
            r.window_days,
            r.lead_minutes,
            r.cancel_cutoff_minutes,
        ],
        deposit_per_guest_minor: r.deposit_per_guest_minor,
        id: r.id,
        cuisines: r
            .cuisines
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
        name: r.name,
        city: r.city,
        address: r.address,
        time_zone: r.time_zone,
    }
}

impl LoadError for BookingError {
    fn is_outage(&self) -> bool {
        matches!(self, BookingError::Unavailable)
    }
    fn timed_out() -> Self {
        BookingError::Unavailable
    }
}

impl From<BookingError> for Status {
    fn from(err: BookingError) -> Self {
        let msg = err.to_string();
        let reason = |code, reason: &str| errors::with_reason(code, reason, msg.clone());
        match err {
            BookingError::Invalid(violations) => errors::invalid_argument(&violations),
            BookingError::Unauthenticated => reason(Code::Unauthenticated, "UNAUTHENTICATED"),
            BookingError::NotOwner => reason(Code::PermissionDenied, "NOT_OWNER"),
            BookingError::RoleRequired => reason(Code::PermissionDenied, "RESTAURANT_OWNER_ROLE_REQUIRED"),
            BookingError::RestaurantNotFound => reason(Code::NotFound, "RESTAURANT_NOT_FOUND"),
            BookingError::BookingNotFound => reason(Code::NotFound, "BOOKING_NOT_FOUND"),
            BookingError::TableNotFound => reason(Code::NotFound, "TABLE_NOT_FOUND"),
            BookingError::LabelTaken => reason(Code::AlreadyExists, "LABEL_TAKEN"),
            BookingError::TableHasBookings => reason(Code::FailedPrecondition, "TABLE_HAS_BOOKINGS"),
            BookingError::SlotTaken => reason(Code::Aborted, "SLOT_TAKEN"),
            BookingError::Start(why) => reason(
                Code::FailedPrecondition,
                match why {
                    StartRefused::OutsideHours => "OUTSIDE_HOURS",
                    StartRefused::NotASlot => "NOT_A_SLOT",
                    StartRefused::TooSoon => "TOO_SOON",
                    StartRefused::TooFar => "TOO_FAR",
                },
            ),
            BookingError::PartyTooLarge => reason(Code::FailedPrecondition, "PARTY_TOO_LARGE"),
            BookingError::TooLateToCancel => reason(Code::FailedPrecondition, "TOO_LATE_TO_CANCEL"),
            BookingError::NoShowRefused => reason(Code::FailedPrecondition, "NO_SHOW_REFUSED"),
            BookingError::MarkedNoShow => reason(Code::FailedPrecondition, "MARKED_NO_SHOW"),
            BookingError::IdempotencyKeyReused => reason(Code::Aborted, "IDEMPOTENCY_KEY_REUSED"),
            BookingError::Unavailable => errors::unavailable("DATABASE_UNAVAILABLE", msg, Duration::from_secs(2)),
            BookingError::Internal(cause) => errors::internal(&cause),
        }
    }
}

fn caller<T>(request: &Request<T>) -> Result<Principal, BookingError> {
    principal(request).cloned().ok_or(BookingError::Unauthenticated)
}

/// The caller's account id.
fn account(who: &Principal) -> Result<Uuid, BookingError> {
    Uuid::parse_str(&who.subject).map_err(|_| BookingError::Unauthenticated)
}

/// Records a refused owner action as a security event, then passes the error on.
fn audited<T>(who: &Principal, target: &str, result: Result<T, BookingError>) -> Result<T, BookingError> {
    if let Err(e @ (BookingError::NotOwner | BookingError::RoleRequired)) = &result {
        access_denied(who, target, &e.to_string());
    }
    result
}

fn id(field: &str, raw: &str) -> Result<Uuid, BookingError> {
    Uuid::parse_str(raw).map_err(|_| BookingError::invalid(field, "must be a UUID"))
}

/// A path id that is not a UUID names nothing: NOT_FOUND, without a query.
fn lookup(raw: &str, missing: BookingError) -> Result<Uuid, BookingError> {
    Uuid::parse_str(raw).map_err(|_| missing)
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn local(tz: &str, t: DateTime<Utc>) -> String {
    match domain::parse_zone(tz) {
        Ok(tz) => t.with_timezone(&tz).format("%Y-%m-%dT%H:%M").to_string(),
        Err(_) => t.format("%Y-%m-%dT%H:%MZ").to_string(),
    }
}

fn slot(tz: &str, t: DateTime<Utc>) -> pb::Slot {
    pb::Slot {
        local: local(tz, t),
        start_time: Some(timestamp(t)),
    }
}

fn policy_pb(p: &domain::Policy) -> pb::Policy {
    pb::Policy {
        slot_minutes: p.slot.num_minutes() as i32,
        sitting_minutes: p.sitting.num_minutes() as i32,
        window_days: p.window.num_days() as i32,
        lead_minutes: p.lead.num_minutes() as i32,
        cancel_cutoff_minutes: p.cancel_cutoff.num_minutes() as i32,
        deposit_per_guest_minor: p.deposit_per_guest_minor,
    }
}

fn policy_changes(p: Option<&pb::PolicyChanges>) -> PolicyMinutes {
    let Some(p) = p else { return PolicyMinutes::default() };
    PolicyMinutes {
        slot: p.slot_minutes.map(i64::from),
        sitting: p.sitting_minutes.map(i64::from),
        window_days: p.window_days.map(i64::from),
        lead: p.lead_minutes.map(i64::from),
        cancel_cutoff: p.cancel_cutoff_minutes.map(i64::from),
        deposit_per_guest: p.deposit_per_guest_minor,
    }
}

fn weekday_name(w: chrono::Weekday) -> &'static str {
    match w {
        chrono::Weekday::Mon => "monday",
        chrono::Weekday::Tue => "tuesday",
        chrono::Weekday::Wed => "wednesday",
        chrono::Weekday::Thu => "thursday",
        chrono::Weekday::Fri => "friday",
        chrono::Weekday::Sat => "saturday",
        chrono::Weekday::Sun => "sunday",
    }
}

fn hours_pb(hours: &[HoursRange]) -> Vec<pb::OpeningHours> {
    hours
        .iter()
        .map(|h| pb::OpeningHours {
            weekday: weekday_name(h.weekday).to_owned(),
            opens: h.opens.format("%H:%M").to_string(),
            closes: h.closes.format("%H:%M").to_string(),
        })
        .collect()
}

/// A restaurant as `viewer` may see it: the owning account is shown to the owner only.
fn restaurant_pb(r: Restaurant, hours: &[HoursRange], viewer: Option<Uuid>) -> pb::Restaurant {
    pb::Restaurant {
        id: r.id.to_string(),
        owner_id: if viewer == Some(r.owner_id) {
            r.owner_id.to_string()
        } else {
            String::new()
        },
        name: r.name,
        city: r.city,
        cuisines: r.cuisines,
        address: r.address,
        time_zone: r.time_zone,
        policy: Some(policy_pb(&r.policy)),
        hours: hours_pb(hours),
        create_time: Some(timestamp(r.created_at)),
        update_time: Some(timestamp(r.updated_at)),
    }
}

fn listed_pb(l: &Listed) -> pb::Restaurant {
    let [slot, sitting, window, lead, cutoff] = l.policy;
    pb::Restaurant {
        id: l.id.to_string(),
        owner_id: String::new(),
        name: l.name.clone(),
        city: l.city.clone(),
        cuisines: l.cuisines.clone(),
        address: l.address.clone(),
        time_zone: l.time_zone.clone(),
        policy: Some(pb::Policy {
            slot_minutes: slot,
            sitting_minutes: sitting,
            window_days: window,
            lead_minutes: lead,
            cancel_cutoff_minutes: cutoff,
            deposit_per_guest_minor: l.deposit_per_guest_minor,
        }),
        hours: Vec::new(),
        create_time: None,
        update_time: None,
    }
}

fn table_pb(t: Table) -> pb::Table {
    pb::Table {
        id: t.id.to_string(),
        restaurant_id: t.restaurant_id.to_string(),
        label: t.label,
        min_seats: t.min_seats,
        max_seats: t.max_seats,
        active: t.active,
    }
}

fn booking_pb(b: Booking, tz: &str) -> pb::Booking {
    pb::Booking {
        id: b.id.to_string(),
        restaurant_id: b.restaurant_id.to_string(),
        table_id: b.table_id.to_string(),
        guest_id: b.guest_id.to_string(),
        party_size: b.party_size,
        local_start: local(tz, b.starts_at),
        start_time: Some(timestamp(b.starts_at)),
        end_time: Some(timestamp(b.ends_at)),
        status: b.status,
        guest_name: b.guest_name,
        phone: b.phone,
        note: b.note,
        create_time: Some(timestamp(b.created_at)),
        cancel_time: b.cancelled_at.map(timestamp),
        cancel_reason: b.cancel_reason.unwrap_or_default(),
        deposit: b.deposit.map(|d| pb::Deposit {
            amount: Some(thali_proto::common::v1::Money {
                amount_minor: d.amount_minor,
                currency: domain::DEPOSIT_CURRENCY.to_owned(),
            }),
            status: d.status,
            order_id: d.order_id.map(|o| o.to_string()).unwrap_or_default(),
            pay_by: d.pay_by.map(timestamp),
        }),
        no_show_time: b.no_show_at.map(timestamp),
    }
}

fn page_token(raw: &str) -> Result<Option<Uuid>, BookingError> {
    errors::parse_page_token(raw).map_err(|v| BookingError::Invalid(vec![v]))
}

fn offset_token(raw: &str) -> Result<usize, BookingError> {
    if raw.is_empty() {
        return Ok(0);
    }
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
        .map(|b| u32::from_be_bytes(b) as usize)
        .ok_or_else(|| BookingError::invalid("page_token", "is not a token this service issued"))
}

fn party(size: i32) -> Result<i32, BookingError> {
    if (1..=domain::SEATS_MAX).contains(&size) {
        Ok(size)
    } else {
        Err(BookingError::invalid(
            "party_size",
            format!("must be between 1 and {}", domain::SEATS_MAX),
        ))
    }
}

/// The instant of local `date` and `time` in `tz`; a time a DST change skipped counts as the
/// moment the clocks resumed.
fn target_instant(tz: &str, date: NaiveDate, time: chrono::NaiveTime) -> Option<DateTime<Utc>> {
    let tz = domain::parse_zone(tz).ok()?;
    let naive = date.and_time(time);
    (0..=4 * 60).find_map(|m| {
        domain::local_start(
            tz,
            &(naive + chrono::Duration::minutes(m))
                .format("%Y-%m-%dT%H:%M")
                .to_string(),
        )
        .ok()
    })
}

#[tonic::async_trait]
impl pb::booking_service_server::BookingService for BookingGrpc {
    async fn create_restaurant(
        &self,
        request: Request<pb::CreateRestaurantRequest>,
    ) -> Result<Response<pb::CreateRestaurantResponse>, Status> {
        let who = caller(&request)?;
        if !domain::may_own_restaurants(&who.roles) {
            return Err(audited(&who, "restaurant", Err::<(), _>(BookingError::RoleRequired))
                .unwrap_err()
                .into());
        }
        let owner = account(&who)?;
        let req = request.into_inner();
        let new = NewRestaurant::parse(
            &req.name,
            &req.city,
            &req.cuisines,
            &req.address,
            &req.time_zone,
            policy_changes(req.policy.as_ref()),
        )?;
        let idem = domain::parse_idempotency_key(&req.idempotency_key)?
            .map(|k| thali_platform::idempotency::Idempotency::new(k, &new));
        let r = self
            .store
            .create_restaurant(owner, &new, idem.as_ref(), Utc::now())
            .await?;
        tracing::info!(restaurant_id = %r.id, "restaurant created");
        // A new restaurant has no hours yet (a replayed key may name one that has).
        let hours = self.store.hours(r.id).await?;
        Ok(Response::new(pb::CreateRestaurantResponse {
            restaurant: Some(restaurant_pb(r, &hours, Some(owner))),
        }))
    }

    async fn get_restaurant(
        &self,
        request: Request<pb::GetRestaurantRequest>,
    ) -> Result<Response<pb::GetRestaurantResponse>, Status> {
        let viewer = principal(&request).and_then(|p| Uuid::parse_str(&p.subject).ok());
        let rid = lookup(&request.get_ref().restaurant_id, BookingError::RestaurantNotFound)?;
        let r = self.store.restaurant(rid).await?;
        let hours = self.store.hours(rid).await?;
        Ok(Response::new(pb::GetRestaurantResponse {
            restaurant: Some(restaurant_pb(r, &hours, viewer)),
        }))
    }

    async fn update_restaurant(
        &self,
        request: Request<pb::UpdateRestaurantRequest>,
    ) -> Result<Response<pb::UpdateRestaurantResponse>, Status> {
        let who = caller(&request)?;
        let by = account(&who)?;
        let req = request.into_inner();
        let rid = lookup(&req.restaurant_id, BookingError::RestaurantNotFound)?;
        let changes = RestaurantChanges::parse(
            req.name.as_deref(),
            req.city.as_deref(),
            req.cuisines.as_ref().map(|c| c.cuisines.as_slice()),
            req.address.as_deref(),
            req.time_zone.as_deref(),
            policy_changes(req.policy.as_ref()),
        )?;
        let changed = audited(
            &who,
            &req.restaurant_id,
            self.store.update_restaurant(by, rid, &changes, Utc::now()).await,
        )?;
        self.setup_changed(&changed).await;
        let hours = self.store.hours(rid).await?;
        Ok(Response::new(pb::UpdateRestaurantResponse {
            restaurant: Some(restaurant_pb(changed.value, &hours, Some(by))),
        }))
    }

    async fn create_table(
        &self,
        request: Request<pb::CreateTableRequest>,
    ) -> Result<Response<pb::CreateTableResponse>, Status> {
        let who = caller(&request)?;
        let by = account(&who)?;
        let req = request.into_inner();
        let rid = lookup(&req.restaurant_id, BookingError::RestaurantNotFound)?;
        let new = NewTable::parse(&req.label, req.min_seats, req.max_seats)?;
        let changed = audited(&who, &req.restaurant_id, self.store.add_table(by, rid, &new).await)?;
        self.setup_changed(&changed).await;
        Ok(Response::new(pb::CreateTableResponse {
            table: Some(table_pb(changed.value)),
        }))
    }

    async fn list_tables(
        &self,
        request: Request<pb::ListTablesRequest>,
    ) -> Result<Response<pb::ListTablesResponse>, Status> {
        let who = caller(&request)?;
        let by = account(&who)?;
        let rid = lookup(&request.get_ref().restaurant_id, BookingError::RestaurantNotFound)?;
        let tables = audited(&who, &rid.to_string(), self.store.tables(by, rid).await)?;
        Ok(Response::new(pb::ListTablesResponse {
            tables: tables.into_iter().map(table_pb).collect(),
        }))
    }

    async fn update_table(
        &self,
        request: Request<pb::UpdateTableRequest>,
    ) -> Result<Response<pb::UpdateTableResponse>, Status> {
        let who = caller(&request)?;
        let by = account(&who)?;
        let req = request.into_inner();
        let tid = lookup(&req.table_id, BookingError::TableNotFound)?;
        let changes = TableChanges::parse(req.label.as_deref(), req.min_seats, req.max_seats, req.active)?;
        let changed = audited(&who, &req.table_id, self.store.update_table(by, tid, &changes).await)?;
        self.setup_changed(&changed).await;
        Ok(Response::new(pb::UpdateTableResponse {
            table: Some(table_pb(changed.value)),
        }))
    }

    async fn delete_table(
        &self,
        request: Request<pb::DeleteTableRequest>,
    ) -> Result<Response<pb::DeleteTableResponse>, Status> {
        let who = caller(&request)?;
        let by = account(&who)?;
        let tid = lookup(&request.get_ref().table_id, BookingError::TableNotFound)?;
        let changed = audited(
            &who,
            &tid.to_string(),
            self.store.remove_table(by, tid, Utc::now()).await,
        )?;
        self.setup_changed(&changed).await;
        Ok(Response::new(pb::DeleteTableResponse {}))
    }

    async fn set_hours(&self, request: Request<pb::SetHoursRequest>) -> Result<Response<pb::SetHoursResponse>, Status> {
        let who = caller(&request)?;
        let by = account(&who)?;
        let req = request.into_inner();
        let rid = lookup(&req.restaurant_id, BookingError::RestaurantNotFound)?;
        let entries: Vec<(&str, &str, &str)> = req
            .hours
            .iter()
            .map(|h| (h.weekday.as_str(), h.opens.as_str(), h.closes.as_str()))
            .collect();
        let hours = domain::parse_hours(&entries).map_err(BookingError::Invalid)?;
        let changed = audited(&who, &req.restaurant_id, self.store.set_hours(by, rid, &hours).await)?;
        self.setup_changed(&changed).await;
        let hours = self.store.hours(rid).await?;
        Ok(Response::new(pb::SetHoursResponse {
            hours: hours_pb(&hours),
        }))
    }

    async fn add_closure(
        &self,
        request: Request<pb::AddClosureRequest>,
    ) -> Result<Response<pb::AddClosureResponse>, Status> {
        let who = caller(&request)?;
        let by = account(&who)?;
        let req = request.into_inner();
        let rid = lookup(&req.restaurant_id, BookingError::RestaurantNotFound)?;
        let (closure, reason) = domain::parse_closure(&req.from, &req.to, &req.reason)?;
        let changed = audited(
            &who,
            &req.restaurant_id,
            self.store.add_closure(by, rid, closure, &reason).await,
        )?;
        self.setup_changed(&changed).await;
        Ok(Response::new(pb::AddClosureResponse {
            closure_id: changed.value,
        }))
    }

    async fn search_restaurants(
        &self,
        request: Request<pb::SearchRestaurantsRequest>,
    ) -> Result<Response<pb::SearchRestaurantsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Vec::new();
        let city = domain::city_key(&req.city);
        if city.is_empty() || city.chars().count() > domain::CITY_MAX {
            v.push(Violation::new("city", format!("1 to {} characters", domain::CITY_MAX)));
        }
        let cuisine = if req.cuisine.trim().is_empty() {
            None
        } else {
            domain::parse_cuisines("cuisine", std::slice::from_ref(&req.cuisine), &mut v).pop()
        };
        if !(1..=domain::SEATS_MAX).contains(&req.party_size) {
            v.push(Violation::new(
                "party_size",
                format!("must be between 1 and {}", domain::SEATS_MAX),
            ));
        }
        let date = NaiveDate::parse_from_str(&req.date, "%Y-%m-%d").ok();
        if date.is_none() {
            v.push(Violation::new("date", "must be YYYY-MM-DD"));
        }
        let time = if req.time.is_empty() {
            None
        } else {
            let t = domain::parse_time(&req.time);
            if t.is_none() {
                v.push(Violation::new("time", "must be HH:MM"));
            }
            t
        };
        let size = domain::page_size(req.page_size);
        let offset = offset_token(&req.page_token);
        if let Err(BookingError::Invalid(more)) = &size {
            v.extend(more.iter().cloned());
        }
        if let Err(BookingError::Invalid(more)) = &offset {
            v.extend(more.iter().cloned());
        }
        let (Some(date), Ok(size), Ok(offset), true) = (date, size, offset, v.is_empty()) else {
            return Err(BookingError::Invalid(v).into());
        };
        let city_day = self.city_day(&city, date).await?;
        let now = Utc::now();
        let window = chrono::Duration::hours(1);
        let mut found: Vec<(i64, &Listed, Vec<DateTime<Utc>>)> = Vec::new();
        for (r, day) in &city_day.restaurants {
            if let Some(c) = &cuisine
                && !r.cuisines.contains(c)
            {
                continue;
            }
            let mut starts: Vec<DateTime<Utc>> = day.starts_for(req.party_size, now).collect();
            let rank = match time.and_then(|t| target_instant(&r.time_zone, date, t)) {
                Some(target) => {
                    starts.retain(|s| (*s - target).abs() <= window);
                    starts
                        .iter()
                        .map(|s| (*s - target).num_seconds().abs())
                        .min()
                        .unwrap_or(i64::MAX)
                }
                None if time.is_some() => continue,
                None => starts.first().map(|s| s.timestamp()).unwrap_or(i64::MAX),
            };
            if !starts.is_empty() {
                found.push((rank, r, starts));
            }
        }
        found.sort_by(|a, b| (a.0, &a.1.name, a.1.id).cmp(&(b.0, &b.1.name, b.1.id)));
        let total = found.len();
        let results = found
            .into_iter()
            .skip(offset)
            .take(size as usize)
            .map(|(_, r, starts)| pb::SearchResult {
                restaurant: Some(listed_pb(r)),
                slots: starts.into_iter().map(|s| slot(&r.time_zone, s)).collect(),
            })
            .collect();
        let next = offset + size as usize;
        Ok(Response::new(pb::SearchRestaurantsResponse {
            results,
            next_page_token: if next < total {
                URL_SAFE_NO_PAD.encode((next as u32).to_be_bytes())
            } else {
                String::new()
            },
        }))
    }

    async fn get_availability(
        &self,
        request: Request<pb::GetAvailabilityRequest>,
    ) -> Result<Response<pb::GetAvailabilityResponse>, Status> {
        let req = request.into_inner();
        let rid = lookup(&req.restaurant_id, BookingError::RestaurantNotFound)?;
        let date = domain::parse_date("date", &req.date)?;
        let size = party(req.party_size)?;
        let day = self.restaurant_day(rid, date).await?;
        let slots = day
            .day
            .starts_for(size, Utc::now())
            .map(|s| slot(&day.time_zone, s))
            .collect();
        Ok(Response::new(pb::GetAvailabilityResponse {
            restaurant_id: rid.to_string(),
            date: date.format("%Y-%m-%d").to_string(),
            time_zone: day.time_zone,
            slots,
        }))
    }

    async fn create_booking(
        &self,
        request: Request<pb::CreateBookingRequest>,
    ) -> Result<Response<pb::CreateBookingResponse>, Status> {
        let who = caller(&request)?;
        let guest = account(&who)?;
        let req = request.into_inner();
        let rid = id("restaurant_id", &req.restaurant_id)?;
        let (guest_name, phone, note) = domain::check_guest(req.party_size, &req.guest_name, &req.phone, &req.note)?;
        let setup = self.setup(rid).await?;
        let tz = setup.schedule.tz;
        let starts_at = domain::local_start(tz, &req.start).map_err(|e| match e {
            LocalTimeError::Malformed => BookingError::invalid("start", "must be YYYY-MM-DDTHH:MM"),
            LocalTimeError::DoesNotExist => BookingError::invalid("start", e.to_string()),
        })?;
        let new = NewBooking {
            restaurant_id: rid,
            party_size: req.party_size,
            starts_at,
            guest_name,
            phone,
            note,
        };
        let idem = domain::parse_idempotency_key(&req.idempotency_key)?
            .map(|k| thali_platform::idempotency::Idempotency::new(k, &new));
        let zone = setup.restaurant.time_zone.clone();
        let changed = self
            .store
            .book_at(&setup, guest, &new, idem.as_ref(), Utc::now())
            .await?;
        self.booking_changed(&changed).await;
        let mut booking = changed.value;
        if booking.status == "pending_payment" {
            // Ask payments for the deposit's order now, so the answer can name it; the queued job
            // asks again if payments does not answer.
            if let Some(order_id) = self.ask_deposit(booking.id).await
                && let Some(d) = booking.deposit.as_mut()
            {
                d.order_id = Some(order_id);
            }
        }
        tracing::info!(booking_id = %booking.id, restaurant_id = %rid, status = %booking.status, "booking made");
        Ok(Response::new(pb::CreateBookingResponse {
            booking: Some(booking_pb(booking, &zone)),
        }))
    }

    async fn get_booking(
        &self,
        request: Request<pb::GetBookingRequest>,
    ) -> Result<Response<pb::GetBookingResponse>, Status> {
        let who = caller(&request)?;
        let viewer = account(&who)?;
        let bid = lookup(&request.get_ref().booking_id, BookingError::BookingNotFound)?;
        let b = self
            .store
            .booking_for(viewer, domain::is_admin(&who.roles), bid)
            .await?;
        let tz = self.store.restaurant_row(b.restaurant_id).await?.time_zone;
        Ok(Response::new(pb::GetBookingResponse {
            booking: Some(booking_pb(b, &tz)),
        }))
    }

    async fn list_bookings(
        &self,
        request: Request<pb::ListBookingsRequest>,
    ) -> Result<Response<pb::ListBookingsResponse>, Status> {
        let who = caller(&request)?;
        let viewer = account(&who)?;
        let admin = domain::is_admin(&who.roles);
        let req = request.into_inner();
        let size = domain::page_size(req.page_size)?;
        let after = page_token(&req.page_token)?;
        let (of, owner) = if !req.restaurant_id.is_empty() {
            let rid = lookup(&req.restaurant_id, BookingError::RestaurantNotFound)?;
            (BookingsOf::Restaurant(rid), (!admin).then_some(viewer))
        } else if req.all {
            if !admin {
                return Err(errors::with_reason(
                    Code::PermissionDenied,
                    "ADMIN_ROLE_REQUIRED",
                    "only an admin may list every booking",
                ));
            }
            (BookingsOf::All, None)
        } else {
            (BookingsOf::Guest(viewer), None)
        };
        let (bookings, next) = audited(
            &who,
            &req.restaurant_id,
            self.store.bookings(of, owner, size, after).await,
        )?;
        let mut zones: std::collections::HashMap<Uuid, String> = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(bookings.len());
        for b in bookings {
            let tz = match zones.get(&b.restaurant_id) {
                Some(tz) => tz.clone(),
                None => {
                    let tz = self.store.restaurant_row(b.restaurant_id).await?.time_zone;
                    zones.insert(b.restaurant_id, tz.clone());
                    tz
                }
            };
            out.push(booking_pb(b, &tz));
        }
        Ok(Response::new(pb::ListBookingsResponse {
            bookings: out,
            next_page_token: next.map(errors::page_token).unwrap_or_default(),
        }))
    }

    async fn mark_no_show(
        &self,
        request: Request<pb::MarkNoShowRequest>,
    ) -> Result<Response<pb::MarkNoShowResponse>, Status> {
        let who = caller(&request)?;
        let by = account(&who)?;
        let bid = lookup(&request.get_ref().booking_id, BookingError::BookingNotFound)?;
        let booking = audited(
            &who,
            &bid.to_string(),
            self.store.mark_no_show(bid, by, Utc::now()).await,
        )?;
        let tz = self.store.restaurant_row(booking.restaurant_id).await?.time_zone;
        tracing::info!(booking_id = %bid, "marked a no-show");
        Ok(Response::new(pb::MarkNoShowResponse {
            booking: Some(booking_pb(booking, &tz)),
        }))
    }

    async fn cancel_booking(
        &self,
        request: Request<pb::CancelBookingRequest>,
    ) -> Result<Response<pb::CancelBookingResponse>, Status> {
        let who = caller(&request)?;
        let by = account(&who)?;
        let req = request.into_inner();
        let bid = lookup(&req.booking_id, BookingError::BookingNotFound)?;
        if req.reason.chars().count() > domain::REASON_MAX {
            return Err(BookingError::invalid("reason", format!("at most {} characters", domain::REASON_MAX)).into());
        }
        let changed = self.store.cancel(bid, by, req.reason.trim(), Utc::now()).await?;
        self.booking_changed(&changed).await;
        let tz = changed.restaurant.time_zone.clone();
        Ok(Response::new(pb::CancelBookingResponse {
            booking: Some(booking_pb(changed.value, &tz)),
        }))
    }
}

/// The events booking takes: what payments says of deposit orders.
pub const SUBSCRIBES_TO: &[&str] = &[
    "order.paid",
    "order.failed",
    "order.expired",
    "order.refunded",
    thali_platform::privacy::ERASED,
];

#[tonic::async_trait]
impl thali_platform::events::Sink for BookingGrpc {
    /// A deposit order's news moves its booking (orders that are not deposits are not booking's
    /// business: taken and ignored).
    async fn take(&self, event: thali_proto::events::v1::Event) -> Result<bool, Status> {
        use thali_proto::events::v1::event::Payload;
        if let Some(Payload::AccountErased(p)) = &event.payload {
            let account = Uuid::parse_str(&p.account_id)
                .map_err(|_| Status::invalid_argument("account_erased.account_id is not a UUID"))?;
            let event_id =
                Uuid::parse_str(&event.id).map_err(|_| Status::invalid_argument("event.id is not a UUID"))?;
            return Ok(self.store.erase_guest(event_id, account, Utc::now()).await?);
        }
        let (order, outcome) = match &event.payload {
            Some(Payload::OrderPaid(p)) => (p.order.as_ref(), domain::DepositOutcome::Paid),
            Some(Payload::OrderExpired(p)) => (p.order.as_ref(), domain::DepositOutcome::Expired),
            Some(Payload::OrderFailed(p)) => (p.order.as_ref(), domain::DepositOutcome::Failed),
            Some(Payload::OrderRefunded(p)) => {
                let full = p.order.as_ref().is_some_and(|o| o.refunded_minor >= o.amount_minor);
                (p.order.as_ref(), domain::DepositOutcome::Refunded { full })
            }
            _ => {
                return Err(Status::invalid_argument(
                    "booking takes order.* and account.erased events only",
                ));
            }
        };
        let order = order.ok_or_else(|| Status::invalid_argument("the event has no order"))?;
        let Some(booking) = order.reference.strip_prefix("booking:") else {
            return Ok(false);
        };
        let booking_id =
            Uuid::parse_str(booking).map_err(|_| Status::invalid_argument("order.reference names no booking"))?;
        let order_id =
            Uuid::parse_str(&order.order_id).map_err(|_| Status::invalid_argument("order.order_id is not a UUID"))?;
        let event_id = Uuid::parse_str(&event.id).map_err(|_| Status::invalid_argument("event.id is not a UUID"))?;
        let (new, changed) = self
            .store
            .deposit_settled(event_id, booking_id, order_id, outcome, Utc::now())
            .await
            .map_err(|e| match e {
                BookingError::BookingNotFound => Status::invalid_argument(format!("no booking {booking_id}")),
                other => other.into(),
            })?;
        if let Some(changed) = &changed {
            self.booking_changed(changed).await;
            tracing::info!(%booking_id, %order_id, status = %changed.value.status, "deposit settled the booking");
        }
        Ok(new)
    }
}
