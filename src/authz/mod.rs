//! Authorization: `Authorization` resources and hand-written `.cedar` files compiled into
//! Cedar policies, and one decision per request.
//!
//! * [`PolicyEngine::build`] compiles every [`AuthorizationSource`] (see [`compile`]) and
//!   every [`PolicyFile`], validates each against the schema in `schemas/esi.cedarschema`
//!   (strict mode) and keeps the good ones; each bad one is one [`PolicyLoadError`].
//! * [`PolicyEngine::decide`] answers one request. Nothing is allowed unless a policy
//!   permits it, a `forbid` always wins, and a `forbid` that fails to evaluate denies
//!   (Cedar itself would skip it, which would fail open).
//!
//! Cedar evaluates every policy of the set it is handed, so the engine shards the
//! compiled policies at build time (see [`engine`]) and a decision only evaluates the
//! shards that can apply to its caller; a test checks that this never changes a decision.

mod compile;
mod engine;
mod nesting;

use std::fmt;
use std::path::PathBuf;

use crate::resources::AuthorizationSpec;

pub(crate) use engine::line_column;
pub use engine::{
    CheckedAuthorization, ListedPolicy, PermitView, PolicyCache, PolicyEngine, PolicySource,
    RequestContext, in_file_order,
};
pub(crate) use nesting::{MAX_NESTING, check_nesting};

/// The Cedar schema every policy is validated against (human-readable form).
pub const SCHEMA_SRC: &str = include_str!("../../schemas/esi.cedarschema");

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read one key of a ClusterSecretStore ([`Resource::RemoteKey`]).
    Get,
    /// Find/list keys of a store ([`Resource::Store`]).
    Find,
    /// Call a generator ([`Resource::Generator`]).
    Generate,
    /// Revoke the credentials a generator issued to the caller ([`Resource::Generator`]).
    Revoke,
    /// Revoke credentials issued to others in a namespace ([`Resource::GeneratorStates`]).
    RevokeStates,
    /// Extend a credential a generator issued to the caller ([`Resource::Generator`];
    /// `POST /v1/credentials/{id}/renew`, issue 17).
    Renew,
}

impl Action {
    /// Every action, in a fixed order.
    pub const ALL: [Action; 6] = [
        Action::Get,
        Action::Find,
        Action::Generate,
        Action::Revoke,
        Action::RevokeStates,
        Action::Renew,
    ];

    /// The Cedar action id (`Esi::Action::"<id>"`), also the metrics/log label.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Get => "get",
            Action::Find => "find",
            Action::Generate => "generate",
            Action::Revoke => "revoke",
            Action::RevokeStates => "revokeStates",
            Action::Renew => "renew",
        }
    }

    /// Whether the schema allows this action on this kind of resource. A mismatched
    /// request is a caller bug and is denied without evaluation: e.g. `get` on a
    /// `Store` would otherwise match `resource in Store::"…"`.
    pub fn applies_to(self, resource: &Resource) -> bool {
        matches!(
            (self, resource),
            (Action::Get, Resource::RemoteKey { .. })
                | (Action::Find, Resource::Store { .. })
                | (
                    Action::Generate | Action::Revoke | Action::Renew,
                    Resource::Generator { .. }
                )
                | (Action::RevokeStates, Resource::GeneratorStates { .. })
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a caller wants to act on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// One key of a ClusterSecretStore (action [`Action::Get`]).
    RemoteKey {
        /// ClusterSecretStore name.
        store: String,
        /// Remote key.
        key: String,
    },
    /// A ClusterSecretStore as a whole (action [`Action::Find`]).
    Store {
        /// ClusterSecretStore name.
        store: String,
    },
    /// A generator (actions [`Action::Generate`], [`Action::Revoke`]). Build it with
    /// [`Resource::generator`]: cluster-scoped kinds have one namespace.
    Generator {
        /// Generator namespace ([`crate::generators::CLUSTER_SCOPE`] for cluster-scoped
        /// kinds).
        namespace: String,
        /// Generator kind (`Fake`, `Password`, …).
        kind: String,
        /// Generator name.
        name: String,
    },
    /// The generator states of a namespace (action [`Action::RevokeStates`]).
    GeneratorStates {
        /// Namespace.
        namespace: String,
    },
}

impl Resource {
    /// A generator resource in its canonical form: a cluster-scoped kind
    /// (`ClusterGenerator`) is decided under [`crate::generators::CLUSTER_SCOPE`],
    /// whatever namespace the caller wrote, so one object has one identity (issue 19).
    pub fn generator(namespace: &str, kind: &str, name: &str) -> Resource {
        Resource::Generator {
            namespace: crate::generators::canonical_namespace(namespace, kind).to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
        }
    }

    /// This resource in canonical form (see [`Resource::generator`]); the engine decides
    /// and logs only canonical resources.
    pub fn canonical(&self) -> std::borrow::Cow<'_, Resource> {
        match self {
            Resource::Generator {
                namespace,
                kind,
                name,
            } if crate::generators::canonical_namespace(namespace, kind) != namespace => {
                std::borrow::Cow::Owned(Resource::generator(namespace, kind, name))
            }
            other => std::borrow::Cow::Borrowed(other),
        }
    }
}

