//! Configuration: embedded defaults → `thali.toml` → `THALI_*` environment → command-line flags,
//! validated once at start so a bad value fails the process before it serves anything.
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::secret::Secret;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable when standard output is a terminal, JSON otherwise (the default).
    Auto,
    /// One JSON object per line: what log pipelines ingest.
    Json,
    /// Human-readable lines for a terminal.
    Pretty,
}

impl LogFormat {
    /// The format to write, given whether standard output is a terminal.
    pub fn resolve(self, terminal: bool) -> LogFormat {
        match self {
            LogFormat::Auto if terminal => LogFormat::Pretty,
            LogFormat::Auto => LogFormat::Json,
            other => other,
        }
    }
}

/// Which requests get an access-log line (`THALI_ACCESS_LOG`); metrics count every request
/// whatever this says, and an error is always logged by the code that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    /// Every request.
    All,
    /// Requests answered with an error status (HTTP 4xx/5xx) only.
    Errors,
    /// Every error, and one in `n` of the other requests.
    Sampled(u32),
}

impl AccessLog {
    /// `all`, `errors` or `sampled:N` (N ≥ 1).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "all" => Ok(AccessLog::All),
            "errors" => Ok(AccessLog::Errors),
            other => other
                .strip_prefix("sampled:")
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| *n >= 1)
                .map(AccessLog::Sampled)
                .ok_or_else(|| format!("`{other}` is not all, errors or sampled:N (N at least 1)")),
        }
    }
}

/// `https://app.example.com, http://localhost:3000` → exact origins (scheme, host, optional
/// port; no path, no wildcard: a browser sends credentials to what is listed).
fn parse_origins(spec: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for origin in spec.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .ok_or_else(|| format!("`{origin}` must start with https:// or http://"))?;
        let host_ok = !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
        if !host_ok {
            return Err(format!(
                "`{origin}` must be scheme://host[:port] (no path, no wildcard)"
            ));
        }
        out.push(origin.to_ascii_lowercase());
    }
    Ok(out)
}

