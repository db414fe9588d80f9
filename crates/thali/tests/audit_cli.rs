//! `thali audit verify | export` against an embedded data directory, as an operator checks the
//! trail: records committed by identity (chained by the command if no writer ran yet) verify,
//! with progress; a row edited by hand in the database makes `verify` name it and exit 1; a head
//! logged earlier that the chain no longer holds is refused; `export` writes JSON lines.
mod support;

use sea_orm::ConnectionTrait;
use support::thali;

#[tokio::test]
async fn an_operator_verifies_the_trail_and_finds_a_row_edited_by_hand() {
    let dir = std::env::temp_dir().join(format!("thali-audit-cli-{}", uuid::Uuid::now_v7()));
    let (ok, _, err) = thali(&dir, &["migrate"]);
    assert!(ok, "migrate: {err}");
    let url = format!("sqlite://{}?mode=rwc", dir.join("thali.db").display());
    let db = thali_platform::db::connect(&url).await.unwrap();
    support::register_buyers(&db, 3).await;

    let (ok, out, err) = thali(&dir, &["audit", "verify"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("identity: 3 row(s) verify; head seq 3 hash "), "{out}");
    assert!(
        err.contains("audit verify identity") && err.contains("3/3 (100%)"),
        "progress: {err}"
    );
    let head = out.split("hash ").nth(1).unwrap().trim().to_owned();

    let (ok, out, err) = thali(&dir, &["audit", "export", "--since", "2000-01-01T00:00:00Z"]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines
            .iter()
            .all(|l| l["action"] == "account.registered" && l["actor_address"] == "203.0.113.9")
    );
    assert_eq!(lines[2]["hash"], head.as_str());
    assert!(!out.contains("example.com"), "no email in the trail: {out}");
    let (ok, out, _) = thali(&dir, &["audit", "export", "--since", "2999-01-01T00:00:00Z"]);
    assert!(ok && out.is_empty(), "{out}");
    let (ok, _, err) = thali(&dir, &["audit", "export", "--since", "yesterday"]);
    assert!(!ok && err.contains("RFC 3339"), "{err}");

    // The database refuses the edit; someone who drops the trigger gets it in, and verify names it.
    let refused = db
        .execute_unprepared("UPDATE audit_log SET actor = 'acct:someone-else' WHERE seq = 2")
        .await;
    assert!(refused.is_err());
    db.execute_unprepared("DROP TRIGGER audit_log_no_update").await.unwrap();
    db.execute_unprepared("UPDATE audit_log SET actor = 'acct:someone-else' WHERE seq = 2")
        .await
        .unwrap();
    let (ok, out, _) = thali(&dir, &["audit", "verify"]);
    assert!(!ok, "a broken chain exits non-zero: {out}");
    assert!(out.contains("BROKEN: identity: seq 2 was edited"), "{out}");

    // A rewrite of the whole chain would have to match the head logged before it.
    let (ok, out, _) = thali(
        &dir,
        &[
            "audit",
            "verify",
            "--service",
            "identity",
            "--head",
            &format!("3:{}", "f".repeat(64)),
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("BROKEN: identity:"), "{out}");
}
