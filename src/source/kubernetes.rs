//! Kubernetes mode: one kube-runtime watcher per served kind, and one per referenced
//! Secret or ConfigMap, told as [`SourceEvent`]s.
//!
//! Each watcher lists, then watches (kube-runtime's `Init`, `InitApply`…, `InitDone`,
//! then `Apply`/`Delete`). A list is buffered and compared with what that watcher
//! reported before, at `InitDone`: only objects whose content changed are reported
//! (`Apply`), and objects no longer listed are reported gone (`Delete`), so a re-list
//! after a watch error never exposes a half-listed world and changes nothing when nothing
//! changed. While a watcher errors (it retries with kube-runtime's default backoff), what
//! it reported last stays in force.
//!
//! What is hashed and handed on is the object without `status`, `resourceVersion`,
//! `managedFields` and the `last-applied-configuration` annotation: our own status
//! writes come back as watch events and change nothing.
//!
//! Secrets and ConfigMaps: never every one of the cluster. Only those referenced (by
//! stores and generators; by the reconciler's `templateFrom`) are watched
//! ([`KubeSource::watch_named`]), each on its own (`fieldSelector=metadata.name=…` in its
//! namespace, which RBAC can grant by `resourceNames`). One that cannot be read (forbidden)
//! counts as absent and is reported as a problem, so one missing grant does not keep the
//! server from becoming ready.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::{LoadError, NamedKind, NamedObject, ObjectKey, RawObject, SourceEvent, SourceObject};
use crate::resources::{ContentHash, ObjectMeta};

/// Most Secrets and ConfigMaps watched at once (one watch each); references beyond it
/// are reported.
pub const MAX_WATCHED_OBJECTS: usize = 2_000;

/// The groups whose kinds may be served; [`KindFilter`] picks the kinds.
pub const GROUPS: &[&str] = &[
    "federation.external-secrets.io",
    "identity.federation.external-secrets.io",
    "external-secrets.io",
    "generators.external-secrets.io",
];

/// Which (group, kind) pairs are watched.
pub type KindFilter = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// The annotation `kubectl apply` writes: the whole object again (for a Secret, its
/// values), never handed on.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Why the Kubernetes API could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// Discovery failed for every group (API server unreachable, unauthorized…).
    #[error("cannot discover the served kinds: {0}")]
    Discovery(String),
}

/// What the API server last said of an object's generation and of our condition in its
/// status, for the status writer (which writes only what differs, and only its own
/// condition).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Our condition (`status.conditions[type=`[`condition_type`]`]`), as found.
    pub ready: Option<ObservedCondition>,
    /// Where it is in `status.conditions`, and whether `status` and `status.conditions`
    /// exist: the writer patches that one entry and nothing else.
    pub layout: ConditionLayout,
}

/// The shape of an object's `status.conditions`, as far as our condition is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConditionLayout {
    /// `status` is an object.
    pub has_status: bool,
    /// `status.conditions` is an array.
    pub has_conditions: bool,
    /// The index of our condition in it.
    pub index: Option<usize>,
}

/// The condition type this server writes on objects of `kind`: `Ready` on its own kinds,
/// `FederationReady` on ESO's ClusterSecretStores, whose `Ready` is ESO's controller's (and
/// gates ESO's own syncs).
pub fn condition_type(kind: &str) -> &'static str {
    if kind == "ClusterSecretStore" {
        "FederationReady"
    } else {
        "Ready"
    }
}

/// One condition as read from an object's status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedCondition {
    /// `status` ("True", "False", "Unknown").
    pub status: String,
    /// `reason`.
    pub reason: String,
    /// `message`.
    pub message: String,
    /// `observedGeneration` (the condition's, else the status's).
    pub observed_generation: Option<i64>,
    /// `lastTransitionTime`, as written.
    pub last_transition_time: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum StreamId {
    Kind { group: String, kind: String },
    Named(NamedObject),
}

