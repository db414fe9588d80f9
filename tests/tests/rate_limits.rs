//! Rate limits at the REST edge (issue 12, part 5; ADR 0026). Budgets are set per test with a
//! one-day window, so nothing refills while a test runs (however slow the machine) and every
//! count is exact (the defaults, 100/min anonymous and 300/min signed in, are the same rule over
//! a minute; the limiter's own unit tests check the refill under paused time). Each test has a
//! tenant of its own, so runs sharing one Redis never share a budget.
mod support;

use reqwest::{Response, StatusCode};
use serde_json::json;
use support::{Mesh, access, problem};

fn tenant() -> String {
    format!("rl{}", uuid::Uuid::now_v7().simple())
}

async fn mesh(tenant: &str, redis: Option<&str>, extra: &[(&str, &str)]) -> Mesh {
    let mut env = vec![("THALI_TENANT", tenant)];
    if let Some(url) = redis {
        env.push(("THALI_REDIS_URL", url));
    }
    env.extend_from_slice(extra);
    Mesh::start_env(&env).await
}

fn field(res: &Response, name: &str) -> String {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn assert_refused(res: Response, policy: &str, quota: &str) {
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(field(&res, "ratelimit-policy"), format!("\"{policy}\";{quota}"));
    assert!(
        field(&res, "ratelimit").starts_with(&format!("\"{policy}\";r=0;t=")),
        "{}",
        field(&res, "ratelimit")
    );
    let retry: u64 = field(&res, "retry-after").parse().unwrap();
    assert!(retry >= 1, "{retry}");
    problem(res, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
}

#[tokio::test]
async fn the_101st_anonymous_request_is_refused_with_retry_after_and_ratelimit_fields() {
    let mesh = mesh(&tenant(), None, &[("THALI_RATE_LIMIT_ANONYMOUS", "100/86400s")]).await;
    for i in 0..100u32 {
        let res = mesh.get("/api/v1/store/nobody").await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "request {}", i + 1);
        assert_eq!(field(&res, "ratelimit-policy"), "\"anonymous\";q=100;w=86400");
        assert!(field(&res, "ratelimit").starts_with(&format!("\"anonymous\";r={};t=", 99 - i)));
    }
    let res = mesh.get("/api/v1/store/nobody").await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = field(&res, "retry-after").parse().unwrap();
    assert!((850..=864).contains(&retry), "one request's worth of the day: {retry}");
    assert_refused(res, "anonymous", "q=100;w=86400").await;

    // Refusals are counted by route and status like every other answer, and logged as security
    // events.
    let metrics = mesh.admin_get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("http_server_request_duration_seconds_count")
                && l.contains("route=\"/api/v1/store/{username}\"")
                && l.contains("status=\"429\"")),
        "{metrics}"
    );

    // A forged X-Forwarded-For from an untrusted peer buys no new budget.
    let res = mesh
        .http
        .get(mesh.url("/api/v1/store/nobody"))
        .header("x-forwarded-for", "203.0.113.77")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);

    // Razorpay's webhooks are not counted per address: their signature decides.
    let res = mesh
        .http
        .post(mesh.url("/api/v1/webhooks/razorpay"))
        .header("x-razorpay-signature", "00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_ne!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.status().is_client_error(), "{}", res.status());
}

