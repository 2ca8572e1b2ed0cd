//! ESO's `external-secrets.io/v1` `ExternalSecret` (spec only; status is written, not
//! read), and the `ClusterSecretStore` `spec.conditions` it is checked against.
//!
//! Field names and enum spellings are ESO's (camelCase, `CreatedOnce`, `Base64URL`…), every
//! field is optional with ESO's CRD default, and unknown fields are ignored (not refused):
//! the Kubernetes API server prunes fields a CRD does not know, so a manifest that a cluster
//! accepts must load here too. No behaviour lives here: `crate::reconcile` checks bounds
//! ([`MAX_DATA_ENTRIES`], [`MAX_SECRET_KEY_LEN`]…) and acts on the spec.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most `spec.data` entries, and separately most `spec.dataFrom` entries, of one
/// ExternalSecret (the server bounds every list it reads; ESO has no limit).
pub const MAX_DATA_ENTRIES: usize = 1000;
/// Most `rewrite` operations of one `dataFrom` entry.
pub const MAX_REWRITES: usize = 32;
/// Longest Secret data key (Kubernetes' limit for ConfigMap and Secret keys, which ESO
/// checks too: `ValidateKeys`).
pub const MAX_SECRET_KEY_LEN: usize = 253;
/// Longest remote key, property, version, find path, regexp or template text read from an
/// ExternalSecret (bytes); providers apply their own, possibly smaller, bounds.
pub const MAX_REF_LEN: usize = 4096;

/// Which kind of store a `secretStoreRef` names.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum StoreKind {
    /// A namespaced `SecretStore` in the ExternalSecret's namespace (ESO's default).
    #[default]
    SecretStore,
    /// The cluster-scoped `ClusterSecretStore`, subject to its `spec.conditions`.
    ClusterSecretStore,
}

impl StoreKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::SecretStore => "SecretStore",
            StoreKind::ClusterSecretStore => "ClusterSecretStore",
        }
    }
}

/// `secretStoreRef` / `sourceRef.storeRef`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretStoreRef {
    /// Store name.
    #[serde(default)]
    pub name: String,
    /// `SecretStore` (default) or `ClusterSecretStore`.
    #[serde(default)]
    pub kind: Option<StoreKind>,
}

/// `refreshPolicy` (ESO v1; absent means `Periodic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RefreshPolicy {
    /// Sync once, when the Secret is first created; never again.
    CreatedOnce,
    /// Sync every `refreshInterval` (and whenever the ExternalSecret changes).
    #[default]
    Periodic,
    /// Sync only when the ExternalSecret changes (spec, labels or annotations).
    OnChange,
}

/// `target.creationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CreationPolicy {
    /// Create the Secret, owned by the ExternalSecret (owner reference; garbage-collected
    /// with it). ESO's default.
    #[default]
    Owner,
    /// Create the Secret without an owner reference: it outlives the ExternalSecret.
    Orphan,
    /// Merge the data into an existing Secret; never create it.
    Merge,
    /// Fetch only; write no Secret.
    None,
}

/// `target.deletionPolicy`: what happens to the Secret when the provider has no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DeletionPolicy {
    /// Delete the Secret (only with `creationPolicy: Owner`).
    Delete,
    /// Remove the keys whose provider data is gone, keep the Secret.
    Merge,
    /// Keep the Secret as it is (ESO's default); a missing remote key is an error.
    #[default]
    Retain,
}

/// `decodingStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DecodingStrategy {
    /// The value as fetched (default).
    #[default]
    None,
    /// Standard base64 (padded), error if it is not.
    Base64,
    /// URL-safe base64 (padded), error if it is not.
    #[serde(rename = "Base64URL")]
    Base64Url,
    /// Base64, else URL-safe base64, else the value as fetched.
    Auto,
}

/// `conversionStrategy`: how keys from `extract`/`find` become Secret keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ConversionStrategy {
    /// Every character other than a letter, digit, `-`, `.`, `_` becomes `_` (default).
    #[default]
    Default,
    /// Every such character becomes `_UXXXX_` (its code point, lowercase hex).
    Unicode,
}

/// `remoteRef.metadataPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MetadataPolicy {
    /// Fetch the secret's data (default).
    #[default]
    None,
    /// Fetch the secret's metadata (tags) instead (provider-specific; not supported here).
    Fetch,
}

