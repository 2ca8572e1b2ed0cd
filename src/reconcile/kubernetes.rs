//! `esi-server reconcile --kubernetes`: ExternalSecrets of a cluster → its Secrets.
//!
//! - The inventory (SecretStores, ClusterSecretStores, generators, the Secrets they
//!   reference and the Secrets and ConfigMaps of `templateFrom`) is fed by [`KubeSource`] with [`reconciled_kind`], rebuilt after each batch of
//!   changes and published whole ([`ArcSwap`]); each publication re-queues every
//!   ExternalSecret (`reconcile_all_on`).
//! - A kube-runtime [`Controller`] over ExternalSecrets (`external-secrets.io/v1`), owning the
//!   Secrets it writes (watched by ESO's `reconcile.external-secrets.io/managed=true` label,
//!   never every Secret), with at most `concurrency` reconciles at once.
//! - One reconcile: [`policy::needs_sync`] → [`sync()`] → the Secret per `creationPolicy`
//!   (Owner: controller owner reference; Orphan: none; Merge: a merge patch of our keys into
//!   an existing Secret only, `Ready=False` (`SecretMissing`) while it is absent; None:
//!   nothing) → `status` (ESO's shape) → an Event (ESO's `Updated` / `UpdateFailed`) →
//!   requeue after `refreshInterval` (Periodic) or on change.
//! - Failures: `Ready=False`, then per-object jittered exponential backoff (1 s doubling to
//!   5 min, reset on success); other ExternalSecrets are not held up.
//! - Only the holder of the leader-election Lease ([`crate::status::lease`]) reconciles.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use backon::BackoffBuilder;
use base64::Engine;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::generators::Generator;
use crate::providers::ProviderSettings;
use crate::resources::GeneratorKey;
use crate::resources::external_secret::{CreationPolicy, RefreshPolicy};
use crate::source::kubernetes::{KindFilter, KubeSource};
use crate::source::{NamedObject, ObjectKey, RefTier, SourceEvent, SourceObject};
use crate::status::lease::{self, LeaseSettings, Term};

use super::error::{REASON_DELETED, REASON_MISSING, REASON_SYNCED};
use super::inventory::{ExistingSecret, ExternalSecretObject, Inventory, InventoryBuilder};
use super::policy::{self, LastSync, SecretAction};
use super::records::{MAX_RECORDED, Record, RecordError, Records};
use super::sync::{
    self, ANNOTATION_DATA_HASH, DesiredSecret, EXTERNAL_SECRET_API_VERSION, LABEL_MANAGED,
    SyncOptions,
};
use super::{SyncError, template};

/// The field manager and Event reporter name.
pub const CONTROLLER_NAME: &str = "esi-reconciler";
/// Our finalizer, only on ExternalSecrets that use a generator issuing revocable
/// credentials ([`REVOCABLE_GENERATOR_KINDS`]): removed once those are revoked.
pub const FINALIZER: &str = "esi.external-secrets.io/revoke-credentials";
/// Generator kinds whose credentials are revoked when no longer used.
pub const REVOCABLE_GENERATOR_KINDS: &[&str] = &["Federation", "VaultDynamicSecret"];
/// Shortest delay after a failure.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest delay after failures.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often a replica that does not lead looks again.
const NOT_LEADER_RETRY: Duration = Duration::from_secs(2);
/// Changes arriving within this long of each other make one inventory.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Most ExternalSecrets whose failure counts are remembered (beyond: forgotten, so the
/// next failure starts at [`BACKOFF_MIN`] again).
const MAX_FAILURE_ENTRIES: usize = 100_000;

/// What `reconcile --kubernetes` needs.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// `--controller-class`.
    pub controller_class: String,
    /// `--concurrency`: most ExternalSecrets reconciled at once (at least 1).
    pub concurrency: u16,
    /// The leader-election Lease.
    pub lease: LeaseSettings,
    /// Backend call bounds (and the ServiceAccount token source).
    pub provider_settings: ProviderSettings,
    /// `--revocation-grace`: how long a replaced generator credential stays valid after the
    /// Secret holding its successor was written ([`DEFAULT_REVOCATION_GRACE`]).
    pub revocation_grace: Duration,
}

/// Default of `--revocation-grace`: the kubelet refreshes a mounted Secret only after its
/// sync period and cache TTL (a minute each by default, so up to about 2 minutes), and a
/// rollout ([`super::rollout`]) takes time to replace every Pod; 5 minutes covers both with
/// room (ESO's generator-state design uses a 5 minute `garbageCollectionDeadline` in its
/// example). Environment variables keep the old value until the Pod restarts: those need
/// the rollout extension or a longer grace.
pub const DEFAULT_REVOCATION_GRACE: Duration = Duration::from_secs(300);
/// A credential whose `expires_at` passed this long ago is revoked (once, idempotent) and
/// then let go even if the revocation fails (it lapsed; the margin covers clock skew).
const EXPIRY_MARGIN: u64 = 300;
/// A due revocation that failed is tried again after this long.
const PENDING_RETRY: u64 = 60;
/// Most built generators kept for revocation ([`Context::generators`]).
const MAX_REMEMBERED_GENERATORS: usize = 10_000;

/// Why a reconcile failed (logged, counted, backed off; never holds a value).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The sync failed (the status says why).
    #[error("{0}")]
    Sync(String),
    /// The Kubernetes API refused or could not be reached.
    #[error("Kubernetes API: {0}")]
    Kube(String),
}

fn kube_error(what: &str, e: &kube::Error) -> ReconcileError {
    let why = match e {
        kube::Error::Api(s) => format!("HTTP {} {}", s.code, s.reason),
        _ => "the Kubernetes API could not be reached".to_string(),
    };
    ReconcileError::Kube(format!("{what}: {why}"))
}

/// The kinds the reconciler's inventory watches: SecretStores, ClusterSecretStores,
/// every generator kind (the client-side `Federation` included) and ExternalSecrets (for
/// the Secrets their `templateFrom` reads; the controller watches them on its own too).
pub fn reconciled_kind(group: &str, kind: &str) -> bool {
    match group {
        "external-secrets.io" => matches!(
            kind,
            "SecretStore" | "ClusterSecretStore" | "ExternalSecret"
        ),
        "generators.external-secrets.io" => {
            crate::generators::is_generator_kind(kind)
                || crate::generators::is_client_generator_kind(kind)
        }
        _ => false,
    }
}

/// ESO's ExternalSecret resource.
pub fn external_secret_resource() -> ApiResource {
    ApiResource {
        group: "external-secrets.io".into(),
        version: "v1".into(),
        api_version: EXTERNAL_SECRET_API_VERSION.into(),
        kind: "ExternalSecret".into(),
        plural: "externalsecrets".into(),
    }
}

/// The inventory's feed: the builder and what each object references.
struct Feed {
    builder: InventoryBuilder,
    /// Per store or generator: whether cluster-scoped (its references first) and the Secrets it names.
    refs: BTreeMap<ObjectKey, Refs>,
    /// Something other than an ExternalSecret changed since the last inventory.
    dirty: bool,
}

/// An object's owner namespace (None: cluster-scoped), its tier (an ExternalSecret's
/// `templateFrom` after stores' and generators' references) and the Secrets and ConfigMaps
/// it references.
type Refs = (Option<String>, RefTier, BTreeSet<NamedObject>);

impl Feed {
    fn apply(&mut self, event: SourceEvent) {
        let external_secret = match &event {
            SourceEvent::Apply(key, _)
            | SourceEvent::InitApply(key, _)
            | SourceEvent::Delete(key) => {
                matches!(key, ObjectKey::Resource { kind, .. } if kind == "ExternalSecret")
            }
            _ => false,
        };
        if !external_secret {
            self.dirty = true;
        }
        match &event {
            SourceEvent::Apply(key, SourceObject::Manifest(obj))
            | SourceEvent::InitApply(key, SourceObject::Manifest(obj)) => {
                let group = obj.api_version.split_once('/').map_or("", |(g, _)| g);
                if group.is_empty() {
                    // A core object (Namespace, Secret, ConfigMap): it references nothing.
                    self.builder.apply(event);
                    return;
                }
                let owner = match (group, obj.kind.as_str()) {
                    ("external-secrets.io", "ClusterSecretStore") => None,
                    ("generators.external-secrets.io", k)
                        if crate::generators::is_cluster_scoped(k) =>
                    {
                        None
                    }
                    _ => Some(
                        obj.metadata
                            .namespace
                            .clone()
                            .unwrap_or_else(|| "default".into()),
                    ),
                };
                let tier = if obj.kind == "ExternalSecret" {
                    RefTier::Template
                } else {
                    RefTier::Primary
                };
                let refs = if obj.kind == "ExternalSecret" {
                    template_sources(&obj.body, owner.as_deref().unwrap_or("default"))
                } else {
                    obj.body
                        .get("spec")
                        .map(|spec| crate::resources::secret_references(spec, owner.as_deref()))
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(ns, name)| NamedObject::secret(ns, name))
                        .collect()
                };
                self.refs.insert(key.clone(), (owner, tier, refs));
            }
            SourceEvent::Delete(key) => {
                self.refs.remove(key);
            }
            _ => {}
        }
        self.builder.apply(event);
    }

    /// Referenced Secrets and ConfigMaps in [`crate::source::watch_order_tiered`]'s order:
    /// those of cluster-scoped objects, then every namespace's stores' and generators' in
    /// turn, then `templateFrom`'s in turn; at most [`MAX_OBJECTS_PER_NAMESPACE`] per
    /// namespace.
    fn referenced(&self) -> Vec<NamedObject> {
        crate::source::watch_order_tiered(
            self.refs
                .values()
                .map(|(owner, tier, refs)| (owner.as_deref(), *tier, refs.clone())),
            MAX_OBJECTS_PER_NAMESPACE,
        )
    }
}

/// Most referenced Secrets and ConfigMaps watched per namespace.
const MAX_OBJECTS_PER_NAMESPACE: usize = 200;
/// Most `templateFrom` entries of one ExternalSecret looked at.
const MAX_TEMPLATE_FROM: usize = 32;

