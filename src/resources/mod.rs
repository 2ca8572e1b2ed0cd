//! The bottom layer: serde shapes of the resources we read, with ESO/ESE field names, and
//! the Secrets they reference ([`SecretIndex`]). Every other module may use these; they use
//! none of ours.
//!
//! These mirror the Kubernetes objects exactly (camelCase, optional fields) so that
//! existing manifests load unchanged. They carry no behaviour: each consumer turns
//! them into a validated domain type with `TryFrom` (see `authn`, `authz`,
//! `providers`, `generators`), which the directory loader and, later, admission reuse.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod crd;
pub mod external_secret;
mod hash;
mod secrets;
pub mod strict;

pub use hash::{ContentHash, content_hash, text_hash};
pub use secrets::{
    MAX_REFERENCE_DEPTH, SecretIndex, SecretName, SecretRefError, secret_references,
};

/// The metadata we use from a Kubernetes object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name.
    #[serde(default)]
    pub name: String,
    /// Namespace, for namespaced kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// How the server may use the `ca.crt` a client sends in its request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ClientCaPolicy {
    /// Never use the client's CA; only `caBundle` (or system roots) verify `url`.
    Ignore,
    /// Use the client's CA only when it equals one of the `caBundle` certificates.
    MustMatch,
    /// Trust the client's CA for `url` (ESE behaviour).
    Trust,
}

/// `KubernetesFederation.spec`: one trusted client cluster.
///
/// Schema rules (the CRD's `x-kubernetes-validations`, mirroring
/// `authn::Federation::from_spec`): the keys come from somewhere (`url`, `jwks` or
/// `publicKeys`), and without `url` the expected `iss` is given (`issuer`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.url) || has(self.jwks) || (has(self.publicKeys) && size(self.publicKeys) > 0)",
        "message": "set url, jwks or publicKeys: where this federation's token signing keys come from"
    },
    {
        "rule": "has(self.url) || has(self.issuer)",
        "message": "without url, set issuer: the exact iss of this cluster's tokens"
    }
]))]
pub struct KubernetesFederationSpec {
    /// The client cluster's API server (or OIDC issuer) base URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Extension: exact `iss` of this cluster's tokens (defaults to `url`'s discovery issuer).
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub issuer: Option<String>,
    /// Extension: token `aud` must contain one of these.
    #[serde(default)]
    #[schemars(inner(length(min = 1)))]
    pub audiences: Vec<String>,
    /// Extension: base64 PEM bundle pinned for `url`.
    #[serde(default)]
    pub ca_bundle: Option<String>,
    /// Extension: how the client's `ca.crt` is used.
    #[serde(default, rename = "clientCAPolicy")]
    pub client_ca_policy: Option<ClientCaPolicy>,
    /// Extension: static JWKS document (air-gapped clusters). Keys without a `kid` are
    /// candidates for any token of this federation (a JWKS made from `sa.pub` has none).
    #[serde(default)]
    pub jwks: Option<String>,
    /// Extension: static PEM public keys (`-----BEGIN PUBLIC KEY-----`, e.g. a cluster's
    /// `sa.pub`), each entry one or more blocks; RSA 2048–8192, EC P-256 or P-384. Like Vault's
    /// `jwt_validation_pubkeys`, they have no `kid` and are candidates for any token of this
    /// federation. May be combined with `jwks`; either makes the federation static (no fetch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<String>,
    /// Extension: accept legacy secret-based ServiceAccount tokens (no `exp`, no `iat`,
    /// `kubernetes.io/serviceaccount/*` claims). Off by default: such tokens never expire,
    /// so a leaked one is valid until its Secret is deleted.
    #[serde(default)]
    pub allow_legacy_tokens: bool,
}

