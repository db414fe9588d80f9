//! Order routes: checkout (buyers), reading and listing orders (buyers, sellers, admins), and the
//! check of Razorpay Checkout's signature.
use axum::{
    Json,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use thali_proto::payments::v1 as pb;

use super::{created, idempotency_key, missing};
use crate::{
    FacadeState,
    dto::payments::{self as dto, CreateOrder, FulfilOrder, ListOrdersQuery, RefundOrder, VerifyPayment},
    middleware::{ApiJson, ApiPath, ApiQuery, Caller},
    problem::Problem,
};

/// Check out: the store holds the stock of the lines at its current prices (one currency), the
/// gateway order is created, and the answer carries what Razorpay Checkout needs. The order
/// waits 15 minutes for its payment.
#[utoipa::path(
    post, path = "/api/v1/orders", tag = "orders",
    request_body = CreateOrder,
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[\x21-\x7E]{1,200}$", description = "Same key and body: the same order is returned")),
    responses(
        (status = 201, description = "Created: pay it with Razorpay Checkout", body = dto::Order),
        (status = 400, description = "OUT_OF_STOCK, PRODUCT_UNAVAILABLE, MIXED_CURRENCIES, GATEWAY_REFUSED or a field violation"),
        (status = 404, description = "CREATOR_NOT_FOUND, PRODUCT_NOT_FOUND"),
        (status = 409, description = "IDEMPOTENCY_KEY_REUSED"),
        (status = 503, description = "GATEWAY_UNAVAILABLE, STOREFRONT_UNAVAILABLE: nothing was charged; try again"),
    ),
    security(("bearer" = []))
)]
pub async fn create_order(
    State(state): State<FacadeState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateOrder>,
) -> Result<Response, Problem> {
    let req = pb::CreateOrderRequest {
        username: body.username,
        lines: body
            .lines
            .into_iter()
            .map(|l| pb::CreateOrderLine {
                product_id: l.product_id,
                quantity: l.quantity,
            })
            .collect(),
        idempotency_key: idempotency_key(&headers)?,
    };
    let order = state
        .payments
        .call(caller.request(req), |mut c, r| async move { c.create_order(r).await })
        .await?
        .into_inner()
        .order;
    let order = dto::Order::from(order.ok_or_else(|| missing("order"))?);
    Ok(created(format!("/api/v1/orders/{}", order.id), order))
}

/// An order: its buyer, its seller or an admin (anyone else: 404).
#[utoipa::path(
    get, path = "/api/v1/orders/{id}", tag = "orders",
    params(("id" = String, Path, format = Uuid)),
    responses(
        (status = 200, description = "The order", body = dto::Order),
        (status = 404, description = "ORDER_NOT_FOUND"),
    ),
    security(("bearer" = []))
)]
pub async fn get_order(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<dto::Order>, Problem> {
    let req = pb::GetOrderRequest { order_id: id };
    let order = state
        .payments
        .call(caller.request(req), |mut c, r| async move { c.get_order(r).await })
        .await?
        .into_inner()
        .order;
    Ok(Json(order.ok_or_else(|| missing("order"))?.into()))
}

/// Your purchases, newest first; with `username`, that store's orders (its owner; admins any).
#[utoipa::path(
    get, path = "/api/v1/orders", tag = "orders",
    params(ListOrdersQuery),
    responses((status = 200, description = "One page of orders", body = dto::OrderPage)),
    security(("bearer" = []))
)]
pub async fn list_orders(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListOrdersQuery>,
) -> Result<Json<dto::OrderPage>, Problem> {
    let req = pb::ListOrdersRequest {
        username: query.username.unwrap_or_default(),
        page_size: query.page_size.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
    };
    let res = state
        .payments
        .call(caller.request(req), |mut c, r| async move { c.list_orders(r).await })
        .await?
        .into_inner();
    Ok(Json(dto::OrderPage {
        orders: res.orders.into_iter().map(Into::into).collect(),
        next_page_token: Some(res.next_page_token).filter(|t| !t.is_empty()),
    }))
}

/// Check the signature Razorpay Checkout handed the browser after a payment. It proves the
/// payment is this order's; the gateway's webhook still decides when the order is paid, so the
/// answer may still say `pending`.
#[utoipa::path(
    post, path = "/api/v1/orders/{id}/verify", tag = "orders",
    params(("id" = String, Path, format = Uuid)),
    request_body = VerifyPayment,
    responses(
        (status = 200, description = "The signature holds; the order as it stands", body = dto::Order),
        (status = 400, description = "INVALID_SIGNATURE"),
        (status = 404, description = "ORDER_NOT_FOUND"),
    ),
    security(("bearer" = []))
)]
pub async fn verify_payment(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<VerifyPayment>,
) -> Result<Json<dto::Order>, Problem> {
    let req = pb::VerifyPaymentRequest {
        order_id: id,
        gateway_payment_id: body.razorpay_payment_id,
        signature: body.razorpay_signature,
        gateway_order_id: body.razorpay_order_id.unwrap_or_default(),
    };
    let order = state
        .payments
        .call(caller.request(req), |mut c, r| async move { c.verify_payment(r).await })
        .await?
        .into_inner()
        .order;
    Ok(Json(order.ok_or_else(|| missing("order"))?.into()))
}

