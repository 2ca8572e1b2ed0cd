//! The per-store cache (extension `spec.cache`, off when absent): [`Cached`] answers
//! `get`/`extract` reads from memory for `ttl`, so a federation server in front of a
//! backend does not multiply its traffic.
//!
//! ```yaml
//! spec:
//!   provider: {vault: {…}}
//!   cache:
//!     ttl: 30s          # required; 1s … 1h
//!     maxEntries: 1000  # optional (default 1000; at most 100000)
//!     maxBytes: 16Mi    # optional (default 16Mi; 1Ki … 1Gi; Ki/Mi/Gi, k/M/G or a number)
//!     staleIfError: 5m  # optional (default 0s: off; at most 24h)
//! ```
//!
//! - **After the decision.** The API decides on the canonical reference first and then
//!   calls the provider; the cache is the outermost layer of the provider, so a cached
//!   value is only handed out after a `get` decision that allowed it (a forbid added after
//!   the value was cached applies at once).
//! - **Keyed by the canonical reference**: the call (`get`/`extract`), the canonical key,
//!   property and version. One cache belongs to one built store: a store whose spec (or
//!   a Secret it uses) changes is built anew with an empty cache, and the old values are
//!   dropped with the old store.
//! - **What is cached**: values read by `get` (`GetSecret`) and maps read by `extract`
//!   (`GetSecretMap`). `find` is never cached: its answer depends on the caller (each key
//!   is decided before it is read), and a find's listing would outlive keys added later.
//! - **Failures are not cached**, `NotFound` included: every failed read reaches the
//!   backend again.
//! - **Concurrent identical misses are coalesced** into one backend call (moka's
//!   `try_get_with`); the other callers wait for it and share its answer (or its error).
//! - **Bounded** in entries and bytes: an entry weighs its bytes (key and values), and at
//!   least `maxBytes / maxEntries`, under a capacity of `maxBytes` — so neither bound can
//!   be passed (moka evicts down to its capacity as it maintains the cache).
//! - **Zeroized**: values are held in `Zeroizing` buffers, wiped when the last copy of an
//!   evicted (or expired, or replaced) entry is dropped.
//! - **Age**: a value served from the cache carries its age, which the API answers as
//!   an RFC 9111 `Age` header (seconds).
//! - **Serve stale on error** (`staleIfError`, RFC 5861's `stale-if-error`; off by
//!   default): entries are kept for `ttl + staleIfError` and are fresh for `ttl`. A read of
//!   an entry past its `ttl` refreshes it (concurrent refreshes of one key coalesced into
//!   one backend call); when the backend is down (`Unavailable`, `Timeout`, the circuit
//!   open) the last good value is answered, with its true age and
//!   `Warning: 110 - "Response is Stale"`. A definite answer (not found, refused, bad
//!   request) evicts the stale value and is answered as it is. A key never read, or read
//!   longer than `ttl + staleIfError` ago, gets the error. The same one cache, under the
//!   same bounds, holds fresh and stale entries.
//! - **A refresh outlives a slow backend's deadline**: its callers wait ¾ of the backend
//!   timeout, then answer the stale value; the refresh (its own task, at most one per key)
//!   goes on, bounded as a request is (and at most [`MAX_REFRESHES_PER_STORE`] of a
//!   store's refreshes read at once), so a slow answer still replaces the entry and a
//!   backend that never answers is recorded as timed out by the breaker (which opens, and
//!   stale answers become immediate). A refresh all of whose callers are gone before the
//!   deadline is ended.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{
    CacheAge, FindRequest, KeyFilter, ProviderConfigError, ProviderError, RemoteRef,
    SecretProvider, safe_serde_message,
};
use crate::metrics::METRICS;

/// The annotation form of `spec.cache` (JSON, e.g. `{"ttl":"30s","maxEntries":1000}`):
/// ESO's SecretStore CRD does not know `spec.cache`, so a Kubernetes API server prunes it;
/// the annotation survives. Read in both modes.
pub const CACHE_ANNOTATION: &str = "federation.external-secrets.io/cache";
/// Bound on the annotation's value.
const MAX_ANNOTATION: usize = 1024;

/// Puts the [`CACHE_ANNOTATION`] of a store into `spec.cache`. Both set: they must say the
/// same (equal JSON), else the store does not load — neither silently wins.
pub fn apply_annotation(
    store: &str,
    spec: &mut crate::resources::SecretStoreSpec,
    annotations: &BTreeMap<String, String>,
) -> Result<(), ProviderConfigError> {
    let Some(text) = annotations.get(CACHE_ANNOTATION) else {
        return Ok(());
    };
    let invalid = |reason: &str| ProviderConfigError::InvalidCache {
        store: store.to_string(),
        reason: format!("annotation {CACHE_ANNOTATION}: {reason}"),
    };
    if text.len() > MAX_ANNOTATION {
        return Err(invalid("must be at most 1024 bytes"));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .ok()
        .filter(serde_json::Value::is_object)
        .ok_or_else(|| {
            invalid(r#"must be a JSON object such as {"ttl":"30s","maxEntries":1000}"#)
        })?;
    match &spec.cache {
        Some(cache) if *cache != value => Err(invalid(
            "spec.cache is set too and says something else; keep one of them",
        )),
        Some(_) => Ok(()),
        None => {
            spec.cache = Some(value);
            Ok(())
        }
    }
}

/// Longest `ttl` a store may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Longest `staleIfError` a store may ask for.
pub const MAX_STALE_IF_ERROR: Duration = Duration::from_secs(24 * 3600);
/// Default and largest `maxEntries`.
pub const DEFAULT_MAX_ENTRIES: u64 = 1000;
const MAX_MAX_ENTRIES: u64 = 100_000;
/// Default, smallest and largest `maxBytes`.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;
const MIN_MAX_BYTES: u64 = 1 << 10;
const MAX_MAX_BYTES: u64 = 1 << 30;
/// Bytes counted for an entry besides its key and values (bookkeeping).
const ENTRY_OVERHEAD: usize = 64;
/// The backend timeout refreshes are bounded by unless told ([`Cached::with_backend_timeout`]).
const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A background refresh may run this much past the backend timeout (as a request may).
const REFRESH_GRACE: Duration = Duration::from_secs(1);
/// Refreshes of one store's stale entries that read its backend at once. A refresh goes on
/// past its callers (and so past their request's in-flight permit); without this bound a
/// hung backend could hold one read per stale key (up to `maxEntries`) until each timed
/// out. A refresh waiting for a slot waits within its own time bound.
pub const MAX_REFRESHES_PER_STORE: usize = 16;

/// `spec.cache` as written.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CacheSpec {
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    max_entries: Option<u64>,
    #[serde(default)]
    max_bytes: Option<serde_json::Value>,
    #[serde(default)]
    stale_if_error: Option<String>,
}

/// A checked `spec.cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// How long a value is served from memory.
    pub ttl: Duration,
    /// Most entries held.
    pub max_entries: u64,
    /// Most bytes of keys and values held.
    pub max_bytes: u64,
    /// How long past `ttl` the last good value may be served while the backend is down
    /// (zero: never).
    pub stale_if_error: Duration,
}

