//! The audit trail (issue 13, part 2; ADR 0031): append-only and hash-chained, in each service's
//! database.
//!
//! - A business action calls [`record`] on its own transaction: the record lands in
//!   `audit_pending` and commits (or rolls back) with the change it describes. That insert takes
//!   no lock, so a flood of failed logins never waits on the chain.
//! - One writer per service ([`spawn_writer`], [`append_pending`]) moves pending records into
//!   `audit_log` in batches, in a transaction that holds the service's chain lock (a PostgreSQL
//!   advisory lock; SQLite has one writer anyway): each row gets the next `seq`, the previous
//!   row's hash as `prev_hash`, and `hash = SHA-256(prev_hash ‖ canonical bytes of the row)`. The
//!   primary key (service, seq) refuses a fork even if two writers raced.
//! - `audit_log` refuses UPDATE and DELETE (and TRUNCATE on PostgreSQL) by trigger.
//! - [`verify`] walks a chain and names the first broken link: a row edited, deleted or
//!   reordered. Someone who can disable the triggers can rewrite the whole table consistently;
//!   the chain head, signed and logged every hour by the writer ([`head`]), is what such a
//!   rewrite cannot match.
//!
//! Actors are account ids (`acct:<uuid>`), `svc:<part>`, `key:<id>` or `anonymous`: an account
//! id names no person once the account is erased, so the chain survives an erasure unchanged.
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Value};
use serde::Serialize;

use crate::db::statement;

/// Every column of a chain row, in [`Row`]'s order.
const ROW_COLUMNS: &str = "service, seq, at, actor, actor_address, action, target, details, prev_hash, hash";

/// The metadata naming the service whose chain an `AuditService` call reads: a service token for
/// the call is addressed to that service, and the request's `service` must be the same.
pub const SERVICE_HEADER: &str = "x-thali-audit-service";

/// The `prev_hash` of a chain's first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How many pending records one append moves at most.
const BATCH: u64 = 500;

/// How many chain rows one INSERT carries at most, and how many bytes of text: a statement
/// stays small. (The PostgreSQL driver does not set TCP_NODELAY, and a statement of more than
/// about 10 KB met the 40 ms delayed-ACK stall on every INSERT: docs/perf/audit.md.)
const INSERT_ROWS: usize = 10;
const INSERT_BYTES: usize = 4096;

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Who acted: `acct:<uuid>`, `svc:<part>`, `key:<id>` or `anonymous`.
    pub actor: String,
    /// The client address the action came from (empty when there is none, as for a job).
    pub actor_address: String,
    /// What happened, e.g. `account.registered`, `login.failed`, `api_key.created`.
    pub action: String,
    /// What it happened to, e.g. `account:<uuid>`.
    pub target: String,
    /// Anything else worth keeping, as a JSON object (never a secret, never personal data that
    /// an erasure would have to remove).
    pub details: serde_json::Value,
}

