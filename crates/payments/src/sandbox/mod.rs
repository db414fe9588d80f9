//! A Razorpay-compatible sandbox gateway (ADR 0017): the same HTTP API for orders, payments,
//! capture and refund (Razorpay's official SDKs work against it unchanged, given its base URL),
//! test accounts, a buyer who "pays" through `POST /sandbox/orders/{id}/pay` or a tiny checkout
//! page, webhooks signed like Razorpay's, and faults on demand.
//!
//! State lives in memory behind one lock; with [`Sandbox::with_state_file`] it is also written
//! to a JSON file behind every change, so a restarted sandbox comes back with its orders,
//! payments and undelivered webhooks. The file is written behind, not inside, the change: a
//! background task writes the latest state once a burst of changes settles (at least 50 ms
//! after the first, and never more than a tenth of its time, so a large state is not rewritten
//! for every order), and shutdown writes what is left. A crash loses at most that last interval;
//! a sandbox stands in for Razorpay in tests and demos, where that is the right trade for not
//! serialising every order on the request path.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use thali_payments::sandbox::{Sandbox, SandboxOptions};
//! let sandbox = Sandbox::new(SandboxOptions::default())?;
//! let account = sandbox.create_account(Some("http://127.0.0.1:8080/api/v1/webhooks/razorpay".into()))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
//! sandbox.serve(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

mod admin;
mod api;
mod error;
mod faults;
mod ops;
mod state;
mod webhooks;

pub use faults::{Faults, InvalidFault};
pub use ops::{CheckoutAnswer, PayOutcome};

use crate::gateway::{Credentials, KeySecret};
use error::ApiError;
use state::{Account, State, random_id, random_secret};

/// How the sandbox behaves where Razorpay's numbers would make tests slow.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// A webhook not answered within this is a failed attempt (Razorpay: 5 s).
    pub webhook_timeout: Duration,
    /// Failed webhooks are retried for this long after the first attempt (Razorpay: 24 h).
    pub webhook_retry_for: Duration,
    /// The wait after the first failed attempt; it doubles with every further failure…
    pub webhook_first_backoff: Duration,
    /// …up to this.
    pub webhook_max_backoff: Duration,
    /// How long a call hit by the timeout fault goes unanswered (unless the sandbox stops).
    pub api_hang: Duration,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            webhook_timeout: Duration::from_secs(5),
            webhook_retry_for: Duration::from_secs(24 * 60 * 60),
            webhook_first_backoff: Duration::from_secs(5),
            webhook_max_backoff: Duration::from_secs(60 * 60),
            api_hang: Duration::from_secs(10 * 60),
        }
    }
}

/// Why the sandbox could not do what its embedder asked.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox state file {path}: {source}")]
    StateFile { path: PathBuf, source: std::io::Error },
    #[error("sandbox HTTP client: {0}")]
    Client(String),
    #[error("invalid {field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("{0}")]
    NotFound(String),
}

impl From<ApiError> for SandboxError {
    fn from(error: ApiError) -> Self {
        if error.status.as_u16() == 404 {
            SandboxError::NotFound(error.description)
        } else {
            SandboxError::Invalid {
                field: error.field.unwrap_or_else(|| "request".into()),
                problem: error.description,
            }
        }
    }
}

/// A test account as its owner sees it (Debug shows the secrets as `***`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxAccount {
    pub key_id: String,
    pub key_secret: KeySecret,
    pub webhook_secret: KeySecret,
    pub webhook_url: Option<String>,
    /// The `account_id` in its webhook envelopes.
    pub account_id: String,
}

impl SandboxAccount {
    /// What a gateway client needs to act for this account.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            key_id: self.key_id.clone(),
            key_secret: self.key_secret.clone(),
        }
    }

    fn from_account(account: &Account) -> Self {
        Self {
            key_id: account.key_id.clone(),
            key_secret: KeySecret::new(account.key_secret.clone()),
            webhook_secret: KeySecret::new(account.webhook_secret.clone()),
            webhook_url: account.webhook_url.clone(),
            account_id: account.account_id.clone(),
        }
    }
}

