//! `admission.k8s.io/v1` `AdmissionReview`: the request's Pod to [`super::mutate()`], the
//! answer back with the request's `uid`. Our own serde types rather than kube's
//! (`kube::core::admission`): its response carries the patch as a JSON array of numbers,
//! not the base64 string of the API, and its request fails as a whole on a Pod that does
//! not decode, losing the `uid` that a denial must echo.

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

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

/// Answers the review in `body`.
///
/// # Errors
/// [`Malformed`] when `body` is not an `admission.k8s.io/v1` `AdmissionReview` with a
/// request and its `uid`.
pub fn review(body: &[u8], settings: &Settings) -> Result<Answer, Malformed> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| {
        Malformed(format!(
            "not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if doc["apiVersion"] != API_VERSION || doc["kind"] != "AdmissionReview" {
        return Err(Malformed(format!(
            "apiVersion must be {API_VERSION} and kind AdmissionReview (the webhook \
             configuration's admissionReviewVersions must be [v1])"
        )));
    }
    let request = doc
        .get("request")
        .filter(|r| r.is_object())
        .ok_or_else(|| Malformed("no request".into()))?;
    let uid = request["uid"]
        .as_str()
        .filter(|u| !u.is_empty() && u.len() <= 256)
        .ok_or_else(|| Malformed("request.uid must be a non-empty string".into()))?
        .to_string();
    let text = |v: &Value| {
        v.as_str()
            .unwrap_or_default()
            .chars()
            .take(253)
            .collect::<String>()
    };
    let namespace = text(&request["namespace"]);
    let mut answer = Answer {
        review: Value::Null,
        outcome: Outcome::Unchanged,
        uid: uid.clone(),
        namespace,
        name: text(&request["name"]),
    };
    let is_pod = request["kind"] == json!({"group": "", "version": "v1", "kind": "Pod"})
        && request["resource"]["resource"] == "pods"
        && request["subResource"]
            .as_str()
            .unwrap_or_default()
            .is_empty();
    if !is_pod || request["operation"] != "CREATE" {
        answer.review = allowed(&uid, None);
        return Ok(answer);
    }
    let result = match serde_json::from_value::<Pod>(request["object"].clone()) {
        Ok(pod) => {
            if answer.name.is_empty() {
                answer.name = pod.metadata.generate_name.clone().unwrap_or_default();
            }
            super::mutate(&pod, settings)
        }
        // serde's message may quote a value of the Pod (an env var's): not repeated.
        Err(_) => Err(Denial::invalid(
            "request.object",
            "is not a Pod this webhook can read",
        )),
    };
    match result {
        Ok(patch) if patch.0.is_empty() => answer.review = allowed(&uid, None),
        Ok(patch) => {
            answer.outcome = Outcome::Mutated(patch.0.len());
            let bytes = serde_json::to_vec(&patch).map_err(|_| Malformed("unencodable".into()))?;
            answer.review = allowed(&uid, Some(&bytes));
        }
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
            json!({"spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": 12345}]}]}}),
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
