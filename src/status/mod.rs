//! Kubernetes mode: the `Ready` condition of `Authorization`, federation
//! (`KubernetesFederation`, `OIDCFederation`, `OktaFederation`, `PingIdentityFederation`,
//! `SpiffeFederation`) and `ClusterSecretStore` objects, computed purely from a snapshot,
//! and written by the elected leader only ([`writer`], [`lease`]).
//!
//! The condition says whether the object's current spec is in force: `True` with reason
//! `Loaded` (or `LoadedWithWarnings`: a federation that accepts any audience), `False`
//! with reason `InvalidSpec` (it does not compile or build; the message names the field,
//! and says when the last good form still serves) or `MissingReference` (a Secret, a
//! federation, a store or a generator it names does not exist); a federation whose keys
//! (JWKS, or a SPIFFE bundle) cannot be fetched is `False` with reason `JWKSUnreachable` (a
//! failing refresh while cached keys still serve is a warning). `observedGeneration` is
//! the object's `metadata.generation` the condition was computed for. Messages are the
//! load errors' texts, which never hold values.

pub mod lease;
pub mod writer;

use std::collections::HashMap;

use kube::api::ApiResource;

use crate::authn::KeyHealth;
use crate::config::kubernetes::FEDERATION_KINDS;
use crate::config::snapshot::{MISSING_PREFIX, Snapshot};
use crate::source::ObjectKey;
use crate::source::kubernetes::{ConditionLayout, Observed, ObservedCondition};

/// Longest condition message written (characters); longer ones are cut.
pub const MAX_MESSAGE_CHARS: usize = 2048;

/// The (group, kind) pairs that get a `Ready` condition, besides every federation kind
/// ([`FEDERATION_KINDS`]) in `identity.federation.external-secrets.io`.
pub const STATUS_KINDS: &[(&str, &str)] = &[
    ("federation.external-secrets.io", "Authorization"),
    ("federation.external-secrets.io", "KubernetesFederation"),
    ("external-secrets.io", "ClusterSecretStore"),
];

/// A `Ready` condition as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyCondition {
    /// `True` or `False`.
    pub ready: bool,
    /// CamelCase reason (`Loaded`, `LoadedWithWarnings`, `InvalidSpec`, `MissingReference`).
    pub reason: &'static str,
    /// Human-readable detail, at most [`MAX_MESSAGE_CHARS`].
    pub message: String,
}

impl ReadyCondition {
    /// `"True"` or `"False"`.
    pub fn status(&self) -> &'static str {
        if self.ready { "True" } else { "False" }
    }
}

/// One object's status as it should be, and as the API server last showed it.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The object.
    pub key: ObjectKey,
    /// Its API resource (for the `/status` request).
    pub resource: ApiResource,
    /// `metadata.generation` the condition is for.
    pub generation: Option<i64>,
    /// The condition.
    pub condition: ReadyCondition,
    /// Our condition found on the object.
    pub observed: Option<ObservedCondition>,
    /// Where it is in the object's `status.conditions`.
    pub layout: ConditionLayout,
}

impl Desired {
    /// Whether the object's status differs from what it should be (the transition time
    /// aside).
    pub fn differs(&self) -> bool {
        match &self.observed {
            None => true,
            Some(o) => {
                o.status != self.condition.status()
                    || o.reason != self.condition.reason
                    || o.message != self.condition.message
                    || o.observed_generation != self.generation
            }
        }
    }
}

fn has_status(resource: &ApiResource) -> bool {
    (resource.group == "identity.federation.external-secrets.io"
        && FEDERATION_KINDS.contains(&resource.kind.as_str()))
        || STATUS_KINDS
            .iter()
            .any(|(g, k)| *g == resource.group && *k == resource.kind)
}

