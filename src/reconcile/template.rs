//! `target.template` in ESO's `ApplyTemplate` order, over a [`TemplateRenderer`]: the Go
//! template engine of `crate::template` ([`engine`]); without one (tests), an ExternalSecret
//! with a template fails with a clear "not supported" error, see [`super::SyncOptions`].
//!
//! ESO's order (`externalsecret_controller_template.go`):
//! 1. validate (`type`, `templateFrom[].target`);
//! 2. labels and annotations from `template.metadata` (templated in step 7);
//! 3. `type` when given (else `Opaque`);
//! 4. the provider data first when `mergePolicy: Merge`, or when there is neither
//!    `template.data` nor `templateFrom`;
//! 5. `templateFrom[]` in order: per entry its ConfigMap items, then its Secret items, then
//!    its literal (`KeysAndValues`); into `Data`, `Annotations` or `Labels`;
//! 6. `template.data` (each key a `Values` template: highest precedence);
//! 7. the metadata labels, then annotations, rendered (`Values`).
//!
//! Every template sees the provider data (key → raw bytes).

use std::collections::BTreeMap;

use crate::resources::external_secret::{
    DecodingStrategy, SecretTemplate, TemplateMergePolicy, TemplateScope,
};

use super::SyncError;
use super::inventory::Inventory;
use super::keys::DataMap;

/// Renders ESO templates. Implemented by the template engine; messages name the template
/// (`name`), never a value.
pub trait TemplateRenderer: Send + Sync {
    /// ESO's `Values` scope: the rendered bytes.
    fn render(&self, name: &str, tpl: &str, data: &DataMap) -> Result<Vec<u8>, String>;
    /// ESO's `KeysAndValues` scope: the rendered text parsed as YAML key → value.
    fn render_keys_and_values(
        &self,
        name: &str,
        tpl: &str,
        data: &DataMap,
    ) -> Result<DataMap, String>;
}

/// The Go template engine (`crate::template`, ESO's engine v2 semantics, default `{{ }}`
/// delimiters) that renders `target.template` and `rewrite[].transform`. `None` only if the
/// engine cannot be built with its defaults, which a test rules out: such ExternalSecrets
/// then fail as unsupported, never rendered some other way.
pub fn engine() -> Option<std::sync::Arc<dyn TemplateRenderer>> {
    crate::template::Engine::new(crate::template::TemplateSettings::default())
        .ok()
        .map(|e| std::sync::Arc::new(e) as std::sync::Arc<dyn TemplateRenderer>)
}

impl TemplateRenderer for crate::template::Engine {
    fn render(&self, name: &str, tpl: &str, data: &DataMap) -> Result<Vec<u8>, String> {
        crate::template::Engine::render(self, name, tpl, data).map_err(|e| e.to_string())
    }

    fn render_keys_and_values(
        &self,
        name: &str,
        tpl: &str,
        data: &DataMap,
    ) -> Result<DataMap, String> {
        crate::template::Engine::render_keys_and_values(self, name, tpl, data)
            .map_err(|e| e.to_string())
    }
}

/// `templateFrom[].valuesDecodingStrategy` applied to each value of a `KeysAndValues`
/// output (ESO: values only, never keys). Errors name the key, never the value.
/// `tpl`: the template that rendered `kv` (an error names a key only when it spells it
/// out: a rendered key can be a value).
fn decode_values(
    strategy: DecodingStrategy,
    tpl: &str,
    kv: DataMap,
    at: &str,
) -> Result<DataMap, SyncError> {
    use crate::template::DecodingStrategy as D;
    let strategy = match strategy {
        DecodingStrategy::None => return Ok(kv),
        DecodingStrategy::Base64 => D::Base64,
        DecodingStrategy::Base64Url => D::Base64Url,
        DecodingStrategy::Auto => D::Auto,
    };
    kv.into_iter()
        .map(|(k, v)| {
            crate::template::decode_value_in(strategy, tpl, &k, &v)
                .map(|decoded| (k, decoded))
                .map_err(|e| template_error(at, e.to_string()))
        })
        .collect()
}

