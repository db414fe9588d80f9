//! Object storage for uploaded media (ADR 0033), behind one trait. Objects are private: they are
//! read only through links that expire.
//!
//! Links expire at the end of a fixed window — the [`WINDOW`] after the current one — so every
//! link made within one window is the same link, and a page cached during a window (60 s for a
//! storefront) carries links that outlive it.
//!
//! [`LocalStore`] keeps objects in a private directory (embedded mode); its links point at the
//! facade's `GET /media/{key}?exp=…&sig=…`, which checks an HMAC-SHA256 signature over the key and
//! the expiry before it reads the file.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use ring::{
    hmac,
    rand::{SecureRandom, SystemRandom},
};

/// The length of a link window.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// When a link made at `now` stops working: the end of the window after the current one.
pub fn link_expiry(now: DateTime<Utc>) -> DateTime<Utc> {
    let window = WINDOW.as_secs() as i64;
    let start = now.timestamp().div_euclid(window) * window;
    DateTime::from_timestamp(start + 2 * window, 0).unwrap_or(now)
}

/// The start of the window `now` is in (links are signed as of then).
pub fn window_start(now: DateTime<Utc>) -> DateTime<Utc> {
    let window = WINDOW.as_secs() as i64;
    DateTime::from_timestamp(now.timestamp().div_euclid(window) * window, 0).unwrap_or(now)
}

/// The image types objects may have, by key extension.
const EXTENSIONS: &[(&str, &str)] = &[
    ("jpg", "image/jpeg"),
    ("png", "image/png"),
    ("webp", "image/webp"),
    ("avif", "image/avif"),
];

/// A fresh object key: 32 random hex digits and the type's extension. Never the client's name.
pub fn new_key(extension: &str) -> String {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the OS random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.{extension}")
}

/// The content type of a well-formed key (32 lowercase hex digits, a dot, a known extension),
/// or None: anything else never reaches the store.
pub fn key_content_type(key: &str) -> Option<&'static str> {
    let (name, ext) = key.split_once('.')?;
    if name.len() != 32 || !name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    EXTENSIONS.iter().find(|(e, _)| *e == ext).map(|(_, t)| *t)
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("object store: {0}")]
    Io(#[from] std::io::Error),
    #[error("object store: {0}")]
    Remote(String),
}

/// Where uploaded objects live.
#[tonic::async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Stores `bytes` under `key` (a key from [`new_key`]).
    async fn put(&self, key: &str, content_type: &str, bytes: Bytes) -> Result<(), ObjectError>;
    /// Removes `key`; a key that is not there is no error.
    async fn delete(&self, key: &str) -> Result<(), ObjectError>;
    /// A link that reads `key` until [`link_expiry`]`(now)`.
    fn link(&self, key: &str, now: DateTime<Utc>) -> String;
    /// What the store is, for the log (never a secret).
    fn describe(&self) -> String;
}

/// Why a local link is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefused {
    /// Not a key this store makes.
    BadKey,
    /// The signature is not this store's for this key and expiry.
    BadSignature,
    /// The link's window is over.
    Expired,
}

/// Objects in a private directory; links served by the facade.
pub struct LocalStore {
    dir: PathBuf,
    key: hmac::Key,
}

impl LocalStore {
    /// The store under `dir` (`objects/` for the files, `link-signing-key` for the 32-byte HMAC
    /// key, made on first use, 0600).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("objects"))?;
        restrict(dir)?;
        let key_file = dir.join("link-signing-key");
        let secret = match std::fs::read(&key_file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| std::io::Error::other("no random source"))?;
                // Written whole aside, then linked into place: a process starting beside this
                // one (facade and storefront share the data dir) reads either no key or all of
                // it, and the first link wins.
                let partial = dir.join(format!("link-signing-key.{}.partial", std::process::id()));
                let _ = std::fs::remove_file(&partial);
                write_private(&partial, &bytes)?;
                let linked = std::fs::hard_link(&partial, &key_file);
                std::fs::remove_file(&partial)?;
                match linked {
                    Ok(()) => bytes.to_vec(),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(&key_file)?,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        if secret.len() != 32 {
            return Err(std::io::Error::other(format!(
                "{} must hold exactly 32 bytes",
                key_file.display()
            )));
        }
        Ok(Self {
            dir: dir.to_owned(),
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        })
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        key_content_type(key)?;
        Some(self.dir.join("objects").join(&key[..2]).join(key))
    }

