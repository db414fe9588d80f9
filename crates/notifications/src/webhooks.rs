//! Partner webhooks on the wire (Standard Webhooks): endpoint URL rules, secrets, signatures, and
//! a small HTTP/1.1 client whose connect step resolves the host itself and refuses private,
//! loopback, link-local and unique-local addresses — the address checked is the address
//! connected to, so a name that resolves elsewhere on the second lookup cannot slip through.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use ring::rand::SecureRandom;

/// Longest endpoint URL accepted.
pub const URL_MAX: usize = 2000;

/// Where deliveries go, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Checks an endpoint URL: https (http only when insecure targets are allowed), a host, no user
/// info, and — unless insecure targets are allowed — not an IP literal of a private range.
pub fn check_url(url: &str, allow_insecure: bool) -> Result<EndpointUrl, String> {
    if url.len() > URL_MAX {
        return Err(format!("must be at most {URL_MAX} characters"));
    }
    let uri: http::Uri = url.parse().map_err(|_| "is not a URL".to_owned())?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if allow_insecure => false,
        _ => return Err("must be an https:// URL".to_owned()),
    };
    let authority = uri.authority().ok_or_else(|| "needs a host".to_owned())?;
    if authority.as_str().contains('@') {
        return Err("must not carry a user name or password".to_owned());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err("needs a host".to_owned());
    }
    if !allow_insecure {
        if let Ok(ip) = host.parse::<IpAddr>()
            && !is_public(ip)
        {
            return Err("must not point at a private, loopback or link-local address".to_owned());
        }
        if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
            return Err("must not point at localhost".to_owned());
        }
    }
    Ok(EndpointUrl {
        https,
        host,
        port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into()),
    })
}

/// Whether a delivery may connect to `ip`: not loopback, private (RFC 1918), shared (RFC 6598),
/// link-local, unique-local, unspecified, broadcast, multicast or reserved for documentation.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link local fe80::/10
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || (first == 0x0064 && v6.segments()[1] == 0xff9b)) // NAT64 to anything
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    !(v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0
        || (a == 100 && (64..=127).contains(&b)) // shared address space
        || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
        || a >= 240)
}

/// A new signing secret: `whsec_` and 32 random bytes, base64.
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .expect("the system random source works");
    format!("whsec_{}", STANDARD.encode(key))
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` under `secret`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let raw = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key_bytes = STANDARD.decode(raw).unwrap_or_else(|_| raw.as_bytes().to_vec());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
}

/// The `webhook-signature` value: one signature per secret, space-separated (during a rotation
/// both the new and the previous secret sign).
pub fn signature_header(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| sign(s, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// An endpoint's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// `Retry-After`, in seconds or as an HTTP date, capped at a day.
    pub retry_after: Option<Duration>,
    pub latency: Duration,
}

/// Why no answer came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Every address of the host is one deliveries may not reach.
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
    #[error("no answer within {0} s")]
    TimedOut(u64),
}

/// Sends webhook requests.
#[derive(Clone)]
pub struct Sender {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
    allow_insecure: bool,
}

impl Sender {
    /// A sender with a `timeout` for the whole request; `allow_insecure` lets deliveries reach
    /// http and private addresses (development and tests only).
    pub fn new(timeout: Duration, allow_insecure: bool) -> Self {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout,
            allow_insecure,
        }
    }

    pub fn allows_insecure(&self) -> bool {
        self.allow_insecure
    }

    /// POSTs `body` (JSON) to `url` with `headers`.
    pub async fn post(&self, url: &EndpointUrl, headers: &[(&str, String)], body: Bytes) -> Result<Answer, Failure> {
        let started = Instant::now();
        match tokio::time::timeout(self.timeout, self.exchange(url, headers, body)).await {
            Ok(Ok(status_and_retry)) => Ok(Answer {
                status: status_and_retry.0,
                retry_after: status_and_retry.1,
                latency: started.elapsed(),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Failure::TimedOut(self.timeout.as_secs())),
        }
    }

    async fn connect(&self, url: &EndpointUrl) -> Result<tokio::net::TcpStream, Failure> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .map_err(|e| Failure::Failed(format!("resolving {}: {e}", url.host)))?
            .collect();
        let allowed: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| self.allow_insecure || is_public(a.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(if addrs.is_empty() {
                Failure::Failed(format!("{} has no address", url.host))
            } else {
                Failure::Refused(format!(
                    "{} resolves to {} only, which deliveries may not reach",
                    url.host,
                    addrs.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ")
                ))
            });
        }
        let mut last = String::new();
        for addr in allowed {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = format!("connecting to {addr}: {e}"),
            }
        }
        Err(Failure::Failed(last))
    }

    async fn exchange(
        &self,
        url: &EndpointUrl,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<(u16, Option<Duration>), Failure> {
        let stream = self.connect(url).await?;
        let mut request = http::Request::post(url.path.as_str())
            .header(http::header::HOST, host_header(url))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "Thali-Webhooks/1")
            .header(http::header::CONNECTION, "close");
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| Failure::Failed(format!("building the request: {e}")))?;
        let failed = |what: &str, e: &dyn std::fmt::Display| Failure::Failed(format!("{what}: {e}"));
        let response = if url.https {
            let name =
                rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|e| failed("server name", &e))?;
            let tls = self.tls.connect(name, stream).await.map_err(|e| failed("TLS", &e))?;
            send(TokioIo::new(tls), request).await?
        } else {
            send(TokioIo::new(stream), request).await?
        };
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        Ok((response.status().as_u16(), retry_after))
    }
}

async fn send<T>(
    io: TokioIo<T>,
    request: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, Failure>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Failure::Failed(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| Failure::Failed(format!("HTTP: {e}")))
}

fn host_header(url: &EndpointUrl) -> String {
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    match (url.https, url.port) {
        (true, 443) | (false, 80) => host,
        (_, port) => format!("{host}:{port}"),
    }
}

/// `Retry-After`: seconds, or an HTTP date; at most a day.
fn parse_retry_after(value: &str) -> Option<Duration> {
    const DAY: u64 = 86_400;
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds.min(DAY)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .num_seconds()
        .max(0);
    Some(Duration::from_secs((wait as u64).min(DAY)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_and_link_local_addresses_are_not_public() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad}");
        }
        for good in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn endpoint_urls_must_be_https_public_and_without_credentials() {
        let ok = check_url("https://hooks.example.com/thali?x=1", false).unwrap();
        assert_eq!(
            (ok.host.as_str(), ok.port, ok.path.as_str()),
            ("hooks.example.com", 443, "/thali?x=1")
        );
        for bad in [
            "http://hooks.example.com/",
            "https://user:pw@hooks.example.com/",
            "https://127.0.0.1/",
            "https://[::1]:8443/",
            "https://169.254.169.254/latest/meta-data",
            "https://localhost/",
            "ftp://hooks.example.com/",
            "not a url",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        let dev = check_url("http://127.0.0.1:9000/hook", true).unwrap();
        assert_eq!((dev.https, dev.port), (false, 9000));
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("99999999"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn secrets_are_prefixed_random_and_sign_differently() {
        let (a, b) = (new_secret(), new_secret());
        assert!(a.starts_with("whsec_") && a != b);
        assert_ne!(sign(&a, "id", 1, b"{}"), sign(&b, "id", 1, b"{}"));
        let both = signature_header(&[&a, &b], "id", 1, b"{}");
        assert_eq!(both.split(' ').count(), 2);
    }
}
