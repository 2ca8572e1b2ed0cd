//! The ledger as Kubernetes objects, for several replicas in one cluster without a database
//! (issue 10): every replica sees every issued credential, so a `DELETE`, a renewal or the
//! sweeper may run on another replica than the `POST` did.
//!
//! # Objects (ESO's and ESE's shapes)
//!
//! **One ESO `GeneratorState` per credential** (`generators.external-secrets.io/v1alpha1`,
//! namespaced): the source of truth.
//!
//! ```yaml
//! apiVersion: generators.external-secrets.io/v1alpha1
//! kind: GeneratorState
//! metadata:
//!   name: esi-<entry id>                      # the credential handle, a UUID
//!   namespace: <the server's own namespace>  # never a tenant's (see KubernetesLedger::new)
//!   labels:
//!     app.kubernetes.io/managed-by: esi-federation
//!     esi-federation/owner: <40 hex: SHA-256 of federation, namespace, pod|serviceaccount, name>
//!     esi-federation/identity: <the holder's AuthorizedIdentity name>
//! spec:
//!   resource: {apiVersion: generators.external-secrets.io/v1alpha1, kind: <kind>,
//!              metadata: {name: <generator>, namespace: <namespace>}}   # a reference, no spec
//!   state: <the LedgerEntry as JSON: holder, generator, revocation state, expiry, retries>
//!   garbageCollectionDeadline: <expires_at, RFC 3339>   # absent when it never expires
//! ```
//!
//! `spec.state` holds revocation handles (a Vault lease id, an accessor), never a credential
//! value: whoever may read GeneratorStates may revoke those credentials at their backend
//! with the backend's own rights, so RBAC on `generatorstates` is as sensitive as the
//! ledger file of directory mode (`docs/deploy.md`, "Which ledger").
//!
//! **One ESE `AuthorizedIdentity` per holder** (`federation.external-secrets.io/v1alpha1`,
//! cluster-scoped; the holder is the workload the credential was issued to):
//! `spec.identitySpec {federationRef: {kind: KubernetesFederation, name}, subject: {oidc:
//! {issuer, subject}}}` and `spec.issuedCredentials[]`, one per GeneratorState of that holder
//! (`sourceRef` the generator, `stateRef` the GeneratorState, `workloadBinding` the Pod or
//! ServiceAccount, `lastIssuedAt`), newest [`MAX_LISTED_CREDENTIALS`] at most. It is what
//! `kubectl get authorizedidentities` shows, and is derived: after each `record` and
//! `remove` the list is rebuilt from that holder's GeneratorStates and written with the
//! `resourceVersion` it read (retried on `409`). If that fails it is logged (at most once a
//! minute) and the next write for the same holder repairs it; the GeneratorState is never
//! lost or duplicated for it.
//!
//! # Consistency under racing replicas
//!
//! * `record` returns once the GeneratorState is created (durable in etcd).
//! * `claim`, `renewed` and `mark_retry` read the object from the API server (never from
//!   the cache), decide, and replace it with the `resourceVersion` they read; on `409
//!   Conflict` they read again and decide again. Of two replicas claiming one entry exactly
//!   one gets it, and a stale cache can never cause a second revocation.
//! * `remove` deletes with the `resourceVersion` it read as precondition (re-read on `409`)
//!   and reports false when the object is gone (`404`) or already being deleted.
//! * `get` and `by_owner` read the API server (a `DELETE` reaching another replica right
//!   after the `POST` finds the credential); `due` and `count` read a cache fed by a watch
//!   on `app.kubernetes.io/managed-by=esi-federation` (the sweeper only needs it eventually
//!   right, and its `claim` re-checks each entry). The cache also applies this replica's
//!   own writes at once; objects are ordered by `resourceVersion` so that a late watch event
//!   never undoes a newer write.
//! * An object with `metadata.deletionTimestamp` (held by someone's finalizer) counts as
//!   removed.
//!
//! Every name and label value is derived (an id, a hash) and checked against Kubernetes'
//! limits; errors carry the API server's status code and reason, never an object body or
//! its message (which may echo field values).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions,
};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::{Holder, Ledger, LedgerEntry, LedgerError, Owner, OwnerKind};
use crate::generators;

/// `app.kubernetes.io/managed-by` value on every object this ledger writes.
pub const MANAGED_BY: &str = "esi-federation";
/// The standard label naming the writer.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label on each GeneratorState: 40 hex characters of SHA-256 over the owner (federation,
/// namespace, `pod` or `serviceaccount`, name; each length-prefixed). Label values are
/// limited to 63 characters, owner names are not.
pub const OWNER_LABEL: &str = "esi-federation/owner";
/// Label on each GeneratorState: the name of its holder's `AuthorizedIdentity`.
pub const IDENTITY_LABEL: &str = "esi-federation/identity";
/// Prefix of every GeneratorState name this ledger writes (then the entry id).
pub const NAME_PREFIX: &str = "esi-";
/// Most `issuedCredentials` listed in one `AuthorizedIdentity` (the newest): bounds the
/// object's size (each item is about 500 bytes; etcd refuses objects over 1.5 MiB).
pub const MAX_LISTED_CREDENTIALS: usize = 1000;
/// Largest `spec.state` (the encoded entry) written, in bytes.
const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// Attempts of one read-modify-write before giving up (each `409` re-reads).
const MAX_ATTEMPTS: usize = 8;
/// How long [`KubernetesLedger::new`] waits for the first list of GeneratorStates.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the cache remembers a removed object (against late watch events).
const TOMBSTONE_TTL: Duration = Duration::from_secs(300);

