//! Directory-mode ledger: one `redb` file under `--data-dir`.
//!
//! redb commits are durable (fsync) when `commit` returns, and a database left by a
//! crash is recovered on open, so an entry recorded before a credential is answered
//! survives `kill -9`. redb also locks the file, so two servers cannot share one
//! ledger. Every call runs on the blocking pool: the request path never waits on disk
//! on an async worker.
//!
//! Tables: `entries` (id → JSON entry), `owners` (owner key ‖ id → ()) for revocation
//! by owner, and `due` ((due time, id) → ()) for the sweeper.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Ledger, LedgerEntry, LedgerError, Owner, OwnerKind};

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
const OWNERS: TableDefinition<&[u8], ()> = TableDefinition::new("owners");
const DUE: TableDefinition<(u64, &str), ()> = TableDefinition::new("due");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `meta` key: layout of the `owners` index. 1 (or absent): owner = pod name, else
/// ServiceAccount name, in one field (a ServiceAccount and a pod of the same name
/// collided). 2: the owner's kind is part of the key.
const OWNER_INDEX_VERSION: &str = "owner_index_version";
const OWNER_INDEX_CURRENT: u64 = 2;

/// The redb-backed ledger.
#[derive(Clone)]
pub struct RedbLedger {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for RedbLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbLedger").finish_non_exhaustive()
    }
}

/// redb's lock is held by another process (or handle): not damage.
const LOCKED: &str = "another esi-server holds this ledger open";

thread_local! {
    /// Set while redb runs under [`quietly`]: its panics are expected and reported as
    /// [`LedgerError::Damaged`] instead of printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}
static QUIET_HOOK: Once = Once::new();

/// Runs `f`, turning a panic (redb asserts on malformed files) into `Err(())` without
/// printing it. The process's panic hook is wrapped once and still reports every other
/// panic.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, ()> {
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.map_err(|_| ())
}

/// Creates `dir` (and parents) mode 0700; narrows an existing one to 0700 when possible.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0
            && std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).is_err()
        {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{:o}", mode & 0o7777),
                "cannot restrict the ledger directory to 0700 (not its owner?): make sure only the server can reach it"
            );
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Creates the ledger file mode 0600 (never over an existing file).
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map(drop)
}

/// Narrows an existing ledger file to 0600.
fn private_file(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, meta);
    Ok(())
}

fn storage(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Storage(e.to_string())
}

