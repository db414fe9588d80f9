//! Identity end to end: accounts, sessions and partner keys over HTTP and gRPC, on SQLite and
//! (with THALI_TEST_DATABASE_URL) PostgreSQL, including the OWASP API risks around
//! authentication (API2) and object- and function-level authorisation (API1, API5).
mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Mesh, access, problem};
use thali_proto::storefront::v1::{self as pb, storefront_service_client::StorefrontServiceClient};
use tonic::Code;

async fn meshes() -> Vec<Mesh> {
    let mut out = vec![Mesh::start().await];
    if let Some(pg) = thali_platform::testing::postgres().await {
        out.push(Mesh::start_on(Some(pg.url)).await);
    }
    out
}

#[tokio::test]
async fn register_login_open_a_store_refresh_and_log_out() {
    for mesh in meshes().await {
        let session = mesh.sign_up("Asha@Example.com", "creator").await;
        assert_eq!(session["account"]["email"], "asha@example.com");
        assert_eq!(session["account"]["role"], "creator");
        let token = access(&session);

        let me: Value = mesh.get_as("/api/v1/auth/me", &token).await.json().await.unwrap();
        assert_eq!(me["id"], session["account"]["id"]);
        let store = mesh.create_creator(&token, "asha_snacks").await;
        assert_eq!(
            store["owner_subject"], session["account"]["id"],
            "the owner is the account"
        );

        let refresh = session["tokens"]["refresh_token"].as_str().unwrap();
        let res = mesh
            .post("/api/v1/auth/refresh", None, json!({"refresh_token": refresh}))
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let renewed: Value = res.json().await.unwrap();
        let new_refresh = renewed["refresh_token"].as_str().unwrap();
        assert_ne!(new_refresh, refresh, "refresh tokens rotate");
        let res = mesh
            .get_as("/api/v1/auth/me", renewed["access_token"].as_str().unwrap())
            .await;
        assert_eq!(res.status(), StatusCode::OK);

        let res = mesh
            .post("/api/v1/auth/logout", None, json!({"refresh_token": new_refresh}))
            .await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        let res = mesh
            .post("/api/v1/auth/refresh", None, json!({"refresh_token": new_refresh}))
            .await;
        problem(res, StatusCode::UNAUTHORIZED, "REFRESH_TOKEN_INVALID").await;
    }
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_revokes_its_family() {
    for mesh in meshes().await {
        let session = mesh.sign_up("ravi@example.com", "buyer").await;
        let first = session["tokens"]["refresh_token"].as_str().unwrap().to_owned();
        let second: Value = mesh
            .post("/api/v1/auth/refresh", None, json!({"refresh_token": first}))
            .await
            .json()
            .await
            .unwrap();
        let second = second["refresh_token"].as_str().unwrap().to_owned();

        // The old token comes back (stolen, replayed): refused, and the family dies with it.
        let res = mesh
            .post("/api/v1/auth/refresh", None, json!({"refresh_token": first}))
            .await;
        problem(res, StatusCode::UNAUTHORIZED, "REFRESH_TOKEN_INVALID").await;
        let res = mesh
            .post("/api/v1/auth/refresh", None, json!({"refresh_token": second}))
            .await;
        problem(res, StatusCode::UNAUTHORIZED, "REFRESH_TOKEN_INVALID").await;

        // Another login is another family, unaffected.
        let again = mesh
            .post(
                "/api/v1/auth/login",
                None,
                json!({"email": "ravi@example.com", "password": "correct horse battery"}),
            )
            .await;
        assert_eq!(again.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn repeated_failed_logins_lock_out_with_retry_after() {
    let mesh = Mesh::start().await;
    mesh.sign_up("meera@example.com", "buyer").await;
    let wrong = json!({"email": "meera@example.com", "password": "not the password"});
    for _ in 0..5 {
        let res = mesh.post("/api/v1/auth/login", None, wrong.clone()).await;
        problem(res, StatusCode::UNAUTHORIZED, "BAD_CREDENTIALS").await;
    }
    let res = mesh
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "meera@example.com", "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "locked even with the right password"
    );
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    problem(res, StatusCode::TOO_MANY_REQUESTS, "LOGIN_THROTTLED").await;

    // Unknown emails fail the same way as wrong passwords.
    let res = mesh
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "nobody@example.com", "password": "whatever it is"}),
        )
        .await;
    problem(res, StatusCode::UNAUTHORIZED, "BAD_CREDENTIALS").await;
}

