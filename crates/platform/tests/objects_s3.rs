//! The S3-compatible media store (ADR 0033) against a real S3-compatible server: moto from PyPI
//! in CI (`THALI_TEST_S3_URL`, which `.ci/run` starts; required under CI=true). An object is read
//! through its presigned link; without the signature the private bucket refuses it.
use bytes::Bytes;
use chrono::Utc;
use thali_platform::{
    objects::{ObjectStore, S3Store, new_key, window_start},
    secret::Secret,
};

fn server() -> Option<String> {
    match std::env::var("THALI_TEST_S3_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true needs THALI_TEST_S3_URL (an S3-compatible server; .ci/run starts moto)"
            );
            None
        }
    }
}

#[tokio::test]
async fn an_object_is_read_through_its_presigned_link_and_never_without_it() {
    let Some(url) = server() else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bucket = format!("thali-test-{}", uuid::Uuid::now_v7().simple());
    let store = S3Store::new(
        &url,
        &bucket,
        "us-east-1",
        true,
        "testing",
        &Secret::new("testing".to_owned()),
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    store.create_bucket().await.unwrap();
    let png = b"\x89PNG\r\n\x1a\n not really, but the store does not look".to_vec();
    let key = new_key("png");
    store.put(&key, "image/png", Bytes::from(png.clone())).await.unwrap();

    // Links made within one window are one link.
    let start = window_start(Utc::now());
    let link = store.link(&key, start + chrono::Duration::seconds(1));
    assert_eq!(link, store.link(&key, start + chrono::Duration::seconds(2)));
    assert!(link.contains("X-Amz-Signature="), "{link}");
    let http = reqwest::Client::new();
    let res = http.get(&link).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK, "{link}");
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(
        res.headers()["content-disposition"],
        format!("inline; filename=\"{key}\"").as_str()
    );
    assert_eq!(res.bytes().await.unwrap().to_vec(), png);

    // The same object without the signature: the bucket is private.
    let unsigned = link.split('?').next().unwrap();
    let res = http.get(unsigned).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::FORBIDDEN, "{unsigned}");

    // Deleted: the link reads nothing (404, or 403 where the key may not list the bucket, as on
    // AWS); deleting again is no error.
    store.delete(&key).await.unwrap();
    store.delete(&key).await.unwrap();
    let gone = http.get(&link).send().await.unwrap().status();
    assert!(
        gone == reqwest::StatusCode::NOT_FOUND || gone == reqwest::StatusCode::FORBIDDEN,
        "{gone}"
    );
}