/// Length-prefixed components: a prefix-free encoding, so a range scan over one
/// owner's prefix can never reach another owner (`app` vs `app2`, pod vs ServiceAccount).
fn owner_prefix(owner: &Owner, kind: OwnerKind) -> Vec<u8> {
    let mut key = Vec::new();
    for part in [
        owner.federation.as_str(),
        owner.namespace.as_str(),
        kind.as_str(),
        owner.name.as_str(),
    ] {
        key.extend_from_slice(&(part.len() as u32).to_be_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
}

fn owner_key(entry: &LedgerEntry) -> Vec<u8> {
    let owner = entry.holder.owner();
    let kind = owner.kind.unwrap_or(OwnerKind::ServiceAccount);
    let mut key = owner_prefix(&owner, kind);
    key.extend_from_slice(entry.id.as_bytes());
    key
}

/// Rebuilds the `owners` index in the current layout from the entries (each entry holds
/// its holder's pod and ServiceAccount, so nothing is guessed). Returns how many entries
/// were re-indexed, or None when the index was current.
fn migrate_owner_index(txn: &redb::WriteTransaction) -> Result<Option<usize>, String> {
    let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
    let version = meta
        .get(OWNER_INDEX_VERSION)
        .map_err(|e| e.to_string())?
        .map(|v| v.value());
    match version {
        Some(OWNER_INDEX_CURRENT) => return Ok(None),
        Some(v) if v > OWNER_INDEX_CURRENT => {
            return Err(format!(
                "its owner index is version {v}, newer than this server knows ({OWNER_INDEX_CURRENT}); run a newer esi-server"
            ));
        }
        _ => {}
    }
    let entries = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    for item in entries.iter().map_err(|e| e.to_string())? {
        let (id, bytes) = item.map_err(|e| e.to_string())?;
        let entry = decode(bytes.value())
            .map_err(|e| format!("entry {} cannot be read to migrate it ({e})", id.value()))?;
        keys.push(owner_key(&entry));
    }
    drop(entries);
    txn.delete_table(OWNERS).map_err(|e| e.to_string())?;
    let mut owners = txn.open_table(OWNERS).map_err(|e| e.to_string())?;
    for key in &keys {
        owners
            .insert(key.as_slice(), ())
            .map_err(|e| e.to_string())?;
    }
    meta.insert(OWNER_INDEX_VERSION, OWNER_INDEX_CURRENT)
        .map_err(|e| e.to_string())?;
    Ok(Some(keys.len()))
}

fn encode(entry: &LedgerEntry) -> Result<Vec<u8>, LedgerError> {
    serde_json::to_vec(entry).map_err(|e| LedgerError::Codec(e.to_string()))
}

fn decode(bytes: &[u8]) -> Result<LedgerEntry, LedgerError> {
    // serde_json's message names a position, never the content.
    serde_json::from_slice(bytes).map_err(|e| LedgerError::Codec(e.to_string()))
}

impl RedbLedger {
    /// Opens (or creates) the ledger file at `path` and its tables.
    ///
    /// The ledger holds revocation state, so (issue 19, finding 11):
    /// * its directory is created mode 0700 and an existing one is narrowed to 0700 when
    ///   the server owns it (a warning otherwise, e.g. a volume root owned by root);
    /// * the file is created mode 0600 (an existing one is narrowed to 0600);
    /// * an existing empty file is refused ([`LedgerError::Empty`]): redb would silently
    ///   start a new ledger in it and forget every credential issued;
    /// * a damaged file is refused ([`LedgerError::Damaged`], naming the file): redb's
    ///   own panics on malformed files are caught and not printed, and the file must pass
    ///   redb's integrity check.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let shown = path.display().to_string();
        let io =
            |what: &str, e: std::io::Error| LedgerError::Storage(format!("{what} {shown}: {e}"));
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            private_dir(dir).map_err(|e| io("cannot create the ledger directory for", e))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.is_file() => {
                return Err(LedgerError::Damaged {
                    path: shown,
                    reason: "it is not a regular file".into(),
                });
            }
            Ok(meta) if meta.len() == 0 => return Err(LedgerError::Empty { path: shown }),
            Ok(meta) => private_file(path, &meta).map_err(|e| io("cannot restrict", e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_private_file(path).map_err(|e| io("cannot create", e))?;
            }
            Err(e) => return Err(io("cannot read", e)),
        }
        let opened = quietly(|| -> Result<Database, String> {
            let mut db = match Database::create(path) {
                Ok(db) => db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(LOCKED.into()),
                Err(e) => return Err(e.to_string()),
            };
            if !db.check_integrity().map_err(|e| e.to_string())? {
                return Err("it failed the integrity check (redb repaired what it could)".into());
            }
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            {
                txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
                txn.open_table(OWNERS).map_err(|e| e.to_string())?;
                txn.open_table(DUE).map_err(|e| e.to_string())?;
            }
            let migrated = migrate_owner_index(&txn)?;
            txn.commit().map_err(|e| e.to_string())?;
            if let Some(n) = migrated.filter(|n| *n > 0) {
                tracing::warn!(
                    entries = n,
                    "ledger owner index migrated: owners are now keyed by kind (pod or ServiceAccount) and name"
                );
            }
            Ok(db)
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            // Another process holds the lock: not damage.
            Ok(Err(reason)) if reason == LOCKED => {
                return Err(LedgerError::Storage(format!("{shown}: {reason}")));
            }
            Ok(Err(reason)) => {
                return Err(LedgerError::Damaged {
                    path: shown,
                    reason,
                });
            }
            Err(()) => {
                return Err(LedgerError::Damaged {
                    path: shown,
                    reason: "the storage engine found it malformed (truncated or overwritten)"
                        .into(),
                });
            }
        };
        Ok(RedbLedger {
            db: Arc::new(db),
            path: Arc::new(path.to_path_buf()),
        })
    }

    /// Runs `f` on the blocking pool with the database.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let db = self.db.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            quietly(|| f(&db)).unwrap_or_else(|()| {
                Err(LedgerError::Damaged {
                    path: path.display().to_string(),
                    reason: "the storage engine failed an internal check while using it".into(),
                })
            })
        })
        .await
        .map_err(|_| LedgerError::Storage("ledger task failed".into()))?
    }

    fn record_sync(db: &Database, entry: &LedgerEntry) -> Result<(), LedgerError> {
        let bytes = encode(entry)?;
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(storage)?;
            entries
                .insert(entry.id.as_str(), bytes.as_slice())
                .map_err(storage)?;
            let mut owners = txn.open_table(OWNERS).map_err(storage)?;
            owners
                .insert(owner_key(entry).as_slice(), ())
                .map_err(storage)?;
            if let Some(due) = entry.due_at() {
                let mut due_table = txn.open_table(DUE).map_err(storage)?;
                due_table
                    .insert((due, entry.id.as_str()), ())
                    .map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }

    fn remove_sync(db: &Database, id: &str) -> Result<bool, LedgerError> {
        let txn = db.begin_write().map_err(storage)?;
        let found = {
            let mut entries = txn.open_table(ENTRIES).map_err(storage)?;
            let old = entries.remove(id).map_err(storage)?;
            match old {
                None => false,
                Some(bytes) => {
                    let entry = decode(bytes.value())?;
                    drop(bytes);
                    let mut owners = txn.open_table(OWNERS).map_err(storage)?;
                    owners
                        .remove(owner_key(&entry).as_slice())
                        .map_err(storage)?;
                    if let Some(due) = entry.due_at() {
                        let mut due_table = txn.open_table(DUE).map_err(storage)?;
                        due_table.remove((due, id)).map_err(storage)?;
                    }
                    true
                }
            }
        };
        txn.commit().map_err(storage)?;
        Ok(found)
    }

    /// Reads the entry `id`, lets `change` modify it (or refuse: false), and writes it back
    /// with its due index moved, in one write transaction. `None`: no such entry; `Some`
    /// with the entry as written, or as found when `change` refused (then `false`).
    fn update_sync(
        db: &Database,
        id: &str,
        change: impl FnOnce(&mut LedgerEntry) -> bool,
    ) -> Result<Option<(bool, LedgerEntry)>, LedgerError> {
        let txn = db.begin_write().map_err(storage)?;
        let outcome = {
            let mut entries = txn.open_table(ENTRIES).map_err(storage)?;
            let current = match entries.get(id).map_err(storage)? {
                Some(bytes) => decode(bytes.value())?,
                None => return Ok(None),
            };
            let mut updated = current.clone();
            if !change(&mut updated) {
                return Ok(Some((false, current)));
            }
            let mut due_table = txn.open_table(DUE).map_err(storage)?;
            if let Some(due) = current.due_at() {
                due_table.remove((due, id)).map_err(storage)?;
            }
            if let Some(due) = updated.due_at() {
                due_table.insert((due, id), ()).map_err(storage)?;
            }
            let bytes = encode(&updated)?;
            entries.insert(id, bytes.as_slice()).map_err(storage)?;
            (true, updated)
        };
        txn.commit().map_err(storage)?;
        Ok(Some(outcome))
    }

    fn get_sync(db: &Database, id: &str) -> Result<Option<LedgerEntry>, LedgerError> {
        let txn = db.begin_read().map_err(storage)?;
        let entries = txn.open_table(ENTRIES).map_err(storage)?;
        match entries.get(id).map_err(storage)? {
            Some(bytes) => Ok(Some(decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    fn by_owner_sync(db: &Database, owner: &Owner) -> Result<Vec<LedgerEntry>, LedgerError> {
        let kinds: &[OwnerKind] = match owner.kind {
            Some(OwnerKind::Pod) => &[OwnerKind::Pod],
            Some(OwnerKind::ServiceAccount) => &[OwnerKind::ServiceAccount],
            Some(OwnerKind::OidcSubject) => &[OwnerKind::OidcSubject],
            None => &[OwnerKind::Pod, OwnerKind::ServiceAccount],
        };
        let txn = db.begin_read().map_err(storage)?;
        let owners = txn.open_table(OWNERS).map_err(storage)?;
        let entries = txn.open_table(ENTRIES).map_err(storage)?;
        let mut out = Vec::new();
        for kind in kinds {
            let prefix = owner_prefix(owner, *kind);
            for item in owners.range(prefix.as_slice()..).map_err(storage)? {
                let (key, _) = item.map_err(storage)?;
                let key = key.value();
                let Some(id) = key.strip_prefix(prefix.as_slice()) else {
                    break;
                };
                let id = std::str::from_utf8(id).map_err(|e| LedgerError::Codec(e.to_string()))?;
                if let Some(bytes) = entries.get(id).map_err(storage)? {
                    out.push(decode(bytes.value())?);
                }
            }
        }
        Ok(out)
    }

    fn due_sync(db: &Database, now: u64, limit: usize) -> Result<Vec<LedgerEntry>, LedgerError> {
        let txn = db.begin_read().map_err(storage)?;
        let due_table = txn.open_table(DUE).map_err(storage)?;
        let entries = txn.open_table(ENTRIES).map_err(storage)?;
        let mut out = Vec::new();
        for item in due_table.iter().map_err(storage)? {
            if out.len() >= limit {
                break;
            }
            let (key, _) = item.map_err(storage)?;
            let (at, id) = key.value();
            if at > now {
                break;
            }
            if let Some(bytes) = entries.get(id).map_err(storage)? {
                out.push(decode(bytes.value())?);
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Ledger for RedbLedger {
    async fn record(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        let entry = entry.clone();
        self.blocking(move |db| Self::record_sync(db, &entry)).await
    }

    async fn by_owner(&self, owner: &Owner) -> Result<Vec<LedgerEntry>, LedgerError> {
        let owner = owner.clone();
        self.blocking(move |db| Self::by_owner_sync(db, &owner))
            .await
    }

    async fn due(&self, now: u64, limit: usize) -> Result<Vec<LedgerEntry>, LedgerError> {
        self.blocking(move |db| Self::due_sync(db, now, limit))
            .await
    }

    async fn remove(&self, id: &str) -> Result<bool, LedgerError> {
        let id = id.to_string();
        self.blocking(move |db| Self::remove_sync(db, &id)).await
    }

    async fn mark_retry(&self, id: &str, retry_at: u64, error: &str) -> Result<(), LedgerError> {
        let (id, error) = (id.to_string(), error.to_string());
        // Revoked and removed meanwhile: nothing to retry.
        self.blocking(move |db| Self::update_sync(db, &id, |e| e.take_failure(retry_at, &error)))
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
        let id = id.to_string();
        let outcome = self
            .blocking(move |db| {
                Self::update_sync(db, &id, |e| e.take_claim(now, until, only_if_due))
            })
            .await?;
        Ok(outcome.and_then(|(taken, e)| taken.then_some(e)))
    }

    async fn get(&self, id: &str) -> Result<Option<LedgerEntry>, LedgerError> {
        let id = id.to_string();
        self.blocking(move |db| Self::get_sync(db, &id)).await
    }

    async fn renewed(
        &self,
        id: &str,
        expires_at: u64,
        renewable: bool,
    ) -> Result<bool, LedgerError> {
        let id = id.to_string();
        let outcome = self
            .blocking(move |db| {
                Self::update_sync(db, &id, |e| e.take_renewal(expires_at, renewable))
            })
            .await?;
        Ok(outcome.is_some_and(|(written, _)| written))
    }

    async fn count(&self) -> Result<usize, LedgerError> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let entries = txn.open_table(ENTRIES).map_err(storage)?;
            Ok(entries.len().map_err(storage)? as usize)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::Holder;
    use super::super::test_support::{entry, identity, oidc_identity};
    use super::*;

    fn holder(ns: &str, sa: &str, pod: Option<&str>) -> Holder {
        Holder::new(&identity("alpha", ns, sa, pod), None)
    }

    #[tokio::test]
    async fn claims_are_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = RedbLedger::open(&dir.path().join("l.redb")).unwrap();
        super::super::test_support::claims_are_exclusive(&ledger).await;
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ledger.redb");
        let h = holder("apps", "app", Some("app-1"));
        let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), Some(2_000));
        {
            let ledger = RedbLedger::open(&path).unwrap();
            ledger.record(&e).await.unwrap();
            assert_eq!(ledger.count().await.unwrap(), 1);
        }
        let ledger = RedbLedger::open(&path).unwrap();
        assert_eq!(ledger.by_owner(&h.owner()).await.unwrap(), vec![e.clone()]);
        assert_eq!(ledger.due(2_000, 10).await.unwrap(), vec![e]);
    }

    #[tokio::test]
    async fn a_renewal_moves_the_sweepers_due_time() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = RedbLedger::open(&dir.path().join("ledger.redb")).unwrap();
        let h = holder("apps", "app", Some("app-1"));
        let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), Some(2_000));
        ledger.record(&e).await.unwrap();
        assert_eq!(ledger.get(&e.id).await.unwrap(), Some(e.clone()));
        assert!(ledger.renewed(&e.id, 5_000, false).await.unwrap());
        // Not due at its old expiry any more; due at the new one.
        assert!(ledger.due(4_999, 10).await.unwrap().is_empty());
        let due = ledger.due(5_000, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].expires_at, due[0].renewable), (Some(5_000), false));
        assert_eq!(
            ledger.get(&e.id).await.unwrap().unwrap().expires_at,
            Some(5_000)
        );
        // A credential waiting for a revocation retry is not renewed; the retry keeps
        // its schedule.
        ledger.mark_retry(&e.id, 3_000, "down").await.unwrap();
        assert!(!ledger.renewed(&e.id, 9_000, true).await.unwrap());
        assert_eq!(ledger.due(3_000, 10).await.unwrap().len(), 1);
        // Gone: nothing to renew.
        assert!(ledger.remove(&e.id).await.unwrap());
        assert!(!ledger.renewed(&e.id, 9_000, true).await.unwrap());
        assert_eq!(ledger.get(&e.id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let _first = RedbLedger::open(&path).unwrap();
        assert!(RedbLedger::open(&path).is_err());
    }

    #[tokio::test]
    async fn owners_are_scoped_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = RedbLedger::open(&dir.path().join("l.redb")).unwrap();
        let app = holder("apps", "app", None);
        let app2 = holder("apps", "app2", None);
        let other_ns = holder("apps2", "app", None);
        let other_fed = Holder::new(&identity("beta", "apps", "app", None), None);
        let pod = holder("apps", "app", Some("app-5f"));
        let g = ("apps", "VaultDynamicSecret", "db");
        let mine = [entry(&app, g, None), entry(&app, g, Some(5))];
        for e in &mine {
            ledger.record(e).await.unwrap();
        }
        for h in [&app2, &other_ns, &other_fed, &pod] {
            ledger.record(&entry(h, g, None)).await.unwrap();
        }
        let mut got = ledger.by_owner(&app.owner()).await.unwrap();
        got.sort_by(|a, b| a.id.cmp(&b.id));
        let mut want = mine.to_vec();
        want.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(got, want);
        assert_eq!(ledger.by_owner(&pod.owner()).await.unwrap().len(), 1);
        assert_eq!(ledger.by_owner(&other_fed.owner()).await.unwrap().len(), 1);
        let nobody = Owner {
            federation: "alpha".into(),
            namespace: "apps".into(),
            kind: Some(OwnerKind::ServiceAccount),
            name: "ap".into(),
        };
        assert!(ledger.by_owner(&nobody).await.unwrap().is_empty());
        assert_eq!(ledger.count().await.unwrap(), 6);
        // OIDC subjects (issue 18): their own owners, never a ServiceAccount's or Pod's.
        let ci = Holder::new(&oidc_identity("alpha", "app"), None);
        let ci_entry = entry(&ci, g, None);
        ledger.record(&ci_entry).await.unwrap();
        assert_eq!(ledger.by_owner(&ci.owner()).await.unwrap(), vec![ci_entry]);
        assert_eq!(ledger.by_owner(&app.owner()).await.unwrap().len(), 2);
        for ese in ["app", "serviceaccount/app", "pod/app"] {
            let o = Owner::from_ese("alpha".into(), String::new(), ese);
            assert!(ledger.by_owner(&o).await.unwrap().is_empty(), "{ese}");
        }
    }

    #[tokio::test]
    async fn lists_expired_in_order_and_retries() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = RedbLedger::open(&dir.path().join("l.redb")).unwrap();
        let h = holder("apps", "app", None);
        let g = ("apps", "VaultDynamicSecret", "db");
        let late = entry(&h, g, Some(300));
        let early = entry(&h, g, Some(100));
        let never = entry(&h, g, None);
        for e in [&late, &early, &never] {
            ledger.record(e).await.unwrap();
        }
        assert!(ledger.due(99, 10).await.unwrap().is_empty());
        let ids = |v: Vec<LedgerEntry>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(
            ids(ledger.due(100, 10).await.unwrap()),
            vec![early.id.clone()]
        );
        assert_eq!(
            ids(ledger.due(1_000, 10).await.unwrap()),
            [early.id.clone(), late.id.clone()]
        );
        assert_eq!(
            ids(ledger.due(1_000, 1).await.unwrap()),
            vec![early.id.clone()]
        );

        // A failed revocation moves the entry to its retry time, counting attempts.
        ledger
            .mark_retry(&early.id, 500, "backend unavailable")
            .await
            .unwrap();
        assert_eq!(
            ids(ledger.due(400, 10).await.unwrap()),
            vec![late.id.clone()]
        );
        let retried = ledger.due(500, 10).await.unwrap();
        assert_eq!(retried.len(), 2);
        let e = retried.iter().find(|e| e.id == early.id).unwrap();
        assert_eq!((e.attempts, e.retry_at), (1, Some(500)));
        assert_eq!(e.last_error.as_deref(), Some("backend unavailable"));
        // A never-expiring entry becomes due once a revocation of it failed.
        ledger.mark_retry(&never.id, 50, "x").await.unwrap();
        assert_eq!(
            ids(ledger.due(60, 10).await.unwrap()),
            vec![never.id.clone()]
        );

        assert!(ledger.remove(&early.id).await.unwrap());
        assert!(!ledger.remove(&early.id).await.unwrap());
        // Removed entries leave no index rows behind.
        assert_eq!(ledger.due(10_000, 10).await.unwrap().len(), 2);
        assert_eq!(ledger.by_owner(&h.owner()).await.unwrap().len(), 2);
        // Retrying something already removed is a no-op.
        ledger.mark_retry(&early.id, 1, "x").await.unwrap();
        assert_eq!(ledger.count().await.unwrap(), 2);
    }
}

