//! The notifications service on every configured backend (SQLite always, PostgreSQL with
//! `THALI_TEST_DATABASE_URL`, required under CI=true): events taken once, the caller's own
//! notifications only, email preferences, and email through a real SMTP session or as `.eml`.
mod support;

use std::{sync::Arc, time::Duration};

use mail_parser::MessageParser;
use thali_migrations::{Migrator, MigratorTrait};
use thali_notifications::{
    Notifications,
    domain::NotificationError,
    mail::Mailer,
    webhooks::Sender,
    workers::{self, SERVICE},
};
use thali_platform::{
    events::{self, Sinks},
    jobs::{ManualClock, Queue, RetrySchedule, admin},
    server::ServiceCaller,
    testing::{self, TestDatabase},
};
use thali_proto::events::v1::{
    AccountCreated, AccountLoginNewAddress, DeliverRequest, Event, ProductOutOfStock, event::Payload,
    event_sink_server::EventSink,
};
use uuid::Uuid;

use support::smtp::{Mode, SmtpServer};

const FROM: &str = "Thali <no-reply@thali.test>";
const APP: &str = "https://app.thali.test";

async fn backends() -> Vec<TestDatabase> {
    let dbs = testing::all().await;
    for t in &dbs {
        Migrator::up(&t.db, None)
            .await
            .unwrap_or_else(|e| panic!("migrating {}: {e}", t.backend));
    }
    dbs
}

fn mail_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("thali-mail-{}", Uuid::now_v7()))
}

/// A worker that has run its hourly housekeeping already: `run_once` then counts only emails.
async fn quiet(worker: thali_platform::jobs::Worker) -> thali_platform::jobs::Worker {
    worker.run_once().await.unwrap();
    worker
}

fn service(t: &TestDatabase, mailer: Mailer) -> Notifications {
    Notifications::new(t.db.clone(), mailer, webhook_sender(), APP).unwrap()
}

/// Webhooks to the test's own loopback receivers, with a short timeout.
fn webhook_sender() -> Sender {
    Sender::new(Duration::from_secs(2), true)
}

fn account_created(account: Uuid, email: &str, name: &str) -> Event {
    events::new_event(
        "identity",
        format!("account:{account}"),
        Some(account),
        Payload::AccountCreated(AccountCreated {
            account_id: account.to_string(),
            email: email.to_owned(),
            display_name: name.to_owned(),
            role: "creator".into(),
        }),
        chrono::Utc::now(),
    )
}

fn out_of_stock(owner: Uuid, product: &str) -> Event {
    events::new_event(
        "storefront",
        format!("creator:{owner}"),
        Some(owner),
        Payload::ProductOutOfStock(ProductOutOfStock {
            creator_id: Uuid::now_v7().to_string(),
            username: "chai_point".into(),
            product_id: Uuid::now_v7().to_string(),
            product_name: product.to_owned(),
        }),
        chrono::Utc::now(),
    )
}

#[tokio::test]
async fn the_same_event_delivered_three_times_is_one_notification_and_one_email() {
    for t in backends().await {
        let n = service(&t, Mailer::files(mail_dir(), FROM).unwrap());
        let account = Uuid::now_v7();
        let event = account_created(account, "asha@example.com", "Asha");
        let sink = n.sink();
        // Three deliveries at once: the relay's retries can overlap after a lost answer.
        let (a, b, c) = tokio::join!(
            sink.take(event.clone()),
            sink.take(event.clone()),
            sink.take(event.clone()),
        );
        let takes = [a, b, c];
        let new: Vec<bool> = takes.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(new.iter().filter(|b| **b).count(), 1, "{}: {new:?}", t.backend);

        let page = n.store().list(account, 0, "", false).await.unwrap();
        assert_eq!(page.notifications.len(), 1, "{}", t.backend);
        assert_eq!(page.notifications[0].title, "Welcome to Thali, Asha");
        let emails = n
            .store()
            .emails_of_event(Uuid::parse_str(&event.id).unwrap())
            .await
            .unwrap();
        assert_eq!(emails.len(), 1, "{}", t.backend);
        let jobs = admin::list(
            &t.db,
            &admin::Filter {
                service: Some(SERVICE.into()),
                kind: Some(workers::SEND_EMAIL.into()),
                state: None,
            },
            100,
        )
        .await
        .unwrap();
        assert_eq!(jobs.len(), 1, "{}: one send job", t.backend);
    }
}

