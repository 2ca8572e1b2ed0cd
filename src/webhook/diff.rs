//! The JSON patch from a Pod to its injected form, as the API server will apply it to the
//! object it holds: objects are compared key by key (so fields this build does not know
//! are never touched), arrays of objects element by element with new elements appended
//! at their index, and arrays of scalars (a `command`) replaced whole when they differ.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::Value;

/// The operations that turn `before` into `after`.
pub fn diff(before: &Value, after: &Value) -> Patch {
    let mut ops = Vec::new();
    walk(before, after, &mut PointerBuf::root(), &mut ops);
    Patch(ops)
}

fn walk(before: &Value, after: &Value, at: &mut PointerBuf, ops: &mut Vec<PatchOperation>) {
    if before == after {
        return;
    }
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, vb) in b {
                at.push_back(k);
                match a.get(k) {
                    Some(va) => walk(vb, va, at, ops),
                    None => ops.push(PatchOperation::Remove(RemoveOperation { path: at.clone() })),
                }
                at.pop_back();
            }
            for (k, va) in a {
                if !b.contains_key(k) {
                    at.push_back(k);
                    ops.push(PatchOperation::Add(AddOperation {
                        path: at.clone(),
                        value: va.clone(),
                    }));
                    at.pop_back();
                }
            }
        }
        (Value::Array(b), Value::Array(a))
            if a.len() >= b.len() && b.iter().chain(a).any(Value::is_object) =>
        {
            for (i, va) in a.iter().enumerate() {
                at.push_back(i);
                match b.get(i) {
                    Some(vb) => walk(vb, va, at, ops),
                    None => ops.push(PatchOperation::Add(AddOperation {
                        path: at.clone(),
                        value: va.clone(),
                    })),
                }
                at.pop_back();
            }
        }
        _ => ops.push(PatchOperation::Replace(ReplaceOperation {
            path: at.clone(),
            value: after.clone(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(before: Value, after: Value) -> Value {
        let patch = diff(&before, &after);
        let mut doc = before.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc, after);
        serde_json::to_value(&patch).unwrap()
    }

    #[test]
    fn minimal_operations_that_apply_back() {
        assert_eq!(check(json!({"a": 1}), json!({"a": 1})), json!([]));
        let ops = check(
            json!({"metadata": {"annotations": {"x.io/a": "1"}},
                   "spec": {"containers": [{"name": "app", "command": ["sh", "-c", "x"], "args": ["y"]}]}}),
            json!({"metadata": {"annotations": {"x.io/a": "1", "x.io/b": "2"}},
                   "spec": {"containers": [{"name": "app", "command": ["/e", "--mode=init"],
                                            "volumeMounts": [{"name": "v"}]}],
                            "volumes": [{"name": "v"}]}}),
        );
        assert_eq!(
            ops,
            json!([
                {"op": "add", "path": "/metadata/annotations/x.io~1b", "value": "2"},
                {"op": "replace", "path": "/spec/containers/0/command", "value": ["/e", "--mode=init"]},
                {"op": "remove", "path": "/spec/containers/0/args"},
                {"op": "add", "path": "/spec/containers/0/volumeMounts", "value": [{"name": "v"}]},
                {"op": "add", "path": "/spec/volumes", "value": [{"name": "v"}]},
            ])
        );
        // Appended objects keep the existing ones untouched.
        let ops = check(
            json!({"v": [{"name": "a", "x": 1}]}),
            json!({"v": [{"name": "a", "x": 1}, {"name": "b"}]}),
        );
        assert_eq!(
            ops,
            json!([{"op": "add", "path": "/v/1", "value": {"name": "b"}}])
        );
        // A shorter list or a change of type is replaced whole.
        check(json!({"v": [{"a": 1}, {"b": 2}]}), json!({"v": [{"a": 1}]}));
        check(json!({"v": 1}), json!({"v": {"a": 1}}));
    }
}
