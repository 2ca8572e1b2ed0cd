//! Backend resilience, the same for every provider: [`Resilient`] wraps each built store
//! (around [`super::Metered`], so every attempt is counted as a backend call).
//!
//! - **Timeouts**: each provider bounds each backend call by the settings timeout
//!   (`--backend-timeout`); the API bounds the whole call on top.
//! - **Retries** ([`is_retryable`]): a call that failed with `Unavailable` (unreachable,
//!   throttled: 429 or the backend's throttling code, 5xx) or `Timeout` is tried again,
//!   at most [`ResilienceSettings::retries`] times, after a jittered exponential backoff
//!   (`backon`), and only while the first attempt started less than one backend timeout
//!   ago (so the whole call stays within the request deadline). A definite answer
//!   (`NotFound`, `InvalidRequest`, `Unsupported`, `Backend`: a 4xx) is never retried.
//!   The API's `find_allowed` is not retried either: each of its keys is decided (and
//!   audited) as it is listed, and a retry would decide them again; `find` (the
//!   reconciler's `dataFrom.find`, no per-key decision) is retried like a read.
//! - **A single read given up on** (a get dropped unfinished: the request deadline, a
//!   background cache refresh's bound) one backend timeout or more after it started counts
//!   as timed out, so a backend that never answers opens the circuit. A find given up on
//!   counts for nothing: it makes many backend calls (list pages, then read keys) and may
//!   outlast the backend timeout while every call answers.
//! - **A circuit breaker per store** ([`Breaker`]): after
//!   [`ResilienceSettings::failure_threshold`] attempts in a row failed as unavailable or
//!   timed out, the circuit *opens*: calls answer `Unavailable` ("circuit open", 503) at
//!   once, without reaching the backend. After [`ResilienceSettings::cool_down`] one call
//!   is let through as a probe (*half-open*): its success closes the circuit, its failure
//!   opens it for another cool-down. Each change is logged once (not per request) and
//!   shown in `esi_store_circuit_state{store}` (0 closed, 1 open, 2 half-open). A store's
//!   circuit is its own: other stores, and `/readyz`, are not affected.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::Retryable;

use super::{FindRequest, KeyFilter, ProviderError, RemoteRef, SecretProvider};
use crate::metrics::METRICS;

/// The message of the error a call gets while the store's circuit is open.
pub const CIRCUIT_OPEN: &str =
    "circuit open: the backend failed repeatedly; calls resume after a cool-down";

/// Retry and breaker settings (the same for every store).
#[derive(Debug, Clone)]
pub struct ResilienceSettings {
    /// Retries after the first attempt.
    pub retries: usize,
    /// First backoff delay (before jitter; doubles each retry).
    pub min_delay: Duration,
    /// Largest backoff delay.
    pub max_delay: Duration,
    /// Retries start only within this long of the first attempt (the backend timeout); a
    /// single read dropped unfinished after this long counts as timed out.
    pub retry_window: Duration,
    /// Attempts in a row failing as unavailable or timed out that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses calls before it lets a probe through.
    pub cool_down: Duration,
}

/// Most retries `--store-retries` allows.
pub const MAX_RETRIES: usize = 5;
/// Bounds of `--store-breaker-cool-down`.
pub const MIN_COOL_DOWN: Duration = Duration::from_millis(100);
/// Bounds of `--store-breaker-cool-down`.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(3600);

/// The tunable part of [`ResilienceSettings`]: `esi-server serve --store-retries`,
/// `--store-breaker-failures` and `--store-breaker-cool-down` (the same for every store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreResilience {
    /// Retries after the first attempt (0 … [`MAX_RETRIES`]).
    pub retries: usize,
    /// Attempts in a row failing as unavailable or timed out that open a circuit (≥ 1).
    pub breaker_failures: u32,
    /// How long an open circuit refuses calls before it lets a probe through.
    pub breaker_cool_down: Duration,
}

impl Default for StoreResilience {
    fn default() -> Self {
        StoreResilience {
            retries: 2,
            breaker_failures: 5,
            breaker_cool_down: Duration::from_secs(5),
        }
    }
}