#[tokio::test]
async fn users_see_count_and_mark_only_their_own_notifications() {
    for t in backends().await {
        let n = service(&t, Mailer::files(mail_dir(), FROM).unwrap());
        let (asha, ravi) = (Uuid::now_v7(), Uuid::now_v7());
        n.sink()
            .take(account_created(asha, "asha@example.com", "Asha"))
            .await
            .unwrap();
        n.sink()
            .take(account_created(ravi, "ravi@example.com", "Ravi"))
            .await
            .unwrap();
        for i in 0..4 {
            n.sink().take(out_of_stock(asha, &format!("Chai #{i}"))).await.unwrap();
        }
        let store = n.store();
        assert_eq!(store.unread_count(asha).await.unwrap(), 5);
        assert_eq!(store.unread_count(ravi).await.unwrap(), 1);

        // Pages of two, newest first, then the end.
        let first = store.list(asha, 2, "", false).await.unwrap();
        let titles: Vec<_> = first.notifications.iter().map(|n| n.title.clone()).collect();
        assert_eq!(
            titles,
            ["Chai #3 is out of stock", "Chai #2 is out of stock"],
            "{}",
            t.backend
        );
        let second = store.list(asha, 2, &first.next_page_token, false).await.unwrap();
        let third = store.list(asha, 2, &second.next_page_token, false).await.unwrap();
        assert_eq!(third.notifications.len(), 1);
        assert!(third.next_page_token.is_empty());
        assert!(matches!(
            store.list(asha, 101, "", false).await,
            Err(NotificationError::Invalid(_))
        ));
        assert!(matches!(
            store.list(asha, 0, "not-a-token", false).await,
            Err(NotificationError::Invalid(_))
        ));

        // Ravi cannot read or mark Asha's, and does not learn they exist.
        let ashas = first.notifications[0].id;
        assert!(matches!(
            store.mark_read(ravi, ashas).await,
            Err(NotificationError::NotFound)
        ));
        assert!(
            store
                .list(ravi, 100, "", false)
                .await
                .unwrap()
                .notifications
                .iter()
                .all(|n| n.id != ashas)
        );
        assert_eq!(store.unread_count(asha).await.unwrap(), 5, "{}", t.backend);

        // Asha marks it read; again changes nothing.
        let read = store.mark_read(asha, ashas).await.unwrap();
        let read_at = read.read_at.expect("read");
        let again = store.mark_read(asha, ashas).await.unwrap();
        assert_eq!(again.read_at, Some(read_at));
        assert_eq!(store.unread_count(asha).await.unwrap(), 4);
        let unread = store.list(asha, 100, "", true).await.unwrap();
        assert_eq!(unread.notifications.len(), 4);
        assert!(unread.notifications.iter().all(|n| n.id != ashas));
    }
}

