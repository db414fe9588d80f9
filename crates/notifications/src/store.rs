//! Notifications persistence: sea-orm entities and one transaction per use case. An event's
//! effects (inbox row, recipient, in-app notification, email and its send job) commit together
//! or not at all; the constraints keep one notification per (account, event) and one email per
//! (event, template) however often an event is delivered.
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use thali_platform::{db::statement, jobs::NewJob};
use uuid::Uuid;

use crate::{
    domain::{
        self, ENDPOINTS_MAX, EmailPolicy, EmailPreference, Incoming, Notification, NotificationError,
        PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, WebhookAttempt, WebhookDelivery, WebhookEndpoint,
    },
    mail::Outgoing,
    templates::Templates,
    workers::{DELIVER_WEBHOOK, DeliverWebhook, SEND_EMAIL, SERVICE, SendEmail},
};

pub mod recipient {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notification_recipients")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: Uuid,
        pub email: String,
        pub display_name: String,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod notification {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notifications")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub account_id: Uuid,
        pub event_id: Uuid,
        pub event_type: String,
        pub title: String,
        #[sea_orm(column_type = "Text")]
        pub body: String,
        pub created_at: DateTimeUtc,
        pub read_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod preference {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notification_preferences")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_type: String,
        pub email: bool,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod email {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notification_emails")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub account_id: Uuid,
        pub event_id: Uuid,
        pub template: String,
        pub to_address: String,
        pub subject: String,
        #[sea_orm(column_type = "Text")]
        pub text_body: String,
        #[sea_orm(column_type = "Text")]
        pub html_body: String,
        pub state: String,
        pub attempts: i32,
        #[sea_orm(column_type = "Text", nullable)]
        pub last_error: Option<String>,
        pub created_at: DateTimeUtc,
        pub sent_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod endpoint {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_endpoints")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub account_id: Uuid,
        pub url: String,
        #[sea_orm(column_type = "Text")]
        pub event_types: String,
        pub secret: String,
        pub previous_secret: Option<String>,
        pub previous_secret_until: Option<DateTimeUtc>,
        pub state: String,
        #[sea_orm(column_type = "Text", nullable)]
        pub disabled_reason: Option<String>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod delivery {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_deliveries")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub endpoint_id: Uuid,
        pub event_id: Uuid,
        pub event_type: String,
        #[sea_orm(column_type = "Text")]
        pub payload: String,
        pub state: String,
        pub attempts: i32,
        pub created_at: DateTimeUtc,
        pub last_attempt_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod attempt {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_attempts")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub delivery_id: Uuid,
        pub attempted_at: DateTimeUtc,
        pub status_code: Option<i32>,
        pub latency_ms: i64,
        #[sea_orm(column_type = "Text", nullable)]
        pub error: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

impl From<endpoint::Model> for WebhookEndpoint {
    fn from(m: endpoint::Model) -> Self {
        WebhookEndpoint {
            id: m.id,
            account_id: m.account_id,
            url: m.url,
            event_types: m
                .event_types
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
            state: m.state,
            disabled_reason: m.disabled_reason,
            created_at: m.created_at,
            previous_secret_until: m.previous_secret_until,
        }
    }
}

impl endpoint::Model {
    /// The secrets that sign now: the current one, and the previous one during its 24 hours.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_secret_until)
            && until > now
        {
            secrets.push(previous);
        }
        secrets
    }

    pub fn takes(&self, event_type: &str) -> bool {
        self.state == "active" && self.event_types.split(',').any(|t| t == event_type)
    }
}

/// How long the inbox, settled emails and settled deliveries are kept.
pub const RETENTION: chrono::TimeDelta = chrono::TimeDelta::days(30);

/// How long the previous secret keeps signing after a rotation.
pub const ROTATION_OVERLAP: chrono::TimeDelta = chrono::TimeDelta::hours(24);

impl From<DbErr> for NotificationError {
    fn from(err: DbErr) -> Self {
        if thali_platform::db::is_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            NotificationError::Unavailable
        } else {
            NotificationError::Internal(err.to_string())
        }
    }
}

impl From<notification::Model> for Notification {
    fn from(m: notification::Model) -> Self {
        Notification {
            id: m.id,
            event_type: m.event_type,
            title: m.title,
            body: m.body,
            created_at: m.created_at,
            read_at: m.read_at,
        }
    }
}

/// An email as stored, with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEmail {
    pub outgoing: Outgoing,
    pub template: String,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// A page of notifications and the token of the next.
#[derive(Debug, Clone)]
pub struct Page {
    pub notifications: Vec<Notification>,
    pub next_page_token: String,
}

/// The notifications service's database.
#[derive(Debug, Clone)]
pub struct NotificationStore {
    db: DatabaseConnection,
    queue: thali_platform::jobs::Queue,
}

impl NotificationStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self::with_queue(db, thali_platform::jobs::Queue::new(SERVICE))
    }

    /// The store writing its jobs on `queue`.
    pub fn with_queue(db: DatabaseConnection, queue: thali_platform::jobs::Queue) -> Self {
        Self { db, queue }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Takes one event: records it in the inbox and, the first time only, stores what the user
    /// is told (in-app, and an email with its send job). False for an event taken before.
    pub async fn take(&self, incoming: &Incoming, templates: &Templates) -> Result<bool, NotificationError> {
        let channels = domain::channels(incoming.event_type)
            .ok_or_else(|| NotificationError::invalid("event.type", "is not one users are told about"))?;
        let now = self.queue.now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        if !thali_platform::events::accept(&txn, SERVICE, incoming.event_id, incoming.event_type, now).await? {
            return Ok(false);
        }
        let backend = txn.get_database_backend();
        // An event about an erased account, still in flight when the erasure came: taken, and
        // nothing it carries is written (ADR 0032).
        let erased = txn
            .query_one_raw(statement(
                backend,
                "SELECT account_id FROM erased_accounts WHERE account_id = $1",
                vec![incoming.account_id.into()],
            ))
            .await?
            .is_some();
        if erased {
            txn.commit().await?;
            tracing::info!(event_id = %incoming.event_id, "event about an erased account taken without effect");
            return Ok(true);
        }
        if let Some(r) = &incoming.recipient {
            txn.execute_raw(statement(
                backend,
                "INSERT INTO notification_recipients (account_id, email, display_name, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (account_id) DO UPDATE SET email = excluded.email, \
                 display_name = excluded.display_name, updated_at = excluded.updated_at",
                vec![
                    r.account_id.into(),
                    r.email.clone().into(),
                    r.display_name.clone().into(),
                    now.into(),
                ],
            ))
            .await?;
        }
        let recipient = recipient::Entity::find_by_id(incoming.account_id).one(&txn).await?;
        let mut context = incoming.context.clone();
        if let Some(map) = context.as_object_mut() {
            let name = recipient
                .as_ref()
                .map(|r| r.display_name.clone())
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| "there".to_owned());
            map.insert("name".into(), name.into());
            map.insert(
                "email".into(),
                recipient.as_ref().map(|r| r.email.clone()).unwrap_or_default().into(),
            );
        }
        let template_failed = |e: crate::templates::TemplateError| NotificationError::Internal(e.to_string());

        if channels.in_app {
            let text = templates
                .in_app(incoming.event_type, &context)
                .map_err(template_failed)?;
            in_app_row(&txn, incoming, incoming.account_id, None, text, now).await?;
        }

        // The restaurant's owner (or whoever owns the event's resource) hears of it in-app.
        if channels.owner_in_app
            && let Some(owner) = incoming.owner.filter(|o| *o != incoming.account_id)
        {
            let text = templates
                .in_app(incoming.event_type, &context)
                .map_err(template_failed)?;
            in_app_row(&txn, incoming, owner, Some(incoming.account_id), text, now).await?;
        }

        let wanted = match channels.email {
            EmailPolicy::Never => false,
            EmailPolicy::Required => true,
            EmailPolicy::Optional => {
                preference::Entity::find_by_id((incoming.account_id, incoming.event_type.to_owned()))
                    .one(&txn)
                    .await?
                    .is_none_or(|p| p.email)
            }
        };
        let address = incoming
            .to
            .clone()
            .or_else(|| recipient.as_ref().map(|r| r.email.clone()));
        match (address, wanted) {
            (Some(address), true) => {
                let mail = templates
                    .email(incoming.event_type, &context)
                    .map_err(template_failed)?;
                let id = Uuid::now_v7();
                let inserted = txn
                    .execute_raw(statement(
                        backend,
                        "INSERT INTO notification_emails (id, account_id, event_id, template, to_address, subject, \
                         text_body, html_body, state, attempts, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', 0, $9) ON CONFLICT DO NOTHING",
                        vec![
                            id.into(),
                            incoming.account_id.into(),
                            incoming.event_id.into(),
                            incoming.event_type.into(),
                            address.into(),
                            mail.subject.into(),
                            mail.text.into(),
                            mail.html.into(),
                            now.into(),
                        ],
                    ))
                    .await?;
                if inserted.rows_affected() == 1 {
                    let job = NewJob::new(SEND_EMAIL, &SendEmail { email_id: id }).unique(format!("email:{id}"));
                    self.queue.enqueue(&txn, job).await?;
                }
            }
            // Not known yet, and the event is young: refuse it (nothing commits) so the relay
            // sends it again once the account's address has had time to arrive.
            (None, true)
                if domain::AWAITS_RECIPIENT.contains(&incoming.event_type)
                    && now - incoming.occurred_at < domain::RECIPIENT_GRACE =>
            {
                return Err(NotificationError::RecipientPending);
            }
            (None, true) => {
                tracing::warn!(
                    account_id = %incoming.account_id,
                    event_type = incoming.event_type,
                    "no address known for this account: in-app only"
                );
            }
            (_, false) => {}
        }

        // Partner webhooks: only the endpoints of the account whose resource this is, and never
        // an event that carries a secret.
        if let Some(owner) = incoming
            .owner
            .filter(|_| !domain::SECRET_BEARING.contains(&incoming.event_type))
        {
            let endpoints = endpoint::Entity::find()
                .filter(endpoint::Column::AccountId.eq(owner))
                .filter(endpoint::Column::State.eq("active"))
                .all(&txn)
                .await?;
            let body = incoming.webhook_body();
            for e in endpoints.iter().filter(|e| e.takes(incoming.event_type)) {
                let id = Uuid::now_v7();
                let inserted = txn
                    .execute_raw(statement(
                        backend,
                        "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, payload, state, \
                         attempts, created_at) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6) ON CONFLICT DO NOTHING",
                        vec![
                            id.into(),
                            e.id.into(),
                            incoming.event_id.into(),
                            incoming.event_type.into(),
                            body.clone().into(),
                            now.into(),
                        ],
                    ))
                    .await?;
                if inserted.rows_affected() == 1 {
                    let job = NewJob::new(DELIVER_WEBHOOK, &DeliverWebhook { delivery_id: id })
                        .unique(format!("webhook:{id}:0"));
                    self.queue.enqueue(&txn, job).await?;
                }
            }
        }
        txn.commit().await?;
        Ok(true)
    }

    /// Housekeeping: deletes inbox records, settled emails and settled webhook deliveries (with
    /// their attempts) older than [`RETENTION`]. Returns how many rows.
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<u64, DbErr> {
        let before = now - RETENTION;
        let backend = self.db.get_database_backend();
        let mut deleted = thali_platform::events::prune_inbox(&self.db, SERVICE, before).await?;
        for sql in [
            "DELETE FROM notification_emails WHERE state <> 'queued' AND created_at < $1",
            "DELETE FROM webhook_deliveries WHERE state <> 'pending' AND created_at < $1",
        ] {
            deleted += self
                .db
                .execute_raw(statement(backend, sql, vec![before.into()]))
                .await?
                .rows_affected();
        }
        Ok(deleted)
    }

    /// Registers an endpoint for `account`; returns it and its secret (shown once).
    pub async fn create_endpoint(
        &self,
        account: Uuid,
        url: &str,
        event_types: &[String],
    ) -> Result<(WebhookEndpoint, String), NotificationError> {
        let now = self.queue.now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let count = endpoint::Entity::find()
            .filter(endpoint::Column::AccountId.eq(account))
            .count(&txn)
            .await?;
        if count >= ENDPOINTS_MAX {
            return Err(NotificationError::TooManyEndpoints);
        }
        let secret = crate::webhooks::new_secret();
        let model = endpoint::Model {
            id: Uuid::now_v7(),
            account_id: account,
            url: url.to_owned(),
            event_types: event_types.join(","),
            secret: secret.clone(),
            previous_secret: None,
            previous_secret_until: None,
            state: "active".into(),
            disabled_reason: None,
            created_at: now,
            updated_at: now,
        };
        endpoint::Entity::insert(endpoint::ActiveModel::from(model.clone()))
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok((model.into(), secret))
    }

    /// `account`'s endpoints, oldest first.
    pub async fn endpoints(&self, account: Uuid) -> Result<Vec<WebhookEndpoint>, NotificationError> {
        Ok(endpoint::Entity::find()
            .filter(endpoint::Column::AccountId.eq(account))
            .order_by_asc(endpoint::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    async fn own_endpoint(
        &self,
        conn: &impl ConnectionTrait,
        account: Uuid,
        id: Uuid,
    ) -> Result<endpoint::Model, NotificationError> {
        endpoint::Entity::find_by_id(id)
            .filter(endpoint::Column::AccountId.eq(account))
            .one(conn)
            .await?
            .ok_or(NotificationError::EndpointNotFound)
    }

    /// Deletes `account`'s endpoint `id` with its deliveries.
    pub async fn delete_endpoint(&self, account: Uuid, id: Uuid) -> Result<(), NotificationError> {
        let done = endpoint::Entity::delete_many()
            .filter(endpoint::Column::Id.eq(id))
            .filter(endpoint::Column::AccountId.eq(account))
            .exec(&self.db)
            .await?;
        if done.rows_affected == 0 {
            return Err(NotificationError::EndpointNotFound);
        }
        Ok(())
    }

    /// A new secret for `account`'s endpoint `id`; the one it replaces signs too for 24 hours.
    pub async fn rotate_secret(&self, account: Uuid, id: Uuid) -> Result<(WebhookEndpoint, String), NotificationError> {
        let now = self.queue.now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let found = self.own_endpoint(&txn, account, id).await?;
        let secret = crate::webhooks::new_secret();
        txn.execute_raw(statement(
            txn.get_database_backend(),
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_until = $1, secret = $2, \
             updated_at = $3 WHERE id = $4",
            vec![
                (now + ROTATION_OVERLAP).into(),
                secret.clone().into(),
                now.into(),
                id.into(),
            ],
        ))
        .await?;
        txn.commit().await?;
        let model = endpoint::Model {
            previous_secret: Some(found.secret.clone()),
            previous_secret_until: Some(now + ROTATION_OVERLAP),
            secret: secret.clone(),
            updated_at: now,
            ..found
        };
        Ok((model.into(), secret))
    }

    /// The deliveries of `account`'s endpoint, newest first, with their attempts.
    pub async fn deliveries(
        &self,
        account: Uuid,
        endpoint_id: Uuid,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<WebhookDelivery>, String), NotificationError> {
        self.own_endpoint(&self.db, account, endpoint_id).await?;
        let size = page_size_of(page_size)?;
        let mut query = delivery::Entity::find().filter(delivery::Column::EndpointId.eq(endpoint_id));
        if !page_token.is_empty() {
            query = query.filter(delivery::Column::Id.lt(decode_token(page_token)?));
        }
        let mut rows = query
            .order_by_desc(delivery::Column::Id)
            .limit(size + 1)
            .all(&self.db)
            .await?;
        let next = next_page(&mut rows, size, |r| r.id);
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let attempts = attempt::Entity::find()
            .filter(attempt::Column::DeliveryId.is_in(ids))
            .order_by_asc(attempt::Column::Id)
            .all(&self.db)
            .await?;
        let deliveries = rows
            .into_iter()
            .map(|d| WebhookDelivery {
                attempts: attempts
                    .iter()
                    .filter(|a| a.delivery_id == d.id)
                    .map(|a| WebhookAttempt {
                        attempted_at: a.attempted_at,
                        status_code: a.status_code,
                        latency_ms: a.latency_ms,
                        error: a.error.clone(),
                    })
                    .collect(),
                id: d.id,
                endpoint_id: d.endpoint_id,
                event_id: d.event_id,
                event_type: d.event_type,
                state: d.state,
                created_at: d.created_at,
            })
            .collect();
        Ok((deliveries, next))
    }

    /// Sends a delivery of `account`'s endpoint again, on a fresh schedule.
    pub async fn resend(
        &self,
        account: Uuid,
        endpoint_id: Uuid,
        delivery_id: Uuid,
    ) -> Result<WebhookDelivery, NotificationError> {
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let found = self.own_endpoint(&txn, account, endpoint_id).await?;
        if found.state != "active" {
            return Err(NotificationError::EndpointDisabled);
        }
        let changed = delivery::Entity::update_many()
            .col_expr(delivery::Column::State, sea_orm::sea_query::Expr::value("pending"))
            .filter(delivery::Column::Id.eq(delivery_id))
            .filter(delivery::Column::EndpointId.eq(endpoint_id))
            .filter(delivery::Column::State.ne("pending"))
            .exec(&txn)
            .await?;
        if changed.rows_affected == 0 {
            let exists = delivery::Entity::find_by_id(delivery_id)
                .filter(delivery::Column::EndpointId.eq(endpoint_id))
                .one(&txn)
                .await?;
            return Err(match exists {
                Some(_) => NotificationError::DeliveryInFlight,
                None => NotificationError::DeliveryNotFound,
            });
        }
        let job = NewJob::new(DELIVER_WEBHOOK, &DeliverWebhook { delivery_id })
            .unique(format!("webhook:{delivery_id}:{}", Uuid::now_v7()));
        self.queue.enqueue(&txn, job).await?;
        txn.commit().await?;
        let (deliveries, _) = self.deliveries(account, endpoint_id, 100, "").await?;
        deliveries
            .into_iter()
            .find(|d| d.id == delivery_id)
            .ok_or(NotificationError::DeliveryNotFound)
    }

    /// A pending delivery and its endpoint, for the sender (None: nothing to send).
    pub async fn delivery_to_send(&self, id: Uuid) -> Result<Option<(delivery::Model, endpoint::Model)>, DbErr> {
        let Some(d) = delivery::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(None);
        };
        if d.state != "pending" {
            return Ok(None);
        }
        let e = endpoint::Entity::find_by_id(d.endpoint_id).one(&self.db).await?;
        Ok(e.map(|e| (d, e)))
    }

    /// Records one attempt of a delivery and, when the delivery is settled, its final state.
    pub async fn record_webhook_attempt(
        &self,
        delivery_id: Uuid,
        attempt: &WebhookAttempt,
        settled: Option<&str>,
    ) -> Result<(), DbErr> {
        let txn = thali_platform::db::begin_write(&self.db).await?;
        let backend = txn.get_database_backend();
        txn.execute_raw(statement(
            backend,
            "INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, latency_ms, error) \
             VALUES ($1, $2, $3, $4, $5)",
            vec![
                delivery_id.into(),
                attempt.attempted_at.into(),
                attempt.status_code.into(),
                attempt.latency_ms.into(),
                attempt.error.clone().into(),
            ],
        ))
        .await?;
        txn.execute_raw(statement(
            backend,
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = $1, \
             state = COALESCE($2, state) WHERE id = $3",
            vec![
                attempt.attempted_at.into(),
                settled.map(str::to_owned).into(),
                delivery_id.into(),
            ],
        ))
        .await?;
        txn.commit().await
    }

    /// Disables an endpoint that said it is gone.
    pub async fn disable_endpoint(&self, id: Uuid, reason: &str) -> Result<(), DbErr> {
        self.db
            .execute_raw(statement(
                self.db.get_database_backend(),
                "UPDATE webhook_endpoints SET state = 'disabled', disabled_reason = $1, updated_at = $2 WHERE id = $3",
                vec![reason.into(), self.queue.now().into(), id.into()],
            ))
            .await?;
        Ok(())
    }

    /// An in-app notice to `account` about its own endpoint (`notice_id` keeps it to one).
    pub async fn notify(
        &self,
        account: Uuid,
        notice_id: Uuid,
        kind: &str,
        text: crate::templates::InApp,
    ) -> Result<(), DbErr> {
        self.db
            .execute_raw(statement(
                self.db.get_database_backend(),
                "INSERT INTO notifications (id, account_id, event_id, event_type, title, body, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                vec![
                    Uuid::now_v7().into(),
                    account.into(),
                    notice_id.into(),
                    kind.into(),
                    text.title.into(),
                    text.body.into(),
                    self.queue.now().into(),
                ],
            ))
            .await?;
        Ok(())
    }

    /// `account`'s notifications, newest first.
    pub async fn list(
        &self,
        account: Uuid,
        page_size: i32,
        page_token: &str,
        unread_only: bool,
    ) -> Result<Page, NotificationError> {
        let size = page_size_of(page_size)?;
        let mut query = notification::Entity::find().filter(notification::Column::AccountId.eq(account));
        if !page_token.is_empty() {
            let before = decode_token(page_token)?;
            query = query.filter(notification::Column::Id.lt(before));
        }
        if unread_only {
            query = query.filter(notification::Column::ReadAt.is_null());
        }
        let mut rows = query
            .order_by_desc(notification::Column::Id)
            .limit(size + 1)
            .all(&self.db)
            .await?;
        let next_page_token = next_page(&mut rows, size, |r| r.id);
        Ok(Page {
            notifications: rows.into_iter().map(Into::into).collect(),
            next_page_token,
        })
    }

    /// Marks `id` read if it is `account`'s (a second time changes nothing). Any other id is
    /// not found, whoever owns it.
    pub async fn mark_read(&self, account: Uuid, id: Uuid) -> Result<Notification, NotificationError> {
        let now = self.queue.now();
        notification::Entity::update_many()
            .col_expr(notification::Column::ReadAt, sea_orm::sea_query::Expr::value(now))
            .filter(notification::Column::Id.eq(id))
            .filter(notification::Column::AccountId.eq(account))
            .filter(notification::Column::ReadAt.is_null())
            .exec(&self.db)
            .await?;
        notification::Entity::find_by_id(id)
            .filter(notification::Column::AccountId.eq(account))
            .one(&self.db)
            .await?
            .map(Into::into)
            .ok_or(NotificationError::NotFound)
    }

    /// How many of `account`'s notifications are unread.
    pub async fn unread_count(&self, account: Uuid) -> Result<u64, NotificationError> {
        Ok(notification::Entity::find()
            .filter(notification::Column::AccountId.eq(account))
            .filter(notification::Column::ReadAt.is_null())
            .count(&self.db)
            .await?)
    }

    /// `account`'s email preference for every event type.
    pub async fn preferences(&self, account: Uuid) -> Result<Vec<EmailPreference>, NotificationError> {
        let set: Vec<(String, bool)> = preference::Entity::find()
            .filter(preference::Column::AccountId.eq(account))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|p| (p.event_type, p.email))
            .collect();
        Ok(domain::effective_preferences(&set))
    }

    /// Sets `account`'s email preference for the types in `changes`.
    pub async fn set_preferences(
        &self,
        account: Uuid,
        changes: &[(String, bool)],
    ) -> Result<Vec<EmailPreference>, NotificationError> {
        domain::check_preferences(changes)?;
        let now = self.queue.now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        for (event_type, email) in changes {
            txn.execute_raw(statement(
                txn.get_database_backend(),
                "INSERT INTO notification_preferences (account_id, event_type, email, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (account_id, event_type) DO UPDATE SET \
                 email = excluded.email, updated_at = excluded.updated_at",
                vec![account.into(), event_type.clone().into(), (*email).into(), now.into()],
            ))
            .await?;
        }
        txn.commit().await?;
        self.preferences(account).await
    }

    /// The email with this id.
    pub async fn email(&self, id: Uuid) -> Result<Option<StoredEmail>, DbErr> {
        Ok(email::Entity::find_by_id(id).one(&self.db).await?.map(|m| StoredEmail {
            outgoing: Outgoing {
                id: m.id,
                to: m.to_address,
                subject: m.subject,
                text: m.text_body,
                html: m.html_body,
            },
            template: m.template,
            state: m.state,
            attempts: m.attempts,
            last_error: m.last_error,
        }))
    }

    /// The emails written for `event_id`.
    pub async fn emails_of_event(&self, event_id: Uuid) -> Result<Vec<StoredEmail>, DbErr> {
        let ids: Vec<Uuid> = email::Entity::find()
            .filter(email::Column::EventId.eq(event_id))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect();
        let mut found = Vec::new();
        for id in ids {
            found.extend(self.email(id).await?);
        }
        Ok(found)
    }

    /// Records one send attempt: sent, failed for good, or to be tried again.
    pub async fn record_attempt(
        &self,
        id: Uuid,
        outcome: Result<&str, (&str, bool)>,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        let (state, error, sent_at): (&str, Option<String>, Option<DateTime<Utc>>) = match outcome {
            Ok(_) => ("sent", None, Some(now)),
            Err((error, true)) => ("failed", Some(error.to_owned()), None),
            Err((error, false)) => ("queued", Some(error.to_owned()), None),
        };
        self.db
            .execute_raw(statement(
                self.db.get_database_backend(),
                "UPDATE notification_emails SET state = $1, attempts = attempts + 1, last_error = $2, \
                 sent_at = $3 WHERE id = $4 AND state = 'queued'",
                vec![state.into(), error.into(), sent_at.into(), id.into()],
            ))
            .await?;
        // A sent message that carried a token keeps no copy of it.
        if state != "queued" {
            let mut values: Vec<sea_orm::Value> = vec![id.into()];
            values.extend(domain::SECRET_BEARING.iter().map(|t| sea_orm::Value::from(*t)));
            let placeholders: Vec<String> = (2..=values.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "UPDATE notification_emails SET text_body = '', html_body = '' WHERE id = $1 AND template IN ({})",
                placeholders.join(", ")
            );
            self.db
                .execute_raw(statement(self.db.get_database_backend(), &sql, values))
                .await?;
        }
        Ok(())
    }
}

/// A page size: 0 means the default, at most [`PAGE_SIZE_MAX`].
fn page_size_of(page_size: i32) -> Result<u64, NotificationError> {
    thali_platform::errors::page_size(page_size, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)
        .map_err(|v| NotificationError::Invalid(vec![v]))
}

/// Cuts `rows` (read with one extra row) to `size`; the token of the next page, or empty.
fn next_page<T>(rows: &mut Vec<T>, size: u64, id: impl Fn(&T) -> Uuid) -> String {
    if rows.len() as u64 <= size {
        return String::new();
    }
    rows.truncate(size as usize);
    rows.last()
        .map(|r| URL_SAFE_NO_PAD.encode(id(r).as_bytes()))
        .unwrap_or_default()
}

fn decode_token(token: &str) -> Result<Uuid, NotificationError> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| Uuid::from_slice(&b).ok())
        .ok_or_else(|| NotificationError::invalid("page_token", "is not a token this service gave"))
}

/// One in-app notification of `incoming` for `account` (once per account and event).
/// Writes an in-app notification for `account`; `about` is the account whose person it names
/// when that is someone else (its erasure finds the notification).
async fn in_app_row(
    txn: &impl ConnectionTrait,
    incoming: &Incoming,
    account: Uuid,
    about: Option<Uuid>,
    text: crate::templates::InApp,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), sea_orm::DbErr> {
    txn.execute_raw(statement(
        txn.get_database_backend(),
        "INSERT INTO notifications (id, account_id, event_id, event_type, title, body, created_at, about_account_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        vec![
            Uuid::now_v7().into(),
            account.into(),
            incoming.event_id.into(),
            incoming.event_type.into(),
            text.title.into(),
            text.body.into(),
            now.into(),
            about.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Personal data (ADR 0032): an account's export, and the erasure `account.erased` asks for.
impl NotificationStore {
    /// Forgets everything notifications keeps of `account`, once per event (the inbox), in one
    /// transaction: its address and name, its in-app notifications, preferences and emails (a
    /// queued one is never sent: its job finds nothing), its webhook endpoints with their
    /// deliveries, and the settled deliveries to other accounts' endpoints that named it.
    /// Returns false for an event taken before.
    pub async fn erase_account(&self, event_id: Uuid, account: Uuid) -> Result<bool, NotificationError> {
        let now = self.queue.now();
        let txn = thali_platform::db::begin_write(&self.db).await?;
        if !thali_platform::events::accept(&txn, SERVICE, event_id, thali_platform::privacy::ERASED, now).await? {
            return Ok(false);
        }
        txn.execute_raw(statement(
            txn.get_database_backend(),
            "INSERT INTO erased_accounts (account_id, erased_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            vec![account.into(), now.into()],
        ))
        .await?;
        notification::Entity::delete_many()
            .filter(notification::Column::AccountId.eq(account))
            .exec(&txn)
            .await?;
        // Others' notifications that named this account's person keep their place, not the name.
        txn.execute_raw(statement(
            txn.get_database_backend(),
            "UPDATE notifications SET title = $1, body = $2, about_account_id = NULL WHERE about_account_id = $3",
            vec![domain::ERASED_TITLE.into(), domain::ERASED_BODY.into(), account.into()],
        ))
        .await?;
        preference::Entity::delete_many()
            .filter(preference::Column::AccountId.eq(account))
            .exec(&txn)
            .await?;
        email::Entity::delete_many()
            .filter(email::Column::AccountId.eq(account))
            .exec(&txn)
            .await?;
        // Deliveries and their attempts go with the endpoint (ON DELETE CASCADE).
        endpoint::Entity::delete_many()
            .filter(endpoint::Column::AccountId.eq(account))
            .exec(&txn)
            .await?;
        delivery::Entity::delete_many()
            .filter(delivery::Column::Payload.contains(account.to_string()))
            .filter(delivery::Column::State.ne("pending"))
            .exec(&txn)
            .await?;
        recipient::Entity::delete_many()
            .filter(recipient::Column::AccountId.eq(account))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        tracing::info!(%account, "notifications of the account forgotten");
        Ok(true)
    }

    /// What notifications holds about `account`: its address and name as last told, in-app
    /// notifications, email preferences, emails, and webhook endpoints (never their secrets).
    pub async fn personal_data(&self, account: Uuid) -> Result<serde_json::Value, DbErr> {
        let recipient = recipient::Entity::find_by_id(account).one(&self.db).await?;
        let notifications = notification::Entity::find()
            .filter(notification::Column::AccountId.eq(account))
            .order_by_asc(notification::Column::CreatedAt)
            .all(&self.db)
            .await?;
        let preferences = preference::Entity::find()
            .filter(preference::Column::AccountId.eq(account))
            .all(&self.db)
            .await?;
        let emails = email::Entity::find()
            .filter(email::Column::AccountId.eq(account))
            .order_by_asc(email::Column::CreatedAt)
            .all(&self.db)
            .await?;
        let endpoints = endpoint::Entity::find()
            .filter(endpoint::Column::AccountId.eq(account))
            .all(&self.db)
            .await?;
        Ok(serde_json::json!({
            "recipient": recipient.map(|r| serde_json::json!({
                "email": r.email,
                "display_name": r.display_name,
                "updated_at": r.updated_at,
            })),
            "notifications": notifications.iter().map(|n| serde_json::json!({
                "id": n.id,
                "event_type": n.event_type,
                "title": n.title,
                "body": n.body,
                "created_at": n.created_at,
                "read_at": n.read_at,
            })).collect::<Vec<_>>(),
            "email_preferences": preferences.iter().map(|p| serde_json::json!({
                "event_type": p.event_type,
                "email": p.email,
            })).collect::<Vec<_>>(),
            // A message that carries a token (a password reset, an address check) is listed
            // without its body: the export must not hand a stolen session the token.
            "emails": emails.iter().map(|e| serde_json::json!({
                "id": e.id,
                "template": e.template,
                "to": e.to_address,
                "subject": e.subject,
                "text_body": if domain::SECRET_BEARING.contains(&e.template.as_str()) {
                    None
                } else {
                    Some(&e.text_body)
                },
                "state": e.state,
                "created_at": e.created_at,
                "sent_at": e.sent_at,
            })).collect::<Vec<_>>(),
            "webhook_endpoints": endpoints.iter().map(|e| serde_json::json!({
                "id": e.id,
                "url": e.url,
                "event_types": e.event_types,
                "state": e.state,
                "created_at": e.created_at,
            })).collect::<Vec<_>>(),
        }))
    }
}
