//! `sync`: one ExternalSecret → the whole desired Secret, or an error. Every backend call
//! of a sync happens here; nothing is written here, and no Kubernetes client is used, so
//! directory mode and Kubernetes mode share it.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha3::{Digest, Sha3_224};

use crate::generators::{self, GenerateContext, RevocationState};
use crate::providers::{FindRequest, RemoteRef, SecretProvider};
use crate::resources::GeneratorKey;
use crate::resources::external_secret::{
    CreationPolicy, DeletionPolicy, ExternalSecretDataFrom, ExternalSecretSpec, MAX_DATA_ENTRIES,
    MAX_REF_LEN, MAX_REWRITES, MAX_SECRET_KEY_LEN, MetadataPolicy, RemoteRefSpec, SecretStoreRef,
    StoreKind,
};

use super::SyncError;
use super::inventory::{ExistingSecret, ExternalSecretObject, Inventory, StoreId};
use super::keys::{self, DataMap};
use super::stores;
use super::template::{self, TemplateRenderer};

/// Kubernetes' limit on a Secret's data (bytes of keys and values).
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;

/// ESO's label on every Secret it manages.
pub const LABEL_MANAGED: &str = "reconcile.external-secrets.io/managed";
/// ESO's label naming (by hash) the ExternalSecret that owns a Secret (creationPolicy Owner).
pub const LABEL_OWNER: &str = "reconcile.external-secrets.io/created-by";
/// ESO's annotation holding the hash of the data it wrote.
pub const ANNOTATION_DATA_HASH: &str = "reconcile.external-secrets.io/data-hash";
/// The ExternalSecret API version written in owner references.
pub const EXTERNAL_SECRET_API_VERSION: &str = "external-secrets.io/v1";

/// What `sync` needs besides the ExternalSecret and the inventory.
#[derive(Clone, Default)]
pub struct SyncOptions {
    /// `--controller-class`: stores of another class are not ours.
    pub controller_class: String,
    /// The template engine for `target.template` and `rewrite[].transform`
    /// ([`super::template::engine`]); `None`: such an ExternalSecret fails as unsupported.
    pub templates: Option<Arc<dyn TemplateRenderer>>,
}

impl std::fmt::Debug for SyncOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncOptions")
            .field("controller_class", &self.controller_class)
            .field("templates", &self.templates.is_some())
            .finish()
    }
}

/// A credential a generator issued during a sync, with what revokes it. Recorded by the
/// caller as soon as it is issued (before the Secret is written), so a failed sync or a
/// later cleanup can revoke it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedCredential {
    /// Generator namespace (empty for a ClusterGenerator).
    pub namespace: String,
    /// Generator kind.
    pub kind: String,
    /// Generator name.
    pub name: String,
    /// What the generator needs to revoke it (sensitive: kept out of logs).
    pub state: RevocationState,
    /// When it lapses on its own (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Replaced (no longer in the target Secret's desired data): revoked once this time has
    /// passed (seconds since the epoch), so that workloads still reading the previous value
    /// (a mounted Secret is refreshed by the kubelet only after a minute or two, an
    /// environment variable only at a restart) have a grace. `None`: in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_after: Option<u64>,
}

impl IssuedCredential {
    /// Whether `other` is the same credential (same generator and revocation state),
    /// whatever its deadlines.
    pub fn same(&self, other: &IssuedCredential) -> bool {
        self.namespace == other.namespace
            && self.kind == other.kind
            && self.name == other.name
            && self.state == other.state
    }

    /// The generator's key.
    pub fn generator_key(&self) -> GeneratorKey {
        GeneratorKey {
            namespace: self.namespace.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
        }
    }
}

/// The owner reference of a Secret with `creationPolicy: Owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerReference {
    /// ExternalSecret name.
    pub name: String,
    /// Its `metadata.uid`, when known.
    pub uid: Option<String>,
}

/// The Secret an ExternalSecret wants, whole. Debug shows keys, never values.
#[derive(Clone, PartialEq, Eq)]
pub struct DesiredSecret {
    /// Namespace (the ExternalSecret's).
    pub namespace: String,
    /// `target.name`, else the ExternalSecret's name.
    pub name: String,
    /// `type` (`Opaque` unless templated).
    pub type_: String,
    /// Labels: the ExternalSecret's (no template), ESO's managed label, and the owner label
    /// for creationPolicy Owner.
    pub labels: BTreeMap<String, String>,
    /// Annotations: the ExternalSecret's (no template) and ESO's data hash.
    pub annotations: BTreeMap<String, String>,
    /// Data.
    pub data: BTreeMap<String, Vec<u8>>,
    /// `immutable: true`.
    pub immutable: bool,
    /// Owner reference (creationPolicy Owner).
    pub owner: Option<OwnerReference>,
    /// Whether the provider returned no data at all (deletionPolicy applies).
    pub provider_data_empty: bool,
}

