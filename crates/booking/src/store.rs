//! Booking persistence. The rule that matters — a table is never booked twice — is the
//! database's: PostgreSQL's exclusion constraint `bookings_no_overlap`, or on SQLite the unique
//! (table, cell) key of `booking_cells`, written in the booking's own transaction. A booking
//! tries the fitting tables smallest first, each in a transaction of its own; a table lost to a
//! concurrent booking moves on to the next, and when none is left the answer is `SlotTaken`.
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter};
use thali_platform::{
    db::{begin_write, is_exclusion_violation, is_unique_violation, statement},
    idempotency::{Idempotency, Keys, Replay},
};
use uuid::Uuid;

use crate::domain::{
    Booking, BookingError, Closure, HoursRange, NewBooking, Policy, Schedule, TableFit, cells, fitting_tables,
    may_cancel, parse_zone,
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
        }
    }
}

impl restaurant::Model {
    fn policy(&self) -> Policy {
        let minutes = |m: i32| chrono::Duration::minutes(i64::from(m));
        Policy {
            slot: minutes(self.slot_minutes),
            sitting: minutes(self.sitting_minutes),
            window: chrono::Duration::days(i64::from(self.window_days)),
            lead: minutes(self.lead_minutes),
            cancel_cutoff: minutes(self.cancel_cutoff_minutes),
        }
    }
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

/// The booking service's database.
#[derive(Debug, Clone)]
pub struct BookingStore {
    db: DatabaseConnection,
}

impl BookingStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Creates a restaurant for `owner` with the default policy (tests and, later, the owner
    /// routes).
    pub async fn create_restaurant(
        &self,
        owner: Uuid,
        name: &str,
        city: &str,
        time_zone: &str,
    ) -> Result<Uuid, BookingError> {
        parse_zone(time_zone)
            .map_err(|why| BookingError::Invalid(vec![thali_platform::errors::Violation::new("time_zone", why)]))?;
        let p = Policy::default();
        let now = Utc::now();
        let id = Uuid::now_v7();
        restaurant::Entity::insert(restaurant::ActiveModel::from(restaurant::Model {
            id,
            owner_id: owner,
            name: name.to_owned(),
            city: city.to_owned(),
            cuisines: String::new(),
            address: String::new(),
            time_zone: time_zone.to_owned(),
            slot_minutes: p.slot.num_minutes() as i32,
            sitting_minutes: p.sitting.num_minutes() as i32,
            window_days: p.window.num_days() as i32,
            lead_minutes: p.lead.num_minutes() as i32,
            cancel_cutoff_minutes: p.cancel_cutoff.num_minutes() as i32,
            created_at: now,
            updated_at: now,
        }))
        .exec_without_returning(&self.db)
        .await?;
        Ok(id)
    }

    /// Adds a table.
    pub async fn add_table(&self, restaurant_id: Uuid, label: &str, min: i32, max: i32) -> Result<Uuid, BookingError> {
        let id = Uuid::now_v7();
        table::Entity::insert(table::ActiveModel::from(table::Model {
            id,
            restaurant_id,
            label: label.to_owned(),
            min_seats: min,
            max_seats: max,
            active: true,
            created_at: Utc::now(),
        }))
        .exec_without_returning(&self.db)
        .await?;
        Ok(id)
    }

    /// Replaces the restaurant's opening hours.
    pub async fn set_hours(&self, restaurant_id: Uuid, hours: &[HoursRange]) -> Result<(), BookingError> {
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
        Ok(())
    }

    /// The restaurant's schedule and tables.
    pub async fn schedule(&self, restaurant_id: Uuid) -> Result<(Schedule, Vec<TableFit>), BookingError> {
        let r = restaurant::Entity::find_by_id(restaurant_id)
            .one(&self.db)
            .await?
            .ok_or(BookingError::RestaurantNotFound)?;
        let tz = parse_zone(&r.time_zone).map_err(BookingError::Internal)?;
        let bad = |what: &str| BookingError::Internal(format!("stored {what} does not parse"));
        let hours = hours::Entity::find()
            .filter(hours::Column::RestaurantId.eq(restaurant_id))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|h| {
                Ok(HoursRange {
                    weekday: *WEEKDAYS.get(h.weekday as usize).ok_or_else(|| bad("weekday"))?,
                    opens: crate::domain::parse_time(&h.opens).ok_or_else(|| bad("opening time"))?,
                    closes: crate::domain::parse_time(&h.closes).ok_or_else(|| bad("closing time"))?,
                })
            })
            .collect::<Result<Vec<_>, BookingError>>()?;
        let date = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad("closure date"));
        let closures = closure::Entity::find()
            .filter(closure::Column::RestaurantId.eq(restaurant_id))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|c| {
                Ok(Closure {
                    from: date(&c.from_date)?,
                    to: date(&c.to_date)?,
                })
            })
            .collect::<Result<Vec<_>, BookingError>>()?;
        let tables = table::Entity::find()
            .filter(table::Column::RestaurantId.eq(restaurant_id))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|t| TableFit {
                id: t.id,
                min_seats: t.min_seats,
                max_seats: t.max_seats,
                active: t.active,
            })
            .collect();
        let policy = r.policy();
        Ok((
            Schedule {
                tz,
                hours,
                closures,
                policy,
            },
            tables,
        ))
    }

    /// The booking with this id.
    pub async fn booking(&self, id: Uuid) -> Result<Booking, BookingError> {
        booking::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .map(Into::into)
            .ok_or(BookingError::BookingNotFound)
    }

    /// Books the smallest free table that fits, for `guest`, at `now`.
    pub async fn book(
        &self,
        guest: Uuid,
        new: &NewBooking,
        idem: Option<&Idempotency>,
        now: DateTime<Utc>,
    ) -> Result<Booking, BookingError> {
        const SCOPE: &str = "book";
        let subject = guest.to_string();
        if let Some(idem) = idem {
            match KEYS.replay(&self.db, SCOPE, &subject, idem, now).await? {
                Replay::Fresh => {}
                Replay::Same(id) => return self.booking(id).await,
                Replay::Conflict => return Err(BookingError::IdempotencyKeyReused),
            }
        }
        let (schedule, tables) = self.schedule(new.restaurant_id).await?;
        schedule.check_start(new.starts_at, now).map_err(BookingError::Start)?;
        let fit = fitting_tables(&tables, new.party_size);
        if fit.is_empty() {
            return Err(BookingError::PartyTooLarge);
        }
        let ends_at = new.starts_at + schedule.policy.sitting;
        let covered = cells(new.starts_at, ends_at, schedule.policy.slot);
        for table in fit {
            let id = Uuid::now_v7();
            let txn = begin_write(&self.db).await?;
            if let Some(idem) = idem
                && !KEYS.claim(&txn, SCOPE, &subject, idem, id, now).await?
            {
                // The same request, racing itself: answer with the winner's booking.
                drop(txn);
                return match KEYS.replay(&self.db, SCOPE, &subject, idem, now).await? {
                    Replay::Same(id) => self.booking(id).await,
                    Replay::Conflict => Err(BookingError::IdempotencyKeyReused),
                    Replay::Fresh => Err(BookingError::Unavailable),
                };
            }
            let row = booking::Model {
                id,
                restaurant_id: new.restaurant_id,
                table_id: table.id,
                guest_id: guest,
                party_size: new.party_size,
                starts_at: new.starts_at,
                ends_at,
                status: "confirmed".into(),
                guest_name: new.guest_name.clone(),
                phone: new.phone.clone(),
                note: new.note.clone(),
                created_at: now,
                cancelled_at: None,
                cancel_reason: None,
            };
            match booking::Entity::insert(booking::ActiveModel::from(row.clone()))
                .exec_without_returning(&txn)
                .await
            {
                Ok(_) => {}
                // PostgreSQL: another holding booking overlaps on this table.
                Err(e) if is_exclusion_violation(&e) => continue,
                Err(e) => return Err(e.into()),
            }
            if txn.get_database_backend() != DbBackend::Postgres {
                match hold_cells(&txn, table.id, id, &covered).await {
                    Ok(()) => {}
                    // SQLite: a cell of this table is held by another booking.
                    Err(e) if is_unique_violation(&e) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            txn.commit().await?;
            return Ok(row.into());
        }
        Err(BookingError::SlotTaken)
    }

    /// Cancels a booking: the guest until the cutoff, the restaurant's owner until it ends. The
    /// table is free again at once.
    pub async fn cancel(&self, id: Uuid, by: Uuid, reason: &str, now: DateTime<Utc>) -> Result<Booking, BookingError> {
        let found = booking::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or(BookingError::BookingNotFound)?;
        let r = restaurant::Entity::find_by_id(found.restaurant_id)
            .one(&self.db)
            .await?
            .ok_or(BookingError::RestaurantNotFound)?;
        let by_owner = r.owner_id == by;
        if !by_owner && found.guest_id != by {
            // Not theirs: the same answer as no such booking.
            return Err(BookingError::BookingNotFound);
        }
        if found.status == "cancelled" {
            return Ok(found.into());
        }
        if !may_cancel(&r.policy(), found.starts_at, now, by_owner) {
            return Err(BookingError::TooLateToCancel);
        }
        let txn = begin_write(&self.db).await?;
        let backend = txn.get_database_backend();
        txn.execute_raw(statement(
            backend,
            "UPDATE bookings SET status = 'cancelled', cancelled_at = $1, cancel_reason = $2 \
             WHERE id = $3 AND status <> 'cancelled'",
            vec![now.into(), reason.to_owned().into(), id.into()],
        ))
        .await?;
        if backend != DbBackend::Postgres {
            txn.execute_raw(statement(
                backend,
                "DELETE FROM booking_cells WHERE booking_id = $1",
                vec![id.into()],
            ))
            .await?;
        }
        txn.commit().await?;
        self.booking(id).await
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
