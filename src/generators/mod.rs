//! Generators (`generators.external-secrets.io/v1alpha1`): produce a fresh credential
//! per call. Each kind lives in its own file and parses its own `spec` (ESO field names);
//! [`Metered`] is the one place that records backend metrics for them.
//!
//! A generation answers the data map (the ESE answer body) and, for credentials a
//! backend holds (a Vault lease, a token), a [`RevocationState`]: the opaque state the
//! same generator needs later to revoke it, with its expiry. The caller records that
//! state in the ledger (`crate::ledger`) before handing the data out.

mod aws;
mod cluster;
mod ecr;
mod fake;
mod federation;
mod password;
mod sshkey;
mod sts;
mod uuid;
mod vault_dynamic;
mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::authn::Identity;
use crate::metrics::observe_backend_call;
use crate::providers::{ProviderError, ProviderSettings};
use crate::resources::{SecretIndex, SecretRefError};

pub use cluster::ClusterGenerator;
pub use ecr::EcrAuthorizationTokenGenerator;
pub use fake::FakeGenerator;
pub use federation::FederationGenerator;
pub use password::PasswordGenerator;
pub use sshkey::SshKeyGenerator;
pub use sts::StsSessionTokenGenerator;
pub use uuid::UuidGenerator;
pub use vault_dynamic::VaultDynamicSecretGenerator;
pub use webhook::WebhookGenerator;

/// What a generation is for: the verified workload that will hold the credential.
/// Generators that bind credentials to a workload (session names, webhook bodies) read
/// it; the others ignore it.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenerateContext<'a> {
    /// The workload the credential is issued to (the `x-workload-token` identity when
    /// one was sent, else the caller). None outside a request (tests, tools).
    pub workload: Option<&'a Identity>,
}

/// The state a generator needs to revoke one credential it issued (e.g. a Vault lease
/// id). Opaque to everyone else; serialised into the ledger. Treated as sensitive:
/// Debug shows only a fingerprint, logs carry [`RevocationState::fingerprint`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RevocationState(pub serde_json::Value);

impl RevocationState {
    /// A short, stable, one-way fingerprint (hex of SHA-256, 16 chars) for audit lines.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.to_string().as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for RevocationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RevocationState(sha256:{})", self.fingerprint())
    }
}

/// One generated credential.
pub struct Generated {
    /// The answer body: key → value.
    pub data: BTreeMap<String, String>,
    /// Present when the credential lives on in a backend and can be revoked.
    pub revocation: Option<RevocationState>,
    /// When the backend lets the credential lapse on its own (seconds since the epoch).
    pub expires_at: Option<u64>,
    /// Whether [`Generator::renew`] can extend it (Vault: the lease's `renewable`).
    pub renewable: bool,
}

impl Generated {
    /// A credential nothing holds: nothing to revoke, no expiry.
    pub fn plain(data: BTreeMap<String, String>) -> Self {
        Generated {
            data,
            revocation: None,
            expires_at: None,
            renewable: false,
        }
    }
}

/// What a renewal gave: the credential's new end of life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// When it now lapses (seconds since the epoch). A backend caps renewals at the
    /// credential's maximum TTL, so this may be sooner than asked for.
    pub expires_at: u64,
    /// Whether it may be renewed again.
    pub renewable: bool,
}

// Values and revocation state never appear in Debug output.
impl std::fmt::Debug for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generated")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("revocation", &self.revocation)
            .field("expires_at", &self.expires_at)
            .field("renewable", &self.renewable)
            .finish()
    }
}

/// Seconds since the epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A generator kind, as ESE serves it.
#[async_trait::async_trait]
pub trait Generator: Send + Sync {
    /// The generator kind (`Fake`, `Password`, `VaultDynamicSecret`, …), a metrics label.
    fn kind(&self) -> &'static str;
    /// Produce a new credential.
    async fn generate(&self, ctx: &GenerateContext<'_>) -> Result<Generated, GeneratorError>;
    /// Revoke a credential this generator issued, from the state it returned then.
    /// Revoking something already gone succeeds. Kinds that never return a state
    /// keep the default, which refuses.
    async fn revoke(&self, state: &RevocationState) -> Result<(), GeneratorError> {
        let _ = state;
        Err(GeneratorError::NotRevocable)
    }
    /// Extends a credential this generator issued by `increment` (seconds; `None`: the
    /// backend's default, for Vault the lease's TTL), from the state it returned then
    /// (Vault: `sys/leases/renew`, or `auth/token/renew-accessor` for a token). Kinds whose
    /// credentials cannot be extended keep the default, which refuses.
    async fn renew(
        &self,
        state: &RevocationState,
        increment: Option<u64>,
    ) -> Result<Renewed, GeneratorError> {
        let _ = (state, increment);
        Err(GeneratorError::NotRenewable)
    }
}

/// A failed generation or revocation. Messages never hold generated values or tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeneratorError {
    /// The operating system's random source failed.
    #[error("random source unavailable")]
    Random,
    /// The requested output cannot be produced (e.g. no repeats left to draw from).
    #[error("cannot generate: {0}")]
    Impossible(String),
    /// The backend refused or answered something unusable.
    #[error("backend error: {0}")]
    Backend(String),
    /// The backend could not be reached, failed, or did not answer in time.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// This kind issues nothing that can be revoked, or the state is not its own.
    #[error("credential cannot be revoked by this generator")]
    NotRevocable,
    /// The credential cannot be extended (this kind never can, or the backend refused:
    /// not renewable, gone, or past its maximum TTL). The holder needs a new one.
    #[error("credential cannot be renewed")]
    NotRenewable,
}