impl std::fmt::Debug for DesiredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredSecret")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("type", &self.type_)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl DesiredSecret {
    /// The Secret merged into `existing` (creationPolicy Merge): its type, labels,
    /// annotations and other keys kept, ours written over them; no owner reference.
    pub fn merged_into(mut self, existing: &ExistingSecret) -> DesiredSecret {
        let mut data = existing.data.clone();
        data.append(&mut self.data);
        let mut labels = existing.labels.clone();
        labels.remove(LABEL_OWNER);
        labels.append(&mut self.labels);
        let mut annotations = existing.annotations.clone();
        annotations.append(&mut self.annotations);
        DesiredSecret {
            type_: existing.type_.clone(),
            labels,
            annotations,
            data,
            immutable: self.immutable || existing.immutable,
            owner: None,
            ..self
        }
        .sealed()
    }

    /// Sets ESO's data-hash annotation over the current data.
    pub fn sealed(mut self) -> DesiredSecret {
        self.annotations
            .insert(ANNOTATION_DATA_HASH.to_string(), data_hash(&self.data));
        self
    }

    /// Bytes of keys and values (what Kubernetes' 1 MiB limit counts).
    pub fn size(&self) -> usize {
        self.data.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

fn sha3_224_hex(text: &str) -> String {
    Sha3_224::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// ESO's `utils.ObjectHash(secret.Data)`: SHA3-224 (hex) of Go's `%+v` of a
/// `map[string][]byte` (`map[a:[104 105] b:[]]`, keys sorted).
pub fn data_hash(data: &BTreeMap<String, Vec<u8>>) -> String {
    let mut text = String::from("map[");
    for (i, (k, v)) in data.iter().enumerate() {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(k);
        text.push_str(":[");
        let bytes: Vec<String> = v.iter().map(u8::to_string).collect();
        text.push_str(&bytes.join(" "));
        text.push(']');
    }
    text.push(']');
    sha3_224_hex(&text)
}

/// ESO's owner label value: `ObjectHash("<namespace>/<name>")`.
pub fn owner_label(namespace: &str, name: &str) -> String {
    sha3_224_hex(&format!("{namespace}/{name}"))
}

/// Whether `name` is a Kubernetes object name (RFC 1123 subdomain: at most 253 of `a-z`,
/// `0-9`, `-`, `.`, starting and ending with a letter or digit).
pub fn is_object_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// The target Secret's name: `target.name`, else the ExternalSecret's.
pub fn target_name(es: &ExternalSecretObject, spec: &ExternalSecretSpec) -> String {
    spec.target
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| es.name.clone())
}

fn invalid(msg: impl Into<String>) -> SyncError {
    SyncError::InvalidSpec(msg.into())
}

fn check_ref(r: &RemoteRefSpec, at: &str) -> Result<(), SyncError> {
    if r.key.is_empty() {
        return Err(invalid(format!("{at}.key is empty")));
    }
    for (field, v) in [
        ("key", Some(&r.key)),
        ("property", r.property.as_ref()),
        ("version", r.version.as_ref()),
    ] {
        if v.is_some_and(|v| v.len() > MAX_REF_LEN) {
            return Err(invalid(format!(
                "{at}.{field} is longer than {MAX_REF_LEN} bytes"
            )));
        }
    }
    if r.metadata_policy == MetadataPolicy::Fetch {
        return Err(SyncError::Unsupported(format!(
            "{at}.metadataPolicy: Fetch"
        )));
    }
    Ok(())
}

/// ESO's admission rules and our bounds, checked before any backend call.
pub fn validate(es: &ExternalSecretObject, spec: &ExternalSecretSpec) -> Result<(), SyncError> {
    if !generators::is_namespace_name(&es.namespace) {
        return Err(invalid(format!(
            "namespace {:?} is not a namespace name",
            es.namespace
        )));
    }
    let secret = target_name(es, spec);
    if !is_object_name(&secret) {
        return Err(invalid(format!(
            "target.name {secret:?} is not a Kubernetes object name"
        )));
    }
    if secret.ends_with(super::output::STATUS_SUFFIX) {
        return Err(invalid(format!(
            "target.name {secret:?} ends with {:?}, which names status files in --output",
            super::output::STATUS_SUFFIX
        )));
    }
    let t = &spec.target;
    // A template reading the Secret it writes renders again after each write (with a
    // generator: a new credential each time, without end).
    if let Some(i) = t
        .template
        .iter()
        .flat_map(|tpl| &tpl.template_from)
        .position(|f| f.secret.as_ref().is_some_and(|r| r.name == secret))
    {
        return Err(invalid(format!(
            "spec.target.template.templateFrom[{i}].secret names the target Secret {secret:?} itself"
        )));
    }
    if t.deletion_policy == DeletionPolicy::Delete && t.creation_policy == CreationPolicy::Merge {
        return Err(invalid(
            "deletionPolicy=Delete must not be used when the controller doesn't own the secret. Please set creationPolicy=Owner",
        ));
    }
    if t.deletion_policy == DeletionPolicy::Merge && t.creation_policy == CreationPolicy::None {
        return Err(invalid(
            "deletionPolicy=Merge must not be used with creationPolicy=None. There is no Secret to merge with",
        ));
    }
    if spec.data.len() > MAX_DATA_ENTRIES || spec.data_from.len() > MAX_DATA_ENTRIES {
        return Err(invalid(format!(
            "more than {MAX_DATA_ENTRIES} data or dataFrom entries"
        )));
    }
    if spec.data.is_empty() && spec.data_from.is_empty() && t.template.is_none() {
        return Err(invalid("either data or dataFrom should be specified"));
    }
    for (i, d) in spec.data.iter().enumerate() {
        let at = format!("spec.data[{i}]");
        if d.secret_key.is_empty()
            || d.secret_key.len() > MAX_SECRET_KEY_LEN
            || !d
                .secret_key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            return Err(invalid(format!(
                "{at}.secretKey must be 1 to {MAX_SECRET_KEY_LEN} of [-._a-zA-Z0-9]"
            )));
        }
        check_ref(&d.remote_ref, &format!("{at}.remoteRef"))?;
        if d.source_ref
            .as_ref()
            .is_some_and(|s| s.generator_ref.is_some())
        {
            return Err(invalid(format!(
                "{at}.sourceRef.generatorRef is not supported in spec.data (use dataFrom)"
            )));
        }
    }
    for (i, d) in spec.data_from.iter().enumerate() {
        let at = format!("spec.dataFrom[{i}]");
        let generator = d.source_ref.as_ref().and_then(|s| s.generator_ref.as_ref());
        let set = usize::from(d.extract.is_some())
            + usize::from(d.find.is_some())
            + usize::from(generator.is_some());
        if set != 1 {
            return Err(invalid(format!(
                "{at}: set exactly one of extract, find, sourceRef.generatorRef"
            )));
        }
        if d.rewrite.len() > MAX_REWRITES {
            return Err(invalid(format!("{at}: more than {MAX_REWRITES} rewrites")));
        }
        if let Some(e) = &d.extract {
            check_ref(e, &format!("{at}.extract"))?;
        }
        if let Some(f) = &d.find {
            let regexp_len = f.name.as_ref().map_or(0, |n| n.regexp.len());
            if f.path.as_ref().is_some_and(|p| p.len() > MAX_REF_LEN) || regexp_len > MAX_REF_LEN {
                return Err(invalid(format!(
                    "{at}.find: path or name.regexp is longer than {MAX_REF_LEN} bytes"
                )));
            }
            if f.path.is_none() && f.name.is_none() && f.tags.is_empty() {
                return Err(invalid(format!("{at}.find: set path, name or tags")));
            }
        }
        if let Some(g) = generator {
            if g.name.is_empty() || g.kind.is_empty() {
                return Err(invalid(format!(
                    "{at}.sourceRef.generatorRef needs kind and name"
                )));
            }
            if !g.api_version.is_empty()
                && !g.api_version.starts_with("generators.external-secrets.io/")
            {
                return Err(invalid(format!(
                    "{at}.sourceRef.generatorRef.apiVersion must be generators.external-secrets.io/…"
                )));
            }
        }
    }
    Ok(())
}