#[cfg(test)]
mod damage_tests {
    use super::super::Holder;
    use super::super::test_support::{entry, identity};
    use super::*;

    async fn written(path: &Path) -> Vec<u8> {
        let ledger = RedbLedger::open(path).unwrap();
        let h = Holder::new(&identity("a", "n", "s", None), None);
        for _ in 0..20 {
            ledger
                .record(&entry(&h, ("n", "VaultDynamicSecret", "g"), Some(5)))
                .await
                .unwrap();
        }
        drop(ledger);
        std::fs::read(path).unwrap()
    }

    #[tokio::test]
    async fn damaged_or_empty_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let full = written(&path).await;
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("100 bytes", full[..100].to_vec()),
            ("4 KiB", full[..4096].to_vec()),
            ("half", full[..full.len() / 2].to_vec()),
            ("short by 100", full[..full.len() - 100].to_vec()),
        ];
        let mut header = full.clone();
        header[..64].iter_mut().for_each(|b| *b ^= 0xff);
        cases.push(("header overwritten", header));
        let mut middle = full.clone();
        middle[4096..12288].iter_mut().for_each(|b| *b = 0x5a);
        cases.push(("pages overwritten", middle));
        for (what, bytes) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let e = RedbLedger::open(&path).expect_err(what);
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()), "{what}: {text}");
            assert!(
                matches!(e, LedgerError::Empty { .. } | LedgerError::Damaged { .. }),
                "{what}: {text}"
            );
            // Refused, not re-initialised: the bytes are untouched.
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "{what}");
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn directory_and_file_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = data.join("ledger.redb");
        drop(RedbLedger::open(&path).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&path), 0o600);
        // A new nested directory, and an existing file left too open, are narrowed.
        let nested = dir.path().join("a/b/ledger.redb");
        drop(RedbLedger::open(&nested).unwrap());
        assert_eq!(mode(&dir.path().join("a/b")), 0o700);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(RedbLedger::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
    }
}