impl CacheSettings {
    /// Checks `spec.cache` of store `store`: a clear message naming the field on error
    /// (never a value: a cache block holds none, but serde's messages are cut anyway).
    pub fn from_spec(store: &str, block: &serde_json::Value) -> Result<Self, ProviderConfigError> {
        let invalid = |reason: String| ProviderConfigError::InvalidCache {
            store: store.to_string(),
            reason,
        };
        let spec: CacheSpec =
            serde_json::from_value(block.clone()).map_err(|e| invalid(safe_serde_message(&e)))?;
        let ttl = spec
            .ttl
            .as_deref()
            .ok_or_else(|| invalid("ttl is required (e.g. ttl: 30s)".into()))?;
        let ttl = crate::support::duration::parse_duration(ttl)
            .map_err(|e| invalid(format!("ttl: {e}")))?;
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(invalid("ttl must be more than 0 and at most 1h".into()));
        }
        let max_entries = spec.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES);
        if !(1..=MAX_MAX_ENTRIES).contains(&max_entries) {
            return Err(invalid(format!(
                "maxEntries must be between 1 and {MAX_MAX_ENTRIES}"
            )));
        }
        let max_bytes = match &spec.max_bytes {
            None => DEFAULT_MAX_BYTES,
            Some(v) => parse_bytes(v).ok_or_else(|| {
                invalid("maxBytes must be a byte count such as 16Mi, 512Ki or 1048576".into())
            })?,
        };
        if !(MIN_MAX_BYTES..=MAX_MAX_BYTES).contains(&max_bytes) {
            return Err(invalid("maxBytes must be between 1Ki and 1Gi".into()));
        }
        let stale_if_error = match spec.stale_if_error.as_deref() {
            None => Duration::ZERO,
            Some(text) => crate::support::duration::parse_duration(text)
                .map_err(|e| invalid(format!("staleIfError: {e}")))?,
        };
        if stale_if_error > MAX_STALE_IF_ERROR {
            return Err(invalid("staleIfError must be at most 24h".into()));
        }
        Ok(CacheSettings {
            ttl,
            max_entries,
            max_bytes,
            stale_if_error,
        })
    }
}

/// A byte count: a number, or a string of digits with an optional Kubernetes quantity
/// suffix (`Ki`, `Mi`, `Gi`, `k`, `M`, `G`).
fn parse_bytes(v: &serde_json::Value) -> Option<u64> {
    let text = match v {
        serde_json::Value::Number(n) => return n.as_u64(),
        serde_json::Value::String(s) => s.trim(),
        _ => return None,
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Which read a cache entry answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Call {
    GetSecret,
    GetSecretMap,
}

/// A cache key: the call and the canonical reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    call: Call,
    key: String,
    property: Option<String>,
    version: Option<String>,
}

impl CacheKey {
    fn new(call: Call, remote: &RemoteRef) -> Self {
        CacheKey {
            call,
            key: remote.key.clone(),
            property: remote.property.clone(),
            version: remote.version.clone(),
        }
    }

    fn len(&self) -> usize {
        self.key.len()
            + self.property.as_ref().map_or(0, String::len)
            + self.version.as_ref().map_or(0, String::len)
    }
}

/// What a read answered, wiped when the last copy is dropped.
enum Body {
    Value(Zeroizing<Vec<u8>>),
    Map(BTreeMap<String, Zeroizing<Vec<u8>>>),
}

struct Entry {
    at: Instant,
    body: Body,
}

impl Entry {
    fn len(&self) -> usize {
        match &self.body {
            Body::Value(v) => v.len(),
            Body::Map(m) => m.iter().map(|(k, v)| k.len() + v.len()).sum(),
        }
    }
}

/// What one refresh of a stale entry ended with.
type Outcome = Option<Result<Arc<Entry>, ProviderError>>;

/// One refresh of a stale entry, under way in a task of its own and shared by the callers
/// it coalesced (held by them and by the map of refreshes under way).
struct Flight {
    /// Tells this refresh from a later one of the same key.
    id: u64,
    /// Set once, when the refresh ends.
    outcome: tokio::sync::watch::Receiver<Outcome>,
    /// Callers waiting past it answer the stale value (and later callers at once).
    deadline: tokio::time::Instant,
    /// A caller gave up at the deadline: the refresh goes on to its limit, whoever waits,
    /// so the breaker sees its real outcome and a slow answer still replaces the entry.
    detached: AtomicBool,
    /// Ends the refresh when every caller is gone before the deadline.
    task: tokio::task::AbortHandle,
}

/// The refreshes under way, by key: at most one per key.
type Refreshing = Arc<Mutex<HashMap<CacheKey, Arc<Flight>>>>;

fn lock_refreshing(
    refreshing: &Mutex<HashMap<CacheKey, Arc<Flight>>>,
) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Arc<Flight>>> {
    refreshing
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A caller's hold on a [`Flight`]. Dropped (the caller answered, or was cancelled) while
/// the refresh is unfinished, not yet past its deadline, and held by nobody else but the
/// map, it ends the refresh and removes it from the map: a refresh nobody waits for leaves
/// nothing behind.
struct Waiter<'a> {
    refreshing: &'a Mutex<HashMap<CacheKey, Arc<Flight>>>,
    key: &'a CacheKey,
    flight: Option<Arc<Flight>>,
}

impl Waiter<'_> {
    /// The refresh's outcome, or `Timeout` past its deadline (the refresh goes on).
    async fn outcome(&self) -> Result<Arc<Entry>, ProviderError> {
        let Some(flight) = &self.flight else {
            return Err(ProviderError::Timeout);
        };
        let mut outcome = flight.outcome.clone();
        match tokio::time::timeout_at(flight.deadline, outcome.wait_for(Option::is_some)).await {
            Ok(Ok(done)) => done.clone().unwrap_or(Err(ProviderError::Timeout)),
            // The task ended without an outcome (it panicked).
            Ok(Err(_)) => Err(ProviderError::Unavailable(
                "the store cache's refresh ended without an answer".into(),
            )),
            Err(_) => {
                flight.detached.store(true, Ordering::SeqCst);
                Err(ProviderError::Timeout)
            }
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let Some(flight) = self.flight.take() else {
            return;
        };
        // Under the lock: every other holder (the map, other waiters) lets go under it
        // too, so the count is exact.
        let mut refreshing = lock_refreshing(self.refreshing);
        let alone = !flight.detached.load(Ordering::SeqCst)
            && refreshing
                .get(self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &flight))
            && Arc::strong_count(&flight) == 2;
        if alone {
            flight.task.abort();
            refreshing.remove(self.key);
        }
        drop(flight);
    }
}