/// The Secrets and ConfigMaps an ExternalSecret's `spec.target.template.templateFrom[]`
/// name (`secret.name`, `configMap.name`), in its namespace; never its own target Secret
/// (`target.name`, else its name), which sync refuses as a source: watching it would make
/// each write render again.
fn template_sources(body: &Value, namespace: &str) -> BTreeSet<NamedObject> {
    let target = body
        .pointer("/spec/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .or_else(|| body.pointer("/metadata/name").and_then(Value::as_str));
    let entries = body
        .pointer("/spec/target/template/templateFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .take(MAX_TEMPLATE_FROM);
    let mut out = BTreeSet::new();
    for t in entries {
        if let Some(n) = t.pointer("/secret/name").and_then(Value::as_str)
            && sync::is_object_name(n)
            && Some(n) != target
        {
            out.insert(NamedObject::secret(namespace, n));
        }
        if let Some(n) = t.pointer("/configMap/name").and_then(Value::as_str)
            && sync::is_object_name(n)
        {
            out.insert(NamedObject::config_map(namespace, n));
        }
    }
    out
}

/// Runs the inventory feed: discovery (retried), the first full list, then every change;
/// each inventory is published to `published` and announced on `changed`. `ready` turns
/// true after the first publication.
async fn run_inventory(
    mut source: KubeSource,
    settings: ProviderSettings,
    published: Arc<ArcSwap<Inventory>>,
    changed: watch::Sender<u64>,
) {
    let mut feed = Feed {
        builder: InventoryBuilder::new(settings),
        refs: BTreeMap::new(),
        dirty: true,
    };
    let mut delay = Duration::from_millis(500);
    loop {
        match source.discover().await {
            Ok(kinds) => {
                tracing::info!(kinds, "Kubernetes API discovered");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "Kubernetes API not reachable");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
    // Namespaces (labels only matter): ClusterSecretStore `conditions.namespaceSelector`.
    source.watch_kinds(vec![ApiResource::erase::<
        k8s_openapi::api::core::v1::Namespace,
    >(&())]);
    let mut watched: Vec<NamedObject> = Vec::new();
    let mut generation = 0u64;
    let mut first = true;
    loop {
        if source.kinds_synced() {
            let wanted = feed.referenced();
            if wanted != watched {
                source.watch_named(&wanted, &mut |e| feed.apply(e));
                watched = wanted;
            }
            // ExternalSecrets' own changes (they matter here only for the Secrets their
            // templates read) reach the controller through its own watch: no new inventory.
            if source.synced() && (feed.dirty || first) {
                feed.dirty = false;
                let inv = feed.builder.build();
                for p in &inv.problems {
                    tracing::warn!(problem = %p, "inventory problem");
                }
                published.store(Arc::new(inv));
                generation += 1;
                changed.send_replace(generation);
                if first {
                    tracing::info!("Kubernetes resources synced; reconciling");
                    first = false;
                }
            }
        }
        if source.next(&mut |e| feed.apply(e)).await && feed.dirty {
            // Gather what arrives close behind.
            tokio::time::sleep(DEBOUNCE).await;
        }
        while source.try_next(&mut |e| feed.apply(e)).is_some() {}
    }
}

/// A status this replica wrote.
#[derive(Debug, Clone)]
enum Written {
    /// A successful sync: its refresh time and the version synced.
    Synced(LastSync),
    /// A failure: reason and message.
    Failed(String, String),
}

/// Shared by every reconcile.
struct Context {
    client: kube::Client,
    inventory: Arc<ArcSwap<Inventory>>,
    sync: SyncOptions,
    leading: watch::Receiver<Term>,
    failures: Mutex<HashMap<ObjectRef<DynamicObject>, u32>>,
    /// Cleanup attempts per ExternalSecret being deleted ([`next_cleanup_attempt`]).
    cleanups: Mutex<HashMap<ObjectRef<DynamicObject>, u32>>,
    /// What this replica last wrote in each status (the watch cache can lag behind our
    /// own writes: a reconcile queued meanwhile must not sync again, nor rewrite a failure).
    written: Mutex<HashMap<ObjectRef<DynamicObject>, Written>>,
    /// Per ExternalSecret, the fingerprint of its `templateFrom` sources' data when its
    /// Secret was last known to be in sync ([`template_fingerprint`]; memory only, never
    /// written anywhere: it is derived from Secret data).
    templates: Mutex<HashMap<ObjectRef<DynamicObject>, String>>,
    /// When each ExternalSecret last synced for a template change ([`template_resync_wait`]).
    template_resyncs: Mutex<HashMap<ObjectRef<DynamicObject>, Instant>>,
    recorder: Recorder,
    resource: ApiResource,
    /// Where issued credentials are recorded ([`super::records`]).
    records: Records,
    /// How long a replaced credential stays valid ([`KubeOptions::revocation_grace`]).
    revocation_grace: Duration,
    /// The Lease's duration (the sweep leaves records younger than twice this alone).
    lease_duration: Duration,
    /// Per ExternalSecret, when the next replaced credential of its record is due for
    /// revocation (seconds since the epoch; [`revocation_deadline`]), as this replica last
    /// saw the record: the reconcile then revokes it and requeues for the next one.
    pending: Mutex<HashMap<ObjectRef<DynamicObject>, u64>>,
    /// The generators last built for each generator that issued or revoked a credential here,
    /// so that what a record holds can still be revoked once the generator object is gone
    /// (a namespace deletion removes it before the ExternalSecret). Memory only: lost at a
    /// restart; pruned by the sweep to those some record references; at most
    /// [`MAX_REMEMBERED_GENERATORS`].
    generators: Mutex<HashMap<GeneratorKey, Arc<dyn Generator>>>,
}

/// Runs `reconcile --kubernetes` until `shutdown` completes.
pub async fn run(
    client: kube::Client,
    opts: KubeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let filter: KindFilter = Arc::new(reconciled_kind);
    let source = KubeSource::new(client.clone(), filter);
    let published = Arc::new(ArcSwap::from_pointee(Inventory::default()));
    let (changed_tx, mut changed_rx) = watch::channel(0u64);
    tokio::spawn(run_inventory(
        source,
        opts.provider_settings.clone(),
        published.clone(),
        changed_tx,
    ));
    let (leading_tx, leading_rx) = watch::channel::<Term>(None);
    tokio::spawn(lease::run(client.clone(), opts.lease.clone(), leading_tx));

    // The first inventory before the first reconcile: an ExternalSecret must not fail for
    // a store not listed yet.
    while *changed_rx.borrow_and_update() == 0 {
        if changed_rx.changed().await.is_err() {
            return;
        }
    }
    let resource = external_secret_resource();
    let ctx = Arc::new(Context {
        client: client.clone(),
        inventory: published,
        sync: SyncOptions {
            controller_class: opts.controller_class.clone(),
            templates: template::engine(),
        },
        leading: leading_rx,
        failures: Mutex::new(HashMap::new()),
        cleanups: Mutex::new(HashMap::new()),
        written: Mutex::new(HashMap::new()),
        templates: Mutex::new(HashMap::new()),
        template_resyncs: Mutex::new(HashMap::new()),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_NAME.into(),
                instance: Some(opts.lease.identity.clone()),
            },
        ),
        resource: resource.clone(),
        records: Records::new(client.clone(), &opts.lease.namespace),
        revocation_grace: opts.revocation_grace,
        lease_duration: opts.lease.duration,
        pending: Mutex::new(HashMap::new()),
        generators: Mutex::new(HashMap::new()),
    });
    let inventory_changes = futures_util::stream::unfold(changed_rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });
    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
    let secrets = Api::<Secret>::all(client);
    let controller = Controller::new_with(api, watcher::Config::default(), resource);
    tokio::spawn(forget_deleted(controller.store(), ctx.clone()));
    tokio::spawn(sweep_records(controller.store(), ctx.clone()));
    controller
        .owns_with(
            secrets,
            (),
            watcher::Config::default().labels(&format!("{LABEL_MANAGED}=true")),
        )
        .reconcile_all_on(inventory_changes)
        .with_config(ControllerConfig::default().concurrency(opts.concurrency.max(1)))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
}

/// How often the per-ExternalSecret memory is swept of ExternalSecrets that are gone.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Drops, every [`SWEEP_EVERY`], what [`Context`] remembers of ExternalSecrets the
/// controller's cache no longer has (deleted without our finalizer, so never reconciled
/// at deletion), so that the memory follows the cluster rather than only its cap.
async fn forget_deleted(store: kube::runtime::reflector::Store<DynamicObject>, ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        if !store_ready(&store).await {
            return;
        }
        let live = |key: &ObjectRef<DynamicObject>| store.get(key).is_some();
        sweep(&ctx.failures, live);
        sweep(&ctx.cleanups, live);
        sweep(&ctx.written, live);
        sweep(&ctx.templates, live);
        sweep(&ctx.template_resyncs, live);
        sweep(&ctx.pending, live);
    }
}

/// Waits until the controller's cache has been listed once; false if it never will be.
/// `Store::wait_until_ready` wakes only the last of several tasks waiting at once (one
/// oneshot receiver behind a lock; the controller itself waits on it too), so it is asked
/// again every second rather than awaited once.
async fn store_ready(store: &kube::runtime::reflector::Store<DynamicObject>) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await {
            Ok(ready) => return ready.is_ok(),
            Err(_) => continue,
        }
    }
}

fn sweep<V>(
    map: &Mutex<HashMap<ObjectRef<DynamicObject>, V>>,
    live: impl Fn(&ObjectRef<DynamicObject>) -> bool,
) {
    map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|key, _| live(key));
}

/// `delay` after the `n`th failure in a row (n ≥ 1): backon's jittered exponential from
/// [`BACKOFF_MIN`], doubling, capped at [`BACKOFF_MAX`].
pub fn backoff_delay(n: u32) -> Duration {
    backon::ExponentialBuilder::default()
        .with_min_delay(BACKOFF_MIN)
        .with_max_delay(BACKOFF_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(n.saturating_sub(1) as usize)
        .unwrap_or(BACKOFF_MAX)
        .min(BACKOFF_MAX * 2)
}

fn error_policy(obj: Arc<DynamicObject>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj_with(&*obj, ctx.resource.clone());
    let n = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_FAILURE_ENTRIES && !failures.contains_key(&key) {
            failures.clear();
        }
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff_delay(n);
    if n == 1 {
        tracing::warn!(external_secret = %format!("{}/{}", obj.metadata.namespace.as_deref().unwrap_or(""), obj.metadata.name.as_deref().unwrap_or("")), error = %err, "reconcile failed; retrying with backoff");
    }
    Action::requeue(delay)
}

fn content_version(obj: &DynamicObject) -> String {
    let mut annotations = obj.metadata.annotations.clone().unwrap_or_default();
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    let content = json!({
        "spec": obj.data.get("spec").cloned().unwrap_or(Value::Null),
        "labels": obj.metadata.labels.clone().unwrap_or_default(),
        "annotations": annotations,
    });
    let hash = crate::resources::content_hash(&content);
    hash[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The ExternalSecret as `sync` reads it.
fn external_secret(obj: &DynamicObject) -> ExternalSecretObject {
    let namespace = obj
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = obj.metadata.name.clone().unwrap_or_default();
    let spec = obj
        .data
        .get("spec")
        .cloned()
        .ok_or_else(|| "no spec".to_string())
        .and_then(|s| serde_json::from_value(s).map_err(|e| format!("spec: {e}")));
    ExternalSecretObject {
        origin: format!("kubernetes:ExternalSecret/{namespace}/{name}"),
        namespace,
        name,
        uid: obj.metadata.uid.clone(),
        labels: obj.metadata.labels.clone().unwrap_or_default(),
        annotations: obj.metadata.annotations.clone().unwrap_or_default(),
        spec,
        resource_version: content_version(obj),
    }
}

fn parse_time(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let secs = u64::try_from(t.unix_timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

fn rfc3339(t: SystemTime) -> String {
    let s = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(s).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// The `Ready` condition in an ExternalSecret's status.
fn ready_condition(obj: &DynamicObject) -> Option<&Value> {
    obj.data
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
}

fn last_sync(obj: &DynamicObject) -> LastSync {
    let status = obj.data.get("status");
    LastSync {
        refresh_time: status
            .and_then(|s| s.get("refreshTime"))
            .and_then(Value::as_str)
            .and_then(parse_time),
        synced_resource_version: status
            .and_then(|s| s.get("syncedResourceVersion"))
            .and_then(Value::as_str)
            .map(str::to_string),
        failed: ready_condition(obj)
            .and_then(|c| c.get("status"))
            .and_then(Value::as_str)
            == Some("False"),
    }
}

fn existing_of(s: &Secret) -> ExistingSecret {
    ExistingSecret {
        type_: s.type_.clone().unwrap_or_else(|| "Opaque".into()),
        labels: s.metadata.labels.clone().unwrap_or_default(),
        annotations: s.metadata.annotations.clone().unwrap_or_default(),
        data: s
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
        immutable: s.immutable.unwrap_or(false),
    }
}

/// ESO's `isSecretValid`: the Secret exists and its data is what the data-hash annotation
/// says we wrote.
fn secret_valid(s: Option<&Secret>) -> bool {
    let Some(s) = s else { return false };
    let e = existing_of(s);
    e.annotations.get(ANNOTATION_DATA_HASH).map(String::as_str) == Some(&sync::data_hash(&e.data))
}

fn b64_map(data: &BTreeMap<String, Vec<u8>>) -> serde_json::Map<String, Value> {
    data.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(v)),
            )
        })
        .collect()
}

/// The outcome of one successful pass, for the status.
struct Outcome {
    reason: &'static str,
    message: &'static str,
    binding: Option<String>,
    ready: bool,
}

async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    if !lease::leads(&ctx.leading) {
        return Ok(Action::requeue(NOT_LEADER_RETRY));
    }
    let key = ObjectRef::from_obj_with(&*obj, ctx.resource.clone());
    let es = external_secret(&obj);
    let inv = ctx.inventory.load_full();
    if obj.metadata.deletion_timestamp.is_some() {
        // Another controller class's ExternalSecret is left to its reconciler (which shares
        // the finalizer's name but keeps its own records).
        if has_finalizer(&obj) {
            if !sync::is_managed(&es, &inv, &ctx.sync) {
                return Ok(Action::await_change());
            }
            cleanup(&obj, &es, &inv, &ctx).await?;
        }
        forget(&ctx, &key);
        ctx.cleanups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        ctx.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        ctx.templates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        ctx.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        return Ok(Action::await_change());
    }
    if !sync::is_managed(&es, &inv, &ctx.sync) {
        return Ok(Action::await_change());
    }
    if uses_revocable_generator(&es, &inv) && !has_finalizer(&obj) {
        // Before the first credential is issued: its revocation must not be skipped.
        set_finalizer(&ctx, &obj, &es, true).await?;
    }
    let started = Instant::now();
    let now = SystemTime::now();
    if pending_due(&ctx, &key, epoch_secs(now)) {
        // Replaced credentials past their grace.
        revoke_due(&ctx, &es, &inv, &key, epoch_secs(now), None).await;
    }
    let result = reconcile_one(&obj, &es, &inv, &ctx, now).await;
    let record = |ready: bool, errored: bool| {
        super::es_metrics::record_sync(&es.name, &es.namespace, ready, errored, started.elapsed())
    };
    match result {
        Ok(None) => {
            forget(&ctx, &key);
            let after = requeue_after(&es, &effective_last_sync(&ctx, &obj), now);
            Ok(with_pending(&ctx, &key, after, now))
        }
        Ok(Some(out)) if !out.ready => {
            // Waiting (Merge target absent): like a failure, written and told only when it
            // changes, retried with backoff.
            record(false, false);
            if write_failure_status(&ctx, &obj, &es, &out, out.message, now).await? {
                event(&ctx, &obj, false, out.message).await;
            }
            Err(ReconcileError::Sync(out.message.to_string()))
        }
        Ok(Some(out)) => {
            record(out.ready, false);
            write_status(&ctx, &obj, &es, &out, now).await?;
            event(&ctx, &obj, true, out.message).await;
            {
                forget(&ctx, &key);
                let last = LastSync {
                    refresh_time: Some(now),
                    synced_resource_version: Some(es.resource_version.clone()),
                    failed: false,
                };
                remember(&ctx, key.clone(), Written::Synced(last.clone()));
                Ok(with_pending(
                    &ctx,
                    &key,
                    requeue_after(&es, &last, now),
                    now,
                ))
            }
        }
        Err(Failure::Sync(e)) => {
            record(false, true);
            let message = e.message();
            let out = Outcome {
                reason: e.reason(),
                message: "",
                binding: None,
                ready: false,
            };
            let changed = write_failure_status(&ctx, &obj, &es, &out, &message, now).await?;
            if changed {
                event(&ctx, &obj, false, &message).await;
            }
            Err(ReconcileError::Sync(message))
        }
        Err(Failure::Kube(e) | Failure::Unknown(e)) => Err(e),
        Err(Failure::Later(wait)) => Ok(with_pending(&ctx, &key, Some(wait), now)),
    }
}

fn remember(ctx: &Context, key: ObjectRef<DynamicObject>, w: Written) {
    let mut map = ctx.written.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= MAX_FAILURE_ENTRIES && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, w);
}

