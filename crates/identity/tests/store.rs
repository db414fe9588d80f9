//! Identity store on every configured backend (SQLite always; PostgreSQL with
//! THALI_TEST_DATABASE_URL, required under CI=true).
use std::sync::Arc;
use thali_identity::{
    domain::{AccountStatus, IdentityError, NewAccount, Role, parse_api_key},
    store::{IdentityStore, KeyFor, RotateError},
};

use base64::Engine;
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use thali_migrations::{Migrator, MigratorTrait};
use thali_platform::{
    jobs::{ManualClock, Queue},
    testing,
};
use thali_proto::events::v1::{Event, event::Payload};

async fn stores() -> Vec<(&'static str, IdentityStore)> {
    let mut out = Vec::new();
    for t in testing::all().await {
        Migrator::up(&t.db, None).await.unwrap();
        out.push((t.backend, IdentityStore::new(t.db)));
    }
    out
}

async fn account(store: &IdentityStore, email: &str) -> uuid::Uuid {
    account_as(store, email, None).await
}

/// An active account with `role` instead of the creator role it asks for (as `thali users
/// create --admin` makes an admin).
async fn account_as(store: &IdentityStore, email: &str, role: Option<Role>) -> uuid::Uuid {
    let new = NewAccount::parse(email, "correct horse battery", "Someone", Some(Role::Creator)).unwrap();
    store
        .register(
            &new,
            "$argon2id$not-checked-here".into(),
            AccountStatus::Active,
            role,
            None,
            "203.0.113.7",
        )
        .await
        .unwrap()
        .id
}

#[tokio::test]
async fn emails_are_unique_in_the_database() {
    for (backend, store) in stores().await {
        account(&store, "same@example.com").await;
        let again = NewAccount::parse("same@example.com", "correct horse battery", "Other", Some(Role::Buyer)).unwrap();
        let err = store
            .register(&again, "x".into(), AccountStatus::Active, None, None, "")
            .await
            .unwrap_err();
        assert!(matches!(err, IdentityError::EmailTaken), "{backend}: {err:?}");
    }
}

#[tokio::test]
async fn two_racing_rotations_of_one_token_leave_one_winner_and_kill_the_family() {
    for (backend, store) in stores().await {
        let id = account(&store, "race@example.com").await;
        let first = store.start_family(id, "").await.unwrap();
        let (a, b) = tokio::join!(store.rotate(&first.token), store.rotate(&first.token));
        let winners = [&a, &b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "{backend}: exactly one rotation wins");
        let loser_reused = [&a, &b].iter().any(|r| matches!(r, Err(RotateError::Reused { .. })));
        assert!(loser_reused, "{backend}: the other is a reuse");
        let (_, issued) = [a, b].into_iter().find_map(Result::ok).unwrap();
        assert!(
            matches!(store.rotate(&issued.token).await, Err(RotateError::Invalid)),
            "{backend}: family revoked"
        );
    }
}

/// A retried CreateApiKey mints no second key: it answers with the first one and a new secret
/// (the first secret, held only as a hash, stops working); racing retries make one key.
#[tokio::test]
async fn creating_an_api_key_honours_its_idempotency_key() {
    use thali_identity::store::Idempotency;
    for (backend, store) in stores().await {
        let owner = account(&store, "idem@example.com").await;
        let scopes = vec!["storefront.read".to_owned()];
        let idem = |name: &str| Idempotency::new("retry-1".into(), &(owner, name));
        let pos = idem("pos");
        let ((a, first), (b, second)) = {
            let (x, y) = tokio::join!(
                store.create_api_key(owner, "pos", &scopes, None, None, Some(&pos)),
                store.create_api_key(owner, "pos", &scopes, None, None, Some(&pos)),
            );
            (x.unwrap(), y.unwrap())
        };
        assert_eq!(a.id, b.id, "{backend}: one key");
        assert_eq!(store.api_keys(owner).await.unwrap().len(), 1, "{backend}");
        assert_ne!(first, second, "{backend}");
        let (c, third) = store
            .create_api_key(owner, "pos", &scopes, None, None, Some(&pos))
            .await
            .unwrap();
        assert_eq!(c.id, a.id, "{backend}");
        assert!(
            store.verify_api_key(&parse_api_key(&third).unwrap()).await.is_ok(),
            "{backend}"
        );
        for old in [&first, &second] {
            assert!(
                matches!(
                    store.verify_api_key(&parse_api_key(old).unwrap()).await,
                    Err(IdentityError::BadApiKey)
                ),
                "{backend}: an earlier secret stops working"
            );
        }
        // The same key with another request is refused.
        assert!(matches!(
            store
                .create_api_key(owner, "other", &scopes, None, None, Some(&idem("other")))
                .await,
            Err(IdentityError::IdempotencyKeyReused)
        ));
        assert_eq!(store.api_keys(owner).await.unwrap().len(), 1, "{backend}");
    }
}

