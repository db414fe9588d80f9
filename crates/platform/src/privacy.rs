//! Personal data (ADR 0032): what every service does for an account's export and erasure.
//!
//! - **Export**: each service implements [`PersonalData`]; every process serves
//!   `thali.privacy.v1.PersonalDataService` for the services it runs ([`grpc::server`]). The caller
//!   is the account itself, so no one exports another account's data.
//! - **Erasure**: identity anonymises the account and publishes `account.erased` (no personal
//!   data in it); every other service anonymises its own rows in the transaction that accepts the
//!   event. [`erased_handle`] gives the same pseudonym for a store's name in every service, and
//!   [`forget_delivered_events`] removes delivered outbox rows whose payloads carried the account's
//!   fields.
use std::{collections::HashMap, sync::Arc};

use sea_orm::{ConnectionTrait, DbErr};
use uuid::Uuid;

/// Metadata naming the service an export is asked of: one process may host several, and the
/// service token is addressed to this one.
pub const SERVICE_HEADER: &str = "x-thali-privacy-service";

/// The event type identity publishes when an account is erased.
pub const ERASED: &str = "account.erased";

/// What one service holds about an account.
#[tonic::async_trait]
pub trait PersonalData: Send + Sync + 'static {
    /// Everything this service holds about `account`, as one JSON object (one member per kind of
    /// record; secrets and other accounts' data left out).
    async fn export(&self, account: Uuid) -> Result<serde_json::Value, DbErr>;
}

/// The pseudonym that replaces a public name (a store's username) of an erased account: the
/// same in every service that keeps the name, so their records still match, and no longer the
/// name. `erased-` and 16 hex digits: a valid username (3–30 of `a-z0-9_-`).
pub fn erased_handle(account: Uuid, name: &str) -> String {
    let digest = crate::idempotency::sha256_hex(format!("{account}:{name}").as_bytes());
    format!("erased-{}", &digest[..16])
}

/// Deletes `service`'s delivered events (relay jobs done or dead) about `aggregates`, such as
/// `account:<id>` or `booking:<id>`: their payloads carried the personal fields an erasure
/// removes. Events still queued or being delivered are left to finish (the queue's housekeeping
/// deletes them [`crate::jobs::DONE_RETENTION_DAYS`] days after). One statement per 500
/// aggregates. Returns how many.
pub async fn forget_delivered_events<C: ConnectionTrait>(
    conn: &C,
    service: &str,
    aggregates: &[String],
) -> Result<u64, DbErr> {
    let mut deleted = 0;
    for batch in aggregates.chunks(500) {
        let mut values: Vec<sea_orm::Value> = vec![service.into(), crate::events::RELAY_KIND.into()];
        values.extend(
            batch
                .iter()
                .map(|a| sea_orm::Value::from(crate::events::ordering_key(a))),
        );
        let keys: Vec<String> = (3..=values.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "DELETE FROM jobs WHERE service = $1 AND kind = $2 AND state IN ('done', 'dead') \
             AND ordering_key IN ({})",
            keys.join(", ")
        );
        let stmt = crate::db::statement(conn.get_database_backend(), &sql, values);
        deleted += conn.execute_raw(stmt).await?.rows_affected();
    }
    Ok(deleted)
}

/// The services whose personal data a process answers for, by name.
#[derive(Clone, Default)]
pub struct Exporters {
    by_name: HashMap<&'static str, Arc<dyn PersonalData>>,
}

impl Exporters {
    /// Answers exports of `service` with `exporter`.
    pub fn with(mut self, service: &'static str, exporter: Arc<dyn PersonalData>) -> Self {
        self.by_name.insert(service, exporter);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    fn names(&self) -> String {
        let mut names: Vec<&str> = self.by_name.keys().copied().collect();
        names.sort_unstable();
        names.join(", ")
    }
}

pub mod grpc {
    use thali_proto::privacy::v1::{
        self as pb,
        personal_data_service_server::{PersonalDataService, PersonalDataServiceServer},
    };
    use tonic::{Code, Request, Response, Status};
    use uuid::Uuid;

    use super::Exporters;
    use crate::errors::{self, Violation};

    pub struct PersonalDataGrpc {
        exporters: Exporters,
    }

    /// The service answering for `exporters`.
    pub fn server(exporters: Exporters) -> PersonalDataServiceServer<PersonalDataGrpc> {
        PersonalDataServiceServer::new(PersonalDataGrpc { exporters })
    }

    #[tonic::async_trait]
    impl PersonalDataService for PersonalDataGrpc {
        async fn export_personal_data(
            &self,
            request: Request<pb::ExportPersonalDataRequest>,
        ) -> Result<Response<pb::ExportPersonalDataResponse>, Status> {
            // The account itself, signed in: a partner key acts for its owner only within its
            // scopes, and no scope reads everything.
            let account = match crate::server::principal(&request) {
                Some(p) if p.api_key.is_none() => Uuid::parse_str(&p.subject).ok(),
                Some(p) => {
                    crate::audit::access_denied(p, "ExportPersonalData", "partner API keys cannot export");
                    return Err(errors::with_reason(
                        Code::PermissionDenied,
                        "SIGNED_IN_ACCOUNT_REQUIRED",
                        "only the account itself, signed in, exports its data",
                    ));
                }
                None => None,
            };
            let Some(account) = account else {
                return Err(errors::with_reason(
                    Code::Unauthenticated,
                    "SIGN_IN_REQUIRED",
                    "sign in to export your data",
                ));
            };
            let misaddressed = crate::server::addressed_elsewhere(
                request.metadata(),
                super::SERVICE_HEADER,
                &request.get_ref().service,
            );
            let req = request.into_inner();
            let mut bad: Vec<Violation> = misaddressed.into_iter().collect();
            let exporter = self.exporters.by_name.get(req.service.as_str());
            let Some(exporter) = exporter.filter(|_| bad.is_empty()) else {
                if bad.is_empty() {
                    bad.push(Violation::new(
                        "service",
                        format!("must be one of: {}", self.exporters.names()),
                    ));
                }
                return Err(errors::invalid_argument(&bad));
            };
            let data = exporter.export(account).await.map_err(|e| {
                tracing::warn!(service = %req.service, error = %e, "personal data export failed");
                errors::unavailable(
                    "DATABASE_UNAVAILABLE",
                    "the export cannot be read now",
                    std::time::Duration::from_secs(1),
                )
            })?;
            Ok(Response::new(pb::ExportPersonalDataResponse {
                service: req.service,
                json: data.to_string(),
            }))
        }
    }
}
