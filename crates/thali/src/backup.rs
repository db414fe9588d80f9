//! `thali backup`, `thali restore` and `thali backup verify` (issue 14 part 2; ADR 0034).
//!
//! A backup is a directory. It holds the database, the embedded media objects and
//! `manifest.json`, which records:
//! - each file's size and SHA-256;
//! - every table's row count, taken in the same snapshot as the dump;
//! - the last migration applied;
//! - the SHA-256 of the key files that decrypt and serve the data.
//!
//! The key files are named and checksummed, never copied: they are kept apart from backups.
//!
//! - SQLite: `VACUUM INTO` writes a consistent copy while the platform runs. It is restored by
//!   writing a temporary file beside the database and renaming it over the database, so a
//!   restore never stops half-way.
//! - PostgreSQL: `pg_dump -Fc` runs in a snapshot exported from a transaction that also counts
//!   the rows. It is restored with `pg_restore --single-transaction --exit-on-error`, all or
//!   nothing.
//! - The connection's password goes to `pg_dump` and `pg_restore` in `PGPASSWORD`, never on
//!   their command line.
//!
//! Before it writes anything, a restore checks every checksum and the target's emptiness.
//! `verify` restores into a scratch database and compares the row counts. It also checks
//! SQLite's integrity and walks the audit chains.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail, ensure};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, TransactionTrait};
use serde_json::{Value, json};
use thali_platform::config::Config;

use crate::progress::Progress;

const MANIFEST: &str = "manifest.json";
const FORMAT: u64 = 1;
const SQLITE_FILE: &str = "thali.db";
const PG_FILE: &str = "thali.pgdump";

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

fn kind(url: &str) -> anyhow::Result<Kind> {
    if url.starts_with("sqlite:") {
        Ok(Kind::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Kind::Postgres)
    } else {
        bail!("the database URL is neither sqlite: nor postgres://")
    }
}

/// The SQLite file of a `sqlite://PATH?…` URL.
fn sqlite_path(url: &str) -> PathBuf {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    PathBuf::from(rest.split('?').next().unwrap_or(rest))
}

/// The libpq environment for a `postgres://user:password@host:port/db?sslmode=…` URL, so no
/// part of it (the password least of all) is on a command line.
fn pg_env(url: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let rest = url.split_once("://").map(|(_, r)| r).context("a postgres:// URL")?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (auth, hostpart) = rest.rsplit_once('@').unwrap_or(("", rest));
    let (hostport, db) = hostpart.split_once('/').unwrap_or((hostpart, ""));
    let mut env = Vec::new();
    if !auth.is_empty() {
        let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
        env.push(("PGUSER", percent_decode(user)?));
        if !password.is_empty() {
            env.push(("PGPASSWORD", percent_decode(password)?));
        }
    }
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        // [IPv6]:port
        let (h, rest) = inner.split_once(']').context("an IPv6 host without its closing ]")?;
        (h, rest.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if !host.is_empty() {
        env.push(("PGHOST", percent_decode(host)?));
    }
    if let Some(p) = port {
        env.push(("PGPORT", p.to_owned()));
    }
    if !db.is_empty() {
        env.push(("PGDATABASE", percent_decode(db)?));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let var = match key {
            "sslmode" => "PGSSLMODE",
            "sslrootcert" => "PGSSLROOTCERT",
            "sslcert" => "PGSSLCERT",
            "sslkey" => "PGSSLKEY",
            // A Unix socket directory: postgres:///thali?host=/var/run/postgresql
            "host" => "PGHOST",
            _ => continue,
        };
        env.retain(|(k, _)| *k != var);
        env.push((var, percent_decode(value)?));
    }
    Ok(env)
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .context("a % escape in the database URL is cut short")?;
            out.push(u8::from_str_radix(hex, 16).context("a % escape in the database URL is not hex")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("the database URL is not UTF-8 once decoded")
}

/// The same server, another database (for `verify`'s scratch database).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_at = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..path_at]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// SHA-256 (hex) and size of a file, read in chunks.
fn file_digest(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        ctx.update(&buf[..n]);
    }
    let hex: String = ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, size))
}

