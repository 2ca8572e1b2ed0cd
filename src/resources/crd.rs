//! Our Kubernetes kinds as `kube::CustomResource` types, and their CRDs (`esi-server crds`).
//!
//! | kind | group/version | scope | spec |
//! |---|---|---|---|
//! | [`Authorization`] | `federation.external-secrets.io/v1alpha1` | Cluster | [`AuthorizationSpec`] |
//! | [`KubernetesFederation`] | `identity.federation.external-secrets.io/v1alpha1` | Cluster | [`KubernetesFederationSpec`] |
//! | [`OidcFederation`] (`OIDCFederation`) | `identity.federation.external-secrets.io/v1alpha1` | Cluster | [`OidcFederationCrdSpec`] |
//! | [`OktaFederation`] | `identity.federation.external-secrets.io/v1alpha1` | Cluster | [`OktaFederationCrdSpec`] |
//! | [`PingIdentityFederation`] | `identity.federation.external-secrets.io/v1alpha1` | Cluster | [`PingIdentityFederationCrdSpec`] |
//! | [`SpiffeFederation`] | `identity.federation.external-secrets.io/v1alpha1` | Cluster | [`SpiffeFederationCrdSpec`] |
//! | [`AuthorizedIdentity`] | `federation.external-secrets.io/v1alpha1` | Cluster | [`AuthorizedIdentitySpec`] |
//!
//! Group, version, scope and field names are those of ESE's CRDs (the federation server's
//! `config/crds/bases/`, copied to `tests/fixtures/ese-crds/`; ESE publishes none for
//! `SpiffeFederation`, `OktaFederation` and `PingIdentityFederation`, whose fields follow
//! ESE's types, and `OIDCFederation` is ours); every object valid under them is valid under ours (tested in
//! `tests/crds.rs`), except one without `spec` (`kube` requires it: the typed objects have a
//! `spec`, and such an object grants nothing). Ours add the *extension* fields of the specs, the samples' flat
//! `subject: {issuer, subject}` form, a `status` (`Ready` condition, `observedGeneration`) and
//! printer columns. The schema rejects only what the server's loader rejects too
//! (`authz` `compile::check`, `authn::Federation::from_spec`), and only where a rule is cheap
//! and does not narrow ESE's fields; everything else the server reports in `status`.
//!
//! The specs are the very types the directory loader reads ([`super::AuthorizationSpec`],
//! [`super::KubernetesFederationSpec`]), wrapped in `#[serde(transparent)]` newtypes so that
//! `kube` can derive the root objects here. [`crds`] post-processes what `kube` derives:
//! serde's `#[serde(default)]` would otherwise become schema `default`s, which the API server
//! would write into every stored object.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    AuthorizationSpec, FederationRef, KubernetesFederationSpec, OidcFederationSpec, OidcSubject,
    OktaFederationSpec, PingIdentityFederationSpec, SpiffeFederationSpec, SpiffeSubject,
};

// A `#[serde(transparent)]` newtype over the loader's `AuthorizationSpec`, so that `kube` can
// derive `Authorization` here; `Deref`/`From` give the inner spec. Its doc comment is the
// spec's description in the CRD (`kubectl explain authorization.spec`).
/// Who may use what: the subject of one federation, and the ClusterSecretStores, generators
/// and generator-state namespaces it may use. ESE's fields, plus the extensions
/// `allowedRemoteKeys`, the flat `subject: {issuer, subject}` form and `*` globs in the
/// subject's `subject`.
#[derive(
    CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
