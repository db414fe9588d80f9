//! Encryption at rest for secrets kept in the database (a creator's gateway key secret and webhook
//! secret; ADR 0015): AES-256-GCM from `ring`, the crypto provider the workspace already uses.
//!
//! - Every value gets a fresh random 96-bit nonce.
//! - The associated data is the value's place (table, column, row id): a ciphertext copied to
//!   another row, column or table does not decrypt.
//! - The stored text names its key, `aes256gcm:{key id}:{base64url(nonce ‖ ciphertext ‖ tag)}`, so
//!   keys can be rotated: a new key encrypts from then on, old keys keep decrypting until every
//!   value has been re-encrypted ([`DataKeys::needs_rotation`]).
//! - The keys live in one file (`THALI_DATA_KEYS_FILE`; embedded default `<data dir>/data-keys.json`,
//!   created with mode 0600): `{"active": "dk-…", "keys": {"dk-…": "<base64url of 32 bytes>"}}`.
use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};

/// The scheme prefix of a stored value.
const SCHEME: &str = "aes256gcm";
/// Bytes of an AES-256 key.
pub const KEY_LEN: usize = 32;

/// Where an encrypted value is stored; bound into its ciphertext as associated data.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub table: &'a str,
    pub column: &'a str,
    pub row: &'a str,
}

impl Place<'_> {
    /// `table \0 column \0 row`: no two places share it (names never contain NUL).
    fn aad(&self) -> Vec<u8> {
        [self.table, self.column, self.row].join("\0").into_bytes()
    }
}

/// What can go wrong with data keys and encrypted values.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("data keys file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("data keys file {path}: {reason}")]
    BadKeyFile { path: PathBuf, reason: String },
    /// The value names a key this process does not have.
    #[error("no data key {0:?}")]
    UnknownKey(String),
    /// Not a value this module wrote.
    #[error("not an encrypted value")]
    Malformed,
    /// The wrong key, another place, or a changed byte: authentication failed.
    #[error("the value does not decrypt (wrong key, wrong place or altered)")]
    Undecryptable,
    #[error("no random bytes from the operating system")]
    Random,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KeyFile {
    active: String,
    keys: BTreeMap<String, String>,
}