    fn signature(&self, key: &str, expires: i64) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, format!("GET\n{key}\n{expires}").as_bytes()))
    }

    /// Checks a link's key, expiry and signature at `now`.
    pub fn verify(&self, key: &str, expires: i64, signature: &str, now: DateTime<Utc>) -> Result<(), LinkRefused> {
        key_content_type(key).ok_or(LinkRefused::BadKey)?;
        let given = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| LinkRefused::BadSignature)?;
        hmac::verify(&self.key, format!("GET\n{key}\n{expires}").as_bytes(), &given)
            .map_err(|_| LinkRefused::BadSignature)?;
        if expires <= now.timestamp() {
            return Err(LinkRefused::Expired);
        }
        Ok(())
    }

    /// The object's bytes, or None when there is no such object.
    pub async fn read(&self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        let Some(path) = self.path(key) else {
            return Ok(None);
        };
        match tokio::fs::read(path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[tonic::async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, _content_type: &str, bytes: Bytes) -> Result<(), ObjectError> {
        let path = self
            .path(key)
            .ok_or_else(|| ObjectError::Remote(format!("{key:?} is not an object key")))?;
        let parent = path.parent().expect("an object path has a parent").to_owned();
        tokio::fs::create_dir_all(&parent).await?;
        // Written aside and renamed: a reader never sees half an object.
        let partial = parent.join(format!(".{key}.partial"));
        tokio::fs::write(&partial, &bytes).await?;
        tokio::fs::rename(&partial, &path).await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let Some(path) = self.path(key) else {
            return Ok(());
        };
        match tokio::fs::remove_file(path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn link(&self, key: &str, now: DateTime<Utc>) -> String {
        let expires = link_expiry(now).timestamp();
        format!("/media/{key}?exp={expires}&sig={}", self.signature(key, expires))
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.dir.display())
    }
}

/// Objects in a bucket of any S3-compatible store (distributed mode). Requests and links are
/// signed with SigV4 (rusty-s3, sans-IO; sent with reqwest); the bucket stays private, and a
/// link is a presigned GET signed as of the start of its window, so one window's links are one
/// link.
pub struct S3Store {
    bucket: rusty_s3::Bucket,
    credentials: rusty_s3::Credentials,
    http: reqwest::Client,
}

/// How long a signed PUT or DELETE is good for: it is sent at once.
const REQUEST_LIFE: Duration = Duration::from_secs(60);

impl S3Store {
    /// The bucket `bucket` at `endpoint` (path-style addressing when `path_style`, as local
    /// S3-compatible servers want; virtual-hosted otherwise).
    pub fn new(
        endpoint: &str,
        bucket: &str,
        region: &str,
        path_style: bool,
        access_key_id: &str,
        secret_access_key: &crate::secret::Secret<String>,
        timeout: Duration,
    ) -> Result<Self, ObjectError> {
        let url = endpoint
            .parse()
            .map_err(|e| ObjectError::Remote(format!("s3_url {endpoint:?}: {e}")))?;
        let style = if path_style {
            rusty_s3::UrlStyle::Path
        } else {
            rusty_s3::UrlStyle::VirtualHost
        };
        let bucket = rusty_s3::Bucket::new(url, style, bucket.to_owned(), region.to_owned())
            .map_err(|e| ObjectError::Remote(format!("s3 bucket: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ObjectError::Remote(format!("s3 client: {e}")))?;
        Ok(Self {
            bucket,
            credentials: rusty_s3::Credentials::new(access_key_id, secret_access_key.expose().clone()),
            http,
        })
    }

    /// Creates the bucket (operators normally do, with the policy in `deploy/s3/`); tests and
    /// first runs use this. A bucket that exists already is no error.
    pub async fn create_bucket(&self) -> Result<(), ObjectError> {
        use rusty_s3::S3Action;
        let url = self.bucket.create_bucket(&self.credentials).sign(REQUEST_LIFE);
        let res = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .body(Vec::new())
            .send()
            .await
            .map_err(|e| ObjectError::Remote(format!("creating the bucket: {e}")))?;
        if res.status().is_success() || res.status() == reqwest::StatusCode::CONFLICT {
            Ok(())
        } else {
            Err(ObjectError::Remote(format!(
                "creating the bucket: HTTP {}",
                res.status()
            )))
        }
    }
}

fn jiff_time(at: DateTime<Utc>) -> jiff::Timestamp {
    jiff::Timestamp::from_second(at.timestamp()).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

#[tonic::async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, content_type: &str, bytes: Bytes) -> Result<(), ObjectError> {
        use rusty_s3::S3Action;
        key_content_type(key).ok_or_else(|| ObjectError::Remote(format!("{key:?} is not an object key")))?;
        let url = self.bucket.put_object(Some(&self.credentials), key).sign(REQUEST_LIFE);
        let res = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes)
            .send()
            .await
            .map_err(|e| ObjectError::Remote(format!("storing {key}: {e}")))?;
        if !res.status().is_success() {
            return Err(ObjectError::Remote(format!("storing {key}: HTTP {}", res.status())));
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        use rusty_s3::S3Action;
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), key)
            .sign(REQUEST_LIFE);
        let res = self
            .http
            .delete(url)
            .send()
            .await
            .map_err(|e| ObjectError::Remote(format!("deleting {key}: {e}")))?;
        if res.status().is_success() || res.status() == reqwest::StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(ObjectError::Remote(format!("deleting {key}: HTTP {}", res.status())))
        }
    }

    fn link(&self, key: &str, now: DateTime<Utc>) -> String {
        use rusty_s3::S3Action;
        let start = window_start(now);
        let life = (link_expiry(now) - start).to_std().unwrap_or(2 * WINDOW);
        let mut action = self.bucket.get_object(Some(&self.credentials), key);
        // Served as an image, inline, under its own name, whatever the store guesses.
        if let Some(content_type) = key_content_type(key) {
            action.query_mut().insert("response-content-type", content_type);
        }
        let disposition = format!("inline; filename=\"{key}\"");
        action
            .query_mut()
            .insert("response-content-disposition", disposition.as_str());
        action.sign_with_time(life, &jiff_time(start)).to_string()
    }

    fn describe(&self) -> String {
        format!(
            "S3-compatible bucket {} at {}",
            self.bucket.name(),
            self.bucket.base_url()
        )
    }
}

#[cfg(unix)]
fn restrict(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn restrict(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn links_made_in_one_window_are_one_link_and_outlive_the_next_window() {
        let at = |h, m, s| Utc.with_ymd_and_hms(2026, 12, 7, h, m, s).unwrap();
        assert_eq!(link_expiry(at(10, 0, 0)), at(10, 30, 0));
        assert_eq!(link_expiry(at(10, 14, 59)), at(10, 30, 0));
        assert_eq!(link_expiry(at(10, 15, 0)), at(10, 45, 0));
        let dir = std::env::temp_dir().join(format!("thali-objects-{}", uuid::Uuid::now_v7()));
        let store = LocalStore::open(&dir).unwrap();
        let key = new_key("png");
        assert_eq!(store.link(&key, at(10, 1, 0)), store.link(&key, at(10, 14, 0)));
        assert_ne!(store.link(&key, at(10, 14, 0)), store.link(&key, at(10, 16, 0)));
    }

    #[test]
    fn a_link_verifies_until_it_expires_and_never_once_changed() {
        let dir = std::env::temp_dir().join(format!("thali-objects-{}", uuid::Uuid::now_v7()));
        let store = LocalStore::open(&dir).unwrap();
        let key = new_key("jpg");
        let now = Utc::now();
        let expires = link_expiry(now).timestamp();
        let sig = store.signature(&key, expires);
        assert_eq!(store.verify(&key, expires, &sig, now), Ok(()));
        let later = DateTime::from_timestamp(expires, 0).unwrap();
        assert_eq!(store.verify(&key, expires, &sig, later), Err(LinkRefused::Expired));
        assert_eq!(
            store.verify(&key, expires + 3600, &sig, now),
            Err(LinkRefused::BadSignature),
            "a longer life is not the signed one"
        );
        let other = new_key("jpg");
        assert_eq!(store.verify(&other, expires, &sig, now), Err(LinkRefused::BadSignature));
        assert_eq!(
            store.verify("../../etc/passwd", expires, &sig, now),
            Err(LinkRefused::BadKey)
        );
        assert_eq!(
            store.verify(&key, expires, "not base64!", now),
            Err(LinkRefused::BadSignature)
        );
        // The key survives a restart: links stay valid.
        let again = LocalStore::open(&dir).unwrap();
        assert_eq!(again.verify(&key, expires, &sig, now), Ok(()));
    }

    #[test]
    fn only_well_formed_keys_name_objects() {
        assert_eq!(key_content_type(&new_key("webp")), Some("image/webp"));
        for bad in [
            "0123456789abcdef0123456789abcdef.svg",
            "0123456789ABCDEF0123456789abcdef.png",
            "../0123456789abcdef0123456789ab.png",
            "0123456789abcdef0123456789abcdef.png/..",
            "x.png",
            "",
        ] {
            assert_eq!(key_content_type(bad), None, "{bad}");
        }
    }
}
