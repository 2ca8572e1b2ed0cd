//! `Authorization.spec` → Cedar `permit` policies.
//!
//! Policies are built in Cedar's JSON policy format (EST) and never as text: names, keys
//! and subjects come from user manifests, and as JSON string values they can hold `"`,
//! `\` or newlines without ever changing a policy's structure. Globs become `like`
//! patterns element by element (`Literal`/`Wildcard`), so no escaping is involved either.
//!
//! One Authorization yields up to four policies, each named after its source object:
//!
//! | id | action | resource |
//! |---|---|---|
//! | `authorization/<name>/stores` | `get`, `find` | keys of, and the stores in `allowedClusterSecretStores` not restricted by `allowedRemoteKeys` |
//! | `authorization/<name>/remote-keys` | `get` | keys matching a glob of `allowedRemoteKeys[store]` |
//! | `authorization/<name>/generators` | `generate`, `revoke`, `renew` | `allowedGenerators` (namespace, kind and name all equal) |
//! | `authorization/<name>/states` | `revokeStates` | `allowedGeneratorStates` namespaces |
//!
//! A store listed in `allowedRemoteKeys` is not findable: a `find` could return keys
//! outside its globs.

use crate::support::text::printable;
use std::collections::BTreeSet;

use std::str::FromStr;

use cedar_policy::{Policy, PolicyId};
use serde_json::{Value, json};

use crate::authn::{FederationKind, PrincipalKind};
use crate::resources::{AuthorizationSpec, AuthorizationSubject};
/// Longest user value echoed in an error message.
const ECHO_MAX: usize = 120;

/// Why an Authorization does not compile. Messages name the offending field; values are
/// user configuration (names, globs), never secrets, and are cut to a bounded length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CompileError {
    #[error("spec.when: {0}")]
    When(String),
    #[error("spec.subject is missing")]
    MissingSubject,
    #[error(
        "spec.subject.spiffe.spiffeID must be spiffe://<trust-domain>/<path>, the trust domain literal, the path a glob or valid SPIFFE ID path: {0}"
    )]
    BadSpiffeId(String),
    #[error(
        "spec.subject.spiffe needs spec.federationRef.kind SpiffeFederation (a SPIFFE ID is only ever proven by a SpiffeFederation)"
    )]
    SpiffeSubjectNeedsSpiffeFederation,
    #[error(
        "spec.federationRef.kind SpiffeFederation needs spec.subject.spiffe (its callers are SPIFFE workloads)"
    )]
    SpiffeFederationNeedsSpiffeSubject,
    #[error("spec.subject sets both `spiffe` and `oidc` (or the flat form); set only one")]
    SpiffeAndOidcSubject,
    #[error("spec.subject sets both `oidc` and the flat `issuer`/`subject` form; set only one")]
    AmbiguousSubject,
    #[error("spec.subject: issuer is empty")]
    EmptyIssuer,
    #[error("spec.subject: subject is empty")]
    EmptySubject,
    #[error("spec.federationRef.name is empty")]
    MissingFederation,
    #[error(
        "spec.federationRef.kind {0:?} is not supported (expected KubernetesFederation, OIDCFederation, OktaFederation, PingIdentityFederation or SpiffeFederation)"
    )]
    UnsupportedFederationKind(String),
    #[error("spec.allowedClusterSecretStores[{0}] is empty")]
    EmptyStore(usize),
    #[error(
        "spec.allowedRemoteKeys names store {0:?}, which is not in allowedClusterSecretStores (allowedRemoteKeys only restricts)"
    )]
    RemoteKeysForUnlistedStore(String),
    #[error(
        "spec.allowedRemoteKeys[{0:?}] is empty; to allow no key, remove the store from allowedClusterSecretStores"
    )]
    EmptyRemoteKeys(String),
    #[error("spec.allowedRemoteKeys[{0:?}] has an empty pattern")]
    EmptyRemoteKeyPattern(String),
    #[error("spec.allowedGenerators[{0}]: name, kind and namespace are all required")]
    IncompleteGenerator(usize),
    #[error("spec.allowedGeneratorStates[{0}].namespace is empty")]
    EmptyStateNamespace(usize),
    #[error("internal error building policy {id}: {reason}")]
    Build { id: String, reason: String },
}