/// Every regular file under `dir`, relative, sorted (none if `dir` does not exist).
fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if entry.file_type()?.is_file() {
                out.push(path.strip_prefix(dir)?.to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The application's tables (migration bookkeeping included), sorted.
async fn tables<C: ConnectionTrait>(conn: &C) -> anyhow::Result<Vec<String>> {
    let sql = match conn.get_database_backend() {
        DbBackend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        }
        _ => "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
    };
    let rows = conn
        .query_all_raw(sea_orm::Statement::from_string(conn.get_database_backend(), sql))
        .await?;
    rows.iter()
        .map(|r| r.try_get::<String>("", "name").map_err(Into::into))
        .collect()
}

async fn row_counts<C: ConnectionTrait>(conn: &C) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut counts = BTreeMap::new();
    for table in tables(conn).await? {
        let row = conn
            .query_one_raw(sea_orm::Statement::from_string(
                conn.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM \"{}\"", table.replace('"', "\"\"")),
            ))
            .await?
            .context("a count")?;
        counts.insert(table, row.try_get::<i64>("", "n")?);
    }
    Ok(counts)
}

async fn last_migration<C: ConnectionTrait>(conn: &C) -> anyhow::Result<Option<String>> {
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT version FROM seaql_migrations ORDER BY version DESC LIMIT 1",
        ))
        .await?;
    Ok(row.map(|r| r.try_get::<String>("", "version")).transpose()?)
}

/// `thali backup [--out DIR] [--keep N]`: the backup's directory, and the older backups beside
/// it that `keep` removed.
pub async fn backup(
    cfg: &Config,
    out: Option<PathBuf>,
    keep: Option<usize>,
) -> anyhow::Result<(PathBuf, Vec<PathBuf>)> {
    let url = cfg.database_url();
    let kind = kind(&url)?;
    let out = out.unwrap_or_else(|| {
        cfg.data_dir
            .join("backups")
            .join(chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string())
    });
    if out.exists() && std::fs::read_dir(&out)?.next().is_some() {
        bail!("{} is not empty: a backup goes into a new directory", out.display());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // Personal data and password hashes: for the operator only.
    set_mode(&out, 0o700)?;
    let out = std::fs::canonicalize(&out)?;
    let db = thali::migrated(cfg).await?;
    let (file, counts) = match kind {
        Kind::Sqlite => {
            let mut bar = Progress::new("backup database", 1);
            let target = out.join(SQLITE_FILE);
            let quoted = target.display().to_string().replace('\'', "''");
            db.execute_unprepared(&format!("VACUUM INTO '{quoted}'")).await?;
            bar.advance(1, "copied with VACUUM INTO");
            bar.finish();
            let copy = sqlite(&target, false).await?;
            let counts = row_counts(&copy).await?;
            copy.close().await?;
            (SQLITE_FILE, counts)
        }
        Kind::Postgres => {
            let txn = db
                .begin_with_config(
                    Some(sea_orm::IsolationLevel::RepeatableRead),
                    Some(sea_orm::AccessMode::ReadOnly),
                )
                .await?;
            let snapshot: String = txn
                .query_one_raw(sea_orm::Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT pg_export_snapshot() AS s",
                ))
                .await?
                .context("a snapshot")?
                .try_get("", "s")?;
            let counts = row_counts(&txn).await?;
            let target = out.join(PG_FILE);
            let mut bar = Progress::new("backup database", counts.len() as u64);
            let mut cmd = pg_command("pg_dump", &url)?;
            cmd.args(["--format=custom", "--no-owner", "--no-privileges", "--verbose"])
                .arg(format!("--snapshot={snapshot}"))
                .arg("--file")
                .arg(&target);
            run_with_progress(cmd, "dumping contents of table", &mut bar).context("pg_dump")?;
            bar.finish();
            txn.commit().await?;
            (PG_FILE, counts)
        }
    };
    let migration = last_migration(&db).await?;
    db.close().await?;

    // The embedded store's objects (S3 keeps its own: versioning and replication of the bucket,
    // deploy/s3/README.md). The link-signing key is a key, not media.
    let media_dir = cfg.media_dir();
    let objects: Vec<PathBuf> = files_under(&media_dir)?
        .into_iter()
        .filter(|p| p != Path::new("link-signing-key"))
        .collect();
    let mut media = Vec::new();
    if !objects.is_empty() {
        let mut bar = Progress::new("backup media", objects.len() as u64);
        for rel in &objects {
            let to = out.join("media").join(rel);
            std::fs::create_dir_all(to.parent().expect("under media/"))?;
            match std::fs::copy(media_dir.join(rel), &to) {
                Ok(_) => {
                    let (sha, bytes) = file_digest(&to)?;
                    media.push(json!({"path": rel.display().to_string(), "bytes": bytes, "sha256": sha}));
                    bar.advance(1, "");
                }
                // Deleted since the listing (an image removed meanwhile): not in the backup.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => bar.advance(1, "(gone meanwhile)"),
                Err(e) => return Err(e).with_context(|| format!("copying media {}", rel.display())),
            }
        }
        bar.finish();
    }

    let (sha, bytes) = file_digest(&out.join(file))?;
    let manifest = json!({
        "format": FORMAT,
        "created_at": chrono::Utc::now().to_rfc3339(),
        "thali_version": env!("CARGO_PKG_VERSION"),
        "database": {
            "kind": match kind { Kind::Sqlite => "sqlite", Kind::Postgres => "postgres" },
            "file": file,
            "bytes": bytes,
            "sha256": sha,
            "last_migration": migration,
            "tables": counts,
        },
        "media": media,
        "keys": keys_summary(cfg)?,
    });
    std::fs::write(out.join(MANIFEST), serde_json::to_vec_pretty(&manifest)?)?;
    for rel in files_under(&out)? {
        set_mode(&out.join(rel), 0o600)?;
    }
    let removed = match keep {
        Some(n) => prune(&out, n)?,
        None => Vec::new(),
    };
    Ok((out, removed))
}

