//! The inbox: every event a service has taken, one row per (service, event id). The primary key
//! is what makes a redelivered event have no second effect: the receiver inserts it in the
//! transaction of the event's effect, and a duplicate insert means "already done".
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum InboxEvents {
    Table,
    Service,
    EventId,
    EventType,
    ReceivedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(InboxEvents::Table)
                    .col(string_len(InboxEvents::Service, 40))
                    .col(uuid(InboxEvents::EventId))
                    .col(string_len(InboxEvents::EventType, 80))
                    .col(timestamp_with_time_zone(InboxEvents::ReceivedAt))
                    .primary_key(Index::create().col(InboxEvents::Service).col(InboxEvents::EventId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_inbox_events_received")
                    .table(InboxEvents::Table)
                    .col(InboxEvents::Service)
                    .col(InboxEvents::ReceivedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(InboxEvents::Table).to_owned())
            .await
    }
}
