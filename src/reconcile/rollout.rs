//! Extension: roll the workloads that use a Secret when the reconciler changes its data.
//!
//! Opt-in per ExternalSecret with the annotation [`ROLLOUT_ANNOTATION`]` = "true"`. When a sync
//! changes the target Secret's data, every Deployment, StatefulSet and DaemonSet of the
//! ExternalSecret's namespace whose pod template reads that Secret (see [`secrets_used`]) gets
//! the Secret's new `resourceVersion` recorded in its pod template's [`VERSIONS_ANNOTATION`]; a
//! changed pod template is what makes Kubernetes roll the workload (its own rollout strategy
//! applies).
//!
//! Why a `resourceVersion` and not a hash of the data: the pod template is readable by many
//! more identities than the Secret (`get deployments` vs `get secrets`), and an unkeyed hash of
//! a low-entropy value (a PIN, a short password) gives the value away to an offline search. The
//! `resourceVersion` says only that the Secret changed. The controller decides *whether* the
//! data changed by comparing what it writes with what the Secret held.
//! This is the ESO feature users ask for most (external-secrets#1324, "reloader"-style).
//!
//! Everything here is pure: the controller lists the workloads, calls [`rollout_patch`] and
//! sends the merge patch it returns.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};

/// Annotation on an ExternalSecret: `"true"` rolls the workloads that use its Secret when the
/// Secret's data changes. Any other value (or none) leaves workloads alone.
pub const ROLLOUT_ANNOTATION: &str = "esi.external-secrets.io/rollout";

/// Pod-template annotation holding `name=resourceVersion` of each reconciled Secret the
/// template reads, comma-separated and sorted by Secret name (e.g. `db=48213,tls=48190`).
pub const VERSIONS_ANNOTATION: &str = "esi.external-secrets.io/secret-versions";

/// Bound on the entries kept in [`VERSIONS_ANNOTATION`] (annotations share a 256 KiB budget).
pub const MAX_VERSION_ENTRIES: usize = 64;