#[tokio::test]
async fn api_keys_verify_only_while_valid() {
    for (backend, store) in stores().await {
        let owner = account(&store, "keys@example.com").await;
        let scopes = vec!["storefront.read".to_owned()];
        let (key, secret) = store
            .create_api_key(owner, "pos", &scopes, None, None, None)
            .await
            .unwrap();
        let presented = parse_api_key(&secret).expect("a minted key has the key shape");
        let (found, found_owner) = store.verify_api_key(&presented).await.unwrap();
        assert_eq!((found.id, found_owner.id), (key.id, owner), "{backend}");
        assert!(found.last_used_at.is_none());
        assert!(
            store.api_keys(owner).await.unwrap()[0].last_used_at.is_some(),
            "{backend}: use is noted"
        );

        let forged = format!("{}{}", &secret[..secret.len() - 3], "AAA");
        let forged = parse_api_key(&forged).unwrap();
        assert!(
            matches!(store.verify_api_key(&forged).await, Err(IdentityError::BadApiKey)),
            "{backend}"
        );

        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        let (_, expired) = store
            .create_api_key(owner, "old", &scopes, Some(past), None, None)
            .await
            .unwrap();
        let expired = parse_api_key(&expired).unwrap();
        assert!(
            matches!(store.verify_api_key(&expired).await, Err(IdentityError::BadApiKey)),
            "{backend}"
        );

        store.revoke_api_key(owner, false, key.id).await.unwrap();
        assert!(
            matches!(store.verify_api_key(&presented).await, Err(IdentityError::BadApiKey)),
            "{backend}"
        );
        let stranger = account(&store, "stranger@example.com").await;
        assert!(matches!(
            store.revoke_api_key(stranger, false, key.id).await,
            Err(IdentityError::ApiKeyNotFound)
        ));
    }
}

#[tokio::test]
async fn failures_lock_a_key_and_success_clears_it() {
    for (backend, store) in stores().await {
        let key = "account:lock@example.com";
        for attempt in 1..=4 {
            assert_eq!(
                store.record_failure(key, 5).await.unwrap(),
                (attempt, None),
                "{backend}"
            );
        }
        let (failures, lock) = store.record_failure(key, 5).await.unwrap();
        assert_eq!(failures, 5);
        assert_eq!(lock.expect("the fifth failure locks").as_secs(), 30, "{backend}");
        let left = store
            .throttled(&[key.to_owned(), "address:1.2.3.4".into()])
            .await
            .unwrap()
            .unwrap();
        assert!(left.as_secs() <= 30 && left.as_secs() >= 28, "{backend}: {left:?}");
        let (_, doubled) = store.record_failure(key, 5).await.unwrap();
        assert_eq!(doubled.unwrap().as_secs(), 60, "{backend}: doubles");
        store.clear_failures(key).await.unwrap();
        assert_eq!(store.throttled(&[key.to_owned()]).await.unwrap(), None, "{backend}");
    }
}