/// Whether a failed refresh may be answered with the stale value: the backend is down
/// (unreachable, failing, throttled, too slow, or its circuit open). A definite answer
/// never is.
fn serves_stale(err: &ProviderError) -> bool {
    matches!(err, ProviderError::Unavailable(_) | ProviderError::Timeout)
}

/// A provider behind a cache of its `get`/`extract` reads (see the module docs).
pub struct Cached {
    inner: Arc<dyn SecretProvider>,
    cache: moka::future::Cache<CacheKey, Arc<Entry>>,
    store: String,
    ttl: Duration,
    stale_if_error: Duration,
    /// How long callers wait for a refresh that has a stale value to fall back on.
    refresh_deadline: Duration,
    /// Bound on a refresh, which goes on in the background past `refresh_deadline`.
    refresh_limit: Duration,
    /// Refreshes of stale entries under way, by key (entries live while one is).
    refreshing: Refreshing,
    /// Numbers the refreshes.
    next_flight: AtomicU64,
    /// Slots of the refreshes reading the backend at once ([`MAX_REFRESHES_PER_STORE`]).
    refresh_slots: Arc<tokio::sync::Semaphore>,
    /// Whether the last answer that needed the backend was a stale one (logged on change).
    serving_stale: Arc<AtomicBool>,
    /// Keeps the store's cache series in `/metrics` while this cache lives (last field:
    /// dropped after the cache).
    _series: crate::metrics::StoreSeries,
}

