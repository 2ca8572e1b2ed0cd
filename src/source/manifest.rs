//! Splits a manifest file (multi-document YAML or JSON) into objects.
//!
//! Only splitting and identification happen here; turning objects into validated domain
//! types is the snapshot builder's job. A bad document is reported with its origin and
//! skipped: the rest of the file still loads.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::{LoadError, ObjectKey, RawObject};
use crate::resources::ObjectMeta;
use crate::support::text::{is_dns_label, is_dns_subdomain, printable};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeAndMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
}

/// The objects of one manifest file, each with its key, and the documents that are not
/// objects.
pub type Parsed = (Vec<(ObjectKey, RawObject)>, Vec<LoadError>);

/// Splits one manifest text into objects; `List` kinds are flattened. `Err` when the text
/// is not YAML at all (nothing of the file can be trusted then).
pub fn parse_manifest(path: &Arc<Path>, text: &str) -> Result<Parsed, LoadError> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| LoadError {
            origin: path.display().to_string(),
            object: None,
            reason: format!("invalid YAML: {}", first_line(&e.to_string())),
        })?;
    let mut objects = Vec::with_capacity(docs.len());
    let mut errors = Vec::new();
    for (index, doc) in docs.into_iter().enumerate() {
        let key = ObjectKey::Document {
            path: path.clone(),
            doc: u32::try_from(index).unwrap_or(u32::MAX),
            item: None,
        };
        push_object(doc, key, &mut objects, &mut errors);
    }
    Ok((objects, errors))
}

fn push_object(
    doc: serde_json::Value,
    key: ObjectKey,
    objects: &mut Vec<(ObjectKey, RawObject)>,
    errors: &mut Vec<LoadError>,
) {
    if doc.is_null() {
        return; // empty document (e.g. a trailing `---`)
    }
    let head = match TypeAndMeta::deserialize(&doc) {
        Ok(h) => h,
        Err(e) => {
            errors.push(LoadError {
                origin: key.to_string(),
                object: None,
                reason: format!("not a Kubernetes object: {e}"),
            });
            return;
        }
    };
    // A `…List` document (not nested) with `items` is flattened.
    if let ObjectKey::Document {
        path,
        doc: index,
        item: None,
    } = &key
        && head.kind.ends_with("List")
        && doc.get("items").is_some_and(serde_json::Value::is_array)
        && let serde_json::Value::Object(mut map) = doc
    {
        if let Some(serde_json::Value::Array(items)) = map.remove("items") {
            for (i, item) in items.into_iter().enumerate() {
                let key = ObjectKey::Document {
                    path: path.clone(),
                    doc: *index,
                    item: Some(u32::try_from(i).unwrap_or(u32::MAX)),
                };
                push_object(item, key, objects, errors);
            }
        }
        return;
    }
    if head.kind.is_empty() || head.api_version.is_empty() {
        errors.push(LoadError {
            origin: key.to_string(),
            object: None,
            reason: "missing apiVersion or kind".into(),
        });
        return;
    }
    if head.metadata.name.is_empty() {
        errors.push(LoadError {
            origin: key.to_string(),
            object: Some(head.kind),
            reason: "missing metadata.name".into(),
        });
        return;
    }
    // Directory mode reads what a cluster would have refused: names Kubernetes would not
    // accept are refused here too, with the name escaped (review finding 8, issue 13).
    if let Some(reason) = bad_name(&head.metadata) {
        errors.push(LoadError {
            origin: key.to_string(),
            object: Some(printable(&head.kind, NAME_ECHO_MAX)),
            reason,
        });
        return;
    }
    let object = RawObject::new(&key, head.api_version, head.kind, head.metadata, doc);
    objects.push((key, object));
}

/// Longest name echoed in an error (characters).
const NAME_ECHO_MAX: usize = 253;

/// Why Kubernetes would refuse `metadata`'s name or namespace: a name must be a DNS-1123
/// subdomain, a namespace a DNS-1123 label (Kubernetes API conventions, object names).
fn bad_name(metadata: &ObjectMeta) -> Option<String> {
    if !is_dns_subdomain(&metadata.name) {
        return Some(format!(
            "metadata.name \"{}\" is not a DNS-1123 subdomain (at most 253 of a-z, 0-9, '-', '.', each part starting and ending with a letter or digit): Kubernetes would refuse this object, so it is not loaded",
            printable(&metadata.name, NAME_ECHO_MAX)
        ));
    }
    match metadata.namespace.as_deref() {
        Some(ns) if !is_dns_label(ns) => Some(format!(
            "metadata.namespace \"{}\" is not a DNS-1123 label (at most 63 of a-z, 0-9, '-', starting and ending with a letter or digit): Kubernetes would refuse this object, so it is not loaded",
            printable(ns, NAME_ECHO_MAX)
        )),
        _ => None,
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Arc<Path> {
        Arc::from(Path::new(p))
    }

    #[test]
    fn multi_document_with_lists_and_bad_docs() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: a, namespace: ns}\nstringData: {k: v}\n---\n---\nkind: Broken\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: b}\n";
        let (objs, errs) = parse_manifest(&path("f.yaml"), text).expect("YAML");
        assert_eq!(objs.len(), 2, "{objs:?}");
        assert_eq!(objs[0].1.display_name(), "Secret/ns/a");
        assert_eq!(objs[1].0.to_string(), "f.yaml#2/items/0");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].origin.starts_with("f.yaml#1"), "{errs:?}");
        assert!(!format!("{:?}", objs[0]).contains("stringData"));
    }

    /// Review finding 8 (issue 13): names Kubernetes would refuse are refused at load, the
    /// name escaped in the error.
    #[test]
    fn names_kubernetes_would_refuse_are_refused() {
        let doc = |meta: &str| format!("apiVersion: v1\nkind: Secret\nmetadata: {meta}\n");
        for meta in [
            "{name: \"a\\e[2Jb\", namespace: ns}",
            "{name: Upper}",
            "{name: a_b}",
            "{name: a, namespace: a.b}",
            "{name: a, namespace: \"x\\ny\"}",
        ] {
            let (objs, errs) = parse_manifest(&path("f.yaml"), &doc(meta)).expect("YAML");
            assert!(objs.is_empty(), "{meta}");
            assert_eq!(errs.len(), 1, "{meta}");
            assert!(
                errs[0].reason.contains("is not a DNS-1123"),
                "{:?}",
                errs[0]
            );
            assert!(
                !errs[0].reason.chars().any(char::is_control),
                "{:?}",
                errs[0]
            );
        }
        let (_, errs) =
            parse_manifest(&path("f.yaml"), &doc("{name: \"a\\e[2Jb\"}")).expect("YAML");
        assert!(errs[0].reason.contains("\"a\\u{1b}[2Jb\""), "{:?}", errs[0]);
        let (objs, errs) =
            parse_manifest(&path("f.yaml"), &doc("{name: a.b-c, namespace: ns-1}")).expect("YAML");
        assert_eq!((objs.len(), errs.len()), (1, 0));
    }

    #[test]
    fn invalid_yaml_is_reported_not_fatal() {
        let err = parse_manifest(&path("bad.yaml"), "a: [unclosed").expect_err("not YAML");
        assert_eq!(err.origin, "bad.yaml");
        assert!(err.reason.starts_with("invalid YAML"));
    }
}
