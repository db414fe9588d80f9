//! Thali's load generator (issue 14, part 1; ADR 0037): `just load-test` runs it through
//! `tests/load/mix.sh`.
//!
//! - `loadgen seed` fills an empty, migrated PostgreSQL database with a realistic volume (1,000
//!   creators × 20 products, 1,000 restaurants with tables and hours, 100,000 past bookings,
//!   10,000 buyers each with a live session) in a few large statements, and writes a fixture file
//!   (who the users are, which usernames, products and restaurants exist).
//! - `loadgen run` drives the REST facade with 10,000 users, each on a connection of its own, each
//!   pausing 1–5 s between actions: an open model. Every user's next action has an intended send
//!   time fixed in advance (the previous intended time plus the pause); a late answer delays the
//!   send but not the intended time, and latency is counted from the intended time, so queueing
//!   in the generator or the server is never hidden (no coordinated omission). It writes a
//!   Markdown report with a machine-readable copy of its numbers, and compares them with the
//!   previous report of the same profile (a p95 or p99 more than 20 % worse is flagged).
//!
//! Why our own: wrk and oha keep a closed model (a new request when the last one answers) or
//! cannot give each of 10,000 users its own connection, pause and multi-step actions on 2 cores.
//! This one needs under half a core at 3,300 actions a second (docs/perf/baseline.md).
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, client::conn::http1::SendRequest, header};
use hyper_util::rt::TokioIo;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::{Value, json};
use tokio::{net::TcpStream, time::Instant};

