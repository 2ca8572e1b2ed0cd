//! Fetching: retries within an overall deadline, and one concurrent request per distinct
//! secret.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use super::args::{Plan, SecretId, SourceConfig};
pub use super::error::{FetchError, SetupError};
use super::federated::FederatedClient;
use super::local::LocalClient;
use super::value::SecretData;

/// Results of one round of fetching.
pub type Results = HashMap<SecretId, Result<SecretData, FetchError>>;

/// Exponential backoff with jitter (`backon`): for `D = min(base·2^attempt, cap)`, a random
/// point in `[D/2, D]`, so many Pods restarting together do not retry in step.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    use backon::BackoffBuilder;
    // backon's jitter adds up to the delay itself: half-size delays land in [D/2, D).
    backon::ExponentialBuilder::default()
        .with_min_delay(base / 2)
        .with_max_delay(cap / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(usize::try_from(attempt.min(40)).unwrap_or(40))
        .unwrap_or(cap)
        .min(cap)
}

/// Runs `attempt` until it succeeds, fails for good, or `deadline` passes; transient
/// failures are retried with capped exponential backoff (for 429, the longer of it and
/// `Retry-After`, itself capped at 5 minutes).
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
            // Never shorter than the backoff: `Retry-After: 0` is no licence to hammer.
            wait = wait.max(*ra);
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
                credential,
                ca_path,
                ca_explicit,
                ..
            } => Ok(Fetcher::Federated(FederatedClient::new(
                url,
                store.clone(),
                credential.clone(),
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

    /// Review finding 6: `Retry-After: 0` (or a server that always says it) made every
    /// retry immediate: as many calls as round trips allow until the deadline. The wait is
    /// now at least the backoff.
    #[tokio::test]
    async fn a_zero_retry_after_still_backs_off() {
        let calls = AtomicU32::new(0);
        let total = Duration::from_millis(400);
        let out: Result<(), _> = with_retry(Instant::now() + total, total, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Err(FetchError::RateLimited {
                    retry_after: Some(Duration::ZERO),
                })
            }
        })
        .await;
        assert!(
            matches!(out, Err(FetchError::RateLimited { .. })),
            "{out:?}"
        );
        let n = calls.load(Ordering::SeqCst);
        assert!(n <= 10, "{n} calls in 400 ms");
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
