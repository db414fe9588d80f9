//! Checkout through REST, as a buyer would take it on the embedded platform: the store holds the
//! stock, the sandbox gateway creates the order, the buyer pays in the sandbox and the facade
//! checks Checkout's signature; who may read which order; a gateway that fails gives the stock
//! back and charges nothing.
mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Mesh, access, problem};

async fn json_of(res: reqwest::Response, status: StatusCode) -> Value {
    let got = res.status();
    let body = res.text().await.unwrap();
    assert_eq!(got, status, "{body}");
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

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
