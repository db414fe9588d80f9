//! Idempotency keys of creating calls (ADR 0005): the key a client sent and the fingerprint of
//! the request it came with. Each service keeps them in a table of its own database (the same
//! columns everywhere: scope, subject, idempotency_key, request_hash, resource_id, created_at;
//! primary key (scope, subject, idempotency_key)), written in the transaction that creates the
//! resource. [`Keys`] is the one implementation of the replay rules every service uses.
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr};

/// A key with the SHA-256 (hex) of the canonical request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
}

impl Idempotency {
    /// Fingerprints `request` (a validated domain value, serialised canonically) under `key`.
    pub fn new(key: String, request: &impl serde::Serialize) -> Self {
        let bytes = serde_json::to_vec(request).expect("domain values serialise");
        Self {
            key,
            request_hash: sha256_hex(&bytes),
        }
    }
}

/// Longest idempotency key, in bytes.
pub const KEY_MAX: usize = 200;

/// Checks a key as a client sent it: empty means none; otherwise 1–200 visible ASCII
/// characters (the violation names `idempotency_key`).
pub fn parse_key(raw: &str) -> Result<Option<String>, crate::errors::Violation> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > KEY_MAX || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(crate::errors::Violation::new(
            "idempotency_key",
            format!("must be 1 to {KEY_MAX} visible ASCII characters"),
        ));
    }
    Ok(Some(raw.to_owned()))
}

/// How long a key answers with its first result; after that the key is free again.
pub const WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// What an earlier use of a key says about this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Not used (or used more than [`WINDOW`] ago): go on and create.
    Fresh,
    /// Used with the same request: answer with this resource.
    Same(uuid::Uuid),
    /// Used with another request: refuse (409, `IDEMPOTENCY_KEY_REUSED`).
    Conflict,
}

/// A service's idempotency table.
#[derive(Debug, Clone, Copy)]
pub struct Keys {
    table: &'static str,
}

impl Keys {
    /// The keys in `table` (a name from the service's own migration, never user input).
    pub const fn new(table: &'static str) -> Self {
        Self { table }
    }

    /// What the key of `idem` says for `subject` in `scope`, at `now`.
    pub async fn replay<C: ConnectionTrait>(
        &self,
        conn: &C,
        scope: &str,
        subject: &str,
        idem: &Idempotency,
        now: DateTime<Utc>,
    ) -> Result<Replay, DbErr> {
        let sql = format!(
            "SELECT request_hash, resource_id, created_at FROM {} \
             WHERE scope = $1 AND subject = $2 AND idempotency_key = $3",
            self.table
        );
        let values = vec![scope.into(), subject.into(), idem.key.clone().into()];
        let Some(row) = conn
            .query_one_raw(crate::db::statement(conn.get_database_backend(), &sql, values))
            .await?
        else {
            return Ok(Replay::Fresh);
        };
        let created_at: DateTime<Utc> = row.try_get("", "created_at")?;
        if created_at < now - WINDOW {
            // Expired: free the key (housekeeping deletes the rest).
            let sql = format!(
                "DELETE FROM {} WHERE scope = $1 AND subject = $2 AND idempotency_key = $3 AND created_at < $4",
                self.table
            );
            let values = vec![
                scope.into(),
                subject.into(),
                idem.key.clone().into(),
                (now - WINDOW).into(),
            ];
            conn.execute_raw(crate::db::statement(conn.get_database_backend(), &sql, values))
                .await?;
            return Ok(Replay::Fresh);
        }
        let hash: String = row.try_get("", "request_hash")?;
        if hash == idem.request_hash {
            Ok(Replay::Same(row.try_get("", "resource_id")?))
        } else {
            Ok(Replay::Conflict)
        }
    }

    /// Records the key in `txn`, pointing at `resource_id` about to be created there. False when
    /// a concurrent request with the same key got there first (then [`Keys::replay`] after it
    /// commits). The transaction stays usable either way.
    pub async fn claim<C: ConnectionTrait>(
        &self,
        txn: &C,
        scope: &str,
        subject: &str,
        idem: &Idempotency,
        resource_id: uuid::Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, DbErr> {
        let sql = format!(
            "INSERT INTO {} (scope, subject, idempotency_key, request_hash, resource_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            self.table
        );
        let values = vec![
            scope.into(),
            subject.into(),
            idem.key.clone().into(),
            idem.request_hash.clone().into(),
            resource_id.into(),
            now.into(),
        ];
        let done = txn
            .execute_raw(crate::db::statement(txn.get_database_backend(), &sql, values))
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Housekeeping: deletes keys past their window. Returns how many.
    pub async fn prune<C: ConnectionTrait>(&self, conn: &C, now: DateTime<Utc>) -> Result<u64, DbErr> {
        let sql = format!("DELETE FROM {} WHERE created_at < $1", self.table);
        let done = conn
            .execute_raw(crate::db::statement(
                conn.get_database_backend(),
                &sql,
                vec![(now - WINDOW).into()],
            ))
            .await?;
        Ok(done.rows_affected())
    }
}

/// SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_request_same_fingerprint_other_request_other() {
        let a = Idempotency::new("k".into(), &("chai", 4900));
        assert_eq!(a, Idempotency::new("k".into(), &("chai", 4900)));
        assert_ne!(
            a.request_hash,
            Idempotency::new("k".into(), &("chai", 5000)).request_hash
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