/// What a template makes of the Secret. Debug shows keys, never values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Templated {
    /// `type`.
    pub type_: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Data.
    pub data: DataMap,
}

impl std::fmt::Debug for Templated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templated")
            .field("type", &self.type_)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Where a `templateFrom` entry writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Data,
    Annotations,
    Labels,
}

fn target(t: Option<&str>, at: &str) -> Result<Target, SyncError> {
    match t.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("data") => Ok(Target::Data),
        Some("annotations") => Ok(Target::Annotations),
        Some("labels") => Ok(Target::Labels),
        Some(_) => Err(SyncError::InvalidSpec(format!(
            "{at}.target must be Data, Annotations or Labels for a Secret"
        ))),
    }
}

fn text(bytes: Vec<u8>, what: &str) -> Result<String, SyncError> {
    String::from_utf8(bytes).map_err(|_| SyncError::Rewrite {
        what: what.to_string(),
        reason: "a label or annotation value must be UTF-8 text".into(),
    })
}

fn put(
    out: &mut Templated,
    t: Target,
    key: String,
    value: Vec<u8>,
    at: &str,
) -> Result<(), SyncError> {
    match t {
        Target::Data => {
            out.data.insert(key, value);
        }
        Target::Annotations => {
            out.annotations.insert(key, text(value, at)?);
        }
        Target::Labels => {
            out.labels.insert(key, text(value, at)?);
        }
    }
    Ok(())
}

fn template_error(at: &str, reason: String) -> SyncError {
    SyncError::Template {
        what: at.to_string(),
        reason,
    }
}

/// Applies `tpl` to the provider data of an ExternalSecret in `namespace` (ConfigMaps and
/// Secrets of `templateFrom` are read from that namespace in `inv`).
pub fn apply_template(
    tpl: &SecretTemplate,
    namespace: &str,
    inv: &Inventory,
    provider: &DataMap,
    renderer: &dyn TemplateRenderer,
) -> Result<Templated, SyncError> {
    let type_ = tpl.type_.clone().filter(|t| !t.is_empty());
    if type_.as_deref() == Some("bootstrap.kubernetes.io/token") {
        return Err(SyncError::InvalidSpec(
            "target.template.type bootstrap.kubernetes.io/token is not allowed".into(),
        ));
    }
    let metadata = tpl.metadata.clone().unwrap_or_default();
    if type_.as_deref() == Some("kubernetes.io/service-account-token")
        && (metadata
            .annotations
            .contains_key("kubernetes.io/service-account.name")
            || tpl.template_from.iter().any(|f| {
                f.target
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case("annotations"))
            }))
    {
        return Err(SyncError::InvalidSpec(
            "a kubernetes.io/service-account-token Secret may not be bound to a ServiceAccount by a template".into(),
        ));
    }
    let mut out = Templated {
        type_: type_.unwrap_or_else(|| "Opaque".to_string()),
        ..Templated::default()
    };
    if tpl.merge_policy == TemplateMergePolicy::Merge
        || (tpl.data.is_empty() && tpl.template_from.is_empty())
    {
        out.data = provider.clone();
    }
    for (i, from) in tpl.template_from.iter().enumerate() {
        let at = format!("spec.target.template.templateFrom[{i}]");
        let t = target(from.target.as_deref(), &at)?;
        let sources = [
            (
                "configMap",
                from.config_map.as_ref(),
                inv_config_map as Lookup,
            ),
            ("secret", from.secret.as_ref(), inv_secret as Lookup),
        ];
        for (kind, r, lookup) in sources {
            let Some(r) = r else { continue };
            let object = lookup(inv, namespace, &r.name).ok_or_else(|| {
                SyncError::InvalidSpec(format!(
                    "{at}.{kind}: {} {namespace}/{} not found",
                    kind_name(kind),
                    r.name
                ))
            })?;
            for item in &r.items {
                let raw = object.get(&item.key).ok_or_else(|| {
                    SyncError::InvalidSpec(format!(
                        "error in {} {}: missing key {}",
                        kind_name(kind).to_lowercase(),
                        r.name,
                        item.key
                    ))
                })?;
                let tpl_text = String::from_utf8(raw.clone()).map_err(|_| {
                    template_error(&at, format!("{kind} item {:?} is not UTF-8 text", item.key))
                })?;
                match item.template_as {
                    TemplateScope::Values => {
                        let v = renderer
                            .render(&item.key, &tpl_text, provider)
                            .map_err(|e| template_error(&at, e))?;
                        put(&mut out, t, item.key.clone(), v, &at)?;
                    }
                    TemplateScope::KeysAndValues => {
                        let kv = renderer
                            .render_keys_and_values(&item.key, &tpl_text, provider)
                            .map_err(|e| template_error(&at, e))?;
                        let kv = decode_values(from.values_decoding_strategy, &tpl_text, kv, &at)?;
                        for (k, v) in kv {
                            put(&mut out, t, k, v, &at)?;
                        }
                    }
                }
            }
        }
        if let Some(literal) = &from.literal {
            let kv = renderer
                .render_keys_and_values("literal", literal, provider)
                .map_err(|e| template_error(&at, e))?;
            let kv = decode_values(from.values_decoding_strategy, literal, kv, &at)?;
            for (k, v) in kv {
                put(&mut out, t, k, v, &at)?;
            }
        }
    }
    for (k, tpl_text) in &tpl.data {
        let v = renderer
            .render(k, tpl_text, provider)
            .map_err(|e| template_error("spec.target.template.data", e))?;
        out.data.insert(k.clone(), v);
    }
    for (k, tpl_text) in &metadata.labels {
        let v = renderer
            .render(k, tpl_text, provider)
            .map_err(|e| template_error("spec.target.template.metadata.labels", e))?;
        out.labels
            .insert(k.clone(), text(v, "spec.target.template.metadata.labels")?);
    }
    for (k, tpl_text) in &metadata.annotations {
        let v = renderer
            .render(k, tpl_text, provider)
            .map_err(|e| template_error("spec.target.template.metadata.annotations", e))?;
        out.annotations.insert(
            k.clone(),
            text(v, "spec.target.template.metadata.annotations")?,
        );
    }
    Ok(out)
}

