//! The verified identity of a caller.

/// Who called, as proven by a verified ServiceAccount token.
///
/// Every field comes from a token whose signature, issuer, audience and lifetime
/// were checked against a configured federation; nothing here is taken on trust.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Name of the `KubernetesFederation` whose keys verified the token.
    pub federation: String,
    /// The token's `iss`.
    pub issuer: String,
    /// The token's `sub` (`system:serviceaccount:NS:NAME`).
    pub subject: String,
    /// ServiceAccount namespace.
    pub namespace: String,
    /// ServiceAccount name.
    pub service_account: String,
    /// ServiceAccount UID, when the token carries it.
    pub service_account_uid: Option<String>,
    /// Pod name, for pod-bound tokens.
    pub pod_name: Option<String>,
    /// Pod UID, for pod-bound tokens.
    pub pod_uid: Option<String>,
    /// Token expiry (seconds since the epoch), when the token has one.
    pub expires_at: Option<u64>,
}
