//! The OWASP API Security Top 10 (2023), one named test per risk, each against what Thali has
//! today, over its REST facade as an attacker would call it (issue 12). Deeper tests of each
//! behaviour live with their feature; these hold the line for the list as a whole.
mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Mesh, access, problem};

async fn mesh_with(extra: &[(&str, &str)]) -> Mesh {
    let tenant = format!("owasp{}", uuid::Uuid::now_v7().simple());
    let mut env = vec![("THALI_TENANT", tenant.as_str())];
    env.extend_from_slice(extra);
    Mesh::start_env(&env).await
}

/// API1:2023 Broken Object Level Authorization — ids of other accounts' objects, guessed or
/// known, give nothing: not found (so they cannot even be probed) or forbidden.
#[tokio::test]
async fn api1_broken_object_level_authorization() {
    let mesh = Mesh::start().await;
    let alice = access(&mesh.sign_up("alice@example.com", "creator").await);
    let bob_session = mesh.sign_up("bob@example.com", "creator").await;
    let bob = access(&bob_session);
    let key: Value = mesh
        .post(
            "/api/v1/api-keys",
            Some(&bob),
            json!({"name": "b", "scopes": ["storefront.read"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let key_id = key["api_key"]["id"].as_str().unwrap();
    let res = mesh
        .send(
            Method::DELETE,
            &format!("/api/v1/api-keys/{key_id}"),
            Some(&alice),
            json!(null),
        )
        .await;
    problem(res, StatusCode::NOT_FOUND, "API_KEY_NOT_FOUND").await;
    let bob_id = bob_session["account"]["id"].as_str().unwrap();
    let res = mesh
        .get_as(&format!("/api/v1/api-keys?owner_id={bob_id}"), &alice)
        .await;
    problem(res, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    mesh.create_creator(&bob, "bob_shop").await;
    let res = mesh
        .send(
            Method::PATCH,
            "/api/v1/creators/bob_shop",
            Some(&alice),
            json!({"bio": "mine now"}),
        )
        .await;
    problem(res, StatusCode::FORBIDDEN, "NOT_OWNER").await;
    let res = mesh
        .get_as(&format!("/api/v1/orders/{}", uuid::Uuid::now_v7()), &alice)
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

/// API2:2023 Broken Authentication — forged, expired and logged-out tokens are refused; guessing
/// passwords is throttled; credentials never travel in URLs.
#[tokio::test]
async fn api2_broken_authentication() {
    let mesh = Mesh::start().await;
    let session = mesh.sign_up("carol@example.com", "buyer").await;
    let token = access(&session);
    let expired = mesh.signer.mint_aged(
        "x",
        &[],
        Duration::from_secs(3 * 24 * 3600),
        Duration::from_secs(3600),
        None,
    );
    let forged = format!("{}x", &token[..token.len() - 1]);
    for bad in [expired.as_str(), forged.as_str(), "garbage"] {
        let res = mesh.get_as("/api/v1/auth/me", bad).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
    }
    // Logged out: the access token stops working (revocation, within seconds).
    let refresh = session["tokens"]["refresh_token"].as_str().unwrap();
    mesh.post("/api/v1/auth/logout", None, json!({"refresh_token": refresh}))
        .await;
    let mut refused = false;
    for _ in 0..50 {
        if mesh.get_as("/api/v1/auth/me", &token).await.status() == StatusCode::UNAUTHORIZED {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "a logged-out token is refused within 5 s");
    // Guessing is throttled per (account, address).
    for _ in 0..5 {
        mesh.post(
            "/api/v1/auth/login",
            None,
            json!({"email": "carol@example.com", "password": "wrong wrong wrong"}),
        )
        .await;
    }
    let res = mesh
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "carol@example.com", "password": "correct horse battery"}),
        )
        .await;
    problem(res, StatusCode::TOO_MANY_REQUESTS, "LOGIN_THROTTLED").await;
}

/// API3:2023 Broken Object Property Level Authorization — no mass assignment (unknown and
/// privileged fields are refused), and public answers do not expose private properties.
#[tokio::test]
async fn api3_broken_object_property_level_authorization() {
    let mesh = Mesh::start().await;
    let res = mesh
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": "eve@example.com", "password": "correct horse battery", "display_name": "Eve", "role": "admin"}),
        )
        .await;
    problem(res, StatusCode::BAD_REQUEST, "INVALID_JSON").await;
    let token = access(&mesh.sign_up("dan@example.com", "creator").await);
    mesh.create_creator(&token, "dan_shop").await;
    let res = mesh
        .send(
            Method::PATCH,
            "/api/v1/creators/dan_shop",
            Some(&token),
            json!({"bio": "ok", "owner_subject": "someone-else"}),
        )
        .await;
    problem(res, StatusCode::BAD_REQUEST, "INVALID_JSON").await;
    let page: Value = mesh.get("/api/v1/store/dan_shop").await.json().await.unwrap();
    assert!(page["creator"].get("owner_subject").is_none(), "{page}");
    let keys: Value = mesh.get_as("/api/v1/api-keys", &token).await.json().await.unwrap();
    assert!(!keys.to_string().contains("key_hash"), "{keys}");
}

/// API4:2023 Unrestricted Resource Consumption — bodies, pages and request rates are bounded.
#[tokio::test]
async fn api4_unrestricted_resource_consumption() {
    let mesh = mesh_with(&[("THALI_RATE_LIMIT_ANONYMOUS", "30/86400s")]).await;
    let big = "x".repeat(128 * 1024);
    let res = mesh
        .http
        .post(mesh.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body(format!("{{\"email\": \"{big}\", \"password\": \"p\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let res = mesh.get("/api/v1/creators/nobody/products?page_size=100000").await;
    assert!(res.status().is_client_error(), "{}", res.status());
    let mut limited = false;
    for _ in 0..40 {
        if mesh.get("/api/v1/store/nobody").await.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
    }
    assert!(limited, "an anonymous client is rate limited");
}

/// API5:2023 Broken Function Level Authorization — roles gate functions: a buyer cannot open a
/// store, a non-admin cannot disable accounts or set a key's rate limit.
#[tokio::test]
async fn api5_broken_function_level_authorization() {
    let mesh = Mesh::start().await;
    let buyer = access(&mesh.sign_up("fay@example.com", "buyer").await);
    let res = mesh
        .post(
            "/api/v1/creators",
            Some(&buyer),
            json!({"username": "fay_shop", "display_name": "F"}),
        )
        .await;
    problem(res, StatusCode::FORBIDDEN, "CREATOR_ROLE_REQUIRED").await;
    let res = mesh
        .post(
            &format!("/api/v1/admin/accounts/{}/disable", uuid::Uuid::now_v7()),
            Some(&buyer),
            json!({"reason": "because"}),
        )
        .await;
    problem(res, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let res = mesh
        .post(
            "/api/v1/api-keys",
            Some(&buyer),
            json!({"name": "k", "scopes": ["storefront.read"], "rate_limit_per_minute": 100000}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

/// API6:2023 Unrestricted Access to Sensitive Business Flows — sign-up and sign-in, the flows a
/// bot would automate, have budgets of their own per client address; registration does not
/// reveal which emails exist. (Checkout's stock is held in the database and never oversold:
/// tests/tests/payments.rs.)
#[tokio::test]
async fn api6_unrestricted_access_to_sensitive_business_flows() {
    let mesh = mesh_with(&[("THALI_RATE_LIMIT_REGISTER", "2/86400s")]).await;
    let register = |email: &str| {
        mesh.post(
            "/api/v1/auth/register",
            None,
            json!({"email": email, "password": "correct horse battery", "display_name": "Bot", "role": "buyer"}),
        )
    };
    assert_eq!(register("bot1@example.com").await.status(), StatusCode::ACCEPTED);
    assert_eq!(
        register("bot1@example.com").await.status(),
        StatusCode::ACCEPTED,
        "taken: same answer"
    );
    problem(
        register("bot3@example.com").await,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
    )
    .await;
}

/// API7:2023 Server Side Request Forgery — partner webhook URLs must be https and may not name
/// loopback, private, link-local (cloud metadata) addresses.
#[tokio::test]
async fn api7_server_side_request_forgery() {
    let mesh = Mesh::start().await;
    let token = access(&mesh.sign_up("gus@example.com", "creator").await);
    for url in [
        "http://hooks.example.com/x",
        "https://127.0.0.1/x",
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.7/x",
        "https://[::1]/x",
        "file:///etc/passwd",
    ] {
        let res = mesh
            .post(
                "/api/v1/webhook-endpoints",
                Some(&token),
                json!({"url": url, "event_types": ["product.out_of_stock"]}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{url}");
    }
}

/// API8:2023 Security Misconfiguration — security headers on every answer, no CORS for origins
/// not listed, nothing operational on the public port, errors without internals. (TLS 1.3 only:
/// tests/tests/tls.rs.)
#[tokio::test]
async fn api8_security_misconfiguration() {
    let mesh = Mesh::start().await;
    let res = mesh
        .http
        .get(mesh.url("/no/such/thing"))
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    for header in [
        "x-content-type-options",
        "x-frame-options",
        "content-security-policy",
        "referrer-policy",
        "cross-origin-resource-policy",
    ] {
        assert!(res.headers().contains_key(header), "{header}");
    }
    assert!(res.headers().get("access-control-allow-origin").is_none());
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body.as_object().unwrap().len(),
        6,
        "type, title, status, detail, code, trace_id only: {body}"
    );
    assert_eq!(mesh.get("/metrics").await.status(), StatusCode::NOT_FOUND);
}

/// API9:2023 Improper Inventory Management — the published OpenAPI document is the inventory:
/// every operation it lists is served, and nothing outside /api/v1 (or the docs, JWKS) answers.
#[tokio::test]
async fn api9_improper_inventory_management() {
    let mesh = Mesh::start().await;
    let doc: Value = mesh.get("/api/v1/openapi.json").await.json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 40, "{}", paths.len());
    for (path, ops) in paths {
        let concrete = path
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    "00000000-0000-7000-8000-000000000000"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in ops.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let res = mesh.send(method.clone(), &concrete, None, json!({})).await;
            let status = res.status();
            let text = res.text().await.unwrap();
            assert!(
                !(status == StatusCode::NOT_FOUND && text.contains("no such route")),
                "{method} {path} is documented but not served"
            );
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(!status.is_server_error(), "{method} {path}: {status} {text}");
        }
    }
    for undocumented in ["/api/v2/auth/me", "/api/internal/keys", "/admin", "/debug/vars"] {
        let res = mesh.get(undocumented).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{undocumented}");
    }
}

/// API10:2023 Unsafe Consumption of APIs — what Thali consumes from Razorpay is verified before
/// it is believed: a webhook without a valid signature changes nothing. (Payments checked
/// against the gateway's own record, amounts compared: tests/tests/payments.rs.)
#[tokio::test]
async fn api10_unsafe_consumption_of_apis() {
    let mesh = Mesh::start().await;
    let forged = json!({
        "entity": "event", "account_id": "acc_x", "event": "payment.captured",
        "contains": ["payment"], "created_at": 1_700_000_000,
        "payload": {"payment": {"entity": {"id": "pay_forged", "order_id": "order_forged", "amount": 100, "currency": "INR", "status": "captured"}}}
    });
    for signature in [None, Some("deadbeef"), Some("")] {
        let mut req = mesh
            .http
            .post(mesh.url("/api/v1/webhooks/razorpay"))
            .header("x-razorpay-event-id", "evt_forged")
            .json(&forged);
        if let Some(sig) = signature {
            req = req.header("x-razorpay-signature", sig);
        }
        let res = req.send().await.unwrap();
        assert!(res.status().is_client_error(), "{signature:?}: {}", res.status());
    }
    let res = mesh
        .http
        .post(mesh.url(&format!("/api/v1/webhooks/razorpay/{}", uuid::Uuid::now_v7())))
        .header("x-razorpay-signature", "00")
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_client_error(), "{}", res.status());
}
