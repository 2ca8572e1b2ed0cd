//! Directory mode's reloader: scans the source directories every interval and swaps in a
//! new snapshot when something changed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::snapshot::{DirectoryReloader, DirectorySource, Snapshot};
use crate::authn::Authenticator;
use crate::metrics::METRICS;

/// Where a new snapshot goes: the authenticator's federations (their key caches live
/// there) first, then the snapshot requests read. One place, so that no caller keeps a
/// second copy of the federations in step by hand.
#[derive(Clone)]
pub struct Publisher {
    current: Arc<ArcSwap<Snapshot>>,
    authenticator: Arc<Authenticator>,
}

impl Publisher {
    /// Publishes `initial` and returns the publisher of what follows.
    pub fn new(initial: Snapshot, authenticator: Arc<Authenticator>) -> Self {
        authenticator.set_federations(initial.federations.clone());
        Publisher {
            current: Arc::new(ArcSwap::from_pointee(initial)),
            authenticator,
        }
    }

    /// The authenticator the federations are handed to (its key caches, for status).
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.authenticator
    }

    /// The snapshot requests read (swapped atomically on publish).
    pub fn current(&self) -> Arc<ArcSwap<Snapshot>> {
        self.current.clone()
    }

    /// Makes `snapshot` the one in force.
    pub fn publish(&self, snapshot: Snapshot) {
        self.authenticator
            .set_federations(snapshot.federations.clone());
        self.current.store(Arc::new(snapshot));
    }
}

/// Loads `source` once, logging what was rejected; the reloader continues from there.
pub fn initial_load(source: &DirectorySource) -> (DirectoryReloader, Snapshot) {
    let mut reloader = DirectoryReloader::new(source);
    let snapshot = reloader.load(None);
    report(&snapshot);
    (reloader, snapshot)
}

/// Most warnings logged per load.
const MAX_WARNINGS_LOGGED: usize = 20;

/// Logs what a load rejected, kept and warned about, and counts the reload.
pub fn report(snapshot: &Snapshot) {
    for e in &snapshot.errors {
        tracing::error!(origin = %e.origin, object = e.object.as_deref().unwrap_or(""), reason = %e.reason, "rejected at load");
    }
    // At most a screenful: with many Authorizations one missing store names many.
    for w in snapshot.warnings.iter().take(MAX_WARNINGS_LOGGED) {
        tracing::warn!(origin = %w.origin, object = w.object.as_deref().unwrap_or(""), reason = %w.reason, "loaded with a warning");
    }
    if snapshot.warnings.len() > MAX_WARNINGS_LOGGED {
        tracing::warn!(
            more = snapshot.warnings.len() - MAX_WARNINGS_LOGGED,
            "more objects loaded with warnings"
        );
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

/// Scans with `reloader` every `interval`; when something changed, builds a snapshot (off
/// the async threads; requests keep reading the current one meanwhile) and publishes it.
/// Runs until the task is dropped.
pub async fn watch(reloader: DirectoryReloader, publisher: Publisher, interval: Duration) {
    let reloader = Arc::new(Mutex::new(reloader));
    loop {
        tokio::time::sleep(interval).await;
        let r = reloader.clone();
        let previous = publisher.current.load_full();
        let built = tokio::task::spawn_blocking(move || {
            // A panicked build leaves the scanner and builder whole (events are applied
            // one by one), so a poisoned lock is taken over.
            let mut r = r.lock().unwrap_or_else(|p| p.into_inner());
            r.reload(Some(&previous))
        })
        .await;
        match built {
            Ok(Some(snapshot)) => {
                report(&snapshot);
                publisher.publish(snapshot);
            }
            Ok(None) => {}
            Err(_) => {
                tracing::error!("configuration reload task failed; keeping the current snapshot");
            }
        }
    }
}
