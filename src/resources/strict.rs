//! Unknown fields in the specs of our own kinds are refused, not ignored.
//!
//! serde ignores a field a type does not declare. For `Authorization` that would be a hole:
//! `allowedRemoteKey:` (a misspelt `allowedRemoteKeys`) would be dropped and the subject
//! granted every key of the store the line meant to restrict. A Kubernetes API server refuses
//! such an object too (`kubectl`'s default `--validate=strict`, server-side field validation
//! against the CRD's structural schema, Kubernetes ≥ 1.27); the directory loader must not be
//! laxer.
//!
//! The fields a spec may hold are read from the JSON schema its Rust type derives
//! (`schemars`, the same derivation our CRDs come from), so a field added to a type is known
//! here at once: there is no second list to keep in step. A map (`allowedRemoteKeys`) takes
//! any key and checks its values; an untyped block (`serde_json::Value`) takes anything.

use std::any::TypeId;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, RwLock};

use schemars::JsonSchema;
use serde_json::Value;

/// Most unknown fields one error names (the rest are counted).
const MAX_REPORTED: usize = 8;
/// Deepest nesting walked (our specs are a few levels deep; anything deeper in a typed part
/// is refused by serde's own recursion limit first).
const MAX_DEPTH: usize = 32;

/// An unknown field: where it is and, when one is close, the field it probably meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    /// Path from `spec`, e.g. `spec.allowedGenerators[0].nmae`.
    pub path: String,
    /// A known sibling field within edit distance 2, e.g. `allowedRemoteKeys`.
    pub did_you_mean: Option<String>,
}

/// The fields of `spec` (a `T` in JSON form) that `T` does not declare, in document order,
/// with paths starting at `spec`. Empty when every field is known.
pub fn unknown_fields<T: JsonSchema + 'static>(spec: &Value) -> Vec<UnknownField> {
    let root = schema_of::<T>();
    let mut out = Vec::new();
    walk(&root, &root, spec, "spec", 0, &mut out);
    out
}

/// The error text for `fields` of a `kind` (empty `fields`: `None`).
pub fn unknown_fields_message(kind: &str, fields: &[UnknownField]) -> Option<String> {
    let first = fields.first()?;
    let mut msg = format!(
        "unknown field {}{}",
        if fields.len() == 1 { "" } else { "s " },
        describe(first)
    );
    for f in fields.iter().skip(1).take(MAX_REPORTED - 1) {
        let _ = write!(msg, ", {}", describe(f));
    }
    if fields.len() > MAX_REPORTED {
        let _ = write!(msg, " and {} more", fields.len() - MAX_REPORTED);
    }
    let _ = write!(
        msg,
        ": not a field of {kind} (refused rather than ignored: what a misspelt field meant to \
         restrict would not be restricted)"
    );
    Some(msg)
}

fn describe(f: &UnknownField) -> String {
    match &f.did_you_mean {
        Some(known) => format!("{} (did you mean {known}?)", f.path),
        None => f.path.clone(),
    }
}

/// `T`'s JSON schema, derived once per type.
fn schema_of<T: JsonSchema + 'static>() -> Arc<Value> {
    static SCHEMAS: LazyLock<RwLock<HashMap<TypeId, Arc<Value>>>> =
        LazyLock::new(|| RwLock::new(HashMap::new()));
    let id = TypeId::of::<T>();
    if let Some(s) = SCHEMAS.read().ok().and_then(|m| m.get(&id).cloned()) {
        return s;
    }
    let schema = Arc::new(schemars::schema_for!(T).to_value());
    if let Ok(mut m) = SCHEMAS.write() {
        m.insert(id, schema.clone());
    }
    schema
}

/// What an object may hold: its declared properties and what other keys may be.
#[derive(Default)]
struct Shape<'a> {
    properties: BTreeMap<&'a str, &'a Value>,
    extra: Extra<'a>,
    items: Vec<&'a Value>,
}

#[derive(Default, Clone, Copy)]
enum Extra<'a> {
    /// No other key (a struct).
    #[default]
    Deny,
    /// Any key, any value (untyped).
    Any,
    /// Any key, values of this schema (a map).
    Values(&'a Value),
}

fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let mut s = schema;
    // `$ref` chains are short; bounded all the same.
    for _ in 0..8 {
        match s
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
        {
            Some(pointer) => match root.pointer(pointer) {
                Some(target) => s = target,
                None => return &Value::Bool(true),
            },
            None => break,
        }
    }
    s
}

