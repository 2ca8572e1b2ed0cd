//! The relevant requests: what `lint`, `diff` and `report` evaluate, in one place.
//!
//! From what one or two trees name ([`Names`]) and what they load:
//!
//! * **principals**: every ServiceAccount and OIDC subject an Authorization names exactly;
//!   one representative per subject glob (a ServiceAccount glob's
//!   [`super::names::representative`], `*` kept where a namespace or name is open; an OIDC
//!   subject glob is itself); the ServiceAccounts, OIDC subjects, namespaces and names
//!   hand-written policies mention; SPIFFE workloads as OIDC subjects; and, per federation,
//!   "any other": `FED/*/*` for a Kubernetes federation, `FED/*` for an OIDC one,
//!   `FED/spiffe://TD/*` for a SPIFFE one ([`super::names`]);
//! * **probes** (resources with their actions): per ClusterSecretStore loaded by either
//!   tree, `get` of every key and key pattern named for it (or for no store in
//!   particular), `get` of one other key that matches none of them, and `find`; per
//!   generator loaded by either tree, `generate`, `revoke`, `renew`; per namespace named
//!   by `allowedGeneratorStates` (or a policy), `revokeStates`.
//!
//! Each request is resolved per tree as the server would resolve it (the identity token
//! verification gives: [`Identity::of_service_account`], [`Identity::of_oidc_subject`]
//! (an OIDC subject without claims) or [`Identity::of_spiffe_workload`]; the federation's
//! configured issuer, else the one its Authorizations name; the store's canonical form of
//! the key, [`crate::api::key_target`]) and decided by that tree's engine
//! ([`crate::authz::PolicyEngine::decide`]). The effective answer also says whether the
//! server would get that far: a federation or store that is not loaded refuses the
//! request whatever the policies say, and so does a federation of the other kind (a
//! `KubernetesFederation`'s tokens are never OIDC subjects, an OIDC federation's never
//! ServiceAccounts), and so does an OIDC subject that could be read as a workload of a
//! trust domain a loaded `SpiffeFederation` serves (the authenticator's rule,
//! [`crate::authn::could_be_a_served_workload`]; a subject glob's representative when every
//! subject the glob matches is refused, [`crate::authn::could_only_be_served_workloads`]).
//!
//! Requests are principal × probe, in that order, and at most `max_requests` of them are
//! evaluated; [`Universe::truncated`] says when some were not.

use std::collections::BTreeSet;

use serde::Serialize;

use super::Tree;
use super::names::{Caller, Names, PrincipalName, glob_matches};
use crate::authn::{Identity, PrincipalKind};
use crate::authz::{Action, Resource};
use crate::providers::RemoteRef;
use crate::resources::GeneratorKey;

/// Default bound on the requests evaluated per tree.
pub const DEFAULT_MAX_REQUESTS: usize = 200_000;

/// Candidates for the key no named key or pattern covers (the first one that matches none
/// of a store's patterns is used).
const OTHER_KEYS: [&str; 3] = ["(other)", "~esi-other-key~", "\u{e000}"];

/// A resource, with the actions evaluated on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Probe {
    /// `get` of a key: a named key, a named pattern (its `*` kept), or the other key.
    Key {
        /// Store.
        store: String,
        /// The key probed.
        key: String,
        /// The key no named key or pattern covers.
        other: bool,
    },
    /// `find` on a store.
    Find {
        /// Store.
        store: String,
    },
    /// A generator.
    Generator(GeneratorId),
    /// Generator states of a namespace.
    States {
        /// Namespace.
        namespace: String,
    },
}

/// What a matrix column is: a store, a generator or a namespace's generator states.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Column {
    /// A ClusterSecretStore (its keys and `find`).
    Store {
        /// Name.
        store: String,
    },
    /// A generator.
    Generator(GeneratorId),
    /// `revokeStates` in a namespace.
    States {
        /// Namespace.
        namespace: String,
    },
}

/// A loaded generator, as the snapshot keys it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct GeneratorId {
    /// Namespace (empty: a cluster-scoped kind).
    pub namespace: String,
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
}

impl GeneratorId {
    /// `namespace/kind/name`, or `kind/name` for a cluster-scoped kind.
    pub fn label(&self) -> String {
        if self.namespace.is_empty() {
            format!("{}/{}", self.kind, self.name)
        } else {
            format!("{}/{}/{}", self.namespace, self.kind, self.name)
        }
    }

