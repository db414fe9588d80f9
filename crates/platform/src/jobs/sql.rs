//! The queue's statements, one text for both databases (`db::statement`). PostgreSQL claims with `FOR UPDATE SKIP LOCKED` inside the `UPDATE`;
//! SQLite (one writer at a time) claims with the same single `UPDATE … RETURNING`, autocommit.
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Value};

pub(super) use crate::db::statement;

use super::{Job, NewJob};

/// `$first, $first+1, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes `job`; its id, or None when a job with its unique key exists. The only constraint an
/// insert can break is the unique (service, unique key). No conflict target is named: SQLite
/// resolves a named target when the statement is prepared, and a pooled connection that read the
/// schema before the migration adding the index fails to find it.
///
/// On PostgreSQL a job due now also notifies the service's workers (`NOTIFY_CHANNEL`, delivered
/// at commit, not at all on rollback) in the same statement, and only when a row was inserted: a
/// round trip less per enqueue on the hot paths (a booking enqueues two jobs). A job due later
/// notifies no one: waking a worker before its time finds nothing to claim, and the worker's
/// polling picks it up when it is due.
pub(super) async fn insert<C: ConnectionTrait>(
    conn: &C,
    service: &str,
    job: &NewJob,
    now: DateTime<Utc>,
) -> Result<Option<i64>, DbErr> {
    let backend = conn.get_database_backend();
    const INSERT: &str = "INSERT INTO jobs (service, kind, payload, state, ordering_key, unique_key, attempts, run_at, created_at) \
         VALUES ($1, $2, $3, 'queued', $4, $5, 0, $6, $7) \
         ON CONFLICT DO NOTHING RETURNING id";
    let mut values: Vec<Value> = vec![
        service.into(),
        job.kind.clone().into(),
        job.payload.clone().into(),
        job.ordering_key.clone().into(),
        job.unique_key.clone().into(),
        job.run_at.unwrap_or(now).into(),
        now.into(),
    ];
    let due_now = job.run_at.is_none_or(|at| at <= now);
    let stmt = if backend == DbBackend::Postgres && due_now {
        values.push(super::NOTIFY_CHANNEL.into());
        statement(
            backend,
            &format!("WITH inserted AS ({INSERT}) SELECT id, pg_notify($8, $1) IS NULL AS woke FROM inserted"),
            values,
        )
    } else {
        statement(backend, INSERT, values)
    };
    match conn.query_one_raw(stmt).await? {
        Some(row) => Ok(Some(row.try_get::<i64>("", "id")?)),
        None => Ok(None),
    }
}

