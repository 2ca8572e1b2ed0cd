//! The ledger in PostgreSQL, for several replicas outside Kubernetes (issue 10): every
//! replica sees every issued credential, so a `DELETE` or a renewal may reach another
//! replica than the `POST` did, and any replica's sweeper revokes what is due.
//!
//! One table, `esi_credentials`: the entry as JSON (it holds revocation state: treat the
//! database like the redb file, private to the servers), its owner's columns (indexed for
//! revoke-by-owner) and its due time (indexed for the sweeper). Every write is one
//! statement or one transaction, so it is durable when it returns. Two sweepers racing on
//! one entry both call the backend (revocation is idempotent) and one removes it.
//!
//! Connections go to loopback or a Unix socket only: this build has no TLS for
//! PostgreSQL, and revocation state must not cross a network in clear text.

use tokio::sync::Mutex;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use super::{Ledger, LedgerEntry, LedgerError, Owner, OwnerKind};

const SCHEMA: &str = "
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

/// The PostgreSQL ledger. Reconnects on the next call after the connection broke.
pub struct PostgresLedger {
    config: Config,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for PostgresLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config may hold a password.
        f.debug_struct("PostgresLedger").finish_non_exhaustive()
    }
}

fn storage(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Storage(e.to_string())
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
    /// Connects to `url` (`postgresql://user:password@127.0.0.1:5432/db` or key=value
    /// form) and creates the table when missing. Hosts other than loopback and Unix
    /// sockets are refused (no TLS in this build).
    pub async fn connect(url: &str) -> Result<Self, LedgerError> {
        let config: Config = url
            .parse()
            .map_err(|_| LedgerError::Storage("the PostgreSQL URL cannot be parsed".into()))?;
        if config.get_hosts().is_empty() {
            return Err(LedgerError::Storage(
                "the PostgreSQL URL names no host".into(),
            ));
        }
        for host in config.get_hosts() {
            let local = match host {
                Host::Unix(_) => true,
                Host::Tcp(name) => {
                    name == "localhost"
                        || name
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }
            };
            if !local {
                return Err(LedgerError::Storage(
                    "PostgreSQL must be on loopback or a Unix socket: this build has no TLS for it, and the ledger's revocation state must not cross a network in clear text".into(),
                ));
            }
        }
        let ledger = PostgresLedger {
            config,
            client: Mutex::new(None),
        };
        ledger
            .session()
            .await?
            .client()?
            .batch_execute(SCHEMA)
            .await
            .map_err(storage)?;
        Ok(ledger)
    }

    /// The live connection (connecting first when there is none or it broke). Calls of
    /// one replica are serialised by it; the ledger is not on a hot path.
    async fn session(&self) -> Result<Session<'_>, LedgerError> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            let (client, connection) = self.config.connect(NoTls).await.map_err(storage)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "ledger database connection ended");
                }
            });
            *slot = Some(client);
        }
        Ok(Session(slot))
    }

    /// Reads the entry `id` under a row lock, lets `change` modify it (or refuse: false),
    /// and writes it back with its due time, in one transaction. `None`: no such entry;
    /// `Some` with the entry as written, or as found when `change` refused (then `false`).
    async fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut LedgerEntry) -> bool,
    ) -> Result<Option<(bool, LedgerEntry)>, LedgerError> {
        let mut session = self.session().await?;
        let txn = session.client_mut()?.transaction().await.map_err(storage)?;
        let row = txn
            .query_opt(
                "SELECT entry FROM esi_credentials WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(storage)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let current = decode(row.get::<_, &str>(0))?;
        let mut entry = current.clone();
        if !change(&mut entry) {
            return Ok(Some((false, current)));
        }
        let due = entry.due_at().map(db_time);
        txn.execute(
            "UPDATE esi_credentials SET entry = $2, due_at = $3 WHERE id = $1",
            &[&id, &encode(&entry)?, &due],
        )
        .await
        .map_err(storage)?;
        txn.commit().await.map_err(storage)?;
        Ok(Some((true, entry)))
    }
}

/// The locked connection slot, filled.
struct Session<'a>(tokio::sync::MutexGuard<'a, Option<Client>>);

impl Session<'_> {
    fn client(&self) -> Result<&Client, LedgerError> {
        self.0
            .as_ref()
            .ok_or_else(|| LedgerError::Storage("no database connection".into()))
    }

    fn client_mut(&mut self) -> Result<&mut Client, LedgerError> {
        self.0
            .as_mut()
            .ok_or_else(|| LedgerError::Storage("no database connection".into()))
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
        let session = self.session().await?;
        session
            .client()?
            .execute(
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
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn by_owner(&self, owner: &Owner) -> Result<Vec<LedgerEntry>, LedgerError> {
        let kinds: Vec<&str> = match owner.kind {
            Some(k) => vec![k.as_str()],
            None => vec![OwnerKind::Pod.as_str(), OwnerKind::ServiceAccount.as_str()],
        };
        let session = self.session().await?;
        let rows = session
            .client()?
            .query(
                "SELECT entry FROM esi_credentials WHERE owner_federation = $1 \
                 AND owner_namespace = $2 AND owner_kind = ANY($3) AND owner_name = $4 ORDER BY id",
                &[&owner.federation, &owner.namespace, &kinds, &owner.name],
            )
            .await
            .map_err(storage)?;
        entries(rows)
    }

    async fn due(&self, now: u64, limit: usize) -> Result<Vec<LedgerEntry>, LedgerError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let session = self.session().await?;
        let rows = session
            .client()?
            .query(
                "SELECT entry FROM esi_credentials WHERE due_at <= $1 ORDER BY due_at, id LIMIT $2",
                &[&db_time(now), &limit],
            )
            .await
            .map_err(storage)?;
        entries(rows)
    }

    async fn remove(&self, id: &str) -> Result<bool, LedgerError> {
        let session = self.session().await?;
        let n = session
            .client()?
            .execute("DELETE FROM esi_credentials WHERE id = $1", &[&id])
            .await
            .map_err(storage)?;
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
        let session = self.session().await?;
        let row = session
            .client()?
            .query_opt("SELECT entry FROM esi_credentials WHERE id = $1", &[&id])
            .await
            .map_err(storage)?;
        row.map(|r| decode(r.get::<_, &str>(0))).transpose()
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
        let session = self.session().await?;
        let row = session
            .client()?
            .query_one("SELECT count(*) FROM esi_credentials", &[])
            .await
            .map_err(storage)?;
        Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Holder;
    use super::super::test_support::{entry, identity};
    use super::*;

    /// A fresh database on the PostgreSQL of `scripts/postgres.sh` (from `scripts/test.sh`),
    /// or None with a notice when it is not running.
    async fn database() -> Option<String> {
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
        let base = format!("postgresql://{user}:{password}@127.0.0.1:{port}");
        let name = format!("esi_ledger_{}", uuid::Uuid::new_v4().simple());
        let (client, conn) = format!("{base}/postgres")
            .parse::<Config>()
            .unwrap()
            .connect(NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Some(format!("{base}/{name}"))
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
    async fn remote_hosts_are_refused_without_tls() {
        for url in [
            "postgresql://u:p@db.example.com/ledger",
            "postgresql://u:p@10.0.0.5:5432/ledger",
            "host=db.example.com user=u dbname=ledger",
            "not a url at all ::",
        ] {
            let err = PostgresLedger::connect(url).await.unwrap_err().to_string();
            assert!(!err.contains(":p@") && !err.contains("u:p"), "{err}");
            assert!(
                err.contains("loopback") || err.contains("cannot be parsed"),
                "{url}: {err}"
            );
        }
    }
}
