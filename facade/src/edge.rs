//! The facade's response cache for the public storefront: the JSON answer (and so its ETag)
//! kept under the same key as the storefront's cache and dropped on the same invalidations, so a
//! hot read costs no gRPC hop (DESIGN.md, "a response cache at the edge"). It holds anonymous
//! answers, fresh for at most 5 s even if an invalidation were lost; it exists only where
//! invalidations reach it (in-process, or through Redis).
//!
//! Stale-if-error (RFC 5861, ADR 0010): when the storefront cannot be reached at all
//! (UNAVAILABLE: every replica down, breakers open, shed; or no answer in time), the last copy
//! of a page is served for up to `stale_if_error` past its freshness, marked stale. A page
//! changed by its owner is dropped at once, so a stale copy is never older than the last write
//! the facade heard of.
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
        matches!(self, EdgeMiss::Problem(p) if p.status == 503 || p.status == 504)
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
    fresh_cache_control: axum::http::HeaderValue,
}

impl EdgeCache {
    /// A response cache fed by `invalidations` (storefront cache keys), serving its last copy
    /// for up to `stale_if_error` while the storefront cannot be reached.
    pub async fn new(tenant: &str, mut invalidations: Receiver<String>, stale_if_error: Duration) -> Self {
        let settings = CacheSettings {
            name: "facade_storefront",
            ttl: Duration::from_secs(5),
            l1_ttl: Duration::from_secs(5),
            stale_for: stale_if_error,
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
            fresh_cache_control: axum::http::HeaderValue::try_from(format!(
                "public, max-age=60, stale-if-error={}",
                stale_if_error.as_secs()
            ))
            .expect("digits make a valid header"),
        }
    }

    /// The key of `username`'s storefront: the storefront service's own.
    pub fn key(&self, username: &str) -> CacheKey {
        CacheKey::storefront(&self.tenant, username)
    }

    /// `Cache-Control` of a fresh anonymous answer: cacheable for 60 s and, per RFC 5861,
    /// usable by caches for `stale_if_error` more when the origin fails. Made once.
    pub fn fresh_cache_control(&self) -> axum::http::HeaderValue {
        self.fresh_cache_control.clone()
    }
}