impl ResilienceSettings {
    /// The defaults, with retries allowed within `backend_timeout` of the first attempt.
    pub fn with_backend_timeout(backend_timeout: Duration) -> Self {
        Self::new(backend_timeout, &StoreResilience::default())
    }

    /// `tuned`'s retries and breaker (clamped to their bounds), with retries allowed
    /// within `backend_timeout` of the first attempt.
    pub fn new(backend_timeout: Duration, tuned: &StoreResilience) -> Self {
        ResilienceSettings {
            retries: tuned.retries.min(MAX_RETRIES),
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(800),
            retry_window: backend_timeout,
            failure_threshold: tuned.breaker_failures.max(1),
            cool_down: tuned.breaker_cool_down.clamp(MIN_COOL_DOWN, MAX_COOL_DOWN),
        }
    }
}

/// Whether a failed attempt may succeed if tried again (and counts against the circuit):
/// the backend was unreachable, throttled, failing (5xx) or too slow. Never a definite
/// answer, and never the open circuit's own refusal.
pub fn is_retryable(err: &ProviderError) -> bool {
    match err {
        ProviderError::Timeout => true,
        ProviderError::Unavailable(m) => m != CIRCUIT_OPEN,
        ProviderError::NotFound
        | ProviderError::InvalidRequest(_)
        | ProviderError::Unsupported(_)
        | ProviderError::Backend(_) => false,
    }
}

/// A circuit's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls reach the backend.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// One probe call is in flight; others are refused.
    HalfOpen,
}

impl CircuitState {
    fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        }
    }
}

struct BreakerState {
    state: CircuitState,
    /// Failures in a row while closed.
    failures: u32,
    /// When an open circuit lets a probe through.
    open_until: Instant,
}

/// A store's circuit breaker: a small state machine under a mutex (held for no await).
pub struct Breaker {
    store: String,
    threshold: u32,
    cool_down: Duration,
    inner: Mutex<BreakerState>,
    /// Keeps the store's series in `/metrics` while this build of the store lives.
    _series: crate::metrics::StoreSeries,
}

/// Leave to make one call: finish it with its outcome. A call dropped unfinished (its
/// caller gave up) counts as a failure when it was a probe, so the circuit never stays
/// half-open, or when it had run for its timeout ([`Permit::timing_out_after`]): a backend
/// that never answers is a failing one, whoever stops waiting for it.
#[must_use]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    finished: bool,
    admitted: Instant,
    /// A call dropped unfinished this long after it was admitted timed out.
    timeout: Option<Duration>,
}

impl Permit<'_> {
    /// Records the call's outcome: `failed` when it failed as unavailable or timed out.
    pub fn finish(mut self, failed: bool) {
        self.finished = true;
        self.breaker.record(self.probe, failed, Instant::now());
    }

    /// A call dropped unfinished `timeout` or more after it was admitted counts as timed
    /// out (a failure); dropped sooner, it counts for nothing (unless a probe).
    pub fn timing_out_after(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let now = Instant::now();
        let timed_out = self
            .timeout
            .is_some_and(|t| now.saturating_duration_since(self.admitted) >= t);
        if self.probe || timed_out {
            self.breaker.record(self.probe, true, now);
        }
    }
}

impl Breaker {
    /// A closed circuit for store `store` (its metrics label).
    pub fn new(store: &str, threshold: u32, cool_down: Duration) -> Self {
        let series = crate::metrics::StoreSeries::hold(store);
        METRICS
            .store_circuit_state
            .with_label_values(&[store])
            .set(CircuitState::Closed.gauge());
        Breaker {
            store: store.to_string(),
            threshold: threshold.max(1),
            cool_down,
            inner: Mutex::new(BreakerState {
                state: CircuitState::Closed,
                failures: 0,
                open_until: Instant::now(),
            }),
            _series: series,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        // The state stays consistent whatever panicked while holding the lock.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        self.lock().state
    }

    /// Leave to call the backend at `now`, or `None` while the circuit refuses calls.
    pub fn admit(&self, now: Instant) -> Option<Permit<'_>> {
        let mut s = self.lock();
        let probe = match s.state {
            CircuitState::Closed => false,
            CircuitState::Open if now >= s.open_until => {
                self.transition(&mut s, CircuitState::HalfOpen);
                true
            }
            CircuitState::Open | CircuitState::HalfOpen => return None,
        };
        Some(Permit {
            breaker: self,
            probe,
            finished: false,
            admitted: now,
            timeout: None,
        })
    }

