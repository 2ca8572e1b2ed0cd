//! ESO's ExternalSecret metrics ([`crate::metrics::Metrics`]'s `es_*`), recorded by both
//! modes with ESO's names and labels (`name`, `namespace`; `condition`, `status`).

use std::time::Duration;

/// One sync attempted (`ready`: whether the ExternalSecret ended `Ready=True`; `errored`:
/// whether the sync itself failed), and how long the reconcile took.
pub fn record_sync(name: &str, namespace: &str, ready: bool, errored: bool, took: Duration) {
    let m = &crate::metrics::METRICS;
    let labels = [name, namespace];
    m.es_sync_calls_total.with_label_values(&labels).inc();
    if errored {
        m.es_sync_calls_error.with_label_values(&labels).inc();
    }
    for (status, value) in [("True", ready), ("False", !ready)] {
        m.es_status_condition
            .with_label_values(&[name, namespace, "Ready", status])
            .set(if value { 1.0 } else { 0.0 });
    }
    // ESO sets a Go `time.Duration` (nanoseconds) as the value.
    m.es_reconcile_duration
        .with_label_values(&labels)
        .set(took.as_nanos() as f64);
}