/// The data keys: every key that may have encrypted a stored value, and the one that encrypts now.
pub struct DataKeys {
    active: String,
    keys: BTreeMap<String, LessSafeKey>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: key material never reaches a log.
        f.debug_struct("DataKeys")
            .field("active", &self.active)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CryptoError + '_ {
    move |source| CryptoError::Io {
        path: path.to_owned(),
        source,
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> CryptoError {
    CryptoError::BadKeyFile {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn random<const N: usize>(rng: &SystemRandom) -> Result<[u8; N], CryptoError> {
    let mut bytes = [0u8; N];
    rng.fill(&mut bytes).map_err(|_| CryptoError::Random)?;
    Ok(bytes)
}

fn new_key_id(rng: &SystemRandom) -> Result<String, CryptoError> {
    let bytes: [u8; 6] = random(rng)?;
    Ok(format!(
        "dk-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

impl DataKeys {
    /// Loads the keys file. A file others may read is used, with a warning.
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "data keys file is readable by others; make it mode 0600");
        }
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| bad(path, e.to_string()))?;
        let mut keys = BTreeMap::new();
        for (id, encoded) in &file.keys {
            let raw = URL_SAFE_NO_PAD
                .decode(encoded.trim())
                .map_err(|_| bad(path, format!("key {id:?} is not base64url")))?;
            if raw.len() != KEY_LEN {
                return Err(bad(path, format!("key {id:?} is not {KEY_LEN} bytes")));
            }
            if id.is_empty() || id.contains(':') {
                return Err(bad(path, format!("key id {id:?} is empty or has a ':'")));
            }
            let key = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| bad(path, format!("key {id:?}")))?;
            keys.insert(id.clone(), LessSafeKey::new(key));
        }
        if !keys.contains_key(&file.active) {
            return Err(bad(
                path,
                format!("the active key {:?} is not in the file", file.active),
            ));
        }
        Ok(Self {
            active: file.active,
            keys,
        })
    }

    /// Loads the keys file, creating it (mode 0600) with one new key when it does not exist: the
    /// embedded platform's default.
    pub fn ensure(path: &Path) -> Result<Self, CryptoError> {
        if !path.exists() {
            let rng = SystemRandom::new();
            let id = new_key_id(&rng)?;
            let key: [u8; KEY_LEN] = random(&rng)?;
            let file = KeyFile {
                active: id.clone(),
                keys: BTreeMap::from([(id, URL_SAFE_NO_PAD.encode(key))]),
            };
            write_new(path, &file)?;
        }
        Self::load(path)
    }

    /// Rotation, first step: adds a new key to the file and makes it the active one (the old keys
    /// stay, to decrypt what they encrypted). Returns the new key's id.
    pub fn add_key(path: &Path) -> Result<String, CryptoError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        let mut file: KeyFile = serde_json::from_str(&text).map_err(|e| bad(path, e.to_string()))?;
        let rng = SystemRandom::new();
        let id = new_key_id(&rng)?;
        let key: [u8; KEY_LEN] = random(&rng)?;
        file.keys.insert(id.clone(), URL_SAFE_NO_PAD.encode(key));
        file.active = id.clone();
        // Written beside the file and renamed over it: a crash leaves the old file or the new one.
        let next = path.with_extension("json.next");
        let _ = fs::remove_file(&next);
        write_new(&next, &file)?;
        fs::rename(&next, path).map_err(io_err(path))?;
        Self::load(path)?;
        Ok(id)
    }

    /// The id of the key that encrypts now.
    pub fn active_id(&self) -> &str {
        &self.active
    }

    /// Encrypts `plaintext` for `place` with the active key.
    pub fn encrypt(&self, place: Place<'_>, plaintext: &[u8]) -> Result<String, CryptoError> {
        let key = &self.keys[&self.active];
        let nonce: [u8; NONCE_LEN] = random(&SystemRandom::new())?;
        let mut sealed = plaintext.to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(place.aad()), &mut sealed)
            .map_err(|_| CryptoError::Undecryptable)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(format!("{SCHEME}:{}:{}", self.active, URL_SAFE_NO_PAD.encode(out)))
    }

    /// Decrypts a value [`DataKeys::encrypt`] wrote for `place`.
    pub fn decrypt(&self, place: Place<'_>, stored: &str) -> Result<Vec<u8>, CryptoError> {
        let (id, body) = split(stored)?;
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        let mut bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| CryptoError::Malformed)?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(CryptoError::Malformed);
        }
        let mut sealed = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| CryptoError::Malformed)?;
        let plain = key
            .open_in_place(nonce, Aad::from(place.aad()), &mut sealed)
            .map_err(|_| CryptoError::Undecryptable)?;
        Ok(plain.to_vec())
    }

    /// The key id a stored value names.
    pub fn key_id_of(stored: &str) -> Result<&str, CryptoError> {
        split(stored).map(|(id, _)| id)
    }

    /// Whether a stored value was encrypted with another key than the active one.
    pub fn needs_rotation(&self, stored: &str) -> bool {
        Self::key_id_of(stored).is_ok_and(|id| id != self.active)
    }

    /// Decrypts with whichever key wrote the value and encrypts again with the active key.
    pub fn reencrypt(&self, place: Place<'_>, stored: &str) -> Result<String, CryptoError> {
        let plain = self.decrypt(place, stored)?;
        self.encrypt(place, &plain)
    }
}

/// The data keys of a running process, reloaded from their file when a value names a key the
/// process has not seen: `thali keys rotate-data` adds a key and re-encrypts rows while services
/// run, and a service must still read what the command wrote (ADR 0015).
pub struct Keyring {
    path: Option<PathBuf>,
    keys: std::sync::RwLock<std::sync::Arc<DataKeys>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .field("keys", &*self.current())
            .finish()
    }
}