/// Makes sure `write_metrics` can write `file`: its directory is created if missing, and a
/// file is written and removed there.
pub fn prepare_metrics_file(file: &Path) -> anyhow::Result<()> {
    let dir = metrics_dir(file)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {} for the metrics file", dir.display()))?;
    // A name of this process's own: another backup writing its metrics meanwhile is not touched.
    let probe = dir.join(format!(".thali-backup-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("{} is not writable for the metrics file", dir.display()))?;
    std::fs::remove_file(&probe)?;
    Ok(())
}

/// The metrics file's directory (the current one for a bare name).
fn metrics_dir(file: &Path) -> anyhow::Result<&Path> {
    file.file_name().context("the metrics file needs a file name")?;
    Ok(file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new(".")))
}

/// Writes a finished backup's time, size and duration to `file` in the Prometheus text format,
/// for node_exporter's textfile collector: `thali_backup_last_success_timestamp_seconds` is what
/// the alert BackupMissing watches. Written whole under a temporary name, then renamed, so a
/// scrape never reads half a file. A failed backup writes nothing: the time stays the last
/// success's, and the alert fires when that grows old.
pub fn write_metrics(file: &Path, backup: &Path, took: std::time::Duration) -> anyhow::Result<()> {
    let bytes: u64 = files_under(backup)?
        .iter()
        .map(|rel| std::fs::metadata(backup.join(rel)).map_or(0, |m| m.len()))
        .sum();
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let mut text = String::new();
    for (name, help, value) in [
        (
            "thali_backup_last_success_timestamp_seconds",
            "When the last successful thali backup finished, in seconds since 1970.",
            now,
        ),
        (
            "thali_backup_size_bytes",
            "Size of the last successful backup's files.",
            bytes as f64,
        ),
        (
            "thali_backup_duration_seconds",
            "How long the last successful backup took.",
            took.as_secs_f64(),
        ),
    ] {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"));
    }
    // A name of this process's own, renamed over the file once whole.
    let tmp = metrics_dir(file)?.join(format!(".thali-backup-metrics.{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("renaming {} to {}", tmp.display(), file.display()))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("making {} private", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Keeps the `keep` newest backups in the directory that holds `latest` (by their manifests'
/// time; `latest` always stays) and removes the others. Only directories with a manifest of
/// this format are backups; nothing else there is touched.
fn prune(latest: &Path, keep: usize) -> anyhow::Result<Vec<PathBuf>> {
    let Some(parent) = latest.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(Vec::new());
    };
    let mut backups = Vec::new();
    for entry in std::fs::read_dir(parent)? {
        let path = entry?.path();
        let Ok(text) = std::fs::read(path.join(MANIFEST)) else {
            continue;
        };
        let Ok(manifest) = serde_json::from_slice::<Value>(&text) else {
            continue;
        };
        let at = manifest["created_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if manifest["format"] == FORMAT
            && let Some(at) = at
        {
            backups.push((at, path));
        }
    }
    backups.sort_by_key(|b| std::cmp::Reverse(b.0));
    let mut removed = Vec::new();
    for (_, path) in backups.into_iter().skip(keep.max(1)) {
        if path == latest {
            continue;
        }
        std::fs::remove_dir_all(&path).with_context(|| format!("removing the old backup {}", path.display()))?;
        removed.push(path);
    }
    Ok(removed)
}

/// The key files a backup needs to be served and decrypted, by name and SHA-256 (not copied).
fn keys_summary(cfg: &Config) -> anyhow::Result<Value> {
    let mut signing = Vec::new();
    let dir = cfg.keys_dir();
    for rel in files_under(&dir)? {
        let (sha, _) = file_digest(&dir.join(&rel))?;
        signing.push(json!({"file": rel.display().to_string(), "sha256": sha}));
    }
    let data_keys = cfg.data_keys_file();
    let data_keys = if data_keys.is_file() {
        Some(file_digest(&data_keys)?.0)
    } else {
        None
    };
    Ok(json!({"signing_keys": signing, "data_keys_sha256": data_keys}))
}

/// `program` with the connection of `url` only: no PG* variable inherited from the caller
/// (PGSERVICE, PGOPTIONS, …) changes where it connects or how.
fn pg_command(program: &str, url: &str) -> anyhow::Result<Command> {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(pg_env(url)?);
    Ok(cmd)
}

/// Runs `cmd`, advancing `bar` for every line of its standard error that contains `marker`;
/// fails with the tool's last lines when it fails.
fn run_with_progress(mut cmd: Command, marker: &str, bar: &mut Progress) -> anyhow::Result<()> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?} (is the PostgreSQL client installed?)", cmd.get_program()))?;
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line?;
        if line.contains(marker) {
            bar.advance(1, "");
        } else if !line.contains(": processing ") && !line.contains(": reading ") {
            tail.push(line);
            if tail.len() > 20 {
                tail.remove(0);
            }
        }
    }
    let status = child.wait()?;
    ensure!(status.success(), "{status}: {}", tail.join("\n"));
    Ok(())
}

/// Restores backup `dir`'s dump into the database of `url` in one transaction (`clean`: dropping
/// what is there first), with a progress bar per table.
fn pg_restore(url: &str, manifest: &Value, dir: &Path, clean: bool, label: &str) -> anyhow::Result<()> {
    let database = pg_env(url)?
        .into_iter()
        .find(|(k, _)| *k == "PGDATABASE")
        .map(|(_, v)| v)
        .context("the database URL names no database")?;
    let mut cmd = pg_command("pg_restore", url)?;
    cmd.args([
        "--no-owner",
        "--no-privileges",
        "--single-transaction",
        "--exit-on-error",
        "--verbose",
    ])
    .arg("--dbname")
    .arg(database);
    if clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    cmd.arg(dir.join(PG_FILE));
    let total = manifest["database"]["tables"].as_object().map_or(0, |o| o.len()) as u64;
    let mut bar = Progress::new(label, total);
    let result = run_with_progress(cmd, "processing data for table", &mut bar);
    bar.finish();
    result
}

async fn sqlite(path: &Path, create: bool) -> anyhow::Result<DatabaseConnection> {
    let mode = if create { "rwc" } else { "rw" };
    Ok(thali_platform::db::connect(&format!("sqlite://{}?mode={mode}", path.display())).await?)
}

/// The manifest of backup `dir`, once every file in it matches its checksum.
fn checked_manifest(dir: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read(dir.join(MANIFEST)).with_context(|| format!("{}: no {MANIFEST}", dir.display()))?;
    let manifest: Value = serde_json::from_slice(&text).context("the manifest is not JSON")?;
    ensure!(
        manifest["format"] == FORMAT,
        "the manifest's format is {} (this thali reads {FORMAT})",
        manifest["format"]
    );
    let mut files = vec![(
        manifest["database"]["file"]
            .as_str()
            .context("the manifest names no database file")?
            .to_owned(),
        manifest["database"]["sha256"].as_str().unwrap_or_default().to_owned(),
        manifest["database"]["bytes"].as_u64().unwrap_or_default(),
    )];
    for m in manifest["media"].as_array().into_iter().flatten() {
        let path = m["path"].as_str().context("a media entry without a path")?;
        ensure!(
            !path.split('/').any(|c| c == ".." || c.is_empty()) && !path.starts_with('/'),
            "the manifest names media outside the backup: {path}"
        );
        files.push((
            format!("media/{path}"),
            m["sha256"].as_str().unwrap_or_default().to_owned(),
            m["bytes"].as_u64().unwrap_or_default(),
        ));
    }
    let mut bar = Progress::new("check backup", files.len() as u64);
    for (file, sha, bytes) in &files {
        ensure!(
            file.as_str() == SQLITE_FILE || file.as_str() == PG_FILE || file.starts_with("media/"),
            "the manifest names an unexpected file: {file}"
        );
        let (got, size) = file_digest(&dir.join(file))?;
        ensure!(
            &got == sha && size == *bytes,
            "{file} does not match the manifest (damaged or altered): nothing was restored"
        );
        bar.advance(1, "");
    }
    bar.finish();
    Ok(manifest)
}

/// Refuses a restore whose key files are not the ones the backup was made with (the data could
/// not be decrypted, or its tokens verified), before anything is written.
fn check_keys(cfg: &Config, manifest: &Value) -> anyhow::Result<()> {
    let want = &manifest["keys"]["data_keys_sha256"];
    if let Some(want) = want.as_str() {
        let path = cfg.data_keys_file();
        ensure!(
            path.is_file(),
            "the backup's data was encrypted with data keys ({}), and there is no data keys file at {}: \
             put the data keys file of the backup in place first; nothing was restored",
            short(want),
            path.display()
        );
        let (got, _) = file_digest(&path)?;
        ensure!(
            got == want,
            "the data keys file at {} is not the one the backup was made with (SHA-256 {} ≠ {}): \
             put that file in place first (a newer file that still holds its keys: use --skip-keys-check); nothing was restored",
            path.display(),
            short(&got),
            short(want)
        );
    }
    Ok(())
}

/// The backup's signing key files that the keys directory present lacks or holds otherwise.
/// Nothing stored depends on them (tokens are not stored), so a difference is a warning: every
/// session and token made before the backup is refused, and users sign in again.
fn signing_keys_missing(cfg: &Config, manifest: &Value) -> anyhow::Result<Vec<String>> {
    let dir = cfg.keys_dir();
    let mut missing = Vec::new();
    for key in manifest["keys"]["signing_keys"].as_array().into_iter().flatten() {
        let (Some(file), Some(want)) = (key["file"].as_str(), key["sha256"].as_str()) else {
            continue;
        };
        let path = dir.join(file);
        let same = path.is_file() && file_digest(&path)?.0 == want;
        if !same && !file.split('/').any(|c| c == "..") {
            missing.push(file.to_owned());
        }
    }
    Ok(missing)
}

/// The first 12 characters of a digest, for messages (whatever a damaged manifest holds).
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// Counts of the restored database against the manifest's; the tables that differ.
fn count_mismatches(manifest: &Value, got: &BTreeMap<String, i64>) -> Vec<String> {
    let want: BTreeMap<String, i64> = manifest["database"]["tables"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1))).collect())
        .unwrap_or_default();
    let mut bad = Vec::new();
    for (table, n) in &want {
        match got.get(table) {
            Some(m) if m == n => {}
            Some(m) => bad.push(format!("{table}: {m} rows, the backup had {n}")),
            None => bad.push(format!("{table}: missing")),
        }
    }
    for table in got.keys().filter(|t| !want.contains_key(*t)) {
        bad.push(format!("{table}: not in the backup"));
    }
    bad
}