impl StreamId {
    fn origin(&self) -> String {
        match self {
            StreamId::Kind { group, kind } => format!("kubernetes:{kind}.{group}"),
            StreamId::Named(o) => {
                format!("kubernetes:{}/{}/{}", o.kind.as_str(), o.namespace, o.name)
            }
        }
    }
}

struct Stream {
    resource: ApiResource,
    epoch: u64,
    synced: bool,
    known: HashMap<ObjectKey, ContentHash>,
    listing: Option<Vec<Entry>>,
    task: AbortHandle,
    failing: bool,
}

struct Update {
    id: StreamId,
    epoch: u64,
    item: Result<watcher::Event<DynamicObject>, watcher::Error>,
}

struct Entry {
    key: ObjectKey,
    raw: RawObject,
    observed: Observed,
}

/// The Kubernetes source: discovery, the watchers, and what they reported.
pub struct KubeSource {
    client: kube::Client,
    filter: KindFilter,
    tx: mpsc::Sender<Update>,
    rx: mpsc::Receiver<Update>,
    streams: BTreeMap<StreamId, Stream>,
    observed: HashMap<ObjectKey, (ApiResource, Observed)>,
    problems: BTreeMap<StreamId, LoadError>,
    next_epoch: u64,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("streams", &self.streams.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KubeSource {
    /// A source on `client` watching the kinds `filter` accepts; nothing is watched until
    /// [`discover`](Self::discover).
    pub fn new(client: kube::Client, filter: KindFilter) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        KubeSource {
            client,
            filter,
            tx,
            rx,
            streams: BTreeMap::new(),
            observed: HashMap::new(),
            problems: BTreeMap::new(),
            next_epoch: 0,
        }
    }

    /// The client, for the status writer and the Lease.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The kind filter (for [`discover_kinds`]).
    pub fn filter(&self) -> KindFilter {
        self.filter.clone()
    }

    /// Discovers [`GROUPS`] and starts a watcher for every accepted kind not yet watched
    /// (a CRD installed later is picked up by the next call). Returns how many kinds are
    /// watched. A group that is not installed is skipped (logged once per call).
    ///
    /// # Errors
    /// [`KubeSourceError::Discovery`] when no group could be asked at all.
    pub async fn discover(&mut self) -> Result<usize, KubeSourceError> {
        let found = discover_kinds(self.client.clone(), self.filter.clone()).await?;
        Ok(self.watch_kinds(found))
    }

    /// Starts a watcher for every kind of `found` not yet watched; returns how many kinds
    /// are watched.
    pub fn watch_kinds(&mut self, found: Vec<ApiResource>) -> usize {
        for resource in found {
            let id = StreamId::Kind {
                group: resource.group.clone(),
                kind: resource.kind.clone(),
            };
            if self.streams.contains_key(&id) {
                continue;
            }
            tracing::info!(kind = %resource.kind, group = %resource.group, version = %resource.version, "watching");
            let api = Api::<DynamicObject>::all_with(self.client.clone(), &resource);
            self.start(id, resource, api, watcher::Config::default());
        }
        self.streams
            .keys()
            .filter(|k| matches!(k, StreamId::Kind { .. }))
            .count()
    }

    fn start(
        &mut self,
        id: StreamId,
        resource: ApiResource,
        api: Api<DynamicObject>,
        config: watcher::Config,
    ) {
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        let tx = self.tx.clone();
        let task_id = id.clone();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, config).default_backoff());
            while let Some(item) = events.next().await {
                let update = Update {
                    id: task_id.clone(),
                    epoch,
                    item,
                };
                if tx.send(update).await.is_err() {
                    return;
                }
            }
        })
        .abort_handle();
        self.streams.insert(
            id,
            Stream {
                resource,
                epoch,
                synced: false,
                known: HashMap::new(),
                listing: None,
                task,
                failing: false,
            },
        );
    }

    /// Watches the objects in `wanted`, in its order of priority, at most
    /// [`MAX_WATCHED_OBJECTS`]: starts the new ones and stops the others, reporting what
    /// they had reported as gone. The caller puts first what must not be crowded out (the
    /// references of cluster-scoped objects, which only cluster administrators write:
    /// [`super::watch_order`]).
    pub fn watch_named(
        &mut self,
        wanted: &[NamedObject],
        out: &mut (dyn FnMut(SourceEvent) + Send),
    ) {
        let allowed: std::collections::HashSet<&NamedObject> =
            wanted.iter().take(MAX_WATCHED_OBJECTS).collect();
        let current: Vec<StreamId> = self
            .streams
            .keys()
            .filter(|id| match id {
                StreamId::Named(o) => !allowed.contains(o),
                StreamId::Kind { .. } => false,
            })
            .cloned()
            .collect();
        let mut problems_changed = false;
        for id in current {
            if let Some(stream) = self.streams.remove(&id) {
                stream.task.abort();
                for key in stream.known.into_keys() {
                    self.observed.remove(&key);
                    out(SourceEvent::Delete(key));
                }
            }
            problems_changed |= self.problems.remove(&id).is_some();
        }
        for object in wanted.iter().take(MAX_WATCHED_OBJECTS) {
            let id = StreamId::Named(object.clone());
            if self.streams.contains_key(&id) {
                continue;
            }
            let resource = match object.kind {
                NamedKind::Secret => ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
                NamedKind::ConfigMap => {
                    ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&())
                }
            };
            let api = Api::<DynamicObject>::namespaced_with(
                self.client.clone(),
                &object.namespace,
                &resource,
            );
            let config =
                watcher::Config::default().fields(&format!("metadata.name={}", object.name));
            self.start(id, resource, api, config);
        }
        let refused = wanted.len().saturating_sub(MAX_WATCHED_OBJECTS);
        if refused > 0 {
            tracing::error!(
                refused,
                limit = MAX_WATCHED_OBJECTS,
                "too many referenced Secrets and ConfigMaps; the rest are not watched (what needs them is not ready)"
            );
        }
        if problems_changed {
            self.report_problems(out);
        }
    }

    /// Whether every watched kind has been listed once (named objects aside).
    pub fn kinds_synced(&self) -> bool {
        self.streams
            .iter()
            .all(|(id, s)| s.synced || matches!(id, StreamId::Named(_)))
    }

    /// Whether every watcher (kinds and named objects) has been listed once.
    pub fn synced(&self) -> bool {
        self.streams.values().all(|s| s.synced)
    }

    /// The objects seen, with their API resource and what their status says.
    pub fn observed(&self) -> impl Iterator<Item = (&ObjectKey, &ApiResource, &Observed)> {
        self.observed.iter().map(|(k, (r, o))| (k, r, o))
    }

    /// Waits for the next watcher update and reports what it changed through `out`.
    /// Returns whether anything was reported.
    pub async fn next(&mut self, out: &mut (dyn FnMut(SourceEvent) + Send)) -> bool {
        match self.rx.recv().await {
            Some(update) => self.handle(update, out),
            None => false,
        }
    }

    /// Like [`next`](Self::next) without waiting: `None` when no update is queued.
    pub fn try_next(&mut self, out: &mut (dyn FnMut(SourceEvent) + Send)) -> Option<bool> {
        match self.rx.try_recv() {
            Ok(update) => Some(self.handle(update, out)),
            Err(_) => None,
        }
    }

    fn handle(&mut self, update: Update, out: &mut (dyn FnMut(SourceEvent) + Send)) -> bool {
        let Some(stream) = self.streams.get_mut(&update.id) else {
            return false;
        };
        if stream.epoch != update.epoch {
            return false;
        }
        let mut changed = false;
        let mut problem: Option<Option<LoadError>> = None;
        match update.item {
            Ok(event) => {
                if stream.failing {
                    stream.failing = false;
                    tracing::info!(watch = %update.id.origin(), "watch recovered");
                }
                match event {
                    watcher::Event::Init => stream.listing = Some(Vec::new()),
                    watcher::Event::InitApply(obj) => {
                        if let Some(entry) = convert(&stream.resource, obj)
                            && let Some(listing) = &mut stream.listing
                        {
                            listing.push(entry);
                        }
                    }
                    watcher::Event::InitDone => {
                        let listing = stream.listing.take().unwrap_or_default();
                        let mut seen = HashMap::with_capacity(listing.len());
                        for entry in listing {
                            seen.insert(entry.key.clone(), entry.raw.hash);
                            self.observed.insert(
                                entry.key.clone(),
                                (stream.resource.clone(), entry.observed),
                            );
                            if stream.known.get(&entry.key) != Some(&entry.raw.hash) {
                                changed = true;
                                out(SourceEvent::Apply(
                                    entry.key,
                                    SourceObject::Manifest(Box::new(entry.raw)),
                                ));
                            }
                        }
                        for key in stream.known.keys() {
                            if !seen.contains_key(key) {
                                changed = true;
                                self.observed.remove(key);
                                out(SourceEvent::Delete(key.clone()));
                            }
                        }
                        stream.known = seen;
                        if !stream.synced {
                            stream.synced = true;
                            changed = true;
                        }
                        problem = Some(None);
                    }
                    watcher::Event::Apply(obj) => {
                        if let Some(entry) = convert(&stream.resource, obj) {
                            self.observed.insert(
                                entry.key.clone(),
                                (stream.resource.clone(), entry.observed),
                            );
                            if stream.known.get(&entry.key) != Some(&entry.raw.hash) {
                                changed = true;
                                stream.known.insert(entry.key.clone(), entry.raw.hash);
                                out(SourceEvent::Apply(
                                    entry.key,
                                    SourceObject::Manifest(Box::new(entry.raw)),
                                ));
                            }
                        }
                    }
                    watcher::Event::Delete(obj) => {
                        if let Some(key) = key_of(&stream.resource, &obj)
                            && stream.known.remove(&key).is_some()
                        {
                            changed = true;
                            self.observed.remove(&key);
                            out(SourceEvent::Delete(key));
                        }
                    }
                }
            }
            Err(e) => {
                // The watcher retries with backoff; what it reported last stays in force.
                if !stream.failing {
                    stream.failing = true;
                    tracing::warn!(watch = %update.id.origin(), error = %e, "watch failed; serving what it last listed while it retries");
                } else {
                    tracing::debug!(watch = %update.id.origin(), error = %e, "watch still failing");
                }
                crate::metrics::METRICS
                    .kubernetes_watch_errors
                    .with_label_values(&[stream.resource.kind.as_str()])
                    .inc();
                // A Secret or kind the API refuses (403) or does not have (404) counts as
                // absent (its store is not ready; nothing is granted from it) rather than
                // keeping the whole server from becoming ready; it is reported. Other errors
                // (the API unreachable, a 500) keep it not synced until its first list.
                if !stream.synced {
                    let object = match &update.id {
                        StreamId::Named(o) => {
                            Some(format!("{}/{}/{}", o.kind.as_str(), o.namespace, o.name))
                        }
                        StreamId::Kind { .. } => None,
                    };
                    // Only a definite answer (403, 404) counts: a transient error (a 500,
                    // a timeout) keeps waiting, so that readiness is never early.
                    let counts_as_empty = forbidden(&e) || not_found(&e);
                    if counts_as_empty {
                        stream.synced = true;
                        changed = true;
                        problem = Some(Some(LoadError {
                            origin: update.id.origin(),
                            object,
                            reason: format!("cannot list or watch: {}", brief(&e)),
                        }));
                    }
                }
            }
        }
        if let Some(p) = problem {
            let before = self.problems.get(&update.id).cloned();
            if before != p {
                match p {
                    Some(p) => self.problems.insert(update.id.clone(), p),
                    None => self.problems.remove(&update.id),
                };
                self.report_problems(out);
                changed = true;
            }
        }
        changed
    }

    fn report_problems(&self, out: &mut (dyn FnMut(SourceEvent) + Send)) {
        out(SourceEvent::Problems {
            errors: self.problems.values().cloned().collect(),
            stale: Vec::new(),
        });
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for stream in self.streams.values() {
            stream.task.abort();
        }
    }
}

