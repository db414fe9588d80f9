//! The audit trail in the running platform (ADR 0031): a sign-up and a refused login through
//! REST reach identity's chain by its writer alone, within a second or so, with the client's
//! address as the facade saw it; the chain verifies.
mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use support::Mesh;

#[tokio::test]
async fn a_sign_up_and_a_refused_login_reach_the_chain_with_the_client_address() {
    let mesh = Mesh::start().await;
    let session = mesh.sign_up("asha@example.com", "creator").await;
    let id = session["account"]["id"].as_str().unwrap().to_owned();
    let res = mesh
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "asha@example.com", "password": "not her password"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let db = thali_platform::db::connect(&format!(
        "sqlite://{}?mode=rw",
        mesh.data_dir.join("thali.db").display()
    ))
    .await
    .unwrap();
    // Read only what the platform's writer chained: no append from here.
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = thali_platform::audit_log::rows_since(&db, chrono::DateTime::UNIX_EPOCH, Some("identity"), None, 100)
            .await
            .unwrap();
        if rows.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r.action.as_str(), r.actor.as_str(), r.actor_address.as_str()))
        .collect();
    let acct = format!("acct:{id}");
    assert_eq!(
        got,
        [
            ("account.registered", acct.as_str(), "127.0.0.1"),
            ("login.succeeded", acct.as_str(), "127.0.0.1"),
            ("login.failed", acct.as_str(), "127.0.0.1"),
        ]
    );
    let verified = thali_platform::audit_log::verify(&db, "identity", None, |_| {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(verified.rows, 3);
}
