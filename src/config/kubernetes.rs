//! Kubernetes mode's reloader: the watchers' events go into the one snapshot builder, and
//! the snapshot is published once every watched kind and every referenced Secret has been
//! listed (until then `/readyz` says not ready and every request is denied).
//!
//! After that, changes are gathered for [`KubeReloadSettings::debounce`] and built off the
//! async threads into the next snapshot; requests keep reading the current one meanwhile.
//! A watch that fails keeps what it listed last (see [`crate::source::kubernetes`]). Each
//! published snapshot also yields the `Ready` conditions the leader writes
//! ([`crate::status`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::snapshot::SnapshotBuilder;
use super::watch::{Publisher, report};
use crate::providers::ProviderSettings;
use crate::source::dir::DirectoryScanner;
use crate::source::kubernetes::{KubeSource, discover_kinds};
use crate::source::{LoadError, SourceEvent};
use crate::status::Desired;

/// The federation kinds served in Kubernetes mode, all in `identity.federation.…`
/// (`crate::resources::crd`): each a trust anchor, their names unique across kinds.
pub const FEDERATION_KINDS: &[&str] = &[
    "KubernetesFederation",
    "OIDCFederation",
    "OktaFederation",
    "PingIdentityFederation",
    "SpiffeFederation",
];

/// Whether objects of `kind` in API `group` are served (and so watched): Authorizations,
/// every [`FEDERATION_KINDS`] kind, ClusterSecretStores and every generator kind. A
/// federation only in its CRD's group (`identity.…`): ESE's samples write
/// KubernetesFederation in `federation.…`, which directory mode accepts, but in a cluster a
/// second group would let whoever may write there shadow a trust anchor of the same name.
pub fn served_kind(group: &str, kind: &str) -> bool {
    match group {
        "federation.external-secrets.io" => kind == "Authorization",
        "identity.federation.external-secrets.io" => FEDERATION_KINDS.contains(&kind),
        "external-secrets.io" => kind == "ClusterSecretStore",
        "generators.external-secrets.io" => crate::generators::is_generator_kind(kind),
        _ => false,
    }
}

/// How the Kubernetes reloader paces itself.
#[derive(Debug, Clone)]
pub struct KubeReloadSettings {
    /// Settings handed to every provider.
    pub provider_settings: ProviderSettings,
    /// Changes arriving within this long of each other are built into one snapshot.
    pub debounce: Duration,
    /// How often the API groups are discovered again (a CRD installed later).
    pub rediscover: Duration,
    /// A directory of hand-written `.cedar` policy files, loaded beside the Authorizations.
    pub policies: Option<PathBuf>,
    /// How often that directory is checked for changes.
    pub policy_interval: Duration,
    /// How often federations without fresh keys are fetched, for their status.
    pub key_probe_interval: Duration,
}

/// The builder, fed by the watches and the policy directory. Each source's `Problems`
/// replace only that source's part of what the builder is told.
struct Feed {
    builder: Arc<Mutex<SnapshotBuilder>>,
    kube_problems: Vec<LoadError>,
    dir_problems: (Vec<LoadError>, Vec<String>),
}

impl Feed {
    fn kube(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Problems { errors, .. } => {
                self.kube_problems = errors;
                self.problems();
            }
            other => lock(&self.builder).apply(other),
        }
    }

    fn dir(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Problems { errors, stale } => {
                self.dir_problems = (errors, stale);
                self.problems();
            }
            other => lock(&self.builder).apply(other),
        }
    }

    fn problems(&self) {
        let mut errors = self.kube_problems.clone();
        errors.extend(self.dir_problems.0.iter().cloned());
        lock(&self.builder).apply(SourceEvent::Problems {
            errors,
            stale: self.dir_problems.1.clone(),
        });
    }

    fn referenced_secrets(&self) -> Vec<crate::source::NamedObject> {
        lock(&self.builder).referenced_secrets()
    }
}

