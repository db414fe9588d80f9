//! Razorpay webhooks: every event taken once (`payment_events`, its id unique, written in the
//! transaction of its effect) and the dead-letter queue of events whose processing failed
//! (`webhook_dlq`: retried after 30 s, 1 min, 5 min, 30 min and 1 h, then dead).
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PaymentEvents {
    Table,
    EventId,
    Account,
    EventType,
    GatewayOrderId,
    Outcome,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum WebhookDlq {
    Table,
    Id,
    Account,
    EventId,
    EventType,
    WebhookPayload,
    RetryCount,
    NextRetryAt,
    ErrorMessage,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PaymentEvents::Table)
                    // Razorpay's X-Razorpay-Event-Id, the same on every redelivery.
                    .col(string_len(PaymentEvents::EventId, 64).primary_key())
                    .col(string_len(PaymentEvents::Account, 64))
                    .col(string_len(PaymentEvents::EventType, 48))
                    .col(string_len_null(PaymentEvents::GatewayOrderId, 64))
                    .col(string_len(PaymentEvents::Outcome, 16))
                    .col(timestamp_with_time_zone(PaymentEvents::ReceivedAt))
                    .check(Expr::cust("outcome IN ('applied', 'ignored', 'unreadable')"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookDlq::Table)
                    .col(uuid(WebhookDlq::Id).primary_key())
                    .col(string_len(WebhookDlq::Account, 64))
                    .col(string_len(WebhookDlq::EventId, 64).unique_key())
                    .col(string_len(WebhookDlq::EventType, 48))
                    .col(text(WebhookDlq::WebhookPayload))
                    .col(integer(WebhookDlq::RetryCount).default(0))
                    .col(timestamp_with_time_zone(WebhookDlq::NextRetryAt))
                    .col(text(WebhookDlq::ErrorMessage))
                    .col(string_len(WebhookDlq::Status, 8))
                    .col(timestamp_with_time_zone(WebhookDlq::CreatedAt))
                    .col(timestamp_with_time_zone(WebhookDlq::UpdatedAt))
                    .check(Expr::cust("status IN ('pending', 'dead')"))
                    .check(Expr::cust("retry_count BETWEEN 0 AND 5"))
                    .to_owned(),
            )
            .await?;
        // The sweep reads pending rows by due time.
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_dlq_status_next")
                    .table(WebhookDlq::Table)
                    .col(WebhookDlq::Status)
                    .col(WebhookDlq::NextRetryAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WebhookDlq::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(PaymentEvents::Table).to_owned())
            .await
    }
}