#[cfg(test)]
mod owner_tests {
    use super::super::Holder;
    use super::super::test_support::{entry, identity};
    use super::*;

    /// Issue 19 finding 10: ServiceAccount `app-pod` and Pod `app-pod` are two owners.
    #[tokio::test]
    async fn a_service_account_and_a_pod_of_one_name_never_meet() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = RedbLedger::open(&dir.path().join("l.redb")).unwrap();
        let in_pod = Holder::new(&identity("alpha", "apps", "app", Some("app-pod")), None);
        let sa = Holder::new(&identity("alpha", "apps", "app-pod", None), None);
        let g = ("apps", "VaultDynamicSecret", "db");
        let (a, b) = (entry(&in_pod, g, None), entry(&sa, g, None));
        ledger.record(&a).await.unwrap();
        ledger.record(&b).await.unwrap();
        assert_eq!(
            ledger.by_owner(&in_pod.owner()).await.unwrap(),
            vec![a.clone()]
        );
        assert_eq!(ledger.by_owner(&sa.owner()).await.unwrap(), vec![b.clone()]);
        // ESE's plain owner name (revoke-states) names both; the prefixed forms one each.
        let ese = |s: &str| Owner::from_ese("alpha".into(), "apps".into(), s);
        assert_eq!(ledger.by_owner(&ese("app-pod")).await.unwrap().len(), 2);
        assert_eq!(ledger.by_owner(&ese("pod/app-pod")).await.unwrap(), vec![a]);
        assert_eq!(
            ledger
                .by_owner(&ese("serviceaccount/app-pod"))
                .await
                .unwrap(),
            vec![b]
        );
        assert!(ledger.by_owner(&ese("app")).await.unwrap().is_empty());
    }

    /// A ledger written with the version-1 owner index (no kind) is re-indexed on open.
    #[tokio::test]
    async fn version_1_owner_index_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.redb");
        let in_pod = Holder::new(&identity("alpha", "apps", "app", Some("app-pod")), None);
        let sa = Holder::new(&identity("alpha", "apps", "app-pod", None), None);
        let g = ("apps", "VaultDynamicSecret", "db");
        let (a, b) = (entry(&in_pod, g, Some(10)), entry(&sa, g, None));
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut entries = txn.open_table(ENTRIES).unwrap();
                let mut owners = txn.open_table(OWNERS).unwrap();
                let mut due = txn.open_table(DUE).unwrap();
                for e in [&a, &b] {
                    entries
                        .insert(e.id.as_str(), encode(e).unwrap().as_slice())
                        .unwrap();
                    // Version 1: federation, namespace, pod-else-ServiceAccount name.
                    let mut key = Vec::new();
                    for part in ["alpha", "apps", "app-pod"] {
                        key.extend_from_slice(&(part.len() as u32).to_be_bytes());
                        key.extend_from_slice(part.as_bytes());
                    }
                    key.extend_from_slice(e.id.as_bytes());
                    owners.insert(key.as_slice(), ()).unwrap();
                }
                due.insert((10, a.id.as_str()), ()).unwrap();
            }
            txn.commit().unwrap();
        }
        let ledger = RedbLedger::open(&path).unwrap();
        assert_eq!(
            ledger.by_owner(&in_pod.owner()).await.unwrap(),
            vec![a.clone()]
        );
        assert_eq!(ledger.by_owner(&sa.owner()).await.unwrap(), vec![b.clone()]);
        assert_eq!(ledger.due(10, 10).await.unwrap(), vec![a.clone()]);
        // No version-1 row is left behind, and a second open changes nothing.
        let rows = |l: &RedbLedger| {
            let txn = l.db.begin_read().unwrap();
            txn.open_table(OWNERS).unwrap().len().unwrap()
        };
        assert_eq!(rows(&ledger), 2);
        drop(ledger);
        let ledger = RedbLedger::open(&path).unwrap();
        assert_eq!(rows(&ledger), 2);
        assert!(ledger.remove(&a.id).await.unwrap());
        assert_eq!(rows(&ledger), 1);
    }
}