/// Rows of `table` in the store's database.
async fn rows(store: &IdentityStore, table: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    let db = store.connection();
    let sql = format!("SELECT COUNT(*) AS n FROM {table}");
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

#[tokio::test]
async fn hourly_housekeeping_deletes_what_no_request_can_use_and_keeps_the_rest() {
    use std::{sync::Arc, time::Duration};

    use thali_identity::workers;
    use thali_platform::{
        idempotency::Idempotency,
        jobs::{ManualClock, Queue},
    };
    for (backend, store) in stores().await {
        let new = NewAccount::parse("keep@example.com", "correct horse battery", "Keep", Some(Role::Buyer)).unwrap();
        let idem = Idempotency::new("key-1".into(), &"register keep");
        let account = store
            .register(&new, "x".into(), AccountStatus::Active, None, Some(&idem), "")
            .await
            .unwrap();
        let session = store.start_family(account.id, "").await.unwrap();
        store.record_failure("login:someone@example.com", 5).await.unwrap();
        assert_eq!(rows(&store, "login_throttle").await, 1);

        // An hour on: the throttle row is forgotten; the session and the idempotency key are not.
        let clock = ManualClock::new(chrono::Utc::now());
        clock.advance(Duration::from_secs(3600));
        let worker = workers::worker(
            store.clone(),
            Queue::with_clock(workers::SERVICE, Arc::new(clock.clone())),
        );
        assert_eq!(
            worker.run_once().await.unwrap(),
            5,
            "{backend}: four prunes and the queue's own"
        );
        assert_eq!(rows(&store, "login_throttle").await, 0, "{backend}");
        assert_eq!(rows(&store, "refresh_tokens").await, 1, "{backend}");
        assert_eq!(rows(&store, "identity_idempotency").await, 1, "{backend}");
        assert!(store.session_is_live(session.family_id).await.unwrap());
        assert_eq!(worker.run_once().await.unwrap(), 0, "{backend}: once per hour");

        // Past the refresh token's 30 days: the session and the key's 24 h are over.
        clock.advance(Duration::from_secs(31 * 24 * 3600));
        assert_eq!(worker.run_once().await.unwrap(), 5, "{backend}");
        assert_eq!(rows(&store, "refresh_tokens").await, 0, "{backend}");
        assert_eq!(rows(&store, "identity_idempotency").await, 0, "{backend}");
        assert_eq!(rows(&store, "accounts").await, 1, "accounts stay");
    }
}

#[tokio::test]
async fn a_new_account_and_its_account_created_event_commit_together() {
    use thali_platform::jobs::admin;
    for (backend, store) in stores().await {
        let filter = admin::Filter {
            service: Some(thali_identity::workers::SERVICE.into()),
            kind: Some(thali_platform::events::RELAY_KIND.into()),
            state: None,
        };
        account(&store, "first@example.com").await;
        // account.created, and the verification link's event.
        assert_eq!(
            admin::list(store.connection(), &filter, 10).await.unwrap().len(),
            2,
            "{backend}"
        );
        // A refused registration writes no event.
        let again =
            NewAccount::parse("first@example.com", "correct horse battery", "Again", Some(Role::Buyer)).unwrap();
        assert!(
            store
                .register(&again, "x".into(), AccountStatus::Active, None, None, "")
                .await
                .is_err()
        );
        assert_eq!(
            admin::list(store.connection(), &filter, 10).await.unwrap().len(),
            2,
            "{backend}"
        );
    }
}

/// A store whose clock the test moves.
async fn clocked_stores() -> Vec<(&'static str, IdentityStore, Arc<ManualClock>, DatabaseConnection)> {
    let mut out = Vec::new();
    for t in testing::all().await {
        Migrator::up(&t.db, None).await.unwrap();
        let clock = Arc::new(ManualClock::new(testing::ten_past_the_hour()));
        let store = IdentityStore::with_queue(t.db.clone(), Queue::with_clock("identity", clock.clone()));
        out.push((t.backend, store, clock, t.db));
    }
    out
}

/// The events identity wrote to its outbox, oldest first.
async fn outbox(db: &DatabaseConnection) -> Vec<Event> {
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT payload FROM jobs WHERE kind = 'events.relay' ORDER BY id",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            let payload: String = row.try_get("", "payload").unwrap();
            let json: serde_json::Value = serde_json::from_str(&payload).unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(json["event"].as_str().unwrap())
                .unwrap();
            Event::decode(bytes.as_slice()).unwrap()
        })
        .collect()
}

