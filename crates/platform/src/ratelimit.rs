//! Rate limits (ADR 0026): GCRA — the generic cell rate algorithm — keyed by who is calling.
//!
//! A quota of `limit` per `period` lets a key spend up to `limit` at once and refills one every
//! `period / limit`. Each key keeps one number, its *theoretical arrival time* (TAT): a request
//! at `now` moves it to `max(TAT, now) + interval` and is refused if that lands more than a whole
//! period ahead of `now`. With Redis configured the TAT lives there, updated by one Lua script
//! that reads the server's clock, so every replica shares one budget whatever its own clock
//! says; without Redis, or while Redis does not answer, each replica keeps its own (counted in
//! `rate_limit_local_fallback_total`: never open silently, never closed).
use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{Arc, Mutex},
    time::Duration,
};

use fred::{
    interfaces::ClientLike,
    types::{Value as RedisValue, scripts::Script},
};

use crate::cache::Redis;

/// `limit` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub period: Duration,
}

impl Quota {
    pub const fn per_minute(limit: u32) -> Self {
        Self {
            limit,
            period: Duration::from_secs(60),
        }
    }

    /// `100/min`, `5/s`, `1000/h`, `300/90s`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let bad = || format!("`{spec}` is not a quota like 100/min, 5/s, 1000/h or 300/90s");
        let (limit, period) = spec.trim().split_once('/').ok_or_else(bad)?;
        let limit: u32 = limit.trim().parse().map_err(|_| bad())?;
        let period = match period.trim() {
            "s" | "sec" => Duration::from_secs(1),
            "min" | "m" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => {
                let secs: u64 = other.strip_suffix('s').ok_or_else(bad)?.parse().map_err(|_| bad())?;
                Duration::from_secs(secs)
            }
        };
        if limit == 0 || period.is_zero() || period > Duration::from_secs(86_400) {
            return Err(format!(
                "`{spec}`: the limit must be above 0 and the period 1 s to 1 day"
            ));
        }
        Ok(Self { limit, period })
    }

    /// Microseconds between two requests at the sustained rate.
    fn interval_us(&self) -> u64 {
        (self.period.as_micros() as u64 / u64::from(self.limit)).max(1)
    }

    /// How far ahead of now a key's TAT may run: the whole period.
    fn tolerance_us(&self) -> u64 {
        self.interval_us() * u64::from(self.limit)
    }
}

/// What the limiter said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests left now.
    pub remaining: u32,
    /// Until the key is back to its full quota.
    pub reset: Duration,
    /// When refused: how long until one request would pass.
    pub retry_after: Duration,
}

impl Decision {
    /// The GCRA step, given the stored TAT (0 = none) and now, both in microseconds. Returns the
    /// decision and the TAT to store when allowed.
    fn step(quota: &Quota, tat: u64, now: u64) -> (Self, Option<u64>) {
        let interval = quota.interval_us();
        let tolerance = quota.tolerance_us();
        let new_tat = tat.max(now) + interval;
        let ahead = new_tat - now;
        if ahead > tolerance {
            let decision = Self {
                allowed: false,
                remaining: 0,
                reset: Duration::from_micros(tat.max(now) - now),
                retry_after: Duration::from_micros(ahead - tolerance),
            };
            return (decision, None);
        }
        let decision = Self {
            allowed: true,
            remaining: ((tolerance - ahead) / interval) as u32,
            reset: Duration::from_micros(ahead),
            retry_after: Duration::ZERO,
        };
        (decision, Some(new_tat))
    }
}

/// GCRA in one Lua script: `KEYS[1]` the TAT, `ARGV[1]` interval µs, `ARGV[2]` tolerance µs.
/// Returns `{allowed, ahead_or_retry_µs, tat_minus_now_µs}`; the key expires once it would be
/// back to a full quota. The server's `TIME` is the only clock.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > tolerance then
  return {0, ahead - tolerance, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000))
return {1, ahead, 0}
"#;

/// Keys per shard of the local limiter before expired entries are swept.
const SWEEP_AT: usize = 4096;
const SHARDS: usize = 16;

