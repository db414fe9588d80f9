//! `thali backup`, `thali restore` and `thali backup verify` as an operator runs them (issue 14
//! part 2, ADR 0034), on the embedded SQLite data directory and on PostgreSQL:
//! - a backup holds the database, the media objects and a checksummed manifest;
//! - it restores into an empty database with every row, and refuses a database that holds
//!   tables;
//! - a damaged file is named and nothing is written;
//! - a restore without the data keys file the backup was made with is refused before anything
//!   is written;
//! - `verify` restores into a scratch database, checks it, and removes it.
mod support;

use std::path::Path;

use sea_orm::{ConnectionTrait, DatabaseConnection};
use support::{register_buyers as register, thali_on};

/// The number `sql` (`SELECT COUNT(*) AS n …`) answers.
async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "n")
        .unwrap()
}

async fn accounts(db: &DatabaseConnection) -> i64 {
    count(db, "SELECT COUNT(*) AS n FROM accounts").await
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("thali-backup-{name}-{}", uuid::Uuid::now_v7()))
}

/// Flips one byte in the middle of `file`.
fn damage(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(file, bytes).unwrap();
}

#[tokio::test]
async fn an_embedded_platform_is_backed_up_restored_elsewhere_and_verified_and_damage_is_named() {
    let dir = temp("src");
    let (ok, _, err) = thali_on(&dir, None, &["migrate"]);
    assert!(ok, "migrate: {err}");
    let db = thali_platform::db::connect(&format!("sqlite://{}?mode=rw", dir.join("thali.db").display()))
        .await
        .unwrap();
    register(&db, 3).await;
    let media = dir.join("media");
    std::fs::create_dir_all(&media).unwrap();
    std::fs::write(media.join("0123abcd.png"), b"\x89PNG\r\n\x1a\n an image").unwrap();
    std::fs::write(media.join("link-signing-key"), [7u8; 32]).unwrap();
    std::fs::write(dir.join("data-keys.json"), br#"{"keys": "stand-in"}"#).unwrap();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::write(dir.join("keys/ed25519-0001.ed25519"), [1u8; 32]).unwrap();

    let backup = temp("out");
    let out = backup.to_str().unwrap();
    // The scheduled job's form: its time, size and duration go to node_exporter's textfile
    // directory, where the alert BackupMissing watches the time.
    // (Its directory does not exist yet: the backup makes it.)
    let textfile = temp("textfile").join("thali_backup.prom");
    let metrics = textfile.to_str().unwrap();
    let (ok, stdout, err) = thali_on(&dir, None, &["backup", "--out", out, "--metrics-file", metrics]);
    assert!(ok, "{stdout}{err}");
    assert!(
        err.contains("backup database") && err.contains("backup media"),
        "progress: {err}"
    );
    let written = std::fs::read_to_string(&textfile).unwrap();
    let value = |name: &str| -> f64 {
        let line = written
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in {written}"));
        line.split_once(' ').unwrap().1.parse().unwrap()
    };
    let at = value("thali_backup_last_success_timestamp_seconds");
    assert!((chrono::Utc::now().timestamp() as f64 - at).abs() < 120.0, "{written}");
    assert!(value("thali_backup_size_bytes") > 1000.0, "{written}");
    assert!(
        written.contains("# TYPE thali_backup_duration_seconds gauge"),
        "{written}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["database"]["kind"], "sqlite");
    assert_eq!(manifest["database"]["tables"]["accounts"], 3, "{manifest}");
    assert_eq!(manifest["database"]["sha256"].as_str().unwrap().len(), 64);
    let media_paths: Vec<&str> = manifest["media"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(media_paths, ["0123abcd.png"], "the signing key is a key, not media");
    assert!(manifest["keys"]["data_keys_sha256"].is_string(), "{manifest}");
    // A second backup into the same directory is refused, and leaves the last success's time.
    let (ok, _, err) = thali_on(&dir, None, &["backup", "--out", out, "--metrics-file", metrics]);
    assert!(!ok && err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read_to_string(&textfile).unwrap(), written);
    std::fs::remove_dir_all(textfile.parent().unwrap()).unwrap();
    // A metrics file that cannot be written is refused before any backup is taken.
    let blocked = temp("blocked");
    std::fs::write(&blocked, b"a file, not a directory").unwrap();
    let nowhere = temp("never");
    let (ok, _, err) = thali_on(
        &dir,
        None,
        &[
            "backup",
            "--out",
            nowhere.to_str().unwrap(),
            "--metrics-file",
            blocked.join("thali_backup.prom").to_str().unwrap(),
        ],
    );
    assert!(!ok && err.contains("for the metrics file"), "{err}");
    assert!(!nowhere.exists(), "no backup was taken");
    std::fs::remove_file(&blocked).unwrap();

    // Into the database it came from (it holds tables): refused without --replace.
    let (ok, _, err) = thali_on(&dir, None, &["restore", out]);
    assert!(!ok && err.contains("--replace"), "{err}");

    // Elsewhere, without the data keys file: refused, nothing written.
    let elsewhere = temp("dst");
    let (ok, _, err) = thali_on(&elsewhere, None, &["restore", out]);
    assert!(!ok && err.contains("data keys"), "{err}");
    assert!(!elsewhere.join("thali.db").exists());
    // With it: every row and the media are back.
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(dir.join("data-keys.json"), elsewhere.join("data-keys.json")).unwrap();
    let (ok, stdout, err) = thali_on(&elsewhere, None, &["restore", out]);
    assert!(ok, "{stdout}{err}");
    assert!(
        err.contains("check backup") && err.contains("restore database"),
        "{err}"
    );
    // Its keys directory lacks the backup's signing key: a warning that users sign in again.
    assert!(
        err.contains("lacks the backup's signing key file(s) ed25519-0001.ed25519") && err.contains("sign in again"),
        "{err}"
    );
    let restored = thali_platform::db::connect(&format!("sqlite://{}?mode=rw", elsewhere.join("thali.db").display()))
        .await
        .unwrap();
    assert_eq!(accounts(&restored).await, 3);
    assert_eq!(
        std::fs::read(elsewhere.join("media/0123abcd.png")).unwrap(),
        b"\x89PNG\r\n\x1a\n an image"
    );
    // The restored platform runs: its audit chain verifies.
    let (ok, stdout, err) = thali_on(&elsewhere, None, &["audit", "verify"]);
    assert!(ok, "{stdout}{err}");

    let (ok, stdout, err) = thali_on(&dir, None, &["backup", "verify", out]);
    assert!(ok, "{stdout}{err}");
    assert!(stdout.contains("check out"), "{stdout}");

    // One damaged byte: named, and a restore writes nothing.
    damage(&backup.join("thali.db"));
    let third = temp("dst3");
    std::fs::create_dir_all(&third).unwrap();
    std::fs::copy(dir.join("data-keys.json"), third.join("data-keys.json")).unwrap();
    let (ok, _, err) = thali_on(&third, None, &["restore", out]);
    assert!(!ok && err.contains("thali.db does not match the manifest"), "{err}");
    assert!(!third.join("thali.db").exists());
    let (ok, _, err) = thali_on(&dir, None, &["backup", "verify", out]);
    assert!(!ok && err.contains("does not match"), "{err}");
    // Retention: the two newest backups stay; what is not a backup is never touched.
    let root = temp("retention");
    std::fs::create_dir_all(root.join("notes")).unwrap();
    let paths: Vec<String> = (1..=3)
        .map(|n| root.join(format!("b{n}")).display().to_string())
        .collect();
    for (n, p) in paths.iter().enumerate() {
        let mut args = vec!["backup", "--out", p.as_str()];
        if n == 2 {
            args.extend(["--keep", "2"]);
        }
        let (ok, stdout, err) = thali_on(&dir, None, &args);
        assert!(ok, "{stdout}{err}");
        if n == 2 {
            assert!(
                stdout.contains(&format!("removed the old backup {}", paths[0])),
                "{stdout}"
            );
        }
    }
    assert!(!Path::new(&paths[0]).exists());
    assert!(Path::new(&paths[1]).join("manifest.json").exists() && Path::new(&paths[2]).exists());
    assert!(root.join("notes").exists());
    let (ok, _, err) = thali_on(
        &dir,
        None,
        &["backup", "--out", &root.join("b4").display().to_string(), "--keep", "0"],
    );
    assert!(!ok && err.contains("--keep"), "{err}");
    for d in [dir, backup, elsewhere, third, root] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test]
async fn a_postgres_database_is_dumped_in_one_snapshot_restored_into_an_empty_one_and_verified() {
    let Some(source) = thali_platform::testing::postgres().await else {
        return;
    };
    let dir = temp("pg");
    let (ok, _, err) = thali_on(&dir, Some(&source.url), &["migrate"]);
    assert!(ok, "migrate: {err}");
    register(&source.db, 4).await;

    let backup = temp("pg-out");
    let out = backup.to_str().unwrap();
    let (ok, stdout, err) = thali_on(&dir, Some(&source.url), &["backup", "--out", out]);
    assert!(ok, "{stdout}{err}");
    assert!(err.contains("backup database"), "progress: {err}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["database"]["kind"], "postgres");
    assert_eq!(manifest["database"]["tables"]["accounts"], 4, "{manifest}");

    // The source holds tables: refused. An empty database: restored, every row.
    let (ok, _, err) = thali_on(&dir, Some(&source.url), &["restore", out]);
    assert!(!ok && err.contains("--replace"), "{err}");
    let target = thali_platform::testing::postgres().await.unwrap();
    let (ok, stdout, err) = thali_on(&dir, Some(&target.url), &["restore", out]);
    assert!(ok, "{stdout}{err}");
    assert!(err.contains("restore database"), "{err}");
    assert_eq!(accounts(&target.db).await, 4);

    let (ok, stdout, err) = thali_on(&dir, Some(&source.url), &["backup", "verify", out]);
    assert!(ok, "{stdout}{err}");
    assert!(stdout.contains("check out"), "{stdout}");
    let scratch = count(
        &source.db,
        "SELECT COUNT(*) AS n FROM pg_database WHERE datname LIKE 'thali_verify_%'",
    )
    .await;
    assert_eq!(scratch, 0, "the scratch database is removed");

    damage(&backup.join("thali.pgdump"));
    let empty = thali_platform::testing::postgres().await.unwrap();
    let (ok, _, err) = thali_on(&dir, Some(&empty.url), &["restore", out]);
    assert!(!ok && err.contains("thali.pgdump does not match the manifest"), "{err}");
    let tables = count(
        &empty.db,
        "SELECT COUNT(*) AS n FROM pg_tables WHERE schemaname = 'public'",
    )
    .await;
    assert_eq!(tables, 0, "nothing was restored");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(backup);
}