const GENERATORS_GROUP: &str = "generators.external-secrets.io";
const GENERATORS_API_VERSION: &str = "generators.external-secrets.io/v1alpha1";
const FEDERATION_API_VERSION: &str = "federation.external-secrets.io/v1alpha1";

fn generator_states() -> ApiResource {
    ApiResource {
        group: GENERATORS_GROUP.into(),
        version: "v1alpha1".into(),
        api_version: GENERATORS_API_VERSION.into(),
        kind: "GeneratorState".into(),
        plural: "generatorstates".into(),
    }
}

fn authorized_identities() -> ApiResource {
    ApiResource {
        group: "federation.external-secrets.io".into(),
        version: "v1alpha1".into(),
        api_version: FEDERATION_API_VERSION.into(),
        kind: "AuthorizedIdentity".into(),
        plural: "authorizedidentities".into(),
    }
}

fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// A short, value-free description of a failed API call: the status code and reason of an
/// API answer (its message may echo field values, so it is left out), else the client's
/// error, truncated.
fn api_error(what: &str, e: &kube::Error) -> LedgerError {
    match e {
        kube::Error::Api(s) => LedgerError::Storage(format!(
            "{what}: the Kubernetes API answered {} {}",
            s.code,
            bounded(&s.reason, 64)
        )),
        other => LedgerError::Storage(format!("{what}: {}", bounded(&other.to_string(), 200))),
    }
}