/// Everything a Thali process reads at start.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Where the REST facade listens (`THALI_HTTP_ADDR`).
    pub http_addr: SocketAddr,
    /// Where the gRPC services listen (`THALI_GRPC_ADDR`).
    pub grpc_addr: SocketAddr,
    /// Local state: the SQLite file and, in embedded mode, the JWT key pair (`THALI_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Database URL; unset means a SQLite file in the data dir (`THALI_DATABASE_URL`, or
    /// `THALI_DATABASE_URL_FILE` naming a file that holds it: the URL can carry a password).
    pub database_url: Option<Secret<String>>,
    /// File holding the database URL (`THALI_DATABASE_URL_FILE`; not with `database_url`).
    pub database_url_file: Option<PathBuf>,
    /// OTLP/gRPC endpoint for traces; unset means no export (`THALI_OTLP_ENDPOINT`).
    pub otlp_endpoint: Option<String>,
    /// `tracing` filter directives (`THALI_LOG`).
    pub log: String,
    /// `auto` (the default), `json` or `pretty` (`THALI_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// `all`, `errors` or `sampled:N` (`THALI_ACCESS_LOG`, default `sampled:100`; ADR 0024).
    pub access_log: String,
    /// The share of new traces kept, 0.0-1.0 (`THALI_TRACE_SAMPLE_RATIO`, default 1.0); a trace
    /// begun elsewhere follows its caller's decision.
    pub trace_sample_ratio: f64,
    /// Where the facade finds the storefront service (`THALI_STOREFRONT_URL`); unset means this
    /// process's own gRPC address.
    pub storefront_url: Option<String>,
    /// Where the facade and other services find identity (`THALI_IDENTITY_URL`); unset means
    /// this process's own gRPC address.
    pub identity_url: Option<String>,
    /// Where the facade and the event relay find notifications (`THALI_NOTIFICATIONS_URL`);
    /// unset means this process's own gRPC address.
    pub notifications_url: Option<String>,
    /// Where the facade finds the booking service (`THALI_BOOKING_URL`); unset means this
    /// process's own gRPC address.
    pub booking_url: Option<String>,
    /// Where the facade and booking find the payments service (`THALI_PAYMENTS_URL`); unset
    /// means this process's own gRPC address.
    pub payments_url: Option<String>,
    /// Razorpay's API (`THALI_RAZORPAY_URL`, e.g. `https://api.razorpay.com`); unset in embedded
    /// mode means the built-in sandbox gateway started on `sandbox_addr`.
    pub razorpay_url: Option<String>,
    /// The platform's Razorpay key id (`THALI_RAZORPAY_KEY_ID`; public, Checkout opens with it).
    pub razorpay_key_id: Option<String>,
    /// File holding the platform's key secret (`THALI_RAZORPAY_KEY_SECRET_FILE`).
    pub razorpay_key_secret_file: Option<PathBuf>,
    /// File holding the platform account's webhook secret (`THALI_RAZORPAY_WEBHOOK_SECRET_FILE`).
    pub razorpay_webhook_secret_file: Option<PathBuf>,
    /// Where embedded `thali serve` (and `thali sandbox-gateway`) serve the sandbox gateway
    /// (`THALI_SANDBOX_ADDR`).
    pub sandbox_addr: SocketAddr,
    /// Total time one gateway call may take, connection to answer, seconds
    /// (`THALI_GATEWAY_TIMEOUT_S`).
    pub gateway_timeout_s: u64,
    /// The SMTP server mail goes through (`THALI_SMTP_URL`): `smtps://user@host:465`,
    /// `smtp://user@host:587?tls=required` or `smtp://host:25`; unset means each message is
    /// written as an `.eml` file under `<data dir>/mail/`.
    pub smtp_url: Option<String>,
    /// File holding the SMTP password (`THALI_SMTP_PASSWORD_FILE`); the URL never carries it.
    pub smtp_password_file: Option<PathBuf>,
    /// An S3-compatible object store for uploaded media (`THALI_S3_URL`, e.g.
    /// `https://s3.ap-south-1.amazonaws.com`); unset means the local store under the data dir
    /// (ADR 0033).
    pub s3_url: Option<String>,
    /// The media bucket (`THALI_S3_BUCKET`), private.
    pub s3_bucket: Option<String>,
    /// The bucket's region (`THALI_S3_REGION`).
    pub s3_region: String,
    /// Path-style addressing (`THALI_S3_PATH_STYLE`), as most local S3-compatible servers want.
    pub s3_path_style: bool,
    /// The access key id (`THALI_S3_ACCESS_KEY_ID`; public half).
    pub s3_access_key_id: Option<String>,
    /// File holding the secret access key (`THALI_S3_SECRET_ACCESS_KEY_FILE`).
    pub s3_secret_access_key_file: Option<PathBuf>,
    /// The sender of Thali's email (`THALI_MAIL_FROM`).
    pub mail_from: String,
    /// Longest time one email send may take, connection to answer, seconds (`THALI_MAIL_TIMEOUT_S`).
    pub mail_timeout_s: u64,
    /// The web app, where links in emails point (`THALI_APP_URL`), e.g.
    /// `https://app.example.com` → `https://app.example.com/reset-password?token=…`.
    pub app_url: String,
    /// Lets webhook endpoints be http:// and private or loopback addresses
    /// (`THALI_WEBHOOKS_ALLOW_INSECURE`): development and tests only.
    pub webhooks_allow_insecure: bool,
    /// Redis for the L2 cache and cross-replica invalidation (`THALI_REDIS_URL`): `redis://`,
    /// `rediss://`, `redis-sentinel://` or `redis-cluster://`; unset means L1 only. It can carry
    /// a password: `THALI_REDIS_URL_FILE` names a file that holds it instead.
    pub redis_url: Option<Secret<String>>,
    /// File holding the Redis URL (`THALI_REDIS_URL_FILE`; not with `redis_url`).
    pub redis_url_file: Option<PathBuf>,
    /// Tenant partition of cache keys (`THALI_TENANT`).
    pub tenant: String,
    /// This part's own JWT key pairs and the `active` file naming the one that signs
    /// (`THALI_KEYS_DIR`); unset means `<data_dir>/keys`. Identity's keys sign user tokens; every
    /// other part's keys sign only its own service tokens (ADR 0029).
    pub keys_dir: Option<PathBuf>,
    /// The other parts' public keys, `<owner>.<kid>.pub` (`THALI_TRUSTED_KEYS_DIR`); unset means
    /// `<data_dir>/trusted-keys` (absent: none, as in one process running every part).
    pub trusted_keys_dir: Option<PathBuf>,
    /// How often key files and identity's key set are re-read, in seconds
    /// (`THALI_KEYS_REFRESH_S`); an unknown key id also triggers a re-read (at most once a second).
    pub keys_refresh_s: u64,
    /// The data keys that encrypt secrets at rest (`THALI_DATA_KEYS_FILE`, see
    /// `platform::crypto`); unset means `<data_dir>/data-keys.json`, created on first use.
    pub data_keys_file: Option<PathBuf>,
    /// Deadline of one internal gRPC call, in milliseconds (`THALI_RPC_TIMEOUT_MS`).
    pub rpc_timeout_ms: u64,
    /// Time allowed to open a connection to another service, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Largest request body the facade accepts, in bytes (`THALI_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Largest image upload, in bytes (`THALI_MAX_UPLOAD_BYTES`; the upload routes have their own
    /// body limit).
    pub max_upload_bytes: usize,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`THALI_ADMIN_ADDR`).
    pub admin_addr: SocketAddr,
    /// Calls one process's gRPC server runs at once; more are shed with UNAVAILABLE
    /// (`THALI_MAX_CONCURRENT_RPCS`).
    pub max_concurrent_rpcs: usize,
    /// Most database connections one process opens (`THALI_DB_MAX_CONNECTIONS`; default 20 on
    /// PostgreSQL, 8 on SQLite). Replicas × this must stay under the server's
    /// `max_connections` (docs/ops/deploy.md).
    pub db_max_connections: Option<u32>,
    /// Time in-flight calls get to finish after SIGTERM, in seconds (`THALI_SHUTDOWN_GRACE_S`).
    pub shutdown_grace_s: u64,
    /// How long the facade may serve its last copy of a storefront page while the storefront
    /// cannot be reached, in seconds (`THALI_EDGE_STALE_IF_ERROR_S`).
    pub edge_stale_if_error_s: u64,
    /// Retry budget window, seconds (1-60) (`THALI_RETRY_BUDGET_WINDOW_S`).
    pub retry_budget_window_s: u64,
    /// Retries per second always allowed (`THALI_RETRY_BUDGET_MIN_PER_S`).
    pub retry_budget_min_per_s: u32,
    /// Retries allowed as a percentage of calls (`THALI_RETRY_BUDGET_PERCENT`).
    pub retry_budget_percent: u32,
    /// First retry backoff, milliseconds (`THALI_RETRY_BACKOFF_BASE_MS`).
    pub retry_backoff_base_ms: u64,
    /// Largest retry backoff, milliseconds (`THALI_RETRY_BACKOFF_MAX_MS`).
    pub retry_backoff_max_ms: u64,
    /// Failures in a row that open an endpoint's breaker (`THALI_BREAKER_CONSECUTIVE_FAILURES`).
    pub breaker_consecutive_failures: u32,
    /// Failure percentage over the window that opens it (`THALI_BREAKER_FAILURE_RATE_PERCENT`).
    pub breaker_failure_rate_percent: u32,
    /// Calls in the window before the rate counts (`THALI_BREAKER_MIN_CALLS`).
    pub breaker_min_calls: u32,
    /// The failure-rate window, seconds (`THALI_BREAKER_WINDOW_S`).
    pub breaker_window_s: u64,
    /// First ejection, milliseconds (`THALI_BREAKER_BACKOFF_MIN_MS`).
    pub breaker_backoff_min_ms: u64,
    /// Longest ejection, milliseconds (`THALI_BREAKER_BACKOFF_MAX_MS`).
    pub breaker_backoff_max_ms: u64,
    /// How often a target given by DNS name is resolved again, seconds (`THALI_RESOLVE_INTERVAL_S`).
    pub resolve_interval_s: u64,
    /// Proxies whose `X-Forwarded-For` names the client, comma-separated addresses or CIDRs
    /// (`THALI_TRUSTED_PROXIES`); empty: the socket peer is the client.
    pub trusted_proxies: String,
    /// Origins a browser may call the REST API from, comma-separated and exact
    /// (`THALI_CORS_ORIGINS`, e.g. `https://app.example.com`); empty: no cross-origin calls.
    pub cors_origins: String,
    /// REST budget of an anonymous client address (`THALI_RATE_LIMIT_ANONYMOUS`, `100/min`).
    pub rate_limit_anonymous: String,
    /// REST budget of a signed-in account (`THALI_RATE_LIMIT_SIGNED_IN`, `300/min`).
    pub rate_limit_signed_in: String,
    /// Login attempts per (account, client address) (`THALI_RATE_LIMIT_LOGIN`, `10/min`).
    pub rate_limit_login: String,
    /// Login attempts per client address (`THALI_RATE_LIMIT_LOGIN_ADDRESS`, `30/min`).
    pub rate_limit_login_address: String,
    /// Registrations per client address (`THALI_RATE_LIMIT_REGISTER`, `5/min`).
    pub rate_limit_register: String,
    /// gRPC budget of a partner API key without a limit of its own (`THALI_RATE_LIMIT_API_KEY`,
    /// `600/min`).
    pub rate_limit_api_key: String,
    /// Razorpay webhook deliveries per payment account, counted once the signature checks out
    /// (`THALI_RATE_LIMIT_WEBHOOK`, `6000/min`); never the per-address limit.
    pub rate_limit_webhook: String,
    /// PEM certificate chain of this part's listeners (`THALI_TLS_CERT_FILE`); with the key,
    /// the facade serves HTTPS and the gRPC server TLS, 1.3 only (ADR 0028).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (`THALI_TLS_KEY_FILE`).
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates that other parts' certificates chain to (`THALI_TLS_CA_FILE`):
    /// clients verify servers with it, and servers clients under `tls_client_auth=required`.
    pub tls_ca_file: Option<PathBuf>,
    /// `none` (default) or `required`: whether gRPC clients must present a certificate
    /// (`THALI_TLS_CLIENT_AUTH`).
    pub tls_client_auth: String,
    /// Lets a public listener serve plain text on a non-loopback address
    /// (`THALI_ALLOW_PLAINTEXT`): TLS ends at an ingress or mesh in front.
    pub allow_plaintext: bool,
}

