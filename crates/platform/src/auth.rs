//! The authentication seam: EdDSA (Ed25519) JWTs checked against configured public keys (issuer,
//! audience, expiry, key id) into a [`Principal`]. In embedded mode the key pair is generated
//! under the data dir on first run; `thali token` mints tokens with it.
use std::{
    collections::HashMap,
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, RwLock},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

/// Issuer of every Thali token.
pub const ISSUER: &str = "thali";
/// Audience of tokens that users present to the API.
pub const AUDIENCE: &str = "thali-api";

/// Who is calling: the subject of a verified token and its roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The account acting (for an API key: the key's owner).
    pub subject: String,
    pub roles: Vec<String>,
    /// When the caller is a partner API key: the key and the scopes that bound what it may do.
    pub api_key: Option<ApiKeyGrant>,
    /// When the presented token was issued (seconds since the epoch; 0 for API keys).
    pub issued_at: i64,
    /// The login session the token belongs to, if it came from one.
    pub session: Option<String>,
}

/// What a partner API key grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyGrant {
    pub key_id: String,
    pub scopes: Vec<String>,
    /// The key's own rate limit, calls per minute (None: the platform default).
    pub rate_limit_per_minute: Option<u32>,
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive).
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Audience of a service token addressed to `service` (e.g. `thali-storefront`).
pub fn service_audience(service: &str) -> String {
    format!("thali-{service}")
}

/// Subject prefix of service tokens: `svc:<service>`.
pub const SERVICE_SUBJECT_PREFIX: &str = "svc:";

impl Principal {
    /// Whether the caller holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// The claims of a Thali access token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    #[serde(default)]
    pub roles: Vec<String>,
    /// The session (refresh-token family) a user token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// Why a token was refused. The text is safe to show to the caller.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token names no known signing key")]
    UnknownKey,
    #[error("the token signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token was issued for another audience or issuer")]
    WrongAudience,
    #[error("the API key is not valid")]
    UnknownApiKey,
    #[error("credentials cannot be checked right now")]
    Unavailable,
    #[error("the session has ended; sign in again")]
    Revoked,
    #[error("the token was signed by a key that may not issue it")]
    NotIssuer,
}

/// Problems with the key files; these stop the process at start.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key file {path} is not a valid Ed25519 key")]
    Invalid { path: PathBuf },
    #[error("no signing key in {0}")]
    NoSigningKey(PathBuf),
    #[error(
        "{0} holds several signing keys and no `active` file naming the one that signs: run `thali keys activate <key id>`"
    )]
    NoActiveKey(PathBuf),
    #[error("{dir}/active names {kid}, which has no private key there")]
    UnknownActiveKey { dir: PathBuf, kid: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The file in a keys dir naming the key id that signs (ADR 0029). Rotation is explicit: a new
/// key is added and published first, and signs only once this file names it.
pub const ACTIVE_FILE: &str = "active";

/// Creates an Ed25519 key pair in `dir`, and makes it the active one, unless the dir holds a
/// private key already. The private key file is created with mode 0600. Returns the key id of
/// the signing key.
pub fn ensure_key_pair(dir: &Path) -> Result<String, KeyError> {
    match private_keys(dir) {
        Ok(keys) if !keys.is_empty() => return Ok(Signer::load(dir)?.kid()),
        Ok(_) => {}
        Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let kid = add_key_pair(dir)?;
    activate(dir, &kid)?;
    Ok(kid)
}

/// Writes a new Ed25519 key pair into `dir` (private key mode 0600). It does **not** sign until
/// [`activate`]d: publish its public key first, so every verifier knows it before it is used.
/// Returns its key id.
pub fn add_key_pair(dir: &Path) -> Result<String, KeyError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Invalid { path: dir.to_owned() })?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Invalid { path: dir.to_owned() })?;
    let public = pair.public_key().as_ref();
    let kid = key_id(public);
    let key_path = dir.join(format!("{kid}.ed25519"));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(io_err(&key_path))?;
    file.write_all(pkcs8.as_ref()).map_err(io_err(&key_path))?;
    let pub_path = dir.join(format!("{kid}.pub"));
    fs::write(&pub_path, URL_SAFE_NO_PAD.encode(public)).map_err(io_err(&pub_path))?;
    Ok(kid)
}