/// The token of the newest mail of this kind in the outbox (the only place it exists unhashed).
async fn mailed_token(db: &DatabaseConnection, reset: bool) -> String {
    outbox(db)
        .await
        .into_iter()
        .rev()
        .find_map(|e| match e.payload {
            Some(Payload::AccountPasswordResetRequested(p)) if reset => Some(p.token),
            Some(Payload::AccountEmailVerificationRequested(p)) if !reset => Some(p.token),
            _ => None,
        })
        .expect("a token was mailed")
}

#[tokio::test]
async fn a_reset_token_works_once_expires_and_ends_every_session() {
    for (backend, store, clock, db) in clocked_stores().await {
        let id = account(&store, "reset@example.com").await;
        let phone = store.start_family(id, "").await.unwrap();
        let laptop = store.start_family(id, "").await.unwrap();

        // Same answer for an address without an account, and nothing is mailed.
        let before = outbox(&db).await.len();
        assert!(!store.request_password_reset("nobody@example.com").await.unwrap());
        assert_eq!(outbox(&db).await.len(), before, "{backend}");
        assert!(store.request_password_reset("reset@example.com").await.unwrap());
        let token = mailed_token(&db, true).await;
        assert!(token.starts_with("thali_pr_"));

        let (who, revoked) = store.reset_password(&token, "$argon2id$new".into()).await.unwrap();
        assert_eq!(who, id);
        assert!(revoked >= 2, "{backend}: {revoked}");
        assert!(
            !store.session_is_live(phone.family_id).await.unwrap(),
            "{backend}: sessions end"
        );
        assert!(matches!(store.rotate(&laptop.token).await, Err(RotateError::Invalid)));
        let (_, hash) = store.account_for_login("reset@example.com").await.unwrap().unwrap();
        assert_eq!(hash, "$argon2id$new");

        // Once only.
        let again = store
            .reset_password(&token, "$argon2id$other".into())
            .await
            .unwrap_err();
        assert!(matches!(again, IdentityError::BadToken), "{backend}: {again:?}");

        // Expired after 30 minutes.
        store.request_password_reset("reset@example.com").await.unwrap();
        let late = mailed_token(&db, true).await;
        clock.advance(std::time::Duration::from_secs(31 * 60));
        let err = store.reset_password(&late, "$argon2id$late".into()).await.unwrap_err();
        assert!(matches!(err, IdentityError::BadToken), "{backend}: expired");

        // A newer request makes the older link stop working.
        store.request_password_reset("reset@example.com").await.unwrap();
        let older = mailed_token(&db, true).await;
        store.request_password_reset("reset@example.com").await.unwrap();
        let newer = mailed_token(&db, true).await;
        assert!(matches!(
            store.reset_password(&older, "$argon2id$x".into()).await,
            Err(IdentityError::BadToken)
        ));
        store.reset_password(&newer, "$argon2id$y".into()).await.unwrap();
        // A made-up token is refused the same way.
        assert!(matches!(
            store.reset_password("thali_pr_made-up", "$argon2id$z".into()).await,
            Err(IdentityError::BadToken)
        ));
    }
}

