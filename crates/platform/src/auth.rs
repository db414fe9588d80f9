//! The authentication seam: EdDSA (Ed25519) JWTs checked against configured public keys (issuer,
//! audience, expiry, key id) into a [`Principal`]. In embedded mode the key pair is generated
//! under the data dir on first run; `thali token` mints tokens with it.
use std::{
    collections::HashMap,
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
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
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates an Ed25519 key pair in `dir` unless a signing key is already there. The private key
/// file is created with mode 0600. Returns the key id of the signing key.
pub fn ensure_key_pair(dir: &Path) -> Result<String, KeyError> {
    if let Ok(signer) = Signer::load(dir) {
        return Ok(signer.kid);
    }
    add_key_pair(dir)
}

/// Writes a new Ed25519 key pair into `dir` (private key mode 0600); being the newest, it signs
/// from now on while older public keys keep verifying. Returns its key id.
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

/// Key id: the first 16 hex digits of the SHA-256 of the public key.
fn key_id(public: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    let hex: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("ed25519-{hex}")
}

/// Mints access tokens with the newest private key in the keys dir.
pub struct Signer {
    kid: String,
    key: EncodingKey,
}

impl Signer {
    /// Loads the most recently written `*.ed25519` key in `dir`.
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            if path.extension().is_some_and(|e| e == "ed25519") {
                let modified = fs::metadata(&path).and_then(|m| m.modified()).map_err(io_err(&path))?;
                if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                    newest = Some((modified, path));
                }
            }
        }
        let (_, path) = newest.ok_or_else(|| KeyError::NoSigningKey(dir.to_owned()))?;
        let der = fs::read(&path).map_err(io_err(&path))?;
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| KeyError::Invalid { path: path.clone() })?;
        Ok(Self {
            kid: key_id(pair.public_key().as_ref()),
            key: EncodingKey::from_ed_der(&der),
        })
    }

    /// Key id written into every token's header.
    pub fn kid(&self) -> &str {
        &self.kid
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
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("Ed25519 signing with a validated key cannot fail")
    }
}

/// Verifies tokens against every public key in the keys dir, chosen by `kid`.
#[derive(Clone)]
pub struct Verifier {
    /// Sessions and accounts whose tokens are refused (kept up to date by
    /// [`crate::revocations::spawn_feed`]).
    revocations: Arc<crate::revocations::Revocations>,
    keys: Arc<HashMap<String, DecodingKey>>,
    /// The same keys as base64url text, for JWKS.
    public: Arc<HashMap<String, String>>,
    validation: Arc<Validation>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Verifier {
    /// Loads every `*.pub` file (base64url Ed25519 public key) in `dir`.
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        let mut keys = HashMap::new();
        let mut public = HashMap::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            if path.extension().is_some_and(|e| e == "pub") {
                let text = fs::read_to_string(&path).map_err(io_err(&path))?;
                let raw = URL_SAFE_NO_PAD
                    .decode(text.trim())
                    .ok()
                    .filter(|k| k.len() == 32)
                    .ok_or_else(|| KeyError::Invalid { path: path.clone() })?;
                public.insert(key_id(&raw), URL_SAFE_NO_PAD.encode(&raw));
                keys.insert(key_id(&raw), DecodingKey::from_ed_der(&raw));
            }
        }
        if keys.is_empty() {
            return Err(KeyError::NoSigningKey(dir.to_owned()));
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        Ok(Self {
            revocations: Arc::default(),
            keys: Arc::new(keys),
            public: Arc::new(public),
            validation: Arc::new(validation),
        })
    }

    /// Decodes `token` after checking its algorithm (EdDSA only), key id, signature, issuer,
    /// expiry and the audience `validation` names.
    fn decode(&self, token: &str, validation: &Validation) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Malformed);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(AuthError::UnknownKey)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => AuthError::WrongAudience,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed,
            }
        })?;
        Ok(data.claims)
    }

    /// The revocations this verifier follows (shared by its clones).
    pub fn revocations(&self) -> Arc<crate::revocations::Revocations> {
        self.revocations.clone()
    }

    /// Checks a user access token: signature, key id, issuer, audience `thali-api`, expiry, and
    /// that its session and account were not revoked.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = self.decode(token, &self.validation)?;
        if claims.sub.starts_with(SERVICE_SUBJECT_PREFIX) {
            return Err(AuthError::WrongAudience);
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

    /// Checks a service token addressed to `audience`; returns the calling service's name.
    pub fn verify_service(&self, token: &str, audience: &str) -> Result<String, AuthError> {
        let mut validation = (*self.validation).clone();
        validation.set_audience(&[audience]);
        let claims = self.decode(token, &validation)?;
        claims
            .sub
            .strip_prefix(SERVICE_SUBJECT_PREFIX)
            .map(str::to_owned)
            .ok_or(AuthError::WrongAudience)
    }

    /// Kinds of token a caller may present, told apart without verifying: a service token is
    /// addressed to a service audience.
    pub fn peek_audience(token: &str) -> Option<String> {
        let payload = token.split('.').nth(1)?;
        let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        value.get("aud").and_then(|a| a.as_str()).map(str::to_owned)
    }

    /// Public keys by key id, base64url (JWK `x`), for JWKS.
    pub fn public_keys(&self) -> Vec<(String, String)> {
        let mut keys: Vec<_> = self.public.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        keys.sort();
        keys
    }

    /// Takes the token out of an `Authorization: Bearer …` value and verifies it.
    pub fn verify_bearer(&self, header_value: &str) -> Result<Principal, AuthError> {
        self.verify(bearer_token(header_value).ok_or(AuthError::Malformed)?)
    }
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
    fn after_rotation_the_new_key_signs_and_old_tokens_still_verify() {
        let dir = temp_dir("rotate");
        let old_kid = ensure_key_pair(&dir).unwrap();
        let old_token = Signer::load(&dir).unwrap().mint("u", &[], Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
        let new_kid = add_key_pair(&dir).unwrap();
        assert_ne!(old_kid, new_kid);
        let signer = Signer::load(&dir).unwrap();
        assert_eq!(signer.kid(), new_kid, "the newest key signs");
        let verifier = Verifier::load(&dir).unwrap();
        assert!(
            verifier.verify(&old_token).is_ok(),
            "tokens of the old key still verify"
        );
        assert!(verifier.verify(&signer.mint("u", &[], Duration::from_secs(60))).is_ok());
        assert_eq!(verifier.public_keys().len(), 2);
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
        header.kid = Some(signer.kid.clone());
        let expired = jsonwebtoken::encode(&header, &claims, &signer.key).unwrap();
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