/// Which callers a compiled Authorization can match; the engine shards by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubjectMatch {
    /// `principal.subject == <subject>`.
    Exact(String),
    /// `principal.subject like <glob>`.
    Glob,
}

/// Which requests a compiled policy can apply to, by kind of resource; the engine shards
/// by it so that, e.g., a `get` never evaluates generator policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// `get` on a `RemoteKey`, `find` on a `Store`.
    Secrets = 0,
    /// `generate`, `revoke` on a `Generator`.
    Generators = 1,
    /// `revokeStates` on `GeneratorStates`.
    States = 2,
}

impl Scope {
    /// Number of scopes (array size of a shard).
    pub const COUNT: usize = 3;

    /// The scope of a request's resource.
    pub fn of(resource: &crate::authz::Resource) -> Scope {
        use crate::authz::Resource;
        match resource {
            Resource::RemoteKey { .. } | Resource::Store { .. } => Scope::Secrets,
            Resource::Generator { .. } => Scope::Generators,
            Resource::GeneratorStates { .. } => Scope::States,
        }
    }
}

/// The policies of one Authorization, with what the engine needs to shard them.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    /// The `permit` policies (possibly none, when nothing is granted), with their scope.
    pub policies: Vec<(Scope, Policy)>,
}

/// The (issuer, subject) pair of a subject, from either OIDC form ESE accepts, or of a
/// SPIFFE subject: (`spiffe://<trust-domain>`, the SPIFFE ID or glob), as a SPIFFE
/// workload's identity has them ([`crate::authn::Identity::of_spiffe_workload`]).
pub(crate) fn subject_of(
    subject: Option<&AuthorizationSubject>,
) -> Result<(&str, &str), CompileError> {
    let subject = subject.ok_or(CompileError::MissingSubject)?;
    if let Some(spiffe) = &subject.spiffe {
        if subject.oidc.is_some() || subject.issuer.is_some() || subject.subject.is_some() {
            return Err(CompileError::SpiffeAndOidcSubject);
        }
        return spiffe_subject(&spiffe.spiffe_id);
    }
    let flat = subject.issuer.is_some() || subject.subject.is_some();
    let (issuer, sub) = match (&subject.oidc, flat) {
        (Some(_), true) => return Err(CompileError::AmbiguousSubject),
        (Some(oidc), false) => (oidc.issuer.as_str(), oidc.subject.as_str()),
        (None, true) => (
            subject.issuer.as_deref().unwrap_or_default(),
            subject.subject.as_deref().unwrap_or_default(),
        ),
        (None, false) => return Err(CompileError::MissingSubject),
    };
    if issuer.is_empty() {
        return Err(CompileError::EmptyIssuer);
    }
    if sub.is_empty() {
        return Err(CompileError::EmptySubject);
    }
    Ok((issuer, sub))
}

/// A `spiffeID` subject: `spiffe://<trust-domain>` and the ID. The trust domain is literal
/// and valid; without `*` the whole must be a workload SPIFFE ID, with `*` (a glob over
/// the path) the path must start with `/` and hold only SPIFFE ID path characters besides.
fn spiffe_subject(id: &str) -> Result<(&str, &str), CompileError> {
    use crate::authn::{MAX_SPIFFE_ID_BYTES, parse_workload_id};
    let bad = |why: &str| CompileError::BadSpiffeId(printable(why, ECHO_MAX));
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| bad("the scheme must be spiffe://"))?;
    let td_len = rest.find('/').ok_or_else(|| bad("no path"))?;
    let trust_domain_id = &id[.."spiffe://".len() + td_len];
    if id.contains('*') {
        let path = &rest[td_len..];
        crate::authn::parse_spiffe_id(trust_domain_id).map_err(|e| bad(&e.to_string()))?;
        if id.len() > MAX_SPIFFE_ID_BYTES
            || !path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/' | b'*'))
        {
            return Err(bad(
                "a path glob may only hold letters, digits, '.', '-', '_', '/' and '*'",
            ));
        }
    } else {
        parse_workload_id(id).map_err(|e| bad(&e.to_string()))?;
    }
    Ok((trust_domain_id, id))
}