/// Claims up to `limit` due jobs of `kinds` for `worker`, leased until `lease_until`: queued jobs
/// whose time has come and running jobs whose lease ended, oldest first, skipping any job with an
/// earlier unfinished job of the same ordering key.
pub(super) async fn claim<C: ConnectionTrait>(
    conn: &C,
    service: &str,
    worker: &str,
    kinds: &[String],
    limit: usize,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Vec<Job>, DbErr> {
    if kinds.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let backend = conn.get_database_backend();
    let lock = if backend == DbBackend::Postgres {
        "FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    // Two branches, so each can walk an index in order (`idx_jobs_claim`: service, state, run_at,
    // id) and stop at the limit. One `WHERE (queued AND due) OR (running AND lease over)` made
    // PostgreSQL read and sort every due row on each claim (ADR 0011, docs/perf/jobs.md).
    let sql = format!(
        "WITH due AS ( \
           SELECT j.id FROM jobs j \
           WHERE j.service = $3 AND j.state = 'queued' AND j.run_at <= $4 AND j.kind IN ({kinds}) \
             AND (j.ordering_key IS NULL OR NOT EXISTS ( \
               SELECT 1 FROM jobs e WHERE e.service = j.service AND e.ordering_key = j.ordering_key \
                 AND e.id < j.id AND e.state IN ('queued', 'running'))) \
           ORDER BY j.run_at, j.id LIMIT {limit} {lock}), \
         expired AS ( \
           SELECT j.id FROM jobs j \
           WHERE j.service = $3 AND j.state = 'running' AND j.locked_until <= $4 AND j.kind IN ({kinds}) \
           ORDER BY j.locked_until, j.id LIMIT {limit} {lock}) \
         UPDATE jobs SET state = 'running', attempts = attempts + 1, locked_until = $1, locked_by = $2 \
         WHERE id IN (SELECT id FROM (SELECT id FROM expired UNION ALL SELECT id FROM due) AS c LIMIT {limit}) \
         RETURNING id, kind, payload, attempts, ordering_key",
        kinds = placeholders(5, kinds.len()),
    );
    let mut values: Vec<Value> = vec![lease_until.into(), worker.into(), service.into(), now.into()];
    values.extend(kinds.iter().map(|k| Value::from(k.clone())));
    let rows = conn.query_all_raw(statement(backend, &sql, values)).await?;
    let mut jobs = rows
        .iter()
        .map(|row| {
            Ok(Job {
                id: row.try_get("", "id")?,
                kind: row.try_get("", "kind")?,
                payload: row.try_get("", "payload")?,
                attempt: u32::try_from(row.try_get::<i32>("", "attempts")?).unwrap_or(u32::MAX),
                ordering_key: row.try_get("", "ordering_key")?,
            })
        })
        .collect::<Result<Vec<_>, DbErr>>()?;
    // RETURNING does not keep the subquery's order.
    jobs.sort_by_key(|j| j.id);
    Ok(jobs)
}

/// Marks the given runs (id, attempt) of `worker` done. Runs whose lease another worker took
/// since are left alone.
pub(super) async fn complete<C: ConnectionTrait>(
    conn: &C,
    worker: &str,
    runs: &[(i64, u32)],
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    if runs.is_empty() {
        return Ok(0);
    }
    let matches = (0..runs.len())
        .map(|i| format!("(id = ${} AND attempts = ${})", 3 + 2 * i, 4 + 2 * i))
        .collect::<Vec<_>>()
        .join(" OR ");
    let sql = format!(
        "UPDATE jobs SET state = 'done', finished_at = $1, locked_until = NULL, last_error = NULL \
         WHERE locked_by = $2 AND state = 'running' AND ({matches})"
    );
    let mut values: Vec<Value> = vec![now.into(), worker.into()];
    for (id, attempt) in runs {
        values.push((*id).into());
        values.push(i32::try_from(*attempt).unwrap_or(i32::MAX).into());
    }
    let backend = conn.get_database_backend();
    Ok(conn
        .execute_raw(statement(backend, &sql, values))
        .await?
        .rows_affected())
}

/// Puts a failed run back in the queue for `run_at`.
pub(super) async fn retry_later<C: ConnectionTrait>(
    conn: &C,
    worker: &str,
    job: &Job,
    run_at: DateTime<Utc>,
    error: &str,
) -> Result<u64, DbErr> {
    let backend = conn.get_database_backend();
    let stmt = statement(
        backend,
        "UPDATE jobs SET state = 'queued', run_at = $1, locked_until = NULL, locked_by = NULL, last_error = $2 \
         WHERE id = $3 AND attempts = $4 AND locked_by = $5 AND state = 'running'",
        vec![
            run_at.into(),
            truncate(error).into(),
            job.id.into(),
            attempt_value(job),
            worker.into(),
        ],
    );
    Ok(conn.execute_raw(stmt).await?.rows_affected())
}

/// Gives up on a run: the job is dead.
pub(super) async fn bury<C: ConnectionTrait>(
    conn: &C,
    worker: &str,
    job: &Job,
    now: DateTime<Utc>,
    error: &str,
) -> Result<u64, DbErr> {
    let backend = conn.get_database_backend();
    let stmt = statement(
        backend,
        "UPDATE jobs SET state = 'dead', finished_at = $1, locked_until = NULL, last_error = $2 \
         WHERE id = $3 AND attempts = $4 AND locked_by = $5 AND state = 'running'",
        vec![
            now.into(),
            truncate(error).into(),
            job.id.into(),
            attempt_value(job),
            worker.into(),
        ],
    );
    Ok(conn.execute_raw(stmt).await?.rows_affected())
}

/// Extends the lease of a run still held by `worker`; false when it is no longer held.
pub(super) async fn renew<C: ConnectionTrait>(
    conn: &C,
    worker: &str,
    job: &Job,
    lease_until: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let backend = conn.get_database_backend();
    let stmt = statement(
        backend,
        "UPDATE jobs SET locked_until = $1 WHERE id = $2 AND attempts = $3 AND locked_by = $4 AND state = 'running'",
        vec![lease_until.into(), job.id.into(), attempt_value(job), worker.into()],
    );
    Ok(conn.execute_raw(stmt).await?.rows_affected() == 1)
}

/// Per kind: how many jobs are queued, and since when the oldest due one has waited.
pub(super) async fn stats<C: ConnectionTrait>(
    conn: &C,
    service: &str,
    now: DateTime<Utc>,
) -> Result<Vec<(String, i64, Option<DateTime<Utc>>)>, DbErr> {
    let backend = conn.get_database_backend();
    let stmt = statement(
        backend,
        "SELECT kind, COUNT(*) AS queued, MIN(CASE WHEN run_at <= $2 THEN run_at END) AS oldest_due \
         FROM jobs WHERE service = $1 AND state = 'queued' GROUP BY kind",
        vec![service.into(), now.into()],
    );
    conn.query_all_raw(stmt)
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get("", "kind")?,
                row.try_get("", "queued")?,
                row.try_get("", "oldest_due")?,
            ))
        })
        .collect()
}

fn attempt_value(job: &Job) -> Value {
    i32::try_from(job.attempt).unwrap_or(i32::MAX).into()
}

/// Errors are kept to 2,000 characters.
fn truncate(error: &str) -> String {
    error.chars().take(2000).collect()
}
