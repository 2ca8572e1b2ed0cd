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
//! Order of a sync that issues credentials: record previous + new, write the target
//! Secret, revoke the previous, record the new (with any previous that could not be
//! revoked). A crash at any point leaves every live credential recorded.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use super::sync::IssuedCredential;

/// The data key of the record.
const DATA_KEY: &str = "issued";
/// Most credentials one record holds (beyond: the sync fails rather than forget one).
pub const MAX_RECORDED: usize = 256;
/// Largest record read (bytes).
const MAX_RECORD_BYTES: usize = 256 * 1024;
/// Label of every record, for listing and RBAC.
pub const RECORD_LABEL: &str = "esi.external-secrets.io/issued-credentials";

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
}

fn api_error(e: &kube::Error) -> RecordError {
    RecordError::Api(match e {
        kube::Error::Api(s) => format!("HTTP {} {}", s.code, s.reason),
        _ => "the Kubernetes API could not be reached".to_string(),
    })
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
    format!("esi-issued-{uid}")
}

impl Records {
    /// Records kept in `namespace`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Records {
            api: Api::namespaced(client, namespace),
        }
    }

    /// The credentials recorded for the ExternalSecret `uid` (none when there is no record).
    ///
    /// # Errors
    /// [`RecordError::Api`] when it cannot be read, [`RecordError::Damaged`] when it cannot
    /// be parsed (never taken as empty: that would forget live credentials).
    pub async fn get(&self, uid: &str) -> Result<Vec<IssuedCredential>, RecordError> {
        let name = record_name(uid);
        let Some(secret) = self.api.get_opt(&name).await.map_err(|e| api_error(&e))? else {
            return Ok(Vec::new());
        };
        let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(DATA_KEY)) else {
            return Err(RecordError::Damaged(name));
        };
        if bytes.0.len() > MAX_RECORD_BYTES {
            return Err(RecordError::Damaged(name));
        }
        serde_json::from_slice(&bytes.0).map_err(|_| RecordError::Damaged(name))
    }

    /// Makes the record of `uid` hold exactly `issued` (deleted when empty). `owner` (the
    /// ExternalSecret's `namespace/name`) is kept as an annotation for operators.
    ///
    /// # Errors
    /// [`RecordError::TooMany`] beyond [`MAX_RECORDED`]; [`RecordError::Api`].
    pub async fn put(
        &self,
        uid: &str,
        owner: &str,
        issued: &[IssuedCredential],
    ) -> Result<(), RecordError> {
        let name = record_name(uid);
        if issued.is_empty() {
            return match self.api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(api_error(&e)),
            };
        }
        if issued.len() > MAX_RECORDED {
            return Err(RecordError::TooMany);
        }
        let text = serde_json::to_vec(issued).map_err(|_| RecordError::Damaged(name.clone()))?;
        let existing = self.api.get_opt(&name).await.map_err(|e| api_error(&e))?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    RECORD_LABEL.to_string(),
                    "true".to_string(),
                )])),
                annotations: Some(BTreeMap::from([(
                    "esi.external-secrets.io/external-secret".to_string(),
                    owner.to_string(),
                )])),
                resource_version: existing.and_then(|s| s.metadata.resource_version),
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
        let result = if secret.metadata.resource_version.is_some() {
            self.api.replace(&name, &pp, &secret).await
        } else {
            self.api.create(&pp, &secret).await
        };
        result.map(drop).map_err(|e| api_error(&e))
    }
}