/// `data[].remoteRef` and `dataFrom[].extract`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteRefSpec {
    /// The secret's key in the provider.
    #[serde(default)]
    pub key: String,
    /// A property inside the secret.
    #[serde(default)]
    pub property: Option<String>,
    /// A provider version of the secret.
    #[serde(default)]
    pub version: Option<String>,
    /// How to decode the fetched value(s).
    #[serde(default)]
    pub decoding_strategy: DecodingStrategy,
    /// How to turn fetched keys into Secret keys (`extract` only).
    #[serde(default)]
    pub conversion_strategy: ConversionStrategy,
    /// Data or metadata.
    #[serde(default)]
    pub metadata_policy: MetadataPolicy,
}

/// `generatorRef` of a `dataFrom[].sourceRef`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GeneratorRef {
    /// `generators.external-secrets.io/v1alpha1`.
    #[serde(default)]
    pub api_version: String,
    /// Generator kind (`Password`, `ClusterGenerator`, …).
    #[serde(default)]
    pub kind: String,
    /// Generator name (in the ExternalSecret's namespace, unless cluster-scoped).
    #[serde(default)]
    pub name: String,
}

/// `sourceRef` of a `data[]` or `dataFrom[]` entry: another store, or (dataFrom only) a
/// generator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef {
    /// A store other than `spec.secretStoreRef`.
    #[serde(default)]
    pub store_ref: Option<SecretStoreRef>,
    /// A generator (its output is the entry's data).
    #[serde(default)]
    pub generator_ref: Option<GeneratorRef>,
}

/// One `spec.data` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSecretData {
    /// The Secret key to write.
    #[serde(default)]
    pub secret_key: String,
    /// What to fetch.
    #[serde(default)]
    pub remote_ref: RemoteRefSpec,
    /// Another store for this entry.
    #[serde(default)]
    pub source_ref: Option<SourceRef>,
}

/// `find.name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FindName {
    /// A regular expression secret names must match (unanchored, as Go's `MatchString`).
    #[serde(default)]
    pub regexp: String,
}

/// `dataFrom[].find`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FindSpec {
    /// Search under this path only.
    #[serde(default)]
    pub path: Option<String>,
    /// Keep secrets whose name matches.
    #[serde(default)]
    pub name: Option<FindName>,
    /// Keep secrets carrying all these tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// How to decode the values.
    #[serde(default)]
    pub decoding_strategy: DecodingStrategy,
    /// How to turn secret names into Secret keys.
    #[serde(default)]
    pub conversion_strategy: ConversionStrategy,
}

/// `rewrite[].regexp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RewriteRegexp {
    /// Regular expression matched against each key.
    #[serde(default)]
    pub source: String,
    /// Replacement (`$1`, `${name}` expand groups, as Go's `ReplaceAllString`).
    #[serde(default)]
    pub target: String,
}

/// `rewrite[].transform`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RewriteTransform {
    /// A template rendering each key (`{{ .value }}` is the key).
    #[serde(default)]
    pub template: String,
}

/// `rewrite[].merge.conflictPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MergeConflictPolicy {
    /// A key present in two merged values is an error (default).
    #[default]
    Error,
    /// The later value wins.
    Ignore,
}

/// `rewrite[].merge.priorityPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MergePriorityPolicy {
    /// A `priority` key that is absent is an error (default).
    #[default]
    Strict,
    /// Absent `priority` keys are skipped.
    IgnoreNotFound,
}

/// `rewrite[].merge.strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MergeStrategy {
    /// The merged object's keys become the data (default).
    #[default]
    Extract,
    /// The merged object, as JSON, is added under `into`.
    #[serde(rename = "JSON")]
    Json,
}

/// `rewrite[].merge`: merge JSON-object values into one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RewriteMerge {
    /// Target key (strategy `JSON`).
    #[serde(default)]
    pub into: String,
    /// Conflicts: error or ignore.
    #[serde(default)]
    pub conflict_policy: MergeConflictPolicy,
    /// Keys merged last, in this order (they win).
    #[serde(default)]
    pub priority: Vec<String>,
    /// Absent priority keys: error or skip.
    #[serde(default)]
    pub priority_policy: MergePriorityPolicy,
    /// Extract or JSON.
    #[serde(default)]
    pub strategy: MergeStrategy,
}

