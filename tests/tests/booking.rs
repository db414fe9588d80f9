//! The booking tour through REST, as a new user would take it: an owner signs up and sets up a
//! restaurant, a guest searches, reads a day's free starts, books and cancels; many clients
//! race for one table from outside, and the database is inspected for overlaps afterwards.
mod support;

use chrono::{Duration, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Mesh, access, json_of, mail_to, metric, pay, problem, settles};

/// Three days from now in Kolkata, as `YYYY-MM-DD`.
fn day() -> String {
    let tz: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
    (Utc::now() + Duration::days(3))
        .with_timezone(&tz)
        .format("%Y-%m-%d")
        .to_string()
}

/// An owner's restaurant with one table for 2–4, open every day 08:00–23:00. Returns (owner
/// token, restaurant id).
async fn set_up(mesh: &Mesh, email: &str) -> (String, String) {
    let owner = access(&mesh.sign_up(email, "restaurant_owner").await);
    let r = support::open_restaurant(mesh, &owner, &["T1"]).await;
    let id = r["id"].as_str().unwrap().to_owned();
    assert_eq!(r["policy"]["slot_minutes"], 15);
    assert_eq!(
        r["owner_id"].as_str().map(str::len),
        Some(36),
        "the owner sees it is theirs"
    );
    (owner, id)
}