/// The shape of `schema` (its `$ref`, `allOf`, `anyOf` and `oneOf` branches merged, most
/// lenient wins: this check only ever refuses what no branch declares).
fn shape<'a>(root: &'a Value, schema: &'a Value, shape: &mut Shape<'a>, depth: usize) {
    let s = resolve(root, schema);
    let Some(obj) = s.as_object() else {
        // `true`: anything.
        if s.as_bool() != Some(false) {
            shape.extra = Extra::Any;
        }
        return;
    };
    if obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        shape.extra = Extra::Any;
    }
    let mut typed = false;
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        typed = true;
        for (k, v) in props {
            shape.properties.insert(k.as_str(), v);
        }
    }
    match obj.get("additionalProperties") {
        Some(Value::Bool(false)) => typed = true,
        Some(Value::Bool(true)) => shape.extra = Extra::Any,
        Some(v @ Value::Object(_)) => {
            typed = true;
            if !matches!(shape.extra, Extra::Any) {
                shape.extra = Extra::Values(v);
            }
        }
        _ => {}
    }
    if let Some(items) = obj.get("items") {
        typed = true;
        shape.items.push(items);
    }
    let mut branches = false;
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(list) = obj.get(key).and_then(Value::as_array) {
            branches = true;
            if depth < MAX_DEPTH {
                for b in list {
                    shape_of_branch(root, b, shape, depth + 1);
                }
            }
        }
    }
    // A schema that says nothing about an object's keys (no properties, no
    // additionalProperties, no branches, e.g. `{}` or only a `type`) takes anything.
    if !typed && !branches {
        let object_or_untyped = match obj.get("type") {
            None => true,
            Some(Value::String(t)) => t == "object",
            Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
            _ => false,
        };
        if object_or_untyped {
            shape.extra = Extra::Any;
        }
    }
}

fn shape_of_branch<'a>(root: &'a Value, schema: &'a Value, shape: &mut Shape<'a>, depth: usize) {
    let s = resolve(root, schema);
    // `{"type": "null"}` (an `Option`'s other branch) says nothing about objects.
    if let Some(t) = s.get("type").and_then(Value::as_str)
        && t != "object"
        && t != "array"
    {
        return;
    }
    self::shape(root, s, shape, depth);
}

fn walk(
    root: &Value,
    schema: &Value,
    value: &Value,
    path: &str,
    depth: usize,
    out: &mut Vec<UnknownField>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let mut sh = Shape::default();
    shape(root, schema, &mut sh, depth);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let here = format!(
                    "{path}.{}",
                    crate::support::text::printable(k, KEY_ECHO_MAX)
                );
                if let Some(sub) = sh.properties.get(k.as_str()) {
                    walk(root, sub, v, &here, depth + 1, out);
                    continue;
                }
                match sh.extra {
                    Extra::Any => {}
                    Extra::Values(sub) => walk(root, sub, v, &here, depth + 1, out),
                    Extra::Deny => out.push(UnknownField {
                        path: here,
                        did_you_mean: closest(k, sh.properties.keys().copied()),
                    }),
                }
            }
        }
        Value::Array(list) => {
            for (i, v) in list.iter().enumerate() {
                let here = format!("{path}[{i}]");
                for items in &sh.items {
                    walk(root, items, v, &here, depth + 1, out);
                }
            }
        }
        _ => {}
    }
}

/// Longest key echoed in a message (characters).
const KEY_ECHO_MAX: usize = 128;

