//! Booking persistence. The rule that matters — a table is never booked twice — is the
//! database's: PostgreSQL's exclusion constraint `bookings_no_overlap`, or on SQLite the unique
//! (table, cell) key of `booking_cells`, written in the booking's own transaction. A booking
//! tries the fitting tables smallest first, each in a transaction of its own; a table lost to a
//! concurrent booking moves on to the next, and when none is left the answer is `SlotTaken`.
use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, SubsecRound, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use thali_platform::{
    db::{begin_write, is_deadlock, is_exclusion_violation, is_unique_violation, statement},
    events::{new_event, publish},
    idempotency::{Idempotency, Keys, Replay},
    jobs::{NewJob, Queue},
};
use thali_proto::events::v1::{BookingCancelled, BookingReminder, BookingSummary, event::Payload};
use uuid::Uuid;

mod deposits;
mod privacy;
pub use deposits::{DepositJob, RELEASE_UNPAID, REQUEST_DEPOSIT};
pub use privacy::ERASED_GUEST;

use crate::domain::{
    Booking, BookingError, BookingsOf, Closure, Day, Hold, HoursRange, NewBooking, NewRestaurant, NewTable, Policy,
    PolicyMinutes, Restaurant, RestaurantChanges, Schedule, Table, TableChanges, TableFit, cells, city_key,
    fitting_tables, may_cancel, parse_zone,
};

/// Booking's idempotency keys (ADR 0005).
const KEYS: Keys = Keys::new("booking_idempotency");

pub mod restaurant {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "restaurants")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub owner_id: Uuid,
        pub name: String,
        pub city: String,
        /// Lowercase, trimmed: what search compares.
        pub city_key: String,
        /// `,tag,tag,` so one tag matches with `LIKE '%,tag,%'`.
        #[sea_orm(column_type = "Text")]
        pub cuisines: String,
        #[sea_orm(column_type = "Text")]
        pub address: String,
        pub time_zone: String,
        pub slot_minutes: i32,
        pub sitting_minutes: i32,
        pub window_days: i32,
        pub lead_minutes: i32,
        pub cancel_cutoff_minutes: i32,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        /// Paise per guest; 0: no deposit.
        pub deposit_per_guest_minor: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod table {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "restaurant_tables")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub restaurant_id: Uuid,
        pub label: String,
        pub min_seats: i32,
        pub max_seats: i32,
        pub active: bool,
        pub created_at: DateTimeUtc,
        /// Set when the owner removed a table that past bookings still point at.
        pub removed_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod hours {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "opening_hours")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub restaurant_id: Uuid,
        pub weekday: i16,
        pub opens: String,
        pub closes: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod closure {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "closures")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub restaurant_id: Uuid,
        pub from_date: String,
        pub to_date: String,
        pub reason: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod booking {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bookings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub restaurant_id: Uuid,
        pub table_id: Uuid,
        pub guest_id: Uuid,
        pub party_size: i32,
        pub starts_at: DateTimeUtc,
        pub ends_at: DateTimeUtc,
        pub status: String,
        pub guest_name: String,
        pub phone: String,
        #[sea_orm(column_type = "Text")]
        pub note: String,
        pub created_at: DateTimeUtc,
        pub cancelled_at: Option<DateTimeUtc>,
        #[sea_orm(column_type = "Text", nullable)]
        pub cancel_reason: Option<String>,
        /// When the day-before reminder went out (once).
        pub reminded_at: Option<DateTimeUtc>,
        pub deposit_minor: Option<i64>,
        pub deposit_order_id: Option<Uuid>,
        pub deposit_status: Option<String>,
        pub payment_due_at: Option<DateTimeUtc>,
        pub no_show_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

impl From<DbErr> for BookingError {
    fn from(err: DbErr) -> Self {
        if thali_platform::db::is_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            BookingError::Unavailable
        } else {
            BookingError::Internal(err.to_string())
        }
    }
}

impl From<booking::Model> for Booking {
    fn from(m: booking::Model) -> Self {
        Booking {
            id: m.id,
            restaurant_id: m.restaurant_id,
            table_id: m.table_id,
            guest_id: m.guest_id,
            party_size: m.party_size,
            starts_at: m.starts_at,
            ends_at: m.ends_at,
            status: m.status,
            guest_name: m.guest_name,
            phone: m.phone,
            note: m.note,
            created_at: m.created_at,
            cancelled_at: m.cancelled_at,
            cancel_reason: m.cancel_reason,
            deposit: m.deposit_minor.map(|amount_minor| crate::domain::Deposit {
                amount_minor,
                status: m.deposit_status.clone().unwrap_or_default(),
                order_id: m.deposit_order_id,
                pay_by: m.payment_due_at,
            }),
            no_show_at: m.no_show_at,
        }
    }
}

impl restaurant::Model {
    fn policy(&self) -> Policy {
        let minutes = |m: i32| Duration::minutes(i64::from(m));
        Policy {
            slot: minutes(self.slot_minutes),
            sitting: minutes(self.sitting_minutes),
            window: Duration::days(i64::from(self.window_days)),
            lead: minutes(self.lead_minutes),
            cancel_cutoff: minutes(self.cancel_cutoff_minutes),
            deposit_per_guest_minor: self.deposit_per_guest_minor,
        }
    }

    fn tz(&self) -> Result<chrono_tz::Tz, BookingError> {
        parse_zone(&self.time_zone).map_err(BookingError::Internal)
    }

