//! Kubernetes mode: the record of the generator credentials each ExternalSecret's Secret
//! holds, so that they are revoked when replaced or when the ExternalSecret goes.
//!
//! One Secret per ExternalSecret, `esi-issued-<ExternalSecret uid>`, in the reconciler's
//! own namespace (`--leader-election-namespace`): never on the target Secret, which the
//! namespace's tenants can write (a record there could be forged to make the reconciler
//! revoke someone else's credentials with a generator's token, or be swapped between two
//! ExternalSecrets merging into one Secret). It holds revocation handles (lease ids,
//! accessors, credential ids), never values, as JSON under `data.issued`, and is keyed by
//! uid: a new ExternalSecret of the same name never inherits an old record.
//!
//! Order of a sync that issues credentials: each new credential recorded as soon as it is
//! issued (beside those already recorded), write the target Secret, then mark the previous
//! ones `revoke_after` (the end of their grace), revoked once it passed (those that cannot
//! be revoked stay). A crash between a backend's answer and that credential's record write
//! leaves it unrecorded (it lapses at its TTL); from then on every live credential is
//! recorded.
//!
//! Every write is a compare-and-set on the `resourceVersion` the caller read ([`Record`]):
//! a record changed in between (another replica after a leadership handover) is read again
//! and the two merged ([`merge`]): an entry someone else recorded is never dropped.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};

use super::sync::IssuedCredential;

/// The data key of the record.
const DATA_KEY: &str = "issued";
/// Most credentials one record holds (beyond: the sync fails rather than forget one).
pub const MAX_RECORDED: usize = 256;
/// Largest record read or written (bytes of the JSON under `data.issued`).
pub const MAX_RECORD_BYTES: usize = 256 * 1024;
/// Label of every record, for listing and RBAC.
pub const RECORD_LABEL: &str = "esi.external-secrets.io/issued-credentials";
/// Prefix of every record's name (then the ExternalSecret's uid).
pub const RECORD_PREFIX: &str = "esi-issued-";
/// Attempts of one [`Records::put`] that meets a concurrent change (each: read, merge,
/// write again).
const PUT_ATTEMPTS: u32 = 4;
/// Most records listed by [`Records::list_uids`].
const MAX_LISTED: usize = 100_000;

/// Why the record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The Kubernetes API refused or could not be reached (code and reason only).
    #[error("the record of issued credentials: {0}")]
    Api(String),
    /// The record exists but cannot be read: nothing is revoked or overwritten.
    #[error("the record of issued credentials {0} is damaged; fix or delete it")]
    Damaged(String),
    /// More credentials than a record holds.
    #[error("more than {MAX_RECORDED} generated credentials for one ExternalSecret")]
    TooMany,
    /// The record would be larger than [`MAX_RECORD_BYTES`] (which [`Records::get`] would
    /// refuse to read back): it is not written.
    #[error("the record of issued credentials would be {0} bytes, more than {MAX_RECORD_BYTES}")]
    TooLarge(usize),
    /// Changed by someone else at every one of [`PUT_ATTEMPTS`] attempts.
    #[error("the record of issued credentials keeps changing under this writer")]
    Conflict,
}

fn api_error(e: &kube::Error) -> RecordError {
    RecordError::Api(match e {
        kube::Error::Api(s) => format!("HTTP {} {}", s.code, s.reason),
        _ => "the Kubernetes API could not be reached".to_string(),
    })
}

/// A record as read: its entries and the `resourceVersion` they were read at (`None`: there
/// was no record). The base of the compare-and-set of [`Records::put`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The credentials recorded.
    pub entries: Vec<IssuedCredential>,
    /// The record Secret's `resourceVersion` when read or written (`None`: absent).
    pub version: Option<String>,
}

/// The records, in one namespace.
#[derive(Clone)]
pub struct Records {
    api: Api<Secret>,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").finish_non_exhaustive()
    }
}

/// The record's name for an ExternalSecret uid.
pub fn record_name(uid: &str) -> String {
    format!("{RECORD_PREFIX}{uid}")
}

/// What to write when the record changed between the caller's read (`base`) and its write
/// of `ours`: `ours`, plus every entry of the record as it is now (`theirs`) that was not in
/// `base` (recorded by someone else meanwhile: never dropped). Entries of `base` left out of
/// `ours` (revoked by the caller) stay out.
pub fn merge(
    base: &[IssuedCredential],
    theirs: &[IssuedCredential],
    ours: Vec<IssuedCredential>,
) -> Vec<IssuedCredential> {
    let mut out = ours;
    for t in theirs {
        if !base.iter().any(|b| b.same(t)) && !out.iter().any(|o| o.same(t)) {
            out.push(t.clone());
        }
    }
    out
}

