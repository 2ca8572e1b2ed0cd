//! Prometheus metrics: one registry for the process, exposed at `/metrics`.
//!
//! Label values are always bounded sets (route templates, outcomes, provider kinds,
//! federation names from config) — never request data, so cardinality stays bounded.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// All metrics of the server.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route template and status code.
    pub http_requests: IntCounterVec,
    /// HTTP request latency by route template.
    pub http_latency: HistogramVec,
    /// Authorization decisions by action and outcome (`allow`/`deny`).
    pub decisions: IntCounterVec,
    /// Authentication outcomes (`ok`, `cached`, or the error kind).
    pub authentications: IntCounterVec,
    /// JWKS fetches by federation and outcome (`ok`/`error`).
    pub jwks_fetches: IntCounterVec,
    /// Backend calls by provider/generator kind and outcome.
    pub backend_calls: IntCounterVec,
    /// Backend call latency by provider/generator kind.
    pub backend_latency: HistogramVec,
    /// Snapshot reloads by outcome (`ok`, `partial`, `error`).
    pub reloads: IntCounterVec,
    /// Objects rejected at load, by kind.
    pub load_errors: IntCounterVec,
    /// Kubernetes watch failures (each retried with backoff), by kind.
    pub kubernetes_watch_errors: IntCounterVec,
    /// Status writes to the Kubernetes API by outcome (`ok`, `error`, `not_leader`).
    pub status_writes: IntCounterVec,
    /// Number of policies in force.
    pub policies: IntGauge,
    /// Generated credentials handed out (or refused), by generator kind and outcome
    /// (`ok`, `not_recorded`).
    pub credentials_issued: IntCounterVec,
    /// Credential revocations by generator kind and outcome (`ok`, `error`, `lapsed`).
    pub credentials_revoked: IntCounterVec,
    /// Credential renewals by generator kind and outcome (`ok`, `not_renewable`, `error`).
    pub credentials_renewed: IntCounterVec,
    /// Audit log writes and reopenings by outcome (`write_error`, `reopened`, `reopen_error`).
    pub audit_events: IntCounterVec,
    /// 1 while the last audit line was written, 0 while lines cannot be written.
    pub audit_log_ok: IntGauge,
    /// Operational log lines dropped because the log writer's queue was full
    /// ([`crate::logging::non_blocking_stderr`]); brought up to date at each render.
    pub log_lines_dropped: prometheus::IntCounter,
    /// Connections ended early by the listener, by reason (`refused_per_source`,
    /// `refused_total`, `handshake_timeout`, `handshake_error`, `idle_closed`).
    pub connections: IntCounterVec,
    /// Connections open now.
    pub open_connections: IntGauge,
    /// ESO's `externalsecret_sync_calls_total{name,namespace}`: syncs attempted by the
    /// reconciler.
    pub es_sync_calls_total: IntCounterVec,
    /// ESO's `externalsecret_sync_calls_error{name,namespace}`: syncs that failed.
    pub es_sync_calls_error: IntCounterVec,
    /// ESO's `externalsecret_status_condition{name,namespace,condition,status}`: 1 for the
    /// ExternalSecret's current `Ready` status, 0 for the other.
    pub es_status_condition: GaugeVec,
    /// ESO's `externalsecret_reconcile_duration{name,namespace}`: the last reconcile's
    /// duration in nanoseconds (ESO sets a Go `time.Duration` as the value).
    pub es_reconcile_duration: GaugeVec,
    /// ESO's `externalsecret_provider_api_calls_count{provider,call,status}`: backend calls
    /// by provider or generator kind, call (ESO's interface method: `GetSecret`,
    /// `GetSecretMap`, `GetAllSecrets`, `Generate`, `Cleanup`, `Renew`) and `status`
    /// (`success` / `error`), in every mode.
    pub es_provider_api_calls: IntCounterVec,
    /// Store cache lookups by store and outcome (`hit`, `miss`: this request called the
    /// backend, `coalesced`: it waited for another request's identical call).
    pub store_cache_requests: IntCounterVec,
    /// Store cache entries evicted, by store and cause (`expired`, `size`).
    pub store_cache_evictions: IntCounterVec,
    /// Retries of failed backend calls (throttling, 5xx, unreachable, timeout), by store.
    pub store_retries: IntCounterVec,
    /// Calls refused without a backend call because the store's circuit is open, by store.
    pub store_circuit_rejections: IntCounterVec,
    /// Each store's circuit: 0 closed (healthy), 1 open (failing fast), 2 half-open (probing).
    pub store_circuit_state: IntGaugeVec,
    /// Answers served from a store's cache past its ttl because the backend was down
    /// (`staleIfError`), by store.
    pub store_cache_stale_served: IntCounterVec,
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("invalid metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("duplicate metric {name}: {e}"));
    g
}