impl Entry {
    pub fn new(actor: impl Into<String>, action: &str, target: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            actor_address: String::new(),
            action: action.to_owned(),
            target: target.into(),
            details: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn from_address(mut self, address: &str) -> Self {
        self.actor_address = address.to_owned();
        self
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// The actor name of an account.
pub fn account(id: impl std::fmt::Display) -> String {
    format!("acct:{id}")
}

/// Enqueues `entry` for `service`'s chain, on `conn` — the transaction of the change it records,
/// so a rolled-back change leaves no record and a committed one always has its record.
pub async fn record<C: ConnectionTrait>(conn: &C, service: &str, entry: &Entry) -> Result<(), DbErr> {
    let fit = |s: &str, max: usize| s.chars().take(max).collect::<String>();
    let values: Vec<Value> = vec![
        service.into(),
        Utc::now().trunc_subsecs(6).into(),
        fit(&entry.actor, 200).into(),
        fit(&entry.actor_address, 64).into(),
        fit(&entry.action, 80).into(),
        fit(&entry.target, 200).into(),
        entry.details.to_string().into(),
    ];
    conn.execute_raw(statement(
        conn.get_database_backend(),
        "INSERT INTO audit_pending (service, at, actor, actor_address, action, target, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        values,
    ))
    .await?;
    Ok(())
}

/// A row of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub service: String,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub actor_address: String,
    pub action: String,
    pub target: String,
    /// The JSON text exactly as stored (and hashed).
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The bytes a row's hash covers besides `prev_hash`: every field, each as a 4-byte big-endian
/// length and its UTF-8 bytes, so no two different rows share an encoding.
fn canonical(service: &str, seq: i64, at: &DateTime<Utc>, fields: [&str; 5]) -> Vec<u8> {
    let seq = seq.to_string();
    let at = at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let mut out = Vec::with_capacity(256);
    for part in [service, seq.as_str(), at.as_str()].into_iter().chain(fields) {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Row {
    /// What this row's hash must be, given its own `prev_hash`.
    pub fn expected_hash(&self) -> Option<String> {
        let prev = unhex(&self.prev_hash)?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&prev);
        ctx.update(&canonical(
            &self.service,
            self.seq,
            &self.at,
            [
                &self.actor,
                &self.actor_address,
                &self.action,
                &self.target,
                &self.details,
            ],
        ));
        Some(hex(ctx.finish().as_ref()))
    }

    fn from_query(row: &sea_orm::QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            service: row.try_get("", "service")?,
            seq: row.try_get("", "seq")?,
            at: row.try_get("", "at")?,
            actor: row.try_get("", "actor")?,
            actor_address: row.try_get("", "actor_address")?,
            action: row.try_get("", "action")?,
            target: row.try_get("", "target")?,
            details: row.try_get("", "details")?,
            prev_hash: row.try_get("", "prev_hash")?,
            hash: row.try_get("", "hash")?,
        })
    }
}

/// A stable 64-bit number for the service's chain lock.
fn lock_key(service: &str) -> i64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("thali.audit_log.{service}").as_bytes());
    i64::from_be_bytes(digest.as_ref()[..8].try_into().expect("8 bytes"))
}

/// The last row of `service`'s chain: (seq, hash), or None for an empty chain.
pub async fn head<C: ConnectionTrait>(conn: &C, service: &str) -> Result<Option<(i64, String)>, DbErr> {
    let row = conn
        .query_one_raw(statement(
            conn.get_database_backend(),
            "SELECT seq, hash FROM audit_log WHERE service = $1 ORDER BY seq DESC LIMIT 1",
            vec![service.into()],
        ))
        .await?;
    row.map(|r| Ok((r.try_get("", "seq")?, r.try_get("", "hash")?)))
        .transpose()
}