// One `printcolumn(...)` per column: the repeated keys are not duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "federation.external-secrets.io",
    version = "v1alpha1",
    kind = "Authorization",
    status = "ResourceStatus",
    category = "external-secrets",
    category = "external-secrets-federation",
    derive = "PartialEq",
    doc = "Authorization: which ClusterSecretStores, generators and generator states one subject of one federation may use.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#,
        description = "Whether the server compiled this Authorization"
    ),
    printcolumn(
        name = "Federation",
        type_ = "string",
        json_path = ".spec.federationRef.name",
        description = "The KubernetesFederation whose tokens it applies to"
    ),
    printcolumn(
        name = "Subject",
        type_ = "string",
        json_path = ".spec.subject..subject",
        description = "The token sub it matches (subject.oidc.subject, or the flat subject.subject)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(transparent)]
pub struct AuthorizationCrdSpec(pub AuthorizationSpec);

// A `#[serde(transparent)]` newtype over the loader's `KubernetesFederationSpec` (see
// `AuthorizationCrdSpec`).
/// One trusted client cluster: where its token signing keys come from (`url`, or the static
/// `jwks`/`publicKeys`) and what its tokens must carry (`issuer`, `audiences`). ESE's `url`,
/// plus extensions; without `url`, `issuer` is required.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
// One `printcolumn(...)` per column: the repeated keys are not duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "identity.federation.external-secrets.io",
    version = "v1alpha1",
    kind = "KubernetesFederation",
    status = "ResourceStatus",
    category = "external-secrets",
    category = "external-secrets-federation",
    derive = "PartialEq",
    doc = "KubernetesFederation: one trusted client cluster, whose ServiceAccount tokens the server verifies.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#,
        description = "Whether the server loaded this federation"
    ),
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".spec.url",
        description = "The client cluster's API server (or OIDC issuer) base URL"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(transparent)]
pub struct KubernetesFederationCrdSpec(pub KubernetesFederationSpec);

// A `#[serde(transparent)]` newtype over the loader's `OidcFederationSpec` (see
// `AuthorizationCrdSpec`).
/// Any OpenID Connect issuer whose tokens name workloads that are not Kubernetes
/// ServiceAccounts (CI jobs, VMs): `issuer` (an `https` URL, the exact `iss`), `audiences`
/// (required), keys from discovery, `jwksUri` or a static `jwks`, `caBundle`,
/// `boundClaims`, `subjectClaim` and the `claims` handed to policies. An extension kind.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
// One `printcolumn(...)` per column: the repeated keys are not duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "identity.federation.external-secrets.io",
    version = "v1alpha1",
    kind = "OIDCFederation",
    root = "OidcFederation",
    status = "ResourceStatus",
    category = "external-secrets",
    category = "external-secrets-federation",
    derive = "PartialEq",
    doc = "OIDCFederation: one trusted OpenID Connect issuer, whose tokens the server verifies.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#,
        description = "Whether the server loaded this federation"
    ),
    printcolumn(
        name = "Issuer",
        type_ = "string",
        json_path = ".spec.issuer",
        description = "The exact iss of its tokens"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(transparent)]
pub struct OidcFederationCrdSpec(pub OidcFederationSpec);

// A `#[serde(transparent)]` newtype over the loader's `OktaFederationSpec`.
/// An Okta authorization server (ESE's kind), served as a preset of `OIDCFederation`:
/// `domain` and `authorizationServerId` (ESE's fields) name the issuer; the extensions
/// `audiences`, `caBundle`, `boundClaims` and `claims` as for `OIDCFederation`.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
// One `printcolumn(...)` per column: the repeated keys are not duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "identity.federation.external-secrets.io",
    version = "v1alpha1",
    kind = "OktaFederation",
    status = "ResourceStatus",
    category = "external-secrets",
    category = "external-secrets-federation",
    derive = "PartialEq",
    doc = "OktaFederation: one trusted Okta authorization server, whose tokens the server verifies.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#,
        description = "Whether the server loaded this federation"
    ),
    printcolumn(
        name = "Domain",
        type_ = "string",
        json_path = ".spec.domain",
        description = "The Okta organization URL"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(transparent)]
pub struct OktaFederationCrdSpec(pub OktaFederationSpec);