/// Whether the API refused the watch for lack of permission (RBAC): it will not
/// succeed by retrying alone.
fn forbidden(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s))
            if s.code == 403
    )
}

/// How long one discovery (every group) may take; beyond it, it counts as failed.
pub const DISCOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Asks the API which of [`GROUPS`]' kinds exist and `filter` accepts (each group's
/// preferred version), within [`DISCOVERY_TIMEOUT`]. A group that is not installed is
/// skipped (logged). Runs apart from any source, so that a discovery the API never
/// answers holds nothing else up.
///
/// # Errors
/// [`KubeSourceError::Discovery`] when no group could be asked at all, or in time.
pub async fn discover_kinds(
    client: kube::Client,
    filter: KindFilter,
) -> Result<Vec<ApiResource>, KubeSourceError> {
    let ask = async {
        let mut reached = false;
        let mut last_error = String::new();
        let mut found = Vec::new();
        for group in GROUPS {
            match kube::discovery::group(&client, group).await {
                Ok(g) => {
                    reached = true;
                    found.extend(
                        g.recommended_resources()
                            .into_iter()
                            .map(|(r, _)| r)
                            .filter(|r| filter(&r.group, &r.kind)),
                    );
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    reached = true;
                    tracing::info!(group, "API group not installed; its kinds are not served");
                }
                Err(kube::Error::Discovery(e)) => {
                    // kube reports a group the API does not list this way.
                    reached = true;
                    tracing::info!(group, reason = %e, "API group not installed; its kinds are not served");
                }
                Err(e) => {
                    last_error = e.to_string();
                    tracing::debug!(group, error = %e, "discovery failed");
                }
            }
        }
        if reached {
            Ok(found)
        } else {
            Err(KubeSourceError::Discovery(last_error))
        }
    };
    tokio::time::timeout(DISCOVERY_TIMEOUT, ask)
        .await
        .unwrap_or_else(|_| {
            Err(KubeSourceError::Discovery(format!(
                "no answer within {} s",
                DISCOVERY_TIMEOUT.as_secs()
            )))
        })
}