/// `OIDCFederation.spec` (*extension*, issue 18): any OpenID Connect issuer whose tokens
/// name workloads that are not Kubernetes ServiceAccounts (CI jobs, VMs, services of another
/// platform). Checked by `authn::Federation::from_oidc_spec`.
///
/// Schema rule (the CRD's `x-kubernetes-validations`, mirroring that check): `audiences`
/// is not empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend(
    "required" = ["issuer", "audiences"],
    "x-kubernetes-validations" = [{
        "rule": "size(self.audiences) > 0",
        "message": "set audiences: an OIDC issuer signs tokens for every relying party it serves, so a token must name this server"
    }]
))]
pub struct OidcFederationSpec {
    /// The issuer: the exact `iss` of its tokens, an `https` URL. Keys come from its
    /// discovery document (`{issuer}/.well-known/openid-configuration` → `jwks_uri`, which
    /// must be on the issuer's host) unless `jwksUri` or `jwks` is set.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub issuer: String,
    /// The JWKS URL (`https`), fetched directly instead of through discovery: for an
    /// issuer whose keys live on another host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// A static JWKS document instead of fetching (air-gapped networks, tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// The claim that names the workload: `principal.subject`, matched by
    /// `Authorization.spec.subject.oidc.subject` (default `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_claim: Option<String>,
    /// What every OIDC federation kind has: audiences, CA, bound and exposed claims
    /// (`audiences` is required here).
    #[serde(flatten)]
    pub common: OidcCommonSpec,
}

/// The fields every OIDC federation kind has: `OIDCFederation` and, as extensions, ESE's
/// presets (`OktaFederation`, `PingIdentityFederation`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OidcCommonSpec {
    /// Token `aud` must contain one of these: required for an `OIDCFederation` (an OIDC
    /// issuer signs tokens for every relying party it serves); for a preset, without it
    /// any `aud` passes, with a warning, as ESE does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub audiences: Vec<String>,
    /// Base64 PEM bundle trusted for the issuer's (and `jwksUri`'s) TLS instead of the
    /// public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Claim → exact value or `*` glob; a token must match every entry. A string claim
    /// matches its pattern; an array claim matches when one of its string elements does;
    /// a missing claim, or one of another type, does not match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bound_claims: BTreeMap<String, String>,
    /// Claims handed to policies as `principal.claims.<name>` (strings only; a token whose
    /// listed claim is not a string is refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<String>,
}

/// Most fields an `OktaFederation`'s or `PingIdentityFederation`'s `managementAPI` may hold
/// (the CRD's `maxProperties`; ESE's blocks name a client and a Secret or two).
pub const MAX_MANAGEMENT_API_FIELDS: usize = 16;

/// Why a `managementAPI` block (`OktaFederation`, `PingIdentityFederation`) is refused, as
/// the CRD's schema refuses it, so that directory mode is not laxer than the API server: not
/// an object, or more than [`MAX_MANAGEMENT_API_FIELDS`] fields. `None`: absent or accepted
/// (it is never used; the federation warns that it is ignored).
pub fn management_api_problem(management_api: Option<&serde_json::Value>) -> Option<String> {
    match management_api? {
        serde_json::Value::Object(fields) if fields.len() <= MAX_MANAGEMENT_API_FIELDS => None,
        serde_json::Value::Object(fields) => Some(format!(
            "managementAPI has {} fields (at most {MAX_MANAGEMENT_API_FIELDS})",
            fields.len()
        )),
        _ => Some("managementAPI must be an object".to_owned()),
    }
}

/// `OktaFederation.spec` (ESE): an Okta authorization server, a preset of
/// [`OidcFederationSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["domain"]))]
pub struct OktaFederationSpec {
    /// The Okta organization URL (`https://dev-12345.okta.com`, or a custom domain).
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub domain: String,
    /// The authorization server: absent means `default` (ESE's default), empty means the
    /// org authorization server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_server_id: Option<String>,
    /// ESE: Okta management API credentials for checking that applications still exist.
    /// Accepted and not used (the server does not call Okta's management API): an object
    /// of at most 16 fields.
    #[serde(
        default,
        rename = "managementAPI",
        skip_serializing_if = "Option::is_none"
    )]
    // Any object (ESE's shape, kept as given): typed for Kubernetes' structural schemas,
    // its fields bounded (`MAX_MANAGEMENT_API_FIELDS`, checked in directory mode too by
    // `management_api_problem`).
    #[schemars(extend(
        "type" = "object",
        "maxProperties" = MAX_MANAGEMENT_API_FIELDS,
        "x-kubernetes-preserve-unknown-fields" = true
    ))]
    pub management_api: Option<serde_json::Value>,
    /// Extensions: `audiences`, `caBundle`, `boundClaims`, `claims`.
    #[serde(flatten)]
    pub oidc: OidcCommonSpec,
}