impl GeneratorError {
    /// A short stable name of the variant (metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            GeneratorError::Random => "random",
            GeneratorError::Impossible(_) => "impossible",
            GeneratorError::Backend(_) => "backend",
            GeneratorError::Unavailable(_) => "unavailable",
            GeneratorError::NotRevocable => "not_revocable",
            GeneratorError::NotRenewable => "not_renewable",
        }
    }
}

impl From<ProviderError> for GeneratorError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Unavailable(m) => GeneratorError::Unavailable(m),
            ProviderError::Timeout => GeneratorError::Unavailable("backend timed out".into()),
            ProviderError::NotFound => GeneratorError::Backend("backend path not found".into()),
            ProviderError::InvalidRequest(m)
            | ProviderError::Unsupported(m)
            | ProviderError::Backend(m) => GeneratorError::Backend(m),
        }
    }
}

/// A generator object that cannot be built. Messages name fields, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeneratorConfigError {
    /// This build does not know the kind.
    #[error("unknown generator kind {kind:?}")]
    UnknownKind {
        /// The kind asked for.
        kind: String,
    },
    /// The spec is missing or malformed.
    #[error("{kind} {namespace}/{name}: invalid spec: {reason}")]
    InvalidSpec {
        /// Generator kind.
        kind: &'static str,
        /// Generator namespace.
        namespace: String,
        /// Generator name.
        name: String,
        /// What is wrong (field names only).
        reason: String,
    },
    /// A client-side kind (`Federation`) in a process that is not a client
    /// (`ProviderSettings::client_side` false: the federation server).
    #[error(
        "{kind} {namespace}/{name}: a {kind} generator is a client of another Federation Server; this server does not serve it"
    )]
    ClientSideOnly {
        /// Generator kind.
        kind: &'static str,
        /// Generator namespace.
        namespace: String,
        /// Generator name.
        name: String,
    },
    /// A `…SecretRef` of the spec does not resolve (yet).
    #[error("{kind} {namespace}/{name}: {reason}")]
    SecretRef {
        /// Generator kind.
        kind: &'static str,
        /// Generator namespace.
        namespace: String,
        /// Generator name.
        name: String,
        /// Which reference and why (no values).
        reason: String,
    },
}

/// Builds one namespaced kind from its `spec`.
type Builder =
    fn(&BuildContext<'_>, &serde_json::Value) -> Result<Arc<dyn Generator>, GeneratorConfigError>;

/// One namespaced generator kind this build serves.
pub(crate) struct KindEntry {
    /// The kind (`Password`, …), as in manifests and ESE URLs.
    pub kind: &'static str,
    /// ESO's key for it under a `ClusterGenerator`'s `spec.generator` (ECR's carries ESO's
    /// own spelling).
    pub cluster_spec_key: &'static str,
    build: Builder,
}

fn metered<G: Generator + 'static>(g: G) -> Arc<dyn Generator> {
    Arc::new(Metered::new(g))
}

