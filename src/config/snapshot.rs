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
                    // A missing credentials Secret may appear later: the store exists but
                    // is not ready, as in ESO. Any other problem is a bad object: skipped.
                    Err(e @ providers::ProviderConfigError::SecretRef { .. }) => {
                        errors.push(error(obj, format!("store is not ready: {e}")));
                        stores.insert(
                            name.to_string(),
                            Arc::new(NotReadyStore { kind: "not-ready" }),
                        );
                    }
                    Err(e) => errors.push(error(obj, e.to_string())),
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
                    &secrets,
                    provider_settings,
                ) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::Identity;
    use crate::authz::{Action, Resource};

    fn load(dir: &Path) -> Snapshot {
        DirectorySource {
            manifests: dir.to_path_buf(),
            policies: None,
            provider_settings: ProviderSettings::default(),
        }
        .load(None)
    }

    fn sample_identity() -> Identity {
        Identity {
            federation: "current-cluster-federation".into(),
            issuer: "https://kubernetes.default.svc.cluster.local".into(),
            subject: "system:serviceaccount:federation-example:federation-sa".into(),
            namespace: "federation-example".into(),
            service_account: "federation-sa".into(),
            service_account_uid: None,
            pod_name: None,
            pod_uid: None,
            expires_at: None,
        }
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

    fn can_get(snap: &Snapshot, store: &str) -> bool {
        let who = Identity {
            federation: "f".into(),
            issuer: "https://i".into(),
            subject: "system:serviceaccount:ns:sa".into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
            service_account_uid: None,
            pod_name: None,
            pod_uid: None,
            expires_at: None,
        };
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
        let source = DirectorySource {
            manifests: dir.path().to_path_buf(),
            policies: None,
            provider_settings: ProviderSettings::default(),
        };
        let first = source.load(None);
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        assert!(can_get(&first, "s"));

        // A valid change applies.
        write(dir.path(), "authz.yaml", &authz("other"));
        let second = source.load(Some(&first));
        assert!(!second.kept_previous_policies);
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
        assert!(third.kept_previous_policies);
        assert!(can_get(&third, "other"));
        assert!(!can_get(&third, "s"));
        assert!(
            third
                .errors
                .iter()
                .any(|e| e.to_string().contains("Authorization/a"))
        );

        // At startup there is no last good set: the good policies load, the bad are denied.
        let fresh = source.load(None);
        assert!(!fresh.kept_previous_policies);
        assert!(!can_get(&fresh, "s"));
    }

    #[test]
    fn fingerprint_changes_with_content() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "fed.yaml", &fed());
        let source = DirectorySource {
            manifests: dir.path().to_path_buf(),
            policies: None,
            provider_settings: ProviderSettings::default(),
        };
        let a = source.fingerprint();
        assert_eq!(a, source.fingerprint());
        write(dir.path(), "store.yaml", STORE);
        assert_ne!(a, source.fingerprint());
    }
}
