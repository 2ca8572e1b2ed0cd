//! Polls the source directories and swaps in a new snapshot when they change.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::snapshot::{DirectorySource, Snapshot};
use crate::metrics::METRICS;

/// Loads `source` once, logging what was rejected.
pub fn initial_load(source: &DirectorySource) -> Snapshot {
    let snapshot = source.load(None);
    report(&snapshot);
    snapshot
}

fn report(snapshot: &Snapshot) {
    for e in &snapshot.errors {
        tracing::error!(origin = %e.origin, object = e.object.as_deref().unwrap_or(""), reason = %e.reason, "rejected at load");
    }
    for k in &snapshot.kept {
        tracing::error!(
            object = %k.object,
            origin = %k.origin,
            "did not load: this object keeps its last good form (the last good policy set is kept per object; everything else reloaded)"
        );
    }
    let outcome = if !snapshot.kept.is_empty() {
        "error"
    } else if snapshot.errors.is_empty() {
        "ok"
    } else {
        "partial"
    };
    METRICS.reloads.with_label_values(&[outcome]).inc();
    tracing::info!(
        generation = snapshot.generation,
        stores = snapshot.stores.len(),
        generators = snapshot.generators.len(),
        federations = snapshot.federations.len(),
        policies = snapshot.policies.policy_count(),
        errors = snapshot.errors.len(),
        "configuration loaded"
    );
}

/// Watches `source` every `interval`; on change, builds a snapshot, swaps it into
/// `current` and calls `on_swap` with it. Runs until the task is dropped.
pub async fn watch<F>(
    source: DirectorySource,
    current: Arc<ArcSwap<Snapshot>>,
    interval: Duration,
    on_swap: F,
) where
    F: Fn(&Snapshot) + Send + Sync + 'static,
{
    let source = Arc::new(source);
    let mut last = {
        let s = source.clone();
        tokio::task::spawn_blocking(move || s.fingerprint())
            .await
            .ok()
    };
    loop {
        tokio::time::sleep(interval).await;
        let s = source.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || s.fingerprint()).await else {
            continue;
        };
        if last == Some(now) {
            continue;
        }
        last = Some(now);
        let s = source.clone();
        let previous = current.load_full();
        let built = tokio::task::spawn_blocking(move || s.load(Some(&previous))).await;
        let Ok(snapshot) = built else {
            tracing::error!("configuration reload task failed; keeping the current snapshot");
            continue;
        };
        report(&snapshot);
        let snapshot = Arc::new(snapshot);
        current.store(snapshot.clone());
        on_swap(&snapshot);
    }
}
