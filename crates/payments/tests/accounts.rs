//! Creators' own gateway accounts in the store, on every configured backend (SQLite always,
//! PostgreSQL with `THALI_TEST_DATABASE_URL`, required under CI=true): secrets stored only as
//! AES-256-GCM ciphertext bound to their row, one account per seller however many connects race,
//! rotation to a new data key, and webhooks that only settle the orders of the account that
//! signed them.
mod support;

use std::sync::Arc;

use chrono::Utc;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;
use support::backends;
use thali_payments::{
    domain::{AccountSecrets, PaymentsError, Status},
    store::{PaymentsStore, Taken},
};
use thali_platform::crypto::{DataKeys, Keyring};
use uuid::Uuid;

fn keys_file() -> std::path::PathBuf {
    std::env::temp_dir()
        .join(format!("thali-accounts-{}", Uuid::now_v7()))
        .join("data-keys.json")
}

fn secrets(n: u32) -> AccountSecrets {
    AccountSecrets::parse(
        &format!("rzp_test_Creator{n}"),
        &format!("key-secret-number-{n}-abcdef"),
        &format!("webhook-secret-{n}-uvwxyz"),
    )
    .unwrap()
}

async fn raw(db: &sea_orm::DatabaseConnection, id: Uuid) -> (String, String) {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            match db.get_database_backend() {
                sea_orm::DbBackend::Postgres => "SELECT key_secret, webhook_secret FROM payment_accounts WHERE id = $1",
                _ => "SELECT key_secret, webhook_secret FROM payment_accounts WHERE id = ?",
            },
            [id.into()],
        ))
        .await
        .unwrap()
        .unwrap();
    (
        row.try_get("", "key_secret").unwrap(),
        row.try_get("", "webhook_secret").unwrap(),
    )
}