// ---- EST (JSON policy) builders -------------------------------------------------------

/// Fully qualified entity type name in the schema namespace.
pub(crate) fn qualified(ty: &str) -> String {
    format!("Esi::{ty}")
}

fn entity_ref(ty: &str, id: &str) -> Value {
    json!({ "type": qualified(ty), "id": id })
}

fn entity_lit(ty: &str, id: &str) -> Value {
    json!({ "Value": { "__entity": entity_ref(ty, id) } })
}

fn attr(var: &str, name: &str) -> Value {
    json!({ ".": { "left": { "Var": var }, "attr": name } })
}

fn string(s: &str) -> Value {
    json!({ "Value": s })
}

fn binary(op: &str, left: Value, right: Value) -> Value {
    json!({ op: { "left": left, "right": right } })
}

fn eq(left: Value, right: Value) -> Value {
    binary("==", left, right)
}

/// `left like <glob>`: `*` is the wildcard, every other character is literal.
fn like_glob(left: Value, glob: &str) -> Value {
    let mut pattern = Vec::new();
    for (i, literal) in glob.split('*').enumerate() {
        if i > 0 {
            pattern.push(json!("Wildcard"));
        }
        if !literal.is_empty() {
            pattern.push(json!({ "Literal": literal }));
        }
    }
    json!({ "like": { "left": left, "pattern": pattern } })
}

/// Joins with `op` as a balanced tree, so nesting depth stays logarithmic (serde_json and
/// Cedar both bound recursion depth). `None` for no operand.
fn balanced(op: &str, mut operands: Vec<Value>) -> Option<Value> {
    match operands.len() {
        0 => None,
        1 => operands.pop(),
        n => {
            let right = operands.split_off(n / 2);
            let l = balanced(op, operands)?;
            let r = balanced(op, right)?;
            Some(binary(op, l, r))
        }
    }
}

fn all_of(operands: Vec<Value>) -> Option<Value> {
    balanced("&&", operands)
}

fn any_of(operands: Vec<Value>) -> Option<Value> {
    balanced("||", operands)
}

/// One `permit` of this Authorization. `principal is <type> in Federation::"f"` always
/// (`ServiceAccount` for a KubernetesFederation, `OidcSubject` for an OIDC federation,
/// `SpiffeWorkload` for a SpiffeFederation), so
/// a subject only matches tokens that came through its federation, as the kind of caller
/// that federation proves. Without a resource type the scope is open and the condition
/// must restrict the resource.
fn permit(
    id: String,
    principal: PrincipalKind,
    federation: &str,
    actions: &[&str],
    resource_type: Option<&str>,
    condition: Value,
) -> Result<Policy, CompileError> {
    let actions: Vec<Value> = actions.iter().map(|a| entity_ref("Action", a)).collect();
    let resource = match resource_type {
        Some(ty) => json!({ "op": "is", "entity_type": qualified(ty) }),
        None => json!({ "op": "All" }),
    };
    let est = json!({
        "effect": "permit",
        "principal": {
            "op": "is",
            "entity_type": qualified(principal.as_str()),
            "in": { "entity": entity_ref("Federation", federation) },
        },
        "action": { "op": "in", "entities": actions },
        "resource": resource,
        "conditions": [ { "kind": "when", "body": condition } ],
    });
    Policy::from_json(Some(PolicyId::new(&id)), est).map_err(|e| CompileError::Build {
        id,
        reason: e.to_string(),
    })
}

/// What [`check`] learns of an Authorization without building any policy: enough for the
/// engine to index it and count its policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    /// `federationRef.name`.
    pub federation: String,
    /// The kind of caller `federationRef.kind` proves.
    pub principal: PrincipalKind,
    /// How the subject is matched.
    pub subject: SubjectMatch,
    /// How many policies [`compile`] makes of it (0 to 4, one per row of the table above).
    pub policies: usize,
}

/// Longest `spec.when` accepted, in bytes.
pub(crate) const WHEN_MAX_BYTES: usize = 4096;

