//! Why a token was not accepted.

/// Why authentication failed. Messages are fixed texts: they never carry the token, its
/// claims or key material, so they are safe for logs and error bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// The token is larger than `max_token_bytes`.
    #[error("token too large")]
    TooLarge,
    /// Not a compact JWS with a JSON header and claims.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` is not one of RS256/384/512, PS256/384/512, ES256, ES384.
    #[error("unsupported token algorithm")]
    UnsupportedAlgorithm,
    /// The header has `crit`: we understand no extension, so we must reject it.
    #[error("token has critical header extensions")]
    CriticalHeader,
    /// No configured federation has the token's issuer.
    #[error("unknown token issuer")]
    UnknownIssuer,
    /// The token's `kid` is not among the keys of any federation with its issuer.
    #[error("unknown signing key id")]
    UnknownKeyId,
    /// Keys were found, but none may verify a token of this algorithm.
    #[error("token algorithm does not match the signing key")]
    KeyAlgorithmMismatch,
    /// No key verified the signature.
    #[error("invalid token signature")]
    BadSignature,
    /// The federation's keys could not be fetched and no usable cached keys remain.
    #[error("signing keys unavailable")]
    KeysUnavailable,
    /// The token has no `exp` (legacy secret-based tokens never expire; not accepted).
    #[error("token has no expiry (missing exp)")]
    MissingExpiry,
    /// The token has no `iat`: its lifetime cannot be bounded.
    #[error("token has no issued-at time (missing iat)")]
    MissingIssuedAt,
    /// `exp - iat` is longer than the configured maximum lifetime.
    #[error("token lifetime too long")]
    LifetimeTooLong,
    /// A legacy secret-based token (no expiry) for a federation that did not opt in.
    #[error("legacy secret-based tokens are not accepted by this federation")]
    LegacyToken,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    #[error("token issued in the future")]
    IssuedInFuture,
    /// A time claim is not a number.
    #[error("invalid time claim")]
    BadTimeClaim,
    /// `aud` contains none of the federation's audiences.
    #[error("token audience not accepted")]
    BadAudience,
    /// `iss` missing or not a string.
    #[error("invalid token issuer claim")]
    BadIssuer,
    /// `sub` missing, not a ServiceAccount subject, or inconsistent with `kubernetes.io`;
    /// for an OIDC federation, its subject claim missing, not a string, empty or too long;
    /// for a `SpiffeFederation`, not a workload SPIFFE ID of its trust domain (and a token
    /// without `iss` whose `sub` starts `spiffe://` but is no valid workload SPIFFE ID).
    #[error("invalid token subject")]
    BadSubject,
    /// An OIDC token's claims do not match its federation's `boundClaims`.
    #[error("token claims do not match the federation's boundClaims")]
    UnboundClaims,
    /// A claim an OIDC federation hands to policies is not a string of bounded length.
    #[error("a claim handed to policies is not a string of at most 1024 bytes")]
    BadClaim,
    /// The `kubernetes.io` claim is not of the expected shape.
    #[error("invalid kubernetes.io claim")]
    BadKubernetesClaim,
    /// A TLS client certificate presented as an X.509-SVID was refused (the rule broken).
    #[error("{0}")]
    X509Svid(#[from] super::x509svid::X509SvidError),
    /// The request carries an X.509-SVID client certificate and a bearer token: one
    /// credential per request, the server does not pick one.
    #[error("two credentials: an X.509-SVID client certificate and a bearer token; present one")]
    TwoCredentials,
}

impl AuthnError {
    /// Whether the right answer is 413 (everything else is 401).
    pub fn is_too_large(&self) -> bool {
        matches!(self, AuthnError::TooLarge)
    }

    /// A short, bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthnError::TooLarge => "too_large",
            AuthnError::Malformed(_) => "malformed",
            AuthnError::UnsupportedAlgorithm => "unsupported_alg",
            AuthnError::CriticalHeader => "crit_header",
            AuthnError::UnknownIssuer => "unknown_issuer",
            AuthnError::UnknownKeyId => "unknown_kid",
            AuthnError::KeyAlgorithmMismatch => "key_alg_mismatch",
            AuthnError::BadSignature => "bad_signature",
            AuthnError::KeysUnavailable => "keys_unavailable",
            AuthnError::MissingExpiry => "missing_exp",
            AuthnError::MissingIssuedAt => "missing_iat",
            AuthnError::LifetimeTooLong => "lifetime_too_long",
            AuthnError::LegacyToken => "legacy_token",
            AuthnError::Expired => "expired",
            AuthnError::NotYetValid => "not_yet_valid",
            AuthnError::IssuedInFuture => "iat_future",
            AuthnError::BadTimeClaim => "bad_time_claim",
            AuthnError::BadAudience => "bad_audience",
            AuthnError::BadIssuer => "bad_issuer",
            AuthnError::BadSubject => "bad_subject",
            AuthnError::UnboundClaims => "unbound_claims",
            AuthnError::BadClaim => "bad_claim",
            AuthnError::BadKubernetesClaim => "bad_kubernetes_claim",
            AuthnError::X509Svid(e) => e.kind(),
            AuthnError::TwoCredentials => "two_credentials",
        }
    }

    /// How far verification got: a later stage is the more telling error when several
    /// federations or keys were tried.
    pub(crate) fn stage(&self) -> u8 {
        match self {
            AuthnError::UnknownIssuer => 0,
            AuthnError::KeysUnavailable => 1,
            AuthnError::UnknownKeyId => 2,
            AuthnError::KeyAlgorithmMismatch => 3,
            AuthnError::BadSignature => 4,
            // Claim errors: the signature verified.
            _ => 5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_status() {
        assert!(AuthnError::TooLarge.is_too_large());
        assert!(!AuthnError::Expired.is_too_large());
        assert_eq!(AuthnError::MissingExpiry.kind(), "missing_exp");
        assert!(
            AuthnError::MissingExpiry
                .to_string()
                .contains("missing exp")
        );
        assert!(AuthnError::Expired.stage() > AuthnError::BadSignature.stage());
    }
}