    fn of(key: &GeneratorKey) -> GeneratorId {
        GeneratorId {
            namespace: key.namespace.clone(),
            kind: key.kind.clone(),
            name: key.name.clone(),
        }
    }

    fn key(&self) -> GeneratorKey {
        GeneratorKey {
            namespace: self.namespace.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
        }
    }
}

impl Column {
    /// How the column is headed.
    pub fn label(&self) -> String {
        match self {
            Column::Store { store } => store.clone(),
            Column::Generator(g) => g.label(),
            Column::States { namespace } => format!("states of {namespace}"),
        }
    }
}

impl Probe {
    /// The actions evaluated on it.
    pub fn actions(&self) -> &'static [Action] {
        match self {
            Probe::Key { .. } => &[Action::Get],
            Probe::Find { .. } => &[Action::Find],
            Probe::Generator(_) => &[Action::Generate, Action::Revoke, Action::Renew],
            Probe::States { .. } => &[Action::RevokeStates],
        }
    }

    /// Its column.
    pub fn column(&self) -> Column {
        match self {
            Probe::Key { store, .. } | Probe::Find { store } => Column::Store {
                store: store.clone(),
            },
            Probe::Generator(g) => Column::Generator(g.clone()),
            Probe::States { namespace } => Column::States {
                namespace: namespace.clone(),
            },
        }
    }

    /// Short form: `vault-prod:db/*`, `vault-prod:(any other key)`, `find vault-prod`,
    /// `apps/Password/pw`, `states of apps`.
    pub fn label(&self) -> String {
        match self {
            Probe::Key {
                store, other: true, ..
            } => format!("{store}:(any other key)"),
            Probe::Key { store, key, .. } => format!("{store}:{key}"),
            Probe::Find { store } => store.clone(),
            other => other.column().label(),
        }
    }

    /// Within its column: the key (or `(any other key)`), `find`, or empty.
    pub fn short(&self) -> String {
        match self {
            Probe::Key { other: true, .. } => "(any other key)".to_owned(),
            Probe::Key { key, .. } => key.clone(),
            Probe::Find { .. } => "find".to_owned(),
            _ => String::new(),
        }
    }
}

/// One request: indexes into [`Universe::principals`] and [`Universe::probes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The caller.
    pub principal: usize,
    /// The resource.
    pub probe: usize,
    /// The action.
    pub action: Action,
}

/// The requests worth evaluating for one or two trees.
#[derive(Debug, Clone)]
pub struct Universe {
    /// Principals, sorted.
    pub principals: Vec<PrincipalName>,
    /// Probes, sorted (by column, then key).
    pub probes: Vec<Probe>,
    /// Requests evaluated: principal-major, at most the bound.
    pub requests: Vec<Request>,
    /// Requests there were before the bound.
    pub total: usize,
    /// What the trees name (the issuers of federations whose issuer is not configured).
    names: Names,
}