fn recalled(ctx: &Context, key: &ObjectRef<DynamicObject>) -> Option<Written> {
    ctx.written
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(key)
        .cloned()
}

/// The last sync as the status says, or as this replica last wrote it when the status
/// (from the watch cache) is older.
fn effective_last_sync(ctx: &Context, obj: &DynamicObject) -> LastSync {
    let seen = last_sync(obj);
    let key = ObjectRef::from_obj_with(obj, ctx.resource.clone());
    match recalled(ctx, &key) {
        // Ours is newer than the cached status (a failure after it would have replaced it).
        Some(Written::Synced(mine)) if mine.refresh_time > seen.refresh_time => mine,
        _ => seen,
    }
}

fn forget(ctx: &Context, key: &ObjectRef<DynamicObject>) {
    ctx.failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(key);
}

/// Periodic with an interval: how long until the next refresh is due; else `None` (on a
/// change).
fn requeue_after(es: &ExternalSecretObject, last: &LastSync, now: SystemTime) -> Option<Duration> {
    let Ok(spec) = &es.spec else {
        return None;
    };
    let Ok(interval) = policy::refresh_interval(spec.refresh_interval.as_deref()) else {
        return None;
    };
    let refresh = spec.refresh_policy.unwrap_or(RefreshPolicy::Periodic);
    policy::next_refresh(refresh, interval, last).map(|due| {
        due.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(100))
    })
}

/// Requeue after `after` (`None`: on a change), or sooner when a replaced credential of the
/// ExternalSecret `key` is due for revocation before.
fn with_pending(
    ctx: &Context,
    key: &ObjectRef<DynamicObject>,
    after: Option<Duration>,
    now: SystemTime,
) -> Action {
    let pending = ctx
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(key)
        .map(|t| Duration::from_secs(t.saturating_sub(epoch_secs(now)).max(1)));
    match (after, pending) {
        (Some(a), Some(p)) => Action::requeue(a.min(p)),
        (Some(d), None) | (None, Some(d)) => Action::requeue(d),
        (None, None) => Action::await_change(),
    }
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// When a recorded credential is due for revocation (seconds since the epoch): once
/// replaced, at the end of its grace (`revoke_after`); in any case `EXPIRY_MARGIN` after it
/// lapsed on its own (revoked once, idempotent, then let go). `None`: in use, no expiry.
fn revocation_deadline(c: &sync::IssuedCredential) -> Option<u64> {
    let lapsed = c.expires_at.map(|t| t.saturating_add(EXPIRY_MARGIN));
    match (c.revoke_after, lapsed) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_due(c: &sync::IssuedCredential, now: u64) -> bool {
    revocation_deadline(c).is_some_and(|t| t <= now)
}

/// Remembers when the next of `entries` is due for revocation (those already due could not
/// be revoked: tried again in [`PENDING_RETRY`]).
fn note_pending(
    ctx: &Context,
    key: &ObjectRef<DynamicObject>,
    entries: &[sync::IssuedCredential],
    now: u64,
) {
    let next = entries
        .iter()
        .filter_map(revocation_deadline)
        .map(|t| if t <= now { now + PENDING_RETRY } else { t })
        .min();
    let mut map = ctx.pending.lock().unwrap_or_else(|p| p.into_inner());
    match next {
        Some(t) => {
            if map.len() >= MAX_FAILURE_ENTRIES && !map.contains_key(key) {
                map.clear();
            }
            map.insert(key.clone(), t);
        }
        None => {
            map.remove(key);
        }
    }
}

/// Whether this replica knows of a replaced credential of `key` due for revocation.
fn pending_due(ctx: &Context, key: &ObjectRef<DynamicObject>, now: u64) -> bool {
    ctx.pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(key)
        .is_some_and(|t| *t <= now)
}

/// Revokes the credentials of the ExternalSecret's record that are due ([`is_due`]) and
/// records what is left (those that could not be revoked stay, retried in
/// [`PENDING_RETRY`], unless they lapsed more than [`EXPIRY_MARGIN`] ago). `base`: the
/// record as just written, else it is read.
async fn revoke_due(
    ctx: &Context,
    es: &ExternalSecretObject,
    inv: &Inventory,
    key: &ObjectRef<DynamicObject>,
    now: u64,
    base: Option<Record>,
) {
    let uid = es.uid.clone().unwrap_or_default();
    let owner = format!("{}/{}", es.namespace, es.name);
    let retry_later = || {
        let mut map = ctx.pending.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key.clone(), now + PENDING_RETRY);
    };
    let record = match base {
        Some(r) => r,
        None => match ctx.records.get(&uid).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(external_secret = %owner, error = %e, "cannot read the record of issued credentials to revoke the replaced ones; retried later");
                retry_later();
                return;
            }
        },
    };
    let due: Vec<_> = record
        .entries
        .iter()
        .filter(|e| is_due(e, now))
        .cloned()
        .collect();
    if due.is_empty() {
        note_pending(ctx, key, &record.entries, now);
        return;
    }
    let kept = still_held(revoke(ctx, es, inv, due.clone()).await, now);
    let left = without(&record.entries, &due, &kept);
    match ctx.records.put(&uid, &owner, &record, left).await {
        Ok(r) => note_pending(ctx, key, &r.entries, now),
        Err(e) => {
            tracing::warn!(external_secret = %owner, error = %e, "cannot update the record of issued credentials");
            retry_later();
        }
    }
}

/// Of credentials whose revocation failed, those to keep recorded: not those that lapsed
/// more than [`EXPIRY_MARGIN`] ago (nothing is left to revoke).
fn still_held(kept: Vec<sync::IssuedCredential>, now: u64) -> Vec<sync::IssuedCredential> {
    kept.into_iter()
        .filter(|c| {
            c.expires_at
                .is_none_or(|t| t.saturating_add(EXPIRY_MARGIN) > now)
        })
        .collect()
}

enum Failure {
    Sync(SyncError),
    Kube(ReconcileError),
    /// The Secret write failed in a way that leaves open whether it landed (no answer, a
    /// 5xx), and a read back could not tell: the credentials may be handed out.
    Unknown(ReconcileError),
    /// Not now: come back after this long (a template-triggered resync too soon after the
    /// last one).
    Later(Duration),
}

impl From<SyncError> for Failure {
    fn from(e: SyncError) -> Self {
        Failure::Sync(e)
    }
}

