//! Running the `thali` binary as an operator would, against an embedded data directory.
use std::{path::Path, process::Command};

/// Runs `thali ARGS --data-dir DIR` (never a configured database); answers (success, stdout,
/// stderr).
pub fn thali(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_thali"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("THALI_DATABASE_URL")
        .output()
        .expect("thali runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
