//! Database connections: SQLite in embedded mode (WAL, foreign keys on, busy timeout),
//! PostgreSQL in distributed mode, one pool per process.
use std::{path::Path, time::Duration};

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

/// Opens a pool on `url`. For SQLite the file's directory is created first.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let is_sqlite = url.starts_with("sqlite:");
    if is_sqlite && let Some(dir) = sqlite_dir(url) {
        std::fs::create_dir_all(dir).map_err(|e| DbErr::Custom(format!("creating {}: {e}", dir.display())))?;
    }
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .max_connections(if is_sqlite { 8 } else { 20 })
        .map_sqlx_sqlite_opts(|o| {
            use sea_orm::sqlx::sqlite::SqliteJournalMode;
            o.journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5))
        });
    Database::connect(opts).await
}

fn sqlite_dir(url: &str) -> Option<&Path> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Path::new(path).parent().filter(|p| !p.as_os_str().is_empty())
}

/// Whether a database error means the database could not be reached (as opposed to a bad query).
pub fn is_unavailable(err: &DbErr) -> bool {
    matches!(err, DbErr::ConnectionAcquire(_) | DbErr::Conn(_))
}

#[cfg(test)]
mod tests {
    use super::*;

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