/// `Ok(None)`: nothing was due.
async fn reconcile_one(
    obj: &DynamicObject,
    es: &ExternalSecretObject,
    inv: &Inventory,
    ctx: &Context,
    now: SystemTime,
) -> Result<Option<Outcome>, Failure> {
    let spec = es
        .spec
        .as_ref()
        .map_err(|e| SyncError::InvalidSpec(e.clone()))?;
    sync::validate(es, spec)?;
    let interval = policy::refresh_interval(spec.refresh_interval.as_deref())?;
    let name = sync::target_name(es, spec);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &es.namespace);
    let existing = secrets
        .get_opt(&name)
        .await
        .map_err(|e| Failure::Kube(kube_error("reading the target Secret", &e)))?;
    // A Secret deleted by `deletionPolicy: Delete` stays absent: that is its synced state
    // (else every event would sync again).
    let deleted = existing.is_none()
        && ready_condition(obj)
            .and_then(|c| c.get("reason"))
            .and_then(Value::as_str)
            == Some(REASON_DELETED);
    let valid = spec.target.creation_policy == CreationPolicy::None
        || deleted
        || secret_valid(existing.as_ref());
    let refresh = spec.refresh_policy.unwrap_or(RefreshPolicy::Periodic);
    let key = ObjectRef::from_obj_with(obj, ctx.resource.clone());
    let templates = template_fingerprint(obj, &es.namespace, inv);
    let seen_templates = {
        let map = ctx.templates.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key).cloned()
    };
    // Extension: a `templateFrom` source that changed re-renders (not for CreatedOnce).
    let templates_changed = refresh != RefreshPolicy::CreatedOnce
        && seen_templates
            .as_ref()
            .is_some_and(|seen| Some(seen) != templates.as_ref());
    let due = policy::needs_sync(
        refresh,
        interval,
        &es.resource_version,
        &effective_last_sync(ctx, obj),
        valid,
        now,
    );
    if !templates_changed && !due {
        if seen_templates.is_none() {
            remember_templates(ctx, key, templates);
        }
        return Ok(None);
    }
    if !due && let Some(wait) = template_resync_wait(ctx, &key, Instant::now()) {
        // Sources that keep changing render at most once per TEMPLATE_RESYNC_EVERY.
        return Err(Failure::Later(wait));
    }
    if spec.target.creation_policy == CreationPolicy::Merge && existing.is_none() {
        // Nothing to merge into: no backend call, no credential issued.
        return Ok(Some(Outcome {
            reason: REASON_MISSING,
            message: "secret will not be created due to CreationPolicy=Merge",
            binding: None,
            ready: false,
        }));
    }
    if !lease::leads(&ctx.leading) {
        return Err(Failure::Kube(ReconcileError::Kube(
            "no longer leading".into(),
        )));
    }
    let uid = es.uid.clone().unwrap_or_default();
    let owner = format!("{}/{}", es.namespace, es.name);
    let now_secs = epoch_secs(now);
    // The record is read (and checked) before any credential is issued: one that cannot be
    // read or is full would leave a new credential neither recorded nor handed out.
    let record = if uses_revocable_generator(es, inv) {
        refuse_before_issuing(es, spec, existing.as_ref(), &name)?;
        let record = ctx.records.get(&uid).await.map_err(record_failure)?;
        record_has_room(&record.entries, revocable_refs(spec))?;
        note_pending(ctx, &key, &record.entries, now_secs);
        record
    } else {
        Record::default()
    };
    // Those the Secret holds now (replaced if this sync writes new ones).
    let previous: Vec<_> = record
        .entries
        .iter()
        .filter(|e| e.revoke_after.is_none())
        .cloned()
        .collect();
    // Each credential is recorded (beside those already recorded) as soon as it is issued,
    // before anything else of the sync runs, so that no failure or crash from there on
    // leaves one unrecorded.
    let mut hook = RecordHook {
        records: &ctx.records,
        uid: &uid,
        owner: &owner,
        record,
    };
    let mut issued = Vec::new();
    let synced = sync::sync_with(es, inv, &ctx.sync, &mut issued, Some(&mut hook)).await;
    let record = hook.record;
    remember_generators(ctx, inv, &issued);
    let desired = match synced {
        Ok(d) => d,
        Err(e) => {
            // Nothing handed out: what was issued goes.
            drop_issued(ctx, es, inv, &record, issued).await;
            return Err(e.into());
        }
    };
    let applied = apply_action(ctx, es, spec, &secrets, &name, existing.as_ref(), desired).await;
    let out = match applied {
        Ok(out) if out.outcome.ready && out.writes => out.outcome,
        Err(Failure::Unknown(e)) => {
            // The write may have landed and could not be checked: the new credentials may be
            // in the Secret. Nothing is revoked; all stay recorded until the next sync.
            return Err(Failure::Kube(e));
        }
        other => {
            // Nothing was handed out: the new credentials go, the record is as before.
            drop_issued(ctx, es, inv, &record, issued).await;
            let out = other?.outcome;
            if out.ready {
                remember_templates(ctx, key, templates);
            }
            return Ok(Some(out));
        }
    };
    if !issued.is_empty() {
        // Replaced by the new ones: revoked once their grace is over (at once without one);
        // those that cannot be revoked then stay recorded.
        let grace = ctx.revocation_grace.as_secs();
        let marked = retire(&record.entries, &previous, now_secs.saturating_add(grace));
        match ctx.records.put(&uid, &owner, &record, marked).await {
            Ok(r) => {
                note_pending(ctx, &key, &r.entries, now_secs);
                if r.entries.iter().any(|e| is_due(e, now_secs)) {
                    revoke_due(ctx, es, inv, &key, now_secs, Some(r)).await;
                }
            }
            Err(e) => {
                tracing::warn!(external_secret = %owner, error = %e, "cannot update the record of issued credentials");
            }
        }
    }
    if out.ready {
        remember_templates(ctx, key, templates);
    }
    Ok(Some(out))
}

/// `entries` with those of `replaced` still in use given `deadline` as their
/// `revoke_after` (or their expiry when sooner).
fn retire(
    entries: &[sync::IssuedCredential],
    replaced: &[sync::IssuedCredential],
    deadline: u64,
) -> Vec<sync::IssuedCredential> {
    entries
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if e.revoke_after.is_none() && replaced.iter().any(|r| r.same(&e)) {
                e.revoke_after = Some(deadline.min(e.expires_at.unwrap_or(u64::MAX)));
            }
            e
        })
        .collect()
}

/// Records each credential as it is issued ([`sync::OnIssued`]): the record then holds
/// what it held plus every credential issued so far.
struct RecordHook<'a> {
    records: &'a Records,
    uid: &'a str,
    owner: &'a str,
    /// The record as last read or written.
    record: Record,
}

#[async_trait::async_trait]
impl sync::OnIssued for RecordHook<'_> {
    async fn issued(&mut self, cred: &sync::IssuedCredential) -> Result<(), SyncError> {
        let mut all = self.record.entries.clone();
        all.push(cred.clone());
        match self
            .records
            .put(self.uid, self.owner, &self.record, all)
            .await
        {
            Ok(r) => {
                self.record = r;
                Ok(())
            }
            Err(e) => Err(SyncError::Record(format!(
                "{e}; the credentials this sync issued are not handed out and are revoked"
            ))),
        }
    }
}

/// Credentials just issued that will not be handed out: revoked; the record (`base`, as
/// the sync left it) keeps only those that could not be revoked.
async fn drop_issued(
    ctx: &Context,
    es: &ExternalSecretObject,
    inv: &Inventory,
    base: &Record,
    issued: Vec<sync::IssuedCredential>,
) {
    if issued.is_empty() {
        return;
    }
    let kept = revoke(ctx, es, inv, issued.clone()).await;
    let mut back = without(&base.entries, &issued, &kept);
    for k in &kept {
        // Issued but not recorded (the record write failed): recorded now.
        if !back.iter().any(|e| e.same(k)) {
            back.push(k.clone());
        }
    }
    if back == base.entries {
        return;
    }
    let uid = es.uid.clone().unwrap_or_default();
    let owner = format!("{}/{}", es.namespace, es.name);
    if let Err(e) = ctx.records.put(&uid, &owner, base, back).await {
        if kept.is_empty() {
            tracing::warn!(external_secret = %owner, error = %e, "cannot update the record of issued credentials");
        } else {
            tracing::warn!(external_secret = %owner, error = %e, "generated credentials could not be revoked nor recorded; they lapse at their TTL");
        }
    }
}

/// The record's entries after `tried` were revoked except `kept`: `entries` without the
/// revoked ones (everything else, whoever recorded it, stays).
fn without(
    entries: &[sync::IssuedCredential],
    tried: &[sync::IssuedCredential],
    kept: &[sync::IssuedCredential],
) -> Vec<sync::IssuedCredential> {
    entries
        .iter()
        .filter(|e| !tried.iter().any(|t| t.same(e)) || kept.iter().any(|k| k.same(e)))
        .cloned()
        .collect()
}

/// Room left in a record holding `live` for what one sync may add: at most
/// [`MAX_RECORDED`] entries once each of its `refs` generatorRefs issued one (and at least
/// [`RECORD_HEADROOM`] free), and three quarters of [`super::records::MAX_RECORD_BYTES`].
///
/// # Errors
/// [`SyncError::Record`] when full (revocations keep failing) or when the ExternalSecret
/// has more generatorRefs than a record holds: nothing is issued.
fn record_has_room(live: &[sync::IssuedCredential], refs: usize) -> Result<(), Failure> {
    if refs > MAX_RECORDED - RECORD_HEADROOM {
        return Err(Failure::Sync(SyncError::Record(format!(
            "{refs} generatorRefs, more than the {} credentials one record of issued credentials keeps; no credential is issued",
            MAX_RECORDED - RECORD_HEADROOM
        ))));
    }
    let bytes = serde_json::to_vec(live).map_or(usize::MAX, |v| v.len());
    if live.len() + refs.max(RECORD_HEADROOM) > MAX_RECORDED
        || bytes > super::records::MAX_RECORD_BYTES / 4 * 3
    {
        return Err(Failure::Sync(SyncError::Record(format!(
            "the record of issued credentials is full ({} credentials not yet revoked: revocations keep failing, or replaced ones wait for their grace); no credential is issued",
            live.len()
        ))));
    }
    Ok(())
}

/// The `dataFrom[].sourceRef.generatorRef`s of `spec` (each may issue one credential per
/// sync).
fn revocable_refs(spec: &crate::resources::external_secret::ExternalSecretSpec) -> usize {
    spec.data_from
        .iter()
        .filter(|d| {
            d.source_ref
                .as_ref()
                .is_some_and(|s| s.generator_ref.is_some())
        })
        .count()
}

/// Entries kept free in a record before a sync may issue (see [`record_has_room`]).
const RECORD_HEADROOM: usize = 16;

fn record_failure(e: RecordError) -> Failure {
    Failure::Sync(SyncError::Record(format!("{e}; no credential is issued")))
}

/// What [`apply_action`] did.
struct Applied {
    outcome: Outcome,
    /// Whether the Secret now holds the synced data (the credentials were handed out).
    writes: bool,
}

/// The Secret per the creation and deletion policies, once the data is known.
async fn apply_action(
    ctx: &Context,
    es: &ExternalSecretObject,
    spec: &crate::resources::external_secret::ExternalSecretSpec,
    secrets: &Api<Secret>,
    name: &str,
    existing: Option<&Secret>,
    desired: DesiredSecret,
) -> Result<Applied, Failure> {
    let action = policy::secret_action(
        spec.target.creation_policy,
        spec.target.deletion_policy,
        desired.provider_data_empty,
        existing.is_some(),
        name,
    )?;
    let writes = matches!(action, SecretAction::Write | SecretAction::MergeInto);
    if writes && !lease::leads(&ctx.leading) {
        return Err(Failure::Kube(ReconcileError::Kube(
            "no longer leading".into(),
        )));
    }
    let synced = |name: &str| Outcome {
        reason: REASON_SYNCED,
        message: "secret synced",
        binding: Some(name.to_string()),
        ready: true,
    };
    let outcome = match action {
        SecretAction::Write => {
            let before = existing.map(|s| existing_of(s).data);
            let after = desired.data.clone();
            let version = write_secret(secrets, desired, existing, es).await?;
            roll_if_changed(ctx, es, name, before, &after, version).await;
            synced(name)
        }
        SecretAction::MergeInto => {
            let Some(base) = existing else {
                return Err(Failure::Kube(ReconcileError::Kube(
                    "the Merge target vanished".into(),
                )));
            };
            let before = existing_of(base);
            let after = desired.clone().merged_into(&before).data;
            let version = merge_secret(secrets, desired, base).await?;
            roll_if_changed(ctx, es, name, Some(before.data), &after, version).await;
            synced(name)
        }
        SecretAction::Delete => {
            if let Some(s) = existing {
                delete_owned_secret(secrets, s, es).await?;
            }
            Outcome {
                reason: REASON_DELETED,
                message: "secret deleted due to DeletionPolicy=Delete",
                binding: None,
                ready: true,
            }
        }
        SecretAction::Retain => Outcome {
            reason: REASON_SYNCED,
            message: "secret retained due to DeletionPolicy=Retain",
            binding: None,
            ready: true,
        },
        SecretAction::WaitForTarget => Outcome {
            reason: REASON_MISSING,
            message: "secret will not be created due to CreationPolicy=Merge",
            binding: None,
            ready: false,
        },
        SecretAction::Nothing => Outcome {
            reason: REASON_SYNCED,
            message: "secret synced",
            binding: None,
            ready: true,
        },
    };
    Ok(Applied { outcome, writes })
}

/// `deletionPolicy: Delete` with no provider data: deletes the target Secret only when this
/// ExternalSecret wrote it (its controller owner reference, or ESO's managed label without
/// another controller), with the uid and resourceVersion read as preconditions. Anything
/// else is refused like a write would be (ESO deletes whatever has the name: that would
/// hand "delete any Secret" to whoever may create ExternalSecrets).
async fn delete_owned_secret(
    secrets: &Api<Secret>,
    s: &Secret,
    es: &ExternalSecretObject,
) -> Result<(), Failure> {
    let name = s.metadata.name.clone().unwrap_or_default();
    let controller = s
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let ours = match controller {
        Some(o) => Some(&o.uid) == es.uid.as_ref(),
        None => s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_MANAGED))
            .is_some_and(|v| v == "true"),
    };
    if !ours {
        return Err(Failure::Sync(SyncError::DeleteNotWritten { secret: name }));
    }
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: s.metadata.uid.clone(),
            resource_version: s.metadata.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    match secrets.delete(&name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Failure::Kube(kube_error("deleting the target Secret", &e))),
    }
}