#[tokio::test]
async fn the_verification_link_mailed_at_registration_verifies_the_email_once() {
    for (backend, store, _clock, db) in clocked_stores().await {
        let id = account(&store, "verify@example.com").await;
        assert!(store.account(id).await.unwrap().email_verified_at.is_none());
        let token = mailed_token(&db, false).await;
        let verified = store.verify_email(&token).await.unwrap();
        assert_eq!(verified.id, id);
        assert!(verified.email_verified_at.is_some(), "{backend}");
        assert!(matches!(store.verify_email(&token).await, Err(IdentityError::BadToken)));
        // A reset token is not a verification token.
        store.request_password_reset("verify@example.com").await.unwrap();
        let reset = mailed_token(&db, true).await;
        assert!(matches!(store.verify_email(&reset).await, Err(IdentityError::BadToken)));
        // Verified: asking again mails nothing.
        let before = outbox(&db).await.len();
        store.request_email_verification(id).await.unwrap();
        assert_eq!(outbox(&db).await.len(), before, "{backend}");
    }
}

#[tokio::test]
async fn a_sign_in_from_a_new_address_is_an_event_but_the_first_and_repeats_are_not() {
    for (backend, store, _clock, db) in clocked_stores().await {
        let id = account(&store, "where@example.com").await;
        let told = |events: Vec<Event>| {
            events
                .into_iter()
                .filter_map(|e| match e.payload {
                    Some(Payload::AccountLoginNewAddress(p)) => Some(p.ip_address),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert!(
            !store.note_login_address(id, "203.0.113.1").await.unwrap(),
            "{backend}: the first"
        );
        assert!(!store.note_login_address(id, "203.0.113.1").await.unwrap());
        assert!(
            store.note_login_address(id, "198.51.100.7").await.unwrap(),
            "{backend}: a new one"
        );
        assert!(!store.note_login_address(id, "198.51.100.7").await.unwrap());
        assert!(!store.note_login_address(id, "").await.unwrap());
        assert_eq!(told(outbox(&db).await), ["198.51.100.7"], "{backend}");
    }
}

/// Ending a session and disabling an account are written as revocations, in the same
/// transaction as the refresh tokens they revoke, and listed after a cursor until they expire.
#[tokio::test]
async fn revocations_are_recorded_listed_after_a_cursor_and_pruned() {
    for (backend, store) in stores().await {
        let id = account(&store, "rev@example.com").await;
        let session = store.start_family(id, "").await.unwrap();
        store.logout(&session.token).await.unwrap();
        let listed = store.revocations_after(0, 100).await.unwrap();
        assert_eq!(listed.len(), 1, "{backend}");
        assert_eq!(
            (listed[0].kind.as_str(), listed[0].subject.clone()),
            ("session", session.family_id.to_string()),
            "{backend}"
        );

        let other = store.start_family(id, "").await.unwrap();
        let (disabled, changed) = store.disable_account(id, uuid::Uuid::nil(), "test").await.unwrap();
        assert!(changed && disabled.status == AccountStatus::Disabled, "{backend}");
        assert!(!store.session_is_live(other.family_id).await.unwrap(), "{backend}");
        let (_, again) = store.disable_account(id, uuid::Uuid::nil(), "test").await.unwrap();
        assert!(!again, "{backend}: disabling twice records nothing new");
        let after = store.revocations_after(listed[0].id, 100).await.unwrap();
        assert_eq!(after.len(), 1, "{backend}");
        assert_eq!(
            (after[0].kind.as_str(), after[0].subject.clone()),
            ("account", id.to_string())
        );
        assert!(matches!(
            store
                .disable_account(uuid::Uuid::now_v7(), uuid::Uuid::nil(), "test")
                .await,
            Err(IdentityError::AccountNotFound)
        ));

        // Nothing is pruned while a token could still be refused by it; all of it a week on.
        assert_eq!(
            store.prune_revocations(chrono::Utc::now()).await.unwrap(),
            0,
            "{backend}"
        );
        let later = chrono::Utc::now() + chrono::Duration::days(8);
        assert_eq!(store.prune_revocations(later).await.unwrap(), 2, "{backend}");
    }
}

/// An active admin account.
async fn admin_account(store: &IdentityStore, email: &str) -> uuid::Uuid {
    account_as(store, email, Some(Role::Admin)).await
}

#[tokio::test]
async fn of_two_admins_acting_on_each_other_the_second_is_no_longer_one() {
    for t in testing::all().await {
        Migrator::up(&t.db, None).await.unwrap();
        let (backend, store) = (t.backend, IdentityStore::new(t.db));
        let a = admin_account(&store, "a@example.com").await;
        let b = admin_account(&store, "b@example.com").await;
        store
            .set_account_role(b, Role::Buyer, a, "left the team")
            .await
            .unwrap();
        for refused in [
            store.set_account_role(a, Role::Buyer, b, "revenge").await.map(|_| ()),
            store.disable_account(a, b, "revenge").await.map(|_| ()),
            store.enable_account(b, b, "let me back").await.map(|_| ()),
        ] {
            assert!(
                matches!(refused, Err(IdentityError::Forbidden)),
                "{backend}: {refused:?}"
            );
        }
        assert_eq!(store.account(a).await.unwrap().role, Role::Admin, "{backend}");
        // A disabled admin acts no more either.
        let c = admin_account(&store, "c@example.com").await;
        store.disable_account(c, a, "on leave").await.unwrap();
        assert!(matches!(
            store.set_account_role(b, Role::Admin, c, "x").await,
            Err(IdentityError::Forbidden)
        ));
        // An operator's token names no account: it may act.
        store
            .set_account_role(b, Role::Admin, uuid::Uuid::now_v7(), "rehired")
            .await
            .unwrap();
    }
}

/// The audit records identity has enqueued, oldest first: (action, actor, target, address).
async fn audit_trail(db: &DatabaseConnection) -> Vec<(String, String, String, String)> {
    thali_platform::audit_log::chain_now(db, "identity")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.action, r.actor, r.target, r.actor_address))
        .collect()
}

/// The details of identity's `n`th audit record (0-based).
async fn trail_details(db: &DatabaseConnection, n: usize) -> serde_json::Value {
    let rows = thali_platform::audit_log::chain_now(db, "identity").await.unwrap();
    serde_json::from_str(&rows[n].details).unwrap()
}

#[tokio::test]
async fn every_audited_action_commits_its_record_with_its_change_and_a_refused_change_leaves_none() {
    for t in testing::all().await {
        Migrator::up(&t.db, None).await.unwrap();
        let (backend, db) = (t.backend, t.db.clone());
        let store = IdentityStore::new(t.db);
        let new = NewAccount::parse("audit@example.com", "correct horse battery", "A", Some(Role::Creator)).unwrap();
        let id = store
            .register(&new, "x".into(), AccountStatus::Active, None, None, "203.0.113.7")
            .await
            .unwrap()
            .id;
        // A sign-up that the database refuses (the email is taken) rolls back with its record.
        let err = store
            .register(&new, "x".into(), AccountStatus::Active, None, None, "203.0.113.8")
            .await
            .unwrap_err();
        assert!(matches!(err, IdentityError::EmailTaken), "{backend}: {err:?}");
        store.start_family(id, "203.0.113.7").await.unwrap();
        store
            .record_login_failure(Some(id), "198.51.100.1", "bad credentials")
            .await
            .unwrap();
        store
            .record_login_failure(None, "198.51.100.2", "throttled")
            .await
            .unwrap();
        let (key, _) = store
            .create_api_key(id, "pos", &["storefront.read".to_owned()], None, None, None)
            .await
            .unwrap();
        store.revoke_api_key(id, false, key.id).await.unwrap();
        let admin = admin_account(&store, "admin@example.com").await;
        store.disable_account(id, admin, "fraud report").await.unwrap();
        // Disabling twice changes nothing, and records nothing.
        store.disable_account(id, admin, "again").await.unwrap();
        let (enabled, changed) = store.enable_account(id, admin, "appeal upheld").await.unwrap();
        assert!(changed && enabled.status == AccountStatus::Active, "{backend}");
        assert!(!store.enable_account(id, admin, "again").await.unwrap().1, "{backend}");
        let (promoted, changed) = store
            .set_account_role(id, Role::RestaurantOwner, admin, "opened a cafe")
            .await
            .unwrap();
        assert!(changed && promoted.role == Role::RestaurantOwner, "{backend}");
        assert!(
            !store
                .set_account_role(id, Role::RestaurantOwner, admin, "again")
                .await
                .unwrap()
                .1,
            "{backend}: the same role again changes and records nothing"
        );
        // Refused changes leave no record: an erased account's role and status stay as they are.
        let gone = account(&store, "gone@example.com").await;
        store.erase_account(gone, "203.0.113.9").await.unwrap();
        assert!(matches!(
            store.set_account_role(gone, Role::Admin, admin, "no").await,
            Err(IdentityError::AccountErased)
        ));
        assert!(matches!(
            store.enable_account(gone, admin, "no").await,
            Err(IdentityError::AccountErased)
        ));
        assert!(matches!(
            store
                .set_account_role(uuid::Uuid::now_v7(), Role::Admin, admin, "no")
                .await,
            Err(IdentityError::AccountNotFound)
        ));

        let (acct, target) = (format!("acct:{id}"), format!("account:{id}"));
        let key_target = format!("api_key:{}", key.id);
        let trail = audit_trail(&db).await;
        let want: Vec<(&str, &str, &str, &str)> = vec![
            ("account.registered", &acct, &target, "203.0.113.7"),
            ("login.succeeded", &acct, &target, "203.0.113.7"),
            ("login.failed", &acct, &target, "198.51.100.1"),
            ("login.failed", "anonymous", "account:unknown", "198.51.100.2"),
            ("api_key.created", &acct, &key_target, ""),
            ("api_key.revoked", &acct, &key_target, ""),
        ];
        let got: Vec<(&str, &str, &str, &str)> = trail
            .iter()
            .map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.as_str(), d.as_str()))
            .collect();
        assert_eq!(&got[..6], &want[..], "{backend}");
        assert_eq!(got[6].0, "account.registered", "{backend}: the admin's own sign-up");
        assert_eq!(
            got[7],
            (
                "admin.account_disabled",
                format!("acct:{admin}").as_str(),
                target.as_str(),
                ""
            )
        );
        assert_eq!(
            (got[8].0, got[8].2),
            ("admin.account_enabled", target.as_str()),
            "{backend}"
        );
        assert_eq!(trail_details(&db, 8).await["status_before"], "disabled", "{backend}");
        assert_eq!((got[9].0, got[9].2), ("admin.role_changed", target.as_str()));
        let details = trail_details(&db, 9).await;
        assert_eq!(
            (&details["from"], &details["to"], &details["reason"]),
            (
                &serde_json::json!("creator"),
                &serde_json::json!("restaurant_owner"),
                &serde_json::json!("opened a cafe")
            ),
            "{backend}"
        );
        // The erased account's sign-up and erasure; nothing of the refused changes.
        let tail: Vec<&str> = got[10..].iter().map(|r| r.0).collect();
        assert_eq!(tail, ["account.registered", "account.erased"], "{backend}");
        assert!(
            thali_platform::audit_log::verify(&db, "identity", None, |_| {})
                .await
                .unwrap()
                .is_ok()
        );
    }
}