/// Throttling is per (account, client address) and per address, never per account alone: a
/// guesser cannot keep the owner out. Behind a trusted proxy the client is the rightmost
/// untrusted `X-Forwarded-For` entry; from anyone else the header is ignored.
#[tokio::test]
async fn a_guesser_elsewhere_cannot_lock_the_owner_out() {
    let login = |mesh: &Mesh, from: &str, password: &str| {
        mesh.http
            .post(mesh.url("/api/v1/auth/login"))
            .header("x-forwarded-for", from)
            .json(&json!({"email": "owner@example.com", "password": password}))
            .send()
    };
    // The facade sits behind a load balancer on 127.0.0.1.
    let mesh = Mesh::start_env(&[("THALI_TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    mesh.sign_up("owner@example.com", "buyer").await;
    for _ in 0..5 {
        let res = login(&mesh, "198.51.100.66", "guess guess guess").await.unwrap();
        problem(res, StatusCode::UNAUTHORIZED, "BAD_CREDENTIALS").await;
    }
    // The guesser now waits, even with the right password (parallel guessing gains nothing)…
    let res = login(&mesh, "6.6.6.6, 198.51.100.66", "correct horse battery")
        .await
        .unwrap();
    problem(res, StatusCode::TOO_MANY_REQUESTS, "LOGIN_THROTTLED").await;
    // …and the owner, at home, does not.
    let res = login(&mesh, "203.0.113.5", "correct horse battery").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{}", res.text().await.unwrap());

    // Without trusted proxies a forged X-Forwarded-For buys nothing: the peer is the client.
    let mesh = Mesh::start().await;
    mesh.sign_up("owner@example.com", "buyer").await;
    for i in 0..5 {
        let res = login(&mesh, &format!("198.51.100.{i}"), "guess guess guess")
            .await
            .unwrap();
        problem(res, StatusCode::UNAUTHORIZED, "BAD_CREDENTIALS").await;
    }
    let res = login(&mesh, "198.51.100.99", "guess guess guess").await.unwrap();
    problem(res, StatusCode::TOO_MANY_REQUESTS, "LOGIN_THROTTLED").await;

    // Shapes are checked before anything is counted or looked up.
    let res = mesh
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": format!("{}@example.com", "a".repeat(300)), "password": "x"}),
        )
        .await;
    problem(res, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
}

#[tokio::test]
async fn registration_rules_and_taken_emails() {
    let mesh = Mesh::start().await;
    let res = mesh
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": "not-an-email", "password": "short", "display_name": "", "role": "buyer"}),
        )
        .await;
    let body = problem(res, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    let fields: Vec<_> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "password", "display_name"]);
    let res = mesh
        .post("/api/v1/auth/register", None, json!({"email": "boss@example.com", "password": "correct horse battery", "display_name": "Boss", "role": "admin"}))
        .await;
    problem(res, StatusCode::BAD_REQUEST, "INVALID_JSON").await;

    // Registration does not tell which emails have accounts: a new email and a taken one get
    // the same answer, byte for byte; the owner of the taken one is told by email.
    mesh.sign_up("taken@example.com", "buyer").await;
    let register = |email: &str, password: &str| {
        mesh.post(
            "/api/v1/auth/register",
            None,
            json!({"email": email, "password": password, "display_name": "Copy", "role": "buyer"}),
        )
    };
    let taken = register("TAKEN@example.com", "another horse battery").await;
    let fresh = register("fresh@example.com", "another horse battery").await;
    assert_eq!(taken.status(), StatusCode::ACCEPTED);
    assert_eq!(fresh.status(), StatusCode::ACCEPTED);
    let (taken, fresh) = (taken.text().await.unwrap(), fresh.text().await.unwrap());
    assert_eq!(taken, fresh);
    let mut told = None;
    for _ in 0..50 {
        told = support::mail_to(&mesh, "taken@example.com", "tried to register");
        if told.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(told.is_some(), "the owner is told");
    assert!(support::mail_to(&mesh, "fresh@example.com", "tried to register").is_none());
    // Nothing about the existing account changed: its password still works, the new one not.
    let login = |password: &str| {
        mesh.post(
            "/api/v1/auth/login",
            None,
            json!({"email": "taken@example.com", "password": password}),
        )
    };
    assert_eq!(login("correct horse battery").await.status(), StatusCode::OK);
    problem(
        login("another horse battery").await,
        StatusCode::UNAUTHORIZED,
        "BAD_CREDENTIALS",
    )
    .await;
}

/// API1: an account can neither read nor change another account's private resources, ids
/// guessed or not. API5: a buyer cannot call creator or admin operations.
#[tokio::test]
async fn accounts_cannot_reach_each_others_resources() {
    let mesh = Mesh::start().await;
    let a = mesh.sign_up("a@example.com", "creator").await;
    let b = mesh.sign_up("b@example.com", "creator").await;
    let buyer = mesh.sign_up("c@example.com", "buyer").await;
    let (ta, tb, tc) = (access(&a), access(&b), access(&buyer));

    let res = mesh
        .post(
            "/api/v1/api-keys",
            Some(&tb),
            json!({"name": "b-key", "scopes": ["storefront.read"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let b_key: Value = res.json().await.unwrap();
    let b_key_id = b_key["api_key"]["id"].as_str().unwrap();

    // A lists only its own keys, cannot list B's, cannot revoke B's (not even learn it exists).
    let mine: Value = mesh.get_as("/api/v1/api-keys", &ta).await.json().await.unwrap();
    assert_eq!(mine["api_keys"].as_array().unwrap().len(), 0);
    let b_id = b["account"]["id"].as_str().unwrap();
    problem(
        mesh.get_as(&format!("/api/v1/api-keys?owner_id={b_id}"), &ta).await,
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    )
    .await;
    let res = mesh.get_as("/api/v1/api-keys?owner_id=", &ta).await;
    problem(res, StatusCode::BAD_REQUEST, "INVALID_QUERY").await;
    let res = mesh
        .send(
            Method::DELETE,
            &format!("/api/v1/api-keys/{b_key_id}"),
            Some(&ta),
            json!(null),
        )
        .await;
    problem(res, StatusCode::NOT_FOUND, "API_KEY_NOT_FOUND").await;
    let theirs: Value = mesh.get_as("/api/v1/api-keys", &tb).await.json().await.unwrap();
    assert!(theirs["api_keys"][0]["revoked_at"].is_null(), "B's key is untouched");
    let res = mesh
        .post(
            "/api/v1/api-keys",
            Some(&ta),
            json!({"name": "for-b", "scopes": ["storefront.read"], "owner_id": b_id}),
        )
        .await;
    problem(res, StatusCode::FORBIDDEN, "FORBIDDEN").await;

    // A cannot change B's creator page.
    mesh.create_creator(&tb, "b_shop").await;
    let res = mesh
        .send(
            Method::PATCH,
            "/api/v1/creators/b_shop",
            Some(&ta),
            json!({"bio": "hijacked"}),
        )
        .await;
    problem(res, StatusCode::FORBIDDEN, "NOT_OWNER").await;

    // A buyer cannot open a creator page.
    let res = mesh
        .post(
            "/api/v1/creators",
            Some(&tc),
            json!({"username": "buyer_shop", "display_name": "No"}),
        )
        .await;
    problem(res, StatusCode::FORBIDDEN, "CREATOR_ROLE_REQUIRED").await;

    // Public reads do not show who owns a page.
    let page: Value = mesh.get("/api/v1/store/b_shop").await.json().await.unwrap();
    assert!(page["creator"].get("owner_subject").is_none(), "{page}");
}

#[tokio::test]
async fn foreign_expired_and_misaddressed_tokens_are_refused() {
    let mesh = Mesh::start().await;
    let foreign_dir = std::env::temp_dir().join(format!("thali-foreign-{}", uuid::Uuid::now_v7()));
    thali_platform::auth::ensure_key_pair(&foreign_dir).unwrap();
    let foreign = thali_platform::auth::Signer::load(&foreign_dir)
        .unwrap()
        .mint("x", &[], Duration::from_secs(600));
    let expired = mesh.signer.mint_aged(
        "x",
        &[],
        Duration::from_secs(3 * 24 * 3600),
        Duration::from_secs(3600),
        None,
    );
    let misaddressed = mesh
        .signer
        .mint_for("x", &[], Duration::from_secs(600), "thali-storefront");
    for token in [foreign, expired, misaddressed, "garbage".to_owned()] {
        let res = mesh.get_as("/api/v1/auth/me", &token).await;
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        problem(res, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    }
}

#[tokio::test]
async fn an_active_users_day_old_token_is_renewed_until_the_session_ends() {
    let mesh = Mesh::start().await;
    let session = mesh.sign_up("dev@example.com", "buyer").await;
    let id = session["account"]["id"].as_str().unwrap();
    let fresh = mesh.get_as("/api/v1/auth/me", &access(&session)).await;
    assert!(
        fresh.headers().get("x-thali-access-token").is_none(),
        "a fresh token is not renewed"
    );

    // The same session's token, a day and more old.
    let claims: Value =
        serde_json::from_slice(&base64_url_decode(access(&session).split('.').nth(1).unwrap())).unwrap();
    let sid = claims["sid"]
        .as_str()
        .expect("access tokens name their session")
        .to_owned();
    let aged = |sid: &str| {
        mesh.signer.mint_aged(
            id,
            &["buyer".into()],
            Duration::from_secs(2 * 24 * 3600),
            Duration::from_secs(7 * 24 * 3600),
            Some(sid),
        )
    };
    let res = mesh.get_as("/api/v1/auth/me", &aged(&sid)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let renewed = res.headers()["x-thali-access-token"].to_str().unwrap().to_owned();
    let res = mesh.get_as("/api/v1/auth/me", &renewed).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("x-thali-access-token").is_none());

    // After logout the session is over: its tokens still work until they expire, but are no
    // longer renewed.
    let refresh = session["tokens"]["refresh_token"].as_str().unwrap();
    let res = mesh
        .post("/api/v1/auth/logout", None, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = mesh.get_as("/api/v1/auth/me", &aged(&sid)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers().get("x-thali-access-token").is_none(),
        "an ended session is not renewed"
    );
}

#[tokio::test]
async fn jwks_lists_the_key_that_signs_tokens() {
    let mesh = Mesh::start().await;
    let session = mesh.sign_up("jw@example.com", "buyer").await;
    let token = access(&session);
    let header: Value = serde_json::from_slice(&base64_url_decode(token.split('.').next().unwrap())).unwrap();
    let jwks: Value = mesh.get("/.well-known/jwks.json").await.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert!(
        keys.iter()
            .any(|k| k["kid"] == header["kid"] && k["kty"] == "OKP" && k["crv"] == "Ed25519"),
        "{jwks}"
    );
}

fn base64_url_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

fn partner_request<T>(key: Option<&str>, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Some(key) = key {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    req
}

/// A partner with an API key calls the storefront over gRPC with an independent client.
#[tokio::test]
async fn partner_api_keys_are_scoped_and_revocable() {
    let mesh = Mesh::start().await;
    let owner = mesh.sign_up("partner@example.com", "creator").await;
    let token = access(&owner);
    mesh.create_creator(&token, "partner_shop").await;
    let res = mesh
        .post(
            "/api/v1/api-keys",
            Some(&token),
            json!({"name": "pos", "scopes": ["storefront.read"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let created: Value = res.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("thali_pk_"));
    let listed: Value = mesh.get_as("/api/v1/api-keys", &token).await.json().await.unwrap();
    assert!(
        listed.to_string().find(&secret).is_none(),
        "the secret is shown once, never listed"
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = StorefrontServiceClient::new(channel);
    let read = || pb::GetStorefrontRequest {
        username: "partner_shop".into(),
    };

    let store = client
        .get_storefront(partner_request(Some(&secret), read()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(store.creator.unwrap().username, "partner_shop");

    let write = pb::UpdateProfileRequest {
        username: "partner_shop".into(),
        display_name: None,
        bio: Some("via key".into()),
    };
    let err = client
        .update_profile(partner_request(Some(&secret), write))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "read scope cannot write");

    assert_eq!(
        client
            .get_storefront(partner_request(None, read()))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let wrong = format!("{}{}", &secret[..secret.len() - 4], "AAAA");
    assert_eq!(
        client
            .get_storefront(partner_request(Some(&wrong), read()))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    // Revoked: refused within 5 seconds.
    let key_id = created["api_key"]["id"].as_str().unwrap();
    let res = mesh
        .send(
            Method::DELETE,
            &format!("/api/v1/api-keys/{key_id}"),
            Some(&token),
            json!(null),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let revoked_at = std::time::Instant::now();
    loop {
        match client.get_storefront(partner_request(Some(&secret), read())).await {
            Err(status) if status.code() == Code::Unauthenticated => break,
            Ok(_) if revoked_at.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("a revoked key still works after {:?}: {other:?}", revoked_at.elapsed()),
        }
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(5));

    // A key with the write scope may write.
    let res = mesh
        .post(
            "/api/v1/api-keys",
            Some(&token),
            json!({"name": "admin-tool", "scopes": ["storefront.write", "storefront.read"]}),
        )
        .await;
    let writer: Value = res.json().await.unwrap();
    let writer = writer["secret"].as_str().unwrap();
    let write = pb::UpdateProfileRequest {
        username: "partner_shop".into(),
        display_name: None,
        bio: Some("via key".into()),
    };
    let updated = client
        .update_profile(partner_request(Some(writer), write))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.creator.unwrap().bio, "via key");
}

#[tokio::test]
async fn user_tokens_work_on_grpc_with_the_same_roles() {
    let mesh = Mesh::start().await;
    let buyer = mesh.sign_up("grpc-buyer@example.com", "buyer").await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = StorefrontServiceClient::new(channel);
    let req = pb::CreateCreatorRequest {
        username: "grpc_buyer".into(),
        display_name: "B".into(),
        bio: String::new(),
        idempotency_key: String::new(),
    };
    let err = client
        .create_creator(partner_request(Some(&access(&buyer)), req))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

/// A retried key creation (same `Idempotency-Key`) mints no second key; the retry's secret is
/// the one that works.
#[tokio::test]
async fn a_retried_api_key_creation_makes_one_key() {
    let mesh = Mesh::start().await;
    let token = access(&mesh.sign_up("partner@example.com", "creator").await);
    let create = || {
        mesh.http
            .post(mesh.url("/api/v1/api-keys"))
            .bearer_auth(&token)
            .header("idempotency-key", "create-pos-key")
            .json(&json!({"name": "pos", "scopes": ["storefront.read"]}))
            .send()
    };
    let first: Value = support::json_of(create().await.unwrap(), StatusCode::CREATED).await;
    let retry: Value = support::json_of(create().await.unwrap(), StatusCode::CREATED).await;
    assert_eq!(first["api_key"]["id"], retry["api_key"]["id"]);
    let keys: Value = mesh.get_as("/api/v1/api-keys", &token).await.json().await.unwrap();
    assert_eq!(keys["api_keys"].as_array().unwrap().len(), 1, "{keys}");
    let res = mesh
        .http
        .post(mesh.url("/api/v1/api-keys"))
        .bearer_auth(&token)
        .header("idempotency-key", "create-pos-key")
        .json(&json!({"name": "another", "scopes": ["storefront.read"]}))
        .send()
        .await
        .unwrap();
    problem(res, StatusCode::CONFLICT, "IDEMPOTENCY_KEY_REUSED").await;
}
