//! A creator connects their own Razorpay account (here a sandbox account) through REST: the key
//! pair is checked with the gateway, stored encrypted and only ever shown masked; the store's
//! checkouts, Checkout signatures, captures, refunds and webhooks then go through that account.
//! Every log line the platform wrote meanwhile (at TRACE) is kept and searched: no secret, and no
//! data key, is ever in it.
mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Mesh, access, json_of, pay, problem, settles};

async fn sandbox_account(mesh: &Mesh) -> Value {
    json_of(
        mesh.http
            .post(format!("{}/sandbox/accounts", mesh.sandbox))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await
}

async fn put_account(mesh: &Mesh, token: &str, username: &str, body: Value) -> reqwest::Response {
    mesh.send(
        reqwest::Method::PUT,
        &format!("/api/v1/creators/{username}/payment-account"),
        Some(token),
        body,
    )
    .await
}

fn connect_body(account: &Value) -> Value {
    json!({
        "key_id": account["key_id"],
        "key_secret": account["key_secret"],
        "webhook_secret": account["webhook_secret"],
    })
}

fn masked(secret: &Value) -> String {
    let secret = secret.as_str().unwrap();
    format!("••••{}", &secret[secret.len() - 4..])
}

#[tokio::test]
async fn a_creator_takes_payments_on_their_own_account_and_no_secret_reaches_a_log() {
    support::capture_logs();
    let mesh = Mesh::start().await;
    let creator = access(&mesh.sign_up("asha@example.com", "creator").await);
    let stranger = access(&mesh.sign_up("mallory@example.com", "creator").await);
    let buyer = access(&mesh.sign_up("ravi@example.com", "buyer").await);
    mesh.create_creator(&creator, "chai_point").await;
    let product = json_of(
        mesh.post(
            "/api/v1/creators/chai_point/products",
            Some(&creator),
            json!({"title": "Masala chai", "price": {"amount_minor": 4900, "currency": "INR"}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let own = sandbox_account(&mesh).await;
    let (key_secret, webhook_secret) = (
        own["key_secret"].as_str().unwrap().to_owned(),
        own["webhook_secret"].as_str().unwrap().to_owned(),
    );

    // Not yet connected: the platform's account takes payments.
    problem(
        mesh.get_as("/api/v1/creators/chai_point/payment-account", &creator)
            .await,
        StatusCode::NOT_FOUND,
        "PAYMENT_ACCOUNT_NOT_FOUND",
    )
    .await;
    // Only the store's owner may connect one.
    problem(
        put_account(&mesh, &stranger, "chai_point", connect_body(&own)).await,
        StatusCode::FORBIDDEN,
        "NOT_STORE_OWNER",
    )
    .await;
    problem(
        put_account(&mesh, &creator, "no_such_store", connect_body(&own)).await,
        StatusCode::NOT_FOUND,
        "CREATOR_NOT_FOUND",
    )
    .await;
    // Shape errors name the fields and never echo a secret.
    let bad = problem(
        put_account(
            &mesh,
            &creator,
            "chai_point",
            json!({"key_id": "pk_live_1", "key_secret": "tiny", "webhook_secret": "has a space in it"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    assert_eq!(bad["errors"].as_array().unwrap().len(), 3, "{bad}");
    assert!(!bad.to_string().contains("tiny") && !bad.to_string().contains("has a space"));
    // A key pair the gateway does not know is refused before anything is stored.
    problem(
        put_account(
            &mesh,
            &creator,
            "chai_point",
            json!({"key_id": "rzp_test_Unknown1", "key_secret": "not-the-secret-1", "webhook_secret": "whatever-123"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "INVALID_CREDENTIALS",
    )
    .await;

    let connected = json_of(
        put_account(&mesh, &creator, "chai_point", connect_body(&own)).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(connected["key_id"], own["key_id"]);
    assert_eq!(connected["key_secret"], masked(&own["key_secret"]));
    assert_eq!(connected["webhook_secret"], masked(&own["webhook_secret"]));
    assert!(connected["data_key_id"].as_str().unwrap().starts_with("dk-"));
    let account_id = connected["id"].as_str().unwrap().to_owned();
    assert_eq!(
        connected["webhook_path"],
        format!("/api/v1/webhooks/razorpay/{account_id}")
    );
    let read = json_of(
        mesh.get_as("/api/v1/creators/chai_point/payment-account", &creator)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(read, connected);
    assert!(!read.to_string().contains(&key_secret) && !read.to_string().contains(&webhook_secret));
    problem(
        mesh.get_as("/api/v1/creators/chai_point/payment-account", &stranger)
            .await,
        StatusCode::FORBIDDEN,
        "NOT_STORE_OWNER",
    )
    .await;

    // The creator points their account's webhooks at Thali (as in Razorpay's dashboard).
    json_of(
        mesh.http
            .put(format!(
                "{}/sandbox/accounts/{}/webhook",
                mesh.sandbox,
                own["key_id"].as_str().unwrap()
            ))
            .basic_auth(own["key_id"].as_str().unwrap(), Some(&key_secret))
            .json(&json!({"webhook_url": mesh.url(connected["webhook_path"].as_str().unwrap())}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;

    // A checkout opens with the creator's key; paying in the sandbox settles it through the
    // creator's signed webhook, and Checkout's signature is checked with the creator's secret.
    let order = json_of(
        mesh.http
            .post(mesh.url("/api/v1/orders"))
            .bearer_auth(&buyer)
            .header("Idempotency-Key", "own-1")
            .json(&json!({"username": "chai_point", "lines": [{"product_id": product["id"], "quantity": 2}]}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(order["checkout"]["key_id"], own["key_id"]);
    let id = order["id"].as_str().unwrap().to_owned();
    let paid = pay(
        &mesh,
        order["checkout"]["gateway_order_id"].as_str().unwrap(),
        "authorized",
    )
    .await;
    json_of(
        mesh.post(
            &format!("/api/v1/orders/{id}/verify"),
            Some(&buyer),
            json!({
                "razorpay_payment_id": paid["razorpay_payment_id"],
                "razorpay_order_id": paid["razorpay_order_id"],
                "razorpay_signature": paid["razorpay_signature"],
            }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    // Authorized only: payments captures it with the creator's key pair.
    settles(&mesh, &buyer, &id, "paid").await;

    // A refund goes through the creator's account too.
    json_of(
        mesh.http
            .post(mesh.url(&format!("/api/v1/orders/{id}/refund")))
            .bearer_auth(&creator)
            .header("Idempotency-Key", "own-refund-1")
            .json(&json!({"reason": "out of milk"}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    settles(&mesh, &buyer, &id, "refunded").await;

    // The account's URL takes only the account's own signature.
    let body = json!({"entity": "event", "event": "payment.failed", "payload": {}}).to_string();
    let platform_secret = std::fs::read_to_string(mesh.data_dir.join("sandbox-gateway/webhook_secret")).unwrap();
    for (path, secret, status, code) in [
        (
            format!("/api/v1/webhooks/razorpay/{account_id}"),
            platform_secret.trim(),
            StatusCode::BAD_REQUEST,
            "INVALID_SIGNATURE",
        ),
        (
            "/api/v1/webhooks/razorpay/01900000-0000-7000-8000-000000000000".to_owned(),
            webhook_secret.as_str(),
            StatusCode::NOT_FOUND,
            "ACCOUNT_NOT_FOUND",
        ),
        (
            "/api/v1/webhooks/razorpay/not-an-id".to_owned(),
            webhook_secret.as_str(),
            StatusCode::NOT_FOUND,
            "ACCOUNT_NOT_FOUND",
        ),
    ] {
        let res = mesh
            .http
            .post(mesh.url(&path))
            .header(
                "x-razorpay-signature",
                thali_payments::signature::sign_hex(secret.as_bytes(), body.as_bytes()),
            )
            .header("x-razorpay-event-id", "evt_other")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        problem(res, status, code).await;
    }

    // Connecting another account replaces this one (same id, new key).
    let next = sandbox_account(&mesh).await;
    let replaced = json_of(
        put_account(&mesh, &creator, "chai_point", connect_body(&next)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(replaced["id"], connected["id"]);
    assert_eq!(replaced["key_id"], next["key_id"]);

    // Nothing secret was ever logged: not the creators' secrets, not the data keys.
    let logs = support::logs();
    assert!(
        logs.contains("payment account connected") && logs.contains(&account_id),
        "the logs were captured"
    );
    let data_keys: Value =
        serde_json::from_str(&std::fs::read_to_string(mesh.data_dir.join("data-keys.json")).unwrap()).unwrap();
    let mut secrets = vec![
        key_secret.clone(),
        webhook_secret.clone(),
        next["key_secret"].as_str().unwrap().to_owned(),
        next["webhook_secret"].as_str().unwrap().to_owned(),
    ];
    secrets.extend(
        data_keys["keys"]
            .as_object()
            .unwrap()
            .values()
            .map(|k| k.as_str().unwrap().to_owned()),
    );
    for secret in &secrets {
        assert!(secret.len() >= 16);
        assert!(!logs.contains(secret.as_str()), "a secret is in the logs");
    }
    // Not in the database either, other than encrypted.
    let db = thali_platform::db::connect(&format!(
        "sqlite://{}?mode=rw",
        mesh.data_dir.join("thali.db").display()
    ))
    .await
    .unwrap();
    use sea_orm::ConnectionTrait;
    let dump = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT key_secret || webhook_secret AS s FROM payment_accounts",
        ))
        .await
        .unwrap();
    assert_eq!(dump.len(), 1);
    for row in dump {
        let stored: String = row.try_get("", "s").unwrap();
        assert!(secrets.iter().all(|s| !stored.contains(s.as_str())));
    }
}
