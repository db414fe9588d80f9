//! The platform cache: L1 in-process (moka, bounded by bytes) in front of L2 Redis (fred;
//! standalone, sentinel or cluster, chosen by the URL), cache-aside with per-entry TTL.
//!
//! - Keys are partitioned by tenant and schema version: `t:{tenant}:v{version}:{kind}:{id}`, so
//!   tenants never share an entry and a format change never reads old bytes.
//! - Misses are single-flight: concurrent misses for one key run one load.
//! - Writers call [`TwoLevelCache::invalidate`] in the use case that committed: the entry is
//!   dropped here, deleted in Redis, and the key is published so every replica drops its L1 copy.
//! - Stale-if-error: when the load fails because the database is unavailable, the last value is
//!   served (marked stale) for up to `stale_for` past its freshness.
//! - Replicas agree: every key has a generation in Redis, bumped atomically with the DEL of an
//!   invalidation. A load remembers the generation it saw before reading the database, and its
//!   SET goes through (a Lua script, atomically) only if the generation has not moved: a replica
//!   whose load read the rows before another replica's write cannot put the old page back.
//! - Redis is optional: without it (embedded mode) L1 is the only level, the same code path;
//!   when it stops answering, reads go on from L1 and the loader, errors are counted, health
//!   reports it, and the client reconnects by itself.
use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use fred::{
    clients::{Client as RedisClient, SubscriberClient},
    interfaces::{ClientLike, EventInterface, KeysInterface, PubsubInterface},
    prelude::{Builder, Config as RedisConfig, ReconnectPolicy},
    types::{Value as RedisValue, scripts::Script},
};
use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use tokio::time::Instant;

/// Schema version of cached bytes; bump it when a cached format changes.
pub const SCHEMA_VERSION: u32 = 1;

/// How long a key's generation outlives its last invalidation: far longer than any load.
const GENERATION_TTL: Duration = Duration::from_secs(3600);

/// SET KEYS[1] = ARGV[1] for ARGV[3] ms, only if KEYS[2] (the generation) is still ARGV[2].
const SET_IF_GENERATION: &str = r#"
local seen = redis.call('GET', KEYS[2]) or '0'
if seen == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
"#;

/// Bumps the generation KEYS[2] (kept ARGV[1] ms) and deletes the value KEYS[1], at once.
const BUMP_AND_DELETE: &str = r#"
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
"#;

/// The Redis keys of a cache key: its value and its generation, in one hash slot (`{…}`) so both
/// scripts work on Redis Cluster.
fn redis_keys(key: &str) -> Vec<String> {
    vec![format!("{{{key}}}"), format!("{{{key}}}:gen")]
}

/// What L2 holds for a key: the value, and the generation seen with it (None: Redis did not
/// answer, so a load must not be stored there).
struct L2Read {
    bytes: Option<Arc<[u8]>>,
    generation: Option<i64>,
}

/// Redis commands that take longer than this count as failures (the read goes on without L2).
const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// One cache's policy.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Name in keys, channels and metrics, e.g. `storefront`.
    pub name: &'static str,
    /// Freshness of an entry (and its TTL in Redis).
    pub ttl: Duration,
    /// Freshness of an L1 copy when Redis holds the entry too: short, so replicas converge even
    /// if an invalidation message is lost.
    pub l1_ttl: Duration,
    /// How long past its freshness an entry may still be served when the database is down.
    pub stale_for: Duration,
    /// Bound on the bytes L1 holds.
    pub l1_max_bytes: u64,
    /// A load that has not answered by then counts as an outage (stale copies may be served): a
    /// database that hangs must not hold readers until their deadline. A cache in front of a
    /// service call sets it above the call's own deadline.
    pub load_timeout: Duration,
}

/// Where an answer came from and whether it is fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    L1,
    L2,
    Loaded,
    /// An expired copy, served because the loader failed with an outage.
    Stale,
}

/// A cached value and its source.
#[derive(Debug, Clone)]
pub struct Cached {
    pub bytes: Arc<[u8]>,
    pub source: Source,
}

/// An error a loader can report; outages allow serving stale copies.
pub trait LoadError: Clone + Send + Sync + 'static {
    /// Whether the failure is an outage (the database does not answer), not a bad request.
    fn is_outage(&self) -> bool;
    /// The outage a load that hangs past [`CacheSettings::load_timeout`] becomes.
    fn timed_out() -> Self;
}

