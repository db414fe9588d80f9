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

/// Which hashing slots a call takes: sign-ins, or new passwords (registration, reset, operator
/// tools). Each pool has its own slots, so a registration flood can slow logins down (they share
/// the cores) but never turns them away (ADR 0006).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Login,
    NewPassword,
}

/// Hashes running at once per pool: each holds 19 MiB and a core, so a burst must wait its turn
/// (or be told to come back) instead of exhausting memory.
fn permits(pool: Pool) -> &'static tokio::sync::Semaphore {
    static LOGIN: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    static NEW_PASSWORD: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    let cores = || std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    match pool {
        Pool::Login => LOGIN.get_or_init(|| tokio::sync::Semaphore::new(cores() * 2)),
        Pool::NewPassword => NEW_PASSWORD.get_or_init(|| tokio::sync::Semaphore::new(cores())),
    }
}

/// How long a call waits for a free hashing slot before it is turned away.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// No hashing slot came free in time: the service is overloaded.
#[derive(Debug, Clone, Copy)]
pub struct Busy;

async fn slot(pool: Pool) -> Result<tokio::sync::SemaphorePermit<'static>, Busy> {
    tokio::time::timeout(QUEUE_WAIT, permits(pool).acquire())
        .await
        .map_err(|_| Busy)?
        .map_err(|_| Busy)
}

/// [`hash`] of a new password on the blocking pool, within the new-password slots.
pub async fn hash_async(password: String) -> Result<String, Busy> {
    let _slot = slot(Pool::NewPassword).await?;
    Ok(tokio::task::spawn_blocking(move || hash(&password))
        .await
        .expect("password hashing does not panic"))
}

/// [`verify`] (or [`verify_nobody`] without a hash) on the blocking pool, within the login slots.
pub async fn verify_async(password: String, phc: Option<String>) -> Result<bool, Busy> {
    let _slot = slot(Pool::Login).await?;
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

    /// A flood of registrations holds every new-password slot: a login still gets one.
    #[tokio::test]
    async fn registrations_never_take_the_login_slots() {
        let held: Vec<_> = (0..permits(Pool::NewPassword).available_permits())
            .map(|_| permits(Pool::NewPassword).try_acquire().unwrap())
            .collect();
        assert!(
            permits(Pool::NewPassword).try_acquire().is_err(),
            "registrations are full"
        );
        let login = tokio::time::timeout(std::time::Duration::from_millis(100), slot(Pool::Login)).await;
        assert!(matches!(login, Ok(Ok(_))), "a login is not turned away");
        drop(held);
    }
}