/// One `rewrite` operation (exactly one field set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rewrite {
    /// Rename keys by regular expression.
    #[serde(default)]
    pub regexp: Option<RewriteRegexp>,
    /// Rename keys by template.
    #[serde(default)]
    pub transform: Option<RewriteTransform>,
    /// Merge JSON values.
    #[serde(default)]
    pub merge: Option<RewriteMerge>,
}

/// One `spec.dataFrom` entry (exactly one of `extract`, `find`, `sourceRef.generatorRef`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSecretDataFrom {
    /// Every property of one secret.
    #[serde(default)]
    pub extract: Option<RemoteRefSpec>,
    /// Every secret matching.
    #[serde(default)]
    pub find: Option<FindSpec>,
    /// Key rewrites, in order.
    #[serde(default)]
    pub rewrite: Vec<Rewrite>,
    /// Another store, or a generator.
    #[serde(default)]
    pub source_ref: Option<SourceRef>,
}

/// `target.template.metadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels (templated).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations (templated).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// `templateAs` of a `templateFrom` item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TemplateScope {
    /// The item's key is the Secret key, the rendered item the value (default).
    #[default]
    Values,
    /// The rendered item is YAML: key → value pairs.
    KeysAndValues,
}

/// One item of a `templateFrom` ConfigMap/Secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRefItem {
    /// Key in the ConfigMap/Secret.
    #[serde(default)]
    pub key: String,
    /// How the rendered text is used.
    #[serde(default)]
    pub template_as: TemplateScope,
}

/// `templateFrom[].configMap` / `.secret`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    /// Name, in the ExternalSecret's namespace.
    #[serde(default)]
    pub name: String,
    /// Items rendered.
    #[serde(default)]
    pub items: Vec<TemplateRefItem>,
}

/// One `templateFrom` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateFrom {
    /// Templates from a ConfigMap.
    #[serde(default)]
    pub config_map: Option<TemplateRef>,
    /// Templates from a Secret.
    #[serde(default)]
    pub secret: Option<TemplateRef>,
    /// `Data` (default), `Annotations` or `Labels`.
    #[serde(default)]
    pub target: Option<String>,
    /// An inline template (KeysAndValues).
    #[serde(default)]
    pub literal: Option<String>,
    /// How the values a `KeysAndValues` template renders are decoded (keys never are).
    #[serde(default)]
    pub values_decoding_strategy: DecodingStrategy,
}

/// `target.template.mergePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TemplateMergePolicy {
    /// Only the templates' output (default).
    #[default]
    Replace,
    /// The provider data first, the templates' output over it.
    Merge,
}

/// `target.template`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Secret `type`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// `v2` (the only engine of API v1).
    #[serde(default)]
    pub engine_version: Option<String>,
    /// Labels and annotations.
    #[serde(default)]
    pub metadata: Option<TemplateMetadata>,
    /// Secret key → template.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Templates from ConfigMaps, Secrets, literals.
    #[serde(default)]
    pub template_from: Vec<TemplateFrom>,
    /// Replace or Merge.
    #[serde(default)]
    pub merge_policy: TemplateMergePolicy,
}

/// `spec.target`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSecretTarget {
    /// Secret name (default: the ExternalSecret's name).
    #[serde(default)]
    pub name: Option<String>,
    /// Owner (default), Orphan, Merge, None.
    #[serde(default)]
    pub creation_policy: CreationPolicy,
    /// Retain (default), Delete, Merge.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Write the Secret `immutable: true`.
    #[serde(default)]
    pub immutable: bool,
    /// The Secret's shape.
    #[serde(default)]
    pub template: Option<SecretTemplate>,
}

/// `ExternalSecret.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSecretSpec {
    /// The default store of every entry.
    #[serde(default)]
    pub secret_store_ref: Option<SecretStoreRef>,
    /// The Secret to write.
    #[serde(default)]
    pub target: ExternalSecretTarget,
    /// Go duration (`1h`, `30m`, `0` = never refresh); default `1h`.
    #[serde(default)]
    pub refresh_interval: Option<String>,
    /// CreatedOnce, Periodic (default), OnChange.
    #[serde(default)]
    pub refresh_policy: Option<RefreshPolicy>,
    /// One key each.
    #[serde(default)]
    pub data: Vec<ExternalSecretData>,
    /// Many keys each.
    #[serde(default)]
    pub data_from: Vec<ExternalSecretDataFrom>,
}

/// A Kubernetes `LabelSelectorRequirement`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// Label key.
    #[serde(default)]
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    #[serde(default)]
    pub operator: String,
    /// Values (`In`/`NotIn`).
    #[serde(default)]
    pub values: Vec<String>,
}