// A `#[serde(transparent)]` newtype over the loader's `PingIdentityFederationSpec`.
/// A PingOne environment (ESE's kind), served as a preset of `OIDCFederation`: `region`
/// and `environmentId` (ESE's fields) name the issuer; the extensions `audiences`,
/// `caBundle`, `boundClaims` and `claims` as for `OIDCFederation`.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
// One `printcolumn(...)` per column: the repeated keys are not duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "identity.federation.external-secrets.io",
    version = "v1alpha1",
    kind = "PingIdentityFederation",
    status = "ResourceStatus",
    category = "external-secrets",
    category = "external-secrets-federation",
    derive = "PartialEq",
    doc = "PingIdentityFederation: one trusted PingOne environment, whose tokens the server verifies.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#,
        description = "Whether the server loaded this federation"
    ),
    printcolumn(
        name = "Region",
        type_ = "string",
        json_path = ".spec.region",
        description = "The PingOne region"
    ),
    printcolumn(
        name = "Environment",
        type_ = "string",
        json_path = ".spec.environmentId",
        description = "The PingOne environment id"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(transparent)]
pub struct PingIdentityFederationCrdSpec(pub PingIdentityFederationSpec);

// A `#[serde(transparent)]` newtype over the loader's `SpiffeFederationSpec`.
/// One SPIFFE trust domain: `trustDomain` (ESE's field, the only one required, so that
/// ESE's objects apply) and the extensions: keys from a static `bundle` (the SPIFFE bundle's
/// JWKS form) or fetched from `bundleEndpoint` (`url`, `caBundle`), and the `audiences` a
/// JWT-SVID must name. Without a bundle or audiences the server reports why in `status`.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
// One `printcolumn(...)` per column: the repeated keys are not duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "identity.federation.external-secrets.io",
    version = "v1alpha1",
    kind = "SpiffeFederation",
    status = "ResourceStatus",
    category = "external-secrets",
    category = "external-secrets-federation",
    derive = "PartialEq",
    doc = "SpiffeFederation: one trusted SPIFFE trust domain, whose SVIDs the server verifies.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#,
        description = "Whether the server loaded this federation"
    ),
    printcolumn(
        name = "Trust Domain",
        type_ = "string",
        json_path = ".spec.trustDomain",
        description = "The SPIFFE trust domain"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(transparent)]
pub struct SpiffeFederationCrdSpec(pub SpiffeFederationSpec);

/// `Deref` and `From` between a CRD spec newtype and the loader's spec it wraps.
macro_rules! spec_newtype {
    ($($crd:ident => $spec:ident),* $(,)?) => {$(
        impl std::ops::Deref for $crd {
            type Target = $spec;
            fn deref(&self) -> &$spec {
                &self.0
            }
        }

        impl From<$spec> for $crd {
            fn from(spec: $spec) -> Self {
                $crd(spec)
            }
        }
    )*};
}

spec_newtype!(
    OidcFederationCrdSpec => OidcFederationSpec,
    OktaFederationCrdSpec => OktaFederationSpec,
    PingIdentityFederationCrdSpec => PingIdentityFederationSpec,
    SpiffeFederationCrdSpec => SpiffeFederationSpec,
);

impl std::ops::Deref for AuthorizationCrdSpec {
    type Target = AuthorizationSpec;
    fn deref(&self) -> &AuthorizationSpec {
        &self.0
    }
}

impl From<AuthorizationSpec> for AuthorizationCrdSpec {
    fn from(spec: AuthorizationSpec) -> Self {
        AuthorizationCrdSpec(spec)
    }
}

impl std::ops::Deref for KubernetesFederationCrdSpec {
    type Target = KubernetesFederationSpec;
    fn deref(&self) -> &KubernetesFederationSpec {
        &self.0
    }
}

impl From<KubernetesFederationSpec> for KubernetesFederationCrdSpec {
    fn from(spec: KubernetesFederationSpec) -> Self {
        KubernetesFederationCrdSpec(spec)
    }
}

/// Observed state, written by the server (its elected leader): the `Ready` condition (`True`
/// when the server loaded the object; else `False`, with the reason and the loader's message)
/// and the `metadata.generation` it describes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// Conditions in the Kubernetes shape (`meta/v1` `Condition`), one per `type`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        with = "Vec<ConditionSchema>",
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"])
    )]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the server last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
}