/// The one table of namespaced generator kinds: what `is_generator_kind`, `build` and
/// `ClusterGenerator` know. `ClusterGenerator` itself wraps one of them.
pub(crate) const KINDS: &[KindEntry] = &[
    KindEntry {
        kind: "Fake",
        cluster_spec_key: "fakeSpec",
        build: |c, s| Ok(metered(FakeGenerator::from_spec(c, s)?)),
    },
    KindEntry {
        kind: "Password",
        cluster_spec_key: "passwordSpec",
        build: |c, s| Ok(metered(PasswordGenerator::from_spec(c, s)?)),
    },
    KindEntry {
        kind: "UUID",
        cluster_spec_key: "uuidSpec",
        build: |c, s| Ok(metered(UuidGenerator::from_spec(c, s)?)),
    },
    KindEntry {
        kind: "SSHKey",
        cluster_spec_key: "sshKeySpec",
        build: |c, s| Ok(metered(SshKeyGenerator::from_spec(c, s)?)),
    },
    KindEntry {
        kind: "VaultDynamicSecret",
        cluster_spec_key: "vaultDynamicSecretSpec",
        build: |c, s| Ok(metered(VaultDynamicSecretGenerator::from_spec(c, s)?)),
    },
    KindEntry {
        kind: "STSSessionToken",
        cluster_spec_key: "stsSessionTokenSpec",
        build: |c, s| Ok(metered(StsSessionTokenGenerator::from_spec(c, s)?)),
    },
    KindEntry {
        kind: "ECRAuthorizationToken",
        cluster_spec_key: "ecrRAuthorizationTokenSpec",
        build: |c, s| Ok(metered(EcrAuthorizationTokenGenerator::from_spec(c, s)?)),
    },
    KindEntry {
        kind: "Webhook",
        cluster_spec_key: "webhookSpec",
        build: |c, s| Ok(metered(WebhookGenerator::from_spec(c, s)?)),
    },
];

/// The table entry of a namespaced kind.
pub(crate) fn namespaced_kind(kind: &str) -> Option<&'static KindEntry> {
    KINDS.iter().find(|e| e.kind == kind)
}

/// The cluster-scoped kind: it has no namespace, whatever namespace a URL names.
pub const CLUSTER_GENERATOR: &str = "ClusterGenerator";

/// The client-side kind: a generator of another Federation Server. Not among the kinds
/// the server serves ([`is_generator_kind`] is false for it); only a client
/// (`ProviderSettings::client_side`) builds it.
pub const FEDERATION: &str = federation::KIND;

/// True for kinds only a client of Federation Servers builds ([`FEDERATION`]).
pub fn is_client_generator_kind(kind: &str) -> bool {
    kind == FEDERATION
}

/// True for the generator kinds this build serves (the federation server's kinds; the
/// client-side [`FEDERATION`] is not one of them).
pub fn is_generator_kind(kind: &str) -> bool {
    kind == CLUSTER_GENERATOR || namespaced_kind(kind).is_some()
}

/// True for cluster-scoped generator kinds (`ClusterGenerator`).
pub fn is_cluster_scoped(kind: &str) -> bool {
    kind == CLUSTER_GENERATOR
}

/// The namespace every cluster-scoped generator is decided under, whatever namespace a
/// URL (or an Authorization's `allowedGenerators` entry) names for it: a cluster-scoped
/// object has exactly one identity (issue 19). Not a valid Kubernetes namespace (RFC
/// 1123 labels have no `<`), so no namespaced generator can carry it.
pub const CLUSTER_SCOPE: &str = "<cluster>";

/// The namespace a generator reference is decided and looked up under: `namespace` for
/// namespaced kinds, [`CLUSTER_SCOPE`] for cluster-scoped ones.
pub fn canonical_namespace<'a>(namespace: &'a str, kind: &str) -> &'a str {
    if is_cluster_scoped(kind) {
        CLUSTER_SCOPE
    } else {
        namespace
    }
}

/// Whether `namespace` is a Kubernetes namespace name (an RFC 1123 label: 1–63 of
/// `a-z`, `0-9`, `-`, starting and ending with a letter or digit). Namespaces in
/// generator URLs must be; anything else names no generator.
pub fn is_namespace_name(namespace: &str) -> bool {
    crate::support::text::is_dns_label(namespace)
}

/// What a generator's constructor needs.
pub(crate) struct BuildContext<'a> {
    /// Generator namespace (empty for a cluster-scoped generator).
    pub namespace: &'a str,
    /// Generator name.
    pub name: &'a str,
    /// Known Kubernetes Secrets, for `…SecretRef`s.
    pub secrets: &'a SecretIndex,
    /// Timeouts for backend calls.
    pub settings: &'a ProviderSettings,
}

