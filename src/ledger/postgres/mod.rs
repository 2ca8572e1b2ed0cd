//! The ledger in PostgreSQL, for several replicas outside Kubernetes (issue 10): every
//! replica sees every issued credential, so a `DELETE` or a renewal may reach another
//! replica than the `POST` did, and any replica's sweeper revokes what is due.
//!
//! One table, `esi_credentials`: the entry as JSON (it holds revocation state: treat the
//! database like the redb file, private to the servers), its owner's columns (indexed for
//! revoke-by-owner) and its due time (indexed for the sweeper). Every write is one
//! statement or one transaction, so it is durable when it returns. Changes of an entry
//! read it under a row lock (`SELECT … FOR UPDATE`) in the transaction that writes it, so
//! of two replicas claiming one entry exactly one gets it ([`Ledger::claim`]).
//!
//! - Connection string and TLS: [`conninfo`] (libpq's forms; `sslmode=verify-full` by
//!   default for any host that is not loopback or a Unix socket, plaintext refused there).
//! - Schema: versioned migrations applied at connect under an advisory lock
//!   (`migrate.rs`); a database newer than this build is refused.
//! - Connections: a pool of at most [`POOL_SIZE`] per replica. A call waits at most
//!   [`ACQUIRE_TIMEOUT`] for a free connection; each connection is checked with an empty
//!   query before it is handed out, and one that broke (server restart, failover,
//!   `pg_terminate_backend`) is dropped and replaced by a new one.

pub mod conninfo;
mod migrate;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio_postgres::NoTls;

pub use conninfo::{CONNECT_TIMEOUT, ConnInfoError, TlsMode};

use super::{Ledger, LedgerEntry, LedgerError, Owner, OwnerKind};

/// Connections one replica keeps open at most (each ledger call holds one for its
/// duration; the sweeper and the API share them).
pub const POOL_SIZE: usize = 8;

/// How long a call waits for one of the [`POOL_SIZE`] connections to be free.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long opening a pooled connection may take in all (every host of the string tried,
/// each within its `connect_timeout`, default [`CONNECT_TIMEOUT`]).
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the check of an idle connection (an empty query) may take before it is
/// dropped as broken.
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL ledger: a bounded connection pool on a migrated database.
pub struct PostgresLedger {
    pool: Pool,
    tls: TlsMode,
}

impl std::fmt::Debug for PostgresLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pool's configuration holds the password: only the TLS mode is shown.
        f.debug_struct("PostgresLedger")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A driver error as a ledger error: the server's severity, message and SQLSTATE (never