/// Whether an ExternalSecret's annotations ask for rollouts.
pub fn rollout_requested(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(ROLLOUT_ANNOTATION)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The names of the Secrets a pod template reads: `env[].valueFrom.secretKeyRef`,
/// `envFrom[].secretRef` of every container and init container, and `secret` and
/// `projected.sources[].secret` volumes. Image pull secrets are not counted (a new pull
/// secret needs no restart).
pub fn secrets_used(template: &PodTemplateSpec) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let Some(spec) = &template.spec else {
        return used;
    };
    let containers: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    for c in containers {
        for env in c.env.iter().flatten() {
            if let Some(r) = env
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
            {
                used.insert(r.name.clone());
            }
        }
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.secret_ref {
                used.insert(r.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.as_ref()) {
            used.insert(name.clone());
        }
        if let Some(p) = &v.projected {
            for source in p.sources.iter().flatten() {
                if let Some(s) = &source.secret {
                    used.insert(s.name.clone());
                }
            }
        }
    }
    used.retain(|n| !n.is_empty());
    used
}

/// Parses [`VERSIONS_ANNOTATION`]; malformed entries are dropped.
fn parse_versions(value: &str) -> BTreeMap<String, String> {
    value
        .split(',')
        .filter_map(|entry| {
            let (name, version) = entry.trim().split_once('=')?;
            let ok = |s: &str| !s.is_empty() && !s.contains(['=', ',']);
            (ok(name) && ok(version)).then(|| (name.to_string(), version.to_string()))
        })
        .collect()
}

/// The JSON merge patch (RFC 7386) for a Deployment, StatefulSet or DaemonSet whose pod
/// template is `template`, recording `version` (the Secret's `resourceVersion` after the
/// write that changed its data) for Secret `secret`; `None` when the template does not read
/// that Secret or already records this version (nothing to roll). Other Secrets' entries are
/// kept (at most [`MAX_VERSION_ENTRIES`], the ones the template still reads).
pub fn rollout_patch(
    template: &PodTemplateSpec,
    secret: &str,
    version: &str,
) -> Option<serde_json::Value> {
    let used = secrets_used(template);
    if !used.contains(secret) {
        return None;
    }
    let current = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(VERSIONS_ANNOTATION))
        .map(|v| parse_versions(v))
        .unwrap_or_default();
    if current.get(secret).map(String::as_str) == Some(version) {
        return None;
    }
    let mut next: BTreeMap<String, String> = current
        .into_iter()
        .filter(|(name, _)| used.contains(name))
        .collect();
    next.insert(secret.to_string(), version.to_string());
    while next.len() > MAX_VERSION_ENTRIES {
        // Keep the Secret being recorded; drop others from the end.
        let drop = next.keys().rev().find(|k| *k != secret).cloned()?;
        next.remove(&drop);
    }
    let value = next
        .iter()
        .map(|(n, h)| format!("{n}={h}"))
        .collect::<Vec<_>>()
        .join(",");
    Some(serde_json::json!({
        "spec": { "template": { "metadata": { "annotations": { VERSIONS_ANNOTATION: value } } } }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(spec: serde_json::Value, annotations: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": { "annotations": annotations },
            "spec": spec,
        }))
        .unwrap()
    }

    fn app_using_everything() -> PodTemplateSpec {
        template(
            json!({
                "initContainers": [{ "name": "init", "envFrom": [{ "secretRef": { "name": "init-env" } }] }],
                "containers": [{
                    "name": "app",
                    "env": [
                        { "name": "A", "valueFrom": { "secretKeyRef": { "name": "db", "key": "password" } } },
                        { "name": "B", "value": "literal" },
                        { "name": "C", "valueFrom": { "configMapKeyRef": { "name": "not-a-secret", "key": "k" } } }
                    ],
                    "envFrom": [{ "secretRef": { "name": "api" } }, { "configMapRef": { "name": "cm" } }]
                }],
                "imagePullSecrets": [{ "name": "pull" }],
                "volumes": [
                    { "name": "tls", "secret": { "secretName": "tls" } },
                    { "name": "p", "projected": { "sources": [{ "secret": { "name": "projected" } }, { "configMap": { "name": "cm2" } }] } },
                    { "name": "e", "emptyDir": {} }
                ]
            }),
            json!({}),
        )
    }

    #[test]
    fn every_way_a_pod_reads_a_secret_counts_and_nothing_else() {
        let used: Vec<String> = secrets_used(&app_using_everything()).into_iter().collect();
        assert_eq!(used, ["api", "db", "init-env", "projected", "tls"]);
        assert!(secrets_used(&PodTemplateSpec::default()).is_empty());
    }

    #[test]
    fn a_new_version_patches_the_pod_template_once() {
        let t = app_using_everything();
        let patch = rollout_patch(&t, "db", "aaaa").unwrap();
        assert_eq!(
            patch,
            json!({"spec": {"template": {"metadata": {"annotations": {VERSIONS_ANNOTATION: "db=aaaa"}}}}})
        );
        // Applied, the same version patches nothing (no second rollout); a new one patches again
        // and keeps the other Secrets' entries.
        let t = template(
            serde_json::to_value(t.spec.clone()).unwrap(),
            json!({ VERSIONS_ANNOTATION: "db=aaaa,tls=bbbb,gone=cccc,broken" }),
        );
        assert_eq!(rollout_patch(&t, "db", "aaaa"), None);
        let patch = rollout_patch(&t, "db", "dddd").unwrap();
        assert_eq!(
            patch["spec"]["template"]["metadata"]["annotations"][VERSIONS_ANNOTATION],
            "db=dddd,tls=bbbb",
            "entries of Secrets the template no longer reads, and malformed ones, are dropped"
        );
        // A workload that does not read the Secret is left alone.
        assert_eq!(rollout_patch(&t, "pull", "x"), None);
        assert_eq!(rollout_patch(&t, "other", "x"), None);
    }

    #[test]
    fn only_true_opts_in() {
        let ann = |v: &str| [(ROLLOUT_ANNOTATION.to_string(), v.to_string())].into();
        assert!(rollout_requested(&ann("true")));
        assert!(rollout_requested(&ann(" True ")));
        for v in ["false", "", "yes", "1"] {
            assert!(!rollout_requested(&ann(v)), "{v}");
        }
        assert!(!rollout_requested(&BTreeMap::new()));
    }

    #[test]
    fn the_annotation_stays_bounded() {
        let names: Vec<String> = (0..100).map(|i| format!("s{i:03}")).collect();
        let spec = json!({
            "containers": [{
                "name": "app",
                "envFrom": names.iter().map(|n| json!({"secretRef": {"name": n}})).collect::<Vec<_>>()
            }]
        });
        let existing = names
            .iter()
            .map(|n| format!("{n}=h"))
            .collect::<Vec<_>>()
            .join(",");
        let t = template(spec, json!({ VERSIONS_ANNOTATION: existing }));
        let patch = rollout_patch(&t, "s099", "new").unwrap();
        let value = patch["spec"]["template"]["metadata"]["annotations"][VERSIONS_ANNOTATION]
            .as_str()
            .unwrap();
        let entries = parse_versions(value);
        assert_eq!(entries.len(), MAX_VERSION_ENTRIES);
        assert_eq!(entries["s099"], "new");
    }
}