impl Keyring {
    /// The keys in `path` (created with one key when absent, as [`DataKeys::ensure`]).
    pub fn open(path: &Path) -> Result<Self, CryptoError> {
        let keys = DataKeys::ensure(path)?;
        Ok(Self {
            path: Some(path.to_owned()),
            keys: std::sync::RwLock::new(std::sync::Arc::new(keys)),
        })
    }

    /// Keys that are never reloaded (tests).
    pub fn fixed(keys: DataKeys) -> Self {
        Self {
            path: None,
            keys: std::sync::RwLock::new(std::sync::Arc::new(keys)),
        }
    }

    /// The keys as last loaded.
    pub fn current(&self) -> std::sync::Arc<DataKeys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the file again (a rotation added a key).
    pub fn reload(&self) -> Result<std::sync::Arc<DataKeys>, CryptoError> {
        let Some(path) = &self.path else {
            return Ok(self.current());
        };
        let fresh = std::sync::Arc::new(DataKeys::load(path)?);
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        tracing::info!(active = fresh.active_id(), "data keys reloaded");
        Ok(fresh)
    }

    /// Encrypts with the active key.
    pub fn encrypt(&self, place: Place<'_>, plaintext: &[u8]) -> Result<String, CryptoError> {
        self.current().encrypt(place, plaintext)
    }

    /// Decrypts; a value naming a key not loaded yet reloads the file once.
    pub fn decrypt(&self, place: Place<'_>, stored: &str) -> Result<Vec<u8>, CryptoError> {
        match self.current().decrypt(place, stored) {
            Err(CryptoError::UnknownKey(_)) if self.path.is_some() => self.reload()?.decrypt(place, stored),
            other => other,
        }
    }
}

fn split(stored: &str) -> Result<(&str, &str), CryptoError> {
    let mut parts = stored.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(SCHEME), Some(id), Some(body)) if !id.is_empty() => Ok((id, body)),
        _ => Err(CryptoError::Malformed),
    }
}

