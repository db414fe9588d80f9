//! Token revocation every verifier follows (ADR 0027). Access tokens are self-contained and live
//! up to 7 days; identity records each revocation (a login session ended by logout or refresh
//! reuse; every token of an account issued up to a moment, by a password reset, a disabled
//! account or an admin), and every process that verifies tokens keeps the list of revocations
//! still in force, reading what is new from identity every second. A revoked token is refused
//! by every replica within a few seconds, with no per-request call and no shared cache.
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use thali_proto::identity::v1::{
    ListRevocationsRequest, ListSigningKeysRequest, identity_service_client::IdentityServiceClient,
};

use crate::client::{Client, Target};

/// How often a verifier asks identity for new revocations.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// The revocations in force, as one process knows them.
#[derive(Debug, Default)]
pub struct Revocations(RwLock<State>);

#[derive(Debug, Default)]
struct State {
    /// The last revocation id read.
    cursor: i64,
    /// Ended login sessions → when the entry may be forgotten (unix seconds).
    sessions: HashMap<String, i64>,
    /// Accounts → every token issued at or before this (unix seconds) is refused.
    accounts: HashMap<String, i64>,
}

/// Entries kept before expired ones are swept.
const SWEEP_AT: usize = 100_000;
/// The longest an access token lives, plus margin: how long a session entry matters.
const TOKEN_LIFE_S: i64 = 7 * 24 * 3600 + 300;

impl Revocations {
    /// Whether a token of `subject`, from `session`, issued at `issued_at`, is revoked.
    pub fn refuses(&self, subject: &str, session: Option<&str>, issued_at: i64) -> bool {
        let state = self.0.read().unwrap_or_else(|e| e.into_inner());
        if state.sessions.is_empty() && state.accounts.is_empty() {
            return false;
        }
        session.is_some_and(|s| state.sessions.contains_key(s))
            || state.accounts.get(subject).is_some_and(|at| issued_at <= *at)
    }

    /// The last revocation id applied.
    pub fn cursor(&self) -> i64 {
        self.0.read().unwrap_or_else(|e| e.into_inner()).cursor
    }

    /// Applies revocation `id` (ids only grow; an old one is ignored).
    pub fn apply(&self, id: i64, kind: &str, subject: &str, revoked_at: i64) {
        let mut state = self.0.write().unwrap_or_else(|e| e.into_inner());
        if id <= state.cursor {
            return;
        }
        state.cursor = id;
        match kind {
            "session" => {
                state.sessions.insert(subject.to_owned(), revoked_at + TOKEN_LIFE_S);
            }
            "account" => {
                let at = state.accounts.entry(subject.to_owned()).or_insert(revoked_at);
                *at = (*at).max(revoked_at);
            }
            other => tracing::warn!(kind = other, "revocation of an unknown kind ignored"),
        }
        if state.sessions.len() + state.accounts.len() > SWEEP_AT {
            let now = chrono::Utc::now().timestamp();
            state.sessions.retain(|_, until| *until > now);
            state.accounts.retain(|_, at| *at + TOKEN_LIFE_S > now);
        }
    }
}

/// Keeps `list` up to date from identity (`ListRevocations`) until the task is dropped. A
/// failed read is retried on the next tick and counted in
/// `auth_revocation_feed_failures_total`; `auth_revocation_feed_synced_timestamp_seconds` says
/// when the list was last known complete (an alert watches its age).
pub fn spawn_feed(list: Arc<Revocations>, identity: Target, every: Duration) -> tokio::task::JoinHandle<()> {
    let client = Client::new(identity, IdentityServiceClient::new);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match sync(&list, &client).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("revocation feed: reading from identity again");
                    }
                    failing = false;
                    metrics::gauge!("auth_revocation_feed_synced_timestamp_seconds")
                        .set(chrono::Utc::now().timestamp() as f64);
                }
                Err(status) => {
                    if !failing {
                        tracing::warn!(error = %status, "revocation feed: identity does not answer; retrying");
                    }
                    failing = true;
                    metrics::counter!("auth_revocation_feed_failures_total").increment(1);
                }
            }
        }
    })
}

/// Identity's open key set (`ListSigningKeys`) as a source of the keys that sign user tokens
/// (ADR 0029): a verifier refreshes from it, so a key identity publishes verifies everywhere
/// without a restart.
pub fn identity_key_set(identity: Target) -> crate::auth::FetchKeys {
    let client = Client::new(identity, IdentityServiceClient::new);
    Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            let keys = client
                .call(ListSigningKeysRequest {}, |mut c, r| async move {
                    c.list_signing_keys(r).await
                })
                .await
                .map_err(|status| status.message().to_owned())?
                .into_inner()
                .keys;
            Ok(keys.into_iter().map(|k| (k.kid, k.x)).collect())
        })
    })
}

/// Reads every revocation after the list's cursor, a page at a time.
async fn sync(
    list: &Revocations,
    client: &Client<IdentityServiceClient<crate::client::GrpcChannel>>,
) -> Result<(), tonic::Status> {
    const PAGE: i32 = 500;
    loop {
        let after_id = list.cursor();
        let page = client
            .call(
                ListRevocationsRequest {
                    after_id,
                    page_size: PAGE,
                },
                |mut c, r| async move { c.list_revocations(r).await },
            )
            .await?
            .into_inner()
            .revocations;
        let full = page.len() == PAGE as usize;
        for r in page {
            let at = r.revoke_time.map(|t| t.seconds).unwrap_or_default();
            list.apply(r.id, &r.kind, &r.subject, at);
        }
        if !full {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_accounts_are_refused_as_recorded() {
        let list = Revocations::default();
        assert!(!list.refuses("acct-1", Some("s1"), 100));
        list.apply(1, "session", "s1", 1_000);
        list.apply(2, "account", "acct-2", 1_000);
        assert!(list.refuses("acct-1", Some("s1"), 100), "an ended session");
        assert!(
            !list.refuses("acct-1", Some("s2"), 100),
            "another session of the account"
        );
        assert!(!list.refuses("acct-1", None, 100));
        assert!(
            list.refuses("acct-2", Some("s9"), 999),
            "issued before the account's revocation"
        );
        assert!(list.refuses("acct-2", None, 1_000), "issued in the same second");
        assert!(!list.refuses("acct-2", Some("s9"), 1_001), "a later login works");
        // An old id (a replayed page) changes nothing; the cursor only grows.
        list.apply(1, "account", "acct-1", 5_000);
        assert!(!list.refuses("acct-1", None, 100));
        assert_eq!(list.cursor(), 2);
    }
}