#[tokio::test]
async fn optional_email_follows_the_preference_and_security_email_always_goes() {
    for t in backends().await {
        let n = service(&t, Mailer::files(mail_dir(), FROM).unwrap());
        let asha = Uuid::now_v7();
        n.sink()
            .take(account_created(asha, "asha@example.com", "Asha"))
            .await
            .unwrap();
        n.store()
            .set_preferences(asha, &[("product.out_of_stock".into(), false)])
            .await
            .unwrap();
        let sold_out = out_of_stock(asha, "Samosa");
        n.sink().take(sold_out.clone()).await.unwrap();
        let login = events::new_event(
            "identity",
            format!("account:{asha}"),
            Some(asha),
            Payload::AccountLoginNewAddress(AccountLoginNewAddress {
                account_id: asha.to_string(),
                email: "asha@example.com".into(),
                ip_address: "203.0.113.9".into(),
            }),
            chrono::Utc::now(),
        );
        n.sink().take(login.clone()).await.unwrap();

        let emails_of = |e: &Event| n.store().emails_of_event(Uuid::parse_str(&e.id).unwrap());
        assert!(
            emails_of(&sold_out).await.unwrap().is_empty(),
            "{}: opted out",
            t.backend
        );
        let security = emails_of(&login).await.unwrap();
        assert_eq!(security.len(), 1);
        assert!(security[0].outgoing.text.contains("203.0.113.9"));
        // In-app is always on.
        assert_eq!(n.store().unread_count(asha).await.unwrap(), 3);

        let err = n
            .store()
            .set_preferences(asha, &[("account.login_new_address".into(), false)])
            .await
            .unwrap_err();
        assert!(matches!(err, NotificationError::Invalid(_)));
        let prefs = n.store().preferences(asha).await.unwrap();
        assert!(prefs.iter().any(|p| p.event_type == "product.out_of_stock" && !p.email));
        assert!(
            prefs
                .iter()
                .any(|p| p.event_type == "account.login_new_address" && p.email && p.required)
        );
    }
}

#[tokio::test]
async fn the_welcome_email_reaches_a_real_smtp_server_rendered() {
    for t in backends().await {
        let smtp = SmtpServer::start().await;
        let mailer = Mailer::smtp(&smtp.url, None, FROM, Duration::from_secs(5)).unwrap();
        let n = service(&t, mailer);
        let worker = quiet(n.job_worker(Queue::new(SERVICE))).await;
        let event = account_created(Uuid::now_v7(), "asha@example.com", "Asha & <Co>");
        n.sink().take(event.clone()).await.unwrap();
        assert_eq!(worker.run_once().await.unwrap(), 1);

        let got = smtp.messages();
        assert_eq!(got.len(), 1, "{}", t.backend);
        assert_eq!(got[0].from, "no-reply@thali.test");
        assert_eq!(got[0].to, ["asha@example.com"]);
        let message = MessageParser::default().parse(&got[0].data).expect("a MIME message");
        assert_eq!(message.subject(), Some("Welcome to Thali, Asha & <Co>"));
        let text = message.body_text(0).unwrap();
        assert!(text.contains("Hello Asha & <Co>,"), "{text}");
        let html = message.body_html(0).unwrap();
        assert!(html.contains("Hello Asha &amp; &lt;Co&gt;,"), "{html}");

        // Sent once: the email is marked sent and a second run finds nothing to do.
        let email = welcome_email(&n, &event).await;
        assert_eq!((email.state.as_str(), email.attempts), ("sent", 1), "{}", t.backend);
        assert_eq!(worker.run_once().await.unwrap(), 0);
        assert_eq!(smtp.messages().len(), 1);
    }
}

/// The email of the only `account.created` event taken for `account`.
async fn welcome_email(n: &Notifications, event: &Event) -> thali_notifications::store::StoredEmail {
    let mut emails = n
        .store()
        .emails_of_event(Uuid::parse_str(&event.id).unwrap())
        .await
        .unwrap();
    assert_eq!(emails.len(), 1);
    emails.remove(0)
}