fn int_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("invalid metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("duplicate metric {name}: {e}"));
    g
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("invalid metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("duplicate metric {name}: {e}"));
    g
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        // INVARIANT: names and labels are static literals, valid by construction.
        .unwrap_or_else(|e| panic!("invalid metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("duplicate metric {name}: {e}"));
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("invalid metric {name}: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("duplicate metric {name}: {e}"));
    h
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let policies = gauge(&registry, "esi_policies", "Cedar policies in force");
        let audit_log_ok = gauge(
            &registry,
            "esi_audit_log_ok",
            "1 while audit lines are written, 0 while they cannot be",
        );
        audit_log_ok.set(1);
        let log_lines_dropped = prometheus::IntCounter::new(
            "esi_log_lines_dropped_total",
            "Operational log lines dropped because the log writer's queue was full",
        )
        .unwrap_or_else(|e| panic!("invalid metric esi_log_lines_dropped_total: {e}"));
        registry
            .register(Box::new(log_lines_dropped.clone()))
            .unwrap_or_else(|e| panic!("duplicate metric esi_log_lines_dropped_total: {e}"));
        Metrics {
            log_lines_dropped,
            http_requests: counter(
                &registry,
                "esi_http_requests_total",
                "HTTP requests by route and status",
                &["route", "status"],
            ),
            http_latency: histogram(
                &registry,
                "esi_http_request_duration_seconds",
                "HTTP request latency",
                &["route"],
            ),
            decisions: counter(
                &registry,
                "esi_authz_decisions_total",
                "Authorization decisions",
                &["action", "decision"],
            ),
            authentications: counter(
                &registry,
                "esi_authn_total",
                "Authentications (bearer tokens, X.509-SVIDs) by outcome",
                &["outcome"],
            ),
            jwks_fetches: counter(
                &registry,
                "esi_jwks_fetches_total",
                "JWKS fetches by federation and outcome",
                &["federation", "outcome"],
            ),
            backend_calls: counter(
                &registry,
                "esi_backend_calls_total",
                "Backend calls by kind and outcome",
                &["kind", "outcome"],
            ),
            backend_latency: histogram(
                &registry,
                "esi_backend_call_duration_seconds",
                "Backend call latency",
                &["kind"],
            ),
            reloads: counter(
                &registry,
                "esi_config_reloads_total",
                "Configuration snapshot reloads by outcome",
                &["outcome"],
            ),
            load_errors: counter(
                &registry,
                "esi_config_object_errors_total",
                "Objects rejected at load by kind",
                &["kind"],
            ),
            kubernetes_watch_errors: counter(
                &registry,
                "esi_kubernetes_watch_errors_total",
                "Kubernetes watch failures (retried with backoff) by kind",
                &["kind"],
            ),
            status_writes: counter(
                &registry,
                "esi_kubernetes_status_writes_total",
                "Status writes to the Kubernetes API by outcome",
                &["outcome"],
            ),
            credentials_issued: counter(
                &registry,
                "esi_credentials_issued_total",
                "Generated credentials by generator kind and outcome",
                &["kind", "outcome"],
            ),
            credentials_revoked: counter(
                &registry,
                "esi_credentials_revoked_total",
                "Credential revocations by generator kind and outcome",
                &["kind", "outcome"],
            ),
            credentials_renewed: counter(
                &registry,
                "esi_credentials_renewed_total",
                "Credential renewals by generator kind and outcome",
                &["kind", "outcome"],
            ),
            audit_events: counter(
                &registry,
                "esi_audit_log_events_total",
                "Audit log write failures and reopenings by outcome",
                &["outcome"],
            ),
            audit_log_ok,
            connections: counter(
                &registry,
                "esi_connections_total",
                "Connections ended early by the listener, by reason",
                &["reason"],
            ),
            open_connections: gauge(&registry, "esi_open_connections", "Connections open now"),
            es_sync_calls_total: counter(
                &registry,
                "externalsecret_sync_calls_total",
                "Total number of the External Secret sync calls",
                &["name", "namespace"],
            ),
            es_sync_calls_error: counter(
                &registry,
                "externalsecret_sync_calls_error",
                "Total number of the External Secret sync errors",
                &["name", "namespace"],
            ),
            es_status_condition: gauge_vec(
                &registry,
                "externalsecret_status_condition",
                "The status condition of a specific External Secret",
                &["name", "namespace", "condition", "status"],
            ),
            es_reconcile_duration: gauge_vec(
                &registry,
                "externalsecret_reconcile_duration",
                "The duration time to reconcile the External Secret",
                &["name", "namespace"],
            ),
            es_provider_api_calls: counter(
                &registry,
                "externalsecret_provider_api_calls_count",
                "Number of API calls towards the secret provider",
                &["provider", "call", "status"],
            ),
            store_cache_requests: counter(
                &registry,
                "esi_store_cache_requests_total",
                "Store cache lookups by store and outcome (hit, miss, coalesced)",
                &["store", "outcome"],
            ),
            store_cache_evictions: counter(
                &registry,
                "esi_store_cache_evictions_total",
                "Store cache entries evicted by store and cause (expired, size)",
                &["store", "cause"],
            ),
            store_retries: counter(
                &registry,
                "esi_store_backend_retries_total",
                "Retries of failed backend calls by store",
                &["store"],
            ),
            store_circuit_rejections: counter(
                &registry,
                "esi_store_circuit_rejections_total",
                "Calls refused because the store's circuit is open, by store",
                &["store"],
            ),
            store_circuit_state: int_gauge_vec(
                &registry,
                "esi_store_circuit_state",
                "Store circuit state: 0 closed, 1 open, 2 half-open",
                &["store"],
            ),
            store_cache_stale_served: counter(
                &registry,
                "esi_store_cache_stale_served_total",
                "Answers served stale from a store's cache while its backend was down, by store",
                &["store"],
            ),
            policies,
            registry,
        }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let dropped = crate::logging::dropped_lines();
        let counted = self.log_lines_dropped.get();
        if dropped > counted {
            self.log_lines_dropped.inc_by(dropped - counted);
        }
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Outcomes of `esi_store_cache_requests_total` (its `outcome` label).
pub const STORE_CACHE_OUTCOMES: [&str; 3] = ["hit", "miss", "coalesced"];
/// Causes of `esi_store_cache_evictions_total` (its `cause` label).
pub const STORE_CACHE_EVICTION_CAUSES: [&str; 2] = ["expired", "size"];

/// How many live holders (a built store's breaker, its cache) each store label has.
static STORE_SERIES: LazyLock<Mutex<HashMap<String, usize>>> = LazyLock::new(Default::default);

/// A built store's hold on its per-store series (`esi_store_circuit_state{store}`, the
/// retry, rejection and cache series). A rebuilt store holds them before the old build
/// lets go, so they carry on; when the last holder of a label drops (the store left the
/// snapshot, or was renamed), its series are removed from `/metrics` instead of staying at
/// their last value.
pub struct StoreSeries {
    store: String,
}

impl StoreSeries {
    /// Takes a hold on the series of `store`.
    pub fn hold(store: &str) -> Self {
        let mut live = lock_series();
        *live.entry(store.to_string()).or_insert(0) += 1;
        StoreSeries {
            store: store.to_string(),
        }
    }
}

fn lock_series() -> std::sync::MutexGuard<'static, HashMap<String, usize>> {
    STORE_SERIES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for StoreSeries {
    fn drop(&mut self) {
        let mut live = lock_series();
        let Some(n) = live.get_mut(&self.store) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        live.remove(&self.store);
        // Under the lock: a new holder of the label cannot interleave. Absent series
        // answer an error, which is fine.
        let store = self.store.as_str();
        let m = &*METRICS;
        let _ = m.store_circuit_state.remove_label_values(&[store]);
        let _ = m.store_circuit_rejections.remove_label_values(&[store]);
        let _ = m.store_retries.remove_label_values(&[store]);
        let _ = m.store_cache_stale_served.remove_label_values(&[store]);
        for outcome in STORE_CACHE_OUTCOMES {
            let _ = m
                .store_cache_requests
                .remove_label_values(&[store, outcome]);
        }
        for cause in STORE_CACHE_EVICTION_CAUSES {
            let _ = m.store_cache_evictions.remove_label_values(&[store, cause]);
        }
    }
}

/// Runs one backend call of `kind` and records it: `esi_backend_calls_total{kind, outcome}`
/// (`outcome` names the result: `ok` or an error kind), ESO's
/// `externalsecret_provider_api_calls_count{provider, call, status}` (`provider`: `kind`
/// up to a `/`) and, with `timed`,
/// its latency in `esi_backend_call_duration_seconds{kind}`. The one metering path of
/// providers and generators alike.
pub async fn observe_backend_call<T, E>(
    kind: &str,
    call_name: &str,
    timed: bool,
    outcome: impl FnOnce(&Result<T, E>) -> &'static str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let start = std::time::Instant::now();
    let result = call.await;
    METRICS
        .backend_calls
        .with_label_values(&[kind, outcome(&result)])
        .inc();
    let status = if result.is_ok() { "success" } else { "error" };
    // `kind` may carry the operation (`VaultDynamicSecret/revoke`); ESO's label is the kind.
    let provider = kind.split('/').next().unwrap_or(kind);
    METRICS
        .es_provider_api_calls
        .with_label_values(&[provider, call_name, status])
        .inc();
    if timed {
        METRICS
            .backend_latency
            .with_label_values(&[kind])
            .observe(start.elapsed().as_secs_f64());
    }
    result
}

/// The one wrapper that meters a backend: providers (`SecretProvider for Metered<P>`) and
/// generators (`Generator for Metered<G>`) implement their trait for it next to the trait,
/// each call going through [`observe_backend_call`].
pub struct Metered<T> {
    inner: T,
}

impl<T> Metered<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Metered { inner }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

#[cfg(test)]
mod store_series_tests {
    use super::*;

    fn has_circuit_series(store: &str) -> bool {
        METRICS
            .render()
            .lines()
            .any(|l| l.starts_with(&format!("esi_store_circuit_state{{store=\"{store}\"}}")))
    }

    /// A store removed from the snapshot loses its series; a rebuilt one (the new build
    /// holds them before the old one drops) keeps them.
    #[test]
    fn series_of_a_store_go_with_its_last_holder() {
        let store = "series-test";
        let old = StoreSeries::hold(store);
        METRICS
            .store_circuit_state
            .with_label_values(&[store])
            .set(1);
        METRICS
            .store_cache_requests
            .with_label_values(&[store, "hit"])
            .inc();
        // Rebuilt: the new build holds the label, then the old one is dropped.
        let new = StoreSeries::hold(store);
        drop(old);
        assert!(has_circuit_series(store), "a rebuild keeps the series");
        // Removed from the snapshot: the last holder goes.
        drop(new);
        assert!(!has_circuit_series(store), "{}", METRICS.render());
        assert!(
            !METRICS.render().contains(&format!("store=\"{store}\"")),
            "no series of the store is left"
        );
    }
}