/// Whether the API answered 404 (the kind's CRD, or the namespace, is gone).
fn not_found(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s))
            if s.code == 404
    )
}

/// A watch error in a few words: the API's status reason and message, never a body.
fn brief(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => {
            format!("{} ({}): {}", s.reason, s.code, s.message)
        }
        other => other.to_string(),
    }
}

/// The key of `obj` as a `resource`.
pub fn key_of(resource: &ApiResource, obj: &DynamicObject) -> Option<ObjectKey> {
    let name = obj.metadata.name.clone()?;
    Some(ObjectKey::Resource {
        group: resource.group.clone(),
        kind: resource.kind.clone(),
        namespace: obj.metadata.namespace.clone(),
        name,
    })
}

/// `obj` as the source reports it: identified by its resource (list items may lack
/// `apiVersion` and `kind`), without status and server-set metadata.
fn convert(resource: &ApiResource, obj: DynamicObject) -> Option<Entry> {
    let key = key_of(resource, &obj)?;
    let created = obj.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let status = obj.data.get("status");
    let wanted = condition_type(&resource.kind);
    let conditions = status
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array);
    let index = conditions.and_then(|c| {
        c.iter()
            .position(|c| c.get("type").and_then(Value::as_str) == Some(wanted))
    });
    let observed = Observed {
        generation: obj.metadata.generation,
        ready: status.and_then(|s| ready_condition(s, wanted)),
        layout: ConditionLayout {
            has_status: status.is_some_and(Value::is_object),
            has_conditions: conditions.is_some(),
            index,
        },
    };
    let mut annotations = obj.metadata.annotations.unwrap_or_default();
    annotations.remove(LAST_APPLIED);
    let meta = ObjectMeta {
        name: obj.metadata.name.unwrap_or_default(),
        namespace: obj.metadata.namespace,
        labels: obj.metadata.labels.unwrap_or_default(),
        annotations,
    };
    let mut body = Map::new();
    body.insert(
        "apiVersion".into(),
        Value::String(resource.api_version.clone()),
    );
    body.insert("kind".into(), Value::String(resource.kind.clone()));
    body.insert("metadata".into(), serde_json::to_value(&meta).ok()?);
    if let Value::Object(rest) = obj.data {
        for (k, v) in rest {
            if !matches!(k.as_str(), "status" | "apiVersion" | "kind" | "metadata") {
                body.insert(k, v);
            }
        }
    }
    let mut raw = RawObject::new(
        &key,
        resource.api_version.clone(),
        resource.kind.clone(),
        meta,
        Value::Object(body),
    );
    raw.created = created;
    Some(Entry { key, raw, observed })
}

