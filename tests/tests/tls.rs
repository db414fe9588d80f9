//! TLS 1.3 on every listener (issue 12, part 1; ADR 0028): handshakes at 1.2 are refused and at
//! 1.3 accepted on the facade and on gRPC; the whole mesh (facade → services over gRPC) works
//! over TLS; mutual TLS refuses a gRPC client without a certificate; a part refuses to serve
//! plain text on a non-loopback address; a rotated certificate is picked up without a restart,
//! by the listeners and by the part's calls to other parts (the client certificate of mutual TLS).
mod support;

use std::{collections::HashMap, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use reqwest::StatusCode;
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use serde_json::json;
use thali::{Part, dev_certs};
use thali_platform::{Config, config::Overrides};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Path) -> RootCertStore {
    thali_platform::tls::read_roots(ca).unwrap()
}

/// A client that speaks only `version`, trusting `ca`, offering `alpn`, optionally with a
/// client certificate.
fn client(
    version: &'static rustls::SupportedProtocolVersion,
    ca: &Path,
    alpn: &[u8],
    identity: Option<(&Path, &Path)>,
) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots(ca));
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                thali_platform::tls::read_certs(cert).unwrap(),
                thali_platform::tls::read_key(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

/// Handshakes with `addr` as `localhost`; Ok(negotiated version, leaf certificate) or the error.
async fn handshake(
    addr: SocketAddr,
    config: ClientConfig,
) -> Result<(rustls::ProtocolVersion, Vec<u8>), std::io::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    // With TLS 1.3 a refused client certificate shows on the first read, not in the handshake.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut buf = [0u8; 9];
    tls.read_exact(&mut buf).await?;
    let (_, session) = tls.get_ref();
    Ok((
        session.protocol_version().unwrap(),
        session.peer_certificates().unwrap()[0].to_vec(),
    ))
}

struct TlsPlatform {
    platform: Option<thali::Platform>,
    http: SocketAddr,
    grpc: SocketAddr,
    certs: dev_certs::DevCerts,
    dir: std::path::PathBuf,
}

impl TlsPlatform {
    async fn start(extra: &[(&str, &str)]) -> Self {
        support::spans();
        let dir = std::env::temp_dir().join(format!("thali-tls-{}", uuid::Uuid::now_v7()));
        let certs = dev_certs::write(&dir.join("tls"), &[]).unwrap();
        let mut env = support::loopback_env(&dir);
        for (k, v) in [
            ("THALI_TLS_CERT_FILE", &certs.cert),
            ("THALI_TLS_KEY_FILE", &certs.key),
            ("THALI_TLS_CA_FILE", &certs.ca),
        ] {
            env.insert(k.to_owned(), v.display().to_string());
        }
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let cfg = Config::load_from(None, Some(env), &Overrides::default()).unwrap();
        let platform = thali::start(&cfg, Part::All).await.unwrap();
        Self {
            http: platform.http_addr.unwrap(),
            grpc: platform.grpc_addr.unwrap(),
            platform: Some(platform),
            certs,
            dir,
        }
    }

    fn https(&self) -> reqwest::Client {
        provider();
        let ca = std::fs::read(&self.certs.ca).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.http.port())
    }
}

impl Drop for TlsPlatform {
    fn drop(&mut self) {
        if let Some(p) = self.platform.take() {
            tokio::spawn(p.shutdown());
        }
    }
}

