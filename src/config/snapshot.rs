//! One immutable view of every resource the server serves, built from raw objects.
//!
//! Requests read a snapshot through an `Arc` without locks; a reload builds a new one
//! and swaps it in atomically. The policy set has one extra rule: a reload whose
//! policies do not all compile keeps the last good policy engine.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::loader::{self, LoadError, RawObject};
use super::resources::{
    AuthorizationSpec, KubernetesFederationSpec, SecretObject, SecretStoreSpec,
};
use super::secrets::SecretIndex;
use crate::authn::Federation;
use crate::authz::{AuthorizationSource, PolicyEngine, PolicyFile};
use crate::generators::{self, Generator};
use crate::metrics::METRICS;
use crate::providers::{
    self, FindRequest, ProviderError, ProviderSettings, RemoteRef, SecretProvider,
};

/// Identifies a generator: namespace, kind, name (as in the ESE URL).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GeneratorKey {
    /// Namespace.
    pub namespace: String,
    /// Kind (`Password`, `Fake`, …).
    pub kind: String,
    /// Name.
    pub name: String,
}

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
    /// True when this load's policies failed and the previous engine was kept.
    pub kept_previous_policies: bool,
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
            kept_previous_policies: false,
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
    async fn find(&self, _: &FindRequest) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        Err(ProviderError::Unavailable("store is not ready".into()))
    }
}

fn group(api_version: &str) -> &str {
    api_version.split('/').next().unwrap_or_default()
}

fn spec_of<T: serde::de::DeserializeOwned + Default>(obj: &RawObject) -> Result<T, String> {
    match obj.body.get("spec") {
        None | Some(serde_json::Value::Null) => Ok(T::default()),
        Some(spec) => {
            serde_json::from_value(spec.clone()).map_err(|e| format!("invalid spec: {e}"))
        }
    }
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
    /// A fingerprint of every file the source reads (paths, sizes, modification times),
    /// cheap enough to poll.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        fingerprint_dir(&self.manifests, &mut hasher);
        if let Some(p) = &self.policies {
            hasher.update(b"\0policies\0");
            fingerprint_dir(p, &mut hasher);
        }
        hasher.finalize().into()
    }

    /// Reads the directories and builds a snapshot. `previous` supplies the generation
    /// and the policy engine to keep when the new policies do not all compile.
    pub fn load(&self, previous: Option<&Snapshot>) -> Snapshot {
        let (objects, mut errors) = loader::read_manifest_dir(&self.manifests);
        let (policy_files, policy_read_errors) = match &self.policies {
            Some(dir) => loader::read_text_files(dir, &["cedar"]),
            None => (Vec::new(), Vec::new()),
        };
        let policy_files: Vec<PolicyFile> = policy_files
            .into_iter()
            .map(|f| PolicyFile {
                path: f.path,
                text: f.text,
            })
            .collect();
        let mut snapshot = build(&objects, &policy_files, previous, &self.provider_settings);
        let policy_read_failed = !policy_read_errors.is_empty();
        errors.extend(policy_read_errors);
        errors.append(&mut snapshot.errors);
        snapshot.errors = errors;
        if policy_read_failed && let Some(prev) = previous {
            // A policy file we could not read is a policy set we cannot trust to be whole.
            snapshot.policies = prev.policies.clone();
            snapshot.kept_previous_policies = true;
        }
        snapshot
    }
}

fn fingerprint_dir(dir: &Path, hasher: &mut Sha256) {
    let mut errors = Vec::new();
    let files = loader::file_stamps(dir, &["yaml", "yml", "json", "cedar"], &mut errors);
    for (path, len, modified) in files {
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update(len.to_le_bytes());
        hasher.update(modified.to_le_bytes());
    }
    hasher.update((errors.len() as u64).to_le_bytes());
}

