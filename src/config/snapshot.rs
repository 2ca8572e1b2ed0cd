//! One immutable view of every resource the server serves, built from raw objects.
//!
//! Requests read a snapshot through an `Arc` without locks; a reload builds a new one
//! and swaps it in atomically. Last good is kept per object: a reload applies every
//! object that builds and drops every object that is gone, while an object that does not
//! build keeps its last good form (or, if it never built, is absent and grants nothing).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::authn::Federation;
use crate::authz::{
    AuthorizationSource, CheckedAuthorization, PolicyCache, PolicyEngine, PolicyFile,
    PolicyLoadError,
};
use crate::generators::{self, Generator};
use crate::metrics::METRICS;
use crate::providers::{self, ProviderError, ProviderSettings, RemoteRef, SecretProvider};
use crate::resources::{
    AuthorizationSpec, KubernetesFederationSpec, OidcFederationSpec, OktaFederationSpec,
    PingIdentityFederationSpec, SecretObject, SecretStoreSpec, SpiffeFederationSpec,
    management_api_problem,
};
use crate::resources::{GeneratorKey, SecretIndex, SecretName};
use crate::source::dir::DirectoryScanner;
use crate::source::{
    LoadError, NamedObject, ObjectKey, RawObject, SourceEvent, SourceObject, inside,
};

/// Where resources come from in directory mode.
#[derive(Debug, Clone)]
pub struct DirectorySource {
    /// Directory of manifests (recursive).
    pub manifests: PathBuf,
    /// Optional directory of `.cedar` policy files.
    pub policies: Option<PathBuf>,
    /// Settings handed to every provider.
    pub provider_settings: ProviderSettings,
}

/// Everything requests need, immutable.
pub struct Snapshot {
    /// Increases with every reload.
    pub generation: u64,
    /// ClusterSecretStores by name.
    pub stores: HashMap<String, Arc<dyn SecretProvider>>,
    /// Generators by namespace/kind/name.
    pub generators: HashMap<GeneratorKey, Arc<dyn Generator>>,
    /// Trusted client clusters.
    pub federations: Vec<Federation>,
    /// Compiled Cedar policies.
    pub policies: Arc<PolicyEngine>,
    /// Objects rejected by this load (the server still serves the rest).
    pub errors: Vec<LoadError>,
    /// Objects in force with something to fix: a federation accepting any audience, an
    /// Authorization naming a federation, store or generator that does not exist.
    pub warnings: Vec<LoadError>,
    /// Objects that did not load this time and serve in their last good form.
    pub kept: Vec<KeptObject>,
    /// Objects of an `external-secrets.io` API group whose group, kind or version is not
    /// one Kubernetes serves ([`api_problem`]): the loader ignores the kind or reads the
    /// object whatever its version; `esi-server policy validate` reports each as an error.
    pub unrecognized: Vec<Unrecognized>,
    /// The last good form of every object, for the next reload.
    last_good: LastGood,
}

/// An object whose API group, kind or version is not one the loader knows ([`api_problem`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrecognized {
    /// Where it was read, the object (`Kind/name`), and why ([`api_problem`]).
    pub error: LoadError,
    /// Its `apiVersion` as written.
    pub api_version: String,
    /// Its `kind` as written.
    pub kind: String,
}

/// An object that did not load and serves in its last good form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptObject {
    /// `Kind/name` (or `policy file`).
    pub object: String,
    /// Where it was last read from.
    pub origin: String,
}

/// A built object and the digest of what it was built from (its spec and the Secrets its
/// build looked up): an object whose digest did not change is reused as it is, not built
/// again (no new HTTP client, no new Vault login).
#[derive(Clone)]
struct Kept<T> {
    value: T,
    digest: Option<[u8; 32]>,
    /// The Secrets its build looked up, found or not ([`SecretIndex::recording`]): only
    /// a change to one of these builds it again, not any tenant's Secret.
    secrets: BTreeSet<SecretName>,
}

impl<T> Kept<T> {
    fn new(value: T) -> Self {
        Kept {
            value,
            digest: None,
            secrets: BTreeSet::new(),
        }
    }

    fn built_from(mut self, digest: [u8; 32], secrets: BTreeSet<SecretName>) -> Self {
        self.digest = Some(digest);
        self.secrets = secrets;
        self
    }
}

/// Digest of what an object is built from: its kind, name, namespace and spec, and
/// `secrets`, the digest of the Secrets its build looks up ([`SecretIndex::digest_of`]).
fn build_digest(obj: &RawObject, secrets: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        obj.kind.as_str(),
        obj.metadata.name.as_str(),
        obj.metadata.namespace.as_deref().unwrap_or(""),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let spec = obj
        .body
        .get("spec")
        .map(|v| v.to_string())
        .unwrap_or_default();
    h.update((spec.len() as u64).to_be_bytes());
    h.update(spec.as_bytes());
    // The one annotation a store reads (its cache), so changing it rebuilds the store.
    let cache = obj
        .metadata
        .annotations
        .get(providers::cache::CACHE_ANNOTATION)
        .map(String::as_str)
        .unwrap_or_default();
    h.update((cache.len() as u64).to_be_bytes());
    h.update(cache.as_bytes());
    h.update(secrets);
    h.finalize().into()
}

/// The last form of each object that built, carried from one snapshot to the next.
#[derive(Default)]
struct LastGood {
    stores: HashMap<String, Kept<Arc<dyn SecretProvider>>>,
    generators: HashMap<GeneratorKey, Kept<Arc<dyn Generator>>>,
    federations: HashMap<String, Kept<Federation>>,
    authorizations: HashMap<String, Arc<CheckedAuthorization>>,
    policy_files: HashMap<PathBuf, PolicyFile>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut stores: Vec<_> = self.stores.keys().collect();
        stores.sort();
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("stores", &stores)
            .field("generators", &self.generators.len())
            .field("federations", &self.federations.len())
            .field("policies", &self.policies.policy_count())
            .field("errors", &self.errors.len())
            .finish()
    }
}

impl Snapshot {
    /// A snapshot that serves nothing and denies everything.
    pub fn empty() -> Self {
        Snapshot {
            generation: 0,
            stores: HashMap::new(),
            generators: HashMap::new(),
            federations: Vec::new(),
            policies: Arc::new(PolicyEngine::empty()),
            errors: Vec::new(),
            warnings: Vec::new(),
            kept: Vec::new(),
            unrecognized: Vec::new(),
            last_good: LastGood::default(),
        }
    }
}

/// A store whose configuration could not be completed (e.g. its credentials Secret is
/// missing). It exists, as in ESO, but every call fails as unavailable.
struct NotReadyStore {
    kind: &'static str,
}

#[async_trait]
impl SecretProvider for NotReadyStore {
    fn kind(&self) -> &'static str {
        self.kind
    }
    async fn get_secret(&self, _: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
        Err(ProviderError::Unavailable("store is not ready".into()))
    }
    async fn get_secret_map(
        &self,
        _: &RemoteRef,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        Err(ProviderError::Unavailable("store is not ready".into()))
    }
}

/// Most Secrets watched for the namespaced generators of one namespace (Kubernetes mode).
pub const MAX_SECRETS_PER_NAMESPACE: usize = 100;

/// How a warning about references to objects that do not exist begins.
pub const MISSING_PREFIX: &str = "references what does not exist: ";

fn group(api_version: &str) -> &str {
    api_version.split('/').next().unwrap_or_default()
}

/// The API groups of the `external-secrets.io` family the loader reads, the versions
/// Kubernetes serves (the CRDs: ours in `crate::resources::crd`, ESO's and ESE's upstream)
/// and their kinds (empty: every kind, judged by the builder, as generators are).
const KNOWN_APIS: &[(&str, &[&str], &[&str])] = &[
    (
        "federation.external-secrets.io",
        &["v1alpha1"],
        &[
            "Authorization",
            "AuthorizedIdentity",
            "KubernetesFederation",
            "OIDCFederation",
            "OktaFederation",
            "PingIdentityFederation",
            "SpiffeFederation",
        ],
    ),
    (
        "identity.federation.external-secrets.io",
        &["v1alpha1"],
        &[
            "KubernetesFederation",
            "OIDCFederation",
            "OktaFederation",
            "PingIdentityFederation",
            "SpiffeFederation",
        ],
    ),
    (
        "external-secrets.io",
        &["v1", "v1beta1"],
        &[
            "ClusterSecretStore",
            "SecretStore",
            "ExternalSecret",
            "ClusterExternalSecret",
        ],
    ),
    (
        "external-secrets.io",
        &["v1alpha1"],
        &["PushSecret", "ClusterPushSecret"],
    ),
    ("generators.external-secrets.io", &["v1alpha1"], &[]),
];

/// Why an object of `apiVersion`/`kind` in an `external-secrets.io` group (the group or a
/// subdomain of it) is not one the loader knows: an unknown group, a kind its group does
/// not have (ignored by the loader: a typo loads nothing), or a version Kubernetes does not
/// serve for it (the loader matches the group only, so it reads such an object; a cluster
/// would refuse it). `None` for every other group and every known form.
pub fn api_problem(api_version: &str, kind: &str) -> Option<String> {
    let (group, version) = api_version.split_once('/').unwrap_or((api_version, ""));
    if group != "external-secrets.io" && !group.ends_with(".external-secrets.io") {
        return None;
    }
    let in_group: Vec<_> = KNOWN_APIS.iter().filter(|(g, _, _)| *g == group).collect();
    if in_group.is_empty() {
        let mut groups: Vec<&str> = KNOWN_APIS.iter().map(|(g, _, _)| *g).collect();
        groups.dedup();
        return Some(format!(
            "unknown API group {group} (the loader reads {}): this object is not loaded",
            groups.join(", ")
        ));
    }
    let with_kind: Vec<_> = in_group
        .iter()
        .filter(|(_, _, kinds)| kinds.is_empty() || kinds.contains(&kind))
        .collect();
    if with_kind.is_empty() {
        let kinds: Vec<&str> = in_group
            .iter()
            .flat_map(|(_, _, k)| k.iter().copied())
            .collect();
        return Some(format!(
            "unknown kind {kind} in {group} (its kinds: {}): this object is not loaded",
            kinds.join(", ")
        ));
    }
    if with_kind
        .iter()
        .any(|(_, versions, _)| versions.contains(&version))
    {
        return None;
    }
    let served: Vec<String> = with_kind
        .iter()
        .flat_map(|(_, versions, _)| versions.iter().map(|v| format!("{group}/{v}")))
        .collect();
    Some(format!(
        "apiVersion {api_version} is not served for {kind} ({}): Kubernetes would refuse this object",
        served.join(", ")
    ))
}

fn spec_of<T: serde::de::DeserializeOwned + Default>(obj: &RawObject) -> Result<T, String> {
    match obj.body.get("spec") {
        None | Some(serde_json::Value::Null) => Ok(T::default()),
        Some(spec) => T::deserialize(spec).map_err(|e| format!("invalid spec: {e}")),
    }
}

/// The spec of one of our own kinds (`Authorization`, the federation kinds): as
/// [`spec_of`], and a field the kind does not declare is an error, not ignored
/// ([`crate::resources::strict`]: a misspelt `allowedRemoteKeys` would otherwise grant the
/// whole store).
fn strict_spec_of<T>(obj: &RawObject) -> Result<T, String>
where
    T: serde::de::DeserializeOwned + Default + schemars::JsonSchema + 'static,
{
    if let Some(spec) = obj.body.get("spec") {
        let unknown = crate::resources::strict::unknown_fields::<T>(spec);
        if let Some(msg) = crate::resources::strict::unknown_fields_message(&obj.kind, &unknown) {
            return Err(msg);
        }
    }
    spec_of(obj)
}

