//! TLS for Thali's own listeners and the calls between its parts (ADR 0028): TLS 1.3 only, on
//! rustls with the ring provider; the certificate and key files are read again when they change,
//! so a rotation needs no restart; with `THALI_TLS_CLIENT_AUTH=required` a client must present a
//! certificate issued by `THALI_TLS_CA_FILE` (mutual TLS between services). A part's own
//! certificate, which it also presents as a client, is re-read the same way ([`ClientTls`]).
use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig, SignatureScheme,
    client::{ResolvesClientCert, Resumption},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};

/// Where a part's TLS material is (`THALI_TLS_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first (`THALI_TLS_CERT_FILE`).
    pub cert: PathBuf,
    /// PEM private key (`THALI_TLS_KEY_FILE`).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates (and, for clients, servers) must chain to
    /// (`THALI_TLS_CA_FILE`).
    pub ca: Option<PathBuf>,
    /// Whether clients must present a certificate (`THALI_TLS_CLIENT_AUTH=required`).
    pub client_auth: bool,
}

/// A TLS file that cannot be used; the part does not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificates: {0}")]
    ClientVerifier(String),
    #[error("server name {0}")]
    ServerName(String),
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The ring provider: the only crypto provider in the tree (ADR 0002).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// Reads the CA certificates of `path` into a root store.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| file_error(path, e))?;
    }
    Ok(roots)
}

fn certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_error(&files.key, e))?;
    let ends = not_after(&certs[0]);
    let certified = CertifiedKey::new(certs, key);
    certified
        .keys_match()
        .map_err(|e| file_error(&files.key, format!("does not match the certificate: {e}")))?;
    // When the certificate now in use ends (alert CertificateExpiringSoon): set only once the pair
    // is accepted, so a broken replacement leaves the date of the one still served.
    if let Some(ends) = ends {
        let name = files
            .cert
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        metrics::gauge!("tls_certificate_expiry_timestamp_seconds", "cert" => name).set(ends as f64);
    }
    Ok(Arc::new(certified))
}

/// The end of a certificate's validity (`notAfter`) in seconds since 1970, read from its DER.
/// None when the bytes are not a certificate this walk understands. rustls and webpki check the
/// date but do not expose it, and one field does not justify an X.509 parser crate.
pub fn not_after(cert: &[u8]) -> Option<i64> {
    // One DER element: its tag, its contents and what follows it.
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, certificate, _) = element(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(certificate)? else {
        return None;
    };
    let (tag, _, mut rest) = element(tbs)?;
    if tag != 0xa0 {
        // No explicit version: the first element was the serial number.
        rest = tbs;
    }
    let (0x02, _, rest) = element(rest)? else { return None };
    let (SEQUENCE, _, rest) = element(rest)? else {
        return None;
    }; // signature algorithm
    let (SEQUENCE, _, rest) = element(rest)? else {
        return None;
    }; // issuer
    let (SEQUENCE, validity, _) = element(rest)? else {
        return None;
    };
    let (_, _, after) = element(validity)?; // notBefore
    let (tag, time, _) = element(after)?;
    let digits = |s: &[u8]| -> Option<u32> {
        s.iter().try_fold(0u32, |acc, b| {
            b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
        })
    };
    // UTCTime YYMMDDHHMMSSZ (RFC 5280: YY < 50 is 20YY) or GeneralizedTime YYYYMMDDHHMMSSZ.
    let (year, rest) = match (tag, time.len()) {
        (0x17, 13) => {
            let yy = digits(&time[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &time[2..])
        }
        (0x18, 15) => (digits(&time[..4])?, &time[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let field = |i: usize| digits(&rest[i..i + 2]);
    let at = chrono::NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, field(0)?, field(2)?)?.and_hms_opt(
        field(4)?,
        field(6)?,
        field(8)?,
    )?;
    Some(at.and_utc().timestamp())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// How often a handshake may look at the files' modification times.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The certificate of a listener, read again when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>, Option<SystemTime>)>,
    checked: Mutex<Instant>,
}

impl ReloadingCert {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let key = certified_key(files)?;
        Ok(Self {
            current: RwLock::new((key, modified(&files.cert), modified(&files.key))),
            files: files.clone(),
            checked: Mutex::new(Instant::now()),
        })
    }

    /// Reads the files again if they changed since the last look (at most once a second). A
    /// half-written or broken pair keeps the previous certificate, with a warning.
    fn refresh(&self) {
        {
            let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
            if checked.elapsed() < CHECK_EVERY {
                return;
            }
            *checked = Instant::now();
        }
        let (cert_at, key_at) = (modified(&self.files.cert), modified(&self.files.key));
        {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            if current.1 == cert_at && current.2 == key_at {
                return;
            }
        }
        match certified_key(&self.files) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (key, cert_at, key_at);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate files changed but cannot be used; keeping the previous one")
            }
        }
    }
}

