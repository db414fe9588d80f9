//! Restaurants, tables, opening hours, closures and bookings. The promise that matters is a
//! constraint: two holding bookings (`confirmed`, `pending_payment`) never overlap on one table.
//! PostgreSQL: an exclusion constraint over `tstzrange(starts_at, ends_at)` (btree_gist).
//! SQLite: one `booking_cells` row per slot cell a holding booking covers, under a unique
//! (table_id, cell) key, written and removed in the booking's own transactions (ADR 0013).
use sea_orm_migration::{prelude::*, schema::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Restaurants {
    Table,
    Id,
    OwnerId,
    Name,
    City,
    Cuisines,
    Address,
    TimeZone,
    SlotMinutes,
    SittingMinutes,
    WindowDays,
    LeadMinutes,
    CancelCutoffMinutes,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RestaurantTables {
    Table,
    Id,
    RestaurantId,
    Label,
    MinSeats,
    MaxSeats,
    Active,
    CreatedAt,
}

#[derive(DeriveIden)]
enum OpeningHours {
    Table,
    Id,
    RestaurantId,
    Weekday,
    Opens,
    Closes,
}

#[derive(DeriveIden)]
enum Closures {
    Table,
    Id,
    RestaurantId,
    FromDate,
    ToDate,
    Reason,
}

#[derive(DeriveIden)]
enum Bookings {
    Table,
    Id,
    RestaurantId,
    TableId,
    GuestId,
    PartySize,
    StartsAt,
    EndsAt,
    Status,
    GuestName,
    Phone,
    Note,
    CreatedAt,
    CancelledAt,
    CancelReason,
}

#[derive(DeriveIden)]
enum BookingCells {
    Table,
    TableId,
    Cell,
    BookingId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Restaurants::Table)
                    .col(uuid(Restaurants::Id).primary_key())
                    .col(uuid(Restaurants::OwnerId))
                    .col(string_len(Restaurants::Name, 120))
                    .col(string_len(Restaurants::City, 80))
                    .col(text(Restaurants::Cuisines))
                    .col(text(Restaurants::Address))
                    .col(string_len(Restaurants::TimeZone, 64))
                    .col(integer(Restaurants::SlotMinutes))
                    .col(integer(Restaurants::SittingMinutes))
                    .col(integer(Restaurants::WindowDays))
                    .col(integer(Restaurants::LeadMinutes))
                    .col(integer(Restaurants::CancelCutoffMinutes))
                    .col(timestamp_with_time_zone(Restaurants::CreatedAt))
                    .col(timestamp_with_time_zone(Restaurants::UpdatedAt))
                    .check(Expr::cust(
                        "length(name) BETWEEN 1 AND 120 AND length(city) BETWEEN 1 AND 80",
                    ))
                    // Cells line up with starts only when the slot divides an hour.
                    .check(Expr::cust("slot_minutes IN (5, 10, 15, 20, 30, 60)"))
                    .check(Expr::cust("sitting_minutes BETWEEN 15 AND 600"))
                    .check(Expr::cust("window_days BETWEEN 1 AND 365"))
                    .check(Expr::cust("lead_minutes BETWEEN 0 AND 10080"))
                    .check(Expr::cust("cancel_cutoff_minutes BETWEEN 0 AND 10080"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_restaurants_city")
                    .table(Restaurants::Table)
                    .col(Restaurants::City)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RestaurantTables::Table)
                    .col(uuid(RestaurantTables::Id).primary_key())
                    .col(uuid(RestaurantTables::RestaurantId))
                    .col(string_len(RestaurantTables::Label, 40))
                    .col(integer(RestaurantTables::MinSeats))
                    .col(integer(RestaurantTables::MaxSeats))
                    .col(boolean(RestaurantTables::Active))
                    .col(timestamp_with_time_zone(RestaurantTables::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_restaurant_tables_restaurant")
                            .from(RestaurantTables::Table, RestaurantTables::RestaurantId)
                            .to(Restaurants::Table, Restaurants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .check(Expr::cust(
                        "min_seats >= 1 AND min_seats <= max_seats AND max_seats <= 50",
                    ))
                    .check(Expr::cust("length(label) BETWEEN 1 AND 40"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_restaurant_tables_label")
                    .table(RestaurantTables::Table)
                    .col(RestaurantTables::RestaurantId)
                    .col(RestaurantTables::Label)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(OpeningHours::Table)
                    .col(big_pk_auto(OpeningHours::Id))
                    .col(uuid(OpeningHours::RestaurantId))
                    .col(small_integer(OpeningHours::Weekday))
                    .col(string_len(OpeningHours::Opens, 5))
                    .col(string_len(OpeningHours::Closes, 5))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_opening_hours_restaurant")
                            .from(OpeningHours::Table, OpeningHours::RestaurantId)
                            .to(Restaurants::Table, Restaurants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .check(Expr::cust("weekday BETWEEN 0 AND 6 AND opens <> closes"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Closures::Table)
                    .col(big_pk_auto(Closures::Id))
                    .col(uuid(Closures::RestaurantId))
                    .col(string_len(Closures::FromDate, 10))
                    .col(string_len(Closures::ToDate, 10))
                    .col(string_len(Closures::Reason, 200))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_closures_restaurant")
                            .from(Closures::Table, Closures::RestaurantId)
                            .to(Restaurants::Table, Restaurants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .check(Expr::cust("from_date <= to_date"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Bookings::Table)
                    .col(uuid(Bookings::Id).primary_key())
                    .col(uuid(Bookings::RestaurantId))
                    .col(uuid(Bookings::TableId))
                    .col(uuid(Bookings::GuestId))
                    .col(integer(Bookings::PartySize))
                    .col(timestamp_with_time_zone(Bookings::StartsAt))
                    .col(timestamp_with_time_zone(Bookings::EndsAt))
                    .col(string_len(Bookings::Status, 20))
                    .col(string_len(Bookings::GuestName, 120))
                    .col(string_len(Bookings::Phone, 32))
                    .col(text(Bookings::Note))
                    .col(timestamp_with_time_zone(Bookings::CreatedAt))
                    .col(timestamp_with_time_zone_null(Bookings::CancelledAt))
                    .col(text_null(Bookings::CancelReason))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_bookings_restaurant")
                            .from(Bookings::Table, Bookings::RestaurantId)
                            .to(Restaurants::Table, Restaurants::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_bookings_table")
                            .from(Bookings::Table, Bookings::TableId)
                            .to(RestaurantTables::Table, RestaurantTables::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .check(Expr::cust("status IN ('confirmed', 'pending_payment', 'cancelled')"))
                    .check(Expr::cust("ends_at > starts_at AND party_size BETWEEN 1 AND 50"))
                    .check(Expr::cust("status <> 'cancelled' OR cancelled_at IS NOT NULL"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_bookings_restaurant_start")
                    .table(Bookings::Table)
                    .col(Bookings::RestaurantId)
                    .col(Bookings::StartsAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_bookings_guest")
                    .table(Bookings::Table)
                    .col(Bookings::GuestId)
                    .col(Bookings::StartsAt)
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            let db = manager.get_connection();
            db.execute_unprepared("CREATE EXTENSION IF NOT EXISTS btree_gist")
                .await?;
            db.execute_unprepared(
                "ALTER TABLE bookings ADD CONSTRAINT bookings_no_overlap EXCLUDE USING gist \
                 (table_id WITH =, tstzrange(starts_at, ends_at) WITH &&) \
                 WHERE (status IN ('confirmed', 'pending_payment'))",
            )
            .await?;
        } else {
            manager
                .create_table(
                    Table::create()
                        .table(BookingCells::Table)
                        .col(uuid(BookingCells::TableId))
                        .col(big_integer(BookingCells::Cell))
                        .col(uuid(BookingCells::BookingId))
                        .primary_key(Index::create().col(BookingCells::TableId).col(BookingCells::Cell))
                        .foreign_key(
                            ForeignKey::create()
                                .name("fk_booking_cells_booking")
                                .from(BookingCells::Table, BookingCells::BookingId)
                                .to(Bookings::Table, Bookings::Id)
                                .on_delete(ForeignKeyAction::Cascade),
                        )
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(crate::shared::idempotency_table("booking_idempotency"))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut tables = vec![Alias::new("booking_idempotency").into_iden()];
        if manager.get_database_backend() != DbBackend::Postgres {
            tables.push(BookingCells::Table.into_iden());
        }
        tables.extend([
            Bookings::Table.into_iden(),
            Closures::Table.into_iden(),
            OpeningHours::Table.into_iden(),
            RestaurantTables::Table.into_iden(),
            Restaurants::Table.into_iden(),
        ]);
        for table in tables {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