#[tokio::test]
async fn a_refused_recipient_fails_for_good_and_a_temporary_refusal_is_retried() {
    for t in backends().await {
        let smtp = SmtpServer::start().await;
        let clock = Arc::new(ManualClock::new(testing::ten_past_the_hour()));
        let queue = Queue::with_clock(SERVICE, clock.clone());
        let mailer = Mailer::smtp(&smtp.url, None, FROM, Duration::from_secs(5)).unwrap();
        let n = Notifications::with_queue(t.db.clone(), queue.clone(), mailer, webhook_sender(), APP).unwrap();
        let schedule = RetrySchedule::fixed(&[Duration::from_secs(60)]).with_jitter(0.0);
        let worker = quiet(workers::job_worker_with(
            n.store().clone(),
            queue.clone(),
            n.outbound().clone(),
            schedule,
            workers::webhook_schedule(),
        ))
        .await;

        // 451: try again later.
        smtp.set_mode(Mode::RefuseRecipient(451));
        let first = account_created(Uuid::now_v7(), "asha@example.com", "Asha");
        n.sink().take(first.clone()).await.unwrap();
        assert_eq!(worker.run_once().await.unwrap(), 1);
        let email = welcome_email(&n, &first).await;
        assert_eq!((email.state.as_str(), email.attempts), ("queued", 1), "{}", t.backend);
        assert!(email.last_error.unwrap().contains("451"));
        // Not due yet; due after the schedule's minute, and the server now takes it.
        assert_eq!(worker.run_once().await.unwrap(), 0);
        smtp.set_mode(Mode::Accept);
        clock.advance(Duration::from_secs(61));
        assert_eq!(worker.run_once().await.unwrap(), 1);
        let email = welcome_email(&n, &first).await;
        assert_eq!((email.state.as_str(), email.attempts), ("sent", 2), "{}", t.backend);
        assert_eq!(smtp.messages().len(), 1);

        // 550: the address is refused for good; the job is dead at once.
        smtp.set_mode(Mode::RefuseRecipient(550));
        let second = account_created(Uuid::now_v7(), "nobody@example.com", "Nobody");
        n.sink().take(second.clone()).await.unwrap();
        assert_eq!(worker.run_once().await.unwrap(), 1);
        let email = welcome_email(&n, &second).await;
        assert_eq!(email.state, "failed", "{}", t.backend);
        let dead = admin::list(
            &t.db,
            &admin::Filter {
                service: Some(SERVICE.into()),
                kind: Some(workers::SEND_EMAIL.into()),
                state: Some(thali_platform::jobs::JobState::Dead),
            },
            10,
        )
        .await
        .unwrap();
        assert_eq!(dead.len(), 1, "{}", t.backend);
    }
}

#[tokio::test]
async fn a_stalled_smtp_server_is_cut_off_by_the_whole_send_timeout() {
    let t = testing::sqlite().await;
    Migrator::up(&t.db, None).await.unwrap();
    let smtp = SmtpServer::start().await;
    smtp.set_mode(Mode::StallAfterData);
    let mailer = Mailer::smtp(&smtp.url, None, FROM, Duration::from_millis(500)).unwrap();
    let n = service(&t, mailer);
    let worker = quiet(n.job_worker(Queue::new(SERVICE))).await;
    let event = account_created(Uuid::now_v7(), "asha@example.com", "Asha");
    n.sink().take(event.clone()).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert!(started.elapsed() < Duration::from_secs(5), "the send was bounded");
    let email = welcome_email(&n, &event).await;
    assert_eq!(email.state, "queued", "a stall is retried");
    assert!(email.last_error.unwrap().contains("no answer"), "timed out");
}

#[tokio::test]
async fn without_smtp_each_email_is_an_eml_file_a_mail_parser_reads() {
    let t = testing::sqlite().await;
    Migrator::up(&t.db, None).await.unwrap();
    let dir = mail_dir();
    let n = service(&t, Mailer::files(dir.clone(), FROM).unwrap());
    let worker = quiet(n.job_worker(Queue::new(SERVICE))).await;
    let owner = Uuid::now_v7();
    n.sink()
        .take(account_created(owner, "asha@example.com", "Asha"))
        .await
        .unwrap();
    let sold_out = out_of_stock(owner, "Masala chai");
    n.sink().take(sold_out.clone()).await.unwrap();
    assert_eq!(worker.run_once().await.unwrap(), 2);

    let email = n
        .store()
        .emails_of_event(Uuid::parse_str(&sold_out.id).unwrap())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(email.state, "sent");
    let path = dir.join(format!("{}.eml", email.outgoing.id));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let message = MessageParser::default().parse(&bytes).expect("a MIME message");
    assert_eq!(message.subject(), Some("Masala chai is out of stock"));
    assert_eq!(
        message.from().and_then(|f| f.first()).and_then(|a| a.address()),
        Some("no-reply@thali.test")
    );
    assert_eq!(
        message.to().and_then(|f| f.first()).and_then(|a| a.address()),
        Some("asha@example.com")
    );
    assert_eq!(
        message.message_id(),
        Some(format!("{}@thali.test", email.outgoing.id).as_str())
    );
    assert!(message.body_text(0).unwrap().contains("@chai_point"));
    assert!(message.body_html(0).unwrap().contains("<strong>Masala chai</strong>"));
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, 2, "one file per email, no partial files left");
}