// The schema of a `meta/v1` `Condition` (k8s-openapi's type has no `JsonSchema` without its
// `schemars` feature, which is heavy); bounds and patterns are Kubernetes' own
// (`apimachinery/pkg/apis/meta/v1/types.go`). `tests/crds.rs` checks that k8s-openapi's
// `Condition` serializes to objects this schema accepts.
/// One condition (Kubernetes' `meta/v1` `Condition`).
#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // A schema only: never built.
struct ConditionSchema {
    /// Type of condition in CamelCase or in `foo.example.com/CamelCase` (here: `Ready`).
    #[serde(rename = "type")]
    #[schemars(
        length(max = 316),
        pattern(
            r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
        )
    )]
    type_: String,
    /// `True`, `False` or `Unknown`.
    status: ConditionStatus,
    /// The `metadata.generation` the condition was set for.
    #[schemars(range(min = 0))]
    observed_generation: Option<i64>,
    /// When the condition last changed from one status to another (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    last_transition_time: String,
    /// Machine-readable CamelCase reason for the last transition.
    #[schemars(
        length(min = 1, max = 1024),
        pattern(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    )]
    reason: String,
    /// Human-readable details (may be empty).
    #[schemars(length(max = 32768))]
    message: String,
}

/// `Condition.status`.
#[derive(JsonSchema)]
#[allow(dead_code)] // A schema only: never built.
enum ConditionStatus {
    True,
    False,
    Unknown,
}

// ESE's fields unchanged; extensions on `IssuedCredential` and `WorkloadBinding` carry what
// the ledger (`crate::ledger::LedgerEntry`) needs besides; all optional.
/// One identity and the credentials issued to it (ESE's shape, plus optional extensions).
/// Written by the server when Kubernetes objects are its ledger; not edited by hand.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
// One `printcolumn(...)` per column: the repeated keys are not duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "federation.external-secrets.io",
    version = "v1alpha1",
    kind = "AuthorizedIdentity",
    plural = "authorizedidentities",
    status = "ResourceStatus",
    category = "external-secrets",
    category = "external-secrets-federation",
    derive = "PartialEq",
    doc = "AuthorizedIdentity: which credentials were issued to one identity (the federation server's ledger).",
    printcolumn(
        name = "Federation",
        type_ = "string",
        json_path = ".spec.identitySpec.federationRef.name",
        description = "The federation the identity came through"
    ),
    printcolumn(
        name = "Subject",
        type_ = "string",
        json_path = ".spec.identitySpec.subject.oidc.subject",
        description = "The identity's token sub"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizedIdentitySpec {
    /// Who: the federation and the subject.
    pub identity_spec: IdentitySpec,
    /// What was issued to it (may be empty).
    pub issued_credentials: Vec<IssuedCredential>,
}

/// `AuthorizedIdentity.spec.identitySpec` (ESE's `IdentitySpec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySpec {
    /// The federation the identity's token came through.
    pub federation_ref: FederationRef,
    /// The identity: `{oidc: {issuer, subject}}` or `{spiffe: {spiffeID}}`.
    pub subject: IdentitySubject,
}

/// ESE's `FederationSubject`: exactly one of `oidc`, `spiffe`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct IdentitySubject {
    /// An OIDC (Kubernetes ServiceAccount) identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcSubject>,
    /// A SPIFFE identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe: Option<SpiffeSubject>,
}

/// One credential issued to the identity (ESE's `IssuedCredential`, plus extensions).
/// Times are RFC 3339.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedCredential {
    /// What produced it: a SecretStore or a generator (`generators.external-secrets.io`).
    pub source_ref: ObjectRef,
    /// Where its revocation state is kept (typically a `GeneratorState`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_ref: Option<ObjectRef>,
    /// The key within the source, when the source is a store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ref: Option<CredentialRemoteRef>,
    /// The workload it was bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_binding: Option<WorkloadBinding>,
    /// When it was (last) issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub last_issued_at: Option<Time>,
    /// Extension: the credential handle (`/v1/credentials/{id}`), a UUID.
    #[serde(
        default,
        rename = "credentialID",
        skip_serializing_if = "Option::is_none"
    )]
    pub credential_id: Option<String>,
    /// Extension: when the backend lets it lapse (moves with each renewal); absent = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub expires_at: Option<Time>,
    /// Extension: whether the backend said it can be renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewable: Option<bool>,
    /// Extension: set once a revocation failed, the time of the next attempt. The sweeper
    /// acts on a credential at `retryAt`, else at `expiresAt` (`LedgerEntry::due_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub retry_at: Option<Time>,
    /// Extension: failed revocation attempts so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Kubernetes knows no `uint32` format (it warns): an int64 bounded to u32.
    #[schemars(range(min = 0, max = 4_294_967_295u32), extend("format" = "int64"))]
    pub attempts: Option<u32>,
    /// Extension: the last revocation failure (a safe message: never a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Extension: the `sub` of the bearer token that asked (differs from the identity's
    /// when an `x-workload-token` named the workload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

