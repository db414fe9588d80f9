//! Fresh databases for tests: SQLite always; PostgreSQL when `THALI_TEST_DATABASE_URL` is set.
//! Under `CI=true` a missing PostgreSQL URL (or one that does not answer) fails the test instead
//! of skipping it.
use sea_orm::{ConnectionTrait, DatabaseConnection};

/// One empty database, ready to migrate.
pub struct TestDatabase {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    pub url: String,
    pub db: DatabaseConnection,
}

/// The Redis of `THALI_TEST_REDIS_URL`, or None when that is unset outside CI.
pub fn redis_url() -> Option<String> {
    match std::env::var("THALI_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if is_ci() => panic!("CI=true but THALI_TEST_REDIS_URL is not set: Redis tests cannot be skipped"),
        _ => {
            eprintln!("THALI_TEST_REDIS_URL unset: Redis tests skipped (they run in CI)");
            None
        }
    }
}

/// A Redis server of the test's own (`redis-server` on a free port), to stop and start.
pub struct RedisServer {
    port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts one, or None when `redis-server` is not installed outside CI.
    pub async fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut server = Self { port, child: None };
        if let Err(e) = server.spawn().await {
            if is_ci() {
                panic!("CI=true but redis-server cannot be started: {e}");
            }
            eprintln!("redis-server unavailable ({e}): test skipped");
            return None;
        }
        Some(server)
    }

    async fn spawn(&mut self) -> std::io::Result<()> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()?;
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Err(std::io::Error::other("redis-server did not start listening"))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (its data goes with it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.spawn().await.expect("redis-server restarts");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A writer that keeps what is written, for tests of log output.
#[derive(Clone, Default)]
pub struct CapturedWriter(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedWriter {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("captured writer lock").clone()).expect("logs are UTF-8")
    }
}

impl std::io::Write for CapturedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("captured writer lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Ten minutes past the current hour: a start for a `jobs::ManualClock` that a test moves by
/// minutes without crossing into the next hour, where workers' hourly housekeeping would run too.
pub fn ten_past_the_hour() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now().timestamp();
    chrono::DateTime::from_timestamp(now - now % 3600 + 600, 0).expect("a time this century")
}

/// Whether this run must not skip backends.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A new, empty SQLite database in a file of its own.
pub async fn sqlite() -> TestDatabase {
    let dir = std::env::temp_dir().join("thali-tests");
    std::fs::create_dir_all(&dir).expect("creating the test directory");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.join(format!("{}.db", uuid::Uuid::now_v7())).display()
    );
    let db = crate::db::connect(&url).await.expect("opening a SQLite test database");
    TestDatabase {
        backend: "sqlite",
        url,
        db,
    }
}

/// A new, empty PostgreSQL database (`thali_t_<uuid>`) on the server of
/// `THALI_TEST_DATABASE_URL`, or None when that is unset outside CI.
pub async fn postgres() -> Option<TestDatabase> {
    let admin_url = match std::env::var("THALI_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if is_ci() => panic!("CI=true but THALI_TEST_DATABASE_URL is not set: PostgreSQL tests cannot be skipped"),
        _ => {
            eprintln!("THALI_TEST_DATABASE_URL unset: PostgreSQL tests skipped (they run in CI)");
            return None;
        }
    };
    let admin = crate::db::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("THALI_TEST_DATABASE_URL does not answer: {e}"));
    let name = format!("thali_t_{}", uuid::Uuid::now_v7().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
    let _ = admin.close().await;
    let url = replace_database(&admin_url, &name);
    let db = crate::db::connect(&url)
        .await
        .expect("opening the PostgreSQL test database");
    Some(TestDatabase {
        backend: "postgres",
        url,
        db,
    })
}

/// Every configured backend, each a fresh database.
pub async fn all() -> Vec<TestDatabase> {
    let mut dbs = vec![sqlite().await];
    dbs.extend(postgres().await);
    dbs
}

fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_name_is_replaced_in_the_url() {
        assert_eq!(
            super::replace_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            super::replace_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(super::replace_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