#[derive(Parser)]
#[command(about = "Thali's load generator: seed a database, then drive the facade with an open-model mix")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fill a migrated, empty PostgreSQL database and write the fixture file.
    Seed(SeedArgs),
    /// Drive the facade and write the report.
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct SeedArgs {
    #[arg(long, env = "THALI_DATABASE_URL")]
    database_url: String,
    #[arg(long)]
    fixture: PathBuf,
    #[arg(long, default_value_t = 1000)]
    creators: usize,
    #[arg(long, default_value_t = 20)]
    products: usize,
    #[arg(long, default_value_t = 1000)]
    restaurants: usize,
    #[arg(long, default_value_t = 100_000)]
    past_bookings: usize,
    #[arg(long, default_value_t = 10_000)]
    users: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Profile {
    /// The steady mix for `--duration`.
    Steady,
    /// The steady mix with ten times the arrival rate for 30 s in the middle of the run.
    Spike,
    /// The steady mix for 30 minutes (unless `--duration` says otherwise): memory and
    /// descriptors must stay flat.
    Soak,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The facade, `http://127.0.0.1:18080`.
    #[arg(long)]
    base: String,
    /// The sandbox gateway, where buyers pay.
    #[arg(long)]
    sandbox: String,
    /// The admin listener with `/metrics`.
    #[arg(long)]
    admin: String,
    /// The server process, for CPU, memory and descriptors.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    fixture: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Target arrival rate (actions a second); absent: users / 3, which is the 1–5 s pause.
    #[arg(long)]
    rate: Option<f64>,
    /// At most this many password sign-ins a second (argon2id costs a core for ~25 ms each);
    /// a sign-in over the cap is replaced by a storefront read and counted.
    #[arg(long, default_value_t = 8.0)]
    login_cap: f64,
    #[arg(long, value_enum, default_value_t = Profile::Steady)]
    profile: Profile,
    /// Seconds before measuring: connections open, sessions refresh, caches fill.
    #[arg(long, default_value_t = 60)]
    warmup: u64,
    /// Seconds measured (soak: 1800 unless given).
    #[arg(long)]
    duration: Option<u64>,
    /// Where the report goes; the previous one there is the baseline to compare with.
    #[arg(long)]
    report: PathBuf,
    /// A line for the report on what was measured (build, database, topology).
    #[arg(long, default_value = "")]
    setup: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // reqwest (the gateway's pool) is built without a default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Seed(args) => seed::run(args).await,
        Command::Run(args) => {
            let outcome = run(*args).await?;
            println!("{}", outcome.markdown);
            let failed: u64 = outcome.errors.values().flat_map(|e| e.values()).sum();
            let requests: u64 = outcome.data.routes.values().map(|r| r.count).sum();
            eprintln!(
                "[load] {requests} requests measured; {failed} answered with an error, {} of them 5xx or failed; {} payments verified",
                outcome.server_errors, outcome.paid
            );
            if !outcome.passed {
                std::process::exit(3);
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fixture

#[derive(serde::Serialize, serde::Deserialize)]
struct Fixture {
    password: String,
    users: Vec<FixtureUser>,
    creators: Vec<FixtureCreator>,
    restaurants: Vec<FixtureRestaurant>,
    cities: Vec<String>,
    cuisines: Vec<String>,
    volumes: BTreeMap<String, usize>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FixtureUser {
    email: String,
    refresh_token: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FixtureCreator {
    username: String,
    products: Vec<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FixtureRestaurant {
    id: String,
    city: String,
}

mod seed {
    use super::*;

    pub const CITIES: [&str; 10] = [
        "Bengaluru",
        "Mumbai",
        "Delhi",
        "Chennai",
        "Kolkata",
        "Hyderabad",
        "Pune",
        "Jaipur",
        "Kochi",
        "Lucknow",
    ];
    pub const CUISINES: [&str; 8] = [
        "south indian",
        "north indian",
        "chinese",
        "cafe",
        "street food",
        "bengali",
        "mughlai",
        "coastal",
    ];
    const BATCH: usize = 1000;

    fn progress(what: &str, done: usize, total: usize) {
        eprintln!(
            "[seed] {what}: {done}/{total} ({:.0} %)",
            done as f64 * 100.0 / total.max(1) as f64
        );
    }

    /// Inserts `rows` (each already a parenthesised tuple of SQL literals) in batches.
    async fn insert(
        db: &DatabaseConnection,
        what: &str,
        head: &str,
        rows: impl ExactSizeIterator<Item = String>,
    ) -> anyhow::Result<()> {
        let total = rows.len();
        let mut batch = Vec::with_capacity(BATCH);
        let mut done = 0;
        let mut last_report = std::time::Instant::now();
        let mut reported = 0;
        for row in rows {
            batch.push(row);
            if batch.len() == BATCH {
                done += batch.len();
                db.execute_unprepared(&format!("{head} VALUES {}", batch.join(",")))
                    .await
                    .with_context(|| format!("inserting {what}"))?;
                batch.clear();
                if last_report.elapsed() > Duration::from_secs(2) {
                    progress(what, done, total);
                    reported = done;
                    last_report = std::time::Instant::now();
                }
            }
        }
        if !batch.is_empty() {
            done += batch.len();
            db.execute_unprepared(&format!("{head} VALUES {}", batch.join(",")))
                .await
                .with_context(|| format!("inserting {what}"))?;
        }
        if reported != done || total == 0 {
            progress(what, done, total);
        }
        Ok(())
    }

    fn uuid() -> uuid::Uuid {
        uuid::Uuid::now_v7()
    }

    pub async fn run(args: SeedArgs) -> anyhow::Result<()> {
        if !args.database_url.starts_with("postgres") {
            bail!("the load test seeds PostgreSQL only (THALI_DATABASE_URL=postgres://…)");
        }
        let db = Database::connect(&args.database_url).await.context("connecting")?;
        let existing = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT count(*) AS n FROM accounts",
            ))
            .await
            .context("the database must be migrated first (`thali migrate`)")?
            .map(|row| row.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        if existing > 0 {
            bail!("the database already holds {existing} accounts: seed an empty one");
        }
        let password = "load test password 1".to_owned();
        eprintln!("[seed] hashing the shared password once (argon2id)");
        let phc = thali_identity::passwords::hash(&password);
        let now = "now()";

        // Accounts: buyers, creators and restaurant owners, one password hash for all of them.
        let buyers: Vec<(uuid::Uuid, String, String)> = (0..args.users)
            .map(|i| {
                let token = format!("thali_rt_load{i:06}_{}", uuid().simple());
                (uuid(), format!("buyer{i:06}@load.example"), token)
            })
            .collect();
        let creators: Vec<(uuid::Uuid, uuid::Uuid, String)> = (0..args.creators)
            .map(|i| (uuid(), uuid(), format!("shop_{i:05}")))
            .collect();
        let owners: Vec<uuid::Uuid> = (0..args.restaurants).map(|_| uuid()).collect();
        let accounts = buyers
            .iter()
            .map(|(id, email, _)| (*id, email.clone(), "buyer"))
            .chain(
                creators
                    .iter()
                    .map(|(id, _, name)| (*id, format!("{name}@load.example"), "creator")),
            )
            .chain(
                owners
                    .iter()
                    .enumerate()
                    .map(|(i, id)| (*id, format!("owner{i:05}@load.example"), "restaurant_owner")),
            )
            .map(|(id, email, role)| {
                format!("('{id}', '{email}', 'Load {role}', '{role}', 'active', '{phc}', {now}, {now}, {now})")
            })
            .collect::<Vec<_>>();
        insert(
            &db,
            "accounts",
            "INSERT INTO accounts (id, email, display_name, role, status, password_hash, created_at, updated_at, email_verified_at)",
            accounts.into_iter(),
        )
        .await?;
        // A live session for every buyer: the refresh token's hash, as identity keeps it.
        insert(
            &db,
            "sessions",
            "INSERT INTO refresh_tokens (id, family_id, account_id, token_hash, created_at, expires_at)",
            buyers.iter().map(|(id, _, token)| {
                format!(
                    "('{}', '{}', '{id}', '{}', {now}, {now} + interval '30 days')",
                    uuid(),
                    uuid(),
                    thali_identity::store::sha256_hex(token)
                )
            }),
        )
        .await?;

        // Storefronts: creators with products, unlimited stock.
        insert(
            &db,
            "creators",
            "INSERT INTO creators (id, username, display_name, bio, owner_subject, created_at, updated_at)",
            creators.iter().map(|(owner, id, name)| {
                format!("('{id}', '{name}', 'Shop {name}', 'Tea, snacks and small things.', '{owner}', {now}, {now})")
            }),
        )
        .await?;
        let mut fixture_creators = Vec::with_capacity(creators.len());
        let mut products = Vec::with_capacity(creators.len() * args.products);
        for (_, creator, name) in &creators {
            let mut ids = Vec::with_capacity(args.products);
            for p in 0..args.products {
                let id = uuid();
                ids.push(id.to_string());
                products.push(format!(
                    "('{id}', '{creator}', 'Item {p} of {name}', 'A thing {name} makes.', {}, 'INR', true, NULL, {now}, {now})",
                    1000 + (p as i64 * 250)
                ));
            }
            fixture_creators.push(FixtureCreator {
                username: name.clone(),
                products: ids,
            });
        }
        insert(
            &db,
            "products",
            "INSERT INTO products (id, creator_id, title, description, price_minor, currency, active, stock, created_at, updated_at)",
            products.into_iter(),
        )
        .await?;

        // Restaurants: ten tables, open 08:00–23:00 every day, default rules.
        let restaurants: Vec<(uuid::Uuid, uuid::Uuid, &str, &str)> = owners
            .iter()
            .enumerate()
            .map(|(i, owner)| {
                (
                    uuid(),
                    *owner,
                    CITIES[i % CITIES.len()],
                    CUISINES[(i / 3) % CUISINES.len()],
                )
            })
            .collect();
        insert(
            &db,
            "restaurants",
            "INSERT INTO restaurants (id, owner_id, name, city, city_key, cuisines, address, time_zone, slot_minutes, sitting_minutes, window_days, lead_minutes, cancel_cutoff_minutes, created_at, updated_at)",
            restaurants.iter().enumerate().map(|(i, (id, owner, city, cuisine))| {
                format!(
                    "('{id}', '{owner}', 'Restaurant {i:05}', '{city}', '{}', ',{cuisine},', '{i} Main Road', 'Asia/Kolkata', 15, 90, 60, 30, 120, {now}, {now})",
                    city.to_lowercase()
                )
            }),
        )
        .await?;
        let mut tables = Vec::new();
        for (restaurant, ..) in &restaurants {
            for t in 0..10 {
                let (min, max) = if t < 6 { (1, 4) } else { (4, 8) };
                tables.push((uuid(), *restaurant, format!("T{t}"), min, max));
            }
        }
        insert(
            &db,
            "tables",
            "INSERT INTO restaurant_tables (id, restaurant_id, label, min_seats, max_seats, active, created_at)",
            tables
                .iter()
                .map(|(id, r, label, min, max)| format!("('{id}', '{r}', '{label}', {min}, {max}, true, {now})")),
        )
        .await?;
        insert(
            &db,
            "opening hours",
            "INSERT INTO opening_hours (restaurant_id, weekday, opens, closes)",
            restaurants
                .iter()
                .flat_map(|(r, ..)| (0..7).map(move |d| format!("('{r}', {d}, '08:00', '23:00')")))
                .collect::<Vec<_>>()
                .into_iter(),
        )
        .await?;

        // Past bookings: one a day at 19:30 IST on each of a restaurant's tables in turn, the
        // days before today; one in ten cancelled.
        let guests: Vec<uuid::Uuid> = buyers.iter().map(|(id, ..)| *id).collect();
        let per_restaurant = args.past_bookings.div_ceil(restaurants.len().max(1));
        let past = (0..args.past_bookings).map(|n| {
            let r = n / per_restaurant;
            let day = n % per_restaurant + 1;
            let (restaurant, ..) = restaurants[r];
            let (table, ..) = &tables[r * 10 + day % 6];
            let guest = guests[n % guests.len().max(1)];
            let (status, cancelled) = if n % 10 == 0 {
                ("cancelled", "now() - interval '1 day'")
            } else {
                ("confirmed", "NULL")
            };
            let starts = format!("(date_trunc('day', now() AT TIME ZONE 'Asia/Kolkata') - interval '{day} days' + interval '19 hours 30 minutes') AT TIME ZONE 'Asia/Kolkata'");
            format!(
                "('{}', '{restaurant}', '{table}', '{guest}', 2, {starts}, {starts} + interval '90 minutes', '{status}', 'Load guest', '+91 98450 00000', '', {starts} - interval '3 days', {cancelled})",
                uuid()
            )
        });
        insert(
            &db,
            "past bookings",
            "INSERT INTO bookings (id, restaurant_id, table_id, guest_id, party_size, starts_at, ends_at, status, guest_name, phone, note, created_at, cancelled_at)",
            past.collect::<Vec<_>>().into_iter(),
        )
        .await?;
        db.execute_unprepared("ANALYZE").await?;

        let fixture = Fixture {
            password,
            users: buyers
                .into_iter()
                .map(|(_, email, refresh_token)| FixtureUser { email, refresh_token })
                .collect(),
            creators: fixture_creators,
            restaurants: restaurants
                .iter()
                .map(|(id, _, city, _)| FixtureRestaurant {
                    id: id.to_string(),
                    city: city.to_string(),
                })
                .collect(),
            cities: CITIES.iter().map(|c| c.to_string()).collect(),
            cuisines: CUISINES.iter().map(|c| c.to_string()).collect(),
            volumes: BTreeMap::from([
                ("buyers with a live session".to_owned(), args.users),
                ("creators".to_owned(), args.creators),
                ("products".to_owned(), args.creators * args.products),
                ("restaurants".to_owned(), args.restaurants),
                ("tables".to_owned(), args.restaurants * 10),
                ("past bookings".to_owned(), args.past_bookings),
            ]),
        };
        std::fs::write(&args.fixture, serde_json::to_vec(&fixture)?).context("writing the fixture")?;
        eprintln!("[seed] done; fixture {}", args.fixture.display());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The mix

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Route {
    Storefront,
    Search,
    Availability,
    Book,
    Checkout,
    Pay,
    Verify,
    Refresh,
    Login,
}

impl Route {
    const ALL: [Route; 9] = [
        Route::Storefront,
        Route::Search,
        Route::Availability,
        Route::Book,
        Route::Checkout,
        Route::Pay,
        Route::Verify,
        Route::Refresh,
        Route::Login,
    ];

    fn name(self) -> &'static str {
        match self {
            Route::Storefront => "GET /api/v1/store/{username}",
            Route::Search => "GET /api/v1/restaurants",
            Route::Availability => "GET /api/v1/restaurants/{id}/availability",
            Route::Book => "POST /api/v1/bookings",
            Route::Checkout => "POST /api/v1/orders",
            Route::Pay => "POST /sandbox/orders/{id}/pay (gateway)",
            Route::Verify => "POST /api/v1/orders/{id}/verify",
            Route::Refresh => "POST /api/v1/auth/refresh",
            Route::Login => "POST /api/v1/auth/login",
        }
    }

    fn method(self) -> Method {
        match self {
            Route::Storefront | Route::Search | Route::Availability => Method::GET,
            _ => Method::POST,
        }
    }

    /// The sandbox stands for Razorpay: its answers are reported but not held to the targets.
    fn is_thali(self) -> bool {
        self != Route::Pay
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Browse,
    Search,
    Availability,
    Book,
    Checkout,
    Refresh,
    Login,
}

/// The issue's mix, in per-mille.
const MIX: [(Action, u32); 7] = [
    (Action::Browse, 600),
    (Action::Search, 150),
    (Action::Availability, 100),
    (Action::Book, 50),
    (Action::Checkout, 50),
    (Action::Refresh, 40),
    (Action::Login, 10),
];

fn pick_action(roll: u32) -> Action {
    let mut acc = 0;
    for (action, share) in MIX {
        acc += share;
        if roll < acc {
            return action;
        }
    }
    Action::Browse
}

/// Zipf popularity over `n` items (exponent 1): the cumulative weights, searched with a uniform draw.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n.max(1))
            .map(|k| {
                acc += 1.0 / (k as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf(cdf)
    }

    fn sample(&self, u: f64) -> usize {
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1)
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// What became of one request: an HTTP status, or 0 when the connection failed, 1 on timeout.
#[derive(Clone, Copy)]
struct Sample {
    route: Route,
    status: u16,
    micros: u32,
    /// Seconds since the measured window opened (the intended send time).
    at: f32,
}

const IO_ERROR: u16 = 0;
const TIMEOUT: u16 = 1;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

struct Shared {
    samples: Mutex<Vec<Sample>>,
    /// When the measured window opens and closes.
    measure_from: Instant,
    measure_until: Instant,
    spike: Option<(Instant, Instant)>,
    think_scale: f64,
    open_connections: AtomicI64,
    reconnects: AtomicU64,
    logins_replaced: AtomicU64,
    login_bucket: Mutex<(f64, Instant)>,
    login_cap: f64,
    /// Orders of the window whose payment Thali verified (their webhooks are the sandbox's).
    paid_orders: Mutex<Vec<String>>,
}

/// When a request's action was due (it decides the window the request counts in) and when its
/// latency starts: the same for an action's first request; a later step of a checkout (the
/// payment, the signature check) is timed from its own start.
#[derive(Clone, Copy)]
struct Timing {
    action: Instant,
    from: Instant,
}

impl From<Instant> for Timing {
    fn from(intended: Instant) -> Self {
        Timing {
            action: intended,
            from: intended,
        }
    }
}

impl Shared {
    fn record(&self, route: Route, status: u16, timing: impl Into<Timing>, done: Instant) {
        let Timing { action, from } = timing.into();
        if action < self.measure_from || action >= self.measure_until {
            return;
        }
        let micros = done.saturating_duration_since(from).as_micros().min(u32::MAX as u128) as u32;
        let at = action.duration_since(self.measure_from).as_secs_f32();
        self.samples.lock().unwrap().push(Sample {
            route,
            status,
            micros,
            at,
        });
    }

    fn think(&self, after: Instant) -> Duration {
        let base = 1.0 + fastrand::f64() * 4.0;
        let spiking = self.spike.is_some_and(|(from, until)| after >= from && after < until);
        Duration::from_secs_f64(base * self.think_scale / if spiking { 10.0 } else { 1.0 })
    }

    fn may_login(&self) -> bool {
        let mut bucket = self.login_bucket.lock().unwrap();
        let now = Instant::now();
        bucket.0 = (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * self.login_cap).min(self.login_cap);
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One user

struct World {
    fixture: Fixture,
    facade: SocketAddr,
    host: String,
    sandbox: reqwest::Client,
    sandbox_base: String,
    stores: Zipf,
    restaurants: Zipf,
    days: Zipf,
    today: chrono::NaiveDate,
}

struct User {
    index: usize,
    email: String,
    refresh: String,
    access: Option<String>,
    conn: Option<SendRequest<Full<Bytes>>>,
    serial: u64,
    /// The session is gone: the next action is a password sign-in.
    needs_login: bool,
}

struct Answer {
    status: u16,
    body: Value,
    done: Instant,
}

impl User {
    async fn connection(&mut self, world: &World, shared: &Shared) -> Option<&mut SendRequest<Full<Bytes>>> {
        if let Some(conn) = &self.conn
            && !conn.is_closed()
        {
            return self.conn.as_mut();
        }
        if self.conn.take().is_some() {
            shared.open_connections.fetch_sub(1, Ordering::Relaxed);
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let stream = TcpStream::connect(world.facade).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        shared.open_connections.fetch_add(1, Ordering::Relaxed);
        self.conn = Some(sender);
        self.conn.as_mut()
    }

    /// One request on the user's own connection; latency is counted from the intended send
    /// time (see [`Timing`]).
    async fn call(
        &mut self,
        world: &World,
        shared: &Shared,
        route: Route,
        path: &str,
        body: Option<Value>,
        timing: impl Into<Timing>,
    ) -> Answer {
        let timing = timing.into();
        let mut builder = Request::builder()
            .method(route.method())
            .uri(path)
            .header(header::HOST, &world.host)
            .header(header::ACCEPT, "application/json");
        // A creator's storefront is a public page, mostly opened from a shared link by people
        // who are not signed in: it goes without a token (and so through the facade's response
        // cache, ADR 0009). Everything else comes from the signed-in app.
        if route != Route::Storefront
            && let Some(token) = &self.access
        {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if matches!(route, Route::Book | Route::Checkout) {
            self.serial += 1;
            builder = builder.header("idempotency-key", format!("load-{}-{}", self.index, self.serial));
        }
        let payload = match body {
            Some(value) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(payload)).expect("a well-formed request");
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let conn = self.connection(world, shared).await.ok_or(())?;
            conn.ready().await.map_err(|_| ())?;
            let response = conn.send_request(request).await.map_err(|_| ())?;
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await.map_err(|_| ())?.to_bytes();
            Ok::<_, ()>((status, bytes))
        })
        .await;
        let done = Instant::now();
        let (status, body) = match outcome {
            Ok(Ok((status, bytes))) => (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)),
            Ok(Err(())) => {
                // The connection is gone; the next call opens a new one.
                if self.conn.take().is_some() {
                    shared.open_connections.fetch_sub(1, Ordering::Relaxed);
                }
                (IO_ERROR, Value::Null)
            }
            Err(_) => {
                if self.conn.take().is_some() {
                    shared.open_connections.fetch_sub(1, Ordering::Relaxed);
                }
                (TIMEOUT, Value::Null)
            }
        };
        shared.record(route, status, timing, done);
        Answer { status, body, done }
    }

    async fn refresh(&mut self, world: &World, shared: &Shared, intended: Instant) {
        let body = json!({"refresh_token": self.refresh});
        let answer = self
            .call(
                world,
                shared,
                Route::Refresh,
                "/api/v1/auth/refresh",
                Some(body),
                intended,
            )
            .await;
        if answer.status == 200 {
            if let Some(token) = answer.body["access_token"].as_str() {
                self.access = Some(token.to_owned());
            }
            if let Some(token) = answer.body["refresh_token"].as_str() {
                self.refresh = token.to_owned();
            }
        } else if answer.status == 401 {
            // The session is gone (say, a rotation whose answer was lost made the token a
            // reuse, and the family was revoked): sign in again with the password.
            self.access = None;
            self.needs_login = true;
        }
    }

    async fn act(&mut self, world: &World, shared: &Shared, intended: Instant) {
        // Most users arrive with a live session: the first thing is to use it. One whose session
        // ended signs in again, within the sign-in cap (browsing meanwhile).
        let mut action = if self.needs_login {
            Action::Login
        } else if self.access.is_none() {
            Action::Refresh
        } else {
            pick_action(fastrand::u32(0..1000))
        };
        if action == Action::Login && !shared.may_login() {
            shared.logins_replaced.fetch_add(1, Ordering::Relaxed);
            action = Action::Browse;
        }
        let fixture = &world.fixture;
        let day = world.today + chrono::Duration::days(1 + world.days.sample(fastrand::f64()) as i64);
        let party = fastrand::i32(2..=4);
        match action {
            Action::Browse => {
                let store = &fixture.creators[world.stores.sample(fastrand::f64())].username;
                self.call(
                    world,
                    shared,
                    Route::Storefront,
                    &format!("/api/v1/store/{store}"),
                    None,
                    intended,
                )
                .await;
            }
            Action::Search => {
                let city = &fixture.cities[fastrand::usize(..fixture.cities.len())];
                let mut path = format!("/api/v1/restaurants?city={city}&party_size={party}&date={day}");
                if fastrand::bool() {
                    let cuisine = &fixture.cuisines[fastrand::usize(..fixture.cuisines.len())];
                    write!(path, "&cuisine={}", cuisine.replace(' ', "%20")).unwrap();
                }
                if fastrand::bool() {
                    write!(
                        path,
                        "&time={:02}:{:02}",
                        fastrand::u32(12..22),
                        [0, 30][fastrand::usize(..2)]
                    )
                    .unwrap();
                }
                self.call(world, shared, Route::Search, &path, None, intended).await;
            }
            Action::Availability => {
                let restaurant = &fixture.restaurants[world.restaurants.sample(fastrand::f64())].id;
                let path = format!("/api/v1/restaurants/{restaurant}/availability?date={day}&party_size={party}");
                self.call(world, shared, Route::Availability, &path, None, intended)
                    .await;
            }
            Action::Book => {
                let restaurant = &fixture.restaurants[world.restaurants.sample(fastrand::f64())].id;
                let minutes = 8 * 60 + 15 * fastrand::u32(0..53);
                let body = json!({
                    "restaurant_id": restaurant,
                    "party_size": party,
                    "start": format!("{day}T{:02}:{:02}", minutes / 60, minutes % 60),
                    "guest_name": "Load Guest",
                    "phone": "+91 98450 12345",
                });
                self.call(world, shared, Route::Book, "/api/v1/bookings", Some(body), intended)
                    .await;
            }
            Action::Checkout => {
                let store = &fixture.creators[world.stores.sample(fastrand::f64())];
                let product = &store.products[fastrand::usize(..store.products.len())];
                let body = json!({"username": store.username, "lines": [{"product_id": product, "quantity": fastrand::u32(1..=3)}]});
                let order = self
                    .call(world, shared, Route::Checkout, "/api/v1/orders", Some(body), intended)
                    .await;
                let (Some(id), Some(gateway)) = (
                    order.body["id"].as_str(),
                    order.body["checkout"]["gateway_order_id"].as_str(),
                ) else {
                    return;
                };
                let (id, gateway) = (id.to_owned(), gateway.to_owned());
                // The buyer pays at the gateway (the sandbox, standing for Razorpay Checkout)...
                let paid_at = order.done;
                let paid = world
                    .sandbox
                    .post(format!("{}/sandbox/orders/{gateway}/pay", world.sandbox_base))
                    .json(&json!({"outcome": "captured"}))
                    .send()
                    .await;
                let paid = match paid {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body: Value = response.json().await.unwrap_or(Value::Null);
                        shared.record(
                            Route::Pay,
                            status,
                            Timing {
                                action: intended,
                                from: paid_at,
                            },
                            Instant::now(),
                        );
                        body
                    }
                    Err(_) => {
                        shared.record(
                            Route::Pay,
                            IO_ERROR,
                            Timing {
                                action: intended,
                                from: paid_at,
                            },
                            Instant::now(),
                        );
                        return;
                    }
                };
                // ...and the page hands Checkout's answer to Thali, which checks its signature.
                let verify = json!({
                    "razorpay_order_id": paid["razorpay_order_id"],
                    "razorpay_payment_id": paid["razorpay_payment_id"],
                    "razorpay_signature": paid["razorpay_signature"],
                });
                let verified = self
                    .call(
                        world,
                        shared,
                        Route::Verify,
                        &format!("/api/v1/orders/{id}/verify"),
                        Some(verify),
                        Timing {
                            action: intended,
                            from: Instant::now(),
                        },
                    )
                    .await;
                if verified.status == 200 && intended >= shared.measure_from && intended < shared.measure_until {
                    shared.paid_orders.lock().unwrap().push(id);
                }
            }
            Action::Refresh => self.refresh(world, shared, intended).await,
            Action::Login => {
                let body = json!({"email": self.email, "password": fixture.password});
                let answer = self
                    .call(world, shared, Route::Login, "/api/v1/auth/login", Some(body), intended)
                    .await;
                if answer.status == 200 {
                    self.needs_login = false;
                    if let Some(token) = answer.body["tokens"]["access_token"].as_str() {
                        self.access = Some(token.to_owned());
                    }
                    if let Some(token) = answer.body["tokens"]["refresh_token"].as_str() {
                        self.refresh = token.to_owned();
                    }
                }
            }
        }
    }
}

async fn user_loop(mut user: User, world: Arc<World>, shared: Arc<Shared>, first: Instant) {
    let mut intended = first;
    loop {
        tokio::time::sleep_until(intended).await;
        if intended >= shared.measure_until {
            break;
        }
        user.act(&world, &shared, intended).await;
        intended += shared.think(intended);
    }
    if user.conn.take().is_some() {
        shared.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// The server, watched

/// Prometheus text: (name, labels, value) triples.
fn parse_metrics(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or(rest)),
            None => (head, ""),
        };
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while let Some((key, after)) = rest.split_once("=\"") {
            let mut value = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            map.insert(key.trim_start_matches(',').trim().to_owned(), value);
            rest = &after[end..];
        }
        out.push((name.to_owned(), map, value));
    }
    out
}

fn sum_of(samples: &[(String, BTreeMap<String, String>, f64)], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && want.iter().all(|(k, v)| {
                    let have = labels.get(*k).map(String::as_str).unwrap_or("");
                    v.split('|').any(|alt| alt == have)
                })
        })
        .map(|(.., v)| v)
        .sum()
}

/// The `q` quantile of a histogram's bucket deltas, interpolated as `histogram_quantile` does.
fn histogram_quantile(
    before: &[(String, BTreeMap<String, String>, f64)],
    after: &[(String, BTreeMap<String, String>, f64)],
    name: &str,
    want: &[(&str, &str)],
    q: f64,
) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
    for (snapshot, sign) in [(after, 1.0), (before, -1.0)] {
        for (n, labels, v) in snapshot {
            if *n != bucket || !want.iter().all(|(k, w)| labels.get(*k).map(String::as_str) == Some(*w)) {
                continue;
            }
            let le = match labels.get("le").map(String::as_str) {
                Some("+Inf") => f64::INFINITY,
                Some(le) => le.parse().unwrap_or(f64::INFINITY),
                None => continue,
            };
            *buckets.entry(le.to_bits()).or_default() += sign * v;
        }
    }
    let mut bounds: Vec<(f64, f64)> = buckets.into_iter().map(|(b, c)| (f64::from_bits(b), c)).collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = bounds.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (le, count) in bounds {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let within = if count > prev.1 {
                (rank - prev.1) / (count - prev.1)
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * within);
        }
        prev = (le, count);
    }
    None
}

#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
struct ProcessSample {
    at: f64,
    cpu_seconds: f64,
    rss_bytes: u64,
    fds: u64,
}

fn process_sample(pid: u32, at: f64) -> Option<ProcessSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis; utime and stime are 14th and 15th overall.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(ProcessSample {
        at,
        cpu_seconds: ticks / 100.0,
        rss_bytes: rss_kib * 1024,
        fds,
    })
}

/// Busy and total jiffies of the whole machine.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0.0) + fields.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

async fn scrape(client: &reqwest::Client, admin: &str) -> anyhow::Result<Vec<(String, BTreeMap<String, String>, f64)>> {
    let text = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .context("reading the server's /metrics")?
        .text()
        .await?;
    Ok(parse_metrics(&text))
}

#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
struct Watch {
    server: Vec<ProcessSample>,
    generator: Vec<ProcessSample>,
    /// (connections in use, the pool's maximum) as the server last sampled them.
    pool: Vec<(f64, f64)>,
    open_connections: Vec<i64>,
    /// Seconds between samples.
    step_s: u64,
}

// ---------------------------------------------------------------------------------------------
// The run

/// What a run found: the report, its numbers, and whether every target was met.
struct Outcome {
    markdown: String,
    data: Data,
    errors: BTreeMap<Route, BTreeMap<u16, u64>>,
    server_errors: u64,
    /// Orders of the window whose payment was verified.
    paid: usize,
    passed: bool,
}

async fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let fixture: Fixture = serde_json::from_slice(
        &std::fs::read(&args.fixture).with_context(|| format!("reading {}", args.fixture.display()))?,
    )?;
    if fixture.users.len() < args.users {
        bail!(
            "the fixture has {} users, fewer than --users {}",
            fixture.users.len(),
            args.users
        );
    }
    let url: reqwest::Url = args.base.parse().context("--base")?;
    let facade = tokio::net::lookup_host((url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(80)))
        .await?
        .next()
        .context("--base does not resolve")?;
    let duration = args
        .duration
        .unwrap_or(if args.profile == Profile::Soak { 1800 } else { 120 });
    let rate = args.rate.unwrap_or(args.users as f64 / 3.0);
    // The pause is 1–5 s (mean 3 s) at the default rate, scaled for another target.
    let think_scale = args.users as f64 / 3.0 / rate;
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let started = Instant::now();
    let measure_from = started + Duration::from_secs(args.warmup);
    let measure_until = measure_from + Duration::from_secs(duration);
    let spike = (args.profile == Profile::Spike).then(|| {
        let from = measure_from + Duration::from_secs(duration / 2).saturating_sub(Duration::from_secs(15));
        (from, from + Duration::from_secs(30))
    });
    let shared = Arc::new(Shared {
        samples: Mutex::new(Vec::with_capacity((rate * duration as f64 * 1.2) as usize)),
        measure_from,
        measure_until,
        spike,
        think_scale,
        open_connections: AtomicI64::new(0),
        reconnects: AtomicU64::new(0),
        logins_replaced: AtomicU64::new(0),
        login_bucket: Mutex::new((0.0, Instant::now())),
        login_cap: args.login_cap,
        paid_orders: Mutex::new(Vec::new()),
    });
    let creators = fixture.creators.len();
    let restaurants = fixture.restaurants.len();
    let world = Arc::new(World {
        fixture,
        facade,
        host: format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), facade.port()),
        sandbox: http.clone(),
        sandbox_base: args.sandbox.trim_end_matches('/').to_owned(),
        stores: Zipf::new(creators, 1.0),
        restaurants: Zipf::new(restaurants, 1.0),
        // Most people book for the next days: dates out to 30 days, the near ones favoured.
        days: Zipf::new(30, 0.8),
        today: chrono::Utc::now().with_timezone(&chrono_tz::Asia::Kolkata).date_naive(),
    });
    eprintln!(
        "[load] {} users, target {rate:.0} actions/s, warm-up {}s, measured {duration}s, profile {:?}",
        args.users, args.warmup, args.profile
    );

    // Users arrive over the first three quarters of the warm-up, each opening its connection
    // then: 10,000 people do not all open the app in the same second.
    let arrive_over = Duration::from_secs((args.warmup * 3 / 4).max(1));
    let mut tasks = Vec::with_capacity(args.users);
    for index in 0..args.users {
        let fu = &world.fixture.users[index];
        let user = User {
            index,
            email: fu.email.clone(),
            refresh: fu.refresh_token.clone(),
            access: None,
            conn: None,
            serial: 0,
            needs_login: false,
        };
        let first = started + arrive_over.mul_f64(index as f64 / args.users as f64);
        tasks.push(tokio::spawn(user_loop(user, world.clone(), shared.clone(), first)));
    }

    // Watch the server and the generator every 5 s; snapshot the metrics as the window opens.
    let mut watch = Watch::default();
    let me = std::process::id();
    let mut before = None;
    let mut machine_before = None;
    let mut server_before = None;
    let step = Duration::from_secs((duration / 20).clamp(1, 5));
    watch.step_s = step.as_secs();
    let mut next = Instant::now();
    loop {
        let wake = if before.is_none() {
            next.min(measure_from)
        } else {
            next.min(measure_until)
        };
        tokio::time::sleep_until(wake).await;
        let now = Instant::now();
        if before.is_none() && now >= measure_from {
            before = Some(scrape(&http, &args.admin).await?);
            machine_before = Some(machine_cpu());
            server_before = args.server_pid.and_then(|pid| process_sample(pid, 0.0));
        }
        if now >= measure_until {
            break;
        }
        if now < next {
            continue;
        }
        next += step;
        let at = now.saturating_duration_since(measure_from).as_secs_f64();
        let phase = if now < measure_from { "warm-up" } else { "measuring" };
        let done = shared.samples.lock().unwrap().len();
        eprintln!(
            "[load {phase} {:>5.0}s] connections {} · measured requests {done} · reconnects {}",
            now.duration_since(started).as_secs_f64(),
            shared.open_connections.load(Ordering::Relaxed),
            shared.reconnects.load(Ordering::Relaxed)
        );
        if now >= measure_from {
            if let Some(pid) = args.server_pid
                && let Some(sample) = process_sample(pid, at)
            {
                watch.server.push(sample);
            }
            if let Some(sample) = process_sample(me, at) {
                watch.generator.push(sample);
            }
            watch
                .open_connections
                .push(shared.open_connections.load(Ordering::Relaxed));
            if let Ok(metrics) = scrape(&http, &args.admin).await {
                watch.pool.push((
                    sum_of(&metrics, "db_pool_connections", &[("state", "in_use")]),
                    sum_of(&metrics, "db_pool_max_connections", &[]),
                ));
            }
        }
    }
    let after = scrape(&http, &args.admin).await?;
    let machine_after = machine_cpu();
    let server_after = args.server_pid.and_then(|pid| process_sample(pid, duration as f64));
    // Let the users finish what they were doing (answers of the window still count).
    let deadline = Instant::now() + REQUEST_TIMEOUT + Duration::from_secs(5);
    for task in &mut tasks {
        if tokio::time::timeout_at(deadline, &mut *task).await.is_err() {
            break;
        }
    }
    // Whatever is still running by then is stopped, so nothing records after the count.
    for task in &tasks {
        task.abort();
    }
    // Give the webhooks of the last payments time to land, then look at the orders.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let webhooks = scrape(&http, &args.admin).await?;
    let before = before.context("the window never opened")?;

    let samples = std::mem::take(&mut *shared.samples.lock().unwrap());
    let server_cpu = match (server_before, server_after) {
        (Some(a), Some(b)) => Some((b.cpu_seconds - a.cpu_seconds) / duration as f64),
        _ => None,
    };
    let machine = machine_before.map(|(busy, total)| {
        let (busy2, total2) = machine_after;
        (busy2 - busy) / (total2 - total).max(1.0)
    });
    let report = Report::build(ReportInput {
        args: &args,
        duration,
        rate,
        samples: &samples,
        before: &before,
        after: &after,
        webhooks: &webhooks,
        watch: &watch,
        server_cpu,
        machine_busy: machine,
        volumes: &world.fixture.volumes,
        logins_replaced: shared.logins_replaced.load(Ordering::Relaxed),
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        paid: shared.paid_orders.lock().unwrap().len(),
    });
    let previous = std::fs::read_to_string(&args.report)
        .ok()
        .and_then(|text| Data::from_report(&text));
    let (markdown, passed) = report.render(previous.as_ref());
    if let Some(dir) = args.report.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.report, &markdown).with_context(|| format!("writing {}", args.report.display()))?;
    eprintln!("[load] report written to {}", args.report.display());
    Ok(Outcome {
        markdown,
        passed,
        paid: report.input.paid,
        server_errors: report.server_errors,
        errors: report.errors,
        data: report.data,
    })
}

