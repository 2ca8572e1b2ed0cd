//! Tunables of the authenticator.

use std::time::Duration;

use super::clock::Clock;

/// Limits, cache lifetimes and the clock of an [`Authenticator`](super::Authenticator).
#[derive(Clone, Debug)]
pub struct AuthnSettings {
    /// Source of "now" for token lifetimes and cache ages.
    pub clock: Clock,
    /// Allowed clock skew for `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
    /// Largest accepted token, checked before any parsing (larger → [`AuthnError::TooLarge`](super::AuthnError::TooLarge)).
    pub max_token_bytes: usize,
    /// Fetched keys are re-fetched once older than this (on next use).
    pub jwks_ttl: Duration,
    /// If the issuer is down, cached keys keep serving this long past `jwks_ttl`, then fail closed.
    pub jwks_max_stale: Duration,
    /// An unknown `kid` triggers at most one refresh per federation per interval (also the
    /// back-off after a failed fetch).
    pub jwks_min_refresh_interval: Duration,
    /// Longest a request whose `kid` is unknown right after a fetch waits for the next
    /// permitted refresh (key rotation must not fail a valid token). A request is held only
    /// when that refresh is due within this time; otherwise it is answered at once.
    pub jwks_rotation_wait: Duration,
    /// Most requests of one federation held at once by [`jwks_rotation_wait`](Self::jwks_rotation_wait);
    /// further unknown-`kid` requests are answered at once (a flood of junk `kid`s cannot
    /// hold more than this many connections per federation).
    pub jwks_max_rotation_waiters: usize,
    /// Timeout of one HTTP request for discovery or keys.
    pub fetch_timeout: Duration,
    /// Largest JWKS (and discovery) document accepted.
    pub max_jwks_bytes: usize,
    /// A JWKS with more keys than this is rejected whole.
    pub max_jwks_keys: usize,
    /// Most verified tokens remembered.
    pub token_cache_capacity: u64,
    /// Longest accepted lifetime (`exp - iat`). Kubernetes' extended tokens live one year;
    /// anything longer is a forged or misconfigured token.
    pub max_token_lifetime: Duration,
}

impl Default for AuthnSettings {
    fn default() -> Self {
        AuthnSettings {
            clock: Clock::system(),
            leeway_secs: 60,
            max_token_bytes: 16 * 1024,
            jwks_ttl: Duration::from_secs(5 * 60),
            jwks_max_stale: Duration::from_secs(60 * 60),
            jwks_min_refresh_interval: Duration::from_secs(10),
            jwks_rotation_wait: Duration::from_secs(10),
            jwks_max_rotation_waiters: 32,
            fetch_timeout: Duration::from_secs(5),
            max_jwks_bytes: 256 * 1024,
            max_jwks_keys: 64,
            token_cache_capacity: 100_000,
            max_token_lifetime: Duration::from_secs(366 * 24 * 60 * 60),
        }
    }
}