/// Makes `kid` (a private key in `dir`) the signing key: the `active` file is replaced
/// atomically; running processes switch within their key refresh interval.
pub fn activate(dir: &Path, kid: &str) -> Result<(), KeyError> {
    if !private_keys(dir)?.iter().any(|(k, _)| k == kid) {
        return Err(KeyError::UnknownActiveKey {
            dir: dir.to_owned(),
            kid: kid.to_owned(),
        });
    }
    let tmp = dir.join(format!(".{ACTIVE_FILE}.{}", std::process::id()));
    fs::write(&tmp, format!("{kid}\n")).map_err(io_err(&tmp))?;
    let path = dir.join(ACTIVE_FILE);
    fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// Removes key `kid` from `dir` (once no token it signed can still be valid). The active key
/// cannot be removed.
pub fn retire(dir: &Path, kid: &str) -> Result<(), KeyError> {
    let signer = Signer::load(dir)?;
    if signer.kid() == kid {
        return Err(KeyError::UnknownActiveKey {
            dir: dir.to_owned(),
            kid: format!("{kid} (it is the active key; activate another first)"),
        });
    }
    let mut found = false;
    for ext in ["ed25519", "pub"] {
        let path = dir.join(format!("{kid}.{ext}"));
        match fs::remove_file(&path) {
            Ok(()) => found = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    if found {
        Ok(())
    } else {
        Err(KeyError::UnknownActiveKey {
            dir: dir.to_owned(),
            kid: kid.to_owned(),
        })
    }
}

/// Copies the public keys of `dir` into `to` as `<owner>.<kid>.pub`: how a part's service keys
/// are distributed to the other parts (their `THALI_TRUSTED_KEYS_DIR`). Returns the files written.
pub fn publish(dir: &Path, owner: &str, to: &Path) -> Result<Vec<PathBuf>, KeyError> {
    fs::create_dir_all(to).map_err(io_err(to))?;
    let mut written = Vec::new();
    for (kid, x) in Signer::load(dir)?.public_keys() {
        // Written aside and renamed: a verifier never reads half a key.
        let path = to.join(format!("{owner}.{kid}.pub"));
        let tmp = to.join(format!(".{owner}.{kid}.pub.{}", std::process::id()));
        fs::write(&tmp, &x).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// Key id: the first 16 hex digits of the SHA-256 of the public key.
fn key_id(public: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    let hex: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("ed25519-{hex}")
}

/// The private keys of `dir`: key id and PKCS#8 bytes, sorted by key id.
fn private_keys(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, KeyError> {
    let mut keys = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().is_some_and(|e| e == "ed25519") {
            let der = fs::read(&path).map_err(io_err(&path))?;
            let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| KeyError::Invalid { path: path.clone() })?;
            keys.push((key_id(pair.public_key().as_ref()), der));
        }
    }
    keys.sort();
    Ok(keys)
}

/// The key that signs, and every public key of the dir.
struct SigningState {
    kid: String,
    key: EncodingKey,
    /// Key id → base64url public key, of every pair in the dir (the active one, one published
    /// ahead of its activation, one retiring).
    public: Vec<(String, String)>,
}

fn load_signing(dir: &Path) -> Result<SigningState, KeyError> {
    let keys = private_keys(dir)?;
    if keys.is_empty() {
        return Err(KeyError::NoSigningKey(dir.to_owned()));
    }
    let active = match fs::read_to_string(dir.join(ACTIVE_FILE)) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&dir.join(ACTIVE_FILE))(e)),
    };
    let (kid, der) = match active {
        Some(kid) => keys
            .iter()
            .find(|(k, _)| *k == kid)
            .ok_or_else(|| KeyError::UnknownActiveKey {
                dir: dir.to_owned(),
                kid: kid.clone(),
            })?,
        None if keys.len() == 1 => &keys[0],
        None => return Err(KeyError::NoActiveKey(dir.to_owned())),
    };
    let public = keys
        .iter()
        .map(|(kid, der)| {
            let pair = Ed25519KeyPair::from_pkcs8(der).expect("checked when read");
            (kid.clone(), URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()))
        })
        .collect();
    Ok(SigningState {
        kid: kid.clone(),
        key: EncodingKey::from_ed_der(der),
        public,
    })
}

/// Mints tokens with the active private key of one keys dir (ADR 0029); [`Signer::reload`]
/// follows a change of the active key without a restart.
pub struct Signer {
    dir: PathBuf,
    state: RwLock<Arc<SigningState>>,
    /// When the dir was last read.
    read_at: std::sync::Mutex<std::time::Instant>,
}