/// The JSON stored for `issued`.
///
/// # Errors
/// [`RecordError::TooMany`] beyond [`MAX_RECORDED`] entries, [`RecordError::TooLarge`]
/// beyond [`MAX_RECORD_BYTES`].
pub fn encode(issued: &[IssuedCredential]) -> Result<Vec<u8>, RecordError> {
    if issued.len() > MAX_RECORDED {
        return Err(RecordError::TooMany);
    }
    let text = serde_json::to_vec(issued).map_err(|_| RecordError::TooLarge(usize::MAX))?;
    if text.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge(text.len()));
    }
    Ok(text)
}

/// A record Secret as read: its entries and `resourceVersion`.
///
/// # Errors
/// [`RecordError::Damaged`] when it has no `issued`, is larger than [`MAX_RECORD_BYTES`] or
/// cannot be parsed.
fn parse(secret: &Secret) -> Result<Record, RecordError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(DATA_KEY)) else {
        return Err(RecordError::Damaged(name));
    };
    if bytes.0.len() > MAX_RECORD_BYTES {
        return Err(RecordError::Damaged(name));
    }
    let entries = serde_json::from_slice(&bytes.0).map_err(|_| RecordError::Damaged(name))?;
    Ok(Record {
        entries,
        version: secret.metadata.resource_version.clone(),
    })
}

/// The annotation naming a record's ExternalSecret (`namespace/name`).
pub const OWNER_ANNOTATION: &str = "esi.external-secrets.io/external-secret";

/// A record as listed ([`Records::list`]).
#[derive(Debug)]
pub struct Listed {
    /// The ExternalSecret uid it is for.
    pub uid: String,
    /// Its ExternalSecret's `namespace/name` as recorded (the owner annotation).
    pub owner: Option<String>,
    /// When the record Secret was created (seconds since the epoch).
    pub created: Option<u64>,
    /// Its entries, or why they cannot be read.
    pub record: Result<Record, RecordError>,
}

/// Records listed per page by [`Records::list`].
const LIST_PAGE: u32 = 500;

/// What one write attempt met.
enum Attempt {
    Written(Record),
    /// The record is not at the version the write was based on (409, or gone under a
    /// replace).
    Changed,
}

