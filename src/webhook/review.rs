//! `admission.k8s.io/v1` `AdmissionReview`: the request's Pod to [`super::mutate()`], the
//! answer back with the request's `uid`. Our own serde types rather than kube's
//! (`kube::core::admission`): its response carries the patch as a JSON array of numbers,
//! not the base64 string of the API, and its request fails as a whole on a Pod that does
//! not decode, losing the `uid` that a denial must echo.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::annotations::{self, Parsed};
use super::{Denial, Settings};

/// The API version of the reviews read and written.
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// Largest review accepted (the API server sends the whole Pod, bounded by etcd's
/// 1.5 MiB object limit; the old object is absent on CREATE).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What became of a review, for the log line (names only, never values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not a Pod CREATE, or a Pod without our annotations (or skipped, or already
    /// injected): allowed unchanged.
    Unchanged,
    /// Allowed with a patch of this many operations.
    Mutated(usize),
    /// Denied.
    Denied {
        /// The status code (400, 403, 500).
        code: u16,
        /// The annotation or field named.
        field: String,
    },
}

/// One review answered: the response document and what happened, with the request's
/// names for the log.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The `AdmissionReview` to send back.
    pub review: Value,
    /// What happened.
    pub outcome: Outcome,
    /// The request's `uid`.
    pub uid: String,
    /// The Pod's namespace, when given.
    pub namespace: String,
    /// The Pod's name (empty when only `generateName` is known yet).
    pub name: String,
}

/// A body that is not an `admission.k8s.io/v1` `AdmissionReview` request: answered 400
/// with this text (no review can be built without a `uid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed AdmissionReview: {0}")]
pub struct Malformed(pub String);

/// Largest JSON patch sent back (base64 makes it a third larger in the response): an
/// injection that would need more is denied, naming the annotations.
pub const MAX_PATCH_BYTES: usize = 1024 * 1024;

/// The review as read: only what the webhook needs, borrowed from the body (the Pod is
/// kept as its raw JSON text and decoded once, into [`Pod`], only when it asks for an
/// injection).
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<Value>,
    #[serde(default)]
    kind: Option<Value>,
    #[serde(borrow, default)]
    request: Option<&'a RawValue>,
}

/// `request` of a review: small fields as JSON values (checked below, so that a wrong type
/// is named rather than failing the whole body), the object as raw text.
#[derive(serde::Deserialize)]
struct RequestPart<'a> {
    #[serde(default)]
    uid: Option<Value>,
    #[serde(default)]
    kind: Option<Value>,
    #[serde(default)]
    resource: Option<Value>,
    #[serde(rename = "subResource", default)]
    sub_resource: Option<Value>,
    #[serde(default)]
    operation: Option<Value>,
    #[serde(default)]
    namespace: Option<Value>,
    #[serde(default)]
    name: Option<Value>,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
}

/// The part of a Pod read before the rest: its annotations (values of any JSON type, so
/// that a Pod that does not decode is still told apart from one asking for injection).
#[derive(serde::Deserialize)]
struct PodHead {
    #[serde(default)]
    metadata: Option<MetaHead>,
}

#[derive(serde::Deserialize)]
struct MetaHead {
    #[serde(rename = "generateName", default)]
    generate_name: Option<Value>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, Value>>,
}

