//! Partner API keys as the server stack sees them: resolved through the identity service and
//! cached, so the request path answers from memory.
//!
//! - An answer is fresh for [`CACHE_TTL`]; a key's good answer is still used, while one refresh
//!   runs in the background, until it is [`STALE_MAX`] old — so a revoked key stops working
//!   within 5 s, as the platform promises, and a busy key never waits on identity.
//! - Lookups are single-flight: however many calls miss the cache at once, identity is asked once
//!   per key (a herd of misses at expiry used to overwhelm identity and open its breaker).
//! - The cache is keyed by the key's SHA-256, so no key sits in memory longer than its call.
//! - A failure to reach identity is answered `Unavailable` and not remembered.
use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use thali_proto::identity::v1::{Role, VerifyApiKeyRequest, identity_service_client::IdentityServiceClient};
use tokio::time::Instant;

use crate::{
    auth::{ApiKeyGrant, AuthError, Principal},
    client::{Client, Target},
    server::ApiKeyResolver,
};

/// How long an answer about a key is used without asking again.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// How old a key's good answer may be and still be used while it is being refreshed.
pub const STALE_MAX: Duration = Duration::from_secs(5);
const CACHE_MAX: usize = 10_000;

type Answer = Result<Principal, AuthError>;
type Lookup = Arc<dyn Fn(String) -> BoxFuture<'static, Answer> + Send + Sync>;
type Loading = Shared<BoxFuture<'static, Answer>>;

#[derive(Default)]
struct Slot {
    answer: Option<(Instant, Answer)>,
    loading: Option<Loading>,
}

/// Resolves keys with identity's `VerifyApiKey`.
pub struct IdentityApiKeys {
    lookup: Lookup,
    cache: Arc<Mutex<HashMap<[u8; 32], Slot>>>,
}

impl IdentityApiKeys {
    pub fn new(identity: Target) -> Self {
        let client = Arc::new(Client::new(identity, IdentityServiceClient::new));
        Self::with_lookup(move |key| {
            let client = client.clone();
            async move { verify(&client, key).await }.boxed()
        })
    }

    /// Resolves with `lookup` (tests).
    pub fn with_lookup(lookup: impl Fn(String) -> BoxFuture<'static, Answer> + Send + Sync + 'static) -> Self {
        Self {
            lookup: Arc::new(lookup),
            cache: Arc::default(),
        }
    }

    /// Starts (or joins) the one lookup of `hash`; the answer is remembered when it comes.
    fn load(&self, slot: &mut Slot, hash: [u8; 32], key: &str) -> Loading {
        if let Some(loading) = &slot.loading {
            return loading.clone();
        }
        let cache = self.cache.clone();
        let lookup = (self.lookup)(key.to_owned());
        let loading = async move {
            let answer = lookup.await;
            let mut cache = cache.lock().expect("API key cache lock");
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, s| {
                    s.loading.is_some() || s.answer.as_ref().is_some_and(|(at, _)| at.elapsed() < STALE_MAX)
                });
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            let slot = cache.entry(hash).or_default();
            slot.loading = None;
            // Identity unreachable: refuse this time, remember nothing.
            if answer != Err(AuthError::Unavailable) {
                slot.answer = Some((Instant::now(), answer.clone()));
            }
            answer
        }
        .boxed()
        .shared();
        slot.loading = Some(loading.clone());
        loading
    }
}

async fn verify(client: &Client<IdentityServiceClient<crate::client::GrpcChannel>>, key: String) -> Answer {
    match client
        .call(VerifyApiKeyRequest { key }, |mut c, r| async move {
            c.verify_api_key(r).await
        })
        .await
    {
        Ok(res) => {
            let res = res.into_inner();
            let role = Role::try_from(res.owner_role).ok().and_then(role_name);
            Ok(Principal {
                subject: res.owner_id,
                roles: role.map(|r| vec![r.to_owned()]).unwrap_or_default(),
                api_key: Some(ApiKeyGrant {
                    key_id: res.key_id,
                    scopes: res.scopes,
                    rate_limit_per_minute: u32::try_from(res.rate_limit_per_minute).ok().filter(|n| *n > 0),
                }),
                issued_at: 0,
                session: None,
            })
        }
        Err(status) if status.code() == tonic::Code::Unauthenticated => Err(AuthError::UnknownApiKey),
        Err(status) => {
            tracing::warn!(error = %status, "API key check failed");
            Err(AuthError::Unavailable)
        }
    }
}

