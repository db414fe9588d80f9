//! Media through REST, as a creator and an attacker would try it (ADR 0033): hostile files are
//! refused with the right status whatever their name or declared type says; a real image is
//! stored under a random name and read only through a signed link that expires; tampered and
//! expired links are refused.
mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Mesh, access, json_of, problem, real_png};

/// A PNG header claiming 100,000 × 100,000 pixels, and nothing else.
fn png_bomb() -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    b.extend_from_slice(&100_000u32.to_be_bytes());
    b.extend_from_slice(&100_000u32.to_be_bytes());
    b.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
    b
}

/// A baseline JPEG cut off in its scan data (no end-of-image marker).
fn truncated_jpeg() -> Vec<u8> {
    let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
    b.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
    b.extend_from_slice(&[
        0xFF, 0xC0, 0x00, 0x0B, 0x08, 0x00, 0x02, 0x00, 0x03, 0x01, 0x01, 0x11, 0x00,
    ]);
    b.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00]);
    b.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    b
}

async fn upload(
    mesh: &Mesh,
    method: Method,
    path: &str,
    token: &str,
    bytes: Vec<u8>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = mesh.http.request(method, mesh.url(path)).bearer_auth(token).body(bytes);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// A creator with a store and one product. Returns (token, product id).
async fn shop(mesh: &Mesh) -> (String, String) {
    let token = access(&mesh.sign_up("asha@example.com", "creator").await);
    mesh.create_creator(&token, "chai_point").await;
    let product = json_of(
        mesh.post(
            "/api/v1/creators/chai_point/products",
            Some(&token),
            json!({"title": "Masala chai", "price": {"amount_minor": 4900, "currency": "INR"}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    (token, product["id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn hostile_uploads_are_refused_with_the_right_status_and_nothing_is_stored() {
    let mesh = Mesh::start().await;
    let (token, product) = shop(&mesh).await;
    let path = format!("/api/v1/products/{product}/images");
    /// What is sent, its bytes, its headers, and the answer it must get.
    type Case = (
        &'static str,
        Vec<u8>,
        Vec<(&'static str, &'static str)>,
        StatusCode,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "an HTML file named .png",
            b"<!doctype html><html><script>alert(document.cookie)</script></html>".to_vec(),
            vec![
                ("content-type", "image/png"),
                ("content-disposition", "attachment; filename=\"cat.png\""),
            ],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            "an SVG",
            br#"<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>"#.to_vec(),
            vec![("content-type", "image/svg+xml")],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            "an executable named .jpg",
            b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00This program cannot be run in DOS mode"
                .to_vec(),
            vec![
                ("content-type", "image/jpeg"),
                ("content-disposition", "attachment; filename=\"photo.jpg\""),
            ],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            "a truncated JPEG",
            truncated_jpeg(),
            vec![("content-type", "image/jpeg")],
            StatusCode::UNPROCESSABLE_ENTITY,
            "IMAGE_MALFORMED",
        ),
        (
            "a 6 MB file",
            {
                let mut b = real_png();
                b.resize(6_000_000, 0);
                b
            },
            vec![("content-type", "image/png")],
            StatusCode::PAYLOAD_TOO_LARGE,
            "UPLOAD_TOO_LARGE",
        ),
        (
            "a 100,000 × 100,000 PNG header",
            png_bomb(),
            vec![("content-type", "image/png")],
            StatusCode::UNPROCESSABLE_ENTITY,
            "IMAGE_TOO_LARGE",
        ),
        (
            "a real PNG in a multipart form",
            {
                let mut b = b"--x\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.png\"\r\n\r\n".to_vec();
                b.extend_from_slice(&real_png());
                b.extend_from_slice(b"\r\n--x--\r\n");
                b
            },
            vec![("content-type", "multipart/form-data; boundary=x")],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
    ];
    for (what, bytes, headers, status, code) in cases {
        let res = upload(&mesh, Method::POST, &path, &token, bytes, &headers).await;
        assert_eq!(res.status(), status, "{what}");
        let body = problem(res, status, code).await;
        assert!(body["detail"].as_str().is_some(), "{what}: {body}");
    }
    // Nothing reached the store or the page.
    let page = json_of(mesh.get("/api/v1/store/chai_point").await, StatusCode::OK).await;
    assert_eq!(page["products"][0]["images"], json!([]));
    let objects = mesh.data_dir.join("media").join("objects");
    let stored = support::files_under(&objects);
    assert!(stored.is_empty(), "{stored:?}");

    // Someone else's product, or nobody signed in: refused before any byte is read.
    let mallory = access(&mesh.sign_up("mallory@example.com", "creator").await);
    let res = upload(&mesh, Method::POST, &path, &mallory, real_png(), &[]).await;
    problem(res, StatusCode::FORBIDDEN, "NOT_OWNER").await;
    let res = mesh.http.post(mesh.url(&path)).body(real_png()).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_real_image_is_read_only_through_a_signed_link_that_expires() {
    let mesh = Mesh::start().await;
    let (token, product) = shop(&mesh).await;
    let png = real_png();

    // A real PNG named .exe and declared as a program: stored as what its bytes say.
    let res = upload(
        &mesh,
        Method::POST,
        &format!("/api/v1/products/{product}/images"),
        &token,
        png.clone(),
        &[
            ("content-type", "application/x-msdownload"),
            ("content-disposition", "attachment; filename=\"setup.exe\""),
        ],
    )
    .await;
    let image = json_of(res, StatusCode::CREATED).await;
    assert_eq!(image["content_type"], "image/png");
    assert_eq!((image["width"].as_i64(), image["height"].as_i64()), (Some(1), Some(1)));
    assert_eq!(image["size_bytes"].as_u64(), Some(png.len() as u64));
    let key = image["id"].as_str().unwrap().to_owned();
    assert!(key.ends_with(".png") && !key.contains("setup"), "a random name: {key}");

    // The public page carries the same link (one link per window), and it reads the image.
    let page = json_of(mesh.get("/api/v1/store/chai_point").await, StatusCode::OK).await;
    let url = page["products"][0]["images"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(url, image["url"].as_str().unwrap());
    let res = mesh.get(&url).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    assert!(
        res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"),
        "no script runs from an image answer"
    );
    assert_eq!(
        res.headers()["content-disposition"],
        format!("inline; filename=\"{key}\"").as_str()
    );
    assert_eq!(res.bytes().await.unwrap().to_vec(), png);

    // Without the signature, with a changed one, a longer life or another key: 403.
    let (path, query) = url.split_once('?').unwrap();
    let exp: i64 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("exp="))
        .unwrap()
        .parse()
        .unwrap();
    let sig = query.split('&').find_map(|kv| kv.strip_prefix("sig=")).unwrap();
    let mut flipped = sig.to_owned();
    let last = flipped.pop().unwrap();
    flipped.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [
        path.to_owned(),
        format!("{path}?exp={exp}&sig={flipped}"),
        format!("{path}?exp={}&sig={sig}", exp + 3600),
        format!("/media/{}?exp={exp}&sig={sig}", "0".repeat(32) + ".png"),
    ] {
        problem(mesh.get(&bad).await, StatusCode::FORBIDDEN, "LINK_INVALID").await;
    }
    // A link signed by this store for a window long past: expired.
    let store = thali_platform::objects::LocalStore::open(&mesh.data_dir.join("media")).unwrap();
    let old = thali_platform::objects::ObjectStore::link(&store, &key, chrono::Utc::now() - chrono::Duration::hours(1));
    problem(mesh.get(&old).await, StatusCode::FORBIDDEN, "LINK_EXPIRED").await;

    // An avatar: shown on the page; a new one replaces it and the old object is gone.
    let first = json_of(
        upload(
            &mesh,
            Method::PUT,
            "/api/v1/creators/chai_point/avatar",
            &token,
            png.clone(),
            &[],
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let creator = json_of(mesh.get("/api/v1/creators/chai_point").await, StatusCode::OK).await;
    assert_eq!(creator["avatar"]["id"], first["id"]);
    let second = json_of(
        upload(
            &mesh,
            Method::PUT,
            "/api/v1/creators/chai_point/avatar",
            &token,
            png.clone(),
            &[],
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_ne!(first["id"], second["id"]);
    let old_avatar = first["url"].as_str().unwrap();
    assert_eq!(mesh.get(old_avatar).await.status(), StatusCode::NOT_FOUND);
    let page: Value = json_of(mesh.get("/api/v1/store/chai_point").await, StatusCode::OK).await;
    assert_eq!(page["creator"]["avatar"]["id"], second["id"]);
    assert_eq!(
        mesh.get(page["creator"]["avatar"]["url"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn with_an_s3_compatible_store_uploads_land_in_the_private_bucket() {
    let url = match std::env::var("THALI_TEST_S3_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true needs THALI_TEST_S3_URL (.ci/run starts moto)"
            );
            return;
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bucket = format!("thali-e2e-{}", uuid::Uuid::now_v7().simple());
    let secret_file = std::env::temp_dir().join(format!("thali-s3-secret-{}", uuid::Uuid::now_v7()));
    std::fs::write(&secret_file, "testing\n").unwrap();
    thali_platform::objects::S3Store::new(
        &url,
        &bucket,
        "us-east-1",
        true,
        "testing",
        &thali_platform::secret::Secret::new("testing".to_owned()),
        std::time::Duration::from_secs(10),
    )
    .unwrap()
    .create_bucket()
    .await
    .unwrap();
    let secret_path = secret_file.display().to_string();
    let mesh = Mesh::start_env(&[
        ("THALI_S3_URL", url.as_str()),
        ("THALI_S3_BUCKET", bucket.as_str()),
        ("THALI_S3_ACCESS_KEY_ID", "testing"),
        ("THALI_S3_SECRET_ACCESS_KEY_FILE", secret_path.as_str()),
    ])
    .await;
    let (token, product) = shop(&mesh).await;
    let png = real_png();
    let image = json_of(
        upload(
            &mesh,
            Method::POST,
            &format!("/api/v1/products/{product}/images"),
            &token,
            png.clone(),
            &[],
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let link = image["url"].as_str().unwrap().to_owned();
    assert!(link.starts_with(&url) && link.contains(&bucket), "{link}");
    let page = json_of(mesh.get("/api/v1/store/chai_point").await, StatusCode::OK).await;
    assert_eq!(page["products"][0]["images"][0]["url"], link.as_str());
    let res = mesh.http.get(&link).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(res.bytes().await.unwrap().to_vec(), png);
    // Unsigned: refused by the private bucket. Nothing is kept on the local disk.
    let unsigned = link.split('?').next().unwrap();
    assert_eq!(
        mesh.http.get(unsigned).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert!(support::files_under(&mesh.data_dir.join("media").join("objects")).is_empty());
}