async fn free(mesh: &Mesh, id: &str) -> Vec<String> {
    let a = json_of(
        mesh.get(&format!(
            "/api/v1/restaurants/{id}/availability?date={}&party_size=2",
            day()
        ))
        .await,
        StatusCode::OK,
    )
    .await;
    a["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["local"].as_str().unwrap()[11..].to_owned())
        .collect()
}

fn booking(id: &str, time: &str) -> Value {
    json!({"restaurant_id": id, "party_size": 2, "start": format!("{}T{time}", day()),
           "guest_name": "Asha", "phone": "+91 98450 00000"})
}

#[tokio::test]
async fn an_owner_sets_up_a_restaurant_and_a_guest_books_and_cancels_through_rest() {
    let mesh = Mesh::start().await;
    let (owner, id) = set_up(&mesh, "owner@dosa.example").await;
    let guest = access(&mesh.sign_up("asha@guest.example", "buyer").await);

    // A buyer cannot open a restaurant; another owner cannot change this one.
    let res = mesh
        .post(
            "/api/v1/restaurants",
            Some(&guest),
            json!({"name": "Mine", "city": "Pune", "time_zone": "Asia/Kolkata"}),
        )
        .await;
    problem(res, StatusCode::FORBIDDEN, "RESTAURANT_OWNER_ROLE_REQUIRED").await;
    let rival = access(&mesh.sign_up("rival@owner.example", "restaurant_owner").await);
    let res = mesh
        .send(
            Method::PATCH,
            &format!("/api/v1/restaurants/{id}"),
            Some(&rival),
            json!({"name": "Taken"}),
        )
        .await;
    problem(res, StatusCode::FORBIDDEN, "NOT_OWNER").await;

    // Search and availability.
    let found = json_of(
        mesh.get(&format!(
            "/api/v1/restaurants?city=bengaluru&cuisine=south%20indian&party_size=2&date={}&time=19:30",
            day()
        ))
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(found["results"][0]["restaurant"]["id"], id.as_str());
    assert!(found["results"][0]["restaurant"].get("owner_id").is_none());
    let before = free(&mesh, &id).await;
    assert_eq!(before.len(), 55);

    // Book with an idempotency key; the same request again is the same booking.
    let send = |key: &str, body: Value| {
        mesh.http
            .post(mesh.url("/api/v1/bookings"))
            .bearer_auth(&guest)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let created_before = metric(&mesh, "bookings_total", &[("event", "created")]).await;
    let b = json_of(
        send("tour-1", booking(&id, "19:00")).await.unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let created = metric(&mesh, "bookings_total", &[("event", "created")]).await;
    assert!(created >= created_before + 1.0, "bookings per minute counts it");
    let again = json_of(
        send("tour-1", booking(&id, "19:00")).await.unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(b["id"], again["id"]);
    problem(
        send("tour-1", booking(&id, "20:00")).await.unwrap(),
        StatusCode::CONFLICT,
        "IDEMPOTENCY_KEY_REUSED",
    )
    .await;
    assert_eq!(b["status"], "confirmed");
    assert_eq!(b["start"], format!("{}T19:00", day()));
    let bid = b["id"].as_str().unwrap().to_owned();
    assert_eq!(free(&mesh, &id).await.len(), 55 - 11, "17:45 … 20:15 are gone");

    // The one table is taken at 19:00: 409 SLOT_TAKEN. Outside hours: 400 OUTSIDE_HOURS.
    let other = access(&mesh.sign_up("ravi@guest.example", "buyer").await);
    let res = mesh.post("/api/v1/bookings", Some(&other), booking(&id, "19:00")).await;
    problem(res, StatusCode::CONFLICT, "SLOT_TAKEN").await;
    let res = mesh.post("/api/v1/bookings", Some(&other), booking(&id, "22:30")).await;
    problem(res, StatusCode::BAD_REQUEST, "OUTSIDE_HOURS").await;
    let mut big = booking(&id, "12:00");
    big["party_size"] = json!(5);
    let res = mesh.post("/api/v1/bookings", Some(&other), big).await;
    problem(res, StatusCode::BAD_REQUEST, "PARTY_TOO_LARGE").await;

    // The owner hears of it in-app; the guest gets a confirmation email (through the outbox,
    // the relay and notifications).
    let told = eventually("the owner's in-app notification", || async {
        let list = json_of(mesh.get_as("/api/v1/notifications", &owner).await, StatusCode::OK).await;
        list["notifications"]
            .as_array()?
            .iter()
            .find(|n| n["event_type"] == "booking.confirmed")
            .cloned()
    })
    .await;
    assert!(told["title"].as_str().unwrap().contains("Asha, 2 at"), "{told}");
    let subject = eventually("the guest's confirmation email", || async {
        mail_to(&mesh, "asha@guest.example", "is booked")
    })
    .await;
    assert_eq!(subject, "Your table at Dosa Corner is booked");

    // Who sees what.
    let res = mesh.get_as(&format!("/api/v1/bookings/{bid}"), &other).await;
    problem(res, StatusCode::NOT_FOUND, "BOOKING_NOT_FOUND").await;
    let res = mesh
        .post(&format!("/api/v1/bookings/{bid}/cancel"), Some(&other), json!({}))
        .await;
    problem(res, StatusCode::NOT_FOUND, "BOOKING_NOT_FOUND").await;
    let mine = json_of(mesh.get_as("/api/v1/bookings", &guest).await, StatusCode::OK).await;
    assert_eq!(mine["bookings"].as_array().unwrap().len(), 1);
    let theirs = json_of(mesh.get_as("/api/v1/bookings", &other).await, StatusCode::OK).await;
    assert!(theirs["bookings"].as_array().unwrap().is_empty());
    let owners = json_of(
        mesh.get_as(&format!("/api/v1/bookings?restaurant_id={id}"), &owner)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(owners["bookings"][0]["id"], bid.as_str());
    let res = mesh
        .get_as(&format!("/api/v1/bookings?restaurant_id={id}"), &rival)
        .await;
    problem(res, StatusCode::FORBIDDEN, "NOT_OWNER").await;
    json_of(
        mesh.get_as(&format!("/api/v1/bookings/{bid}"), &owner).await,
        StatusCode::OK,
    )
    .await;

    // The table cannot go while it has a booking to come.
    let tables = json_of(
        mesh.get_as(&format!("/api/v1/restaurants/{id}/tables"), &owner).await,
        StatusCode::OK,
    )
    .await;
    let table = tables["tables"][0]["id"].as_str().unwrap().to_owned();
    let res = mesh
        .send(
            Method::DELETE,
            &format!("/api/v1/tables/{table}"),
            Some(&owner),
            json!({}),
        )
        .await;
    problem(res, StatusCode::BAD_REQUEST, "TABLE_HAS_BOOKINGS").await;

    // The guest cancels: the starts come back.
    let cancelled = json_of(
        mesh.post(
            &format!("/api/v1/bookings/{bid}/cancel"),
            Some(&guest),
            json!({"reason": "plans changed"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(cancelled["status"], "cancelled");
    assert!(metric(&mesh, "bookings_total", &[("event", "cancelled"), ("by", "guest")]).await >= 1.0);
    // The database pool's gauges, sampled by the health probe every 2 s.
    assert!(metric(&mesh, "db_pool_max_connections", &[]).await >= 1.0);
    eventually("the guest's cancellation email", || async {
        mail_to(&mesh, "asha@guest.example", "is cancelled")
    })
    .await;
    assert_eq!(cancelled["cancel_reason"], "plans changed");
    assert_eq!(free(&mesh, &id).await, before);

    // A closure empties the day.
    let res = mesh
        .post(
            &format!("/api/v1/restaurants/{id}/closures"),
            Some(&owner),
            json!({"from": day(), "to": day(), "reason": "wedding"}),
        )
        .await;
    json_of(res, StatusCode::CREATED).await;
    assert!(free(&mesh, &id).await.is_empty());

    // Bad input is a problem with the field named, never a 5xx.
    let res = mesh
        .get(&format!(
            "/api/v1/restaurants/{id}/availability?date=tomorrow&party_size=2"
        ))
        .await;
    let body = problem(res, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(body["errors"][0]["field"], "date", "{body}");
    let res = mesh.get("/api/v1/restaurants/not-a-uuid").await;
    problem(res, StatusCode::NOT_FOUND, "RESTAURANT_NOT_FOUND").await;
}

#[tokio::test]
async fn many_clients_racing_for_one_table_get_one_booking_and_no_overlap() {
    let pg = thali_platform::testing::postgres().await;
    let mesh = Mesh::start_on(pg.as_ref().map(|p| p.url.clone())).await;
    let (_, id) = set_up(&mesh, "race@owner.example").await;
    let mut guests = Vec::new();
    for i in 0..8 {
        guests.push(access(&mesh.sign_up(&format!("g{i}@race.example"), "buyer").await));
    }
    // 48 requests from 8 guests at once: the same start, and starts overlapping it.
    let tries = (0..48).map(|i| {
        let token = guests[i % guests.len()].clone();
        let time = ["19:00", "19:15", "18:45", "19:30"][i % 4];
        let body = booking(&id, time);
        let http = mesh.http.clone();
        let url = mesh.url("/api/v1/bookings");
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures::future::join_all(tries).await;
    let won = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    assert_eq!(won, 1, "one table, overlapping starts: {statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
    if let Some(pg) = pg {
        use sea_orm::ConnectionTrait;
        let row = pg
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                pg.db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM bookings a JOIN bookings b ON a.table_id = b.table_id \
                 AND a.id < b.id WHERE a.status <> 'cancelled' AND b.status <> 'cancelled' \
                 AND a.starts_at < b.ends_at AND b.starts_at < a.ends_at",
            ))
            .await
            .unwrap()
            .unwrap();
        let overlaps: i64 = row.try_get("", "n").unwrap();
        assert_eq!(overlaps, 0);
    }
}

/// A partner (a POS, an aggregator) calls booking over gRPC with an API key: `booking.read`
/// searches and reads availability, only `booking.write` books.
#[tokio::test]
async fn a_partner_key_reads_with_booking_read_and_books_only_with_booking_write() {
    use thali_proto::booking::v1::{self as pb, booking_service_client::BookingServiceClient};
    let mesh = Mesh::start().await;
    let (_, id) = set_up(&mesh, "pos@owner.example").await;
    let partner = access(&mesh.sign_up("aggregator@partner.example", "buyer").await);
    let key = |scopes: Value| {
        let mesh = &mesh;
        let partner = partner.clone();
        async move {
            let res = mesh
                .post(
                    "/api/v1/api-keys",
                    Some(&partner),
                    json!({"name": "aggregator", "scopes": scopes}),
                )
                .await;
            json_of(res, StatusCode::CREATED).await["secret"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let reader = key(json!(["booking.read"])).await;
    let writer = key(json!(["booking.read", "booking.write"])).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = BookingServiceClient::new(channel);
    let slots = client
        .get_availability(with(
            &reader,
            pb::GetAvailabilityRequest {
                restaurant_id: id.clone(),
                date: day(),
                party_size: 2,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .slots;
    assert_eq!(slots.len(), 55);
    let book = pb::CreateBookingRequest {
        restaurant_id: id.clone(),
        party_size: 2,
        start: format!("{}T13:00", day()),
        guest_name: "Walk-in".into(),
        phone: "+91 90000 00000".into(),
        note: "via POS".into(),
        idempotency_key: "pos-1".into(),
    };
    let err = client.create_booking(with(&reader, book.clone())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "read scope cannot book");
    let booked = client
        .create_booking(with(&writer, book))
        .await
        .unwrap()
        .into_inner()
        .booking
        .unwrap();
    assert_eq!(booked.status, "confirmed");
    let err = client
        .get_availability(tonic::Request::new(pb::GetAvailabilityRequest {
            restaurant_id: id,
            date: day(),
            party_size: 2,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "no credentials, no gRPC");
}

fn with<T>(key: &str, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    req
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(std::time::Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn booking_of(mesh: &Mesh, token: &str, id: &str) -> Value {
    json_of(
        mesh.get_as(&format!("/api/v1/bookings/{id}"), token).await,
        StatusCode::OK,
    )
    .await
}

/// Polls booking `id` until `done` holds of it (deposits move with payments' events).
async fn booking_until(mesh: &Mesh, token: &str, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..300 {
        let b = booking_of(mesh, token, id).await;
        if done(&b) {
            return b;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "booking {id} never got to: {what}: {}",
        booking_of(mesh, token, id).await
    );
}

#[tokio::test]
async fn a_deposit_holds_the_table_until_paid_and_comes_back_on_a_cancellation_in_time() {
    let mesh = Mesh::start().await;
    let (owner, id) = set_up(&mesh, "owner@dosa.example").await;
    let guest = access(&mesh.sign_up("asha@guest.example", "buyer").await);
    let other = access(&mesh.sign_up("ravi@guest.example", "buyer").await);
    let r = json_of(
        mesh.send(
            Method::PATCH,
            &format!("/api/v1/restaurants/{id}"),
            Some(&owner),
            json!({"policy": {"deposit_per_guest_minor": 25000}}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(r["policy"]["deposit_per_guest_minor"], 25000);
    let bad = mesh
        .send(
            Method::PATCH,
            &format!("/api/v1/restaurants/{id}"),
            Some(&owner),
            json!({"policy": {"deposit_per_guest_minor": 50}}),
        )
        .await;
    problem(bad, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;

    // The booking waits for its deposit, holding the table; payments has its order already.
    let b = json_of(
        mesh.post("/api/v1/bookings", Some(&guest), booking(&id, "19:00")).await,
        StatusCode::CREATED,
    )
    .await;
    let bid = b["id"].as_str().unwrap().to_owned();
    assert_eq!(b["status"], "pending_payment", "{b}");
    assert_eq!(
        b["deposit"]["amount"],
        json!({"amount_minor": 50000, "currency": "INR"})
    );
    assert_eq!(b["deposit"]["status"], "pending");
    let order_id = b["deposit"]["order_id"]
        .as_str()
        .expect("the deposit's order")
        .to_owned();
    assert!(!free(&mesh, &id).await.contains(&"19:00".to_owned()), "held");
    problem(
        mesh.post("/api/v1/bookings", Some(&other), booking(&id, "19:00")).await,
        StatusCode::CONFLICT,
        "SLOT_TAKEN",
    )
    .await;

    // The guest pays the order in the sandbox; payments tells booking, which confirms.
    let order = json_of(
        mesh.get_as(&format!("/api/v1/orders/{order_id}"), &guest).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(order["reference"], format!("booking:{bid}"));
    assert_eq!(order["total"], json!({"amount_minor": 50000, "currency": "INR"}));
    problem(
        mesh.get_as(&format!("/api/v1/orders/{order_id}"), &other).await,
        StatusCode::NOT_FOUND,
        "ORDER_NOT_FOUND",
    )
    .await;
    pay(
        &mesh,
        order["checkout"]["gateway_order_id"].as_str().unwrap(),
        "captured",
    )
    .await;
    let confirmed = booking_until(&mesh, &guest, &bid, "confirmed", |b| b["status"] == "confirmed").await;
    assert_eq!(confirmed["deposit"]["status"], "paid");

    // Cancelled before the cutoff: the deposit comes back.
    let cancelled = json_of(
        mesh.post(
            &format!("/api/v1/bookings/{bid}/cancel"),
            Some(&guest),
            json!({"reason": "plans changed"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(cancelled["deposit"]["status"], "refund_requested");
    booking_until(&mesh, &guest, &bid, "deposit refunded", |b| {
        b["deposit"]["status"] == "refunded"
    })
    .await;
    settles(&mesh, &guest, &order_id, "refunded").await;
    assert!(free(&mesh, &id).await.contains(&"19:00".to_owned()), "free again");

    // Nobody pays the next deposit: when its quarter hour is over the table goes back.
    let unpaid = json_of(
        mesh.post("/api/v1/bookings", Some(&other), booking(&id, "19:00")).await,
        StatusCode::CREATED,
    )
    .await;
    let unpaid_id = unpaid["id"].as_str().unwrap().to_owned();
    let unpaid_order = unpaid["deposit"]["order_id"].as_str().unwrap().to_owned();
    assert!(!free(&mesh, &id).await.contains(&"19:00".to_owned()));
    support::a_quarter_hour_passes(&mesh, &unpaid_order).await;
    let released = booking_until(&mesh, &other, &unpaid_id, "released", |b| b["status"] == "cancelled").await;
    assert_eq!(released["deposit"]["status"], "expired");
    assert_eq!(released["cancel_reason"], "The deposit was not paid in time");
    settles(&mesh, &other, &unpaid_order, "expired").await;
    assert!(free(&mesh, &id).await.contains(&"19:00".to_owned()), "free again");

    // Only the owner marks a no-show, and not before the start.
    let kept = json_of(
        mesh.post("/api/v1/bookings", Some(&guest), booking(&id, "20:00")).await,
        StatusCode::CREATED,
    )
    .await;
    let kept_id = kept["id"].as_str().unwrap();
    problem(
        mesh.post(&format!("/api/v1/bookings/{kept_id}/no-show"), Some(&guest), json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "NOT_OWNER",
    )
    .await;
    problem(
        mesh.post(&format!("/api/v1/bookings/{kept_id}/no-show"), Some(&owner), json!({}))
            .await,
        StatusCode::BAD_REQUEST,
        "NO_SHOW_REFUSED",
    )
    .await;
}