    fn record(&self, probe: bool, failed: bool, now: Instant) {
        let mut s = self.lock();
        match (s.state, probe, failed) {
            (CircuitState::HalfOpen, true, false) => {
                s.failures = 0;
                self.transition(&mut s, CircuitState::Closed);
            }
            (CircuitState::HalfOpen, true, true) => {
                s.open_until = now + self.cool_down;
                self.transition(&mut s, CircuitState::Open);
            }
            (CircuitState::Closed, _, false) => s.failures = 0,
            (CircuitState::Closed, _, true) => {
                s.failures = s.failures.saturating_add(1);
                if s.failures >= self.threshold {
                    s.open_until = now + self.cool_down;
                    self.transition(&mut s, CircuitState::Open);
                }
            }
            // Calls admitted before the circuit opened, finishing late: the probe decides.
            _ => {}
        }
    }

    fn transition(&self, s: &mut BreakerState, to: CircuitState) {
        let from = s.state;
        s.state = to;
        METRICS
            .store_circuit_state
            .with_label_values(&[&self.store])
            .set(to.gauge());
        match to {
            CircuitState::Open => tracing::warn!(
                store = %self.store,
                from = from.name(),
                to = to.name(),
                cool_down_ms = self.cool_down.as_millis() as u64,
                "store circuit opened: backend calls fail fast until a probe succeeds"
            ),
            CircuitState::HalfOpen => tracing::info!(
                store = %self.store,
                from = from.name(),
                to = to.name(),
                "store circuit half-open: probing the backend"
            ),
            CircuitState::Closed => tracing::info!(
                store = %self.store,
                from = from.name(),
                to = to.name(),
                "store circuit closed: the backend answers again"
            ),
        }
    }
}

/// A provider behind retries and a circuit breaker (see the module docs).
pub struct Resilient {
    inner: Arc<dyn SecretProvider>,
    breaker: Breaker,
    settings: ResilienceSettings,
    store: String,
}

impl Resilient {
    /// Wraps `inner`, the provider of store `store` (its metrics label).
    pub fn new(store: &str, inner: Arc<dyn SecretProvider>, settings: ResilienceSettings) -> Self {
        Resilient {
            inner,
            breaker: Breaker::new(store, settings.failure_threshold, settings.cool_down),
            settings,
            store: store.to_string(),
        }
    }

    /// One attempt through the breaker. `single_read`: the attempt is one backend read
    /// (a get), so given up on after the backend timeout it timed out; a find makes many
    /// backend calls (list pages, then read keys) and may legitimately outlast it.
    async fn once<T, Fut>(
        &self,
        single_read: bool,
        call: impl FnOnce() -> Fut,
    ) -> Result<T, ProviderError>
    where
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let Some(permit) = self.breaker.admit(Instant::now()) else {
            METRICS
                .store_circuit_rejections
                .with_label_values(&[&self.store])
                .inc();
            return Err(ProviderError::Unavailable(CIRCUIT_OPEN.into()));
        };
        // A single read dropped after the backend timeout (the request deadline, a cache
        // refresh's bound) timed out: a backend that never answers opens the circuit. A
        // find dropped late was slow but progressing (many calls, each answering): it
        // counts for nothing, or 5 slow finds would open the circuit for every tenant.
        let permit = if single_read {
            permit.timing_out_after(self.settings.retry_window)
        } else {
            permit
        };
        let result = call().await;
        permit.finish(matches!(&result, Err(e) if is_retryable(e)));
        result
    }

    /// `call` through the breaker, retried as the module docs say (`single_read`: see
    /// [`Resilient::once`]).
    async fn run<T, Fut>(
        &self,
        single_read: bool,
        call: impl Fn() -> Fut + Send + Sync,
    ) -> Result<T, ProviderError>
    where
        Fut: Future<Output = Result<T, ProviderError>> + Send,
        T: Send,
    {
        let start = Instant::now();
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(self.settings.min_delay)
            .with_max_delay(self.settings.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.settings.retries);
        (|| self.once(single_read, &call))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e| is_retryable(e) && start.elapsed() < self.settings.retry_window)
            .notify(|e, delay| {
                METRICS
                    .store_retries
                    .with_label_values(&[&self.store])
                    .inc();
                tracing::debug!(store = %self.store, error = %e.kind(), delay_ms = delay.as_millis() as u64, "retrying backend call");
            })
            .await
    }
}