#[tokio::test]
async fn a_key_an_admin_makes_for_an_owner_names_the_admin_as_the_actor() {
    for t in testing::all().await {
        Migrator::up(&t.db, None).await.unwrap();
        let (backend, db) = (t.backend, t.db.clone());
        let store = IdentityStore::new(t.db);
        let owner = account(&store, "owner@example.com").await;
        let admin = account(&store, "admin@example.com").await;
        let (own, _) = store
            .create_api_key(owner, "pos", &["storefront.read".to_owned()], None, None, None)
            .await
            .unwrap();
        let (made, _) = store
            .create_api_key(
                KeyFor { owner, by: admin },
                "partner",
                &["storefront.read".to_owned()],
                None,
                Some(600),
                None,
            )
            .await
            .unwrap();
        assert_eq!(made.owner_id, owner, "{backend}");
        let keys: Vec<_> = thali_platform::audit_log::chain_now(&db, "identity")
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.action == "api_key.created")
            .collect();
        assert_eq!(keys.len(), 2, "{backend}");
        let details = |n: usize| serde_json::from_str::<serde_json::Value>(&keys[n].details).unwrap();
        assert_eq!(
            (keys[0].actor.as_str(), keys[0].target.clone()),
            (format!("acct:{owner}").as_str(), format!("api_key:{}", own.id)),
            "{backend}"
        );
        assert_eq!(details(0)["by_admin"], false, "{backend}");
        assert_eq!(
            (keys[1].actor.as_str(), keys[1].target.clone()),
            (format!("acct:{admin}").as_str(), format!("api_key:{}", made.id)),
            "{backend}"
        );
        assert_eq!(details(1)["by_admin"], true, "{backend}");
        assert_eq!(details(1)["owner"], owner.to_string(), "{backend}");
        assert_eq!(details(1)["rate_limit_per_minute"], 600, "{backend}");
    }
}