fn bounded(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Logs at most once a minute (repeated failures of one kind must not flood the log).
struct Throttle(AtomicU64);

impl Throttle {
    const fn new() -> Self {
        Throttle(AtomicU64::new(0))
    }

    fn allow(&self) -> bool {
        let now = generators::unix_now();
        let last = self.0.load(Ordering::Relaxed);
        (last == 0 || now >= last.saturating_add(60))
            && self
                .0
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

static IDENTITY_WARNINGS: Throttle = Throttle::new();
static MALFORMED_WARNINGS: Throttle = Throttle::new();
static WATCH_WARNINGS: Throttle = Throttle::new();

/// Whether `id` can be part of an object name: 1 to 64 characters of `[a-z0-9-]`, starting
/// and ending with a letter or digit (the ids this server issues are UUIDs). Anything else
/// was never recorded.
fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 label (a namespace name): 1 to 63 of `[a-z0-9-]`, alphanumeric at both ends.
fn valid_namespace(ns: &str) -> bool {
    let b = ns.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn object_name(id: &str) -> String {
    format!("{NAME_PREFIX}{id}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 over length-prefixed parts (prefix-free: `("ab","c")` and `("a","bc")` differ).
fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    hex(&h.finalize())
}

/// The [`OWNER_LABEL`] value of an owner of kind `kind`.
pub fn owner_hash(owner: &Owner, kind: OwnerKind) -> String {
    let mut h = digest(&[
        owner.federation.as_str(),
        owner.namespace.as_str(),
        kind.as_str(),
        owner.name.as_str(),
    ]);
    h.truncate(40);
    h
}

/// The name of `holder`'s `AuthorizedIdentity` (also its [`IDENTITY_LABEL`] value): at most
/// 63 characters, `esi-`, a readable part of the subject (`system:serviceaccount:` becomes
/// `sa-`), and 20 hex characters of SHA-256 over federation and subject, which make it
/// unique.
pub fn identity_name(holder: &Holder) -> String {
    let mut hash = digest(&[holder.federation.as_str(), holder.subject.as_str()]);
    hash.truncate(20);
    let subject = match holder.subject.strip_prefix("system:serviceaccount:") {
        Some(rest) => format!("sa-{rest}"),
        None => holder.subject.clone(),
    };
    let mut readable: String = subject
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    // Runs of dashes are legal but unreadable; collapse them, then bound the length.
    while readable.contains("--") {
        readable = readable.replace("--", "-");
    }
    let readable: String = readable.trim_matches('-').chars().take(38).collect();
    let readable = readable.trim_end_matches('-');
    if readable.is_empty() {
        format!("esi-{hash}")
    } else {
        format!("esi-{readable}-{hash}")
    }
}

fn rfc3339(at: u64) -> Option<String> {
    let at = i64::try_from(at).ok()?;
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

fn resource_version(obj: &DynamicObject) -> Option<u64> {
    obj.metadata.resource_version.as_deref()?.parse().ok()
}

fn being_deleted(obj: &DynamicObject) -> bool {
    obj.metadata.deletion_timestamp.is_some()
}

fn ours(obj: &DynamicObject) -> bool {
    obj.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY)
}

/// The entry a GeneratorState holds, checked against its name.
fn decode(obj: &DynamicObject) -> Result<LedgerEntry, LedgerError> {
    let state = obj
        .data
        .get("spec")
        .and_then(|s| s.get("state"))
        .ok_or_else(|| LedgerError::Codec("a GeneratorState has no spec.state".into()))?;
    // serde_json's message names a field or a position, never the content.
    let entry: LedgerEntry =
        serde_json::from_value(state.clone()).map_err(|e| LedgerError::Codec(e.to_string()))?;
    if obj.metadata.name.as_deref() != Some(object_name(&entry.id).as_str()) {
        return Err(LedgerError::Codec(
            "a GeneratorState's entry id does not match its name".into(),
        ));
    }
    Ok(entry)
}

fn encode(entry: &LedgerEntry) -> Result<Value, LedgerError> {
    let value = serde_json::to_value(entry).map_err(|e| LedgerError::Codec(e.to_string()))?;
    if value.to_string().len() > MAX_ENTRY_BYTES {
        return Err(LedgerError::Codec(format!(
            "the entry is larger than {MAX_ENTRY_BYTES} bytes"
        )));
    }
    Ok(value)
}

/// Writes `entry` into `spec.state` and its expiry into `spec.garbageCollectionDeadline`.
fn set_state(data: &mut Value, entry: &LedgerEntry) -> Result<(), LedgerError> {
    let state = encode(entry)?;
    if !data.is_object() {
        return Err(LedgerError::Codec(
            "a GeneratorState is not an object".into(),
        ));
    }
    if !data.get("spec").is_some_and(Value::is_object) {
        data["spec"] = json!({});
    }
    let Some(spec) = data.get_mut("spec").and_then(Value::as_object_mut) else {
        return Err(LedgerError::Codec("spec is not an object".into()));
    };
    spec.insert("state".into(), state);
    match entry.expires_at.and_then(rfc3339) {
        Some(deadline) => {
            spec.insert("garbageCollectionDeadline".into(), Value::String(deadline));
        }
        None => {
            spec.remove("garbageCollectionDeadline");
        }
    }
    Ok(())
}

/// The GeneratorState recording `entry`.
fn state_object(entry: &LedgerEntry, namespace: &str) -> Result<DynamicObject, LedgerError> {
    let owner = entry.holder.owner();
    let kind = owner.kind.unwrap_or(OwnerKind::ServiceAccount);
    let g = &entry.generator;
    let mut reference = json!({
        "apiVersion": GENERATORS_API_VERSION,
        "kind": g.kind,
        "metadata": {"name": g.name},
    });
    if !generators::is_cluster_scoped(&g.kind) {
        reference["metadata"]["namespace"] = json!(g.namespace);
    }
    let mut obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": GENERATORS_API_VERSION,
        "kind": "GeneratorState",
        "metadata": {
            "name": object_name(&entry.id),
            "namespace": namespace,
            "labels": {
                MANAGED_BY_LABEL: MANAGED_BY,
                OWNER_LABEL: owner_hash(&owner, kind),
                IDENTITY_LABEL: identity_name(&entry.holder),
            },
        },
        "spec": {"resource": reference},
    }))
    .map_err(|e| LedgerError::Codec(e.to_string()))?;
    set_state(&mut obj.data, entry)?;
    Ok(obj)
}

/// One `issuedCredentials` item (ESE's `IssuedCredential`) for the GeneratorState of `entry`.
fn issued_credential(entry: &LedgerEntry) -> Value {
    let g = &entry.generator;
    let mut source = json!({
        "apiVersion": GENERATORS_API_VERSION,
        "kind": g.kind,
        "name": g.name,
    });
    if !generators::is_cluster_scoped(&g.kind) {
        source["namespace"] = json!(g.namespace);
    }
    let h = &entry.holder;
    // An OIDC subject is no Kubernetes workload: it has no binding. A SPIFFE workload has
    // the one its path names (ESE's convention), if any.
    let kubernetes = h.principal_kind.is_service_account()
        || (h.principal_kind == crate::authn::PrincipalKind::SpiffeWorkload
            && !h.namespace.is_empty());
    let binding = match (&h.pod_name, kubernetes) {
        (_, false) => None,
        (Some(pod), true) => Some(json!({
            "kind": "Pod",
            "name": pod,
            "namespace": h.namespace,
            "uid": h.pod_uid.clone().unwrap_or_default(),
        })),
        (None, true) => Some(json!({
            "kind": "ServiceAccount",
            "name": h.service_account,
            "namespace": h.namespace,
            "uid": h.service_account_uid.clone().unwrap_or_default(),
        })),
    };
    let mut item = json!({
        "sourceRef": source,
        "stateRef": {
            "apiVersion": GENERATORS_API_VERSION,
            "kind": "GeneratorState",
            "name": object_name(&entry.id),
            "namespace": g.namespace,
        },
    });
    if let Some(binding) = binding {
        item["workloadBinding"] = binding;
    }
    if let Some(at) = rfc3339(entry.issued_at) {
        item["lastIssuedAt"] = json!(at);
    }
    item
}

fn identity_spec(holder: &Holder) -> Value {
    let kind = holder
        .federation_kind
        .as_deref()
        .unwrap_or("KubernetesFederation");
    // ESE's `FederationSubject`: a SPIFFE workload by its SPIFFE ID.
    let subject = if holder.principal_kind == crate::authn::PrincipalKind::SpiffeWorkload {
        json!({"spiffe": {"spiffeID": holder.subject}})
    } else {
        json!({"oidc": {"issuer": holder.issuer, "subject": holder.subject}})
    };
    json!({
        "federationRef": {"kind": kind, "name": holder.federation},
        "subject": subject,
    })
}

/// What the cache knows of one entry.
#[derive(Debug, Clone)]
enum Slot {
    Live {
        entry: Box<LedgerEntry>,
        namespace: String,
        rv: Option<u64>,
    },
    Gone {
        namespace: String,
        rv: Option<u64>,
        at: Instant,
    },
}

impl Slot {
    fn rv(&self) -> Option<u64> {
        match self {
            Slot::Live { rv, .. } | Slot::Gone { rv, .. } => *rv,
        }
    }

    fn namespace(&self) -> &str {
        match self {
            Slot::Live { namespace, .. } | Slot::Gone { namespace, .. } => namespace,
        }
    }
}

/// Where the first list stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sync {
    Pending,
    Done,
    /// The API refused the list (no CRD, no right): a reason without values.
    Refused(String),
}

#[derive(Default)]
struct CacheState {
    slots: HashMap<String, Slot>,
    /// Objects of a re-list in progress (swapped in at its end).
    listing: Option<HashMap<String, Slot>>,
    last_prune: Option<Instant>,
}

/// The watch-fed view of every GeneratorState of ours.
struct Cache {
    state: RwLock<CacheState>,
    sync: watch::Sender<Sync>,
}

/// The id an object name carries.
fn id_of(obj: &DynamicObject) -> Option<&str> {
    obj.metadata.name.as_deref()?.strip_prefix(NAME_PREFIX)
}

fn slot_of(obj: &DynamicObject) -> Option<(String, Slot)> {
    let id = id_of(obj)?.to_string();
    let namespace = obj.metadata.namespace.clone().unwrap_or_default();
    let rv = resource_version(obj);
    if being_deleted(obj) || !ours(obj) {
        return Some((
            id,
            Slot::Gone {
                namespace,
                rv,
                at: Instant::now(),
            },
        ));
    }
    match decode(obj) {
        Ok(entry) => Some((
            id,
            Slot::Live {
                entry: Box::new(entry),
                namespace,
                rv,
            },
        )),
        Err(e) => {
            if MALFORMED_WARNINGS.allow() {
                tracing::warn!(namespace = %namespace, error = %e, "a GeneratorState of the ledger cannot be read; it is ignored");
            }
            None
        }
    }
}

impl Cache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, CacheState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CacheState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `slot` unless the cache holds a newer version (by `resourceVersion`, when
    /// both are numbers, as etcd's are; otherwise the later event wins). A removal noted
    /// with the version it removed wins over that version.
    fn put(slots: &mut HashMap<String, Slot>, id: String, slot: Slot) {
        if let Some(old) = slots.get(&id)
            && let (Some(old_rv), Some(new_rv)) = (old.rv(), slot.rv())
        {
            let removes = matches!(slot, Slot::Gone { .. }) && matches!(old, Slot::Live { .. });
            if old_rv > new_rv || (old_rv == new_rv && !removes) {
                return;
            }
        }
        slots.insert(id, slot);
    }

    /// An object as read or written by this replica, or as a watch event reported it.
    fn apply(&self, obj: &DynamicObject) {
        if let Some((id, slot)) = slot_of(obj) {
            let mut state = self.write();
            Self::put(&mut state.slots, id, slot);
            Self::prune(&mut state);
        }
    }

    /// The object was deleted (`rv`: the last version seen, or the deletion's).
    fn gone(&self, id: &str, namespace: &str, rv: Option<u64>) {
        let mut state = self.write();
        Self::put(
            &mut state.slots,
            id.to_string(),
            Slot::Gone {
                namespace: namespace.to_string(),
                rv,
                at: Instant::now(),
            },
        );
    }

    fn prune(state: &mut CacheState) {
        let now = Instant::now();
        if state
            .last_prune
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60))
        {
            return;
        }
        state.last_prune = Some(now);
        state.slots.retain(|_, s| match s {
            Slot::Live { .. } => true,
            Slot::Gone { at, .. } => now.duration_since(*at) < TOMBSTONE_TTL,
        });
    }

    fn event(&self, event: watcher::Event<DynamicObject>) {
        match event {
            watcher::Event::Init => self.write().listing = Some(HashMap::new()),
            watcher::Event::InitApply(obj) => {
                if let Some((id, slot)) = slot_of(&obj) {
                    let mut state = self.write();
                    if let Some(listing) = state.listing.as_mut() {
                        Self::put(listing, id, slot);
                    }
                }
            }
            watcher::Event::InitDone => {
                {
                    let mut state = self.write();
                    if let Some(listing) = state.listing.take() {
                        state.slots = listing;
                    }
                }
                self.sync.send_replace(Sync::Done);
            }
            watcher::Event::Apply(obj) => self.apply(&obj),
            watcher::Event::Delete(obj) => {
                if let Some(id) = id_of(&obj) {
                    let ns = obj.metadata.namespace.clone().unwrap_or_default();
                    self.gone(id, &ns, resource_version(&obj));
                }
            }
        }
    }

    fn namespace_of(&self, id: &str) -> Option<String> {
        self.read().slots.get(id).map(|s| s.namespace().to_string())
    }
}