/// The sandbox; clones share one state.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    options: SandboxOptions,
    state: Mutex<State>,
    state_file: Option<PathBuf>,
    /// A change not yet in the state file.
    dirty: AtomicBool,
    /// The task that writes the state file and its wake-up; absent until a runtime started it
    /// (until then, and after its runtime ended, changes are written in place).
    writer: Mutex<Option<Writer>>,
    /// Held across taking the dirty flag, serialising, writing and renaming: one write of the
    /// state file at a time (they share the temporary file), and a flush that comes while the
    /// writer is writing waits for it.
    writing: Mutex<()>,
    webhook_client: reqwest::Client,
    /// Set when `serve` is shutting down: calls held by the timeout fault end then.
    stopping: watch::Sender<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Wake every delivery task so it sees the sandbox is gone and ends.
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for wake in state.workers.values() {
            wake.notify_one();
        }
        // What the writer has not written yet goes out now.
        if *self.dirty.get_mut()
            && let Some(path) = &self.state_file
            && let Err(error) = state.save(path)
        {
            tracing::error!(path = %path.display(), %error, "sandbox: cannot write the state file");
        }
        if let Some(writer) = self.writer.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            writer.wake.notify_one();
        }
    }
}

struct Writer {
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// The shortest wait between state-file writes, which gathers a burst of changes into one.
const WRITE_BEHIND_MIN: Duration = Duration::from_millis(50);
/// The longest wait, whatever the state's size.
const WRITE_BEHIND_MAX: Duration = Duration::from_secs(10);

/// Writes the state file after changes until the sandbox is gone. Each write waits ten times as
/// long as the last one took, so the writer keeps under a tenth of a core however large the
/// state grows.
async fn write_behind(inner: Weak<Inner>, wake: Arc<Notify>) {
    let mut pause = WRITE_BEHIND_MIN;
    loop {
        wake.notified().await;
        tokio::time::sleep(pause).await;
        let Some(inner) = inner.upgrade() else { return };
        let started = std::time::Instant::now();
        let task = inner.clone();
        let written = tokio::task::spawn_blocking(move || task.write_state()).await;
        if !matches!(written, Ok(true)) {
            // Not written: try again after the longest pause.
            inner.dirty.store(true, Ordering::SeqCst);
            pause = WRITE_BEHIND_MAX;
            wake.notify_one();
            continue;
        }
        pause = started
            .elapsed()
            .saturating_mul(10)
            .clamp(WRITE_BEHIND_MIN, WRITE_BEHIND_MAX);
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; carry on with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the state changed: the writer task writes it soon; without one (no runtime yet)
    /// it is written now.
    fn persist(&self, state: &State) {
        let Some(path) = &self.state_file else { return };
        self.dirty.store(true, Ordering::SeqCst);
        let wake = {
            let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            writer
                .as_ref()
                .filter(|w| !w.task.is_finished())
                .map(|w| w.wake.clone())
        };
        match wake {
            Some(wake) => wake.notify_one(),
            None => {
                let _one_at_a_time = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
                self.dirty.store(false, Ordering::SeqCst);
                if let Err(error) = state.save(path) {
                    self.dirty.store(true, Ordering::SeqCst);
                    tracing::error!(path = %path.display(), %error, "sandbox: cannot write the state file");
                }
            }
        }
    }

    /// Writes the state file if a change is not in it yet (blocking: file I/O and fsync).
    /// Returns false when it could not.
    fn write_state(&self) -> bool {
        let Some(path) = &self.state_file else { return true };
        // Locks in the order a change takes them (state, then writing); the state lock is let
        // go once the snapshot is taken, the writing lock once the file is in place.
        let state = self.lock();
        let _one_at_a_time = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return true;
        }
        let bytes = state.to_bytes();
        drop(state);
        match bytes.and_then(|bytes| state::write_atomically(path, &bytes)) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "sandbox: cannot write the state file");
                false
            }
        }
    }

    /// Runs a change under the lock and writes the state file.
    fn change<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.lock();
        let result = f(&mut state);
        self.persist(&state);
        result
    }

    /// Runs a change that may be refused; on success writes the state file and wakes the delivery
    /// tasks of the accounts that got new webhooks.
    fn apply<T>(&self, f: impl FnOnce(&mut State) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let mut state = self.lock();
        let queued = state.outbox.len();
        let result = f(&mut state)?;
        self.persist(&state);
        let mut woken: Vec<&str> = Vec::new();
        for delivery in &state.outbox[queued.min(state.outbox.len())..] {
            if !woken.contains(&delivery.key_id.as_str()) {
                woken.push(&delivery.key_id);
                state.wake(&delivery.key_id);
            }
        }
        Ok(result)
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.lock())
    }

    /// Starts the delivery task of every account that has none, when a tokio runtime is at hand
    /// (otherwise the next call from inside one does).
    fn start_workers(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.state_file.is_some() {
            let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            // None yet, or its runtime ended: start one here. Changes made without a writer
            // were written in place.
            if writer.as_ref().is_none_or(|w| w.task.is_finished()) {
                let wake = Arc::new(Notify::new());
                let task = runtime.spawn(write_behind(Arc::downgrade(self), wake.clone()));
                *writer = Some(Writer { wake, task });
            }
        }
        let mut state = self.lock();
        let missing: Vec<String> = state
            .accounts
            .keys()
            .filter(|key_id| !state.workers.contains_key(*key_id))
            .cloned()
            .collect();
        for key_id in missing {
            let wake = Arc::new(Notify::new());
            state.workers.insert(key_id.clone(), wake.clone());
            runtime.spawn(webhooks::deliver_forever(Arc::downgrade(self), key_id, wake));
        }
    }
}