impl BuildContext<'_> {
    /// An `InvalidSpec` error for this generator.
    pub fn invalid(&self, kind: &'static str, reason: impl Into<String>) -> GeneratorConfigError {
        GeneratorConfigError::InvalidSpec {
            kind,
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            reason: reason.into(),
        }
    }

    /// The namespace `…SecretRef`s resolve in (`None` for a cluster-scoped generator, whose
    /// refs name their own).
    pub fn owner_namespace(&self) -> Option<&str> {
        (!self.namespace.is_empty()).then_some(self.namespace)
    }

    /// Resolves a `SecretKeySelector` of the spec ([`SecretIndex::resolve`]: a namespaced
    /// generator reads only its own namespace, as ESO's do).
    pub fn resolve(
        &self,
        kind: &'static str,
        field: &str,
        selector: &crate::resources::SecretKeySelector,
    ) -> Result<Vec<u8>, GeneratorConfigError> {
        self.secrets
            .resolve(selector, self.owner_namespace())
            .map(<[u8]>::to_vec)
            .map_err(|e| self.secret_ref_error(kind, field, &e))
    }

    /// A `SecretRef` error for this generator (a ref the namespace rule refuses is a
    /// configuration error, not one that a Secret arriving later would fix).
    pub fn secret_ref_error(
        &self,
        kind: &'static str,
        field: &str,
        source: &SecretRefError,
    ) -> GeneratorConfigError {
        if source.is_missing() || matches!(source, SecretRefError::NoNamespace { .. }) {
            GeneratorConfigError::SecretRef {
                kind,
                namespace: self.namespace.to_string(),
                name: self.name.to_string(),
                reason: format!("{field}: {source}"),
            }
        } else {
            self.invalid(kind, format!("{field}: {source}"))
        }
    }

    /// Parses `spec` (null counts as `{}`), with a value-free message on error.
    pub fn parse<T: serde::de::DeserializeOwned>(
        &self,
        kind: &'static str,
        spec: &serde_json::Value,
    ) -> Result<T, GeneratorConfigError> {
        let spec = if spec.is_null() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            spec.clone()
        };
        serde_json::from_value(spec)
            .map_err(|e| self.invalid(kind, crate::providers::safe_serde_message(&e)))
    }
}

/// Builds a generator from its object's `spec` with default backend settings.
pub fn build_generator(
    kind: &str,
    namespace: &str,
    name: &str,
    spec: &serde_json::Value,
    secrets: &SecretIndex,
) -> Result<Arc<dyn Generator>, GeneratorConfigError> {
    build_generator_with(
        kind,
        namespace,
        name,
        spec,
        secrets,
        &ProviderSettings::default(),
    )
}

/// Builds a generator from its object's `spec`. `secrets` resolves `…SecretRef`s;
/// `settings` bounds backend calls. `namespace` is empty for a `ClusterGenerator`.
pub fn build_generator_with(
    kind: &str,
    namespace: &str,
    name: &str,
    spec: &serde_json::Value,
    secrets: &SecretIndex,
    settings: &ProviderSettings,
) -> Result<Arc<dyn Generator>, GeneratorConfigError> {
    let ctx = BuildContext {
        namespace,
        name,
        secrets,
        settings,
    };
    build(&ctx, kind, spec)
}

/// Builds one namespaced kind (or a ClusterGenerator wrapping one).
pub(crate) fn build(
    ctx: &BuildContext<'_>,
    kind: &str,
    spec: &serde_json::Value,
) -> Result<Arc<dyn Generator>, GeneratorConfigError> {
    if kind == CLUSTER_GENERATOR {
        return Ok(Arc::new(ClusterGenerator::from_spec(ctx, spec)?));
    }
    if kind == FEDERATION {
        if !ctx.settings.client_side {
            return Err(GeneratorConfigError::ClientSideOnly {
                kind: FEDERATION,
                namespace: ctx.namespace.to_string(),
                name: ctx.name.to_string(),
            });
        }
        return Ok(metered(FederationGenerator::from_spec(ctx, spec)?));
    }
    match namespaced_kind(kind) {
        Some(entry) => (entry.build)(ctx, spec),
        None => Err(GeneratorConfigError::UnknownKind {
            kind: kind.to_string(),
        }),
    }
}

/// Generators behind [`Metered`]: `backend_calls` (kind, outcome) and `backend_latency`
/// for generations, and `backend_calls` (`<kind>/revoke`, outcome) for revocations.
pub use crate::metrics::Metered;

fn outcome<T>(result: &Result<T, GeneratorError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    }
}