/// Longest field shown by `Resource`'s `Display`, so log lines stay bounded.
const DISPLAY_FIELD_MAX: usize = 200;

/// Writes `s` cut to [`DISPLAY_FIELD_MAX`] characters (on a char boundary).
fn write_bounded(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    match s.char_indices().nth(DISPLAY_FIELD_MAX) {
        Some((cut, _)) => write!(f, "{}…", &s[..cut]),
        None => f.write_str(s),
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::RemoteKey { store, key } => {
                f.write_str("key:")?;
                write_bounded(f, store)?;
                f.write_str("/")?;
                write_bounded(f, key)
            }
            Resource::Store { store } => {
                f.write_str("store:")?;
                write_bounded(f, store)
            }
            Resource::Generator {
                namespace,
                kind,
                name,
            } => {
                f.write_str("generator:")?;
                write_bounded(f, namespace)?;
                f.write_str("/")?;
                write_bounded(f, kind)?;
                f.write_str("/")?;
                write_bounded(f, name)
            }
            Resource::GeneratorStates { namespace } => {
                f.write_str("generator-states:")?;
                write_bounded(f, namespace)
            }
        }
    }
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Ids of the determining policies: the permits that allowed it, or the forbids that
    /// denied it (including forbids that failed to evaluate). Empty for a default deny.
    pub policy_ids: Vec<String>,
}

/// One `Authorization` resource, as the config loader found it.
#[derive(Debug, Clone)]
pub struct AuthorizationSource {
    /// Object name; policy ids are `authorization/<name>/…`.
    pub name: String,
    /// Where it came from (file path, or `kubernetes`), for messages.
    pub origin: String,
    /// The resource's spec.
    pub spec: AuthorizationSpec,
}