/// Razorpay's webhook for the platform's account. The signature (`X-Razorpay-Signature`, hex
/// HMAC-SHA256 of the raw body) is checked before anything is read; the event
/// (`X-Razorpay-Event-Id`) is taken once. 200 also when processing failed and the event waits in
/// the dead-letter queue; 503 only when it could not be stored at all (Razorpay delivers again).
#[utoipa::path(
    post, path = "/api/v1/webhooks/razorpay", tag = "webhooks",
    request_body(content = String, content_type = "application/json", description = "Razorpay's event, byte for byte"),
    params(
        ("X-Razorpay-Signature" = String, Header, description = "hex HMAC-SHA256 of the body under the webhook secret"),
        ("X-Razorpay-Event-Id" = String, Header, description = "the same on every redelivery"),
    ),
    responses(
        (status = 200, description = "Taken (or taken before, or dead-lettered)", body = dto::WebhookAccepted),
        (status = 400, description = "INVALID_SIGNATURE, or no event id"),
        (status = 429, description = "RATE_LIMITED: the account's webhook budget (THALI_RATE_LIMIT_WEBHOOK, counted after the signature) is spent; Retry-After"),
        (status = 503, description = "WEBHOOK_STORAGE_UNAVAILABLE: deliver it again"),
    )
)]
pub async fn razorpay_webhook(
    State(state): State<FacadeState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<dto::WebhookAccepted>, Problem> {
    receive(state, String::new(), headers, body).await
}

/// Razorpay's webhook for a connected payment account (Thali's id of the account in the path).
#[utoipa::path(
    post, path = "/api/v1/webhooks/razorpay/{account_id}", tag = "webhooks",
    params(
        ("account_id" = String, Path),
        ("X-Razorpay-Signature" = String, Header),
        ("X-Razorpay-Event-Id" = String, Header),
    ),
    request_body(content = String, content_type = "application/json"),
    responses(
        (status = 200, description = "Taken", body = dto::WebhookAccepted),
        (status = 400, description = "INVALID_SIGNATURE"),
        (status = 404, description = "ACCOUNT_NOT_FOUND"),
        (status = 429, description = "RATE_LIMITED: the account's webhook budget is spent; Retry-After"),
    )
)]
pub async fn razorpay_account_webhook(
    State(state): State<FacadeState>,
    ApiPath(account_id): ApiPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<dto::WebhookAccepted>, Problem> {
    receive(state, account_id, headers, body).await
}

async fn receive(
    state: FacadeState,
    account_id: String,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<dto::WebhookAccepted>, Problem> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let req = pb::ReceiveWebhookRequest {
        account_id,
        body: body.to_vec(),
        signature: header("x-razorpay-signature"),
        event_id: header("x-razorpay-event-id"),
    };
    let res = state
        .payments
        .call(req, |mut c, r| async move { c.receive_webhook(r).await })
        .await?
        .into_inner();
    Ok(Json(dto::WebhookAccepted {
        status: "ok".into(),
        duplicate: res.duplicate,
    }))
}

/// Give money back: the store's owner or an admin; all that is left when no amount is given.
/// The refund is asked of the gateway in the background (`requested`, then `processed`); the
/// order counts it once processed.
#[utoipa::path(
    post, path = "/api/v1/orders/{id}/refund", tag = "orders",
    params(
        ("id" = String, Path, format = Uuid),
        ("Idempotency-Key" = Option<String>, Header, pattern = r"^[\x21-\x7E]{1,200}$", description = "Same key and body: the same refund"),
    ),
    request_body = RefundOrder,
    responses(
        (status = 200, description = "Asked", body = dto::RefundAnswer),
        (status = 400, description = "ORDER_NOT_PAID, or amount_minor beyond what is left"),
        (status = 403, description = "NOT_SELLER"),
        (status = 404, description = "ORDER_NOT_FOUND"),
        (status = 409, description = "IDEMPOTENCY_KEY_REUSED"),
    ),
    security(("bearer" = []))
)]
pub async fn refund_order(
    State(state): State<FacadeState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<RefundOrder>,
) -> Result<Json<dto::RefundAnswer>, Problem> {
    let req = pb::RefundOrderRequest {
        order_id: id,
        amount_minor: body.amount_minor,
        reason: body.reason,
        idempotency_key: idempotency_key(&headers)?,
    };
    let res = state
        .payments
        .call(caller.request(req), |mut c, r| async move { c.refund_order(r).await })
        .await?
        .into_inner();
    Ok(Json(dto::RefundAnswer {
        order: res.order.ok_or_else(|| missing("order"))?.into(),
        refund: res.refund.ok_or_else(|| missing("refund"))?.into(),
    }))
}

