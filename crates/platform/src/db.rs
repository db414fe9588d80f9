//! Database connections: SQLite in embedded mode (WAL, foreign keys on, busy timeout),
//! PostgreSQL in distributed mode, one pool per process.
use std::{path::Path, time::Duration};

use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbErr, RuntimeErr, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};

/// Opens a pool on `url` of the default size. For SQLite the file's directory is created first.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    connect_sized(url, None).await
}

/// Opens a pool on `url` of at most `max` connections (default 20 on PostgreSQL, 8 on SQLite).
pub async fn connect_sized(url: &str, max: Option<u32>) -> Result<DatabaseConnection, DbErr> {
    let is_sqlite = url.starts_with("sqlite:");
    if is_sqlite && let Some(dir) = sqlite_dir(url) {
        std::fs::create_dir_all(dir).map_err(|e| DbErr::Custom(format!("creating {}: {e}", dir.display())))?;
    }
    let mut opts = ConnectOptions::new(url.to_owned());
    // Both stay under the 5 s call deadline: a database that refuses connections is answered
    // as DATABASE_UNAVAILABLE (the caller's breaker leaves the replica alone), not as a call
    // that ran out of time (which counts against the replica).
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(2))
        .acquire_timeout(Duration::from_secs(2))
        .max_connections(max.unwrap_or(if is_sqlite { 8 } else { 20 }))
        .map_sqlx_sqlite_opts(|o| {
            use sea_orm::sqlx::sqlite::SqliteJournalMode;
            o.journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5))
        });
    Database::connect(opts).await
}

/// The pool's state as gauges: connections open and in use, open and idle, and the most it may
/// open (`db_pool_connections{state}`, `db_pool_max_connections`). In use near the maximum for
/// minutes means calls queue for a connection (alert DatabasePoolSaturated). Sampled by the
/// database health probe.
pub fn record_pool(db: &DatabaseConnection) {
    fn set(size: u32, idle: usize, max: u32) {
        let idle = idle.min(size as usize) as f64;
        metrics::gauge!("db_pool_connections", "state" => "in_use").set(f64::from(size) - idle);
        metrics::gauge!("db_pool_connections", "state" => "idle").set(idle);
        metrics::gauge!("db_pool_max_connections").set(f64::from(max));
    }
    match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            set(pool.size(), pool.num_idle(), pool.options().get_max_connections());
        }
        sea_orm::DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            set(pool.size(), pool.num_idle(), pool.options().get_max_connections());
        }
        _ => {}
    }
}

fn sqlite_dir(url: &str) -> Option<&Path> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Path::new(path).parent().filter(|p| !p.as_os_str().is_empty())
}

/// A raw statement written once for both databases with `$n` placeholders, which SQLite reads as
/// `?n`. The text must hold no other `$`.
pub fn statement(backend: sea_orm::DbBackend, sql: &str, values: Vec<sea_orm::Value>) -> sea_orm::Statement {
    let sql = match backend {
        sea_orm::DbBackend::Postgres => sql.to_owned(),
        _ => sql.replace('$', "?"),
    };
    sea_orm::Statement::from_sql_and_values(backend, sql, values)
}

/// Whether `err` is a unique-constraint violation (a taken name, a replayed key).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}

/// Whether `err` is a PostgreSQL exclusion-constraint violation (`23P01`: two rows whose
/// ranges must not overlap, such as two bookings of one table).
pub fn is_exclusion_violation(err: &DbErr) -> bool {
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err else {
        return false;
    };
    match e.as_ref() {
        sea_orm::sqlx::Error::Database(db) => db.code().as_deref() == Some("23P01"),
        _ => false,
    }
}

/// Whether `err` is PostgreSQL ending a transaction to break a deadlock (`40P01`) or a
/// serialization failure (`40001`): nothing was written, and the same work may be tried again.
pub fn is_deadlock(err: &DbErr) -> bool {
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err else {
        return false;
    };
    match e.as_ref() {
        sea_orm::sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

/// Begins a transaction that will write. On SQLite it takes the write lock at `BEGIN`
/// (IMMEDIATE), where the busy timeout applies, instead of failing when a read-then-write
/// transaction meets another writer; PostgreSQL ignores the mode.
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// Whether a database error is about the database's state, not the query: unreachable, busy,
/// a serialization failure or deadlock, shutting down. Callers answer these with "try again".
pub fn is_unavailable(err: &DbErr) -> bool {
    if matches!(err, DbErr::ConnectionAcquire(_) | DbErr::Conn(_)) {
        return true;
    }
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err else {
        return false;
    };
    match e.as_ref() {
        sea_orm::sqlx::Error::Io(_) | sea_orm::sqlx::Error::PoolTimedOut | sea_orm::sqlx::Error::PoolClosed => true,
        sea_orm::sqlx::Error::Database(db) => {
            // SQLite: BUSY, LOCKED, BUSY_SNAPSHOT. PostgreSQL: serialization failure, deadlock,
            // admin shutdown, cannot connect now.
            matches!(
                db.code().as_deref(),
                Some("5" | "6" | "517" | "40001" | "40P01" | "57P01" | "57P03")
            )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pool_is_as_large_as_configured_and_its_gauges_say_so() {
        let db = connect_sized("sqlite::memory:", Some(3)).await.unwrap();
        assert_eq!(db.get_sqlite_connection_pool().options().get_max_connections(), 3);
        let db = connect("sqlite::memory:").await.unwrap();
        assert_eq!(db.get_sqlite_connection_pool().options().get_max_connections(), 8);
    }

    #[test]
    fn sqlite_directory_is_found_in_the_url() {
        assert_eq!(
            sqlite_dir("sqlite://./data/thali.db?mode=rwc"),
            Some(Path::new("./data"))
        );
        assert_eq!(sqlite_dir("sqlite::memory:"), None);
        assert_eq!(sqlite_dir("sqlite://thali.db"), None);
    }
}
