//! The ledger's schema, versioned.
//!
//! `esi_schema_version` holds one row per migration applied (`version`, `applied_at`);
//! the schema's version is the highest. [`migrate`] runs at every connect, in one
//! transaction under a transaction-scoped advisory lock ([`LOCK_KEY`]), so replicas
//! starting together apply each migration once and the others wait, then find nothing to
//! do; PostgreSQL's DDL is transactional, so a failed migration leaves the previous
//! version whole. A database whose version is above what this build knows (a newer
//! release migrated it) is refused: this build would misread what it does not know.
//!
//! Migrations are only ever appended. Migration 1 is the table and indexes the ledger
//! created before migrations existed, with `IF NOT EXISTS`, so such a database is adopted
//! as version 1 with its rows.

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::{LedgerError, db_error};

/// Migration `i + 1` is `MIGRATIONS[i]`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the ledger of the first release (verbatim).
    "
CREATE TABLE IF NOT EXISTS esi_credentials (
    id TEXT PRIMARY KEY,
    owner_federation TEXT NOT NULL,
    owner_namespace TEXT NOT NULL,
    owner_kind TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    due_at BIGINT,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS esi_credentials_owner
    ON esi_credentials (owner_federation, owner_namespace, owner_kind, owner_name);
CREATE INDEX IF NOT EXISTS esi_credentials_due
    ON esi_credentials (due_at) WHERE due_at IS NOT NULL;
",
];

/// The advisory lock serialising migrations (per database): "esi-ledger" in ASCII.
pub(super) const LOCK_KEY: i64 = 0x6573_692d_6c65_6467;

/// How long a replica waits for another one's migration before giving up.
pub(super) const LOCK_TIMEOUT_SECS: u32 = 60;

/// The schema version this build writes and reads.
pub(super) fn latest() -> i32 {
    i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX)
}

/// Brings the database to [`latest`] (see the module documentation) and returns the
/// version found before. Errors: a newer database, the lock not had within
/// [`LOCK_TIMEOUT_SECS`], or any statement failing (the transaction is then rolled back).
pub(super) async fn migrate(client: &mut Client) -> Result<i32, LedgerError> {
    let txn = client.transaction().await.map_err(db_error)?;
    txn.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT_SECS}s'"))
        .await
        .map_err(db_error)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                LedgerError::Storage(format!(
                    "another server held the ledger's schema migration lock for over {LOCK_TIMEOUT_SECS} s; try again (a migration still running, or a session stuck holding advisory lock {LOCK_KEY})"
                ))
            } else {
                db_error(e)
            }
        })?;
    let exists: bool = txn
        .query_one("SELECT to_regclass('esi_schema_version') IS NOT NULL", &[])
        .await
        .map_err(db_error)?
        .get(0);
    if !exists {
        txn.batch_execute(
            "CREATE TABLE esi_schema_version (
                version INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(db_error)?;
    }
    let found: i32 = txn
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM esi_schema_version",
            &[],
        )
        .await
        .map_err(db_error)?
        .get(0);
    if found > latest() {
        return Err(LedgerError::Storage(format!(
            "the ledger database's schema is at version {found}, newer than this esi-server knows ({}): a newer release migrated it. Run that release or a later one; this one would misread the ledger",
            latest()
        )));
    }
    for (version, sql) in (1_i32..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        txn.batch_execute(sql).await.map_err(db_error)?;
        txn.execute(
            "INSERT INTO esi_schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(db_error)?;
    }
    txn.commit().await.map_err(db_error)?;
    Ok(found)
}