/// its DETAIL, which may quote row values), or the error with its causes (I/O, TLS: e.g.
/// rustls' certificate verdict). tokio-postgres' messages hold no password.
pub(super) fn db_error(e: tokio_postgres::Error) -> LedgerError {
    if let Some(db) = e.as_db_error() {
        return LedgerError::Storage(format!(
            "database {}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ));
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    if text.contains("UnknownIssuer") {
        text.push_str(
            " (the server's certificate does not chain to sslrootcert, or to the webpki roots when it is not set)",
        );
    }
    LedgerError::Storage(text)
}

fn pool_error(e: PoolError) -> LedgerError {
    use deadpool_postgres::TimeoutType;
    match e {
        PoolError::Backend(e) => db_error(e),
        PoolError::Timeout(TimeoutType::Wait) => LedgerError::Storage(format!(
            "no free ledger database connection within {} s (all {POOL_SIZE} busy)",
            ACQUIRE_TIMEOUT.as_secs()
        )),
        PoolError::Timeout(TimeoutType::Create) => LedgerError::Storage(format!(
            "opening a ledger database connection took over {} s",
            CREATE_TIMEOUT.as_secs()
        )),
        PoolError::Timeout(TimeoutType::Recycle) => LedgerError::Storage(format!(
            "checking a pooled ledger database connection took over {} s",
            RECYCLE_TIMEOUT.as_secs()
        )),
        other => LedgerError::Storage(format!("ledger connection pool: {other}")),
    }
}

/// Seconds since the epoch as PostgreSQL's BIGINT (saturating: a due time past 2^63 s is
/// never reached anyway).
fn db_time(at: u64) -> i64 {
    i64::try_from(at).unwrap_or(i64::MAX)
}

fn encode(entry: &LedgerEntry) -> Result<String, LedgerError> {
    serde_json::to_string(entry).map_err(|e| LedgerError::Codec(e.to_string()))
}

fn decode(text: &str) -> Result<LedgerEntry, LedgerError> {
    // serde_json's message names a position, never the content.
    serde_json::from_str(text).map_err(|e| LedgerError::Codec(e.to_string()))
}

impl PostgresLedger {
    /// Connects to `url` (libpq's URL or key=value form; TLS options and the rules for
    /// them in [`conninfo`]), brings the schema to this build's version, and returns the
    /// ledger. Errors (`LedgerError::Storage`, never quoting the URL): a refused or
    /// unparsable string, an unreadable certificate file, the database unreachable, the
    /// TLS handshake failing (e.g. an unknown issuer or a name mismatch), authentication
    /// failing, or a database schema newer than this build.
    pub async fn connect(url: &str) -> Result<Self, LedgerError> {
        let target = conninfo::parse(url).map_err(|e| LedgerError::Storage(e.to_string()))?;
        let settings = ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        };
        let manager = match target.tls {
            None => Manager::from_config(target.config, NoTls, settings),
            Some(tls) => Manager::from_config(
                target.config,
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                settings,
            ),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(ACQUIRE_TIMEOUT))
            .create_timeout(Some(CREATE_TIMEOUT))
            .recycle_timeout(Some(RECYCLE_TIMEOUT))
            .build()
            .map_err(|e| LedgerError::Storage(format!("ledger connection pool: {e}")))?;
        let ledger = PostgresLedger {
            pool,
            tls: target.mode,
        };
        let mut client = ledger.client().await?;
        let found = migrate::migrate(&mut client).await?;
        drop(client);
        tracing::info!(
            tls = ledger.tls.as_str(),
            schema_version = migrate::latest(),
            migrated_from = found,
            pool_size = POOL_SIZE,
            "PostgreSQL ledger connected"
        );
        Ok(ledger)
    }

    /// Whether this replica's session to the server uses TLS, and the client
    /// certificate's subject the server saw (`pg_stat_ssl`).
    #[cfg(test)]
    async fn session_tls(&self) -> (bool, Option<String>) {
        let rows = self
            .query(
                "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        (rows[0].get(0), rows[0].get(1))
    }

    /// A pooled connection (waiting at most [`ACQUIRE_TIMEOUT`] for one).
    async fn client(&self) -> Result<Object, LedgerError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Reads the entry `id` under a row lock, lets `change` modify it (or refuse: false),
    /// and writes it back with its due time, in one transaction. `None`: no such entry;
    /// `Some` with the entry as written, or as found when `change` refused (then `false`).
    async fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut LedgerEntry) -> bool,
    ) -> Result<Option<(bool, LedgerEntry)>, LedgerError> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(db_error)?;
        let select = txn
            .prepare_cached("SELECT entry FROM esi_credentials WHERE id = $1 FOR UPDATE")
            .await
            .map_err(db_error)?;
        let row = txn.query_opt(&select, &[&id]).await.map_err(db_error)?;
        let Some(row) = row else {
            txn.rollback().await.map_err(db_error)?;
            return Ok(None);
        };
        let current = decode(row.get::<_, &str>(0))?;
        let mut entry = current.clone();
        if !change(&mut entry) {
            txn.rollback().await.map_err(db_error)?;
            return Ok(Some((false, current)));
        }
        let due = entry.due_at().map(db_time);
        let write = txn
            .prepare_cached("UPDATE esi_credentials SET entry = $2, due_at = $3 WHERE id = $1")
            .await
            .map_err(db_error)?;
        txn.execute(&write, &[&id, &encode(&entry)?, &due])
            .await
            .map_err(db_error)?;
        txn.commit().await.map_err(db_error)?;
        Ok(Some((true, entry)))
    }

    /// Runs one statement on a pooled connection (prepared once per connection).
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, LedgerError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(db_error)?;
        client.query(&statement, params).await.map_err(db_error)
    }

    /// Like [`Self::query`], for statements without rows: the number of rows changed.
    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, LedgerError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(db_error)?;
        client.execute(&statement, params).await.map_err(db_error)
    }
}

fn entries(rows: Vec<tokio_postgres::Row>) -> Result<Vec<LedgerEntry>, LedgerError> {
    rows.iter().map(|r| decode(r.get::<_, &str>(0))).collect()
}

