//! The cached storefront read: every write path invalidates it (in-process and through Redis
//! for every replica), reads survive a database outage within the stale bound, and the most-read
//! pages are warm after a restart.
mod support;

use std::time::Duration;

use support::{Harness, as_user, inr, new_creator};
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::{
    cache::{CacheSettings, Redis},
    testing,
};
use thali_proto::storefront::v1 as pb;
use tonic::Code;

fn tenant() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

async fn storefront(h: &Harness, username: &str) -> pb::GetStorefrontResponse {
    h.client()
        .get_storefront(pb::GetStorefrontRequest {
            username: username.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn product(h: &Harness, token: &str, username: &str, title: &str) -> pb::Product {
    let req = pb::CreateProductRequest {
        username: username.into(),
        title: title.into(),
        description: String::new(),
        price: inr(100),
        stock: None,
        active: None,
        idempotency_key: String::new(),
    };
    h.client()
        .create_product(as_user(token, req))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap()
}

/// Reads, writes through each path, and reads again at once: the write shows every time.
async fn every_write_path_invalidates(h: &Harness) {
    let alice = h.token("alice");
    h.client()
        .create_creator(as_user(&alice, new_creator("cached_shop")))
        .await
        .unwrap();
    assert!(storefront(h, "cached_shop").await.products.is_empty());

    let chai = product(h, &alice, "cached_shop", "Chai").await;
    assert_eq!(
        storefront(h, "cached_shop").await.products.len(),
        1,
        "create product invalidates"
    );

    let update = pb::UpdateProfileRequest {
        username: "cached_shop".into(),
        display_name: None,
        bio: Some("new bio".into()),
    };
    h.client().update_profile(as_user(&alice, update)).await.unwrap();
    assert_eq!(
        storefront(h, "cached_shop").await.creator.unwrap().bio,
        "new bio",
        "profile update invalidates"
    );

    let rename = pb::UpdateProductRequest {
        product_id: chai.id.clone(),
        title: Some("Masala chai".into()),
        ..Default::default()
    };
    h.client().update_product(as_user(&alice, rename)).await.unwrap();
    assert_eq!(
        storefront(h, "cached_shop").await.products[0].title,
        "Masala chai",
        "product update invalidates"
    );

    h.client()
        .archive_product(as_user(&alice, pb::ArchiveProductRequest { product_id: chai.id }))
        .await
        .unwrap();
    assert!(
        storefront(h, "cached_shop").await.products.is_empty(),
        "archive invalidates"
    );
}

#[tokio::test]
async fn every_write_path_invalidates_in_process() {
    every_write_path_invalidates(&Harness::start().await).await;
}

#[tokio::test]
async fn every_write_path_invalidates_with_redis() {
    let Some(url) = testing::redis_url() else { return };
    let t = testing::sqlite().await;
    Migrator::up(&t.db, None).await.unwrap();
    let h = Harness::start_on(t.db, Some(Redis::connect(&url).await.unwrap()), &tenant()).await;
    every_write_path_invalidates(&h).await;
}

#[tokio::test]
async fn a_write_through_one_replica_is_read_through_the_other_at_once() {
    let Some(url) = testing::redis_url() else { return };
    let t = testing::sqlite().await;
    Migrator::up(&t.db, None).await.unwrap();
    let tenant = tenant();
    let a = Harness::start_on(t.db.clone(), Some(Redis::connect(&url).await.unwrap()), &tenant).await;
    let b = Harness::start_on(t.db.clone(), Some(Redis::connect(&url).await.unwrap()), &tenant).await;
    let alice = a.token("alice");
    a.client()
        .create_creator(as_user(&alice, new_creator("two_replicas")))
        .await
        .unwrap();
    assert!(storefront(&b, "two_replicas").await.products.is_empty());
    assert!(storefront(&a, "two_replicas").await.products.is_empty());

    product(&a, &alice, "two_replicas", "Vada pav").await;
    let mut seen = 0;
    for _ in 0..20 {
        seen = storefront(&b, "two_replicas").await.products.len();
        if seen == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, 1, "replica B sees A's write");
}

fn short_lived() -> CacheSettings {
    CacheSettings {
        ttl: Duration::from_millis(200),
        ..thali_storefront::cache_settings()
    }
}

#[tokio::test]
async fn a_database_outage_serves_the_cached_page_stale_and_the_rest_unavailable() {
    let t = testing::sqlite().await;
    Migrator::up(&t.db, None).await.unwrap();
    let h = Harness::start_with(t.db.clone(), None, &tenant(), short_lived()).await;
    let alice = h.token("alice");
    h.client()
        .create_creator(as_user(&alice, new_creator("outage_shop")))
        .await
        .unwrap();
    h.client()
        .create_creator(as_user(&alice, new_creator("never_read")))
        .await
        .unwrap();
    assert!(!storefront(&h, "outage_shop").await.stale);

    tokio::time::sleep(Duration::from_millis(300)).await;
    t.db.close_by_ref().await.unwrap();

    let page = storefront(&h, "outage_shop").await;
    assert!(
        page.stale,
        "past its freshness, served stale while the database is down"
    );
    assert_eq!(page.creator.unwrap().username, "outage_shop");

    let err = h
        .client()
        .get_storefront(pb::GetStorefrontRequest {
            username: "never_read".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    use tonic_types::StatusExt;
    assert!(
        err.get_details_retry_info().and_then(|r| r.retry_delay).is_some(),
        "tells when to retry"
    );
}

#[tokio::test]
async fn the_most_read_storefronts_are_warm_after_a_restart() {
    let t = testing::sqlite().await;
    Migrator::up(&t.db, None).await.unwrap();
    let first = Harness::start_on(t.db.clone(), None, "default").await;
    let alice = first.token("alice");
    for name in ["popular_one", "popular_two", "rarely_read"] {
        first
            .client()
            .create_creator(as_user(&alice, new_creator(name)))
            .await
            .unwrap();
    }
    for _ in 0..5 {
        storefront(&first, "popular_one").await;
        storefront(&first, "popular_two").await;
    }
    first.storefront.flush_reads().await.unwrap();

    let restarted = Harness::start_on(t.db.clone(), None, "default").await;
    assert_eq!(
        restarted.storefront.warm().await,
        2,
        "the two storefronts that were read"
    );
    t.db.close_by_ref().await.unwrap();
    let page = storefront(&restarted, "popular_one").await;
    assert!(
        !page.stale,
        "answered fresh from the warmed cache with the database gone"
    );
    let err = restarted
        .client()
        .get_storefront(pb::GetStorefrontRequest {
            username: "rarely_read".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "never read, so not warmed");
}
