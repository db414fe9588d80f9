//! Booking under load on PostgreSQL (THALI_TEST_DATABASE_URL, a server where this may create a
//! database), through the REST facade of the whole platform in one process:
//!
//! 1. seeds `restaurants` restaurants (default 10,000) in 50 cities, each with four tables and
//!    hours 08:00–23:00, through the store (progress on stderr);
//! 2. availability p50/p99, uncached (a restaurant and date never read) and cached;
//! 3. search p95 over cities of 200 restaurants, uncached and cached (both on a quiet platform:
//!    before the race, whose outbox backlog would otherwise share the two cores);
//! 4. 64 registered guests race `POST /api/v1/bookings` over the first 1,000 restaurants for
//!    `seconds` (default 20), random starts of one day; then a query checks that no two holding
//!    bookings overlap on a table, and the run waits for the outbox to deliver every
//!    confirmation (reported: how long the backlog took to drain).
//!
//! `cargo run --release -p thali-tests --example booking_bench -- [restaurants] [seconds]`
//! (`just bench-booking`). Prints Markdown rows (docs/perf/booking.md keeps them).
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use sea_orm::{ConnectionTrait, Statement};
use thali_booking::{
    domain::{NewRestaurant, NewTable, PolicyMinutes, parse_hours},
    store::BookingStore,
};
use thali_platform::{Config, auth::Signer, config::Overrides};

const CITIES: usize = 50;
const CUISINES: [&str; 8] = [
    "south indian",
    "north indian",
    "chinese",
    "cafe",
    "bakery",
    "thai",
    "italian",
    "street food",
];
const RACERS: usize = 1_000;
const CLIENTS: usize = 64;