async fn set_raw(db: &sea_orm::DatabaseConnection, id: Uuid, key_secret: &str) {
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        match db.get_database_backend() {
            sea_orm::DbBackend::Postgres => "UPDATE payment_accounts SET key_secret = $1 WHERE id = $2",
            _ => "UPDATE payment_accounts SET key_secret = ? WHERE id = ?",
        },
        [key_secret.into(), id.into()],
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn secrets_are_stored_encrypted_for_their_row_and_read_back() {
    for t in backends().await {
        let store = PaymentsStore::new(t.db.clone());
        let keys = Keyring::open(&keys_file()).unwrap();
        let (asha, created) = store
            .connect_account(&keys, "seller-asha", "chai_point", &secrets(1))
            .await
            .unwrap();
        assert!(created, "{}", t.backend);
        let (stored_key, stored_hook) = raw(&t.db, asha.id).await;
        for stored in [&stored_key, &stored_hook] {
            assert!(stored.starts_with(&format!("aes256gcm:{}:", keys.current().active_id())));
            assert!(
                !stored.contains("key-secret") && !stored.contains("webhook-secret"),
                "{stored}"
            );
        }
        let read = store.account_of_seller(&keys, "seller-asha").await.unwrap().unwrap();
        assert_eq!(read.credentials.key_id, "rzp_test_Creator1");
        assert_eq!(read.credentials.key_secret.expose(), "key-secret-number-1-abcdef");
        assert_eq!(read.webhook_secret.expose(), "webhook-secret-1-uvwxyz");
        assert_eq!(read.data_key_id, keys.current().active_id());
        assert!(
            !format!("{read:?}").contains("key-secret-number"),
            "Debug never shows a secret"
        );
        assert!(store.account_of_seller(&keys, "nobody").await.unwrap().is_none());

        // Connecting again replaces the account in place: same id, new secrets.
        let (again, created) = store
            .connect_account(&keys, "seller-asha", "chai_point", &secrets(2))
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(again.id, asha.id);
        let read = store.account(&keys, asha.id).await.unwrap().unwrap();
        assert_eq!(read.credentials.key_secret.expose(), "key-secret-number-2-abcdef");

        // A ciphertext copied to another row (same column, same key) does not decrypt there.
        let (ravi, _) = store
            .connect_account(&keys, "seller-ravi", "ravi_snacks", &secrets(3))
            .await
            .unwrap();
        let (asha_cipher, _) = raw(&t.db, asha.id).await;
        set_raw(&t.db, ravi.id, &asha_cipher).await;
        assert!(
            matches!(store.account(&keys, ravi.id).await, Err(PaymentsError::Internal(_))),
            "{}",
            t.backend
        );
        // Another keys file (the wrong key) cannot read anything.
        let stranger = Keyring::fixed(DataKeys::ensure(&keys_file()).unwrap());
        assert!(store.account(&stranger, asha.id).await.is_err());
    }
}

#[tokio::test]
async fn racing_connects_for_one_seller_leave_one_account() {
    for t in backends().await {
        let store = PaymentsStore::new(t.db.clone());
        let keys = Arc::new(Keyring::open(&keys_file()).unwrap());
        let mut racers = tokio::task::JoinSet::new();
        for n in 0..6 {
            let (store, keys) = (store.clone(), keys.clone());
            racers.spawn(async move {
                store
                    .connect_account(&keys, "seller-asha", "chai_point", &secrets(n))
                    .await
            });
        }
        let mut ids = Vec::new();
        while let Some(done) = racers.join_next().await {
            ids.push(done.unwrap().unwrap_or_else(|e| panic!("{}: {e:?}", t.backend)).0.id);
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "{}: one row per seller", t.backend);
        assert_eq!(store.count_accounts().await.unwrap(), 1);
        // Whichever won, its two secrets belong together.
        let read = store.account(&keys, ids[0]).await.unwrap().unwrap();
        let n = read.credentials.key_id.trim_start_matches("rzp_test_Creator");
        assert!(
            read.webhook_secret.expose().contains(&format!("-{n}-")),
            "{}",
            t.backend
        );
    }
}

#[tokio::test]
async fn rotation_re_encrypts_every_row_with_the_new_key_in_pages() {
    for t in backends().await {
        let store = PaymentsStore::new(t.db.clone());
        let path = keys_file();
        let keys = Keyring::open(&path).unwrap();
        let old = keys.current().active_id().to_owned();
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(
                store
                    .connect_account(&keys, &format!("seller-{n}"), &format!("store_{n}"), &secrets(n))
                    .await
                    .unwrap()
                    .0
                    .id,
            );
        }
        let new = DataKeys::add_key(&path).unwrap();
        let keys = Keyring::open(&path).unwrap();
        assert_eq!(keys.current().active_id(), new);
        let (mut after, mut scanned, mut rotated, mut pages) = (None, 0, 0, 0);
        loop {
            let page = store.rotate_accounts(&keys, after, 2).await.unwrap();
            scanned += page.scanned;
            rotated += page.rotated;
            pages += 1;
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!((scanned, rotated, pages), (5, 5, 3), "{}", t.backend);
        for (n, id) in ids.iter().enumerate() {
            let (k, w) = raw(&t.db, *id).await;
            assert_eq!(DataKeys::key_id_of(&k).unwrap(), new);
            assert_eq!(DataKeys::key_id_of(&w).unwrap(), new);
            let read = store.account(&keys, *id).await.unwrap().unwrap();
            assert_eq!(
                read.credentials.key_secret.expose().as_str(),
                format!("key-secret-number-{n}-abcdef")
            );
        }
        // Nothing left under the old key: a second pass changes nothing.
        let page = store.rotate_accounts(&keys, None, 100).await.unwrap();
        assert_eq!((page.scanned, page.rotated), (5, 0));
        assert_ne!(old, new);
    }
}

fn captured(gateway_order: &str) -> Vec<u8> {
    json!({"entity": "event", "account_id": "acc_1", "event": "payment.captured", "contains": ["payment"],
        "payload": {"payment": {"entity": {"id": "pay_1", "order_id": gateway_order, "amount": 4900,
            "currency": "INR", "status": "captured", "method": "upi"}}}, "created_at": 1})
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn a_webhook_settles_only_orders_of_the_account_that_signed_it() {
    for t in backends().await {
        let store = PaymentsStore::new(t.db.clone());
        let keys = Keyring::open(&keys_file()).unwrap();
        let (asha, _) = store
            .connect_account(&keys, "seller", "chai_point", &secrets(1))
            .await
            .unwrap();
        let mut order = support::pending(&format!("order_{}", Uuid::now_v7().simple()), 1, Utc::now());
        order.payment_account_id = Some(asha.id);
        let (id, gateway) = (order.id, order.gateway_order_id.clone());
        support::insert(&store, order).await;
        assert_eq!(store.order(id).await.unwrap().payment_account_id, Some(asha.id));

        // The platform's secret (or another creator's) does not settle Asha's order.
        let taken = store
            .take_webhook("platform", "evt_1", &captured(&gateway))
            .await
            .unwrap();
        assert_eq!(taken, Taken::Ignored, "{}", t.backend);
        let other = Uuid::now_v7().to_string();
        let taken = store.take_webhook(&other, "evt_2", &captured(&gateway)).await.unwrap();
        assert_eq!(taken, Taken::Ignored);
        assert_eq!(store.order(id).await.unwrap().status, Status::Pending);
        // Her own account's does.
        let taken = store
            .take_webhook(&asha.id.to_string(), "evt_3", &captured(&gateway))
            .await
            .unwrap();
        assert_eq!(
            taken,
            Taken::Applied {
                order_id: id,
                status: Status::Paid
            },
            "{}",
            t.backend
        );
    }
}

#[tokio::test]
async fn connecting_and_replacing_an_account_are_in_the_audit_trail_without_the_secrets() {
    for t in backends().await {
        let store = PaymentsStore::new(t.db.clone());
        let keys = Keyring::open(&keys_file()).unwrap();
        let seller = Uuid::now_v7().to_string();
        let (first, _) = store
            .connect_account(&keys, &seller, "chai_point", &secrets(1))
            .await
            .unwrap();
        store
            .connect_account(&keys, &seller, "chai_point", &secrets(2))
            .await
            .unwrap();
        let trail = thali_platform::audit_log::chain_now(&t.db, "payments").await.unwrap();
        let actions: Vec<&str> = trail.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(
            actions,
            ["payment_account.connected", "payment_account.replaced"],
            "{}",
            t.backend
        );
        for row in &trail {
            assert_eq!(row.actor, format!("acct:{seller}"));
            assert_eq!(row.target, format!("payment_account:{}", first.id));
            assert!(
                !row.details.contains("secret-number") && !row.details.contains("webhook-secret"),
                "{}",
                row.details
            );
        }
        assert!(
            trail[1].details.contains("rzp_test_Creator2"),
            "the public key id is kept"
        );
    }
}