/// `status.conditions[type=wanted]` of a status, with the status's `observedGeneration`
/// when the condition has none.
fn ready_condition(status: &Value, wanted: &str) -> Option<ObservedCondition> {
    let conditions = status.get("conditions")?.as_array()?;
    let c = conditions
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(wanted))?;
    let text = |f: &str| {
        c.get(f)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Some(ObservedCondition {
        status: text("status"),
        reason: text("reason"),
        message: text("message"),
        observed_generation: c
            .get("observedGeneration")
            .or_else(|| status.get("observedGeneration"))
            .and_then(Value::as_i64),
        last_transition_time: c
            .get("lastTransitionTime")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn authorization() -> ApiResource {
        ApiResource {
            group: "federation.external-secrets.io".into(),
            version: "v1alpha1".into(),
            api_version: "federation.external-secrets.io/v1alpha1".into(),
            kind: "Authorization".into(),
            plural: "authorizations".into(),
        }
    }

    fn object(v: Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn status_and_server_metadata_change_nothing() {
        let r = authorization();
        let base = json!({
            "metadata": {"name": "a", "resourceVersion": "1", "generation": 1,
                         "annotations": {"team": "x", LAST_APPLIED: "{\"spec\":{}}"}},
            "spec": {"federationRef": {"kind": "KubernetesFederation", "name": "f"}}
        });
        let first = convert(&r, object(base.clone())).unwrap();
        assert_eq!(first.raw.created, None);
        let mut later = base.clone();
        later["metadata"]["resourceVersion"] = json!("2");
        later["metadata"]["managedFields"] = json!([{"manager": "esi-server"}]);
        later["status"] = json!({"observedGeneration": 1, "conditions": [
            {"type": "Ready", "status": "True", "reason": "Loaded", "message": "ok",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        later["metadata"]["creationTimestamp"] = json!("2026-01-02T03:04:05Z");
        let second = convert(&r, object(later)).unwrap();
        assert_eq!(first.raw.hash, second.raw.hash, "status is not content");
        // The creation time is carried beside the content (it orders federations sharing
        // a name), not in it.
        assert_eq!(
            second.raw.created,
            Some("2026-01-02T03:04:05Z".parse().unwrap())
        );
        assert!(
            second.raw.body["metadata"]
                .get("creationTimestamp")
                .is_none()
        );
        assert_eq!(first.observed.ready, None);
        let ready = second.observed.ready.unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.observed_generation),
            ("True", Some(1))
        );
        // The list item had no apiVersion/kind: the resource supplies them.
        assert_eq!(first.raw.kind, "Authorization");
        assert_eq!(
            first.raw.body["apiVersion"],
            "federation.external-secrets.io/v1alpha1"
        );
        assert!(
            first.raw.body["metadata"]["annotations"]
                .get(LAST_APPLIED)
                .is_none()
        );
        assert_eq!(first.raw.body["metadata"]["annotations"]["team"], "x");
        assert_eq!(
            first.key.to_string(),
            "kubernetes:Authorization.federation.external-secrets.io/a"
        );
        let mut changed = base;
        changed["spec"]["allowedClusterSecretStores"] = json!(["s"]);
        assert_ne!(
            convert(&r, object(changed)).unwrap().raw.hash,
            first.raw.hash
        );
    }
}