/// Builds a snapshot from objects and policy files (no I/O besides what providers do lazily).
pub fn build(
    objects: &[RawObject],
    policy_files: &[PolicyFile],
    previous: Option<&Snapshot>,
    provider_settings: &ProviderSettings,
) -> Snapshot {
    let mut errors = Vec::new();

    // Secrets first: stores and generators resolve their references against them.
    let mut secrets = SecretIndex::default();
    for obj in objects
        .iter()
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

    let mut federations: Vec<Federation> = Vec::new();
    let mut authorizations: Vec<AuthorizationSource> = Vec::new();
    let mut stores: HashMap<String, Arc<dyn SecretProvider>> = HashMap::new();
    let mut generators: HashMap<GeneratorKey, Arc<dyn Generator>> = HashMap::new();

    for obj in objects {
        let g = group(&obj.api_version);
        let name = obj.metadata.name.as_str();
        match (g, obj.kind.as_str()) {
            ("v1", "Secret") => {}
            (
                "identity.federation.external-secrets.io" | "federation.external-secrets.io",
                "KubernetesFederation",
            ) => {
                let built = spec_of::<KubernetesFederationSpec>(obj)
                    .and_then(|spec| Federation::from_spec(name, &spec).map_err(|e| e.to_string()));
                match built {
                    Ok(f) if federations.iter().any(|x| x.name() == name) => {
                        drop(f);
                        errors.push(error(obj, "duplicate KubernetesFederation name"));
                    }
                    Ok(f) => {
                        for w in f.warnings() {
                            tracing::warn!(federation = name, origin = %obj.origin, "{w}");
                        }
                        federations.push(f);
                    }
                    Err(reason) => errors.push(error(obj, reason)),
                }
            }
            ("federation.external-secrets.io", "Authorization") => {
                match spec_of::<AuthorizationSpec>(obj) {
                    Ok(spec) => {
                        if authorizations.iter().any(|a| a.name == name) {
                            errors.push(error(obj, "duplicate Authorization name"));
                        } else {
                            authorizations.push(AuthorizationSource {
                                name: name.to_string(),
                                origin: obj.origin.clone(),
                                spec,
                            });
                        }
                    }
                    Err(reason) => errors.push(error(obj, reason)),
                }
            }
            ("external-secrets.io", "ClusterSecretStore") => {
                if stores.contains_key(name) {
                    errors.push(error(obj, "duplicate ClusterSecretStore name"));
                    continue;
                }
                let spec = match spec_of::<SecretStoreSpec>(obj) {
                    Ok(s) => s,
                    Err(reason) => {
                        errors.push(error(obj, reason));
                        continue;
                    }
                };
                match providers::build_provider(name, None, &spec, &secrets, provider_settings) {
                    Ok(p) => {
                        stores.insert(name.to_string(), p);
                    }
                    Err(e) => {
                        errors.push(error(obj, format!("store is not ready: {e}")));
                        stores.insert(
                            name.to_string(),
                            Arc::new(NotReadyStore { kind: "not-ready" }),
                        );
                    }
                }
            }
            ("generators.external-secrets.io", kind) if generators::is_generator_kind(kind) => {
                let namespace = obj
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let key = GeneratorKey {
                    namespace: namespace.clone(),
                    kind: kind.to_string(),
                    name: name.to_string(),
                };
                if generators.contains_key(&key) {
                    errors.push(error(obj, "duplicate generator"));
                    continue;
                }
                let spec = obj
                    .body
                    .get("spec")
                    .cloned()
                    .unwrap_or(serde_json::Value::Null);
                match generators::build_generator(kind, &namespace, name, &spec, &secrets) {
                    Ok(generator) => {
                        generators.insert(key, generator);
                    }
                    Err(e) => errors.push(error(obj, e.to_string())),
                }
            }
            ("generators.external-secrets.io", kind) if kind != "Federation" => {
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

    let (engine, policy_errors) = PolicyEngine::build(&authorizations, policy_files);
    let mut kept_previous_policies = false;
    let policies = match previous {
        Some(prev) if !policy_errors.is_empty() => {
            kept_previous_policies = true;
            prev.policies.clone()
        }
        _ => Arc::new(engine),
    };
    for e in policy_errors {
        METRICS.load_errors.with_label_values(&["policy"]).inc();
        errors.push(LoadError {
            origin: e.origin.clone(),
            object: Some(e.object.clone()),
            reason: e.reason.clone(),
        });
    }
    METRICS.policies.set(policies.policy_count() as i64);

    Snapshot {
        generation: previous.map_or(1, |p| p.generation + 1),
        stores,
        generators,
        federations,
        policies,
        errors,
        kept_previous_policies,
    }
}