impl Records {
    /// Records kept in `namespace`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Records {
            api: Api::namespaced(client, namespace),
        }
    }

    /// The credentials recorded for the ExternalSecret `uid` and the record's version (an
    /// empty [`Record`] when there is none).
    ///
    /// # Errors
    /// [`RecordError::Api`] when it cannot be read, [`RecordError::Damaged`] when it cannot
    /// be parsed or is larger than [`MAX_RECORD_BYTES`] (never taken as empty: that would
    /// forget live credentials).
    pub async fn get(&self, uid: &str) -> Result<Record, RecordError> {
        let name = record_name(uid);
        match self.api.get_opt(&name).await.map_err(|e| api_error(&e))? {
            Some(secret) => parse(&secret),
            None => Ok(Record::default()),
        }
    }

    /// Makes the record of `uid` hold `issued` (deleted when empty), if it is still at
    /// `base.version`; if it changed since (409), reads it again, [`merge`]s, and tries
    /// again, [`PUT_ATTEMPTS`] times in all. `owner` (the ExternalSecret's `namespace/name`)
    /// is kept as an annotation for operators. Returns the record as written (the base of
    /// the next put).
    ///
    /// # Errors
    /// [`RecordError::TooMany`] / [`RecordError::TooLarge`] beyond the bounds (nothing is
    /// written: the caller must not hand out what it could not record);
    /// [`RecordError::Conflict`]; [`RecordError::Api`]; [`RecordError::Damaged`] when the
    /// record read again cannot be parsed.
    pub async fn put(
        &self,
        uid: &str,
        owner: &str,
        base: &Record,
        issued: Vec<IssuedCredential>,
    ) -> Result<Record, RecordError> {
        let mut base = base.clone();
        let mut wanted = issued;
        for _ in 0..PUT_ATTEMPTS {
            match self.try_put(uid, owner, &base, &wanted).await? {
                Attempt::Written(r) => return Ok(r),
                Attempt::Changed => {
                    let now = self.get(uid).await?;
                    wanted = merge(&base.entries, &now.entries, wanted);
                    base = now;
                }
            }
        }
        Err(RecordError::Conflict)
    }

    async fn try_put(
        &self,
        uid: &str,
        owner: &str,
        base: &Record,
        issued: &[IssuedCredential],
    ) -> Result<Attempt, RecordError> {
        let name = record_name(uid);
        let conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
        if issued.is_empty() {
            let Some(version) = &base.version else {
                // Nothing was recorded when read; whatever appeared since is someone else's.
                return Ok(Attempt::Written(Record::default()));
            };
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: None,
                    resource_version: Some(version.clone()),
                }),
                ..DeleteParams::default()
            };
            return match self.api.delete(&name, &dp).await {
                Ok(_) => Ok(Attempt::Written(Record::default())),
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    Ok(Attempt::Written(Record::default()))
                }
                Err(e) if conflict(&e) => Ok(Attempt::Changed),
                Err(e) => Err(api_error(&e)),
            };
        }
        let text = encode(issued)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    RECORD_LABEL.to_string(),
                    "true".to_string(),
                )])),
                annotations: Some(BTreeMap::from([(
                    OWNER_ANNOTATION.to_string(),
                    owner.to_string(),
                )])),
                resource_version: base.version.clone(),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(DATA_KEY.to_string(), ByteString(text))])),
            type_: Some("Opaque".to_string()),
            ..Secret::default()
        };
        let pp = PostParams {
            field_manager: Some(super::kubernetes::CONTROLLER_NAME.into()),
            ..PostParams::default()
        };
        let result = if base.version.is_some() {
            self.api.replace(&name, &pp, &secret).await
        } else {
            self.api.create(&pp, &secret).await
        };
        match result {
            Ok(s) => Ok(Attempt::Written(Record {
                entries: issued.to_vec(),
                version: s.metadata.resource_version,
            })),
            // 409: another version (or, on create, a record that appeared); 404 on replace:
            // deleted meanwhile.
            Err(e) if conflict(&e) => Ok(Attempt::Changed),
            Err(kube::Error::Api(s)) if s.code == 404 && base.version.is_some() => {
                Ok(Attempt::Changed)
            }
            Err(e) => Err(api_error(&e)),
        }
    }

    /// Every record (by [`RECORD_LABEL`] and name), read in pages of [`LIST_PAGE`], at most
    /// [`MAX_LISTED`].
    ///
    /// # Errors
    /// [`RecordError::Api`].
    pub async fn list(&self) -> Result<Vec<Listed>, RecordError> {
        let mut out = Vec::new();
        let mut lp = ListParams::default()
            .labels(&format!("{RECORD_LABEL}=true"))
            .limit(LIST_PAGE);
        loop {
            let page = self.api.list(&lp).await.map_err(|e| api_error(&e))?;
            for s in &page.items {
                let Some(uid) = s
                    .metadata
                    .name
                    .as_deref()
                    .and_then(|n| n.strip_prefix(RECORD_PREFIX))
                else {
                    continue;
                };
                if out.len() >= MAX_LISTED {
                    return Ok(out);
                }
                out.push(Listed {
                    uid: uid.to_string(),
                    owner: s
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(OWNER_ANNOTATION))
                        .cloned(),
                    created: s
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .and_then(|t| u64::try_from(t.0.as_second()).ok()),
                    record: parse(s),
                });
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(next) => lp = lp.continue_token(&next),
                None => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generators::RevocationState;
    use kube::client::Body;
    use serde_json::{Value, json};
    use std::sync::{Arc, Mutex};

    fn cred(n: u32) -> IssuedCredential {
        IssuedCredential {
            namespace: "apps".into(),
            kind: "VaultDynamicSecret".into(),
            name: "creds".into(),
            state: RevocationState(json!({"leaseId": format!("fake/creds/{n}")})),
            expires_at: None,
            revoke_after: None,
        }
    }

    /// One record Secret behind a compare-and-set API, as the API server keeps it: GET,
    /// POST (409 when it exists), PUT (409 unless at the current resourceVersion), DELETE
    /// (409 when the precondition's resourceVersion is not the current one).
    type Stored = Arc<Mutex<Option<(u64, Value)>>>;

    fn api_server(stored: Stored) -> kube::Client {
        let svc = tower::service_fn(move |req: http::Request<Body>| {
            let stored = stored.clone();
            async move {
                let method = req.method().clone();
                let bytes = http_body_util::BodyExt::collect(req.into_body())
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let status = |code: u16, reason: &str| {
                    (
                        code,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": reason, "code": code, "message": reason}),
                    )
                };
                let mut s = stored.lock().unwrap();
                let current_rv = s.as_ref().map(|(rv, _)| rv.to_string());
                let (code, answer) = match method.as_str() {
                    "GET" => match &*s {
                        Some((_, obj)) => (200, obj.clone()),
                        None => status(404, "NotFound"),
                    },
                    "POST" if s.is_some() => status(409, "AlreadyExists"),
                    "PUT"
                        if body["metadata"]["resourceVersion"].as_str()
                            != current_rv.as_deref() =>
                    {
                        status(409, "Conflict")
                    }
                    "POST" | "PUT" => {
                        let rv = s.as_ref().map_or(1, |(rv, _)| rv + 1);
                        let mut obj = body.clone();
                        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                        *s = Some((rv, obj.clone()));
                        (200, obj)
                    }
                    "DELETE" => {
                        let wanted = body["preconditions"]["resourceVersion"].as_str();
                        if s.is_none() {
                            status(404, "NotFound")
                        } else if wanted.is_some() && wanted != current_rv.as_deref() {
                            status(409, "Conflict")
                        } else {
                            *s = None;
                            (
                                200,
                                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                            )
                        }
                    }
                    _ => status(405, "MethodNotAllowed"),
                };
                let resp = http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        kube::Client::new(svc, "esi")
    }

    /// A writer between the caller's read and its put (a replica that took over) is
    /// detected: its entries are kept, the caller's removals stay removed (before: the put
    /// used its own fresh resourceVersion and overwrote the other writer's entries).
    #[tokio::test]
    async fn a_put_over_a_concurrent_write_keeps_both_writers_entries() {
        let stored: Stored = Arc::new(Mutex::new(None));
        let records = Records::new(api_server(stored.clone()), "esi");
        let first = records
            .put("u", "apps/db", &Record::default(), vec![cred(0), cred(1)])
            .await
            .unwrap();
        let read = records.get("u").await.unwrap();
        assert_eq!(read, first);
        // Another writer records cred(2) meanwhile.
        let other = Records::new(api_server(stored.clone()), "esi");
        other
            .put("u", "apps/db", &read, vec![cred(0), cred(1), cred(2)])
            .await
            .unwrap();
        // The caller revoked cred(0) and issued cred(3), based on what it had read.
        let written = records
            .put("u", "apps/db", &read, vec![cred(1), cred(3)])
            .await
            .unwrap();
        let now = records.get("u").await.unwrap();
        assert_eq!(now, written);
        assert_eq!(now.entries, [cred(1), cred(3), cred(2)]);
        // A create over a record that appeared meanwhile merges too.
        let fresh = records
            .put("u", "apps/db", &Record::default(), vec![cred(4)])
            .await
            .unwrap();
        assert_eq!(fresh.entries, [cred(4), cred(1), cred(3), cred(2)]);
        // Emptying a record someone added to since keeps their entry.
        other
            .put(
                "u",
                "apps/db",
                &fresh,
                vec![cred(4), cred(1), cred(3), cred(2), cred(5)],
            )
            .await
            .unwrap();
        let left = records
            .put("u", "apps/db", &fresh, Vec::new())
            .await
            .unwrap();
        assert_eq!(left.entries, [cred(5)]);
        assert_eq!(records.get("u").await.unwrap().entries, [cred(5)]);
        // Emptied at the current version: deleted.
        records
            .put("u", "apps/db", &left, Vec::new())
            .await
            .unwrap();
        assert!(stored.lock().unwrap().is_none());
    }

    #[test]
    fn merging_keeps_what_others_added_and_drops_what_we_removed() {
        let base = [cred(0), cred(1)];
        let theirs = [cred(0), cred(1), cred(2)];
        assert_eq!(
            merge(&base, &theirs, vec![cred(1), cred(3)]),
            [cred(1), cred(3), cred(2)]
        );
        assert_eq!(merge(&base, &base, vec![]), Vec::<IssuedCredential>::new());
    }

    /// A record that `get` would refuse to read back is never written (before: `put` had no
    /// byte bound, so a record could be written that made every later sync fail).
    #[tokio::test]
    async fn a_record_larger_than_a_get_reads_is_refused() {
        let big = |n: u32| IssuedCredential {
            state: RevocationState(json!({"leaseId": "x".repeat(2048), "n": n})),
            ..cred(n)
        };
        let many: Vec<_> = (0..200).map(big).collect();
        assert!(matches!(encode(&many), Err(RecordError::TooLarge(n)) if n > MAX_RECORD_BYTES));
        let stored: Stored = Arc::new(Mutex::new(None));
        let records = Records::new(api_server(stored.clone()), "esi");
        let err = records
            .put("u", "apps/db", &Record::default(), many)
            .await
            .unwrap_err();
        assert!(matches!(err, RecordError::TooLarge(_)), "{err}");
        assert!(stored.lock().unwrap().is_none(), "nothing written");
        assert!(matches!(
            encode(&(0..257).map(cred).collect::<Vec<_>>()),
            Err(RecordError::TooMany)
        ));
    }
}