/// A vendor's step on a paid order (the store's owner, or an admin): `accept` → `ready` →
/// `complete`, or `reject` before it is ready, which refunds everything left. A step already taken
/// answers the order as it is.
#[utoipa::path(
    post, path = "/api/v1/orders/{id}/fulfilment", tag = "orders",
    params(("id" = String, Path, format = Uuid)),
    request_body = FulfilOrder,
    responses(
        (status = 200, description = "The order after the step", body = dto::Order),
        (status = 400, description = "FULFILMENT_OUT_OF_ORDER, ORDER_NOT_PAID"),
        (status = 403, description = "NOT_SELLER"),
        (status = 404, description = "ORDER_NOT_FOUND"),
    ),
    security(("bearer" = []))
)]
pub async fn fulfil_order(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<FulfilOrder>,
) -> Result<Json<dto::Order>, Problem> {
    let req = pb::FulfilOrderRequest {
        order_id: id,
        step: body.step,
        reason: body.reason,
    };
    let order = state
        .payments
        .call(caller.request(req), |mut c, r| async move { c.fulfil_order(r).await })
        .await?
        .into_inner()
        .order;
    Ok(Json(order.ok_or_else(|| missing("order"))?.into()))
}

/// Connect (or replace) a store's own Razorpay account: its owner or an admin. The key pair is
/// checked with the gateway first; the secrets are stored encrypted (AES-256-GCM) and only ever
/// shown masked. From then on the store's checkouts, captures, refunds and webhooks use it.
#[utoipa::path(
    put, path = "/api/v1/creators/{username}/payment-account", tag = "creators",
    params(("username" = String, Path)),
    request_body = dto::PutPaymentAccount,
    responses(
        (status = 200, description = "Replaced the store's account", body = dto::PaymentAccount),
        (status = 201, description = "Connected", body = dto::PaymentAccount),
        (status = 400, description = "INVALID_CREDENTIALS (the gateway refused the key pair), or a field violation (key_id, key_secret, webhook_secret)"),
        (status = 403, description = "NOT_STORE_OWNER"),
        (status = 404, description = "CREATOR_NOT_FOUND"),
        (status = 503, description = "GATEWAY_UNAVAILABLE: the key pair could not be checked; try again"),
    ),
    security(("bearer" = []))
)]
pub async fn put_payment_account(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(username): ApiPath<String>,
    ApiJson(body): ApiJson<dto::PutPaymentAccount>,
) -> Result<Response, Problem> {
    let req = pb::PutPaymentAccountRequest {
        username: username.clone(),
        key_id: body.key_id,
        key_secret: body.key_secret,
        webhook_secret: body.webhook_secret,
    };
    let res = state
        .payments
        .call(
            caller.request(req),
            |mut c, r| async move { c.put_payment_account(r).await },
        )
        .await?
        .into_inner();
    let account = dto::PaymentAccount::from(res.account.ok_or_else(|| missing("account"))?);
    if res.created {
        Ok(created(format!("/api/v1/creators/{username}/payment-account"), account))
    } else {
        Ok(Json(account).into_response())
    }
}

/// A store's connected Razorpay account, secrets masked: its owner or an admin. 404 when the
/// store uses the platform's account.
#[utoipa::path(
    get, path = "/api/v1/creators/{username}/payment-account", tag = "creators",
    params(("username" = String, Path)),
    responses(
        (status = 200, description = "The account, secrets masked", body = dto::PaymentAccount),
        (status = 403, description = "NOT_STORE_OWNER"),
        (status = 404, description = "CREATOR_NOT_FOUND, PAYMENT_ACCOUNT_NOT_FOUND"),
    ),
    security(("bearer" = []))
)]
pub async fn get_payment_account(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(username): ApiPath<String>,
) -> Result<Json<dto::PaymentAccount>, Problem> {
    let req = pb::GetPaymentAccountRequest { username };
    let account = state
        .payments
        .call(
            caller.request(req),
            |mut c, r| async move { c.get_payment_account(r).await },
        )
        .await?
        .into_inner()
        .account;
    Ok(Json(account.ok_or_else(|| missing("account"))?.into()))
}
