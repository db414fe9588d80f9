//! Hostile input on every auth route (issue 12, part 6): each string field of each body gets
//! values a fuzzer or an attacker would send — far too long, NUL and other control characters,
//! bidi overrides, SQL and markup, odd Unicode, wrong JSON types — on SQLite and on PostgreSQL
//! (where an over-long value used to overflow a column and answer 500). Every answer must be a
//! 4xx problem+json (or a success where the value is in fact acceptable), never a 5xx.
mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Mesh, access};

async fn meshes() -> Vec<(&'static str, Mesh)> {
    let mut out = vec![("sqlite", Mesh::start().await)];
    if let Some(pg) = thali_platform::testing::postgres().await {
        out.push(("postgres", Mesh::start_on(Some(pg.url)).await));
    }
    out
}

/// Values that must never produce a 5xx in a string field.
fn hostile_strings() -> Vec<Value> {
    let long_email = format!("{}@example.com", "a".repeat(300));
    vec![
        json!(long_email),
        json!("a".repeat(10_000)),
        json!("é".repeat(3_000)),
        json!("a\u{0000}b@example.com"),
        json!("\u{0000}"),
        json!("x\u{202E}gnp.exe@example.com"),
        json!("' OR 1=1 --"),
        json!("<script>alert(1)</script>@example.com"),
        json!("🙂@例え.jp"),
        json!(""),
        json!("   "),
        json!(12345),
        json!(null),
        json!(["a@example.com"]),
        json!({"$ne": null}),
    ]
}

struct Route {
    method: Method,
    path: &'static str,
    /// A well-formed body; each of its string fields is replaced in turn.
    body: Value,
    signed_in: bool,
}

fn routes() -> Vec<Route> {
    let post = |path, body, signed_in| Route {
        method: Method::POST,
        path,
        body,
        signed_in,
    };
    vec![
        post(
            "/api/v1/auth/register",
            json!({"email": "new@example.com", "password": "correct horse battery", "display_name": "New", "role": "buyer"}),
            false,
        ),
        post(
            "/api/v1/auth/login",
            json!({"email": "victim@example.com", "password": "correct horse battery"}),
            false,
        ),
        post("/api/v1/auth/refresh", json!({"refresh_token": "x"}), false),
        post("/api/v1/auth/logout", json!({"refresh_token": "x"}), false),
        post("/api/v1/auth/verify-email", json!({"token": "x"}), false),
        post(
            "/api/v1/auth/password-reset",
            json!({"email": "victim@example.com"}),
            false,
        ),
        post(
            "/api/v1/auth/password-reset/confirm",
            json!({"token": "x", "new_password": "another horse battery"}),
            false,
        ),
        post(
            "/api/v1/api-keys",
            json!({"name": "k", "scopes": ["storefront.read"]}),
            true,
        ),
    ]
}

fn assert_not_5xx(backend: &str, what: &str, status: StatusCode, body: &str) {
    assert!(!status.is_server_error(), "{backend}: {what} answered {status}: {body}");
}

#[tokio::test]
async fn no_hostile_value_on_any_auth_route_answers_5xx() {
    for (backend, mesh) in meshes().await {
        let victim = mesh.sign_up("victim@example.com", "creator").await;
        let token = access(&victim);
        for route in routes() {
            let fields: Vec<String> = route.body.as_object().unwrap().keys().cloned().collect();
            for field in fields {
                for value in hostile_strings() {
                    let mut body = route.body.clone();
                    body[&field] = value.clone();
                    let res = mesh
                        .send(
                            route.method.clone(),
                            route.path,
                            route.signed_in.then_some(token.as_str()),
                            body,
                        )
                        .await;
                    let status = res.status();
                    let content_type = res
                        .headers()
                        .get("content-type")
                        .map(|v| v.to_str().unwrap_or("").to_owned())
                        .unwrap_or_default();
                    let text = res.text().await.unwrap();
                    let what = format!("{} {} with {field} = {value:.60}", route.method, route.path);
                    assert_not_5xx(backend, &what, status, &text);
                    if status.is_client_error() {
                        assert_eq!(content_type, "application/problem+json", "{backend}: {what}: {text}");
                    }
                }
            }
        }
        // Hostile credentials and ids in the headers and the path.
        for bad in [
            "Bearer ".to_owned() + &"a".repeat(20_000),
            "Bearer a.b.c".to_owned(),
            "Basic Zm9vOmJhcg==".to_owned(),
            "Bearer \u{00e9}".to_owned(),
        ] {
            let res = mesh
                .http
                .get(mesh.url("/api/v1/auth/me"))
                .header("authorization", bad.as_bytes())
                .send()
                .await
                .unwrap();
            let status = res.status();
            assert_not_5xx(backend, "GET /auth/me with a hostile Authorization", status, "");
            assert!(status.is_client_error(), "{backend}: {status}");
        }
        for path in [
            format!("/api/v1/api-keys/{}", "9".repeat(5_000)),
            "/api/v1/api-keys/%00".to_owned(),
            "/api/v1/api-keys/'%20OR%201=1".to_owned(),
            format!("/api/v1/api-keys?owner_id={}", "%E2%80%AE".repeat(300)),
        ] {
            let method = if path.contains('?') {
                Method::GET
            } else {
                Method::DELETE
            };
            let res = mesh.send(method, &path, Some(&token), json!(null)).await;
            let status = res.status();
            assert_not_5xx(backend, &path, status, &res.text().await.unwrap());
        }
    }
}
