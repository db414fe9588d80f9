//! The sandbox's own routes: test accounts, the buyer's payment (API and a tiny checkout page),
//! and faults. They are for tests and local runs on loopback: only changing an account's webhook
//! asks for that account's key pair.
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::api::{Caller, Fields, Id};
use super::error::ApiError;
use super::ops::{self, CheckoutAnswer, PayOutcome};
use super::{Faults, Sandbox, SandboxAccount, SandboxError};

pub(crate) fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/sandbox/accounts", post(create_account))
        .route("/sandbox/accounts/{key_id}/webhook", put(set_webhook))
        .route("/sandbox/orders/{id}/pay", post(pay))
        .route("/sandbox/checkout/{id}", get(checkout_page))
        .route("/sandbox/faults", get(get_faults).post(set_faults).delete(clear_faults))
        .with_state(sandbox)
}

fn refused(error: SandboxError) -> ApiError {
    match error {
        SandboxError::Invalid { field, problem } => ApiError::invalid(&field, problem),
        SandboxError::NotFound(what) => ApiError::not_found(what),
        // Not reachable from these routes (no file is loaded, no client is built here).
        other => ApiError::bad_request(other.to_string()),
    }
}

fn account_json(account: &SandboxAccount) -> Value {
    json!({
        "key_id": account.key_id,
        "key_secret": account.key_secret.expose(),
        "webhook_secret": account.webhook_secret.expose(),
        "webhook_url": account.webhook_url,
        "account_id": account.account_id,
    })
}

fn optional_url(fields: &Fields) -> Result<Option<String>, ApiError> {
    match fields.map.get("webhook_url") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(url)) => Ok(Some(url.clone())),
        Some(_) => Err(ApiError::invalid("webhook_url", "webhook_url must be a string")),
    }
}

/// `POST /sandbox/accounts` {webhook_url?} → the new account's key pair and webhook secret.
async fn create_account(State(sandbox): State<Sandbox>, fields: Fields) -> Result<Json<Value>, ApiError> {
    if let Some(extra) = fields.map.keys().find(|k| *k != "webhook_url") {
        return Err(ApiError::invalid(
            extra,
            format!("{extra} is/are not required and should not be sent"),
        ));
    }
    let account = sandbox.create_account(optional_url(&fields)?).map_err(refused)?;
    Ok(Json(account_json(&account)))
}

/// `PUT /sandbox/accounts/{key_id}/webhook` {webhook_url: string | null}, as that account.
async fn set_webhook(
    State(sandbox): State<Sandbox>,
    Path(key_id): Path<String>,
    Caller(caller): Caller,
    fields: Fields,
) -> Result<Json<Value>, ApiError> {
    if caller != key_id {
        return Err(ApiError::unauthorized("Authentication failed"));
    }
    let account = sandbox
        .set_webhook_url(&key_id, optional_url(&fields)?)
        .map_err(refused)?;
    Ok(Json(
        json!({"key_id": account.key_id, "webhook_url": account.webhook_url}),
    ))
}

/// `POST /sandbox/orders/{id}/pay` {outcome: captured | authorized | failed, method?}.
async fn pay(State(sandbox): State<Sandbox>, Id(order_id): Id, fields: Fields) -> Response {
    let outcome = match fields.map.get("outcome").and_then(Value::as_str) {
        Some(text) => PayOutcome::parse(text),
        None => None,
    };
    let method = fields.map.get("method").and_then(Value::as_str);
    let result = match outcome {
        Some(outcome) => sandbox.inner.apply(|state| ops::pay(state, &order_id, outcome, method)),
        None => Err(ApiError::invalid(
            "outcome",
            "outcome must be captured, authorized or failed",
        )),
    };
    match (result, fields.from_form) {
        (Ok(answer), false) => Json(answer_json(&answer)).into_response(),
        (Ok(answer), true) => page(StatusCode::OK, &result_page(&answer)),
        (Err(error), false) => error.into_response(),
        (Err(error), true) => page(
            error.status,
            &format!(
                "<h1>Not paid</h1><p>{}</p><p><a href=\"../../checkout/{}\">Back to the checkout</a></p>",
                escape(&error.description),
                escape(&order_id)
            ),
        ),
    }
}