impl Universe {
    /// The requests worth evaluating for `trees` (one, or old and new), at most
    /// `max_requests`.
    pub fn of(trees: &[&Tree], max_requests: usize) -> Universe {
        let mut names = Names::default();
        for t in trees {
            names.merge(Names::of(t));
        }
        let mut stores: Vec<&String> = trees
            .iter()
            .flat_map(|t| t.snapshot.stores.keys())
            .collect();
        stores.sort();
        stores.dedup();
        let mut probes = Vec::new();
        for store in stores {
            let mut keys: Vec<&String> = names
                .keys
                .get(store)
                .into_iter()
                .flatten()
                .chain(&names.keys_any_store)
                .collect();
            keys.sort();
            keys.dedup();
            let other = OTHER_KEYS
                .iter()
                .find(|o| !keys.iter().any(|k| glob_matches(k, o)))
                .unwrap_or(&OTHER_KEYS[0]);
            for k in &keys {
                probes.push(Probe::Key {
                    store: store.clone(),
                    key: (*k).clone(),
                    other: false,
                });
            }
            probes.push(Probe::Key {
                store: store.clone(),
                key: (*other).to_owned(),
                other: true,
            });
            probes.push(Probe::Find {
                store: store.clone(),
            });
        }
        let generators: BTreeSet<GeneratorId> = trees
            .iter()
            .flat_map(|t| t.snapshot.generators.keys().map(GeneratorId::of))
            .collect();
        probes.extend(generators.into_iter().map(Probe::Generator));
        for ns in &names.state_namespaces {
            probes.push(Probe::States {
                namespace: ns.clone(),
            });
        }
        let principals: Vec<PrincipalName> = names.principals.iter().cloned().collect();
        let per_principal: usize = probes.iter().map(|p| p.actions().len()).sum();
        let total = per_principal.saturating_mul(principals.len());
        let mut requests = Vec::with_capacity(total.min(max_requests));
        'all: for principal in 0..principals.len() {
            for (probe, p) in probes.iter().enumerate() {
                for action in p.actions() {
                    if requests.len() >= max_requests {
                        break 'all;
                    }
                    requests.push(Request {
                        principal,
                        probe,
                        action: *action,
                    });
                }
            }
        }
        Universe {
            principals,
            probes,
            requests,
            total,
            names,
        }
    }

    /// Whether some requests were left out by the bound.
    pub fn truncated(&self) -> bool {
        self.requests.len() < self.total
    }

    /// The columns of the probes, in order, without repeats.
    pub fn columns(&self) -> Vec<Column> {
        let mut columns: Vec<Column> = Vec::new();
        for p in &self.probes {
            let c = p.column();
            if columns.last() != Some(&c) {
                columns.push(c);
            }
        }
        columns
    }

    /// The request as `tree`'s server would see it.
    pub fn resolve(&self, tree: &Tree, request: &Request) -> Resolved {
        let mut unreachable = None;
        let p = &self.principals[request.principal];
        let federation = tree
            .snapshot
            .federations
            .iter()
            .find(|f| f.name() == p.federation);
        match federation {
            None => {
                unreachable = Some(format!(
                    "{} {} is not loaded: its tokens are refused",
                    match p.kind() {
                        PrincipalKind::ServiceAccount => "KubernetesFederation",
                        PrincipalKind::OidcSubject => "OIDC federation",
                        PrincipalKind::SpiffeWorkload => "SpiffeFederation",
                    },
                    p.federation
                ));
            }
            Some(f) if f.kind().principal_kind() != p.kind() => {
                unreachable = Some(format!(
                    "{} {} proves {} callers, not {}: no token of it is this principal",
                    f.kind(),
                    p.federation,
                    f.kind().principal_kind(),
                    p.kind()
                ));
            }
            Some(_) => {}
        }
        let issuer = federation
            .and_then(|f| f.configured_issuer())
            .map(str::to_owned)
            .or_else(|| {
                let named = |t: &Tree| {
                    t.authorizations
                        .iter()
                        .filter(|a| a.spec().federation_ref.name == p.federation)
                        .find_map(|a| a.subject().map(|(i, _)| i.to_owned()))
                };
                named(tree).or_else(|| {
                    self.names
                        .issuers
                        .get(&p.federation)
                        .and_then(|i| i.first().cloned())
                })
            })
            .unwrap_or_default();
        // The identity token verification gives, built by the constructors `explain` uses;
        // the engine makes the Cedar entities from it as for a request to the server.
        let identity = match &p.caller {
            Caller::ServiceAccount { namespace, name } => {
                Identity::of_service_account(&p.federation, &issuer, namespace, name)
            }
            Caller::OidcSubject { subject } => {
                // No claims: as a token carrying none of those the federation lists.
                let mut identity = Identity::of_oidc_subject(&p.federation, &issuer, subject, &[]);
                if let Some(f) =
                    federation.filter(|f| f.kind().principal_kind() == PrincipalKind::OidcSubject)
                {
                    identity.federation_kind = f.kind();
                    // The authenticator's rule: a subject that could be read as a served
                    // trust domain's workload is refused (a glob: when every subject it
                    // matches is).
                    let glob = p.represents().is_some();
                    if let Some(why) = super::explain::lookalike(&tree.snapshot, f, subject, glob) {
                        unreachable.get_or_insert(why);
                    }
                }
                identity
            }
            Caller::SpiffeWorkload { spiffe_id } => {
                let (identity, why) = spiffe_identity(&p.federation, federation, spiffe_id);
                if let Some(why) = why {
                    unreachable.get_or_insert(why);
                }
                identity
            }
        };
        let resource = match &self.probes[request.probe] {
            Probe::Key { store, key, .. } => {
                let remote = RemoteRef {
                    key: key.clone(),
                    property: None,
                    version: None,
                };
                let target = crate::api::key_target(&tree.snapshot, store, &remote);
                match (&target.provider, &target.canonical) {
                    (None, _) => {
                        unreachable.get_or_insert_with(|| {
                            format!("ClusterSecretStore {store} is not loaded")
                        });
                    }
                    (Some(_), Err(e)) => {
                        unreachable.get_or_insert_with(|| {
                            format!("the store has no canonical form for this key ({e})")
                        });
                    }
                    _ => {}
                }
                target.resource
            }
            Probe::Find { store } => {
                if !tree.snapshot.stores.contains_key(store) {
                    unreachable
                        .get_or_insert_with(|| format!("ClusterSecretStore {store} is not loaded"));
                }
                Resource::Store {
                    store: store.clone(),
                }
            }
            Probe::Generator(g) => {
                if !tree.snapshot.generators.contains_key(&g.key()) {
                    unreachable
                        .get_or_insert_with(|| format!("generator {} is not loaded", g.label()));
                }
                Resource::generator(&g.namespace, &g.kind, &g.name)
            }
            Probe::States { namespace } => Resource::GeneratorStates {
                namespace: namespace.clone(),
            },
        };
        Resolved {
            identity,
            resource,
            unreachable,
        }
    }

    /// Every request decided by `tree`'s engine, in the order of [`Universe::requests`]. For
    /// a request a forbid denies, the permits it overrides come from
    /// [`crate::authz::PermitView`].
    pub fn evaluate(&self, tree: &Tree) -> Vec<Outcome> {
        let view = tree.snapshot.policies.permit_view();
        self.requests
            .iter()
            .map(|r| {
                let resolved = self.resolve(tree, r);
                let d =
                    tree.snapshot
                        .policies
                        .decide(&resolved.identity, r.action, &resolved.resource);
                let forbidden = !d.allowed && !d.policy_ids.is_empty();
                let overrides = if forbidden {
                    view.satisfied(&resolved.identity, r.action, &resolved.resource)
                } else {
                    Vec::new()
                };
                Outcome {
                    allowed: d.allowed && resolved.unreachable.is_none(),
                    decided: d.allowed,
                    forbidden,
                    policies: d.policy_ids,
                    overrides,
                    unreachable: resolved.unreachable,
                }
            })
            .collect()
    }
}