/// How a restore may go beyond the safe default.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Replace a database that holds tables.
    pub replace: bool,
    /// Restore although the data keys file present is not the backup's.
    pub skip_keys_check: bool,
}

/// `thali restore DIR`: into the configured database, which must be empty unless
/// `options.replace`. The platform must be stopped (a running one is not detected).
pub async fn restore(cfg: &Config, dir: &Path, options: RestoreOptions) -> anyhow::Result<()> {
    let manifest = checked_manifest(dir)?;
    if !options.skip_keys_check {
        check_keys(cfg, &manifest)?;
    }
    let missing = signing_keys_missing(cfg, &manifest)?;
    if !missing.is_empty() {
        eprintln!(
            "restore: warning: the keys directory {} lacks the backup's signing key file(s) {} (or holds \
             other ones): tokens made before the backup will be refused and users sign in again",
            cfg.keys_dir().display(),
            missing.join(", ")
        );
    }
    let url = cfg.database_url();
    let kind = kind(&url)?;
    let file = manifest["database"]["file"].as_str().unwrap_or_default();
    ensure!(
        matches!((kind, file), (Kind::Sqlite, SQLITE_FILE) | (Kind::Postgres, PG_FILE)),
        "the backup holds a {} database and the configured database is {}",
        manifest["database"]["kind"],
        if kind == Kind::Sqlite { "SQLite" } else { "PostgreSQL" }
    );
    let refuse = |what: String, n: usize| {
        anyhow::anyhow!("{what} holds {n} table(s): restore into an empty database, or use --replace to replace it")
    };
    // Checked before anything is written: the media go first (files added beside any others),
    // then the database in one step.
    let sqlite_target = sqlite_path(&url);
    let pg = match kind {
        Kind::Sqlite => {
            if sqlite_target.exists() && !options.replace {
                let db = sqlite(&sqlite_target, false).await?;
                let tables = tables(&db).await?;
                db.close().await?;
                if !tables.is_empty() {
                    return Err(refuse(sqlite_target.display().to_string(), tables.len()));
                }
            }
            None
        }
        Kind::Postgres => {
            let db = thali_platform::db::connect(&url).await?;
            let existing = tables(&db).await?;
            if !existing.is_empty() && !options.replace {
                return Err(refuse("the database".into(), existing.len()));
            }
            Some((db, !existing.is_empty()))
        }
    };

    let media = manifest["media"].as_array().cloned().unwrap_or_default();
    if !media.is_empty() {
        let mut bar = Progress::new("restore media", media.len() as u64);
        for m in &media {
            let rel = m["path"].as_str().unwrap_or_default();
            let to = cfg.media_dir().join(rel);
            std::fs::create_dir_all(to.parent().expect("under media/"))?;
            std::fs::copy(dir.join("media").join(rel), &to)?;
            bar.advance(1, "");
        }
        bar.finish();
    }

    let counts = match pg {
        None => {
            let path = sqlite_target;
            let mut bar = Progress::new("restore database", 1);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let staged = path.with_extension("db.restoring");
            std::fs::copy(dir.join(SQLITE_FILE), &staged)?;
            std::fs::File::open(&staged)?.sync_all()?;
            // The old database's journal would be replayed over the new file: it goes first.
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            std::fs::rename(&staged, &path)?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::File::open(parent)?.sync_all()?;
            }
            bar.advance(1, "");
            bar.finish();
            let db = sqlite(&path, false).await?;
            let counts = row_counts(&db).await?;
            db.close().await?;
            counts
        }
        Some((db, clean)) => {
            pg_restore(&url, &manifest, dir, clean, "restore database").context("pg_restore (nothing was restored)")?;
            let counts = row_counts(&db).await?;
            db.close().await?;
            counts
        }
    };
    let bad = count_mismatches(&manifest, &counts);
    ensure!(
        bad.is_empty(),
        "the database was restored, but its row counts differ from the backup's: {}",
        bad.join("; ")
    );
    Ok(())
}