impl Signer {
    /// Loads the keys of `dir`: the one its `active` file names signs (the only one, when there
    /// is one key and no such file).
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        Ok(Self {
            dir: dir.to_owned(),
            state: RwLock::new(Arc::new(load_signing(dir)?)),
            read_at: std::sync::Mutex::new(std::time::Instant::now()),
        })
    }

    /// [`Signer::reload`] unless the dir was read less than `age` ago: for a key set served to
    /// anyone, which must list a key added a moment ago without a file read per call.
    pub fn reload_if_older(&self, age: Duration) {
        {
            let mut read_at = self.read_at.lock().unwrap_or_else(|e| e.into_inner());
            if read_at.elapsed() < age {
                return;
            }
            *read_at = std::time::Instant::now();
        }
        if let Err(e) = self.reload() {
            tracing::warn!(error = %e, "signing keys: keeping the keys in use");
        }
    }

    /// Re-reads the keys dir; on an error the keys in use stay. Returns the active key id.
    pub fn reload(&self) -> Result<String, KeyError> {
        *self.read_at.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        let fresh = load_signing(&self.dir)?;
        let kid = fresh.kid.clone();
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.kid != fresh.kid || state.public != fresh.public {
            tracing::info!(active = %fresh.kid, keys = fresh.public.len(), dir = %self.dir.display(), "signing keys reloaded");
            *state = Arc::new(fresh);
        }
        Ok(kid)
    }

    fn current(&self) -> Arc<SigningState> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Key id written into every token's header.
    pub fn kid(&self) -> String {
        self.current().kid.clone()
    }

    /// Every public key of this signer's dir, by key id (base64url, JWK `x`).
    pub fn public_keys(&self) -> Vec<(String, String)> {
        self.current().public.clone()
    }

    /// A token for `subject` with `roles`, valid for `ttl`.
    pub fn mint(&self, subject: &str, roles: &[String], ttl: Duration) -> String {
        self.mint_for(subject, roles, ttl, AUDIENCE)
    }

    /// A service token: `svc:<service>` calling the service behind `audience`.
    pub fn mint_service(&self, service: &str, audience: &str, ttl: Duration) -> String {
        self.mint_for(
            &format!("{SERVICE_SUBJECT_PREFIX}{service}"),
            &["service".to_owned()],
            ttl,
            audience,
        )
    }

    /// A user token of login session `sid` (its refresh-token family).
    pub fn mint_session(&self, subject: &str, roles: &[String], ttl: Duration, sid: &str) -> String {
        self.mint_claims(subject, roles, chrono::Utc::now().timestamp(), ttl, AUDIENCE, Some(sid))
    }

    /// A token for another audience (service tokens, and tests of audience checks).
    pub fn mint_for(&self, subject: &str, roles: &[String], ttl: Duration, audience: &str) -> String {
        self.mint_claims(subject, roles, chrono::Utc::now().timestamp(), ttl, audience, None)
    }

    /// A user token issued `age` ago (still valid for `ttl` from its issue), of session `sid`:
    /// for tests of renewal.
    pub fn mint_aged(
        &self,
        subject: &str,
        roles: &[String],
        age: Duration,
        ttl: Duration,
        sid: Option<&str>,
    ) -> String {
        let issued_at = chrono::Utc::now().timestamp() - age.as_secs() as i64;
        self.mint_claims(subject, roles, issued_at, ttl, AUDIENCE, sid)
    }

    /// Signs `message` with the active key: (key id, base64url Ed25519 signature). For records
    /// kept outside the database, such as the audit chain's signed head.
    pub fn sign_bytes(&self, message: &[u8]) -> (String, String) {
        let state = self.current();
        let signature = jsonwebtoken::crypto::sign(message, &state.key, Algorithm::EdDSA)
            .expect("Ed25519 signing with a validated key cannot fail");
        (state.kid.clone(), signature)
    }

    fn mint_claims(
        &self,
        subject: &str,
        roles: &[String],
        issued_at: i64,
        ttl: Duration,
        audience: &str,
        sid: Option<&str>,
    ) -> String {
        let claims = Claims {
            sub: subject.to_owned(),
            iss: ISSUER.to_owned(),
            aud: audience.to_owned(),
            iat: issued_at,
            exp: issued_at.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            roles: roles.to_vec(),
            sid: sid.map(str::to_owned),
        };
        let state = self.current();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(state.kid.clone());
        jsonwebtoken::encode(&header, &claims, &state.key).expect("Ed25519 signing with a validated key cannot fail")
    }
}

/// Fetches the public keys that sign user tokens from identity's open key set:
/// `(key id, base64url key)` pairs.
pub type FetchKeys =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Vec<(String, String)>, String>> + Send>> + Send + Sync>;

/// One public key a verifier knows, and what it may sign.
#[derive(Clone)]
struct KnownKey {
    key: DecodingKey,
    x: String,
    /// The part whose service tokens it may sign; None: any (one process runs every part).
    owner: Option<String>,
    /// Whether it may sign user tokens (identity's keys only).
    users: bool,
}

