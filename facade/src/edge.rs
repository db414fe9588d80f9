//! The facade's response cache for the public storefront: the JSON answer (and so its ETag)
//! kept under the same key as the storefront's cache and dropped on the same invalidations, so a
//! hot read costs no gRPC hop (DESIGN.md, "a response cache at the edge"). It holds anonymous,
//! fresh answers only, for at most 5 s even if an invalidation were lost; it exists only where
//! invalidations reach it (in-process, or through Redis).
use std::{sync::Arc, time::Duration};

use thali_platform::cache::{CacheKey, CacheSettings, LoadError, TwoLevelCache};
use tokio::sync::broadcast::{Receiver, error::RecvError};

use crate::problem::Problem;

/// Why an edge load did not produce a cacheable answer.
#[derive(Debug, Clone)]
pub enum EdgeMiss {
    /// The service refused or failed: answer with this problem.
    Problem(Problem),
    /// A good answer that must not be kept (a stale copy from a database outage).
    Uncacheable(Vec<u8>),
}

impl LoadError for EdgeMiss {
    fn is_outage(&self) -> bool {
        false
    }
    fn timed_out() -> Self {
        EdgeMiss::Problem(Problem::new(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            "DEADLINE_EXCEEDED",
            "the service did not answer in time",
        ))
    }
}

/// Response cache of the storefront read.
#[derive(Clone)]
pub struct EdgeCache {
    pub(crate) cache: Arc<TwoLevelCache>,
    tenant: String,
}

impl EdgeCache {
    /// A response cache fed by `invalidations` (storefront cache keys).
    pub async fn new(tenant: &str, mut invalidations: Receiver<String>) -> Self {
        let settings = CacheSettings {
            name: "facade_storefront",
            ttl: Duration::from_secs(5),
            l1_ttl: Duration::from_secs(5),
            stale_for: Duration::ZERO,
            l1_max_bytes: 64 * 1024 * 1024,
            // The gRPC call's own deadline (5 s) decides; this only bounds a call that hangs.
            load_timeout: Duration::from_secs(10),
        };
        let cache = TwoLevelCache::new(settings, None).await;
        let weak = Arc::downgrade(&cache);
        tokio::spawn(async move {
            loop {
                let received = invalidations.recv().await;
                let Some(cache) = weak.upgrade() else { break };
                match received {
                    // An empty key means the feed missed messages: drop everything.
                    Ok(key) if key.is_empty() => cache.forget_all(),
                    Ok(key) => cache.forget(&key).await,
                    // Messages were missed: drop everything rather than serve a stale page.
                    Err(RecvError::Lagged(_)) => cache.forget_all(),
                    Err(RecvError::Closed) => break,
                }
            }
        });
        Self {
            cache,
            tenant: tenant.to_owned(),
        }
    }

    /// The key of `username`'s storefront: the storefront service's own.
    pub fn key(&self, username: &str) -> CacheKey {
        CacheKey::new(&self.tenant, "store", username)
    }
}