fn pct(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// The `n` of a `SELECT COUNT(*) AS n …`.
async fn count(db: &sea_orm::DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    Ok(db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no count"))?
        .try_get("", "n")?)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let restaurants: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10_000);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20);
    anyhow::ensure!(restaurants >= RACERS, "at least {RACERS} restaurants");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let t = thali_platform::testing::postgres()
        .await
        .ok_or_else(|| anyhow::anyhow!("set THALI_TEST_DATABASE_URL"))?;
    let data_dir = std::env::temp_dir().join(format!("thali-booking-bench-{}", uuid::Uuid::now_v7()));
    let env: HashMap<String, String> = [
        ("THALI_DATA_DIR", data_dir.display().to_string()),
        ("THALI_DATABASE_URL", t.url.clone()),
        ("THALI_HTTP_ADDR", "127.0.0.1:0".into()),
        ("THALI_GRPC_ADDR", "127.0.0.1:0".into()),
        ("THALI_ADMIN_ADDR", "127.0.0.1:0".into()),
        // Every load comes from 127.0.0.1: rate limits are on (their cost is measured) but set
        // far above what this run sends.
        ("THALI_RATE_LIMIT_ANONYMOUS", "1000000000/min".into()),
        ("THALI_RATE_LIMIT_SIGNED_IN", "1000000000/min".into()),
        ("THALI_RATE_LIMIT_LOGIN", "1000000000/min".into()),
        ("THALI_RATE_LIMIT_LOGIN_ADDRESS", "1000000000/min".into()),
        ("THALI_RATE_LIMIT_REGISTER", "1000000000/min".into()),
        ("THALI_RATE_LIMIT_API_KEY", "1000000000/min".into()),
        ("THALI_RATE_LIMIT_WEBHOOK", "1000000000/min".into()),
        ("THALI_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let cfg = Config::load_from(None, Some(env), &Overrides::default())?;
    let platform = thali::start(&cfg, thali::Part::All).await?;
    let base = format!("http://{}", platform.http_addr.expect("the facade runs"));
    let signer = Signer::load(&cfg.keys_dir())?;

    // 1. Seed.
    let store = BookingStore::new(t.db.clone());
    let days = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let week: Vec<(&str, &str, &str)> = days.iter().map(|d| (*d, "08:00", "23:00")).collect();
    let hours = parse_hours(&week).map_err(|v| anyhow::anyhow!("{v:?}"))?;
    let seeded = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut ids: Vec<(usize, uuid::Uuid)> = Vec::with_capacity(restaurants);
    for chunk in (0..restaurants).collect::<Vec<_>>().chunks(16) {
        let made = futures::future::join_all(chunk.iter().map(|&i| {
            let (store, hours, seeded) = (store.clone(), hours.clone(), seeded.clone());
            async move {
                let owner = uuid::Uuid::now_v7();
                let new = NewRestaurant::parse(
                    &format!("Restaurant {i}"),
                    &format!("City {}", i % CITIES),
                    &[CUISINES[i % CUISINES.len()].to_owned()],
                    "",
                    "Asia/Kolkata",
                    PolicyMinutes::default(),
                )
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                let r = store
                    .create_restaurant(owner, &new, None, Utc::now())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                for (label, min, max) in [("A", 2, 4), ("B", 2, 4), ("C", 4, 6), ("D", 6, 8)] {
                    let t = NewTable::parse(label, min, max).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    store
                        .add_table(owner, r.id, &t)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                }
                store
                    .set_hours(owner, r.id, &hours)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                let n = seeded.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 250 == 0 {
                    eprint!("\rseeded {n}/{restaurants}");
                }
                anyhow::Ok((i, r.id))
            }
        }))
        .await;
        for m in made {
            ids.push(m?);
        }
    }
    ids.sort();
    let ids: Vec<uuid::Uuid> = ids.into_iter().map(|(_, id)| id).collect();
    eprintln!(
        "\rseeded {restaurants} restaurants in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let tz: chrono_tz::Tz = "Asia/Kolkata".parse()?;
    let day = |ahead: i64| {
        (Utc::now() + chrono::Duration::days(ahead))
            .with_timezone(&tz)
            .format("%Y-%m-%d")
            .to_string()
    };
    let http = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build()?;

    // 2. Availability, one client: never-read (restaurant, date) pairs, then the same again.
    let mut uncached = Vec::new();
    let mut cached = Vec::new();
    let avail = |r: uuid::Uuid, d: &str| format!("{base}/api/v1/restaurants/{r}/availability?date={d}&party_size=2");
    let sample: Vec<uuid::Uuid> = ids.iter().step_by(ids.len() / 500).copied().take(500).collect();
    let avail_day = day(5);
    for r in &sample {
        let t0 = Instant::now();
        let res = http.get(avail(*r, &avail_day)).send().await?;
        anyhow::ensure!(res.status() == 200, "availability answered {}", res.status());
        res.bytes().await?;
        uncached.push(t0.elapsed());
    }
    for _ in 0..4 {
        for r in &sample {
            let t0 = Instant::now();
            let res = http.get(avail(*r, &avail_day)).send().await?;
            res.bytes().await?;
            cached.push(t0.elapsed());
        }
    }

    // 3. Search: every city on days never searched, then again.
    let mut search_uncached = Vec::new();
    let mut search_cached = Vec::new();
    let search = |city: usize, d: &str| {
        format!("{base}/api/v1/restaurants?city=city%20{city}&party_size=2&date={d}&time=19:30&cuisine=cafe")
    };
    let mut results = 0;
    for ahead in [6, 7, 8, 9] {
        let d = day(ahead);
        for city in 0..CITIES {
            let t0 = Instant::now();
            let res = http.get(search(city, &d)).send().await?;
            anyhow::ensure!(res.status() == 200, "search answered {}", res.status());
            let body: serde_json::Value = res.json().await?;
            search_uncached.push(t0.elapsed());
            results += body["results"].as_array().map_or(0, Vec::len);
        }
        for city in 0..CITIES {
            let t0 = Instant::now();
            let res = http.get(search(city, &d)).send().await?;
            res.bytes().await?;
            search_cached.push(t0.elapsed());
        }
    }
    // 4. 64 clients race over the first 1,000 restaurants, each a registered guest (so every
    //    confirmation is delivered: the email to the guest, the in-app note to the owner).
    let mut guests = Vec::with_capacity(CLIENTS);
    for c in 0..CLIENTS {
        let res = http
            .post(format!("{base}/api/v1/auth/register"))
            .json(&serde_json::json!({
                "email": format!("guest{c}@bench.example"),
                "password": "correct horse battery",
                "display_name": format!("Guest {c}"),
                "role": "buyer",
            }))
            .send()
            .await?;
        anyhow::ensure!(res.status() == 202, "registration answered {}", res.status());
        // Registration tells nothing about the account; signing in does.
        let session: serde_json::Value = http
            .post(format!("{base}/api/v1/auth/login"))
            .json(&serde_json::json!({
                "email": format!("guest{c}@bench.example"),
                "password": "correct horse battery",
            }))
            .send()
            .await?
            .json()
            .await?;
        let id = session["account"]["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no account id"))?;
        guests.push(id.to_owned());
    }
    // The welcome emails go out before the race: the race measures bookings, not sign-ups.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let racers = Arc::new(ids[..RACERS].to_vec());
    let (booked, taken, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let until = Instant::now() + Duration::from_secs(seconds);
    let race_day = day(3);
    let started = Instant::now();
    let clients = guests.into_iter().enumerate().map(|(c, guest)| {
        let token = signer.mint(&guest, &["buyer".into()], Duration::from_secs(3600));
        let (http, base, racers) = (http.clone(), base.clone(), racers.clone());
        let (booked, taken, other, race_day) = (booked.clone(), taken.clone(), other.clone(), race_day.clone());
        tokio::spawn(async move {
            let mut n: u64 = c as u64;
            while Instant::now() < until {
                n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let r = racers[(n >> 33) as usize % racers.len()];
                let minutes = 8 * 60 + 15 * ((n >> 20) % 55);
                let body = serde_json::json!({
                    "restaurant_id": r,
                    "party_size": 2 + (n >> 8) % 3,
                    "start": format!("{race_day}T{:02}:{:02}", minutes / 60, minutes % 60),
                    "guest_name": "Bench",
                    "phone": "+91 90000 00000",
                });
                let status = http
                    .post(format!("{base}/api/v1/bookings"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16());
                match status {
                    Ok(201) => booked.fetch_add(1, Ordering::Relaxed),
                    Ok(409) => taken.fetch_add(1, Ordering::Relaxed),
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    });
    for c in futures::future::join_all(clients).await {
        c?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (booked, taken, other) = (
        booked.load(Ordering::Relaxed),
        taken.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    let overlaps = count(
        &t.db,
        "SELECT COUNT(*) AS n FROM bookings a JOIN bookings b ON a.table_id = b.table_id AND a.id < b.id \
         WHERE a.status IN ('confirmed', 'pending_payment') AND b.status IN ('confirmed', 'pending_payment') \
         AND a.starts_at < b.ends_at AND b.starts_at < a.ends_at",
    )
    .await?;
    let stored = count(&t.db, "SELECT COUNT(*) AS n FROM bookings").await?;
    eprintln!("race done: {booked} booked, {taken} taken, {other} other in {elapsed:.1} s");

    // Every confirmation reaches the owner's in-app notifications through the outbox.
    let draining = Instant::now();
    let delivered = loop {
        let n = count(
            &t.db,
            "SELECT COUNT(*) AS n FROM notifications WHERE event_type = 'booking.confirmed'",
        )
        .await?;
        eprint!("\rdelivered {n}/{booked} confirmations");
        if n as u64 >= booked || draining.elapsed() > Duration::from_secs(300) {
            eprintln!();
            break n;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let drained = draining.elapsed();

    platform.shutdown().await?;

    for v in [&mut uncached, &mut cached, &mut search_uncached, &mut search_cached] {
        v.sort();
    }
    let attempts = booked + taken + other;
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| `POST /api/v1/bookings`, {CLIENTS} clients over {RACERS} restaurants, {seconds} s | **{:.0} requests/s** ({attempts} requests: {booked} booked = {:.0}/s, {taken} `SLOT_TAKEN`, {other} other) |",
        attempts as f64 / elapsed,
        booked as f64 / elapsed,
    );
    println!("| holding bookings overlapping on a table, after the race | **{overlaps}** (of {stored} stored) |");
    println!(
        "| confirmations delivered to the owners in-app (outbox → notifications) | {delivered} of {booked}, the last {:.1} s after the race |",
        drained.as_secs_f64()
    );
    println!(
        "| availability, uncached ({} reads, each a restaurant-day never read) | p50 {}, **p99 {}** |",
        uncached.len(),
        ms(pct(&uncached, 0.50)),
        ms(pct(&uncached, 0.99))
    );
    println!(
        "| availability, cached ({} reads) | p50 {}, **p99 {}** |",
        cached.len(),
        ms(pct(&cached, 0.50)),
        ms(pct(&cached, 0.99))
    );
    println!(
        "| search, {restaurants} restaurants in {CITIES} cities, uncached ({} searches, each a city-day never searched) | p50 {}, **p95 {}**, p99 {} ({results} results in all) |",
        search_uncached.len(),
        ms(pct(&search_uncached, 0.50)),
        ms(pct(&search_uncached, 0.95)),
        ms(pct(&search_uncached, 0.99)),
    );
    println!(
        "| search, cached ({} searches) | p50 {}, **p95 {}** |",
        search_cached.len(),
        ms(pct(&search_cached, 0.50)),
        ms(pct(&search_cached, 0.95))
    );
    Ok(())
}