fn write_new(path: &Path, file: &KeyFile) -> Result<(), CryptoError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    let text = serde_json::to_string_pretty(file).map_err(|e| bad(path, e.to_string()))?;
    out.write_all(text.as_bytes()).map_err(io_err(path))?;
    out.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> PathBuf {
        std::env::temp_dir()
            .join(format!("thali-data-keys-{}", uuid::Uuid::now_v7()))
            .join("data-keys.json")
    }

    const SECRET: Place<'static> = Place {
        table: "payment_accounts",
        column: "key_secret",
        row: "01a2",
    };

    #[test]
    fn a_value_round_trips_and_its_ciphertext_is_fresh_each_time() {
        let keys = DataKeys::ensure(&temp()).unwrap();
        let a = keys.encrypt(SECRET, b"rzp_secret_123").unwrap();
        let b = keys.encrypt(SECRET, b"rzp_secret_123").unwrap();
        assert_ne!(a, b, "a random nonce each time");
        assert!(a.starts_with(&format!("aes256gcm:{}:", keys.active_id())));
        assert!(!a.contains("rzp_secret_123"));
        assert_eq!(keys.decrypt(SECRET, &a).unwrap(), b"rzp_secret_123");
        assert_eq!(keys.decrypt(SECRET, &b).unwrap(), b"rzp_secret_123");
    }

    #[test]
    fn another_place_or_a_changed_byte_does_not_decrypt() {
        let keys = DataKeys::ensure(&temp()).unwrap();
        let stored = keys.encrypt(SECRET, b"whsec").unwrap();
        for other in [
            Place { row: "01a3", ..SECRET },
            Place {
                column: "webhook_secret",
                ..SECRET
            },
            Place {
                table: "creators",
                ..SECRET
            },
        ] {
            assert!(matches!(keys.decrypt(other, &stored), Err(CryptoError::Undecryptable)));
        }
        // Flip one bit of the body.
        let (head, body) = stored.rsplit_once(':').unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(body).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let altered = format!("{head}:{}", URL_SAFE_NO_PAD.encode(raw));
        assert!(matches!(
            keys.decrypt(SECRET, &altered),
            Err(CryptoError::Undecryptable)
        ));
        assert!(matches!(
            keys.decrypt(SECRET, "plain text"),
            Err(CryptoError::Malformed)
        ));
        assert!(matches!(
            keys.decrypt(SECRET, "aes256gcm:dk-00:AAAA"),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_wrong_key_with_the_same_id_does_not_decrypt() {
        let (one, two) = (temp(), temp());
        let keys = DataKeys::ensure(&one).unwrap();
        let stored = keys.encrypt(SECRET, b"whsec").unwrap();
        // Another file holding a different key under the same id.
        let other = DataKeys::ensure(&two).unwrap();
        let text = fs::read_to_string(&two)
            .unwrap()
            .replace(other.active_id(), keys.active_id());
        fs::write(&two, text).unwrap();
        let impostor = DataKeys::load(&two).unwrap();
        assert_eq!(impostor.active_id(), keys.active_id());
        assert!(matches!(
            impostor.decrypt(SECRET, &stored),
            Err(CryptoError::Undecryptable)
        ));
    }

    #[test]
    fn rotation_adds_a_key_that_encrypts_while_old_values_still_decrypt() {
        let path = temp();
        let before = DataKeys::ensure(&path).unwrap();
        let old = before.encrypt(SECRET, b"kept").unwrap();
        let new_id = DataKeys::add_key(&path).unwrap();
        let after = DataKeys::load(&path).unwrap();
        assert_eq!(after.active_id(), new_id);
        assert_ne!(new_id, before.active_id());
        assert!(after.needs_rotation(&old));
        let rotated = after.reencrypt(SECRET, &old).unwrap();
        assert_eq!(DataKeys::key_id_of(&rotated).unwrap(), new_id);
        assert!(!after.needs_rotation(&rotated));
        assert_eq!(after.decrypt(SECRET, &rotated).unwrap(), b"kept");
        assert_eq!(after.decrypt(SECRET, &old).unwrap(), b"kept", "old keys still decrypt");
    }

    #[test]
    fn the_keys_file_is_created_private_and_never_shown() {
        let path = temp();
        let keys = DataKeys::ensure(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let file: KeyFile = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let material = &file.keys[keys.active_id()];
        assert!(!format!("{keys:?}").contains(material.as_str()));
        // Loading again finds the same key.
        let again = DataKeys::ensure(&path).unwrap();
        let stored = keys.encrypt(SECRET, b"x").unwrap();
        assert_eq!(again.decrypt(SECRET, &stored).unwrap(), b"x");
    }

    #[test]
    fn a_broken_keys_file_is_refused_with_its_reason() {
        let path = temp();
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        for (text, reason) in [
            ("not json", "expected"),
            (r#"{"active": "a", "keys": {"a": "c2hvcnQ"}}"#, "not 32 bytes"),
            (r#"{"active": "b", "keys": {}}"#, "active key"),
        ] {
            fs::write(&path, text).unwrap();
            let err = DataKeys::load(&path).unwrap_err().to_string();
            assert!(err.contains(reason), "{err}");
        }
    }

    #[test]
    fn a_keyring_reloads_its_file_for_a_key_added_after_it_started() {
        let path = temp();
        let running = Keyring::open(&path).unwrap();
        let before = running.encrypt(SECRET, b"old").unwrap();
        // Another process (the rotate command) adds a key and writes with it.
        DataKeys::add_key(&path).unwrap();
        let rotated = DataKeys::load(&path).unwrap().encrypt(SECRET, b"new").unwrap();
        assert_ne!(running.current().active_id(), DataKeys::key_id_of(&rotated).unwrap());
        assert_eq!(running.decrypt(SECRET, &rotated).unwrap(), b"new");
        assert_eq!(running.current().active_id(), DataKeys::key_id_of(&rotated).unwrap());
        assert_eq!(running.decrypt(SECRET, &before).unwrap(), b"old");
        // A key in no file stays unknown.
        let stranger = DataKeys::ensure(&temp()).unwrap().encrypt(SECRET, b"x").unwrap();
        assert!(matches!(
            running.decrypt(SECRET, &stranger),
            Err(CryptoError::UnknownKey(_))
        ));
    }
}
