//! Secret providers: the backends a `SecretStore`/`ClusterSecretStore` points at.
//!
//! Each provider lives in its own file and parses its own block of `spec.provider`
//! (ESO field names), so adding a provider touches only [`build_provider`]'s match.
//! Every provider is wrapped in [`metered::Metered`], the one place that records
//! backend metrics, then in [`resilient::Resilient`] (retries, a circuit breaker per
//! store) and, when the store's `spec.cache` asks for it, in [`cache::Cached`]. Errors of both enums are safe to show callers: they never hold a
//! secret value or a token.

pub(crate) mod aws;
pub mod cache;
mod externalsecrets;
mod fake;
pub(crate) mod kubernetes;
mod metered;
pub mod property;
pub mod resilient;
pub(crate) mod tls;
pub(crate) mod vault;
pub(crate) mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::resources::SecretIndex;
use crate::resources::SecretRefError;
use crate::resources::SecretStoreSpec;

pub use externalsecrets::ExternalSecretsProvider;
pub use fake::FakeProvider;
pub use metered::Metered;
pub use vault::VaultProvider;

/// ESO's `remoteRef`: which secret (and which part of it) to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteRef {
    /// The secret's key (path) in the backend.
    pub key: String,
    /// A property inside the secret (dotted path into JSON; exact key wins).
    pub property: Option<String>,
    /// A backend version of the secret.
    pub version: Option<String>,
}

/// ESO's `dataFrom.find`: which secrets to return in bulk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FindRequest {
    /// Restrict the search to secrets under this path.
    pub path: Option<String>,
    /// Keep secrets whose name matches this regular expression.
    pub name_regexp: Option<String>,
    /// Keep secrets carrying all of these tags (exact match).
    pub tags: BTreeMap<String, String>,
}

/// Settings shared by every provider (and generator) instance.
#[derive(Clone)]
pub struct ProviderSettings {
    /// Bound on every single backend call (connect + answer).
    pub timeout: Duration,
    /// Whether this process is a *client* of Federation Servers (the reconciler, tools),
    /// which may build the client-side kinds: the `externalsecrets` store provider and
    /// the `Federation` generator. False (the default, and what `serve` uses): they are
    /// refused when the object loads ([`ProviderConfigError::ClientSideOnly`]). A server
    /// serving such a store would decide on one spelling of a key while the remote server
    /// canonicalizes (and decides on) another (`docs/security.md`, "Federation clients").
    pub client_side: bool,
    /// Where `auth.kubernetes.serviceAccountRef` tokens come from (Kubernetes mode: the
    /// TokenRequest API, [`crate::remote::token_request::KubeTokenRequest`]). `None`
    /// outside a cluster: a store or generator using it fails at use with a message
    /// saying so.
    pub service_account_tokens: Option<Arc<dyn crate::remote::ServiceAccountTokens>>,
    /// Retries and circuit breaker of every store ([`resilient::Resilient`]).
    pub resilience: resilient::StoreResilience,
}

impl ProviderSettings {
    /// The [`resilient::ResilienceSettings`] every store is built with.
    pub fn resilience_settings(&self) -> resilient::ResilienceSettings {
        resilient::ResilienceSettings::new(self.timeout, &self.resilience)
    }
}

impl std::fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("timeout", &self.timeout)
            .field("client_side", &self.client_side)
            .field(
                "service_account_tokens",
                &self.service_account_tokens.is_some(),
            )
            .field("resilience", &self.resilience)
            .finish()
    }
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            timeout: Duration::from_secs(10),
            client_side: false,
            service_account_tokens: None,
            resilience: resilient::StoreResilience::default(),
        }
    }
}

/// How a store's cache answered a read ([`cache::Cached`]); `None` in the `_with_age`
/// results: the backend answered, for this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheAge {
    /// How long ago the value was read from the backend (the RFC 9111 `Age`).
    pub age: Duration,
    /// Served past the store's `ttl` because the backend was down (`staleIfError`): the
    /// answer carries `Warning: 110 - "Response is Stale"`.
    pub stale: bool,
}