#[tokio::test]
async fn only_a_thali_service_can_deliver_an_event() {
    let t = testing::sqlite().await;
    Migrator::up(&t.db, None).await.unwrap();
    let n = service(&t, Mailer::files(mail_dir(), FROM).unwrap());
    let sinks = Sinks::default().with(SERVICE, n.sink());
    let account = Uuid::now_v7();
    let request = |service: Option<&str>, subscriber: &str| {
        let mut r = tonic::Request::new(DeliverRequest {
            event: Some(account_created(account, "asha@example.com", "Asha")),
        });
        r.metadata_mut()
            .insert(events::SUBSCRIBER_HEADER, subscriber.parse().unwrap());
        if let Some(s) = service {
            r.extensions_mut().insert(ServiceCaller(s.to_owned()));
        }
        r
    };
    // A user (no service token) cannot inject an event.
    let err = sinks.deliver(request(None, SERVICE)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // A subscriber this process does not host.
    let err = sinks.deliver(request(Some("identity"), "booking")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    // A broken event is refused for good (the relay does not retry INVALID_ARGUMENT).
    let mut bad = request(Some("identity"), SERVICE);
    bad.get_mut().event.as_mut().unwrap().id = "x".into();
    assert_eq!(
        sinks.deliver(bad).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    assert_eq!(n.store().unread_count(account).await.unwrap(), 0);

    let ok = sinks.deliver(request(Some("identity"), SERVICE)).await.unwrap();
    assert!(!ok.into_inner().duplicate);
    assert_eq!(n.store().unread_count(account).await.unwrap(), 1);
}

#[tokio::test]
async fn a_reset_link_goes_to_the_requested_address_and_no_copy_is_kept_once_sent() {
    for t in backends().await {
        let dir = mail_dir();
        let n = service(&t, Mailer::files(dir.clone(), FROM).unwrap());
        let worker = quiet(n.job_worker(Queue::new(SERVICE))).await;
        let account = Uuid::now_v7();
        n.sink()
            .take(account_created(account, "old@example.com", "Asha"))
            .await
            .unwrap();
        let reset = events::new_event(
            "identity",
            format!("account:{account}"),
            Some(account),
            Payload::AccountPasswordResetRequested(thali_proto::events::v1::AccountPasswordResetRequested {
                account_id: account.to_string(),
                email: "new@example.com".into(),
                token: "thali_pr_secret-token".into(),
                expires_at: None,
            }),
            chrono::Utc::now(),
        );
        n.sink().take(reset.clone()).await.unwrap();
        // In-app stays about the welcome only: a reset is email-only.
        assert_eq!(n.store().unread_count(account).await.unwrap(), 1, "{}", t.backend);
        worker.run_once().await.unwrap();

        let email = welcome_email(&n, &reset).await;
        assert_eq!(email.outgoing.to, "new@example.com");
        assert_eq!(email.state, "sent", "{}", t.backend);
        assert!(
            email.outgoing.text.is_empty() && email.outgoing.html.is_empty(),
            "{}: blanked",
            t.backend
        );
        let bytes = std::fs::read(dir.join(format!("{}.eml", email.outgoing.id))).unwrap();
        let message = MessageParser::default().parse(&bytes).unwrap();
        let text = message.body_text(0).unwrap();
        assert!(
            text.contains("https://app.thali.test/reset-password?token=thali_pr_secret-token"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn housekeeping_deletes_settled_mail_and_old_inbox_records_but_keeps_notifications() {
    for t in backends().await {
        let n = service(&t, Mailer::files(mail_dir(), FROM).unwrap());
        let worker = quiet(n.job_worker(Queue::new(SERVICE))).await;
        let account = Uuid::now_v7();
        let event = account_created(account, "asha@example.com", "Asha");
        n.sink().take(event.clone()).await.unwrap();
        let now = chrono::Utc::now();
        // Nothing settled yet, nothing old: nothing goes.
        assert_eq!(
            n.store().prune(now + chrono::TimeDelta::days(31)).await.unwrap(),
            1,
            "{}: the inbox row",
            t.backend
        );
        worker.run_once().await.unwrap();
        assert_eq!(n.store().prune(now + chrono::TimeDelta::days(1)).await.unwrap(), 0);
        assert_eq!(
            n.store().prune(now + chrono::TimeDelta::days(31)).await.unwrap(),
            1,
            "{}: the sent email",
            t.backend
        );
        assert!(
            n.store()
                .emails_of_event(Uuid::parse_str(&event.id).unwrap())
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            n.store().unread_count(account).await.unwrap(),
            1,
            "{}: notifications stay",
            t.backend
        );
    }
}

#[tokio::test]
async fn the_smtp_password_comes_from_its_file_and_a_wrong_one_is_refused_for_good() {
    let t = testing::sqlite().await;
    Migrator::up(&t.db, None).await.unwrap();
    let smtp = SmtpServer::start().await;
    *smtp.login.lock().unwrap() = Some(("thali".into(), "s3cret pass".into()));
    let dir = mail_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let url = smtp.url.replace("smtp://", "smtp://thali@");
    for (password, sent) in [("s3cret pass\n", true), ("wrong", false)] {
        let file = dir.join(format!("password-{sent}"));
        std::fs::write(&file, password).unwrap();
        let mailer = Mailer::smtp(&url, Some(&file), FROM, Duration::from_secs(5)).unwrap();
        let n = service(&t, mailer);
        let worker = quiet(n.job_worker(Queue::new(SERVICE))).await;
        let event = account_created(Uuid::now_v7(), "asha@example.com", "Asha");
        n.sink().take(event.clone()).await.unwrap();
        worker.run_once().await.unwrap();
        let email = welcome_email(&n, &event).await;
        if sent {
            assert_eq!(email.state, "sent", "{:?}", email.last_error);
        } else {
            assert_eq!(email.state, "failed", "535 is permanent");
            assert!(email.last_error.unwrap().contains("535"));
        }
    }
    assert_eq!(smtp.messages().len(), 1);
}

#[tokio::test]
async fn a_booking_waits_for_its_guests_address_then_emails_the_guest_and_tells_the_owner_in_app() {
    use thali_proto::events::v1::{BookingConfirmed, BookingSummary};
    for t in backends().await {
        let n = service(&t, Mailer::files(mail_dir(), FROM).unwrap());
        let sink = n.sink();
        let (guest, owner, booking) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let booked = events::new_event(
            "booking",
            format!("booking:{booking}"),
            Some(owner),
            Payload::BookingConfirmed(BookingConfirmed {
                booking: Some(BookingSummary {
                    booking_id: booking.to_string(),
                    restaurant_id: Uuid::now_v7().to_string(),
                    restaurant_name: "Dosa Corner".into(),
                    guest_account_id: guest.to_string(),
                    guest_name: "Meera".into(),
                    party_size: 2,
                    local_start: "2026-11-25T19:30".into(),
                    time_zone: "Asia/Kolkata".into(),
                    start_time: None,
                }),
            }),
            chrono::Utc::now(),
        );
        // The guest signed up a moment ago: their address has not arrived. Refused (the relay
        // retries it) and nothing is kept.
        let err = sink.take(booked.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{}: {err:?}", t.backend);
        let owners = n.store().list(owner, 0, "", false).await.unwrap();
        assert!(owners.notifications.is_empty(), "{}", t.backend);

        sink.take(account_created(guest, "meera@example.com", "Meera"))
            .await
            .unwrap();
        assert!(sink.take(booked.clone()).await.unwrap(), "{}", t.backend);
        let owners = n.store().list(owner, 0, "", false).await.unwrap();
        assert_eq!(owners.notifications.len(), 1);
        assert_eq!(
            owners.notifications[0].title,
            "New booking: Meera, 2 at 2026-11-25 19:30"
        );
        // The guest: the welcome in-app, the booking by email only.
        let guests = n.store().list(guest, 0, "", false).await.unwrap();
        assert_eq!(guests.notifications.len(), 1, "{}", t.backend);
        let emails = n
            .store()
            .emails_of_event(Uuid::parse_str(&booked.id).unwrap())
            .await
            .unwrap();
        assert_eq!(emails.len(), 1, "{}", t.backend);
        assert_eq!(emails[0].outgoing.to, "meera@example.com");
        assert_eq!(emails[0].outgoing.subject, "Your table at Dosa Corner is booked");
    }
}

#[tokio::test]
async fn an_erased_guest_is_blanked_in_the_owners_inbox_and_a_late_event_about_them_writes_nothing() {
    use thali_proto::events::v1::{AccountErased, BookingConfirmed, BookingSummary};
    for t in backends().await {
        let n = service(&t, Mailer::files(mail_dir(), FROM).unwrap());
        let sink = n.sink();
        let (guest, owner) = (Uuid::now_v7(), Uuid::now_v7());
        let booked = |booking: Uuid| {
            events::new_event(
                "booking",
                format!("booking:{booking}"),
                Some(owner),
                Payload::BookingConfirmed(BookingConfirmed {
                    booking: Some(BookingSummary {
                        booking_id: booking.to_string(),
                        restaurant_id: Uuid::now_v7().to_string(),
                        restaurant_name: "Dosa Corner".into(),
                        guest_account_id: guest.to_string(),
                        guest_name: "Meera Iyer".into(),
                        party_size: 2,
                        local_start: "2026-11-25T19:30".into(),
                        time_zone: "Asia/Kolkata".into(),
                        start_time: None,
                    }),
                }),
                chrono::Utc::now(),
            )
        };
        sink.take(account_created(guest, "meera@example.com", "Meera Iyer"))
            .await
            .unwrap();
        assert!(sink.take(booked(Uuid::now_v7())).await.unwrap());
        let erased = events::new_event(
            "identity",
            format!("account:{guest}"),
            Some(guest),
            Payload::AccountErased(AccountErased {
                account_id: guest.to_string(),
            }),
            chrono::Utc::now(),
        );
        assert!(sink.take(erased.clone()).await.unwrap(), "{}", t.backend);
        assert!(
            !sink.take(erased).await.unwrap(),
            "{}: a redelivery does nothing",
            t.backend
        );

        // The owner keeps the notification, without the guest's name.
        let owners = n.store().list(owner, 0, "", false).await.unwrap();
        assert_eq!(owners.notifications.len(), 1, "{}", t.backend);
        assert!(!owners.notifications[0].title.contains("Meera"), "{}", t.backend);
        assert!(!owners.notifications[0].body.contains("Meera"), "{}", t.backend);
        // The guest's own are gone.
        assert!(
            n.store()
                .list(guest, 0, "", false)
                .await
                .unwrap()
                .notifications
                .is_empty()
        );

        // A booking event still in flight when the erasure came: taken, nothing written.
        let late = booked(Uuid::now_v7());
        assert!(sink.take(late.clone()).await.unwrap(), "{}", t.backend);
        assert_eq!(
            n.store().list(owner, 0, "", false).await.unwrap().notifications.len(),
            1
        );
        let emails = n
            .store()
            .emails_of_event(Uuid::parse_str(&late.id).unwrap())
            .await
            .unwrap();
        assert!(emails.is_empty(), "{}", t.backend);
    }
}
