//! The facade's edge (issue 12, parts 2–4): security headers on every answer, caching rules that
//! keep one caller's answer out of another's cache, CORS for listed origins only, and nothing
//! operational on the public port.
mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{Mesh, access};

fn assert_security_headers(what: &str, res: &reqwest::Response, csp: &str) {
    let h = res.headers();
    let get = |name: &str| h.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(get("x-frame-options"), "DENY", "{what}");
    assert_eq!(get("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(get("cross-origin-resource-policy"), "same-site", "{what}");
    assert_eq!(get("content-security-policy"), csp, "{what}");
}

const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

#[tokio::test]
async fn every_answer_carries_security_headers_and_the_right_caching() {
    let mesh = Mesh::start().await;
    let owner = mesh.sign_up("asha@example.com", "creator").await;
    let token = access(&owner);
    mesh.create_creator(&token, "asha_snacks").await;

    // A public, cacheable answer: its cache key must include the credentials it was made without.
    let res = mesh.get("/api/v1/store/asha_snacks").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_security_headers("public storefront", &res, API_CSP);
    assert!(res.headers()["cache-control"].to_str().unwrap().starts_with("public"));
    let vary: Vec<_> = res
        .headers()
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_lowercase())
        .collect();
    assert!(vary.iter().any(|v| v.contains("authorization")), "{vary:?}");

    // The same page for a signed-in caller, and any other signed-in answer: never stored.
    for path in ["/api/v1/store/asha_snacks", "/api/v1/auth/me", "/api/v1/api-keys"] {
        let res = mesh.get_as(path, &token).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_security_headers(path, &res, API_CSP);
        assert_eq!(res.headers()["cache-control"], "no-store", "{path}");
    }
    // A failed signed-in call too.
    let res = mesh.get_as("/api/v1/orders/not-a-uuid", &token).await;
    assert!(res.status().is_client_error());
    assert_eq!(res.headers()["cache-control"], "no-store");

    // Errors: unknown route, wrong method, bad JSON.
    let res = mesh.get("/no/such/route").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_security_headers("404", &res, API_CSP);
    let res = mesh.send(Method::DELETE, "/api/v1/auth/login", None, json!(null)).await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_security_headers("405", &res, API_CSP);
    let res = mesh
        .http
        .post(mesh.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_security_headers("400", &res, API_CSP);

    // The docs page has a policy of its own that allows only its own assets, and works under it:
    // the page loads no inline script and nothing from elsewhere.
    let res = mesh.get("/docs/").await;
    assert_eq!(res.status(), StatusCode::OK);
    let csp = res.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    let page = res.text().await.unwrap();
    for tag in page.split("<script").skip(1) {
        let head = &tag[..tag.find('>').unwrap()];
        assert!(
            head.contains("src=\"./"),
            "inline or foreign script in the docs page: <script{head}>"
        );
    }
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "foreign assets: {page}"
    );
}

#[tokio::test]
async fn cors_allows_listed_origins_only() {
    let mesh = Mesh::start_env(&[("THALI_CORS_ORIGINS", "https://app.example.com")]).await;
    let preflight = |origin: &'static str| {
        mesh.http
            .request(Method::OPTIONS, mesh.url("/api/v1/auth/login"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type, idempotency-key")
            .send()
    };
    let res = preflight("https://app.example.com").await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("POST") && !methods.contains('*'), "{methods}");
    let headers = h["access-control-allow-headers"].to_str().unwrap().to_lowercase();
    assert!(
        headers.contains("idempotency-key") && !headers.contains('*'),
        "{headers}"
    );
    assert_eq!(h["access-control-max-age"], "600");
    assert!(
        h.get("access-control-allow-credentials").is_none(),
        "no credentials mode"
    );

    // Another origin learns nothing: no Access-Control-Allow-Origin, so the browser refuses.
    let res = preflight("https://evil.example.net").await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    let res = mesh
        .http
        .get(mesh.url("/api/v1/store/nobody"))
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());

    // A real call from the app: allowed, and the headers the app needs are exposed.
    let res = mesh
        .http
        .get(mesh.url("/api/v1/store/nobody"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "an error is readable by the app too"
    );
    assert_eq!(res.headers()["access-control-allow-origin"], "https://app.example.com");
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        exposed.contains("retry-after") && exposed.contains("x-thali-access-token"),
        "{exposed}"
    );

    // Without THALI_CORS_ORIGINS no origin is allowed.
    let plain = Mesh::start().await;
    let res = plain
        .http
        .request(Method::OPTIONS, plain.url("/api/v1/auth/login"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

/// Metrics and dependency detail live on the admin listener only.
#[tokio::test]
async fn the_public_port_serves_no_metrics_and_no_dependency_detail() {
    let mesh = Mesh::start().await;
    for path in ["/metrics", "/healthz", "/readyz", "/debug/pprof"] {
        let res = mesh.get(path).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path} on the public port");
        let body = res.text().await.unwrap();
        assert!(!body.contains("http_server_request_duration_seconds"), "{path}: {body}");
        assert!(!body.contains("database"), "{path}: {body}");
    }
    let res = mesh.admin_get("/metrics").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("http_server_request_duration_seconds")
    );
    assert_eq!(mesh.admin_get("/healthz").await.status(), StatusCode::OK);
}

/// Part 7: plain text is normalised (NFC) and refused with control or bidi characters; markup is
/// kept as text and every JSON answer escapes `<`, `>` and `&`, so a page inlining it cannot be
/// broken out of.
#[tokio::test]
async fn user_text_is_normalised_and_cannot_break_out_of_a_page() {
    let mesh = Mesh::start().await;
    let token = access(&mesh.sign_up("asha@example.com", "creator").await);
    let res = mesh
        .post(
            "/api/v1/creators",
            Some(&token),
            json!({"username": "xss_shop", "display_name": "</script><script>alert(1)</script>", "bio": "Cafe\u{301} & chai"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let raw = mesh.get("/api/v1/store/xss_shop").await.text().await.unwrap();
    assert!(!raw.contains('<') && !raw.contains('>') && !raw.contains('&'), "{raw}");
    assert!(raw.contains("\\u003c/script\\u003e"), "{raw}");
    let page: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(page["creator"]["display_name"], "</script><script>alert(1)</script>");
    assert_eq!(page["creator"]["bio"], "Caf\u{e9} & chai", "stored in NFC");

    for (field, bad) in [
        ("display_name", "txt\u{202E}exe.doc"),
        ("display_name", "two\nlines"),
        ("bio", "bell\u{7}"),
    ] {
        let mut body = json!({"username": "bad_shop", "display_name": "Fine", "bio": ""});
        body[field] = json!(bad);
        let res = mesh.post("/api/v1/creators", Some(&token), body).await;
        let problem = support::problem(res, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    // Errors escape too: a problem's detail never carries raw markup.
    let res = mesh.get("/api/v1/store/%3Cscript%3E").await;
    let raw = res.text().await.unwrap();
    assert!(!raw.contains('<'), "{raw}");
}
