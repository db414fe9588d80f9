//! Revocation that works (issue 12, part 6; ADR 0027): a logged-out session, an account an admin
//! disabled, are refused by every replica within 5 s — here a second facade process that never
//! saw the logout — although the access token's signature and expiry are still fine.
mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{
    json_of, problem,
    split::{Proc, Shared},
};
use thali::Part;

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Identity and two facade replicas over it.
struct Replicas {
    shared: Shared,
    _identity: Proc,
    a: Proc,
    b: Proc,
}

impl Replicas {
    async fn start() -> Self {
        // The tracing layers every answer takes its trace id from.
        support::spans();
        let shared = Shared::new(None, &[]).await;
        let identity = Proc::start(Part::Identity, &shared.env);
        let url = identity.grpc_url();
        let env = shared.with(&[
            ("THALI_IDENTITY_URL", url.clone()),
            ("THALI_STOREFRONT_URL", url.clone()),
            ("THALI_NOTIFICATIONS_URL", url.clone()),
            ("THALI_BOOKING_URL", url.clone()),
            ("THALI_PAYMENTS_URL", url),
        ]);
        let a = Proc::start(Part::Facade, &env);
        let b = Proc::start(Part::Facade, &env);
        Self {
            shared,
            _identity: identity,
            a,
            b,
        }
    }

    async fn sign_up(&self, email: &str) -> Value {
        let res = http()
            .post(self.a.http_url("/api/v1/auth/register"))
            .json(&json!({"email": email, "password": "correct horse battery", "display_name": "X", "role": "buyer"}))
            .send()
            .await
            .unwrap();
        json_of(res, StatusCode::ACCEPTED).await;
        let res = http()
            .post(self.a.http_url("/api/v1/auth/login"))
            .json(&json!({"email": email, "password": "correct horse battery"}))
            .send()
            .await
            .unwrap();
        json_of(res, StatusCode::OK).await
    }
}

async fn me(replica: &Proc, token: &str) -> reqwest::Response {
    http()
        .get(replica.http_url("/api/v1/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Polls `replica` until the token is refused; returns how long that took.
async fn refused_within(replica: &Proc, token: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let res = me(replica, token).await;
        if res.status() == StatusCode::UNAUTHORIZED {
            let body = problem(res, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
            assert!(body["detail"].as_str().unwrap().contains("session has ended"), "{body}");
            return started.elapsed();
        }
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            started.elapsed() < limit,
            "still accepted after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_and_disabling_reach_every_replica_within_five_seconds() {
    let replicas = Replicas::start().await;

    // Logout on replica A: the access token is refused on replica B too.
    let session = replicas.sign_up("leaver@example.com").await;
    let access = session["tokens"]["access_token"].as_str().unwrap().to_owned();
    let refresh = session["tokens"]["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(me(&replicas.b, &access).await.status(), StatusCode::OK);
    let res = http()
        .post(replicas.a.http_url("/api/v1/auth/logout"))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let took = refused_within(&replicas.b, &access, Duration::from_secs(5)).await;
    eprintln!("logout reached replica B in {took:?}");
    assert_eq!(me(&replicas.a, &access).await.status(), StatusCode::UNAUTHORIZED);
    // Another session of the same account is not affected.
    let again: Value = json_of(
        http()
            .post(replicas.b.http_url("/api/v1/auth/login"))
            .json(&json!({"email": "leaver@example.com", "password": "correct horse battery"}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let second = again["tokens"]["access_token"].as_str().unwrap();
    assert_eq!(me(&replicas.a, second).await.status(), StatusCode::OK);

    // An admin disables an account on replica A: every token of it dies on B, it cannot sign
    // in, and a non-admin cannot do the same.
    let victim = replicas.sign_up("abuser@example.com").await;
    let victim_token = victim["tokens"]["access_token"].as_str().unwrap().to_owned();
    let victim_id = victim["account"]["id"].as_str().unwrap().to_owned();
    let disable = |token: String, reason: &'static str| {
        let url = replicas
            .a
            .http_url(&format!("/api/v1/admin/accounts/{victim_id}/disable"));
        async move {
            http()
                .post(url)
                .bearer_auth(token)
                .json(&json!({"reason": reason}))
                .send()
                .await
                .unwrap()
        }
    };
    let res = disable(second.to_owned(), "not an admin").await;
    problem(res, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let admin = replicas.shared.signer().mint(
        &uuid::Uuid::now_v7().to_string(),
        &["admin".into()],
        Duration::from_secs(600),
    );
    let res = disable(admin.clone(), "").await;
    problem(res, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    let body: Value = json_of(disable(admin.clone(), "fraud report #42").await, StatusCode::OK).await;
    assert_eq!(body["status"], "disabled");
    let took = refused_within(&replicas.b, &victim_token, Duration::from_secs(5)).await;
    eprintln!("disabling reached replica B in {took:?}");
    let res = http()
        .post(replicas.b.http_url("/api/v1/auth/login"))
        .json(&json!({"email": "abuser@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert!(
        res.status().is_client_error(),
        "a disabled account cannot sign in: {}",
        res.status()
    );
    let refresh = victim["tokens"]["refresh_token"].as_str().unwrap();
    let res = http()
        .post(replicas.b.http_url("/api/v1/auth/refresh"))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap();
    problem(res, StatusCode::UNAUTHORIZED, "REFRESH_TOKEN_INVALID").await;
    // Disabling twice is no error; an unknown account is 404.
    json_of(disable(admin.clone(), "again").await, StatusCode::OK).await;
    let res = http()
        .post(
            replicas
                .a
                .http_url(&format!("/api/v1/admin/accounts/{}/disable", uuid::Uuid::now_v7())),
        )
        .bearer_auth(&admin)
        .json(&json!({"reason": "typo"}))
        .send()
        .await
        .unwrap();
    problem(res, StatusCode::NOT_FOUND, "ACCOUNT_NOT_FOUND").await;
}