/// Values given on the command line; they win over every other source.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub http_addr: Option<String>,
    pub grpc_addr: Option<String>,
    pub data_dir: Option<String>,
    pub database_url: Option<String>,
    pub database_url_file: Option<String>,
    pub otlp_endpoint: Option<String>,
    pub log: Option<String>,
    pub log_format: Option<String>,
    pub storefront_url: Option<String>,
    pub identity_url: Option<String>,
    pub admin_addr: Option<String>,
}

/// A configuration value that cannot be used, named by its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Config {
    /// Loads from `./thali.toml` (or the file named by `THALI_CONFIG`), the process environment
    /// and `overrides`, then validates.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        let file = std::env::var("THALI_CONFIG").unwrap_or_else(|_| "thali.toml".to_owned());
        Self::load_from(Some(Path::new(&file)), None, overrides)
    }

    /// Loads from an optional file, an explicit environment (None: the process's) and overrides.
    pub fn load_from(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .set_default("http_addr", "127.0.0.1:8080")?
            .set_default("grpc_addr", "127.0.0.1:50051")?
            .set_default("data_dir", "./data")?
            .set_default("log", "info")?
            .set_default("log_format", "auto")?
            .set_default("access_log", "sampled:100")?
            .set_default("trace_sample_ratio", 1.0)?
            .set_default("rpc_timeout_ms", 5_000)?
            .set_default("connect_timeout_ms", 2_000)?
            .set_default("max_body_bytes", 64 * 1024)?
            .set_default("max_upload_bytes", 5 * 1024 * 1024)?
            .set_default("tenant", "default")?
            .set_default("admin_addr", "127.0.0.1:9464")?
            .set_default("max_concurrent_rpcs", 1_000)?
            .set_default("shutdown_grace_s", 25)?
            .set_default("edge_stale_if_error_s", 300)?
            .set_default("retry_budget_window_s", 10)?
            .set_default("retry_budget_min_per_s", 10)?
            .set_default("retry_budget_percent", 20)?
            .set_default("retry_backoff_base_ms", 25)?
            .set_default("retry_backoff_max_ms", 1_000)?
            .set_default("breaker_consecutive_failures", 5)?
            .set_default("breaker_failure_rate_percent", 50)?
            .set_default("breaker_min_calls", 20)?
            .set_default("breaker_window_s", 10)?
            .set_default("breaker_backoff_min_ms", 1_000)?
            .set_default("breaker_backoff_max_ms", 60_000)?
            .set_default("resolve_interval_s", 5)?
            .set_default("keys_refresh_s", 10)?
            .set_default("trusted_proxies", "")?
            .set_default("cors_origins", "")?
            .set_default("rate_limit_anonymous", "100/min")?
            .set_default("rate_limit_signed_in", "300/min")?
            .set_default("rate_limit_login", "10/min")?
            .set_default("rate_limit_login_address", "30/min")?
            .set_default("rate_limit_register", "5/min")?
            .set_default("rate_limit_api_key", "600/min")?
            .set_default("rate_limit_webhook", "6000/min")?
            .set_default("tls_client_auth", "none")?
            .set_default("allow_plaintext", false)?
            .set_default("mail_from", "Thali <no-reply@thali.localhost>")?
            .set_default("mail_timeout_s", 30)?
            .set_default("webhooks_allow_insecure", false)?
            .set_default("s3_region", "us-east-1")?
            .set_default("s3_path_style", true)?
            .set_default("app_url", "http://localhost:3000")?
            .set_default("sandbox_addr", "127.0.0.1:8090")?
            .set_default("gateway_timeout_s", 10)?;
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(false));
        }
        let mut environment = config::Environment::with_prefix("THALI").try_parsing(true);
        if env.is_some() {
            environment = environment.source(env);
        }
        let mut cfg: Config = builder
            .add_source(environment.ignore_empty(true))
            .set_override_option("http_addr", overrides.http_addr.clone())?
            .set_override_option("grpc_addr", overrides.grpc_addr.clone())?
            .set_override_option("data_dir", overrides.data_dir.clone())?
            .set_override_option("database_url", overrides.database_url.clone())?
            .set_override_option("database_url_file", overrides.database_url_file.clone())?
            .set_override_option("otlp_endpoint", overrides.otlp_endpoint.clone())?
            .set_override_option("log", overrides.log.clone())?
            .set_override_option("log_format", overrides.log_format.clone())?
            .set_override_option("storefront_url", overrides.storefront_url.clone())?
            .set_override_option("identity_url", overrides.identity_url.clone())?
            .set_override_option("admin_addr", overrides.admin_addr.clone())?
            .build()?
            .try_deserialize()?;
        cfg.read_secret_files()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Secrets given as files (`*_FILE`): read now, so a missing or empty file stops the start
    /// with its key named. A value and its file together are refused (which one wins would be
    /// a guess).
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        for (key, value, file) in [
            ("database_url_file", &mut self.database_url, &self.database_url_file),
            ("redis_url_file", &mut self.redis_url, &self.redis_url_file),
        ] {
            let Some(file) = file else { continue };
            if value.is_some() {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("set either {} or {key}, not both", key.trim_end_matches("_file")),
                });
            }
            *value = Some(crate::secret::read_file(file).map_err(|reason| ConfigError::Invalid { key, reason })?);
        }
        Ok(())
    }

    /// This part's TLS files, when it serves TLS.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert_file.clone()?,
            key: self.tls_key_file.clone()?,
            ca: self.tls_ca_file.clone(),
            client_auth: self.tls_client_auth == "required",
        })
    }

    /// Refuses to serve `listener` in plain text on a non-loopback `addr` unless
    /// `allow_plaintext` says TLS ends in front of it.
    pub fn check_plaintext(&self, listener: &'static str, addr: SocketAddr) -> Result<(), ConfigError> {
        if self.tls_files().is_some() || self.allow_plaintext || addr.ip().is_loopback() {
            return Ok(());
        }
        Err(ConfigError::Invalid {
            key: "tls_cert_file",
            reason: format!(
                "the {listener} listener on {addr} would serve plain text on a non-loopback address: \
                 set THALI_TLS_CERT_FILE and THALI_TLS_KEY_FILE (`thali dev-certs` makes a local set), \
                 or THALI_ALLOW_PLAINTEXT=true when TLS ends in front of it"
            ),
        })
    }

    /// The trusted proxies (validated at load).
    pub fn trusted_proxies(&self) -> crate::net::TrustedProxies {
        crate::net::TrustedProxies::parse(&self.trusted_proxies).unwrap_or_default()
    }

    /// The CORS origins (validated at load).
    pub fn cors_origins(&self) -> Vec<String> {
        parse_origins(&self.cors_origins).unwrap_or_default()
    }

    /// The access-log policy (validated at load).
    pub fn access_log(&self) -> AccessLog {
        AccessLog::parse(&self.access_log).unwrap_or(AccessLog::All)
    }

    /// Checks what serde cannot: relations between values and URL shapes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(reason) = AccessLog::parse(&self.access_log) {
            return Err(ConfigError::Invalid {
                key: "access_log",
                reason,
            });
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(ConfigError::Invalid {
                key: "trace_sample_ratio",
                reason: format!("{} is not between 0.0 and 1.0", self.trace_sample_ratio),
            });
        }
        if let Some(url) = self.database_url.as_ref().map(Secret::expose)
            && !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid {
                key: "database_url",
                reason: "must start with sqlite:, postgres:// or postgresql://".into(),
            });
        }
        if let Some(url) = &self.otlp_endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                key: "otlp_endpoint",
                reason: format!("`{url}` is not an http(s) URL"),
            });
        }
        for (key, value) in [
            ("storefront_url", &self.storefront_url),
            ("identity_url", &self.identity_url),
            ("notifications_url", &self.notifications_url),
            ("booking_url", &self.booking_url),
            ("payments_url", &self.payments_url),
        ] {
            if let Some(spec) = value
                && let Err(reason) = crate::client::Discovery::parse(spec)
            {
                return Err(ConfigError::Invalid { key, reason });
            }
        }
        let invalid = |key: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if !(1..=60).contains(&self.retry_budget_window_s) {
            return invalid("retry_budget_window_s", "must be 1 to 60");
        }
        if self.retry_budget_percent > 1000 {
            return invalid("retry_budget_percent", "must be 0 to 1000");
        }
        if self.retry_backoff_base_ms == 0 || self.retry_backoff_max_ms < self.retry_backoff_base_ms {
            return invalid(
                "retry_backoff_max_ms",
                "needs 0 < retry_backoff_base_ms <= retry_backoff_max_ms",
            );
        }
        if self.breaker_consecutive_failures == 0 {
            return invalid("breaker_consecutive_failures", "must be above 0");
        }
        if !(1..=100).contains(&self.breaker_failure_rate_percent) {
            return invalid("breaker_failure_rate_percent", "must be 1 to 100");
        }
        if self.breaker_window_s == 0 {
            return invalid("breaker_window_s", "must be above 0");
        }
        if self.breaker_backoff_min_ms == 0 || self.breaker_backoff_max_ms < self.breaker_backoff_min_ms {
            return invalid(
                "breaker_backoff_max_ms",
                "needs 0 < breaker_backoff_min_ms <= breaker_backoff_max_ms",
            );
        }
        if self.resolve_interval_s == 0 {
            return invalid("resolve_interval_s", "must be above 0");
        }
        if let Err(reason) = crate::net::TrustedProxies::parse(&self.trusted_proxies) {
            return invalid("trusted_proxies", &reason);
        }
        if let Err(reason) = parse_origins(&self.cors_origins) {
            return invalid("cors_origins", &reason);
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return invalid("tls_cert_file", "tls_cert_file and tls_key_file go together");
        }
        match self.tls_client_auth.as_str() {
            "none" => {}
            "required" if self.tls_ca_file.is_some() && self.tls_cert_file.is_some() => {}
            "required" => {
                return invalid(
                    "tls_client_auth",
                    "required needs tls_ca_file, tls_cert_file and tls_key_file",
                );
            }
            _ => return invalid("tls_client_auth", "must be none or required"),
        }
        for (key, spec) in [
            ("rate_limit_anonymous", &self.rate_limit_anonymous),
            ("rate_limit_signed_in", &self.rate_limit_signed_in),
            ("rate_limit_login", &self.rate_limit_login),
            ("rate_limit_login_address", &self.rate_limit_login_address),
            ("rate_limit_register", &self.rate_limit_register),
            ("rate_limit_api_key", &self.rate_limit_api_key),
            ("rate_limit_webhook", &self.rate_limit_webhook),
        ] {
            if let Err(reason) = crate::ratelimit::Quota::parse(spec) {
                return invalid(key, &reason);
            }
        }
        if let Some(url) = &self.smtp_url
            && !(url.starts_with("smtp://") || url.starts_with("smtps://"))
        {
            return invalid("smtp_url", "must start with smtp:// or smtps://");
        }
        if !(self.app_url.starts_with("https://") || self.app_url.starts_with("http://")) {
            return invalid("app_url", "must be an http(s) URL");
        }
        if let Some(url) = &self.razorpay_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return invalid("razorpay_url", "must be an http(s) URL");
        }
        if self.razorpay_url.is_some()
            && (self.razorpay_key_id.is_none()
                || self.razorpay_key_secret_file.is_none()
                || self.razorpay_webhook_secret_file.is_none())
        {
            return invalid(
                "razorpay_url",
                "needs razorpay_key_id, razorpay_key_secret_file and razorpay_webhook_secret_file",
            );
        }
        if let Some(url) = &self.s3_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return invalid("s3_url", "must be an http(s) URL");
            }
            if self.s3_bucket.is_none() || self.s3_access_key_id.is_none() || self.s3_secret_access_key_file.is_none() {
                return invalid(
                    "s3_url",
                    "needs s3_bucket, s3_access_key_id and s3_secret_access_key_file",
                );
            }
        }
        if !(1..=3600).contains(&self.keys_refresh_s) {
            return invalid("keys_refresh_s", "must be 1 to 3600");
        }
        if !(1..=120).contains(&self.gateway_timeout_s) {
            return invalid("gateway_timeout_s", "must be 1 to 120");
        }
        if self.mail_timeout_s == 0 {
            return invalid("mail_timeout_s", "must be above 0");
        }
        // The job workers keep one connection of the pool for LISTEN (PostgreSQL).
        if self.db_max_connections.is_some_and(|n| !(2..=10_000).contains(&n)) {
            return invalid("db_max_connections", "must be between 2 and 10000");
        }
        if self.max_concurrent_rpcs == 0 {
            return invalid("max_concurrent_rpcs", "must be above 0");
        }
        if let Some(url) = self.redis_url.as_ref().map(Secret::expose)
            && !["redis://", "rediss://", "redis-sentinel://", "redis-cluster://"]
                .iter()
                .any(|p| url.starts_with(p))
        {
            return Err(ConfigError::Invalid {
                key: "redis_url",
                reason: "must start with redis://, rediss://, redis-sentinel:// or redis-cluster://".into(),
            });
        }
        if self.tenant.is_empty()
            || !self
                .tenant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::Invalid {
                key: "tenant",
                reason: "must be letters, digits, '-' or '_'".into(),
            });
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(ConfigError::Invalid {
                key: "log",
                reason: e.to_string(),
            });
        }
        if self.rpc_timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "rpc_timeout_ms",
                reason: "must be above 0".into(),
            });
        }
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "max_body_bytes",
                reason: "must be at least 1024".into(),
            });
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_upload_bytes) {
            return Err(ConfigError::Invalid {
                key: "max_upload_bytes",
                reason: "must be from 1024 to 67108864 (64 MiB)".into(),
            });
        }
        Ok(())
    }

    /// The database URL in use: the configured one or the embedded SQLite file.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("thali.db").display()),
        }
    }

    /// Directory of the JWT keys.
    pub fn keys_dir(&self) -> PathBuf {
        self.keys_dir.clone().unwrap_or_else(|| self.data_dir.join("keys"))
    }

    /// Directory of the other parts' public keys.
    pub fn trusted_keys_dir(&self) -> PathBuf {
        self.trusted_keys_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("trusted-keys"))
    }

    /// How often keys are re-read.
    pub fn keys_refresh(&self) -> Duration {
        Duration::from_secs(self.keys_refresh_s)
    }

    /// The data keys file.
    pub fn data_keys_file(&self) -> PathBuf {
        self.data_keys_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("data-keys.json"))
    }

    /// Where `.eml` files go when no SMTP server is configured.
    pub fn mail_dir(&self) -> PathBuf {
        self.data_dir.join("mail")
    }

    /// Where the embedded object store keeps uploaded media, and its link-signing key.
    pub fn media_dir(&self) -> PathBuf {
        self.data_dir.join("media")
    }

    /// Where embedded mode keeps the sandbox gateway's platform account and its state.
    pub fn sandbox_dir(&self) -> PathBuf {
        self.data_dir.join("sandbox-gateway")
    }

    /// Total time one gateway call may take.
    pub fn gateway_timeout(&self) -> Duration {
        Duration::from_secs(self.gateway_timeout_s)
    }

    /// Longest time one email send may take.
    pub fn mail_timeout(&self) -> Duration {
        Duration::from_secs(self.mail_timeout_s)
    }

    /// Deadline of one internal call.
    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms)
    }

    /// Connect timeout towards another service.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// Time in-flight calls get after SIGTERM.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_s)
    }

    /// Every number of the client stack.
    pub fn client_settings(&self) -> crate::client::ClientSettings {
        crate::client::ClientSettings {
            deadline: self.rpc_timeout(),
            connect_timeout: self.connect_timeout(),
            retry: crate::client::RetrySettings {
                budget_window: Duration::from_secs(self.retry_budget_window_s),
                budget_min_per_sec: self.retry_budget_min_per_s,
                budget_ratio: self.retry_budget_percent as f32 / 100.0,
                backoff_base: Duration::from_millis(self.retry_backoff_base_ms),
                backoff_max: Duration::from_millis(self.retry_backoff_max_ms),
            },
            breaker: crate::client::BreakerSettings {
                consecutive_failures: self.breaker_consecutive_failures,
                failure_rate: f64::from(self.breaker_failure_rate_percent) / 100.0,
                min_calls: self.breaker_min_calls,
                window: Duration::from_secs(self.breaker_window_s),
                backoff_min: Duration::from_millis(self.breaker_backoff_min_ms),
                backoff_max: Duration::from_millis(self.breaker_backoff_max_ms),
            },
            resolve_every: Duration::from_secs(self.resolve_interval_s),
            tls: None,
        }
    }

    /// TLS of the calls to other parts (`https://` URLs): servers verified against
    /// `tls_ca_file`; this part's certificate presented when it has one (mutual TLS), re-read
    /// when its files change.
    pub fn client_tls(&self) -> Result<Option<crate::tls::ClientTls>, ConfigError> {
        let Some(ca) = &self.tls_ca_file else {
            return Ok(None);
        };
        crate::tls::ClientTls::load(ca, self.tls_files().as_ref())
            .map(Some)
            .map_err(|e| ConfigError::Invalid {
                key: "tls_ca_file",
                reason: e.to_string(),
            })
    }

    /// The URL of this process's own gRPC server at `addr` (https when it serves TLS).
    pub fn own_grpc_url(&self, addr: SocketAddr) -> String {
        let scheme = if self.tls_files().is_some() { "https" } else { "http" };
        let addr = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
            }
            _ => addr,
        };
        format!("{scheme}://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let cfg = Config::load_from(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(cfg.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(cfg.log_format, LogFormat::Auto);
        assert_eq!(cfg.access_log(), AccessLog::Sampled(100));
        assert_eq!(cfg.trace_sample_ratio, 1.0);
        assert!(cfg.database_url().starts_with("sqlite://./data/thali.db"));
        assert_eq!(cfg.admin_addr.to_string(), "127.0.0.1:9464");
        let client = cfg.client_settings();
        assert_eq!(client.retry.budget_window, Duration::from_secs(10));
        assert_eq!(client.retry.budget_min_per_sec, 10);
        assert!((client.retry.budget_ratio - 0.2).abs() < f32::EPSILON);
        assert_eq!(client.retry.backoff_base, Duration::from_millis(25));
        assert_eq!(client.retry.backoff_max, Duration::from_secs(1));
        assert_eq!(client.breaker.consecutive_failures, 5);
        assert_eq!(client.breaker.min_calls, 20);
        assert_eq!(client.breaker.backoff_max, Duration::from_secs(60));
        assert_eq!(cfg.max_concurrent_rpcs, 1000);
        assert_eq!(cfg.shutdown_grace(), Duration::from_secs(25));
    }

    #[test]
    fn connection_urls_with_passwords_come_from_files_and_never_print() {
        let dir = std::env::temp_dir().join(format!("thali-cfg-secret-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let (db, redis) = (dir.join("db"), dir.join("redis"));
        std::fs::write(&db, "postgres://thali:pg-pass-123@db:5432/thali\n").unwrap();
        std::fs::write(&redis, "redis://:redis-pass-456@cache:6379/").unwrap();
        let (db_s, redis_s) = (db.display().to_string(), redis.display().to_string());
        let cfg = Config::load_from(
            None,
            env(&[("THALI_DATABASE_URL_FILE", &db_s), ("THALI_REDIS_URL_FILE", &redis_s)]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(cfg.database_url(), "postgres://thali:pg-pass-123@db:5432/thali");
        assert_eq!(
            cfg.redis_url.as_ref().unwrap().expose(),
            "redis://:redis-pass-456@cache:6379/"
        );
        let printed = format!("{cfg:?}");
        assert!(
            !printed.contains("pg-pass-123") && !printed.contains("redis-pass-456"),
            "{printed}"
        );

        // The command line names the file, never the password.
        let flags = Overrides {
            database_url_file: Some(db_s.clone()),
            ..Overrides::default()
        };
        assert_eq!(
            Config::load_from(None, env(&[]), &flags).unwrap().database_url(),
            "postgres://thali:pg-pass-123@db:5432/thali"
        );

        let both = Config::load_from(
            None,
            env(&[
                ("THALI_DATABASE_URL", "sqlite::memory:"),
                ("THALI_DATABASE_URL_FILE", &db_s),
            ]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(both.contains("not both"), "{both}");
        std::fs::write(&redis, "\n").unwrap();
        let empty = Config::load_from(None, env(&[("THALI_REDIS_URL_FILE", &redis_s)]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(empty.contains("redis_url_file") && empty.contains("empty"), "{empty}");
        let missing = Config::load_from(
            None,
            env(&[("THALI_DATABASE_URL_FILE", "/nonexistent/db-url")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(missing.contains("/nonexistent/db-url"), "{missing}");
        // A bad URL read from a file is refused like one given directly, without echoing it.
        std::fs::write(&db, "mysql://root:pw-789@db/thali").unwrap();
        let bad = Config::load_from(None, env(&[("THALI_DATABASE_URL_FILE", &db_s)]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(bad.contains("database_url") && !bad.contains("pw-789"), "{bad}");
    }

    #[test]
    fn service_urls_take_a_list_or_one_name() {
        let ok = Config::load_from(
            None,
            env(&[
                ("THALI_STOREFRONT_URL", "http://10.0.0.1:50051,http://10.0.0.2:50051"),
                ("THALI_IDENTITY_URL", "http://identity-headless:50051"),
            ]),
            &Overrides::default(),
        );
        assert!(ok.is_ok());
        let err = Config::load_from(
            None,
            env(&[("THALI_STOREFRONT_URL", "http://a:1,ftp://b")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("storefront_url"), "{err}");
        let err = Config::load_from(
            None,
            env(&[("THALI_RETRY_BUDGET_WINDOW_S", "90")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("retry_budget_window_s"), "{err}");
        for refused in ["0", "1", "10001"] {
            let err = Config::load_from(
                None,
                env(&[("THALI_DB_MAX_CONNECTIONS", refused)]),
                &Overrides::default(),
            )
            .unwrap_err();
            assert!(err.to_string().contains("db_max_connections"), "{refused}: {err}");
        }
        let cfg = Config::load_from(None, env(&[("THALI_DB_MAX_CONNECTIONS", "12")]), &Overrides::default()).unwrap();
        assert_eq!(cfg.db_max_connections, Some(12));
        let cfg = Config::load_from(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(cfg.db_max_connections, None);
    }

    #[test]
    fn environment_then_flags_override_defaults() {
        let overrides = Overrides {
            http_addr: Some("127.0.0.1:9000".into()),
            ..Default::default()
        };
        let cfg = Config::load_from(
            None,
            env(&[
                ("THALI_HTTP_ADDR", "127.0.0.1:7000"),
                ("THALI_GRPC_ADDR", "127.0.0.1:7001"),
                ("THALI_LOG_FORMAT", "pretty"),
            ]),
            &overrides,
        )
        .unwrap();
        assert_eq!(cfg.http_addr.to_string(), "127.0.0.1:9000");
        assert_eq!(cfg.grpc_addr.to_string(), "127.0.0.1:7001");
        assert_eq!(cfg.log_format, LogFormat::Pretty);
    }

    #[test]
    fn file_values_sit_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("thali-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("thali.toml");
        std::fs::write(&file, "grpc_addr = \"127.0.0.1:6001\"\nlog = \"debug\"\n").unwrap();
        let cfg = Config::load_from(Some(&file), env(&[("THALI_LOG", "warn")]), &Overrides::default()).unwrap();
        assert_eq!(cfg.grpc_addr.to_string(), "127.0.0.1:6001");
        assert_eq!(cfg.log, "warn");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err =
            Config::load_from(None, env(&[("THALI_DATABASE_URL", "mysql://x")]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("database_url"), "{err}");
        let err =
            Config::load_from(None, env(&[("THALI_HTTP_ADDR", "not-an-addr")]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("http_addr"), "{err}");
        let err = Config::load_from(None, env(&[("THALI_LOG_FORMAT", "xml")]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("log_format"), "{err}");
        for bad in ["some", "sampled:0", "sampled:x"] {
            let err = Config::load_from(None, env(&[("THALI_ACCESS_LOG", bad)]), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("access_log"), "{err}");
        }
        let err =
            Config::load_from(None, env(&[("THALI_TRACE_SAMPLE_RATIO", "1.5")]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("trace_sample_ratio"), "{err}");
        for (key, bad) in [
            ("THALI_TRUSTED_PROXIES", "10.0.0.0/40"),
            ("THALI_CORS_ORIGINS", "*"),
            ("THALI_CORS_ORIGINS", "https://app.example.com/path"),
            ("THALI_CORS_ORIGINS", "app.example.com"),
            ("THALI_RATE_LIMIT_ANONYMOUS", "100"),
            ("THALI_RATE_LIMIT_REGISTER", "0/min"),
        ] {
            let err = Config::load_from(None, env(&[(key, bad)]), &Overrides::default()).unwrap_err();
            let want = key.trim_start_matches("THALI_").to_lowercase();
            assert!(err.to_string().contains(&want), "{key}={bad}: {err}");
        }
        let cfg = Config::load_from(
            None,
            env(&[
                ("THALI_TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1"),
                ("THALI_CORS_ORIGINS", "https://App.example.com, http://localhost:3000"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(cfg.trusted_proxies().trusts("10.9.8.7".parse().unwrap()));
        assert_eq!(cfg.cors_origins(), ["https://app.example.com", "http://localhost:3000"]);
    }

    #[test]
    fn the_log_format_follows_the_terminal_unless_set() {
        assert_eq!(LogFormat::Auto.resolve(true), LogFormat::Pretty);
        assert_eq!(LogFormat::Auto.resolve(false), LogFormat::Json);
        assert_eq!(LogFormat::Json.resolve(true), LogFormat::Json);
        assert_eq!(LogFormat::Pretty.resolve(false), LogFormat::Pretty);
        let cfg = Config::load_from(
            None,
            env(&[("THALI_ACCESS_LOG", "errors"), ("THALI_TRACE_SAMPLE_RATIO", "0.25")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(cfg.access_log(), AccessLog::Errors);
        assert_eq!(cfg.trace_sample_ratio, 0.25);
        assert_eq!(AccessLog::parse("all"), Ok(AccessLog::All));
        assert_eq!(AccessLog::parse("sampled:7"), Ok(AccessLog::Sampled(7)));
    }
}
