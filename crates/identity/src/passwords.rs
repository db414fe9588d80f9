//! Password hashing with argon2id at the OWASP parameters (19 MiB, 2 passes, 1 lane; ADR 0006).
//! Runs on the blocking pool: one hash costs tens of milliseconds of CPU.
use std::sync::OnceLock;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP argon2id parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// PHC string of `password` with a fresh random salt.
pub fn hash(password: &str) -> String {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt).expect("the OS random source works");
    hasher()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .expect("hashing with valid parameters and salt cannot fail")
        .to_string()
}

/// Whether `password` matches `phc`. Constant time in the password.
pub fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => hasher().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Spends the same work as [`verify`] for an email with no account, so the answer time does not
/// tell which emails exist.
pub fn verify_nobody(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("no account has this password"));
    let _ = verify(password, dummy);
}

/// Hashes running at once: each holds 19 MiB and a core, so a burst of logins must wait its
/// turn (or be told to come back) instead of exhausting memory.
fn permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        tokio::sync::Semaphore::new(cores * 2)
    })
}

/// How long a login waits for a free hashing slot before it is turned away.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// No hashing slot came free in time: the service is overloaded.
#[derive(Debug, Clone, Copy)]
pub struct Busy;

async fn slot() -> Result<tokio::sync::SemaphorePermit<'static>, Busy> {
    tokio::time::timeout(QUEUE_WAIT, permits().acquire())
        .await
        .map_err(|_| Busy)?
        .map_err(|_| Busy)
}

/// [`hash`] on the blocking pool, within the concurrency bound.
pub async fn hash_async(password: String) -> Result<String, Busy> {
    let _slot = slot().await?;
    Ok(tokio::task::spawn_blocking(move || hash(&password))
        .await
        .expect("password hashing does not panic"))
}

/// [`verify`] (or [`verify_nobody`] without a hash) on the blocking pool, within the bound.
pub async fn verify_async(password: String, phc: Option<String>) -> Result<bool, Busy> {
    let _slot = slot().await?;
    let verified = tokio::task::spawn_blocking(move || match phc {
        Some(phc) => verify(&password, &phc),
        None => {
            verify_nobody(&password);
            false
        }
    })
    .await
    .expect("password verification does not panic");
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let phc = hash("correct horse battery staple");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify("correct horse battery staple", &phc));
        assert!(!verify("correct horse battery stapler", &phc));
        assert!(!verify("anything", "not a phc string"));
        assert_ne!(hash("same"), hash("same"), "salts differ");
    }
}
