//! Why one ExternalSecret did not sync: one enum, mapped to ESO's condition reasons.
//!
//! Messages name the ExternalSecret's fields (`spec.data[2]`), remote keys, store and
//! generator names, never a fetched or generated value: they go into the status, logs and
//! (in Kubernetes mode) Events, which many can read.

use crate::generators::GeneratorError;
use crate::providers::ProviderError;

/// ESO's `Ready` condition reason for a failed sync.
pub const REASON_SYNCED_ERROR: &str = "SecretSyncedError";
/// ESO's `Ready` reason after a successful sync.
pub const REASON_SYNCED: &str = "SecretSynced";
/// ESO's `Ready` reason after the Secret was deleted (`deletionPolicy: Delete`).
pub const REASON_DELETED: &str = "SecretDeleted";
/// ESO's `Ready` reason when a `creationPolicy: Merge` target does not exist.
pub const REASON_MISSING: &str = "SecretMissing";

/// One ExternalSecret's failure. The whole sync fails: no partial Secret is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// The spec is malformed, out of bounds, or asks for something ESO refuses.
    #[error("invalid ExternalSecret: {0}")]
    InvalidSpec(String),
    /// The spec asks for something this build does not do (yet).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The store does not exist.
    #[error("{kind} {name:?} not found")]
    StoreNotFound {
        /// `SecretStore` or `ClusterSecretStore`.
        kind: &'static str,
        /// Store name.
        name: String,
    },
    /// The store exists but could not be built (its credentials, its spec).
    #[error("{kind} {name:?} is not ready: {reason}")]
    StoreNotReady {
        /// Store kind.
        kind: &'static str,
        /// Store name.
        name: String,
        /// Why (field names, never values).
        reason: String,
    },
    /// The store belongs to another controller class (ESO: "can not reference unmanaged
    /// store").
    #[error("can not reference unmanaged store {name:?} (controller class {class:?})")]
    StoreUnmanaged {
        /// Store name.
        name: String,
        /// Its `spec.controller`.
        class: String,
    },
    /// A ClusterSecretStore's `spec.conditions` refuse the namespace (ESO's message).
    #[error(
        "using cluster store {name:?} is not allowed from namespace {namespace:?}: denied by spec.conditions"
    )]
    StoreDenied {
        /// Store name.
        name: String,
        /// The ExternalSecret's namespace.
        namespace: String,
    },
    /// A ClusterSecretStore's condition cannot be evaluated (bad selector or regexp): the
    /// store is refused.
    #[error("cluster store {name:?}: invalid spec.conditions: {reason}")]
    StoreConditionInvalid {
        /// Store name.
        name: String,
        /// Which condition and why.
        reason: String,
    },
    /// A backend call failed.
    #[error("error processing {what} from store {store:?}: {source}")]
    Provider {
        /// `spec.data[0] (key: db)`, `spec.dataFrom[1].find`, …
        what: String,
        /// Store name.
        store: String,
        /// The provider's (value-free) error.
        source: ProviderError,
    },
    /// The generator does not exist (or did not build).
    #[error("error processing {what}: generator {kind} {name:?} {reason}")]
    GeneratorUnavailable {
        /// `spec.dataFrom[i]`.
        what: String,
        /// Generator kind.
        kind: String,
        /// Generator name.
        name: String,
        /// `not found` / `is not ready: …`.
        reason: String,
    },
    /// The generator failed.
    #[error("error processing {what}: generator {kind} {name:?}: {source}")]
    Generator {
        /// `spec.dataFrom[i]`.
        what: String,
        /// Generator kind.
        kind: String,
        /// Generator name.
        name: String,
        /// The generator's (value-free) error.
        source: GeneratorError,
    },
    /// A value could not be decoded as its `decodingStrategy` says.
    #[error("could not apply decoding strategy to {what}: key {key:?} is not valid {strategy}")]
    Decode {
        /// The entry.
        what: String,
        /// The Secret key whose value failed.
        key: String,
        /// `base64` / `base64url`.
        strategy: &'static str,
    },
    /// Two keys became one (conversion or rewrite).
    #[error("could not apply {step} to keys of {what}: secret name collision: {key:?}")]
    KeyCollision {
        /// The entry.
        what: String,
        /// `conversion strategy`, `rewrite[0]`, …
        step: String,
        /// The colliding key.
        key: String,
    },
    /// A key is not a valid Secret key (ESO's `ValidateKeys`).
    #[error(
        "secret keys from {what} can only have alphanumeric, '-', '_' or '.' characters and at most 253 bytes: {key:?} (convert them with rewrite)"
    )]
    InvalidKey {
        /// The entry.
        what: String,
        /// The key (truncated to 253 bytes).
        key: String,
    },
    /// A rewrite operation failed.
    #[error("could not rewrite {what}: {reason}")]
    Rewrite {
        /// `spec.dataFrom[i].rewrite[j]`.
        what: String,
        /// Why (key names, never values).
        reason: String,
    },
    /// `target.template` could not be applied (parse or render error, a missing
    /// `templateFrom` item, …).
    #[error("{what}: {reason}")]
    Template {
        /// `spec.target.template.data`, `…templateFrom[i]`, ….
        what: String,
        /// Why (template and key names, positions, never values).
        reason: String,
    },
    /// The Secret would exceed Kubernetes' size limit.
    #[error("the Secret's data would be {size} bytes, more than Kubernetes' limit of {limit}")]
    TooLarge {
        /// Bytes of keys and values.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// ESO refuses to delete a Secret it does not own.
    #[error("unable to delete secret {secret}: creationPolicy={policy} is not Owner")]
    DeleteNotOwner {
        /// Secret name.
        secret: String,
        /// The creation policy.
        policy: &'static str,
    },
    /// `deletionPolicy: Delete` on a Secret this ExternalSecret did not write (another
    /// controller owns it, or nothing marks it as an ExternalSecret's).
    #[error("unable to delete secret {secret}: it was not written by this ExternalSecret")]
    DeleteNotWritten {
        /// Secret name.
        secret: String,
    },
    /// The existing Secret is immutable and its data would change.
    #[error("unable to update secret {secret}: immutable")]
    Immutable {
        /// Secret name.
        secret: String,
    },
    /// The record of issued credentials (Kubernetes mode) cannot be read or written, or is
    /// full (one neither recorded nor handed out would leak). The message says what became
    /// of what the sync issued (nothing issued, or revoked).
    #[error("{0}")]
    Record(String),
    /// Another ExternalSecret already writes this Secret.
    #[error("secret {secret} is already owned by ExternalSecret {owner}")]
    Owned {
        /// Secret name.
        secret: String,
        /// The other ExternalSecret.
        owner: String,
    },
}

impl SyncError {
    /// ESO's `Ready` condition reason for this failure.
    pub fn reason(&self) -> &'static str {
        REASON_SYNCED_ERROR
    }

    /// ESO's condition message summary (`could not get secret data from provider`, …),
    /// which the status message starts with.
    pub fn summary(&self) -> &'static str {
        match self {
            SyncError::DeleteNotOwner { .. } | SyncError::DeleteNotWritten { .. } => {
                "could not delete secret"
            }
            SyncError::Template { .. } => "could not apply template",
            SyncError::Record(_) => "could not record generated credentials",
            SyncError::Immutable { .. } => "could not update secret, target is immutable",
            SyncError::Owned { .. } | SyncError::TooLarge { .. } => "could not update secret",
            _ => "could not get secret data from provider",
        }
    }

    /// The status message: the summary, then the detail.
    pub fn message(&self) -> String {
        format!("{}: {self}", self.summary())
    }

    /// Whether this is the provider's "no such secret" (ESO's `NoSecretErr`): with a
    /// `deletionPolicy` other than `Retain`, such an entry is skipped rather than failing.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            SyncError::Provider {
                source: ProviderError::NotFound,
                ..
            }
        )
    }
}