#[async_trait::async_trait]
impl SecretProvider for Resilient {
    super::forward_canonical!(inner);

    async fn get_secret(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
        self.run(true, || self.inner.get_secret(remote)).await
    }

    async fn get_secret_map(
        &self,
        remote: &RemoteRef,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        self.run(true, || self.inner.get_secret_map(remote)).await
    }

    async fn find(&self, find: &FindRequest) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        self.run(false, || self.inner.find(find)).await
    }

    async fn find_allowed(
        &self,
        find: &FindRequest,
        allow: &KeyFilter<'_>,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        // Not retried: every key is decided (and audited) as it is listed.
        self.once(false, || self.inner.find_allowed(find, allow))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn retry_classification() {
        assert!(is_retryable(&ProviderError::Timeout));
        assert!(is_retryable(&ProviderError::Unavailable(
            "vault answered HTTP 503".into()
        )));
        assert!(is_retryable(&ProviderError::Unavailable(
            "vault is rate limiting (HTTP 429)".into()
        )));
        assert!(!is_retryable(&ProviderError::Unavailable(
            CIRCUIT_OPEN.into()
        )));
        assert!(!is_retryable(&ProviderError::NotFound));
        assert!(!is_retryable(&ProviderError::InvalidRequest("x".into())));
        assert!(!is_retryable(&ProviderError::Unsupported("x".into())));
        assert!(!is_retryable(&ProviderError::Backend("403".into())));
    }

    #[test]
    fn breaker_opens_after_failures_in_a_row_and_probes_after_the_cool_down() {
        let b = Breaker::new("breaker-test", 3, Duration::from_secs(5));
        let t0 = Instant::now();
        // Successes reset the count.
        for _ in 0..2 {
            b.admit(t0).unwrap().finish(true);
        }
        b.admit(t0).unwrap().finish(false);
        for _ in 0..2 {
            b.admit(t0).unwrap().finish(true);
        }
        assert_eq!(b.state(), CircuitState::Closed);
        b.admit(t0).unwrap().finish(true);
        assert_eq!(b.state(), CircuitState::Open);
        let gauge = || {
            METRICS
                .store_circuit_state
                .with_label_values(&["breaker-test"])
                .get()
        };
        assert_eq!(gauge(), 1);
        // Refused during the cool-down.
        assert!(b.admit(t0 + Duration::from_secs(4)).is_none());
        // Then one probe, and only one.
        let probe = b.admit(t0 + Duration::from_secs(6)).unwrap();
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(gauge(), 2);
        assert!(b.admit(t0 + Duration::from_secs(6)).is_none());
        // A failed probe opens it again for a cool-down from now.
        probe.finish(true);
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.admit(Instant::now() + Duration::from_secs(1)).is_none());
        let probe = b.admit(Instant::now() + Duration::from_secs(6)).unwrap();
        probe.finish(false);
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(gauge(), 0);
        assert!(b.admit(Instant::now()).is_some());
    }

    #[test]
    fn a_dropped_probe_counts_as_a_failure() {
        let b = Breaker::new("breaker-drop", 1, Duration::from_millis(1));
        b.admit(Instant::now()).unwrap().finish(true);
        assert_eq!(b.state(), CircuitState::Open);
        let later = Instant::now() + Duration::from_millis(10);
        drop(b.admit(later).unwrap());
        assert_eq!(b.state(), CircuitState::Open);
        // A dropped ordinary permit changes nothing.
        let b = Breaker::new("breaker-drop2", 1, Duration::from_millis(1));
        drop(b.admit(Instant::now()).unwrap());
        assert_eq!(b.state(), CircuitState::Closed);
    }

    /// Never answers.
    struct Hung;

    #[async_trait::async_trait]
    impl SecretProvider for Hung {
        fn kind(&self) -> &'static str {
            "resilient_hung"
        }
        async fn get_secret(&self, _: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
            std::future::pending().await
        }
        async fn get_secret_map(
            &self,
            _: &RemoteRef,
        ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
            std::future::pending().await
        }
    }

    /// A call given up on (dropped) after the backend timeout timed out: a backend that
    /// never answers opens the circuit. Given up on sooner, it counts for nothing.
    #[tokio::test]
    async fn an_attempt_dropped_after_the_backend_timeout_is_a_failure() {
        let settings = ResilienceSettings {
            retry_window: Duration::from_millis(100),
            failure_threshold: 1,
            ..settings()
        };
        let r = Resilient::new("hung-test", Arc::new(Hung), settings);
        let early = tokio::time::timeout(
            Duration::from_millis(20),
            r.get_secret(&RemoteRef::default()),
        )
        .await;
        assert!(early.is_err());
        assert_eq!(r.breaker.state(), CircuitState::Closed);
        let late = tokio::time::timeout(
            Duration::from_millis(150),
            r.get_secret(&RemoteRef::default()),
        )
        .await;
        assert!(late.is_err());
        assert_eq!(r.breaker.state(), CircuitState::Open);
        assert_eq!(
            r.get_secret(&RemoteRef::default()).await,
            Err(ProviderError::Unavailable(CIRCUIT_OPEN.into()))
        );
    }

    /// Lists slowly (many backend calls, each answering) but never hangs.
    struct SlowFind(Duration);

    #[async_trait::async_trait]
    impl SecretProvider for SlowFind {
        fn kind(&self) -> &'static str {
            "resilient_slow_find"
        }
        async fn get_secret(&self, _: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
            std::future::pending().await
        }
        async fn get_secret_map(
            &self,
            _: &RemoteRef,
        ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
            std::future::pending().await
        }
        async fn find_allowed(
            &self,
            _: &FindRequest,
            _: &KeyFilter<'_>,
        ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
            tokio::time::sleep(self.0).await;
            Ok(BTreeMap::new())
        }
    }

    /// A find makes many backend calls (list pages, then read keys): dropped at the
    /// request deadline, it was slow, not failing, and must not open the circuit for
    /// every tenant. Only a single read dropped after the backend timeout is a failure.
    #[tokio::test]
    async fn a_find_dropped_after_the_backend_timeout_is_not_a_failure() {
        let window = Duration::from_millis(100);
        let settings = ResilienceSettings {
            retry_window: window,
            failure_threshold: 1,
            ..settings()
        };
        let r = Resilient::new("slow-find-test", Arc::new(SlowFind(window * 2)), settings);
        let find = FindRequest::default();
        let dropped = tokio::time::timeout(window * 3 / 2, r.find_allowed(&find, &|_| true)).await;
        assert!(dropped.is_err());
        assert_eq!(r.breaker.state(), CircuitState::Closed);
        let dropped = tokio::time::timeout(window * 3 / 2, r.find(&find)).await;
        assert!(dropped.is_err());
        assert_eq!(r.breaker.state(), CircuitState::Closed);
        // A single read given up on after the backend timeout still counts.
        let late = tokio::time::timeout(window * 3 / 2, r.get_secret(&RemoteRef::default())).await;
        assert!(late.is_err());
        assert_eq!(r.breaker.state(), CircuitState::Open);
    }

    /// Answers the scripted results in turn (then `Ok`), counting calls.
    struct Scripted {
        script: Mutex<VecDeque<ProviderError>>,
        calls: AtomicUsize,
    }

    impl Scripted {
        fn new(errors: Vec<ProviderError>) -> Arc<Self> {
            Arc::new(Scripted {
                script: Mutex::new(errors.into()),
                calls: AtomicUsize::new(0),
            })
        }
        fn next(&self) -> Result<Vec<u8>, ProviderError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.script.lock().unwrap().pop_front() {
                Some(e) => Err(e),
                None => Ok(b"v".to_vec()),
            }
        }
    }

    #[async_trait::async_trait]
    impl SecretProvider for Scripted {
        fn kind(&self) -> &'static str {
            "resilient_test"
        }
        async fn get_secret(&self, _: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
            self.next()
        }
        async fn get_secret_map(
            &self,
            _: &RemoteRef,
        ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
            self.next().map(|v| [("k".to_string(), v)].into())
        }
        async fn find_allowed(
            &self,
            _: &FindRequest,
            _: &KeyFilter<'_>,
        ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
            self.next().map(|_| BTreeMap::new())
        }
    }

    fn settings() -> ResilienceSettings {
        ResilienceSettings {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            cool_down: Duration::from_millis(200),
            ..ResilienceSettings::with_backend_timeout(Duration::from_secs(5))
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_definite_ones_are_not() {
        let inner = Scripted::new(vec![
            ProviderError::Unavailable("vault answered HTTP 503".into()),
            ProviderError::Timeout,
        ]);
        let r = Resilient::new("retry-test", inner.clone(), settings());
        assert_eq!(r.get_secret(&RemoteRef::default()).await.unwrap(), b"v");
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);

        // At most two retries.
        let inner = Scripted::new(vec![ProviderError::Timeout; 3]);
        let r = Resilient::new("retry-test", inner.clone(), settings());
        assert_eq!(
            r.get_secret(&RemoteRef::default()).await,
            Err(ProviderError::Timeout)
        );
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);

        for definite in [
            ProviderError::NotFound,
            ProviderError::Backend("permission denied".into()),
            ProviderError::InvalidRequest("bad".into()),
        ] {
            let inner = Scripted::new(vec![definite.clone()]);
            let r = Resilient::new("retry-test", inner.clone(), settings());
            assert_eq!(r.get_secret(&RemoteRef::default()).await, Err(definite));
            assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
        }

        // A find is not retried (its keys were decided already).
        let inner = Scripted::new(vec![ProviderError::Timeout]);
        let r = Resilient::new("retry-test", inner.clone(), settings());
        let allow = |_: &str| true;
        assert_eq!(
            r.find_allowed(&FindRequest::default(), &allow).await,
            Err(ProviderError::Timeout)
        );
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn no_retry_after_the_window() {
        let inner = Scripted::new(vec![ProviderError::Timeout; 3]);
        let r = Resilient::new(
            "retry-window",
            inner.clone(),
            ResilienceSettings {
                retry_window: Duration::ZERO,
                ..settings()
            },
        );
        assert_eq!(
            r.get_secret(&RemoteRef::default()).await,
            Err(ProviderError::Timeout)
        );
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_open_circuit_fails_fast_and_recovers() {
        // Five failing attempts (two calls: 3 + 2 with the retries) open the circuit.
        let inner = Scripted::new(vec![ProviderError::Unavailable("down".into()); 5]);
        let r = Resilient::new("circuit-test", inner.clone(), settings());
        let _ = r.get_secret(&RemoteRef::default()).await;
        let _ = r.get_secret(&RemoteRef::default()).await;
        assert_eq!(inner.calls.load(Ordering::SeqCst), 5);
        assert_eq!(r.breaker.state(), CircuitState::Open);
        // Refused at once, without reaching the backend, and not retried.
        let err = r.get_secret(&RemoteRef::default()).await.unwrap_err();
        assert_eq!(err, ProviderError::Unavailable(CIRCUIT_OPEN.into()));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 5);
        // After the cool-down a probe reaches the (recovered) backend and closes it.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(r.get_secret(&RemoteRef::default()).await.unwrap(), b"v");
        assert_eq!(r.breaker.state(), CircuitState::Closed);
    }
}