/// Runs until the task is dropped. `status` receives the conditions after every publish.
pub async fn run(
    mut source: KubeSource,
    publisher: Publisher,
    settings: KubeReloadSettings,
    status: watch::Sender<Arc<Vec<Desired>>>,
) {
    let mut feed = Feed {
        builder: Arc::new(Mutex::new(SnapshotBuilder::new(
            settings.provider_settings.clone(),
        ))),
        kube_problems: Vec::new(),
        dir_problems: (Vec::new(), Vec::new()),
    };
    // The policy files first: their full list (`Init`…`InitDone`) precedes every object.
    let mut policies = settings
        .policies
        .clone()
        .map(DirectoryScanner::policies_only);
    if let Some(scanner) = &mut policies {
        scanner.scan(&mut |e| feed.dir(e));
    }

    // Discovery, retried until the API answers.
    let mut delay = Duration::from_millis(500);
    loop {
        match source.discover().await {
            Ok(kinds) => {
                tracing::info!(kinds, "Kubernetes API discovered");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "Kubernetes API not reachable");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }

    // The first full list of everything, then the first snapshot.
    let mut secrets: Vec<crate::source::NamedObject> = Vec::new();
    loop {
        // Checked before waiting: with no kind to watch (none installed) nothing would come.
        if source.kinds_synced() {
            let wanted = feed.referenced_secrets();
            if wanted != secrets {
                source.watch_named(&wanted, &mut |e| feed.kube(e));
                secrets = wanted;
            }
            if source.synced() {
                break;
            }
        }
        source.next(&mut |e| feed.kube(e)).await;
        while source.try_next(&mut |e| feed.kube(e)).is_some() {}
    }
    publish(&feed.builder, &publisher, &source, &status).await;
    tracing::info!("Kubernetes resources synced; ready");

    // Federations' keys are fetched in the background (never holding up the events), so
    // that their status says whether they can be before a workload finds out.
    let probed = Arc::new(tokio::sync::Notify::new());
    {
        let authenticator = publisher.authenticator().clone();
        let probed = probed.clone();
        let every = settings.key_probe_interval;
        tokio::spawn(async move {
            loop {
                authenticator.probe_keys().await;
                probed.notify_one();
                tokio::time::sleep(every).await;
            }
        });
    }

    // Rediscovery (a CRD installed later) runs apart: a discovery the API never answers
    // must not hold up the events.
    let (found_tx, mut found_rx) = tokio::sync::mpsc::channel::<Vec<kube::api::ApiResource>>(1);
    {
        let client = source.client().clone();
        let filter = source.filter();
        let every = settings.rediscover;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match discover_kinds(client.clone(), filter.clone()).await {
                    Ok(found) => {
                        if found_tx.send(found).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "rediscovery failed"),
                }
            }
        });
    }
    let mut policy_tick =
        tokio::time::interval(settings.policy_interval.max(Duration::from_millis(100)));
    policy_tick.tick().await;
    loop {
        let mut changed = false;
        tokio::select! {
            Some(found) = found_rx.recv() => {
                source.watch_kinds(found);
                continue;
            }
            _ = policy_tick.tick(), if policies.is_some() => {
                if let Some(scanner) = &mut policies {
                    changed |= scanner.scan(&mut |e| feed.dir(e)).changed;
                }
                if !changed {
                    continue;
                }
            }
            () = probed.notified() => {
                send_status(&publisher, &source, &status);
                continue;
            }
            c = async { source.next(&mut |e| feed.kube(e)).await } => changed |= c,
        }
        // Gather what arrives close behind.
        tokio::time::sleep(settings.debounce).await;
        while let Some(c) = source.try_next(&mut |e| feed.kube(e)) {
            changed |= c;
        }
        let wanted = feed.referenced_secrets();
        if wanted != secrets {
            source.watch_named(&wanted, &mut |e| feed.kube(e));
            secrets = wanted;
            changed = true;
        }
        if changed {
            publish(&feed.builder, &publisher, &source, &status).await;
        } else {
            // Only statuses moved (ours coming back, or someone else's): compare again.
            send_status(&publisher, &source, &status);
        }
    }
}

/// The conditions of the current snapshot, with the federations' key health.
fn send_status(
    publisher: &Publisher,
    source: &KubeSource,
    status: &watch::Sender<Arc<Vec<Desired>>>,
) {
    let snapshot = publisher.current().load_full();
    let keys: HashMap<_, _> = publisher.authenticator().key_health().into_iter().collect();
    status.send_replace(Arc::new(crate::status::desired(
        &snapshot,
        source.observed(),
        &keys,
    )));
}

fn lock(b: &Mutex<SnapshotBuilder>) -> std::sync::MutexGuard<'_, SnapshotBuilder> {
    // A panicked build leaves the builder whole (events are applied one by one).
    b.lock().unwrap_or_else(|p| p.into_inner())
}

async fn publish(
    builder: &Arc<Mutex<SnapshotBuilder>>,
    publisher: &Publisher,
    source: &KubeSource,
    status: &watch::Sender<Arc<Vec<Desired>>>,
) {
    let previous = publisher.current().load_full();
    let b = builder.clone();
    let built = tokio::task::spawn_blocking(move || {
        let previous = (previous.generation > 0).then_some(&*previous);
        lock(&b).build(previous)
    })
    .await;
    match built {
        Ok(snapshot) => {
            report(&snapshot);
            publisher.publish(snapshot);
            send_status(publisher, source, status);
        }
        Err(_) => {
            tracing::error!("configuration build failed; keeping the current snapshot");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::served_kind;

    #[test]
    fn served_kinds_are_ours_and_esos_in_their_crd_groups_only() {
        assert!(served_kind(
            "federation.external-secrets.io",
            "Authorization"
        ));
        assert!(served_kind(
            "identity.federation.external-secrets.io",
            "KubernetesFederation"
        ));
        // Issue 18: the other federation kinds are served like KubernetesFederation.
        for kind in [
            "OIDCFederation",
            "OktaFederation",
            "PingIdentityFederation",
            "SpiffeFederation",
        ] {
            assert!(
                served_kind("identity.federation.external-secrets.io", kind),
                "{kind}"
            );
            // Only in their CRDs' group: not a second source of trust anchors.
            assert!(
                !served_kind("federation.external-secrets.io", kind),
                "{kind}"
            );
        }
        assert!(!served_kind(
            "identity.federation.external-secrets.io",
            "OidcFederation"
        ));
        // ESE's samples' group for federations: not a second source of trust anchors.
        assert!(!served_kind(
            "federation.external-secrets.io",
            "KubernetesFederation"
        ));
        assert!(served_kind("external-secrets.io", "ClusterSecretStore"));
        assert!(!served_kind("external-secrets.io", "SecretStore"));
        assert!(served_kind("generators.external-secrets.io", "Password"));
        assert!(served_kind(
            "generators.external-secrets.io",
            "ClusterGenerator"
        ));
        assert!(!served_kind(
            "generators.external-secrets.io",
            "GeneratorState"
        ));
        assert!(
            !served_kind("", "Secret"),
            "Secrets are watched one by one, by reference"
        );
    }
}