/// A request as one tree's server would see it.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The caller, as token verification would make it.
    pub identity: Identity,
    /// The resource, canonical.
    pub resource: Resource,
    /// Why the server would refuse it before or whatever the decision, if it would.
    pub unreachable: Option<String>,
}

/// One request's answer in one tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The server would serve it: the policies allow it and nothing refuses it earlier.
    pub allowed: bool,
    /// The policies allow it.
    pub decided: bool,
    /// Denied by a forbid (not by default).
    pub forbidden: bool,
    /// The determining policies: the permits that allowed it, or the forbids that denied
    /// it; empty for a default deny.
    pub policies: Vec<String>,
    /// When a forbid denied it: the permits it would otherwise have satisfied (the forbid
    /// takes something away); empty when nothing would have allowed it anyway.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
    /// Why the server would refuse it whatever the policies say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
}

/// The identity JWT-SVID verification gives workload `spiffe_id` of `federation`
/// ([`Identity::of_spiffe_workload`]), and why the server would refuse its token, if it
/// would: a trust domain other than the loaded federation's. A glob (a representative) is
/// built from its filling ([`super::names::spiffe_filled`]) and then carries the glob
/// itself as its subject and path, so it matches the globs and patterns that cover it and
/// no exact ID (no SPIFFE ID holds `*`), as an OIDC representative does.
fn spiffe_identity(
    federation: &str,
    loaded: Option<&crate::authn::Federation>,
    spiffe_id: &str,
) -> (Identity, Option<String>) {
    let filled = super::names::spiffe_filled(spiffe_id);
    let Some(mut identity) = Identity::of_spiffe_workload(federation, &filled) else {
        return (
            unverifiable_spiffe_workload(federation, spiffe_id),
            Some(format!(
                "{spiffe_id} is not a workload SPIFFE ID: no JWT-SVID carries it"
            )),
        );
    };
    let mut why = None;
    if filled != spiffe_id {
        if let crate::authn::Principal::SpiffeWorkload {
            trust_domain,
            path,
            kubernetes,
        } = &mut identity.principal
        {
            let glob_path = spiffe_id
                .strip_prefix("spiffe://")
                .and_then(|rest| rest.strip_prefix(trust_domain.as_str()))
                .unwrap_or_default();
            *path = glob_path.to_owned();
            *kubernetes = None;
        }
        identity.subject = spiffe_id.to_owned();
    }
    if let (Some(f), crate::authn::Principal::SpiffeWorkload { trust_domain, .. }) =
        (loaded, &identity.principal)
        && let Some(td) = f.trust_domain()
        && td != trust_domain
    {
        why = Some(format!(
            "SpiffeFederation {federation} verifies JWT-SVIDs of trust domain {td}, not {trust_domain}: its tokens are refused"
        ));
    }
    (identity, why)
}