/// Decides whether one (canonical) key of a `find` answer may be returned.
pub type KeyFilter<'a> = dyn Fn(&str) -> bool + Send + Sync + 'a;

/// What a store that cannot canonicalize answers (fail closed).
fn not_ready() -> ProviderError {
    ProviderError::Unavailable("store is not ready".into())
}

/// A secret backend, as ESO's `SecretsClient` sees it.
///
/// **Canonical forms.** A caller may spell one backend object several ways (ESO lets a
/// Vault key carry the mount and `data/`). The API turns every reference into the
/// store's one canonical form with [`SecretProvider::canonical_ref`] /
/// [`SecretProvider::canonical_find`] *before* deciding, and hands exactly that form to
/// the backend calls, so the decision, the audit line and the backend call name the
/// same object. Canonicalization is pure (no backend call), idempotent, and refuses
/// (`InvalidRequest`, 400) spellings it cannot map to one object unambiguously. The
/// read methods refuse a reference that is not already canonical. The rule of each
/// provider is in `docs/security.md` ("Canonical forms").
#[async_trait::async_trait]
pub trait SecretProvider: Send + Sync {
    /// The provider kind (`vault`, `fake`), used as a metrics label.
    fn kind(&self) -> &'static str;
    /// The canonical form of `remote` (key, property and version). Stores that cannot
    /// tell refuse (the default: `Unavailable`).
    fn canonical_ref(&self, remote: &RemoteRef) -> Result<RemoteRef, ProviderError> {
        let _ = remote;
        Err(not_ready())
    }
    /// The canonical form of a `find` (its `path`; the regexp and tags are kept).
    fn canonical_find(&self, find: &FindRequest) -> Result<FindRequest, ProviderError> {
        let _ = find;
        Err(not_ready())
    }
    /// ESO GetSecret: the value of `key` (with `property`/`version`). `remote` must be
    /// canonical.
    async fn get_secret(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError>;
    /// ESO GetSecretMap: every property of `key` (values: strings raw, others JSON-encoded).
    /// `remote` must be canonical.
    async fn get_secret_map(
        &self,
        remote: &RemoteRef,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError>;
    /// [`SecretProvider::get_secret`], with the value's age when it was served from the
    /// store's cache ([`cache::Cached`]; `None`: read from the backend for this call).
    async fn get_secret_with_age(
        &self,
        remote: &RemoteRef,
    ) -> Result<(Vec<u8>, Option<CacheAge>), ProviderError> {
        self.get_secret(remote).await.map(|v| (v, None))
    }
    /// [`SecretProvider::get_secret_map`], with the map's age when it was served from the
    /// store's cache.
    async fn get_secret_map_with_age(
        &self,
        remote: &RemoteRef,
    ) -> Result<(BTreeMap<String, Vec<u8>>, Option<CacheAge>), ProviderError> {
        self.get_secret_map(remote).await.map(|m| (m, None))
    }
    /// ESO GetAllSecrets (dataFrom.find): secrets whose name matches, as name -> value.
    /// Names are canonical keys. No per-key decision: [`SecretProvider::find_allowed`]
    /// with a filter that accepts every key (the default; a wrapper overrides it only to
    /// do something else, e.g. [`resilient::Resilient`] retries it).
    async fn find(&self, find: &FindRequest) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        self.find_allowed(find, &|_| true).await
    }
    /// [`SecretProvider::find`], keeping only the keys `allow` accepts; `allow` sees each
    /// canonical key *before* its value is read, so a refused key is never read. `find`
    /// must be canonical.
    async fn find_allowed(
        &self,
        find: &FindRequest,
        allow: &KeyFilter<'_>,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        let _ = (find, allow);
        Err(not_ready())
    }
}

/// The [`SecretProvider`] methods a wrapper (cache, resilience) forwards unchanged to the
/// provider in its field `$inner`: the kind and the canonical forms.
macro_rules! forward_canonical {
    ($inner:ident) => {
        fn kind(&self) -> &'static str {
            self.$inner.kind()
        }

        fn canonical_ref(
            &self,
            remote: &$crate::providers::RemoteRef,
        ) -> Result<$crate::providers::RemoteRef, $crate::providers::ProviderError> {
            self.$inner.canonical_ref(remote)
        }

        fn canonical_find(
            &self,
            find: &$crate::providers::FindRequest,
        ) -> Result<$crate::providers::FindRequest, $crate::providers::ProviderError> {
            self.$inner.canonical_find(find)
        }
    };
}
pub(crate) use forward_canonical;