/// Moves up to one batch of `service`'s pending records into its chain; how many it moved.
pub async fn append_pending(db: &DatabaseConnection, service: &str) -> Result<u64, DbErr> {
    // Most ticks find nothing: a plain read first, so an idle writer never takes the write lock
    // (SQLite's only one) or the chain lock.
    let waiting = db
        .query_one_raw(statement(
            db.get_database_backend(),
            "SELECT id FROM audit_pending WHERE service = $1 LIMIT 1",
            vec![service.into()],
        ))
        .await?;
    if waiting.is_none() {
        return Ok(0);
    }
    let txn = crate::db::begin_write(db).await?;
    let backend = txn.get_database_backend();
    if backend == DbBackend::Postgres {
        txn.execute_raw(statement(
            backend,
            "SELECT pg_advisory_xact_lock($1)",
            vec![lock_key(service).into()],
        ))
        .await?;
    }
    let pending = txn
        .query_all_raw(statement(
            backend,
            &format!(
                "SELECT id, at, actor, actor_address, action, target, details FROM audit_pending \
                 WHERE service = $1 ORDER BY id LIMIT {BATCH}"
            ),
            vec![service.into()],
        ))
        .await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let (mut seq, mut prev) = head(&txn, service).await?.unwrap_or((0, GENESIS.to_owned()));
    let mut ids = Vec::with_capacity(pending.len());
    let mut rows = Vec::with_capacity(pending.len());
    for p in &pending {
        ids.push(p.try_get::<i64>("", "id")?);
        seq += 1;
        let mut row = Row {
            service: service.to_owned(),
            seq,
            at: p.try_get("", "at")?,
            actor: p.try_get("", "actor")?,
            actor_address: p.try_get("", "actor_address")?,
            action: p.try_get("", "action")?,
            target: p.try_get("", "target")?,
            details: p.try_get("", "details")?,
            prev_hash: prev.clone(),
            hash: String::new(),
        };
        row.hash = row
            .expected_hash()
            .ok_or_else(|| DbErr::Custom(format!("audit_log {service}: the head's hash is not a SHA-256")))?;
        prev = row.hash.clone();
        rows.push(row);
    }
    // Several rows per statement: a flood's records are chained at the rate they arrive.
    for chunk in statements(&rows) {
        let placeholders: Vec<String> = (0..chunk.len())
            .map(|r| {
                let params: Vec<String> = (1..=10).map(|c| format!("${}", r * 10 + c)).collect();
                format!("({})", params.join(", "))
            })
            .collect();
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 10);
        for row in chunk {
            values.extend([
                row.service.clone().into(),
                row.seq.into(),
                row.at.into(),
                row.actor.clone().into(),
                row.actor_address.clone().into(),
                row.action.clone().into(),
                row.target.clone().into(),
                row.details.clone().into(),
                row.prev_hash.clone().into(),
                row.hash.clone().into(),
            ]);
        }
        txn.execute_raw(statement(
            backend,
            &format!(
                "INSERT INTO audit_log (service, seq, at, actor, actor_address, action, target, details, prev_hash, hash) \
                 VALUES {}",
                placeholders.join(", ")
            ),
            values,
        ))
        .await?;
    }
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
    txn.execute_raw(statement(
        backend,
        &format!("DELETE FROM audit_pending WHERE service = $1 AND id IN ({list})"),
        vec![service.into()],
    ))
    .await?;
    txn.commit().await?;
    metrics::counter!("audit_records_appended_total", "service" => service.to_owned()).increment(ids.len() as u64);
    Ok(ids.len() as u64)
}

/// `rows` cut into runs of at most [`INSERT_ROWS`] rows and about [`INSERT_BYTES`] bytes (a
/// larger row goes alone).
fn statements(rows: &[Row]) -> Vec<&[Row]> {
    let size = |r: &Row| {
        r.service.len()
            + r.actor.len()
            + r.actor_address.len()
            + r.action.len()
            + r.target.len()
            + r.details.len()
            + 2 * 64
            + 16
    };
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let n = size(row);
        if i > start && (i - start == INSERT_ROWS || bytes + n > INSERT_BYTES) {
            out.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += n;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

/// Moves every pending record of `service` into its chain (batch after batch).
pub async fn append_all(db: &DatabaseConnection, service: &str) -> Result<u64, DbErr> {
    let mut moved = 0;
    loop {
        let n = append_pending(db, service).await?;
        moved += n;
        if n < BATCH {
            return Ok(moved);
        }
    }
}

/// Everything recorded for `service`, chained first (as `thali audit` does), oldest first; for
/// tools and tests that read a whole (small) chain.
pub async fn chain_now(db: &DatabaseConnection, service: &str) -> Result<Vec<Row>, DbErr> {
    append_all(db, service).await?;
    rows_since(db, DateTime::UNIX_EPOCH, Some(service), None, u64::MAX >> 1).await
}

/// Signs the chain head of `service` with `signer` and logs it (`thali::audit` target), so the
/// head of every hour is kept outside the database.
pub async fn log_signed_head(
    db: &DatabaseConnection,
    service: &str,
    signer: &crate::auth::Signer,
) -> Result<(), DbErr> {
    let (seq, hash) = head(db, service).await?.unwrap_or((0, GENESIS.to_owned()));
    let at = Utc::now().trunc_subsecs(0);
    let message = format!("thali.audit_log.head\n{service}\n{seq}\n{hash}\n{}", at.to_rfc3339());
    let (kid, signature) = signer.sign_bytes(message.as_bytes());
    tracing::info!(
        target: "thali::audit",
        service,
        seq,
        hash = hash.as_str(),
        signed_at = %at.to_rfc3339(),
        kid = kid.as_str(),
        signature = signature.as_str(),
        "audit chain head"
    );
    Ok(())
}

/// The writer of `service`'s chain: appends pending records every `every`, and logs the signed
/// head every hour. Stops when `stop` turns true.
pub fn spawn_writer(
    db: DatabaseConnection,
    service: &'static str,
    signer: std::sync::Arc<crate::auth::Signer>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    const HEAD_EVERY: Duration = Duration::from_secs(3600);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heads = tokio::time::interval(HEAD_EVERY);
        heads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = append_all(&db, service).await {
                        metrics::counter!("audit_append_failures_total", "service" => service).increment(1);
                        tracing::warn!(service, error = %e, "audit: appending pending records failed; retrying");
                    }
                }
                _ = heads.tick() => {
                    if let Err(e) = log_signed_head(&db, service, &signer).await {
                        tracing::warn!(service, error = %e, "audit: the chain head could not be read");
                    }
                }
                _ = stop.changed() => {
                    // What committed before the stop still reaches the chain.
                    let _ = append_all(&db, service).await;
                    return;
                }
            }
        }
    })
}

