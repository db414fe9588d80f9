//! No secret reaches a log (issue 13, part 3): the embedded platform runs the README's tour —
//! sign-up, login, refresh, a creator page and products, an API key and its use, a partner
//! webhook endpoint, email verification, a password reset, a checkout paid in the sandbox,
//! logout — with every log line kept down to TRACE and every request in the access log; then
//! each log line is searched for every secret the tour handled or the platform holds: passwords,
//! access and refresh tokens (and anything shaped like a JWT), the API key, the webhook secret,
//! the emailed codes, the sandbox gateway's key and webhook secrets, the data keys and the
//! signing key.
mod support;

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Mesh, access, json_of};
use thali_proto::storefront::v1::{self as pb, storefront_service_client::StorefrontServiceClient};

/// Where a JWT-shaped string (`eyJ….….…`) starts in `line`, if anywhere.
fn jwt_in(line: &str) -> Option<&str> {
    let at = line.find("eyJ")?;
    let rest = &line[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(rest.len());
    let candidate = &rest[..end];
    (candidate.split('.').filter(|p| p.len() >= 8).count() >= 2).then_some(candidate)
}

#[tokio::test]
async fn no_secret_or_token_reaches_a_log_line_on_the_readme_tour() {
    support::capture_logs();
    let mesh = Mesh::start_env(&[("THALI_ACCESS_LOG", "all"), ("THALI_WEBHOOKS_ALLOW_INSECURE", "true")]).await;
    let mut secrets: Vec<(String, String)> = Vec::new();
    let password = "correct horse battery";
    secrets.push(("password".into(), password.into()));

    // Sign-up, login, refresh.
    let session = mesh.sign_up("asha@example.com", "creator").await;
    let mut token = access(&session);
    let refresh = session["tokens"]["refresh_token"].as_str().unwrap().to_owned();
    secrets.push(("access token".into(), token.clone()));
    secrets.push(("refresh token".into(), refresh.clone()));
    let refreshed = json_of(
        mesh.post("/api/v1/auth/refresh", None, json!({"refresh_token": refresh}))
            .await,
        StatusCode::OK,
    )
    .await;
    // The refresh answer is the token pair itself.
    token = refreshed["access_token"].as_str().unwrap().to_owned();
    secrets.push(("refreshed access token".into(), token.clone()));
    secrets.push((
        "refreshed refresh token".into(),
        refreshed["refresh_token"].as_str().unwrap().to_owned(),
    ));
    // A wrong password and a forged token are logged as security events: without the values.
    let wrong = mesh
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "asha@example.com", "password": "wrong horse battery"}),
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    secrets.push(("wrong password".into(), "wrong horse battery".into()));
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(
        mesh.get_as("/api/v1/auth/me", &forged).await.status(),
        StatusCode::UNAUTHORIZED
    );
    secrets.push(("forged token".into(), forged));

    // A store, an API key and its use, a partner webhook endpoint.
    mesh.create_creator(&token, "chai_point").await;
    let product = json_of(
        mesh.post(
            "/api/v1/creators/chai_point/products",
            Some(&token),
            json!({"title": "Masala chai", "price": {"amount_minor": 4900, "currency": "INR"}, "stock": 40}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let key = json_of(
        mesh.post(
            "/api/v1/api-keys",
            Some(&token),
            json!({"name": "pos", "scopes": ["storefront.read"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let key_secret = key["secret"].as_str().unwrap().to_owned();
    // A partner's call over gRPC with the key, and one with a made-up key.
    let mut partner = StorefrontServiceClient::connect(format!("http://{}", mesh.grpc_addr))
        .await
        .unwrap();
    for (bearer, ok) in [(key_secret.clone(), true), (format!("{key_secret}x"), false)] {
        let mut req = tonic::Request::new(pb::GetStorefrontRequest {
            username: "chai_point".into(),
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
        assert_eq!(partner.get_storefront(req).await.is_ok(), ok);
    }
    secrets.push(("made-up API key".into(), format!("{key_secret}x")));
    secrets.push(("API key".into(), key_secret));
    let hook = json_of(
        mesh.post(
            "/api/v1/webhook-endpoints",
            Some(&token),
            json!({"url": "http://127.0.0.1:9/hook", "event_types": ["product.out_of_stock"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    secrets.push(("webhook secret".into(), hook["secret"].as_str().unwrap().to_owned()));

    // Email verification and a password reset; the codes come by email.
    let verify = support::mailed_code(&mesh, "asha@example.com", "thali_ve_", &[]).await;
    let res = mesh
        .post("/api/v1/auth/verify-email", None, json!({"token": verify}))
        .await;
    assert!(res.status().is_success(), "{}", res.status());
    secrets.push(("verification code".into(), verify));
    let res = mesh
        .post(
            "/api/v1/auth/password-reset",
            None,
            json!({"email": "asha@example.com"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let reset = support::mailed_code(&mesh, "asha@example.com", "thali_pr_", &[]).await;
    let new_password = "a brand new passphrase";
    let res = mesh
        .post(
            "/api/v1/auth/password-reset/confirm",
            None,
            json!({"token": reset, "new_password": new_password}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    secrets.push(("reset code".into(), reset));
    secrets.push(("new password".into(), new_password.into()));

    // A buyer checks out and pays in the sandbox; the webhook settles the order.
    let buyer_session = mesh.sign_up("ravi@buyer.example", "buyer").await;
    let buyer = access(&buyer_session);
    secrets.push(("buyer's token".into(), buyer.clone()));
    let order: Value = json_of(
        mesh.http
            .post(mesh.url("/api/v1/orders"))
            .bearer_auth(&buyer)
            .header("Idempotency-Key", "ravi-cart-1")
            .json(&json!({"username": "chai_point", "lines": [{"product_id": product["id"], "quantity": 2}]}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let gateway_order = order["checkout"]["gateway_order_id"].as_str().unwrap();
    support::pay(&mesh, gateway_order, "captured").await;
    support::settles(&mesh, &buyer, order["id"].as_str().unwrap(), "paid").await;
    let res = mesh
        .post(
            "/api/v1/auth/logout",
            Some(&buyer),
            json!({"refresh_token": buyer_session["tokens"]["refresh_token"]}),
        )
        .await;
    assert!(res.status().is_success(), "{}", res.status());

    // What the platform holds: the sandbox account's secrets, the data keys, the signing key.
    for name in ["key_secret", "webhook_secret"] {
        let value = std::fs::read_to_string(mesh.data_dir.join("sandbox-gateway").join(name)).unwrap();
        secrets.push((format!("sandbox {name}"), value.trim().to_owned()));
    }
    let data_keys: Value =
        serde_json::from_str(&std::fs::read_to_string(mesh.data_dir.join("data-keys.json")).unwrap()).unwrap();
    for (id, key) in data_keys["keys"].as_object().unwrap() {
        secrets.push((format!("data key {id}"), key.as_str().unwrap().to_owned()));
    }
    for entry in std::fs::read_dir(mesh.data_dir.join("keys")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "ed25519") {
            let pkcs8 = std::fs::read(entry.path()).unwrap();
            let b64 = base64::engine::general_purpose::STANDARD.encode(&pkcs8);
            let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&pkcs8);
            let hex: String = pkcs8.iter().map(|b| format!("{b:02x}")).collect();
            // The seed is the last 32 bytes of the PKCS#8 document.
            let seed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&pkcs8[pkcs8.len() - 32..]);
            for (form, value) in [("base64", b64), ("base64url", url), ("hex", hex), ("seed", seed)] {
                secrets.push((format!("signing key ({form})"), value));
            }
        }
    }
    assert!(
        secrets.iter().all(|(_, v)| v.len() >= 12),
        "every secret is long enough to search for"
    );

    // The search itself finds what it looks for.
    assert_eq!(
        jwt_in(&format!("authorization=Bearer {token} done")),
        Some(token.as_str())
    );
    assert_eq!(jwt_in("eyJhbGciOi is a prefix only"), None);

    let logs = support::logs();
    let lines: Vec<&str> = logs.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("/api/v1/auth/login")) && lines.iter().any(|l| l.contains("DEBUG")),
        "the access log and debug lines were captured"
    );
    let mut leaks = Vec::new();
    for line in &lines {
        for (what, value) in &secrets {
            if line.contains(value.as_str()) {
                leaks.push(format!("{what}: {line}"));
            }
        }
        if let Some(jwt) = jwt_in(line) {
            leaks.push(format!("a JWT-shaped string {jwt}: {line}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "{} log lines leak a secret:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}