/// `thali backup verify DIR`: checksums, then a restore into a scratch database whose
/// integrity, row counts and audit chains are checked; the scratch database is removed.
pub async fn verify(cfg: &Config, dir: &Path) -> anyhow::Result<Vec<String>> {
    let manifest = checked_manifest(dir)?;
    let url = cfg.database_url();
    let scratch_name = format!("thali_verify_{}", uuid::Uuid::now_v7().simple());
    let (scratch, scratch_url) = match manifest["database"]["file"].as_str() {
        Some(SQLITE_FILE) => {
            let path = std::env::temp_dir().join(format!("{scratch_name}.db"));
            let scratch = Scratch::File(path.clone());
            if let Err(e) = std::fs::copy(dir.join(SQLITE_FILE), &path) {
                scratch.remove().await?;
                return Err(e.into());
            }
            (scratch, format!("sqlite://{}?mode=rw", path.display()))
        }
        Some(PG_FILE) => {
            ensure!(
                kind(&url)? == Kind::Postgres,
                "a PostgreSQL backup is verified against a PostgreSQL server: set THALI_DATABASE_URL(_FILE)"
            );
            let admin = thali_platform::db::connect(&url).await?;
            admin
                .execute_unprepared(&format!("CREATE DATABASE \"{scratch_name}\""))
                .await
                .context("creating a scratch database (the role needs CREATEDB)")?;
            let scratch = Scratch::Database(admin, scratch_name.clone());
            let scratch_url = with_database(&url, &scratch_name);
            if let Err(e) = pg_restore(&scratch_url, &manifest, dir, false, "verify restore") {
                scratch.remove().await?;
                return Err(e.context("the dump does not restore"));
            }
            (scratch, scratch_url)
        }
        _ => bail!("the manifest names no database file this thali knows"),
    };
    // Whatever happens in the checks, the scratch database goes.
    let findings = check_restored(&scratch_url, &manifest).await;
    scratch.remove().await?;
    findings
}