#[async_trait::async_trait]
impl Ledger for PostgresLedger {
    async fn record(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        let owner = entry.holder.owner();
        let kind = owner.kind.unwrap_or(OwnerKind::ServiceAccount).as_str();
        self.execute(
            "INSERT INTO esi_credentials \
             (id, owner_federation, owner_namespace, owner_kind, owner_name, due_at, entry) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &entry.id,
                &owner.federation,
                &owner.namespace,
                &kind,
                &owner.name,
                &entry.due_at().map(db_time),
                &encode(entry)?,
            ],
        )
        .await?;
        Ok(())
    }

    async fn by_owner(&self, owner: &Owner) -> Result<Vec<LedgerEntry>, LedgerError> {
        let kinds: Vec<&str> = match owner.kind {
            Some(k) => vec![k.as_str()],
            None => vec![OwnerKind::Pod.as_str(), OwnerKind::ServiceAccount.as_str()],
        };
        let rows = self
            .query(
                "SELECT entry FROM esi_credentials WHERE owner_federation = $1 \
                 AND owner_namespace = $2 AND owner_kind = ANY($3) AND owner_name = $4 ORDER BY id",
                &[&owner.federation, &owner.namespace, &kinds, &owner.name],
            )
            .await?;
        entries(rows)
    }

    async fn due(&self, now: u64, limit: usize) -> Result<Vec<LedgerEntry>, LedgerError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "SELECT entry FROM esi_credentials WHERE due_at <= $1 ORDER BY due_at, id LIMIT $2",
                &[&db_time(now), &limit],
            )
            .await?;
        entries(rows)
    }

    async fn remove(&self, id: &str) -> Result<bool, LedgerError> {
        let n = self
            .execute("DELETE FROM esi_credentials WHERE id = $1", &[&id])
            .await?;
        Ok(n > 0)
    }

    async fn mark_retry(&self, id: &str, retry_at: u64, error: &str) -> Result<(), LedgerError> {
        self.update(id, |e| e.take_failure(retry_at, error))
            .await
            .map(drop)
    }

    async fn claim(
        &self,
        id: &str,
        now: u64,
        until: u64,
        only_if_due: bool,
    ) -> Result<Option<LedgerEntry>, LedgerError> {
        let outcome = self
            .update(id, |e| e.take_claim(now, until, only_if_due))
            .await?;
        Ok(outcome.and_then(|(taken, e)| taken.then_some(e)))
    }

    async fn get(&self, id: &str) -> Result<Option<LedgerEntry>, LedgerError> {
        let rows = self
            .query("SELECT entry FROM esi_credentials WHERE id = $1", &[&id])
            .await?;
        rows.first()
            .map(|r| decode(r.get::<_, &str>(0)))
            .transpose()
    }

    async fn renewed(
        &self,
        id: &str,
        expires_at: u64,
        renewable: bool,
    ) -> Result<bool, LedgerError> {
        let outcome = self
            .update(id, |e| e.take_renewal(expires_at, renewable))
            .await?;
        Ok(outcome.is_some_and(|(written, _)| written))
    }

    async fn count(&self) -> Result<usize, LedgerError> {
        let rows = self
            .query("SELECT count(*) FROM esi_credentials", &[])
            .await?;
        let n = rows.first().map_or(0, |r| r.get::<_, i64>(0));
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Holder;
    use super::super::test_support::{entry, identity, oidc_identity};
    use super::*;

    use tokio_postgres::{Client, Config};

    /// A fresh database on the PostgreSQL of `scripts/postgres.sh` (from `scripts/test.sh`).
    struct TestDb {
        user: String,
        password: String,
        port: String,
        name: String,
    }

    impl TestDb {
        /// Creates it, or None with a notice when PostgreSQL is not running.
        async fn create() -> Option<TestDb> {
            let var = |k: &str| std::env::var(k).ok();
            let (Some(port), Some(user), Some(password)) = (
                var("ESI_TEST_PG_PORT"),
                var("ESI_TEST_PG_USER"),
                var("ESI_TEST_PG_PASSWORD"),
            ) else {
                assert_ne!(
                    var("ESI_REQUIRE_BACKENDS").as_deref(),
                    Some("1"),
                    "PostgreSQL is required but ESI_TEST_PG_PORT is not set"
                );
                eprintln!("skipped: PostgreSQL not running (run scripts/test.sh)");
                return None;
            };
            let name = format!("esi_ledger_{}", uuid::Uuid::new_v4().simple());
            let db = TestDb {
                user,
                password,
                port,
                name: "postgres".into(),
            };
            db.admin()
                .await
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            Some(TestDb { name, ..db })
        }

        /// Its URL through `host`, with `query` (`key=value&…`) appended.
        fn url_via(&self, host: &str, query: &str) -> String {
            let TestDb {
                user,
                password,
                port,
                name,
            } = self;
            let mut url = format!("postgresql://{user}:{password}@{host}:{port}/{name}");
            if !query.is_empty() {
                url.push('?');
                url.push_str(query);
            }
            url
        }

        fn url(&self) -> String {
            self.url_via("127.0.0.1", "")
        }

        /// A plain connection of the superuser to the `postgres` database, for setting up
        /// and looking on.
        async fn admin(&self) -> Client {
            let (client, conn) = format!(
                "host=127.0.0.1 port={} user={} password={} dbname=postgres",
                self.port, self.user, self.password
            )
            .parse::<Config>()
            .unwrap()
            .connect(NoTls)
            .await
            .unwrap();
            tokio::spawn(conn);
            client
        }

        /// A plain connection to this database.
        async fn direct(&self) -> Client {
            let (client, conn) = self
                .url()
                .parse::<Config>()
                .unwrap()
                .connect(NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
        }

        /// Server sessions open on this database (the admin's is on `postgres`).
        async fn sessions(&self, admin: &Client) -> i64 {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                    &[&self.name],
                )
                .await
                .unwrap()
                .get(0)
        }

        /// The schema versions recorded.
        async fn versions(&self) -> Vec<i32> {
            self.direct()
                .await
                .query(
                    "SELECT version FROM esi_schema_version ORDER BY version",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        }
    }

    async fn database() -> Option<String> {
        TestDb::create().await.map(|db| db.url())
    }

    fn holder(ns: &str, sa: &str, pod: Option<&str>) -> Holder {
        Holder::new(&identity("alpha", ns, sa, pod), None)
    }

    #[tokio::test]
    async fn records_finds_and_removes_across_connections() {
        let Some(url) = database().await else {
            return;
        };
        let ledger = PostgresLedger::connect(&url).await.unwrap();
        let h = holder("apps", "app", Some("app-1"));
        let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), Some(2_000));
        ledger.record(&e).await.unwrap();
        // Another replica sees it.
        let other = PostgresLedger::connect(&url).await.unwrap();
        assert_eq!(other.count().await.unwrap(), 1);
        assert_eq!(other.get(&e.id).await.unwrap(), Some(e.clone()));
        assert_eq!(other.by_owner(&h.owner()).await.unwrap(), vec![e.clone()]);
        assert_eq!(other.due(2_000, 10).await.unwrap(), vec![e.clone()]);
        assert!(other.due(1_999, 10).await.unwrap().is_empty());
        // One of two racing removals wins.
        assert!(ledger.remove(&e.id).await.unwrap());
        assert!(!other.remove(&e.id).await.unwrap());
        assert_eq!(other.get(&e.id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn owners_are_scoped_exactly() {
        let Some(url) = database().await else {
            return;
        };
        let ledger = PostgresLedger::connect(&url).await.unwrap();
        let pod = holder("apps", "app", Some("app-pod"));
        let sa_named_like_pod = holder("apps", "app-pod", None);
        let other_ns = holder("other", "app", Some("app-pod"));
        let a = entry(&pod, ("apps", "VaultDynamicSecret", "db"), None);
        let b = entry(
            &sa_named_like_pod,
            ("apps", "VaultDynamicSecret", "db"),
            None,
        );
        let c = entry(&other_ns, ("other", "VaultDynamicSecret", "db"), None);
        for e in [&a, &b, &c] {
            ledger.record(e).await.unwrap();
        }
        assert_eq!(
            ledger.by_owner(&pod.owner()).await.unwrap(),
            vec![a.clone()]
        );
        assert_eq!(
            ledger.by_owner(&sa_named_like_pod.owner()).await.unwrap(),
            vec![b.clone()]
        );
        // ESE's plain owner name selects the pod and the ServiceAccount of that name.
        let both = Owner::from_ese("alpha".into(), "apps".into(), "app-pod");
        let mut found = ledger.by_owner(&both).await.unwrap();
        found.sort_by(|x, y| x.id.cmp(&y.id));
        let mut want = vec![a, b];
        want.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(found, want);
        // An OIDC subject (issue 18) is its own owner: never a Pod's or ServiceAccount's.
        let ci = Holder::new(&oidc_identity("alpha", "app-pod"), None);
        let d = entry(&ci, ("apps", "VaultDynamicSecret", "db"), None);
        ledger.record(&d).await.unwrap();
        assert_eq!(ledger.by_owner(&ci.owner()).await.unwrap(), vec![d]);
        assert_eq!(ledger.by_owner(&both).await.unwrap().len(), 2);
        let ese = Owner::from_ese("alpha".into(), String::new(), "app-pod");
        assert!(ledger.by_owner(&ese).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn retries_and_renewals_move_the_due_time() {
        let Some(url) = database().await else {
            return;
        };
        let ledger = PostgresLedger::connect(&url).await.unwrap();
        let h = holder("apps", "app", None);
        let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), Some(2_000));
        ledger.record(&e).await.unwrap();
        assert!(ledger.renewed(&e.id, 5_000, false).await.unwrap());
        assert!(ledger.due(4_999, 10).await.unwrap().is_empty());
        let due = ledger.due(5_000, 10).await.unwrap();
        assert_eq!((due[0].expires_at, due[0].renewable), (Some(5_000), false));
        ledger.mark_retry(&e.id, 3_000, "down").await.unwrap();
        let due = ledger.due(3_000, 10).await.unwrap();
        assert_eq!((due[0].attempts, due[0].retry_at), (1, Some(3_000)));
        assert_eq!(due[0].last_error.as_deref(), Some("down"));
        assert!(ledger.remove(&e.id).await.unwrap());
        assert!(!ledger.renewed(&e.id, 9_000, true).await.unwrap());
        ledger.mark_retry(&e.id, 1, "gone").await.unwrap();
        assert_eq!(ledger.count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn claims_are_exclusive_across_connections() {
        let Some(url) = database().await else {
            return;
        };
        // Two connections: two replicas.
        let a = PostgresLedger::connect(&url).await.unwrap();
        let b = PostgresLedger::connect(&url).await.unwrap();
        super::super::test_support::claims_are_exclusive(&a).await;
        let holder = Holder::new(&identity("a", "n", "s", Some("p")), None);
        let due = entry(&holder, ("n", "VaultDynamicSecret", "db"), Some(1));
        a.record(&due).await.unwrap();
        let (x, y) = tokio::join!(
            a.claim(&due.id, 100, 200, true),
            b.claim(&due.id, 100, 200, true)
        );
        assert!(
            x.unwrap().is_some() != y.unwrap().is_some(),
            "one replica wins"
        );
    }

    #[tokio::test]
    async fn remote_hosts_are_refused_without_verified_tls() {
        // Refused before any connection is attempted (nothing leaves the machine).
        for url in [
            "postgresql://u:pw-1@db.example.com/ledger?sslmode=disable",
            "postgresql://u:pw-1@10.0.0.5:5432/ledger?sslmode=prefer",
            "postgresql://u:pw-1@10.0.0.5:5432/ledger?sslmode=require",
            "host=db.example.com user=u password=pw-1 dbname=ledger sslmode=allow",
            "host=localhost hostaddr=10.0.0.5 user=u password=pw-1 sslmode=disable",
            "not a url at all ::",
        ] {
            // Never a connection attempt from this test: the string itself is refused.
            assert!(conninfo::parse(url).is_err(), "{url}");
            let err = PostgresLedger::connect(url).await.unwrap_err().to_string();
            assert!(!err.contains("pw-1"), "{err}");
            assert!(
                err.contains("clear text")
                    || err.contains("require")
                    || err.contains("cannot be parsed"),
                "{url}: {err}"
            );
        }
    }

    /// Today's table and indexes as the ledger created them before migrations existed
    /// (copied, not shared with the migration: this is the database found in the field).
    const BEFORE_MIGRATIONS: &str = "
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
    ";

    #[tokio::test]
    async fn an_empty_database_is_migrated_once() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let ledger = PostgresLedger::connect(&db.url()).await.unwrap();
        assert_eq!(db.versions().await, vec![1]);
        let indexes: Vec<String> = db
            .direct()
            .await
            .query(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'esi_credentials' ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            indexes,
            [
                "esi_credentials_due",
                "esi_credentials_owner",
                "esi_credentials_pkey"
            ]
        );
        assert_eq!(ledger.count().await.unwrap(), 0);
        drop(ledger);
        PostgresLedger::connect(&db.url()).await.unwrap();
        assert_eq!(db.versions().await, vec![1], "nothing applied twice");
    }

    #[tokio::test]
    async fn a_database_from_before_migrations_keeps_its_entries() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let direct = db.direct().await;
        direct.batch_execute(BEFORE_MIGRATIONS).await.unwrap();
        let h = holder("apps", "app", Some("app-1"));
        let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), Some(2_000));
        direct
            .execute(
                "INSERT INTO esi_credentials \
                 (id, owner_federation, owner_namespace, owner_kind, owner_name, due_at, entry) \
                 VALUES ($1, 'alpha', 'apps', 'pod', 'app-1', 2000, $2)",
                &[&e.id, &serde_json::to_string(&e).unwrap()],
            )
            .await
            .unwrap();
        let ledger = PostgresLedger::connect(&db.url()).await.unwrap();
        assert_eq!(db.versions().await, vec![1]);
        assert_eq!(ledger.get(&e.id).await.unwrap(), Some(e.clone()));
        assert_eq!(ledger.by_owner(&h.owner()).await.unwrap(), vec![e.clone()]);
        assert_eq!(ledger.due(2_000, 10).await.unwrap(), vec![e.clone()]);
        assert!(
            ledger
                .claim(&e.id, 2_000, 2_060, true)
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn replicas_starting_together_migrate_once() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let url = db.url();
        let connects = (0..4).map(|_| PostgresLedger::connect(&url));
        for ledger in futures_util::future::join_all(connects).await {
            ledger.unwrap();
        }
        assert_eq!(db.versions().await, vec![1]);
    }

    #[tokio::test]
    async fn a_database_newer_than_this_build_is_refused() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        PostgresLedger::connect(&db.url()).await.unwrap();
        let newer = migrate::latest() + 1;
        db.direct()
            .await
            .execute(
                "INSERT INTO esi_schema_version (version) VALUES ($1)",
                &[&newer],
            )
            .await
            .unwrap();
        let err = PostgresLedger::connect(&db.url())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "version {newer}, newer than this esi-server knows"
            )),
            "{err}"
        );
        assert!(!err.contains(&db.password), "{err}");
    }

    #[tokio::test]
    async fn the_pool_serves_concurrent_records_and_claims_within_its_bound() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let (a, b) = (
            PostgresLedger::connect(&db.url()).await.unwrap(),
            PostgresLedger::connect(&db.url()).await.unwrap(),
        );
        let h = holder("apps", "app", None);
        let all: Vec<LedgerEntry> = (0..50)
            .map(|_| entry(&h, ("apps", "VaultDynamicSecret", "db"), Some(1)))
            .collect();
        let records = all.iter().map(|e| a.record(e));
        for done in futures_util::future::join_all(records).await {
            done.unwrap();
        }
        assert_eq!(b.count().await.unwrap(), 50);
        // Every entry claimed by both replicas at once: exactly one wins each.
        let claims = all.iter().map(|e| async {
            let (x, y) = tokio::join!(
                a.claim(&e.id, 100, 200, true),
                b.claim(&e.id, 100, 200, true)
            );
            (x.unwrap().is_some(), y.unwrap().is_some())
        });
        for (x, y) in futures_util::future::join_all(claims).await {
            assert!(x != y, "exactly one replica wins");
        }
        let admin = db.admin().await;
        let open = db.sessions(&admin).await;
        // More than one connection per replica was used, and no more than the bound.
        assert!(
            (3..=2 * POOL_SIZE as i64).contains(&open),
            "{open} sessions for two pools of {POOL_SIZE}"
        );
    }

    #[tokio::test]
    async fn broken_connections_are_replaced() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let ledger = PostgresLedger::connect(&db.url()).await.unwrap();
        let h = holder("apps", "app", None);
        let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), None);
        ledger.record(&e).await.unwrap();
        // Open several pooled connections, then have the server end all of them.
        let reads = (0..16).map(|_| ledger.get(&e.id));
        futures_util::future::join_all(reads).await;
        let admin = db.admin().await;
        assert!(db.sessions(&admin).await > 1);
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                &[&db.name],
            )
            .await
            .unwrap();
        for _ in 0..100 {
            if db.sessions(&admin).await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(db.sessions(&admin).await, 0, "the server ended them");
        let reads = (0..16).map(|_| ledger.get(&e.id));
        for read in futures_util::future::join_all(reads).await {
            assert_eq!(read.unwrap(), Some(e.clone()));
        }
        assert!(ledger.remove(&e.id).await.unwrap());
    }

    /// The test CA of `scripts/postgres.sh` (its server runs with `ssl=on`) and a client
    /// certificate it issued, or None when PostgreSQL is not running.
    fn tls_files() -> Option<(String, String, String)> {
        let var = |k: &str| std::env::var(k).ok();
        match (
            var("ESI_TEST_PG_CA"),
            var("ESI_TEST_PG_CLIENT_CERT"),
            var("ESI_TEST_PG_CLIENT_KEY"),
        ) {
            (Some(ca), Some(cert), Some(key)) => Some((ca, cert, key)),
            _ => {
                assert!(
                    var("ESI_TEST_PG_PORT").is_none(),
                    "PostgreSQL runs but ESI_TEST_PG_CA is not set (scripts/postgres.sh too old?)"
                );
                None
            }
        }
    }

    #[tokio::test]
    async fn verify_full_connects_over_tls_with_a_client_certificate() {
        let (Some(db), Some((ca, cert, key))) = (TestDb::create().await, tls_files()) else {
            return;
        };
        for host in ["localhost", "127.0.0.1"] {
            let url = db.url_via(host, &format!("sslmode=verify-full&sslrootcert={ca}"));
            let ledger = PostgresLedger::connect(&url).await.unwrap();
            assert_eq!(ledger.tls, TlsMode::VerifyFull);
            assert_eq!(ledger.session_tls().await, (true, None), "{host}");
        }
        // The CA file alone asks for verify-full, and a client certificate is presented.
        let url = db.url_via(
            "localhost",
            &format!("sslrootcert={ca}&sslcert={cert}&sslkey={key}"),
        );
        let ledger = PostgresLedger::connect(&url).await.unwrap();
        let (tls, client_dn) = ledger.session_tls().await;
        assert!(tls);
        assert_eq!(client_dn.as_deref(), Some("/CN=esi-ledger-test"));
        let h = holder("apps", "app", None);
        let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), None);
        ledger.record(&e).await.unwrap();
        assert_eq!(ledger.get(&e.id).await.unwrap(), Some(e));
    }

    #[tokio::test]
    async fn tls_to_an_unknown_issuer_or_another_name_fails() {
        let (Some(db), Some((ca, _, _))) = (TestDb::create().await, tls_files()) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let other_ca = dir.path().join("other-ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&other_ca, params.self_signed(&key).unwrap().pem()).unwrap();
        let other_ca = other_ca.to_string_lossy();
        let password = db.password.clone();
        let refused = |url: String| {
            let password = password.clone();
            async move {
                let err = PostgresLedger::connect(&url).await.unwrap_err().to_string();
                assert!(!err.contains(&password), "{err}");
                err
            }
        };
        for mode in ["verify-full", "verify-ca"] {
            let err = refused(db.url_via(
                "localhost",
                &format!("sslmode={mode}&sslrootcert={other_ca}"),
            ))
            .await;
            assert!(err.contains("UnknownIssuer"), "{mode}: {err}");
        }
        // The server's certificate names localhost and 127.0.0.1, not this host (the
        // connection still goes to loopback: hostaddr).
        let by_name = |mode: &str| {
            format!(
                "host=ledger.example hostaddr=127.0.0.1 port={} user={} password={} dbname={} sslmode={mode} sslrootcert={ca}",
                db.port, db.user, db.password, db.name
            )
        };
        let err = refused(by_name("verify-full")).await;
        assert!(err.contains("not valid for name"), "{err}");
        // verify-ca checks the chain only.
        let ledger = PostgresLedger::connect(&by_name("verify-ca"))
            .await
            .unwrap();
        assert!(ledger.session_tls().await.0);
    }
}
