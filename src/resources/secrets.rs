//! Kubernetes `Secret` objects known to the server, so that `…SecretRef`s resolve.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{SecretKeySelector, SecretObject};

/// Errors resolving a secret reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretRefError {
    /// The reference has no namespace and none could be defaulted.
    #[error("secret reference {name:?} needs a namespace")]
    NoNamespace {
        /// Secret name.
        name: String,
    },
    /// No such Secret.
    #[error("secret {namespace}/{name} not found")]
    SecretNotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The reference names a namespace other than the referring object's. ESO's rule for
    /// `SecretStore` and namespaced generator refs: otherwise whoever may write an object
    /// in one namespace could read every namespace's Secrets through it.
    #[error("secret reference {name:?} names namespace {referenced:?}, not its object's {owner:?}")]
    OtherNamespace {
        /// Secret name.
        name: String,
        /// The referring object's namespace.
        owner: String,
        /// The namespace the reference names.
        referenced: String,
    },
    /// The Secret has no such key.
    #[error("secret {namespace}/{name} has no key {key:?}")]
    KeyNotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Missing key.
        key: String,
    },
}

impl SecretRefError {
    /// Whether the Secret or its key is absent (it may still arrive), as opposed to a
    /// reference that can never resolve as written.
    pub fn is_missing(&self) -> bool {
        matches!(
            self,
            SecretRefError::SecretNotFound { .. } | SecretRefError::KeyNotFound { .. }
        )
    }
}

/// A Secret's (namespace, name).
pub type SecretName = (String, String);

/// Secrets by namespace and name, values decoded. Built once per snapshot.
///
/// A [`recording`](Self::recording) view of an index notes every Secret that
/// [`resolve`](Self::resolve) looks up (found or not), so that what a store or generator
/// was built from is known by construction: it is rebuilt when exactly those Secrets
/// change, appear or go.
#[derive(Default, Clone)]
pub struct SecretIndex {
    secrets: Arc<HashMap<SecretName, BTreeMap<String, Vec<u8>>>>,
    lookups: Option<Arc<Mutex<BTreeSet<SecretName>>>>,
}

// Values never appear in Debug output.
impl std::fmt::Debug for SecretIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.secrets.keys().collect();
        names.sort();
        f.debug_struct("SecretIndex")
            .field("secrets", &names)
            .finish()
    }
}

/// A `Secret` whose `data` is not valid base64.
#[derive(Debug, thiserror::Error)]
#[error("data key {key:?} is not valid base64")]
pub struct BadSecretData {
    /// Offending key.
    pub key: String,
}

impl SecretIndex {
    /// Adds a Secret object (decoding `data`, with `stringData` winning as in Kubernetes).
    pub fn insert(
        &mut self,
        namespace: &str,
        name: &str,
        secret: &SecretObject,
    ) -> Result<(), BadSecretData> {
        let mut values = BTreeMap::new();
        for (k, v) in &secret.data {
            let bytes = STANDARD
                .decode(v.trim())
                .map_err(|_| BadSecretData { key: k.clone() })?;
            values.insert(k.clone(), bytes);
        }
        for (k, v) in &secret.string_data {
            values.insert(k.clone(), v.as_bytes().to_vec());
        }
        Arc::make_mut(&mut self.secrets).insert((namespace.to_string(), name.to_string()), values);
        Ok(())
    }

    /// The same Secrets, with a fresh record of lookups: every Secret that
    /// [`resolve`](Self::resolve) looks up through the view (or a clone of it) is noted,
    /// whether it exists or not; [`lookups`](Self::lookups) tells which. A reference the
    /// owner may not follow (another namespace, none) is refused before any lookup and not
    /// noted: no Secret can change that.
    pub fn recording(&self) -> SecretIndex {
        SecretIndex {
            secrets: Arc::clone(&self.secrets),
            lookups: Some(Arc::new(Mutex::new(BTreeSet::new()))),
        }
    }

