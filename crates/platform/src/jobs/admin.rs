//! What operators do with the queue (`thali jobs …`) and the queue's own housekeeping: list jobs,
//! send dead ones back, purge old ones.
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr, Value};

use super::{JobState, sql::statement};

/// One job, as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobRow {
    pub id: i64,
    pub service: String,
    pub kind: String,
    pub state: String,
    pub attempts: i32,
    pub run_at: DateTime<Utc>,
    pub locked_until: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Which jobs to list or act on.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub service: Option<String>,
    pub kind: Option<String>,
    pub state: Option<JobState>,
}

/// `AND column = $n` for each filter that is set, from placeholder `first`.
fn conditions(filter: &Filter, first: usize) -> (String, Vec<Value>) {
    let mut sql = String::new();
    let mut values: Vec<Value> = Vec::new();
    let parts = [
        ("service", filter.service.clone()),
        ("kind", filter.kind.clone()),
        ("state", filter.state.map(|s| s.as_str().to_owned())),
    ];
    for (column, value) in parts {
        if let Some(v) = value {
            sql.push_str(&format!(" AND {column} = ${}", first + values.len()));
            values.push(v.into());
        }
    }
    (sql, values)
}

/// The newest `limit` jobs matching `filter`.
pub async fn list<C: ConnectionTrait>(conn: &C, filter: &Filter, limit: u64) -> Result<Vec<JobRow>, DbErr> {
    let (cond, values) = conditions(filter, 1);
    let sql = format!(
        "SELECT id, service, kind, state, attempts, run_at, locked_until, last_error, created_at, finished_at \
         FROM jobs WHERE 1 = 1{cond} ORDER BY id DESC LIMIT {limit}"
    );
    let rows = conn
        .query_all_raw(statement(conn.get_database_backend(), &sql, values))
        .await?;
    rows.iter()
        .map(|r| {
            Ok(JobRow {
                id: r.try_get("", "id")?,
                service: r.try_get("", "service")?,
                kind: r.try_get("", "kind")?,
                state: r.try_get("", "state")?,
                attempts: r.try_get("", "attempts")?,
                run_at: r.try_get("", "run_at")?,
                locked_until: r.try_get("", "locked_until")?,
                last_error: r.try_get("", "last_error")?,
                created_at: r.try_get("", "created_at")?,
                finished_at: r.try_get("", "finished_at")?,
            })
        })
        .collect()
}

/// Sends a dead job back to the queue with a fresh set of attempts, due now. Returns whether
/// `id` was a dead job (of `service`, when given).
pub async fn retry<C: ConnectionTrait>(
    conn: &C,
    id: i64,
    service: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let filter = Filter {
        service: service.map(str::to_owned),
        ..Filter::default()
    };
    let (cond, mut values) = conditions(&filter, 3);
    values.insert(0, now.into());
    values.insert(1, id.into());
    let sql = format!(
        "UPDATE jobs SET state = 'queued', attempts = 0, run_at = $1, finished_at = NULL, locked_until = NULL, \
         locked_by = NULL WHERE id = $2 AND state = 'dead'{cond}"
    );
    let done = conn
        .execute_raw(statement(conn.get_database_backend(), &sql, values))
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Sends every dead job matching `filter` (its state is ignored) back to the queue. Returns how many.
pub async fn retry_all_dead<C: ConnectionTrait>(conn: &C, filter: &Filter, now: DateTime<Utc>) -> Result<u64, DbErr> {
    let filter = Filter {
        state: None,
        ..filter.clone()
    };
    let (cond, mut values) = conditions(&filter, 2);
    values.insert(0, now.into());
    let sql = format!(
        "UPDATE jobs SET state = 'queued', attempts = 0, run_at = $1, finished_at = NULL, locked_until = NULL, \
         locked_by = NULL WHERE state = 'dead'{cond}"
    );
    let done = conn
        .execute_raw(statement(conn.get_database_backend(), &sql, values))
        .await?;
    Ok(done.rows_affected())
}

/// Deletes finished jobs in `state` (done or dead) that finished before `before`. Returns how many.
pub async fn purge<C: ConnectionTrait>(
    conn: &C,
    state: JobState,
    filter: &Filter,
    before: DateTime<Utc>,
) -> Result<u64, DbErr> {
    assert!(
        matches!(state, JobState::Done | JobState::Dead),
        "only finished jobs are purged"
    );
    let filter = Filter {
        state: Some(state),
        ..filter.clone()
    };
    let (cond, mut values) = conditions(&filter, 2);
    values.insert(0, before.into());
    let sql = format!("DELETE FROM jobs WHERE finished_at < $1{cond}");
    let done = conn
        .execute_raw(statement(conn.get_database_backend(), &sql, values))
        .await?;
    Ok(done.rows_affected())
}

/// Parses an age such as `30d`, `12h`, `45m` or `90s`.
pub fn parse_age(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let unit = s.chars().last()?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().ok()?;
    let secs = match unit {
        'd' => n.checked_mul(86_400)?,
        'h' => n.checked_mul(3_600)?,
        'm' => n.checked_mul(60)?,
        's' => n,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn ages_parse_with_their_unit() {
        assert_eq!(super::parse_age("30d"), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(super::parse_age("12h"), Some(Duration::from_secs(12 * 3_600)));
        assert_eq!(super::parse_age("45m"), Some(Duration::from_secs(45 * 60)));
        assert_eq!(super::parse_age("90s"), Some(Duration::from_secs(90)));
        assert_eq!(super::parse_age("30"), None);
        assert_eq!(super::parse_age("d"), None);
        assert_eq!(super::parse_age("-3d"), None);
        assert_eq!(super::parse_age(""), None);
    }
}