/// A Kubernetes `LabelSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Exact labels.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Expressions (all must hold).
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `ClusterSecretStore` `spec.conditions[]` entry: which namespaces may use the store
/// (any one matching condition allows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSecretStoreCondition {
    /// Namespaces whose labels match.
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    /// Namespaces by name.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Namespaces whose name matches one of these regular expressions (unanchored).
    #[serde(default)]
    pub namespace_regexes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_eso_manifest_loads_with_defaults_and_unknown_fields() {
        let spec: ExternalSecretSpec = serde_json::from_value(json!({
            "refreshInterval": "15m",
            "secretStoreRef": {"name": "vault", "kind": "ClusterSecretStore"},
            "target": {"name": "t", "creationPolicy": "Merge", "deletionPolicy": "Delete",
                       "template": {"type": "kubernetes.io/tls", "engineVersion": "v2",
                                    "mergePolicy": "Merge", "data": {"a": "{{ .x }}"},
                                    "templateFrom": [{"configMap": {"name": "cm", "items": [{"key": "k", "templateAs": "KeysAndValues"}]}}]}},
            "data": [{"secretKey": "k", "remoteRef": {"key": "db", "property": "p", "decodingStrategy": "Base64URL",
                      "conversionStrategy": "Unicode", "metadataPolicy": "None", "nullBytePolicy": "Ignore"}}],
            "dataFrom": [
                {"extract": {"key": "x", "decodingStrategy": "Auto"}, "rewrite": [{"regexp": {"source": "a", "target": "b"}}]},
                {"find": {"path": "p", "name": {"regexp": "^x"}, "tags": {"t": "v"}}},
                {"sourceRef": {"generatorRef": {"apiVersion": "generators.external-secrets.io/v1alpha1", "kind": "Password", "name": "pw"}},
                 "rewrite": [{"merge": {"into": "all", "strategy": "JSON", "conflictPolicy": "Ignore", "priorityPolicy": "IgnoreNotFound"}}]}
            ],
            "someFutureField": true
        }))
        .unwrap();
        assert_eq!(spec.refresh_interval.as_deref(), Some("15m"));
        assert_eq!(spec.refresh_policy, None);
        assert_eq!(spec.target.creation_policy, CreationPolicy::Merge);
        assert_eq!(spec.target.deletion_policy, DeletionPolicy::Delete);
        assert_eq!(
            spec.data[0].remote_ref.decoding_strategy,
            DecodingStrategy::Base64Url
        );
        assert_eq!(
            spec.data[0].remote_ref.conversion_strategy,
            ConversionStrategy::Unicode
        );
        assert_eq!(
            spec.data_from[0]
                .extract
                .as_ref()
                .unwrap()
                .decoding_strategy,
            DecodingStrategy::Auto
        );
        assert_eq!(
            spec.data_from[2].rewrite[0]
                .merge
                .as_ref()
                .unwrap()
                .strategy,
            MergeStrategy::Json
        );
        let t = spec.target.template.unwrap();
        assert_eq!(t.merge_policy, TemplateMergePolicy::Merge);
        assert_eq!(
            t.template_from[0].config_map.as_ref().unwrap().items[0].template_as,
            TemplateScope::KeysAndValues
        );
        // Defaults: Owner, Retain, Periodic, None, Default.
        let empty: ExternalSecretSpec = serde_json::from_value(json!({})).unwrap();
        assert_eq!(empty.target.creation_policy, CreationPolicy::Owner);
        assert_eq!(empty.target.deletion_policy, DeletionPolicy::Retain);
        // A misspelt enum value is refused (the API server would refuse it too).
        assert!(
            serde_json::from_value::<ExternalSecretSpec>(
                json!({"target": {"creationPolicy": "owner"}})
            )
            .is_err()
        );
    }

    #[test]
    fn conditions_load() {
        let c: Vec<ClusterSecretStoreCondition> = serde_json::from_value(json!([
            {"namespaceSelector": {"matchLabels": {"team": "a"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}},
            {"namespaces": ["ns1"], "namespaceRegexes": ["^team-"]}
        ]))
        .unwrap();
        assert_eq!(
            c[0].namespace_selector.as_ref().unwrap().match_expressions[0].operator,
            "In"
        );
        assert_eq!(c[1].namespace_regexes, ["^team-"]);
    }
}