/// One replica's own TATs (microseconds on tokio's clock, so tests can pause time), by policy
/// then key: a key seen before is looked up and updated in place, with no allocation.
struct Local {
    started: tokio::time::Instant,
    shards: Vec<Mutex<HashMap<&'static str, HashMap<String, u64>>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Local {
    fn new() -> Self {
        Self {
            started: tokio::time::Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    fn check(&self, policy: &'static str, quota: &Quota, key: &str) -> Decision {
        // Starts at one period so a fresh key is never "in the past" of zero.
        let now = self.started.elapsed().as_micros() as u64 + quota.tolerance_us();
        let shard = &self.shards[self.hasher.hash_one((policy, key)) as usize % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let map = shard.entry(policy).or_default();
        if let Some(tat) = map.get_mut(key) {
            let (decision, store) = Decision::step(quota, *tat, now);
            if let Some(new) = store {
                *tat = new;
            }
            return decision;
        }
        let (decision, store) = Decision::step(quota, 0, now);
        if let Some(tat) = store {
            if map.len() >= SWEEP_AT {
                map.retain(|_, t| *t > now);
            }
            map.insert(key.to_owned(), tat);
        }
        decision
    }
}

/// The limiter every policy of a process shares.
#[derive(Clone)]
pub struct RateLimiter(Arc<Inner>);

struct Inner {
    tenant: String,
    local: Local,
    redis: Option<Redis>,
    script: Script,
}

/// How long a check may wait for Redis before the replica decides alone.
const REDIS_WAIT: Duration = Duration::from_millis(100);

impl RateLimiter {
    /// A limiter shared through `redis` when given, in-process otherwise.
    pub fn new(tenant: &str, redis: Option<Redis>) -> Self {
        Self(Arc::new(Inner {
            tenant: tenant.to_owned(),
            local: Local::new(),
            redis,
            script: Script::from_lua(GCRA_LUA),
        }))
    }

    /// Counts one request of `key` under `policy` (a static name such as `anonymous`) against
    /// `quota`.
    pub async fn check(&self, policy: &'static str, quota: &Quota, key: &str) -> Decision {
        if let Some(redis) = &self.0.redis {
            if redis.client().is_connected() {
                match tokio::time::timeout(REDIS_WAIT, self.shared(redis, policy, quota, key)).await {
                    Ok(Ok(decision)) => return decision,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, policy, "rate limit: Redis failed; this replica limits alone");
                        fallback("error");
                    }
                    Err(_) => fallback("timeout"),
                }
            } else {
                fallback("disconnected");
            }
        }
        self.0.local.check(policy, quota, key)
    }

    async fn shared(
        &self,
        redis: &Redis,
        policy: &'static str,
        quota: &Quota,
        key: &str,
    ) -> Result<Decision, fred::error::Error> {
        // The braces are the Redis Cluster hash tag: one key, one slot.
        let redis_key = format!("thali:rl:{{{}:{policy}:{key}}}", self.0.tenant);
        let args: Vec<RedisValue> = vec![
            RedisValue::Integer(quota.interval_us() as i64),
            RedisValue::Integer(quota.tolerance_us() as i64),
        ];
        let (allowed, us, behind): (i64, i64, i64) = self
            .0
            .script
            .evalsha_with_reload(redis.client(), vec![redis_key], args)
            .await?;
        let us = us.max(0) as u64;
        Ok(if allowed == 1 {
            Decision {
                allowed: true,
                remaining: ((quota.tolerance_us().saturating_sub(us)) / quota.interval_us()) as u32,
                reset: Duration::from_micros(us),
                retry_after: Duration::ZERO,
            }
        } else {
            Decision {
                allowed: false,
                remaining: 0,
                reset: Duration::from_micros(behind.max(0) as u64),
                retry_after: Duration::from_micros(us),
            }
        })
    }
}

fn fallback(reason: &'static str) {
    metrics::counter!("rate_limit_local_fallback_total", "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_and_refuse_nonsense() {
        assert_eq!(Quota::parse("100/min").unwrap(), Quota::per_minute(100));
        assert_eq!(Quota::parse(" 5/s").unwrap().period, Duration::from_secs(1));
        assert_eq!(Quota::parse("300/90s").unwrap().period, Duration::from_secs(90));
        assert_eq!(Quota::parse("1000/h").unwrap().limit, 1000);
        for bad in ["", "100", "0/min", "10/week", "x/min", "10/0s", "10/2d"] {
            assert!(Quota::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_quota_spends_at_once_then_refills_one_interval_at_a_time() {
        let limiter = RateLimiter::new("t", None);
        let quota = Quota::per_minute(100);
        for i in 0..100 {
            let d = limiter.check("anonymous", &quota, "1.2.3.4").await;
            assert!(d.allowed, "request {}", i + 1);
            assert_eq!(d.remaining, 99 - i);
        }
        let refused = limiter.check("anonymous", &quota, "1.2.3.4").await;
        assert!(!refused.allowed, "the 101st in a minute");
        assert_eq!(refused.retry_after, Duration::from_millis(600));
        assert_eq!(refused.reset, Duration::from_secs(60));
        // Another key, another budget.
        assert!(limiter.check("anonymous", &quota, "1.2.3.5").await.allowed);
        // A refusal spends nothing: 600 ms later exactly one more passes.
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(limiter.check("anonymous", &quota, "1.2.3.4").await.allowed);
        assert!(!limiter.check("anonymous", &quota, "1.2.3.4").await.allowed);
        // A full minute later the whole quota is back.
        tokio::time::advance(Duration::from_secs(60)).await;
        let d = limiter.check("anonymous", &quota, "1.2.3.4").await;
        assert!(d.allowed);
        assert_eq!(d.remaining, 99);
    }

    #[tokio::test(start_paused = true)]
    async fn old_keys_are_swept_so_memory_stays_bounded() {
        let limiter = RateLimiter::new("t", None);
        let quota = Quota::per_minute(10);
        for i in 0..(SWEEP_AT * SHARDS * 2) {
            limiter.check("anonymous", &quota, &i.to_string()).await;
            if i % 1000 == 0 {
                tokio::time::advance(Duration::from_secs(61)).await;
            }
        }
        let held: usize = limiter
            .0
            .local
            .shards
            .iter()
            .map(|s| s.lock().unwrap().values().map(HashMap::len).sum::<usize>())
            .sum();
        assert!(held <= SWEEP_AT * SHARDS, "{held}");
    }
}