impl Cached {
    /// Wraps `inner`, the provider of store `store` (its metrics label).
    pub fn new(store: &str, inner: Arc<dyn SecretProvider>, settings: &CacheSettings) -> Self {
        // Every entry weighs at least `floor`, so `maxBytes / floor = maxEntries` entries
        // fill the capacity: both bounds hold.
        let floor = settings.max_bytes / settings.max_entries;
        let label = store.to_string();
        let cache = moka::future::Cache::builder()
            .max_capacity(settings.max_bytes)
            // Stale entries stay (under the same bounds) for `staleIfError` more.
            .time_to_live(settings.ttl + settings.stale_if_error)
            .weigher(move |k: &CacheKey, v: &Arc<Entry>| -> u32 {
                let bytes = (k.len() + v.len() + ENTRY_OVERHEAD) as u64;
                u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_k, _v, cause| {
                let cause = match cause {
                    RemovalCause::Expired => "expired",
                    RemovalCause::Size => "size",
                    RemovalCause::Explicit | RemovalCause::Replaced => return,
                };
                METRICS
                    .store_cache_evictions
                    .with_label_values(&[&label, cause])
                    .inc();
            })
            .build();
        Cached {
            inner,
            cache,
            store: store.to_string(),
            ttl: settings.ttl,
            stale_if_error: settings.stale_if_error,
            refresh_deadline: DEFAULT_BACKEND_TIMEOUT * 3 / 4,
            refresh_limit: DEFAULT_BACKEND_TIMEOUT + REFRESH_GRACE,
            refreshing: Arc::default(),
            next_flight: AtomicU64::new(0),
            refresh_slots: Arc::new(tokio::sync::Semaphore::new(MAX_REFRESHES_PER_STORE)),
            serving_stale: Arc::default(),
            _series: crate::metrics::StoreSeries::hold(store),
        }
    }

    /// Bounds refreshes by the backend timeout `timeout` (default 10 s). Callers of a
    /// refresh that has a stale value to fall back on wait ¾ of it, then answer the stale
    /// value rather than the request deadline's 503; the refresh itself goes on in the
    /// background, bounded as a request is (`timeout` and a second), so the breaker
    /// records its real outcome (a backend that never answers opens the circuit) and a
    /// slow answer still replaces the entry.
    pub fn with_backend_timeout(mut self, timeout: Duration) -> Self {
        self.refresh_deadline = timeout * 3 / 4;
        self.refresh_limit = timeout + REFRESH_GRACE;
        self
    }

    fn count(&self, outcome: &str) {
        METRICS
            .store_cache_requests
            .with_label_values(&[&self.store, outcome])
            .inc();
    }

    /// The entry `call` of `remote` reads: from the cache (with its age), or read from the
    /// backend — once for every concurrent caller of the same key. A read by this call
    /// has no age.
    async fn lookup(
        &self,
        call: Call,
        remote: &RemoteRef,
    ) -> Result<(Arc<Entry>, Option<CacheAge>), ProviderError> {
        let key = CacheKey::new(call, remote);
        if let Some(entry) = self.cache.get(&key).await {
            let age = entry.at.elapsed();
            // Without staleIfError the cache's own ttl decides (an entry is gone after it).
            if self.stale_if_error.is_zero() || age <= self.ttl {
                self.count("hit");
                return Ok((entry, Some(CacheAge { age, stale: false })));
            }
            return self.refresh(key, call, remote, entry).await;
        }
        let fetched = AtomicBool::new(false);
        let init = async {
            fetched.store(true, Ordering::Relaxed);
            read(self.inner.clone(), call, remote.clone())
                .await
                .map(|body| {
                    Arc::new(Entry {
                        at: Instant::now(),
                        body,
                    })
                })
        };
        let result = self.cache.try_get_with(key, init).await;
        let own = self.read_by(&fetched);
        match result {
            Ok(entry) => Ok(self.fetched(entry, own)),
            Err(e) => Err((*e).clone()),
        }
    }

    /// Reads `key` again for an entry past its ttl (`stale`), once for every concurrent
    /// caller: a value replaces the entry; a definite answer evicts it; the backend down,
    /// or slower than the refresh deadline, the stale value is answered while its age is
    /// within `ttl + staleIfError`.
    async fn refresh(
        &self,
        key: CacheKey,
        call: Call,
        remote: &RemoteRef,
        stale: Arc<Entry>,
    ) -> Result<(Arc<Entry>, Option<CacheAge>), ProviderError> {
        let (flight, own) = {
            let mut refreshing = lock_refreshing(&self.refreshing);
            match refreshing.get(&key) {
                Some(flight) => (flight.clone(), false),
                None => {
                    let flight = self.start_refresh(&key, call, remote);
                    refreshing.insert(key.clone(), flight.clone());
                    (flight, true)
                }
            }
        };
        let waiter = Waiter {
            refreshing: &self.refreshing,
            key: &key,
            flight: Some(flight),
        };
        let result = waiter.outcome().await;
        drop(waiter);
        self.count(if own { "miss" } else { "coalesced" });
        match result {
            Ok(entry) => Ok(self.fetched(entry, own)),
            Err(e) if serves_stale(&e) => {
                let age = stale.at.elapsed();
                if age > self.ttl + self.stale_if_error {
                    return Err(e);
                }
                METRICS
                    .store_cache_stale_served
                    .with_label_values(&[&self.store])
                    .inc();
                if !self.serving_stale.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        store = %self.store,
                        error = e.kind(),
                        "store cache serving stale values: the backend is unavailable"
                    );
                }
                Ok((stale, Some(CacheAge { age, stale: true })))
            }
            Err(e) => Err(e),
        }
    }

    /// Starts the refresh of `key` in a task of its own (it owns what it needs, so it may
    /// outlive its callers): bounded by `refresh_limit`; a value replaces the entry, a
    /// definite answer evicts it; then it leaves the map and publishes its outcome.
    fn start_refresh(&self, key: &CacheKey, call: Call, remote: &RemoteRef) -> Arc<Flight> {
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let (publish, outcome) = tokio::sync::watch::channel(None);
        let cache = self.cache.clone();
        let refreshing = self.refreshing.clone();
        let serving_stale = self.serving_stale.clone();
        let store = self.store.clone();
        let owned_key = key.clone();
        let limit = self.refresh_limit;
        let reading = read(self.inner.clone(), call, remote.clone());
        let slots = self.refresh_slots.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let key = owned_key;
            let bounded = async move {
                // The semaphore is never closed; were it, the refresh fails as unavailable.
                let _slot = slots.acquire_owned().await.map_err(|_| {
                    ProviderError::Unavailable("the store cache's refresh slots are closed".into())
                })?;
                reading.await
            };
            let result = tokio::time::timeout(limit, bounded)
                .await
                .unwrap_or(Err(ProviderError::Timeout));
            // The refresh may end after its entry was evicted and read again by a miss: an
            // entry read after this refresh started is newer than its answer, and stays.
            let newer = move |current: Option<moka::Entry<CacheKey, Arc<Entry>>>| {
                current.is_some_and(|c| c.value().at > started)
            };
            let result = match result {
                Ok(body) => {
                    let entry = Arc::new(Entry {
                        at: Instant::now(),
                        body,
                    });
                    let put = entry.clone();
                    cache
                        .entry(key.clone())
                        .and_compute_with(|current| {
                            let op = if newer(current) {
                                moka::ops::compute::Op::Nop
                            } else {
                                moka::ops::compute::Op::Put(put)
                            };
                            std::future::ready(op)
                        })
                        .await;
                    backend_answered(&serving_stale, &store);
                    Ok(entry)
                }
                Err(e) => {
                    if !serves_stale(&e) {
                        // A definite answer: the stale value must not outlive it (a newer
                        // entry read since is the backend's later word, and stays).
                        cache
                            .entry(key.clone())
                            .and_compute_with(|current| {
                                let op = if newer(current) {
                                    moka::ops::compute::Op::Nop
                                } else {
                                    moka::ops::compute::Op::Remove
                                };
                                std::future::ready(op)
                            })
                            .await;
                    }
                    Err(e)
                }
            };
            {
                let mut map = lock_refreshing(&refreshing);
                if map.get(&key).is_some_and(|f| f.id == id) {
                    map.remove(&key);
                }
            }
            publish.send_replace(Some(result));
        });
        Arc::new(Flight {
            id,
            outcome,
            deadline: tokio::time::Instant::now() + self.refresh_deadline,
            detached: AtomicBool::new(false),
            task: task.abort_handle(),
        })
    }

    /// Whether this call made the backend read (else it waited for another's), counted.
    fn read_by(&self, fetched: &AtomicBool) -> bool {
        let own = fetched.load(Ordering::Relaxed);
        self.count(if own { "miss" } else { "coalesced" });
        own
    }

    /// An entry read from the backend, by this call (`own`: no age) or another.
    fn fetched(&self, entry: Arc<Entry>, own: bool) -> (Arc<Entry>, Option<CacheAge>) {
        if own {
            backend_answered(&self.serving_stale, &self.store);
        }
        let age = (!own).then(|| CacheAge {
            age: entry.at.elapsed(),
            stale: false,
        });
        (entry, age)
    }

    #[cfg(test)]
    fn lock_refreshing(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Arc<Flight>>> {
        lock_refreshing(&self.refreshing)
    }
}

/// The backend answered a read: stale values, if any were served, are no longer.
fn backend_answered(serving_stale: &AtomicBool, store: &str) {
    if serving_stale.swap(false, Ordering::Relaxed) {
        tracing::info!(
            store = %store,
            "store cache serving fresh values again: the backend answers"
        );
    }
}