/// A fingerprint of the data of the Secrets and ConfigMaps an ExternalSecret's
/// `templateFrom` reads, as the inventory holds them (`None`: it reads none). Absent
/// sources count too (their appearance changes it).
fn template_fingerprint(obj: &DynamicObject, namespace: &str, inv: &Inventory) -> Option<String> {
    let sources = template_sources(&obj.data, namespace);
    if sources.is_empty() {
        return None;
    }
    let mut parts = BTreeMap::new();
    for o in sources {
        let data = match o.kind {
            crate::source::NamedKind::Secret => inv.secret(&o.namespace, &o.name).map(|s| &s.data),
            crate::source::NamedKind::ConfigMap => inv.config_map(&o.namespace, &o.name),
        };
        let hash = data.map(sync::data_hash).unwrap_or_default();
        parts.insert(format!("{}/{}", o.kind.as_str(), o.name), hash.into_bytes());
    }
    Some(sync::data_hash(&parts))
}

/// Least time between two syncs of one ExternalSecret that only its `templateFrom`
/// sources' change asked for (sources that change all the time do not make it sync, and
/// issue credentials, all the time).
const TEMPLATE_RESYNC_EVERY: Duration = Duration::from_secs(10);

/// `None` (and the resync is counted from `now`) when the ExternalSecret `key` may sync
/// for a template change at `now`; else how long to wait.
fn template_resync_wait(
    ctx: &Context,
    key: &ObjectRef<DynamicObject>,
    now: Instant,
) -> Option<Duration> {
    let mut map = ctx
        .template_resyncs
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(last) = map.get(key) {
        let since = now.saturating_duration_since(*last);
        if since < TEMPLATE_RESYNC_EVERY {
            return Some(TEMPLATE_RESYNC_EVERY - since);
        }
    }
    if map.len() >= MAX_FAILURE_ENTRIES && !map.contains_key(key) {
        map.clear();
    }
    map.insert(key.clone(), now);
    None
}

fn remember_templates(ctx: &Context, key: ObjectRef<DynamicObject>, fingerprint: Option<String>) {
    let mut map = ctx.templates.lock().unwrap_or_else(|p| p.into_inner());
    match fingerprint {
        Some(f) => {
            if map.len() >= MAX_FAILURE_ENTRIES && !map.contains_key(&key) {
                map.clear();
            }
            map.insert(key, f);
        }
        None => {
            map.remove(&key);
        }
    }
}

/// Rollout extension ([`super::rollout`]): when the ExternalSecret asks for it and a Secret
/// that existed had its data changed, every Deployment, StatefulSet and DaemonSet of the
/// namespace whose pod template reads it records the Secret's new `resourceVersion` (which
/// rolls it). Failures are logged and counted, never fail the sync (the Secret is written).
async fn roll_if_changed(
    ctx: &Context,
    es: &ExternalSecretObject,
    secret: &str,
    before: Option<BTreeMap<String, Vec<u8>>>,
    after: &BTreeMap<String, Vec<u8>>,
    version: Option<String>,
) {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
    if !super::rollout::rollout_requested(&es.annotations) {
        return;
    }
    let (Some(before), Some(version)) = (before, version) else {
        return;
    };
    if sync::data_hash(&before) == sync::data_hash(after) {
        return;
    }
    let ns = &es.namespace;
    let client = &ctx.client;
    let pp = PatchParams {
        field_manager: Some(CONTROLLER_NAME.into()),
        ..PatchParams::default()
    };
    macro_rules! roll {
        ($kind:ty, $label:literal) => {{
            let api: Api<$kind> = Api::namespaced(client.clone(), ns);
            match api.list(&Default::default()).await {
                Ok(list) => {
                    for w in list.items {
                        let Some(template) = w.spec.as_ref().map(|s| &s.template) else {
                            continue;
                        };
                        let Some(patch) = super::rollout::rollout_patch(template, secret, &version)
                        else {
                            continue;
                        };
                        let name = w.metadata.name.clone().unwrap_or_default();
                        let mut delays = rollout_retries();
                        loop {
                            match api.patch(&name, &pp, &Patch::Merge(&patch)).await {
                                Ok(_) => {
                                    tracing::info!(kind = $label, namespace = %ns, name = %name, secret = %secret, "rolled out");
                                    break;
                                }
                                Err(e) => match delays.next().filter(|_| transient(&e)) {
                                    Some(delay) => tokio::time::sleep(delay).await,
                                    None => {
                                        tracing::warn!(kind = $label, namespace = %ns, name = %name, error = %kube_error("patch", &e), "cannot roll out");
                                        break;
                                    }
                                },
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(kind = $label, namespace = %ns, error = %kube_error("list", &e), "cannot list workloads to roll out")
                }
            }
        }};
    }
    roll!(Deployment, "Deployment");
    roll!(StatefulSet, "StatefulSet");
    roll!(DaemonSet, "DaemonSet");
}

/// Delays between attempts of one rollout patch: a conflict, throttling, a server error or
/// an unreachable API is retried (jittered, 0.2 s doubling, 4 attempts in all).
fn rollout_retries() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_times(3)
        .with_jitter()
        .build()
}

/// Whether a Kubernetes API error may pass on retrying (409, 429, 5xx, no answer).
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 409 | 429 | 500..=599),
        _ => true,
    }
}

/// Revokes credentials; returns those that could not be revoked now but may be later (the
/// generator is not ready, the backend failed), to stay recorded. Those that never can be
/// (the generator no longer exists, or says the state is not revocable) are let go with a
/// Warning Event: they lapse at their TTL.
async fn revoke(
    ctx: &Context,
    es: &ExternalSecretObject,
    inv: &Inventory,
    issued: Vec<sync::IssuedCredential>,
) -> Vec<sync::IssuedCredential> {
    let (kept, abandoned) = revoke_all(ctx, inv, issued).await;
    if !abandoned.is_empty() {
        let message = format!(
            "generated credentials cannot be revoked (generator gone or not revocable: {}); they lapse at their TTL",
            abandoned.join(", ")
        );
        tracing::warn!(external_secret = %format!("{}/{}", es.namespace, es.name), "{message}");
        warn_event(ctx, es, "RevocationAbandoned", &message).await;
    }
    kept
}

/// Revokes `issued` through the generators of `inv`, else (gone, or not ready: a namespace
/// being deleted loses the generator's Secrets, then the generator) through the one last
/// built for it here ([`Context::generators`]); returns those to keep recorded (not ready
/// and never built here, the backend failed) and the generators (`Kind namespace/name`,
/// sorted, once each) whose credentials can never be revoked (gone and never built here,
/// or not revocable).
async fn revoke_all(
    ctx: &Context,
    inv: &Inventory,
    issued: Vec<sync::IssuedCredential>,
) -> (Vec<sync::IssuedCredential>, Vec<String>) {
    let mut kept = Vec::new();
    let mut abandoned: Vec<String> = Vec::new();
    for cred in issued {
        let key = cred.generator_key();
        let what = format!("{} {}/{}", key.kind, key.namespace, key.name);
        let remembered = || {
            ctx.generators
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned()
        };
        let generator = match inv.generator(&key) {
            Some(Ok(g)) => {
                remember_generator(ctx, &key, g);
                g.clone()
            }
            Some(Err(_)) => match remembered() {
                Some(g) => g,
                None => {
                    tracing::warn!(generator = %what, "cannot revoke a generated credential: generator not ready; it stays recorded");
                    kept.push(cred);
                    continue;
                }
            },
            None => match remembered() {
                Some(g) => g,
                None => {
                    abandoned.push(what);
                    continue;
                }
            },
        };
        match generator.revoke(&cred.state).await {
            Ok(()) => {
                tracing::info!(generator = %what, state = %cred.state.fingerprint(), "revoked a generated credential");
            }
            Err(crate::generators::GeneratorError::NotRevocable) => abandoned.push(what),
            Err(e) => {
                tracing::warn!(generator = %what, error = %e, "cannot revoke a generated credential; it stays recorded");
                kept.push(cred);
            }
        }
    }
    abandoned.sort();
    abandoned.dedup();
    (kept, abandoned)
}

/// Keeps `g`, built for `key`, for revoking what it issued once it is gone from the
/// inventory ([`Context::generators`]).
fn remember_generator(ctx: &Context, key: &GeneratorKey, g: &Arc<dyn Generator>) {
    let mut map = ctx.generators.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= MAX_REMEMBERED_GENERATORS && !map.contains_key(key) {
        // Full: the sweep prunes it to the generators records reference.
        tracing::debug!("too many generators remembered for revocation; not this one");
        return;
    }
    map.insert(key.clone(), g.clone());
}

/// [`remember_generator`] for the generators of `issued`.
fn remember_generators(ctx: &Context, inv: &Inventory, issued: &[sync::IssuedCredential]) {
    for cred in issued {
        let key = cred.generator_key();
        if let Some(Ok(g)) = inv.generator(&key) {
            remember_generator(ctx, &key, g);
        }
    }
}

/// How often the records are swept ([`sweep_records_once`]) at the latest.
const RECORD_SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Least time between two sweeps.
const RECORD_SWEEP_MIN: Duration = Duration::from_secs(2);

/// While this replica leads: at start, then every [`RECORD_SWEEP_EVERY`] (sooner when a
/// recorded credential falls due or a young record waits to be judged), the records are
/// swept ([`sweep_records_once`]).
async fn sweep_records(store: kube::runtime::reflector::Store<DynamicObject>, ctx: Arc<Context>) {
    if !store_ready(&store).await {
        return;
    }
    let mut leading = ctx.leading.clone();
    loop {
        while !lease::leads(&leading) {
            if leading.changed().await.is_err() {
                return;
            }
        }
        let next = sweep_records_once(&store, &ctx).await;
        tokio::time::sleep(next.clamp(RECORD_SWEEP_MIN, RECORD_SWEEP_EVERY)).await;
    }
}

/// What the sweep makes of a record whose ExternalSecret uid the controller's cache lacks.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Its ExternalSecret is gone: revoke everything, then delete the record.
    Orphan,
    /// Its ExternalSecret exists (the cache lags) or cannot be checked: left alone now.
    Live,
    /// Too young to judge (its ExternalSecret may not have reached this replica's cache):
    /// judged again in this long.
    Young(Duration),
}

/// Judges a record absent from the cache: younger than twice the Lease duration (`min_age`),
/// it waits; else its ExternalSecret as read live (`found`: the uid of the object at the
/// owner annotation's namespace/name, `Ok(None)` for a 404, `Err` when it could not be read)
/// decides. A record whose owner cannot be read back (`found` is `Err(false)`: no owner
/// annotation, or the sweep's own `(gone)` mark) is judged by the cache alone.
fn verdict(
    uid: &str,
    age: Option<Duration>,
    min_age: Duration,
    found: Result<Option<String>, bool>,
) -> Verdict {
    match age {
        Some(age) if age < min_age => return Verdict::Young(min_age - age),
        None => {}
        Some(_) => {}
    }
    match found {
        Ok(Some(live)) if live == uid => Verdict::Live,
        Ok(_) | Err(false) => Verdict::Orphan,
        Err(true) => Verdict::Live,
    }
}