/// A failed backend call. Messages are safe to show callers (no values, no tokens).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The secret (or its property or version) does not exist.
    #[error("secret not found")]
    NotFound,
    /// The request itself is malformed (bad key, bad regexp, …).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The provider cannot do this (e.g. `find` on KV v1).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The backend refused or answered something unusable.
    #[error("backend error: {0}")]
    Backend(String),
    /// The backend could not be reached or failed (5xx).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time.
    #[error("backend call timed out")]
    Timeout,
}

impl ProviderError {
    /// A short stable name of the variant (metrics label, problem type).
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::NotFound => "not_found",
            ProviderError::InvalidRequest(_) => "invalid_request",
            ProviderError::Unsupported(_) => "unsupported",
            ProviderError::Backend(_) => "backend",
            ProviderError::Unavailable(_) => "unavailable",
            ProviderError::Timeout => "timeout",
        }
    }
}

/// A store whose provider cannot be built. Messages name fields, never values.
#[derive(Debug, thiserror::Error)]
pub enum ProviderConfigError {
    /// `spec.provider` is empty.
    #[error("store {store}: spec.provider names no provider")]
    NoProvider {
        /// Store name.
        store: String,
    },
    /// `spec.provider` names more than one provider.
    #[error("store {store}: spec.provider must name exactly one provider, found {names:?}")]
    SeveralProviders {
        /// Store name.
        store: String,
        /// The provider keys found.
        names: Vec<String>,
    },
    /// `spec.provider` names a provider this build does not know.
    #[error("store {store}: unknown provider {name:?}")]
    UnknownProvider {
        /// Store name.
        store: String,
        /// The provider key.
        name: String,
    },
    /// A field of the provider block is missing or malformed.
    #[error("store {store}: invalid spec.provider.{provider}: {reason}")]
    InvalidField {
        /// Store name.
        store: String,
        /// Provider key.
        provider: &'static str,
        /// What is wrong (field names only).
        reason: String,
    },
    /// The provider block asks for something this build does not support.
    #[error("store {store}: unsupported in spec.provider.{provider}: {reason}")]
    Unsupported {
        /// Store name.
        store: String,
        /// Provider key.
        provider: &'static str,
        /// What is unsupported.
        reason: String,
    },
    /// A client-side provider (`externalsecrets`) in a process that is not a client
    /// ([`ProviderSettings::client_side`] false: the federation server).
    #[error(
        "store {store}: the {provider} provider is a client of another Federation Server; this server does not serve it (it would decide on one spelling of a key while the remote server canonicalizes another); use it in the reconciler"
    )]
    ClientSideOnly {
        /// Store name.
        store: String,
        /// Provider key.
        provider: &'static str,
    },
    /// The extension `spec.cache` is malformed or out of bounds.
    #[error("store {store}: invalid spec.cache: {reason}")]
    InvalidCache {
        /// Store name.
        store: String,
        /// What is wrong (field names and bounds only).
        reason: String,
    },
    /// A `…SecretRef` does not resolve.
    #[error("store {store}: {field}: {source}")]
    SecretRef {
        /// Store name.
        store: String,
        /// The referring field (`auth.tokenSecretRef`, …).
        field: &'static str,
        /// Why it does not resolve.
        source: SecretRefError,
    },
}