/// What `call` of `remote` answers, read from `inner` (owned: a refresh may outlive its
/// callers).
async fn read(
    inner: Arc<dyn SecretProvider>,
    call: Call,
    remote: RemoteRef,
) -> Result<Body, ProviderError> {
    match call {
        Call::GetSecret => inner
            .get_secret(&remote)
            .await
            .map(|v| Body::Value(Zeroizing::new(v))),
        Call::GetSecretMap => inner
            .get_secret_map(&remote)
            .await
            .map(|m| Body::Map(m.into_iter().map(|(k, v)| (k, Zeroizing::new(v))).collect())),
    }
}

#[async_trait::async_trait]
impl SecretProvider for Cached {
    super::forward_canonical!(inner);

    async fn get_secret(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
        self.get_secret_with_age(remote).await.map(|(v, _)| v)
    }

    async fn get_secret_map(
        &self,
        remote: &RemoteRef,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        self.get_secret_map_with_age(remote).await.map(|(m, _)| m)
    }

    async fn get_secret_with_age(
        &self,
        remote: &RemoteRef,
    ) -> Result<(Vec<u8>, Option<CacheAge>), ProviderError> {
        let (entry, age) = self.lookup(Call::GetSecret, remote).await?;
        match &entry.body {
            Body::Value(v) => Ok((v.to_vec(), age)),
            Body::Map(_) => Err(ProviderError::Backend("cache entry of another call".into())),
        }
    }

    async fn get_secret_map_with_age(
        &self,
        remote: &RemoteRef,
    ) -> Result<(BTreeMap<String, Vec<u8>>, Option<CacheAge>), ProviderError> {
        let (entry, age) = self.lookup(Call::GetSecretMap, remote).await?;
        match &entry.body {
            Body::Map(m) => Ok((
                m.iter().map(|(k, v)| (k.clone(), v.to_vec())).collect(),
                age,
            )),
            Body::Value(_) => Err(ProviderError::Backend("cache entry of another call".into())),
        }
    }

