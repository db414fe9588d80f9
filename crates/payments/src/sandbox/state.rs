//! The sandbox's whole state (accounts, orders, payments, refunds, webhook deliveries not yet
//! acknowledged), its JSON renderings in Razorpay's shapes, and its file (written to a temporary
//! file and renamed over the old one after every change).
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::faults::{Faults, happens};
use crate::gateway::{GatewayOrderStatus, GatewayPaymentStatus, GatewayRefundStatus};

/// A test account: the key pair the API checks and the secret its webhooks are signed with.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Account {
    pub key_id: String,
    pub key_secret: String,
    pub webhook_secret: String,
    pub webhook_url: Option<String>,
    /// The `account_id` of its webhook envelopes.
    pub account_id: String,
}

#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Order {
    pub id: String,
    /// The account (key id) that created it: no other account sees it.
    pub key_id: String,
    pub amount: i64,
    pub amount_paid: i64,
    pub currency: String,
    pub receipt: Option<String>,
    pub notes: Map<String, Value>,
    pub partial_payment: bool,
    pub status: GatewayOrderStatus,
    pub attempts: u32,
    pub created_at: i64,
    pub payment_ids: Vec<String>,
}

/// Why a payment failed (Razorpay's `error_*` fields).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct PaymentError {
    pub code: String,
    pub description: String,
    pub source: String,
    pub step: String,
    pub reason: String,
}

#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Payment {
    pub id: String,
    pub key_id: String,
    pub order_id: String,
    pub amount: i64,
    pub currency: String,
    pub status: GatewayPaymentStatus,
    pub captured: bool,
    pub method: String,
    pub amount_refunded: i64,
    pub error: Option<PaymentError>,
    pub created_at: i64,
}

#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Refund {
    pub id: String,
    pub key_id: String,
    pub payment_id: String,
    pub amount: i64,
    pub currency: String,
    pub status: GatewayRefundStatus,
    pub notes: Map<String, Value>,
    pub receipt: Option<String>,
    pub created_at: i64,
}

/// One webhook delivery waiting for a 2xx. A duplicate (injected) is a second delivery with the
/// same event id and body.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Delivery {
    /// Unique per delivery; also the order in which events were raised.
    pub seq: u64,
    pub key_id: String,
    /// Deliveries of one order go out in `seq` order (unless reordering is injected).
    pub order_id: String,
    pub event_id: String,
    pub event: String,
    pub body: String,
    pub attempts: u32,
    /// Not due before (None: due now). Not kept across a restart: everything is due then.
    #[serde(skip)]
    pub due: Option<Instant>,
    /// When the first attempt was made; retries stop `webhook_retry_for` after it.
    #[serde(skip)]
    pub first_attempt: Option<Instant>,
}

/// Everything behind the sandbox's one lock.
#[derive(Default, Serialize, Deserialize)]
pub(crate) struct State {
    pub accounts: BTreeMap<String, Account>,
    pub orders: BTreeMap<String, Order>,
    pub payments: BTreeMap<String, Payment>,
    pub refunds: BTreeMap<String, Refund>,
    pub outbox: Vec<Delivery>,
    pub next_seq: u64,
    #[serde(skip)]
    pub faults: Faults,
    /// The wake-up of each account's delivery task (runtime only).
    #[serde(skip)]
    pub workers: HashMap<String, Arc<Notify>>,
}

/// Unix seconds now.
pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `prefix` + 14 random letters and digits, like Razorpay's ids (not secret: `fastrand`).
pub(crate) fn random_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 14);
    id.push_str(prefix);
    id.extend((0..14).map(|_| char::from(ALPHANUMERIC[fastrand::usize(..ALPHANUMERIC.len())])));
    id
}

/// A secret of `len` letters and digits from the operating system's generator.
pub(crate) fn random_secret(len: usize) -> String {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(len);
    let mut byte = [0u8; 1];
    while out.len() < len {
        // The system generator failing is not something a test account can work around.
        rng.fill(&mut byte)
            .expect("the operating system's random generator failed");
        // 248 = 4 × 62: rejecting the rest keeps every character equally likely.
        if byte[0] < 248 {
            out.push(char::from(ALPHANUMERIC[usize::from(byte[0]) % 62]));
        }
    }
    out
}

impl State {
    /// A new id with `prefix` that is not in use yet.
    pub fn new_id(&self, prefix: &str) -> String {
        loop {
            let id = random_id(prefix);
            let taken = self.orders.contains_key(&id)
                || self.payments.contains_key(&id)
                || self.refunds.contains_key(&id)
                || self.accounts.contains_key(&id);
            if !taken {
                return id;
            }
        }
    }

