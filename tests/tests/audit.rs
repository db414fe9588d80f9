//! The audit trail in the running platform (ADR 0031): a sign-up and a refused login through
//! REST reach identity's chain by its writer alone, within a second or so, with the client's
//! address as the facade saw it; the chain verifies. Admins read it at `GET /api/v1/admin/audit`;
//! nobody else does.
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

#[tokio::test]
async fn only_an_admin_reads_the_trail_filtered_and_paged() {
    let mesh = Mesh::start().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let session = mesh.sign_up(&format!("user{n}@example.com"), "buyer").await;
        ids.push(session["account"]["id"].as_str().unwrap().to_owned());
    }
    let admin = mesh.signer.mint(
        &uuid::Uuid::now_v7().to_string(),
        &["admin".into()],
        Duration::from_secs(600),
    );
    let buyer = support::access(&mesh.sign_up("buyer@example.com", "buyer").await);

    // Non-admins: 403 problem+json; no token: 401.
    support::problem(
        mesh.get_as("/api/v1/admin/audit?service=identity", &buyer).await,
        StatusCode::FORBIDDEN,
        "ADMIN_REQUIRED",
    )
    .await;
    assert_eq!(
        mesh.get("/api/v1/admin/audit?service=identity").await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Bad parameters: 400 naming the field.
    for (query, field) in [
        ("service=storefront", "service"),
        ("service=identity&since=yesterday", "since"),
        ("service=identity&page_size=1000", "page_size"),
        ("service=identity&page_token=%21%21", "page_token"),
    ] {
        let body = support::problem(
            mesh.get_as(&format!("/api/v1/admin/audit?{query}"), &admin).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        )
        .await;
        assert_eq!(body["errors"][0]["field"], field, "{query}: {body}");
    }

    // The writer chains within a second or so: wait for the sign-ups.
    let sign_ups = "/api/v1/admin/audit?service=identity&action=account.registered&page_size=2";
    let mut first = serde_json::Value::Null;
    for _ in 0..100 {
        first = support::json_of(mesh.get_as(sign_ups, &admin).await, StatusCode::OK).await;
        if first["next_page_token"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = first["records"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{first}");
    assert_eq!(records[0]["actor"], format!("acct:{}", ids[0]));
    assert_eq!(records[0]["details"]["role"], "buyer");
    assert_eq!(records[0]["actor_address"], "127.0.0.1");
    let token = first["next_page_token"].as_str().unwrap();
    let mut rest = serde_json::Value::Null;
    for _ in 0..100 {
        rest = support::json_of(
            mesh.get_as(&format!("{sign_ups}&page_token={token}"), &admin).await,
            StatusCode::OK,
        )
        .await;
        if rest["records"].as_array().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rest_records = rest["records"].as_array().unwrap();
    assert_eq!(rest_records[0]["actor"], format!("acct:{}", ids[2]), "{rest}");
    assert!(rest_records.iter().all(|r| r["action"] == "account.registered"));
    assert!(rest_records[0]["seq"].as_i64() > records[1]["seq"].as_i64());
    // A filter on the actor: that account's records only.
    let one = support::json_of(
        mesh.get_as(
            &format!("/api/v1/admin/audit?service=identity&actor=acct:{}", ids[1]),
            &admin,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let actions: Vec<&str> = one["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["account.registered", "login.succeeded"], "{one}");
}

#[tokio::test]
async fn an_admin_changes_a_role_and_a_status_and_the_trail_records_both_with_the_role_before_and_after() {
    let mesh = Mesh::start().await;
    let session = mesh.sign_up("ravi@example.com", "buyer").await;
    let ravi = session["account"]["id"].as_str().unwrap().to_owned();
    let (old_access, old_refresh) = (
        support::access(&session),
        session["tokens"]["refresh_token"].as_str().unwrap().to_owned(),
    );
    let admin_id = uuid::Uuid::now_v7().to_string();
    let admin = mesh.signer.mint(&admin_id, &["admin".into()], Duration::from_secs(600));
    let someone = support::access(&mesh.sign_up("someone@example.com", "buyer").await);
    let put = |path: String, token: String, body: serde_json::Value| {
        let mesh = &mesh;
        async move { mesh.send(reqwest::Method::PUT, &path, Some(&token), body).await }
    };
    let role_path = format!("/api/v1/admin/accounts/{ravi}/role");
    let promote = json!({"role": "restaurant_owner", "reason": "opened Ravi's Dosa Corner"});

    // Who may, and what is refused: a non-admin, an admin's own role, no reason, an unknown
    // role, an unknown account.
    support::problem(
        put(role_path.clone(), someone.clone(), promote.clone()).await,
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    )
    .await;
    support::problem(
        put(
            format!("/api/v1/admin/accounts/{admin_id}/role"),
            admin.clone(),
            promote.clone(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    let body = support::problem(
        put(
            role_path.clone(),
            admin.clone(),
            json!({"role": "buyer", "reason": "  "}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "reason", "{body}");
    let res = put(
        role_path.clone(),
        admin.clone(),
        json!({"role": "emperor", "reason": "why not"}),
    )
    .await;
    assert!(res.status().is_client_error(), "{}", res.status());
    support::problem(
        put(
            format!("/api/v1/admin/accounts/{}/role", uuid::Uuid::now_v7()),
            admin.clone(),
            promote.clone(),
        )
        .await,
        StatusCode::NOT_FOUND,
        "ACCOUNT_NOT_FOUND",
    )
    .await;

    // The change: Ravi's sessions end, his next sign-in carries the new role.
    let changed = support::json_of(
        put(role_path.clone(), admin.clone(), promote.clone()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(changed["role"], "restaurant_owner", "{changed}");
    support::eventually("the old access token is refused", || {
        let (mesh, token) = (&mesh, old_access.clone());
        async move { (mesh.get_as("/api/v1/auth/me", &token).await.status() == StatusCode::UNAUTHORIZED).then_some(()) }
    })
    .await;
    let res = mesh
        .post("/api/v1/auth/refresh", None, json!({"refresh_token": old_refresh}))
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let again = support::json_of(
        mesh.post(
            "/api/v1/auth/login",
            None,
            json!({"email": "ravi@example.com", "password": "correct horse battery"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(again["account"]["role"], "restaurant_owner", "{again}");
    // The same role again: 200, nothing changes, nothing is recorded.
    support::json_of(
        put(role_path.clone(), admin.clone(), promote.clone()).await,
        StatusCode::OK,
    )
    .await;

    // A status change and its undoing: disabled, Ravi cannot sign in; enabled, he can.
    let reason = json!({"reason": "chargeback under review"});
    support::json_of(
        mesh.post(
            &format!("/api/v1/admin/accounts/{ravi}/disable"),
            Some(&admin),
            reason.clone(),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let login = json!({"email": "ravi@example.com", "password": "correct horse battery"});
    assert!(
        mesh.post("/api/v1/auth/login", None, login.clone())
            .await
            .status()
            .is_client_error(),
        "a disabled account cannot sign in"
    );
    support::problem(
        mesh.post(
            &format!("/api/v1/admin/accounts/{ravi}/enable"),
            Some(&someone),
            reason.clone(),
        )
        .await,
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    )
    .await;
    let enabled = support::json_of(
        mesh.post(
            &format!("/api/v1/admin/accounts/{ravi}/enable"),
            Some(&admin),
            reason.clone(),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(enabled["status"], "active", "{enabled}");
    support::json_of(mesh.post("/api/v1/auth/login", None, login).await, StatusCode::OK).await;

    // An erased account's role is not for changing.
    let gone = mesh.sign_up("gone@example.com", "buyer").await;
    let gone_id = gone["account"]["id"].as_str().unwrap().to_owned();
    let res = mesh
        .send(
            reqwest::Method::DELETE,
            "/api/v1/me",
            Some(&support::access(&gone)),
            json!({"password": "correct horse battery"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    support::problem(
        put(
            format!("/api/v1/admin/accounts/{gone_id}/role"),
            admin.clone(),
            promote.clone(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "ACCOUNT_ERASED",
    )
    .await;

    // The trail: one role change, with the role before and after and the admin as the actor;
    // the disabling and the enabling.
    let records = support::eventually("the admin actions are chained", || {
        let (mesh, admin, admin_id) = (&mesh, admin.clone(), admin_id.clone());
        async move {
            let page = support::json_of(
                mesh.get_as(
                    &format!("/api/v1/admin/audit?service=identity&actor=acct:{admin_id}"),
                    &admin,
                )
                .await,
                StatusCode::OK,
            )
            .await;
            let records = page["records"].as_array().cloned().unwrap_or_default();
            (records.len() >= 3).then_some(records)
        }
    })
    .await;
    let actions: Vec<&str> = records.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["admin.role_changed", "admin.account_disabled", "admin.account_enabled"],
        "{records:?}"
    );
    assert_eq!(records[0]["target"], format!("account:{ravi}"));
    assert!(
        records.iter().all(|r| r["actor_address"] == "127.0.0.1"),
        "the admin's address: {records:?}"
    );
    assert_eq!(records[0]["details"]["from"], "buyer");
    assert_eq!(records[0]["details"]["to"], "restaurant_owner");
    assert_eq!(records[0]["details"]["reason"], "opened Ravi's Dosa Corner");
    assert_eq!(records[2]["details"]["status_before"], "disabled");
}