/// The role name in tokens for a proto role.
pub fn role_name(role: Role) -> Option<&'static str> {
    Some(match role {
        Role::Buyer => "buyer",
        Role::Creator => "creator",
        Role::RestaurantOwner => "restaurant_owner",
        Role::Admin => "admin",
        Role::Unspecified => return None,
    })
}

impl ApiKeyResolver for IdentityApiKeys {
    fn resolve(&self, key: &str) -> Pin<Box<dyn Future<Output = Answer> + Send + '_>> {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref());
        let waiting = {
            let mut cache = self.cache.lock().expect("API key cache lock");
            let slot = cache.entry(hash).or_default();
            match &slot.answer {
                Some((at, answer)) if at.elapsed() < CACHE_TTL => return Box::pin(std::future::ready(answer.clone())),
                // A good answer a little old: used now, refreshed in the background.
                Some((at, Ok(principal))) if at.elapsed() < STALE_MAX => {
                    let principal = principal.clone();
                    let refresh = self.load(slot, hash, key);
                    tokio::spawn(refresh);
                    return Box::pin(std::future::ready(Ok(principal)));
                }
                _ => self.load(slot, hash, key),
            }
        };
        Box::pin(waiting)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn partner() -> Principal {
        Principal {
            subject: "partner".into(),
            roles: vec!["buyer".into()],
            api_key: Some(ApiKeyGrant {
                key_id: "k1".into(),
                scopes: vec!["storefront.read".into()],
                rate_limit_per_minute: None,
            }),
            issued_at: 0,
            session: None,
        }
    }

    /// A lookup that takes 50 ms, counts its calls and answers what `valid` says.
    fn counting(valid: Arc<Mutex<bool>>) -> (IdentityApiKeys, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let keys = IdentityApiKeys::with_lookup(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            let valid = *valid.lock().unwrap();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if valid {
                    Ok(partner())
                } else {
                    Err(AuthError::UnknownApiKey)
                }
            }
            .boxed()
        });
        (keys, calls)
    }

    #[tokio::test(start_paused = true)]
    async fn a_herd_of_misses_asks_identity_once_and_a_revoked_key_stops_within_five_seconds() {
        let valid = Arc::new(Mutex::new(true));
        let (keys, calls) = counting(valid.clone());
        let keys = Arc::new(keys);
        let herd: Vec<_> = (0..200)
            .map(|_| {
                let keys = keys.clone();
                tokio::spawn(async move { keys.resolve("thali_pk_secret").await })
            })
            .collect();
        for call in herd {
            assert_eq!(call.await.unwrap(), Ok(partner()));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one lookup for 200 concurrent misses");

        // Fresh: from memory.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(keys.resolve("thali_pk_secret").await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Past the TTL: the old answer now, one refresh in the background.
        *valid.lock().unwrap() = false; // revoked meanwhile
        tokio::time::advance(Duration::from_millis(1500)).await;
        for _ in 0..50 {
            assert!(keys.resolve("thali_pk_secret").await.is_ok(), "served while refreshing");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one refresh");
        // The refresh learnt the key is revoked: refused from now on (2.6 s after the first answer).
        assert_eq!(keys.resolve("thali_pk_secret").await, Err(AuthError::UnknownApiKey));

        // Another key is its own lookup; an unreachable identity is not remembered.
        let down = IdentityApiKeys::with_lookup(|_| async { Err(AuthError::Unavailable) }.boxed());
        assert_eq!(down.resolve("k").await, Err(AuthError::Unavailable));
        assert!(down.cache.lock().unwrap().values().all(|s| s.answer.is_none()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_good_answer_older_than_five_seconds_is_not_used() {
        let valid = Arc::new(Mutex::new(true));
        let (keys, calls) = counting(valid.clone());
        assert!(keys.resolve("k").await.is_ok());
        *valid.lock().unwrap() = false;
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            keys.resolve("k").await,
            Err(AuthError::UnknownApiKey),
            "waited for identity"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