/// Whether `obj` is a federation (any kind, in either group the builder reads them from).
fn is_federation_object(obj: &RawObject) -> bool {
    matches!(
        group(&obj.api_version),
        "identity.federation.external-secrets.io" | "federation.external-secrets.io"
    ) && matches!(
        obj.kind.as_str(),
        "KubernetesFederation"
            | "OIDCFederation"
            | "OktaFederation"
            | "PingIdentityFederation"
            | "SpiffeFederation"
    )
}

fn error(obj: &RawObject, reason: impl Into<String>) -> LoadError {
    METRICS.load_errors.with_label_values(&[&obj.kind]).inc();
    LoadError {
        origin: obj.origin.clone(),
        object: Some(obj.display_name()),
        reason: reason.into(),
    }
}

impl DirectorySource {
    /// Reads the directories once and builds a snapshot (a fresh [`DirectoryReloader`]:
    /// no last good form to fall back on).
    pub fn load(&self) -> Snapshot {
        DirectoryReloader::new(self).load(None)
    }
}

/// Directory mode end to end: the [`DirectoryScanner`] says what changed, the
/// [`SnapshotBuilder`] builds. Keep one per server (both remember what they saw).
#[derive(Debug)]
pub struct DirectoryReloader {
    scanner: DirectoryScanner,
    builder: SnapshotBuilder,
}

impl DirectoryReloader {
    /// A reloader of `source`; nothing is read until [`load`](Self::load) or
    /// [`reload`](Self::reload).
    pub fn new(source: &DirectorySource) -> Self {
        DirectoryReloader {
            scanner: DirectoryScanner::new(source.manifests.clone(), source.policies.clone()),
            builder: SnapshotBuilder::new(source.provider_settings.clone()),
        }
    }

    /// Scans and, when something changed (always on the first scan), builds the next
    /// snapshot after `previous`.
    pub fn reload(&mut self, previous: Option<&Snapshot>) -> Option<Snapshot> {
        let builder = &mut self.builder;
        let outcome = self.scanner.scan(&mut |event| builder.apply(event));
        outcome.changed.then(|| builder.build(previous))
    }

    /// Scans and builds the next snapshot after `previous`, changed or not.
    pub fn load(&mut self, previous: Option<&Snapshot>) -> Snapshot {
        let builder = &mut self.builder;
        self.scanner.scan(&mut |event| builder.apply(event));
        builder.build(previous)
    }
}

/// One Authorization as last reported by the source: checked once, when it arrives.
#[derive(Debug)]
struct AuthorizationEntry {
    name: String,
    origin: String,
    api_version: String,
    checked: Result<Arc<CheckedAuthorization>, String>,
}

/// The one snapshot builder: sources ([`DirectoryScanner`]; Kubernetes watches next) tell
/// it what changed as [`SourceEvent`]s; [`build`](Self::build) makes the next snapshot.
///
/// Work is proportional to what changed where it matters: an Authorization is parsed and
/// checked when it arrives (its compiled policies come from the shared [`PolicyCache`]),
/// and stores, generators and federations (few) are rebuilt from their objects on each
/// build, reusing every one whose spec and Secrets did not change ([`Kept::built_from`]).
/// Only the parsed spec of an Authorization is held, not its manifest.
pub struct SnapshotBuilder {
    provider_settings: ProviderSettings,
    /// Manifest objects other than Authorizations, in source order (the first of one name
    /// wins).
    objects: BTreeMap<ObjectKey, RawObject>,
    authorizations: BTreeMap<ObjectKey, AuthorizationEntry>,
    policy_files: BTreeMap<ObjectKey, PolicyFile>,
    /// What the source could not read, and the origins whose objects it kept for that.
    problems: Vec<LoadError>,
    stale: Vec<String>,
    /// Keys listed since `Init`, during a full list.
    listing: Option<HashSet<ObjectKey>>,
    cache: PolicyCache,
}

impl fmt::Debug for SnapshotBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotBuilder")
            .field("objects", &self.objects.len())
            .field("authorizations", &self.authorizations.len())
            .field("policy_files", &self.policy_files.len())
            .field("problems", &self.problems.len())
            .finish()
    }
}

fn is_authorization(obj: &RawObject) -> bool {
    group(&obj.api_version) == "federation.external-secrets.io" && obj.kind == "Authorization"
}

impl SnapshotBuilder {
    /// An empty builder; `provider_settings` go to every provider it builds.
    pub fn new(provider_settings: ProviderSettings) -> Self {
        SnapshotBuilder {
            provider_settings,
            objects: BTreeMap::new(),
            authorizations: BTreeMap::new(),
            policy_files: BTreeMap::new(),
            problems: Vec::new(),
            stale: Vec::new(),
            listing: None,
            cache: PolicyCache::default(),
        }
    }