impl ProviderConfigError {
    /// Whether a referenced Secret or key is absent (it may still arrive: the store keeps
    /// its last good build meanwhile), as opposed to a configuration that cannot work.
    pub fn is_missing_secret(&self) -> bool {
        matches!(self, ProviderConfigError::SecretRef { source, .. } if source.is_missing())
    }
}

/// What a provider's constructor needs besides its own block.
pub(crate) struct BuildContext<'a> {
    /// Store name (for messages).
    pub store: &'a str,
    /// The store's namespace (None for a ClusterSecretStore).
    pub namespace: Option<&'a str>,
    /// Known Kubernetes Secrets.
    pub secrets: &'a SecretIndex,
    /// Shared settings.
    pub settings: &'a ProviderSettings,
}

impl BuildContext<'_> {
    /// Parses a provider block into its serde struct, with a value-free message on error.
    pub fn parse<T: serde::de::DeserializeOwned>(
        &self,
        provider: &'static str,
        block: &serde_json::Value,
    ) -> Result<T, ProviderConfigError> {
        serde_json::from_value(block.clone()).map_err(|e| ProviderConfigError::InvalidField {
            store: self.store.to_string(),
            provider,
            reason: safe_serde_message(&e),
        })
    }

    /// An `InvalidField` error for this store.
    pub fn invalid(
        &self,
        provider: &'static str,
        reason: impl Into<String>,
    ) -> ProviderConfigError {
        ProviderConfigError::InvalidField {
            store: self.store.to_string(),
            provider,
            reason: reason.into(),
        }
    }

    /// An `Unsupported` error for this store.
    pub fn unsupported(
        &self,
        provider: &'static str,
        reason: impl Into<String>,
    ) -> ProviderConfigError {
        ProviderConfigError::Unsupported {
            store: self.store.to_string(),
            provider,
            reason: reason.into(),
        }
    }
}

/// serde's messages quote offending values (`invalid type: string "s3cr3t"`), and a
/// provider block may hold secrets (the fake provider's data), so keep only the shape.
pub(crate) fn safe_serde_message(err: &serde_json::Error) -> String {
    let msg = err.to_string();
    let keep_whole = ["missing field", "unknown field", "duplicate field"];
    if keep_whole.iter().any(|p| msg.starts_with(p)) {
        return msg;
    }
    for prefix in [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown variant",
    ] {
        if msg.starts_with(prefix) {
            return match msg.find(", expected") {
                Some(pos) => format!("{prefix}{}", &msg[pos..]),
                None => prefix.to_string(),
            };
        }
    }
    "malformed value".to_string()
}