/// Why a chain does not verify, naming the first broken link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("{service}: seq {seq} was edited (its hash does not match its content)")]
    Edited { service: String, seq: i64 },
    #[error("{service}: seq {expected} is missing (deleted: the chain jumps to seq {found})")]
    Missing { service: String, expected: i64, found: i64 },
    #[error(
        "{service}: seq {seq} does not follow seq {previous} (reordered or inserted: its prev_hash is not seq {previous}'s hash)"
    )]
    Unlinked { service: String, seq: i64, previous: i64 },
    #[error("{service}: the chain ends at seq {found}, before the expected head seq {expected}")]
    Truncated { service: String, expected: i64, found: i64 },
    #[error("{service}: seq {seq} is not the expected head (hash {found}, expected {expected})")]
    HeadMismatch {
        service: String,
        seq: i64,
        expected: String,
        found: String,
    },
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub rows: u64,
    pub head: Option<(i64, String)>,
}

/// The services that have a chain or records waiting for one.
pub async fn services<C: ConnectionTrait>(conn: &C) -> Result<Vec<String>, DbErr> {
    let rows = conn
        .query_all_raw(statement(
            conn.get_database_backend(),
            "SELECT service FROM audit_log UNION SELECT service FROM audit_pending ORDER BY service",
            vec![],
        ))
        .await?;
    rows.iter().map(|r| r.try_get("", "service")).collect()
}

/// How many rows `service`'s chain holds.
pub async fn count<C: ConnectionTrait>(conn: &C, service: &str) -> Result<u64, DbErr> {
    let row = conn
        .query_one_raw(statement(
            conn.get_database_backend(),
            "SELECT COUNT(*) AS n FROM audit_log WHERE service = $1",
            vec![service.into()],
        ))
        .await?;
    Ok(row.map(|r| r.try_get::<i64>("", "n")).transpose()?.unwrap_or(0) as u64)
}