/// Answers the review in `body`: a JSON `admission.k8s.io/v1` `AdmissionReview` (at most
/// [`MAX_BODY_BYTES`], bounded by the caller). The body is parsed once into borrowed
/// parts; the Pod's annotations are read from its raw JSON first, so that a Pod without
/// ours is admitted unchanged even when the rest of it would not decode into
/// [`Pod`]; only a Pod asking for an injection is decoded whole.
///
/// # Errors
/// [`Malformed`] when `body` is not an `admission.k8s.io/v1` `AdmissionReview` with a
/// request and its `uid`.
pub fn review(body: &[u8], settings: &Settings) -> Result<Answer, Malformed> {
    let doc: Envelope<'_> = serde_json::from_slice(body).map_err(|e| {
        Malformed(format!(
            "not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if doc.api_version.as_ref().and_then(Value::as_str) != Some(API_VERSION)
        || doc.kind.as_ref().and_then(Value::as_str) != Some("AdmissionReview")
    {
        return Err(Malformed(format!(
            "apiVersion must be {API_VERSION} and kind AdmissionReview (the webhook \
             configuration's admissionReviewVersions must be [v1])"
        )));
    }
    let request: RequestPart<'_> = doc
        .request
        .filter(|r| r.get().trim_start().starts_with('{'))
        .ok_or_else(|| Malformed("no request".into()))
        .and_then(|r| {
            serde_json::from_str(r.get()).map_err(|_| Malformed("request is not an object".into()))
        })?;
    let uid = request
        .uid
        .as_ref()
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty() && u.len() <= 256)
        .ok_or_else(|| Malformed("request.uid must be a non-empty string".into()))?
        .to_string();
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .unwrap_or_default()
            .chars()
            .take(253)
            .collect::<String>()
    };
    let mut answer = Answer {
        review: Value::Null,
        outcome: Outcome::Unchanged,
        uid: uid.clone(),
        namespace: text(request.namespace.as_ref()),
        name: text(request.name.as_ref()),
    };
    let is_pod = request.kind == Some(json!({"group": "", "version": "v1", "kind": "Pod"}))
        && request
            .resource
            .as_ref()
            .is_some_and(|r| r["resource"] == "pods")
        && text(request.sub_resource.as_ref()).is_empty();
    let create = request.operation.as_ref().and_then(Value::as_str) == Some("CREATE");
    if !is_pod || !create {
        answer.review = allowed(&uid, None);
        return Ok(answer);
    }
    let result = pod_patch(request.object, settings, &mut answer.name);
    match result {
        Ok(patch) if patch.0.is_empty() => answer.review = allowed(&uid, None),
        Ok(patch) => match serde_json::to_vec(&patch) {
            Ok(bytes) if bytes.len() <= MAX_PATCH_BYTES => {
                answer.outcome = Outcome::Mutated(patch.0.len());
                answer.review = allowed(&uid, Some(&bytes));
            }
            Ok(bytes) => {
                let d = Denial::invalid(
                    "metadata.annotations",
                    format!(
                        "the injection would change the Pod by {} bytes of JSON patch, more than \
                         {MAX_PATCH_BYTES}: fewer containers, or shorter \
                         secretless.externalsecrets.com/ annotations (each esi-cli command line \
                         carries them)",
                        bytes.len()
                    ),
                );
                answer.outcome = Outcome::Denied {
                    code: d.code,
                    field: d.field.clone(),
                };
                answer.review = denied(&uid, &d);
            }
            Err(_) => return Err(Malformed("unencodable".into())),
        },
        Err(d) => {
            answer.outcome = Outcome::Denied {
                code: d.code,
                field: d.field.clone(),
            };
            answer.review = denied(&uid, &d);
        }
    }
    Ok(answer)
}

/// The patch for the Pod of a CREATE review (`object`, raw JSON): empty when its
/// annotations, read first, hold none of ours (or `skip`); otherwise the Pod decoded
/// whole and handed to [`super::mutate()`]. Fills `name` from `generateName` when the
/// request named none.
fn pod_patch(
    object: Option<&RawValue>,
    settings: &Settings,
    name: &mut String,
) -> Result<json_patch::Patch, Denial> {
    let unreadable = || Denial::invalid("request.object", "is not a Pod this webhook can read");
    let object = object.ok_or_else(unreadable)?;
    // serde's message may quote a value of the Pod (an env var's): never repeated.
    let head: PodHead = serde_json::from_str(object.get()).map_err(|_| unreadable())?;
    let meta = head.metadata;
    if name.is_empty() {
        *name = meta
            .as_ref()
            .and_then(|m| m.generate_name.as_ref())
            .and_then(Value::as_str)
            .unwrap_or_default()
            .chars()
            .take(253)
            .collect();
    }
    let ours: BTreeMap<String, String> = match meta.and_then(|m| m.annotations) {
        None => return Ok(json_patch::Patch(Vec::new())),
        Some(all) => {
            let mut ours = BTreeMap::new();
            for (k, v) in all {
                if !k.starts_with(annotations::PREFIX) {
                    continue;
                }
                let Value::String(v) = v else {
                    return Err(Denial::invalid(k, "must be a string"));
                };
                ours.insert(k, v);
            }
            ours
        }
    };
    match annotations::parse(Some(&ours))? {
        Parsed::NotOurs | Parsed::Skipped => return Ok(json_patch::Patch(Vec::new())),
        Parsed::Request(_) => {}
    }
    // Bounded before it is decoded (second review H1): decoding a Pod of a million tiny
    // list entries would take hundreds of MiB.
    super::bounds::check(object.get())?;
    #[cfg(test)]
    tests::TYPED_DECODES.with(|n| n.set(n.get() + 1));
    let pod: Pod = serde_json::from_str(object.get()).map_err(|_| unreadable())?;
    super::mutate(&pod, settings)
}

fn allowed(uid: &str, patch: Option<&[u8]>) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(p) = patch {
        response["patchType"] = "JSONPatch".into();
        response["patch"] = base64::engine::general_purpose::STANDARD.encode(p).into();
    }
    json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})
}

/// Longest denial message sent back (the API server shows it to the user).
const MAX_MESSAGE_CHARS: usize = 2048;