/// `PingIdentityFederation.spec` (ESE): a PingOne environment, a preset of
/// [`OidcFederationSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["region", "environmentId"]))]
pub struct PingIdentityFederationSpec {
    /// The PingOne region: `com`, `eu`, `asia` or `ca`.
    #[serde(default)]
    pub region: String,
    /// The PingOne environment id.
    #[serde(default)]
    pub environment_id: String,
    /// ESE: PingOne management API credentials. Accepted and not used: an object of at
    /// most 16 fields.
    #[serde(
        default,
        rename = "managementAPI",
        skip_serializing_if = "Option::is_none"
    )]
    // Any object (ESE's shape, kept as given): typed for Kubernetes' structural schemas,
    // its fields bounded (`MAX_MANAGEMENT_API_FIELDS`, checked in directory mode too by
    // `management_api_problem`).
    #[schemars(extend(
        "type" = "object",
        "maxProperties" = MAX_MANAGEMENT_API_FIELDS,
        "x-kubernetes-preserve-unknown-fields" = true
    ))]
    pub management_api: Option<serde_json::Value>,
    /// Extensions: `audiences`, `caBundle`, `boundClaims`, `claims`.
    #[serde(flatten)]
    pub oidc: OidcCommonSpec,
}

/// `SpiffeFederation.spec` (ESE: `trustDomain`; the rest are extensions, issue 18): one
/// SPIFFE trust domain whose JWT-SVIDs the server accepts as bearer tokens. Keys come from a
/// static `bundle` or are fetched from `bundleEndpoint`. Checked by
/// `authn::Federation::from_spiffe_spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["trustDomain"]))]
pub struct SpiffeFederationSpec {
    /// The trust domain (`example.org`, no `spiffe://`): a JWT-SVID's `sub` must be a
    /// SPIFFE ID of exactly this trust domain.
    #[serde(default)]
    #[schemars(length(min = 1, max = 255))]
    pub trust_domain: String,
    /// The trust domain's SPIFFE bundle, JWKS form (`spire-server bundle show -format
    /// spiffe`): only its keys with `use: jwt-svid` verify JWT-SVIDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// Where the bundle is fetched (SPIFFE Federation's `https_web` profile), refreshed per
    /// its `spiffe_refresh_hint` (bounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_endpoint: Option<SpiffeBundleEndpoint>,
    /// A JWT-SVID's `aud` must hold one of these (required: a JWT-SVID is meant for the
    /// audiences it names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub audiences: Vec<String>,
}

/// `SpiffeFederation.spec.bundleEndpoint`: a SPIFFE bundle endpoint served over web PKI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["url"]))]
pub struct SpiffeBundleEndpoint {
    /// The endpoint's `https` URL (SPIRE server's federation `bundle_endpoint`).
    #[serde(default)]
    pub url: String,
    /// Base64 PEM bundle trusted for the endpoint's TLS instead of the public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// `federationRef` of an `Authorization`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["name"]))]
pub struct FederationRef {
    /// Kind of the federation: `KubernetesFederation` (or empty), `OIDCFederation`,
    /// `OktaFederation` or `PingIdentityFederation`.
    #[serde(default)]
    pub kind: String,
    /// Name of the federation object.
    #[serde(default)]
    pub name: String,
}

/// OIDC subject matcher.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["issuer", "subject"]))]
pub struct OidcSubject {
    /// Exact `iss`.
    #[serde(default)]
    pub issuer: String,
    /// `sub` (extension: `*` glob).
    #[serde(default)]
    pub subject: String,
}

/// SPIFFE subject matcher (accepted for schema compatibility; SPIFFE federations are not served).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["spiffeID"]))]
pub struct SpiffeSubject {
    /// SPIFFE ID.
    #[serde(rename = "spiffeID", default)]
    pub spiffe_id: String,
}

/// `Authorization.spec.subject`: ESE's CRD form `{oidc: …}` and its samples' flat form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.oidc) ? 1 : 0) + (has(self.spiffe) ? 1 : 0) + ((has(self.issuer) || has(self.subject)) ? 1 : 0) == 1",
        "message": "set exactly one of oidc, spiffe, or the flat issuer and subject"
    },
    {
        "rule": "has(self.issuer) == has(self.subject)",
        "message": "the flat form needs both issuer and subject"
    }
]))]
pub struct AuthorizationSubject {
    /// CRD form.
    #[serde(default)]
    pub oidc: Option<OidcSubject>,
    /// CRD form, SPIFFE.
    #[serde(default)]
    pub spiffe: Option<SpiffeSubject>,
    /// Sample form: issuer.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub issuer: Option<String>,
    /// Sample form: subject.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub subject: Option<String>,
}