    /// Applies one event of a source.
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
                    self.authorizations.retain(|k, _| listing.contains(k));
                    self.policy_files.retain(|k, _| listing.contains(k));
                }
            }
            SourceEvent::Apply(key, object) => self.put(key, object),
            SourceEvent::Delete(key) => self.remove(&key),
            SourceEvent::Problems { errors, stale } => {
                self.problems = errors;
                self.stale = stale;
            }
        }
    }

    /// The Secrets (namespace, name) that the stores and generators held here reference
    /// ([`crate::resources::secret_references`]): in Kubernetes mode, the only Secrets
    /// watched. In order of priority, without repeats: first those of cluster-scoped
    /// objects (ClusterSecretStores, ClusterGenerators: written by cluster administrators),
    /// then those of namespaced generators, at most [`MAX_SECRETS_PER_NAMESPACE`] per
    /// namespace, so that no namespace's objects can crowd out another's or the cluster's.
    pub fn referenced_secrets(&self) -> Vec<NamedObject> {
        let refs = self.objects.values().filter_map(|obj| {
            let owner = match (group(&obj.api_version), obj.kind.as_str()) {
                ("external-secrets.io", "ClusterSecretStore") => None,
                ("generators.external-secrets.io", kind) if generators::is_generator_kind(kind) => {
                    if generators::is_cluster_scoped(kind) {
                        None
                    } else {
                        Some(obj.metadata.namespace.as_deref().unwrap_or("default"))
                    }
                }
                _ => return None,
            };
            let spec = obj.body.get("spec")?;
            let refs = crate::resources::secret_references(spec, owner)
                .into_iter()
                .map(|(ns, name)| NamedObject::secret(ns, name))
                .collect();
            Some((owner, refs))
        });
        crate::source::watch_order(refs, MAX_SECRETS_PER_NAMESPACE)
    }

    fn remove(&mut self, key: &ObjectKey) {
        self.objects.remove(key);
        self.authorizations.remove(key);
        self.policy_files.remove(key);
    }

    fn put(&mut self, key: ObjectKey, object: SourceObject) {
        self.remove(&key);
        match object {
            SourceObject::Policy(text) => {
                let path = match &key {
                    ObjectKey::File { path } => path.to_path_buf(),
                    other => PathBuf::from(other.to_string()),
                };
                self.policy_files.insert(key, PolicyFile { path, text });
            }
            SourceObject::Manifest(obj) if is_authorization(&obj) => {
                let checked = strict_spec_of::<AuthorizationSpec>(&obj).and_then(|spec| {
                    let source = AuthorizationSource {
                        name: obj.metadata.name.clone(),
                        origin: obj.origin.clone(),
                        spec,
                    };
                    CheckedAuthorization::check(&source)
                        .map(Arc::new)
                        .map_err(|e| e.reason)
                });
                let entry = AuthorizationEntry {
                    name: obj.metadata.name.clone(),
                    origin: obj.origin.clone(),
                    api_version: obj.api_version.clone(),
                    checked,
                };
                self.authorizations.insert(key, entry);
            }
            SourceObject::Manifest(obj) => {
                self.objects.insert(key, *obj);
            }
        }
    }

    /// Builds the snapshot that follows `previous` (which supplies the generation and, per
    /// object, the last good form).
    ///
    /// The per-object rule (issue 19, finding 7): an object that is gone is gone at once;
    /// an object that builds takes its new form; an object that does not build keeps the
    /// form it had in `previous`, or, if it never built, is absent (a store is not served,
    /// an Authorization or policy file grants nothing). An object the source could not
    /// read again (its file does not parse) stays as last read, and is reported as kept.
    pub fn build(&self, previous: Option<&Snapshot>) -> Snapshot {
        let empty = LastGood::default();
        let old = previous.map_or(&empty, |p| &p.last_good);
        let mut last_good = LastGood::default();
        let mut kept: Vec<KeptObject> = Vec::new();
        let mut errors = self.problems.clone();
        let provider_settings = &self.provider_settings;
        let objects: Vec<&RawObject> = self.objects.values().collect();

        // Secrets first: stores and generators resolve their references against them.
        let mut secrets = SecretIndex::default();
        for obj in objects
            .iter()
            .copied()
            .filter(|o| o.kind == "Secret" && group(&o.api_version) == "v1")
        {
            let parsed: Result<SecretObject, _> = serde_json::from_value(obj.body.clone());
            let namespace = obj.metadata.namespace.as_deref().unwrap_or("default");
            match parsed {
                Ok(secret) => {
                    if let Err(e) = secrets.insert(namespace, &obj.metadata.name, &secret) {
                        errors.push(error(obj, e.to_string()));
                    }
                }
                Err(_) => errors.push(error(
                    obj,
                    "invalid Secret: data must map strings to strings",
                )),
            }
        }

        // What an object was built from: itself and the Secrets its last build looked up.
        let digest_with = |obj: &RawObject, names: &BTreeSet<SecretName>| {
            build_digest(obj, &secrets.digest_of(names))
        };

        let mut federations: Vec<Federation> = Vec::new();
        let mut federation_origins: HashMap<String, (String, String)> = HashMap::new();
        let mut warnings: Vec<LoadError> = Vec::new();
        let mut stores: HashMap<String, Arc<dyn SecretProvider>> = HashMap::new();
        let mut generators: HashMap<GeneratorKey, Arc<dyn Generator>> = HashMap::new();

        // Of federation objects sharing a name (names are unique across kinds), the one
        // served: the first, in object order, of the kind the previous snapshot served under
        // that name; else the oldest by `metadata.creationTimestamp` (Kubernetes mode: the
        // API server sets it, so after a restart the object that held the name still does);
        // else (no timestamps, as in directory mode, or equal ones) the first in object
        // order. A new object of another kind (in Kubernetes mode, objects are ordered by
        // kind, so `KubernetesFederation` before `SpiffeFederation`) never displaces a
        // federation in force nor an older one: whoever may write one federation kind
        // cannot take over the name, the Authorizations and the policies of another's.
        let mut federation_winners: HashMap<&str, (&str, &str)> = HashMap::new();
        let mut winner_created: HashMap<&str, Option<jiff::Timestamp>> = HashMap::new();
        for obj in objects.iter().copied() {
            if !is_federation_object(obj) {
                continue;
            }
            let name = obj.metadata.name.as_str();
            let incumbent = old.federations.get(name).map(|k| k.value.kind().as_str());
            let candidate = (obj.origin.as_str(), obj.kind.as_str());
            let takes = match federation_winners.get(name) {
                None => true,
                Some((_, kind)) if incumbent == Some(*kind) => false,
                Some(_) if incumbent == Some(obj.kind.as_str()) => true,
                Some(_) => matches!(
                    (obj.created, winner_created.get(name).copied().flatten()),
                    (Some(newcomer), Some(holder)) if newcomer < holder
                ),
            };
            if takes {
                federation_winners.insert(name, candidate);
                winner_created.insert(name, obj.created);
            }
        }

        for obj in objects.iter().copied() {
            let g = group(&obj.api_version);
            let name = obj.metadata.name.as_str();
            match (g, obj.kind.as_str()) {
                ("v1", "Secret") => {}
                (
                    "identity.federation.external-secrets.io" | "federation.external-secrets.io",
                    kind @ ("KubernetesFederation"
                    | "OIDCFederation"
                    | "OktaFederation"
                    | "PingIdentityFederation"
                    | "SpiffeFederation"),
                ) => {
                    // Names are unique across kinds: a principal is `<federation>/…` and an
                    // Authorization's federationRef is found by name.
                    if let Some((origin, winner)) = federation_winners.get(name)
                        && *origin != obj.origin.as_str()
                    {
                        errors.push(error(
                            obj,
                            format!(
                                "duplicate federation name: {winner} {name} holds the name (names are unique across KubernetesFederation, OIDCFederation, OktaFederation, PingIdentityFederation and SpiffeFederation; a federation in force keeps its name), so this one is not served"
                            ),
                        ));
                        continue;
                    }
                    let built = match kind {
                        "KubernetesFederation" => strict_spec_of::<KubernetesFederationSpec>(obj)
                            .and_then(|spec| {
                                Federation::from_spec(name, &spec).map_err(|e| e.to_string())
                            }),
                        "OIDCFederation" => {
                            strict_spec_of::<OidcFederationSpec>(obj).and_then(|spec| {
                                Federation::from_oidc_spec(name, &spec).map_err(|e| e.to_string())
                            })
                        }
                        "OktaFederation" => {
                            strict_spec_of::<OktaFederationSpec>(obj).and_then(|spec| {
                                if let Some(why) =
                                    management_api_problem(spec.management_api.as_ref())
                                {
                                    return Err(why);
                                }
                                Federation::from_okta_spec(name, &spec).map_err(|e| e.to_string())
                            })
                        }
                        "SpiffeFederation" => {
                            strict_spec_of::<SpiffeFederationSpec>(obj).and_then(|spec| {
                                Federation::from_spiffe_spec(name, &spec).map_err(|e| e.to_string())
                            })
                        }
                        _ => strict_spec_of::<PingIdentityFederationSpec>(obj).and_then(|spec| {
                            if let Some(why) = management_api_problem(spec.management_api.as_ref())
                            {
                                return Err(why);
                            }
                            Federation::from_ping_identity_spec(name, &spec)
                                .map_err(|e| e.to_string())
                        }),
                    };
                    federation_origins
                        .insert(name.to_owned(), (obj.origin.clone(), obj.display_name()));
                    match built {
                        Ok(f) => {
                            for w in f.warnings() {
                                warnings.push(LoadError {
                                    origin: obj.origin.clone(),
                                    object: Some(obj.display_name()),
                                    reason: w,
                                });
                            }
                            last_good
                                .federations
                                .insert(name.to_owned(), Kept::new(f.clone()));
                            federations.push(f);
                        }
                        Err(reason) => match old
                            .federations
                            .get(name)
                            .filter(|k| k.value.kind().as_str() == kind)
                        {
                            Some(k) => {
                                errors.push(error(obj, reason + KEPT_SUFFIX));
                                keep_note(&mut kept, obj.display_name(), &obj.origin);
                                federations.push(k.value.clone());
                                last_good.federations.insert(name.to_owned(), k.clone());
                            }
                            None => errors.push(error(obj, reason + NEVER_SUFFIX)),
                        },
                    }
                }
                ("external-secrets.io", "ClusterSecretStore") => {
                    if stores.contains_key(name) {
                        errors.push(error(obj, "duplicate ClusterSecretStore name"));
                        continue;
                    }
                    if let Some(k) = old
                        .stores
                        .get(name)
                        .filter(|k| k.digest == Some(digest_with(obj, &k.secrets)))
                    {
                        stores.insert(name.to_owned(), k.value.clone());
                        last_good.stores.insert(name.to_owned(), k.clone());
                        continue;
                    }
                    let recording = secrets.recording();
                    let built = spec_of::<SecretStoreSpec>(obj)
                        .map_err(|r| (r, false))
                        .and_then(|mut spec| {
                            providers::cache::apply_annotation(
                                name,
                                &mut spec,
                                &obj.metadata.annotations,
                            )
                            .map_err(|e| (e.to_string(), false))?;
                            providers::build_provider(
                                name,
                                None,
                                &spec,
                                &recording,
                                provider_settings,
                            )
                            .map_err(|e| (e.to_string(), e.is_missing_secret()))
                        });
                    match built {
                        Ok(p) => {
                            let used = recording.lookups();
                            let digest = digest_with(obj, &used);
                            last_good.stores.insert(
                                name.to_owned(),
                                Kept::new(p.clone()).built_from(digest, used),
                            );
                            stores.insert(name.to_string(), p);
                        }
                        Err((reason, missing_secret)) => match old.stores.get(name) {
                            Some(k) => {
                                errors.push(error(obj, reason + KEPT_SUFFIX));
                                keep_note(&mut kept, obj.display_name(), &obj.origin);
                                stores.insert(name.to_owned(), k.value.clone());
                                last_good.stores.insert(name.to_owned(), k.clone());
                            }
                            // A missing credentials Secret may appear later: the store exists
                            // but is not ready, as in ESO.
                            None if missing_secret => {
                                errors.push(error(obj, format!("store is not ready: {reason}")));
                                stores.insert(
                                    name.to_string(),
                                    Arc::new(NotReadyStore { kind: "not-ready" }),
                                );
                            }
                            None => errors.push(error(obj, reason + NEVER_SUFFIX)),
                        },
                    }
                }
                ("generators.external-secrets.io", kind) if generators::is_generator_kind(kind) => {
                    // A ClusterGenerator is cluster-scoped: it has no namespace.
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
                    if generators.contains_key(&key) {
                        errors.push(error(obj, "duplicate generator"));
                        continue;
                    }
                    if let Some(k) = old
                        .generators
                        .get(&key)
                        .filter(|k| k.digest == Some(digest_with(obj, &k.secrets)))
                    {
                        generators.insert(key.clone(), k.value.clone());
                        last_good.generators.insert(key, k.clone());
                        continue;
                    }
                    let recording = secrets.recording();
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
                        provider_settings,
                    ) {
                        Ok(generator) => {
                            let used = recording.lookups();
                            let digest = digest_with(obj, &used);
                            last_good.generators.insert(
                                key.clone(),
                                Kept::new(generator.clone()).built_from(digest, used),
                            );
                            generators.insert(key, generator);
                        }
                        Err(e) => match old.generators.get(&key) {
                            Some(k) => {
                                errors.push(error(obj, e.to_string() + KEPT_SUFFIX));
                                keep_note(&mut kept, obj.display_name(), &obj.origin);
                                generators.insert(key.clone(), k.value.clone());
                                last_good.generators.insert(key, k.clone());
                            }
                            None => errors.push(error(obj, e.to_string() + NEVER_SUFFIX)),
                        },
                    }
                }
                ("generators.external-secrets.io", kind)
                    if !generators::is_client_generator_kind(kind) =>
                {
                    errors.push(error(
                        obj,
                        format!("generator kind {kind} is not supported by this server yet"),
                    ));
                }
                _ => {
                    // SecretStore (namespaced; the federation API serves ClusterSecretStores),
                    // ExternalSecret (for the reconciler), Federation (a client-side generator),
                    // and unrelated Kubernetes objects are not served here.
                    tracing::debug!(origin = %obj.origin, object = %obj.display_name(), "not served by the federation server; ignored");
                }
            }
        }

        // An OIDC federation sharing its issuer with another federation: a token both accept
        // is attributed to the first by name (the authenticator's order), and only that
        // federation's Authorizations apply to it. Distinct boundClaims or audiences keep
        // them apart; said at load so that an overlap is not a surprise.
        let mut by_name: Vec<&Federation> = federations.iter().collect();
        by_name.sort_by(|a, b| a.name().cmp(b.name()));
        for (i, later) in by_name.iter().enumerate() {
            let Some(issuer) = later.known_issuer() else {
                continue;
            };
            let first = by_name[..i].iter().find(|earlier| {
                earlier.known_issuer() == Some(issuer)
                    && (earlier.kind() != crate::authn::FederationKind::Kubernetes
                        || later.kind() != crate::authn::FederationKind::Kubernetes)
            });
            if let (Some(first), Some((origin, object))) =
                (first, federation_origins.get(later.name()))
            {
                warnings.push(LoadError {
                    origin: origin.clone(),
                    object: Some(object.clone()),
                    reason: format!(
                        "shares its issuer with {} {}: a token both accept is attributed to {} (the first by name, while its keys are available); keep them apart with boundClaims or audiences",
                        first.kind(),
                        first.name(),
                        first.name()
                    ),
                });
            }
        }

        // Two SpiffeFederations of one trust domain: a JWT-SVID both bundles verify is
        // attributed to the first by name, and only its Authorizations apply.
        for (i, later) in by_name.iter().enumerate() {
            let Some(td) = later.trust_domain() else {
                continue;
            };
            let first = by_name[..i]
                .iter()
                .find(|earlier| earlier.trust_domain() == Some(td));
            if let (Some(first), Some((origin, object))) =
                (first, federation_origins.get(later.name()))
            {
                warnings.push(LoadError {
                    origin: origin.clone(),
                    object: Some(object.clone()),
                    reason: format!(
                        "shares its trust domain with SpiffeFederation {}: a JWT-SVID both bundles verify is attributed to {} (the first by name, while its keys are available); keep them apart with audiences",
                        first.name(),
                        first.name()
                    ),
                });
            }
        }

        // What an `external-secrets.io` group does not hold (reported by `policy validate`).
        let unrecognized_of = |origin: &str, object: String, api_version: &str, kind: &str| {
            api_problem(api_version, kind).map(|reason| Unrecognized {
                error: LoadError {
                    origin: origin.to_owned(),
                    object: Some(object),
                    reason,
                },
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
            })
        };
        let mut unrecognized: Vec<Unrecognized> = objects
            .iter()
            .filter_map(|o| unrecognized_of(&o.origin, o.display_name(), &o.api_version, &o.kind))
            .collect();
        unrecognized.extend(self.authorizations.values().filter_map(|e| {
            unrecognized_of(
                &e.origin,
                format!("Authorization/{}", e.name),
                &e.api_version,
                "Authorization",
            )
        }));

        // Authorizations: the first of one name wins; one that does not check keeps its last
        // good form.
        let mut authorizations: Vec<Arc<CheckedAuthorization>> =
            Vec::with_capacity(self.authorizations.len());
        let mut names: HashSet<&str> = HashSet::with_capacity(self.authorizations.len());
        let authorization_error = |origin: &str, name: &str, reason: String| {
            METRICS
                .load_errors
                .with_label_values(&["Authorization"])
                .inc();
            LoadError {
                origin: origin.to_owned(),
                object: Some(format!("Authorization/{name}")),
                reason,
            }
        };
        for entry in self.authorizations.values() {
            if !names.insert(entry.name.as_str()) {
                errors.push(authorization_error(
                    &entry.origin,
                    &entry.name,
                    "duplicate Authorization name".to_owned(),
                ));
                continue;
            }
            match &entry.checked {
                Ok(checked) => {
                    last_good
                        .authorizations
                        .insert(entry.name.clone(), checked.clone());
                    authorizations.push(checked.clone());
                }
                Err(reason) => match old.authorizations.get(&entry.name) {
                    Some(good) => {
                        errors.push(authorization_error(
                            &entry.origin,
                            &entry.name,
                            format!("{reason}{KEPT_SUFFIX}"),
                        ));
                        keep_note(
                            &mut kept,
                            format!("Authorization/{}", entry.name),
                            &entry.origin,
                        );
                        last_good
                            .authorizations
                            .insert(entry.name.clone(), good.clone());
                        authorizations.push(good.clone());
                    }
                    None => errors.push(authorization_error(
                        &entry.origin,
                        &entry.name,
                        format!("{reason}{NEVER_SUFFIX}"),
                    )),
                },
            }
        }

        // References to what does not exist: the Authorization is in force, but that part
        // of it grants nothing until the object appears.
        for a in &authorizations {
            let spec = a.spec();
            let mut missing: Vec<String> = Vec::new();
            let fed = &spec.federation_ref.name;
            // The kind the Authorization names must prove the principal type its federation
            // proves (a KubernetesFederation's ServiceAccounts; an OIDC federation's — any
            // of OIDCFederation and its presets — subjects): otherwise it grants nothing.
            let wanted = crate::authn::FederationKind::from_kind(&spec.federation_ref.kind)
                .unwrap_or(crate::authn::FederationKind::Kubernetes);
            if !fed.is_empty()
                && !federations.iter().any(|f| {
                    f.name() == fed && f.kind().principal_kind() == wanted.principal_kind()
                })
            {
                missing.push(format!("{wanted} {fed}"));
            }
            for s in &spec.allowed_cluster_secret_stores {
                if !stores.contains_key(s) {
                    missing.push(format!("ClusterSecretStore {s}"));
                }
            }
            for g in &spec.allowed_generators {
                // Looked up as the API looks it up: a ClusterGenerator has no namespace
                // (before: its canonical `<cluster>` namespace was looked up, so every
                // ClusterGenerator an Authorization named was reported missing).
                let key = crate::ledger::GeneratorRef {
                    namespace: g.namespace.clone(),
                    kind: g.kind.clone(),
                    name: g.name.clone(),
                }
                .lookup_key();
                if !generators.contains_key(&key) {
                    missing.push(format!("{} {}/{}", g.kind, g.namespace, g.name));
                }
            }
            if !missing.is_empty() {
                warnings.push(LoadError {
                    origin: a.origin().to_owned(),
                    object: Some(format!("Authorization/{}", a.name())),
                    reason: format!("{MISSING_PREFIX}{}", missing.join(", ")),
                });
            }
        }

        // Objects the source kept as last read because their file (or document) could not
        // be read this time.
        if !self.stale.is_empty() {
            let stale = |origin: &str| self.stale.iter().any(|s| inside(origin, s));
            for obj in self.objects.values().filter(|o| stale(&o.origin)) {
                keep_note(&mut kept, obj.display_name(), &obj.origin);
            }
            for entry in self.authorizations.values().filter(|e| stale(&e.origin)) {
                keep_note(
                    &mut kept,
                    format!("Authorization/{}", entry.name),
                    &entry.origin,
                );
            }
        }

        // Policy files: compile; each file that fails takes its last good form.
        let mut policy_files: Vec<PolicyFile> = self.policy_files.values().cloned().collect();
        // `principal.claims` holds what the loaded OIDC federations hand to policies.
        let claims: BTreeSet<String> = federations
            .iter()
            .flat_map(|f| f.exposed_claims().iter().cloned())
            .collect();
        let (mut engine, first_errors) = PolicyEngine::build_checked_with_claims(
            authorizations.clone(),
            &policy_files,
            &self.cache,
            &claims,
        );
        let mut substituted = false;
        let mut old_files: HashSet<PathBuf> = HashSet::new();
        let mut reported: Vec<PolicyLoadError> = Vec::new();
        for mut e in first_errors {
            if e.object == "policy file" {
                let slot = policy_files
                    .iter()
                    .position(|f| f.path.display().to_string() == e.origin);
                let good = slot.and_then(|i| old.policy_files.get(&policy_files[i].path));
                match (good, slot) {
                    (Some(good), Some(i)) => {
                        old_files.insert(good.path.clone());
                        policy_files[i] = good.clone();
                        keep_note(&mut kept, e.object.clone(), &e.origin);
                        e.reason.push_str(KEPT_SUFFIX);
                        substituted = true;
                    }
                    (_, Some(_)) => e.reason.push_str(NEVER_SUFFIX),
                    _ => {}
                }
            }
            reported.push(e);
        }
        let final_errors = if substituted {
            let (again, errs) = PolicyEngine::build_checked_with_claims(
                authorizations,
                &policy_files,
                &self.cache,
                &claims,
            );
            engine = again;
            errs
        } else {
            reported.clone()
        };
        // A last good form that no longer fits with the rest (e.g. a policy id now taken) is
        // reported too.
        for e in &final_errors {
            if !reported
                .iter()
                .any(|r| r.object == e.object && r.origin == e.origin)
            {
                reported.push(e.clone());
            }
        }
        for f in &policy_files {
            let shown = f.path.display().to_string();
            if !final_errors
                .iter()
                .any(|e| e.object == "policy file" && e.origin == shown)
            {
                last_good.policy_files.insert(f.path.clone(), f.clone());
            }
        }
        for e in reported {
            METRICS.load_errors.with_label_values(&["policy"]).inc();
            errors.push(LoadError {
                origin: e.origin,
                object: Some(e.object),
                reason: e.reason,
            });
        }
        for w in engine.load_warnings() {
            warnings.push(LoadError {
                origin: w.origin.clone(),
                object: Some(w.object.clone()),
                reason: w.reason.clone(),
            });
        }
        let policies = Arc::new(engine);
        METRICS.policies.set(policies.policy_count() as i64);

        Snapshot {
            generation: previous.map_or(1, |p| p.generation + 1),
            stores,
            generators,
            federations,
            policies,
            errors,
            warnings,
            kept,
            unrecognized,
            last_good,
        }
    }
}