fn denied(uid: &str, d: &Denial) -> Value {
    let reason = match d.code {
        403 => "Forbidden",
        500 => "InternalError",
        _ => "BadRequest",
    };
    let mut message: String = d.to_string();
    if message.chars().count() > MAX_MESSAGE_CHARS {
        message = message.chars().take(MAX_MESSAGE_CHARS).collect::<String>() + "…";
    }
    json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": {
        "uid": uid,
        "allowed": false,
        "status": {"status": "Failure", "code": d.code, "reason": reason, "message": message},
    }})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// Pods decoded whole (into [`Pod`]) on this thread.
        pub(super) static TYPED_DECODES: Cell<usize> = const { Cell::new(0) };
    }

    /// Second review H1: a Pod asking for an injection with huge lists is refused from
    /// its raw JSON, quickly and before it is decoded, naming the list and the bound.
    #[test]
    fn huge_pods_are_refused_before_they_are_decoded() {
        let s = Settings::default();
        let ours = json!({"secretless.externalsecrets.com/env-vars": "true",
                          "secretless.externalsecrets.com/externalsecret": "db"});
        let env: Vec<Value> = (0..100_000).map(|_| json!({"name": "B"})).collect();
        let many_env = json!({"metadata": {"name": "big", "annotations": ours},
            "spec": {"containers": [{"name": "app", "command": ["/app"], "env": env}]}});
        let tiny: Vec<Value> = (0..242_000).map(|_| json!({"name": "a"})).collect();
        let many_containers = json!({"metadata": {"name": "big", "annotations": ours},
            "spec": {"containers": tiny}});
        let mid: Vec<Value> = (0..100).map(|_| json!({"name": "a"})).collect();
        let hundred = json!({"metadata": {"name": "big", "annotations": ours},
            "spec": {"containers": mid}});
        for (object, field, needle) in [
            (many_env, "spec.containers[0].env", "more than 1024 entries"),
            (many_containers, "request.object", "more than the 1572864"),
            (hundred, "spec.containers", "more than 64 containers"),
        ] {
            let body = request("CREATE", "Pod", object);
            TYPED_DECODES.with(|n| n.set(0));
            let started = std::time::Instant::now();
            let a = review(&body, &s).unwrap();
            let took = started.elapsed();
            assert_eq!(TYPED_DECODES.with(Cell::get), 0, "{field}: decoded");
            assert!(
                took < std::time::Duration::from_millis(500),
                "{field}: {took:?}"
            );
            assert_eq!(
                a.outcome,
                Outcome::Denied {
                    code: 400,
                    field: field.into()
                }
            );
            let msg = a.review["response"]["status"]["message"].as_str().unwrap();
            assert!(msg.contains(needle), "{msg}");
        }
        // Without our annotations the same Pods are admitted, undecoded.
        let env: Vec<Value> = (0..100_000).map(|_| json!({"name": "B"})).collect();
        let plain = json!({"metadata": {"name": "big"},
            "spec": {"containers": [{"name": "app", "env": env}]}});
        let a = review(&request("CREATE", "Pod", plain), &s).unwrap();
        assert_eq!(a.outcome, Outcome::Unchanged);
        assert_eq!(TYPED_DECODES.with(Cell::get), 0);
    }

    fn request(operation: &str, kind: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": API_VERSION, "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": kind},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": "apps", "operation": operation, "object": object}
        }))
        .unwrap()
    }

    fn pod(annotations: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"generateName": "app-", "annotations": annotations},
               "spec": {"containers": [{"name": "app", "image": "app:1", "command": ["/app"]}]}})
    }

    #[test]
    fn allowed_unchanged_mutated_and_denied_echo_the_uid() {
        let s = Settings::default();
        let a = review(&request("CREATE", "Pod", pod(json!({}))), &s).unwrap();
        assert_eq!(a.outcome, Outcome::Unchanged);
        assert_eq!(a.review["response"], json!({"uid": "u-1", "allowed": true}));
        assert_eq!(a.name, "app-");
        // Not a CREATE, not a Pod: unchanged whatever the annotations say.
        let bad = json!({"secretless.externalsecrets.com/bogus": "1"});
        for (op, kind) in [("UPDATE", "Pod"), ("CREATE", "ConfigMap")] {
            let a = review(&request(op, kind, pod(bad.clone())), &s).unwrap();
            assert_eq!(a.outcome, Outcome::Unchanged, "{op} {kind}");
        }
        let a = review(&request("CREATE", "Pod", pod(bad)), &s).unwrap();
        assert_eq!(
            a.outcome,
            Outcome::Denied {
                code: 400,
                field: "secretless.externalsecrets.com/bogus".into()
            }
        );
        let r = &a.review["response"];
        assert_eq!(r["allowed"], false);
        assert_eq!(r["uid"], "u-1");
        assert_eq!(r["status"]["code"], 400);
        assert!(
            r["status"]["message"]
                .as_str()
                .unwrap()
                .starts_with("secretless.externalsecrets.com/bogus: unknown annotation")
        );
        let env = json!({"secretless.externalsecrets.com/env-vars": "true",
                         "secretless.externalsecrets.com/federated-server-url": "https://esi.example.com",
                         "secretless.externalsecrets.com/federated-store": "vault",
                         "secretless.externalsecrets.com/externalsecret": "db"});
        let a = review(&request("CREATE", "Pod", pod(env)), &s).unwrap();
        assert!(
            matches!(a.outcome, Outcome::Mutated(n) if n > 3),
            "{:?}",
            a.outcome
        );
        let r = &a.review["response"];
        assert_eq!(r["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        assert!(!patch.0.is_empty());
    }

    /// Review finding 9: the annotations are read before the Pod is decoded, so a Pod
    /// without ours is admitted even when the rest of it does not decode.
    #[test]
    fn undecodable_pods_without_our_annotations_are_admitted() {
        let s = Settings::default();
        let odd = |annotations: Value| {
            json!({"metadata": {"generateName": "odd-", "annotations": annotations},
                   "spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": 12345}]}]}})
        };
        for annotations in [json!({"other.example.com/x": "1"}), Value::Null] {
            let a = review(&request("CREATE", "Pod", odd(annotations)), &s).unwrap();
            assert_eq!(a.outcome, Outcome::Unchanged);
            assert_eq!(a.review["response"], json!({"uid": "u-1", "allowed": true}));
            assert_eq!(a.name, "odd-");
        }
        // skip: "true" is honoured without decoding the rest either.
        let skip = json!({"secretless.externalsecrets.com/skip": "true"});
        let a = review(&request("CREATE", "Pod", odd(skip)), &s).unwrap();
        assert_eq!(a.outcome, Outcome::Unchanged);
        // Ours, not a string: named.
        let a = review(
            &request(
                "CREATE",
                "Pod",
                odd(json!({"secretless.externalsecrets.com/env-vars": true})),
            ),
            &s,
        )
        .unwrap();
        assert_eq!(
            a.outcome,
            Outcome::Denied {
                code: 400,
                field: "secretless.externalsecrets.com/env-vars".into()
            }
        );
    }

    /// Review finding 1: a patch larger than [`MAX_PATCH_BYTES`] is denied, naming the
    /// annotations that make it large.
    #[test]
    fn an_oversized_patch_is_denied() {
        let s = Settings::default();
        let env: Vec<String> = (0..100)
            .map(|i| format!("V{i:03}_{}=db.k{i}", "X".repeat(60)))
            .collect();
        let env = env.join(",");
        let names: Vec<String> = (0..30)
            .map(|i| format!("apps/team/{}/s{i}", "n".repeat(250)))
            .collect();
        let names = names.join(",");
        let store = "s".repeat(6000);
        for v in [&env, &names, &store] {
            assert!(v.len() < annotations::MAX_VALUE_BYTES, "{}", v.len());
        }
        let containers: Vec<Value> = (0..64)
            .map(|i| json!({"name": format!("c{i}"), "image": "app:1", "command": ["/app"]}))
            .collect();
        let object = json!({"metadata": {"name": "big", "annotations": {
                "secretless.externalsecrets.com/env-vars": "true",
                "secretless.externalsecrets.com/federated-server-url": "https://esi.example.com",
                "secretless.externalsecrets.com/federated-store": store,
                "secretless.externalsecrets.com/externalsecret": names,
                "secretless.externalsecrets.com/inject-on-env": env}},
            "spec": {"containers": containers}});
        let a = review(&request("CREATE", "Pod", object), &s).unwrap();
        assert_eq!(
            a.outcome,
            Outcome::Denied {
                code: 400,
                field: "metadata.annotations".into()
            }
        );
        let msg = a.review["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains("more than 1048576"), "{msg}");
    }

    #[test]
    fn malformed_reviews_are_named() {
        let s = Settings::default();
        let e = review(b"{not json", &s).unwrap_err();
        assert!(e.0.contains("not JSON"), "{e}");
        let e = review(
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#,
            &s,
        )
        .unwrap_err();
        assert!(e.0.contains("admissionReviewVersions"), "{e}");
        let e = review(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            &s,
        )
        .unwrap_err();
        assert_eq!(e.0, "no request");
        let e = review(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#,
            &s,
        )
        .unwrap_err();
        assert!(e.0.contains("uid"), "{e}");
        // A Pod that does not decode: denied with the uid, without quoting the Pod.
        let body = request(
            "CREATE",
            "Pod",
            json!({"metadata": {"annotations": {"secretless.externalsecrets.com/env-vars": "true"}},
                   "spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": 12345}]}]}}),
        );
        let a = review(&body, &s).unwrap();
        let msg = a.review["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            msg.starts_with("request.object:") && !msg.contains("12345"),
            "{msg}"
        );
    }
}