type Lookup = fn(&Inventory, &str, &str) -> Option<DataMap>;

fn inv_config_map(inv: &Inventory, ns: &str, name: &str) -> Option<DataMap> {
    inv.config_map(ns, name).cloned()
}

fn inv_secret(inv: &Inventory, ns: &str, name: &str) -> Option<DataMap> {
    inv.secret(ns, name).map(|s| s.data.clone())
}

fn kind_name(kind: &str) -> &'static str {
    if kind == "configMap" {
        "ConfigMap"
    } else {
        "Secret"
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::providers::ProviderSettings;
    use crate::reconcile::inventory::InventoryBuilder;
    use crate::source::dir::DirectoryScanner;

    /// A test renderer that only substitutes `{{ .key }}` (the order and plumbing are what
    /// is tested here, not the template language), and reads `KeysAndValues` output as
    /// `k: v` lines.
    pub(crate) struct Substitute;

    impl TemplateRenderer for Substitute {
        fn render(&self, name: &str, tpl: &str, data: &DataMap) -> Result<Vec<u8>, String> {
            let mut out = tpl.to_string();
            for (k, v) in data {
                out = out.replace(&format!("{{{{ .{k} }}}}"), &String::from_utf8_lossy(v));
            }
            if out.contains("{{") {
                return Err(format!("unable to execute template at key {name}"));
            }
            Ok(out.into_bytes())
        }
        fn render_keys_and_values(
            &self,
            name: &str,
            tpl: &str,
            data: &DataMap,
        ) -> Result<DataMap, String> {
            let text = String::from_utf8(self.render(name, tpl, data)?).unwrap();
            Ok(text
                .lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect())
        }
    }

    fn inventory() -> Inventory {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: tpl, namespace: team}\ndata:\n  config.ini: \"user={{ .user }}\"\n  kv: \"a: {{ .user }}\\nb: 2\"\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: tpls, namespace: team}\nstringData: {note: \"n-{{ .user }}\"}\n",
        )
        .unwrap();
        let mut b = InventoryBuilder::new(ProviderSettings::default());
        DirectoryScanner::new(dir.path().to_path_buf(), None).scan(&mut |e| b.apply(e));
        b.build()
    }

    fn provider() -> DataMap {
        [
            ("user".to_string(), b"bob".to_vec()),
            ("pass".to_string(), b"pw".to_vec()),
        ]
        .into()
    }

    fn tpl(json: serde_json::Value) -> SecretTemplate {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn eso_order_and_precedence() {
        let inv = inventory();
        let t = tpl(serde_json::json!({
            "type": "kubernetes.io/basic-auth",
            "metadata": {"labels": {"who": "{{ .user }}"}, "annotations": {"a": "x"}},
            "templateFrom": [
                {"configMap": {"name": "tpl", "items": [{"key": "config.ini"}, {"key": "kv", "templateAs": "KeysAndValues"}]}},
                {"secret": {"name": "tpls", "items": [{"key": "note"}]}, "target": "Annotations"},
                {"literal": "b: literal"}
            ],
            "data": {"username": "{{ .user }}", "b": "data-wins"}
        }));
        let out = apply_template(&t, "team", &inv, &provider(), &Substitute).unwrap();
        assert_eq!(out.type_, "kubernetes.io/basic-auth");
        let keys: Vec<&String> = out.data.keys().collect();
        // Replace (default): no provider keys; templateFrom, then template.data over it.
        assert_eq!(keys, ["a", "b", "config.ini", "username"]);
        assert_eq!(out.data["config.ini"], b"user=bob");
        assert_eq!(out.data["a"], b"bob");
        assert_eq!(out.data["b"], b"data-wins");
        assert_eq!(out.annotations["note"], "n-bob");
        assert_eq!(out.annotations["a"], "x");
        assert_eq!(out.labels["who"], "bob");
        // Merge: the provider data first.
        let merged =
            tpl(serde_json::json!({"mergePolicy": "Merge", "data": {"pass": "{{ .user }}"}}));
        let out = apply_template(&merged, "team", &inv, &provider(), &Substitute).unwrap();
        assert_eq!(out.data["user"], b"bob");
        assert_eq!(out.data["pass"], b"bob", "the template wins");
        assert_eq!(out.type_, "Opaque");
        // Neither data nor templateFrom: the provider data.
        let only_meta = tpl(serde_json::json!({"metadata": {"labels": {"l": "v"}}}));
        assert_eq!(
            apply_template(&only_meta, "team", &inv, &provider(), &Substitute)
                .unwrap()
                .data,
            provider()
        );
    }

    #[test]
    fn template_errors() {
        let inv = inventory();
        let err = |json: serde_json::Value| {
            apply_template(&tpl(json), "team", &inv, &provider(), &Substitute)
                .unwrap_err()
                .to_string()
        };
        assert!(err(serde_json::json!({"templateFrom": [{"configMap": {"name": "tpl", "items": [{"key": "nope"}]}}]}))
            .contains("error in configmap tpl: missing key nope"));
        assert!(err(serde_json::json!({"templateFrom": [{"configMap": {"name": "absent", "items": []}}]})).contains("not found"));
        assert!(
            err(serde_json::json!({"templateFrom": [{"literal": "a: b", "target": "Spec"}]}))
                .contains("Data, Annotations or Labels")
        );
        assert!(
            err(serde_json::json!({"type": "bootstrap.kubernetes.io/token"}))
                .contains("not allowed")
        );
        assert!(err(serde_json::json!({"type": "kubernetes.io/service-account-token", "metadata": {"annotations": {"kubernetes.io/service-account.name": "x"}}}))
            .contains("ServiceAccount"));
        let e = err(serde_json::json!({"data": {"k": "{{ .missing }}"}}));
        assert!(
            e.contains("unable to execute template at key k") && !e.contains("bob"),
            "{e}"
        );
        // The other namespace's ConfigMap is not visible.
        assert!(apply_template(&tpl(serde_json::json!({"templateFrom": [{"configMap": {"name": "tpl", "items": [{"key": "kv"}]}}]})), "other", &inv, &provider(), &Substitute).is_err());
    }
}