/// `spec.when` as the JSON body of a `when` condition: the text must parse as one Cedar
/// expression and nothing else (a `} permit (…) {` trick is not an expression, so it is
/// refused rather than spliced into a policy). Schema validation happens at load
/// ([`crate::authz::PolicyEngine`]), on the compiled policies.
pub(crate) fn when_condition(text: &str) -> Result<Value, CompileError> {
    if text.trim().is_empty() {
        return Err(CompileError::When("is empty".to_owned()));
    }
    if text.len() > WHEN_MAX_BYTES {
        return Err(CompileError::When(format!(
            "is longer than {WHEN_MAX_BYTES} bytes"
        )));
    }
    // `when { … }` adds one level.
    super::check_nesting(text, super::MAX_NESTING - 1)
        .map_err(|e| CompileError::When(e.to_string()))?;
    let expression = cedar_policy::Expression::from_str(text).map_err(|e| {
        CompileError::When(format!(
            "is not one Cedar expression: {}",
            printable(&e.to_string(), ECHO_MAX)
        ))
    })?;
    // Built from the parsed expression's own rendering, never from the raw text.
    let policy = Policy::from_str(&format!(
        "permit (principal, action, resource) when {{ {expression} }};"
    ))
    .map_err(|e| {
        CompileError::When(format!(
            "does not form a policy: {}",
            printable(&e.to_string(), ECHO_MAX)
        ))
    })?;
    let json = policy
        .to_json()
        .map_err(|e| CompileError::When(printable(&e.to_string(), ECHO_MAX)))?;
    match json
        .get("conditions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        Some([only]) if only.get("kind") == Some(&json!("when")) => only
            .get("body")
            .cloned()
            .ok_or_else(|| CompileError::When("has no body".to_owned())),
        _ => Err(CompileError::When("is not one condition".to_owned())),
    }
}

/// Checks an Authorization as [`compile`] does, without building Cedar policies: the same
/// errors, in the same order, at a fraction of the cost (a load of 100,000 objects checks
/// them all, and compiles only those a caller needs; issue 9).
pub(crate) fn check(spec: &AuthorizationSpec) -> Result<Shape, CompileError> {
    let fed = &spec.federation_ref;
    let principal = federation_kind(&fed.kind)?.principal_kind();
    if fed.name.is_empty() {
        return Err(CompileError::MissingFederation);
    }
    let (_, subject) = subject_of(spec.subject.as_ref())?;
    let spiffe_subject = spec.subject.as_ref().is_some_and(|s| s.spiffe.is_some());
    match (principal == PrincipalKind::SpiffeWorkload, spiffe_subject) {
        (false, true) => return Err(CompileError::SpiffeSubjectNeedsSpiffeFederation),
        (true, false) => return Err(CompileError::SpiffeFederationNeedsSpiffeSubject),
        _ => {}
    }
    if let Some(text) = &spec.when {
        when_condition(text)?;
    }
    let mut stores = BTreeSet::new();
    for (i, store) in spec.allowed_cluster_secret_stores.iter().enumerate() {
        if store.is_empty() {
            return Err(CompileError::EmptyStore(i));
        }
        stores.insert(store.as_str());
    }
    for (store, globs) in &spec.allowed_remote_keys {
        if !stores.contains(store.as_str()) {
            return Err(CompileError::RemoteKeysForUnlistedStore(printable(
                store, ECHO_MAX,
            )));
        }
        if globs.is_empty() {
            return Err(CompileError::EmptyRemoteKeys(printable(store, ECHO_MAX)));
        }
        if globs.iter().any(String::is_empty) {
            return Err(CompileError::EmptyRemoteKeyPattern(printable(
                store, ECHO_MAX,
            )));
        }
    }
    for (i, g) in spec.allowed_generators.iter().enumerate() {
        if g.name.is_empty() || g.kind.is_empty() || g.namespace.is_empty() {
            return Err(CompileError::IncompleteGenerator(i));
        }
    }
    for (i, s) in spec.allowed_generator_states.iter().enumerate() {
        if s.namespace.is_empty() {
            return Err(CompileError::EmptyStateNamespace(i));
        }
    }
    let open = stores
        .iter()
        .any(|s| !spec.allowed_remote_keys.contains_key(*s));
    let policies = [
        open,
        !spec.allowed_remote_keys.is_empty(),
        !spec.allowed_generators.is_empty(),
        !spec.allowed_generator_states.is_empty(),
    ]
    .into_iter()
    .filter(|b| *b)
    .count();
    Ok(Shape {
        federation: fed.name.clone(),
        principal,
        subject: if subject.contains('*') {
            SubjectMatch::Glob
        } else {
            SubjectMatch::Exact(subject.to_owned())
        },
        policies,
    })
}