fn valid_webhook_url(url: Option<String>) -> Result<Option<String>, SandboxError> {
    let Some(url) = url else {
        return Ok(None);
    };
    match reqwest::Url::parse(&url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => Ok(Some(url)),
        _ => Err(SandboxError::Invalid {
            field: "webhook_url".into(),
            problem: "must be an http(s) URL".into(),
        }),
    }
}

impl Sandbox {
    /// A sandbox that keeps its state in memory only.
    pub fn new(options: SandboxOptions) -> Result<Sandbox, SandboxError> {
        Self::build(options, State::default(), None)
    }

    /// A sandbox whose state survives a restart: loaded from `path` when the file exists, and
    /// written there (temporary file + rename) behind every change (see the module's notes).
    pub fn with_state_file(options: SandboxOptions, path: impl Into<PathBuf>) -> Result<Sandbox, SandboxError> {
        let path = path.into();
        let state = State::load(&path).map_err(|source| SandboxError::StateFile {
            path: path.clone(),
            source,
        })?;
        Self::build(options, state, Some(path))
    }

    fn build(options: SandboxOptions, state: State, state_file: Option<PathBuf>) -> Result<Sandbox, SandboxError> {
        let webhook_client = crate::gateway::razorpay::http_client(options.webhook_timeout, options.webhook_timeout)
            .map_err(|e| SandboxError::Client(e.to_string()))?;
        let sandbox = Sandbox {
            inner: Arc::new(Inner {
                options,
                state: Mutex::new(state),
                state_file,
                dirty: AtomicBool::new(false),
                writer: Mutex::new(None),
                writing: Mutex::new(()),
                webhook_client,
                stopping: watch::Sender::new(false),
            }),
        };
        sandbox.inner.start_workers();
        Ok(sandbox)
    }

    /// The HTTP API (`/v1/…` like Razorpay, `/sandbox/…` for accounts, paying and faults).
    pub fn router(&self) -> Router {
        self.inner.start_workers();
        api::router(self.clone()).merge(admin::router(self.clone()))
    }

