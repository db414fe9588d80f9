//! The durable job queue (ADR 0011). One table serves every service of a database: each row
//! carries its service's name, and each service's workers claim only their own. The rules a
//! worker relies on are constraints: a state from the list, a running job has a lease and a
//! holder, a finished job has a finish time, and one row per (service, unique key) — which is
//! what makes a periodic job run once per period however many replicas schedule it.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    Service,
    Kind,
    Payload,
    State,
    OrderingKey,
    UniqueKey,
    Attempts,
    RunAt,
    LockedUntil,
    LockedBy,
    LastError,
    CreatedAt,
    FinishedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .col(big_pk_auto(Jobs::Id))
                    .col(string_len(Jobs::Service, 40))
                    .col(string_len(Jobs::Kind, 80))
                    .col(text(Jobs::Payload))
                    .col(string_len(Jobs::State, 10))
                    .col(string_len_null(Jobs::OrderingKey, 200))
                    .col(string_len_null(Jobs::UniqueKey, 200))
                    .col(integer(Jobs::Attempts).default(0))
                    .col(timestamp_with_time_zone(Jobs::RunAt))
                    .col(timestamp_with_time_zone_null(Jobs::LockedUntil))
                    .col(string_len_null(Jobs::LockedBy, 64))
                    .col(text_null(Jobs::LastError))
                    .col(timestamp_with_time_zone(Jobs::CreatedAt))
                    .col(timestamp_with_time_zone_null(Jobs::FinishedAt))
                    .check(Expr::cust("state IN ('queued', 'running', 'done', 'dead')"))
                    .check(Expr::cust("attempts >= 0"))
                    .check(Expr::cust("length(service) >= 1 AND length(kind) >= 1"))
                    .check(Expr::cust(
                        "state <> 'running' OR (locked_until IS NOT NULL AND locked_by IS NOT NULL)",
                    ))
                    .check(Expr::cust("state NOT IN ('done', 'dead') OR finished_at IS NOT NULL"))
                    .to_owned(),
            )
            .await?;
        // What workers claim: their service's due jobs, oldest first.
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_due")
                    .table(Jobs::Table)
                    .col(Jobs::Service)
                    .col(Jobs::State)
                    .col(Jobs::RunAt)
                    .to_owned(),
            )
            .await?;
        // The job ahead of another with the same ordering key (the outbox's aggregate).
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_ordering")
                    .table(Jobs::Table)
                    .col(Jobs::Service)
                    .col(Jobs::OrderingKey)
                    .col(Jobs::Id)
                    .to_owned(),
            )
            .await?;
        // One job per key: a periodic job's occurrence, a deduplicated enqueue. NULL keys never
        // collide (both databases treat NULLs as distinct).
        manager
            .create_index(
                Index::create()
                    .name("uq_jobs_service_unique_key")
                    .table(Jobs::Table)
                    .col(Jobs::Service)
                    .col(Jobs::UniqueKey)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Jobs::Table).to_owned()).await
    }
}