// ---------------------------------------------------------------------------------------------
// The report

/// The numbers a later run compares with, kept in the report as a comment.
#[derive(Default, serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct Data {
    profile: String,
    /// The crowd: runs of another size or rate are not compared.
    #[serde(default)]
    users: usize,
    #[serde(default)]
    rate: f64,
    routes: BTreeMap<String, RouteData>,
}

#[derive(Default, serde::Serialize, serde::Deserialize, PartialEq, Debug, Clone)]
struct RouteData {
    count: u64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
}

const DATA_MARK: &str = "<!-- loadgen-data ";

impl Data {
    fn from_report(text: &str) -> Option<Data> {
        let start = text.find(DATA_MARK)? + DATA_MARK.len();
        let end = start + text[start..].find(" -->")?;
        serde_json::from_str(&text[start..end]).ok()
    }

    /// Routes whose p95 or p99 got more than 20 % worse than `previous` (and by at least a
    /// millisecond, so a 0.4 → 0.5 ms wobble is not a regression).
    fn regressions(&self, previous: &Data) -> Vec<(String, &'static str, f64, f64)> {
        let mut out = Vec::new();
        for (route, now) in &self.routes {
            let Some(then) = previous.routes.get(route) else {
                continue;
            };
            for (label, was, is) in [("p95", then.p95_ms, now.p95_ms), ("p99", then.p99_ms, now.p99_ms)] {
                if is > was * 1.2 && is - was >= 1.0 {
                    out.push((route.clone(), label, was, is));
                }
            }
        }
        out
    }
}