/// One sweep of the records of issued credentials. The records are listed first, the live
/// uids read after (a record is written only for an ExternalSecret the cache already has).
/// - A record whose ExternalSecret the cache lacks ([`verdict`]: old enough, and confirmed
///   gone by a live read of its ExternalSecret) is revoked, then deleted.
/// - A live ExternalSecret's record has its due credentials revoked ([`is_due`]: after a
///   restart or a leadership change this replica's reconciles do not know of them).
///
/// What cannot be revoked yet stays recorded for the next sweep. The generators remembered
/// for revocation are pruned to those a record references. Returns when to sweep next.
async fn sweep_records_once(
    store: &kube::runtime::reflector::Store<DynamicObject>,
    ctx: &Context,
) -> Duration {
    let listed = match ctx.records.list().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the records of issued credentials");
            return RECORD_SWEEP_EVERY;
        }
    };
    let live: std::collections::HashSet<String> = store
        .state()
        .iter()
        .filter_map(|o| o.metadata.uid.clone())
        .collect();
    prune_generators(ctx, &listed);
    let now = SystemTime::now();
    let now_secs = epoch_secs(now);
    let min_age = ctx.lease_duration * 2;
    let mut next = RECORD_SWEEP_EVERY;
    for l in listed {
        if !lease::leads(&ctx.leading) {
            return next;
        }
        let name = super::records::record_name(&l.uid);
        let record = match l.record {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(record = %name, error = %e, "cannot read a record of issued credentials");
                continue;
            }
        };
        let orphan = if live.contains(&l.uid) {
            false
        } else {
            let age = l
                .created
                .map(|c| Duration::from_secs(now_secs.saturating_sub(c)));
            let found = if age.is_some_and(|a| a < min_age) {
                Err(true)
            } else {
                owner_uid(ctx, l.owner.as_deref()).await
            };
            match verdict(&l.uid, age, min_age, found) {
                Verdict::Orphan => true,
                Verdict::Live => false,
                Verdict::Young(wait) => {
                    next = next.min(wait);
                    continue;
                }
            }
        };
        let tried: Vec<_> = if orphan {
            record.entries.clone()
        } else {
            record
                .entries
                .iter()
                .filter(|e| is_due(e, now_secs))
                .cloned()
                .collect()
        };
        if !orphan {
            if let Some(t) = record
                .entries
                .iter()
                .filter_map(revocation_deadline)
                .filter(|t| *t > now_secs)
                .min()
            {
                next = next.min(Duration::from_secs(t - now_secs));
            }
            if tried.is_empty() {
                continue;
            }
        }
        let inv = ctx.inventory.load_full();
        let (kept, abandoned) = revoke_all(ctx, &inv, tried.clone()).await;
        let kept = still_held(kept, now_secs);
        if !abandoned.is_empty() {
            tracing::warn!(record = %name, generators = %abandoned.join(", "), "recorded generated credentials cannot be revoked; they lapse at their TTL");
        }
        let left = without(&record.entries, &tried, &kept);
        let owner = if orphan {
            format!("(gone) uid {}", l.uid)
        } else {
            l.owner.clone().unwrap_or_default()
        };
        match ctx.records.put(&l.uid, &owner, &record, left).await {
            Ok(r) if r.entries.is_empty() => {
                tracing::info!(record = %name, "a record of issued credentials was revoked and deleted");
            }
            Ok(r) => {
                tracing::info!(record = %name, left = r.entries.len(), "recorded credentials revoked; those left are retried later");
            }
            Err(e) => {
                tracing::warn!(record = %name, error = %e, "cannot update a record of issued credentials");
            }
        }
    }
    next
}

/// The uid of the ExternalSecret at `owner` (`namespace/name`, the record's owner
/// annotation) read live: `Ok(None)` when there is none; `Err(true)` when it could not be
/// read (left alone); `Err(false)` when `owner` names none (no annotation, or the sweep's
/// own `(gone)` mark).
async fn owner_uid(ctx: &Context, owner: Option<&str>) -> Result<Option<String>, bool> {
    let Some((ns, name)) = owner.and_then(|o| o.split_once('/')) else {
        return Err(false);
    };
    if !sync::is_object_name(name) || !sync::is_object_name(ns) {
        return Err(false);
    }
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ctx.resource);
    match api.get_opt(name).await {
        Ok(found) => Ok(found.and_then(|o| o.metadata.uid)),
        Err(e) => {
            tracing::warn!(external_secret = %format!("{ns}/{name}"), error = %kube_error("reading", &e), "cannot check whether a record's ExternalSecret exists; left for the next sweep");
            Err(true)
        }
    }
}

/// Forgets the generators remembered for revocation that no record references.
fn prune_generators(ctx: &Context, listed: &[super::records::Listed]) {
    let referenced: BTreeSet<GeneratorKey> = listed
        .iter()
        .filter_map(|l| l.record.as_ref().ok())
        .flat_map(|r| r.entries.iter().map(sync::IssuedCredential::generator_key))
        .collect();
    ctx.generators
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|k, _| referenced.contains(k));
}

/// A Warning Event on the ExternalSecret `es`.
async fn warn_event(ctx: &Context, es: &ExternalSecretObject, reason: &str, message: &str) {
    let ev = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(message.chars().take(1024).collect()),
        action: "Revoke".into(),
        secondary: None,
    };
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(EXTERNAL_SECRET_API_VERSION.into()),
        kind: Some("ExternalSecret".into()),
        name: Some(es.name.clone()),
        namespace: Some(es.namespace.clone()),
        uid: es.uid.clone(),
        ..Default::default()
    };
    if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
        tracing::debug!(error = %e, "cannot publish an Event");
    }
}

/// Whether a `dataFrom[].sourceRef.generatorRef` names a kind in
/// [`REVOCABLE_GENERATOR_KINDS`], or a `ClusterGenerator` wrapping one (per the inventory;
/// one not available yet counts as revocable: a finalizer with nothing recorded is removed
/// at deletion without any call, a missing one would leak credentials).
fn uses_revocable_generator(es: &ExternalSecretObject, inv: &Inventory) -> bool {
    let Ok(spec) = &es.spec else {
        return false;
    };
    spec.data_from.iter().any(|d| {
        let Some(g) = d.source_ref.as_ref().and_then(|s| s.generator_ref.as_ref()) else {
            return false;
        };
        if REVOCABLE_GENERATOR_KINDS.contains(&g.kind.as_str()) {
            return true;
        }
        if !crate::generators::is_cluster_scoped(&g.kind) {
            return false;
        }
        let key = crate::resources::GeneratorKey {
            namespace: String::new(),
            kind: g.kind.clone(),
            name: g.name.clone(),
        };
        match inv.generator(&key) {
            Some(Ok(wrapper)) => REVOCABLE_GENERATOR_KINDS.contains(&wrapper.kind()),
            _ => true,
        }
    })
}

fn has_finalizer(obj: &DynamicObject) -> bool {
    obj.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

/// Adds or removes [`FINALIZER`] (a merge patch of the whole list, guarded by the
/// `resourceVersion` read: a concurrent change makes it fail and retry).
async fn set_finalizer(
    ctx: &Context,
    obj: &DynamicObject,
    es: &ExternalSecretObject,
    present: bool,
) -> Result<(), ReconcileError> {
    let mut list: Vec<String> = obj
        .metadata
        .finalizers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f != FINALIZER)
        .collect();
    if present {
        list.push(FINALIZER.to_string());
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &es.namespace, &ctx.resource);
    let patch = json!({"metadata": {
        "finalizers": list,
        "resourceVersion": obj.metadata.resource_version,
    }});
    let pp = PatchParams {
        field_manager: Some(CONTROLLER_NAME.into()),
        ..PatchParams::default()
    };
    match api.patch(&es.name, &pp, &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        // Already gone: nothing left to hold.
        Err(kube::Error::Api(s)) if s.code == 404 && !present => Ok(()),
        Err(e) => Err(kube_error("updating the finalizers", &e)),
    }
}

/// Least cleanup attempts of one ExternalSecret before what is still recorded is let go.
const CLEANUP_ATTEMPTS: u32 = 8;
/// Least time since the deletion (`deletionTimestamp`) before what is still recorded is let
/// go: so that a namespace deletion that also removed the generator's credentials never
/// hangs for good, while attempts that come close together (each inventory publication
/// reconciles every ExternalSecret again) do not give up within seconds.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(240);

/// Whether a cleanup gives up: at its `attempt`th attempt, `since` after the deletion
/// (`None`: unknown, counted as long ago), both bounds reached.
fn cleanup_gives_up(attempt: u32, since: Option<Duration>) -> bool {
    attempt >= CLEANUP_ATTEMPTS && since.is_none_or(|d| d >= CLEANUP_TIMEOUT)
}

/// An ExternalSecret with our finalizer is being deleted: revoke every credential its
/// record holds (in use or replaced, whatever happened to its Secret), delete the record,
/// then remove the finalizer. A revocation that fails keeps the finalizer and is retried
/// with backoff until [`cleanup_gives_up`]; then what could not be revoked stays in the
/// record (the sweep tries again every [`RECORD_SWEEP_EVERY`]) and the finalizer goes. The
/// Secret itself follows creationPolicy: Owner's goes with the ExternalSecret (garbage
/// collection), others stay.
async fn cleanup(
    obj: &DynamicObject,
    es: &ExternalSecretObject,
    inv: &Inventory,
    ctx: &Context,
) -> Result<(), ReconcileError> {
    let uid = es.uid.clone().unwrap_or_default();
    let owner = format!("{}/{}", es.namespace, es.name);
    let key = ObjectRef::from_obj_with(obj, ctx.resource.clone());
    let attempt = next_cleanup_attempt(ctx, &key);
    if attempt == 1 {
        // The backoff starts again too (sync failures before the deletion made it long).
        forget(ctx, &key);
    }
    let now = SystemTime::now();
    let since = obj.metadata.deletion_timestamp.as_ref().map(|t| {
        let at = u64::try_from(t.0.as_second()).unwrap_or(0);
        Duration::from_secs(epoch_secs(now).saturating_sub(at))
    });
    let last = cleanup_gives_up(attempt, since);
    let record = match ctx.records.get(&uid).await {
        Ok(r) => r,
        Err(e @ RecordError::Damaged(_)) => {
            warn_event(ctx, es, "RevocationAbandoned", &e.to_string()).await;
            Record::default()
        }
        Err(e) if !last => return Err(ReconcileError::Kube(e.to_string())),
        Err(e) => {
            // Unreadable (403, the API unreachable) for good: let go; the record stays, and
            // the sweep of records without an ExternalSecret revokes it later.
            let message = format!(
                "{e}: not read in {} minutes of attempts; released, its credentials are revoked by a later sweep or lapse at their TTL",
                CLEANUP_TIMEOUT.as_secs() / 60
            );
            tracing::warn!(external_secret = %owner, "{message}");
            warn_event(ctx, es, "RevocationAbandoned", &message).await;
            return set_finalizer(ctx, obj, es, false).await;
        }
    };
    let kept = still_held(
        revoke(ctx, es, inv, record.entries.clone()).await,
        epoch_secs(now),
    );
    let left = without(&record.entries, &record.entries, &kept);
    if !kept.is_empty() {
        let written = ctx.records.put(&uid, &owner, &record, left).await;
        if !last {
            written.map_err(|e| ReconcileError::Kube(e.to_string()))?;
            return Err(ReconcileError::Sync(format!(
                "{} generated credentials could not be revoked yet; the finalizer stays",
                kept.len()
            )));
        }
        // Given up: they stay recorded for the sweep, the finalizer goes.
        let message = match written {
            Ok(_) => format!(
                "{} generated credentials could not be revoked in {} minutes; released, they stay recorded and the sweep tries again every {} minutes (or they lapse at their TTL)",
                kept.len(),
                CLEANUP_TIMEOUT.as_secs() / 60,
                RECORD_SWEEP_EVERY.as_secs() / 60
            ),
            Err(e) => format!(
                "{} generated credentials could not be revoked in {} minutes, and their record could not be updated ({e}); released, they lapse at their TTL",
                kept.len(),
                CLEANUP_TIMEOUT.as_secs() / 60
            ),
        };
        tracing::warn!(external_secret = %owner, "{message}");
        warn_event(ctx, es, "RevocationAbandoned", &message).await;
        return set_finalizer(ctx, obj, es, false).await;
    }
    match ctx.records.put(&uid, &owner, &record, Vec::new()).await {
        Ok(_) => {}
        Err(e) if !last => return Err(ReconcileError::Kube(e.to_string())),
        Err(e) => {
            tracing::warn!(external_secret = %owner, error = %e, "the record of issued credentials could not be deleted; the sweep deletes it later");
        }
    }
    set_finalizer(ctx, obj, es, false).await
}

/// Counts one more cleanup attempt of the ExternalSecret `key` and returns it (1 for the
/// first). Counted apart from sync failures (`Context::failures`, which drive the backoff):
/// failures before the deletion do not use up the cleanup's [`CLEANUP_ATTEMPTS`].
fn next_cleanup_attempt(ctx: &Context, key: &ObjectRef<DynamicObject>) -> u32 {
    let mut map = ctx.cleanups.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= MAX_FAILURE_ENTRIES && !map.contains_key(key) {
        map.clear();
    }
    let n = map.entry(key.clone()).or_insert(0);
    *n = n.saturating_add(1);
    *n
}

fn immutable_error(name: &str) -> Failure {
    Failure::Sync(SyncError::Immutable {
        secret: name.to_string(),
    })
}