/// Walks `service`'s chain from seq 1, page by page, calling `progress` with the rows checked so
/// far. `expected_head` (a head logged earlier: seq and hash) must be on the chain. Err(DbErr)
/// when the database fails; Ok(Err(Broken)) names the first broken link.
pub async fn verify<C: ConnectionTrait>(
    conn: &C,
    service: &str,
    expected_head: Option<(i64, &str)>,
    mut progress: impl FnMut(u64),
) -> Result<Result<Verified, Broken>, DbErr> {
    const PAGE: i64 = 1000;
    let (mut previous, mut prev_hash) = (0i64, GENESIS.to_owned());
    let mut checked = 0u64;
    loop {
        let page = conn
            .query_all_raw(statement(
                conn.get_database_backend(),
                &format!(
                    "SELECT {ROW_COLUMNS} FROM audit_log WHERE service = $1 AND seq > $2 ORDER BY seq LIMIT {PAGE}"
                ),
                vec![service.into(), previous.into()],
            ))
            .await?;
        for raw in &page {
            let row = Row::from_query(raw)?;
            if row.seq != previous + 1 {
                return Ok(Err(Broken::Missing {
                    service: service.to_owned(),
                    expected: previous + 1,
                    found: row.seq,
                }));
            }
            if row.prev_hash != prev_hash {
                return Ok(Err(Broken::Unlinked {
                    service: service.to_owned(),
                    seq: row.seq,
                    previous,
                }));
            }
            if row.expected_hash().as_deref() != Some(row.hash.as_str()) {
                return Ok(Err(Broken::Edited {
                    service: service.to_owned(),
                    seq: row.seq,
                }));
            }
            if let Some((seq, hash)) = expected_head
                && seq == row.seq
                && hash != row.hash
            {
                return Ok(Err(Broken::HeadMismatch {
                    service: service.to_owned(),
                    seq,
                    expected: hash.to_owned(),
                    found: row.hash,
                }));
            }
            previous = row.seq;
            prev_hash = row.hash;
            checked += 1;
        }
        progress(checked);
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    if let Some((seq, _)) = expected_head
        && seq > previous
    {
        return Ok(Err(Broken::Truncated {
            service: service.to_owned(),
            expected: seq,
            found: previous,
        }));
    }
    Ok(Ok(Verified {
        rows: checked,
        head: (previous > 0).then_some((previous, prev_hash)),
    }))
}

/// What a listing keeps: exact matches on the fields given.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

/// One page of `service`'s chain after `after_seq`, oldest first, at most `limit` rows.
pub async fn list<C: ConnectionTrait>(
    conn: &C,
    service: &str,
    filter: &Filter,
    after_seq: i64,
    limit: u64,
) -> Result<Vec<Row>, DbErr> {
    let mut sql = format!("SELECT {ROW_COLUMNS} FROM audit_log WHERE service = $1 AND seq > $2");
    let mut values: Vec<Value> = vec![service.into(), after_seq.into()];
    for (column, value) in [
        ("action", &filter.action),
        ("actor", &filter.actor),
        ("target", &filter.target),
    ] {
        if let Some(value) = value {
            values.push(value.clone().into());
            sql.push_str(&format!(" AND {column} = ${}", values.len()));
        }
    }
    if let Some(since) = filter.since {
        values.push(since.into());
        sql.push_str(&format!(" AND at >= ${}", values.len()));
    }
    sql.push_str(&format!(" ORDER BY seq LIMIT {limit}"));
    let rows = conn
        .query_all_raw(statement(conn.get_database_backend(), &sql, values))
        .await?;
    rows.iter().map(Row::from_query).collect()
}

/// Rows at or after `since`, oldest first per service, page by page: `after` is the last
/// (service, seq) of the previous page.
pub async fn rows_since<C: ConnectionTrait>(
    conn: &C,
    since: DateTime<Utc>,
    service: Option<&str>,
    after: Option<(&str, i64)>,
    limit: u64,
) -> Result<Vec<Row>, DbErr> {
    let mut sql = format!("SELECT {ROW_COLUMNS} FROM audit_log WHERE at >= $1");
    let mut values: Vec<Value> = vec![since.into()];
    if let Some(service) = service {
        values.push(service.into());
        sql.push_str(&format!(" AND service = ${}", values.len()));
    }
    if let Some((service, seq)) = after {
        values.push(service.into());
        let s = values.len();
        values.push(seq.into());
        sql.push_str(&format!(
            " AND (service > ${s} OR (service = ${s} AND seq > ${}))",
            s + 1
        ));
    }
    sql.push_str(&format!(" ORDER BY service, seq LIMIT {limit}"));
    let rows = conn
        .query_all_raw(statement(conn.get_database_backend(), &sql, values))
        .await?;
    rows.iter().map(Row::from_query).collect()
}

/// `thali.audit.v1.AuditService` over this process's database: admins list the chains of the
/// services the process runs.
pub mod grpc {
    use sea_orm::DatabaseConnection;
    use thali_proto::audit::v1::{
        self as pb,
        audit_service_server::{AuditService, AuditServiceServer},
    };
    use tonic::{Code, Request, Response, Status};

    use crate::errors::{self, Violation};

    pub struct AuditGrpc {
        db: DatabaseConnection,
        services: Vec<&'static str>,
    }

    /// The service for the chains of `services` (the ones this process runs).
    pub fn server(db: DatabaseConnection, services: Vec<&'static str>) -> AuditServiceServer<AuditGrpc> {
        AuditServiceServer::new(AuditGrpc { db, services })
    }

    fn page_token(seq: i64) -> String {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        URL_SAFE_NO_PAD.encode(seq.to_be_bytes())
    }

    fn parse_page_token(raw: &str) -> Result<i64, Violation> {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        if raw.is_empty() {
            return Ok(0);
        }
        URL_SAFE_NO_PAD
            .decode(raw)
            .ok()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(i64::from_be_bytes)
            .filter(|seq| *seq >= 0)
            .ok_or_else(|| Violation::new("page_token", "is not a token this service issued"))
    }

    /// An exact-match filter value: empty is none; at most 200 characters, no control characters.
    fn exact(field: &str, value: &str, bad: &mut Vec<Violation>) -> Option<String> {
        if value.is_empty() {
            return None;
        }
        if value.chars().count() > 200 || value.chars().any(char::is_control) {
            bad.push(Violation::new(
                field,
                "must be at most 200 characters, without control characters",
            ));
            return None;
        }
        Some(value.to_owned())
    }

    #[tonic::async_trait]
    impl AuditService for AuditGrpc {
        async fn list_audit_records(
            &self,
            request: Request<pb::ListAuditRecordsRequest>,
        ) -> Result<Response<pb::ListAuditRecordsResponse>, Status> {
            let admin = crate::server::principal(&request)
                .is_some_and(|p| p.api_key.is_none() && p.roles.iter().any(|r| r == "admin"));
            if !admin {
                if let Some(p) = crate::server::principal(&request) {
                    crate::audit::access_denied(p, "ListAuditRecords", "admin role required");
                }
                return Err(errors::with_reason(
                    Code::PermissionDenied,
                    "ADMIN_REQUIRED",
                    "only an administrator reads the audit trail",
                ));
            }
            let misaddressed = crate::server::addressed_elsewhere(
                request.metadata(),
                super::SERVICE_HEADER,
                &request.get_ref().service,
            );
            let req = request.into_inner();
            let mut bad: Vec<Violation> = misaddressed.into_iter().collect();
            let service = self.services.iter().find(|s| **s == req.service).copied();
            if service.is_none() {
                bad.push(Violation::new(
                    "service",
                    format!("must be one of: {}", self.services.join(", ")),
                ));
            }
            let filter = super::Filter {
                action: exact("action", &req.action, &mut bad),
                actor: exact("actor", &req.actor, &mut bad),
                target: exact("target", &req.target, &mut bad),
                since: match req.since {
                    Some(t) => match chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32) {
                        Some(at) => Some(at),
                        None => {
                            bad.push(Violation::new("since", "is not a time"));
                            None
                        }
                    },
                    None => None,
                },
            };
            let limit = errors::page_size(req.page_size, 50, 200).map_err(|v| bad.push(v)).ok();
            let after = parse_page_token(&req.page_token).map_err(|v| bad.push(v)).ok();
            let (Some(service), Some(limit), Some(after), true) = (service, limit, after, bad.is_empty()) else {
                return Err(errors::invalid_argument(&bad));
            };
            let mut rows = super::list(&self.db, service, &filter, after, limit + 1)
                .await
                .map_err(|e| {
                    if crate::db::is_unavailable(&e) {
                        errors::unavailable(
                            "DATABASE_UNAVAILABLE",
                            "the audit trail cannot be read now",
                            std::time::Duration::from_secs(1),
                        )
                    } else {
                        errors::internal(&e)
                    }
                })?;
            let next = if rows.len() as u64 > limit {
                rows.truncate(limit as usize);
                rows.last().map(|r| page_token(r.seq)).unwrap_or_default()
            } else {
                String::new()
            };
            Ok(Response::new(pb::ListAuditRecordsResponse {
                records: rows
                    .into_iter()
                    .map(|r| pb::AuditRecord {
                        service: r.service,
                        seq: r.seq,
                        at: Some(prost_types::Timestamp {
                            seconds: r.at.timestamp(),
                            nanos: r.at.timestamp_subsec_nanos() as i32,
                        }),
                        actor: r.actor,
                        actor_address: r.actor_address,
                        action: r.action,
                        target: r.target,
                        details: r.details,
                        prev_hash: r.prev_hash,
                        hash: r.hash,
                    })
                    .collect(),
                next_page_token: next,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, prev: &str) -> Row {
        let mut r = Row {
            service: "identity".into(),
            seq,
            at: DateTime::from_timestamp(1_764_000_000, 123_456_000).unwrap(),
            actor: "acct:1".into(),
            actor_address: "203.0.113.7".into(),
            action: "login.succeeded".into(),
            target: "account:1".into(),
            details: "{}".into(),
            prev_hash: prev.into(),
            hash: String::new(),
        };
        r.hash = r.expected_hash().unwrap();
        r
    }

    #[test]
    fn appends_go_in_small_statements_in_chain_order_and_a_large_row_alone() {
        let mut rows: Vec<Row> = (1..=25).map(|n| row(n, GENESIS)).collect();
        let lens = |rows: &[Row]| statements(rows).iter().map(|s| s.len()).collect::<Vec<_>>();
        assert_eq!(lens(&rows), [10, 10, 5]);
        rows[12].details = format!("{{\"note\": \"{}\"}}", "x".repeat(INSERT_BYTES));
        assert_eq!(lens(&rows), [10, 2, 1, 10, 2]);
        let seqs: Vec<i64> = statements(&rows).concat().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
        assert!(statements(&[]).is_empty());
    }

    #[test]
    fn a_hash_covers_every_field_and_the_previous_hash() {
        let first = row(1, GENESIS);
        let second = row(2, &first.hash);
        assert_ne!(first.hash, second.hash);
        assert_eq!(first.hash.len(), 64);
        for change in [
            |r: &mut Row| r.actor.push('x'),
            |r: &mut Row| r.actor_address.push('1'),
            |r: &mut Row| r.action.push('x'),
            |r: &mut Row| r.target.push('x'),
            |r: &mut Row| r.details = "{\"a\":1}".into(),
            |r: &mut Row| r.at += chrono::Duration::microseconds(1),
            |r: &mut Row| r.seq += 1,
            |r: &mut Row| r.service = "payments".into(),
            |r: &mut Row| r.prev_hash = "1".repeat(64),
        ] {
            let mut edited = second.clone();
            change(&mut edited);
            assert_ne!(edited.expected_hash().as_deref(), Some(second.hash.as_str()));
        }
        // Moving bytes from one field to the next changes the encoding too.
        let mut shifted = second.clone();
        shifted.actor = "acct:12".into();
        shifted.actor_address = "03.0.113.7".into();
        assert_ne!(shifted.expected_hash().unwrap(), second.hash);
        let mut bad = second.clone();
        bad.prev_hash = "not hex".into();
        assert_eq!(bad.expected_hash(), None);
    }
}
