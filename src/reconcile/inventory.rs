//! What the reconciler knows, built from [`SourceEvent`]s (the directory scanner now, the
//! Kubernetes watchers next): SecretStores and ClusterSecretStores with their providers,
//! generators, ExternalSecrets, Secrets, ConfigMaps and Namespaces.
//!
//! As the server's snapshot builder: an object that is gone is gone at once; a store or
//! generator that builds takes its new form, one that does not keeps its last good form
//! (or, never built, is present but not ready, so that the ExternalSecrets using it fail
//! with the reason); a store or generator whose spec and the Secrets did not change is
//! reused as built. Problems are reported per object.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::generators::{self, Generator};
use crate::providers::{self, ProviderSettings, SecretProvider};
use crate::resources::external_secret::{ExternalSecretSpec, StoreKind};
use crate::resources::{GeneratorKey, SecretIndex, SecretName, SecretObject, SecretStoreSpec};
use crate::source::{LoadError, ObjectKey, RawObject, SourceEvent, SourceObject};

use super::stores::NAMESPACE_NAME_LABEL;

/// A store's identity: kind, namespace (empty for a ClusterSecretStore), name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreId {
    /// SecretStore or ClusterSecretStore.
    pub kind: StoreKind,
    /// Namespace; empty for a ClusterSecretStore.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// One store as the reconciler uses it.
#[derive(Clone)]
pub struct StoreEntry {
    /// The provider, or why it is not ready.
    pub provider: Result<Arc<dyn SecretProvider>, String>,
    /// `spec.controller`.
    pub controller: Option<String>,
    /// `spec.conditions` (ClusterSecretStore).
    pub conditions: Vec<crate::resources::external_secret::ClusterSecretStoreCondition>,
}

/// One ExternalSecret as read.
#[derive(Debug, Clone)]
pub struct ExternalSecretObject {
    /// Namespace (`default` when the manifest names none).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid`, when the manifest has one (for owner references).
    pub uid: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// The spec, or why it does not parse.
    pub spec: Result<ExternalSecretSpec, String>,
    /// Where it was read.
    pub origin: String,
    /// ESO's `syncedResourceVersion` for this content: a hash of the spec, labels and
    /// annotations (ESO: generation and a hash of labels and annotations), so any change,
    /// including a new `force-sync` annotation, is a new version.
    pub resource_version: String,
}

/// A Secret that exists (from the manifests), for `creationPolicy: Merge` and templates.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ExistingSecret {
    /// `type` (`Opaque` when absent).
    pub type_: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Decoded data (`stringData` winning).
    pub data: BTreeMap<String, Vec<u8>>,
    /// `immutable`.
    pub immutable: bool,
}

impl fmt::Debug for ExistingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExistingSecret")
            .field("type", &self.type_)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Everything one reconcile pass reads. Immutable once built.
#[derive(Default)]
pub struct Inventory {
    stores: HashMap<StoreId, StoreEntry>,
    generators: HashMap<GeneratorKey, Result<Arc<dyn Generator>, String>>,
    external_secrets: Vec<ExternalSecretObject>,
    secrets: HashMap<(String, String), ExistingSecret>,
    config_maps: HashMap<(String, String), BTreeMap<String, Vec<u8>>>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    /// What could not be read or built, per object.
    pub problems: Vec<LoadError>,
}

impl fmt::Debug for Inventory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inventory")
            .field("stores", &self.stores.len())
            .field("generators", &self.generators.len())
            .field("external_secrets", &self.external_secrets.len())
            .field("secrets", &self.secrets.len())
            .field("problems", &self.problems.len())
            .finish()
    }
}

impl Inventory {
    /// A store by identity.
    pub fn store(&self, id: &StoreId) -> Option<&StoreEntry> {
        self.stores.get(id)
    }

    /// A generator by key (namespace empty for a ClusterGenerator): `None` when absent,
    /// `Some(Err)` when it does not build.
    pub fn generator(&self, key: &GeneratorKey) -> Option<&Result<Arc<dyn Generator>, String>> {
        self.generators.get(key)
    }

    /// Every ExternalSecret, sorted by namespace and name.
    pub fn external_secrets(&self) -> &[ExternalSecretObject] {
        &self.external_secrets
    }

