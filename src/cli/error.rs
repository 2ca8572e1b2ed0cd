//! The errors of `esi-cli`'s sources, in a module of their own so that the sources
//! (`federated`, `local`) and their users (`fetch`, `inject`) depend on it and not on each
//! other.

use std::time::Duration;

/// Why one secret could not be had. Texts name the cause, never a value or a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// 401: the credential (bearer token or X.509-SVID) was refused.
    #[error("unauthorized: the server refused the token or client certificate (HTTP 401)")]
    Unauthorized,
    /// 403 (Kubernetes API).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404: missing, or not permitted (the Federation Server does not tell which).
    #[error("not found: {0}")]
    NotFound(String),
    /// No connection could be made (or it broke) until the deadline.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The server's certificate was not trusted, or the handshake failed.
    #[error("TLS failure: {0}")]
    Tls(String),
    /// The token file (or variable) could not be read or holds no usable token.
    #[error("bad token {path}: {reason}")]
    BadToken {
        /// Where it was read from: `file <path>` or `environment variable <name>`.
        path: String,
        /// Why.
        reason: String,
    },
    /// The X.509-SVID files (`--federated-x509-svid`, `--federated-x509-svid-key`) could
    /// not be read or do not hold a usable SVID and key.
    #[error("bad X.509-SVID {path}: {reason}")]
    BadSvid {
        /// The file at fault.
        path: String,
        /// Why (never the file's content).
        reason: String,
        /// The files look caught mid-rotation (spiffe-helper rewrites the chain, then the
        /// key, not atomically: a key of another certificate): reading again may help.
        rotating: bool,
    },
    /// 429 until the deadline.
    #[error("rate limited by the server (HTTP 429) until the timeout")]
    RateLimited {
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// 5xx until the deadline.
    #[error("server error (HTTP {0})")]
    Server(u16),
    /// 409 on a renewal: the backend will not extend the credential; a new one is needed.
    #[error("the server cannot renew the credential (HTTP 409)")]
    NotRenewable,
    /// Any other refusal (400, 413, …).
    #[error("request refused (HTTP {0})")]
    Rejected(u16),
    /// The answer was not what the call returns.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    /// The request cannot be made as asked (a name `.` or `..`, which a URL path cannot
    /// carry as a name; no `--federated-store`).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// The overall `--timeout` ran out.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl FetchError {
    /// Whether trying again may help (connect errors, 429, 5xx, SVID files caught
    /// mid-rotation).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FetchError::Unreachable(_)
                | FetchError::RateLimited { .. }
                | FetchError::Server(_)
                | FetchError::BadSvid { rotating: true, .. }
        )
    }
}

/// A failure to set up a source at all (before any secret is asked for).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `--federated-ca-crt` could not be used.
    #[error("--federated-ca-crt {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The HTTPS client could not be built.
    #[error("cannot build the HTTPS client: {0}")]
    Client(String),
    /// Local mode outside a Pod, or the Pod's config is unusable.
    #[error("local cluster: {0}")]
    Kube(String),
}
