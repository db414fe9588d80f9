//! The whole platform started in-process on ephemeral ports, and helpers to drive it over
//! HTTP as a client would. Shared by the end-to-end test binaries.
#![allow(dead_code)]

pub mod split;

use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use opentelemetry_sdk::trace::InMemorySpanExporter;

use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use thali::{Part, Platform};
use thali_platform::{Config, auth::Signer, config::Overrides};

/// Telemetry as a real process has it (so answers carry trace ids), with the spans of every test
/// in this binary collected in-process.
pub fn spans() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let telemetry = match LOGS.get() {
            // Everything down to TRACE, kept for the test to read.
            Some(logs) => {
                let logs = logs.clone();
                thali_platform::telemetry::init_with_exporter_and_writer(
                    exporter.clone(),
                    "trace",
                    tracing_subscriber::fmt::writer::BoxMakeWriter::new(move || LogSink(logs.clone())),
                    *SAMPLE_RATIO.get_or_init(|| 1.0),
                )
            }
            None => thali_platform::telemetry::init_with_exporter(exporter.clone(), "info,sea_orm=warn"),
        }
        .expect("telemetry is installed once per test binary");
        std::mem::forget(telemetry);
        exporter
    })
}

type LogBuffer = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;
static LOGS: OnceLock<LogBuffer> = OnceLock::new();
static SAMPLE_RATIO: OnceLock<f64> = OnceLock::new();

/// [`capture_logs`], keeping only `ratio` of the traces begun in this binary.
pub fn capture_logs_sampled(ratio: f64) {
    SAMPLE_RATIO.get_or_init(|| ratio);
    capture_logs();
}

struct LogSink(LogBuffer);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Keeps every log line of this test binary, at TRACE, in memory: call before the first mesh
/// starts (the log subscriber is installed once per binary).
pub fn capture_logs() {
    LOGS.get_or_init(Default::default);
    spans();
}

/// Everything logged so far (with [`capture_logs`]).
pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.get().expect("capture_logs() first").lock().unwrap()).into_owned()
}

pub struct Mesh {
    platform: Option<Platform>,
    pub base: String,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`.
    pub admin: String,
    pub grpc_addr: SocketAddr,
    /// The built-in sandbox payment gateway (`http://…`).
    pub sandbox: String,
    pub signer: Signer,
    pub http: Client,
    /// The platform's data dir (SQLite file, keys, `mail/`).
    pub data_dir: std::path::PathBuf,
}

pub use thali_tests::{UNLIMITED, loopback_env};

impl Mesh {
    /// The embedded platform: SQLite in a fresh data dir.
    pub async fn start() -> Self {
        Self::start_on(None).await
    }

    /// The platform on `database_url` (None: embedded SQLite).
    pub async fn start_on(database_url: Option<String>) -> Self {
        Self::start_with(database_url, None).await
    }

    /// The platform on `database_url` (None: embedded SQLite), caching in `redis_url` too.
    pub async fn start_with(database_url: Option<String>, redis_url: Option<String>) -> Self {
        Self::start_full(database_url, redis_url, &[]).await
    }

    /// The embedded platform with extra settings (`THALI_…` pairs).
    pub async fn start_env(extra: &[(&str, &str)]) -> Self {
        Self::start_full(None, None, extra).await
    }

    async fn start_full(database_url: Option<String>, redis_url: Option<String>, extra: &[(&str, &str)]) -> Self {
        spans();
        let data_dir = std::env::temp_dir().join(format!("thali-e2e-{}", uuid::Uuid::now_v7()));
        let mut env = loopback_env(&data_dir);
        if let Some(url) = database_url {
            env.insert("THALI_DATABASE_URL".into(), url);
        }
        if let Some(url) = redis_url {
            env.insert("THALI_REDIS_URL".into(), url);
        }
        for (key, value) in extra {
            env.insert((*key).to_owned(), (*value).to_owned());
        }
        let cfg = Config::load_from(None, Some(env), &Overrides::default()).unwrap();
        let data_dir = cfg.data_dir.clone();
        let platform = thali::start(&cfg, Part::All).await.unwrap();
        let base = format!("http://{}", platform.http_addr.unwrap());
        let admin = format!("http://{}", platform.admin_addr);
        let grpc_addr = platform.grpc_addr.unwrap();
        let sandbox = format!("http://{}", platform.sandbox_addr.unwrap());
        let signer = Signer::load(&cfg.keys_dir()).unwrap();
        Self {
            platform: Some(platform),
            base,
            admin,
            grpc_addr,
            sandbox,
            signer,
            http: Client::new(),
            data_dir,
        }
    }