/// Razorpay's webhooks are never held to the per-address budget (Razorpay sends from a few
/// addresses), and have their own per-account limit, counted only once the signature checks
/// out: forged deliveries take nothing from it.
#[tokio::test]
async fn razorpay_webhooks_have_their_own_limit_counted_after_the_signature() {
    let mesh = mesh(
        &tenant(),
        None,
        &[
            ("THALI_RATE_LIMIT_ANONYMOUS", "2/86400s"),
            ("THALI_RATE_LIMIT_WEBHOOK", "3/86400s"),
        ],
    )
    .await;
    let secret = std::fs::read_to_string(mesh.data_dir.join("sandbox-gateway/webhook_secret")).unwrap();
    let body = serde_json::json!({"entity": "event", "account_id": "acc_x", "event": "payment.captured",
        "contains": ["payment"], "payload": {"payment": {"entity": {"id": "pay_x", "order_id": "order_not_ours",
        "amount": 100, "currency": "INR", "status": "captured"}}}, "created_at": 1})
    .to_string();
    let send = |signature: String, event_id: String| {
        mesh.http
            .post(mesh.url("/api/v1/webhooks/razorpay"))
            .header("content-type", "application/json")
            .header("x-razorpay-signature", signature)
            .header("x-razorpay-event-id", event_id)
            .body(body.clone())
            .send()
    };
    let genuine = thali_payments::signature::sign_hex(secret.trim().as_bytes(), body.as_bytes());
    let forged = thali_payments::signature::sign_hex(b"not the secret", body.as_bytes());

    for i in 0..5 {
        let res = send(forged.clone(), format!("evt_forged_{i}")).await.unwrap();
        problem(res, StatusCode::BAD_REQUEST, "INVALID_SIGNATURE").await;
    }
    for i in 0..3 {
        let res = send(genuine.clone(), format!("evt_{i}")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "genuine delivery {}", i + 1);
    }
    let res = send(genuine.clone(), "evt_3".into()).await.unwrap();
    let retry: u64 = field(&res, "retry-after").parse().unwrap();
    assert!(retry >= 1, "{retry}");
    let refused = problem(res, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    assert!(refused["detail"].as_str().unwrap().contains("webhook"), "{refused}");
    // A forged delivery is still told its signature is wrong, not that a budget is spent.
    let res = send(forged, "evt_forged_last".into()).await.unwrap();
    problem(res, StatusCode::BAD_REQUEST, "INVALID_SIGNATURE").await;
    // And none of it came out of the address's budget.
    for _ in 0..2 {
        assert_eq!(mesh.get("/api/v1/store/nobody").await.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(
        mesh.get("/api/v1/store/nobody").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_signed_in_account_has_its_own_budget() {
    let mesh = mesh(
        &tenant(),
        None,
        &[
            ("THALI_RATE_LIMIT_SIGNED_IN", "300/86400s"),
            ("THALI_RATE_LIMIT_ANONYMOUS", "1000/86400s"),
        ],
    )
    .await;
    let asha = access(&mesh.sign_up("asha@example.com", "buyer").await);
    let ravi = access(&mesh.sign_up("ravi@example.com", "buyer").await);
    for i in 0..300 {
        let res = mesh.get_as("/api/v1/auth/me", &asha).await;
        assert_eq!(res.status(), StatusCode::OK, "request {}", i + 1);
    }
    let res = mesh.get_as("/api/v1/auth/me", &asha).await;
    assert_refused(res, "signed_in", "q=300;w=86400").await;
    // Another account from the same address, and anonymous calls, are not held up.
    assert_eq!(mesh.get_as("/api/v1/auth/me", &ravi).await.status(), StatusCode::OK);
    let res = mesh.get("/api/v1/store/nobody").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(field(&res, "ratelimit-policy"), "\"anonymous\";q=1000;w=86400");
    // A forged token is anonymous (and refused by the route, not by the limiter).
    let res = mesh.get_as("/api/v1/auth/me", "not.a.token").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn login_and_registration_have_budgets_of_their_own() {
    let mesh = mesh(
        &tenant(),
        None,
        &[
            ("THALI_RATE_LIMIT_LOGIN", "10/86400s"),
            ("THALI_RATE_LIMIT_LOGIN_ADDRESS", "13/86400s"),
            ("THALI_RATE_LIMIT_REGISTER", "3/86400s"),
        ],
    )
    .await;
    let register = |email: String| {
        mesh.post(
            "/api/v1/auth/register",
            None,
            json!({"email": email, "password": "correct horse battery", "display_name": "X", "role": "buyer"}),
        )
    };
    for i in 0..3 {
        assert_eq!(
            register(format!("u{i}@example.com")).await.status(),
            StatusCode::ACCEPTED
        );
    }
    assert_refused(register("u3@example.com".into()).await, "register", "q=3;w=86400").await;

    let login = |email: &'static str| {
        mesh.post(
            "/api/v1/auth/login",
            None,
            json!({"email": email, "password": "correct horse battery"}),
        )
    };
    // Ten logins of one account from one address (each a success: the limit counts attempts)…
    for i in 0..10 {
        assert_eq!(
            login("u0@example.com").await.status(),
            StatusCode::OK,
            "login {}",
            i + 1
        );
    }
    assert_refused(login("U0@example.com ").await, "login", "q=10;w=86400").await;
    // …another account from the same address still has the address's last two (the refused
    // attempt counted against the address too: 11 of 13 are spent).
    assert_eq!(login("u1@example.com").await.status(), StatusCode::OK);
    assert_eq!(login("u1@example.com").await.status(), StatusCode::OK);
    assert_refused(login("u2@example.com").await, "login_address", "q=13;w=86400").await;
}

/// Two facade replicas on one Redis spend one budget; the server's clock decides.
#[tokio::test]
async fn two_replicas_sharing_redis_share_one_budget() {
    let Some(redis) = thali_platform::testing::redis_url() else {
        return;
    };
    let tenant = tenant();
    let quota = [("THALI_RATE_LIMIT_ANONYMOUS", "10/86400s")];
    let a = mesh(&tenant, Some(&redis), &quota).await;
    let b = mesh(&tenant, Some(&redis), &quota).await;
    for i in 0..10 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let res = replica.get("/api/v1/store/nobody").await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "request {}", i + 1);
    }
    assert_refused(a.get("/api/v1/store/nobody").await, "anonymous", "q=10;w=86400").await;
    assert_refused(b.get("/api/v1/store/nobody").await, "anonymous", "q=10;w=86400").await;
    // The same run without Redis: each replica would have had its own ten.
    let alone = mesh(&tenant, None, &quota).await;
    assert_eq!(alone.get("/api/v1/store/nobody").await.status(), StatusCode::NOT_FOUND);
}

/// Over gRPC, a partner API key is limited per key (its own limit when an admin set one, else
/// `THALI_RATE_LIMIT_API_KEY`), refused with RESOURCE_EXHAUSTED and RetryInfo; an account
/// calling with its own token has the signed-in budget.
#[tokio::test]
async fn api_keys_are_limited_per_key_over_grpc() {
    use thali_proto::storefront::v1::{GetStorefrontRequest, storefront_service_client::StorefrontServiceClient};
    use tonic_types::StatusExt;

    let mesh = mesh(
        &tenant(),
        None,
        &[
            ("THALI_RATE_LIMIT_API_KEY", "8/86400s"),
            ("THALI_RATE_LIMIT_SIGNED_IN", "1000/86400s"),
        ],
    )
    .await;
    let owner = mesh.sign_up("partner@example.com", "creator").await;
    let token = access(&owner);
    let owner_id = owner["account"]["id"].as_str().unwrap().to_owned();
    mesh.create_creator(&token, "partner_shop").await;
    let key = |body: serde_json::Value, as_token: String| {
        let mesh = &mesh;
        async move {
            let res = mesh.post("/api/v1/api-keys", Some(&as_token), body).await;
            let status = res.status();
            (status, res.json::<serde_json::Value>().await.unwrap())
        }
    };
    // Only an admin sets a key's own limit.
    let (status, _) = key(
        json!({"name": "fast", "scopes": ["storefront.read"], "rate_limit_per_minute": 5}),
        token.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let admin = mesh.signer.mint(
        &uuid::Uuid::now_v7().to_string(),
        &["admin".into()],
        std::time::Duration::from_secs(600),
    );
    let (status, limited) = key(
        json!({"name": "slow", "scopes": ["storefront.read"], "rate_limit_per_minute": 3, "owner_id": owner_id}),
        admin,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{limited}");
    assert_eq!(limited["api_key"]["rate_limit_per_minute"], 3);
    let (status, default) = key(json!({"name": "pos", "scopes": ["storefront.read"]}), token.clone()).await;
    assert_eq!(status, StatusCode::CREATED);

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = StorefrontServiceClient::new(channel);
    let call = |bearer: String| {
        let mut req = tonic::Request::new(GetStorefrontRequest {
            username: "partner_shop".into(),
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
        req
    };
    for (secret, allowed) in [
        (limited["secret"].as_str().unwrap(), 3),
        (default["secret"].as_str().unwrap(), 8),
    ] {
        for i in 0..allowed {
            client
                .get_storefront(call(secret.to_owned()))
                .await
                .unwrap_or_else(|e| panic!("call {} of {allowed}: {e}", i + 1));
        }
        let refused = client.get_storefront(call(secret.to_owned())).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        let retry = refused.get_details_retry_info().expect("RetryInfo");
        assert!(retry.retry_delay.unwrap() > std::time::Duration::ZERO);
        assert_eq!(refused.get_details_error_info().unwrap().reason, "RATE_LIMITED");
    }
    // The account itself, with its own token, is not held up by its keys' budgets.
    client.get_storefront(call(token)).await.unwrap();
}