    /// A Secret that exists in `namespace`.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&ExistingSecret> {
        self.secrets.get(&(namespace.to_string(), name.to_string()))
    }

    /// A ConfigMap's data (`binaryData` included) in `namespace`.
    pub fn config_map(&self, namespace: &str, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.config_maps
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// A namespace's labels: those of its Namespace object when one was read, plus the
    /// `kubernetes.io/metadata.name` label Kubernetes sets on every namespace.
    /// Whether the labels of `namespace` are known (its `Namespace` object was seen). A
    /// `namespaceSelector` is evaluated only then: with unknown labels a `NotIn` or
    /// `DoesNotExist` term would hold for want of information (fail open).
    pub fn namespace_known(&self, namespace: &str) -> bool {
        self.namespaces.contains_key(namespace)
    }

    pub fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        let mut labels = self.namespaces.get(namespace).cloned().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string());
        labels
    }
}

/// A built object, the digest of what it was built from, and the Secrets its build looked
/// up (found or not, [`SecretIndex::recording`]): only a change to one of these, or to the
/// object, builds it again.
#[derive(Clone)]
struct Built<T> {
    value: T,
    digest: [u8; 32],
    secrets: BTreeSet<SecretName>,
}

/// Turns source events into [`Inventory`]s. Keep one per reconciler: it remembers what
/// the source reported and the last good form of every store and generator.
pub struct InventoryBuilder {
    settings: ProviderSettings,
    objects: BTreeMap<ObjectKey, RawObject>,
    listing: Option<HashSet<ObjectKey>>,
    problems: Vec<LoadError>,
    stores: HashMap<StoreId, Built<Arc<dyn SecretProvider>>>,
    generators: HashMap<GeneratorKey, Built<Arc<dyn Generator>>>,
}

impl fmt::Debug for InventoryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InventoryBuilder")
            .field("objects", &self.objects.len())
            .finish()
    }
}

const ESO_GROUP: &str = "external-secrets.io";
const GENERATORS_GROUP: &str = "generators.external-secrets.io";

fn group(api_version: &str) -> &str {
    match api_version.split_once('/') {
        Some((g, _)) => g,
        None => "",
    }
}

fn problem(obj: &RawObject, reason: impl Into<String>) -> LoadError {
    LoadError {
        origin: obj.origin.clone(),
        object: Some(obj.display_name()),
        reason: reason.into(),
    }
}

/// Digest of what an object is built from: the object and the current contents (or
/// absence) of `secrets`, the Secrets its build looks up.
/// The last good form `old` when `value` is it (kept), else `value` as built now, with the
/// Secrets its build looked up (`recording`) and its digest over them.
fn kept_or_built<T: ?Sized>(
    old: Option<&Built<Arc<T>>>,
    value: &Arc<T>,
    obj: &RawObject,
    index: &SecretIndex,
    recording: &SecretIndex,
) -> Built<Arc<T>> {
    match old {
        Some(b) if Arc::ptr_eq(&b.value, value) => b.clone(),
        _ => {
            let secrets = recording.lookups();
            Built {
                value: value.clone(),
                digest: digest_of(obj, index, &secrets),
                secrets,
            }
        }
    }
}

fn digest_of(obj: &RawObject, index: &SecretIndex, secrets: &BTreeSet<SecretName>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(obj.hash);
    h.update(index.digest_of(secrets));
    h.finalize().into()
}