/// Records that `object` serves in its last good form.
fn keep_note(kept: &mut Vec<KeptObject>, object: String, origin: &str) {
    kept.push(KeptObject {
        object,
        origin: origin.to_owned(),
    });
}

const KEPT_SUFFIX: &str = "; its last good form stays in force";
const NEVER_SUFFIX: &str = "; it never loaded, so it is not served and grants nothing";

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding 5 (issue 13): kinds, groups and versions of the `external-secrets.io`
    /// family the loader does not know are named; every known form and other groups pass.
    #[test]
    fn api_problem_names_unknown_kinds_groups_and_versions() {
        for (api_version, kind) in [
            ("federation.external-secrets.io/v1alpha1", "Authorization"),
            (
                "identity.federation.external-secrets.io/v1alpha1",
                "OIDCFederation",
            ),
            ("external-secrets.io/v1", "ClusterSecretStore"),
            ("external-secrets.io/v1beta1", "ExternalSecret"),
            ("external-secrets.io/v1alpha1", "PushSecret"),
            ("generators.external-secrets.io/v1alpha1", "Password"),
            ("v1", "Secret"),
            ("apps/v1", "Deployment"),
            ("example.com/v1", "Authorisation"),
        ] {
            assert_eq!(api_problem(api_version, kind), None, "{api_version} {kind}");
        }
        for (api_version, kind, says) in [
            (
                "federation.external-secrets.io/v1alpha1",
                "Authorisation",
                "unknown kind Authorisation",
            ),
            (
                "external-secrets.io/v1",
                "PushSecret",
                "apiVersion external-secrets.io/v1 is not served for PushSecret",
            ),
            (
                "federation.external-secrets.io/v1",
                "Authorization",
                "not served for Authorization (federation.external-secrets.io/v1alpha1)",
            ),
            (
                "federation.external-secrets.io",
                "Authorization",
                "not served",
            ),
            (
                "identity.external-secrets.io/v1",
                "KubernetesFederation",
                "unknown API group identity.external-secrets.io",
            ),
            (
                "generators.external-secrets.io/v1",
                "Password",
                "not served for Password",
            ),
        ] {
            let problem = api_problem(api_version, kind).unwrap_or_default();
            assert!(problem.contains(says), "{api_version} {kind}: {problem}");
        }
        // The builder records them, Authorizations included; it loads what it loaded before.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "apiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorisation\nmetadata: {name: a}\n---\napiVersion: federation.external-secrets.io/v2\nkind: Authorization\nmetadata: {name: b}\nspec:\n  federationRef: {kind: KubernetesFederation, name: f}\n  subject: {issuer: 'https://i', subject: 'system:serviceaccount:ns:sa'}\n",
        )
        .unwrap();
        let snapshot = load(dir.path());
        let found: Vec<(&str, &str)> = snapshot
            .unrecognized
            .iter()
            .map(|u| (u.kind.as_str(), u.api_version.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("Authorisation", "federation.external-secrets.io/v1alpha1"),
                ("Authorization", "federation.external-secrets.io/v2"),
            ]
        );
        assert_eq!(snapshot.policies.authorizations().len(), 1);
    }
    use std::path::Path;

    use crate::authn::Identity;
    use crate::authz::{Action, Resource};

    fn source(dir: &Path) -> DirectorySource {
        DirectorySource {
            manifests: dir.to_path_buf(),
            policies: None,
            provider_settings: ProviderSettings::default(),
        }
    }

    fn load(dir: &Path) -> Snapshot {
        source(dir).load()
    }

    /// A builder holding the manifests of `yaml` (one file).
    fn builder_of(yaml: &str) -> SnapshotBuilder {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
        let mut scanner = DirectoryScanner::new(dir.path().to_path_buf(), None);
        let mut builder = SnapshotBuilder::new(ProviderSettings::default());
        scanner.scan(&mut |e| builder.apply(e));
        builder
    }

    /// Review (issue 18 in Kubernetes mode): objects are ordered by kind there, so a new
    /// `OIDCFederation` named like an `OktaFederation` in force (or a `KubernetesFederation`
    /// named like a `SpiffeFederation`) took over its name — its Authorizations (same
    /// principal type) and every policy on `Esi::Federation::"<name>"` — and the one in
    /// force stopped serving. The federation in force keeps its name; on a first load the
    /// first in order still does.
    #[test]
    fn a_new_federation_of_another_kind_does_not_take_over_a_name_in_force() {
        let okta = "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: OktaFederation\nmetadata: {name: shared}\nspec: {domain: 'https://dev-1.okta.com', audiences: [esi]}\n";
        let oidc = "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: OIDCFederation\nmetadata: {name: shared}\nspec: {issuer: 'https://evil.example.com', audiences: [esi]}\n";
        let kinds = |snap: &Snapshot| -> Vec<(String, &'static str)> {
            snap.federations
                .iter()
                .map(|f| (f.name().to_owned(), f.kind().as_str()))
                .collect()
        };
        let first = builder_of(okta).build(None);
        assert_eq!(kinds(&first), [("shared".to_owned(), "OktaFederation")]);
        // The OIDCFederation comes first in object order.
        let both = builder_of(&format!("{oidc}---\n{okta}"));
        let next = both.build(Some(&first));
        assert_eq!(kinds(&next), [("shared".to_owned(), "OktaFederation")]);
        let errors: Vec<String> = next.errors.iter().map(ToString::to_string).collect();
        assert!(
            errors.iter().any(|e| e.contains("OIDCFederation/shared")
                && e.contains("duplicate federation name: OktaFederation shared")),
            "{errors:?}"
        );
        // Without a federation in force, the first in order holds the name, as before.
        assert_eq!(
            kinds(&both.build(None)),
            [("shared".to_owned(), "OIDCFederation")]
        );
    }

    /// Review (issue 18 in Kubernetes mode): with no federation in force (a first load,
    /// i.e. after a restart), of two objects of different kinds sharing a name the oldest by
    /// `metadata.creationTimestamp` holds it, not the first in (group, kind) order, so a
    /// restart does not hand a name to the newcomer that was refused while the server ran.
    /// Without timestamps (directory mode) or with equal ones, the first in order, as
    /// before; a federation in force keeps its name whatever the timestamps say.
    #[test]
    fn on_a_first_load_the_oldest_federation_holds_a_shared_name() {
        let kube = "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: KubernetesFederation\nmetadata: {name: shared}\nspec: {url: 'https://k.example.com'}\n";
        let oidc = "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: OIDCFederation\nmetadata: {name: shared}\nspec: {issuer: 'https://oidc.example.com', audiences: [esi]}\n";
        let kinds = |snap: &Snapshot| -> Vec<(String, &'static str)> {
            snap.federations
                .iter()
                .map(|f| (f.name().to_owned(), f.kind().as_str()))
                .collect()
        };
        let at = |t: &str| Some(t.parse::<jiff::Timestamp>().unwrap());
        let with_times = |kube_at, oidc_at| {
            let mut b = builder_of(&format!("{kube}---\n{oidc}"));
            for obj in b.objects.values_mut() {
                obj.created = if obj.kind == "KubernetesFederation" {
                    kube_at
                } else {
                    oidc_at
                };
            }
            b
        };
        // Sanity: both build alone.
        assert_eq!(kinds(&builder_of(kube).build(None)).len(), 1);
        assert_eq!(kinds(&builder_of(oidc).build(None)).len(), 1);
        // The OIDCFederation is older: it holds the name although it comes second.
        let older_oidc = with_times(at("2026-01-02T00:00:00Z"), at("2026-01-01T00:00:00Z"));
        let first = older_oidc.build(None);
        assert_eq!(kinds(&first), [("shared".to_owned(), "OIDCFederation")]);
        let errors: Vec<String> = first.errors.iter().map(ToString::to_string).collect();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("KubernetesFederation/shared")
                    && e.contains("duplicate federation name: OIDCFederation shared")),
            "{errors:?}"
        );
        // The KubernetesFederation older: it holds it.
        let older_kube = with_times(at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:00Z"));
        assert_eq!(
            kinds(&older_kube.build(None)),
            [("shared".to_owned(), "KubernetesFederation")]
        );
        // Equal or missing timestamps: the first in order.
        for b in [
            with_times(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:00Z")),
            with_times(None, at("2026-01-01T00:00:00Z")),
            with_times(None, None),
        ] {
            assert_eq!(
                kinds(&b.build(None)),
                [("shared".to_owned(), "KubernetesFederation")]
            );
        }
        // In force, it keeps the name even against an older-stamped newcomer.
        let in_force = builder_of(kube).build(None);
        assert_eq!(
            kinds(&older_oidc.build(Some(&in_force))),
            [("shared".to_owned(), "KubernetesFederation")]
        );
    }

    /// Review: `managementAPI` (OktaFederation, PingIdentityFederation) is accepted and
    /// unused, but bounded as the CRD bounds it (`maxProperties`), so directory mode is not
    /// laxer than the API server: more fields, or not an object, and the federation is not
    /// served, with the reason.
    #[test]
    fn management_api_is_bounded_as_the_crd_bounds_it() {
        let block = |n: usize| {
            let fields: Vec<String> = (0..n)
                .map(|i| format!("f{i}: {{name: k, key: t}}"))
                .collect();
            format!("{{{}}}", fields.join(", "))
        };
        let okta = |api: &str| {
            format!(
                "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: OktaFederation\nmetadata: {{name: okta}}\nspec: {{domain: 'https://dev-1.okta.com', audiences: [esi], managementAPI: {api}}}\n"
            )
        };
        let ping = |api: &str| {
            format!(
                "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: PingIdentityFederation\nmetadata: {{name: ping}}\nspec: {{region: eu, environmentId: e, audiences: [esi], managementAPI: {api}}}\n"
            )
        };
        let max = crate::resources::MAX_MANAGEMENT_API_FIELDS;
        let served =
            builder_of(&format!("{}---\n{}", okta(&block(max)), ping(&block(max)))).build(None);
        assert_eq!(served.federations.len(), 2, "{:?}", served.errors);
        let refused =
            builder_of(&format!("{}---\n{}", okta(&block(max + 1)), ping("token"))).build(None);
        assert!(refused.federations.is_empty());
        let errors: Vec<String> = refused.errors.iter().map(ToString::to_string).collect();
        assert!(
            errors.iter().any(|e| e.contains("OktaFederation/okta")
                && e.contains(&format!(
                    "managementAPI has {} fields (at most {max})",
                    max + 1
                ))),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("PingIdentityFederation/ping")
                    && e.contains("managementAPI must be an object")),
            "{errors:?}"
        );
    }

    #[test]
    fn referenced_secrets_put_the_clusters_first_and_cap_each_namespace() {
        let mut yaml = String::from(
            "apiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {name: s}\n\
             spec: {provider: {vault: {server: 'https://v', auth: {tokenSecretRef: {name: zz-admin, namespace: zz, key: t}}}}}\n",
        );
        for i in 0..(MAX_SECRETS_PER_NAMESPACE + 50) {
            yaml.push_str(&format!(
                "---\napiVersion: generators.external-secrets.io/v1alpha1\nkind: VaultDynamicSecret\n\
                 metadata: {{name: g{i}, namespace: aa-tenant}}\n\
                 spec: {{path: p, provider: {{server: 'https://v', auth: {{tokenSecretRef: {{name: t{i:03}, key: t}}}}}}}}\n"
            ));
        }
        yaml.push_str(
            "---\napiVersion: generators.external-secrets.io/v1alpha1\nkind: VaultDynamicSecret\n\
             metadata: {name: g, namespace: bb}\n\
             spec: {path: p, provider: {server: 'https://v', auth: {tokenSecretRef: {name: mine, key: t}}}}\n",
        );
        let refs = builder_of(&yaml).referenced_secrets();
        let pair = NamedObject::secret;
        assert_eq!(refs[0], pair("zz", "zz-admin"), "the cluster's first");
        assert_eq!(
            refs.iter().filter(|r| r.namespace == "aa-tenant").count(),
            MAX_SECRETS_PER_NAMESPACE,
            "one namespace is capped"
        );
        assert!(
            refs.contains(&pair("bb", "mine")),
            "another namespace keeps its own"
        );
        assert_eq!(refs.len(), 1 + MAX_SECRETS_PER_NAMESPACE + 1);
    }

    /// The watch list is complete by construction: every Secret that building a provider or
    /// generator looks up ([`SecretIndex::recording`]) is among the spec's
    /// [`crate::resources::secret_references`], for every field that names a Secret
    /// (vault's `auth.appRole.roleRef`, the kubernetes provider's `server.caProvider`,
    /// `auth.token.bearerToken`, `auth.cert.clientCert`/`clientKey`, …).
    #[test]
    fn every_secret_a_build_looks_up_is_a_watched_reference() {
        use crate::resources::secret_references;
        use serde_json::json;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["esi".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let data: BTreeMap<String, String> = [
            ("token", "eyJ.a.b".to_string()),
            ("ca.crt", cert.pem()),
            ("tls.crt", cert.pem()),
            ("tls.key", key.serialize_pem()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut index = SecretIndex::default();
        let names = [
            "vault-token",
            "role",
            "secret-id",
            "k-ca",
            "bearer",
            "c-crt",
            "c-key",
            "a-id",
            "a-secret",
            "a-session",
            "hook",
            "fed",
            "fed-ca",
            "fed-client-ca",
        ];
        for ns in ["ns", "eso"] {
            for name in names {
                let obj = SecretObject {
                    string_data: data.clone(),
                    ..Default::default()
                };
                index.insert(ns, name, &obj).unwrap();
            }
        }
        let settings = ProviderSettings {
            client_side: true,
            ..ProviderSettings::default()
        };
        let sel = |name: &str, key: &str| json!({"name": name, "key": key});
        let aws_auth = json!({"secretRef": {
            "accessKeyIDSecretRef": sel("a-id", "token"),
            "secretAccessKeySecretRef": sel("a-secret", "token"),
            "sessionTokenSecretRef": sel("a-session", "token")}});
        let remote = json!({
            "server": {"url": "https://esi.example.com", "caRef": sel("fed-ca", "ca.crt")},
            "auth": {"tokenSecretRef": sel("fed", "token"),
                     "caCertSecretRef": sel("fed-client-ca", "ca.crt")}});
        let stores = [
            json!({"vault": {"server": "https://v", "path": "secret",
                "auth": {"tokenSecretRef": sel("vault-token", "token")}}}),
            json!({"vault": {"server": "https://v", "path": "secret",
                "auth": {"appRole": {"roleRef": sel("role", "token"),
                                     "secretRef": sel("secret-id", "token")}}}}),
            json!({"kubernetes": {
                "server": {"url": "https://k",
                           "caProvider": {"type": "Secret", "name": "k-ca", "key": "ca.crt"}},
                "auth": {"token": {"bearerToken": sel("bearer", "token")}}}}),
            json!({"kubernetes": {"server": {"url": "https://k"},
                "auth": {"cert": {"clientCert": sel("c-crt", "tls.crt"),
                                  "clientKey": sel("c-key", "tls.key")}}}}),
            json!({"aws": {"service": "SecretsManager", "region": "us-east-1", "auth": aws_auth}}),
            json!({"webhook": {"url": "https://h/x?t={{ .auth.token }}",
                "secrets": [{"name": "auth", "secretRef": {"name": "hook"}}]}}),
            json!({"externalsecrets": {
                "server": remote["server"], "auth": remote["auth"],
                "target": {"clusterSecretStoreName": "vault-prod"}}}),
        ];
        let check = |what: &str,
                     spec: &serde_json::Value,
                     owner: Option<&str>,
                     looked: BTreeSet<SecretName>| {
            assert!(!looked.is_empty(), "{what}: nothing looked up");
            let refs = secret_references(spec, owner);
            // Equal: each spec's every reference was reached (nothing short-circuited), and
            // each was a watched reference.
            assert!(
                looked == refs,
                "{what}: looked up {looked:?}, references {refs:?}"
            );
        };
        for provider in stores {
            let spec = json!({ "provider": provider });
            let parsed: SecretStoreSpec = serde_json::from_value(spec.clone()).unwrap();
            let recording = index.recording();
            let _ = providers::build_provider("s", Some("ns"), &parsed, &recording, &settings);
            check(
                &provider.to_string(),
                &spec,
                Some("ns"),
                recording.lookups(),
            );
        }
        let vault = |auth: serde_json::Value| {
            json!({"path": "/database/creds/app",
                   "provider": {"server": "http://127.0.0.1:1", "auth": auth}})
        };
        let gens = [
            (
                "ECRAuthorizationToken",
                "ns",
                json!({"region": "us-east-1", "auth": aws_auth}),
            ),
            (
                "STSSessionToken",
                "ns",
                json!({"region": "us-east-1", "auth": aws_auth}),
            ),
            (
                "VaultDynamicSecret",
                "ns",
                vault(json!({"tokenSecretRef": sel("vault-token", "token")})),
            ),
            (
                "VaultDynamicSecret",
                "ns",
                vault(json!({"appRole": {
                "roleRef": sel("role", "token"), "secretRef": sel("secret-id", "token")}})),
            ),
            (
                "Webhook",
                "ns",
                json!({"url": "https://h/x?t={{ .auth.token }}",
                "secrets": [{"name": "auth", "secretRef": sel("hook", "token")}]}),
            ),
            (
                "Federation",
                "ns",
                json!({"server": remote["server"], "auth": remote["auth"],
                "generator": {"namespace": "n", "kind": "Fake", "name": "g"}}),
            ),
            (
                "ClusterGenerator",
                "",
                json!({"kind": "VaultDynamicSecret", "generator": {
                "vaultDynamicSecretSpec": vault(json!({"tokenSecretRef":
                    {"name": "vault-token", "key": "token", "namespace": "eso"}}))}}),
            ),
        ];
        for (kind, ns, spec) in gens {
            let recording = index.recording();
            let _ = generators::build_generator_with(kind, ns, "g", &spec, &recording, &settings);
            let owner = (!ns.is_empty()).then_some(ns);
            check(&format!("{kind} {spec}"), &spec, owner, recording.lookups());
        }
    }

    /// `spec.cache` is pruned by a Kubernetes API server (ESO's CRD does not know it); the
    /// annotation form is read in both modes, and both set differently refuse the store.
    #[tokio::test]
    async fn the_cache_annotation_turns_the_cache_on_and_conflicts_are_refused() {
        let store = |name: &str, annotation: Option<&str>, cache: &str| {
            let annotations = annotation
                .map(|a| format!(", annotations: {{federation.external-secrets.io/cache: '{a}'}}"))
                .unwrap_or_default();
            format!(
                "---\napiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\n\
                 metadata: {{name: {name}{annotations}}}\n\
                 spec: {{provider: {{fake: {{data: [{{key: k, value: v}}]}}}}{cache}}}\n"
            )
        };
        let yaml = [
            store("annotated", Some(r#"{"ttl":"30s","maxEntries":10}"#), ""),
            store("both-same", Some(r#"{"ttl":"30s"}"#), ", cache: {ttl: 30s}"),
            store(
                "both-differ",
                Some(r#"{"ttl":"30s"}"#),
                ", cache: {ttl: 60s}",
            ),
            store("bad-annotation", Some("ttl: 30s"), ""),
            store("bad-ttl", Some(r#"{"ttl":"2h"}"#), ""),
            store("plain", None, ""),
        ]
        .concat();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
        let snap = load(dir.path());
        let problems: Vec<String> = snap.errors.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        let problem = |name: &str| {
            problems
                .iter()
                .find(|p| p.contains(&format!("ClusterSecretStore/{name}")))
                .cloned()
                .unwrap_or_default()
        };
        assert!(
            problem("both-differ").contains("spec.cache is set too and says something else"),
            "{problems:?}"
        );
        assert!(
            problem("bad-annotation").contains("must be a JSON object"),
            "{problems:?}"
        );
        assert!(
            problem("bad-ttl").contains("ttl must be more than 0 and at most 1h"),
            "{problems:?}"
        );
        let r = crate::providers::RemoteRef {
            key: "k".into(),
            ..Default::default()
        };
        for (name, cached) in [("annotated", true), ("both-same", true), ("plain", false)] {
            let p = &snap.stores[name];
            p.get_secret(&r).await.unwrap();
            let (v, age) = p.get_secret_with_age(&r).await.unwrap();
            assert_eq!(v, b"v");
            assert_eq!(age.is_some(), cached, "{name}");
        }
    }

    fn sample_identity() -> Identity {
        Identity::of_service_account(
            "current-cluster-federation",
            "https://kubernetes.default.svc.cluster.local",
            "federation-example",
            "federation-sa",
        )
    }

    #[test]
    fn ese_samples_load_as_written() {
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/ese-samples"
        ));
        let snap = load(dir);
        // The one problem is the sample store's token Secret, which the samples do not
        // ship: the store exists but is not ready (as in ESO).
        let problems: Vec<String> = snap.errors.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].contains("ClusterSecretStore/vault-backend"),
            "{problems:?}"
        );
        assert!(problems[0].contains("not ready"), "{problems:?}");
        assert!(snap.stores.contains_key("vault-backend"));
        assert_eq!(snap.federations.len(), 1);
        assert_eq!(snap.federations[0].name(), "current-cluster-federation");
        assert!(snap.generators.contains_key(&GeneratorKey {
            namespace: "federation-example".into(),
            kind: "Fake".into(),
            name: "federation-generator".into(),
        }));
        let who = sample_identity();
        let allowed =
            |action, resource: &Resource| snap.policies.decide(&who, action, resource).allowed;
        assert!(allowed(
            Action::Generate,
            &Resource::Generator {
                namespace: "federation-example".into(),
                kind: "Fake".into(),
                name: "federation-generator".into()
            }
        ));
        assert!(allowed(
            Action::Get,
            &Resource::RemoteKey {
                store: "federation-secret-store".into(),
                key: "any".into()
            }
        ));
        assert!(!allowed(
            Action::Get,
            &Resource::RemoteKey {
                store: "vault-backend".into(),
                key: "any".into()
            }
        ));
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn fed() -> String {
        let keys: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/keys/jwks.json"
        )))
        .unwrap();
        let jwks = serde_json::json!({"keys": [keys["ec-1"]]}).to_string();
        format!(
            "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: KubernetesFederation\nmetadata: {{name: f}}\nspec: {{issuer: 'https://i', jwks: '{jwks}'}}\n"
        )
    }
    const STORE: &str = "apiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {name: s}\nspec: {provider: {fake: {data: [{key: k, value: v}]}}}\n";

    fn authz(store: &str) -> String {
        format!(
            "apiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {{name: a}}\nspec:\n  federationRef: {{kind: KubernetesFederation, name: f}}\n  subject: {{issuer: 'https://i', subject: 'system:serviceaccount:ns:sa'}}\n  allowedClusterSecretStores: [{store}]\n"
        )
    }

    /// Review finding (issue 13): a misspelt `allowedRemoteKeys` was ignored, and the
    /// subject granted every key of the store the line meant to restrict. Now the
    /// Authorization is refused (file, object and field named) and grants nothing; the same
    /// holds for the federation kinds.
    #[test]
    fn unknown_spec_fields_refuse_the_object_instead_of_widening_it() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "fed.yaml", &fed());
        write(dir.path(), "store.yaml", STORE);
        let who = Identity::of_service_account("f", "https://i", "ns", "sa");
        let get = |snap: &Snapshot, key: &str| {
            snap.policies
                .decide(
                    &who,
                    Action::Get,
                    &Resource::RemoteKey {
                        store: "s".into(),
                        key: key.into(),
                    },
                )
                .allowed
        };
        let restricted = |field: &str| format!("{}  {field}: {{s: [k]}}\n", authz("s"));
        write(dir.path(), "a.yaml", &restricted("allowedRemoteKeys"));
        let snap = load(dir.path());
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
        assert!(get(&snap, "k") && !get(&snap, "other"));

        write(dir.path(), "a.yaml", &restricted("allowedRemoteKey"));
        let snap = load(dir.path());
        let problems: Vec<String> = snap.errors.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        for part in [
            "a.yaml",
            "Authorization/a",
            "unknown field spec.allowedRemoteKey (did you mean allowedRemoteKeys?)",
        ] {
            assert!(problems[0].contains(part), "{part}: {problems:?}");
        }
        assert!(!get(&snap, "other") && !get(&snap, "k"), "grants nothing");

        // A federation with an unknown field is refused too (its tokens verify nowhere).
        write(
            dir.path(),
            "fed.yaml",
            &fed().replace("spec: {", "spec: {audience: [x], "),
        );
        write(dir.path(), "a.yaml", &restricted("allowedRemoteKeys"));
        let snap = load(dir.path());
        assert!(
            snap.errors.iter().any(|e| e.to_string().contains(
                "unknown field spec.audience (did you mean audiences?): not a field of KubernetesFederation"
            )),
            "{:?}",
            snap.errors
        );
        assert!(snap.federations.is_empty());
    }

    /// An Authorization naming a ClusterGenerator that exists is not reported as naming
    /// what does not exist (`policy validate` fails on such reports); one naming a
    /// ClusterGenerator that does not exist still is.
    #[test]
    fn an_existing_cluster_generator_is_not_reported_missing() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "fed.yaml", &fed());
        write(
            dir.path(),
            "gen.yaml",
            "apiVersion: generators.external-secrets.io/v1alpha1\nkind: ClusterGenerator\nmetadata: {name: cpw}\nspec: {kind: Password, generator: {passwordSpec: {length: 12}}}\n",
        );
        let grant = |name: &str| {
            format!(
                "apiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {{name: a}}\nspec:\n  federationRef: {{kind: KubernetesFederation, name: f}}\n  subject: {{issuer: 'https://i', subject: 'system:serviceaccount:ns:sa'}}\n  allowedGenerators: [{{name: {name}, kind: ClusterGenerator, namespace: ns}}]\n"
            )
        };
        write(dir.path(), "a.yaml", &grant("cpw"));
        let snap = load(dir.path());
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
        assert!(
            !snap
                .warnings
                .iter()
                .any(|w| w.reason.starts_with(MISSING_PREFIX)),
            "{:?}",
            snap.warnings
        );
        write(dir.path(), "a.yaml", &grant("other"));
        let snap = load(dir.path());
        assert!(
            snap.warnings
                .iter()
                .any(|w| w.reason.starts_with(MISSING_PREFIX) && w.reason.contains("other")),
            "{:?}",
            snap.warnings
        );
    }

    /// Issue 18: OIDC federations (and ESE's presets) load beside Kubernetes ones; names are
    /// unique across kinds; an Authorization's federationRef must name a federation of the
    /// principal kind it grants; OIDC federations sharing an issuer are said; the claims
    /// they hand to policies are in the schema policy files are checked against.
    #[test]
    fn oidc_federations_and_presets_load() {
        let dir = tempfile::tempdir().unwrap();
        let policies = tempfile::tempdir().unwrap();
        let jwks = {
            let keys: serde_json::Value = serde_json::from_str(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/keys/jwks.json"
            )))
            .unwrap();
            serde_json::json!({"keys": [keys["ec-1"]]}).to_string()
        };
        let gh = "https://token.actions.githubusercontent.com";
        write(
            dir.path(),
            "feds.yaml",
            &format!(
                r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: OIDCFederation
metadata: {{name: github}}
spec:
  issuer: {gh}
  audiences: [https://esi.example]
  jwks: '{jwks}'
  boundClaims: {{repository_owner: org}}
  claims: [repository, ref]
---
apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: OIDCFederation
metadata: {{name: github-other-team}}
spec:
  issuer: {gh}
  audiences: [https://esi.example]
  jwks: '{jwks}'
  boundClaims: {{repository_owner: other}}
  claims: [environment]
---
apiVersion: federation.external-secrets.io/v1alpha1
kind: OktaFederation
metadata: {{name: okta-prod}}
spec: {{domain: "https://trial-1038013.okta.com", authorizationServerId: ""}}
---
apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: PingIdentityFederation
metadata: {{name: ping}}
spec: {{region: eu, environmentId: 0b5e6d3a-1111-4a2b-9c3d-2e4f5a6b7c8d}}
---
apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: KubernetesFederation
metadata: {{name: github}}
spec: {{issuer: 'https://i', jwks: '{jwks}'}}
---
apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: OIDCFederation
metadata: {{name: no-audience}}
spec: {{issuer: "https://gitlab.example.com", jwks: '{jwks}'}}
"#
            ),
        );
        write(dir.path(), "store.yaml", STORE);
        let grant = |name: &str, kind: &str, fed: &str| {
            format!(
                "apiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {{name: {name}}}\nspec:\n  federationRef: {{kind: {kind}, name: {fed}}}\n  subject: {{oidc: {{issuer: '{gh}', subject: 'repo:org/app:*'}}}}\n  allowedClusterSecretStores: [s]\n"
            )
        };
        write(
            dir.path(),
            "authz.yaml",
            &[
                grant("ci", "OIDCFederation", "github"),
                grant("ci-as-sa", "KubernetesFederation", "github"),
                grant("ci-okta-kind", "OktaFederation", "github"),
            ]
            .join("---\n"),
        );
        std::fs::write(
            policies.path().join("ci.cedar"),
            "forbid (principal is Esi::OidcSubject, action, resource)\nwhen { principal.claims has ref && principal.claims.ref != \"refs/heads/main\" };\n",
        )
        .unwrap();
        let snap = DirectorySource {
            manifests: dir.path().to_path_buf(),
            policies: Some(policies.path().to_path_buf()),
            provider_settings: ProviderSettings::default(),
        }
        .load();
        let kinds: Vec<(&str, &str)> = snap
            .federations
            .iter()
            .map(|f| (f.name(), f.kind().as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("github", "OIDCFederation"),
                ("github-other-team", "OIDCFederation"),
                ("okta-prod", "OktaFederation"),
                ("ping", "PingIdentityFederation"),
            ]
        );
        let errors: Vec<String> = snap.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("KubernetesFederation/github")
                    && e.contains("duplicate federation name: OIDCFederation github")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("OIDCFederation/no-audience")
                    && e.contains("audiences is required")),
            "{errors:?}"
        );
        let warnings: Vec<String> = snap.warnings.iter().map(ToString::to_string).collect();
        let has = |needle: &str| warnings.iter().any(|w| w.contains(needle));
        assert!(
            has("shares its issuer with OIDCFederation github"),
            "{warnings:#?}"
        );
        assert!(
            has("OktaFederation/okta-prod") && has("no audiences"),
            "{warnings:#?}"
        );
        // The KubernetesFederation kind names no loaded federation of that kind; the
        // preset kind names an OIDC federation like OIDCFederation does.
        assert!(
            has("Authorization/ci-as-sa") && has("KubernetesFederation github"),
            "{warnings:#?}"
        );
        assert!(!has("Authorization/ci-okta-kind"), "{warnings:#?}");
        assert!(!has("Authorization/ci:"), "{warnings:#?}");
        // The policy file reads a claim a federation lists: it loaded, and it holds.
        let main = Identity::of_oidc_subject(
            "github",
            gh,
            "repo:org/app:ref:refs/heads/main",
            &[("ref", "refs/heads/main")],
        );
        let dev = Identity::of_oidc_subject(
            "github",
            gh,
            "repo:org/app:ref:refs/heads/dev",
            &[("ref", "refs/heads/dev")],
        );
        let k = Resource::RemoteKey {
            store: "s".into(),
            key: "k".into(),
        };
        assert!(snap.policies.decide(&main, Action::Get, &k).allowed);
        assert!(!snap.policies.decide(&dev, Action::Get, &k).allowed);
    }

    /// Issue 18 part 2: SpiffeFederations load (ESE's `trustDomain`, the extensions), two
    /// of one trust domain are warned about, a bad one is reported, and a `spiffeID`
    /// Authorization grants SPIFFE workloads of its federation only.
    #[test]
    fn spiffe_federations_load_and_their_authorizations_grant() {
        let dir = tempfile::tempdir().unwrap();
        let policies = tempfile::tempdir().unwrap();
        let bundle = {
            let keys: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/keys/jwks.json"
                ))
                .unwrap(),
            )
            .unwrap();
            let mut key = keys["ec-1"].clone();
            key["use"] = serde_json::json!("jwt-svid");
            serde_json::json!({"keys": [key]}).to_string()
        };
        let fed = |name: &str, td: &str, extra: &str| {
            format!(
                "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: SpiffeFederation\nmetadata: {{name: {name}}}\nspec:\n  trustDomain: {td}\n  audiences: [esi]\n  bundle: '{bundle}'\n{extra}---\n"
            )
        };
        write(
            dir.path(),
            "feds.yaml",
            &[
                fed("spire", "example.org", ""),
                fed("spire-copy", "example.org", ""),
                fed("bad-td", "Example.org", ""),
                fed(
                    "typo",
                    "example.net",
                    "  bundleEndpiont: {url: 'https://x'}\n",
                ),
            ]
            .concat(),
        );
        write(dir.path(), "store.yaml", STORE);
        write(
            dir.path(),
            "authz.yaml",
            "apiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {name: api}\nspec:\n  federationRef: {kind: SpiffeFederation, name: spire}\n  subject: {spiffe: {spiffeID: 'spiffe://example.org/ns/prod/sa/*'}}\n  allowedClusterSecretStores: [s]\n",
        );
        let snap = DirectorySource {
            manifests: dir.path().to_path_buf(),
            policies: Some(policies.path().to_path_buf()),
            provider_settings: ProviderSettings::default(),
        }
        .load();
        let kinds: Vec<(&str, &str)> = snap
            .federations
            .iter()
            .map(|f| (f.name(), f.kind().as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("spire", "SpiffeFederation"),
                ("spire-copy", "SpiffeFederation")
            ]
        );
        let errors: Vec<String> = snap.errors.iter().map(ToString::to_string).collect();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("SpiffeFederation/bad-td") && e.contains("trustDomain")),
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("SpiffeFederation/typo") && e.contains("bundleEndpiont")),
            "{errors:#?}"
        );
        let warnings: Vec<String> = snap.warnings.iter().map(ToString::to_string).collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("SpiffeFederation/spire-copy")
                    && w.contains("shares its trust domain with SpiffeFederation spire")),
            "{warnings:#?}"
        );
        assert!(
            !warnings.iter().any(|w| w.contains("Authorization/api")),
            "{warnings:#?}"
        );
        let k = Resource::RemoteKey {
            store: "s".into(),
            key: "k".into(),
        };
        let who = |fed: &str, id: &str| Identity::of_spiffe_workload(fed, id).unwrap();
        let decide = |id: &Identity| snap.policies.decide(id, Action::Get, &k).allowed;
        assert!(decide(&who("spire", "spiffe://example.org/ns/prod/sa/api")));
        assert!(!decide(&who("spire", "spiffe://example.org/ns/dev/sa/api")));
        assert!(!decide(&who(
            "spire-copy",
            "spiffe://example.org/ns/prod/sa/api"
        )));
        // An OIDC subject whose subject reads like the SPIFFE ID is not a SPIFFE workload.
        let oidc = Identity::of_oidc_subject(
            "spire",
            "spiffe://example.org",
            "spiffe://example.org/ns/prod/sa/api",
            &[],
        );
        assert!(!decide(&oidc));
    }

    fn can_get(snap: &Snapshot, store: &str) -> bool {
        let who = Identity::of_service_account("f", "https://i", "ns", "sa");
        let resource = Resource::RemoteKey {
            store: store.into(),
            key: "k".into(),
        };
        snap.policies.decide(&who, Action::Get, &resource).allowed
    }

    #[test]
    fn bad_objects_are_skipped_and_reported_with_origin() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "fed.yaml", &fed());
        write(dir.path(), "store.yaml", STORE);
        write(
            dir.path(),
            "bad.yaml",
            "apiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {name: broken}\nspec: {provider: {nosuch: {}}}\n---\napiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {name: s}\nspec: {provider: {fake: {data: []}}}\n",
        );
        write(dir.path(), "garbage.yaml", "a: [unclosed");
        let snap = load(dir.path());
        assert!(snap.stores.contains_key("s"));
        assert_eq!(snap.federations.len(), 1);
        let text: Vec<String> = snap.errors.iter().map(ToString::to_string).collect();
        // Files load in path order: the later definition of `s` is the duplicate.
        assert!(
            text.iter()
                .any(|e| e.contains("store.yaml#0") && e.contains("duplicate")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.contains("garbage.yaml") && e.contains("invalid YAML")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.contains("ClusterSecretStore/broken") && e.contains("unknown provider")),
            "{text:?}"
        );
        assert!(!snap.stores.contains_key("broken"));
    }

    #[test]
    fn a_reload_with_a_broken_authorization_keeps_the_last_good_policies() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "fed.yaml", &fed());
        write(dir.path(), "store.yaml", STORE);
        write(dir.path(), "authz.yaml", &authz("s"));
        let mut source = DirectoryReloader::new(&source(dir.path()));
        let first = source.load(None);
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        assert!(can_get(&first, "s"));

        // A valid change applies.
        write(dir.path(), "authz.yaml", &authz("other"));
        let second = source.load(Some(&first));
        assert!(second.kept.is_empty());
        assert!(!can_get(&second, "s"));
        assert!(can_get(&second, "other"));
        assert_eq!(second.generation, first.generation + 1);

        // A broken one does not: the last good set stays in force.
        write(
            dir.path(),
            "authz.yaml",
            "apiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {name: a}\nspec:\n  federationRef: {kind: KubernetesFederation, name: f}\n  subject: {spiffe: {spiffeID: 'spiffe://x'}}\n  allowedClusterSecretStores: [s]\n",
        );
        let third = source.load(Some(&second));
        assert_eq!(third.kept.len(), 1, "{:?}", third.kept);
        assert_eq!(third.kept[0].object, "Authorization/a");
        assert!(can_get(&third, "other"));
        assert!(!can_get(&third, "s"));
        assert!(
            third
                .errors
                .iter()
                .any(|e| e.to_string().contains("Authorization/a"))
        );

        // At startup there is no last good set: the good policies load, the bad are denied.
        let fresh = DirectoryReloader::new(&self::source(dir.path())).load(None);
        assert!(fresh.kept.is_empty());
        assert!(!can_get(&fresh, "s"));
        assert!(!can_get(&fresh, "other"));
    }

    fn authz_named(name: &str, subject_sa: &str, store: &str) -> String {
        format!(
            "apiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {{name: {name}}}\nspec:\n  federationRef: {{kind: KubernetesFederation, name: f}}\n  subject: {{issuer: 'https://i', subject: 'system:serviceaccount:ns:{subject_sa}'}}\n  allowedClusterSecretStores: [{store}]\n"
        )
    }

    /// Issue 19 finding 7: one broken object must not freeze the rest of the reload.
    #[test]
    fn last_good_is_kept_per_object() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = tempfile::tempdir().unwrap();
        write(dir.path(), "fed.yaml", &fed());
        write(dir.path(), "store.yaml", STORE);
        write(dir.path(), "authz.yaml", &authz("s"));
        write(dir.path(), "other.yaml", &authz_named("b", "other", "s"));
        let source = DirectorySource {
            manifests: dir.path().to_path_buf(),
            policies: Some(pdir.path().to_path_buf()),
            provider_settings: ProviderSettings::default(),
        };
        let mut source = DirectoryReloader::new(&source);
        let first = source.load(None);
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        assert!(can_get(&first, "s"));

        // An unrelated Authorization with a typo, a deleted Authorization, a new forbid.
        write(
            dir.path(),
            "typo.yaml",
            "apiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {name: typo}\nspec:\n  federationRef: {kind: KubernetesFederation, name: f}\n  subject: {issuer: 'https://i', subject: 'system:serviceaccount:ns:sa'}\n  allowedClusterSecretStores: [vault-prod]\n  allowedRemoteKeys: {vault-prdo: ['*']}\n",
        );
        let second = source.load(Some(&first));
        assert!(second.kept.is_empty(), "{:?}", second.kept);
        assert!(
            second
                .errors
                .iter()
                .any(|e| e.to_string().contains("Authorization/typo")
                    && e.reason.contains("never loaded")),
            "{:?}",
            second.errors
        );
        assert!(can_get(&second, "s"));
        std::fs::remove_file(dir.path().join("authz.yaml")).unwrap();
        let third = source.load(Some(&second));
        assert!(
            !can_get(&third, "s"),
            "a deleted Authorization is gone at once"
        );
        write(dir.path(), "authz.yaml", &authz("s"));
        let fourth = source.load(Some(&third));
        assert!(can_get(&fourth, "s"));
        write(
            pdir.path(),
            "deny.cedar",
            "forbid (principal, action, resource);",
        );
        let fifth = source.load(Some(&fourth));
        assert!(!can_get(&fifth, "s"), "a new forbid applies at once");

        // A broken forbid keeps its last good form; a broken manifest file keeps its objects.
        write(
            pdir.path(),
            "deny.cedar",
            "forbid (principal, action, resource) when {",
        );
        write(dir.path(), "authz.yaml", "a: [unclosed");
        let sixth = source.load(Some(&fifth));
        assert!(!can_get(&sixth, "s"));
        assert!(
            sixth.kept.iter().any(|k| k.object == "policy file"),
            "{:?}",
            sixth.kept
        );
        std::fs::remove_file(pdir.path().join("deny.cedar")).unwrap();
        let seventh = source.load(Some(&sixth));
        assert!(
            can_get(&seventh, "s"),
            "objects of an unparsable file keep their last good form"
        );
        assert!(
            seventh.kept.iter().any(|k| k.object == "Authorization/a"),
            "{:?}",
            seventh.kept
        );

        // A store that stops building keeps its last good form; a new broken one is absent.
        write(
            dir.path(),
            "store.yaml",
            "apiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {name: s}\nspec: {provider: {nosuch: {}}}\n---\napiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {name: n}\nspec: {provider: {nosuch: {}}}\n",
        );
        let eighth = source.load(Some(&seventh));
        assert!(eighth.stores.contains_key("s"));
        assert!(!eighth.stores.contains_key("n"));
        assert!(
            eighth
                .kept
                .iter()
                .any(|k| k.object == "ClusterSecretStore/s")
        );
    }

    /// Issue 9: a reload reads only the files that changed and rebuilds only what they
    /// hold: an Authorization in an untouched file is the same checked object.
    #[test]
    fn unchanged_authorizations_are_neither_read_nor_checked_again() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "fed.yaml", &fed());
        write(dir.path(), "store.yaml", STORE);
        write(dir.path(), "authz.yaml", &authz("s"));
        write(dir.path(), "b.yaml", &authz_named("b", "other", "s"));
        let mut source = DirectoryReloader::new(&source(dir.path()));
        let first = source.reload(None).expect("the first scan builds");
        assert!(source.reload(Some(&first)).is_none(), "nothing changed");
        write(dir.path(), "b.yaml", &authz_named("b", "other", "x"));
        let second = source.reload(Some(&first)).expect("a change builds");
        assert!(Arc::ptr_eq(
            &first.last_good.authorizations["a"],
            &second.last_good.authorizations["a"]
        ));
        assert!(!Arc::ptr_eq(
            &first.last_good.authorizations["b"],
            &second.last_good.authorizations["b"]
        ));
        assert!(can_get(&second, "s"));
    }

    /// A file rewritten within the file system's timestamp granularity, same length: the
    /// change is still seen (the stamp of a recent file is not trusted).
    #[test]
    fn a_same_size_rewrite_right_after_a_scan_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "fed.yaml", &fed());
        write(dir.path(), "store.yaml", STORE);
        write(dir.path(), "authz.yaml", &authz("s"));
        let mut source = DirectoryReloader::new(&source(dir.path()));
        let first = source.load(None);
        write(dir.path(), "authz.yaml", &authz("t"));
        let second = source.reload(Some(&first)).expect("the change is seen");
        assert!(!can_get(&second, "s"));
    }

    /// A store's `esi_store_circuit_state{store}` series follows the store: kept across a
    /// rebuild (the new build exists before the old snapshot is dropped), removed with the
    /// store (before: left at its last value forever).
    #[test]
    fn a_removed_store_loses_its_circuit_series_and_a_rebuilt_one_keeps_it() {
        let has_series = || {
            METRICS
                .render()
                .contains("esi_store_circuit_state{store=\"series-snap\"}")
        };
        let store = STORE.replace("name: s}", "name: series-snap}");
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "fed.yaml", &fed());
        write(dir.path(), "authz.yaml", &authz("series-snap"));
        write(dir.path(), "store.yaml", &store);
        let mut source = DirectoryReloader::new(&source(dir.path()));
        let first = source.load(None);
        assert!(first.stores.contains_key("series-snap"));
        assert!(has_series());
        // Rebuilt (its spec changed), then the old snapshot goes: the series stays.
        write(
            dir.path(),
            "store.yaml",
            &store.replace("value: v", "value: w"),
        );
        let second = source.load(Some(&first));
        assert!(!Arc::ptr_eq(
            &first.stores["series-snap"],
            &second.stores["series-snap"]
        ));
        drop(first);
        assert!(has_series(), "the rebuilt store's series survives");
        // Removed from the manifests: once the last snapshot holding it goes, so does
        // its series.
        std::fs::remove_file(dir.path().join("store.yaml")).unwrap();
        let third = source.load(Some(&second));
        assert!(!third.stores.contains_key("series-snap"));
        assert!(has_series(), "still served by the snapshot in use");
        drop(second);
        assert!(!has_series(), "{}", METRICS.render());
    }

    /// Issue 9: an object whose spec (and the Secrets) did not change is reused as built —
    /// the same provider and generator instances, so no new HTTP client or Vault login —
    /// while a changed one is built again.
    #[test]
    fn unchanged_stores_and_generators_are_reused_across_reloads() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "fed.yaml", &fed());
        write(dir.path(), "store.yaml", STORE);
        write(
            dir.path(),
            "gen.yaml",
            "apiVersion: generators.external-secrets.io/v1alpha1\nkind: Password\nmetadata: {name: pw, namespace: ns}\nspec: {length: 12}\n",
        );
        write(dir.path(), "authz.yaml", &authz("s"));
        let mut source = DirectoryReloader::new(&source(dir.path()));
        let first = source.load(None);
        let key = GeneratorKey {
            namespace: "ns".into(),
            kind: "Password".into(),
            name: "pw".into(),
        };
        // An unrelated change: another Authorization.
        write(dir.path(), "authz.yaml", &authz("other"));
        let second = source.load(Some(&first));
        assert!(Arc::ptr_eq(&first.stores["s"], &second.stores["s"]));
        assert!(Arc::ptr_eq(
            &first.generators[&key],
            &second.generators[&key]
        ));
        assert!(!can_get(&second, "s"), "the Authorization change applied");
        // The store's own spec changes: built again; the generator is still reused.
        write(
            dir.path(),
            "store.yaml",
            &STORE.replace("value: v", "value: w"),
        );
        let third = source.load(Some(&second));
        assert!(!Arc::ptr_eq(&second.stores["s"], &third.stores["s"]));
        assert!(Arc::ptr_eq(
            &second.generators[&key],
            &third.generators[&key]
        ));
        // A Secret neither looks up changes (another tenant's): both are reused.
        write(
            dir.path(),
            "secret.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: x, namespace: ns}\nstringData: {a: b}\n",
        );
        let fourth = source.load(Some(&third));
        assert!(Arc::ptr_eq(&third.stores["s"], &fourth.stores["s"]));
        assert!(Arc::ptr_eq(
            &third.generators[&key],
            &fourth.generators[&key]
        ));
    }

    /// A Secret (namespace `eso`) with `data`, as YAML.
    fn secret_yaml(name: &str, data: &[(&str, &str)]) -> String {
        let data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "eso"}, "stringData": data})
        .to_string()
    }

    fn ca_pem() -> String {
        rcgen::generate_simple_self_signed(vec!["k".into()])
            .unwrap()
            .cert
            .pem()
    }

    /// Each store is built from its own Secrets only: another Secret changing (any
    /// tenant's) keeps it as built (its AssumeRole session, tokens, cache and circuit),
    /// while one it looks up changing, going or appearing builds it again, through
    /// whatever field names it (`roleRef`, `caProvider`, `bearerToken`).
    #[test]
    fn a_store_is_rebuilt_for_its_own_secrets_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        write(
            p,
            "vault.yaml",
            "apiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {name: v}\n\
             spec: {provider: {vault: {server: 'https://v', path: secret, auth: {appRole: {\
             roleRef: {name: role, namespace: eso, key: id}, secretRef: {name: sid, namespace: eso, key: s}}}}}}\n",
        );
        write(
            p,
            "kube.yaml",
            "apiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {name: k}\n\
             spec: {provider: {kubernetes: {\
             server: {url: 'https://k', caProvider: {type: Secret, name: k-ca, namespace: eso, key: ca.crt}},\
             auth: {token: {bearerToken: {name: bearer, namespace: eso, key: token}}}}}}\n",
        );
        write(
            p,
            "late.yaml",
            "apiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {name: late}\n\
             spec: {provider: {vault: {server: 'https://v', path: secret, auth: {\
             tokenSecretRef: {name: late-token, namespace: eso, key: token}}}}}\n",
        );
        write(p, "role.yaml", &secret_yaml("role", &[("id", "r1")]));
        write(p, "sid.yaml", &secret_yaml("sid", &[("s", "s1")]));
        write(p, "ca.yaml", &secret_yaml("k-ca", &[("ca.crt", &ca_pem())]));
        write(p, "bearer.yaml", &secret_yaml("bearer", &[("token", "t1")]));
        write(p, "other.yaml", &secret_yaml("other", &[("x", "1")]));
        let mut source = DirectoryReloader::new(&source(p));
        let mut prev = source.load(None);
        assert_eq!(prev.stores["v"].kind(), "vault", "{:?}", prev.errors);
        assert_eq!(prev.stores["k"].kind(), "kubernetes", "{:?}", prev.errors);
        assert_eq!(prev.stores["late"].kind(), "not-ready");
        // Applies `change` and reloads; says which stores were built again.
        let mut step = |name: &str, text: Option<&str>| -> Vec<&'static str> {
            match text {
                Some(text) => write(p, name, text),
                None => std::fs::remove_file(p.join(name)).unwrap(),
            }
            let next = source.load(Some(&prev));
            let rebuilt = ["v", "k", "late"]
                .into_iter()
                .filter(|s| !Arc::ptr_eq(&prev.stores[*s], &next.stores[*s]))
                .collect();
            prev = next;
            rebuilt
        };
        // The not-ready store is retried on every build; the others are kept.
        let other = secret_yaml("other", &[("x", "2")]);
        assert_eq!(step("other.yaml", Some(&other)), ["late"]);
        let role = secret_yaml("role", &[("id", "r2")]);
        assert_eq!(step("role.yaml", Some(&role)), ["v", "late"]);
        let ca = secret_yaml("k-ca", &[("ca.crt", &ca_pem())]);
        assert_eq!(step("ca.yaml", Some(&ca)), ["k", "late"]);
        let bearer = secret_yaml("bearer", &[("token", "t2")]);
        assert_eq!(step("bearer.yaml", Some(&bearer)), ["k", "late"]);
        // A Secret it reads goes: kept in its last good form; back with another value:
        // built again.
        assert_eq!(step("bearer.yaml", None), ["late"]);
        let bearer = secret_yaml("bearer", &[("token", "t3")]);
        assert_eq!(step("bearer.yaml", Some(&bearer)), ["k", "late"]);
        // A Secret it looked up and did not find appears: built.
        let late = secret_yaml("late-token", &[("token", "t")]);
        assert_eq!(step("late.yaml.secret.yaml", Some(&late)), ["late"]);
        assert_eq!(
            step("other.yaml", Some(&secret_yaml("other", &[("x", "3")]))),
            Vec::<&str>::new(),
            "the late store is built now, and kept"
        );
        assert_eq!(prev.stores["late"].kind(), "vault", "{:?}", prev.errors);
    }
}