/// A tenant-partitioned, versioned cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// `t:{tenant}:v{SCHEMA_VERSION}:{kind}:{id}`.
    pub fn new(tenant: &str, kind: &str, id: &str) -> Self {
        Self(format!("t:{tenant}:v{SCHEMA_VERSION}:{kind}:{id}"))
    }

    /// The one key of a creator's public storefront page, for the storefront service's cache
    /// and the facade's response cache alike.
    pub fn storefront(tenant: &str, username: &str) -> Self {
        Self::new(tenant, "store", username)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone)]
struct Entry {
    bytes: Arc<[u8]>,
    stored_at: Instant,
}

type Flight<E> = Shared<BoxFuture<'static, Result<Arc<[u8]>, E>>>;

/// A [`Flight`] with its error type erased: each cache's loader has its own.
type ErasedFlight = Box<dyn std::any::Any + Send + Sync>;

/// A Redis connection shared by every cache of a process, with its subscriber.
#[derive(Clone)]
pub struct Redis {
    client: RedisClient,
    subscriber: SubscriberClient,
    set_if_generation: Arc<Script>,
    bump_and_delete: Arc<Script>,
}

impl Redis {
    /// Connects to `url` (`redis://` standalone, `redis-sentinel://` sentinel, `redis-cluster://`
    /// cluster; `rediss://` for TLS) without waiting: a Redis that is down at start is retried
    /// in the background with exponential backoff.
    pub async fn connect(url: &str) -> Result<Self, fred::error::Error> {
        let config = RedisConfig {
            fail_fast: false,
            ..RedisConfig::from_url(url)?
        };
        let builder = {
            let mut b = Builder::from_config(config);
            b.with_performance_config(|p| p.default_command_timeout = REDIS_COMMAND_TIMEOUT)
                .with_connection_config(|c| {
                    c.connection_timeout = Duration::from_secs(2);
                    c.internal_command_timeout = Duration::from_secs(2);
                    c.max_command_attempts = 1;
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
            b
        };
        let client = builder.build()?;
        let subscriber = builder.build_subscriber_client()?;
        client.connect();
        subscriber.connect();
        let _reconnects = client.on_reconnect(|server| async move {
            tracing::info!(%server, "redis connected");
            Ok(())
        });
        let _errors = client.on_error(|(error, server)| async move {
            tracing::warn!(%error, server = ?server, "redis error");
            Ok(())
        });
        // Re-subscribe to every channel after a reconnect.
        drop(subscriber.manage_subscriptions());
        // Give a Redis that is up a moment to answer, so the first reads use it.
        let _ = tokio::time::timeout(Duration::from_secs(2), client.wait_for_connect()).await;
        Ok(Self {
            client,
            subscriber,
            set_if_generation: Arc::new(Script::from_lua(SET_IF_GENERATION)),
            bump_and_delete: Arc::new(Script::from_lua(BUMP_AND_DELETE)),
        })
    }

    /// The command client (for the rate limiter's script).
    pub(crate) fn client(&self) -> &RedisClient {
        &self.client
    }

    /// Whether the client is connected now.
    pub fn is_up(&self) -> bool {
        self.client.is_connected()
    }
}

/// The keys invalidated in cache `name` anywhere, as published through Redis: for a process that
/// keeps copies of another service's cached answers (the facade in distributed mode).
pub async fn invalidation_feed(redis: &Redis, name: &str) -> tokio::sync::broadcast::Receiver<String> {
    let channel = format!("thali:cache:invalidate:{name}");
    subscribe(redis.subscriber.clone(), channel.clone()).await;
    let (tx, rx) = tokio::sync::broadcast::channel(1024);
    let mut messages = redis.subscriber.message_rx();
    tokio::spawn(async move {
        loop {
            let key = match messages.recv().await {
                Ok(message) if message.channel == channel => match message.value.convert::<String>() {
                    Ok(key) => key,
                    Err(_) => continue,
                },
                Ok(_) => continue,
                // Missed messages: an empty key tells listeners to drop everything.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => String::new(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            };
            if tx.send(key).is_err() {
                break;
            }
        }
    });
    rx
}

/// Subscribes to `channel` (waiting for Redis's answer when it is up, so messages published
/// right after are heard), else retrying every second until Redis takes it; from then on fred
/// re-subscribes after every reconnect.
async fn subscribe(subscriber: SubscriberClient, channel: String) {
    if subscriber.subscribe(channel.clone()).await.is_ok() {
        return;
    }
    tokio::spawn(async move {
        loop {
            match subscriber.subscribe(channel.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(error = %e, channel, "cache: subscribing to invalidations; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// A two-level cache for one kind of value.
pub struct TwoLevelCache {
    settings: CacheSettings,
    l1: moka::future::Cache<String, Entry>,
    redis: Option<Redis>,
    /// Loads in flight by key, with an id so a finished load removes only itself.
    inflight: Mutex<HashMap<String, (u64, ErasedFlight)>>,
    next_flight: std::sync::atomic::AtomicU64,
    /// When each key was last invalidated, so a load that began before cannot store old bytes.
    invalidated: Mutex<HashMap<String, Instant>>,
    channel: String,
    /// Invalidations made while Redis was away, sent when it is back.
    pending: Mutex<std::collections::HashSet<String>>,
    /// Every key dropped here (by a local write or a message from another replica), for caches
    /// layered on this one in the same process (the facade's response cache).
    bus: tokio::sync::broadcast::Sender<String>,
}

impl TwoLevelCache {
    /// A cache with `settings`, over `redis` when given. Subscribes to the invalidation channel.
    pub async fn new(settings: CacheSettings, redis: Option<Redis>) -> Arc<Self> {
        let fresh_for = if redis.is_some() {
            settings.l1_ttl.min(settings.ttl)
        } else {
            settings.ttl
        };
        let l1 = moka::future::Cache::builder()
            .max_capacity(settings.l1_max_bytes)
            .weigher(|k: &String, v: &Entry| (k.len() + v.bytes.len()).try_into().unwrap_or(u32::MAX))
            .time_to_live(fresh_for + settings.stale_for)
            .build();
        let channel = format!("thali:cache:invalidate:{}", settings.name);
        let cache = Arc::new(Self {
            settings,
            l1,
            redis,
            inflight: Mutex::default(),
            next_flight: std::sync::atomic::AtomicU64::new(0),
            invalidated: Mutex::default(),
            channel,
            pending: Mutex::default(),
            bus: tokio::sync::broadcast::channel(1024).0,
        });
        if let Some(redis) = &cache.redis {
            subscribe(redis.subscriber.clone(), cache.channel.clone()).await;
            let weak = Arc::downgrade(&cache);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let Some(cache) = weak.upgrade() else { break };
                    cache.flush_pending().await;
                }
            });
            let weak = Arc::downgrade(&cache);
            let mut messages = redis.subscriber.message_rx();
            let channel = cache.channel.clone();
            tokio::spawn(async move {
                loop {
                    let received = messages.recv().await;
                    let Some(cache) = weak.upgrade() else { break };
                    match received {
                        Ok(message) if message.channel == channel => {
                            if let Ok(key) = message.value.convert::<String>() {
                                cache.drop_local(&key).await;
                            }
                        }
                        Ok(_) => {}
                        // Messages were missed: drop every local copy rather than serve old ones.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => cache.forget_all(),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                }
            });
        }
        cache
    }

    fn fresh_for(&self) -> Duration {
        if self.redis.is_some() {
            self.settings.l1_ttl.min(self.settings.ttl)
        } else {
            self.settings.ttl
        }
    }

    fn count(&self, level: &'static str, result: &'static str) {
        metrics::counter!("cache_requests_total", "cache" => self.settings.name, "level" => level, "result" => result)
            .increment(1);
    }

    /// Time from lookup to answer of a hit: what a cache-hit costs inside the process.
    fn hit_took(&self, level: &'static str, since: std::time::Instant) {
        metrics::histogram!("cache_hit_duration_seconds", "cache" => self.settings.name, "level" => level)
            .record(since.elapsed().as_secs_f64());
    }

    fn saved(&self) {
        metrics::counter!("cache_db_reads_saved_total", "cache" => self.settings.name).increment(1);
    }

    fn redis_error(&self, op: &str, e: &fred::error::Error) {
        tracing::debug!(error = %e, op, "cache: redis unavailable");
        metrics::counter!("cache_redis_errors_total", "cache" => self.settings.name).increment(1);
    }

    /// Whether Redis (when configured) answers; None without Redis.
    pub fn redis_up(&self) -> Option<bool> {
        let up = self.redis.as_ref().map(Redis::is_up);
        if let Some(up) = up {
            metrics::gauge!("cache_redis_up", "cache" => self.settings.name).set(if up { 1.0 } else { 0.0 });
        }
        up
    }

    /// The value under `key`: L1, then L2, then `load` (once for all concurrent callers). When
    /// `load` fails with an outage, an expired copy within `stale_for` is served instead.
    pub async fn get_or_load<E, F, Fut>(self: &Arc<Self>, key: &CacheKey, load: F) -> Result<Cached, E>
    where
        E: LoadError,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>> + Send + 'static,
    {
        let k = key.as_str();
        let lookup = std::time::Instant::now();
        let lookup_started = Instant::now();
        let local = self.l1.get(k).await;
        if let Some(entry) = &local
            && entry.stored_at.elapsed() < self.fresh_for()
        {
            self.count("l1", "hit");
            self.saved();
            self.hit_took("l1", lookup);
            return Ok(Cached {
                bytes: entry.bytes.clone(),
                source: Source::L1,
            });
        }
        self.count("l1", "miss");

        let l2 = self.l2_get(k).await;
        if let Some(bytes) = l2.bytes {
            self.count("l2", "hit");
            self.saved();
            self.hit_took("l2", lookup);
            if self.invalidated_since(k, lookup_started) {
                return Ok(Cached {
                    bytes,
                    source: Source::L2,
                });
            }
            self.l1
                .insert(
                    k.to_owned(),
                    Entry {
                        bytes: bytes.clone(),
                        stored_at: Instant::now(),
                    },
                )
                .await;
            return Ok(Cached {
                bytes,
                source: Source::L2,
            });
        }
        if self.redis.is_some() {
            self.count("l2", "miss");
        }

        let (flight, leader) = self.join_flight(k, l2.generation, load);
        match flight.await {
            Ok(bytes) => {
                if !leader {
                    self.saved();
                }
                Ok(Cached {
                    bytes,
                    source: Source::Loaded,
                })
            }
            Err(e) if e.is_outage() => {
                let stale = self.l1.get(k).await.or(local);
                match stale {
                    Some(entry) if entry.stored_at.elapsed() < self.fresh_for() + self.settings.stale_for => {
                        self.count("l1", "stale");
                        Ok(Cached {
                            bytes: entry.bytes,
                            source: Source::Stale,
                        })
                    }
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Joins the load in flight for `key`, or starts it; returns the flight and whether this
    /// caller started it. The flight stores its result and leaves the table itself, so it
    /// completes even if the caller that started it goes away.
    fn join_flight<E, F, Fut>(self: &Arc<Self>, key: &str, generation: Option<i64>, load: F) -> (Flight<E>, bool)
    where
        E: LoadError,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>> + Send + 'static,
    {
        let mut inflight = self.inflight.lock().expect("cache in-flight lock");
        if let Some(existing) = inflight.get(key).and_then(|(_, f)| f.downcast_ref::<Flight<E>>()) {
            return (existing.clone(), false);
        }
        let started = Instant::now();
        let id = self.next_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fut = load();
        let this = self.clone();
        let owned_key = key.to_owned();
        let flight: Flight<E> = async move {
            let result = match tokio::time::timeout(this.settings.load_timeout, fut).await {
                Ok(result) => result.map(Arc::<[u8]>::from),
                Err(_) => Err(E::timed_out()),
            };
            if let Ok(bytes) = &result {
                this.store(&owned_key, bytes, started, generation).await;
            }
            let mut inflight = this.inflight.lock().expect("cache in-flight lock");
            if inflight.get(&owned_key).is_some_and(|(current, _)| *current == id) {
                inflight.remove(&owned_key);
            }
            drop(inflight);
            result
        }
        .boxed()
        .shared();
        inflight.insert(key.to_owned(), (id, Box::new(flight.clone())));
        drop(inflight);
        // Driven to the end on its own, even if every caller goes away.
        tokio::spawn(tracing::Instrument::in_current_span(flight.clone()));
        (flight, true)
    }

    /// Whether `key` was invalidated at or after `since`.
    fn invalidated_since(&self, key: &str, since: Instant) -> bool {
        self.invalidated
            .lock()
            .expect("cache invalidation lock")
            .get(key)
            .is_some_and(|at| *at >= since)
    }

    /// Stores a freshly loaded value in both levels, unless the key was invalidated after the
    /// load began (then the value may predate the write): here by the local record, in Redis by
    /// the generation seen before the load (any replica's invalidation moves it).
    async fn store(&self, key: &str, bytes: &Arc<[u8]>, started: Instant, generation: Option<i64>) {
        let invalidated_later = self
            .invalidated
            .lock()
            .expect("cache invalidation lock")
            .get(key)
            .is_some_and(|at| *at >= started);
        if invalidated_later {
            return;
        }
        self.l1
            .insert(
                key.to_owned(),
                Entry {
                    bytes: bytes.clone(),
                    stored_at: Instant::now(),
                },
            )
            .await;
        if let (Some(redis), Some(generation)) = (&self.redis, generation)
            && redis.is_up()
        {
            let args: Vec<RedisValue> = vec![
                RedisValue::Bytes(bytes.to_vec().into()),
                RedisValue::Integer(generation),
                RedisValue::Integer(self.settings.ttl.as_millis() as i64),
            ];
            let set: Result<i64, _> = redis
                .set_if_generation
                .evalsha_with_reload(&redis.client, redis_keys(key), args)
                .await;
            match set {
                Ok(0) => {
                    tracing::debug!(
                        key,
                        "cache: another replica invalidated this key during the load; not stored"
                    );
                    metrics::counter!("cache_stale_sets_refused_total", "cache" => self.settings.name).increment(1);
                }
                Ok(_) => {}
                Err(e) => self.redis_error("set", &e),
            }
        }
    }

    async fn l2_get(&self, key: &str) -> L2Read {
        let nothing = L2Read {
            bytes: None,
            generation: None,
        };
        let Some(redis) = self.redis.as_ref() else {
            return nothing;
        };
        // Redis may still hold the value this key's pending invalidation is about.
        if self.pending.lock().expect("cache pending lock").contains(key) {
            return nothing;
        }
        if !redis.is_up() {
            self.redis_up();
            return nothing;
        }
        match redis.client.mget::<Vec<Option<Vec<u8>>>, _>(redis_keys(key)).await {
            Ok(found) => {
                let mut found = found.into_iter();
                let bytes = found.next().flatten().map(Arc::from);
                let generation = match found.next().flatten() {
                    None => Some(0),
                    Some(raw) => std::str::from_utf8(&raw).ok().and_then(|g| g.parse().ok()),
                };
                L2Read { bytes, generation }
            }
            Err(e) => {
                self.redis_error("get", &e);
                nothing
            }
        }
    }

    async fn drop_local(&self, key: &str) {
        {
            let mut invalidated = self.invalidated.lock().expect("cache invalidation lock");
            if invalidated.len() > 10_000 {
                let horizon = Instant::now() - Duration::from_secs(60);
                invalidated.retain(|_, at| *at > horizon);
            }
            invalidated.insert(key.to_owned(), Instant::now());
        }
        // A load that began before this write must not answer readers who come after it.
        self.inflight.lock().expect("cache in-flight lock").remove(key);
        self.l1.invalidate(key).await;
        // Nobody listening is fine.
        let _ = self.bus.send(key.to_owned());
    }

    /// Keys this cache drops from now on, locally or on another replica's word.
    pub fn invalidations(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.bus.subscribe()
    }

    /// Drops every entry of this process (when invalidation messages may have been missed).
    pub fn forget_all(&self) {
        self.l1.invalidate_all();
    }

    /// Drops `key` from this process only (an invalidation heard from elsewhere).
    pub async fn forget(&self, key: &str) {
        self.drop_local(key).await;
    }

    /// Drops `key` everywhere: here, in Redis, and (by a published message) in every replica's L1.
    pub async fn invalidate(&self, key: &CacheKey) {
        let k = key.as_str();
        metrics::counter!("cache_invalidations_total", "cache" => self.settings.name).increment(1);
        self.drop_local(k).await;
        if self.redis.is_some() {
            if !self.propagate(k).await {
                // Redis is away: its copy and the other replicas must still hear of this write,
                // so the key waits and goes out as soon as Redis takes it (retried every second).
                self.pending.lock().expect("cache pending lock").insert(k.to_owned());
            }
            // A reader may have copied Redis's old value into L1 between the drop and the DEL.
            self.l1.invalidate(k).await;
        }
    }

    /// Deletes `key` in Redis and tells the other replicas; false if Redis did not take it.
    async fn propagate(&self, key: &str) -> bool {
        let Some(redis) = &self.redis else { return true };
        if !redis.is_up() {
            return false;
        }
        let deleted: Result<i64, _> = redis
            .bump_and_delete
            .evalsha_with_reload(
                &redis.client,
                redis_keys(key),
                vec![RedisValue::Integer(GENERATION_TTL.as_millis() as i64)],
            )
            .await;
        if let Err(e) = deleted {
            self.redis_error("del", &e);
            return false;
        }
        let published: Result<i64, _> = redis.client.publish(self.channel.as_str(), key).await;
        if let Err(e) = published {
            self.redis_error("publish", &e);
            return false;
        }
        true
    }

    /// Sends the invalidations Redis missed while it was away.
    async fn flush_pending(&self) {
        let keys: Vec<String> = self.pending.lock().expect("cache pending lock").drain().collect();
        for key in keys {
            if !self.propagate(&key).await {
                self.pending.lock().expect("cache pending lock").insert(key);
            }
        }
    }
}