    /// Raises a webhook event for `key_id`'s account (if it has a webhook URL), subject to the
    /// drop, duplicate and delay faults. The caller wakes the account's delivery task.
    pub fn raise(&mut self, key_id: &str, order_id: &str, event: &str, contains: &[&str], payload: Value) {
        let Some(account) = self.accounts.get(key_id) else {
            return;
        };
        if account.webhook_url.is_none() {
            return;
        }
        if happens(self.faults.webhook_drop_rate) {
            tracing::debug!(event, "sandbox: webhook dropped (injected)");
            return;
        }
        let body = json!({
            "entity": "event",
            "account_id": account.account_id,
            "event": event,
            "contains": contains,
            "payload": payload,
            "created_at": now_unix(),
        })
        .to_string();
        let event_id = random_id("evt_");
        let due = (self.faults.webhook_delay_ms > 0)
            .then(|| Instant::now() + std::time::Duration::from_millis(self.faults.webhook_delay_ms));
        let copies = if happens(self.faults.webhook_duplicate_rate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            self.next_seq += 1;
            self.outbox.push(Delivery {
                seq: self.next_seq,
                key_id: key_id.to_owned(),
                order_id: order_id.to_owned(),
                event_id: event_id.clone(),
                event: event.to_owned(),
                body: body.clone(),
                attempts: 0,
                due,
                first_attempt: None,
            });
        }
    }

    /// The account's wake-up, if its delivery task runs.
    pub fn wake(&self, key_id: &str) {
        if let Some(notify) = self.workers.get(key_id) {
            notify.notify_one();
        }
    }

    pub fn load(path: &Path) -> std::io::Result<State> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes the state to `path` atomically: a reader (or a restart) sees the old or the new
    /// file, never half of one.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        write_atomically(path, &self.to_bytes()?)
    }

    /// The state as the file holds it.
    pub fn to_bytes(&self) -> std::io::Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(std::io::Error::other)
    }
}

/// Writes `bytes` to `path` through a temporary file, synced, then renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_path(path);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Razorpay renders empty notes as `[]` and others as an object; clients must take both.
fn notes_json(notes: &Map<String, Value>) -> Value {
    if notes.is_empty() {
        json!([])
    } else {
        Value::Object(notes.clone())
    }
}

impl Order {
    pub fn amount_due(&self) -> i64 {
        (self.amount - self.amount_paid).max(0)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "entity": "order",
            "amount": self.amount,
            "amount_paid": self.amount_paid,
            "amount_due": self.amount_due(),
            "currency": self.currency,
            "receipt": self.receipt,
            "offer_id": null,
            "status": self.status.as_str(),
            "attempts": self.attempts,
            "notes": notes_json(&self.notes),
            "created_at": self.created_at,
        })
    }
}

impl Payment {
    pub fn refund_status(&self) -> Option<&'static str> {
        match self.amount_refunded {
            0 => None,
            refunded if refunded >= self.amount => Some("full"),
            _ => Some("partial"),
        }
    }

    /// Razorpay's payment entity. The buyer fields (email, contact, vpa, card, bank) are present
    /// as Razorpay has them but hold fixed placeholders: the sandbox never receives buyer data.
    pub fn to_json(&self) -> Value {
        let error = self.error.as_ref();
        json!({
            "id": self.id,
            "entity": "payment",
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status.as_str(),
            "order_id": self.order_id,
            "invoice_id": null,
            "international": false,
            "method": self.method,
            "amount_refunded": self.amount_refunded,
            "refund_status": self.refund_status(),
            "captured": self.captured,
            "description": null,
            "card_id": null,
            "bank": null,
            "wallet": null,
            "vpa": null,
            "email": "void@razorpay.com",
            "contact": "+919999999999",
            "notes": [],
            "fee": null,
            "tax": null,
            "error_code": error.map(|e| &e.code),
            "error_description": error.map(|e| &e.description),
            "error_source": error.map(|e| &e.source),
            "error_step": error.map(|e| &e.step),
            "error_reason": error.map(|e| &e.reason),
            "acquirer_data": {},
            "created_at": self.created_at,
        })
    }
}

impl Refund {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "entity": "refund",
            "amount": self.amount,
            "receipt": self.receipt,
            "currency": self.currency,
            "payment_id": self.payment_id,
            "notes": notes_json(&self.notes),
            "acquirer_data": {"arn": null},
            "created_at": self.created_at,
            "batch_id": null,
            "status": self.status.as_str(),
            "speed_processed": "normal",
            "speed_requested": "normal",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_secrets_look_like_razorpays() {
        let id = random_id("order_");
        assert_eq!(id.len(), 20);
        assert!(id[6..].bytes().all(|b| b.is_ascii_alphanumeric()));
        let secret = random_secret(24);
        assert_eq!(secret.len(), 24);
        assert_ne!(secret, random_secret(24));
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("thali-sandbox-state-{}", random_id("")));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        assert!(
            State::load(&path).unwrap().orders.is_empty(),
            "no file yet: empty state"
        );
        let state = State {
            next_seq: 41,
            ..State::default()
        };
        state.save(&path).unwrap();
        assert!(!temporary_path(&path).exists());
        assert_eq!(State::load(&path).unwrap().next_seq, 41);
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(
            State::load(&path).is_err(),
            "a damaged file is an error, not an empty sandbox"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