/// One entry of `allowedGenerators`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["kind", "name", "namespace"]))]
pub struct AllowedGenerator {
    /// Generator name.
    #[serde(default)]
    pub name: String,
    /// Generator kind (`Fake`, `Password`, …).
    #[serde(default)]
    pub kind: String,
    /// Generator namespace.
    #[serde(default)]
    pub namespace: String,
    /// Optional apiVersion (ignored for matching, as ESE does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

/// One entry of `allowedGeneratorStates`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["namespace"]))]
pub struct AllowedGeneratorState {
    /// Namespace whose generator states the subject may revoke.
    #[serde(default)]
    pub namespace: String,
}

/// `Authorization.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["federationRef", "subject"]))]
pub struct AuthorizationSpec {
    /// The federation whose tokens this authorization applies to.
    #[serde(default)]
    pub federation_ref: FederationRef,
    /// Who.
    #[serde(default)]
    pub subject: Option<AuthorizationSubject>,
    /// ClusterSecretStores the subject may read.
    #[serde(default)]
    pub allowed_cluster_secret_stores: Vec<String>,
    /// Generators the subject may call.
    #[serde(default)]
    pub allowed_generators: Vec<AllowedGenerator>,
    /// Namespaces whose generator states the subject may revoke.
    #[serde(default)]
    pub allowed_generator_states: Vec<AllowedGeneratorState>,
    /// Extension: per-store remote key globs; absent = every key of an allowed store.
    /// Each store named must be in `allowedClusterSecretStores` (checked by the server, not
    /// the schema), with at least one non-empty glob.
    #[serde(default)]
    #[schemars(extend("additionalProperties" = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "minLength": 1}
    }))]
    pub allowed_remote_keys: BTreeMap<String, Vec<String>>,
    /// Extension: a Cedar condition (one expression, e.g.
    /// `context.sourceAddress.isInRange(ip("10.0.0.0/8"))`) added as `when { … }` to every
    /// policy this Authorization compiles to. Parsed as an expression alone and validated
    /// against the schema at load; an invalid one refuses the whole Authorization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub when: Option<String>,
}

/// `SecretStore`/`ClusterSecretStore` spec (ESO). The provider stays untyped here: each
/// provider module parses its own block, so adding a provider touches nothing else.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretStoreSpec {
    /// `spec.provider`: exactly one key naming the provider (`vault`, `fake`, …).
    #[serde(default)]
    pub provider: BTreeMap<String, serde_json::Value>,
    /// ESO's controller class (ignored by the server; the reconciler processes a store
    /// whose class is empty or its own `--controller-class`).
    #[serde(default)]
    pub controller: Option<String>,
    /// `ClusterSecretStore` only: the namespaces whose ExternalSecrets may use the store
    /// (any one condition matching allows; none listed allows every namespace). Ignored by
    /// the server, whose callers are decided by Authorizations; enforced by the reconciler.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<external_secret::ClusterSecretStoreCondition>,
    /// Extension: the store's cache (`{ttl, maxEntries, maxBytes}`), off when absent. Kept
    /// untyped here and checked when the store is built (`providers::cache`), with
    /// messages naming the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<serde_json::Value>,
}

/// A Kubernetes `Secret`, used in directory mode so `…SecretRef`s resolve.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretObject {
    /// base64 values.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// plain values (win over `data`, as in Kubernetes).
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
}

/// ESO's `SecretKeySelector` (`{name, key, namespace?}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Secret name.
    #[serde(default)]
    pub name: String,
    /// Key in the secret.
    #[serde(default)]
    pub key: String,
    /// Namespace (ClusterSecretStores must set it).
    #[serde(default)]
    pub namespace: Option<String>,
}

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