#[tokio::test]
async fn tls_1_3_only_on_the_facade_and_on_grpc_and_the_mesh_works_over_it() {
    let p = TlsPlatform::start(&[]).await;
    let ca = p.certs.ca.clone();
    for (what, addr, alpn) in [("facade", p.http, &b"h2"[..]), ("gRPC", p.grpc, &b"h2"[..])] {
        let (version, _) = handshake(addr, client(&rustls::version::TLS13, &ca, alpn, None))
            .await
            .unwrap_or_else(|e| panic!("{what}: a TLS 1.3 handshake fails: {e}"));
        assert_eq!(version, rustls::ProtocolVersion::TLSv1_3, "{what}");
        let refused = handshake(addr, client(&rustls::version::TLS12, &ca, alpn, None)).await;
        assert!(refused.is_err(), "{what}: a TLS 1.2 handshake is refused");
    }

    // The whole platform over TLS: the facade reaches identity and storefront over gRPC+TLS.
    let https = p.https();
    let res = https
        .post(p.url("/api/v1/auth/register"))
        .json(&json!({"email": "tls@example.com", "password": "correct horse battery", "display_name": "T", "role": "creator"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED, "{}", res.text().await.unwrap());
    let res = https.get(p.url("/api/v1/store/nobody")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    // Plain HTTP to the TLS port gets nowhere.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/api/v1/store/nobody", p.http.port()))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

#[tokio::test]
async fn mutual_tls_refuses_a_grpc_client_without_a_certificate() {
    let p = TlsPlatform::start(&[("THALI_TLS_CLIENT_AUTH", "required")]).await;
    let ca = p.certs.ca.clone();
    let refused = handshake(p.grpc, client(&rustls::version::TLS13, &ca, b"h2", None)).await;
    assert!(refused.is_err(), "no client certificate: refused");
    let accepted = handshake(
        p.grpc,
        client(&rustls::version::TLS13, &ca, b"h2", Some((&p.certs.cert, &p.certs.key))),
    )
    .await;
    assert!(accepted.is_ok(), "{accepted:?}");
    // The facade (no client certificates from browsers) and its calls to the services, which
    // present the part's certificate, still work.
    let res = p
        .https()
        .post(p.url("/api/v1/auth/register"))
        .json(&json!({"email": "mtls@example.com", "password": "correct horse battery", "display_name": "M", "role": "buyer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED, "{}", res.text().await.unwrap());
}

#[tokio::test]
async fn a_rotated_certificate_is_picked_up_without_a_restart() {
    let p = TlsPlatform::start(&[]).await;
    let ca = p.certs.ca.clone();
    let (_, before) = handshake(p.http, client(&rustls::version::TLS13, &ca, b"h2", None))
        .await
        .unwrap();
    // `thali dev-certs` again: same CA, a new certificate and key, swapped in by rename.
    dev_certs::write(&p.dir.join("tls"), &[]).unwrap();
    let mut after = before.clone();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = handshake(p.http, client(&rustls::version::TLS13, &ca, b"h2", None))
            .await
            .unwrap()
            .1;
        if after != before {
            break;
        }
    }
    assert_ne!(after, before, "the new certificate is served");
    let (_, grpc_leaf) = handshake(p.grpc, client(&rustls::version::TLS13, &ca, b"h2", None))
        .await
        .unwrap();
    assert_eq!(grpc_leaf, after, "gRPC serves it too");
}

#[tokio::test]
async fn a_rotated_client_certificate_is_presented_on_the_next_connection() {
    provider();
    let dir = std::env::temp_dir().join(format!("thali-client-cert-{}", uuid::Uuid::now_v7()));
    let certs = dev_certs::write(&dir, &[]).unwrap();
    let files = thali_platform::tls::TlsFiles {
        cert: certs.cert.clone(),
        key: certs.key.clone(),
        ca: Some(certs.ca.clone()),
        client_auth: true,
    };
    // A gRPC-like listener that requires a client certificate and tells which one it got.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri: tonic::codegen::http::Uri = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port())
        .parse()
        .unwrap();
    let server = thali_platform::tls::server_config(&files, &[b"h2"]).unwrap();
    let mut accepted = thali_platform::tls::spawn_acceptor(listener, server, "test");
    // The connector a part's client stack uses (`THALI_TLS_CA_FILE` + the part's own files).
    let connector = thali_platform::tls::ClientTls::load(&certs.ca, Some(&files))
        .unwrap()
        .connector(Some("localhost"))
        .unwrap();
    let mut presented = async || {
        let _conn = connector.connect(&uri).await.expect("mutual TLS handshake");
        let (tls, _) = accepted.recv().await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    let before = presented().await;
    assert_eq!(
        before,
        thali_platform::tls::read_certs(&certs.cert).unwrap()[0].to_vec()
    );

    // `thali dev-certs` again: same CA, a new certificate and key, swapped in by rename.
    dev_certs::write(&dir, &[]).unwrap();
    let on_disk = thali_platform::tls::read_certs(&certs.cert).unwrap()[0].to_vec();
    assert_ne!(on_disk, before);
    let mut after = before.clone();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = presented().await;
        if after != before {
            break;
        }
    }
    assert_eq!(
        after, on_disk,
        "the next connection presents the new certificate, no restart"
    );
}

#[tokio::test]
async fn plain_text_on_a_non_loopback_address_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("thali-plain-{}", uuid::Uuid::now_v7()));
    let env = |allow: bool| -> HashMap<String, String> {
        let mut env = support::loopback_env(&dir);
        env.insert("THALI_HTTP_ADDR".into(), "0.0.0.0:0".into());
        if allow {
            env.insert("THALI_ALLOW_PLAINTEXT".into(), "true".into());
        }
        env
    };
    thali_platform::auth::ensure_key_pair(&dir.join("keys")).unwrap();
    let cfg = Config::load_from(None, Some(env(false)), &Overrides::default()).unwrap();
    let err = match thali::start(&cfg, Part::Facade).await {
        Ok(_) => panic!("started in plain text on 0.0.0.0"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("plain text") && err.contains("THALI_ALLOW_PLAINTEXT"),
        "{err}"
    );
    // TLS ends at an ingress: allowed when said so.
    let cfg = Config::load_from(None, Some(env(true)), &Overrides::default()).unwrap();
    let platform = thali::start(&cfg, Part::Facade).await.unwrap();
    platform.shutdown().await.unwrap();
}