/// The template engine when the spec needs one (`target.template`, `rewrite[].transform`),
/// checked before any backend call: without one such an ExternalSecret fails as
/// unsupported.
fn renderer_for<'a>(
    spec: &ExternalSecretSpec,
    opts: &'a SyncOptions,
) -> Result<Option<&'a dyn TemplateRenderer>, SyncError> {
    let transform = spec
        .data_from
        .iter()
        .flat_map(|d| &d.rewrite)
        .any(|r| r.transform.is_some());
    match opts.templates.as_deref() {
        Some(r) => Ok(Some(r)),
        None if spec.target.template.is_some() => Err(SyncError::Unsupported(
            "target.template needs the template engine, which this reconciler was not given".into(),
        )),
        None if transform => Err(SyncError::Unsupported(
            "rewrite[].transform needs the template engine, which this reconciler was not given"
                .into(),
        )),
        None => Ok(None),
    }
}

fn store_id(es_namespace: &str, r: &SecretStoreRef) -> StoreId {
    let kind = r.kind.unwrap_or_default();
    StoreId {
        kind,
        namespace: match kind {
            StoreKind::SecretStore => es_namespace.to_string(),
            StoreKind::ClusterSecretStore => String::new(),
        },
        name: r.name.clone(),
    }
}

/// Every store reference of the spec: the default one and each `sourceRef.storeRef`.
fn store_refs(spec: &ExternalSecretSpec) -> impl Iterator<Item = &SecretStoreRef> {
    spec.secret_store_ref
        .iter()
        .filter(|r| !r.name.is_empty())
        .chain(
            spec.data
                .iter()
                .filter_map(|d| d.source_ref.as_ref()?.store_ref.as_ref()),
        )
        .chain(
            spec.data_from
                .iter()
                .filter_map(|d| d.source_ref.as_ref()?.store_ref.as_ref()),
        )
}

/// ESO's `shouldSkipUnmanagedStore`: `false` when a store the ExternalSecret references
/// exists and belongs to another controller class; such an ExternalSecret is not this
/// reconciler's, and is left alone (no sync, no status). A store that does not exist does
/// not make it someone else's (the sync then fails, naming it).
pub fn is_managed(es: &ExternalSecretObject, inv: &Inventory, opts: &SyncOptions) -> bool {
    let Ok(spec) = &es.spec else { return true };
    store_refs(spec).all(|r| {
        inv.store(&store_id(&es.namespace, r))
            .is_none_or(|s| stores::manages(s.controller.as_deref(), &opts.controller_class))
    })
}

/// The store an entry reads, after ESO's checks: it exists, it is this controller's, a
/// ClusterSecretStore's conditions admit the namespace, and it is ready.
fn resolve_store<'a>(
    es: &ExternalSecretObject,
    spec: &'a ExternalSecretSpec,
    source: Option<&'a SecretStoreRef>,
    inv: &Inventory,
    opts: &SyncOptions,
) -> Result<(&'a str, Arc<dyn SecretProvider>), SyncError> {
    let r = source
        .or(spec.secret_store_ref.as_ref())
        .filter(|r| !r.name.is_empty())
        .ok_or_else(|| invalid("spec.secretStoreRef.name is not set"))?;
    let id = store_id(&es.namespace, r);
    let kind = id.kind.as_str();
    let entry = inv.store(&id).ok_or_else(|| SyncError::StoreNotFound {
        kind,
        name: r.name.clone(),
    })?;
    if !stores::manages(entry.controller.as_deref(), &opts.controller_class) {
        return Err(SyncError::StoreUnmanaged {
            name: r.name.clone(),
            class: entry.controller.clone().unwrap_or_default(),
        });
    }
    if id.kind == StoreKind::ClusterSecretStore {
        let labels = inv.namespace_labels(&es.namespace);
        // Without the Namespace object its labels are unknown: selectors cannot be decided
        // and never admit (`NotIn`/`DoesNotExist` would hold for want of labels); names and
        // regexps still can.
        let conditions: Vec<_> = if inv.namespace_known(&es.namespace) {
            entry.conditions.clone()
        } else {
            entry
                .conditions
                .iter()
                .cloned()
                .map(|mut c| {
                    c.namespace_selector = None;
                    c
                })
                .collect()
        };
        let allowed =
            stores::namespace_allowed(&conditions, &es.namespace, &labels).map_err(|reason| {
                SyncError::StoreConditionInvalid {
                    name: r.name.clone(),
                    reason,
                }
            })?;
        if !allowed {
            return Err(SyncError::StoreDenied {
                name: r.name.clone(),
                namespace: es.namespace.clone(),
            });
        }
    }
    match &entry.provider {
        Ok(p) => Ok((r.name.as_str(), p.clone())),
        Err(reason) => Err(SyncError::StoreNotReady {
            kind,
            name: r.name.clone(),
            reason: reason.clone(),
        }),
    }
}