    /// The local date of `at` in the restaurant's zone.
    pub fn local_date(&self, at: DateTime<Utc>) -> NaiveDate {
        match self.tz() {
            Ok(tz) => at.with_timezone(&tz).date_naive(),
            Err(_) => at.date_naive(),
        }
    }
}

impl From<restaurant::Model> for Restaurant {
    fn from(m: restaurant::Model) -> Self {
        Restaurant {
            id: m.id,
            owner_id: m.owner_id,
            policy: m.policy(),
            name: m.name,
            city: m.city,
            cuisines: m
                .cuisines
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
            address: m.address,
            time_zone: m.time_zone,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

impl From<table::Model> for Table {
    fn from(m: table::Model) -> Self {
        Table {
            id: m.id,
            restaurant_id: m.restaurant_id,
            label: m.label,
            min_seats: m.min_seats,
            max_seats: m.max_seats,
            active: m.active,
        }
    }
}

fn cuisines_column(tags: &[String]) -> String {
    if tags.is_empty() {
        String::new()
    } else {
        format!(",{},", tags.join(","))
    }
}

fn apply_policy(row: &mut restaurant::Model, p: &Policy) {
    row.slot_minutes = p.slot.num_minutes() as i32;
    row.sitting_minutes = p.sitting.num_minutes() as i32;
    row.window_days = p.window.num_days() as i32;
    row.lead_minutes = p.lead.num_minutes() as i32;
    row.cancel_cutoff_minutes = p.cancel_cutoff.num_minutes() as i32;
    row.deposit_per_guest_minor = p.deposit_per_guest_minor;
}

const WEEKDAYS: [chrono::Weekday; 7] = [
    chrono::Weekday::Mon,
    chrono::Weekday::Tue,
    chrono::Weekday::Wed,
    chrono::Weekday::Thu,
    chrono::Weekday::Fri,
    chrono::Weekday::Sat,
    chrono::Weekday::Sun,
];

/// A stored opening range, or None when it does not parse.
fn hours_range(h: &hours::Model) -> Option<HoursRange> {
    Some(HoursRange {
        weekday: *WEEKDAYS.get(usize::try_from(h.weekday).ok()?)?,
        opens: crate::domain::parse_time(&h.opens)?,
        closes: crate::domain::parse_time(&h.closes)?,
    })
}

/// The most restaurant ids one `IN (…)` list carries.
const IN_CHUNK: usize = 500;

/// A restaurant's set-up as a booking reads it: the row, its schedule (hours, every closure,
/// rules) and its tables.
#[derive(Debug, Clone)]
pub struct Setup {
    pub restaurant: restaurant::Model,
    pub schedule: Schedule,
    pub tables: Vec<TableFit>,
}

/// A restaurant changed: what the caller needs to drop its cached days.
#[derive(Debug, Clone)]
pub struct Changed<T> {
    pub value: T,
    pub restaurant: restaurant::Model,
    /// The city key before the change, when the change moved the restaurant.
    pub old_city_key: Option<String>,
}

/// The job that sends a booking's reminder event, the day before it starts.
pub const REMIND: &str = "booking.remind";

/// How long before its start a booking's reminder goes out.
pub const REMIND_BEFORE: Duration = Duration::hours(24);

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Remind {
    pub booking_id: Uuid,
}

/// The booking service's database.
#[derive(Clone)]
pub struct BookingStore {
    db: DatabaseConnection,
    /// Where events and reminder jobs are written, and the clock they use.
    queue: Queue,
}

impl std::fmt::Debug for BookingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BookingStore").finish_non_exhaustive()
    }
}

/// What a booking's events say about it.
fn summary(b: &booking::Model, r: &restaurant::Model) -> BookingSummary {
    let local = match r.tz() {
        Ok(tz) => b.starts_at.with_timezone(&tz).format("%Y-%m-%dT%H:%M").to_string(),
        Err(_) => b.starts_at.format("%Y-%m-%dT%H:%MZ").to_string(),
    };
    BookingSummary {
        booking_id: b.id.to_string(),
        restaurant_id: r.id.to_string(),
        restaurant_name: r.name.clone(),
        guest_account_id: b.guest_id.to_string(),
        guest_name: b.guest_name.clone(),
        party_size: b.party_size,
        local_start: local,
        time_zone: r.time_zone.clone(),
        start_time: Some(prost_types::Timestamp {
            seconds: b.starts_at.timestamp(),
            nanos: 0,
        }),
    }
}

impl BookingStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self::with_queue(db, Queue::new(crate::workers::SERVICE))
    }

    /// The store writing its events and jobs on `queue` (tests give it a manual clock).
    pub fn with_queue(db: DatabaseConnection, queue: Queue) -> Self {
        Self { db, queue }
    }

    /// The store's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.queue.now()
    }

    /// Publishes `payload` about booking `b` in `txn`.
    async fn publish(
        &self,
        txn: &impl ConnectionTrait,
        b: &booking::Model,
        r: &restaurant::Model,
        payload: Payload,
    ) -> Result<(), DbErr> {
        let event = new_event(
            crate::workers::SERVICE,
            format!("booking:{}", b.id),
            Some(r.owner_id),
            payload,
            self.queue.now(),
        );
        publish(txn, &self.queue, &event).await
    }

    /// Sends the reminder of booking `id` once: only while it is confirmed and not reminded yet
    /// (the mark and the event commit together). Returns whether it went out.
    pub async fn remind(&self, id: Uuid) -> Result<bool, BookingError> {
        let Some(b) = booking::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(false);
        };
        let r = self.restaurant_row(b.restaurant_id).await?;
        let txn = begin_write(&self.db).await?;
        let marked = txn
            .execute_raw(statement(
                txn.get_database_backend(),
                "UPDATE bookings SET reminded_at = $1 WHERE id = $2 AND status = 'confirmed' AND reminded_at IS NULL",
                vec![self.queue.now().into(), id.into()],
            ))
            .await?;
        if marked.rows_affected() != 1 {
            return Ok(false);
        }
        let payload = Payload::BookingReminder(BookingReminder {
            booking: Some(summary(&b, &r)),
        });
        self.publish(&txn, &b, &r, payload).await?;
        txn.commit().await?;
        Ok(true)
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Housekeeping: deletes idempotency records past their window. Returns how many.
    pub async fn prune_idempotency(&self, now: DateTime<Utc>) -> Result<u64, DbErr> {
        KEYS.prune(&self.db, now).await
    }

    /// The restaurant row, or `RestaurantNotFound`.
    pub async fn restaurant_row(&self, id: Uuid) -> Result<restaurant::Model, BookingError> {
        restaurant::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or(BookingError::RestaurantNotFound)
    }

    /// The restaurant row when `by` owns it.
    async fn owned(&self, by: Uuid, id: Uuid) -> Result<restaurant::Model, BookingError> {
        let r = self.restaurant_row(id).await?;
        if r.owner_id != by {
            return Err(BookingError::NotOwner);
        }
        Ok(r)
    }

    /// A restaurant (public).
    pub async fn restaurant(&self, id: Uuid) -> Result<Restaurant, BookingError> {
        Ok(self.restaurant_row(id).await?.into())
    }

    /// Opens a restaurant owned by `owner` (whose role the caller checked).
    pub async fn create_restaurant(
        &self,
        owner: Uuid,
        new: &NewRestaurant,
        idem: Option<&Idempotency>,
        now: DateTime<Utc>,
    ) -> Result<Restaurant, BookingError> {
        const SCOPE: &str = "restaurant";
        let subject = owner.to_string();
        if let Some(idem) = idem {
            match KEYS.replay(&self.db, SCOPE, &subject, idem, now).await? {
                Replay::Fresh => {}
                Replay::Same(id) => return self.restaurant(id).await,
                Replay::Conflict => return Err(BookingError::IdempotencyKeyReused),
            }
        }
        let id = Uuid::now_v7();
        // Stored to the microsecond: a replay reads back what the first answer showed.
        let now = now.trunc_subsecs(6);
        let mut row = restaurant::Model {
            id,
            owner_id: owner,
            name: new.name.clone(),
            city: new.city.clone(),
            city_key: city_key(&new.city),
            cuisines: cuisines_column(&new.cuisines),
            address: new.address.clone(),
            time_zone: new.time_zone.clone(),
            slot_minutes: 0,
            sitting_minutes: 0,
            window_days: 0,
            lead_minutes: 0,
            cancel_cutoff_minutes: 0,
            created_at: now,
            updated_at: now,
            deposit_per_guest_minor: 0,
        };
        apply_policy(&mut row, &new.policy);
        let txn = begin_write(&self.db).await?;
        if let Some(idem) = idem
            && !KEYS.claim(&txn, SCOPE, &subject, idem, id, now).await?
        {
            drop(txn);
            return match KEYS.replay(&self.db, SCOPE, &subject, idem, now).await? {
                Replay::Same(id) => self.restaurant(id).await,
                Replay::Conflict => Err(BookingError::IdempotencyKeyReused),
                Replay::Fresh => Err(BookingError::Unavailable),
            };
        }
        restaurant::Entity::insert(restaurant::ActiveModel::from(row.clone()))
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok(row.into())
    }

    /// Changes a restaurant (owner only).
    pub async fn update_restaurant(
        &self,
        by: Uuid,
        id: Uuid,
        changes: &RestaurantChanges,
        now: DateTime<Utc>,
    ) -> Result<Changed<Restaurant>, BookingError> {
        let old = self.owned(by, id).await?;
        let mut row = old.clone();
        if let Some(name) = &changes.name {
            row.name = name.clone();
        }
        if let Some(city) = &changes.city {
            row.city = city.clone();
            row.city_key = city_key(city);
        }
        if let Some(cuisines) = &changes.cuisines {
            row.cuisines = cuisines_column(cuisines);
        }
        if let Some(address) = &changes.address {
            row.address = address.clone();
        }
        if let Some(tz) = &changes.time_zone {
            row.time_zone = tz.clone();
        }
        let mut violations = Vec::new();
        let policy = PolicyMinutes::apply(&changes.policy, old.policy(), &mut violations);
        if !violations.is_empty() {
            return Err(BookingError::Invalid(violations));
        }
        apply_policy(&mut row, &policy);
        row.updated_at = now.trunc_subsecs(6);
        restaurant::Entity::update(restaurant::ActiveModel::from(row.clone()).reset_all())
            .exec(&self.db)
            .await?;
        let old_city_key = (old.city_key != row.city_key).then_some(old.city_key);
        Ok(Changed {
            value: row.clone().into(),
            restaurant: row,
            old_city_key,
        })
    }

    /// Adds a table (owner only).
    pub async fn add_table(
        &self,
        by: Uuid,
        restaurant_id: Uuid,
        new: &NewTable,
    ) -> Result<Changed<Table>, BookingError> {
        let r = self.owned(by, restaurant_id).await?;
        let row = table::Model {
            id: Uuid::now_v7(),
            restaurant_id,
            label: new.label.clone(),
            min_seats: new.min_seats,
            max_seats: new.max_seats,
            active: true,
            created_at: Utc::now(),
            removed_at: None,
        };
        match table::Entity::insert(table::ActiveModel::from(row.clone()))
            .exec_without_returning(&self.db)
            .await
        {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(BookingError::LabelTaken),
            Err(e) => return Err(e.into()),
        }
        Ok(Changed {
            value: row.into(),
            restaurant: r,
            old_city_key: None,
        })
    }

    /// A restaurant's tables (owner only), by label.
    pub async fn tables(&self, by: Uuid, restaurant_id: Uuid) -> Result<Vec<Table>, BookingError> {
        self.owned(by, restaurant_id).await?;
        Ok(table::Entity::find()
            .filter(table::Column::RestaurantId.eq(restaurant_id))
            .filter(table::Column::RemovedAt.is_null())
            .order_by_asc(table::Column::Label)
            .all(&self.db)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// The table and its restaurant when `by` owns them.
    async fn owned_table(&self, by: Uuid, id: Uuid) -> Result<(table::Model, restaurant::Model), BookingError> {
        let t = table::Entity::find_by_id(id)
            .filter(table::Column::RemovedAt.is_null())
            .one(&self.db)
            .await?
            .ok_or(BookingError::TableNotFound)?;
        let r = self.owned(by, t.restaurant_id).await?;
        Ok((t, r))
    }

    /// Changes a table (owner only). A deactivated table keeps its bookings and takes no new ones.
    pub async fn update_table(
        &self,
        by: Uuid,
        id: Uuid,
        changes: &TableChanges,
    ) -> Result<Changed<Table>, BookingError> {
        let (mut t, r) = self.owned_table(by, id).await?;
        let (min, max) = changes.seats(t.min_seats, t.max_seats)?;
        t.min_seats = min;
        t.max_seats = max;
        if let Some(label) = &changes.label {
            t.label = label.clone();
        }
        if let Some(active) = changes.active {
            t.active = active;
        }
        match table::Entity::update(table::ActiveModel::from(t.clone()).reset_all())
            .exec(&self.db)
            .await
        {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(BookingError::LabelTaken),
            Err(e) => return Err(e.into()),
        }
        Ok(Changed {
            value: t.into(),
            restaurant: r,
            old_city_key: None,
        })
    }

    /// Removes a table (owner only). Refused while it holds a booking that has not ended; a
    /// table that past bookings point at keeps its row, marked removed. The table's row is
    /// locked first, so a booking racing the removal either commits before the check sees it or
    /// finds the table gone.
    pub async fn remove_table(&self, by: Uuid, id: Uuid, now: DateTime<Utc>) -> Result<Changed<()>, BookingError> {
        let (_, r) = self.owned_table(by, id).await?;
        let txn = begin_write(&self.db).await?;
        let backend = txn.get_database_backend();
        txn.execute_raw(statement(
            backend,
            "UPDATE restaurant_tables SET active = $1 WHERE id = $2",
            vec![false.into(), id.into()],
        ))
        .await?;
        let count = |sql: &str, values: Vec<sea_orm::Value>| {
            let txn = &txn;
            let stmt = statement(backend, sql, values);
            async move {
                let row = txn.query_one_raw(stmt).await?;
                Ok::<i64, BookingError>(row.map(|r| r.try_get_by_index::<i64>(0)).transpose()?.unwrap_or(0))
            }
        };
        let to_come = count(
            "SELECT count(*) FROM bookings WHERE table_id = $1 AND status IN ('confirmed', 'pending_payment') \
             AND ends_at > $2",
            vec![id.into(), now.into()],
        )
        .await?;
        if to_come > 0 {
            return Err(BookingError::TableHasBookings);
        }
        let any = count("SELECT count(*) FROM bookings WHERE table_id = $1", vec![id.into()]).await?;
        if any > 0 {
            txn.execute_raw(statement(
                backend,
                "UPDATE restaurant_tables SET removed_at = $1 WHERE id = $2",
                vec![now.into(), id.into()],
            ))
            .await?;
        } else {
            txn.execute_raw(statement(
                backend,
                "DELETE FROM restaurant_tables WHERE id = $1",
                vec![id.into()],
            ))
            .await?;
        }
        txn.commit().await?;
        Ok(Changed {
            value: (),
            restaurant: r,
            old_city_key: None,
        })
    }

    /// Replaces the restaurant's opening hours (owner only).
    pub async fn set_hours(
        &self,
        by: Uuid,
        restaurant_id: Uuid,
        hours: &[HoursRange],
    ) -> Result<Changed<()>, BookingError> {
        let r = self.owned(by, restaurant_id).await?;
        let txn = begin_write(&self.db).await?;
        hours::Entity::delete_many()
            .filter(hours::Column::RestaurantId.eq(restaurant_id))
            .exec(&txn)
            .await?;
        for h in hours {
            let row = hours::ActiveModel {
                restaurant_id: sea_orm::Set(restaurant_id),
                weekday: sea_orm::Set(h.weekday.num_days_from_monday() as i16),
                opens: sea_orm::Set(h.opens.format("%H:%M").to_string()),
                closes: sea_orm::Set(h.closes.format("%H:%M").to_string()),
                ..Default::default()
            };
            hours::Entity::insert(row).exec_without_returning(&txn).await?;
        }
        txn.commit().await?;
        Ok(Changed {
            value: (),
            restaurant: r,
            old_city_key: None,
        })
    }

    /// The restaurant's opening hours (public), by weekday and opening time.
    pub async fn hours(&self, restaurant_id: Uuid) -> Result<Vec<HoursRange>, BookingError> {
        let bad = |what: &str| BookingError::Internal(format!("stored {what} does not parse"));
        let mut hours = hours::Entity::find()
            .filter(hours::Column::RestaurantId.eq(restaurant_id))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|h| hours_range(&h).ok_or_else(|| bad("opening hours")))
            .collect::<Result<Vec<_>, _>>()?;
        hours.sort_by_key(|h| (h.weekday.num_days_from_monday(), h.opens));
        Ok(hours)
    }

    /// Adds a closure (owner only); returns its id.
    pub async fn add_closure(
        &self,
        by: Uuid,
        restaurant_id: Uuid,
        closure: Closure,
        reason: &str,
    ) -> Result<Changed<i64>, BookingError> {
        let r = self.owned(by, restaurant_id).await?;
        let row = closure::ActiveModel {
            restaurant_id: sea_orm::Set(restaurant_id),
            from_date: sea_orm::Set(closure.from.format("%Y-%m-%d").to_string()),
            to_date: sea_orm::Set(closure.to.format("%Y-%m-%d").to_string()),
            reason: sea_orm::Set(reason.to_owned()),
            ..Default::default()
        };
        let id = closure::Entity::insert(row).exec(&self.db).await?.last_insert_id;
        Ok(Changed {
            value: id,
            restaurant: r,
            old_city_key: None,
        })
    }

    /// The schedules and tables of `restaurants`, in their order, in four queries (`on`: only
    /// the closures covering that date).
    async fn schedules(
        &self,
        restaurants: &[restaurant::Model],
        on: Option<NaiveDate>,
    ) -> Result<Vec<(Schedule, Vec<TableFit>)>, BookingError> {
        let bad = |what: &str| BookingError::Internal(format!("stored {what} does not parse"));
        let mut hours_of: HashMap<Uuid, Vec<HoursRange>> = HashMap::new();
        let mut closures_of: HashMap<Uuid, Vec<Closure>> = HashMap::new();
        let mut tables_of: HashMap<Uuid, Vec<TableFit>> = HashMap::new();
        for chunk in restaurants.chunks(IN_CHUNK) {
            let ids: Vec<Uuid> = chunk.iter().map(|r| r.id).collect();
            for h in hours::Entity::find()
                .filter(hours::Column::RestaurantId.is_in(ids.clone()))
                .all(&self.db)
                .await?
            {
                let range = hours_range(&h).ok_or_else(|| bad("opening hours"))?;
                hours_of.entry(h.restaurant_id).or_default().push(range);
            }
            let mut closures = closure::Entity::find().filter(closure::Column::RestaurantId.is_in(ids.clone()));
            if let Some(date) = on {
                let d = date.format("%Y-%m-%d").to_string();
                closures = closures
                    .filter(closure::Column::FromDate.lte(d.clone()))
                    .filter(closure::Column::ToDate.gte(d));
            }
            let date = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad("closure date"));
            for c in closures.all(&self.db).await? {
                closures_of.entry(c.restaurant_id).or_default().push(Closure {
                    from: date(&c.from_date)?,
                    to: date(&c.to_date)?,
                });
            }
            for t in table::Entity::find()
                .filter(table::Column::RestaurantId.is_in(ids))
                .filter(table::Column::RemovedAt.is_null())
                .all(&self.db)
                .await?
            {
                tables_of.entry(t.restaurant_id).or_default().push(TableFit {
                    id: t.id,
                    min_seats: t.min_seats,
                    max_seats: t.max_seats,
                    active: t.active,
                });
            }
        }
        restaurants
            .iter()
            .map(|r| {
                Ok((
                    Schedule {
                        tz: r.tz()?,
                        hours: hours_of.remove(&r.id).unwrap_or_default(),
                        closures: closures_of.remove(&r.id).unwrap_or_default(),
                        policy: r.policy(),
                    },
                    tables_of.remove(&r.id).unwrap_or_default(),
                ))
            })
            .collect()
    }

    /// The restaurant's schedule and tables.
    pub async fn schedule(&self, restaurant_id: Uuid) -> Result<(Schedule, Vec<TableFit>), BookingError> {
        let r = self.restaurant_row(restaurant_id).await?;
        self.schedules(&[r], None)
            .await?
            .pop()
            .ok_or(BookingError::RestaurantNotFound)
    }

    /// The day of local `date` of each restaurant (what is free at every start), in their order,
    /// in five queries.
    pub async fn days(&self, restaurants: &[restaurant::Model], date: NaiveDate) -> Result<Vec<Day>, BookingError> {
        let schedules = self.schedules(restaurants, Some(date)).await?;
        // Every zone's local `date` (and an opening past midnight) lies in this UTC span.
        let midnight = date.and_time(chrono::NaiveTime::MIN).and_utc();
        let (from, to) = (midnight - Duration::days(1), midnight + Duration::days(3));
        let mut holds_of: HashMap<Uuid, Vec<Hold>> = HashMap::new();
        for chunk in restaurants.chunks(IN_CHUNK) {
            let ids: Vec<Uuid> = chunk.iter().map(|r| r.id).collect();
            let rows = booking::Entity::find()
                .select_only()
                .column(booking::Column::RestaurantId)
                .column(booking::Column::TableId)
                .column(booking::Column::StartsAt)
                .column(booking::Column::EndsAt)
                .filter(booking::Column::RestaurantId.is_in(ids))
                .filter(booking::Column::Status.is_in(["confirmed", "pending_payment"]))
                .filter(booking::Column::StartsAt.lt(to))
                .filter(booking::Column::EndsAt.gt(from))
                .into_tuple::<(Uuid, Uuid, DateTime<Utc>, DateTime<Utc>)>()
                .all(&self.db)
                .await?;
            for (restaurant_id, table_id, starts_at, ends_at) in rows {
                holds_of.entry(restaurant_id).or_default().push(Hold {
                    table_id,
                    starts_at,
                    ends_at,
                });
            }
        }
        Ok(restaurants
            .iter()
            .zip(schedules)
            .map(|(r, (schedule, tables))| {
                Day::build(
                    &schedule,
                    &tables,
                    holds_of.get(&r.id).map(Vec::as_slice).unwrap_or(&[]),
                    date,
                )
            })
            .collect())
    }

    /// Restaurants in a city (by key), optionally with a cuisine, by id; at most `limit`.
    pub async fn in_city(&self, key: &str, limit: u64) -> Result<Vec<restaurant::Model>, BookingError> {
        Ok(restaurant::Entity::find()
            .filter(restaurant::Column::CityKey.eq(key))
            .order_by_asc(restaurant::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// The booking with this id.
    pub async fn booking(&self, id: Uuid) -> Result<Booking, BookingError> {
        booking::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .map(Into::into)
            .ok_or(BookingError::BookingNotFound)
    }

    /// The booking when `viewer` may see it: its guest, the restaurant's owner, or an admin.
    /// Anyone else is told there is no such booking.
    pub async fn booking_for(&self, viewer: Uuid, admin: bool, id: Uuid) -> Result<Booking, BookingError> {
        let b = self.booking(id).await?;
        if admin || b.guest_id == viewer {
            return Ok(b);
        }
        let r = self.restaurant_row(b.restaurant_id).await?;
        if r.owner_id == viewer {
            Ok(b)
        } else {
            Err(BookingError::BookingNotFound)
        }
    }

    /// One page of bookings, newest first (`after`: the last id of the previous page). The caller
    /// decides who may ask for `of`; a restaurant's list is checked against `owner` here.
    pub async fn bookings(
        &self,
        of: BookingsOf,
        owner: Option<Uuid>,
        size: u64,
        after: Option<Uuid>,
    ) -> Result<(Vec<Booking>, Option<Uuid>), BookingError> {
        let mut q = booking::Entity::find();
        match of {
            BookingsOf::Guest(guest) => q = q.filter(booking::Column::GuestId.eq(guest)),
            BookingsOf::Restaurant(id) => {
                if let Some(owner) = owner {
                    self.owned(owner, id).await?;
                } else {
                    self.restaurant_row(id).await?;
                }
                q = q.filter(booking::Column::RestaurantId.eq(id));
            }
            BookingsOf::All => {}
        }
        if let Some(after) = after {
            q = q.filter(booking::Column::Id.lt(after));
        }
        let mut rows = q
            .order_by_desc(booking::Column::Id)
            .limit(size + 1)
            .all(&self.db)
            .await?;
        let next = if rows.len() as u64 > size {
            rows.truncate(size as usize);
            rows.last().map(|b| b.id)
        } else {
            None
        };
        Ok((rows.into_iter().map(Into::into).collect(), next))
    }

    /// Books the smallest free table that fits, for `guest`, at `now`.
    pub async fn book(
        &self,
        guest: Uuid,
        new: &NewBooking,
        idem: Option<&Idempotency>,
        now: DateTime<Utc>,
    ) -> Result<Changed<Booking>, BookingError> {
        let setup = self.setup(new.restaurant_id).await?;
        self.book_at(&setup, guest, new, idem, now).await
    }

    /// What a booking reads of its restaurant before its transaction (three queries after the
    /// row): every closure, not only one day's.
    pub async fn setup(&self, id: Uuid) -> Result<Setup, BookingError> {
        let restaurant = self.restaurant_row(id).await?;
        let (schedule, tables) = self
            .schedules(std::slice::from_ref(&restaurant), None)
            .await?
            .pop()
            .ok_or(BookingError::RestaurantNotFound)?;
        Ok(Setup {
            restaurant,
            schedule,
            tables,
        })
    }

    /// [`BookingStore::book`] at a restaurant whose set-up the caller read (perhaps from a cache:
    /// what the transaction relies on, the table still taking bookings, is read again under its
    /// lock).
    pub async fn book_at(
        &self,
        setup: &Setup,
        guest: Uuid,
        new: &NewBooking,
        idem: Option<&Idempotency>,
        now: DateTime<Utc>,
    ) -> Result<Changed<Booking>, BookingError> {
        const SCOPE: &str = "book";
        let subject = guest.to_string();
        if let Some(idem) = idem {
            match KEYS.replay(&self.db, SCOPE, &subject, idem, now).await? {
                Replay::Fresh => {}
                Replay::Same(id) => return self.replayed(id, setup.restaurant.clone()).await,
                Replay::Conflict => return Err(BookingError::IdempotencyKeyReused),
            }
        }
        let (r, schedule) = (&setup.restaurant, &setup.schedule);
        schedule.check_start(new.starts_at, now).map_err(BookingError::Start)?;
        let fit = fitting_tables(&setup.tables, new.party_size);
        if fit.is_empty() {
            return Err(BookingError::PartyTooLarge);
        }
        let ends_at = new.starts_at + schedule.policy.sitting;
        let now = now.trunc_subsecs(6);
        let covered = cells(new.starts_at, ends_at, schedule.policy.slot);
        // The table's row lock orders the bookings of one table, so PostgreSQL should never
        // have to end one to break a deadlock; if it does, that table is tried again (its
        // winner has committed by then), a few times at most.
        let mut deadlocks = 0;
        let mut tables = fit.into_iter().peekable();
        while let Some(&table) = tables.peek() {
            match self
                .try_table(guest, new, idem, &subject, table, ends_at, &covered, now, r)
                .await
            {
                Ok(Attempt::Booked(changed)) => return Ok(*changed),
                Ok(Attempt::Taken) => {}
                Err(Tried::Deadlock) if deadlocks < 3 => {
                    deadlocks += 1;
                    continue;
                }
                Err(Tried::Deadlock) => return Err(BookingError::Unavailable),
                Err(Tried::Failed(e)) => return Err(e),
            }
            tables.next();
        }
        Err(BookingError::SlotTaken)
    }

    /// One table, in a transaction of its own.
    #[allow(clippy::too_many_arguments)]
    async fn try_table(
        &self,
        guest: Uuid,
        new: &NewBooking,
        idem: Option<&Idempotency>,
        subject: &str,
        table: TableFit,
        ends_at: DateTime<Utc>,
        covered: &[i64],
        now: DateTime<Utc>,
        r: &restaurant::Model,
    ) -> Result<Attempt, Tried> {
        const SCOPE: &str = "book";
        {
            let id = Uuid::now_v7();
            let txn = begin_write(&self.db).await?;
            let backend = txn.get_database_backend();
            if let Some(idem) = idem
                && !KEYS.claim(&txn, SCOPE, subject, idem, id, now).await?
            {
                // The same request, racing itself: answer with the winner's booking.
                drop(txn);
                return match KEYS.replay(&self.db, SCOPE, subject, idem, now).await? {
                    Replay::Same(id) => Ok(Attempt::Booked(Box::new(self.replayed(id, r.clone()).await?))),
                    Replay::Conflict => Err(Tried::Failed(BookingError::IdempotencyKeyReused)),
                    Replay::Fresh => Err(Tried::Failed(BookingError::Unavailable)),
                };
            }
            // The table still takes bookings. On PostgreSQL the row lock queues the bookings of
            // one table (two inserts waiting on each other's exclusion check would deadlock) and
            // holds off a removal or deactivation until this booking has committed or rolled
            // back; the exclusion constraint still decides what may overlap.
            let lock = if backend == DbBackend::Postgres {
                " FOR UPDATE"
            } else {
                ""
            };
            let open = txn
                .query_one_raw(statement(
                    backend,
                    &format!(
                        "SELECT id FROM restaurant_tables WHERE id = $1 AND active = $2 AND removed_at IS NULL{lock}"
                    ),
                    vec![table.id.into(), true.into()],
                ))
                .await?;
            if open.is_none() {
                return Ok(Attempt::Taken);
            }
            // A restaurant that asks a deposit holds the table until it is paid.
            let deposit =
                (r.deposit_per_guest_minor > 0).then(|| r.deposit_per_guest_minor * i64::from(new.party_size));
            let row = booking::Model {
                id,
                restaurant_id: new.restaurant_id,
                table_id: table.id,
                guest_id: guest,
                party_size: new.party_size,
                starts_at: new.starts_at,
                ends_at,
                status: if deposit.is_some() {
                    "pending_payment"
                } else {
                    "confirmed"
                }
                .into(),
                guest_name: new.guest_name.clone(),
                phone: new.phone.clone(),
                note: new.note.clone(),
                created_at: now,
                cancelled_at: None,
                cancel_reason: None,
                reminded_at: None,
                deposit_minor: deposit,
                deposit_order_id: None,
                deposit_status: deposit.map(|_| "pending".to_owned()),
                payment_due_at: deposit.map(|_| now + crate::domain::DEPOSIT_HOLD),
                no_show_at: None,
            };
            match booking::Entity::insert(booking::ActiveModel::from(row.clone()))
                .exec_without_returning(&txn)
                .await
            {
                Ok(_) => {}
                // PostgreSQL: another holding booking overlaps on this table.
                Err(e) if is_exclusion_violation(&e) => return Ok(Attempt::Taken),
                Err(e) => return Err(e.into()),
            }
            if backend != DbBackend::Postgres {
                match hold_cells(&txn, table.id, id, covered).await {
                    Ok(()) => {}
                    // SQLite: a cell of this table is held by another booking.
                    Err(e) if is_unique_violation(&e) => return Ok(Attempt::Taken),
                    Err(e) => return Err(e.into()),
                }
            }
            if deposit.is_some() {
                // Payments is asked for the deposit's order (again until it answers), and the
                // table goes back if payments never says the deposit was paid.
                let ask = NewJob::new(REQUEST_DEPOSIT, &DepositJob { booking_id: id }).unique(format!("deposit:{id}"));
                self.queue.enqueue(&txn, ask).await?;
                let due = now + crate::domain::DEPOSIT_HOLD + crate::domain::DEPOSIT_GRACE;
                let release = NewJob::new(RELEASE_UNPAID, &DepositJob { booking_id: id })
                    .run_at(due)
                    .unique(format!("release-unpaid:{id}"));
                self.queue.enqueue(&txn, release).await?;
            } else {
                self.confirmed(&txn, &row, r, now).await?;
            }
            txn.commit().await?;
            // Bookings per minute (a business KPI): counted once it is kept, never for a replay.
            metrics::counter!("bookings_total", "event" => "created").increment(1);
            Ok(Attempt::Booked(Box::new(Changed {
                value: row.into(),
                restaurant: r.clone(),
                old_city_key: None,
            })))
        }
    }

    async fn replayed(&self, id: Uuid, r: restaurant::Model) -> Result<Changed<Booking>, BookingError> {
        Ok(Changed {
            value: self.booking(id).await?,
            restaurant: r,
            old_city_key: None,
        })
    }

    /// Cancels a booking: the guest until the cutoff, the restaurant's owner until it ends. The
    /// table is free again at once. Anyone else is told there is no such booking. A paid deposit
    /// goes back to the guest (`booking.deposit_refund_requested`, taken by payments); one not paid
    /// yet is void.
    pub async fn cancel(
        &self,
        id: Uuid,
        by: Uuid,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Changed<Booking>, BookingError> {
        let found = booking::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or(BookingError::BookingNotFound)?;
        let r = self.restaurant_row(found.restaurant_id).await?;
        let by_owner = r.owner_id == by;
        if !by_owner && found.guest_id != by {
            return Err(BookingError::BookingNotFound);
        }
        let txn = begin_write(&self.db).await?;
        // Read again under the write lock: a deposit paid meanwhile must be refunded, not voided.
        let found = booking::Entity::find_by_id(id)
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or(BookingError::BookingNotFound)?;
        if found.status == "cancelled" {
            drop(txn);
            return Ok(Changed {
                value: found.into(),
                restaurant: r,
                old_city_key: None,
            });
        }
        if found.no_show_at.is_some() {
            return Err(BookingError::MarkedNoShow);
        }
        if !may_cancel(&r.policy(), found.starts_at, now, by_owner) {
            return Err(BookingError::TooLateToCancel);
        }
        let backend = txn.get_database_backend();
        let now = now.trunc_subsecs(6);
        let refund = found.deposit_status.as_deref() == Some("paid");
        let deposit_status = match found.deposit_status.as_deref() {
            Some("paid") => Some("refund_requested".to_owned()),
            Some("pending") => Some("void".to_owned()),
            other => other.map(str::to_owned),
        };
        txn.execute_raw(statement(
            backend,
            "UPDATE bookings SET status = 'cancelled', cancelled_at = $1, cancel_reason = $2, deposit_status = $3 \
             WHERE id = $4",
            vec![now.into(), reason.to_owned().into(), deposit_status.into(), id.into()],
        ))
        .await?;
        let cancelled = Payload::BookingCancelled(BookingCancelled {
            booking: Some(summary(&found, &r)),
            by_restaurant: by_owner,
            reason: reason.to_owned(),
        });
        self.publish(&txn, &found, &r, cancelled).await?;
        if by_owner {
            // An owner's cancellation takes a guest's table away: it goes in the audit trail
            // (ADR 0031), with the change.
            thali_platform::audit_log::record(
                &txn,
                crate::workers::SERVICE,
                &thali_platform::audit_log::Entry::new(
                    thali_platform::audit_log::account(by),
                    "booking.cancelled_by_owner",
                    format!("booking:{id}"),
                )
                .with_details(serde_json::json!({
                    "restaurant": r.id,
                    "guest": thali_platform::audit_log::account(found.guest_id),
                    "starts_at": found.starts_at,
                    "deposit": deposit_status_for_audit(found.deposit_status.as_deref()),
                    "reason": reason,
                })),
            )
            .await?;
        }
        if refund {
            let why = if by_owner {
                "the restaurant cancelled the booking"
            } else {
                "the guest cancelled in time"
            };
            self.refund_deposit(&txn, &found, &r, why).await?;
        }
        if backend != DbBackend::Postgres {
            txn.execute_raw(statement(
                backend,
                "DELETE FROM booking_cells WHERE booking_id = $1",
                vec![id.into()],
            ))
            .await?;
        }
        txn.commit().await?;
        let by = if by_owner { "restaurant" } else { "guest" };
        metrics::counter!("bookings_total", "event" => "cancelled", "by" => by).increment(1);
        Ok(Changed {
            value: self.booking(id).await?,
            restaurant: r,
            old_city_key: None,
        })
    }
}

/// What an owner's cancellation does to the deposit, for the audit record.
fn deposit_status_for_audit(status: Option<&str>) -> &'static str {
    match status {
        Some("paid") => "refund_requested",
        Some("pending") => "void",
        _ => "none",
    }
}

/// How one table's attempt ended.
enum Attempt {
    Booked(Box<Changed<Booking>>),
    /// Held by another booking (or no longer taking bookings): try the next.
    Taken,
}

/// Why one table's attempt failed.
enum Tried {
    /// PostgreSQL broke a deadlock by ending this transaction: try the table again.
    Deadlock,
    Failed(BookingError),
}

impl From<DbErr> for Tried {
    fn from(e: DbErr) -> Self {
        if is_deadlock(&e) {
            Tried::Deadlock
        } else {
            Tried::Failed(e.into())
        }
    }
}

impl From<BookingError> for Tried {
    fn from(e: BookingError) -> Self {
        Tried::Failed(e)
    }
}

/// SQLite: one row per cell the booking holds on `table_id`, in one statement.
async fn hold_cells(
    txn: &impl ConnectionTrait,
    table_id: Uuid,
    booking_id: Uuid,
    covered: &[i64],
) -> Result<(), DbErr> {
    let rows = (0..covered.len())
        .map(|i| format!("($1, ${}, $2)", i + 3))
        .collect::<Vec<_>>()
        .join(", ");
    let mut values: Vec<sea_orm::Value> = vec![table_id.into(), booking_id.into()];
    values.extend(covered.iter().map(|c| sea_orm::Value::from(*c)));
    txn.execute_raw(statement(
        txn.get_database_backend(),
        &format!("INSERT INTO booking_cells (table_id, cell, booking_id) VALUES {rows}"),
        values,
    ))
    .await?;
    Ok(())
}