fn quantile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

fn status_name(status: u16) -> String {
    match status {
        IO_ERROR => "connection error".to_owned(),
        TIMEOUT => "timeout (30 s)".to_owned(),
        s => s.to_string(),
    }
}

struct ReportInput<'a> {
    args: &'a RunArgs,
    duration: u64,
    rate: f64,
    samples: &'a [Sample],
    before: &'a [(String, BTreeMap<String, String>, f64)],
    after: &'a [(String, BTreeMap<String, String>, f64)],
    webhooks: &'a [(String, BTreeMap<String, String>, f64)],
    watch: &'a Watch,
    server_cpu: Option<f64>,
    machine_busy: Option<f64>,
    volumes: &'a BTreeMap<String, usize>,
    logins_replaced: u64,
    reconnects: u64,
    paid: usize,
}

struct Report<'a> {
    input: ReportInput<'a>,
    data: Data,
    errors: BTreeMap<Route, BTreeMap<u16, u64>>,
    server_errors: u64,
    overall: RouteData,
    cache: Vec<(String, f64, f64)>,
}

impl<'a> Report<'a> {
    fn build(input: ReportInput<'a>) -> Self {
        let mut per_route: BTreeMap<Route, Vec<u32>> = BTreeMap::new();
        let mut errors: BTreeMap<Route, BTreeMap<u16, u64>> = BTreeMap::new();
        let mut all = Vec::with_capacity(input.samples.len());
        let mut server_errors = 0;
        for s in input.samples {
            per_route.entry(s.route).or_default().push(s.micros);
            if s.route.is_thali() {
                all.push(s.micros);
            }
            if !(200..400).contains(&s.status) {
                *errors.entry(s.route).or_default().entry(s.status).or_default() += 1;
                if s.route.is_thali() && (s.status >= 500 || s.status == IO_ERROR || s.status == TIMEOUT) {
                    server_errors += 1;
                }
            }
        }
        let summarise = |v: &mut Vec<u32>| {
            v.sort_unstable();
            RouteData {
                count: v.len() as u64,
                p50_ms: quantile(v, 0.50),
                p95_ms: quantile(v, 0.95),
                p99_ms: quantile(v, 0.99),
            }
        };
        let mut data = Data {
            profile: format!("{:?}", input.args.profile).to_lowercase(),
            users: input.args.users,
            rate: input.rate.round(),
            routes: BTreeMap::new(),
        };
        for (route, mut v) in per_route {
            data.routes.insert(route.name().to_owned(), summarise(&mut v));
        }
        let overall = summarise(&mut all);
        let mut caches: Vec<String> = input
            .after
            .iter()
            .filter(|(n, ..)| n == "cache_requests_total")
            .filter_map(|(_, l, _)| l.get("cache").cloned())
            .collect();
        caches.sort();
        caches.dedup();
        let delta =
            |name: &str, want: &[(&str, &str)]| sum_of(input.after, name, want) - sum_of(input.before, name, want);
        let cache = caches
            .into_iter()
            .map(|c| {
                let hits = delta("cache_requests_total", &[("cache", &c), ("result", "hit")]);
                let lookups = delta(
                    "cache_requests_total",
                    &[("cache", &c), ("level", "l1"), ("result", "hit|miss")],
                );
                (c, hits, lookups)
            })
            .collect();
        Report {
            input,
            data,
            errors,
            server_errors,
            overall,
            cache,
        }
    }