/// Builds a provider from a store's spec. `namespace` is the store's namespace
/// (None for ClusterSecretStore). Secret refs are resolved here, so a store that
/// builds has everything it needs.
pub fn build_provider(
    store_name: &str,
    namespace: Option<&str>,
    spec: &SecretStoreSpec,
    secrets: &SecretIndex,
    settings: &ProviderSettings,
) -> Result<Arc<dyn SecretProvider>, ProviderConfigError> {
    let mut entries = spec.provider.iter();
    let (name, block) = match (entries.next(), entries.next()) {
        (None, _) => {
            return Err(ProviderConfigError::NoProvider {
                store: store_name.to_string(),
            });
        }
        (Some(first), None) => first,
        (Some(_), Some(_)) => {
            return Err(ProviderConfigError::SeveralProviders {
                store: store_name.to_string(),
                names: spec.provider.keys().cloned().collect(),
            });
        }
    };
    let cache = spec
        .cache
        .as_ref()
        .map(|block| cache::CacheSettings::from_spec(store_name, block))
        .transpose()?;
    let ctx = BuildContext {
        store: store_name,
        namespace,
        secrets,
        settings,
    };
    let provider: Arc<dyn SecretProvider> = match name.as_str() {
        "vault" => Arc::new(Metered::new(VaultProvider::from_spec(&ctx, block)?)),
        "fake" => Arc::new(Metered::new(FakeProvider::from_spec(&ctx, block)?)),
        "aws" => aws::build(&ctx, block)?,
        kubernetes::PROVIDER => Arc::new(Metered::new(kubernetes::KubernetesProvider::from_spec(
            &ctx, block,
        )?)),
        webhook::PROVIDER => Arc::new(Metered::new(webhook::WebhookProvider::from_spec(
            &ctx, block,
        )?)),
        externalsecrets::PROVIDER if !settings.client_side => {
            return Err(ProviderConfigError::ClientSideOnly {
                store: store_name.to_string(),
                provider: externalsecrets::PROVIDER,
            });
        }
        externalsecrets::PROVIDER => Arc::new(Metered::new(ExternalSecretsProvider::from_spec(
            &ctx, block,
        )?)),
        other => {
            return Err(ProviderConfigError::UnknownProvider {
                store: store_name.to_string(),
                name: other.to_string(),
            });
        }
    };
    // The metrics label: a store's name, namespaced for a SecretStore.
    let label = match namespace {
        Some(ns) => format!("{ns}/{store_name}"),
        None => store_name.to_string(),
    };
    let provider: Arc<dyn SecretProvider> = Arc::new(resilient::Resilient::new(
        &label,
        provider,
        settings.resilience_settings(),
    ));
    Ok(match cache {
        // A refresh that could serve a stale value is waited for ¾ of the backend timeout,
        // in time for the answer to be the stale value rather than the request deadline's
        // 503; it goes on in the background, bounded as a request is.
        Some(c) => Arc::new(
            cache::Cached::new(&label, provider, &c).with_backend_timeout(settings.timeout),
        ),
        None => provider,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::SecretObject;
    use serde_json::json;

    fn spec(provider: serde_json::Value) -> SecretStoreSpec {
        serde_json::from_value(json!({ "provider": provider })).unwrap()
    }

    fn build(
        ns: Option<&str>,
        provider: serde_json::Value,
        secrets: &SecretIndex,
    ) -> Result<Arc<dyn SecretProvider>, ProviderConfigError> {
        build_provider(
            "s",
            ns,
            &spec(provider),
            secrets,
            &ProviderSettings::default(),
        )
    }

    #[test]
    fn settings_default_to_ten_seconds() {
        assert_eq!(ProviderSettings::default().timeout, Duration::from_secs(10));
    }

    #[test]
    fn no_unknown_or_several_providers_are_rejected() {
        let idx = SecretIndex::default();
        assert!(matches!(
            build(None, json!({}), &idx),
            Err(ProviderConfigError::NoProvider { .. })
        ));
        let err = build(None, json!({"gcpsm": {}}), &idx).err().unwrap();
        assert!(
            matches!(err, ProviderConfigError::UnknownProvider { ref name, .. } if name == "gcpsm")
        );
        let err = build(None, json!({"fake": {"data": []}, "vault": {}}), &idx)
            .err()
            .unwrap();
        assert!(
            matches!(err, ProviderConfigError::SeveralProviders { ref names, .. } if names.len() == 2)
        );
    }

    #[test]
    fn builds_fake_and_vault_with_kind() {
        let mut idx = SecretIndex::default();
        idx.insert(
            "eso",
            "vault",
            &SecretObject {
                string_data: [("token".to_string(), "root\n".to_string())].into(),
                ..Default::default()
            },
        )
        .unwrap();
        let fake = build(
            None,
            json!({"fake": {"data": [{"key": "k", "value": "v"}]}}),
            &idx,
        )
        .unwrap();
        assert_eq!(fake.kind(), "fake");
        let vault = build(
            None,
            json!({"vault": {"server": "http://127.0.0.1:8200", "path": "secret", "version": "v2",
                "auth": {"tokenSecretRef": {"name": "vault", "key": "token", "namespace": "eso"}}}}),
            &idx,
        )
        .unwrap();
        assert_eq!(vault.kind(), "vault");
    }

    #[test]
    fn unresolved_secret_ref_is_a_config_error() {
        let idx = SecretIndex::default();
        let err = build(
            None,
            json!({"vault": {"server": "http://127.0.0.1:8200",
                "auth": {"tokenSecretRef": {"name": "vault", "key": "token", "namespace": "eso"}}}}),
            &idx,
        )
        .err()
        .unwrap();
        assert!(matches!(
            err,
            ProviderConfigError::SecretRef {
                field: "auth.tokenSecretRef",
                source: SecretRefError::SecretNotFound { .. },
                ..
            }
        ));
        // A cluster store's ref without namespace cannot resolve.
        let err = build(
            None,
            json!({"vault": {"server": "http://127.0.0.1:8200",
                "auth": {"tokenSecretRef": {"name": "vault", "key": "token"}}}}),
            &idx,
        )
        .err()
        .unwrap();
        assert!(matches!(
            err,
            ProviderConfigError::SecretRef {
                source: SecretRefError::NoNamespace { .. },
                ..
            }
        ));
    }

    #[test]
    fn namespaced_store_cannot_reach_other_namespaces() {
        let mut idx = SecretIndex::default();
        idx.insert(
            "other",
            "vault",
            &SecretObject {
                string_data: [("token".to_string(), "root".to_string())].into(),
                ..Default::default()
            },
        )
        .unwrap();
        let err = build(
            Some("team"),
            json!({"vault": {"server": "http://127.0.0.1:8200",
                "auth": {"tokenSecretRef": {"name": "vault", "key": "token", "namespace": "other"}}}}),
            &idx,
        )
        .err()
        .unwrap();
        assert!(
            matches!(
                err,
                ProviderConfigError::SecretRef {
                    source: SecretRefError::OtherNamespace { .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn serde_messages_do_not_echo_values() {
        let idx = SecretIndex::default();
        let err = build(
            None,
            json!({"fake": {"data": [{"key": "k", "value": {"nested": "hunter2-secret"}}]}}),
            &idx,
        )
        .err()
        .unwrap();
        let msg = err.to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.contains("invalid type"), "{msg}");
        let err = build(None, json!({"fake": {"data": [{"key": 42}]}}), &idx)
            .err()
            .unwrap();
        assert!(!err.to_string().contains("42"), "{err}");
    }

    #[tokio::test]
    async fn spec_cache_wraps_the_store_and_is_checked_at_load() {
        let idx = SecretIndex::default();
        let with_cache = |cache: serde_json::Value| {
            let spec: SecretStoreSpec = serde_json::from_value(json!({
                "provider": {"fake": {"data": [{"key": "k", "value": "v"}]}},
                "cache": cache,
            }))
            .unwrap();
            build_provider("cached", None, &spec, &idx, &ProviderSettings::default())
        };
        let p = with_cache(json!({"ttl": "30s", "maxEntries": 10})).unwrap();
        let r = RemoteRef {
            key: "k".into(),
            ..Default::default()
        };
        assert_eq!(
            p.get_secret_with_age(&r).await.unwrap(),
            (b"v".to_vec(), None)
        );
        let (v, age) = p.get_secret_with_age(&r).await.unwrap();
        assert_eq!(v, b"v");
        assert!(age.is_some(), "the second read is served from the cache");
        let err = with_cache(json!({"ttl": "2h"})).err().unwrap();
        assert!(
            matches!(err, ProviderConfigError::InvalidCache { .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "store cached: invalid spec.cache: ttl must be more than 0 and at most 1h"
        );
        // Without spec.cache nothing is cached.
        let p = build(
            None,
            json!({"fake": {"data": [{"key": "k", "value": "v"}]}}),
            &idx,
        )
        .unwrap();
        p.get_secret(&r).await.unwrap();
        assert_eq!(p.get_secret_with_age(&r).await.unwrap().1, None);
    }

    #[test]
    fn error_kinds_are_stable() {
        assert_eq!(ProviderError::NotFound.kind(), "not_found");
        assert_eq!(ProviderError::Timeout.kind(), "timeout");
        assert_eq!(ProviderError::Unavailable("x".into()).kind(), "unavailable");
    }
}