#[async_trait::async_trait]
impl<G: Generator> Generator for Metered<G> {
    fn kind(&self) -> &'static str {
        self.inner().kind()
    }

    async fn generate(&self, ctx: &GenerateContext<'_>) -> Result<Generated, GeneratorError> {
        let inner = self.inner();
        observe_backend_call(inner.kind(), "Generate", true, outcome, inner.generate(ctx)).await
    }

    async fn revoke(&self, state: &RevocationState) -> Result<(), GeneratorError> {
        let inner = self.inner();
        let kind = format!("{}/revoke", inner.kind());
        observe_backend_call(&kind, "Cleanup", false, outcome, inner.revoke(state)).await
    }

    async fn renew(
        &self,
        state: &RevocationState,
        increment: Option<u64>,
    ) -> Result<Renewed, GeneratorError> {
        let inner = self.inner();
        let kind = format!("{}/renew", inner.kind());
        observe_backend_call(&kind, "Renew", true, outcome, inner.renew(state, increment)).await
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A context for constructors in unit tests.
    pub fn with_ctx<T>(namespace: &str, name: &str, f: impl FnOnce(&BuildContext<'_>) -> T) -> T {
        let secrets = SecretIndex::default();
        let settings = ProviderSettings::default();
        f(&BuildContext {
            namespace,
            name,
            secrets: &secrets,
            settings: &settings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::METRICS;
    use serde_json::json;

    fn build(
        kind: &str,
        spec: serde_json::Value,
    ) -> Result<Arc<dyn Generator>, GeneratorConfigError> {
        build_generator(kind, "ns", "gen", &spec, &SecretIndex::default())
    }

    #[test]
    fn knows_its_kinds() {
        for kind in ["Fake", "Password", "UUID", "SSHKey"] {
            assert!(is_generator_kind(kind));
            assert_eq!(build(kind, json!(null)).unwrap().kind(), kind);
        }
        assert!(is_generator_kind("VaultDynamicSecret"));
        assert!(is_generator_kind("ClusterGenerator"));
        assert!(is_cluster_scoped("ClusterGenerator"));
        assert!(!is_cluster_scoped("Password"));
        assert!(!is_generator_kind("password"));
        for kind in ["STSSessionToken", "ECRAuthorizationToken", "Webhook"] {
            assert!(is_generator_kind(kind));
        }
        assert!(!is_generator_kind("GCRAccessToken"));
        assert_eq!(
            build("GCRAccessToken", json!({})).err(),
            Some(GeneratorConfigError::UnknownKind {
                kind: "GCRAccessToken".into()
            })
        );
    }

    #[test]
    fn cluster_scoped_kinds_have_one_namespace() {
        assert_eq!(
            canonical_namespace("team", "ClusterGenerator"),
            CLUSTER_SCOPE
        );
        assert_eq!(
            canonical_namespace("platform", "ClusterGenerator"),
            CLUSTER_SCOPE
        );
        assert_eq!(canonical_namespace("team", "Password"), "team");
        assert!(!is_namespace_name(CLUSTER_SCOPE));
        for ok in ["a", "apps", "team-1", &"a".repeat(63)] {
            assert!(is_namespace_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Apps",
            "a.b",
            "a/b",
            "a b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(!is_namespace_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn metered_counts_calls() {
        let g = build("UUID", json!({})).unwrap();
        let counter = METRICS.backend_calls.with_label_values(&["UUID", "ok"]);
        let before = counter.get();
        g.generate(&GenerateContext::default()).await.unwrap();
        assert!(counter.get() > before);
    }

    #[tokio::test]
    async fn plain_kinds_are_not_revocable() {
        for kind in ["Fake", "Password", "UUID"] {
            let g = build(kind, json!(null)).unwrap();
            let out = g.generate(&GenerateContext::default()).await.unwrap();
            assert!(out.revocation.is_none() && out.expires_at.is_none());
            assert_eq!(
                g.revoke(&RevocationState(json!({"leaseId": "x"}))).await,
                Err(GeneratorError::NotRevocable)
            );
        }
    }

    #[test]
    fn revocation_state_debug_is_a_fingerprint() {
        let s = RevocationState(json!({"leaseId": "database/creds/app/abc123"}));
        let shown = format!("{s:?}");
        assert!(!shown.contains("abc123"), "{shown}");
        assert_eq!(s.fingerprint().len(), 16);
        assert_eq!(
            s.fingerprint(),
            RevocationState(json!({"leaseId": "database/creds/app/abc123"})).fingerprint()
        );
        assert_ne!(
            s.fingerprint(),
            RevocationState(json!({"leaseId": "other"})).fingerprint()
        );
        let g = Generated {
            data: [("password".to_string(), "hunter2".to_string())].into(),
            revocation: Some(s),
            expires_at: Some(1),
            renewable: true,
        };
        assert!(!format!("{g:?}").contains("hunter2"));
    }

    #[test]
    fn spec_errors_name_the_object() {
        let err = build("Password", json!({"length": "long"})).err().unwrap();
        let msg = err.to_string();
        assert!(msg.starts_with("Password ns/gen: invalid spec"), "{msg}");
        assert!(!msg.contains("long"), "{msg}");
    }
}