/// The part's own keys dir, as a verifier reads it.
struct OwnKeys {
    dir: PathBuf,
    /// The part they belong to (None: one process running every part).
    owner: Option<String>,
    /// Whether they sign user tokens.
    users: bool,
}

/// Where a verifier's keys come from (ADR 0029).
struct KeySources {
    own: OwnKeys,
    /// Public keys of other parts, distributed as files `<owner>.<kid>.pub`.
    trusted: Option<PathBuf>,
    /// Identity's key set, when this part does not hold it.
    remote: std::sync::OnceLock<FetchKeys>,
    /// The keys identity listed last.
    fetched: RwLock<Vec<(String, String)>>,
    known: RwLock<Arc<HashMap<String, KnownKey>>>,
    /// When the last re-read of the keys started (see [`Verifier::refresh_on_miss`]).
    refreshed: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Verifies tokens against the public keys it knows, chosen by `kid`; each key may sign only
/// what its owner may (user tokens: identity's keys; `svc:<part>` tokens: that part's keys).
#[derive(Clone)]
pub struct Verifier {
    /// Sessions and accounts whose tokens are refused (kept up to date by
    /// [`crate::revocations::spawn_feed`]).
    revocations: Arc<crate::revocations::Revocations>,
    sources: Arc<KeySources>,
    validation: Arc<Validation>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.known().keys().cloned().collect::<Vec<_>>())
            .finish()
    }
}

/// Reads the `*.pub` files of `dir` (base64url Ed25519 public keys). `named`: file names are
/// `<owner>.<kid>.pub` and the owner is returned; else the owner is None. An unreadable or
/// invalid file is an error only when `strict`; else it is skipped with a warning.
/// A public key read from a file: its owner (when the file name says), key id and raw bytes.
type PublicKeyFile = (Option<String>, String, Vec<u8>);

fn read_public_keys(dir: &Path, named: bool, strict: bool) -> Result<Vec<PublicKeyFile>, KeyError> {
    let mut keys = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if !strict && e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io_err(dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') || !name.ends_with(".pub") {
            continue;
        }
        let owner = if named {
            match name.split_once('.') {
                Some((owner, rest))
                    if !owner.is_empty()
                        && rest != "pub"
                        && owner
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
                {
                    Some(owner.to_owned())
                }
                _ => {
                    tracing::warn!(file = %path.display(), "trusted key file not named <owner>.<kid>.pub: ignored");
                    continue;
                }
            }
        } else {
            None
        };
        let raw = fs::read_to_string(&path).map_err(io_err(&path)).and_then(|text| {
            URL_SAFE_NO_PAD
                .decode(text.trim())
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| KeyError::Invalid { path: path.clone() })
        });
        match raw {
            Ok(raw) => keys.push((owner, key_id(&raw), raw)),
            Err(e) if strict => return Err(e),
            Err(e) => tracing::warn!(error = %e, "public key file ignored"),
        }
    }
    Ok(keys)
}