    /// The Secrets looked up through this [`recording`](Self::recording) view so far
    /// (empty for an index that does not record).
    pub fn lookups(&self) -> BTreeSet<SecretName> {
        self.lookups
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// A digest of the current contents of `names` (each one's decoded data, or that it
    /// is absent): equal digests mean whatever was built from those Secrets would be built
    /// the same. Values never leave this function but as a SHA-256.
    pub fn digest_of<'a>(&self, names: impl IntoIterator<Item = &'a SecretName>) -> [u8; 32] {
        let mut h = Sha256::new();
        let field = |h: &mut Sha256, bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        for name in names {
            field(&mut h, name.0.as_bytes());
            field(&mut h, name.1.as_bytes());
            match self.secrets.get(name) {
                None => h.update([0u8]),
                Some(data) => {
                    h.update([1u8]);
                    h.update((data.len() as u64).to_be_bytes());
                    for (k, v) in data {
                        field(&mut h, k.as_bytes());
                        field(&mut h, v);
                    }
                }
            }
        }
        h.finalize().into()
    }

    /// Resolves `selector` for an object in `owner_namespace` (`None` when the object is
    /// cluster-scoped). A namespaced object's ref resolves in its own namespace and may not
    /// name another ([`SecretRefError::OtherNamespace`]); a cluster-scoped object's ref must
    /// name its namespace ([`SecretRefError::NoNamespace`]).
    pub fn resolve(
        &self,
        selector: &SecretKeySelector,
        owner_namespace: Option<&str>,
    ) -> Result<&[u8], SecretRefError> {
        if let (Some(owner), Some(referenced)) = (owner_namespace, selector.namespace.as_deref())
            && owner != referenced
        {
            return Err(SecretRefError::OtherNamespace {
                name: selector.name.clone(),
                owner: owner.to_string(),
                referenced: referenced.to_string(),
            });
        }
        let namespace = selector
            .namespace
            .as_deref()
            .or(owner_namespace)
            .ok_or_else(|| SecretRefError::NoNamespace {
                name: selector.name.clone(),
            })?;
        let id = (namespace.to_string(), selector.name.clone());
        if let Some(lookups) = &self.lookups {
            lookups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone());
        }
        let secret = self
            .secrets
            .get(&id)
            .ok_or_else(|| SecretRefError::SecretNotFound {
                namespace: namespace.to_string(),
                name: selector.name.clone(),
            })?;
        secret
            .get(&selector.key)
            .map(Vec::as_slice)
            .ok_or_else(|| SecretRefError::KeyNotFound {
                namespace: namespace.to_string(),
                name: selector.name.clone(),
                key: selector.key.clone(),
            })
    }

    /// Number of secrets indexed.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// True when no secret is indexed.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

/// The Secrets (namespace, name) an object's `spec` references, for watching only those
/// (Kubernetes mode). A reference is an object under a field named `secretRef` or ending in
/// `SecretRef` (`auth.tokenSecretRef`, `accessKeyIDSecretRef`, a webhook's
/// `secrets[].secretRef`, whose key comes from its templates), or the `externalsecrets`
/// provider's `server.caRef`, or any field whose value has the shape of a
/// `SecretKeySelector` (a `name` and a `key`; with a `type`, only `Secret`): vault's
/// `auth.appRole.roleRef`, the kubernetes provider's `server.caProvider`,
/// `auth.token.bearerToken`, `auth.cert.clientCert` and `clientKey`, whatever a provider
/// adds next. This walks the spec and collects each such object's `name`, in its
/// `namespace` or else the owner's. A test builds every provider and generator with a
/// [`SecretIndex::recording`] view and checks each Secret it looked up is listed here.
/// A reference the owner may not follow (another namespace than a namespaced owner's, or
/// none for a cluster-scoped owner) is left out: [`SecretIndex::resolve`] refuses it
/// anyway. Depth is bounded ([`MAX_REFERENCE_DEPTH`]).
pub fn secret_references(
    spec: &serde_json::Value,
    owner_namespace: Option<&str>,
) -> std::collections::BTreeSet<(String, String)> {
    let mut out = std::collections::BTreeSet::new();
    collect_references(spec, owner_namespace, 0, &mut out);
    out
}

/// Deepest nesting of a spec that [`secret_references`] walks.
pub const MAX_REFERENCE_DEPTH: usize = 32;

