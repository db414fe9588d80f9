//! `thali`: serve the platform, migrate its database, mint operator tokens.
#![forbid(unsafe_code)]

use std::time::Duration;

mod backup;
mod progress;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use thali::Part;
use thali_platform::{
    Config,
    auth::{Signer, ensure_key_pair},
    config::Overrides,
};

#[derive(Parser)]
#[command(name = "thali", version, about = "Thali commerce platform")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ConfigFlags,
}

/// Each flag wins over `thali.toml` and the `THALI_*` environment.
#[derive(Args, Clone, Default)]
struct ConfigFlags {
    /// REST facade address [THALI_HTTP_ADDR; default 127.0.0.1:8080]
    #[arg(long, global = true)]
    http_addr: Option<String>,
    /// gRPC address [THALI_GRPC_ADDR; default 127.0.0.1:50051]
    #[arg(long, global = true)]
    grpc_addr: Option<String>,
    /// Data directory [THALI_DATA_DIR; default ./data]
    #[arg(long, global = true)]
    data_dir: Option<String>,
    /// Database URL without a password [THALI_DATABASE_URL; default SQLite in the data dir]
    /// (a URL with a password goes in a file: --database-url-file)
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// File holding the database URL [THALI_DATABASE_URL_FILE]
    #[arg(long, global = true)]
    database_url_file: Option<String>,
    /// OTLP/gRPC endpoint for traces [THALI_OTLP_ENDPOINT; default: no export]
    #[arg(long, global = true)]
    otlp_endpoint: Option<String>,
    /// Log filter [THALI_LOG; default info]
    #[arg(long, global = true)]
    log: Option<String>,
    /// json or pretty [THALI_LOG_FORMAT; default json]
    #[arg(long, global = true)]
    log_format: Option<String>,
    /// Storefront service URL for the facade [THALI_STOREFRONT_URL]
    #[arg(long, global = true)]
    storefront_url: Option<String>,
    /// Identity service URL for the facade and other services [THALI_IDENTITY_URL]
    #[arg(long, global = true)]
    identity_url: Option<String>,
    /// Admin listener: /metrics, /healthz, /readyz [THALI_ADMIN_ADDR; default 127.0.0.1:9464]
    #[arg(long, global = true)]
    admin_addr: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform (default: all parts in one process).
    Serve {
        #[arg(value_enum, default_value = "all")]
        part: Part,
    },
    /// Run the Razorpay-compatible sandbox gateway alone (on THALI_SANDBOX_ADDR, state under
    /// <data dir>/sandbox-gateway/). Registers the platform account of THALI_RAZORPAY_KEY_ID and
    /// its key files when they are set; more test accounts with `POST /sandbox/accounts`.
    SandboxGateway,
    /// Apply pending database migrations.
    Migrate,
    /// Mint an access token with the local signing key (operator tool).
    Token {
        /// Subject (account id) of the token.
        #[arg(long)]
        sub: String,
        /// Role to grant; repeat for several.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime in hours (at most a year).
        #[arg(long, default_value_t = 168, value_parser = clap::value_parser!(u64).range(1..=8760))]
        ttl_hours: u64,
    },
    /// Write a local CA and a certificate for every part (TLS 1.3 between all of them): the CA
    /// is made once, each run issues a new certificate from it (a rotation).
    DevCerts {
        /// Where the files go.
        #[arg(long, default_value = "./data/tls")]
        dir: std::path::PathBuf,
        /// Another name (or address) the certificate must hold; repeat for several.
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Manage the JWT signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage accounts (operator tool).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Inspect and retry Razorpay webhooks whose processing failed (operator tool).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Inspect and manage the durable job queue (operator tool).
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Check and export the tamper-evident audit trail (operator tool).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Back up the database and the embedded media into a new directory, with a manifest of
    /// sizes, SHA-256 checksums, row counts and the key files it needs (ADR 0034).
    #[command(args_conflicts_with_subcommands = true)]
    Backup {
        #[command(subcommand)]
        command: Option<BackupCommand>,
        /// Where the backup goes (a new or empty directory) [default: <data dir>/backups/<UTC time>]
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Retention: keep this many newest backups beside the new one (their directory's other
        /// backups are removed; anything that is not a backup is left alone).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        keep: Option<u64>,
        /// After a successful backup, write its time, size and duration to this file in
        /// Prometheus text format, for node_exporter's textfile collector (alert BackupMissing).
        #[arg(long, env = "THALI_BACKUP_METRICS_FILE")]
        metrics_file: Option<std::path::PathBuf>,
    },
    /// Restore a backup into the configured database, which must be empty; stop the platform
    /// first. Checksums and the data keys file are checked before anything is written; the
    /// database is restored in one step.
    Restore {
        /// The backup's directory.
        dir: std::path::PathBuf,
        /// Replace a database that holds tables.
        #[arg(long)]
        replace: bool,
        /// Restore although the data keys file present is not the backup's (it still holds the
        /// backup's keys, say, with newer ones added).
        #[arg(long)]
        skip_keys_check: bool,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Check a backup: every checksum, then a restore into a scratch database (removed after)
    /// whose integrity, row counts and audit chains are checked; exits 1 on a finding.
    Verify {
        /// The backup's directory.
        dir: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk each service's hash chain from its first row and name the first broken link (a row
    /// edited, deleted or reordered); exits 1 when one is found.
    Verify {
        /// One service's chain (identity, payments, …); default every chain in the database.
        #[arg(long)]
        service: Option<String>,
        /// A head logged earlier ("audit chain head" lines): SEQ:HASH must still be on the chain
        /// (with --service).
        #[arg(long, requires = "service")]
        head: Option<String>,
    },
    /// Write the rows at or after --since as JSON lines (oldest first, per service).
    Export {
        /// RFC 3339 time, e.g. 2026-12-01T00:00:00Z.
        #[arg(long)]
        since: String,
        #[arg(long)]
        service: Option<String>,
        /// A file to write; default standard output.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Webhooks waiting for a retry or dead, oldest first.
    List {
        /// Only dead ones.
        #[arg(long)]
        dead: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
    },
    /// Send one back for processing now, with fresh retries (after fixing the cause).
    Redrive {
        /// The row's id (from `thali dlq list`).
        id: String,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// Only dead jobs.
        #[arg(long)]
        dead: bool,
        /// Only jobs in this state: queued, running, done or dead.
        #[arg(long, conflicts_with = "dead")]
        state: Option<String>,
        /// Only jobs of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only jobs of this service (identity, storefront, …).
        #[arg(long)]
        service: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
    },
    /// Send a dead job (or every dead job of a kind) back to the queue with fresh attempts.
    Retry {
        /// The job's id.
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        id: Option<i64>,
        /// Every dead job (of --kind, which is then required).
        #[arg(long, requires = "kind")]
        all_dead: bool,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        service: Option<String>,
    },
    /// Delete dead jobs that died before the given age.
    Purge {
        /// Dead jobs (the only kind of job an operator purges; done jobs are purged hourly).
        #[arg(long, required = true)]
        dead: bool,
        /// Age such as 30d, 12h, 45m.
        #[arg(long, value_parser = parse_age)]
        older_than: std::time::Duration,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        service: Option<String>,
    },
}

fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    thali_platform::jobs::admin::parse_age(s).ok_or_else(|| format!("`{s}` is not an age such as 30d, 12h, 45m or 90s"))
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an Ed25519 key pair in this part's keys dir (THALI_KEYS_DIR) and make it the
    /// active one, unless the dir holds a key; prints the active key id.
    Init,
    /// Add a new key pair, NOT yet signing: publish it first (identity's key set lists it at
    /// once; a service's key is copied with `publish`), wait for the key refresh interval, then
    /// `activate` it (ADR 0029).
    Add,
    /// Make a key of the keys dir the one that signs (running processes switch within
    /// THALI_KEYS_REFRESH_S).
    Activate { kid: String },
    /// Remove a key that no longer signs, once the tokens it signed have expired (user tokens:
    /// 7 days; service tokens: 5 minutes).
    Retire { kid: String },
    /// Copy this part's public keys into another part's trusted keys dir as `<owner>.<kid>.pub`.
    Publish {
        /// The part these keys belong to (identity, storefront, notifications, booking,
        /// payments, facade).
        #[arg(long)]
        owner: String,
        /// The trusted keys dir to write into.
        #[arg(long)]
        to: std::path::PathBuf,
    },
    /// List the key ids of the keys dir and which one signs.
    List,
    /// Rotate the data keys that encrypt secrets at rest (creators' gateway secrets): add a new
    /// active key to THALI_DATA_KEYS_FILE, then re-encrypt every stored secret with it, showing
    /// progress. Services keep running: they load the new key when they first meet it.
    RotateData {
        /// Do not add a key: re-encrypt with the active one (after an interrupted run, or after
        /// `--add-key-only` once every replica has the new file).
        #[arg(long, conflicts_with = "add_key_only")]
        resume: bool,
        /// Only add the new active key to the file (to distribute it before re-encrypting).
        #[arg(long)]
        add_key_only: bool,
        /// Rows per batch.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10000))]
        batch: u64,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Create an account; the password is read from standard input (one line).
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "Administrator")]
        display_name: String,
        /// Make it an administrator (the only way to get one).
        #[arg(long)]
        admin: bool,
        /// Role when not --admin: buyer, creator or restaurant_owner.
        #[arg(long, default_value = "buyer")]
        role: String,
    },
}

/// A database URL without its password, for printing.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl From<ConfigFlags> for Overrides {
    fn from(f: ConfigFlags) -> Self {
        Overrides {
            http_addr: f.http_addr,
            grpc_addr: f.grpc_addr,
            data_dir: f.data_dir,
            database_url: f.database_url,
            database_url_file: f.database_url_file,
            otlp_endpoint: f.otlp_endpoint,
            log: f.log,
            log_format: f.log_format,
            storefront_url: f.storefront_url,
            identity_url: f.identity_url,
            admin_addr: f.admin_addr,
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

async fn jobs(cfg: &Config, command: JobsCommand) -> anyhow::Result<()> {
    use thali_platform::jobs::{JobState, admin};
    let db = thali::migrated(cfg).await?;
    let now = chrono::Utc::now();
    match command {
        JobsCommand::List {
            dead,
            state,
            kind,
            service,
            limit,
        } => {
            let state = match (dead, state) {
                (true, _) => Some(JobState::Dead),
                (false, Some(s)) => Some(
                    JobState::parse(&s)
                        .with_context(|| format!("--state `{s}`: one of queued, running, done, dead"))?,
                ),
                (false, None) => None,
            };
            let filter = admin::Filter { service, kind, state };
            let rows = admin::list(&db, &filter, limit).await?;
            println!(
                "{:>8}  {:<11} {:<32} {:<8} {:>3}  {:<20}  last error",
                "id", "service", "kind", "state", "try", "run at / finished"
            );
            for j in &rows {
                let when = j.finished_at.unwrap_or(j.run_at).format("%Y-%m-%d %H:%M:%S");
                let error: String = j.last_error.as_deref().unwrap_or("").chars().take(80).collect();
                println!(
                    "{:>8}  {:<11} {:<32} {:<8} {:>3}  {:<20}  {error}",
                    j.id, j.service, j.kind, j.state, j.attempts, when
                );
            }
            eprintln!("{} job(s)", rows.len());
        }
        JobsCommand::Retry {
            id: Some(id), service, ..
        } => {
            anyhow::ensure!(
                admin::retry(&db, id, service.as_deref(), now).await?,
                "job {id} is not a dead job{}",
                service.map(|s| format!(" of {s}")).unwrap_or_default()
            );
            println!("job {id} queued again");
        }
        JobsCommand::Retry { kind, service, .. } => {
            let filter = admin::Filter {
                service,
                kind,
                state: None,
            };
            let n = admin::retry_all_dead(&db, &filter, now).await?;
            println!("{n} dead job(s) queued again");
        }
        JobsCommand::Purge {
            older_than,
            kind,
            service,
            ..
        } => {
            let before = now - chrono::TimeDelta::from_std(older_than).context("--older-than is too long")?;
            let filter = admin::Filter {
                service,
                kind,
                state: None,
            };
            let n = admin::purge(&db, JobState::Dead, &filter, before).await?;
            println!(
                "{n} dead job(s) purged (dead before {})",
                before.format("%Y-%m-%d %H:%M:%S")
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let result = run().await;
    // Log lines are written by a thread of their own: whatever it still holds goes out first.
    thali_platform::logwriter::flush_stdout();
    result
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(&cli.config.clone().into())?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command.unwrap_or(Command::Serve { part: Part::All }) {
        Command::Serve { part } => {
            let name = match part {
                Part::All => "thali",
                Part::Identity => "thali-identity",
                Part::Storefront => "thali-storefront",
                Part::Notifications => "thali-notifications",
                Part::Booking => "thali-booking",
                Part::Payments => "thali-payments",
                Part::Facade => "thali-facade",
            };
            let telemetry = thali_platform::telemetry::init(&cfg, name)?;
            let platform = thali::start(&cfg, part).await?;
            if let Some(addr) = platform.grpc_addr {
                println!("thali: gRPC services on {addr} (reflection on; try `grpcurl -plaintext {addr} list`)");
            }
            if let Some(addr) = platform.http_addr {
                println!("thali: REST facade on http://{addr}/api/v1 (docs: http://{addr}/docs)");
            }
            let admin = platform.admin_addr;
            println!("thali: admin on http://{admin} (/metrics, /healthz, /readyz)");
            if let Some(addr) = platform.sandbox_addr {
                println!(
                    "thali: sandbox payment gateway on http://{addr} (Razorpay's API; pay an order at \
                     http://{addr}/sandbox/checkout/{{gateway_order_id}})"
                );
            }
            if part == Part::All {
                println!(
                    "thali: data in {} (database {})",
                    cfg.data_dir.display(),
                    redacted(&cfg.database_url())
                );
                if cfg.smtp_url.is_none() {
                    println!("thali: mail written as .eml files to {}", cfg.mail_dir().display());
                }
            }
            tracing::info!(part = ?part, "serving");
            let result = platform.run_until(shutdown_signal()).await;
            tracing::info!("stopped");
            telemetry.shutdown();
            result
        }
        Command::SandboxGateway => {
            let telemetry = thali_platform::telemetry::init(&cfg, "thali-sandbox-gateway")?;
            let dir = cfg.sandbox_dir();
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let sandbox = thali_payments::sandbox::Sandbox::with_state_file(
                thali_payments::sandbox::SandboxOptions::default(),
                dir.join("state.json"),
            )
            .context("starting the sandbox gateway")?;
            // The platform account, when configured, exists from the start (docker-compose
            // points payments at this sandbox with the same key files).
            if let (Some(key_id), Some(secret), Some(webhook)) = (
                &cfg.razorpay_key_id,
                &cfg.razorpay_key_secret_file,
                &cfg.razorpay_webhook_secret_file,
            ) {
                let read = |path: &std::path::PathBuf| {
                    std::fs::read_to_string(path)
                        .map(|t| t.trim().to_owned())
                        .with_context(|| format!("reading {}", path.display()))
                };
                sandbox
                    .add_account(key_id, &read(secret)?, &read(webhook)?, None)
                    .context("registering the platform account")?;
                println!("thali: platform account {key_id} registered");
            }
            let listener = thali_platform::net::bind(cfg.sandbox_addr)
                .with_context(|| format!("binding {} (sandbox gateway)", cfg.sandbox_addr))?;
            let addr = listener.local_addr()?;
            println!(
                "thali: sandbox payment gateway on http://{addr} (state in {})",
                dir.display()
            );
            println!("thali: create a test account: curl -s -X POST http://{addr}/sandbox/accounts");
            let result = sandbox.serve(listener, shutdown_signal()).await;
            telemetry.shutdown();
            result.context("sandbox gateway")
        }
        Command::Migrate => {
            thali::migrate(&cfg).await?;
            eprintln!("migrate: database is up to date");
            Ok(())
        }
        Command::Users {
            command:
                UsersCommand::Create {
                    email,
                    display_name,
                    admin,
                    role,
                },
        } => {
            use thali_identity::domain::{AccountStatus, NewAccount, Role};
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("reading the password from standard input")?;
            let password = password.trim_end_matches(['\n', '\r']).to_owned();
            let chosen = if admin {
                Role::Buyer
            } else {
                Role::parse(&role).context("--role must be buyer, creator or restaurant_owner")?
            };
            let new = NewAccount::parse(&email, &password, &display_name, Some(chosen))
                .map_err(|e| anyhow::anyhow!("{e}: {e:?}"))?;
            let db = thali::migrate(&cfg).await?;
            let hash = thali_identity::passwords::hash_async(password)
                .await
                .map_err(|_| anyhow::anyhow!("password hashing is busy"))?;
            let store = thali_identity::store::IdentityStore::new(db);
            let account = store
                .register(
                    &new,
                    hash,
                    AccountStatus::Active,
                    admin.then_some(Role::Admin),
                    None,
                    "",
                )
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{} {} ({})", account.id, account.email, account.role.as_str());
            Ok(())
        }
        Command::Jobs { command } => jobs(&cfg, command).await,
        Command::Audit { command } => audit(&cfg, command).await,
        Command::Backup {
            command: None,
            out,
            keep,
            metrics_file,
        } => {
            // A metrics file that cannot be written fails now, not after the backup.
            if let Some(file) = &metrics_file {
                backup::prepare_metrics_file(file)?;
            }
            let started = std::time::Instant::now();
            let (dir, removed) = backup::backup(&cfg, out, keep.map(|k| k as usize)).await?;
            println!("backup: written to {}", dir.display());
            if let Some(file) = metrics_file {
                backup::write_metrics(&file, &dir, started.elapsed())?;
                println!("backup: metrics written to {}", file.display());
            }
            for old in removed {
                println!("backup: removed the old backup {}", old.display());
            }
            Ok(())
        }
        Command::Backup {
            command: Some(BackupCommand::Verify { dir }),
            ..
        } => {
            let findings = backup::verify(&cfg, &dir).await?;
            if findings.is_empty() {
                println!(
                    "backup verify: {} restores, its row counts and audit chains check out",
                    dir.display()
                );
                Ok(())
            } else {
                for f in &findings {
                    println!("backup verify: {f}");
                }
                std::process::exit(1);
            }
        }
        Command::Restore {
            dir,
            replace,
            skip_keys_check,
        } => {
            let options = backup::RestoreOptions {
                replace,
                skip_keys_check,
            };
            backup::restore(&cfg, &dir, options).await?;
            println!("restore: {} restored; start the platform", dir.display());
            Ok(())
        }
        Command::Dlq { command } => {
            let db = thali::migrated(&cfg).await?;
            let store = thali_payments::store::PaymentsStore::new(db);
            match command {
                DlqCommand::List { dead, limit } => {
                    let rows = store.dlq_list(dead, limit).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    println!(
                        "{:<36}  {:<7}  {:>7}  {:<20}  {:<24}  {:<25}  error",
                        "id", "status", "retries", "event", "event id", "next retry"
                    );
                    for r in &rows {
                        println!(
                            "{:<36}  {:<7}  {:>7}  {:<20}  {:<24}  {:<25}  {}",
                            r.id,
                            r.status,
                            r.retry_count,
                            r.event_type,
                            r.event_id,
                            r.next_retry_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            r.error_message.lines().next().unwrap_or_default()
                        );
                    }
                    eprintln!("dlq: {} row(s)", rows.len());
                }
                DlqCommand::Redrive { id } => {
                    let id = uuid::Uuid::parse_str(&id).context("the id is a UUID from `thali dlq list`")?;
                    anyhow::ensure!(
                        store.dlq_redrive(id).await.map_err(|e| anyhow::anyhow!("{e}"))?,
                        "no dead-letter row {id}"
                    );
                    println!("dlq: {id} is due now; the payments worker retries it within 30 s");
                }
            }
            Ok(())
        }
        Command::Keys {
            command:
                KeysCommand::RotateData {
                    resume,
                    add_key_only,
                    batch,
                },
        } => rotate_data(&cfg, resume, add_key_only, batch).await,
        Command::Keys { command } => {
            let dir = cfg.keys_dir();
            match command {
                KeysCommand::RotateData { .. } => unreachable!("handled above"),
                KeysCommand::Init => println!("{}", ensure_key_pair(&dir).context("creating the JWT key pair")?),
                KeysCommand::Add => println!(
                    "{}",
                    thali_platform::auth::add_key_pair(&dir).context("adding a key pair")?
                ),
                KeysCommand::Activate { kid } => {
                    thali_platform::auth::activate(&dir, &kid).context("activating the key")?;
                    println!("{kid} signs from now on ({})", dir.display());
                }
                KeysCommand::Retire { kid } => {
                    thali_platform::auth::retire(&dir, &kid).context("retiring the key")?;
                    println!("{kid} removed from {}", dir.display());
                }
                KeysCommand::Publish { owner, to } => {
                    anyhow::ensure!(
                        !owner.is_empty()
                            && owner
                                .bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                        "--owner is a part name: lowercase letters, digits and '-'"
                    );
                    for path in thali_platform::auth::publish(&dir, &owner, &to).context("publishing the keys")? {
                        println!("{}", path.display());
                    }
                }
                KeysCommand::List => {
                    let signing = Signer::load(&dir)?;
                    let active = signing.kid();
                    for (kid, _) in signing.public_keys() {
                        let mark = if kid == active { "  (signs)" } else { "" };
                        println!("{kid}{mark}");
                    }
                }
            }
            Ok(())
        }
        Command::DevCerts { dir, names } => {
            let certs = thali::dev_certs::write(&dir, &names)?;
            println!("THALI_TLS_CERT_FILE={}", certs.cert.display());
            println!("THALI_TLS_KEY_FILE={}", certs.key.display());
            println!("THALI_TLS_CA_FILE={}", certs.ca.display());
            Ok(())
        }
        Command::Token { sub, roles, ttl_hours } => {
            let dir = cfg.keys_dir();
            ensure_key_pair(&dir).context("creating the JWT key pair")?;
            let signer = Signer::load(&dir)?;
            println!("{}", signer.mint(&sub, &roles, Duration::from_secs(ttl_hours * 3600)));
            Ok(())
        }
    }
}

/// `thali audit verify | export`.
async fn audit(cfg: &Config, command: AuditCommand) -> anyhow::Result<()> {
    use thali_platform::audit_log;
    let db = thali::migrated(cfg).await?;
    match command {
        AuditCommand::Verify { service, head } => {
            let head = match &head {
                Some(text) => {
                    let (seq, hash) = text.split_once(':').context("--head is SEQ:HASH")?;
                    Some((seq.parse::<i64>().context("--head: SEQ is a number")?, hash.to_owned()))
                }
                None => None,
            };
            let services = match service {
                Some(s) => vec![s],
                None => audit_log::services(&db).await?,
            };
            if services.is_empty() {
                println!("audit: no chain in this database yet");
                return Ok(());
            }
            let mut broken = false;
            for service in &services {
                // What the service committed and its writer has not chained yet goes in first
                // (under the same chain lock a writer takes).
                audit_log::append_all(&db, service).await?;
                let total = audit_log::count(&db, service).await?;
                let mut bar = progress::Progress::new(format!("audit verify {service}"), total);
                let mut shown = 0;
                let expected = head.as_ref().map(|(seq, hash)| (*seq, hash.as_str()));
                let result = audit_log::verify(&db, service, expected, |done| {
                    bar.advance(done - shown, "");
                    shown = done;
                })
                .await?;
                bar.finish();
                match result {
                    Ok(ok) => match ok.head {
                        Some((seq, hash)) => println!(
                            "audit: {service}: {} row(s) verify; head seq {seq} hash {hash}",
                            ok.rows
                        ),
                        None => println!("audit: {service}: empty chain"),
                    },
                    Err(why) => {
                        println!("audit: BROKEN: {why}");
                        broken = true;
                    }
                }
            }
            if broken {
                std::process::exit(1);
            }
            Ok(())
        }
        AuditCommand::Export { since, service, out } => {
            use std::io::Write;
            let since = chrono::DateTime::parse_from_rfc3339(&since)
                .context("--since is an RFC 3339 time, e.g. 2026-12-01T00:00:00Z")?
                .with_timezone(&chrono::Utc);
            let mut sink: Box<dyn Write> = match &out {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            // Like verify: what was committed and not chained yet goes in first.
            for s in audit_log::services(&db).await? {
                audit_log::append_all(&db, &s).await?;
            }
            let (mut after, mut written) = (None::<(String, i64)>, 0u64);
            loop {
                let page = audit_log::rows_since(
                    &db,
                    since,
                    service.as_deref(),
                    after.as_ref().map(|(s, n)| (s.as_str(), *n)),
                    1000,
                )
                .await?;
                for row in &page {
                    serde_json::to_writer(&mut sink, row)?;
                    sink.write_all(b"\n")?;
                }
                written += page.len() as u64;
                match page.last() {
                    Some(last) if page.len() == 1000 => after = Some((last.service.clone(), last.seq)),
                    _ => break,
                }
                eprintln!("audit export: {written} row(s)");
            }
            sink.flush()?;
            eprintln!("audit export: {written} row(s) written");
            Ok(())
        }
    }
}

/// `thali keys rotate-data`: a new active data key, then every stored secret re-encrypted with it
/// in batches (each row's update applies only to the value it read, so a concurrent write wins).
async fn rotate_data(cfg: &Config, resume: bool, add_key_only: bool, batch: u64) -> anyhow::Result<()> {
    use thali_platform::crypto::{DataKeys, Keyring};
    let path = cfg.data_keys_file();
    let db = thali::migrated(cfg).await?;
    let store = thali_payments::store::PaymentsStore::new(db);
    if !resume {
        DataKeys::ensure(&path).with_context(|| format!("data keys ({})", path.display()))?;
        let id = DataKeys::add_key(&path).with_context(|| format!("adding a data key to {}", path.display()))?;
        store
            .record_data_key_event("data_key.added", serde_json::json!({"key": id}))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        eprintln!("rotate-data: {id} is the active data key in {}", path.display());
        if add_key_only {
            println!("rotate-data: {id} added; re-encrypt with `thali keys rotate-data --resume`");
            return Ok(());
        }
    }
    let keys = Keyring::open(&path).with_context(|| format!("data keys ({})", path.display()))?;
    let total = store.count_accounts().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut bar = progress::Progress::new("rotate-data payment_accounts", total);
    let (mut after, mut rotated) = (None, 0u64);
    loop {
        let page = store
            .rotate_accounts(&keys, after, batch)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        rotated += page.rotated;
        bar.advance(page.scanned, &format!("{rotated} re-encrypted"));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    bar.finish();
    store
        .record_data_key_event(
            "data_key.rotated",
            serde_json::json!({"active": keys.current().active_id(), "re_encrypted": rotated, "accounts": total}),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "rotate-data: {rotated} of {total} payment account(s) re-encrypted; every secret is under {}",
        keys.current().active_id()
    );
    Ok(())
}
