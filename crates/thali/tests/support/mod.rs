//! Running the `thali` binary as an operator would, against an embedded data directory.
use std::{path::Path, process::Command};

/// Runs `thali ARGS --data-dir DIR` (never a configured database); answers (success, stdout,
/// stderr).
#[allow(dead_code)]
pub fn thali(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    thali_on(data_dir, None, args)
}

/// Runs `thali ARGS --data-dir DIR` on `database_url`, or on the data directory's SQLite file
/// when there is none.
pub fn thali_on(data_dir: &Path, database_url: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_thali"));
    cmd.args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("THALI_DATABASE_URL");
    if let Some(url) = database_url {
        cmd.env("THALI_DATABASE_URL", url);
    }
    let out = cmd.output().expect("thali runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Registers `n` buyers (`user0@example.com`, …) through identity's store, from 203.0.113.9.
#[allow(dead_code)]
pub async fn register_buyers(db: &sea_orm::DatabaseConnection, n: usize) {
    let store = thali_identity::store::IdentityStore::new(db.clone());
    for i in 0..n {
        let new = thali_identity::domain::NewAccount::parse(
            &format!("user{i}@example.com"),
            "correct horse battery",
            "Someone",
            Some(thali_identity::domain::Role::Buyer),
        )
        .unwrap();
        store
            .register(
                &new,
                "$argon2id$x".into(),
                thali_identity::domain::AccountStatus::Active,
                None,
                None,
                "203.0.113.9",
            )
            .await
            .unwrap();
    }
}