/// The conditions of every object in `objects` that gets one, from what `snapshot`
/// reported about it (errors, kept forms and warnings are matched by origin) and, for a
/// federation of any kind, whether its keys can be fetched (`keys`, by federation name:
/// names are unique across the federation kinds).
pub fn desired<'a>(
    snapshot: &Snapshot,
    objects: impl Iterator<Item = (&'a ObjectKey, &'a ApiResource, &'a Observed)>,
    keys: &HashMap<String, KeyHealth>,
) -> Vec<Desired> {
    let mut errors: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &snapshot.errors {
        errors.entry(&e.origin).or_default().push(&e.reason);
    }
    let mut warnings: HashMap<&str, Vec<&str>> = HashMap::new();
    for w in &snapshot.warnings {
        warnings.entry(&w.origin).or_default().push(&w.reason);
    }
    let mut out: Vec<Desired> = objects
        .filter(|(_, r, _)| has_status(r))
        .map(|(key, resource, observed)| {
            let origin = key.to_string();
            let mut condition = condition(
                errors
                    .get(origin.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or(&[]),
                warnings
                    .get(origin.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or(&[]),
            );
            if let ObjectKey::Resource { kind, name, .. } = key
                && FEDERATION_KINDS.contains(&kind.as_str())
            {
                condition = with_keys(condition, keys.get(name));
            }
            Desired {
                key: key.clone(),
                resource: resource.clone(),
                generation: observed.generation,
                condition,
                observed: observed.ready.clone(),
                layout: observed.layout,
            }
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// The condition of an object with these load errors and warnings.
pub fn condition(errors: &[&str], warnings: &[&str]) -> ReadyCondition {
    let missing = |r: &&str| {
        r.starts_with(MISSING_PREFIX)
            || r.starts_with("store is not ready")
            || r.contains(" not found")
    };
    if !errors.is_empty() {
        let reason = if errors.iter().all(missing) {
            "MissingReference"
        } else {
            "InvalidSpec"
        };
        return ReadyCondition {
            ready: false,
            reason,
            message: bounded(errors.join("; ")),
        };
    }
    if warnings.iter().any(missing) {
        return ReadyCondition {
            ready: false,
            reason: "MissingReference",
            message: bounded(warnings.join("; ")),
        };
    }
    if !warnings.is_empty() {
        return ReadyCondition {
            ready: true,
            reason: "LoadedWithWarnings",
            message: bounded(warnings.join("; ")),
        };
    }
    ReadyCondition {
        ready: true,
        reason: "Loaded",
        message: "in force".into(),
    }
}

/// A federation's condition with what its keys say: keys that cannot be fetched (and none
/// cached) make it not ready; a failing refresh while cached keys still serve is a warning.
pub fn with_keys(base: ReadyCondition, keys: Option<&KeyHealth>) -> ReadyCondition {
    if !base.ready {
        return base;
    }
    match keys {
        Some(KeyHealth::Unreachable {
            reason,
            serving: false,
        }) => ReadyCondition {
            ready: false,
            reason: "JWKSUnreachable",
            message: bounded(format!("the keys cannot be fetched: {reason}")),
        },
        Some(KeyHealth::Unreachable {
            reason,
            serving: true,
        }) => {
            let note =
                format!("the last key fetch failed (cached keys still verify tokens): {reason}");
            ReadyCondition {
                ready: true,
                reason: "LoadedWithWarnings",
                message: bounded(if base.reason == "Loaded" {
                    note
                } else {
                    format!("{}; {note}", base.message)
                }),
            }
        }
        _ => base,
    }
}

fn bounded(mut text: String) -> String {
    if text.chars().count() > MAX_MESSAGE_CHARS {
        text = text.chars().take(MAX_MESSAGE_CHARS - 1).collect();
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_name_why_an_object_is_not_in_force() {
        let ok = condition(&[], &[]);
        assert_eq!((ok.ready, ok.reason), (true, "Loaded"));
        let audience = condition(&[], &["no audiences: any aud is accepted"]);
        assert_eq!(
            (audience.ready, audience.reason),
            (true, "LoadedWithWarnings")
        );
        assert!(audience.message.contains("no audiences"));
        let missing = format!("{MISSING_PREFIX}ClusterSecretStore vault");
        let dangling = condition(&[], &[missing.as_str()]);
        assert_eq!(
            (dangling.ready, dangling.reason),
            (false, "MissingReference")
        );
        let secret = condition(&["store is not ready: secret eso/vault not found"], &[]);
        assert_eq!((secret.ready, secret.reason), (false, "MissingReference"));
        let invalid = condition(
            &[
                "invalid spec: unknown field `allowedStores`",
                "store is not ready: x",
            ],
            &[],
        );
        assert_eq!((invalid.ready, invalid.reason), (false, "InvalidSpec"));
        assert!(invalid.message.contains("allowedStores"));
        let long = "x".repeat(10 * MAX_MESSAGE_CHARS);
        assert_eq!(
            condition(&[long.as_str()], &[]).message.chars().count(),
            MAX_MESSAGE_CHARS
        );
    }

    #[test]
    fn a_federation_whose_keys_cannot_be_fetched_is_not_ready() {
        let down = KeyHealth::Unreachable {
            reason: "request failed: connection refused".into(),
            serving: false,
        };
        let c = with_keys(condition(&[], &[]), Some(&down));
        assert_eq!((c.ready, c.reason), (false, "JWKSUnreachable"));
        assert!(c.message.contains("connection refused"));
        let stale = KeyHealth::Unreachable {
            reason: "unexpected status 503".into(),
            serving: true,
        };
        let c = with_keys(
            condition(&[], &["no audiences: any aud is accepted"]),
            Some(&stale),
        );
        assert_eq!((c.ready, c.reason), (true, "LoadedWithWarnings"));
        assert!(
            c.message.contains("no audiences") && c.message.contains("503"),
            "{}",
            c.message
        );
        for fine in [KeyHealth::Static, KeyHealth::Fetched, KeyHealth::NotFetched] {
            assert_eq!(with_keys(condition(&[], &[]), Some(&fine)).reason, "Loaded");
        }
        // An invalid spec says so first.
        let c = with_keys(condition(&["invalid spec: x"], &[]), Some(&down));
        assert_eq!(c.reason, "InvalidSpec");
    }

    /// Issue 18: every federation kind of `identity.…` gets a condition, with its keys'
    /// health (before, only KubernetesFederations did: an OIDCFederation or a
    /// SpiffeFederation had none, whatever was wrong with it).
    #[test]
    fn every_federation_kind_gets_a_condition_with_its_keys_health() {
        const GROUP: &str = "identity.federation.external-secrets.io";
        let object = |kind: &str, plural: &str, name: &str| {
            (
                ObjectKey::Resource {
                    group: GROUP.into(),
                    kind: kind.into(),
                    namespace: None,
                    name: name.into(),
                },
                ApiResource {
                    group: GROUP.into(),
                    version: "v1alpha1".into(),
                    api_version: format!("{GROUP}/v1alpha1"),
                    kind: kind.into(),
                    plural: plural.into(),
                },
                Observed::default(),
            )
        };
        let objects = [
            object("OIDCFederation", "oidcfederations", "github"),
            object("OktaFederation", "oktafederations", "okta"),
            object("PingIdentityFederation", "pingidentityfederations", "ping"),
            object("SpiffeFederation", "spiffefederations", "spire"),
            object("SpiffeFederation", "spiffefederations", "bad"),
            // Not a kind of ours: no condition.
            object("VaultFederation", "vaultfederations", "v"),
        ];
        let mut snapshot = Snapshot::empty();
        snapshot.errors.push(crate::source::LoadError {
            origin: objects[4].0.to_string(),
            object: Some("SpiffeFederation/bad".into()),
            reason: "invalid spec: set bundle or bundleEndpoint".into(),
        });
        let keys = HashMap::from([
            (
                "github".to_string(),
                KeyHealth::Unreachable {
                    reason: "connection refused".into(),
                    serving: false,
                },
            ),
            ("spire".to_string(), KeyHealth::Static),
        ]);
        let out = desired(&snapshot, objects.iter().map(|(k, r, o)| (k, r, o)), &keys);
        let shown: Vec<(String, bool, &str)> = out
            .iter()
            .map(|d| (d.key.to_string(), d.condition.ready, d.condition.reason))
            .collect();
        let key = |i: usize| objects[i].0.to_string();
        assert_eq!(
            shown,
            [
                (key(0), false, "JWKSUnreachable"),
                (key(1), true, "Loaded"),
                (key(2), true, "Loaded"),
                (key(4), false, "InvalidSpec"),
                (key(3), true, "Loaded"),
            ]
        );
        assert!(out[3].condition.message.contains("bundleEndpoint"));
    }

    #[test]
    fn only_a_different_status_is_written() {
        let d = |observed: Option<ObservedCondition>| Desired {
            key: ObjectKey::Resource {
                group: "federation.external-secrets.io".into(),
                kind: "Authorization".into(),
                namespace: None,
                name: "a".into(),
            },
            resource: ApiResource {
                group: "federation.external-secrets.io".into(),
                version: "v1alpha1".into(),
                api_version: "federation.external-secrets.io/v1alpha1".into(),
                kind: "Authorization".into(),
                plural: "authorizations".into(),
            },
            generation: Some(2),
            condition: condition(&[], &[]),
            observed,
            layout: ConditionLayout::default(),
        };
        let same = ObservedCondition {
            status: "True".into(),
            reason: "Loaded".into(),
            message: "in force".into(),
            observed_generation: Some(2),
            last_transition_time: Some("2026-01-01T00:00:00Z".into()),
        };
        assert!(d(None).differs());
        assert!(!d(Some(same.clone())).differs(), "time aside, equal");
        let older = ObservedCondition {
            observed_generation: Some(1),
            ..same.clone()
        };
        assert!(d(Some(older)).differs(), "a new generation is acknowledged");
        let other = ObservedCondition {
            status: "False".into(),
            ..same
        };
        assert!(d(Some(other)).differs());
    }
}