/// The kind `federationRef.kind` names (empty: `KubernetesFederation`, the only kind
/// before there were others).
pub(crate) fn federation_kind(kind: &str) -> Result<FederationKind, CompileError> {
    if kind.is_empty() {
        return Ok(FederationKind::Kubernetes);
    }
    FederationKind::from_kind(kind)
        .ok_or_else(|| CompileError::UnsupportedFederationKind(printable(kind, ECHO_MAX)))
}

/// Compiles one Authorization. `name` names the policies (`authorization/<name>/…`).
pub(crate) fn compile(name: &str, spec: &AuthorizationSpec) -> Result<Compiled, CompileError> {
    let principal = check(spec)?.principal;
    let federation = spec.federation_ref.name.as_str();
    let (issuer, subject) = subject_of(spec.subject.as_ref())?;

    let principal_subject = attr("principal", "subject");
    let subject_cond = if subject.contains('*') {
        like_glob(principal_subject, subject)
    } else {
        eq(principal_subject, string(subject))
    };
    let who = eq(attr("principal", "issuer"), string(issuer));
    let extra = spec.when.as_deref().map(when_condition).transpose()?;
    let when = |grant: Value| {
        let mut all = vec![who.clone(), subject_cond.clone(), grant];
        all.extend(extra.clone());
        all_of(all)
    };
    let id = |suffix: &str| format!("authorization/{name}/{suffix}");

    // Every entry was checked above, so a typo fails the whole object.
    let stores: BTreeSet<&str> = spec
        .allowed_cluster_secret_stores
        .iter()
        .map(String::as_str)
        .collect();

    let mut policies = Vec::new();

    // Unrestricted stores: get any key in them, and find on them.
    let open: Vec<Value> = stores
        .iter()
        .filter(|s| !spec.allowed_remote_keys.contains_key(**s))
        .map(|s| entity_lit("Store", s))
        .collect();
    if !open.is_empty() {
        let in_stores = binary("in", json!({ "Var": "resource" }), json!({ "Set": open }));
        let cond = when(in_stores).ok_or_else(|| internal(&id("stores")))?;
        // `resource in Store` covers both the Store itself (find) and its keys (get).
        policies.push((
            Scope::Secrets,
            permit(
                id("stores"),
                principal,
                federation,
                &["get", "find"],
                None,
                cond,
            )?,
        ));
    }

    // Restricted stores: get only keys matching a glob; no find.
    let restricted: Vec<Value> = spec
        .allowed_remote_keys
        .iter()
        .filter_map(|(store, globs)| {
            let keys = any_of(
                globs
                    .iter()
                    .map(|g| like_glob(attr("resource", "key"), g))
                    .collect(),
            )?;
            all_of(vec![
                binary(
                    "in",
                    json!({ "Var": "resource" }),
                    entity_lit("Store", store),
                ),
                keys,
            ])
        })
        .collect();
    if let Some(grant) = any_of(restricted) {
        let cond = when(grant).ok_or_else(|| internal(&id("remote-keys")))?;
        policies.push((
            Scope::Secrets,
            permit(
                id("remote-keys"),
                principal,
                federation,
                &["get"],
                Some("RemoteKey"),
                cond,
            )?,
        ));
    }

    // Generators: namespace, kind and name must all match (as ESE does).
    let mut generators = Vec::new();
    for g in &spec.allowed_generators {
        let one = all_of(vec![
            eq(attr("resource", "namespace"), string(&g.namespace)),
            eq(attr("resource", "kind"), string(&g.kind)),
            eq(attr("resource", "name"), string(&g.name)),
        ])
        .ok_or_else(|| internal(&id("generators")))?;
        generators.push(one);
    }
    if let Some(grant) = any_of(generators) {
        let cond = when(grant).ok_or_else(|| internal(&id("generators")))?;
        policies.push((
            Scope::Generators,
            permit(
                id("generators"),
                principal,
                federation,
                &["generate", "revoke", "renew"],
                Some("Generator"),
                cond,
            )?,
        ));
    }

    // Generator states: revoke others' credentials in these namespaces.
    let mut states = Vec::new();
    for s in &spec.allowed_generator_states {
        states.push(eq(attr("resource", "namespace"), string(&s.namespace)));
    }
    if let Some(grant) = any_of(states) {
        let cond = when(grant).ok_or_else(|| internal(&id("states")))?;
        policies.push((
            Scope::States,
            permit(
                id("states"),
                principal,
                federation,
                &["revokeStates"],
                Some("GeneratorStates"),
                cond,
            )?,
        ));
    }

    Ok(Compiled { policies })
}

