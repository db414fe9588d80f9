//! The rate limiter on real Redis: replicas share one budget, counted by the server's clock; with
//! Redis gone each replica limits alone and says so in a metric.
use std::time::Duration;

use thali_platform::{
    cache::Redis,
    ratelimit::{Quota, RateLimiter},
    testing,
};

#[tokio::test]
async fn two_replicas_share_one_budget_through_redis() {
    let Some(url) = testing::redis_url() else { return };
    let tenant = format!("t{}", uuid::Uuid::now_v7().simple());
    let a = RateLimiter::new(&tenant, Some(Redis::connect(&url).await.unwrap()));
    let b = RateLimiter::new(&tenant, Some(Redis::connect(&url).await.unwrap()));
    // A long period, so refills during the test cannot blur the count.
    let quota = Quota::parse("10/h").unwrap();
    for i in 0..10 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        let d = limiter.check("anonymous", &quota, "198.51.100.7").await;
        assert!(d.allowed, "request {}", i + 1);
        assert_eq!(d.remaining, 9 - i as u32);
    }
    for limiter in [&a, &b] {
        let refused = limiter.check("anonymous", &quota, "198.51.100.7").await;
        assert!(!refused.allowed, "the budget is spent for every replica");
        // One request's worth of the hour, from the server's clock.
        let wait = refused.retry_after.as_secs();
        assert!((355..=360).contains(&wait), "{wait}");
    }
    assert!(
        a.check("signed_in", &quota, "198.51.100.7").await.allowed,
        "policies do not share"
    );
}

#[tokio::test]
async fn with_redis_gone_each_replica_limits_alone_and_counts_it() {
    let Some(mut server) = testing::RedisServer::start().await else {
        return;
    };
    let metrics = thali_platform::telemetry::metrics_handle();
    let limiter = RateLimiter::new("t", Some(Redis::connect(&server.url()).await.unwrap()));
    let quota = Quota::parse("3/h").unwrap();
    for _ in 0..3 {
        assert!(limiter.check("anonymous", &quota, "a").await.allowed);
    }
    assert!(!limiter.check("anonymous", &quota, "a").await.allowed);
    server.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Redis is gone: the replica's own limiter answers (a fresh budget: it never saw the
    // shared one), still limiting, never failing.
    for _ in 0..3 {
        assert!(limiter.check("anonymous", &quota, "a").await.allowed);
    }
    assert!(!limiter.check("anonymous", &quota, "a").await.allowed, "still limited");
    let text = metrics.render();
    let counted = text
        .lines()
        .filter(|l| l.starts_with("rate_limit_local_fallback_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(counted >= 4.0, "{text}");
}