/// A workload that no verified token can be (a glob or ID the SPIFFE-ID rules refuse, such
/// as `spiffe://example.org/a/../*`), with the text as its subject and path so that only
/// policies naming that very text match it; the caller marks it unreachable.
fn unverifiable_spiffe_workload(federation: &str, spiffe_id: &str) -> Identity {
    let rest = spiffe_id.strip_prefix("spiffe://").unwrap_or(spiffe_id);
    let (trust_domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Identity {
        federation: federation.to_owned(),
        federation_kind: crate::authn::FederationKind::Spiffe,
        issuer: format!("spiffe://{trust_domain}"),
        subject: spiffe_id.to_owned(),
        principal: crate::authn::Principal::SpiffeWorkload {
            trust_domain: trust_domain.to_owned(),
            path: path.to_owned(),
            kubernetes: None,
        },
        expires_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::PrincipalKind;
    use crate::policy::testing::{app_world, authorization, tree};

    /// The universe of a small world: the named principals and their representatives,
    /// each store's named keys, the other key and find, decided as the server decides.
    #[test]
    fn named_principals_and_keys_are_enumerated_and_decided() {
        let mut world = app_world();
        world.push(authorization(
            "reports",
            "system:serviceaccount:reporting:*",
            "  allowedClusterSecretStores: [main]\n  allowedRemoteKeys: {main: [reports/*]}\n",
        ));
        let (_dir, tree) = tree(
            &world,
            &[(
                "f.cedar",
                "forbid (principal, action, resource is Esi::RemoteKey) when { resource.key == \"admin\" };",
            )],
        );
        let u = Universe::of(&[&tree], DEFAULT_MAX_REQUESTS);
        let principals: Vec<String> = u.principals.iter().map(PrincipalName::label).collect();
        assert_eq!(
            principals,
            ["alpha/*/*", "alpha/apps/app", "alpha/reporting/*"]
        );
        let probes: Vec<String> = u.probes.iter().map(Probe::label).collect();
        assert_eq!(
            probes,
            [
                "main:admin",
                "main:reports/*",
                "main:(any other key)",
                "main"
            ]
        );
        assert_eq!(u.requests.len(), 3 * 4);
        assert!(!u.truncated());
        let outcomes = u.evaluate(&tree);
        let allowed: Vec<(String, String)> = u
            .requests
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.allowed)
            .map(|(r, _)| {
                (
                    u.principals[r.principal].label(),
                    format!("{} {}", r.action, u.probes[r.probe].label()),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = [
            ("alpha/apps/app", "get main:reports/*"),
            ("alpha/apps/app", "get main:(any other key)"),
            ("alpha/apps/app", "find main"),
            ("alpha/reporting/*", "get main:reports/*"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(allowed, expected);
        // The forbid decided `admin`, and says so.
        let admin = u
            .requests
            .iter()
            .position(|r| {
                u.principals[r.principal].label() == "alpha/apps/app"
                    && u.probes[r.probe].short() == "admin"
            })
            .expect("admin request");
        assert!(outcomes[admin].forbidden);
        assert_eq!(outcomes[admin].policies, ["f/0"]);
        assert_eq!(outcomes[admin].overrides, ["authorization/app/stores"]);
        // A forbid that takes nothing away overrides nothing.
        let idle = u
            .requests
            .iter()
            .position(|r| {
                u.principals[r.principal].label() == "alpha/*/*"
                    && u.probes[r.probe].short() == "admin"
            })
            .expect("request");
        assert!(outcomes[idle].forbidden && outcomes[idle].overrides.is_empty());
        // The bound cuts principal-major, and says so.
        let cut = Universe::of(&[&tree], 5);
        assert_eq!(
            (cut.requests.len(), cut.total, cut.truncated()),
            (5, 12, true)
        );
    }

    #[test]
    fn columns_and_labels() {
        let key = Probe::Key {
            store: "s".into(),
            key: "db/*".into(),
            other: false,
        };
        assert_eq!(key.label(), "s:db/*");
        assert_eq!(key.column(), Column::Store { store: "s".into() });
        let g = Probe::Generator(GeneratorId {
            namespace: String::new(),
            kind: "ClusterGenerator".into(),
            name: "root".into(),
        });
        assert_eq!(g.label(), "ClusterGenerator/root");
        assert_eq!(g.actions().len(), 3);
    }
    /// Issue 13: OIDC subjects are resolved to the identity `explain` builds for
    /// `FED/SUBJECT` (the server's identity for such a token, claims aside) and decided by
    /// the engine: the exact subject, a glob's representative and "any other" each get
    /// what the server would give them. A ServiceAccount named for an OIDC federation is
    /// refused, whatever the policies say.
    #[test]
    fn oidc_subjects_are_resolved_and_decided_as_the_server_does() {
        use crate::policy::explain::{PrincipalSpec, identity_of};
        use crate::policy::testing::{authorization_of, oidc_federation, store};
        let world = [
            oidc_federation("github"),
            store("main"),
            authorization_of(
                "deploy",
                "OIDCFederation",
                "github",
                "repo:org/app:ref:refs/heads/main",
                "  allowedClusterSecretStores: [main]\n",
            ),
            authorization_of(
                "ci",
                "OIDCFederation",
                "github",
                "repo:org/*",
                "  allowedClusterSecretStores: [main]\n  allowedRemoteKeys: {main: [ci/*]}\n",
            ),
        ];
        let (_dir, tree) = tree(
            &world,
            &[(
                "p.cedar",
                "@id(\"prod-only-from-production\")\nforbid (principal is Esi::OidcSubject, action, resource is Esi::RemoteKey) when { resource.key like \"prod/*\" } unless { principal.claims has environment && principal.claims.environment == \"production\" };\n\
                 @id(\"a-service-account\")\npermit (principal == Esi::ServiceAccount::\"github/apps/app\", action, resource);\n",
            )],
        );
        assert!(
            tree.snapshot.errors.is_empty(),
            "{:?}",
            tree.snapshot.errors
        );
        let u = Universe::of(&[&tree], DEFAULT_MAX_REQUESTS);
        let principals: Vec<String> = u.principals.iter().map(PrincipalName::label).collect();
        assert_eq!(
            principals,
            [
                "github/apps/app",
                "github/*",
                "github/repo:org/*",
                "github/repo:org/app:ref:refs/heads/main"
            ]
        );
        let probes: Vec<String> = u.probes.iter().map(Probe::label).collect();
        assert_eq!(
            probes,
            ["main:ci/*", "main:prod/*", "main:(any other key)", "main"]
        );
        let outcomes = u.evaluate(&tree);
        let mut allowed = Vec::new();
        for (r, o) in u.requests.iter().zip(&outcomes) {
            let p = &u.principals[r.principal];
            let resolved = u.resolve(&tree, r);
            if p.kind() == PrincipalKind::OidcSubject {
                // The identity `explain --principal FED/SUBJECT` decides.
                let spec = PrincipalSpec {
                    path: p.label(),
                    ..Default::default()
                };
                let explained =
                    identity_of(&tree.snapshot, &spec, &mut Vec::new()).expect("identity");
                assert_eq!(resolved.identity, explained, "{}", p.label());
                assert_eq!(resolved.identity.kind(), PrincipalKind::OidcSubject);
                assert_eq!(resolved.identity.issuer, "https://github.example");
                assert!(o.unreachable.is_none(), "{o:?}");
            }
            if o.allowed {
                allowed.push(format!(
                    "{} {} {} by {}",
                    p.label(),
                    r.action,
                    u.probes[r.probe].label(),
                    o.policies.join(",")
                ));
            }
        }
        assert_eq!(
            allowed,
            [
                "github/repo:org/* get main:ci/* by authorization/ci/remote-keys",
                "github/repo:org/app:ref:refs/heads/main get main:ci/* by authorization/ci/remote-keys,authorization/deploy/stores",
                "github/repo:org/app:ref:refs/heads/main get main:(any other key) by authorization/deploy/stores",
                "github/repo:org/app:ref:refs/heads/main find main by authorization/deploy/stores",
            ]
        );
        // The forbid takes prod/* from the subject the Authorization grants the store to
        // (a token without the claim).
        let prod = u
            .requests
            .iter()
            .position(|r| {
                u.principals[r.principal].label() == "github/repo:org/app:ref:refs/heads/main"
                    && u.probes[r.probe].short() == "prod/*"
            })
            .expect("prod request");
        assert_eq!(outcomes[prod].policies, ["prod-only-from-production"]);
        assert_eq!(outcomes[prod].overrides, ["authorization/deploy/stores"]);
        // The policies allow the ServiceAccount; no token of an OIDC federation is one.
        let sa = u
            .requests
            .iter()
            .position(|r| u.principals[r.principal].label() == "github/apps/app")
            .expect("ServiceAccount request");
        assert!(outcomes[sa].decided && !outcomes[sa].allowed);
        assert!(
            outcomes[sa]
                .unreachable
                .as_deref()
                .is_some_and(|w| w.contains("OIDCFederation github proves OidcSubject callers")),
            "{:?}",
            outcomes[sa]
        );
    }

    /// SPIFFE workloads are resolved to the identity `explain` builds for
    /// `FED/spiffe://TD/PATH` (the server's `Identity::of_spiffe_workload`) and decided by
    /// the engine: the exact ID, a glob's representative and "any other" each get what
    /// the server would give them; an ID of another trust domain is refused.
    #[test]
    fn spiffe_workloads_are_resolved_and_decided_as_the_server_does() {
        use crate::policy::explain::{PrincipalSpec, identity_of};
        use crate::policy::testing::{spiffe_authorization, spiffe_federation, store};
        let world = [
            spiffe_federation("spire", "example.org"),
            store("main"),
            spiffe_authorization(
                "api",
                "spire",
                "spiffe://example.org/ns/prod/sa/api",
                "  allowedClusterSecretStores: [main]\n",
            ),
            spiffe_authorization(
                "prod",
                "spire",
                "spiffe://example.org/ns/prod/*",
                "  allowedClusterSecretStores: [main]\n  allowedRemoteKeys: {main: [prod/*]}\n",
            ),
        ];
        let (_dir, tree) = tree(
            &world,
            &[(
                "p.cedar",
                "@id(\"elsewhere\")\npermit (principal == Esi::SpiffeWorkload::\"spire/spiffe://example.net/x\", action, resource);\n",
            )],
        );
        assert!(
            tree.snapshot.errors.is_empty(),
            "{:?}",
            tree.snapshot.errors
        );
        let u = Universe::of(&[&tree], DEFAULT_MAX_REQUESTS);
        let principals: Vec<String> = u.principals.iter().map(PrincipalName::label).collect();
        assert_eq!(
            principals,
            [
                "spire/spiffe://example.net/x",
                "spire/spiffe://example.org/*",
                "spire/spiffe://example.org/ns/prod/*",
                "spire/spiffe://example.org/ns/prod/sa/api",
            ]
        );
        let outcomes = u.evaluate(&tree);
        let mut allowed = Vec::new();
        for (r, o) in u.requests.iter().zip(&outcomes) {
            let p = &u.principals[r.principal];
            let resolved = u.resolve(&tree, r);
            assert_eq!(resolved.identity.kind(), PrincipalKind::SpiffeWorkload);
            match p.represents() {
                None if p.label().contains("example.org") => {
                    // The identity `explain --principal FED/SPIFFE-ID` decides.
                    let spec = PrincipalSpec {
                        path: p.label(),
                        ..Default::default()
                    };
                    let explained =
                        identity_of(&tree.snapshot, &spec, &mut Vec::new()).expect("identity");
                    assert_eq!(resolved.identity, explained, "{}", p.label());
                    assert!(o.unreachable.is_none(), "{o:?}");
                }
                None => {
                    let why = o.unreachable.as_deref().unwrap_or_default();
                    assert!(
                        why.contains("trust domain example.org, not example.net"),
                        "{why}"
                    );
                }
                Some(glob) => {
                    assert_eq!(resolved.identity.subject, glob);
                    assert_eq!(resolved.identity.issuer, "spiffe://example.org");
                    assert!(o.unreachable.is_none(), "{o:?}");
                }
            }
            if o.allowed && o.unreachable.is_none() {
                allowed.push(format!(
                    "{} {} {} by {}",
                    p.label(),
                    r.action,
                    u.probes[r.probe].label(),
                    o.policies.join(",")
                ));
            }
        }
        assert_eq!(
            allowed,
            [
                "spire/spiffe://example.org/ns/prod/* get main:prod/* by authorization/prod/remote-keys",
                "spire/spiffe://example.org/ns/prod/sa/api get main:prod/* by authorization/api/stores,authorization/prod/remote-keys",
                "spire/spiffe://example.org/ns/prod/sa/api get main:(any other key) by authorization/api/stores",
                "spire/spiffe://example.org/ns/prod/sa/api find main by authorization/api/stores",
            ]
        );
    }

    /// A would-be workload that the SPIFFE-ID rules refuse (a `..` segment; enumeration
    /// skips such names, a caller may not): it stays itself, a workload no JWT-SVID can be,
    /// and says why its requests are unreachable.
    #[test]
    fn a_malformed_spiffe_id_is_unreachable() {
        let (identity, why) = spiffe_identity("spire", None, "spiffe://example.org/a/../b");
        let why = why.unwrap_or_default();
        assert!(why.contains("not a workload SPIFFE ID"), "{why}");
        assert_eq!(identity.kind(), PrincipalKind::SpiffeWorkload);
        assert_eq!(identity.subject, "spiffe://example.org/a/../b");
        assert_eq!(identity.issuer, "spiffe://example.org");
        assert_eq!(identity.federation, "spire");
    }

    /// The authenticator's lookalike rule in `lint`, `diff` and `report`: while
    /// SpiffeFederation `spire` serves `example.org`, an OIDC subject that is one of its
    /// workloads, or a `spiffe:` subject that is no workload ID, is unreachable with the
    /// reason `explain` gives, and so is a subject glob whose every match is refused
    /// (`spiffe://example.org/*`); a glob that also matches accepted subjects
    /// (`spiffe://*`, "any other" `*`) and a workload ID of another trust domain are
    /// decided as usual. Without `spire`, none is refused. (Before: all were allowed.)
    #[test]
    fn oidc_subjects_that_read_as_served_workloads_are_unreachable() {
        use crate::policy::explain::{PrincipalSpec, authn_refusal};
        use crate::policy::testing::{authorization_of, oidc_federation, spiffe_federation, store};
        let world = |spire: bool| {
            let mut w = vec![oidc_federation("github"), store("main")];
            for (name, subject) in [
                ("served", "spiffe://example.org/ns/prod/sa/api"),
                ("upper", "SPIFFE://other.org/x"),
                ("other", "spiffe://other.org/ns/prod/sa/api"),
                ("served-glob", "spiffe://example.org/*"),
                ("any-td", "spiffe://*"),
            ] {
                w.push(authorization_of(
                    name,
                    "OIDCFederation",
                    "github",
                    subject,
                    "  allowedClusterSecretStores: [main]\n",
                ));
            }
            if spire {
                w.push(spiffe_federation("spire", "example.org"));
            }
            w
        };
        // (principal, unreachable while example.org is served).
        let expected = [
            ("github/*", false),
            ("github/SPIFFE://other.org/x", true),
            ("github/spiffe://*", false),
            ("github/spiffe://example.org/*", true),
            ("github/spiffe://example.org/ns/prod/sa/api", true),
            ("github/spiffe://other.org/ns/prod/sa/api", false),
        ];
        for spire in [true, false] {
            let (_dir, tree) = tree(&world(spire), &[]);
            assert!(
                tree.snapshot.errors.is_empty(),
                "{:?}",
                tree.snapshot.errors
            );
            let u = Universe::of(&[&tree], DEFAULT_MAX_REQUESTS);
            let outcomes = u.evaluate(&tree);
            let mut seen = Vec::new();
            for (r, o) in u.requests.iter().zip(&outcomes) {
                let p = &u.principals[r.principal];
                if p.kind() != PrincipalKind::OidcSubject || u.probes[r.probe].label() != "main" {
                    continue;
                }
                let label = p.label();
                let (_, refused) = expected
                    .iter()
                    .find(|(l, _)| *l == label)
                    .unwrap_or_else(|| panic!("unexpected principal {label}"));
                let refused = *refused && spire;
                // Every one of them is granted `main` (the glob `*` excepted).
                assert_eq!(o.decided, label != "github/*", "{label}: {o:?}");
                assert_eq!(o.unreachable.is_some(), refused, "{label}: {o:?}");
                assert_eq!(o.allowed, o.decided && !refused, "{label}: {o:?}");
                if refused {
                    let why = o.unreachable.as_deref().unwrap_or_default();
                    assert!(why.contains("OIDCFederation github"), "{why}");
                    assert!(
                        why.contains("(spire)") || why.contains("SpiffeFederation spire"),
                        "{why}"
                    );
                }
                // An exact subject: the refusal `explain` and `test` give (401).
                if p.represents().is_none() {
                    let spec = PrincipalSpec {
                        path: label.clone(),
                        ..Default::default()
                    };
                    let r = authn_refusal(&tree.snapshot, &spec);
                    assert_eq!(r.is_some(), refused, "{label}");
                    if let (Some(r), Some(why)) = (r, &o.unreachable) {
                        assert!(r.reason.starts_with(why.as_str()), "{}\n{why}", r.reason);
                    }
                }
                seen.push(label);
            }
            assert_eq!(seen.len(), expected.len(), "{seen:?}");
        }
    }
}