impl ReloadingCert {
    fn current(&self) -> Arc<CertifiedKey> {
        self.refresh();
        self.current.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The same certificate, presented by this part when it calls another one (mutual TLS).
impl ResolvesClientCert for ReloadingCert {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// TLS of the calls between Thali's parts: TLS 1.3 only, servers verified against
/// `THALI_TLS_CA_FILE`, ALPN `h2`, and — when the part has a certificate — that certificate
/// presented for mutual TLS, re-read when its files change like a listener's (each new
/// connection presents the current one). Session resumption is off, so every connection
/// proves the certificate it has now.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl ClientTls {
    /// Trusts the CA certificates of `ca`; presents `own` (certificate and key files) when given.
    pub fn load(ca: &Path, own: Option<&TlsFiles>) -> Result<Self, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(read_roots(ca)?);
        let mut config = match own {
            Some(files) => builder.with_client_cert_resolver(Arc::new(ReloadingCert::load(files)?)),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.resumption = Resumption::disabled();
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// A connector for one endpoint. The server's certificate must name `server_name` when
    /// given (a target found by DNS: the name it was resolved from, not the address), else the
    /// host of the URL connected to.
    pub fn connector(&self, server_name: Option<&str>) -> Result<TlsConnect, TlsError> {
        let server_name = server_name
            .map(|name| {
                ServerName::try_from(name.to_owned()).map_err(|e| TlsError::ServerName(format!("`{name}`: {e}")))
            })
            .transpose()?;
        Ok(TlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            server_name,
        })
    }
}

/// Opens a TCP connection and a TLS session over it (see [`ClientTls`]); the connector of a
/// tonic channel.
#[derive(Clone)]
pub struct TlsConnect {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
}

/// A connection made by [`TlsConnect`].
pub type ClientStream = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower::Service<http::Uri> for TlsConnect {
    type Response = ClientStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<ClientStream, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(self.connect(&uri))
    }
}

impl TlsConnect {
    /// Connects to the host and port of `uri` and completes the TLS handshake.
    pub fn connect(
        &self,
        uri: &http::Uri,
    ) -> impl Future<Output = Result<ClientStream, std::io::Error>> + Send + 'static {
        let invalid = |reason: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, reason);
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => ServerName::try_from(host.clone()).map_err(|e| invalid(format!("`{host}`: {e}"))),
        };
        let connector = self.connector.clone();
        async move {
            let server_name = server_name?;
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the server did not agree to HTTP/2 (ALPN h2)",
                ));
            }
            Ok(hyper_util::rt::TokioIo::new(tls))
        }
    }
}

/// A server configuration for `files`: TLS 1.3 only, ALPN `alpn`, client certificates required
/// when `files.client_auth`.
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = if files.client_auth {
        let ca = files
            .ca
            .as_ref()
            .ok_or_else(|| TlsError::ClientVerifier("THALI_TLS_CLIENT_AUTH=required needs THALI_TLS_CA_FILE".into()))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider())
            .build()
            .map_err(|e| TlsError::ClientVerifier(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_cert_resolver(Arc::new(ReloadingCert::load(files)?));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A TLS connection a listener accepted, with its peer.
pub type Accepted = (
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    std::net::SocketAddr,
);

/// Longest a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections on `listener` and completes their TLS handshakes concurrently (a
/// slow client never holds up the next); finished connections arrive on the returned channel.
/// Failed handshakes (a TLS 1.2 client, no client certificate when one is required, garbage)
/// are counted in `tls_handshake_failures_total` and dropped. Stops when the receiver is dropped.
pub fn spawn_acceptor(
    listener: tokio::net::TcpListener,
    config: Arc<ServerConfig>,
    listener_name: &'static str,
) -> tokio::sync::mpsc::Receiver<Accepted> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, listener = listener_name, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, %peer, listener = listener_name, "TLS handshake failed");
                        metrics::counter!("tls_handshake_failures_total", "listener" => listener_name).increment(1);
                    }
                    Err(_) => {
                        metrics::counter!("tls_handshake_failures_total", "listener" => listener_name).increment(1);
                    }
                }
            });
        }
    });
    rx
}
