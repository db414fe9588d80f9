//! The claim walks `(service, state, run_at, id)` in order and stops at its limit: with `id` in
//! the index, PostgreSQL needs no sort of the due rows (docs/perf/jobs.md). Replaces
//! `idx_jobs_due (service, state, run_at)`.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    Service,
    State,
    RunAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_claim")
                    .table(Jobs::Table)
                    .col(Jobs::Service)
                    .col(Jobs::State)
                    .col(Jobs::RunAt)
                    .col(Jobs::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(Index::drop().name("idx_jobs_due").table(Jobs::Table).to_owned())
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
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
        manager
            .drop_index(Index::drop().name("idx_jobs_claim").table(Jobs::Table).to_owned())
            .await
    }
}