/// Feeds `cache` from a watch of our GeneratorStates, forever (kube-runtime's default
/// backoff between failures; the cache keeps serving what it has meanwhile).
async fn watch_states(api: Api<DynamicObject>, cache: Arc<Cache>) {
    // The API ends each watch within 25 s: inside a client read timeout of 30 s.
    let config = watcher::Config::default()
        .labels(&managed_selector())
        .timeout(25);
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    while let Some(item) = events.next().await {
        match item {
            Ok(event) => cache.event(event),
            Err(e) => {
                let refused = match &e {
                    watcher::Error::InitialListFailed(kube::Error::Api(s))
                    | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                        if matches!(s.code, 401 | 403 | 404) =>
                    {
                        Some(format!(
                            "the Kubernetes API answered {} {}",
                            s.code,
                            bounded(&s.reason, 64)
                        ))
                    }
                    _ => None,
                };
                if let Some(reason) = refused {
                    cache.sync.send_if_modified(|s| {
                        if *s == Sync::Pending {
                            *s = Sync::Refused(reason);
                            true
                        } else {
                            false
                        }
                    });
                }
                if WATCH_WARNINGS.allow() {
                    let error = match &e {
                        watcher::Error::InitialListFailed(k)
                        | watcher::Error::WatchStartFailed(k)
                        | watcher::Error::WatchFailed(k) => api_error("watch", k).to_string(),
                        watcher::Error::WatchError(s) => {
                            format!(
                                "the Kubernetes API answered {} {}",
                                s.code,
                                bounded(&s.reason, 64)
                            )
                        }
                        other => bounded(&other.to_string(), 200),
                    };
                    tracing::warn!(error = %error, "ledger: the watch of GeneratorStates failed; retrying (the cache serves what it has)");
                }
            }
        }
    }
}

