//! The notifications service's tables. What it must never do twice is a constraint: one in-app
//! notification per (account, event), one email per (event, template); a read notification keeps
//! its first read time; an email is queued, sent or failed and a sent one has its send time.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Who can be emailed: learnt from `account.created` (event-carried state, so notifications
/// never calls identity to send a message).
#[derive(DeriveIden)]
enum NotificationRecipients {
    Table,
    AccountId,
    Email,
    DisplayName,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Notifications {
    Table,
    Id,
    AccountId,
    EventId,
    EventType,
    Title,
    Body,
    CreatedAt,
    ReadAt,
}

#[derive(DeriveIden)]
enum NotificationPreferences {
    Table,
    AccountId,
    EventType,
    Email,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum NotificationEmails {
    Table,
    Id,
    AccountId,
    EventId,
    Template,
    ToAddress,
    Subject,
    TextBody,
    HtmlBody,
    State,
    Attempts,
    LastError,
    CreatedAt,
    SentAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(NotificationRecipients::Table)
                    .col(uuid(NotificationRecipients::AccountId).primary_key())
                    .col(string_len(NotificationRecipients::Email, 254))
                    .col(string_len(NotificationRecipients::DisplayName, 200))
                    .col(timestamp_with_time_zone(NotificationRecipients::UpdatedAt))
                    .check(Expr::cust("length(email) BETWEEN 3 AND 254"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Notifications::Table)
                    .col(uuid(Notifications::Id).primary_key())
                    .col(uuid(Notifications::AccountId))
                    .col(uuid(Notifications::EventId))
                    .col(string_len(Notifications::EventType, 80))
                    .col(string_len(Notifications::Title, 200))
                    .col(text(Notifications::Body))
                    .col(timestamp_with_time_zone(Notifications::CreatedAt))
                    .col(timestamp_with_time_zone_null(Notifications::ReadAt))
                    .check(Expr::cust("length(title) >= 1 AND length(body) <= 5000"))
                    .to_owned(),
            )
            .await?;
        // A redelivered event finds its notification already there.
        manager
            .create_index(
                Index::create()
                    .name("ux_notifications_account_event")
                    .table(Notifications::Table)
                    .col(Notifications::AccountId)
                    .col(Notifications::EventId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Pages of one account's notifications, newest first, and its unread count.
        manager
            .create_index(
                Index::create()
                    .name("idx_notifications_account_id")
                    .table(Notifications::Table)
                    .col(Notifications::AccountId)
                    .col(Notifications::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_notifications_account_unread")
                    .table(Notifications::Table)
                    .col(Notifications::AccountId)
                    .col(Notifications::ReadAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(NotificationPreferences::Table)
                    .col(uuid(NotificationPreferences::AccountId))
                    .col(string_len(NotificationPreferences::EventType, 80))
                    .col(boolean(NotificationPreferences::Email))
                    .col(timestamp_with_time_zone(NotificationPreferences::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(NotificationPreferences::AccountId)
                            .col(NotificationPreferences::EventType),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(NotificationEmails::Table)
                    .col(uuid(NotificationEmails::Id).primary_key())
                    .col(uuid(NotificationEmails::AccountId))
                    .col(uuid(NotificationEmails::EventId))
                    .col(string_len(NotificationEmails::Template, 80))
                    .col(string_len(NotificationEmails::ToAddress, 254))
                    .col(string_len(NotificationEmails::Subject, 400))
                    .col(text(NotificationEmails::TextBody))
                    .col(text(NotificationEmails::HtmlBody))
                    .col(string_len(NotificationEmails::State, 10))
                    .col(integer(NotificationEmails::Attempts).default(0))
                    .col(text_null(NotificationEmails::LastError))
                    .col(timestamp_with_time_zone(NotificationEmails::CreatedAt))
                    .col(timestamp_with_time_zone_null(NotificationEmails::SentAt))
                    .check(Expr::cust("state IN ('queued', 'sent', 'failed')"))
                    .check(Expr::cust("state <> 'sent' OR sent_at IS NOT NULL"))
                    .check(Expr::cust("attempts >= 0"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_notification_emails_event_template")
                    .table(NotificationEmails::Table)
                    .col(NotificationEmails::EventId)
                    .col(NotificationEmails::Template)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            NotificationEmails::Table.into_iden(),
            NotificationPreferences::Table.into_iden(),
            Notifications::Table.into_iden(),
            NotificationRecipients::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
