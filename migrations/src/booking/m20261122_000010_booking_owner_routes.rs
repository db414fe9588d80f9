//! What the owner routes need: a removed table keeps its row (past bookings point at it) but
//! leaves the restaurant and frees its label; search compares cities by a lowercase key; a
//! booking records when its reminder went out (so it goes out once); hours and closures are
//! found by restaurant through an index (a day is read in a handful of indexed queries).
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RestaurantTables {
    Table,
    RemovedAt,
}

#[derive(DeriveIden)]
enum Bookings {
    Table,
    RemindedAt,
}

#[derive(DeriveIden)]
enum Restaurants {
    Table,
    CityKey,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(RestaurantTables::Table)
                    .add_column(timestamp_with_time_zone_null(RestaurantTables::RemovedAt))
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE UNIQUE INDEX ux_restaurant_tables_live_label ON restaurant_tables (restaurant_id, label) \
             WHERE removed_at IS NULL",
        )
        .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("ux_restaurant_tables_label")
                    .table(RestaurantTables::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Restaurants::Table)
                    .add_column(string_len(Restaurants::CityKey, 80).default(""))
                    .to_owned(),
            )
            .await?;
        db.execute_unprepared("UPDATE restaurants SET city_key = lower(trim(city))")
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_restaurants_city_key")
                    .table(Restaurants::Table)
                    .col(Restaurants::CityKey)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Bookings::Table)
                    .add_column(timestamp_with_time_zone_null(Bookings::RemindedAt))
                    .to_owned(),
            )
            .await?;
        db.execute_unprepared("CREATE INDEX idx_opening_hours_restaurant ON opening_hours (restaurant_id)")
            .await?;
        db.execute_unprepared("CREATE INDEX idx_closures_restaurant ON closures (restaurant_id, from_date)")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX idx_closures_restaurant").await?;
        db.execute_unprepared("DROP INDEX idx_opening_hours_restaurant").await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Bookings::Table)
                    .drop_column(Bookings::RemindedAt)
                    .to_owned(),
            )
            .await?;
        db.execute_unprepared("DROP INDEX idx_restaurants_city_key").await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Restaurants::Table)
                    .drop_column(Restaurants::CityKey)
                    .to_owned(),
            )
            .await?;
        // Fails, rather than deleting anything, while a removed table shares a live one's label.
        db.execute_unprepared(
            "CREATE UNIQUE INDEX ux_restaurant_tables_label ON restaurant_tables (restaurant_id, label)",
        )
        .await?;
        db.execute_unprepared("DROP INDEX ux_restaurant_tables_live_label")
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(RestaurantTables::Table)
                    .drop_column(RestaurantTables::RemovedAt)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
