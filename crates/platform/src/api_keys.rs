//! Partner API keys as the server stack sees them: resolved through the identity service and
//! cached for [`CACHE_TTL`], so a revoked key stops working within that time (and well within
//! the 5 s the platform promises).
use std::{
    collections::HashMap,
    pin::Pin,
    sync::Mutex,
    time::{Duration, Instant},
};

use thali_proto::identity::v1::{Role, VerifyApiKeyRequest, identity_service_client::IdentityServiceClient};

use crate::{
    auth::{ApiKeyGrant, AuthError, Principal},
    client::{Client, GrpcChannel, Target},
    server::ApiKeyResolver,
};

/// How long an answer about a key is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
const CACHE_MAX: usize = 10_000;

/// A remembered answer about a key: when it was given, and what it was.
type CachedAnswer = (Instant, Result<Principal, AuthError>);

/// Resolves keys with identity's `VerifyApiKey`.
pub struct IdentityApiKeys {
    client: Client<IdentityServiceClient<GrpcChannel>>,
    cache: Mutex<HashMap<String, CachedAnswer>>,
}

impl IdentityApiKeys {
    pub fn new(identity: Target) -> Self {
        Self {
            client: Client::new(identity, IdentityServiceClient::new),
            cache: Mutex::default(),
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
    fn resolve(&self, key: &str) -> Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send + '_>> {
        // The cache is keyed by a hash, so no key sits in memory longer than its call.
        let cache_key: String = ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = key.to_owned();
        Box::pin(async move {
            if let Some((at, answer)) = self.cache.lock().expect("API key cache lock").get(&cache_key)
                && at.elapsed() < CACHE_TTL
            {
                return answer.clone();
            }
            let answer = match self
                .client
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
                        }),
                        issued_at: 0,
                        session: None,
                    })
                }
                Err(status) if status.code() == tonic::Code::Unauthenticated => Err(AuthError::UnknownApiKey),
                Err(status) => {
                    // Identity is down or slow: refuse, but do not remember the refusal.
                    tracing::warn!(error = %status, "API key check failed");
                    return Err(AuthError::Unavailable);
                }
            };
            let mut cache = self.cache.lock().expect("API key cache lock");
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(cache_key, (Instant::now(), answer.clone()));
            answer
        })
    }
}
