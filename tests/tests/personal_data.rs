//! Personal data through REST (ADR 0032): `GET /api/v1/me/export` gives the caller everything
//! Thali holds about them and nobody else's; `DELETE /api/v1/me` erases the account, after which
//! no table of any service holds a personal field of it (the whole database is scanned, the
//! delivered events in the outbox included), the sessions are dead, the audit chains still
//! verify, and the other accounts' orders and bookings are as they were.
mod support;

use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::{Value, json};
use support::{Mesh, access, json_of, problem};

const PASSWORD: &str = "correct horse battery";

/// Three days from now in Kolkata, as `YYYY-MM-DD`.
fn day() -> String {
    let tz: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
    (Utc::now() + chrono::Duration::days(3))
        .with_timezone(&tz)
        .format("%Y-%m-%d")
        .to_string()
}

/// Registers and signs in an account with this name; returns (access token, account id).
async fn account(mesh: &Mesh, email: &str, name: &str, role: &str) -> (String, String) {
    let res = mesh
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": email, "password": PASSWORD, "display_name": name, "role": role}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let session = json_of(
        mesh.post(
            "/api/v1/auth/login",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    (access(&session), session["account"]["id"].as_str().unwrap().to_owned())
}

/// What the tour leaves behind.
struct World {
    zubeida: String,
    zubeida_id: String,
    ravi: String,
    ravi_booking: String,
    ravi_order: String,
}

/// Zubeida (a creator) runs a store with a bio and a product, and books a table as a guest with
/// her phone number and a note; Ravi books too and buys from her store.
async fn tour(mesh: &Mesh) -> World {
    let (zubeida, zubeida_id) = account(mesh, "zubeida@example.com", "Zubeida Quarshie", "creator").await;
    let (ravi, _) = account(mesh, "ravi@example.com", "Ravi Kumar", "buyer").await;
    let (owner, _) = account(mesh, "owner@dosa.example", "Dosa Owner", "restaurant_owner").await;

    json_of(
        mesh.post(
            "/api/v1/creators",
            Some(&zubeida),
            json!({"username": "zubeida_kitchen", "display_name": "Zubeida's Kitchen",
                   "bio": "Recipes from Zubeida's grandmother"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let avatar = mesh
        .http
        .put(mesh.url("/api/v1/creators/zubeida_kitchen/avatar"))
        .bearer_auth(&zubeida)
        .body(support::real_png())
        .send()
        .await
        .unwrap();
    assert_eq!(avatar.status(), StatusCode::OK);
    let product = json_of(
        mesh.post(
            "/api/v1/creators/zubeida_kitchen/products",
            Some(&zubeida),
            json!({"title": "Spice box", "price": {"amount_minor": 9900, "currency": "INR"}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;

    let restaurant = support::open_restaurant(mesh, &owner, &["T1", "T2"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let book = |token: String, name: &str, phone: &str, note: &str| {
        let body = json!({"restaurant_id": restaurant, "party_size": 2, "start": format!("{}T19:00", day()),
                          "guest_name": name, "phone": phone, "note": note});
        async move {
            json_of(
                mesh.post("/api/v1/bookings", Some(&token), body).await,
                StatusCode::CREATED,
            )
            .await
        }
    };
    book(
        zubeida.clone(),
        "Zubeida Q",
        "+91 98450 12345",
        "Window seat for Zubeida please",
    )
    .await;
    let ravi_booking = book(ravi.clone(), "Ravi K", "+91 90000 11111", "").await;

    let order = json_of(
        mesh.http
            .post(mesh.url("/api/v1/orders"))
            .bearer_auth(&ravi)
            .header("Idempotency-Key", "ravi-1")
            .json(&json!({"username": "zubeida_kitchen",
                          "lines": [{"product_id": product["id"], "quantity": 1}]}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    World {
        zubeida,
        zubeida_id,
        ravi,
        ravi_booking: ravi_booking["id"].as_str().unwrap().to_owned(),
        ravi_order: order["id"].as_str().unwrap().to_owned(),
    }
}

async fn export(mesh: &Mesh, token: &str) -> Value {
    let res = mesh.get_as("/api/v1/me/export", token).await;
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    json_of(res, StatusCode::OK).await
}

#[tokio::test]
async fn the_export_holds_the_callers_data_and_no_one_elses() {
    let mesh = Mesh::start().await;
    let world = tour(&mesh).await;

    let mine = export(&mesh, &world.zubeida).await;
    assert_eq!(mine["account_id"], world.zubeida_id.as_str());
    assert_eq!(mine["identity"]["account"]["email"], "zubeida@example.com");
    assert_eq!(mine["identity"]["account"]["display_name"], "Zubeida Quarshie");
    assert_eq!(mine["identity"]["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(mine["identity"]["sign_in_addresses"][0]["address"], "127.0.0.1");
    let store = &mine["storefront"]["stores"][0];
    assert_eq!(store["username"], "zubeida_kitchen");
    assert_eq!(store["bio"], "Recipes from Zubeida's grandmother");
    assert_eq!(store["products"][0]["title"], "Spice box");
    assert_eq!(store["media"][0]["kind"], "avatar");
    let bookings = mine["booking"]["bookings"].as_array().unwrap();
    assert_eq!(bookings.len(), 1, "her booking only: {bookings:?}");
    assert_eq!(bookings[0]["guest_name"], "Zubeida Q");
    assert_eq!(bookings[0]["phone"], "+91 98450 12345");
    assert_eq!(mine["payments"]["orders_received"][0]["id"], world.ravi_order.as_str());
    assert_eq!(mine["payments"]["orders_placed"], json!([]));
    assert_eq!(mine["notifications"]["recipient"]["email"], "zubeida@example.com");
    // A password reset asked with a stolen session: its token is never in the export, whether
    // its email went out yet or not.
    let reset = mesh
        .post(
            "/api/v1/auth/password-reset",
            None,
            json!({"email": "zubeida@example.com"}),
        )
        .await;
    assert!(reset.status().is_success(), "{}", reset.status());
    let mine = support::eventually("the reset email is in the export", || async {
        let mine = export(&mesh, &world.zubeida).await;
        let listed = mine["notifications"]["emails"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["template"] == "account.password_reset_requested");
        listed.then_some(mine)
    })
    .await;
    for e in mine["notifications"]["emails"].as_array().unwrap() {
        if e["template"] == "account.password_reset_requested" {
            assert!(e["text_body"].is_null(), "{e}");
        }
    }
    let text = mine.to_string();
    assert!(
        !text.contains("thali_pr_") && !text.contains("thali_ve_"),
        "a token in the export: {text}"
    );
    for theirs in [
        "Ravi K",
        "ravi@example.com",
        "90000 11111",
        "Dosa Owner",
        "owner@dosa.example",
    ] {
        assert!(!text.contains(theirs), "{theirs:?} is someone else's: {text}");
    }

    let his = export(&mesh, &world.ravi).await;
    assert_eq!(his["identity"]["account"]["email"], "ravi@example.com");
    assert_eq!(his["booking"]["bookings"][0]["id"], world.ravi_booking.as_str());
    assert_eq!(his["payments"]["orders_placed"][0]["id"], world.ravi_order.as_str());
    assert_eq!(his["storefront"]["stores"], json!([]));
    let text = his.to_string();
    for hers in [
        "Zubeida Q",
        "Zubeida Quarshie",
        "zubeida@example.com",
        "98450 12345",
        "grandmother",
    ] {
        assert!(!text.contains(hers), "{hers:?} is someone else's: {text}");
    }

    // Signed out: 401, as problem+json.
    problem(
        mesh.get("/api/v1/me/export").await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
    )
    .await;
}

/// Every value of every column of every table (as text; on SQLite, bytes read as text), a relay
/// job's event (base64 protobuf) decoded too. Returns the (table, column, value) of each value
/// holding one of `needles` (case-insensitive).
async fn scan(db: &DatabaseConnection, needles: &[&str]) -> Vec<(String, String, String)> {
    let backend = db.get_database_backend();
    let postgres = backend == DbBackend::Postgres;
    let tables_sql = if postgres {
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    } else {
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    };
    let tables = db
        .query_all_raw(Statement::from_string(backend, tables_sql))
        .await
        .unwrap();
    let needles: Vec<String> = needles.iter().map(|n| n.to_lowercase()).collect();
    let mut found = Vec::new();
    for t in tables {
        let table: String = t.try_get_by_index(0).unwrap();
        let columns_sql = if postgres {
            format!(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = '{table}'"
            )
        } else {
            format!("SELECT name FROM pragma_table_info('{table}')")
        };
        let columns: Vec<String> = db
            .query_all_raw(Statement::from_string(backend, columns_sql))
            .await
            .unwrap()
            .iter()
            .map(|c| c.try_get_by_index::<String>(0).unwrap())
            .collect();
        let cast = if postgres { "TEXT" } else { "BLOB" };
        let select = columns
            .iter()
            .map(|c| format!("CAST(\"{c}\" AS {cast})"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = db
            .query_all_raw(Statement::from_string(
                backend,
                format!("SELECT {select} FROM \"{table}\""),
            ))
            .await
            .unwrap();
        for row in rows {
            for (i, column) in columns.iter().enumerate() {
                let value = if postgres {
                    row.try_get_by_index::<Option<String>>(i).unwrap()
                } else {
                    row.try_get_by_index::<Option<Vec<u8>>>(i)
                        .unwrap()
                        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                };
                let Some(value) = value else {
                    continue;
                };
                let mut text = value.to_lowercase();
                if let Some(event) = serde_json::from_str::<Value>(&value)
                    .ok()
                    .and_then(|v| v["event"].as_str().map(str::to_owned))
                    && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(event)
                {
                    text.push_str(&String::from_utf8_lossy(&bytes).to_lowercase());
                }
                if needles.iter().any(|n| text.contains(n.as_str())) {
                    found.push((table.clone(), column.clone(), value));
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn erasure_leaves_no_personal_field_in_any_table_and_the_chains_still_verify() {
    let mesh = Mesh::start().await;
    let db = thali_platform::db::connect(&format!(
        "sqlite://{}?mode=rw",
        mesh.data_dir.join("thali.db").display()
    ))
    .await
    .unwrap();
    erasure(&mesh, &db).await;
    drop(mesh);
    // PostgreSQL (required under CI=true): every service's erasure SQL on the distributed store.
    if let Some(pg) = thali_platform::testing::postgres().await {
        let mesh = Mesh::start_on(Some(pg.url.clone())).await;
        let db = thali_platform::db::connect(&pg.url).await.unwrap();
        erasure(&mesh, &db).await;
    }
}

async fn erasure(mesh: &Mesh, db: &DatabaseConnection) {
    let world = tour(mesh).await;
    let needles = [
        "zubeida",
        "quarshie",
        "98450 12345",
        "Window seat",
        "grandmother",
        "zubeida_kitchen",
    ];
    // The tour's events have reached every service before the erasure (so the scan below also
    // proves the delivered copies are gone).
    support::eventually("the welcome and the booking reach notifications", || async {
        let n = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT COUNT(*) FROM jobs WHERE state NOT IN ('done', 'dead') AND kind = 'events.relay'",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap();
        (n == 0).then_some(())
    })
    .await;
    assert!(!scan(db, &needles).await.is_empty(), "the scan finds what is there");

    // The password is asked for; a wrong one erases nothing.
    let wrong = mesh
        .send(
            Method::DELETE,
            "/api/v1/me",
            Some(&world.zubeida),
            json!({"password": "not her password"}),
        )
        .await;
    problem(wrong, StatusCode::FORBIDDEN, "PASSWORD_INCORRECT").await;
    let missing = mesh
        .send(Method::DELETE, "/api/v1/me", Some(&world.zubeida), json!({}))
        .await;
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    json_of(mesh.get_as("/api/v1/auth/me", &world.zubeida).await, StatusCode::OK).await;

    let erased = json_of(
        mesh.send(
            Method::DELETE,
            "/api/v1/me",
            Some(&world.zubeida),
            json!({"password": PASSWORD}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(erased["account_id"], world.zubeida_id.as_str());

    // Her sessions are over (every replica hears of the revocation within its feed's second,
    // ADR 0027), her password opens nothing, her store is found by no name.
    let refused = support::eventually("her token is refused", || async {
        let res = mesh.get_as("/api/v1/auth/me", &world.zubeida).await;
        (res.status() != StatusCode::OK).then_some(res)
    })
    .await;
    problem(refused, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    let login = mesh
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "zubeida@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(login.status(), StatusCode::UNAUTHORIZED);

    // Every service has taken `account.erased`: nothing of hers is left in any table.
    let left = {
        let mut left = Vec::new();
        for _ in 0..200 {
            left = scan(db, &needles).await;
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        left
    };
    assert!(left.is_empty(), "personal fields left after erasure: {left:#?}");
    // Her picture is gone from the object store too.
    let media = mesh.data_dir.join("media").join("objects");
    support::eventually("her avatar's object is deleted", || async {
        support::files_under(&media).is_empty().then_some(())
    })
    .await;
    problem(
        mesh.get("/api/v1/store/zubeida_kitchen").await,
        StatusCode::NOT_FOUND,
        "CREATOR_NOT_FOUND",
    )
    .await;

    // Ravi's booking and order are untouched; the order now names the store by its pseudonym.
    let booking = json_of(
        mesh.get_as(&format!("/api/v1/bookings/{}", world.ravi_booking), &world.ravi)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(booking["guest_name"], "Ravi K");
    let order = json_of(
        mesh.get_as(&format!("/api/v1/orders/{}", world.ravi_order), &world.ravi)
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(order["username"].as_str().unwrap().starts_with("erased-"), "{order}");

    // The audit chains verify, and identity's records the erasure.
    for service in ["identity", "booking", "payments"] {
        let verified = thali_platform::audit_log::verify(db, service, None, |_| {})
            .await
            .unwrap();
        assert!(verified.is_ok(), "{service}: {verified:?}");
    }
    let rows = thali_platform::audit_log::rows_since(db, chrono::DateTime::UNIX_EPOCH, Some("identity"), None, 100)
        .await
        .unwrap();
    assert!(
        rows.iter()
            .any(|r| r.action == "account.erased" && r.actor == format!("acct:{}", world.zubeida_id)),
        "{rows:?}"
    );

    // The address is free again: she may come back as a new account.
    let (_, again) = account(mesh, "zubeida@example.com", "Zubeida", "buyer").await;
    assert_ne!(again, world.zubeida_id);
}