/// A Secret another controller (another ExternalSecret, a Deployment…) manages is not
/// taken over (ESO: "target is owned by another ExternalSecret").
///
/// # Errors
/// [`SyncError::Owned`].
fn owned_by_another(s: &Secret, es: &ExternalSecretObject, name: &str) -> Result<(), Failure> {
    let Some(other) = s
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && Some(&o.uid) != es.uid.as_ref())
    else {
        return Ok(());
    };
    let owner = if other.kind == "ExternalSecret" {
        other.name.clone()
    } else {
        format!("{} (a {}, not an ExternalSecret)", other.name, other.kind)
    };
    Err(Failure::Sync(SyncError::Owned {
        secret: name.to_string(),
        owner,
    }))
}

/// Before a generator issues anything: a target Secret that cannot take its output is
/// refused now (owned by another controller, for Owner and Orphan; immutable, whose data a
/// new credential always changes), rather than after a credential was issued and revoked
/// on every retry.
///
/// # Errors
/// [`SyncError::Owned`], [`SyncError::Immutable`].
fn refuse_before_issuing(
    es: &ExternalSecretObject,
    spec: &crate::resources::external_secret::ExternalSecretSpec,
    existing: Option<&Secret>,
    name: &str,
) -> Result<(), Failure> {
    let Some(s) = existing else {
        return Ok(());
    };
    match spec.target.creation_policy {
        CreationPolicy::Owner | CreationPolicy::Orphan => owned_by_another(s, es, name)?,
        CreationPolicy::Merge => {}
        CreationPolicy::None => return Ok(()),
    }
    if s.immutable.unwrap_or(false) {
        return Err(immutable_error(name));
    }
    Ok(())
}

/// Owner / Orphan: create the Secret, or replace its data keeping its other metadata.
async fn write_secret(
    secrets: &Api<Secret>,
    desired: DesiredSecret,
    existing: Option<&Secret>,
    es: &ExternalSecretObject,
) -> Result<Option<String>, Failure> {
    let name = desired.name.clone();
    let mut labels = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    let mut owners: Vec<Value> = Vec::new();
    let mut resource_version = None;
    if let Some(s) = existing {
        owned_by_another(s, es, &name)?;
        let base = existing_of(s);
        if base.immutable {
            if sync::data_hash(&base.data) == sync::data_hash(&desired.data) {
                return Ok(None);
            }
            return Err(immutable_error(&name));
        }
        labels = base.labels;
        annotations = base.annotations;
        owners = s
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|o| o.controller != Some(true))
            .filter_map(|o| serde_json::to_value(o).ok())
            .collect();
        resource_version = s.metadata.resource_version.clone();
    }
    labels.extend(desired.labels.clone());
    annotations.extend(desired.annotations.clone());
    if let Some(o) = &desired.owner {
        let Some(uid) = o.uid.clone().or_else(|| es.uid.clone()) else {
            return Err(Failure::Kube(ReconcileError::Kube(
                "the ExternalSecret has no uid".into(),
            )));
        };
        owners.push(json!({
            "apiVersion": EXTERNAL_SECRET_API_VERSION,
            "kind": "ExternalSecret",
            "name": o.name,
            "uid": uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }));
    }
    let mut metadata = json!({
        "name": name,
        "namespace": desired.namespace,
        "labels": labels,
        "annotations": annotations,
    });
    if !owners.is_empty() {
        metadata["ownerReferences"] = Value::Array(owners);
    }
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = Value::String(rv);
    }
    let mut body = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": existing.and_then(|s| s.type_.clone()).unwrap_or(desired.type_.clone()),
        "data": b64_map(&desired.data),
    });
    if desired.immutable {
        body["immutable"] = Value::Bool(true);
    }
    let secret: Secret = serde_json::from_value(body).map_err(|_| {
        Failure::Sync(SyncError::InvalidSpec(
            "the Secret built is not a valid Secret".into(),
        ))
    })?;
    let pp = PostParams {
        field_manager: Some(CONTROLLER_NAME.into()),
        ..PostParams::default()
    };
    let result = if existing.is_some() {
        secrets.replace(&name, &pp, &secret).await
    } else {
        secrets.create(&pp, &secret).await
    };
    match result {
        Ok(s) => Ok(s.metadata.resource_version),
        Err(e) if !ambiguous(&e) => Err(Failure::Kube(kube_error("writing the target Secret", &e))),
        Err(e) => {
            let wanted = sync::data_hash(&desired.data);
            landed_anyway(
                secrets,
                &name,
                |data| sync::data_hash(data) == wanted,
                kube_error("writing the target Secret", &e),
            )
            .await
        }
    }
}

/// Whether a write answered with `e` may have landed: no answer, a 5xx, or a 409 (the
/// client's own retry of a write that had landed, or a precondition that failed: the read
/// back tells). A definite refusal (403, 404, 422, 429…) did not land.
fn ambiguous(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 409 || s.code >= 500,
        _ => true,
    }
}

/// A Secret write answered with an error may still have landed: the answer lost (no
/// answer, a 5xx), or the client's own retry of a 504 meeting the write that had landed
/// (409). The Secret is read back: when its data is what was written (`landed`), the write
/// counts as done (its `resourceVersion` returned), so the credentials it holds are not
/// revoked; when it is not, `err` ([`Failure::Kube`]); when it cannot be read either,
/// [`Failure::Unknown`] (the caller then revokes nothing).
async fn landed_anyway(
    secrets: &Api<Secret>,
    name: &str,
    landed: impl Fn(&BTreeMap<String, Vec<u8>>) -> bool,
    err: ReconcileError,
) -> Result<Option<String>, Failure> {
    match secrets.get_opt(name).await {
        Ok(Some(s)) if landed(&existing_of(&s).data) => {
            tracing::info!(secret = %name, error = %err, "the Secret write answered an error but landed");
            Ok(s.metadata.resource_version)
        }
        Ok(_) => Err(Failure::Kube(err)),
        Err(_) => Err(Failure::Unknown(err)),
    }
}

/// Merge: our keys, labels and annotations patched into the existing Secret; nothing else
/// of it is touched.
async fn merge_secret(
    secrets: &Api<Secret>,
    desired: DesiredSecret,
    base: &Secret,
) -> Result<Option<String>, Failure> {
    let existing = existing_of(base);
    let merged = desired.clone().merged_into(&existing);
    let name = desired.name.clone();
    if existing.immutable {
        if sync::data_hash(&existing.data) == sync::data_hash(&merged.data) {
            return Ok(None);
        }
        return Err(immutable_error(&name));
    }
    let mut annotations = desired.annotations.clone();
    if let Some(h) = merged.annotations.get(ANNOTATION_DATA_HASH) {
        annotations.insert(ANNOTATION_DATA_HASH.to_string(), h.clone());
    }
    // Guarded by the resourceVersion read (as the finalizer's patch): a Secret changed
    // since (its keys, its immutability) makes it a 409, which fails this sync (the new
    // credentials revoked) and the next one merges into what it is then.
    let mut patch = json!({
        "metadata": {
            "labels": desired.labels,
            "annotations": annotations,
            "resourceVersion": base.metadata.resource_version,
        },
        "data": b64_map(&desired.data),
    });
    if desired.immutable {
        patch["immutable"] = Value::Bool(true);
    }
    let pp = PatchParams {
        field_manager: Some(CONTROLLER_NAME.into()),
        ..PatchParams::default()
    };
    match secrets.patch(&name, &pp, &Patch::Merge(&patch)).await {
        Ok(s) => Ok(s.metadata.resource_version),
        Err(e) if !ambiguous(&e) => Err(Failure::Kube(kube_error(
            "merging into the target Secret",
            &e,
        ))),
        Err(e) => {
            let ours = &desired.data;
            landed_anyway(
                secrets,
                &name,
                |data| ours.iter().all(|(k, v)| data.get(k) == Some(v)),
                kube_error("merging into the target Secret", &e),
            )
            .await
        }
    }
}

/// The error of a status write (which only fails as a Kubernetes API error).
fn failure_error(f: Failure) -> ReconcileError {
    match f {
        Failure::Kube(e) | Failure::Unknown(e) => e,
        Failure::Sync(e) => ReconcileError::Sync(e.message()),
        Failure::Later(_) => ReconcileError::Kube("retried later".into()),
    }
}

fn condition(obj: &DynamicObject, ready: bool, reason: &str, message: &str, now: &str) -> Value {
    let status = if ready { "True" } else { "False" };
    let since = ready_condition(obj)
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|c| c.get("lastTransitionTime"))
        .and_then(Value::as_str)
        .map_or_else(|| now.to_string(), str::to_string);
    json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    })
}

async fn patch_status(ctx: &Context, obj: &DynamicObject, status: Value) -> Result<(), Failure> {
    let es = external_secret(obj);
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &es.namespace, &ctx.resource);
    let pp = PatchParams {
        field_manager: Some(CONTROLLER_NAME.into()),
        ..PatchParams::default()
    };
    api.patch_status(&es.name, &pp, &Patch::Merge(json!({ "status": status })))
        .await
        .map(|_| ())
        .map_err(|e| Failure::Kube(kube_error("writing the ExternalSecret status", &e)))
}

async fn write_status(
    ctx: &Context,
    obj: &DynamicObject,
    es: &ExternalSecretObject,
    out: &Outcome,
    now: SystemTime,
) -> Result<(), ReconcileError> {
    let now_s = rfc3339(now);
    let mut status = json!({
        "conditions": [condition(obj, out.ready, out.reason, out.message, &now_s)],
    });
    if out.ready {
        status["refreshTime"] = Value::String(now_s.clone());
        status["syncedResourceVersion"] = Value::String(es.resource_version.clone());
    }
    if let Some(b) = &out.binding {
        status["binding"] = json!({ "name": b });
    }
    patch_status(ctx, obj, status).await.map_err(failure_error)
}

/// `Ready=False` with the failure; written only when it differs from what is there (so a
/// failing ExternalSecret's retries do not each make a watch event). Returns whether it
/// was written.
async fn write_failure_status(
    ctx: &Context,
    obj: &DynamicObject,
    _es: &ExternalSecretObject,
    out: &Outcome,
    message: &str,
    now: SystemTime,
) -> Result<bool, ReconcileError> {
    let key = ObjectRef::from_obj_with(obj, ctx.resource.clone());
    let same = ready_condition(obj).is_some_and(|c| {
        c.get("status").and_then(Value::as_str) == Some("False")
            && c.get("reason").and_then(Value::as_str) == Some(out.reason)
            && c.get("message").and_then(Value::as_str) == Some(message)
    }) || matches!(recalled(ctx, &key), Some(Written::Failed(r, m)) if r == out.reason && m == message);
    if same {
        return Ok(false);
    }

    let now_s = rfc3339(now);
    let status = json!({
        "conditions": [condition(obj, false, out.reason, message, &now_s)],
    });
    patch_status(ctx, obj, status)
        .await
        .map(|()| {
            remember(
                ctx,
                key,
                Written::Failed(out.reason.to_string(), message.to_string()),
            );
            true
        })
        .map_err(failure_error)
}