#[tokio::test]
async fn an_erased_account_keeps_its_id_and_nothing_personal_and_its_event_carries_none() {
    for (backend, store, _clock, db) in clocked_stores().await {
        let id = account(&store, "erase.me@example.com").await;
        let other = account(&store, "stays@example.com").await;
        let (key, _) = store
            .create_api_key(id, "my laptop", &["storefront.read".into()], None, None, None)
            .await
            .unwrap();
        store.start_family(id, "203.0.113.7").await.unwrap();

        let at = store.erase_account(id, "203.0.113.7").await.unwrap();
        // A second erasure answers the first's time and does nothing again.
        assert_eq!(store.erase_account(id, "203.0.113.7").await.unwrap(), at, "{backend}");

        let erased = store.account(id).await.unwrap();
        assert_eq!(erased.status, AccountStatus::Erased, "{backend}");
        assert!(!erased.email.contains("erase.me"), "{backend}");
        assert_eq!(erased.display_name, "Erased account", "{backend}");
        assert!(
            store.account_for_login("erase.me@example.com").await.unwrap().is_none(),
            "{backend}: the address is free"
        );
        let keys = store.api_keys(id).await.unwrap();
        assert!(
            keys.iter().all(|k| k.revoked_at.is_some() && k.name != "my laptop"),
            "{backend}: {keys:?}"
        );
        assert_eq!(keys[0].id, key.id);
        assert_eq!(rows(&store, "refresh_tokens").await, 0, "{backend}: sessions end");
        let per_account = |table: &str| {
            let db = db.clone();
            let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE account_id = $1");
            async move {
                let stmt = thali_platform::db::statement(db.get_database_backend(), &sql, vec![id.into()]);
                db.query_one_raw(stmt)
                    .await
                    .unwrap()
                    .unwrap()
                    .try_get::<i64>("", "n")
                    .unwrap()
            }
        };
        assert_eq!(per_account("account_tokens").await, 0, "{backend}");
        assert_eq!(per_account("login_addresses").await, 0, "{backend}");
        // The other account is untouched.
        assert_eq!(store.account(other).await.unwrap().status, AccountStatus::Active);

        // The delivered events about the account were forgotten only once delivered: here none
        // was (no relay runs), so the outbox holds account.created … and account.erased, which
        // names the account and nothing else.
        let events = outbox(&db).await;
        let erased_event = events
            .iter()
            .find(|e| e.r#type == "account.erased")
            .expect("account.erased is in the outbox");
        assert_eq!(erased_event.aggregate, format!("account:{id}"), "{backend}");
        match &erased_event.payload {
            Some(Payload::AccountErased(p)) => assert_eq!(p.account_id, id.to_string()),
            other => panic!("{backend}: {other:?}"),
        }
        let trail = audit_trail(&db).await;
        assert!(
            trail
                .iter()
                .any(|(action, _, target, _)| action == "account.erased" && *target == format!("account:{id}")),
            "{backend}: {trail:?}"
        );
    }
}
