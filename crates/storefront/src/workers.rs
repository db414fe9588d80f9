//! Background work of the storefront: counting which storefronts buyers read (to warm the cache
//! with them after a restart) and flushing the counts to the database; and its job worker
//! (releasing held stock past its expiry, housekeeping).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use thali_platform::jobs::{JobError, Queue, RetrySchedule, Worker};

use crate::{grpc::StorefrontGrpc, store::StorefrontStore};

/// Reads per storefront since the last flush.
#[derive(Debug, Default)]
pub struct ReadCounter {
    counts: Mutex<HashMap<String, u64>>,
}

impl ReadCounter {
    /// Counts one read of `username`'s storefront.
    pub fn record(&self, username: &str) {
        let mut counts = self.counts.lock().expect("read counter lock");
        // Bounded: a flood of distinct names cannot grow this past what one flush writes.
        if counts.len() < 100_000 || counts.contains_key(username) {
            *counts.entry(username.to_owned()).or_default() += 1;
        }
    }

    /// Takes the counts gathered so far.
    pub fn drain(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *self.counts.lock().expect("read counter lock"))
            .into_iter()
            .collect()
    }
}

/// Adds the gathered read counts to the database every `every`, until the process ends. A
/// failed flush puts nothing back (a popularity count may lose a few reads, never break).
pub fn spawn_read_flush(
    store: StorefrontStore,
    reads: std::sync::Arc<ReadCounter>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let counts = reads.drain();
            if counts.is_empty() {
                continue;
            }
            if let Err(e) = store.record_reads(&counts).await {
                tracing::warn!(error = %e, "storefront read counts not saved");
            }
        }
    })
}

/// The service's name on the job queue.
pub const SERVICE: &str = "storefront";

pub const PRUNE_IDEMPOTENCY: &str = "storefront.prune_idempotency";

/// The sweep that puts stock held past its expiry back on sale.
pub const RELEASE_EXPIRED: &str = "storefront.release_expired_reservations";

/// How often held stock past its expiry is looked for.
pub const RELEASE_EVERY: Duration = Duration::from_secs(30);

/// The storefront's job worker: the expiry sweep of held stock every 30 s (dropping the cached
/// storefronts whose stock came back), and hourly housekeeping of idempotency records and of the
/// queue.
pub fn job_worker(store: StorefrontStore, grpc: Arc<StorefrontGrpc>, queue: Queue) -> Worker {
    let sweeper = store.clone();
    Worker::new(store.connection().clone(), queue)
        .with_housekeeping()
        .prune_every(PRUNE_IDEMPOTENCY, Duration::from_secs(3600), move |now| {
            let store = store.clone();
            async move { store.prune_idempotency(now).await }
        })
        .handle(
            RELEASE_EXPIRED,
            RetrySchedule::exponential(3, Duration::from_secs(5), Duration::from_secs(20)),
            move |_| {
                let (store, grpc) = (sweeper.clone(), grpc.clone());
                async move {
                    let pages = store.release_expired().await.map_err(JobError::retry)?;
                    for page in pages {
                        grpc.drop_storefront(&page).await;
                    }
                    Ok(())
                }
            },
        )
        .every(RELEASE_EXPIRED, RELEASE_EVERY)
}