fn provider_error(what: &str, store: &str, source: crate::providers::ProviderError) -> SyncError {
    SyncError::Provider {
        what: what.to_string(),
        store: store.to_string(),
        source,
    }
}

#[allow(clippy::too_many_arguments)]
async fn data_from_entry(
    es: &ExternalSecretObject,
    spec: &ExternalSecretSpec,
    entry: &ExternalSecretDataFrom,
    what: &str,
    inv: &Inventory,
    opts: &SyncOptions,
    issued: &mut Vec<IssuedCredential>,
    hook: Option<&mut (dyn OnIssued + '_)>,
) -> Result<DataMap, SyncError> {
    let renderer = opts.templates.as_deref();
    let source = entry.source_ref.as_ref();
    if let Some(g) = source.and_then(|s| s.generator_ref.as_ref()) {
        let key = GeneratorKey {
            namespace: if generators::is_cluster_scoped(&g.kind) {
                String::new()
            } else {
                es.namespace.clone()
            },
            kind: g.kind.clone(),
            name: g.name.clone(),
        };
        let unavailable = |reason: String| SyncError::GeneratorUnavailable {
            what: what.to_string(),
            kind: g.kind.clone(),
            name: g.name.clone(),
            reason,
        };
        let generator = match inv.generator(&key) {
            None => return Err(unavailable("not found".into())),
            Some(Err(reason)) => return Err(unavailable(format!("is not ready: {reason}"))),
            Some(Ok(g)) => g.clone(),
        };
        let generated = generator
            .generate(&GenerateContext::default())
            .await
            .map_err(|source| SyncError::Generator {
                what: what.to_string(),
                kind: g.kind.clone(),
                name: g.name.clone(),
                source,
            })?;
        if let Some(state) = generated.revocation {
            issued.push(IssuedCredential {
                namespace: key.namespace,
                kind: key.kind,
                name: key.name,
                state,
                expires_at: generated.expires_at,
                revoke_after: None,
            });
            if let Some(hook) = hook
                && let Some(cred) = issued.last()
            {
                hook.issued(cred).await?;
            }
        }
        let map: DataMap = generated
            .data
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        let map = keys::rewrite_map(&entry.rewrite, map, what, renderer)?;
        return keys::validate_keys(map, what);
    }
    let (store, provider) = resolve_store(
        es,
        spec,
        source.and_then(|s| s.store_ref.as_ref()),
        inv,
        opts,
    )?;
    let (map, conversion, decoding) = if let Some(find) = &entry.find {
        let what = format!("{what}.find");
        let request = FindRequest {
            path: find.path.clone(),
            name_regexp: find.name.as_ref().map(|n| n.regexp.clone()),
            tags: find.tags.clone(),
        };
        let canonical = provider
            .canonical_find(&request)
            .map_err(|e| provider_error(&what, store, e))?;
        let found = provider
            .find(&canonical)
            .await
            .map_err(|e| provider_error(&what, store, e))?;
        (found, find.conversion_strategy, find.decoding_strategy)
    } else if let Some(extract) = &entry.extract {
        let what = format!("{what}.extract (key: {})", extract.key);
        let canonical = provider
            .canonical_ref(&RemoteRef {
                key: extract.key.clone(),
                property: extract.property.clone(),
                version: extract.version.clone(),
            })
            .map_err(|e| provider_error(&what, store, e))?;
        let map = provider
            .get_secret_map(&canonical)
            .await
            .map_err(|e| provider_error(&what, store, e))?;
        (map, extract.conversion_strategy, extract.decoding_strategy)
    } else {
        return Err(invalid(format!(
            "{what}: set exactly one of extract, find, sourceRef.generatorRef"
        )));
    };
    // ESO's order: rewrite; convert keys only when there is no rewrite; validate; decode.
    let map = if entry.rewrite.is_empty() {
        keys::convert_keys(conversion, map, what)?
    } else {
        keys::rewrite_map(&entry.rewrite, map, what, renderer)?
    };
    let map = keys::validate_keys(map, what)?;
    keys::decode_map(decoding, map, what)
}

/// Fetches everything `es` asks for and builds the whole Secret, or fails as a whole.
///
/// ESO's order: `dataFrom` entries in order, then `data` entries (a later key wins). With a
/// `deletionPolicy` other than `Retain`, an entry whose remote secret does not exist is
/// skipped (ESO's `NoSecretErr`); with `Retain` it is an error. Every reference is made
/// canonical by its store before it is read. Credentials issued by generators are pushed
/// to `issued` as soon as they exist, whatever happens next.
///
/// Errors: [`SyncError`] (never holding a value).
pub async fn sync(
    es: &ExternalSecretObject,
    inv: &Inventory,
    opts: &SyncOptions,
    issued: &mut Vec<IssuedCredential>,
) -> Result<DesiredSecret, SyncError> {
    sync_with(es, inv, opts, issued, None).await
}

/// Told of each credential a generator issued, right after it was issued (before anything
/// else of the sync runs): Kubernetes mode records it there, so that the window in which a
/// crash leaves it unrecorded is one write, not the whole sync.
#[async_trait::async_trait]
pub trait OnIssued: Send {
    /// `cred` was just issued (it is already in the sync's `issued`).
    ///
    /// # Errors
    /// A [`SyncError`] fails the sync at once (the caller then revokes what `issued` holds).
    async fn issued(&mut self, cred: &IssuedCredential) -> Result<(), SyncError>;
}

/// [`sync`], calling `hook` as each credential is issued.
///
/// # Errors
/// As [`sync`], and what `hook` answers.
pub async fn sync_with(
    es: &ExternalSecretObject,
    inv: &Inventory,
    opts: &SyncOptions,
    issued: &mut Vec<IssuedCredential>,
    mut hook: Option<&mut (dyn OnIssued + '_)>,
) -> Result<DesiredSecret, SyncError> {
    let spec = es.spec.as_ref().map_err(|e| invalid(e.clone()))?;
    validate(es, spec)?;
    let renderer = renderer_for(spec, opts)?;
    let skip_missing = spec.target.deletion_policy != DeletionPolicy::Retain;
    let mut data = DataMap::new();
    for (i, entry) in spec.data_from.iter().enumerate() {
        let what = format!("spec.dataFrom[{i}]");
        match data_from_entry(
            es,
            spec,
            entry,
            &what,
            inv,
            opts,
            issued,
            hook.as_deref_mut(),
        )
        .await
        {
            Ok(mut map) => data.append(&mut map),
            Err(e) if skip_missing && e.is_not_found() => continue,
            Err(e) => return Err(e),
        }
    }
    for (i, d) in spec.data.iter().enumerate() {
        let r = &d.remote_ref;
        let what = format!("spec.data[{i}] (key: {})", r.key);
        let fetched: Result<Vec<u8>, SyncError> = async {
            let source = d.source_ref.as_ref().and_then(|s| s.store_ref.as_ref());
            let (store, provider) = resolve_store(es, spec, source, inv, opts)?;
            let canonical = provider
                .canonical_ref(&RemoteRef {
                    key: r.key.clone(),
                    property: r.property.clone(),
                    version: r.version.clone(),
                })
                .map_err(|e| provider_error(&what, store, e))?;
            provider
                .get_secret(&canonical)
                .await
                .map_err(|e| provider_error(&what, store, e))
        }
        .await;
        let value = match fetched {
            Ok(v) => v,
            Err(e) if skip_missing && e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let value = keys::decode(r.decoding_strategy, &value).map_err(|enc| SyncError::Decode {
            what: format!("spec.data[{i}]"),
            key: d.secret_key.clone(),
            strategy: enc,
        })?;
        data.insert(d.secret_key.clone(), value);
    }

    let provider_data_empty = data.is_empty();
    let name = target_name(es, spec);
    let owned = spec.target.creation_policy == CreationPolicy::Owner;
    // No template: the ExternalSecret's own labels and annotations (ESO's setMetadata);
    // with one, what the template makes.
    let (type_, mut labels, annotations, data) = match (&spec.target.template, renderer) {
        (Some(tpl), Some(renderer)) => {
            let t = template::apply_template(tpl, &es.namespace, inv, &data, renderer)?;
            (t.type_, t.labels, t.annotations, t.data)
        }
        _ => (
            "Opaque".to_string(),
            es.labels.clone(),
            es.annotations.clone(),
            data,
        ),
    };
    labels.insert(LABEL_MANAGED.to_string(), "true".to_string());
    if owned {
        labels.insert(
            LABEL_OWNER.to_string(),
            owner_label(&es.namespace, &es.name),
        );
    } else {
        labels.remove(LABEL_OWNER);
    }
    let desired = DesiredSecret {
        namespace: es.namespace.clone(),
        name,
        type_,
        labels,
        annotations,
        data,
        immutable: spec.target.immutable,
        owner: owned.then(|| OwnerReference {
            name: es.name.clone(),
            uid: es.uid.clone(),
        }),
        provider_data_empty,
    }
    .sealed();
    let size = desired.size();
    if size > MAX_SECRET_BYTES {
        return Err(SyncError::TooLarge {
            size,
            limit: MAX_SECRET_BYTES,
        });
    }
    Ok(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderSettings;
    use crate::reconcile::inventory::InventoryBuilder;
    use crate::source::dir::DirectoryScanner;

    #[test]
    fn eso_hashes() {
        // Go: fmt.Sprintf("%+v", map[string][]byte{"a": []byte("hi"), "b": {}}) ==
        // "map[a:[104 105] b:[]]"; ObjectHash is SHA3-224 of that text.
        let data: BTreeMap<String, Vec<u8>> = [
            ("a".to_string(), b"hi".to_vec()),
            ("b".to_string(), Vec::new()),
        ]
        .into();
        assert_eq!(data_hash(&data), sha3_224_hex("map[a:[104 105] b:[]]"));
        assert_eq!(data_hash(&BTreeMap::new()), sha3_224_hex("map[]"));
        // SHA3-224("") is the standard test vector.
        assert_eq!(
            sha3_224_hex(""),
            "6b4e03423667dbb73b6e15454f0eb1abd4597f9a1b078e3f5b5a6bc7"
        );
        assert_eq!(owner_label("ns", "es").len(), 56);
        assert_ne!(owner_label("ns", "es"), owner_label("ns", "es2"));
    }

    #[test]
    fn object_names() {
        for ok in ["a", "a.b-c", "0x", &"a".repeat(253)] {
            assert!(is_object_name(ok), "{ok}");
        }
        for bad in ["", "..", ".a", "a.", "A", "a/b", "a_b", &"a".repeat(254)] {
            assert!(!is_object_name(bad), "{bad}");
        }
    }

    async fn run(
        manifests: &str,
        class: &str,
    ) -> Vec<(String, Result<DesiredSecret, SyncError>, usize)> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), manifests).unwrap();
        let mut builder = InventoryBuilder::new(ProviderSettings::default());
        DirectoryScanner::new(dir.path().to_path_buf(), None).scan(&mut |e| builder.apply(e));
        let inv = builder.build();
        let opts = SyncOptions {
            controller_class: class.to_string(),
            templates: Some(Arc::new(crate::reconcile::template::tests::Substitute)),
        };
        let mut out = Vec::new();
        for es in inv.external_secrets() {
            let mut issued = Vec::new();
            if !is_managed(es, &inv, &opts) {
                continue;
            }
            let r = sync(es, &inv, &opts, &mut issued).await;
            out.push((es.name.clone(), r, issued.len()));
        }
        out
    }

    const STORE: &str = r#"
apiVersion: external-secrets.io/v1
kind: SecretStore
metadata: {name: fake, namespace: team}
spec:
  provider:
    fake:
      data:
        - {key: db, value: '{"user":"u","pass":"p"}'}
        - {key: app/one, value: "MQ=="}
        - {key: app/two, value: "Mg=="}
        - {key: plain, value: "plain text"}
        - {key: b64, value: "AP8A"}
        - {key: len, value: "24"}
---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {name: shared}
spec:
  conditions: [{namespaceSelector: {matchLabels: {tier: db}}}]
  provider: {fake: {data: [{key: k, value: v}]}}
---
apiVersion: v1
kind: Namespace
metadata: {name: team, labels: {tier: db}}
"#;

    fn es(name: &str, ns: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: external-secrets.io/v1\nkind: ExternalSecret\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: x}}}}\nspec: {spec}\n"
        )
    }

    #[tokio::test]
    async fn sync_builds_the_whole_secret() {
        let m = format!(
            "{STORE}{}",
            es(
                "all",
                "team",
                r#"{secretStoreRef: {name: fake}, target: {name: out},
                   data: [{secretKey: text, remoteRef: {key: plain}}, {secretKey: bin, remoteRef: {key: b64, decodingStrategy: Base64}},
                          {secretKey: user, remoteRef: {key: db, property: user}}],
                   dataFrom: [{extract: {key: db}},
                              {find: {path: app/, decodingStrategy: Base64}, rewrite: [{regexp: {source: "^app/", target: "app-"}}]},
                              {find: {name: {regexp: "^app/"}}},
                              {extract: {key: db}, rewrite: [{regexp: {source: "(.*)", target: "db_$1"}}]}]}"#
            )
        );
        let out = run(&m, "").await;
        let (_, r, issued) = &out[0];
        let s = r.as_ref().unwrap();
        assert_eq!(*issued, 0);
        assert_eq!(s.name, "out");
        assert_eq!(s.type_, "Opaque");
        let keys: Vec<&String> = s.data.keys().collect();
        assert_eq!(
            keys,
            [
                "app-one", "app-two", "app_one", "app_two", "bin", "db_pass", "db_user", "pass",
                "text", "user"
            ]
        );
        assert_eq!(s.data["bin"], [0, 255, 0]);
        assert_eq!(
            s.data["app_one"], b"MQ==",
            "find keys converted (Default), values not decoded"
        );
        assert_eq!(s.data["app-one"], b"1", "rewritten, not converted; decoded");
        assert_eq!(s.labels["app"], "x");
        assert_eq!(s.labels[LABEL_MANAGED], "true");
        assert_eq!(s.labels[LABEL_OWNER], owner_label("team", "all"));
        assert_eq!(s.annotations[ANNOTATION_DATA_HASH], data_hash(&s.data));
        assert_eq!(s.owner.as_ref().unwrap().name, "all");
        assert!(!format!("{s:?}").contains("plain text"));
    }

    #[tokio::test]
    async fn failures_are_whole_and_name_keys_not_values() {
        let m = format!(
            "{STORE}{}{}{}{}",
            es(
                "missing",
                "team",
                "{secretStoreRef: {name: fake}, data: [{secretKey: a, remoteRef: {key: plain}}, {secretKey: b, remoteRef: {key: nope}}]}"
            ),
            es(
                "skip",
                "team",
                "{secretStoreRef: {name: fake}, target: {deletionPolicy: Merge}, data: [{secretKey: a, remoteRef: {key: plain}}, {secretKey: b, remoteRef: {key: nope}}]}"
            ),
            es(
                "gone",
                "team",
                "{secretStoreRef: {name: fake}, target: {deletionPolicy: Delete}, data: [{secretKey: b, remoteRef: {key: nope}}]}"
            ),
            es(
                "badb64",
                "team",
                "{secretStoreRef: {name: fake}, data: [{secretKey: a, remoteRef: {key: plain, decodingStrategy: Base64}}]}"
            ),
        );
        let out = run(&m, "").await;
        let by = |n: &str| out.iter().find(|(name, ..)| name == n).unwrap().1.clone();
        let err = by("missing").unwrap_err();
        assert_eq!(
            err.message(),
            "could not get secret data from provider: error processing spec.data[1] (key: nope) from store \"fake\": secret not found"
        );
        // deletionPolicy Merge: the missing key is skipped.
        assert_eq!(by("skip").unwrap().data.keys().collect::<Vec<_>>(), ["a"]);
        // deletionPolicy Delete: nothing left.
        assert!(by("gone").unwrap().provider_data_empty);
        let err = by("badb64").unwrap_err();
        assert!(
            err.to_string().contains("not valid base64") && !err.to_string().contains("plain"),
            "{err}"
        );
    }

    /// Review finding: a namespace without a Namespace object has unknown labels, so a
    /// `NotIn`/`DoesNotExist` selector must not admit it for want of labels.
    #[tokio::test]
    async fn negative_selectors_do_not_admit_a_namespace_of_unknown_labels() {
        let store = "---\napiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {name: notdev}\nspec:\n  conditions: [{namespaceSelector: {matchExpressions: [{key: env, operator: NotIn, values: [dev]}, {key: frozen, operator: DoesNotExist}]}}, {namespaces: [listed]}]\n  provider: {fake: {data: [{key: k, value: v}]}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {env: prod}}\n";
        let spec = "{secretStoreRef: {name: notdev, kind: ClusterSecretStore}, data: [{secretKey: a, remoteRef: {key: k}}]}";
        let m = format!(
            "{STORE}{store}{}{}{}",
            es("known", "prod", spec),
            es("unknown", "ghost", spec),
            es("named", "listed", spec)
        );
        let out = run(&m, "").await;
        let by = |n: &str| out.iter().find(|(name, ..)| name == n).unwrap().1.clone();
        assert_eq!(by("known").unwrap().data["a"], b"v");
        assert!(
            matches!(by("unknown").unwrap_err(), SyncError::StoreDenied { .. }),
            "unknown labels never satisfy a selector"
        );
        assert_eq!(
            by("named").unwrap().data["a"],
            b"v",
            "names are still decided without the Namespace object"
        );
    }

    #[tokio::test]
    async fn cluster_store_conditions_and_controller_class() {
        let m = format!(
            "{STORE}{}{}{}",
            es(
                "ok",
                "team",
                "{secretStoreRef: {name: shared, kind: ClusterSecretStore}, data: [{secretKey: a, remoteRef: {key: k}}]}"
            ),
            es(
                "denied",
                "other",
                "{secretStoreRef: {name: shared, kind: ClusterSecretStore}, data: [{secretKey: a, remoteRef: {key: k}}]}"
            ),
            es(
                "nostore",
                "team",
                "{secretStoreRef: {name: nope}, data: [{secretKey: a, remoteRef: {key: k}}]}"
            ),
        );
        let out = run(&m, "").await;
        let by = |n: &str| out.iter().find(|(name, ..)| name == n).unwrap().1.clone();
        assert_eq!(by("ok").unwrap().data["a"], b"v");
        assert_eq!(
            by("denied").unwrap_err().to_string(),
            "using cluster store \"shared\" is not allowed from namespace \"other\": denied by spec.conditions"
        );
        assert!(matches!(
            by("nostore").unwrap_err(),
            SyncError::StoreNotFound { .. }
        ));
        // A store of another class: the ExternalSecret is not ours (skipped); a missing
        // store does not make it someone else's; a store without class is everyone's.
        let m2 = format!(
            "{}{}",
            m.replace(
                "spec:\n  provider:\n    fake:",
                "spec:\n  controller: other\n  provider:\n    fake:"
            ),
            es(
                "classy",
                "team",
                "{secretStoreRef: {name: fake}, data: [{secretKey: a, remoteRef: {key: plain}}]}"
            )
        );
        assert!(m2.contains("controller: other"));
        let names = |out: &[(String, Result<DesiredSecret, SyncError>, usize)]| -> Vec<String> {
            out.iter().map(|(n, ..)| n.clone()).collect()
        };
        assert_eq!(names(&run(&m2, "mine").await), ["denied", "nostore", "ok"]);
        assert_eq!(
            names(&run(&m2, "other").await),
            ["denied", "classy", "nostore", "ok"]
        );
    }

    #[tokio::test]
    async fn generators_and_validation() {
        let m = format!(
            "{STORE}---\napiVersion: generators.external-secrets.io/v1alpha1\nkind: Password\nmetadata: {{name: pw, namespace: team}}\nspec: {{length: 24}}\n{}{}{}{}",
            es(
                "gen",
                "team",
                "{dataFrom: [{sourceRef: {generatorRef: {apiVersion: generators.external-secrets.io/v1alpha1, kind: Password, name: pw}}, rewrite: [{regexp: {source: password, target: pw}}]}]}"
            ),
            es(
                "nogen",
                "team",
                "{dataFrom: [{sourceRef: {generatorRef: {kind: Password, name: nope}}}]}"
            ),
            es(
                "tpl",
                "team",
                "{secretStoreRef: {name: fake}, target: {template: {type: kubernetes.io/basic-auth, metadata: {labels: {l: v}}, data: {a: \"x-{{ .num }}\"}}}, data: [{secretKey: num, remoteRef: {key: len}}]}"
            ),
            es(
                "both",
                "team",
                "{secretStoreRef: {name: fake}, dataFrom: [{extract: {key: db}, find: {path: x}}]}"
            ),
        );
        let out = run(&m, "").await;
        let by = |n: &str| out.iter().find(|(name, ..)| name == n).unwrap().1.clone();
        let gen_ = by("gen").unwrap();
        assert_eq!(gen_.data["pw"].len(), 24);
        assert!(
            by("nogen")
                .unwrap_err()
                .to_string()
                .contains("generator Password \"nope\" not found")
        );
        // With an engine, the template shapes the Secret; its labels replace the ES's.
        let t = by("tpl").unwrap();
        assert_eq!(t.type_, "kubernetes.io/basic-auth");
        assert_eq!(t.data.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(t.data["a"], b"x-24");
        assert_eq!(t.labels.get("app"), None);
        assert_eq!(t.labels["l"], "v");
        assert_eq!(t.labels[LABEL_MANAGED], "true");
        assert!(matches!(by("both").unwrap_err(), SyncError::InvalidSpec(_)));
    }

    #[test]
    fn validation_bounds_and_eso_admission_rules() {
        let check = |spec: serde_json::Value| -> Result<(), SyncError> {
            let spec: ExternalSecretSpec = serde_json::from_value(spec).unwrap();
            let es = ExternalSecretObject {
                namespace: "team".into(),
                name: "es".into(),
                uid: None,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                spec: Ok(spec.clone()),
                origin: "test".into(),
                resource_version: "v".into(),
            };
            validate(&es, &spec)
        };
        let entry = serde_json::json!({"secretKey": "k", "remoteRef": {"key": "x"}});
        assert!(check(serde_json::json!({"data": [entry]})).is_ok());
        // A template reading its own target Secret (a render loop) is refused; another
        // Secret is fine.
        let from = |name: &str, target: Option<&str>| {
            let mut spec = serde_json::json!({"data": [entry], "target": {"template": {
                "templateFrom": [{"configMap": {"name": "es"}}, {"secret": {"name": name}}]}}});
            if let Some(t) = target {
                spec["target"]["name"] = serde_json::json!(t);
            }
            check(spec)
        };
        let e = from("es", None).unwrap_err().to_string();
        assert!(
            e.contains("templateFrom[1].secret names the target Secret \"es\" itself"),
            "{e}"
        );
        assert!(from("db", Some("db")).is_err());
        assert!(from("es", Some("db")).is_ok());
        let many: Vec<_> = (0..=MAX_DATA_ENTRIES).map(|_| entry.clone()).collect();
        assert!(matches!(
            check(serde_json::json!({"data": many})),
            Err(SyncError::InvalidSpec(_))
        ));
        let long_key = "k".repeat(MAX_REF_LEN + 1);
        assert!(
            check(
                serde_json::json!({"data": [{"secretKey": "k", "remoteRef": {"key": long_key}}]})
            )
            .is_err()
        );
        assert!(
            check(serde_json::json!({"data": [{"secretKey": "a/b", "remoteRef": {"key": "x"}}]}))
                .is_err()
        );
        assert!(
            check(serde_json::json!({}))
                .unwrap_err()
                .to_string()
                .contains("either data or dataFrom")
        );
        // Names that would escape or collide in --output.
        for bad in ["../x", "X", "a.externalsecret-status"] {
            assert!(
                check(serde_json::json!({"target": {"name": bad}, "data": [entry]})).is_err(),
                "{bad}"
            );
        }
        // ESO's webhook rules on policies.
        assert!(check(serde_json::json!({"target": {"creationPolicy": "Merge", "deletionPolicy": "Delete"}, "data": [entry]})).is_err());
        assert!(check(serde_json::json!({"target": {"creationPolicy": "None", "deletionPolicy": "Merge"}, "data": [entry]})).is_err());
        let rewrites: Vec<_> = (0..=MAX_REWRITES)
            .map(|_| serde_json::json!({"regexp": {"source": "a", "target": "b"}}))
            .collect();
        assert!(
            check(
                serde_json::json!({"dataFrom": [{"extract": {"key": "x"}, "rewrite": rewrites}]})
            )
            .is_err()
        );
        assert!(matches!(
            check(
                serde_json::json!({"data": [{"secretKey": "k", "remoteRef": {"key": "x", "metadataPolicy": "Fetch"}}]})
            ),
            Err(SyncError::Unsupported(_))
        ));
    }

    #[tokio::test]
    async fn templates_without_an_engine_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.yaml"),
            format!(
                "{STORE}{}{}",
                es("tpl", "team", "{secretStoreRef: {name: fake}, target: {template: {data: {a: x}}}, data: [{secretKey: a, remoteRef: {key: plain}}]}"),
                es("tr", "team", "{secretStoreRef: {name: fake}, dataFrom: [{extract: {key: db}, rewrite: [{transform: {template: x}}]}]}")
            ),
        )
        .unwrap();
        let mut builder = InventoryBuilder::new(ProviderSettings::default());
        DirectoryScanner::new(dir.path().to_path_buf(), None).scan(&mut |e| builder.apply(e));
        let inv = builder.build();
        assert_eq!(inv.external_secrets().len(), 2);
        let no_engine = SyncOptions {
            templates: None,
            ..SyncOptions::default()
        };
        for es in inv.external_secrets() {
            let err = sync(es, &inv, &no_engine, &mut Vec::new())
                .await
                .unwrap_err();
            assert!(matches!(err, SyncError::Unsupported(_)), "{err}");
            assert!(err.to_string().contains("template engine"), "{err}");
        }
    }

    /// The Go template engine renders `target.template` (data, templateFrom literal with
    /// `valuesDecodingStrategy`, metadata) and `rewrite[].transform`, in ESO's order.
    #[tokio::test]
    async fn the_go_template_engine_renders_templates_and_transforms() {
        let engine = crate::reconcile::template::engine().expect("the engine builds");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.yaml"),
            format!(
                "{STORE}{}{}",
                es(
                    "tpl",
                    "team",
                    r#"{secretStoreRef: {name: fake}, target: {template: {
                        type: kubernetes.io/basic-auth,
                        metadata: {labels: {tier: "{{ .text | upper | replace \" \" \"-\" }}"}},
                        data: {username: "{{ (.db | fromJson).user }}", greeting: "{{ .text | lower }}"},
                        templateFrom: [{literal: "decoded: {{ .text | b64enc }}", valuesDecodingStrategy: Base64}]}},
                       data: [{secretKey: text, remoteRef: {key: plain}}, {secretKey: db, remoteRef: {key: db}}]}"#
                ),
                es(
                    "tr",
                    "team",
                    "{secretStoreRef: {name: fake}, dataFrom: [{extract: {key: db}, rewrite: [{transform: {template: \"db_{{ .value | upper }}\"}}]}]}"
                )
            ),
        )
        .unwrap();
        let mut builder = InventoryBuilder::new(ProviderSettings::default());
        DirectoryScanner::new(dir.path().to_path_buf(), None).scan(&mut |e| builder.apply(e));
        let inv = builder.build();
        let opts = SyncOptions {
            templates: Some(engine),
            ..SyncOptions::default()
        };
        let mut results = BTreeMap::new();
        for es in inv.external_secrets() {
            let r = sync(es, &inv, &opts, &mut Vec::new()).await;
            results.insert(es.name.clone(), r);
        }
        let tpl = results["tpl"].as_ref().expect("tpl syncs");
        assert_eq!(tpl.type_, "kubernetes.io/basic-auth");
        assert_eq!(tpl.labels["tier"], "PLAIN-TEXT");
        let data: BTreeMap<&str, &[u8]> = tpl
            .data
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        assert_eq!(data["username"], b"u");
        assert_eq!(data["decoded"], b"plain text");
        assert!(
            !data.contains_key("text"),
            "Replace: only the templates' output"
        );
        let tr = results["tr"].as_ref().expect("tr syncs");
        let keys: Vec<&str> = tr.data.keys().map(String::as_str).collect();
        assert_eq!(keys, ["db_PASS", "db_USER"]);
    }

    #[tokio::test]
    async fn the_secret_is_bounded() {
        let big = "x".repeat(600 * 1024);
        let m = format!(
            "apiVersion: external-secrets.io/v1\nkind: SecretStore\nmetadata: {{name: fake, namespace: team}}\nspec: {{provider: {{fake: {{data: [{{key: a, value: {big}}}, {{key: b, value: {big}}}]}}}}}}\n{}{}",
            es(
                "one",
                "team",
                "{secretStoreRef: {name: fake}, data: [{secretKey: a, remoteRef: {key: a}}]}"
            ),
            es(
                "two",
                "team",
                "{secretStoreRef: {name: fake}, data: [{secretKey: a, remoteRef: {key: a}}, {secretKey: b, remoteRef: {key: b}}]}"
            ),
        );
        let out = run(&m, "").await;
        assert!(out[0].1.is_ok());
        assert!(matches!(out[1].1, Err(SyncError::TooLarge { .. })));
    }
}
