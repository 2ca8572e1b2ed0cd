//! Fetching: the error every source reports, retries within an overall deadline, and
//! one concurrent request per distinct secret.

use std::future::Future;
use std::time::Duration;

use futures_util::future::join_all;
use rand::Rng;
use tokio::time::Instant;

use super::args::{Plan, SecretId, SourceConfig};
use super::federated::FederatedClient;
use super::inject::Results;
use super::local::LocalClient;
use super::value::SecretData;

/// Why one secret could not be had. Texts name the cause, never a value or a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// 401: the token was refused.
    #[error("unauthorized: the server refused the token (HTTP 401)")]
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
    /// The token file could not be read or holds no usable token.
    #[error("bad token file {path}: {reason}")]
    BadToken {
        /// The file.
        path: String,
        /// Why.
        reason: String,
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
    /// Any other refusal (400, 413, …).
    #[error("request refused (HTTP {0})")]
    Rejected(u16),
    /// The answer was not what the call returns.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    /// The overall `--timeout` ran out.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl FetchError {
    /// Whether trying again may help (connect errors, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FetchError::Unreachable(_) | FetchError::RateLimited { .. } | FetchError::Server(_)
        )
    }
}

/// Exponential backoff with jitter: `base·2^attempt`, capped, then a random point in
/// its upper half so many Pods restarting together do not retry in step.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.min(20)));
    let d = exp.min(cap);
    let half = d / 2;
    let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
}

/// Runs `attempt` until it succeeds, fails for good, or `deadline` passes; transient
/// failures are retried with capped exponential backoff (and `Retry-After` for 429).
pub async fn with_retry<T, F, Fut>(
    deadline: Instant,
    total: Duration,
    mut attempt: F,
) -> Result<T, FetchError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, FetchError>>,
{
    let mut n = 0u32;
    loop {
        let err = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => return Err(FetchError::Timeout(total)),
        };
        if !err.is_transient() {
            return Err(err);
        }
        let mut wait = backoff(n, Duration::from_millis(100), Duration::from_secs(5));
        if let FetchError::RateLimited {
            retry_after: Some(ra),
        } = &err
        {
            wait = *ra;
        }
        if Instant::now() + wait >= deadline {
            // The last real cause says more than "timed out".
            return Err(err);
        }
        tracing::debug!(error = %err, attempt = n, wait_ms = wait.as_millis() as u64, "transient failure, retrying");
        tokio::time::sleep(wait).await;
        n = n.saturating_add(1);
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

/// Where secrets come from, ready to fetch.
pub enum Fetcher {
    /// A Federation Server.
    Federated(FederatedClient),
    /// The local cluster's ExternalSecrets.
    Local(LocalClient),
}

impl Fetcher {
    /// Builds the source the plan names (reads the CA file, or the in-cluster config).
    pub async fn from_plan(plan: &Plan) -> Result<Fetcher, SetupError> {
        match &plan.source {
            SourceConfig::Federated {
                url,
                store,
                token_path,
                ca_path,
                ca_explicit,
            } => Ok(Fetcher::Federated(FederatedClient::new(
                url,
                store.clone(),
                token_path.clone(),
                ca_path,
                *ca_explicit,
            )?)),
            SourceConfig::Local { namespace } => Ok(Fetcher::Local(
                LocalClient::in_cluster(namespace.clone()).await?,
            )),
        }
    }

    /// Fetches one secret, retrying transient failures until `deadline`.
    pub async fn fetch(
        &self,
        id: &SecretId,
        deadline: Instant,
        total: Duration,
    ) -> Result<SecretData, FetchError> {
        match self {
            Fetcher::Federated(c) => with_retry(deadline, total, || c.fetch_once(id)).await,
            Fetcher::Local(c) => with_retry(deadline, total, || c.fetch_once(id)).await,
        }
    }

    /// Fetches every id concurrently (one request each) within `timeout`.
    pub async fn fetch_all(&self, ids: &[SecretId], timeout: Duration) -> Results {
        let deadline = Instant::now() + timeout;
        let answers = join_all(ids.iter().map(|id| self.fetch(id, deadline, timeout))).await;
        ids.iter().cloned().zip(answers).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempt in 0..40 {
            let d = backoff(attempt, Duration::from_millis(100), Duration::from_secs(5));
            assert!(d <= Duration::from_secs(5), "{d:?}");
            let full = Duration::from_millis(100)
                .saturating_mul(2u32.saturating_pow(attempt.min(20)))
                .min(Duration::from_secs(5));
            assert!(d >= full / 2, "{attempt}: {d:?}");
        }
    }

    #[tokio::test]
    async fn retries_transient_until_success() {
        let calls = AtomicU32::new(0);
        let total = Duration::from_secs(30);
        let out = with_retry(Instant::now() + total, total, || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(FetchError::Unreachable("connection refused".into())),
                1 => Err(FetchError::Server(503)),
                2 => Err(FetchError::RateLimited {
                    retry_after: Some(Duration::from_millis(50)),
                }),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(out, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn final_errors_are_not_retried() {
        for e in [
            FetchError::Unauthorized,
            FetchError::NotFound("x".into()),
            FetchError::Tls("bad cert".into()),
            FetchError::Rejected(400),
        ] {
            let calls = AtomicU32::new(0);
            let total = Duration::from_secs(30);
            let out: Result<(), _> = with_retry(Instant::now() + total, total, || {
                calls.fetch_add(1, Ordering::SeqCst);
                let e = e.clone();
                async move { Err(e) }
            })
            .await;
            assert_eq!(out, Err(e));
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }

    // Paused time: the clock only moves through the retry's own sleeps, so "gave up by the
    // deadline" is exact and does not depend on how loaded the machine is (on real time this
    // failed under load: a 100 ms sleep can take longer than the whole 600 ms budget).
    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline_with_the_last_cause() {
        let total = Duration::from_millis(600);
        let start = Instant::now();
        let out: Result<(), _> = with_retry(start + total, total, || async {
            Err(FetchError::Unreachable("connection refused".into()))
        })
        .await;
        assert_eq!(
            out,
            Err(FetchError::Unreachable("connection refused".into()))
        );
        assert!(Instant::now() - start <= total);
        // A hanging attempt ends at the deadline.
        let out: Result<(), _> =
            with_retry(Instant::now() + total, total, std::future::pending).await;
        assert_eq!(out, Err(FetchError::Timeout(total)));
    }
}