/// Integrity (SQLite), row counts and audit chains of the restored copy at `url`.
async fn check_restored(url: &str, manifest: &Value) -> anyhow::Result<Vec<String>> {
    let db = thali_platform::db::connect(url).await?;
    let mut findings = Vec::new();
    if db.get_database_backend() == DbBackend::Sqlite {
        let check = db
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Sqlite,
                "PRAGMA integrity_check",
            ))
            .await?
            .context("an integrity check")?
            .try_get_by_index::<String>(0)?;
        if check != "ok" {
            findings.push(format!("integrity_check: {check}"));
        }
    }
    let counts = row_counts(&db).await?;
    findings.extend(count_mismatches(manifest, &counts));
    if counts.contains_key("audit_log") {
        for service in thali_platform::audit_log::services(&db).await? {
            let total = thali_platform::audit_log::count(&db, &service).await?;
            let mut bar = Progress::new(format!("verify audit {service}"), total);
            let mut shown = 0;
            let result = thali_platform::audit_log::verify(&db, &service, None, |done| {
                bar.advance(done - shown, "");
                shown = done;
            })
            .await?;
            bar.finish();
            if let Err(broken) = result {
                findings.push(format!("audit chain: {broken}"));
            }
        }
    }
    db.close().await?;
    Ok(findings)
}