impl Verifier {
    /// A verifier of one process that runs every part: every `*.pub` file of `dir` verifies
    /// user tokens and any part's service tokens.
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        Self::with_sources(KeySources::new(
            OwnKeys {
                dir: dir.to_owned(),
                owner: None,
                users: true,
            },
            None,
        ))
    }

    /// The verifier of one part (ADR 0029): its own keys (`own`, owned by `owner`, which may sign
    /// user tokens when `issues_user_tokens`) and the other parts' public keys in `trusted`
    /// (`<owner>.<kid>.pub`; `identity.*` keys sign user tokens). [`Verifier::follow_identity`]
    /// adds identity's key set.
    pub fn for_part(
        own: &Path,
        owner: &str,
        issues_user_tokens: bool,
        trusted: Option<&Path>,
    ) -> Result<Self, KeyError> {
        Self::with_sources(KeySources::new(
            OwnKeys {
                dir: own.to_owned(),
                owner: Some(owner.to_owned()),
                users: issues_user_tokens,
            },
            trusted.map(Path::to_owned),
        ))
    }

    fn with_sources(sources: KeySources) -> Result<Self, KeyError> {
        let known = sources.read(true)?;
        if known.is_empty() {
            return Err(KeyError::NoSigningKey(sources.own.dir.clone()));
        }
        *sources.known.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(known);
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        Ok(Self {
            revocations: Arc::default(),
            sources: Arc::new(sources),
            validation: Arc::new(validation),
        })
    }

    /// Also trusts the keys identity lists in its open key set to sign user tokens (read by
    /// [`Verifier::refresh`]).
    pub fn follow_identity(&self, fetch: FetchKeys) {
        let _ = self.sources.remote.set(fetch);
    }

    /// Re-reads the key files and identity's key set. A source that fails keeps what it gave
    /// last; the error says which.
    pub async fn refresh(&self) -> Result<(), String> {
        let mut last = self.sources.refreshed.lock().await;
        *last = Some(tokio::time::Instant::now());
        self.reread().await
    }

    async fn reread(&self) -> Result<(), String> {
        let mut failure = None;
        if let Some(fetch) = self.sources.remote.get() {
            match fetch().await {
                Ok(keys) => *self.sources.fetched.write().unwrap_or_else(|e| e.into_inner()) = keys,
                Err(e) => failure = Some(format!("identity's key set: {e}")),
            }
        }
        match self.sources.read(false) {
            Ok(known) => {
                let mut current = self.sources.known.write().unwrap_or_else(|e| e.into_inner());
                if current.len() != known.len() || known.keys().any(|k| !current.contains_key(k)) {
                    tracing::info!(keys = known.len(), "verifying keys refreshed");
                }
                *current = Arc::new(known);
            }
            Err(e) => failure = Some(e.to_string()),
        }
        failure.map_or(Ok(()), Err)
    }

    /// Makes sure the keys were re-read after this call began: a token naming an unknown key
    /// id may be signed by a key published a moment ago. One re-read serves every call that
    /// missed before it started, and re-reads start at least a second apart (a call waits for
    /// its turn rather than being refused), so a flood of made-up key ids costs at most one
    /// re-read a second and a real new key is never refused.
    async fn refresh_on_miss(&self) {
        let missed_at = tokio::time::Instant::now();
        let mut last = self.sources.refreshed.lock().await;
        if let Some(started) = *last {
            if started >= missed_at {
                return;
            }
            tokio::time::sleep_until(started + MISS_REFRESH_GAP).await;
        }
        *last = Some(tokio::time::Instant::now());
        if let Err(e) = self.reread().await {
            tracing::warn!(error = %e, "refreshing the verifying keys after an unknown key id");
        }
    }

    fn known(&self) -> Arc<HashMap<String, KnownKey>> {
        self.sources.known.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Decodes `token` after checking its algorithm (EdDSA only), key id, signature, issuer,
    /// expiry and the audience `validation` names.
    fn decode(&self, token: &str, validation: &Validation) -> Result<(Claims, KnownKey), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Malformed);
        }
        let known = self.known();
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| known.get(kid))
            .ok_or(AuthError::UnknownKey)?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => AuthError::WrongAudience,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed,
            }
        })?;
        Ok((data.claims, key.clone()))
    }

    /// The revocations this verifier follows (shared by its clones).
    pub fn revocations(&self) -> Arc<crate::revocations::Revocations> {
        self.revocations.clone()
    }

    /// Checks a user access token: signature by a key that may sign user tokens, key id,
    /// issuer, audience `thali-api`, expiry, and that its session and account were not revoked.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let (claims, key) = self.decode(token, &self.validation)?;
        if claims.sub.starts_with(SERVICE_SUBJECT_PREFIX) {
            return Err(AuthError::WrongAudience);
        }
        if !key.users {
            return Err(AuthError::NotIssuer);
        }
        // Subjects are stored as owners (at most 128 characters): refuse what cannot be one.
        if claims.sub.is_empty() || claims.sub.len() > 128 {
            return Err(AuthError::Malformed);
        }
        if self.revocations.refuses(&claims.sub, claims.sid.as_deref(), claims.iat) {
            return Err(AuthError::Revoked);
        }
        Ok(Principal {
            subject: claims.sub,
            roles: claims.roles,
            api_key: None,
            issued_at: claims.iat,
            session: claims.sid,
        })
    }

    /// [`Verifier::verify`], refreshing the keys once when the token names a key id not known
    /// yet (one published since the last refresh).
    pub async fn verify_fresh(&self, token: &str) -> Result<Principal, AuthError> {
        self.again_after_miss(|| self.verify(token)).await
    }

    /// Runs `check`; if the token named an unknown key id, once more after
    /// [`Verifier::refresh_on_miss`].
    async fn again_after_miss<T>(&self, check: impl Fn() -> Result<T, AuthError>) -> Result<T, AuthError> {
        match check() {
            Err(AuthError::UnknownKey) => {
                self.refresh_on_miss().await;
                check()
            }
            other => other,
        }
    }

    /// Checks a service token addressed to `audience`, signed by a key of the service it names;
    /// returns the calling service's name.
    pub fn verify_service(&self, token: &str, audience: &str) -> Result<String, AuthError> {
        let mut validation = (*self.validation).clone();
        validation.set_audience(&[audience]);
        let (claims, key) = self.decode(token, &validation)?;
        let service = claims
            .sub
            .strip_prefix(SERVICE_SUBJECT_PREFIX)
            .ok_or(AuthError::WrongAudience)?;
        if key.owner.as_deref().is_some_and(|owner| owner != service) {
            return Err(AuthError::NotIssuer);
        }
        Ok(service.to_owned())
    }

    /// [`Verifier::verify_service`], refreshing the keys once on an unknown key id.
    pub async fn verify_service_fresh(&self, token: &str, audience: &str) -> Result<String, AuthError> {
        self.again_after_miss(|| self.verify_service(token, audience)).await
    }

    /// Kinds of token a caller may present, told apart without verifying: a service token is
    /// addressed to a service audience.
    pub fn peek_audience(token: &str) -> Option<String> {
        let payload = token.split('.').nth(1)?;
        let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        value.get("aud").and_then(|a| a.as_str()).map(str::to_owned)
    }

    /// The public keys that may sign user tokens, by key id, base64url (JWK `x`).
    pub fn public_keys(&self) -> Vec<(String, String)> {
        let mut keys: Vec<_> = self
            .known()
            .iter()
            .filter(|(_, k)| k.users)
            .map(|(kid, k)| (kid.clone(), k.x.clone()))
            .collect();
        keys.sort();
        keys
    }

    /// Takes the token out of an `Authorization: Bearer …` value and verifies it.
    pub fn verify_bearer(&self, header_value: &str) -> Result<Principal, AuthError> {
        self.verify(bearer_token(header_value).ok_or(AuthError::Malformed)?)
    }
}