/// A reference to an object (ESE's `sourceRef`/`stateRef`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// API version, e.g. `generators.external-secrets.io/v1alpha1`.
    pub api_version: String,
    /// Kind, e.g. `Password`, `ClusterSecretStore`, `GeneratorState`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace, for namespaced kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The key obtained from a store (ESE's `remoteRef`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRemoteRef {
    /// The key in the provider.
    pub remote_key: String,
    /// The property within it (may be empty).
    pub property: String,
}

/// The workload a credential was bound to (ESE's `workloadBinding`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadBinding {
    /// `Pod` or `ServiceAccount`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its UID.
    pub uid: String,
    /// Extension: the ServiceAccount's name when `kind` is `Pod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// Why the CRDs could not be rendered (a bug: the types are fixed at build time).
#[derive(Debug, thiserror::Error)]
#[error("cannot render the CRDs: {0}")]
pub struct CrdError(String);

/// Every CRD of ours: [`Authorization`], [`KubernetesFederation`], [`OidcFederation`],
/// [`OktaFederation`], [`PingIdentityFederation`], [`SpiffeFederation`],
/// [`AuthorizedIdentity`], in that order, with no schema `default`s (see the module docs).
///
/// # Errors
/// [`CrdError`] if a derived CRD does not round-trip through JSON (never, for these types).
pub fn crds() -> Result<Vec<CustomResourceDefinition>, CrdError> {
    [
        Authorization::crd(),
        KubernetesFederation::crd(),
        OidcFederation::crd(),
        OktaFederation::crd(),
        PingIdentityFederation::crd(),
        SpiffeFederation::crd(),
        AuthorizedIdentity::crd(),
    ]
    .into_iter()
    .map(without_defaults)
    .collect()
}

/// Every CRD as one multi-document YAML stream (what `esi-server crds` prints, and
/// `deploy/crds/esi-federation-crds.yaml` holds), preceded by a comment naming its source.
///
/// # Errors
/// [`CrdError`] as [`crds`], or if YAML serialization fails.
pub fn all_yaml() -> Result<String, CrdError> {
    let mut out = String::from(
        "# CustomResourceDefinitions of ESI Federation, generated from its Rust types by\n\
         # `esi-server crds`. Do not edit: regenerate.\n",
    );
    for crd in crds()? {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).map_err(|e| CrdError(e.to_string()))?);
    }
    Ok(out)
}

/// `crd` with every `default` removed from its schemas.
fn without_defaults(crd: CustomResourceDefinition) -> Result<CustomResourceDefinition, CrdError> {
    let mut value = serde_json::to_value(&crd).map_err(|e| CrdError(e.to_string()))?;
    if let Some(versions) = value
        .pointer_mut("/spec/versions")
        .and_then(Value::as_array_mut)
    {
        for version in versions {
            if let Some(schema) = version.pointer_mut("/schema/openAPIV3Schema") {
                strip_defaults(schema);
            }
        }
    }
    serde_json::from_value(value).map_err(|e| CrdError(e.to_string()))
}

/// Removes `default` from a schema and from every schema nested in it (not from
/// `properties` maps themselves, whose keys are field names).
fn strip_defaults(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    obj.remove("default");
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        props.values_mut().for_each(strip_defaults);
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = obj.get_mut(key) {
            strip_defaults(sub);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(subs)) = obj.get_mut(key) {
            subs.iter_mut().for_each(strip_defaults);
        }
    }
}