/// Where `verify` restored to, removed afterwards.
enum Scratch {
    File(PathBuf),
    Database(DatabaseConnection, String),
}

impl Scratch {
    async fn remove(self) -> anyhow::Result<()> {
        match self {
            Scratch::File(path) => std::fs::remove_file(path)?,
            Scratch::Database(admin, name) => {
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_becomes_libpq_variables_with_the_password_decoded() {
        let env = pg_env("postgres://thali:p%40ss%3Aword@db.internal:6432/thali?sslmode=require").unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PGUSER"), Some("thali"));
        assert_eq!(get("PGPASSWORD"), Some("p@ss:word"));
        assert_eq!(get("PGHOST"), Some("db.internal"));
        assert_eq!(get("PGPORT"), Some("6432"));
        assert_eq!(get("PGDATABASE"), Some("thali"));
        assert_eq!(get("PGSSLMODE"), Some("require"));
        let bare = pg_env("postgres://127.0.0.1/x").unwrap();
        assert_eq!(
            bare,
            vec![("PGHOST", "127.0.0.1".to_owned()), ("PGDATABASE", "x".to_owned())]
        );
        assert!(pg_env("postgres://u:%zz@h/d").is_err());
        let v6 = pg_env("postgres://u@[::1]:5433/d").unwrap();
        assert!(v6.contains(&("PGHOST", "::1".to_owned())) && v6.contains(&("PGPORT", "5433".to_owned())));
        let socket = pg_env("postgres:///d?host=%2Fvar%2Frun%2Fpostgresql&sslrootcert=%2Fca.pem").unwrap();
        assert!(
            socket.contains(&("PGHOST", "/var/run/postgresql".to_owned())),
            "{socket:?}"
        );
        assert!(socket.contains(&("PGSSLROOTCERT", "/ca.pem".to_owned())));
    }

    #[test]
    fn the_scratch_database_is_on_the_same_server() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/thali?sslmode=require", "scratch"),
            "postgres://u:p@h:5432/scratch?sslmode=require"
        );
        assert_eq!(with_database("postgres://h", "s"), "postgres://h/s");
    }

    #[test]
    fn counts_that_differ_are_named() {
        let manifest = json!({"database": {"tables": {"a": 1, "b": 2}}});
        let got = BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 3), ("c".to_owned(), 0)]);
        assert_eq!(
            count_mismatches(&manifest, &got),
            ["b: 3 rows, the backup had 2", "c: not in the backup"]
        );
    }
}