impl KeySources {
    fn new(own: OwnKeys, trusted: Option<PathBuf>) -> Self {
        Self {
            own,
            trusted,
            remote: std::sync::OnceLock::new(),
            fetched: RwLock::default(),
            known: RwLock::default(),
            refreshed: tokio::sync::Mutex::new(None),
        }
    }

    /// Every key the sources hold now. `strict`: a bad own key file is an error (at start).
    fn read(&self, strict: bool) -> Result<HashMap<String, KnownKey>, KeyError> {
        let mut known = HashMap::new();
        let mut add = |kid: String, raw: &[u8], owner: Option<String>, users: bool| {
            known.entry(kid).or_insert_with(|| KnownKey {
                key: DecodingKey::from_ed_der(raw),
                x: URL_SAFE_NO_PAD.encode(raw),
                owner,
                users,
            });
        };
        for (_, kid, raw) in read_public_keys(&self.own.dir, false, strict)? {
            add(kid, &raw, self.own.owner.clone(), self.own.users);
        }
        if let Some(dir) = &self.trusted {
            for (owner, kid, raw) in read_public_keys(dir, true, false)? {
                let users = owner.as_deref() == Some(IDENTITY);
                add(kid, &raw, owner, users);
            }
        }
        for (kid, x) in self.fetched.read().unwrap_or_else(|e| e.into_inner()).iter() {
            match URL_SAFE_NO_PAD.decode(x) {
                Ok(raw) if raw.len() == 32 && key_id(&raw) == *kid => {
                    add(kid.clone(), &raw, Some(IDENTITY.to_owned()), true)
                }
                _ => tracing::warn!(kid, "identity listed a key that does not match its id: ignored"),
            }
        }
        Ok(known)
    }
}

/// The least time between two re-reads of the keys caused by unknown key ids.
const MISS_REFRESH_GAP: Duration = Duration::from_secs(1);

/// The part that issues user tokens.
pub const IDENTITY: &str = "identity";

