//! Authentication: ServiceAccount JWTs verified against each federation's keys.
//!
//! A token is matched to the federations whose issuer equals its `iss` (by name order), then
//! to a key by `kid`: the keys with that `kid`, else the keys without one (all keys when the
//! token has none). Keys come only from the federation's own configuration (static `jwks` or
//! PEM `publicKeys`, or fetched anonymously from its `url`), never from the token.

mod authenticator;
mod clock;
mod error;
mod federation;
mod identity;
mod jwks;
mod keys;
mod settings;
mod token;

#[cfg(test)]
mod tests;

pub use authenticator::Authenticator;
pub use clock::Clock;
pub use error::AuthnError;
pub use federation::{Federation, FederationError};
pub use identity::Identity;
pub use keys::kubernetes_key_id;
pub use settings::AuthnSettings;

/// Checks, without any key, that `token` is at most `max_bytes` long and shaped like a compact
/// JWS (RFC 7515 §7.1) this server could accept: three base64url parts, a JSON object header
/// without `crit` and with an accepted `alg`, JSON object claims with an `iss`. Cheap enough to
/// run before a request body is read; [`Authenticator::authenticate`] repeats it and verifies.
///
/// # Errors
/// [`AuthnError::TooLarge`], or the parse error naming what is wrong (never the token).
pub fn check_token_shape(token: &str, max_bytes: usize) -> Result<(), AuthnError> {
    token::parse(token, max_bytes).map(|_| ())
}
