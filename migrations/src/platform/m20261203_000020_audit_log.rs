//! The audit trail (ADR 0031): `audit_pending` takes records in the transactions of the changes
//! they describe; one writer per service moves them into `audit_log`, the hash chain, which
//! refuses UPDATE and DELETE (and TRUNCATE on PostgreSQL) by trigger. (service, seq) is the
//! primary key: one chain per service, no fork.
use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &[&str] = &[
    "CREATE TABLE audit_pending (
        id BIGSERIAL PRIMARY KEY,
        service VARCHAR(40) NOT NULL,
        at TIMESTAMPTZ NOT NULL,
        actor VARCHAR(200) NOT NULL,
        actor_address VARCHAR(64) NOT NULL,
        action VARCHAR(80) NOT NULL,
        target VARCHAR(200) NOT NULL,
        details TEXT NOT NULL
    )",
    "CREATE INDEX idx_audit_pending_service ON audit_pending (service, id)",
    "CREATE TABLE audit_log (
        service VARCHAR(40) NOT NULL,
        seq BIGINT NOT NULL CHECK (seq >= 1),
        at TIMESTAMPTZ NOT NULL,
        actor VARCHAR(200) NOT NULL,
        actor_address VARCHAR(64) NOT NULL,
        action VARCHAR(80) NOT NULL,
        target VARCHAR(200) NOT NULL,
        details TEXT NOT NULL,
        prev_hash CHAR(64) NOT NULL,
        hash CHAR(64) NOT NULL,
        PRIMARY KEY (service, seq)
    )",
    "CREATE INDEX idx_audit_log_at ON audit_log (at)",
    "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
        RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
     END $$",
    "CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
     FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
    "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
     FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
];

const SQLITE: &[&str] = &[
    "CREATE TABLE audit_pending (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        actor_address TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        details TEXT NOT NULL
    )",
    "CREATE INDEX idx_audit_pending_service ON audit_pending (service, id)",
    "CREATE TABLE audit_log (
        service TEXT NOT NULL,
        seq INTEGER NOT NULL CHECK (seq >= 1),
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        actor_address TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (service, seq)
    )",
    "CREATE INDEX idx_audit_log_at ON audit_log (at)",
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
     BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused'); END",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
     BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = match manager.get_database_backend() {
            DbBackend::Postgres => POSTGRES,
            _ => SQLITE,
        };
        let db = manager.get_connection();
        for sql in statements {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE audit_log").await?;
        db.execute_unprepared("DROP TABLE audit_pending").await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared("DROP FUNCTION audit_log_append_only()").await?;
        }
        Ok(())
    }
}
