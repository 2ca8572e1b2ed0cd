//! Authentication: JWTs verified against each federation's keys — Kubernetes
//! ServiceAccount tokens (`KubernetesFederation`), OIDC issuers' tokens (`OIDCFederation`
//! and ESE's `OktaFederation`, `PingIdentityFederation` presets) and SPIFFE JWT-SVIDs
//! (`SpiffeFederation`), by one verifier.
//!
//! A JWT-SVID (a token whose `sub` is a workload SPIFFE ID) is matched to the
//! `SpiffeFederation` of its `sub`'s trust domain, whatever its `iss` (JWT-SVIDs often have
//! none); only that federation's bundle keys (`use: jwt-svid`) can verify it. Any other
//! token is matched to the federations whose issuer equals its `iss` (by name order), then
//! to a key by `kid`: the keys with that `kid`, else the keys without one (all keys when the
//! token has none). Keys come only from the federation's own configuration (static `jwks` or
//! PEM `publicKeys`, or fetched anonymously from its `url` or issuer), never from the token.
//! An X.509-SVID (a TLS client certificate, `x509svid`) is matched to the
//! `SpiffeFederation` of its URI SAN's trust domain and verified, at request time, against
//! that federation's current bundle authorities (`use: x509-svid`); it proves the same
//! [`Identity`] as a JWT-SVID for the same SPIFFE ID.
//!
//! The checks every token gets (size, shape, algorithm, signature, lifetime, audience) are
//! the same for every kind; a federation's kind only adds what its tokens must carry and
//! which [`Identity`] they prove.

mod authenticator;
mod clock;
mod error;
mod federation;
mod identity;
mod jwks;
mod keys;
mod offline;
mod settings;
mod spiffe;
mod token;
mod x509svid;

#[cfg(test)]
mod tests;

pub use authenticator::Authenticator;
pub use clock::Clock;
pub use error::AuthnError;
pub use federation::{
    Federation, FederationError, MAX_BOUND_CLAIMS, MAX_CLAIM_NAME_BYTES, MAX_CLAIM_PATTERN_BYTES,
    MAX_CLAIM_VALUE_BYTES, MAX_EXPOSED_CLAIMS, okta_issuer, ping_issuer,
};
pub use identity::{
    CanonicalId, FederationKind, Identity, Principal, PrincipalKind, ServiceAccount,
};
pub use jwks::KeyHealth;
pub use jwks::{MAX_SPIFFE_REFRESH_SECS, MIN_SPIFFE_REFRESH_SECS};
pub use keys::kubernetes_key_id;
pub use offline::{OfflineIdentity, identify_offline};
pub use settings::AuthnSettings;
pub use spiffe::{
    MAX_SPIFFE_ID_BYTES, SpiffeId, SpiffeIdError, kubernetes_workload, parse_spiffe_id,
    parse_workload_id,
};
pub(crate) use spiffe::{could_be_a_served_workload, could_only_be_served_workloads};
pub use x509svid::{
    ClientCertificate, MAX_CLIENT_CHAIN_BYTES, MAX_CLIENT_CHAIN_CERTS, X509SvidError,
    chain_within_bounds,
};

/// Checks, cheaply and without any key, that `token` is at most `max_bytes` long and has the
/// shape of a compact JWS (RFC 7515 §7.1): three dot-separated parts, the first two non-empty,
/// all base64url characters. Nothing is decoded: it runs before a request body is read, on
/// every request, and [`Authenticator::authenticate`] does the full parse and verification.
///
/// # Errors
/// [`AuthnError::TooLarge`], or [`AuthnError::Malformed`] naming what is wrong (never the token).
pub fn check_token_shape(token: &str, max_bytes: usize) -> Result<(), AuthnError> {
    let (h, p, s) = token::split(token, max_bytes)?;
    // Every byte is looked at, without an early exit, so the loop runs in SIMD lanes: the
    // check is made on every request, before any cache (a third of a microsecond byte by
    // byte for a Kubernetes-sized token).
    let base64url = |part: &str| {
        part.bytes().fold(true, |ok, c| {
            ok & ((c.wrapping_sub(b'a') < 26)
                | (c.wrapping_sub(b'A') < 26)
                | (c.wrapping_sub(b'0') < 10)
                | (c == b'-')
                | (c == b'_'))
        })
    };
    if base64url(h) && base64url(p) && base64url(s) {
        Ok(())
    } else {
        Err(AuthnError::Malformed("not base64url"))
    }
}