/// What Razorpay Checkout hands the page's handler: the three ids on success, the error on failure.
fn answer_json(answer: &CheckoutAnswer) -> Value {
    let mut body = json!({
        "razorpay_order_id": answer.razorpay_order_id,
        "razorpay_payment_id": answer.razorpay_payment_id,
        "payment": answer.payment,
        "order": answer.order,
    });
    match &answer.razorpay_signature {
        Some(signature) => body["razorpay_signature"] = json!(signature),
        None => {
            body["error"] = json!({
                "code": answer.payment["error_code"],
                "description": answer.payment["error_description"],
                "source": answer.payment["error_source"],
                "step": answer.payment["error_step"],
                "reason": answer.payment["error_reason"],
                "metadata": {"order_id": answer.razorpay_order_id, "payment_id": answer.razorpay_payment_id},
            });
        }
    }
    body
}

/// `GET /sandbox/checkout/{order_id}`: the order and three buttons, one per outcome.
async fn checkout_page(State(sandbox): State<Sandbox>, Id(order_id): Id) -> Response {
    let order = sandbox
        .inner
        .read(|state| state.orders.get(&order_id).map(|o| o.to_json()));
    let Some(order) = order else {
        return page(StatusCode::NOT_FOUND, "<h1>No such order</h1>");
    };
    let text = |key: &str| order[key].as_str().unwrap_or_default().to_owned();
    let amount = order["amount_due"].as_i64().unwrap_or_default();
    let id = escape(&order_id);
    let mut body = format!(
        "<h1>Sandbox checkout</h1>\n<p>Order <code>{id}</code>: {} {}.{:02} due, status {}. Receipt: {}.</p>\n",
        escape(&text("currency")),
        amount / 100,
        amount % 100,
        escape(&text("status")),
        escape(&text("receipt")),
    );
    if order["status"] == "paid" {
        body.push_str("<p>This order is paid.</p>\n");
    } else {
        for (outcome, label) in [
            ("captured", "Pay (captured)"),
            ("authorized", "Authorize only"),
            ("failed", "Fail the payment"),
        ] {
            body.push_str(&format!(
                "<form method=\"post\" action=\"../orders/{id}/pay\"><input type=\"hidden\" name=\"outcome\" \
                 value=\"{outcome}\"><button type=\"submit\">{label}</button></form>\n"
            ));
        }
    }
    page(StatusCode::OK, &body)
}

fn result_page(answer: &CheckoutAnswer) -> String {
    let status = answer.payment["status"].as_str().unwrap_or_default();
    let mut body = format!(
        "<h1>Payment {}</h1>\n<dl><dt>razorpay_order_id</dt><dd><code>{}</code></dd>\
         <dt>razorpay_payment_id</dt><dd><code>{}</code></dd>",
        escape(status),
        escape(&answer.razorpay_order_id),
        escape(&answer.razorpay_payment_id),
    );
    if let Some(signature) = &answer.razorpay_signature {
        body.push_str(&format!(
            "<dt>razorpay_signature</dt><dd><code>{}</code></dd>",
            escape(signature)
        ));
    }
    body.push_str(&format!(
        "</dl>\n<p><a href=\"../../checkout/{}\">Back to the checkout</a></p>",
        escape(&answer.razorpay_order_id)
    ));
    body
}

/// A self-contained page: no script, no external asset.
fn page(status: StatusCode, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Thali sandbox checkout</title>\
         <style>body{{font-family:sans-serif;max-width:36rem;margin:2rem auto}}form{{margin:.5rem 0}}\
         button{{padding:.5rem 1rem}}</style></head><body>\n{body}\n</body></html>\n"
    );
    let mut response = (status, Html(html)).into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"),
    );
    response
}

/// HTML-escapes text for element content and quoted attributes.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn get_faults(State(sandbox): State<Sandbox>) -> Json<Faults> {
    Json(sandbox.faults())
}

/// `POST /sandbox/faults`: replaces the faults in force; 400 names a bad field.
async fn set_faults(State(sandbox): State<Sandbox>, fields: Fields) -> Result<Json<Faults>, ApiError> {
    let faults: Faults = serde_json::from_value(Value::Object(fields.map))
        .map_err(|e| ApiError::invalid("faults", format!("invalid faults: {e}")))?;
    sandbox
        .set_faults(faults)
        .map_err(|e| ApiError::invalid(e.field, e.to_string()))?;
    Ok(Json(sandbox.faults()))
}

async fn clear_faults(State(sandbox): State<Sandbox>) -> Json<Faults> {
    // Faults::default() is always valid.
    let _ = sandbox.set_faults(Faults::default());
    Json(sandbox.faults())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_shown_is_escaped() {
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
    }
}