    /// Serves the sandbox on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        let inner = self.inner.clone();
        drop(self);
        let stopping = {
            let inner = inner.clone();
            async move {
                shutdown.await;
                inner.stopping.send_replace(true);
            }
        };
        let served = axum::serve(listener, router).with_graceful_shutdown(stopping).await;
        // Whatever the writer has not written yet goes out before the process ends.
        let _ = tokio::task::spawn_blocking(move || inner.write_state()).await;
        served
    }

    /// A new test account with generated credentials (`rzp_test_…`).
    pub fn create_account(&self, webhook_url: Option<String>) -> Result<SandboxAccount, SandboxError> {
        let webhook_url = valid_webhook_url(webhook_url)?;
        let account = self.inner.change(|state| {
            let mut key_id = random_id("rzp_test_");
            while state.accounts.contains_key(&key_id) {
                key_id = random_id("rzp_test_");
            }
            let account = Account {
                key_id: key_id.clone(),
                key_secret: random_secret(24),
                webhook_secret: random_secret(24),
                webhook_url,
                account_id: state.new_id("acc_"),
            };
            state.accounts.insert(key_id, account.clone());
            account
        });
        self.inner.start_workers();
        Ok(SandboxAccount::from_account(&account))
    }

    /// Registers an account with given credentials (e.g. the platform's, from its key files), or
    /// updates the one with this key id.
    pub fn add_account(
        &self,
        key_id: &str,
        key_secret: &str,
        webhook_secret: &str,
        webhook_url: Option<String>,
    ) -> Result<SandboxAccount, SandboxError> {
        let invalid = |field: &str, problem: &str| SandboxError::Invalid {
            field: field.into(),
            problem: problem.into(),
        };
        if key_id.is_empty() || key_id.len() > 64 || !key_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(invalid("key_id", "must be 1 to 64 letters, digits or underscores"));
        }
        if key_secret.is_empty() {
            return Err(invalid("key_secret", "must not be empty"));
        }
        if webhook_secret.is_empty() {
            return Err(invalid("webhook_secret", "must not be empty"));
        }
        let webhook_url = valid_webhook_url(webhook_url)?;
        let account = self.inner.change(|state| {
            let account_id = match state.accounts.get(key_id) {
                Some(existing) => existing.account_id.clone(),
                None => state.new_id("acc_"),
            };
            let account = Account {
                key_id: key_id.to_owned(),
                key_secret: key_secret.to_owned(),
                webhook_secret: webhook_secret.to_owned(),
                webhook_url,
                account_id,
            };
            state.accounts.insert(key_id.to_owned(), account.clone());
            account
        });
        self.inner.start_workers();
        Ok(SandboxAccount::from_account(&account))
    }

    /// Points an account's webhooks elsewhere (`None`: no webhooks). Queued deliveries follow.
    pub fn set_webhook_url(&self, key_id: &str, webhook_url: Option<String>) -> Result<SandboxAccount, SandboxError> {
        let webhook_url = valid_webhook_url(webhook_url)?;
        let account = self.inner.change(|state| {
            let account = state.accounts.get_mut(key_id)?;
            account.webhook_url = webhook_url;
            let account = account.clone();
            state.wake(key_id);
            Some(account)
        });
        account
            .map(|a| SandboxAccount::from_account(&a))
            .ok_or_else(|| SandboxError::NotFound(format!("no sandbox account {key_id}")))
    }

    /// Replaces the faults in force (all off: `Faults::default()`).
    pub fn set_faults(&self, faults: Faults) -> Result<(), InvalidFault> {
        faults.validate()?;
        let mut state = self.inner.lock();
        state.faults = faults;
        // A change of order (reorder on or off) matters to every waiting task.
        for wake in state.workers.values() {
            wake.notify_one();
        }
        Ok(())
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.inner.read(|state| state.faults.clone())
    }

    /// A buyer's attempt to pay an order, as the checkout page makes it.
    pub fn pay(&self, order_id: &str, outcome: PayOutcome) -> Result<CheckoutAnswer, SandboxError> {
        Ok(self.inner.apply(|state| ops::pay(state, order_id, outcome, None))?)
    }

    /// Webhook deliveries not yet acknowledged (duplicates count twice).
    pub fn pending_webhooks(&self) -> usize {
        self.inner.read(|state| state.outbox.len())
    }
}