/// ESO's `syncedResourceVersion` in directory mode: SHA-256 (hex, 32 chars) over the spec,
/// labels and annotations (without `kubectl.kubernetes.io/last-applied-configuration`).
fn resource_version(obj: &RawObject) -> String {
    let mut annotations = obj.metadata.annotations.clone();
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    let content = serde_json::json!({
        "spec": obj.body.get("spec").cloned().unwrap_or(serde_json::Value::Null),
        "labels": obj.metadata.labels,
        "annotations": annotations,
    });
    let hash = crate::resources::content_hash(&content);
    hash[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_data(
    data: &BTreeMap<String, String>,
    strings: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .map_err(|_| format!("data key {k:?} is not valid base64"))?;
        out.insert(k.clone(), bytes);
    }
    for (k, v) in strings {
        out.insert(k.clone(), v.as_bytes().to_vec());
    }
    Ok(out)
}

impl InventoryBuilder {
    /// An empty builder; `settings` go to every provider and generator it builds, with
    /// [`ProviderSettings::client_side`] set: the reconciler is a client, so the
    /// `externalsecrets` provider and the `Federation` generator are its to use.
    pub fn new(mut settings: ProviderSettings) -> Self {
        settings.client_side = true;
        InventoryBuilder {
            settings,
            objects: BTreeMap::new(),
            listing: None,
            problems: Vec::new(),
            stores: HashMap::new(),
            generators: HashMap::new(),
        }
    }

    /// Applies one event of a source (policy files are not ours and are ignored).
    pub fn apply(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Init => self.listing = Some(HashSet::new()),
            SourceEvent::InitApply(key, object) => {
                if let Some(listing) = &mut self.listing {
                    listing.insert(key.clone());
                }
                self.put(key, object);
            }
            SourceEvent::InitDone => {
                if let Some(listing) = self.listing.take() {
                    self.objects.retain(|k, _| listing.contains(k));
                }
            }
            SourceEvent::Apply(key, object) => self.put(key, object),
            SourceEvent::Delete(key) => {
                self.objects.remove(&key);
            }
            SourceEvent::Problems { errors, .. } => self.problems = errors,
        }
    }

    fn put(&mut self, key: ObjectKey, object: SourceObject) {
        match object {
            SourceObject::Manifest(obj) => {
                self.objects.insert(key, *obj);
            }
            SourceObject::Policy(_) => {
                self.objects.remove(&key);
            }
        }
    }

    /// Builds the inventory of what the source reported so far.
    pub fn build(&mut self) -> Inventory {
        let mut inv = Inventory {
            problems: self.problems.clone(),
            ..Inventory::default()
        };
        let objects: Vec<&RawObject> = self.objects.values().collect();

        // Secrets, ConfigMaps and Namespaces first: stores and generators resolve against them.
        let mut index = SecretIndex::default();
        for obj in &objects {
            let namespace = obj.metadata.namespace.as_deref().unwrap_or("default");
            let id = (namespace.to_string(), obj.metadata.name.clone());
            match (obj.api_version.as_str(), obj.kind.as_str()) {
                ("v1", "Secret") => {
                    if inv.secrets.contains_key(&id) {
                        inv.problems.push(problem(obj, "duplicate Secret"));
                        continue;
                    }
                    let parsed: Result<SecretObject, _> = serde_json::from_value(obj.body.clone());
                    let Ok(secret) = parsed else {
                        inv.problems.push(problem(
                            obj,
                            "invalid Secret: data must map strings to strings",
                        ));
                        continue;
                    };
                    let data = match decode_data(&secret.data, &secret.string_data) {
                        Ok(d) => d,
                        Err(e) => {
                            inv.problems.push(problem(obj, e));
                            continue;
                        }
                    };
                    if let Err(e) = index.insert(namespace, &obj.metadata.name, &secret) {
                        inv.problems.push(problem(obj, e.to_string()));
                        continue;
                    }
                    inv.secrets.insert(
                        id,
                        ExistingSecret {
                            type_: obj
                                .body
                                .get("type")
                                .and_then(|t| t.as_str())
                                .unwrap_or("Opaque")
                                .to_string(),
                            labels: obj.metadata.labels.clone(),
                            annotations: obj.metadata.annotations.clone(),
                            data,
                            immutable: obj
                                .body
                                .get("immutable")
                                .and_then(|v| v.as_bool())
                                .unwrap_or(false),
                        },
                    );
                }
                ("v1", "ConfigMap") => {
                    let field = |name: &str| -> Result<BTreeMap<String, String>, String> {
                        match obj.body.get(name) {
                            None | Some(serde_json::Value::Null) => Ok(BTreeMap::new()),
                            Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                                format!("invalid ConfigMap: {name} must map strings to strings")
                            }),
                        }
                    };
                    let built = field("data").and_then(|data| {
                        let binary = field("binaryData")?;
                        let mut out: BTreeMap<String, Vec<u8>> =
                            data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
                        out.extend(decode_data(&binary, &BTreeMap::new())?);
                        Ok(out)
                    });
                    match built {
                        Ok(data) => {
                            inv.config_maps.insert(id, data);
                        }
                        Err(e) => inv.problems.push(problem(obj, e)),
                    }
                }
                ("v1", "Namespace") => {
                    inv.namespaces
                        .insert(obj.metadata.name.clone(), obj.metadata.labels.clone());
                }
                _ => {}
            }
        }

        let mut stores: HashMap<StoreId, Built<Arc<dyn SecretProvider>>> = HashMap::new();
        let mut generators: HashMap<GeneratorKey, Built<Arc<dyn Generator>>> = HashMap::new();
        let mut es_seen: HashSet<(String, String)> = HashSet::new();
        for obj in &objects {
            let g = group(&obj.api_version);
            let name = obj.metadata.name.as_str();
            match (g, obj.kind.as_str()) {
                (ESO_GROUP, kind @ ("SecretStore" | "ClusterSecretStore")) => {
                    let (kind, namespace) = if kind == "SecretStore" {
                        (
                            StoreKind::SecretStore,
                            obj.metadata
                                .namespace
                                .clone()
                                .unwrap_or_else(|| "default".into()),
                        )
                    } else {
                        (StoreKind::ClusterSecretStore, String::new())
                    };
                    let id = StoreId {
                        kind,
                        namespace: namespace.clone(),
                        name: name.to_string(),
                    };
                    if inv.stores.contains_key(&id) {
                        inv.problems
                            .push(problem(obj, format!("duplicate {}", kind.as_str())));
                        continue;
                    }
                    let mut spec: SecretStoreSpec = match obj.body.get("spec") {
                        None | Some(serde_json::Value::Null) => SecretStoreSpec::default(),
                        Some(s) => match serde_json::from_value(s.clone()) {
                            Ok(spec) => spec,
                            Err(e) => {
                                inv.problems.push(problem(
                                    obj,
                                    format!("invalid spec: {}", providers::safe_serde_message(&e)),
                                ));
                                continue;
                            }
                        },
                    };
                    let old = self.stores.get(&id);
                    let recording = index.recording();
                    let provider = match old
                        .filter(|b| b.digest == digest_of(obj, &index, &b.secrets))
                    {
                        Some(b) => Ok(b.value.clone()),
                        None => {
                            let ns = (kind == StoreKind::SecretStore).then_some(namespace.as_str());
                            let built = providers::cache::apply_annotation(
                                name,
                                &mut spec,
                                &obj.metadata.annotations,
                            )
                            .and_then(|()| {
                                providers::build_provider(
                                    name,
                                    ns,
                                    &spec,
                                    &recording,
                                    &self.settings,
                                )
                            });
                            match built {
                                Ok(p) => Ok(p),
                                Err(e) => {
                                    let reason = e.to_string();
                                    match old {
                                        Some(b) => {
                                            inv.problems.push(problem(
                                                obj,
                                                format!("{reason}; the last good form is used"),
                                            ));
                                            Ok(b.value.clone())
                                        }
                                        None => {
                                            inv.problems.push(problem(obj, reason.clone()));
                                            Err(reason)
                                        }
                                    }
                                }
                            }
                        }
                    };
                    if let Ok(p) = &provider {
                        stores.insert(id.clone(), kept_or_built(old, p, obj, &index, &recording));
                    }
                    inv.stores.insert(
                        id,
                        StoreEntry {
                            provider,
                            controller: spec.controller.clone(),
                            conditions: spec.conditions.clone(),
                        },
                    );
                }
                (GENERATORS_GROUP, kind)
                    if generators::is_generator_kind(kind)
                        || generators::is_client_generator_kind(kind) =>
                {
                    let namespace = if generators::is_cluster_scoped(kind) {
                        String::new()
                    } else {
                        obj.metadata
                            .namespace
                            .clone()
                            .unwrap_or_else(|| "default".into())
                    };
                    let key = GeneratorKey {
                        namespace: namespace.clone(),
                        kind: kind.to_string(),
                        name: name.to_string(),
                    };
                    if inv.generators.contains_key(&key) {
                        inv.problems.push(problem(obj, "duplicate generator"));
                        continue;
                    }
                    let old = self.generators.get(&key);
                    let recording = index.recording();
                    let built = match old.filter(|b| b.digest == digest_of(obj, &index, &b.secrets))
                    {
                        Some(b) => Ok(b.value.clone()),
                        None => {
                            let spec = obj
                                .body
                                .get("spec")
                                .cloned()
                                .unwrap_or(serde_json::Value::Null);
                            match generators::build_generator_with(
                                kind,
                                &namespace,
                                name,
                                &spec,
                                &recording,
                                &self.settings,
                            ) {
                                Ok(g) => Ok(g),
                                Err(e) => match old {
                                    Some(b) => {
                                        inv.problems.push(problem(
                                            obj,
                                            format!("{e}; the last good form is used"),
                                        ));
                                        Ok(b.value.clone())
                                    }
                                    None => {
                                        inv.problems.push(problem(obj, e.to_string()));
                                        Err(e.to_string())
                                    }
                                },
                            }
                        }
                    };
                    if let Ok(gen_) = &built {
                        generators.insert(
                            key.clone(),
                            kept_or_built(old, gen_, obj, &index, &recording),
                        );
                    }
                    inv.generators.insert(key, built);
                }
                (GENERATORS_GROUP, kind) => {
                    inv.problems.push(problem(
                        obj,
                        format!("generator kind {kind} is not supported by this build"),
                    ));
                }
                (ESO_GROUP, "ExternalSecret") => {
                    let namespace = obj
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into());
                    if !es_seen.insert((namespace.clone(), name.to_string())) {
                        inv.problems.push(problem(obj, "duplicate ExternalSecret"));
                        continue;
                    }
                    let spec = match obj.body.get("spec") {
                        None | Some(serde_json::Value::Null) => Err("spec is missing".to_string()),
                        Some(s) => {
                            serde_json::from_value::<ExternalSecretSpec>(s.clone()).map_err(|e| {
                                format!("invalid spec: {}", providers::safe_serde_message(&e))
                            })
                        }
                    };
                    if let Err(e) = &spec {
                        inv.problems.push(problem(obj, e.clone()));
                    }
                    inv.external_secrets.push(ExternalSecretObject {
                        namespace,
                        name: name.to_string(),
                        uid: obj
                            .body
                            .pointer("/metadata/uid")
                            .and_then(|u| u.as_str())
                            .map(str::to_string),
                        labels: obj.metadata.labels.clone(),
                        annotations: obj.metadata.annotations.clone(),
                        spec,
                        origin: obj.origin.clone(),
                        resource_version: resource_version(obj),
                    });
                }
                _ => {}
            }
        }
        inv.external_secrets
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.stores = stores;
        self.generators = generators;
        inv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::dir::DirectoryScanner;

    fn build(builder: &mut InventoryBuilder, scanner: &mut DirectoryScanner) -> Inventory {
        scanner.scan(&mut |e| builder.apply(e));
        builder.build()
    }

    #[test]
    fn reads_every_kind_and_keeps_last_good_stores() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(
            p.join("all.yaml"),
            r#"
apiVersion: external-secrets.io/v1
kind: SecretStore
metadata: {name: fake, namespace: team}
spec:
  controller: mine
  provider: {fake: {data: [{key: k, value: v}]}}
---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {name: shared}
spec:
  conditions: [{namespaces: [team]}]
  provider: {fake: {data: []}}
---
apiVersion: generators.external-secrets.io/v1alpha1
kind: Password
metadata: {name: pw, namespace: team}
spec: {length: 12}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: es, namespace: team, uid: u-1, annotations: {force-sync: "1"}}
spec: {secretStoreRef: {name: fake}, data: [{secretKey: a, remoteRef: {key: k}}]}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: bad, namespace: team}
spec: {target: {creationPolicy: Sometimes}}
---
apiVersion: v1
kind: Namespace
metadata: {name: team, labels: {tier: db}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm, namespace: team}
data: {t: "{{ .a }}"}
binaryData: {b: AP8=}
---
apiVersion: v1
kind: Secret
metadata: {name: existing, namespace: team}
type: kubernetes.io/tls
stringData: {x: z}
"#,
        )
        .unwrap();
        let mut builder = InventoryBuilder::new(ProviderSettings::default());
        let mut scanner = DirectoryScanner::new(p.to_path_buf(), None);
        let inv = build(&mut builder, &mut scanner);
        let fake_id = StoreId {
            kind: StoreKind::SecretStore,
            namespace: "team".into(),
            name: "fake".into(),
        };
        let fake = inv.store(&fake_id).unwrap();
        assert_eq!(fake.controller.as_deref(), Some("mine"));
        let first = fake.provider.clone().unwrap();
        let shared = inv
            .store(&StoreId {
                kind: StoreKind::ClusterSecretStore,
                namespace: String::new(),
                name: "shared".into(),
            })
            .unwrap();
        assert_eq!(shared.conditions[0].namespaces, ["team"]);
        assert!(
            inv.generator(&GeneratorKey {
                namespace: "team".into(),
                kind: "Password".into(),
                name: "pw".into()
            })
            .is_some_and(Result::is_ok)
        );
        let es = inv.external_secrets();
        assert_eq!(es.len(), 2);
        assert_eq!(es[0].name, "bad");
        assert!(es[0].spec.is_err());
        assert_eq!(es[1].uid.as_deref(), Some("u-1"));
        assert_eq!(inv.namespace_labels("team")["tier"], "db");
        assert_eq!(inv.namespace_labels("other")[NAMESPACE_NAME_LABEL], "other");
        assert_eq!(inv.config_map("team", "cm").unwrap()["b"], [0, 255]);
        assert_eq!(
            inv.secret("team", "existing").unwrap().type_,
            "kubernetes.io/tls"
        );
        assert_eq!(inv.problems.len(), 1, "{:?}", inv.problems);

        // Unchanged: the same provider instance. Broken: the last good one, reported.
        let inv = build(&mut builder, &mut scanner);
        assert!(Arc::ptr_eq(
            &first,
            inv.store(&fake_id).unwrap().provider.as_ref().unwrap()
        ));
        let rv_before = inv.external_secrets()[1].resource_version.clone();
        let text = std::fs::read_to_string(p.join("all.yaml")).unwrap();
        std::fs::write(
            p.join("all.yaml"),
            text.replace(
                "{fake: {data: [{key: k, value: v}]}}",
                "{fake: {data: [{key: ''}]}}",
            )
            .replace("force-sync: \"1\"", "force-sync: \"2\""),
        )
        .unwrap();
        let inv = build(&mut builder, &mut scanner);
        assert!(Arc::ptr_eq(
            &first,
            inv.store(&fake_id).unwrap().provider.as_ref().unwrap()
        ));
        assert!(
            inv.problems.iter().any(|p| p.reason.contains("last good")),
            "{:?}",
            inv.problems
        );
        // A new force-sync annotation is a new resource version.
        assert_ne!(inv.external_secrets()[1].resource_version, rv_before);
    }

    /// A Secret of namespace `team` with `data`, as YAML.
    fn secret_yaml(name: &str, data: &[(&str, &str)]) -> String {
        let data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "team"}, "stringData": data})
        .to_string()
    }

    /// Each store and generator is built from its own Secrets only: another Secret
    /// changing (another tenant's, or an unrelated one of its namespace) keeps it as built,
    /// while one it looks up changing, going and coming back, or appearing builds it again,
    /// whatever field names it (`roleRef`, `caProvider`, `bearerToken`, `tokenSecretRef`).
    #[test]
    fn stores_and_generators_are_rebuilt_for_their_own_secrets_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let write = |name: &str, text: &str| std::fs::write(p.join(name), text).unwrap();
        write(
            "stores.yaml",
            "apiVersion: external-secrets.io/v1\nkind: SecretStore\nmetadata: {name: v, namespace: team}\n\
             spec: {provider: {vault: {server: 'https://v', path: secret, auth: {appRole: {\
             roleRef: {name: role, key: id}, secretRef: {name: sid, key: s}}}}}}\n\
             ---\n\
             apiVersion: external-secrets.io/v1\nkind: SecretStore\nmetadata: {name: k, namespace: team}\n\
             spec: {provider: {kubernetes: {\
             server: {url: 'https://k', caProvider: {type: Secret, name: k-ca, key: ca.crt}},\
             auth: {token: {bearerToken: {name: bearer, key: token}}}}}}\n\
             ---\n\
             apiVersion: generators.external-secrets.io/v1alpha1\nkind: VaultDynamicSecret\n\
             metadata: {name: g, namespace: team}\n\
             spec: {path: /database/creds/app, provider: {server: 'http://127.0.0.1:1',\
             auth: {tokenSecretRef: {name: late-token, key: token}}}}\n",
        );
        let ca = || {
            rcgen::generate_simple_self_signed(vec!["k".into()])
                .unwrap()
                .cert
                .pem()
        };
        write("role.yaml", &secret_yaml("role", &[("id", "r1")]));
        write("sid.yaml", &secret_yaml("sid", &[("s", "s1")]));
        write("ca.yaml", &secret_yaml("k-ca", &[("ca.crt", &ca())]));
        write("bearer.yaml", &secret_yaml("bearer", &[("token", "t1")]));
        write("other.yaml", &secret_yaml("other", &[("x", "1")]));
        let mut builder = InventoryBuilder::new(ProviderSettings::default());
        let mut scanner = DirectoryScanner::new(p.to_path_buf(), None);
        let id = |name: &str| StoreId {
            kind: StoreKind::SecretStore,
            namespace: "team".into(),
            name: name.into(),
        };
        let gen_key = GeneratorKey {
            namespace: "team".into(),
            kind: "VaultDynamicSecret".into(),
            name: "g".into(),
        };
        type Built = (Vec<Arc<dyn SecretProvider>>, Option<Arc<dyn Generator>>);
        let current = |inv: &Inventory| -> Built {
            let stores = ["v", "k"]
                .iter()
                .map(|s| inv.store(&id(s)).unwrap().provider.clone().unwrap())
                .collect();
            let generator = inv.generator(&gen_key).unwrap().as_ref().ok().cloned();
            (stores, generator)
        };
        let inv = build(&mut builder, &mut scanner);
        let mut prev = current(&inv);
        assert!(prev.1.is_none(), "its token Secret is missing");
        // Writes `name` (or removes it), builds, and says what was built again.
        let mut step = |name: &str, text: Option<&str>| -> Vec<&'static str> {
            match text {
                Some(text) => write(name, text),
                None => std::fs::remove_file(p.join(name)).unwrap(),
            }
            let next = current(&build(&mut builder, &mut scanner));
            let mut rebuilt: Vec<&'static str> = ["v", "k"]
                .into_iter()
                .zip(prev.0.iter().zip(&next.0))
                .filter(|(_, (a, b))| !Arc::ptr_eq(a, b))
                .map(|(s, _)| s)
                .collect();
            match (&prev.1, &next.1) {
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {}
                (None, None) => {}
                _ => rebuilt.push("g"),
            }
            prev = next;
            rebuilt
        };
        let none = Vec::<&str>::new();
        assert_eq!(
            step("other.yaml", Some(&secret_yaml("other", &[("x", "2")]))),
            none
        );
        assert_eq!(
            step("role.yaml", Some(&secret_yaml("role", &[("id", "r2")]))),
            ["v"]
        );
        assert_eq!(
            step("ca.yaml", Some(&secret_yaml("k-ca", &[("ca.crt", &ca())]))),
            ["k"]
        );
        let bearer = |t: &str| secret_yaml("bearer", &[("token", t)]);
        assert_eq!(step("bearer.yaml", Some(&bearer("t2"))), ["k"]);
        assert_eq!(
            step("bearer.yaml", None),
            none,
            "kept in its last good form"
        );
        assert_eq!(step("bearer.yaml", Some(&bearer("t3"))), ["k"]);
        // The generator's missing Secret appears: built; then kept.
        let token = secret_yaml("late-token", &[("token", "s.t")]);
        assert_eq!(step("late.yaml", Some(&token)), ["g"]);
        assert_eq!(
            step("other.yaml", Some(&secret_yaml("other", &[("x", "3")]))),
            none
        );
        let token = secret_yaml("late-token", &[("token", "s.u")]);
        assert_eq!(step("late.yaml", Some(&token)), ["g"]);
    }
}
