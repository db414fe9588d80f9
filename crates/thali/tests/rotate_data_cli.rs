//! `thali keys rotate-data` against an embedded data directory, as an operator rotates the data
//! key: a new active key, every stored secret re-encrypted with progress shown, the secrets the
//! same afterwards; `--resume` finishes an interrupted run; a value no key opens stops it.
mod support;

use support::thali;
use thali_payments::{domain::AccountSecrets, store::PaymentsStore};
use thali_platform::crypto::{DataKeys, Keyring};

#[tokio::test]
async fn an_operator_rotates_the_data_key_and_every_secret_follows() {
    let dir = std::env::temp_dir().join(format!("thali-rotate-cli-{}", uuid::Uuid::now_v7()));
    let (ok, _, err) = thali(&dir, &["migrate"]);
    assert!(ok, "migrate: {err}");
    let url = format!("sqlite://{}?mode=rwc", dir.join("thali.db").display());
    let db = thali_platform::db::connect(&url).await.unwrap();
    let store = PaymentsStore::new(db.clone());
    let path = dir.join("data-keys.json");
    let keys = Keyring::open(&path).unwrap();
    let first = keys.current().active_id().to_owned();
    let mut ids = Vec::new();
    for n in 0..7 {
        let secrets = AccountSecrets::parse(
            &format!("rzp_test_Store{n}"),
            &format!("key-secret-{n}-abcdefgh"),
            &format!("hook-secret-{n}-abcdefgh"),
        )
        .unwrap();
        let (account, _) = store
            .connect_account(&keys, &format!("seller-{n}"), &format!("store_{n}"), &secrets)
            .await
            .unwrap();
        ids.push(account.id);
    }

    let (ok, out, err) = thali(&dir, &["keys", "rotate-data", "--batch", "3"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("3/7") && err.contains("6/7") && err.contains("7/7 (100%)"),
        "progress: {err}"
    );
    assert!(out.contains("7 of 7 payment account(s) re-encrypted"), "{out}");
    // The operator's rotation is in payments' audit trail.
    let (ok, trail, _) = thali(
        &dir,
        &[
            "audit",
            "export",
            "--since",
            "2000-01-01T00:00:00Z",
            "--service",
            "payments",
        ],
    );
    assert!(ok);
    let rows: Vec<serde_json::Value> = trail.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(rows.iter().any(|r| r["action"] == "data_key.added"), "{trail}");
    let rotated_row = rows
        .iter()
        .find(|r| r["action"] == "data_key.rotated")
        .expect("data_key.rotated");
    let details: serde_json::Value = serde_json::from_str(rotated_row["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["re_encrypted"], 7);
    assert_eq!(rotated_row["actor"], "operator");
    let rotated = Keyring::open(&path).unwrap();
    let second = rotated.current().active_id().to_owned();
    assert_ne!(first, second);
    for (n, id) in ids.iter().enumerate() {
        let account = store.account(&rotated, *id).await.unwrap().unwrap();
        assert_eq!(account.data_key_id, second);
        assert_eq!(
            account.credentials.key_secret.expose().as_str(),
            format!("key-secret-{n}-abcdefgh")
        );
        assert_eq!(
            account.webhook_secret.expose().as_str(),
            format!("hook-secret-{n}-abcdefgh")
        );
    }
    // The old key stays in the file (a value it wrote may still be read by a lagging process).
    assert!(std::fs::read_to_string(&path).unwrap().contains(&first));

    // Resuming adds no key and has nothing left to do.
    let (ok, out, err) = thali(&dir, &["keys", "rotate-data", "--resume"]);
    assert!(ok, "{err}");
    assert!(out.contains("0 of 7"), "{out}");
    assert_eq!(Keyring::open(&path).unwrap().current().active_id(), second);

    // Adding a key alone re-encrypts nothing; resuming then moves every row to it.
    let (ok, out, err) = thali(&dir, &["keys", "rotate-data", "--add-key-only"]);
    assert!(ok, "{err}");
    assert!(out.contains("added"), "{out}");
    let third = Keyring::open(&path).unwrap().current().active_id().to_owned();
    assert_ne!(third, second);
    let still = store.account(&rotated, ids[0]).await.unwrap().unwrap();
    assert_eq!(still.data_key_id, second, "not re-encrypted yet");
    let (ok, out, err) = thali(&dir, &["keys", "rotate-data", "--resume"]);
    assert!(ok && out.contains("7 of 7"), "{out}{err}");

    // A secret no key in the file opens stops the rotation and names its row.
    let stranger = DataKeys::ensure(&dir.join("other-keys.json")).unwrap();
    let foreign = stranger
        .encrypt(
            thali_platform::crypto::Place {
                table: "payment_accounts",
                column: "key_secret",
                row: &ids[2].to_string(),
            },
            b"x",
        )
        .unwrap();
    {
        use sea_orm::ConnectionTrait;
        db.execute_raw(thali_platform::db::statement(
            db.get_database_backend(),
            "UPDATE payment_accounts SET key_secret = $1 WHERE id = $2",
            vec![foreign.into(), ids[2].into()],
        ))
        .await
        .unwrap();
    }
    let (ok, _, err) = thali(&dir, &["keys", "rotate-data"]);
    assert!(!ok);
    assert!(err.contains(&ids[2].to_string()), "{err}");
}