/// One hand-written `.cedar` file.
#[derive(Debug, Clone)]
pub struct PolicyFile {
    /// Its path (for messages, and its stem names policies without `@id`).
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

/// An Authorization or a policy file that did not compile; it is left out of the engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object} ({origin}): {reason}")]
pub struct PolicyLoadError {
    /// Where the object came from (file path, …).
    pub origin: String,
    /// `Authorization/<name>` or `policy file`.
    pub object: String,
    /// Why it was rejected.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_display_is_the_cedar_id() {
        let shown: Vec<String> = Action::ALL.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            shown,
            ["get", "find", "generate", "revoke", "revokeStates", "renew"].map(String::from)
        );
    }

    #[test]
    fn action_applies_only_to_its_resource_kind() {
        let key = Resource::RemoteKey {
            store: "s".into(),
            key: "k".into(),
        };
        let store = Resource::Store { store: "s".into() };
        assert!(Action::Get.applies_to(&key));
        assert!(!Action::Get.applies_to(&store));
        assert!(Action::Find.applies_to(&store));
        assert!(!Action::Find.applies_to(&key));
        let generator = Resource::Generator {
            namespace: "n".into(),
            kind: "Fake".into(),
            name: "g".into(),
        };
        assert!(Action::Generate.applies_to(&generator));
        assert!(Action::Revoke.applies_to(&generator));
        assert!(!Action::RevokeStates.applies_to(&generator));
        assert!(Action::RevokeStates.applies_to(&Resource::GeneratorStates {
            namespace: "n".into()
        }));
    }

    #[test]
    fn resource_display_is_short_and_bounded() {
        let key = Resource::RemoteKey {
            store: "vault".into(),
            key: "db/creds".into(),
        };
        assert_eq!(key.to_string(), "key:vault/db/creds");
        let long = Resource::Store {
            store: "é".repeat(1000),
        };
        let shown = long.to_string();
        assert!(shown.chars().count() <= "store:".len() + DISPLAY_FIELD_MAX + 1);
        assert!(shown.ends_with('…'));
    }

    /// Issue 19, finding 3: a ClusterGenerator has one identity, whatever namespace the
    /// request (or an Authorization) spells it under.
    #[test]
    fn cluster_generators_are_decided_under_one_identity() {
        use crate::authn::Identity;
        use crate::resources::{
            AllowedGenerator, AuthorizationSpec, AuthorizationSubject, FederationRef, OidcSubject,
        };
        let who = Identity::of_service_account("alpha", "https://issuer", "team", "app");
        let spelled = |ns: &str, kind: &str, name: &str| Resource::Generator {
            namespace: ns.into(),
            kind: kind.into(),
            name: name.into(),
        };
        let engine = |policy: &str, authorizations: &[AuthorizationSource]| {
            let files = [PolicyFile {
                path: "p.cedar".into(),
                text: policy.into(),
            }];
            let files = if policy.is_empty() {
                &files[..0]
            } else {
                &files[..]
            };
            let (engine, errors) = PolicyEngine::build(authorizations, files);
            assert!(errors.is_empty(), "{errors:?}");
            engine
        };
        // A permit scoped to the generators of namespace `team` grants no ClusterGenerator.
        let scoped = engine(
            r#"permit (principal, action, resource is Esi::Generator)
               when { resource.namespace == "team" };"#,
            &[],
        );
        for ns in ["team", "platform"] {
            let d = scoped.decide(
                &who,
                Action::Generate,
                &spelled(ns, "ClusterGenerator", "root"),
            );
            assert!(!d.allowed, "{ns}");
        }
        assert!(
            scoped
                .decide(&who, Action::Generate, &spelled("team", "Password", "pw"))
                .allowed
        );
        // A forbid on the canonical identity holds under every spelling.
        let forbidden = engine(
            r#"permit (principal, action, resource is Esi::Generator);
               forbid (principal, action, resource == Esi::Generator::"<cluster>/ClusterGenerator/root");"#,
            &[],
        );
        for ns in ["team", "platform", "kube-system"] {
            for action in [Action::Generate, Action::Revoke] {
                let r = spelled(ns, "ClusterGenerator", "root");
                assert!(!forbidden.decide(&who, action, &r).allowed, "{ns}");
            }
        }
        assert!(
            forbidden
                .decide(
                    &who,
                    Action::Generate,
                    &spelled("team", "ClusterGenerator", "other")
                )
                .allowed
        );
        // An Authorization naming a ClusterGenerator grants that one generator, under any
        // spelling; the entry's namespace does not scope it.
        let spec = AuthorizationSpec {
            federation_ref: FederationRef {
                kind: "KubernetesFederation".into(),
                name: "alpha".into(),
            },
            subject: Some(AuthorizationSubject {
                oidc: Some(OidcSubject {
                    issuer: "https://issuer".into(),
                    subject: "system:serviceaccount:team:app".into(),
                }),
                ..Default::default()
            }),
            allowed_generators: vec![AllowedGenerator {
                name: "cluster-pw".into(),
                kind: "ClusterGenerator".into(),
                namespace: "apps".into(),
                api_version: None,
            }],
            ..Default::default()
        };
        let granted = engine(
            "",
            &[AuthorizationSource {
                name: "a".into(),
                origin: "test".into(),
                spec,
            }],
        );
        for ns in ["apps", "team", "other"] {
            let d = granted.decide(
                &who,
                Action::Generate,
                &spelled(ns, "ClusterGenerator", "cluster-pw"),
            );
            assert!(d.allowed, "{ns}");
        }
        assert!(
            !granted
                .decide(
                    &who,
                    Action::Generate,
                    &spelled("apps", "ClusterGenerator", "x")
                )
                .allowed
        );
        // Resources built with the constructor are canonical already.
        assert_eq!(
            Resource::generator("team", "ClusterGenerator", "root").to_string(),
            "generator:<cluster>/ClusterGenerator/root"
        );
        assert_eq!(
            Resource::generator("team", "Password", "pw").to_string(),
            "generator:team/Password/pw"
        );
    }

    #[test]
    fn load_error_display_names_object_and_origin() {
        let e = PolicyLoadError {
            origin: "/etc/esi/a.yaml".into(),
            object: "Authorization/a".into(),
            reason: "spec.subject is missing".into(),
        };
        assert_eq!(
            e.to_string(),
            "Authorization/a (/etc/esi/a.yaml): spec.subject is missing"
        );
    }
}
