//! Content hashes of objects: "did this object change?" without keeping the object.
//!
//! A source (directory scan, Kubernetes watch) and the snapshot builder decide whether an
//! object changed by comparing hashes, so neither keeps 100,000 object bodies in memory.
//! The hash covers what a build reads (API version and kind, name, namespace, labels,
//! annotations, and the body apart from `metadata` and `status`) in a canonical form:
//! object keys are hashed in sorted order, so a reordered manifest is the same object.
//! `status`, `resourceVersion`, kubectl's last-applied annotation and the rest of
//! `metadata` are left out: they change without changing what is built (our own status
//! writes come back as watch events). Labels and annotations count: the reconciler copies
//! an ExternalSecret's into its Secret, and a new `force-sync` annotation asks for a sync.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// kubectl's `last-applied-configuration` annotation: a copy of the object, not content.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// SHA-256 of an object's canonical content (see the module docs).
pub type ContentHash = [u8; 32];

/// The content hash of a Kubernetes object given as JSON (`apiVersion`, `kind`,
/// `metadata.name`, `metadata.namespace`, `metadata.labels`, `metadata.annotations` but
/// kubectl's last-applied copy, every other top-level field but `status`).
pub fn content_hash(object: &Value) -> ContentHash {
    let mut h = Sha256::new();
    if let Value::Object(map) = object {
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        for k in keys {
            match k.as_str() {
                "status" => continue,
                "metadata" => {
                    h.update(b"m");
                    for field in ["name", "namespace"] {
                        put(&mut h, map[k].get(field).unwrap_or(&Value::Null));
                    }
                    // Absent and empty maps are the same.
                    let non_empty = |v: Value| match v {
                        Value::Object(m) if m.is_empty() => Value::Null,
                        other => other,
                    };
                    put(
                        &mut h,
                        &non_empty(map[k].get("labels").cloned().unwrap_or(Value::Null)),
                    );
                    // Annotations are content (the reconciler copies them into Secrets, and
                    // a new `force-sync` value asks for a sync); kubectl's copy of the
                    // whole object is not.
                    let annotations = match map[k].get("annotations") {
                        Some(Value::Object(a)) if a.contains_key(LAST_APPLIED) => {
                            let mut a = a.clone();
                            a.remove(LAST_APPLIED);
                            Value::Object(a)
                        }
                        Some(a) => a.clone(),
                        None => Value::Null,
                    };
                    put(&mut h, &non_empty(annotations));
                }
                _ => {
                    h.update(b"k");
                    put_str(&mut h, k);
                    put(&mut h, &map[k]);
                }
            }
        }
    } else {
        put(&mut h, object);
    }
    h.finalize().into()
}

/// Hash of raw text (e.g. a `.cedar` file).
pub fn text_hash(text: &str) -> ContentHash {
    Sha256::digest(text.as_bytes()).into()
}

fn put_str(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

/// Feeds `v` to `h` unambiguously: a type tag, lengths before contents, keys sorted.
fn put(h: &mut Sha256, v: &Value) {
    match v {
        Value::Null => h.update(b"n"),
        Value::Bool(b) => h.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            h.update(b"#");
            put_str(h, &n.to_string());
        }
        Value::String(s) => {
            h.update(b"s");
            put_str(h, s);
        }
        Value::Array(items) => {
            h.update(b"[");
            h.update((items.len() as u64).to_le_bytes());
            for item in items {
                put(h, item);
            }
        }
        Value::Object(map) => {
            h.update(b"{");
            h.update((map.len() as u64).to_le_bytes());
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for k in keys {
                put_str(h, k);
                put(h, &map[k]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn order_status_and_bookkeeping_do_not_count() {
        let a = json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "a", "namespace": "n"},
                       "spec": {"x": 1, "y": [1, "2"]}});
        let b = json!({"spec": {"y": [1, "2"], "x": 1}, "kind": "K", "apiVersion": "v1",
                       "metadata": {"namespace": "n", "name": "a", "resourceVersion": "9", "uid": "u",
                                    "annotations": {LAST_APPLIED: "{}"}},
                       "status": {"ready": true}});
        assert_eq!(content_hash(&a), content_hash(&b));
    }

    #[test]
    fn labels_and_annotations_count() {
        let base = json!({"kind": "K", "metadata": {"name": "a", "labels": {"l": "v"},
                          "annotations": {"force-sync": "1", LAST_APPLIED: "{}"}}});
        let relabelled = json!({"kind": "K", "metadata": {"name": "a", "labels": {"l": "w"},
                          "annotations": {"force-sync": "1", LAST_APPLIED: "{}"}}});
        let forced = json!({"kind": "K", "metadata": {"name": "a", "labels": {"l": "v"},
                          "annotations": {"force-sync": "2", LAST_APPLIED: "{}"}}});
        let reapplied = json!({"kind": "K", "metadata": {"name": "a", "labels": {"l": "v"},
                          "annotations": {"force-sync": "1", LAST_APPLIED: "{\"x\":1}"}}});
        assert_ne!(content_hash(&base), content_hash(&relabelled));
        assert_ne!(content_hash(&base), content_hash(&forced));
        assert_eq!(content_hash(&base), content_hash(&reapplied));
    }

    #[test]
    fn every_built_field_counts() {
        let base =
            json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "a"}, "spec": {"x": "1"}});
        let changed = [
            json!({"apiVersion": "v2", "kind": "K", "metadata": {"name": "a"}, "spec": {"x": "1"}}),
            json!({"apiVersion": "v1", "kind": "L", "metadata": {"name": "a"}, "spec": {"x": "1"}}),
            json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "b"}, "spec": {"x": "1"}}),
            json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "a", "namespace": "n"}, "spec": {"x": "1"}}),
            json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "a"}, "spec": {"x": 1}}),
            json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "a"}, "spec": {"x": "1", "y": null}}),
            json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "a"}, "data": {"x": "1"}}),
        ];
        for c in changed {
            assert_ne!(content_hash(&base), content_hash(&c), "{c}");
        }
        // Lengths are framed: moving a boundary between two strings changes the hash.
        assert_ne!(
            content_hash(&json!({"spec": ["ab", "c"]})),
            content_hash(&json!({"spec": ["a", "bc"]}))
        );
    }
}