    /// A token minted with the platform's key for `subject` as a creator.
    pub fn token(&self, subject: &str) -> String {
        self.signer.mint(subject, &["creator".into()], Duration::from_secs(600))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Response {
        self.http.get(format!("{}{path}", self.admin)).send().await.unwrap()
    }

    pub async fn get_as(&self, path: &str, token: &str) -> Response {
        self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, token: Option<&str>, body: Value) -> Response {
        let mut req = self.http.request(method, self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Response {
        self.send(reqwest::Method::POST, path, token, body).await
    }

    pub async fn create_creator(&self, token: &str, username: &str) -> Value {
        let res = self
            .post(
                "/api/v1/creators",
                Some(token),
                json!({"username": username, "display_name": "Chai Point"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        res.json().await.unwrap()
    }

    /// Registers an account and logs it in; returns the login answer.
    pub async fn sign_up(&self, email: &str, role: &str) -> Value {
        let res = self
            .post(
                "/api/v1/auth/register",
                None,
                json!({"email": email, "password": "correct horse battery", "display_name": "Someone", "role": role}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::ACCEPTED, "{}", res.text().await.unwrap());
        let res = self
            .post(
                "/api/v1/auth/login",
                None,
                json!({"email": email, "password": "correct horse battery"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(p) = self.platform.take() {
            tokio::spawn(p.shutdown());
        }
    }
}

/// The access token of a login answer.
pub fn access(session: &Value) -> String {
    session["tokens"]["access_token"].as_str().unwrap().to_owned()
}

/// Asserts an RFC 9457 answer with this status and code; returns its body.
pub async fn problem(res: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["trace_id"].as_str().unwrap().len(), 32, "{body}");
    body
}

/// The answer's JSON body, once its status is `status` (the body is in the panic otherwise).
pub async fn json_of(res: Response, status: StatusCode) -> Value {
    let got = res.status();
    let body = res.text().await.unwrap();
    assert_eq!(got, status, "{body}");
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// The text `url` (an admin listener's `/metrics`) answers.
pub async fn metrics_page(http: &Client, url: String) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// The mesh's admin `/metrics` page.
pub async fn metrics(mesh: &Mesh) -> String {
    metrics_page(&mesh.http, format!("{}/metrics", mesh.admin)).await
}

/// The sum of every series of the metric `name` on the mesh's admin `/metrics` whose labels
/// include `labels` (0 when none is there yet). Other tests of the binary share the recorder, so
/// compare before and after with `>=`.
pub async fn metric(mesh: &Mesh, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics(mesh)
        .await
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            (metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Polls the order until its status is `want` (webhooks arrive asynchronously).
pub async fn settles(mesh: &Mesh, token: &str, id: &str, want: &str) -> Value {
    for _ in 0..200 {
        let order = json_of(
            mesh.get_as(&format!("/api/v1/orders/{id}"), token).await,
            StatusCode::OK,
        )
        .await;
        if order["status"] == want {
            return order;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("order {id} never became {want}");
}

/// The buyer pays `gateway_order` in the sandbox (`captured`, `failed` or `authorized`).
pub async fn pay(mesh: &Mesh, gateway_order: &str, outcome: &str) -> Value {
    json_of(
        mesh.http
            .post(format!("{}/sandbox/orders/{gateway_order}/pay", mesh.sandbox))
            .json(&json!({ "outcome": outcome }))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await
}

/// The subject of an email sent to `to` whose subject contains `part`.
pub fn mail_to(mesh: &Mesh, to: &str, part: &str) -> Option<String> {
    mail(mesh, to, part).map(|(subject, _)| subject)
}

/// The subject and text of an email sent to `to` whose subject contains `part`.
pub fn mail(mesh: &Mesh, to: &str, part: &str) -> Option<(String, String)> {
    std::fs::read_dir(mesh.data_dir.join("mail"))
        .ok()?
        .flatten()
        .find_map(|entry| {
            let bytes = std::fs::read(entry.path()).ok()?;
            let message = mail_parser::MessageParser::default().parse(&bytes)?;
            let subject = message.subject()?.to_owned();
            let text = message.body_text(0).map(|t| t.into_owned()).unwrap_or_default();
            (message.to()?.first()?.address()? == to && subject.contains(part)).then_some((subject, text))
        })
}

/// Makes the payments order `order` look 16 minutes old and runs the reconciler now, as if
/// the quarter hour had passed (the embedded database, as an operator would open it).
pub async fn a_quarter_hour_passes(mesh: &Mesh, order: &str) {
    use sea_orm::ConnectionTrait;
    let db = thali_platform::db::connect(&format!(
        "sqlite://{}?mode=rw",
        mesh.data_dir.join("thali.db").display()
    ))
    .await
    .unwrap();
    let past = chrono::Utc::now() - chrono::Duration::minutes(16);
    let id = uuid::Uuid::parse_str(order).unwrap();
    db.execute_raw(thali_platform::db::statement(
        db.get_database_backend(),
        "UPDATE orders SET created_at = $1, expires_at = $2 WHERE id = $3",
        vec![past.into(), (past + chrono::Duration::minutes(15)).into(), id.into()],
    ))
    .await
    .unwrap();
    // A reconciler cycle now, as the 2-minute timer would start one.
    let run_now = thali_platform::jobs::NewJob::new("payments.reconcile", &json!({"occurrence": chrono::Utc::now()}))
        .unique(format!("test-reconcile:{order}"));
    thali_platform::jobs::Queue::new("payments")
        .enqueue(&db, run_now)
        .await
        .unwrap();
}

/// Polls `check` every 100 ms for up to 15 s (the relay and the email job run in the
/// background; SQLite workers poll).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(std::time::Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The newest code starting with `prefix` in an email to `to` under the platform's mail folder.
pub async fn mailed_code(mesh: &Mesh, to: &str, prefix: &str, not: &[String]) -> String {
    let mail = mesh.data_dir.join("mail");
    eventually(&format!("a {prefix}… code for {to}"), || async {
        std::fs::read_dir(&mail).ok()?.flatten().find_map(|entry| {
            let bytes = std::fs::read(entry.path()).ok()?;
            let message = mail_parser::MessageParser::default().parse(&bytes)?;
            if message.to()?.first()?.address()? != to {
                return None;
            }
            let text = message.body_text(0)?.into_owned();
            let at = text.find(prefix)?;
            let code: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            (!not.contains(&code)).then_some(code)
        })
    })
    .await
}

/// Opens a restaurant for `owner`: Dosa Corner in Bengaluru (Asia/Kolkata), one table for 2–4
/// per label, open every day 08:00–23:00. Returns the restaurant as created.
pub async fn open_restaurant(mesh: &Mesh, owner: &str, tables: &[&str]) -> Value {
    let r = json_of(
        mesh.post(
            "/api/v1/restaurants",
            Some(owner),
            json!({"name": "Dosa Corner", "city": "Bengaluru", "cuisines": ["south indian"],
                   "address": "1 MG Road", "time_zone": "Asia/Kolkata"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let id = r["id"].as_str().unwrap();
    for label in tables {
        json_of(
            mesh.post(
                &format!("/api/v1/restaurants/{id}/tables"),
                Some(owner),
                json!({"label": label, "min_seats": 2, "max_seats": 4}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
    }
    let week: Vec<Value> = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ]
    .iter()
    .map(|d| json!({"weekday": d, "opens": "08:00", "closes": "23:00"}))
    .collect();
    let hours = json_of(
        mesh.send(
            reqwest::Method::PUT,
            &format!("/api/v1/restaurants/{id}/hours"),
            Some(owner),
            json!({ "hours": week }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(hours["hours"].as_array().unwrap().len(), 7);
    r
}

/// A real 1×1 PNG (valid CRCs and zlib stream).
pub fn real_png() -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
        .unwrap()
}

/// Every file under `dir`, at any depth.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}