fn is_secret_ref(field: &str, value: &serde_json::Value) -> bool {
    use serde_json::Value;
    // `caRef`: the `externalsecrets` provider's `server.caRef` (a Secret key with the CA).
    if field == "secretRef" || field == "caRef" || field.ends_with("SecretRef") {
        return true;
    }
    // A `SecretKeySelector` by shape (`roleRef`, `bearerToken`, `clientCert`, …), or a
    // `caProvider` of type Secret (not ConfigMap).
    value.get("name").is_some_and(Value::is_string)
        && value.get("key").is_some_and(Value::is_string)
        && value
            .get("type")
            .is_none_or(|t| t.as_str() == Some("Secret"))
}

fn collect_references(
    value: &serde_json::Value,
    owner: Option<&str>,
    depth: usize,
    out: &mut std::collections::BTreeSet<(String, String)>,
) {
    use serde_json::Value;
    if depth > MAX_REFERENCE_DEPTH {
        return;
    }
    match value {
        Value::Object(map) => {
            for (field, v) in map {
                if is_secret_ref(field, v)
                    && let Some(name) = v.get("name").and_then(Value::as_str)
                    && !name.is_empty()
                {
                    let referenced = v.get("namespace").and_then(Value::as_str);
                    let namespace = match (owner, referenced) {
                        (Some(o), Some(r)) if o != r => None,
                        (_, Some(r)) => Some(r),
                        (Some(o), None) => Some(o),
                        (None, None) => None,
                    };
                    if let Some(ns) = namespace {
                        out.insert((ns.to_string(), name.to_string()));
                    }
                }
                collect_references(v, owner, depth + 1, out);
            }
        }
        Value::Array(items) => {
            for v in items {
                collect_references(v, owner, depth + 1, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_every_secret_ref_the_owner_may_follow() {
        use serde_json::json;
        let refs = |spec: serde_json::Value, owner: Option<&str>| -> Vec<(String, String)> {
            secret_references(&spec, owner).into_iter().collect()
        };
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        // A ClusterSecretStore (cluster-scoped): only refs that name their namespace.
        assert_eq!(
            refs(
                json!({"provider": {"vault": {"auth": {
                    "tokenSecretRef": {"name": "vault", "key": "token", "namespace": "eso"},
                    "appRole": {"secretRef": {"name": "no-namespace", "key": "k"}}}}}}),
                None
            ),
            [pair("eso", "vault")]
        );
        // A namespaced generator: its own namespace, never another.
        assert_eq!(
            refs(
                json!({"auth": {"secretRef": {
                    "accessKeyIDSecretRef": {"name": "aws", "key": "id"},
                    "secretAccessKeySecretRef": {"name": "aws2", "key": "s", "namespace": "team"},
                    "sessionTokenSecretRef": {"name": "elsewhere", "key": "t", "namespace": "other"}}}}),
                Some("team")
            ),
            [pair("team", "aws"), pair("team", "aws2")]
        );
        // A webhook generator's secrets list; non-reference fields named `name` are not refs.
        assert_eq!(
            refs(
                json!({"url": "https://x", "secrets": [{"name": "auth", "secretRef": {"name": "hook", "key": "t"}}]}),
                Some("ns")
            ),
            [pair("ns", "hook")]
        );
        // The externalsecrets provider's CA and token (a client's SecretStore).
        assert_eq!(
            refs(
                json!({"provider": {"externalsecrets": {
                    "server": {"url": "https://x", "caRef": {"name": "fed-ca", "key": "ca.crt"}},
                    "auth": {"tokenSecretRef": {"name": "fed", "key": "token"}}}}}),
                Some("apps")
            ),
            [pair("apps", "fed"), pair("apps", "fed-ca")]
        );
        // Bounded depth: a hostile spec nested beyond the limit is not walked further.
        let mut deep = json!({"tokenSecretRef": {"name": "deep", "key": "k"}});
        for _ in 0..100 {
            deep = json!({ "x": deep });
        }
        assert!(refs(deep, Some("ns")).is_empty());
    }

    /// Every Secret a provider or generator resolves is a reference, whatever its field is
    /// called: vault's `auth.appRole.roleRef`, the kubernetes provider's
    /// `server.caProvider` (type Secret; a ConfigMap is not a Secret), `auth.token.bearerToken`,
    /// `auth.cert.clientCert` and `auth.cert.clientKey`.
    #[test]
    fn references_include_selectors_not_named_secret_ref() {
        use serde_json::json;
        let refs = |spec: serde_json::Value, owner: Option<&str>| -> Vec<(String, String)> {
            secret_references(&spec, owner).into_iter().collect()
        };
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            refs(
                json!({"provider": {"vault": {"server": "https://v", "auth": {"appRole": {
                    "roleRef": {"name": "role", "key": "id"},
                    "secretRef": {"name": "sid", "key": "s"}}}}}}),
                Some("team")
            ),
            [pair("team", "role"), pair("team", "sid")]
        );
        assert_eq!(
            refs(
                json!({"provider": {"kubernetes": {
                    "server": {"url": "https://k", "caProvider": {"type": "Secret", "name": "ca", "key": "ca.crt"}},
                    "auth": {"token": {"bearerToken": {"name": "bearer", "key": "token"}}}}}}),
                Some("team")
            ),
            [pair("team", "bearer"), pair("team", "ca")]
        );
        assert_eq!(
            refs(
                json!({"provider": {"kubernetes": {
                    "server": {"url": "https://k", "caProvider": {"type": "ConfigMap", "name": "cm", "key": "ca.crt"}},
                    "auth": {"cert": {"clientCert": {"name": "crt", "key": "tls.crt", "namespace": "eso"},
                                      "clientKey": {"name": "key", "key": "tls.key", "namespace": "eso"}}}}}}),
                None
            ),
            [pair("eso", "crt"), pair("eso", "key")]
        );
    }

    #[test]
    fn resolves_data_and_string_data() {
        let mut idx = SecretIndex::default();
        let obj = SecretObject {
            data: [("token".to_string(), "cm9vdA==".to_string())].into(),
            string_data: [("plain".to_string(), "p".to_string())].into(),
        };
        idx.insert("ns", "vault", &obj).unwrap();
        let sel = SecretKeySelector {
            name: "vault".into(),
            key: "token".into(),
            namespace: None,
        };
        assert_eq!(idx.resolve(&sel, Some("ns")).unwrap(), b"root");
        assert_eq!(
            idx.resolve(&sel, None),
            Err(SecretRefError::NoNamespace {
                name: "vault".into()
            })
        );
        let missing = SecretKeySelector {
            key: "nope".into(),
            ..sel.clone()
        };
        assert!(matches!(
            idx.resolve(&missing, Some("ns")),
            Err(SecretRefError::KeyNotFound { .. })
        ));
        assert!(!format!("{idx:?}").contains("root"));
    }

    #[test]
    fn a_namespaced_owner_reads_only_its_namespace() {
        let mut idx = SecretIndex::default();
        let obj = SecretObject {
            string_data: [("token".to_string(), "root".to_string())].into(),
            ..Default::default()
        };
        idx.insert("other", "vault", &obj).unwrap();
        let sel = SecretKeySelector {
            name: "vault".into(),
            key: "token".into(),
            namespace: Some("other".into()),
        };
        // The Secret exists, but an object of `team` may not name `other`.
        assert_eq!(
            idx.resolve(&sel, Some("team")),
            Err(SecretRefError::OtherNamespace {
                name: "vault".into(),
                owner: "team".into(),
                referenced: "other".into(),
            })
        );
        assert_eq!(idx.resolve(&sel, Some("other")).unwrap(), b"root");
        // A cluster-scoped owner names the namespace itself.
        assert_eq!(idx.resolve(&sel, None).unwrap(), b"root");
    }

    #[test]
    fn rejects_bad_base64() {
        let mut idx = SecretIndex::default();
        let obj = SecretObject {
            data: [("k".to_string(), "%%%".to_string())].into(),
            ..Default::default()
        };
        assert!(idx.insert("ns", "s", &obj).is_err());
    }
}
