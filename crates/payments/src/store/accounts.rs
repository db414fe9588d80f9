//! Creators' own gateway accounts: one row per seller, the key secret and webhook secret
//! encrypted for their row (AAD = table, column, row id), and [`Accounts`], which answers the
//! credentials an order, a checkout or a webhook needs (the platform's account when a store has
//! none of its own). Secrets are decrypted only into [`KeySecret`]s, whose Debug and Display
//! print `***`.
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    Set, TransactionTrait,
};
use thali_platform::{
    crypto::{CryptoError, DataKeys, Keyring, Place},
    db::{is_unique_violation, statement},
};
use uuid::Uuid;

use super::PaymentsStore;
use crate::{
    domain::{ACCOUNTS_TABLE, AccountSecrets, KEY_SECRET_COLUMN, PaymentsError, WEBHOOK_SECRET_COLUMN},
    gateway::{Credentials, KeySecret, PlatformAccount},
};

pub mod payment_account {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "payment_accounts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        #[sea_orm(unique)]
        pub seller_subject: String,
        pub username: String,
        pub key_id: String,
        #[sea_orm(column_type = "Text")]
        pub key_secret: String,
        #[sea_orm(column_type = "Text")]
        pub webhook_secret: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    // Ciphertext only, but still not for logs.
    impl std::fmt::Debug for Model {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PaymentAccount")
                .field("id", &self.id)
                .field("seller_subject", &self.seller_subject)
                .field("key_id", &self.key_id)
                .finish_non_exhaustive()
        }
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A connected account with its secrets decrypted (held as [`KeySecret`]s).
#[derive(Clone, Debug)]
pub struct ConnectedAccount {
    pub id: Uuid,
    pub seller_subject: String,
    pub username: String,
    pub credentials: Credentials,
    pub webhook_secret: KeySecret,
    /// The data key that encrypts the stored secrets.
    pub data_key_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn place<'a>(column: &'static str, id: &'a str) -> Place<'a> {
    Place {
        table: ACCOUNTS_TABLE,
        column,
        row: id,
    }
}

fn crypto(err: CryptoError) -> PaymentsError {
    // Names the failure (wrong key, altered value), never the value.
    tracing::error!(error = %err, "a stored payment account secret does not decrypt");
    PaymentsError::Internal(format!("payment account secret: {err}"))
}

fn open(keys: &Keyring, row: &payment_account::Model) -> Result<ConnectedAccount, PaymentsError> {
    let id = row.id.to_string();
    let secret = |column, stored: &str| -> Result<KeySecret, PaymentsError> {
        let plain = keys.decrypt(place(column, &id), stored).map_err(crypto)?;
        String::from_utf8(plain)
            .map(KeySecret::new)
            .map_err(|_| PaymentsError::Internal("a payment account secret is not UTF-8".into()))
    };
    Ok(ConnectedAccount {
        id: row.id,
        seller_subject: row.seller_subject.clone(),
        username: row.username.clone(),
        credentials: Credentials {
            key_id: row.key_id.clone(),
            key_secret: secret(KEY_SECRET_COLUMN, &row.key_secret)?,
        },
        webhook_secret: secret(WEBHOOK_SECRET_COLUMN, &row.webhook_secret)?,
        data_key_id: DataKeys::key_id_of(&row.key_secret).unwrap_or_default().to_owned(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// What one pass of [`PaymentsStore::rotate_accounts`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RotatedPage {
    /// Rows read.
    pub scanned: u64,
    /// Rows re-encrypted with the active key.
    pub rotated: u64,
    /// Where the next page starts; None when this was the last.
    pub next: Option<Uuid>,
}

impl PaymentsStore {
    /// Connects `secrets` as `seller`'s account (replacing one connected before): encrypted with
    /// the active data key for the row's id. Returns the account and whether it is new. Two
    /// connects at once for one seller end as one row (the seller is unique).
    pub async fn connect_account(
        &self,
        keys: &Keyring,
        seller: &str,
        username: &str,
        secrets: &AccountSecrets,
    ) -> Result<(ConnectedAccount, bool), PaymentsError> {
        for _ in 0..3 {
            let now = self.now();
            let existing = payment_account::Entity::find()
                .filter(payment_account::Column::SellerSubject.eq(seller))
                .one(&self.db)
                .await?;
            let id = existing.as_ref().map_or_else(Uuid::now_v7, |row| row.id);
            let row_id = id.to_string();
            let key_secret = keys
                .encrypt(place(KEY_SECRET_COLUMN, &row_id), secrets.key_secret.as_bytes())
                .map_err(crypto)?;
            let webhook_secret = keys
                .encrypt(place(WEBHOOK_SECRET_COLUMN, &row_id), secrets.webhook_secret.as_bytes())
                .map_err(crypto)?;
            let txn = self.db.begin().await?;
            let written = match existing {
                Some(row) => {
                    let mut update: payment_account::ActiveModel = row.into();
                    update.username = Set(username.to_owned());
                    update.key_id = Set(secrets.key_id.clone());
                    update.key_secret = Set(key_secret);
                    update.webhook_secret = Set(webhook_secret);
                    update.updated_at = Set(now);
                    update.update(&txn).await.map(|row| (row, false))
                }
                None => payment_account::ActiveModel {
                    id: Set(id),
                    seller_subject: Set(seller.to_owned()),
                    username: Set(username.to_owned()),
                    key_id: Set(secrets.key_id.clone()),
                    key_secret: Set(key_secret),
                    webhook_secret: Set(webhook_secret),
                    created_at: Set(now),
                    updated_at: Set(now),
                }
                .insert(&txn)
                .await
                .map(|row| (row, true)),
            };
            match written {
                Ok((row, created)) => {
                    // Where a seller's money goes is recorded with the change (ADR 0031); the
                    // secrets are not, the key id is public.
                    thali_platform::audit_log::record(
                        &txn,
                        crate::workers::SERVICE,
                        &thali_platform::audit_log::Entry::new(
                            super::refunds::audit_actor(seller),
                            if created {
                                "payment_account.connected"
                            } else {
                                "payment_account.replaced"
                            },
                            format!("payment_account:{}", row.id),
                        )
                        .with_details(serde_json::json!({"store": username, "key_id": row.key_id})),
                    )
                    .await?;
                    txn.commit().await?;
                    return Ok((open(keys, &row)?, created));
                }
                // Another connect for this seller inserted first: write over theirs.
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PaymentsError::Unavailable)
    }

    /// Records a data-key event of the operator's `thali keys rotate-data` in payments' audit
    /// trail (ADR 0031): `data_key.added` or `data_key.rotated`, with the key id and counts.
    pub async fn record_data_key_event(&self, action: &str, details: serde_json::Value) -> Result<(), PaymentsError> {
        thali_platform::audit_log::record(
            &self.db,
            crate::workers::SERVICE,
            &thali_platform::audit_log::Entry::new("operator", action, "data_keys").with_details(details),
        )
        .await?;
        Ok(())
    }

    /// `seller`'s connected account, decrypted; None when they use the platform's.
    pub async fn account_of_seller(
        &self,
        keys: &Keyring,
        seller: &str,
    ) -> Result<Option<ConnectedAccount>, PaymentsError> {
        payment_account::Entity::find()
            .filter(payment_account::Column::SellerSubject.eq(seller))
            .one(&self.db)
            .await?
            .map(|row| open(keys, &row))
            .transpose()
    }

    /// The connected account `id`, decrypted.
    pub async fn account(&self, keys: &Keyring, id: Uuid) -> Result<Option<ConnectedAccount>, PaymentsError> {
        payment_account::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .map(|row| open(keys, &row))
            .transpose()
    }

    /// How many accounts are connected (the rotation's progress total).
    pub async fn count_accounts(&self) -> Result<u64, PaymentsError> {
        Ok(payment_account::Entity::find().count(&self.db).await?)
    }

    /// Re-encrypts, with the active key, the secrets of up to `limit` accounts after `after` (by
    /// id) that another key encrypted. A row changed meanwhile (a creator connected new secrets,
    /// already under the active key) is left as it is: the update only applies to the values it
    /// read. A value that does not decrypt stops the rotation with its row's id.
    pub async fn rotate_accounts(
        &self,
        keys: &Keyring,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<RotatedPage, PaymentsError> {
        let mut query = payment_account::Entity::find().order_by_asc(payment_account::Column::Id);
        if let Some(after) = after {
            query = query.filter(payment_account::Column::Id.gt(after));
        }
        let rows = query.limit(limit).all(&self.db).await?;
        let active = keys.current();
        let mut page = RotatedPage {
            scanned: rows.len() as u64,
            next: (rows.len() as u64 == limit)
                .then(|| rows.last().map(|r| r.id))
                .flatten(),
            ..RotatedPage::default()
        };
        for row in rows {
            if !active.needs_rotation(&row.key_secret) && !active.needs_rotation(&row.webhook_secret) {
                continue;
            }
            let id = row.id.to_string();
            let again = |column, stored: &str| {
                keys.decrypt(place(column, &id), stored)
                    .and_then(|plain| active.encrypt(place(column, &id), &plain))
                    .map_err(|e| PaymentsError::Internal(format!("payment account {id}, {column}: {e}")))
            };
            let key_secret = again(KEY_SECRET_COLUMN, &row.key_secret)?;
            let webhook_secret = again(WEBHOOK_SECRET_COLUMN, &row.webhook_secret)?;
            let backend = self.db.get_database_backend();
            let done = self
                .db
                .execute_raw(statement(
                    backend,
                    "UPDATE payment_accounts SET key_secret = $1, webhook_secret = $2 \
                     WHERE id = $3 AND key_secret = $4 AND webhook_secret = $5",
                    vec![
                        key_secret.into(),
                        webhook_secret.into(),
                        row.id.into(),
                        row.key_secret.clone().into(),
                        row.webhook_secret.clone().into(),
                    ],
                ))
                .await?;
            page.rotated += done.rows_affected();
        }
        Ok(page)
    }
}

/// The gateway accounts payments acts with: the platform's, and creators' own (decrypted on use,
/// never cached in memory longer than a call).
#[derive(Clone, Debug)]
pub struct Accounts {
    pub platform: PlatformAccount,
    pub keys: Arc<Keyring>,
}

impl Accounts {
    pub fn new(platform: PlatformAccount, keys: Arc<Keyring>) -> Self {
        Self { platform, keys }
    }

    /// The credentials an order was created with: its connected account, or the platform's.
    pub async fn for_order(
        &self,
        store: &PaymentsStore,
        payment_account: Option<Uuid>,
    ) -> Result<Credentials, PaymentsError> {
        let Some(id) = payment_account else {
            return Ok(self.platform.credentials.clone());
        };
        store
            .account(&self.keys, id)
            .await?
            .map(|a| a.credentials)
            .ok_or_else(|| PaymentsError::Internal(format!("order's payment account {id} is gone")))
    }
}