/// Keeps `signer` and `verifier` up to date with their key files (and identity's key set)
/// every `every`, until the task is dropped.
pub fn spawn_refresh(signer: Arc<Signer>, verifier: Verifier, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = signer.reload() {
                tracing::warn!(error = %e, "signing keys: keeping the keys in use");
                metrics::counter!("auth_key_refresh_failures_total", "source" => "signing").increment(1);
            }
            if let Err(e) = verifier.refresh().await {
                tracing::warn!(error = %e, "verifying keys: keeping what the failed source gave last");
                metrics::counter!("auth_key_refresh_failures_total", "source" => "verifying").increment(1);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("thali-auth-{name}-{}", uuid::Uuid::now_v7()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn minted_token_verifies_into_principal() {
        let dir = temp_dir("ok");
        ensure_key_pair(&dir).unwrap();
        let token = Signer::load(&dir)
            .unwrap()
            .mint("user-1", &["creator".into()], Duration::from_secs(60));
        let principal = Verifier::load(&dir).unwrap().verify(&token).unwrap();
        assert_eq!(principal.subject, "user-1");
        assert!(principal.has_role("creator"));
    }

    #[test]
    fn key_pair_is_created_once_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("once");
        let kid = ensure_key_pair(&dir).unwrap();
        assert_eq!(ensure_key_pair(&dir).unwrap(), kid);
        let mode = fs::metadata(dir.join(format!("{kid}.ed25519")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_new_key_signs_only_once_activated_and_old_tokens_still_verify() {
        let dir = temp_dir("rotate");
        let old_kid = ensure_key_pair(&dir).unwrap();
        let signer = Signer::load(&dir).unwrap();
        let old_token = signer.mint("u", &[], Duration::from_secs(60));
        let new_kid = add_key_pair(&dir).unwrap();
        assert_ne!(old_kid, new_kid);
        assert_eq!(signer.reload().unwrap(), old_kid, "an added key does not sign yet");
        assert_eq!(Signer::load(&dir).unwrap().kid(), old_kid, "nor after a restart");
        assert_eq!(signer.public_keys().len(), 2, "but it is published");

        activate(&dir, &new_kid).unwrap();
        assert_eq!(signer.reload().unwrap(), new_kid, "the active file names the signer");
        let verifier = Verifier::load(&dir).unwrap();
        assert!(
            verifier.verify(&old_token).is_ok(),
            "tokens of the old key still verify"
        );
        assert!(verifier.verify(&signer.mint("u", &[], Duration::from_secs(60))).is_ok());
        assert_eq!(verifier.public_keys().len(), 2);

        assert!(retire(&dir, &new_kid).is_err(), "the active key cannot be retired");
        retire(&dir, &old_kid).unwrap();
        assert_eq!(
            Verifier::load(&dir).unwrap().verify(&old_token),
            Err(AuthError::UnknownKey)
        );
        assert!(matches!(
            activate(&dir, &old_kid),
            Err(KeyError::UnknownActiveKey { .. })
        ));
    }

    #[test]
    fn several_keys_and_no_active_file_refuse_to_start() {
        let dir = temp_dir("ambiguous");
        add_key_pair(&dir).unwrap();
        add_key_pair(&dir).unwrap();
        assert!(matches!(Signer::load(&dir), Err(KeyError::NoActiveKey(_))));
        assert!(
            ensure_key_pair(&dir).is_err(),
            "init never adds a third key to pick from"
        );
        fs::write(dir.join(ACTIVE_FILE), "ed25519-0000000000000000\n").unwrap();
        assert!(matches!(Signer::load(&dir), Err(KeyError::UnknownActiveKey { .. })));
    }

    #[test]
    fn each_key_signs_only_what_its_owner_may() {
        let identity = temp_dir("custody-identity");
        let facade = temp_dir("custody-facade");
        let trusted = temp_dir("custody-trusted");
        ensure_key_pair(&identity).unwrap();
        ensure_key_pair(&facade).unwrap();
        publish(&identity, IDENTITY, &trusted).unwrap();
        publish(&facade, "facade", &trusted).unwrap();
        // An unrelated or malformed file in the trusted dir is ignored, not fatal.
        fs::write(trusted.join("README.pub"), "x").unwrap();
        fs::write(trusted.join("storefront.ed25519-00.pub"), "not a key").unwrap();
        let own = temp_dir("custody-storefront");
        ensure_key_pair(&own).unwrap();
        let verifier = Verifier::for_part(&own, "storefront", false, Some(&trusted)).unwrap();

        let ttl = Duration::from_secs(60);
        let by_identity = Signer::load(&identity).unwrap();
        let by_facade = Signer::load(&facade).unwrap();
        assert_eq!(
            verifier
                .verify(&by_identity.mint("admin-1", &["admin".into()], ttl))
                .unwrap()
                .subject,
            "admin-1"
        );
        assert_eq!(
            verifier.verify(&by_facade.mint("admin-1", &["admin".into()], ttl)),
            Err(AuthError::NotIssuer),
            "the facade cannot mint a user token"
        );
        let aud = service_audience("storefront");
        assert_eq!(
            verifier
                .verify_service(&by_facade.mint_service("facade", &aud, ttl), &aud)
                .unwrap(),
            "facade"
        );
        assert_eq!(
            verifier.verify_service(&by_facade.mint_service("payments", &aud, ttl), &aud),
            Err(AuthError::NotIssuer),
            "a part cannot speak for another"
        );
        let own_signer = Signer::load(&own).unwrap();
        assert_eq!(
            verifier.verify(&own_signer.mint("u", &[], ttl)),
            Err(AuthError::NotIssuer)
        );
        assert_eq!(
            verifier.public_keys(),
            by_identity.public_keys(),
            "only identity's keys sign users"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_published_after_start_verifies_on_first_sight() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let identity = temp_dir("late-identity");
        let own = temp_dir("late-own");
        let trusted = temp_dir("late-trusted");
        ensure_key_pair(&identity).unwrap();
        ensure_key_pair(&own).unwrap();
        publish(&identity, IDENTITY, &trusted).unwrap();
        let verifier = Verifier::for_part(&own, "facade", false, Some(&trusted)).unwrap();
        // Identity's key set, as its replicas serve it (they read identity's keys dir).
        let fetches = Arc::new(AtomicUsize::new(0));
        verifier.follow_identity(Arc::new({
            let (identity, fetches) = (identity.clone(), fetches.clone());
            move || {
                let (identity, fetches) = (identity.clone(), fetches.clone());
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    fetches.fetch_add(1, Ordering::SeqCst);
                    Ok(Signer::load(&identity).unwrap().public_keys())
                })
            }
        }));
        let rotate = || {
            let kid = add_key_pair(&identity).unwrap();
            activate(&identity, &kid).unwrap();
            Signer::load(&identity).unwrap().mint("u", &[], Duration::from_secs(60))
        };

        // Identity rotates: its new key is in its key set, not in the files.
        let token = rotate();
        assert_eq!(verifier.verify(&token), Err(AuthError::UnknownKey));
        // Calls that miss together all wait for one fetch, and all pass.
        let answers = futures::future::join_all((0..8).map(|_| verifier.verify_fresh(&token))).await;
        assert!(
            answers.iter().all(|a| a.as_ref().is_ok_and(|p| p.subject == "u")),
            "{answers:?}"
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        // Another key at once (within the second): it waits for its turn, and passes.
        let again = rotate();
        assert_eq!(verifier.verify_fresh(&again).await.unwrap().subject, "u");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);

        // Made-up key ids are refused, and a flood of them costs one fetch a second.
        let forged: Vec<String> = (0..50)
            .map(|i| {
                let mut forged = token.clone();
                let header = format!(r#"{{"alg":"EdDSA","kid":"ed25519-{i:016x}"}}"#);
                forged.replace_range(..forged.find('.').unwrap(), &URL_SAFE_NO_PAD.encode(header));
                forged
            })
            .collect();
        let started = tokio::time::Instant::now();
        let answers = futures::future::join_all(forged.iter().map(|t| verifier.verify_fresh(t))).await;
        assert!(answers.iter().all(|a| *a == Err(AuthError::UnknownKey)));
        let fetched = fetches.load(Ordering::SeqCst) - 2;
        let seconds = started.elapsed().as_secs_f64();
        assert!(
            fetched as f64 <= seconds + 1.0,
            "{fetched} fetches in {seconds:.2} s for 50 made-up key ids"
        );
    }

    #[test]
    fn foreign_expired_and_wrong_audience_tokens_are_refused() {
        let dir = temp_dir("mine");
        let other = temp_dir("other");
        ensure_key_pair(&dir).unwrap();
        ensure_key_pair(&other).unwrap();
        let verifier = Verifier::load(&dir).unwrap();
        let foreign = Signer::load(&other).unwrap().mint("x", &[], Duration::from_secs(60));
        assert_eq!(verifier.verify(&foreign), Err(AuthError::UnknownKey));

        let signer = Signer::load(&dir).unwrap();
        let expired = signer.mint("x", &[], Duration::ZERO);
        let mut claims: Claims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(expired.split('.').nth(1).unwrap()).unwrap()).unwrap();
        claims.exp -= 3600;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signer.kid());
        let expired = jsonwebtoken::encode(&header, &claims, &signer.current().key).unwrap();
        assert_eq!(verifier.verify(&expired), Err(AuthError::Expired));

        let other_aud = signer.mint_for("x", &[], Duration::from_secs(60), "thali-storefront");
        assert_eq!(verifier.verify(&other_aud), Err(AuthError::WrongAudience));
        assert_eq!(verifier.verify("not.a.token"), Err(AuthError::Malformed));
        assert_eq!(verifier.verify_bearer("Basic abc"), Err(AuthError::Malformed));
    }

    #[test]
    fn tampered_payload_fails_signature() {
        let dir = temp_dir("tamper");
        ensure_key_pair(&dir).unwrap();
        let token = Signer::load(&dir).unwrap().mint("alice", &[], Duration::from_secs(60));
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = "mallory".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(
            Verifier::load(&dir).unwrap().verify(&forged),
            Err(AuthError::BadSignature)
        );
    }
}
