//! Tables every service has in the same shape.
use sea_orm_migration::{prelude::*, schema::*};

/// A service's idempotency keys (ADR 0005; read and written by `platform::idempotency::Keys`):
/// one row per (scope, subject, key), pointing at the resource the first request created.
pub(crate) fn idempotency_table(name: &str) -> TableCreateStatement {
    let col = |c: &str| Alias::new(c);
    Table::create()
        .table(Alias::new(name))
        .col(string_len(col("scope"), 40))
        .col(string_len(col("subject"), 128))
        .col(string_len(col("idempotency_key"), 200))
        .col(string_len(col("request_hash"), 64))
        .col(uuid(col("resource_id")))
        .col(timestamp_with_time_zone(col("created_at")))
        .primary_key(
            Index::create()
                .col(col("scope"))
                .col(col("subject"))
                .col(col("idempotency_key")),
        )
        .check(Expr::cust("length(idempotency_key) >= 1"))
        .to_owned()
}