/// The ledger in Kubernetes objects (see the module documentation for the shapes and the
/// consistency rules). Cheap to share behind an `Arc`; dropping it stops its watch.
pub struct KubernetesLedger {
    /// The server's own namespace: the only one whose GeneratorStates are read or written.
    namespace: String,
    states: ApiResource,
    identities: Api<DynamicObject>,
    client: kube::Client,
    cache: Arc<Cache>,
    watch: tokio::task::AbortHandle,
}

impl std::fmt::Debug for KubernetesLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesLedger").finish_non_exhaustive()
    }
}

impl Drop for KubernetesLedger {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

impl KubernetesLedger {
    /// Starts the ledger on `client`'s cluster: a watch of the GeneratorStates labelled
    /// `app.kubernetes.io/managed-by=esi-federation` in `namespace` (the server's own), and
    /// returns once they have been listed. Only that namespace is ever read or written:
    /// ESO's `external-secrets-edit` role (aggregated into `edit` and `admin`) lets every
    /// namespace editor write GeneratorStates in their namespace, so an entry read from
    /// anywhere else could be a forgery naming another tenant's generator and lease (security
    /// review). Needs ESO's `GeneratorState` CRD and ESE's `AuthorizedIdentity` CRD, and the
    /// chart's ledger rules (generatorstates in `namespace`: get, list, watch, create,
    /// update, delete; authorizedidentities: get, create, update).
    ///
    /// Errors ([`LedgerError::Storage`]): `namespace` is not a namespace name; the API
    /// refused the list (`401`/`403`/`404`: no right, or the CRD is missing), or no list
    /// succeeded within 60 s.
    pub async fn new(client: kube::Client, namespace: &str) -> Result<Self, LedgerError> {
        if !valid_namespace(namespace) {
            return Err(LedgerError::Storage(
                "the ledger's namespace is not a namespace name".into(),
            ));
        }
        let states = generator_states();
        let (sync, mut synced) = watch::channel(Sync::Pending);
        let cache = Arc::new(Cache {
            state: RwLock::new(CacheState::default()),
            sync,
        });
        let watch = tokio::spawn(watch_states(
            Api::namespaced_with(client.clone(), namespace, &states),
            cache.clone(),
        ))
        .abort_handle();
        let ledger = KubernetesLedger {
            namespace: namespace.to_string(),
            identities: Api::all_with(client.clone(), &authorized_identities()),
            states,
            client,
            cache,
            watch,
        };
        let outcome =
            tokio::time::timeout(SYNC_TIMEOUT, synced.wait_for(|s| *s != Sync::Pending)).await;
        match outcome {
            Ok(Ok(s)) => match &*s {
                Sync::Done => Ok(ledger),
                Sync::Refused(reason) => Err(LedgerError::Storage(format!(
                    "GeneratorStates cannot be listed ({reason}): install ESO's GeneratorState CRD and grant the server list and watch on generatorstates.{GENERATORS_GROUP}"
                ))),
                Sync::Pending => Err(LedgerError::Storage(
                    "GeneratorStates were not listed".into(),
                )),
            },
            Ok(Err(_)) => Err(LedgerError::Storage(
                "the watch of GeneratorStates stopped".into(),
            )),
            Err(_) => Err(LedgerError::Storage(format!(
                "GeneratorStates could not be listed within {} s",
                SYNC_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The GeneratorStates of the ledger's namespace (`_namespace`, as an object or the
    /// cache says, is never trusted to point elsewhere).
    fn states_in(&self, _namespace: &str) -> Api<DynamicObject> {
        self.all_states()
    }

    /// The GeneratorStates the ledger reads and writes: its namespace's only.
    fn all_states(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &self.states)
    }

    /// The GeneratorState of entry `id`, as the API server has it now: by the namespace
    /// the cache knows, else by name in every namespace. None: no such entry (or being
    /// deleted, or not ours).
    async fn locate(&self, id: &str) -> Result<Option<DynamicObject>, LedgerError> {
        if !valid_id(id) {
            return Ok(None);
        }
        let name = object_name(id);
        let found = match self.cache.namespace_of(id) {
            Some(ns) => self
                .states_in(&ns)
                .get_opt(&name)
                .await
                .map_err(|e| api_error("reading a GeneratorState", &e))?,
            None => {
                let params = ListParams::default()
                    .labels(&managed_selector())
                    .fields(&format!("metadata.name={name}"));
                self.all_states()
                    .list(&params)
                    .await
                    .map_err(|e| api_error("finding a GeneratorState", &e))?
                    .items
                    .into_iter()
                    .find(|o| o.metadata.name.as_deref() == Some(name.as_str()))
            }
        };
        Ok(found.filter(|o| ours(o) && !being_deleted(o)))
    }

    /// Reads entry `id` from the API server, lets `change` modify it (or refuse: false),
    /// and replaces it with the `resourceVersion` read; on `409` reads and decides again.
    /// `None`: no such entry; `Some` with the entry as written, or as found when `change`
    /// refused (then `false`).
    async fn update(
        &self,
        id: &str,
        mut change: impl FnMut(&mut LedgerEntry) -> bool,
    ) -> Result<Option<(bool, LedgerEntry)>, LedgerError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(mut obj) = self.locate(id).await? else {
                return Ok(None);
            };
            let current = decode(&obj)?;
            let mut entry = current.clone();
            if !change(&mut entry) {
                return Ok(Some((false, current)));
            }
            set_state(&mut obj.data, &entry)?;
            let ns = obj.metadata.namespace.clone().unwrap_or_default();
            let name = object_name(id);
            match self
                .states_in(&ns)
                .replace(&name, &PostParams::default(), &obj)
                .await
            {
                Ok(written) => {
                    self.cache.apply(&written);
                    return Ok(Some((true, entry)));
                }
                Err(e) if status_code(&e) == Some(409) => continue,
                Err(e) if status_code(&e) == Some(404) => return Ok(None),
                Err(e) => return Err(api_error("updating a GeneratorState", &e)),
            }
        }
        Err(LedgerError::Storage(
            "a GeneratorState kept changing while it was updated".into(),
        ))
    }

    /// Rebuilds `holder`'s `AuthorizedIdentity` from its GeneratorStates (best effort:
    /// logged when it fails; the next write for this holder repairs it).
    async fn sync_identity(&self, holder: &Holder) {
        if let Err(e) = self.try_sync_identity(holder).await
            && IDENTITY_WARNINGS.allow()
        {
            tracing::warn!(federation = %holder.federation, subject = %holder.subject, error = %e, "ledger: AuthorizedIdentity not updated (its GeneratorStates are recorded; the next credential of this holder updates it)");
        }
    }

    async fn try_sync_identity(&self, holder: &Holder) -> Result<(), LedgerError> {
        let name = identity_name(holder);
        for _ in 0..MAX_ATTEMPTS {
            // Read the identity first: a write made after this read and before ours makes
            // ours fail with 409, and the retry lists again.
            let current = self
                .identities
                .get_opt(&name)
                .await
                .map_err(|e| api_error("reading an AuthorizedIdentity", &e))?;
            let params = ListParams::default()
                .labels(&format!("{},{IDENTITY_LABEL}={name}", managed_selector()));
            let mut entries: Vec<LedgerEntry> = self
                .all_states()
                .list(&params)
                .await
                .map_err(|e| api_error("listing GeneratorStates", &e))?
                .items
                .iter()
                .filter(|o| !being_deleted(o))
                .filter_map(|o| decode(o).ok())
                .filter(|e| {
                    e.holder.federation == holder.federation && e.holder.subject == holder.subject
                })
                .collect();
            // Newest first, bounded, then in issue order.
            entries.sort_by(|a, b| b.issued_at.cmp(&a.issued_at).then(a.id.cmp(&b.id)));
            entries.truncate(MAX_LISTED_CREDENTIALS);
            entries.reverse();
            let ours: Vec<Value> = entries.iter().map(issued_credential).collect();
            let result = match current {
                None => {
                    let obj: DynamicObject = serde_json::from_value(json!({
                        "apiVersion": FEDERATION_API_VERSION,
                        "kind": "AuthorizedIdentity",
                        "metadata": {"name": name, "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
                        "spec": {"identitySpec": identity_spec(holder), "issuedCredentials": ours},
                    }))
                    .map_err(|e| LedgerError::Codec(e.to_string()))?;
                    self.identities
                        .create(&PostParams::default(), &obj)
                        .await
                        .map(drop)
                }
                Some(mut obj) => {
                    // Items someone else wrote (no GeneratorState of ours) are kept.
                    let mut items: Vec<Value> = obj.data["spec"]["issuedCredentials"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter(|i| {
                                    !(i["stateRef"]["kind"] == "GeneratorState"
                                        && i["stateRef"]["name"]
                                            .as_str()
                                            .is_some_and(|n| n.starts_with(NAME_PREFIX)))
                                })
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default();
                    items.extend(ours);
                    let spec =
                        json!({"identitySpec": identity_spec(holder), "issuedCredentials": items});
                    if obj.data.get("spec") == Some(&spec) {
                        return Ok(());
                    }
                    let Some(data) = obj.data.as_object_mut() else {
                        return Err(LedgerError::Codec(
                            "an AuthorizedIdentity is not an object".into(),
                        ));
                    };
                    data.insert("spec".into(), spec);
                    self.identities
                        .replace(&name, &PostParams::default(), &obj)
                        .await
                        .map(drop)
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if matches!(status_code(&e), Some(409)) => continue,
                Err(e) => return Err(api_error("writing an AuthorizedIdentity", &e)),
            }
        }
        Err(LedgerError::Storage(
            "an AuthorizedIdentity kept changing while it was updated".into(),
        ))
    }
}

#[async_trait::async_trait]
impl Ledger for KubernetesLedger {
    async fn record(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        if !valid_id(&entry.id) {
            return Err(LedgerError::Storage(
                "the entry id cannot name a GeneratorState".into(),
            ));
        }
        let obj = state_object(entry, &self.namespace)?;
        let created = self
            .all_states()
            .create(&PostParams::default(), &obj)
            .await
            .map_err(|e| api_error("creating a GeneratorState", &e))?;
        self.cache.apply(&created);
        self.sync_identity(&entry.holder).await;
        Ok(())
    }

    async fn by_owner(&self, owner: &Owner) -> Result<Vec<LedgerEntry>, LedgerError> {
        let kinds: &[OwnerKind] = match owner.kind {
            Some(OwnerKind::Pod) => &[OwnerKind::Pod],
            Some(OwnerKind::ServiceAccount) => &[OwnerKind::ServiceAccount],
            Some(OwnerKind::OidcSubject) => &[OwnerKind::OidcSubject],
            None => &[OwnerKind::Pod, OwnerKind::ServiceAccount],
        };
        let hashes: Vec<String> = kinds.iter().map(|k| owner_hash(owner, *k)).collect();
        let params = ListParams::default().labels(&format!(
            "{},{OWNER_LABEL} in ({})",
            managed_selector(),
            hashes.join(",")
        ));
        let list = self
            .all_states()
            .list(&params)
            .await
            .map_err(|e| api_error("listing GeneratorStates", &e))?;
        let mut found = Vec::new();
        for obj in list.items.iter().filter(|o| ours(o) && !being_deleted(o)) {
            let entry = match decode(obj) {
                Ok(e) => e,
                Err(e) => {
                    if MALFORMED_WARNINGS.allow() {
                        tracing::warn!(error = %e, "a GeneratorState of the ledger cannot be read; it is ignored");
                    }
                    continue;
                }
            };
            // The label is a hash: the entry itself decides.
            let o = entry.holder.owner();
            if o.federation == owner.federation
                && o.namespace == owner.namespace
                && o.name == owner.name
                && (owner.kind.is_none() || o.kind == owner.kind)
            {
                found.push(entry);
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    async fn due(&self, now: u64, limit: usize) -> Result<Vec<LedgerEntry>, LedgerError> {
        let state = self.cache.read();
        let mut due: Vec<(u64, &LedgerEntry)> = state
            .slots
            .values()
            .filter_map(|s| match s {
                Slot::Live { entry, .. } => entry
                    .due_at()
                    .filter(|d| *d <= now)
                    .map(|d| (d, entry.as_ref())),
                Slot::Gone { .. } => None,
            })
            .collect();
        due.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
        Ok(due
            .into_iter()
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn remove(&self, id: &str) -> Result<bool, LedgerError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(obj) = self.locate(id).await? else {
                return Ok(false);
            };
            let ns = obj.metadata.namespace.clone().unwrap_or_default();
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: obj.metadata.resource_version.clone(),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            match self.states_in(&ns).delete(&object_name(id), &params).await {
                Ok(_) => {
                    self.cache.gone(id, &ns, resource_version(&obj));
                    if let Ok(entry) = decode(&obj) {
                        self.sync_identity(&entry.holder).await;
                    }
                    return Ok(true);
                }
                // Changed since read (or being deleted by another replica): look again.
                Err(e) if status_code(&e) == Some(409) => continue,
                Err(e) if status_code(&e) == Some(404) => {
                    self.cache.gone(id, &ns, resource_version(&obj));
                    return Ok(false);
                }
                Err(e) => return Err(api_error("deleting a GeneratorState", &e)),
            }
        }
        Err(LedgerError::Storage(
            "a GeneratorState kept changing while it was deleted".into(),
        ))
    }

    async fn mark_retry(&self, id: &str, retry_at: u64, error: &str) -> Result<(), LedgerError> {
        self.update(id, |e| e.take_failure(retry_at, error))
            .await
            .map(drop)
    }

    async fn get(&self, id: &str) -> Result<Option<LedgerEntry>, LedgerError> {
        match self.locate(id).await? {
            Some(obj) => {
                self.cache.apply(&obj);
                decode(&obj).map(Some)
            }
            None => Ok(None),
        }
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
        Ok(self
            .cache
            .read()
            .slots
            .values()
            .filter(|s| matches!(s, Slot::Live { .. }))
            .count())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{entry, identity};
    use super::*;

    #[test]
    fn names_and_labels_fit_kubernetes_limits() {
        let long = "x".repeat(300);
        let holder = Holder::new(&identity(&long, &long[..63], &long, Some(&long)), None);
        let name = identity_name(&holder);
        assert!(name.len() <= 63, "{name}");
        assert!(valid_id(&name), "{name}");
        let owner = holder.owner();
        assert_eq!(owner_hash(&owner, OwnerKind::Pod).len(), 40);
        let h = Holder::new(&identity("alpha", "apps", "app", None), None);
        assert!(
            identity_name(&h).starts_with("esi-sa-apps-app-"),
            "{}",
            identity_name(&h)
        );
        // The hash separates federations with the same subject.
        let other = Holder::new(&identity("beta", "apps", "app", None), None);
        assert_ne!(identity_name(&h), identity_name(&other));
        // A pod and a ServiceAccount of one name are different owners.
        let o = h.owner();
        assert_ne!(
            owner_hash(&o, OwnerKind::Pod),
            owner_hash(&o, OwnerKind::ServiceAccount)
        );
        for bad in ["", "-a", "a-", "A", "a/b", "a.b", &"a".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert!(valid_id(&uuid::Uuid::new_v4().to_string()));
        assert!(!valid_namespace(&"a".repeat(64)));
        assert!(valid_namespace("kube-system"));
    }

    /// Issue 18: an OIDC subject's credentials name its federation's kind and no workload.
    #[test]
    fn an_oidc_subjects_identity_names_its_federation_and_no_workload() {
        let h = Holder::new(
            &super::super::test_support::oidc_identity(
                "github",
                "repo:org/app:ref:refs/heads/main",
            ),
            None,
        );
        let spec = identity_spec(&h);
        assert_eq!(spec["federationRef"]["kind"], "OIDCFederation");
        assert_eq!(
            spec["subject"]["oidc"]["subject"],
            "repo:org/app:ref:refs/heads/main"
        );
        let e = entry(&h, ("ci", "VaultDynamicSecret", "db"), None);
        let item = issued_credential(&e);
        assert!(item.get("workloadBinding").is_none(), "{item}");
        let obj = state_object(&e, "esi-system").unwrap();
        assert_eq!(decode(&obj).unwrap(), e);
        let name = identity_name(&h);
        assert!(name.len() <= 63 && valid_id(&name), "{name}");
        let sa = Holder::new(&identity("github", "apps", "app", None), None);
        assert_eq!(
            identity_spec(&sa)["federationRef"]["kind"],
            "KubernetesFederation"
        );
        assert_ne!(
            owner_hash(&h.owner(), OwnerKind::OidcSubject),
            owner_hash(&sa.owner(), OwnerKind::ServiceAccount)
        );
    }

    /// Issue 18: a SPIFFE workload's credentials name it by SPIFFE ID (ESE's `spiffe`
    /// subject) and bind the Pod its path names; one whose path names none binds nothing.
    #[test]
    fn a_spiffe_workloads_identity_names_its_spiffe_id_and_its_pod() {
        let id = "spiffe://example.org/shop/ns/ci/sa/u-sa/app/pod/u-pod/app-0";
        let h = Holder::new(
            &crate::authn::Identity::of_spiffe_workload("spire", id).unwrap(),
            None,
        );
        let spec = identity_spec(&h);
        assert_eq!(spec["federationRef"]["kind"], "SpiffeFederation");
        assert_eq!(spec["subject"]["spiffe"]["spiffeID"], id);
        assert!(spec["subject"].get("oidc").is_none(), "{spec}");
        let e = entry(&h, ("ci", "VaultDynamicSecret", "db"), None);
        let item = issued_credential(&e);
        assert_eq!(item["workloadBinding"]["kind"], "Pod", "{item}");
        assert_eq!(item["workloadBinding"]["name"], "app-0");
        assert_eq!(item["workloadBinding"]["uid"], "u-pod");
        let obj = state_object(&e, "esi-system").unwrap();
        assert_eq!(decode(&obj).unwrap(), e);
        assert_eq!(h.owner().kind, Some(OwnerKind::Pod));
        let plain = Holder::new(
            &crate::authn::Identity::of_spiffe_workload("spire", "spiffe://example.org/billing")
                .unwrap(),
            None,
        );
        let e = entry(&plain, ("ci", "VaultDynamicSecret", "db"), None);
        assert!(issued_credential(&e).get("workloadBinding").is_none());
        assert_eq!(plain.owner().kind, Some(OwnerKind::OidcSubject));
        assert_eq!(plain.owner().name, "spiffe://example.org/billing");
    }

    #[test]
    fn the_state_object_carries_the_entry_and_its_deadline() {
        let h = Holder::new(&identity("alpha", "apps", "app", Some("app-1")), None);
        let mut e = entry(
            &h,
            ("apps", "VaultDynamicSecret", "db"),
            Some(1_700_000_000),
        );
        let obj = state_object(&e, "esi-system").unwrap();
        assert_eq!(decode(&obj).unwrap(), e);
        assert_eq!(
            obj.data["spec"]["garbageCollectionDeadline"],
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            obj.data["spec"]["resource"]["metadata"]["namespace"],
            "apps"
        );
        e.expires_at = None;
        let mut data = obj.data.clone();
        set_state(&mut data, &e).unwrap();
        assert!(data["spec"].get("garbageCollectionDeadline").is_none());
        // A renamed object does not pass for another entry.
        let mut moved = obj.clone();
        moved.metadata.name = Some("esi-other".into());
        assert!(decode(&moved).is_err());
        // Too large a state is refused.
        e.state = crate::generators::RevocationState(json!({"x": "y".repeat(MAX_ENTRY_BYTES)}));
        assert!(state_object(&e, "esi-system").is_err());
    }

    #[test]
    fn the_cache_never_goes_back_to_an_older_version() {
        let (sync, _) = watch::channel(Sync::Pending);
        let cache = Cache {
            state: RwLock::new(CacheState::default()),
            sync,
        };
        let h = Holder::new(&identity("alpha", "apps", "app", None), None);
        let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), Some(10));
        let mut v1 = state_object(&e, "esi-system").unwrap();
        v1.metadata.resource_version = Some("5".into());
        let mut renewed = e.clone();
        renewed.expires_at = Some(99);
        let mut v2 = state_object(&renewed, "esi-system").unwrap();
        v2.metadata.resource_version = Some("7".into());
        cache.apply(&v2);
        // A late watch event of the older version is ignored.
        cache.event(watcher::Event::Apply(v1.clone()));
        let due = |at| {
            cache
                .read()
                .slots
                .values()
                .filter(|s| matches!(s, Slot::Live { entry, .. } if entry.due_at().is_some_and(|d| d <= at)))
                .count()
        };
        assert_eq!(due(10), 0);
        assert_eq!(due(99), 1);
        // Removed here: an older event does not bring it back, a deletion event confirms.
        cache.gone(&e.id, "apps", Some(7));
        cache.event(watcher::Event::Apply(v2.clone()));
        assert_eq!(due(99), 0);
        cache.event(watcher::Event::Delete(v2));
        assert_eq!(due(99), 0);
    }
}
