//! Security events (issue 12, part 8): every refusal that matters — 401, 403, 429 — is logged as
//! a structured `thali::security` event with the client's address and the request's trace id.
mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::{Mesh, access};

/// The `thali::security` lines of the log that name `event`.
fn events(event: &str) -> Vec<String> {
    support::logs()
        .lines()
        .filter(|l| l.contains("thali::security") && l.contains(&format!("event={event}")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn refusals_are_security_events_with_the_client_address_and_trace_id() {
    support::capture_logs();
    let mesh = Mesh::start_env(&[
        ("THALI_TRUSTED_PROXIES", "127.0.0.1"),
        ("THALI_RATE_LIMIT_ANONYMOUS", "3/86400s"),
    ])
    .await;
    let from = |path: &str| mesh.http.get(mesh.url(path)).header("x-forwarded-for", "203.0.113.50");
    // 401: a bad token.
    let res = from("/api/v1/auth/me").bearer_auth("not.a.token").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let trace = support::problem(res, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await["trace_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lines = events("authentication.failed");
    let line = lines
        .iter()
        .find(|l| l.contains(&trace))
        .expect("logged with its trace id");
    assert!(line.contains("client_address=203.0.113.50"), "{line}");

    // 403: a buyer asks for an admin function.
    let buyer = access(&mesh.sign_up("buyer@example.com", "buyer").await);
    let res = mesh
        .http
        .post(mesh.url(&format!("/api/v1/admin/accounts/{}/disable", uuid::Uuid::now_v7())))
        .header("x-forwarded-for", "203.0.113.51")
        .bearer_auth(&buyer)
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    let trace = support::problem(res, StatusCode::FORBIDDEN, "FORBIDDEN").await["trace_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lines = events("access.denied");
    let line = lines
        .iter()
        .find(|l| l.contains(&trace) && l.contains("client_address=203.0.113.51"))
        .unwrap_or_else(|| panic!("no access.denied event for {trace}: {lines:#?}"));
    assert!(line.contains("/api/v1/admin/accounts/{id}/disable"), "{line}");

    // 429: an anonymous client over its budget.
    let mut refused = None;
    for _ in 0..5 {
        let res = from("/api/v1/store/nobody").send().await.unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(support::problem(res, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await);
            break;
        }
    }
    let trace = refused.expect("rate limited")["trace_id"].as_str().unwrap().to_owned();
    let lines = events("rate_limited");
    let line = lines
        .iter()
        .find(|l| l.contains(&trace))
        .expect("logged with its trace id");
    assert!(line.contains("client_address=203.0.113.50"), "{line}");
}