/// The known name within edit distance 2 of `name` (the closest; ties: the first).
fn closest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<String> {
    known
        .map(|k| (strsim::damerau_levenshtein(name, k), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resources::{
        AuthorizationSpec, KubernetesFederationSpec, OidcFederationSpec, OktaFederationSpec,
    };

    fn paths<T: JsonSchema + 'static>(spec: Value) -> Vec<String> {
        unknown_fields::<T>(&spec)
            .into_iter()
            .map(|f| f.path)
            .collect()
    }

    /// The review's case: a misspelt `allowedRemoteKeys` is named, with the field it meant.
    #[test]
    fn a_misspelt_key_restriction_is_found_and_named() {
        let spec = json!({
            "federationRef": {"kind": "KubernetesFederation", "name": "f"},
            "subject": {"issuer": "https://i", "subject": "system:serviceaccount:ns:sa"},
            "allowedClusterSecretStores": ["main"],
            "allowedRemoteKey": {"main": ["app/*"]}
        });
        let found = unknown_fields::<AuthorizationSpec>(&spec);
        assert_eq!(
            found,
            vec![UnknownField {
                path: "spec.allowedRemoteKey".into(),
                did_you_mean: Some("allowedRemoteKeys".into()),
            }]
        );
        let msg = unknown_fields_message("Authorization", &found).unwrap();
        assert!(
            msg.contains("spec.allowedRemoteKey (did you mean allowedRemoteKeys?)"),
            "{msg}"
        );
    }

    /// Every nested typed object is checked: references, subjects, list entries.
    #[test]
    fn nested_objects_and_list_entries_are_checked() {
        let spec = json!({
            "federationRef": {"knd": "KubernetesFederation", "name": "f"},
            "subject": {"oidc": {"issuer": "https://i", "subjct": "x"}},
            "allowedGenerators": [{"kind": "Password", "name": "p", "namespace": "n"},
                                  {"kind": "Password", "nmae": "p", "namespace": "n"}],
            "allowedGeneratorStates": [{"namespace": "n", "extra": 1}]
        });
        assert_eq!(
            paths::<AuthorizationSpec>(spec),
            vec![
                "spec.federationRef.knd",
                "spec.subject.oidc.subjct",
                "spec.allowedGenerators[1].nmae",
                "spec.allowedGeneratorStates[0].extra",
            ]
        );
    }

    /// What is valid is untouched: map keys are store names, not fields; the ESE shapes,
    /// the extensions and flattened common fields are all known.
    #[test]
    fn valid_specs_have_no_unknown_fields() {
        let authz = json!({
            "federationRef": {"kind": "KubernetesFederation", "name": "f"},
            "subject": {"spiffe": {"spiffeID": "spiffe://td/x"}},
            "allowedClusterSecretStores": ["any-store-name", "main"],
            "allowedGenerators": [{"kind": "Password", "name": "p", "namespace": "n"}],
            "allowedGeneratorStates": [{"namespace": "n"}],
            "allowedRemoteKeys": {"any-store-name": ["a/*"], "main": ["b"]}
        });
        assert!(paths::<AuthorizationSpec>(authz).is_empty());
        let kube = json!({"url": "https://k", "caBundle": "x", "clientCAPolicy": "Pinned",
                          "audiences": ["a"], "allowLegacyTokens": false, "publicKeys": []});
        assert!(paths::<KubernetesFederationSpec>(kube).is_empty());
        let oidc = json!({"issuer": "https://i", "audiences": ["a"],
                          "boundClaims": {"repository": "org/*"}, "claims": ["ref"]});
        assert!(paths::<OidcFederationSpec>(oidc).is_empty());
        // ESE's management API block is accepted as it comes (untyped).
        let okta = json!({"domain": "https://o", "audiences": ["a"],
                          "managementAPI": {"anything": {"nested": [1, 2]}}});
        assert!(paths::<OktaFederationSpec>(okta).is_empty());
    }

    /// Fields of a flattened common part are known, and a typo beside them is not.
    #[test]
    fn flattened_parts_are_known_and_typos_beside_them_are_not() {
        let okta = json!({"domain": "https://o", "audiences": ["a"], "boundClaim": {"x": "y"}});
        let found = unknown_fields::<OktaFederationSpec>(&okta);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "spec.boundClaim");
        assert_eq!(found[0].did_you_mean.as_deref(), Some("boundClaims"));
    }

    /// Keys are printed escaped, and a long list is cut with a count.
    #[test]
    fn keys_are_printed_escaped_and_long_lists_cut() {
        let mut spec = serde_json::Map::new();
        spec.insert("a\u{1b}[31mred".into(), json!(1));
        for i in 0..20 {
            spec.insert(format!("zz{i:02}"), json!(1));
        }
        let found = unknown_fields::<AuthorizationSpec>(&Value::Object(spec));
        assert_eq!(found.len(), 21);
        let msg = unknown_fields_message("Authorization", &found).unwrap();
        assert!(!msg.contains('\u{1b}'), "{msg}");
        assert!(msg.contains("spec.a\\u{1b}[31mred"), "{msg}");
        assert!(msg.contains("and 13 more"), "{msg}");
    }
}