fn internal(id: &str) -> CompileError {
    CompileError::Build {
        id: id.to_owned(),
        reason: "empty condition".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{
        AllowedGenerator, AllowedGeneratorState, FederationRef, OidcSubject, SpiffeSubject,
    };

    fn spec() -> AuthorizationSpec {
        AuthorizationSpec {
            federation_ref: FederationRef {
                kind: "KubernetesFederation".into(),
                name: "alpha".into(),
            },
            subject: Some(AuthorizationSubject {
                oidc: Some(OidcSubject {
                    issuer: "https://issuer".into(),
                    subject: "system:serviceaccount:ns:sa".into(),
                }),
                ..Default::default()
            }),
            allowed_cluster_secret_stores: vec!["vault".into(), "other".into()],
            allowed_generators: vec![AllowedGenerator {
                name: "g".into(),
                kind: "Fake".into(),
                namespace: "ns".into(),
                api_version: None,
            }],
            allowed_generator_states: vec![AllowedGeneratorState {
                namespace: "ns".into(),
            }],
            allowed_remote_keys: [("vault".to_owned(), vec!["db/*".to_owned()])].into(),
            when: None,
        }
    }

    fn ids(c: &Compiled) -> Vec<String> {
        c.policies.iter().map(|(_, p)| p.id().to_string()).collect()
    }

    #[test]
    fn full_spec_compiles_to_named_policies() {
        let c = compile("a", &spec()).expect("compiles");
        let shape = check(&spec()).expect("checks");
        assert_eq!(shape.federation, "alpha");
        assert_eq!(
            shape.subject,
            SubjectMatch::Exact("system:serviceaccount:ns:sa".into())
        );
        assert_eq!(
            ids(&c),
            [
                "authorization/a/stores",
                "authorization/a/remote-keys",
                "authorization/a/generators",
                "authorization/a/states"
            ]
        );
        assert!(
            c.policies
                .iter()
                .all(|(_, p)| p.effect() == cedar_policy::Effect::Permit)
        );
        let scopes: Vec<Scope> = c.policies.iter().map(|(scope, _)| *scope).collect();
        assert_eq!(
            scopes,
            [
                Scope::Secrets,
                Scope::Secrets,
                Scope::Generators,
                Scope::States
            ]
        );
    }

    #[test]
    fn only_restricted_stores_yield_no_stores_policy() {
        let mut s = spec();
        s.allowed_cluster_secret_stores = vec!["vault".into()];
        s.allowed_generators.clear();
        s.allowed_generator_states.clear();
        let c = compile("a", &s).expect("compiles");
        assert_eq!(ids(&c), ["authorization/a/remote-keys"]);
    }

    #[test]
    fn nothing_granted_compiles_to_no_policy() {
        let s = AuthorizationSpec {
            allowed_cluster_secret_stores: vec![],
            allowed_generators: vec![],
            allowed_generator_states: vec![],
            allowed_remote_keys: Default::default(),
            ..spec()
        };
        assert!(compile("a", &s).expect("compiles").policies.is_empty());
    }

    #[test]
    fn flat_sample_subject_form_is_accepted() {
        let mut s = spec();
        s.subject = Some(AuthorizationSubject {
            issuer: Some("https://issuer".into()),
            subject: Some("system:serviceaccount:ns:*".into()),
            ..Default::default()
        });
        assert_eq!(check(&s).expect("checks").subject, SubjectMatch::Glob);
    }

    fn spiffe_spec(id: &str) -> AuthorizationSpec {
        let mut s = spec();
        s.federation_ref.kind = "SpiffeFederation".into();
        s.federation_ref.name = "spire".into();
        s.subject = Some(AuthorizationSubject {
            spiffe: Some(SpiffeSubject {
                spiffe_id: id.into(),
            }),
            ..Default::default()
        });
        s
    }

    /// `subject.spiffe.spiffeID` compiles for a SpiffeFederation, exact or by path glob,
    /// into `principal is Esi::SpiffeWorkload` policies on its trust domain and ID.
    #[test]
    fn spiffe_subjects() {
        let exact = spiffe_spec("spiffe://example.org/ns/prod/sa/api");
        let shape = check(&exact).unwrap();
        assert_eq!(shape.principal, PrincipalKind::SpiffeWorkload);
        assert_eq!(
            shape.subject,
            SubjectMatch::Exact("spiffe://example.org/ns/prod/sa/api".into())
        );
        assert_eq!(
            subject_of(exact.subject.as_ref()).unwrap(),
            (
                "spiffe://example.org",
                "spiffe://example.org/ns/prod/sa/api"
            )
        );
        let compiled = compile("a", &exact).unwrap();
        let text = compiled.policies[0].1.to_string();
        assert!(
            text.contains("principal is Esi::SpiffeWorkload in Esi::Federation::\"spire\""),
            "{text}"
        );
        assert!(text.contains("\"spiffe://example.org\""), "{text}");
        let glob = spiffe_spec("spiffe://example.org/ns/prod/*");
        assert_eq!(check(&glob).unwrap().subject, SubjectMatch::Glob);
        assert!(compile("g", &glob).is_ok());
        for bad in [
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://Example.org/x",
            "spiffe://*/x",
            "spiffe://example.org:1/x",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/x?y",
            "spiffe://example.org/*?y",
            "https://example.org/x",
        ] {
            assert!(
                matches!(check(&spiffe_spec(bad)), Err(CompileError::BadSpiffeId(_))),
                "{bad}"
            );
        }
        let mut both = spiffe_spec("spiffe://example.org/x");
        if let Some(sub) = both.subject.as_mut() {
            sub.issuer = Some("https://i".into());
        }
        assert_eq!(check(&both).err(), Some(CompileError::SpiffeAndOidcSubject));
    }

    #[test]
    fn bad_specs_are_rejected_with_the_field_named() {
        type Mutation = Box<dyn Fn(&mut AuthorizationSpec)>;
        let cases: Vec<(Mutation, CompileError)> = vec![
            (Box::new(|s| s.subject = None), CompileError::MissingSubject),
            (
                Box::new(|s| s.subject = Some(AuthorizationSubject::default())),
                CompileError::MissingSubject,
            ),
            (
                Box::new(|s| {
                    s.subject = Some(AuthorizationSubject {
                        spiffe: Some(SpiffeSubject {
                            spiffe_id: "spiffe://x/y".into(),
                        }),
                        ..Default::default()
                    })
                }),
                CompileError::SpiffeSubjectNeedsSpiffeFederation,
            ),
            (
                Box::new(|s| {
                    if let Some(sub) = s.subject.as_mut() {
                        sub.issuer = Some("https://other".into());
                    }
                }),
                CompileError::AmbiguousSubject,
            ),
            (
                Box::new(|s| {
                    if let Some(oidc) = s.subject.as_mut().and_then(|x| x.oidc.as_mut()) {
                        oidc.issuer.clear();
                    }
                }),
                CompileError::EmptyIssuer,
            ),
            (
                Box::new(|s| {
                    if let Some(oidc) = s.subject.as_mut().and_then(|x| x.oidc.as_mut()) {
                        oidc.subject.clear();
                    }
                }),
                CompileError::EmptySubject,
            ),
            (
                Box::new(|s| s.federation_ref.name.clear()),
                CompileError::MissingFederation,
            ),
            (
                Box::new(|s| s.federation_ref.kind = "SpiffeFederation".into()),
                CompileError::SpiffeFederationNeedsSpiffeSubject,
            ),
            (
                Box::new(|s| s.federation_ref.kind = "X509Federation".into()),
                CompileError::UnsupportedFederationKind("X509Federation".into()),
            ),
            (
                Box::new(|s| s.allowed_cluster_secret_stores.push(String::new())),
                CompileError::EmptyStore(2),
            ),
            (
                Box::new(|s| {
                    s.allowed_remote_keys
                        .insert("unlisted".into(), vec!["*".into()]);
                }),
                CompileError::RemoteKeysForUnlistedStore("unlisted".into()),
            ),
            (
                Box::new(|s| {
                    s.allowed_remote_keys.insert("other".into(), vec![]);
                }),
                CompileError::EmptyRemoteKeys("other".into()),
            ),
            (
                Box::new(|s| {
                    s.allowed_remote_keys
                        .insert("other".into(), vec!["a".into(), String::new()]);
                }),
                CompileError::EmptyRemoteKeyPattern("other".into()),
            ),
            (
                Box::new(|s| s.allowed_generators[0].kind.clear()),
                CompileError::IncompleteGenerator(0),
            ),
            (
                Box::new(|s| s.allowed_generator_states[0].namespace.clear()),
                CompileError::EmptyStateNamespace(0),
            ),
        ];
        for (mutate, expected) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert_eq!(compile("a", &s).map(|c| ids(&c)), Err(expected));
        }
    }

    /// `check` is `compile` without the policies: same verdict, same shape.
    #[test]
    fn check_agrees_with_compile() {
        let mut cases = vec![spec()];
        let mut s = spec();
        s.allowed_remote_keys.clear();
        cases.push(s);
        let mut s = spec();
        s.allowed_cluster_secret_stores = vec!["vault".into()];
        cases.push(s);
        let mut s = spec();
        s.allowed_generators.clear();
        s.allowed_generator_states.clear();
        cases.push(s);
        let mut s = spec();
        s.allowed_cluster_secret_stores.clear();
        s.allowed_remote_keys.clear();
        cases.push(s);
        let mut s = spec();
        s.allowed_generator_states[0].namespace.clear();
        cases.push(s);
        let mut s = spec();
        s.federation_ref.kind = "Other".into();
        cases.push(s);
        for s in cases {
            let checked = check(&s);
            let compiled = compile("a", &s);
            match (checked, compiled) {
                (Ok(shape), Ok(c)) => {
                    assert_eq!(shape.federation, s.federation_ref.name);
                    assert_eq!(shape.policies, c.policies.len());
                }
                (Err(a), Err(b)) => assert_eq!(a, b),
                (a, b) => panic!("check {a:?} but compile {:?}", b.map(|c| ids(&c))),
            }
        }
    }

    #[test]
    fn empty_federation_kind_defaults_to_kubernetes() {
        let mut s = spec();
        s.federation_ref.kind.clear();
        assert!(compile("a", &s).is_ok());
    }

    #[test]
    fn glob_becomes_literal_and_wildcard_elements() {
        let v = like_glob(json!({"Var": "x"}), "a*b**\\\"c*");
        assert_eq!(
            v["like"]["pattern"],
            json!([
                {"Literal": "a"}, "Wildcard", {"Literal": "b"}, "Wildcard", "Wildcard",
                {"Literal": "\\\"c"}, "Wildcard"
            ])
        );
    }

    #[test]
    fn long_disjunctions_stay_shallow() {
        fn depth(v: &Value) -> usize {
            match v {
                Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
                Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }
        let operands: Vec<Value> = (0..4096).map(|i| string(&i.to_string())).collect();
        let tree = any_of(operands).expect("non-empty");
        // 12 levels of `||` (each 2 JSON levels) plus the leaf.
        assert!(depth(&tree) <= 2 * 13 + 2, "depth {}", depth(&tree));
        let mut s = spec();
        s.allowed_cluster_secret_stores = (0..5000).map(|i| format!("store-{i}")).collect();
        s.allowed_remote_keys = (0..2000)
            .map(|i| (format!("store-{i}"), vec![format!("k{i}/*")]))
            .collect();
        assert_eq!(compile("big", &s).map(|c| c.policies.len()), Ok(4));
    }
}
