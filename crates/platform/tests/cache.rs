//! The two-level cache over L1 alone and over L1 + real Redis (THALI_TEST_REDIS_URL; required
//! under CI=true), including Redis stopping mid-test and the database going away.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use thali_platform::{
    cache::{CacheKey, CacheSettings, LoadError, Redis, Source, TwoLevelCache},
    testing::{self, RedisServer},
};

#[derive(Debug, Clone, PartialEq)]
enum Failure {
    Outage,
}

impl LoadError for Failure {
    fn is_outage(&self) -> bool {
        matches!(self, Failure::Outage)
    }
    fn timed_out() -> Self {
        Failure::Outage
    }
}

/// A stand-in for the database: a value per id, a read counter, and a switch to take it down.
#[derive(Clone, Default)]
struct Source_ {
    values: Arc<Mutex<std::collections::HashMap<String, String>>>,
    reads: Arc<AtomicUsize>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Source_ {
    fn set(&self, id: &str, value: &str) {
        self.values.lock().unwrap().insert(id.to_owned(), value.to_owned());
    }

    fn loader(&self, id: &str, delay: Duration) -> impl Future<Output = Result<Vec<u8>, Failure>> + Send + 'static {
        let this = self.clone();
        let id = id.to_owned();
        async move {
            this.reads.fetch_add(1, Ordering::SeqCst);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if this.down.load(Ordering::SeqCst) {
                return Err(Failure::Outage);
            }
            Ok(this
                .values
                .lock()
                .unwrap()
                .get(&id)
                .cloned()
                .unwrap_or_default()
                .into_bytes())
        }
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

fn settings(name: &'static str) -> CacheSettings {
    CacheSettings {
        name,
        ttl: Duration::from_secs(60),
        l1_ttl: Duration::from_secs(5),
        stale_for: Duration::from_secs(300),
        l1_max_bytes: 1 << 20,
        load_timeout: Duration::from_secs(2),
    }
}

async fn read(cache: &Arc<TwoLevelCache>, db: &Source_, key: &CacheKey, id: &str) -> (String, Source) {
    let got = cache.get_or_load(key, || db.loader(id, Duration::ZERO)).await.unwrap();
    (String::from_utf8(got.bytes.to_vec()).unwrap(), got.source)
}

/// A tenant no other test (or earlier run) uses, so shared Redis data never crosses tests.
fn tenant() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

#[tokio::test(start_paused = true)]
async fn l1_alone_hits_misses_and_expires() {
    let cache = TwoLevelCache::new(settings("t1"), None).await;
    let db = Source_::default();
    db.set("chai", "v1");
    let key = CacheKey::new("default", "store", "chai");
    assert_eq!(read(&cache, &db, &key, "chai").await, ("v1".into(), Source::Loaded));
    assert_eq!(read(&cache, &db, &key, "chai").await, ("v1".into(), Source::L1));
    assert_eq!(db.reads(), 1);
    db.set("chai", "v2");
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(
        read(&cache, &db, &key, "chai").await.1,
        Source::L1,
        "fresh for the whole TTL without Redis"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        read(&cache, &db, &key, "chai").await,
        ("v2".into(), Source::Loaded),
        "expired after 60 s"
    );
    assert_eq!(db.reads(), 2);
}

#[tokio::test]
async fn l1_and_redis_hit_miss_and_share_between_instances() {
    let Some(url) = testing::redis_url() else { return };
    let redis = Redis::connect(&url).await.unwrap();
    let a = TwoLevelCache::new(settings("t2"), Some(redis.clone())).await;
    let b = TwoLevelCache::new(settings("t2"), Some(Redis::connect(&url).await.unwrap())).await;
    let db = Source_::default();
    db.set("chai", "v1");
    let key = CacheKey::new(&tenant(), "store", "chai");
    assert_eq!(read(&a, &db, &key, "chai").await, ("v1".into(), Source::Loaded));
    assert_eq!(read(&a, &db, &key, "chai").await.1, Source::L1);
    assert_eq!(
        read(&b, &db, &key, "chai").await,
        ("v1".into(), Source::L2),
        "the other replica reads Redis"
    );
    assert_eq!(read(&b, &db, &key, "chai").await.1, Source::L1);
    assert_eq!(db.reads(), 1, "one database read for two replicas");
}

/// Real time (Redis keeps real time), sub-second lifetimes.
#[tokio::test]
async fn with_redis_l1_copies_expire_to_l2_and_l2_entries_expire_to_the_loader() {
    let Some(url) = testing::redis_url() else { return };
    let short = CacheSettings {
        ttl: Duration::from_millis(400),
        l1_ttl: Duration::from_millis(100),
        ..settings("t8")
    };
    let cache = TwoLevelCache::new(short, Some(Redis::connect(&url).await.unwrap())).await;
    let db = Source_::default();
    db.set("k", "v1");
    let key = CacheKey::new(&tenant(), "store", "k");
    assert_eq!(read(&cache, &db, &key, "k").await.1, Source::Loaded);
    assert_eq!(read(&cache, &db, &key, "k").await.1, Source::L1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        read(&cache, &db, &key, "k").await.1,
        Source::L2,
        "L1 copy expired, Redis still holds it"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    db.set("k", "v2");
    assert_eq!(
        read(&cache, &db, &key, "k").await,
        ("v2".into(), Source::Loaded),
        "expired in Redis too"
    );
    assert_eq!(db.reads(), 2);
}

#[tokio::test]
async fn a_write_through_one_replica_is_seen_through_the_other_at_once() {
    let Some(url) = testing::redis_url() else { return };
    let a = TwoLevelCache::new(settings("t3"), Some(Redis::connect(&url).await.unwrap())).await;
    let b = TwoLevelCache::new(settings("t3"), Some(Redis::connect(&url).await.unwrap())).await;
    let db = Source_::default();
    db.set("shop", "before");
    let key = CacheKey::new(&tenant(), "store", "shop");
    read(&a, &db, &key, "shop").await;
    assert_eq!(read(&b, &db, &key, "shop").await.0, "before");

    db.set("shop", "after");
    a.invalidate(&key).await;
    let mut seen = String::new();
    for _ in 0..50 {
        seen = read(&b, &db, &key, "shop").await.0;
        if seen == "after" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, "after", "B dropped its L1 copy on A's invalidation");
    assert_eq!(read(&a, &db, &key, "shop").await.0, "after");
}

/// Two replicas with Redis: A's load reads the old rows, B's write commits and invalidates, then
/// A's load finishes. The old page must not land in Redis for every replica to serve. A is
/// deaf to B's invalidation message (another channel), as when that message is late: only the
/// per-key generation in Redis can stop A.
#[tokio::test]
async fn a_load_that_read_before_another_replicas_write_cannot_put_the_old_page_back() {
    let Some(url) = testing::redis_url() else { return };
    let a = TwoLevelCache::new(settings("race_a"), Some(Redis::connect(&url).await.unwrap())).await;
    let b = TwoLevelCache::new(settings("race_b"), Some(Redis::connect(&url).await.unwrap())).await;
    let key = CacheKey::new(&tenant(), "store", "race");

    let (read_rows, rows_read) = tokio::sync::oneshot::channel::<()>();
    let (release, held) = tokio::sync::oneshot::channel::<()>();
    let replica_a = tokio::spawn({
        let (a, key) = (a.clone(), key.clone());
        async move {
            a.get_or_load(&key, move || async move {
                let old = b"old page".to_vec();
                let _ = read_rows.send(());
                let _ = held.await;
                Ok::<_, Failure>(old)
            })
            .await
        }
    });
    rows_read.await.unwrap();
    b.invalidate(&key).await;
    release.send(()).unwrap();
    // A's own caller asked before the write: the old page is a fair answer to it.
    assert_eq!(&*replica_a.await.unwrap().unwrap().bytes, b"old page");

    // Every later reader (B, or any replica that asks Redis) loads the new page.
    let db = Source_::default();
    db.set("race", "new page");
    assert_eq!(read(&b, &db, &key, "race").await, ("new page".into(), Source::Loaded));
    let c = TwoLevelCache::new(settings("race_b"), Some(Redis::connect(&url).await.unwrap())).await;
    assert_eq!(read(&c, &db, &key, "race").await.0, "new page");

    // And a load that saw no invalidation is stored as before.
    let d = TwoLevelCache::new(settings("race_b"), Some(Redis::connect(&url).await.unwrap())).await;
    assert_eq!(read(&d, &db, &key, "race").await, ("new page".into(), Source::L2));
}

async fn one_load_for_many_misses(cache: Arc<TwoLevelCache>) {
    let db = Source_::default();
    db.set("hot", "drop");
    let key = CacheKey::new(&tenant(), "store", "hot");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (cache, db, key) = (cache.clone(), db.clone(), key.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&key, || db.loader("hot", Duration::from_millis(50)))
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(&*t.await.unwrap().unwrap().bytes, b"drop");
    }
    assert_eq!(db.reads(), 1, "100 concurrent misses ran one query");
}

#[tokio::test]
async fn concurrent_misses_are_single_flight() {
    one_load_for_many_misses(TwoLevelCache::new(settings("t4"), None).await).await;
    if let Some(url) = testing::redis_url() {
        one_load_for_many_misses(TwoLevelCache::new(settings("t4"), Some(Redis::connect(&url).await.unwrap())).await)
            .await;
    }
}

#[tokio::test]
async fn tenants_never_share_an_entry() {
    let redis = match testing::redis_url() {
        Some(url) => Some(Redis::connect(&url).await.unwrap()),
        None => None,
    };
    let cache = TwoLevelCache::new(settings("t5"), redis).await;
    let (one, two) = (tenant(), tenant());
    let db_one = Source_::default();
    db_one.set("same-id", "tenant one");
    let db_two = Source_::default();
    db_two.set("same-id", "tenant two");
    let k1 = CacheKey::new(&one, "store", "same-id");
    let k2 = CacheKey::new(&two, "store", "same-id");
    assert_ne!(k1, k2);
    assert_eq!(read(&cache, &db_one, &k1, "same-id").await.0, "tenant one");
    assert_eq!(read(&cache, &db_two, &k2, "same-id").await.0, "tenant two");
    assert_eq!(read(&cache, &db_one, &k1, "same-id").await.0, "tenant one");
}

#[tokio::test]
async fn redis_stopping_mid_test_changes_nothing_for_readers_and_is_used_again_when_back() {
    let Some(mut server) = RedisServer::start().await else {
        return;
    };
    let cache = TwoLevelCache::new(settings("t6"), Some(Redis::connect(&server.url()).await.unwrap())).await;
    assert_eq!(cache.redis_up(), Some(true));
    let db = Source_::default();
    db.set("a", "1");
    db.set("b", "2");
    let t = tenant();
    let (ka, kb) = (CacheKey::new(&t, "store", "a"), CacheKey::new(&t, "store", "b"));
    read(&cache, &db, &ka, "a").await;

    server.stop();
    let started = std::time::Instant::now();
    assert_eq!(read(&cache, &db, &ka, "a").await, ("1".into(), Source::L1));
    assert_eq!(
        read(&cache, &db, &kb, "b").await,
        ("2".into(), Source::Loaded),
        "uncached reads go to the database"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a dead Redis does not stall reads: {:?}",
        started.elapsed()
    );
    let mut down = false;
    for _ in 0..40 {
        if cache.redis_up() == Some(false) {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(down, "the cache reports Redis down");

    server.restart().await;
    let mut up = false;
    for _ in 0..100 {
        if cache.redis_up() == Some(true) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the client reconnects by itself");
    let c = CacheKey::new(&t, "store", "c");
    db.set("c", "3");
    read(&cache, &db, &c, "c").await;
    let other = TwoLevelCache::new(settings("t6"), Some(Redis::connect(&server.url()).await.unwrap())).await;
    assert_eq!(
        read(&other, &db, &c, "c").await,
        ("3".into(), Source::L2),
        "values reach Redis again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_database_outage_serves_stale_within_the_bound_and_fails_without_a_copy() {
    let cache = TwoLevelCache::new(settings("t7"), None).await;
    let db = Source_::default();
    db.set("kept", "last good");
    let kept = CacheKey::new("default", "store", "kept");
    read(&cache, &db, &kept, "kept").await;
    db.down.store(true, Ordering::SeqCst);

    tokio::time::advance(Duration::from_secs(120)).await;
    let got = cache
        .get_or_load(&kept, || db.loader("kept", Duration::ZERO))
        .await
        .unwrap();
    assert_eq!((&*got.bytes, got.source), (&b"last good"[..], Source::Stale));

    let cold = CacheKey::new("default", "store", "cold");
    let err = cache
        .get_or_load(&cold, || db.loader("cold", Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(err, Failure::Outage);

    tokio::time::advance(Duration::from_secs(300)).await;
    let err = cache
        .get_or_load(&kept, || db.loader("kept", Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(err, Failure::Outage, "past the stale bound the outage shows");
}

#[tokio::test(start_paused = true)]
async fn a_database_that_hangs_counts_as_an_outage() {
    let cache = TwoLevelCache::new(settings("t9"), None).await;
    let db = Source_::default();
    db.set("slow", "kept");
    let key = CacheKey::new("default", "store", "slow");
    read(&cache, &db, &key, "slow").await;
    tokio::time::advance(Duration::from_secs(61)).await;
    // The load hangs for a minute; after its 2 s bound the last copy answers, marked stale.
    let got = cache
        .get_or_load(&key, || db.loader("slow", Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!((&*got.bytes, got.source), (&b"kept"[..], Source::Stale));
}