/// ESO's Events: Normal `Updated` after a sync, Warning `UpdateFailed` after a failure.
/// Failures to publish are logged at debug (Events are best effort).
async fn event(ctx: &Context, obj: &DynamicObject, ok: bool, message: &str) {
    let ev = Event {
        type_: if ok {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: if ok { "Updated" } else { "UpdateFailed" }.into(),
        note: Some(message.chars().take(1024).collect()),
        action: "Sync".into(),
        secondary: None,
    };
    let reference = {
        use kube::Resource;
        obj.object_ref(&ctx.resource)
    };
    if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
        tracing::debug!(error = %e, "cannot publish an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_from_one_second_to_five_minutes() {
        let d1 = backoff_delay(1);
        assert!(d1 >= BACKOFF_MIN && d1 < BACKOFF_MIN * 2, "{d1:?}");
        let d4 = backoff_delay(4);
        assert!(d4 >= Duration::from_secs(8), "{d4:?}");
        let d30 = backoff_delay(30);
        assert!(d30 >= BACKOFF_MAX / 2 && d30 <= BACKOFF_MAX * 2, "{d30:?}");
    }

    /// A Context whose client goes nowhere.
    fn test_context() -> Context {
        let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let (_tx, leading) = watch::channel::<Term>(None);
        Context {
            client: client.clone(),
            inventory: Arc::new(ArcSwap::from_pointee(Inventory::default())),
            sync: SyncOptions::default(),
            leading,
            failures: Mutex::new(HashMap::new()),
            cleanups: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            templates: Mutex::new(HashMap::new()),
            template_resyncs: Mutex::new(HashMap::new()),
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: CONTROLLER_NAME.into(),
                    instance: None,
                },
            ),
            resource: external_secret_resource(),
            records: Records::new(client, "esi"),
            revocation_grace: DEFAULT_REVOCATION_GRACE,
            lease_duration: Duration::from_secs(15),
            pending: Mutex::new(HashMap::new()),
            generators: Mutex::new(HashMap::new()),
        }
    }

    /// An ExternalSecret's own target Secret is never among its template sources (before:
    /// watched, so each write rendered again and, with a generator, issued again).
    #[test]
    fn the_target_secret_is_not_a_template_source() {
        let body = |target: Option<&str>| {
            let mut b = json!({"metadata": {"name": "app"}, "spec": {"target": {"template": {
                "templateFrom": [{"secret": {"name": "app"}}, {"secret": {"name": "db"}},
                    {"configMap": {"name": "app"}}]}}}});
            if let Some(t) = target {
                b["spec"]["target"]["name"] = json!(t);
            }
            b
        };
        let names = |b: &Value| {
            template_sources(b, "ns")
                .into_iter()
                .map(|o| format!("{}/{}", o.kind.as_str(), o.name))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&body(None)), ["Secret/db", "ConfigMap/app"]);
        assert_eq!(names(&body(Some("db"))), ["Secret/app", "ConfigMap/app"]);
    }

    /// Template-triggered resyncs of one ExternalSecret are at most one per
    /// TEMPLATE_RESYNC_EVERY (before: one per change of a source, without limit).
    #[tokio::test]
    async fn template_resyncs_are_rate_limited() {
        let ctx = test_context();
        let key = ObjectRef::<DynamicObject>::new_with("a", ctx.resource.clone()).within("ns");
        let other = ObjectRef::<DynamicObject>::new_with("b", ctx.resource.clone()).within("ns");
        let t0 = Instant::now();
        assert_eq!(template_resync_wait(&ctx, &key, t0), None);
        let wait = template_resync_wait(&ctx, &key, t0 + Duration::from_secs(3));
        assert_eq!(wait, Some(TEMPLATE_RESYNC_EVERY - Duration::from_secs(3)));
        assert_eq!(template_resync_wait(&ctx, &other, t0), None);
        assert_eq!(
            template_resync_wait(&ctx, &key, t0 + TEMPLATE_RESYNC_EVERY),
            None
        );
    }

    /// A record the cache lacks is swept only once its ExternalSecret is confirmed gone by a
    /// live read, and never while younger than twice the Lease (before: a new leader swept
    /// on its watch cache alone, and revoked the credentials of an ExternalSecret it had
    /// not seen yet).
    #[test]
    fn the_sweep_confirms_an_orphan_live_and_spares_young_records() {
        let lease2 = Duration::from_secs(30);
        let old = Some(Duration::from_secs(3600));
        // Live with the same uid: kept.
        assert_eq!(
            verdict("u", old, lease2, Ok(Some("u".into()))),
            Verdict::Live
        );
        // Not found, or another object of that name: gone.
        assert_eq!(verdict("u", old, lease2, Ok(None)), Verdict::Orphan);
        assert_eq!(
            verdict("u", old, lease2, Ok(Some("other".into()))),
            Verdict::Orphan
        );
        // Cannot be read: left for the next sweep.
        assert_eq!(verdict("u", old, lease2, Err(true)), Verdict::Live);
        // No owner to read back: the cache decides.
        assert_eq!(verdict("u", old, lease2, Err(false)), Verdict::Orphan);
        // Young: judged again once old enough, whatever the read says.
        assert_eq!(
            verdict("u", Some(Duration::from_secs(10)), lease2, Ok(None)),
            Verdict::Young(Duration::from_secs(20))
        );
    }

    fn cred(n: u32, expires_at: Option<u64>, revoke_after: Option<u64>) -> sync::IssuedCredential {
        sync::IssuedCredential {
            namespace: "apps".into(),
            kind: "VaultDynamicSecret".into(),
            name: "creds".into(),
            state: crate::generators::RevocationState(json!({"leaseId": format!("l/{n}")})),
            expires_at,
            revoke_after,
        }
    }

    /// Replaced credentials are given a grace, capped by their expiry; those already
    /// replaced keep theirs; new ones are untouched (before: revoked right after the write,
    /// while workloads still read them).
    #[test]
    fn replaced_credentials_are_revoked_after_a_grace() {
        let entries = [
            cred(0, None, Some(50)),
            cred(1, None, None),
            cred(2, Some(120), None),
            cred(3, None, None),
        ];
        let replaced = [entries[0].clone(), entries[1].clone(), entries[2].clone()];
        let marked = retire(&entries, &replaced, 400);
        assert_eq!(marked[0].revoke_after, Some(50));
        assert_eq!(marked[1].revoke_after, Some(400));
        assert_eq!(marked[2].revoke_after, Some(120), "capped by its expiry");
        assert_eq!(marked[3].revoke_after, None, "the new one is in use");
        assert!(is_due(&marked[0], 50) && !is_due(&marked[1], 399) && is_due(&marked[1], 400));
        assert!(!is_due(&marked[3], u64::MAX));
        // Lapsed on its own: due once past the margin, and let go if it cannot be revoked.
        let lapsed = cred(4, Some(100), None);
        assert!(!is_due(&lapsed, 100 + EXPIRY_MARGIN - 1) && is_due(&lapsed, 100 + EXPIRY_MARGIN));
        assert!(still_held(vec![lapsed.clone()], 100 + EXPIRY_MARGIN).is_empty());
        assert_eq!(
            still_held(vec![lapsed.clone()], 100 + EXPIRY_MARGIN - 1).len(),
            1
        );
        // Same credential whatever its deadlines.
        assert!(marked[1].same(&entries[1]));
        assert_eq!(without(&marked, &[entries[1].clone()], &[]).len(), 3);
    }

    /// The reconcile comes back when the next replaced credential is due, and after a
    /// failed revocation in PENDING_RETRY.
    #[tokio::test]
    async fn a_pending_revocation_requeues() {
        let ctx = test_context();
        let key = ObjectRef::<DynamicObject>::new_with("db", ctx.resource.clone()).within("ns");
        note_pending(
            &ctx,
            &key,
            &[cred(0, None, Some(130)), cred(1, None, None)],
            100,
        );
        assert!(!pending_due(&ctx, &key, 129) && pending_due(&ctx, &key, 130));
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let action = with_pending(&ctx, &key, Some(Duration::from_secs(3600)), at(100));
        assert_eq!(action, Action::requeue(Duration::from_secs(30)));
        let action = with_pending(&ctx, &key, Some(Duration::from_secs(10)), at(100));
        assert_eq!(action, Action::requeue(Duration::from_secs(10)));
        // Due and not revoked: retried later, not spun on.
        note_pending(&ctx, &key, &[cred(0, None, Some(130))], 200);
        assert_eq!(
            ctx.pending.lock().unwrap().get(&key),
            Some(&(200 + PENDING_RETRY))
        );
        note_pending(&ctx, &key, &[cred(1, None, None)], 200);
        assert!(ctx.pending.lock().unwrap().get(&key).is_none());
        assert_eq!(
            with_pending(&ctx, &key, None, at(200)),
            Action::await_change()
        );
    }

    /// A cleanup gives up only after both CLEANUP_ATTEMPTS attempts and CLEANUP_TIMEOUT
    /// since the deletion (before: 8 reconciles, which inventory publications can bring
    /// within seconds).
    #[test]
    fn cleanup_gives_up_after_minutes_not_attempts() {
        let secs = |s| Some(Duration::from_secs(s));
        assert!(!cleanup_gives_up(CLEANUP_ATTEMPTS, secs(10)));
        assert!(!cleanup_gives_up(CLEANUP_ATTEMPTS * 10, secs(239)));
        assert!(!cleanup_gives_up(CLEANUP_ATTEMPTS - 1, secs(3600)));
        assert!(cleanup_gives_up(CLEANUP_ATTEMPTS, secs(240)));
        assert!(cleanup_gives_up(CLEANUP_ATTEMPTS, None));
    }

    /// An ExternalSecret with more generatorRefs than a record keeps issues nothing; room is
    /// counted per generatorRef (before: 16 reserved whatever the count).
    #[test]
    fn record_room_counts_generator_refs() {
        let live: Vec<_> = (0..200).map(|n| cred(n, None, None)).collect();
        assert!(record_has_room(&live, 1).is_ok());
        assert!(record_has_room(&live, 40).is_ok());
        assert!(record_has_room(&live, 57).is_err());
        assert!(record_has_room(&[], MAX_RECORDED).is_err());
        let Err(Failure::Sync(e)) = record_has_room(&[], 1000) else {
            panic!("refused");
        };
        assert!(
            e.message().contains("no credential is issued"),
            "{}",
            e.message()
        );
    }

    /// Sync failures before the deletion do not use up the cleanup's attempts (before: an
    /// ExternalSecret that had failed 7 times was released after one failed revocation).
    #[tokio::test]
    async fn cleanup_attempts_are_counted_apart_from_sync_failures() {
        let ctx = test_context();
        let key = ObjectRef::<DynamicObject>::new_with("db", ctx.resource.clone()).within("ns");
        ctx.failures.lock().unwrap().insert(key.clone(), 7);
        for n in 1..=CLEANUP_ATTEMPTS {
            assert_eq!(next_cleanup_attempt(&ctx, &key), n);
        }
        let other = ObjectRef::<DynamicObject>::new_with("x", ctx.resource.clone()).within("ns");
        assert_eq!(next_cleanup_attempt(&ctx, &other), 1);
    }

    /// The watch cache may hold a status older than the one this replica just wrote: the
    /// newer one decides (no second sync, no rewritten failure).
    #[tokio::test]
    async fn our_own_newer_status_wins_over_a_stale_cache() {
        let ctx = test_context();
        let resource = ctx.resource.clone();
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {},
        }))
        .unwrap();
        assert_eq!(effective_last_sync(&ctx, &obj), LastSync::default());
        let mine = LastSync {
            refresh_time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100)),
            synced_resource_version: Some("v".into()),
            failed: false,
        };
        let key = ObjectRef::from_obj_with(&obj, resource);
        remember(&ctx, key.clone(), Written::Synced(mine.clone()));
        assert_eq!(effective_last_sync(&ctx, &obj), mine);
        // A status newer than ours (another replica's, later) wins.
        let mut newer = obj.clone();
        newer.data["status"] = json!({"refreshTime": "1970-01-01T00:10:00Z",
            "syncedResourceVersion": "w"});
        assert_eq!(
            effective_last_sync(&ctx, &newer)
                .synced_resource_version
                .as_deref(),
            Some("w")
        );
    }

    #[test]
    fn sweeping_keeps_only_live_external_secrets() {
        let resource = external_secret_resource();
        let key =
            |name: &str| ObjectRef::<DynamicObject>::new_with(name, resource.clone()).within("ns");
        let map = Mutex::new(HashMap::from([(key("gone"), 3u32), (key("live"), 1)]));
        sweep(&map, |k| k.name == "live");
        let left: Vec<_> = map.lock().unwrap().keys().map(|k| k.name.clone()).collect();
        assert_eq!(left, ["live"]);
    }

    #[test]
    fn the_inventory_watches_stores_and_generators_only() {
        assert!(reconciled_kind("external-secrets.io", "SecretStore"));
        assert!(reconciled_kind("external-secrets.io", "ClusterSecretStore"));
        assert!(reconciled_kind(
            "generators.external-secrets.io",
            "Password"
        ));
        assert!(reconciled_kind("external-secrets.io", "ExternalSecret"));
        assert!(!reconciled_kind("external-secrets.io", "PushSecret"));
        assert!(!reconciled_kind(
            "federation.external-secrets.io",
            "Authorization"
        ));
    }
}