    fn render(&self, previous: Option<&Data>) -> (String, bool) {
        let i = &self.input;
        let mut md = String::new();
        let title = match i.args.profile {
            Profile::Steady => "Load test baseline",
            Profile::Spike => "Load test: spike profile",
            Profile::Soak => "Load test: soak profile",
        };
        let measured = self.overall.count;
        let _ = writeln!(md, "# {title}\n");
        let _ = writeln!(
            md,
            "Written by `tests/load/loadgen.rs` (`just load-test`, issue 14, ADR 0037) on {}. Do not edit by hand: the next run of the same profile compares with the numbers in the comment at the end.\n",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
        );
        let _ = writeln!(md, "## What ran\n");
        if !i.args.setup.is_empty() {
            let _ = writeln!(md, "- {}", i.args.setup);
        }
        let _ = writeln!(
            md,
            "- {} users, each on its own HTTP/1.1 connection, pausing 1–5 s between actions (target {:.0} actions/s), an open model: latency counts from each action's intended send time.",
            i.args.users, i.rate
        );
        if let Some((from, until)) = i.args.profile.eq(&Profile::Spike).then(|| {
            let from = (i.duration / 2).saturating_sub(15);
            (from, from + 30)
        }) {
            let _ = writeln!(
                md,
                "- Spike: ten times the arrival rate from {from} s to {until} s of the window."
            );
        }
        let _ = writeln!(
            md,
            "- Warm-up {} s (users arrive, sessions refresh, caches fill), then {} s measured: {measured} requests to Thali, {:.0} a second (the payments at the gateway not counted).",
            i.args.warmup,
            i.duration,
            measured as f64 / i.duration as f64
        );
        let _ = writeln!(
            md,
            "- Mix (per action): storefront 60 %, restaurant search 15 %, availability 10 %, booking 5 %, checkout 5 % (order, payment at the sandbox gateway, signature check; the gateway's webhooks follow), token refresh 4 %, password sign-in 1 % capped at {}/s ({} over the cap became storefront reads).",
            i.args.login_cap, i.logins_replaced
        );
        let volumes: Vec<String> = i.volumes.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let _ = writeln!(md, "- Seeded: {}.", volumes.join(", "));
        let _ = writeln!(
            md,
            "- Machine: {} cores; the generator runs on the same machine as the server.\n",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );

        // Targets.
        let hits: f64 = self.cache.iter().map(|c| c.1).sum();
        let lookups: f64 = self.cache.iter().map(|c| c.2).sum();
        let ratio = if lookups > 0.0 { hits / lookups } else { 0.0 };
        let targets = [
            (
                "p95 of every Thali request < 100 ms",
                format!("{:.1} ms", self.overall.p95_ms),
                self.overall.p95_ms < 100.0,
            ),
            (
                "p99 < 500 ms",
                format!("{:.1} ms", self.overall.p99_ms),
                self.overall.p99_ms < 500.0,
            ),
            (
                "no 5xx (nor connection errors or timeouts)",
                self.server_errors.to_string(),
                self.server_errors == 0,
            ),
            (
                "cache hit ratio > 95 %",
                format!("{:.1} %", ratio * 100.0),
                ratio > 0.95,
            ),
        ];
        let _ = writeln!(md, "## Targets\n\n| target | measured | met |\n|---|---|---|");
        let mut passed = true;
        for (name, value, ok) in &targets {
            passed &= ok;
            let _ = writeln!(md, "| {name} | {value} | {} |", if *ok { "yes" } else { "**no**" });
        }

        // Routes.
        let _ = writeln!(
            md,
            "\n## Per route (client side, from the intended send time)\n\n| route | count | per s | p50 | p95 | p99 | errors by status |\n|---|---:|---:|---:|---:|---:|---|"
        );
        for route in Route::ALL {
            let Some(r) = self.data.routes.get(route.name()) else {
                continue;
            };
            let errors = self
                .errors
                .get(&route)
                .map(|e| {
                    e.iter()
                        .map(|(s, n)| format!("{}: {n}", status_name(*s)))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
                route.name(),
                r.count,
                r.count as f64 / i.duration as f64,
                r.p50_ms,
                r.p95_ms,
                r.p99_ms,
                if errors.is_empty() { "none".to_owned() } else { errors }
            );
        }
        let _ = writeln!(
            md,
            "| all Thali requests | {} | {:.1} | {:.1} ms | {:.1} ms | {:.1} ms | {} 5xx/failed |",
            self.overall.count,
            self.overall.count as f64 / i.duration as f64,
            self.overall.p50_ms,
            self.overall.p95_ms,
            self.overall.p99_ms,
            self.server_errors
        );
        let webhook_route = [("route", "/api/v1/webhooks/razorpay")];
        let webhook_count = sum_of(i.webhooks, "http_server_request_duration_seconds_count", &webhook_route)
            - sum_of(i.before, "http_server_request_duration_seconds_count", &webhook_route);
        let lag = histogram_quantile(i.before, i.webhooks, "webhook_processing_lag_seconds", &[], 0.95);
        let webhook_p95 = histogram_quantile(
            i.before,
            i.webhooks,
            "http_server_request_duration_seconds",
            &webhook_route,
            0.95,
        );
        let _ = writeln!(
            md,
            "\nThe gateway's webhooks (server side, the window plus 5 s): {webhook_count:.0} received for {} payments verified, p95 {} to answer; p95 from the payment to the order being paid {}.",
            i.paid,
            webhook_p95
                .map(|s| format!("{:.1} ms", s * 1000.0))
                .unwrap_or_else(|| "n/a".into()),
            lag.map(|s| format!("{:.2} s", s)).unwrap_or_else(|| "n/a".into()),
        );

        // Server.
        let _ = writeln!(md, "\n## Server\n\n| cache | lookups | hit ratio |\n|---|---:|---:|");
        for (name, hits, lookups) in &self.cache {
            let _ = writeln!(
                md,
                "| {name} | {lookups:.0} | {} |",
                if *lookups > 0.0 {
                    format!("{:.1} %", hits / lookups * 100.0)
                } else {
                    "n/a".into()
                }
            );
        }
        let pool_max = i.watch.pool.iter().map(|p| p.1).fold(0.0, f64::max);
        let pool_peak = i.watch.pool.iter().map(|p| p.0).fold(0.0, f64::max);
        let pool_full = i.watch.pool.iter().filter(|p| p.1 > 0.0 && p.0 >= p.1).count();
        let _ = writeln!(
            md,
            "\n- Database pool: at most {pool_peak:.0} of {pool_max:.0} connections in use; full (requests would wait) in {pool_full} of {} samples taken every {} s.",
            i.watch.pool.len(),
            i.watch.step_s
        );
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        if let Some(cpu) = i.server_cpu {
            let _ = writeln!(
                md,
                "- Server CPU: {:.0} % of one core on average ({:.0} % of the machine).",
                cpu * 100.0,
                cpu / cores * 100.0
            );
        }
        if let (Some(first), Some(last)) = (i.watch.generator.first(), i.watch.generator.last())
            && last.at > first.at
        {
            let _ = writeln!(
                md,
                "- Generator CPU: {:.0} % of one core.",
                (last.cpu_seconds - first.cpu_seconds) / (last.at - first.at) * 100.0
            );
        }
        if let Some(busy) = i.machine_busy {
            let _ = writeln!(md, "- Machine busy: {:.0} % of both cores.", busy * 100.0);
        }
        let conns_min = i.watch.open_connections.iter().min().copied().unwrap_or(0);
        let conns_max = i.watch.open_connections.iter().max().copied().unwrap_or(0);
        let _ = writeln!(
            md,
            "- Connections held by the generator: {conns_min}–{conns_max} during the window; {} reconnects.",
            i.reconnects
        );
        if let (Some(first), Some(last)) = (i.watch.server.first(), i.watch.server.last()) {
            let peak = i.watch.server.iter().map(|s| s.rss_bytes).max().unwrap_or(0);
            let _ = writeln!(
                md,
                "- Server memory (RSS): {:.0} MiB at the start of the window, {:.0} MiB at the end, {:.0} MiB at most; open descriptors {} → {}.",
                first.rss_bytes as f64 / 1048576.0,
                last.rss_bytes as f64 / 1048576.0,
                peak as f64 / 1048576.0,
                first.fds,
                last.fds
            );
        }

        // Timeline.
        let step = if i.duration > 600 { 60 } else { 10 };
        let _ = writeln!(
            md,
            "\n## Over time ({step} s steps)\n\n| from | requests | p50 | p99 | 5xx/failed | other errors | server RSS | server fds |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let mut buckets: BTreeMap<u64, (Vec<u32>, u64, u64)> = BTreeMap::new();
        for s in i.samples.iter().filter(|s| s.route.is_thali()) {
            let b = buckets.entry(s.at as u64 / step).or_default();
            b.0.push(s.micros);
            if s.status >= 500 || s.status == IO_ERROR || s.status == TIMEOUT {
                b.1 += 1;
            } else if s.status >= 400 {
                b.2 += 1;
            }
        }
        for (k, (mut v, failed, other)) in buckets {
            v.sort_unstable();
            let server = i
                .watch
                .server
                .iter()
                .find(|s| s.at as u64 >= k * step)
                .map(|s| (format!("{:.0} MiB", s.rss_bytes as f64 / 1048576.0), s.fds.to_string()))
                .unwrap_or_default();
            let _ = writeln!(
                md,
                "| {} s | {} | {:.1} ms | {:.1} ms | {failed} | {other} | {} | {} |",
                k * step,
                v.len(),
                quantile(&v, 0.5),
                quantile(&v, 0.99),
                server.0,
                server.1
            );
        }

        // The comparison.
        let _ = writeln!(md, "\n## Compared with the previous run of this profile\n");
        match previous.filter(|p| p.profile == self.data.profile) {
            None => {
                let _ = writeln!(md, "No previous run of this profile: this is the first baseline.");
            }
            Some(previous) if previous.users != self.data.users || previous.rate != self.data.rate => {
                let _ = writeln!(
                    md,
                    "The previous run had another crowd ({} users at {:.0} actions/s): not compared.",
                    previous.users, previous.rate
                );
            }
            Some(previous) => {
                let regressions = self.data.regressions(previous);
                let _ = writeln!(md, "| route | p95 then → now | p99 then → now |\n|---|---:|---:|");
                for (route, now) in &self.data.routes {
                    if let Some(then) = previous.routes.get(route) {
                        let _ = writeln!(
                            md,
                            "| {route} | {:.1} → {:.1} ms | {:.1} → {:.1} ms |",
                            then.p95_ms, now.p95_ms, then.p99_ms, now.p99_ms
                        );
                    }
                }
                if regressions.is_empty() {
                    let _ = writeln!(md, "\nNo route's p95 or p99 is more than 20 % worse.");
                } else {
                    passed = false;
                    let _ = writeln!(md, "\n**Regressions over 20 %:**\n");
                    for (route, label, was, is) in regressions {
                        let _ = writeln!(
                            md,
                            "- {route}: {label} {was:.1} ms → {is:.1} ms (+{:.0} %)",
                            (is / was - 1.0) * 100.0
                        );
                    }
                }
            }
        }
        let _ = writeln!(
            md,
            "\n{DATA_MARK}{} -->",
            serde_json::to_string(&self.data).unwrap_or_default()
        );
        (md, passed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_mix_adds_up_to_the_issue_shares() {
        assert_eq!(MIX.iter().map(|m| m.1).sum::<u32>(), 1000);
        let mut counts: HashMap<&'static str, u32> = HashMap::new();
        for roll in 0..1000 {
            *counts.entry(format!("{:?}", pick_action(roll)).leak()).or_default() += 1;
        }
        assert_eq!(counts["Browse"], 600);
        assert_eq!(counts["Login"], 10);
        assert_eq!(counts["Checkout"], 50);
    }

    #[test]
    fn zipf_favours_the_first_items_and_reaches_the_last() {
        let z = Zipf::new(1000, 1.0);
        assert_eq!(z.sample(0.0), 0);
        assert_eq!(z.sample(1.0), 999);
        // With s = 1 over 1,000 items the first holds ~13 % of the weight.
        assert_eq!(z.sample(0.10), 0);
        assert!(z.sample(0.5) < 60, "{}", z.sample(0.5));
    }

    #[test]
    fn quantiles_take_the_rank_not_an_average() {
        let v: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.95), 95.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[], 0.99), 0.0);
    }

    #[test]
    fn a_route_more_than_20_percent_slower_is_a_regression() {
        let data = |p95: f64, p99: f64| Data {
            profile: "steady".into(),
            users: 10_000,
            rate: 3333.0,
            routes: BTreeMap::from([(
                "GET /x".to_owned(),
                RouteData {
                    count: 10,
                    p50_ms: 1.0,
                    p95_ms: p95,
                    p99_ms: p99,
                },
            )]),
        };
        let then = data(10.0, 40.0);
        assert!(data(11.9, 47.9).regressions(&then).is_empty());
        let worse = data(12.5, 40.0).regressions(&then);
        assert_eq!(worse.len(), 1);
        assert_eq!(worse[0].1, "p95");
        // Sub-millisecond wobble is not a regression.
        assert!(data(0.5, 0.9).regressions(&data(0.3, 0.6)).is_empty());
        // The numbers survive the trip through a report.
        let text = format!("# r\n{DATA_MARK}{} -->\n", serde_json::to_string(&then).unwrap());
        assert_eq!(Data::from_report(&text), Some(then));
        assert_eq!(Data::from_report("no data here"), None);
    }

    #[test]
    fn metrics_text_parses_with_braces_and_escapes_in_labels() {
        let text = "# HELP x\nhttp_server_request_duration_seconds_bucket{route=\"/api/v1/store/{username}\",le=\"0.005\"} 7\n\
                    cache_requests_total{cache=\"store\",level=\"l1\",result=\"hit\"} 90\n\
                    cache_requests_total{cache=\"store\",level=\"l1\",result=\"miss\"} 10\n\
                    cache_requests_total{cache=\"store\",level=\"l2\",result=\"hit\"} 5\n\
                    odd{v=\"a\\\"b\"} 1\n";
        let m = parse_metrics(text);
        assert_eq!(m[0].1["route"], "/api/v1/store/{username}");
        assert_eq!(m[0].1["le"], "0.005");
        assert_eq!(m[4].1["v"], "a\"b");
        assert_eq!(sum_of(&m, "cache_requests_total", &[("result", "hit")]), 95.0);
        assert_eq!(
            sum_of(&m, "cache_requests_total", &[("level", "l1"), ("result", "hit|miss")]),
            100.0
        );
    }

    /// The whole tool at a small scale against the real platform on PostgreSQL: the seeder's
    /// rows are what the services read (a schema change that breaks it fails here), every
    /// step of the mix answers, and the report holds the numbers a later run compares with.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_run_seeds_drives_every_route_and_reports() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let Some(t) = thali_platform::testing::postgres().await else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("thali-loadgen-{}", uuid::Uuid::now_v7()));
        let mut env = thali_tests::loopback_env(&dir.join("data"));
        env.insert("THALI_DATABASE_URL".into(), t.url.clone());
        env.insert("THALI_LOG".into(), "error".into());
        let cfg = thali_platform::Config::load_from(None, Some(env), &Default::default()).unwrap();
        let platform = thali::start(&cfg, thali::Part::All).await.unwrap();
        let fixture = dir.join("fixture.json");
        seed::run(SeedArgs {
            database_url: t.url.clone(),
            fixture: fixture.clone(),
            creators: 12,
            products: 3,
            restaurants: 8,
            past_bookings: 400,
            users: 40,
        })
        .await
        .unwrap();
        // One user's session is gone (its token was never issued): it must sign in again.
        let mut seeded: Fixture = serde_json::from_slice(&std::fs::read(&fixture).unwrap()).unwrap();
        seeded.users[0].refresh_token = "thali_rt_never_issued".into();
        std::fs::write(&fixture, serde_json::to_vec(&seeded).unwrap()).unwrap();
        // Seeding twice would mix two fixtures' sessions: refused.
        let again = seed::run(SeedArgs {
            database_url: t.url.clone(),
            fixture: dir.join("again.json"),
            creators: 1,
            products: 1,
            restaurants: 1,
            past_bookings: 0,
            users: 1,
        })
        .await;
        assert!(again.unwrap_err().to_string().contains("seed an empty one"));

        let report = dir.join("baseline.md");
        let args = |report: &PathBuf| RunArgs {
            base: format!("http://{}", platform.http_addr.unwrap()),
            sandbox: format!("http://{}", platform.sandbox_addr.unwrap()),
            admin: format!("http://{}", platform.admin_addr),
            server_pid: None,
            fixture: fixture.clone(),
            users: 40,
            rate: Some(60.0),
            login_cap: 8.0,
            profile: Profile::Steady,
            // No warm-up: the first refreshes, the refused one and the sign-in after it all
            // fall in the window.
            warmup: 0,
            duration: Some(8),
            report: report.clone(),
            setup: "test".into(),
        };
        let outcome = run(args(&report)).await.unwrap();
        assert_eq!(outcome.server_errors, 0, "{}", outcome.markdown);
        // Bookings may meet a taken slot (409), and the user without a session is refused its
        // refresh (401) until it signs in; nothing else may fail.
        for (route, errors) in &outcome.errors {
            for status in errors.keys() {
                assert!(
                    (*route == Route::Book && *status == 409) || (*route == Route::Refresh && *status == 401),
                    "{route:?} answered {status}: {}",
                    outcome.markdown
                );
            }
        }
        // Every step of the mix ran in the window, the sign-in included (the user above).
        for route in Route::ALL {
            let count = outcome.data.routes.get(route.name()).map_or(0, |r| r.count);
            assert!(count > 0, "no {route:?} in the window: {}", outcome.markdown);
        }
        assert!(outcome.paid > 0, "{}", outcome.markdown);
        let written = std::fs::read_to_string(&report).unwrap();
        assert_eq!(Data::from_report(&written).as_ref(), Some(&outcome.data));
        assert!(
            written.contains("| no 5xx (nor connection errors or timeouts) | 0 | yes |"),
            "{written}"
        );
        // The past bookings are there for the services to read.
        let n: i64 =
            t.db.query_one_raw(sea_orm::Statement::from_string(
                t.db.get_database_backend(),
                "SELECT count(*) AS n FROM bookings WHERE starts_at < now()",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get("", "n")
            .unwrap();
        assert_eq!(n, 400);
        platform.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn histogram_quantiles_interpolate_within_the_bucket() {
        let snap = |n: [f64; 3]| {
            parse_metrics(&format!(
                "h_bucket{{le=\"0.1\"}} {}\nh_bucket{{le=\"0.2\"}} {}\nh_bucket{{le=\"+Inf\"}} {}\n",
                n[0], n[1], n[2]
            ))
        };
        let before = snap([0.0, 0.0, 0.0]);
        let after = snap([50.0, 100.0, 100.0]);
        let p75 = histogram_quantile(&before, &after, "h", &[], 0.75).unwrap();
        assert!((p75 - 0.15).abs() < 1e-9, "{p75}");
        assert_eq!(histogram_quantile(&after, &after, "h", &[], 0.5), None);
    }
}