    // Not the default: the inner store's own `find` (retried by `Resilient`).
    async fn find(&self, find: &FindRequest) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        self.inner.find(find).await
    }

    async fn find_allowed(
        &self,
        find: &FindRequest,
        allow: &KeyFilter<'_>,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        self.inner.find_allowed(find, allow).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::AtomicUsize;

    /// Counts reads; `key` "missing" is not found, "down" is unavailable.
    struct Counting {
        calls: AtomicUsize,
        delay: Duration,
    }

    #[async_trait::async_trait]
    impl SecretProvider for Counting {
        fn kind(&self) -> &'static str {
            "cache_test"
        }
        async fn get_secret(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            match remote.key.as_str() {
                "missing" => Err(ProviderError::NotFound),
                "down" => Err(ProviderError::Unavailable("down".into())),
                "big" => Ok(vec![b'x'; 4096]),
                k => Ok(format!("{k}:{}:{n}", remote.property.as_deref().unwrap_or("")).into()),
            }
        }
        async fn get_secret_map(
            &self,
            remote: &RemoteRef,
        ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok([(remote.key.clone(), b"map".to_vec())].into())
        }
        async fn find_allowed(
            &self,
            _: &FindRequest,
            _: &KeyFilter<'_>,
        ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(BTreeMap::new())
        }
    }

    fn settings(ttl_ms: u64) -> CacheSettings {
        CacheSettings {
            ttl: Duration::from_millis(ttl_ms),
            max_entries: 100,
            max_bytes: 1 << 20,
            stale_if_error: Duration::ZERO,
        }
    }

    fn cached(ttl_ms: u64, delay_ms: u64) -> (Arc<Counting>, Cached) {
        let inner = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            delay: Duration::from_millis(delay_ms),
        });
        let c = Cached::new("cache-test", inner.clone(), &settings(ttl_ms));
        (inner, c)
    }

    fn key(k: &str) -> RemoteRef {
        RemoteRef {
            key: k.into(),
            ..Default::default()
        }
    }

    #[test]
    fn spec_is_checked_with_clear_messages() {
        let ok = CacheSettings::from_spec("s", &json!({"ttl": "30s"})).unwrap();
        assert_eq!(ok.ttl, Duration::from_secs(30));
        assert_eq!(ok.max_entries, DEFAULT_MAX_ENTRIES);
        assert_eq!(ok.max_bytes, DEFAULT_MAX_BYTES);
        let full = CacheSettings::from_spec(
            "s",
            &json!({"ttl": "1h", "maxEntries": 10, "maxBytes": "512Ki"}),
        )
        .unwrap();
        assert_eq!((full.max_entries, full.max_bytes), (10, 512 << 10));
        assert_eq!(
            CacheSettings::from_spec("s", &json!({"ttl": "1m", "maxBytes": 4096}))
                .unwrap()
                .max_bytes,
            4096
        );
        for (block, needle) in [
            (json!({}), "ttl is required"),
            (json!({"ttl": "2h"}), "at most 1h"),
            (json!({"ttl": "0s"}), "more than 0"),
            (json!({"ttl": "soon"}), "ttl: invalid duration"),
            (json!({"ttl": "1m", "maxEntries": 0}), "maxEntries"),
            (json!({"ttl": "1m", "maxBytes": "16Xi"}), "maxBytes"),
            (
                json!({"ttl": "1m", "maxBytes": "2Gi"}),
                "between 1Ki and 1Gi",
            ),
            (json!({"ttl": "1m", "size": 1}), "unknown field `size`"),
            (json!("30s"), "invalid type"),
        ] {
            let err = CacheSettings::from_spec("s", &block)
                .unwrap_err()
                .to_string();
            assert!(err.contains("store s: invalid spec.cache"), "{err}");
            assert!(err.contains(needle), "{block}: {err}");
        }
    }

    #[test]
    fn stale_if_error_is_bounded_and_off_by_default() {
        let off = CacheSettings::from_spec("s", &json!({"ttl": "30s"})).unwrap();
        assert_eq!(off.stale_if_error, Duration::ZERO);
        let on =
            CacheSettings::from_spec("s", &json!({"ttl": "30s", "staleIfError": "5m"})).unwrap();
        assert_eq!(on.stale_if_error, Duration::from_secs(300));
        let max =
            CacheSettings::from_spec("s", &json!({"ttl": "1s", "staleIfError": "24h"})).unwrap();
        assert_eq!(max.stale_if_error, MAX_STALE_IF_ERROR);
        for (v, needle) in [
            (json!("25h"), "staleIfError must be at most 24h"),
            (json!("-1s"), "staleIfError: invalid duration"),
            (json!("soon"), "staleIfError: invalid duration"),
            (json!(300), "invalid type"),
        ] {
            let err = CacheSettings::from_spec("s", &json!({"ttl": "30s", "staleIfError": v}))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{v}: {err}");
        }
    }

    /// A backend whose answer the test switches: a value (numbered by call), down, not
    /// found, refused, or its circuit open.
    struct Switch {
        calls: AtomicUsize,
        mode: Mutex<Result<(), ProviderError>>,
        delay: Mutex<Duration>,
        /// Reads under way, and the most seen at once.
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    impl Switch {
        fn new(delay: Duration) -> Arc<Self> {
            Arc::new(Switch {
                calls: AtomicUsize::new(0),
                mode: Mutex::new(Ok(())),
                delay: Mutex::new(delay),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
            })
        }
        fn set(&self, mode: Result<(), ProviderError>) {
            *self.mode.lock().unwrap() = mode;
        }
        fn set_delay(&self, delay: Duration) {
            *self.delay.lock().unwrap() = delay;
        }
    }

    #[async_trait::async_trait]
    impl SecretProvider for Switch {
        fn kind(&self) -> &'static str {
            "cache_switch"
        }
        async fn get_secret(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let delay = *self.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let mode = self.mode.lock().unwrap().clone();
            mode.map(|()| format!("{}:{n}", remote.key).into_bytes())
        }
        async fn get_secret_map(
            &self,
            remote: &RemoteRef,
        ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
            self.get_secret(remote)
                .await
                .map(|v| [("k".to_string(), v)].into())
        }
    }

    fn stale_cache(
        store: &str,
        ttl_ms: u64,
        stale_ms: u64,
        delay_ms: u64,
    ) -> (Arc<Switch>, Cached) {
        let inner = Switch::new(Duration::from_millis(delay_ms));
        let settings = CacheSettings {
            stale_if_error: Duration::from_millis(stale_ms),
            ..settings(ttl_ms)
        };
        (inner.clone(), Cached::new(store, inner, &settings))
    }

    /// `c` with refreshes waited for `deadline_ms` (¾ of a backend timeout).
    fn bounded(c: Cached, deadline_ms: u64) -> Cached {
        c.with_backend_timeout(Duration::from_millis(deadline_ms * 4 / 3))
    }

    fn stale_served(store: &str) -> u64 {
        METRICS
            .store_cache_stale_served
            .with_label_values(&[store])
            .get()
    }

    /// Past its ttl, a value is refreshed; the backend down (unavailable, timed out,
    /// circuit open), the last good value is answered stale with its true age; never a
    /// key not cached, and never after a definite answer, which evicts it.
    #[tokio::test]
    async fn stale_if_error_serves_the_last_good_value_while_the_backend_is_down() {
        let (inner, c) = stale_cache("stale-test", 100, 60_000, 0);
        let (v1, age) = c.get_secret_with_age(&key("a")).await.unwrap();
        assert_eq!((v1.as_slice(), age), (b"a:0".as_slice(), None));
        let m1 = c.get_secret_map(&key("a")).await.unwrap();
        // Fresh: a hit, not stale.
        let (_, age) = c.get_secret_with_age(&key("a")).await.unwrap();
        assert!(age.is_some_and(|a| !a.stale));
        tokio::time::sleep(Duration::from_millis(150)).await;
        for down in [
            ProviderError::Unavailable("vault answered HTTP 503".into()),
            ProviderError::Timeout,
            ProviderError::Unavailable(crate::providers::resilient::CIRCUIT_OPEN.into()),
        ] {
            inner.set(Err(down.clone()));
            let before = stale_served("stale-test");
            let (v, age) = c.get_secret_with_age(&key("a")).await.unwrap();
            assert_eq!(v, v1, "{down:?}");
            let age = age.unwrap();
            assert!(age.stale, "{down:?}");
            assert!(age.age >= Duration::from_millis(150), "the true age");
            let (m, map_age) = c.get_secret_map_with_age(&key("a")).await.unwrap();
            assert_eq!(m, m1);
            assert!(map_age.is_some_and(|a| a.stale));
            assert_eq!(stale_served("stale-test"), before + 2);
            // A key never read gets the error.
            assert_eq!(c.get_secret(&key("never")).await, Err(down));
        }
        // The backend back: the refresh replaces the value, which is fresh again.
        inner.set(Ok(()));
        let (v, age) = c.get_secret_with_age(&key("a")).await.unwrap();
        assert_ne!(v, v1);
        assert_eq!(age, None, "read by this call");
        let (_, age) = c.get_secret_with_age(&key("a")).await.unwrap();
        assert!(age.is_some_and(|a| !a.stale));

        // A definite answer is answered, and evicts the stale value.
        for definite in [
            ProviderError::NotFound,
            ProviderError::Backend("permission denied".into()),
            ProviderError::InvalidRequest("bad".into()),
        ] {
            inner.set(Ok(()));
            c.get_secret(&key("b")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
            inner.set(Err(definite.clone()));
            assert_eq!(c.get_secret(&key("b")).await, Err(definite.clone()));
            inner.set(Err(ProviderError::Timeout));
            assert_eq!(
                c.get_secret(&key("b")).await,
                Err(ProviderError::Timeout),
                "{definite:?} evicted the stale value"
            );
        }
    }

    #[tokio::test]
    async fn without_stale_if_error_or_past_it_the_error_is_answered() {
        // Off (the default).
        let (inner, c) = stale_cache("stale-off", 100, 0, 0);
        c.get_secret(&key("a")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        inner.set(Err(ProviderError::Timeout));
        assert_eq!(c.get_secret(&key("a")).await, Err(ProviderError::Timeout));
        // Older than ttl + staleIfError.
        let (inner, c) = stale_cache("stale-past", 50, 100, 0);
        c.get_secret(&key("a")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        inner.set(Err(ProviderError::Timeout));
        assert_eq!(c.get_secret(&key("a")).await, Err(ProviderError::Timeout));
        assert_eq!(stale_served("stale-off") + stale_served("stale-past"), 0);
    }

    /// Concurrent reads of a stale entry make one refresh, and all get its answer (the new
    /// value, or the stale one when it failed); a slow backend is given up on in time.
    #[tokio::test]
    async fn stale_refreshes_are_coalesced_and_bounded() {
        let (inner, c) = stale_cache("stale-coalesce", 100, 60_000, 50);
        let c = Arc::new(bounded(c, 500));
        let v1 = c.get_secret(&key("a")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let read_all = |c: Arc<Cached>| async move {
            let tasks: Vec<_> = (0..50)
                .map(|_| {
                    let c = c.clone();
                    tokio::spawn(async move { c.get_secret_with_age(&key("a")).await })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap().unwrap());
            }
            out
        };
        inner.set(Err(ProviderError::Unavailable("down".into())));
        let answers = read_all(c.clone()).await;
        assert!(
            answers
                .iter()
                .all(|(v, a)| *v == v1 && a.is_some_and(|a| a.stale))
        );
        assert_eq!(
            inner.calls.load(Ordering::SeqCst),
            2,
            "one refresh for 50 reads"
        );
        inner.set(Ok(()));
        let answers = read_all(c.clone()).await;
        assert!(answers.iter().all(|(v, _)| v.as_slice() == b"a:2"));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        assert!(c.lock_refreshing().is_empty());
        // A backend slower than the refresh deadline: the stale value, in time.
        let slow = Switch::new(Duration::ZERO);
        let c = Cached::new(
            "stale-slow",
            slow.clone(),
            &CacheSettings {
                stale_if_error: Duration::from_secs(60),
                ..settings(100)
            },
        );
        let c = bounded(c, 200);
        let v = c.get_secret(&key("a")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let slow_inner = Switch::new(Duration::from_secs(30));
        let c = Cached {
            inner: slow_inner,
            ..c
        };
        let start = Instant::now();
        let (again, age) = c.get_secret_with_age(&key("a")).await.unwrap();
        assert_eq!(again, v);
        assert!(age.is_some_and(|a| a.stale));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    /// Refreshes that outlive their callers are bounded per store: a slow backend and many
    /// stale keys read at once never have more than `MAX_REFRESHES_PER_STORE` reads under
    /// way (review finding 4 of issue 14: before, one per stale key, up to `maxEntries`),
    /// and every refresh still completes and replaces its entry.
    #[tokio::test]
    async fn detached_refreshes_are_bounded_per_store() {
        // A ttl that outlasts the refreshes (three waves of 150 ms), so their entries are
        // still fresh when checked.
        let (inner, c) = stale_cache("stale-slots", 1000, 60_000, 0);
        let c = Arc::new(bounded(c, 60));
        let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        for k in &keys {
            c.get_secret(&key(k)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1050)).await;
        inner.set_delay(Duration::from_millis(150));
        let tasks: Vec<_> = keys
            .iter()
            .map(|k| {
                let (c, k) = (c.clone(), k.clone());
                tokio::spawn(async move { c.get_secret_with_age(&key(&k)).await })
            })
            .collect();
        for t in tasks {
            let (_, age) = t.await.unwrap().unwrap();
            assert!(
                age.is_some_and(|a| a.stale),
                "answered stale at the deadline"
            );
        }
        // The refreshes go on in the background, in waves of at most the bound.
        for _ in 0..100 {
            if inner.calls.load(Ordering::SeqCst) == 80 && c.lock_refreshing().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            inner.calls.load(Ordering::SeqCst),
            80,
            "every refresh read once"
        );
        assert!(c.lock_refreshing().is_empty());
        let most = inner.max_in_flight.load(Ordering::SeqCst);
        assert!(
            (2..=MAX_REFRESHES_PER_STORE).contains(&most),
            "{most} reads at once"
        );
        // Each entry was replaced by its refresh: fresh again.
        inner.set_delay(Duration::ZERO);
        for k in &keys {
            let (v, age) = c.get_secret_with_age(&key(k)).await.unwrap();
            assert!(age.is_some_and(|a| !a.stale), "{k}");
            assert!(v.starts_with(k.as_bytes()));
        }
        assert_eq!(
            inner.calls.load(Ordering::SeqCst),
            80,
            "answered from the cache"
        );
    }

    /// F1 (a): a backend that never answers, behind the breaker (one failure opens it):
    /// the refresh given up on at the deadline is still recorded as timed out, so the
    /// circuit opens and later stale answers are immediate (before: each waited for the
    /// deadline, and the circuit never opened).
    #[tokio::test]
    async fn a_hung_backend_opens_the_circuit_and_stale_answers_become_immediate() {
        let inner = Switch::new(Duration::ZERO);
        let resilient = Arc::new(super::super::resilient::Resilient::new(
            "stale-hung",
            inner.clone(),
            super::super::resilient::ResilienceSettings {
                retry_window: Duration::from_millis(266),
                failure_threshold: 1,
                cool_down: Duration::from_secs(60),
                ..super::super::resilient::ResilienceSettings::with_backend_timeout(
                    Duration::from_millis(266),
                )
            },
        ));
        let c = Cached::new(
            "stale-hung",
            resilient,
            &CacheSettings {
                stale_if_error: Duration::from_secs(60),
                ..settings(100)
            },
        );
        let c = bounded(c, 200);
        let v = c.get_secret(&key("a")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        inner.set_delay(Duration::from_secs(30));
        let (again, age) = c.get_secret_with_age(&key("a")).await.unwrap();
        assert_eq!(again, v);
        assert!(age.is_some_and(|a| a.stale));
        // The refresh's limit (backend timeout + 1 s) passes: the attempt timed out.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let start = Instant::now();
        let (again, age) = c.get_secret_with_age(&key("a")).await.unwrap();
        let took = start.elapsed();
        assert_eq!(again, v);
        assert!(age.is_some_and(|a| a.stale));
        assert!(took < Duration::from_millis(50), "took {took:?}");
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2, "the circuit is open");
    }

    /// F1 (b): a backend slower than the refresh deadline but alive: the stale value is
    /// answered in time, and the refresh's answer still replaces the entry (before: it was
    /// dropped, and the value stayed stale while the backend answered).
    #[tokio::test]
    async fn a_slow_answer_still_replaces_the_stale_entry() {
        let (inner, c) = stale_cache("stale-slowish", 100, 60_000, 0);
        let c = bounded(c, 100);
        let v1 = c.get_secret(&key("a")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        inner.set_delay(Duration::from_millis(150));
        let start = Instant::now();
        let (v, age) = c.get_secret_with_age(&key("a")).await.unwrap();
        assert_eq!(v, v1);
        assert!(age.is_some_and(|a| a.stale));
        assert!(start.elapsed() < Duration::from_millis(140));
        tokio::time::sleep(Duration::from_millis(300)).await;
        // (Stale again by now, and refreshed again, slowly: answered from the entry.)
        let v = c.get_secret(&key("a")).await.unwrap();
        assert_eq!(v, b"a:1", "the slow refresh's answer");
    }

    /// Review 52 finding 5: a refresh that ends after its entry was evicted and read again
    /// by a miss does not overwrite that newer entry with its older answer.
    #[tokio::test]
    async fn a_late_refresh_does_not_overwrite_a_newer_entry() {
        let (inner, c) = stale_cache("stale-late", 1_000, 60_000, 0);
        let c = bounded(c, 100);
        assert_eq!(c.get_secret(&key("a")).await.unwrap(), b"a:0");
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        inner.set_delay(Duration::from_millis(600));
        // Stale: answered from the entry; the refresh (call 1) goes on in the background.
        let (v, age) = c.get_secret_with_age(&key("a")).await.unwrap();
        assert_eq!(v, b"a:0");
        assert!(age.is_some_and(|a| a.stale));
        // The entry is evicted and read again by a miss (call 2) while the refresh runs.
        c.cache.invalidate_all();
        c.cache.run_pending_tasks().await;
        inner.set_delay(Duration::ZERO);
        assert_eq!(c.get_secret(&key("a")).await.unwrap(), b"a:2");
        // The refresh ends (answering a:1, read before a:2): a:2 stays.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(c.get_secret(&key("a")).await.unwrap(), b"a:2");
    }

    /// F3: a refresh whose every caller is cancelled before its deadline leaves nothing in
    /// the map of refreshes under way (before: its entry stayed for good).
    #[tokio::test]
    async fn a_refresh_whose_callers_are_all_cancelled_leaves_nothing() {
        let (inner, c) = stale_cache("stale-cancel", 100, 60_000, 0);
        let c = Arc::new(bounded(c, 5_000));
        c.get_secret(&key("a")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        inner.set_delay(Duration::from_secs(30));
        let reader = {
            let c = c.clone();
            tokio::spawn(async move { c.get_secret(&key("a")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(c.lock_refreshing().len(), 1, "under way");
        reader.abort();
        assert!(reader.await.unwrap_err().is_cancelled());
        assert!(c.lock_refreshing().is_empty());
    }

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes(&json!("16Mi")), Some(16 << 20));
        assert_eq!(parse_bytes(&json!("2k")), Some(2000));
        assert_eq!(parse_bytes(&json!("100")), Some(100));
        assert_eq!(parse_bytes(&json!(7)), Some(7));
        for bad in [
            json!("Mi"),
            json!("-1"),
            json!("1.5Mi"),
            json!(-3),
            json!(true),
        ] {
            assert_eq!(parse_bytes(&bad), None, "{bad}");
        }
        assert_eq!(parse_bytes(&json!("999999999999Gi")), None);
    }

    #[tokio::test]
    async fn hits_carry_an_age_and_keys_are_the_whole_reference() {
        let (inner, c) = cached(60_000, 0);
        let (v1, age1) = c.get_secret_with_age(&key("a")).await.unwrap();
        assert_eq!(age1, None, "a read by this call has no age");
        let (v2, age2) = c.get_secret_with_age(&key("a")).await.unwrap();
        assert_eq!(v1, v2);
        assert!(age2.is_some());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
        // Another property, version or call is another entry.
        let with_prop = RemoteRef {
            property: Some("p".into()),
            ..key("a")
        };
        let with_version = RemoteRef {
            version: Some("2".into()),
            ..key("a")
        };
        c.get_secret(&with_prop).await.unwrap();
        c.get_secret(&with_version).await.unwrap();
        c.get_secret_map(&key("a")).await.unwrap();
        let (_, map_age) = c.get_secret_map_with_age(&key("a")).await.unwrap();
        assert!(map_age.is_some());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 4);
        // find is never cached.
        c.find(&FindRequest::default()).await.unwrap();
        c.find(&FindRequest::default()).await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn concurrent_misses_make_one_call() {
        let (inner, c) = cached(60_000, 50);
        let c = Arc::new(c);
        let before = METRICS
            .store_cache_requests
            .with_label_values(&["cache-test", "coalesced"])
            .get();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.get_secret_with_age(&key("hot")).await })
            })
            .collect();
        let mut without_age = 0;
        for t in tasks {
            let (v, age) = t.await.unwrap().unwrap();
            assert!(v.starts_with(b"hot:"));
            without_age += usize::from(age.is_none());
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
        assert_eq!(without_age, 1, "only the caller that read has no age");
        let after = METRICS
            .store_cache_requests
            .with_label_values(&["cache-test", "coalesced"])
            .get();
        assert!(after > before);
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let (inner, c) = cached(60_000, 0);
        for _ in 0..3 {
            assert_eq!(
                c.get_secret(&key("missing")).await,
                Err(ProviderError::NotFound)
            );
            assert!(matches!(
                c.get_secret(&key("down")).await,
                Err(ProviderError::Unavailable(_))
            ));
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let (inner, c) = cached(100, 0);
        let first = c.get_secret(&key("a")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = c.get_secret(&key("a")).await.unwrap();
        assert_ne!(first, second, "re-read after the ttl");
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_entries() {
        let inner = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            delay: Duration::ZERO,
        });
        // 8 KiB hold at most one 4 KiB value plus small ones; 4 entries at most.
        let c = Cached::new(
            "cache-bounds",
            inner.clone(),
            &CacheSettings {
                ttl: Duration::from_secs(60),
                max_entries: 4,
                max_bytes: 8 << 10,
                stale_if_error: Duration::ZERO,
            },
        );
        for i in 0..20 {
            c.get_secret(&key(&format!("k{i}"))).await.unwrap();
            c.get_secret(&key("big")).await.unwrap();
        }
        c.cache.run_pending_tasks().await;
        assert!(c.cache.entry_count() <= 4, "{}", c.cache.entry_count());
        assert!(c.cache.weighted_size() <= 8 << 10);
        let evicted = METRICS
            .store_cache_evictions
            .with_label_values(&["cache-bounds", "size"])
            .get();
        assert!(evicted > 0);
    }
}
