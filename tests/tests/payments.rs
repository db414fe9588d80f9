//! Checkout through REST, as a buyer would take it on the embedded platform: the store holds the
//! stock, the sandbox gateway creates the order, the buyer pays in the sandbox and the facade
//! checks Checkout's signature; the sandbox's signed webhooks settle the order (auto-capture,
//! stock committed); who may read which order; a gateway that fails gives the stock back and
//! charges nothing; webhooks with bad signatures are refused, failed ones dead-lettered, and a
//! 503 only when not even that could be stored.
mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Mesh, access, json_of, mail, mail_to, metric, pay, problem, settles};

/// A creator's store with a limited product (stock 3) and an unlimited one. Returns (creator
/// token, limited product id, unlimited product id).
async fn store(mesh: &Mesh, email: &str, username: &str) -> (String, String, String) {
    let creator = access(&mesh.sign_up(email, "creator").await);
    json_of(
        mesh.post(
            "/api/v1/creators",
            Some(&creator),
            json!({"username": username, "display_name": "Chai Point"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let mut ids = Vec::new();
    for (title, price, stock) in [("Masala chai", 4900, json!(3)), ("Samosa", 1500, Value::Null)] {
        let p = json_of(
            mesh.post(
                &format!("/api/v1/creators/{username}/products"),
                Some(&creator),
                json!({"title": title, "price": {"amount_minor": price, "currency": "INR"}, "stock": stock}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        ids.push(p["id"].as_str().unwrap().to_owned());
    }
    (creator, ids[0].clone(), ids[1].clone())
}

async fn stock_of(mesh: &Mesh, username: &str, product: &str) -> Value {
    let page = json_of(mesh.get(&format!("/api/v1/store/{username}")).await, StatusCode::OK).await;
    page["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == product)
        .map(|p| p["stock"].clone())
        .unwrap()
}

async fn checkout(mesh: &Mesh, token: &str, key: &str, body: Value) -> reqwest::Response {
    mesh.http
        .post(mesh.url("/api/v1/orders"))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_buyer_checks_out_pays_in_the_sandbox_and_only_buyer_and_seller_see_the_order() {
    let mesh = Mesh::start().await;
    let (creator, chai, samosa) = store(&mesh, "asha@example.com", "chai_point").await;
    let buyer = access(&mesh.sign_up("ravi@example.com", "buyer").await);
    let stranger = access(&mesh.sign_up("mallory@example.com", "buyer").await);

    let body = json!({"username": "chai_point", "lines": [
        {"product_id": chai, "quantity": 2}, {"product_id": samosa, "quantity": 3}]});
    let order = json_of(
        checkout(&mesh, &buyer, "cart-1", body.clone()).await,
        StatusCode::CREATED,
    )
    .await;
    let id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(order["status"], "pending");
    assert_eq!(
        order["total"],
        json!({"amount_minor": 2 * 4900 + 3 * 1500, "currency": "INR"})
    );
    assert_eq!(order["checkout"]["gateway"], "sandbox");
    assert!(order["checkout"]["key_id"].as_str().unwrap().starts_with("rzp_test_"));
    assert_eq!(order["checkout"]["amount"], order["total"]);
    let gateway_order = order["checkout"]["gateway_order_id"].as_str().unwrap().to_owned();
    assert!(gateway_order.starts_with("order_"), "{order}");
    assert_eq!(order["lines"].as_array().unwrap().len(), 2);
    assert_eq!(stock_of(&mesh, "chai_point", &chai).await, 1, "two of three held");
    assert_eq!(stock_of(&mesh, "chai_point", &samosa).await, Value::Null);

    // A retry with the same key is the same order and holds nothing more; another body is a conflict.
    let again = json_of(checkout(&mesh, &buyer, "cart-1", body).await, StatusCode::CREATED).await;
    assert_eq!(again["id"], order["id"]);
    assert_eq!(stock_of(&mesh, "chai_point", &chai).await, 1);
    let other = json!({"username": "chai_point", "lines": [{"product_id": samosa, "quantity": 1}]});
    problem(
        checkout(&mesh, &buyer, "cart-1", other).await,
        StatusCode::CONFLICT,
        "IDEMPOTENCY_KEY_REUSED",
    )
    .await;

    // More than is left: nothing is held, the answer says which product and how many are left.
    let greedy = json!({"username": "chai_point", "lines": [{"product_id": chai, "quantity": 2}]});
    let short = problem(
        checkout(&mesh, &buyer, "cart-2", greedy).await,
        StatusCode::BAD_REQUEST,
        "OUT_OF_STOCK",
    )
    .await;
    assert!(short["detail"].as_str().unwrap().contains("only 1 left"), "{short}");
    assert_eq!(stock_of(&mesh, "chai_point", &chai).await, 1);

    // Buyer and seller read it; anyone else is told it does not exist.
    json_of(
        mesh.get_as(&format!("/api/v1/orders/{id}"), &buyer).await,
        StatusCode::OK,
    )
    .await;
    json_of(
        mesh.get_as(&format!("/api/v1/orders/{id}"), &creator).await,
        StatusCode::OK,
    )
    .await;
    problem(
        mesh.get_as(&format!("/api/v1/orders/{id}"), &stranger).await,
        StatusCode::NOT_FOUND,
        "ORDER_NOT_FOUND",
    )
    .await;
    let mine = json_of(mesh.get_as("/api/v1/orders", &buyer).await, StatusCode::OK).await;
    assert_eq!(mine["orders"].as_array().unwrap().len(), 1);
    let sales = json_of(
        mesh.get_as("/api/v1/orders?username=chai_point", &creator).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(sales["orders"][0]["id"], order["id"]);
    let snooping = json_of(
        mesh.get_as("/api/v1/orders?username=chai_point", &stranger).await,
        StatusCode::OK,
    )
    .await;
    assert!(snooping["orders"].as_array().unwrap().is_empty(), "{snooping}");
    assert!(
        json_of(mesh.get_as("/api/v1/orders", &stranger).await, StatusCode::OK).await["orders"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // The buyer pays in the sandbox; Checkout's signature proves the payment is this order's.
    let paid = json_of(
        mesh.http
            .post(format!("{}/sandbox/orders/{gateway_order}/pay", mesh.sandbox))
            .json(&json!({"outcome": "captured"}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let verify = |signature: String| {
        json!({
            "razorpay_payment_id": paid["razorpay_payment_id"],
            "razorpay_order_id": paid["razorpay_order_id"],
            "razorpay_signature": signature,
        })
    };
    let signature = paid["razorpay_signature"].as_str().unwrap().to_owned();
    json_of(
        mesh.post(
            &format!("/api/v1/orders/{id}/verify"),
            Some(&buyer),
            verify(signature.clone()),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let mut forged = signature.clone().into_bytes();
    forged[0] = if forged[0] == b'0' { b'1' } else { b'0' };
    problem(
        mesh.post(
            &format!("/api/v1/orders/{id}/verify"),
            Some(&buyer),
            verify(String::from_utf8(forged).unwrap()),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "INVALID_SIGNATURE",
    )
    .await;
    problem(
        mesh.post(
            &format!("/api/v1/orders/{id}/verify"),
            Some(&stranger),
            verify(signature),
        )
        .await,
        StatusCode::NOT_FOUND,
        "ORDER_NOT_FOUND",
    )
    .await;

    // Bad input is a 400 naming the fields, never a 5xx.
    let bad = problem(
        checkout(
            &mesh,
            &buyer,
            "cart-3",
            json!({"username": "chai_point", "lines": [{"product_id": "nope", "quantity": 0}]}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    assert_eq!(bad["errors"].as_array().unwrap().len(), 2, "{bad}");
    problem(
        mesh.post("/api/v1/orders", None, json!({"username": "chai_point", "lines": []}))
            .await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
    )
    .await;
}

#[tokio::test]
async fn a_failing_gateway_charges_nothing_and_gives_the_stock_back() {
    let mesh = Mesh::start().await;
    let (_, chai, _) = store(&mesh, "asha@example.com", "snack_stall").await;
    let buyer = access(&mesh.sign_up("ravi@example.com", "buyer").await);
    json_of(
        mesh.http
            .post(format!("{}/sandbox/faults", mesh.sandbox))
            .json(&json!({"rate_5xx": 1.0}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let body = json!({"username": "snack_stall", "lines": [{"product_id": chai, "quantity": 3}]});
    problem(
        checkout(&mesh, &buyer, "k-1", body.clone()).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "GATEWAY_UNAVAILABLE",
    )
    .await;
    assert_eq!(
        stock_of(&mesh, "snack_stall", &chai).await,
        3,
        "the held stock went back"
    );
    assert!(
        json_of(mesh.get_as("/api/v1/orders", &buyer).await, StatusCode::OK).await["orders"]
            .as_array()
            .unwrap()
            .is_empty(),
        "no order was written"
    );

    // The gateway is back: the same key now creates the order (the failed try used nothing up).
    let cleared = mesh
        .http
        .delete(format!("{}/sandbox/faults", mesh.sandbox))
        .send()
        .await
        .unwrap();
    assert!(cleared.status().is_success());
    let order = json_of(checkout(&mesh, &buyer, "k-1", body).await, StatusCode::CREATED).await;
    assert_eq!(order["status"], "pending");
    assert_eq!(stock_of(&mesh, "snack_stall", &chai).await, 0);
}

/// The embedded database, as an operator would open it.
async fn database(mesh: &Mesh) -> sea_orm::DatabaseConnection {
    let url = format!("sqlite://{}?mode=rw", mesh.data_dir.join("thali.db").display());
    thali_platform::db::connect(&url).await.unwrap()
}

async fn scalar(db: &sea_orm::DatabaseConnection, sql: &str, value: impl Into<sea_orm::Value>) -> Option<String> {
    use sea_orm::ConnectionTrait;
    db.query_one_raw(thali_platform::db::statement(
        db.get_database_backend(),
        sql,
        vec![value.into()],
    ))
    .await
    .unwrap()
    .map(|row| row.try_get_by_index::<String>(0).unwrap())
}

#[tokio::test]
async fn the_gateways_webhooks_settle_paid_orders_and_commit_their_stock() {
    let mesh = Mesh::start().await;
    let (creator, chai, _) = store(&mesh, "asha@example.com", "paid_shop").await;
    let buyer = access(&mesh.sign_up("ravi@example.com", "buyer").await);
    let db = database(&mesh).await;
    // The business metrics the dashboards read (other tests of this binary add to them too).
    let created = || metric(&mesh, "payments_orders_created_total", &[("kind", "checkout")]);
    let gmv = || metric(&mesh, "payments_paid_minor_total", &[("currency", "INR")]);
    let lag = || metric(&mesh, "webhook_processing_lag_seconds_count", &[]);
    let (created_before, gmv_before, lag_before) = (created().await, gmv().await, lag().await);

    // Captured at once: payment.captured and order.paid reach the facade, the order is paid.
    let body = json!({"username": "paid_shop", "lines": [{"product_id": chai, "quantity": 1}]});
    let order = json_of(checkout(&mesh, &buyer, "p-1", body.clone()).await, StatusCode::CREATED).await;
    assert!(created().await >= created_before + 1.0);
    let amount = order["total"]["amount_minor"].as_f64().unwrap();
    let id = order["id"].as_str().unwrap().to_owned();
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    pay(
        &mesh,
        order["checkout"]["gateway_order_id"].as_str().unwrap(),
        "captured",
    )
    .await;
    let paid = settles(&mesh, &buyer, &id, "paid").await;
    assert!(paid["paid_at"].is_string(), "{paid}");
    assert!(gmv().await >= gmv_before + amount, "the paid amount counts in GMV");
    assert!(
        lag().await >= lag_before + 1.0,
        "the webhook's processing lag is recorded"
    );
    for _ in 0..200 {
        if scalar(&db, "SELECT state FROM stock_reservations WHERE id = $1", uuid)
            .await
            .as_deref()
            == Some("committed")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        scalar(&db, "SELECT state FROM stock_reservations WHERE id = $1", uuid)
            .await
            .as_deref(),
        Some("committed"),
        "the paid order's stock is sold"
    );

    // Only authorized: payments captures it itself, and the capture pays the order.
    let order = json_of(checkout(&mesh, &buyer, "p-2", body).await, StatusCode::CREATED).await;
    let id = order["id"].as_str().unwrap().to_owned();
    pay(
        &mesh,
        order["checkout"]["gateway_order_id"].as_str().unwrap(),
        "authorized",
    )
    .await;
    settles(&mesh, &buyer, &id, "paid").await;
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(
        scalar(
            &db,
            "SELECT outcome FROM transactions WHERE order_id = $1 AND call = 'capture'",
            uuid
        )
        .await
        .as_deref(),
        Some("ok"),
        "the capture is recorded"
    );
    let sales = json_of(
        mesh.get_as("/api/v1/orders?username=paid_shop", &creator).await,
        StatusCode::OK,
    )
    .await;

    // order.paid through the outbox: the buyer's receipt by email, the seller told in-app.
    let mut subject = None;
    for _ in 0..200 {
        subject = mail_to(&mesh, "ravi@example.com", "is paid");
        if subject.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(subject.as_deref(), Some("Your order from paid_shop is paid"));
    let told = json_of(mesh.get_as("/api/v1/notifications", &creator).await, StatusCode::OK).await;
    let paid_notes = told["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["event_type"] == "order.paid")
        .count();
    assert!(paid_notes >= 1, "{told}");
    assert!(
        sales["orders"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["status"] == "paid"),
        "{sales}"
    );

    // The last cup taken at checkout: the creator (not the buyer) is told it is out of stock.
    // The event names the page's owner; without one, notifications refused it and the relay job
    // died.
    let body = json!({"username": "paid_shop", "lines": [{"product_id": chai, "quantity": 1}]});
    json_of(checkout(&mesh, &buyer, "p-3", body).await, StatusCode::CREATED).await;
    let mut sold_out = None;
    for _ in 0..200 {
        let told = json_of(mesh.get_as("/api/v1/notifications", &creator).await, StatusCode::OK).await;
        sold_out = told["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["event_type"] == "product.out_of_stock")
            .cloned();
        if sold_out.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let sold_out = sold_out.expect("the creator is told the chai sold out");
    assert_eq!(sold_out["title"], "Masala chai is out of stock");
}

#[tokio::test]
async fn webhooks_are_refused_without_a_valid_signature_and_never_lost() {
    use sea_orm::ConnectionTrait;
    let mesh = Mesh::start().await;
    let secret = std::fs::read_to_string(mesh.data_dir.join("sandbox-gateway/webhook_secret")).unwrap();
    let body = json!({"entity": "event", "account_id": "acc_x", "event": "payment.captured", "contains": ["payment"],
        "payload": {"payment": {"entity": {"id": "pay_x", "order_id": "order_not_ours", "amount": 100,
        "currency": "INR", "status": "captured"}}}, "created_at": 1})
    .to_string();
    let send = |body: String, signature: Option<String>, event_id: Option<&'static str>| {
        let mut req = mesh
            .http
            .post(mesh.url("/api/v1/webhooks/razorpay"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(s) = signature {
            req = req.header("x-razorpay-signature", s);
        }
        if let Some(e) = event_id {
            req = req.header("x-razorpay-event-id", e);
        }
        req.send()
    };
    let sign =
        |secret: &str, body: &str| thali_payments::signature::sign_hex(secret.trim().as_bytes(), body.as_bytes());

    let taken = json_of(
        send(body.clone(), Some(sign(&secret, &body)), Some("evt_1"))
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(taken, json!({"status": "ok", "duplicate": false}));
    let again = json_of(
        send(body.clone(), Some(sign(&secret, &body)), Some("evt_1"))
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(again["duplicate"], true);

    let changed = body.replacen("100", "101", 1);
    for (what, res) in [
        ("no signature", send(body.clone(), None, Some("evt_2")).await.unwrap()),
        (
            "another account's secret",
            send(body.clone(), Some(sign("whsec_other", &body)), Some("evt_2"))
                .await
                .unwrap(),
        ),
        (
            "the body changed by one byte",
            send(changed, Some(sign(&secret, &body)), Some("evt_2")).await.unwrap(),
        ),
        (
            "garbage",
            send(body.clone(), Some("zz".into()), Some("evt_2")).await.unwrap(),
        ),
    ] {
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{what}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["code"], "INVALID_SIGNATURE", "{what}: {problem}");
    }
    problem(
        send(body.clone(), Some(sign(&secret, &body)), None).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    problem(
        mesh.http
            .post(mesh.url("/api/v1/webhooks/razorpay/acc_unknown"))
            .header("x-razorpay-signature", sign(&secret, &body))
            .header("x-razorpay-event-id", "evt_3")
            .body(body.clone())
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "ACCOUNT_NOT_FOUND",
    )
    .await;

    // Processing fails (the events table refuses writes): the event waits in the DLQ, 200.
    let db = database(&mesh).await;
    db.execute_unprepared(
        "CREATE TRIGGER events_down BEFORE INSERT ON payment_events BEGIN SELECT RAISE(ABORT, 'down'); END",
    )
    .await
    .unwrap();
    let parked = json_of(
        send(body.clone(), Some(sign(&secret, &body)), Some("evt_4"))
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(parked["duplicate"], false);
    assert_eq!(
        scalar(&db, "SELECT status FROM webhook_dlq WHERE event_id = $1", "evt_4")
            .await
            .as_deref(),
        Some("pending")
    );
    // Not even the DLQ can be written: 503, so that Razorpay delivers it again.
    db.execute_unprepared(
        "CREATE TRIGGER dlq_down BEFORE INSERT ON webhook_dlq BEGIN SELECT RAISE(ABORT, 'down'); END",
    )
    .await
    .unwrap();
    problem(
        send(body.clone(), Some(sign(&secret, &body)), Some("evt_5"))
            .await
            .unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
        "WEBHOOK_STORAGE_UNAVAILABLE",
    )
    .await;
}

#[tokio::test]
async fn a_seller_refunds_part_then_the_rest_and_nobody_else_may() {
    let mesh = Mesh::start().await;
    let (creator, chai, _) = store(&mesh, "asha@example.com", "refund_shop").await;
    let (other_creator, _, _) = store(&mesh, "zoya@example.com", "zoya_shop").await;
    let buyer = access(&mesh.sign_up("ravi@example.com", "buyer").await);
    let body = json!({"username": "refund_shop", "lines": [{"product_id": chai, "quantity": 2}]});
    let order = json_of(checkout(&mesh, &buyer, "r-1", body).await, StatusCode::CREATED).await;
    let id = order["id"].as_str().unwrap().to_owned();
    pay(
        &mesh,
        order["checkout"]["gateway_order_id"].as_str().unwrap(),
        "captured",
    )
    .await;
    settles(&mesh, &buyer, &id, "paid").await;

    let refund = |token: &str, key: &str, body: Value| {
        mesh.http
            .post(mesh.url(&format!("/api/v1/orders/{id}/refund")))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    problem(
        refund(&other_creator, "x-1", json!({})).await.unwrap(),
        StatusCode::NOT_FOUND,
        "ORDER_NOT_FOUND",
    )
    .await;
    problem(
        refund(&buyer, "x-2", json!({})).await.unwrap(),
        StatusCode::FORBIDDEN,
        "NOT_SELLER",
    )
    .await;
    problem(
        refund(&creator, "x-3", json!({"amount_minor": 9801})).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;

    let part = json_of(
        refund(
            &creator,
            "part-1",
            json!({"amount_minor": 1000, "reason": "one cup spilt"}),
        )
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(part["refund"]["status"], "requested", "{part}");
    assert_eq!(part["refund"]["amount"]["amount_minor"], 1000);
    let replay = json_of(
        refund(
            &creator,
            "part-1",
            json!({"amount_minor": 1000, "reason": "one cup spilt"}),
        )
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(replay["refund"]["id"], part["refund"]["id"], "same key, same refund");
    let partly = settles(&mesh, &creator, &id, "partially_refunded").await;
    assert_eq!(partly["refunded"]["amount_minor"], 1000);

    // The rest (no amount: all that is left).
    json_of(refund(&creator, "rest-1", json!({})).await.unwrap(), StatusCode::OK).await;
    let done = settles(&mesh, &buyer, &id, "refunded").await;
    assert_eq!(done["refunded"]["amount_minor"], 9800, "{done}");
    // order.refunded: the buyer is told by email (the total refunded so far).
    let mut subject = None;
    for _ in 0..200 {
        subject = mail_to(&mesh, "ravi@example.com", "INR 98.00 refunded");
        if subject.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(subject.as_deref(), Some("INR 98.00 refunded by refund_shop"));
    problem(
        refund(&creator, "again-1", json!({})).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "ORDER_NOT_PAID",
    )
    .await;
}

async fn fulfil(mesh: &Mesh, token: &str, id: &str, step: &str) -> reqwest::Response {
    mesh.post(
        &format!("/api/v1/orders/{id}/fulfilment"),
        Some(token),
        json!({ "step": step }),
    )
    .await
}

#[tokio::test]
async fn a_vendor_accepts_readies_and_completes_or_rejects_and_the_buyer_is_refunded() {
    let mesh = Mesh::start().await;
    let (vendor, chai, _) = store(&mesh, "asha@example.com", "tea_stall").await;
    let buyer = access(&mesh.sign_up("ravi@example.com", "buyer").await);
    let paid_order = |key: &'static str| {
        let (mesh, buyer, chai) = (&mesh, buyer.clone(), chai.clone());
        async move {
            let body = json!({"username": "tea_stall", "lines": [{"product_id": chai, "quantity": 1}]});
            let order = json_of(checkout(mesh, &buyer, key, body).await, StatusCode::CREATED).await;
            let id = order["id"].as_str().unwrap().to_owned();
            pay(
                mesh,
                order["checkout"]["gateway_order_id"].as_str().unwrap(),
                "captured",
            )
            .await;
            settles(mesh, &buyer, &id, "paid").await;
            id
        }
    };

    let id = paid_order("f-1").await;
    problem(
        fulfil(&mesh, &vendor, &id, "ready").await,
        StatusCode::BAD_REQUEST,
        "FULFILMENT_OUT_OF_ORDER",
    )
    .await;
    problem(
        fulfil(&mesh, &buyer, &id, "accept").await,
        StatusCode::FORBIDDEN,
        "NOT_SELLER",
    )
    .await;
    problem(
        fulfil(&mesh, &vendor, &id, "ship").await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    for (s, state) in [
        ("accept", "accepted"),
        ("accept", "accepted"),
        ("ready", "ready"),
        ("complete", "completed"),
    ] {
        let order = json_of(fulfil(&mesh, &vendor, &id, s).await, StatusCode::OK).await;
        assert_eq!(order["fulfilment"], state, "{order}");
    }
    problem(
        fulfil(&mesh, &vendor, &id, "reject").await,
        StatusCode::BAD_REQUEST,
        "FULFILMENT_OUT_OF_ORDER",
    )
    .await;

    // Rejected: the buyer gets everything back.
    let id = paid_order("f-2").await;
    let rejected = json_of(
        mesh.post(
            &format!("/api/v1/orders/{id}/fulfilment"),
            Some(&vendor),
            json!({"step": "reject", "reason": "out of milk"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(rejected["fulfilment"], "rejected");
    let refunded = settles(&mesh, &buyer, &id, "refunded").await;
    assert_eq!(refunded["refunded"]["amount_minor"], 4900, "{refunded}");
    assert_eq!(
        json_of(fulfil(&mesh, &vendor, &id, "reject").await, StatusCode::OK).await["fulfilment"],
        "rejected",
        "rejecting again is a no-op"
    );
}

#[tokio::test]
async fn a_payment_after_the_order_expired_goes_back_and_the_buyer_is_told_why() {
    let mesh = Mesh::start().await;
    let (creator, chai, _) = store(&mesh, "asha@example.com", "late_shop").await;
    let buyer = access(&mesh.sign_up("ravi@example.com", "buyer").await);
    let body = json!({"username": "late_shop", "lines": [{"product_id": chai, "quantity": 1}]});
    let order = json_of(checkout(&mesh, &buyer, "late-1", body).await, StatusCode::CREATED).await;
    let id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(stock_of(&mesh, "late_shop", &chai).await, 2);

    // Nobody paid within the quarter hour: the reconciler expires it and the stock goes back.
    support::a_quarter_hour_passes(&mesh, &id).await;
    settles(&mesh, &buyer, &id, "expired").await;

    // The buyer pays anyway (the gateway's order still takes it): the money goes back at once,
    // the order stays expired, and the buyer is told why.
    pay(
        &mesh,
        order["checkout"]["gateway_order_id"].as_str().unwrap(),
        "captured",
    )
    .await;
    let mut told = None;
    for _ in 0..200 {
        told = mail(&mesh, "ravi@example.com", "on its way back");
        if told.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (subject, text) = told.expect("the buyer is told");
    assert_eq!(subject, "Your payment of INR 49.00 to late_shop is on its way back");
    assert!(text.contains("arrived after your order had expired"), "{text}");
    assert_eq!(
        json_of(
            mesh.get_as(&format!("/api/v1/orders/{id}"), &buyer).await,
            StatusCode::OK
        )
        .await["status"],
        "expired"
    );
    assert!(
        mail_to(&mesh, "ravi@example.com", "is paid").is_none(),
        "never a receipt for it"
    );
    let seller = json_of(mesh.get_as("/api/v1/notifications", &creator).await, StatusCode::OK).await;
    assert!(
        seller["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["event_type"] == "order.payment_returned"),
        "{seller}"
    );
}
