//! `esi-server policy explain`: one decision and the policies that determined it.
//!
//! The request is built as the API builds it — the caller's [`Identity`] as token
//! verification makes it, the resource in its canonical form ([`crate::api::key_target`]
//! for keys, [`Resource::generator`] for generators) — and decided by
//! [`crate::authz::PolicyEngine::decide`], the server's own path, so the ids shown are
//! those of the server's decision log (`esi::decision`, `policies`) for the same request.

use serde::Serialize;

use super::PolicyToolError;
use super::listing;
use crate::authn::{AuthnSettings, Federation, Identity, MAX_CLAIM_VALUE_BYTES, OfflineIdentity};
use crate::authz::{Action, Decision, RequestContext, Resource};
use crate::config::Snapshot;
use crate::providers::RemoteRef;
use crate::support::text::printable;

/// Longest name accepted in a request (store, key, namespace, …).
const FIELD_MAX: usize = 4096;

/// Who asks: a ServiceAccount of a federation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrincipalSpec {
    /// `FED/NS/SA` (a `KubernetesFederation`'s ServiceAccount), `FED/SUBJECT` (an OIDC
    /// federation's subject; the subject may hold `/`), or `FED/spiffe://TD/PATH` (a
    /// `SpiffeFederation`'s workload, by its SPIFFE ID).
    pub path: String,
    /// The token's `iss` (default: the federation's configured issuer).
    pub issuer: Option<String>,
    /// ServiceAccount UID (`principal.uid`).
    pub uid: Option<String>,
    /// Pod name of a pod-bound token (`principal.podName`).
    pub pod_name: Option<String>,
    /// Pod UID of a pod-bound token (`principal.podUid`).
    pub pod_uid: Option<String>,
    /// An OIDC subject's claims (`principal.claims`): those its federation hands to
    /// policies are kept, others are left out (and said).
    pub claims: std::collections::BTreeMap<String, String>,
}

/// What is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `get` of `key` (with `property`/`version`) on `store`.
    Key {
        /// Store.
        store: String,
        /// Remote key.
        key: String,
        /// Property.
        property: Option<String>,
        /// Version.
        version: Option<String>,
    },
    /// `find` on a store.
    Find {
        /// Store.
        store: String,
    },
    /// `generate`, `revoke` or `renew` on a generator `NS/KIND/NAME`.
    Generator {
        /// The action.
        action: Action,
        /// `NS/KIND/NAME`.
        path: String,
    },
    /// `revokeStates` in a namespace.
    States {
        /// Namespace.
        namespace: String,
    },
}

/// A request, resolved as the server resolves it.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The caller.
    pub identity: Identity,
    /// The action.
    pub action: Action,
    /// The resource, canonical.
    pub resource: Resource,
    /// What else the server would do with this request (an unknown store answers 404
    /// whatever the decision, …).
    pub notes: Vec<String>,
}

fn bounded(what: &str, value: &str) -> Result<(), PolicyToolError> {
    if value.is_empty() {
        return Err(PolicyToolError::BadRequest(format!("{what} is empty")));
    }
    if value.len() > FIELD_MAX {
        return Err(PolicyToolError::BadRequest(format!(
            "{what} is longer than {FIELD_MAX} bytes"
        )));
    }
    Ok(())
}

/// Splits `a/b/c` into exactly three non-empty parts.
fn three<'a>(what: &str, path: &'a str) -> Result<(&'a str, &'a str, &'a str), PolicyToolError> {
    let mut parts = path.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), Some(c)) if !a.is_empty() && !b.is_empty() && !c.is_empty() => {
            Ok((a, b, c))
        }
        _ => Err(PolicyToolError::BadRequest(format!(
            "{what} must be NAMESPACE/KIND/NAME, got {path:?}"
        ))),
    }
}

/// `FED/NS/SA` split into a federation, namespace and ServiceAccount that a token can name:
/// exactly three parts, the federation's name a DNS-1123 subdomain (a Kubernetes object
/// name), the namespace a DNS-1123 label and the ServiceAccount a DNS-1123 subdomain, as
/// Kubernetes requires of them. A `:` or an extra `/` names a principal no token of a
/// KubernetesFederation carries (`system:serviceaccount:NS:SA` is split at `:`), so it is
/// refused rather than decided (review finding 10, issue 13).
fn service_account_path(path: &str) -> Result<(&str, &str, &str), PolicyToolError> {
    use crate::support::text::{is_dns_label, is_dns_subdomain};
    let parts: Vec<&str> = path.split('/').collect();
    let [fed, namespace, name] = parts[..] else {
        return Err(PolicyToolError::BadRequest(format!(
            "principal must be FEDERATION/NAMESPACE/SERVICEACCOUNT (three parts), got {path:?}"
        )));
    };
    let refuse = |what: &str, value: &str, rule: &str| {
        Err(PolicyToolError::BadRequest(format!(
            "principal {path:?}: {what} {value:?} is not {rule}, so no token names it"
        )))
    };
    if !is_dns_subdomain(fed) {
        return refuse(
            "federation",
            fed,
            "a Kubernetes object name (a DNS-1123 subdomain: a-z, 0-9, '-', '.')",
        );
    }
    if !is_dns_label(namespace) {
        return refuse(
            "namespace",
            namespace,
            "a Kubernetes namespace name (a DNS-1123 label: at most 63 of a-z, 0-9, '-')",
        );
    }
    if !is_dns_subdomain(name) {
        return refuse(
            "ServiceAccount",
            name,
            "a Kubernetes ServiceAccount name (a DNS-1123 subdomain: a-z, 0-9, '-', '.')",
        );
    }
    Ok((fed, namespace, name))
}

/// Checks that `spec` names a principal a token can carry, before anything else is asked
/// of it: `FED/SUBJECT` when `FED` (everything before the first `/`) is a loaded OIDC
/// federation (the subject is everything after it, `/` and `:` included: [`oidc_subject`]),
/// else [`service_account_path`]; for a federation that is not loaded only its name is checked
/// (the server refuses every token of it, 401, whatever follows).
pub fn check_principal(snapshot: &Snapshot, spec: &PrincipalSpec) -> Result<(), PolicyToolError> {
    bounded("principal", &spec.path)?;
    let fed = spec.path.split('/').next().unwrap_or_default();
    match federation(snapshot, fed) {
        Some(f) if f.kind().principal_kind() == crate::authn::PrincipalKind::OidcSubject => {
            match spec.path.split_once('/') {
                Some((_, subject)) => oidc_subject(subject).map(|_| ()),
                None => Err(PolicyToolError::BadRequest(
                    "principal must be FEDERATION/SUBJECT for an OIDC federation".into(),
                )),
            }
        }
        Some(f) if f.kind().principal_kind() == crate::authn::PrincipalKind::SpiffeWorkload => {
            spiffe_id_of(f, &spec.path).map(|_| ())
        }
        Some(_) => service_account_path(&spec.path).map(|_| ()),
        None if crate::support::text::is_dns_subdomain(fed) => Ok(()),
        None => Err(PolicyToolError::BadRequest(format!(
            "principal {:?}: federation {fed:?} is not a Kubernetes object name (a DNS-1123 subdomain), so no federation has it",
            spec.path
        ))),
    }
}

/// The SUBJECT of `FED/SUBJECT` (everything after the first `/`) as token verification
/// accepts an OIDC subject: non-empty, at most [`MAX_CLAIM_VALUE_BYTES`] bytes; a longer
/// one is refused (the server refuses such a token, 401, before any decision).
fn oidc_subject(subject: &str) -> Result<&str, PolicyToolError> {
    if subject.is_empty() {
        return Err(PolicyToolError::BadRequest(
            "principal must be FEDERATION/SUBJECT for an OIDC federation".into(),
        ));
    }
    if subject.len() > MAX_CLAIM_VALUE_BYTES {
        return Err(PolicyToolError::BadRequest(format!(
            "the subject is longer than {MAX_CLAIM_VALUE_BYTES} bytes, so no token the server accepts names it"
        )));
    }
    Ok(subject)
}

/// The SPIFFE ID of `FED/SPIFFE-ID` (everything after the first `/`) for the
/// `SpiffeFederation` `fed`, as JWT-SVID verification accepts it: a workload SPIFFE ID
/// ([`crate::authn::parse_workload_id`], the server's parser) of the federation's trust
/// domain; anything else is refused (the server refuses such a token, 401).
fn spiffe_id_of<'p>(fed: &Federation, path: &'p str) -> Result<&'p str, PolicyToolError> {
    let name = fed.name();
    let Some((_, id)) = path.split_once('/').filter(|(_, id)| !id.is_empty()) else {
        return Err(PolicyToolError::BadRequest(
            "principal must be FEDERATION/spiffe://TRUST-DOMAIN/PATH for a SpiffeFederation".into(),
        ));
    };
    let parsed = crate::authn::parse_workload_id(id).map_err(|e| {
        PolicyToolError::BadRequest(format!(
            "principal of SpiffeFederation {name}: {} is not a workload SPIFFE ID ({e}), so no JWT-SVID the server accepts names it",
            printable(id, FIELD_ECHO_MAX)
        ))
    })?;
    match fed.trust_domain() {
        Some(td) if td != parsed.trust_domain => Err(PolicyToolError::BadRequest(format!(
            "principal of SpiffeFederation {name}: {} is of trust domain {}, not {td}, so the server refuses its JWT-SVIDs (401)",
            printable(id, FIELD_ECHO_MAX),
            parsed.trust_domain
        ))),
        _ => Ok(id),
    }
}

/// The identity JWT-SVID verification would give a token of `spec` (`FED/SPIFFE-ID`)
/// through the `SpiffeFederation` `fed` ([`Identity::of_spiffe_workload`]).
fn spiffe_identity_of(fed: &Federation, spec: &PrincipalSpec) -> Result<Identity, PolicyToolError> {
    let name = fed.name();
    if spec.uid.is_some() || spec.pod_name.is_some() || spec.pod_uid.is_some() {
        return Err(PolicyToolError::BadRequest(format!(
            "SpiffeFederation {name} verifies JWT-SVIDs: uid and pod belong to ServiceAccount tokens (the SPIFFE ID's path names the workload)"
        )));
    }
    if !spec.claims.is_empty() {
        return Err(PolicyToolError::BadRequest(format!(
            "SpiffeFederation {name} verifies JWT-SVIDs: claims belong to OIDC subjects"
        )));
    }
    let id = spiffe_id_of(fed, &spec.path)?;
    let identity = Identity::of_spiffe_workload(name, id).ok_or_else(|| {
        PolicyToolError::BadRequest(format!(
            "principal of SpiffeFederation {name}: not a workload SPIFFE ID"
        ))
    })?;
    if let Some(given) = &spec.issuer
        && *given != identity.issuer
    {
        return Err(PolicyToolError::BadRequest(format!(
            "SpiffeFederation {name}: a JWT-SVID's issuer is its trust domain ({}), not {given}",
            identity.issuer
        )));
    }
    Ok(identity)
}

fn federation<'s>(snapshot: &'s Snapshot, name: &str) -> Option<&'s Federation> {
    snapshot.federations.iter().find(|f| f.name() == name)
}

/// The identity token verification would give an OIDC token of `spec` (`FED/SUBJECT`)
/// through the OIDC federation `fed`.
fn oidc_identity_of(
    fed: &Federation,
    spec: &PrincipalSpec,
    subject: &str,
    notes: &mut Vec<String>,
) -> Result<Identity, PolicyToolError> {
    let name = fed.name();
    if spec.uid.is_some() || spec.pod_name.is_some() || spec.pod_uid.is_some() {
        return Err(PolicyToolError::BadRequest(format!(
            "{} {name} verifies OIDC tokens: uid and pod belong to ServiceAccounts (give claims)",
            fed.kind()
        )));
    }
    oidc_subject(subject)?;
    let configured = fed.configured_issuer().unwrap_or_default();
    let issuer = match &spec.issuer {
        Some(given) if given != configured => {
            notes.push(format!(
                "{} {name} accepts tokens of issuer {configured}, not {given}: the server would refuse this token (401)",
                fed.kind()
            ));
            given.clone()
        }
        _ => configured.to_owned(),
    };
    bounded("issuer", &issuer)?;
    let mut claims: Vec<(&str, &str)> = Vec::new();
    for (k, v) in &spec.claims {
        bounded("claim", v)?;
        if fed.exposed_claims().iter().any(|c| c == k) {
            claims.push((k, v));
        } else {
            notes.push(format!(
                "claim {k:?} is not in spec.claims of {} {name}: the server would not hand it to policies",
                fed.kind()
            ));
        }
    }
    let mut identity = Identity::of_oidc_subject(name, &issuer, subject, &claims);
    identity.federation_kind = fed.kind();
    Ok(identity)
}

/// The identity token verification would give a token of `spec`: a ServiceAccount's
/// (`FED/NS/SA`), or an OIDC subject's (`FED/SUBJECT`) when `FED` is an OIDC federation.
pub fn identity_of(
    snapshot: &Snapshot,
    spec: &PrincipalSpec,
    notes: &mut Vec<String>,
) -> Result<Identity, PolicyToolError> {
    bounded("principal", &spec.path)?;
    if let Some((fed, subject)) = spec.path.split_once('/')
        && let Some(f) = federation(snapshot, fed)
        && f.kind().principal_kind() == crate::authn::PrincipalKind::OidcSubject
    {
        return oidc_identity_of(f, spec, subject, notes);
    }
    if let Some(fed) = spec.path.split('/').next()
        && let Some(f) = federation(snapshot, fed)
        && f.kind().principal_kind() == crate::authn::PrincipalKind::SpiffeWorkload
    {
        return spiffe_identity_of(f, spec);
    }
    if !spec.claims.is_empty() {
        return Err(PolicyToolError::BadRequest(
            "claims belong to OIDC subjects: name an OIDC federation's subject (FEDERATION/SUBJECT)"
                .into(),
        ));
    }
    let (fed, namespace, name) = service_account_path(&spec.path)?;
    let configured = federation(snapshot, fed).and_then(|f| f.configured_issuer());
    let issuer = match (&spec.issuer, configured) {
        (Some(given), Some(configured)) if given != configured => {
            notes.push(format!(
                "KubernetesFederation {fed} accepts tokens of issuer {configured}, not {given}: the server would refuse this token (401)"
            ));
            given.clone()
        }
        (Some(given), _) => given.clone(),
        (None, Some(configured)) => configured.to_owned(),
        (None, None) if federation(snapshot, fed).is_some() => {
            return Err(PolicyToolError::BadRequest(format!(
                "KubernetesFederation {fed} learns its issuer by discovery (no spec.issuer); give --issuer"
            )));
        }
        (None, None) => {
            return Err(PolicyToolError::BadRequest(format!(
                "no KubernetesFederation {fed} is loaded (the server would refuse every token of it); give --issuer to evaluate the policies anyway"
            )));
        }
    };
    if federation(snapshot, fed).is_none() {
        notes.push(format!(
            "no KubernetesFederation {fed} is loaded: the server would refuse every token of it (401)"
        ));
    }
    for (what, v) in [
        ("issuer", Some(&issuer)),
        ("uid", spec.uid.as_ref()),
        ("pod name", spec.pod_name.as_ref()),
        ("pod uid", spec.pod_uid.as_ref()),
    ] {
        if let Some(v) = v {
            bounded(what, v)?;
        }
    }
    let mut identity = Identity::of_service_account(fed, &issuer, namespace, name);
    if let Some(sa) = identity.service_account_mut() {
        sa.uid = spec.uid.clone();
        sa.pod_name = spec.pod_name.clone();
        sa.pod_uid = spec.pod_uid.clone();
    }
    Ok(identity)
}

/// The trust domains the snapshot's `SpiffeFederation`s serve (as the server's
/// authenticator sees its federations).
fn served_trust_domains(snapshot: &Snapshot) -> impl Iterator<Item = &str> + Clone {
    snapshot.federations.iter().filter_map(|f| f.trust_domain())
}

/// Why the server refuses `subject` (an OIDC subject; when `glob`, a subject glob, of which
/// only the text before the first `*` is looked at) from the federation `fed`, which is no
/// `SpiffeFederation`: it could be read as a workload of a trust domain a loaded
/// `SpiffeFederation` serves ([`crate::authn::could_be_a_served_workload`], the
/// authenticator's own rule; for a glob, [`crate::authn::could_only_be_served_workloads`]:
/// every subject it matches is refused). `None`: the rule does not refuse it (for a glob:
/// some subject it matches may be accepted).
pub(crate) fn lookalike(
    snapshot: &Snapshot,
    fed: &Federation,
    subject: &str,
    glob: bool,
) -> Option<String> {
    if fed.trust_domain().is_some() {
        return None;
    }
    let served = served_trust_domains(snapshot);
    let refused = if glob {
        let prefix = subject.split('*').next().unwrap_or_default();
        crate::authn::could_only_be_served_workloads(served.clone(), prefix)
    } else {
        crate::authn::could_be_a_served_workload(served.clone(), subject)
    };
    if !refused {
        return None;
    }
    let serving = |td: Option<&str>| {
        let names: Vec<&str> = snapshot
            .federations
            .iter()
            .filter(|f| {
                f.trust_domain()
                    .is_some_and(|s| td.is_none_or(|td| s == td))
            })
            .map(Federation::name)
            .collect();
        names.join(", ")
    };
    let shown = printable(subject, FIELD_ECHO_MAX);
    let (kind, name) = (fed.kind(), fed.name());
    if glob {
        return Some(format!(
            "every subject matching {shown} begins with spiffe: and is either no workload SPIFFE ID or one of a trust domain a SpiffeFederation serves ({}): a token of {kind} {name} with such a subject is refused",
            serving(None)
        ));
    }
    Some(match crate::authn::parse_workload_id(subject) {
        Ok(id) => format!(
            "subject {shown} is a workload SPIFFE ID of trust domain {}, which SpiffeFederation {} serves: only that trust domain's JWT-SVIDs prove it, and a token of {kind} {name} with this subject is refused",
            id.trust_domain,
            serving(Some(id.trust_domain))
        ),
        Err(e) => format!(
            "subject {shown} begins with spiffe: but is not a workload SPIFFE ID ({e}): while a SpiffeFederation is loaded ({}), a token of {kind} {name} with such a subject is refused, as it could be read as a served workload",
            serving(None)
        ),
    })
}

/// [`lookalike`] of an OIDC subject (no glob).
pub(crate) fn lookalike_subject(
    snapshot: &Snapshot,
    fed: &Federation,
    subject: &str,
) -> Option<String> {
    lookalike(snapshot, fed, subject, false)
}

/// A request the server answers with an HTTP status of its own rather than with the
/// decision's: the token refused (401, before any decision), a generator namespace that is
/// not a namespace name (400, before the decision), the object missing (404, after it) or
/// a key the store cannot spell (the store's error, after an allow).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The HTTP status (400, 401, 404, …).
    pub status: u16,
    /// Why, ending with the status the server would answer.
    pub reason: String,
}

/// The 401 the server answers before deciding, for a token of `spec`: its federation is
/// not loaded (no federation verifies it), an OIDC federation's subject could be read as a
/// workload of a trust domain a `SpiffeFederation` serves ([`lookalike_subject`]), or the
/// token's issuer is not the one its federation accepts (token verification matches `iss`
/// against each federation's configured issuer, see `Authenticator::verify`). `None`: the
/// token would be accepted (or its federation learns its issuer by discovery and the
/// issuer cannot be checked).
pub fn authn_refusal(snapshot: &Snapshot, spec: &PrincipalSpec) -> Option<Refusal> {
    let fed = spec.path.split('/').next().unwrap_or_default();
    let Some(f) = federation(snapshot, fed) else {
        return Some(Refusal {
            status: 401,
            reason: format!(
                "federation {fed} does not exist (no KubernetesFederation, OIDC federation or SpiffeFederation of that name is loaded); the server would answer 401"
            ),
        });
    };
    if f.kind().principal_kind() == crate::authn::PrincipalKind::OidcSubject
        && let Some((_, subject)) = spec.path.split_once('/')
        && let Some(why) = lookalike_subject(snapshot, f, subject)
    {
        return Some(Refusal {
            status: 401,
            reason: format!("{why}; the server would answer 401"),
        });
    }
    match (&spec.issuer, f.configured_issuer()) {
        (Some(given), Some(configured)) if given != configured => Some(Refusal {
            status: 401,
            reason: format!(
                "{} {fed} accepts tokens of issuer {configured}, not {given}; the server would answer 401",
                f.kind()
            ),
        }),
        _ => None,
    }
}

/// What the server answers for `target` once the token is accepted, besides the decision
/// (`allowed`): `Some` when it is not the decision's own answer (allow: the call proceeds,
/// deny: 404). Order as in the API: a generator namespace is checked before the decision
/// (400); a missing store or generator answers 404 whatever the decision; a key the store
/// has no canonical form for answers the store's error after an allow.
pub fn resource_refusal(snapshot: &Snapshot, target: &Target, allowed: bool) -> Option<Refusal> {
    let missing = |what: String| Refusal {
        status: 404,
        reason: format!("{what} does not exist; the server would answer 404"),
    };
    match target {
        Target::Key {
            store,
            key,
            property,
            version,
        } => {
            let remote = RemoteRef {
                key: key.clone(),
                property: property.clone().filter(|p| !p.is_empty()),
                version: version.clone().filter(|v| !v.is_empty()),
            };
            let target = crate::api::key_target(snapshot, store, &remote);
            match (&target.provider, target.canonical) {
                (None, _) => Some(missing(format!("store {store} (ClusterSecretStore)"))),
                (Some(_), Err(e)) if allowed => Some(Refusal {
                    status: e.status().as_u16(),
                    reason: format!(
                        "the store has no canonical form for this key ({e}); the server would answer {}",
                        e.status().as_u16()
                    ),
                }),
                _ => None,
            }
        }
        Target::Find { store } => (!snapshot.stores.contains_key(store))
            .then(|| missing(format!("store {store} (ClusterSecretStore)"))),
        Target::Generator { path, .. } => {
            let (namespace, kind, name) = three("generator", path).ok()?;
            if !crate::generators::is_namespace_name(namespace) {
                return Some(not_a_namespace(namespace));
            }
            let key = crate::ledger::GeneratorRef {
                namespace: namespace.to_owned(),
                kind: kind.to_owned(),
                name: name.to_owned(),
            }
            .lookup_key();
            (!snapshot.generators.contains_key(&key))
                .then(|| missing(format!("generator {kind} {namespace}/{name}")))
        }
        Target::States { namespace } => {
            (!crate::generators::is_namespace_name(namespace)).then(|| not_a_namespace(namespace))
        }
    }
}

fn not_a_namespace(namespace: &str) -> Refusal {
    Refusal {
        status: 400,
        reason: format!(
            "{namespace:?} is not a Kubernetes namespace name; the server would answer 400 before deciding"
        ),
    }
}

/// The token in `text` as the server would verify it, offline (see
/// [`crate::authn::identify_offline`]): verified when its federation has static keys; read
/// but unverified (said in `notes`) when it fetches its keys.
pub fn identity_of_token(
    snapshot: &Snapshot,
    text: &str,
    notes: &mut Vec<String>,
) -> Result<(Identity, bool), PolicyToolError> {
    let token = text.trim();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| PolicyToolError::Token(format!("cannot start a runtime: {e}")))?;
    let read = runtime.block_on(crate::authn::identify_offline(
        &snapshot.federations,
        token,
        AuthnSettings::default(),
    ));
    match read {
        Ok(OfflineIdentity::Verified(identity)) => Ok((identity, true)),
        Ok(OfflineIdentity::Unverified { identity, reason }) => {
            notes.push(format!("NOT VERIFIED: {reason}"));
            Ok((identity, false))
        }
        Err(e) => Err(PolicyToolError::Token(format!(
            "the server would refuse it (401): {e}"
        ))),
    }
}

/// The action and canonical resource of `target`, as the API computes them.
pub fn resource_of(
    snapshot: &Snapshot,
    target: &Target,
    notes: &mut Vec<String>,
) -> Result<(Action, Resource), PolicyToolError> {
    match target {
        Target::Key {
            store,
            key,
            property,
            version,
        } => {
            bounded("store", store)?;
            bounded("key", key)?;
            let remote = RemoteRef {
                key: key.clone(),
                property: property.clone().filter(|p| !p.is_empty()),
                version: version.clone().filter(|v| !v.is_empty()),
            };
            let target = crate::api::key_target(snapshot, store, &remote);
            match (&target.provider, &target.canonical) {
                (None, _) => notes.push(format!(
                    "no ClusterSecretStore {store} is loaded: the server answers 404 whatever the decision"
                )),
                (Some(_), Err(e)) => notes.push(format!(
                    "the store has no canonical form for this key ({e}): the server decides the key as written, then refuses the request"
                )),
                (Some(_), Ok(c)) if c.key != *key => notes.push(format!(
                    "the store's canonical form of key {key:?} is {:?}: that is what is decided",
                    c.key
                )),
                _ => {}
            }
            Ok((Action::Get, target.resource))
        }
        Target::Find { store } => {
            bounded("store", store)?;
            if !snapshot.stores.contains_key(store) {
                notes.push(format!(
                    "no ClusterSecretStore {store} is loaded: the server answers 404 whatever the decision"
                ));
            }
            notes.push(
                "a find answers only the keys the caller may also get (each one a `get` decision)"
                    .to_owned(),
            );
            Ok((
                Action::Find,
                Resource::Store {
                    store: store.clone(),
                },
            ))
        }
        Target::Generator { action, path } => {
            bounded("generator", path)?;
            if !matches!(action, Action::Generate | Action::Revoke | Action::Renew) {
                return Err(PolicyToolError::BadRequest(format!(
                    "action {action} does not apply to a generator (generate, revoke, renew)"
                )));
            }
            let (namespace, kind, name) = three("generator", path)?;
            let key = crate::ledger::GeneratorRef {
                namespace: namespace.to_owned(),
                kind: kind.to_owned(),
                name: name.to_owned(),
            }
            .lookup_key();
            if !snapshot.generators.contains_key(&key) {
                notes.push(format!(
                    "no generator {kind} {namespace}/{name} is loaded: the server answers 404 whatever the decision"
                ));
            }
            Ok((*action, Resource::generator(namespace, kind, name)))
        }
        Target::States { namespace } => {
            bounded("namespace", namespace)?;
            Ok((
                Action::RevokeStates,
                Resource::GeneratorStates {
                    namespace: namespace.clone(),
                },
            ))
        }
    }
}

/// `context.sourceAddress` as the server sets it: an IP address, IPv4-mapped IPv6 as IPv4
/// (the API takes the TCP peer's `IpAddr::to_canonical`).
pub fn parse_source_address(s: &str) -> Result<std::net::IpAddr, String> {
    s.trim()
        .parse::<std::net::IpAddr>()
        .map(|ip| ip.to_canonical())
        .map_err(|_| format!("{:?} is not an IP address", printable(s, FIELD_ECHO_MAX)))
}

/// `context.time`: an RFC 3339 time (`2026-06-01T00:00:00Z`), as whole seconds since the
/// epoch (the server decides in whole seconds, UTC).
pub fn parse_time(s: &str) -> Result<i64, String> {
    s.trim()
        .parse::<jiff::Timestamp>()
        .map(|t| t.as_second())
        .map_err(|e| {
            format!(
                "{:?} is not an RFC 3339 time: {e}",
                printable(s, FIELD_ECHO_MAX)
            )
        })
}

/// Longest value echoed in an error about it.
const FIELD_ECHO_MAX: usize = 128;

/// Most load errors an explanation lists.
pub const MAX_LOAD_ERRORS: usize = 20;

/// The answer of `explain`.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// `allow` or `deny`; `unverified-allow` or `unverified-deny` when the caller came from a
    /// token whose signature could not be checked (its claims were taken as they are).
    pub decision: &'static str,
    /// Some objects did not load ([`Self::load_errors`]): the server keeps the last good form
    /// of an object it already served, so this decision may not be the running server's
    /// (review finding: a broken edit meant to revoke showed DENY while the server kept the
    /// old permit).
    pub partial_load: bool,
    /// What did not load, as `validate` says it (at most [`MAX_LOAD_ERRORS`], then a count).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub load_errors: Vec<String>,
    /// The caller.
    pub principal: PrincipalView,
    /// Whether the principal came from a token whose signature was verified (`None`: not
    /// from a token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_verified: Option<bool>,
    /// The action (Cedar id).
    pub action: String,
    /// The resource as the decision log shows it.
    pub resource: String,
    /// Ids of the determining policies, as the decision log's `policies`.
    pub policies: Vec<String>,
    /// The request context decided in (Cedar's `context.sourceAddress`, `context.time`).
    pub context: ContextView,
    /// Those policies.
    pub determining: Vec<listing::PrintedPolicy>,
    /// What else to know.
    pub notes: Vec<String>,
    /// The status the server answers before any decision, and why (the token refused,
    /// 401: [`authn_refusal`]); the decision above is then what the policies say, which
    /// no request of this principal reaches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
}

/// The request context as shown.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextView {
    /// `context.sourceAddress`, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    /// `context.time`, RFC 3339 UTC.
    pub time: String,
}

impl ContextView {
    fn of(context: &RequestContext) -> Self {
        ContextView {
            source_address: context.source_address.map(|a| a.to_string()),
            time: jiff::Timestamp::from_second(context.time)
                .map_or_else(|_| context.time.to_string(), |t| t.to_string()),
        }
    }
}

/// The caller as shown.
#[derive(Debug, Clone, Serialize)]
pub struct PrincipalView {
    /// Federation.
    pub federation: String,
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// Cedar entity type: `ServiceAccount` or `OidcSubject`.
    #[serde(rename = "type")]
    pub principal_type: String,
    /// Cedar entity id: `<federation>/<namespace>/<name>` (a ServiceAccount),
    /// `<federation>/<subject>` (an OIDC subject).
    pub entity: String,
    /// Pod name, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

/// Who asks, as given on the command line.
#[derive(Debug, Clone)]
pub enum Who {
    /// A ServiceAccount named directly.
    Principal(PrincipalSpec),
    /// A file holding the caller's token.
    Token(std::path::PathBuf),
}

/// Resolves `who` and `target` as the server would, decides in `context` (the server's:
/// the peer's address, now; `RequestContext::now(None)` when neither is given), and
/// explains.
pub fn explain_request(
    snapshot: &Snapshot,
    who: &Who,
    target: &Target,
    context: &RequestContext,
) -> Result<Explanation, PolicyToolError> {
    let mut notes = Vec::new();
    let refusal = match who {
        Who::Principal(spec) => authn_refusal(snapshot, spec),
        Who::Token(_) => None,
    };
    let (identity, verified) = match who {
        Who::Principal(spec) => (identity_of(snapshot, spec, &mut notes)?, None),
        Who::Token(file) => {
            let text = super::read_bounded(file)?;
            let (identity, verified) = identity_of_token(snapshot, &text, &mut notes)?;
            (identity, Some(verified))
        }
    };
    let (action, resource) = resource_of(snapshot, target, &mut notes)?;
    let resolved = Resolved {
        identity,
        action,
        resource,
        notes,
    };
    let mut explanation = explain(snapshot, resolved, verified, context)?;
    explanation.refusal = refusal;
    Ok(explanation)
}

/// Decides `resolved` in `context` with the snapshot's engine, as the server does.
pub fn decide(snapshot: &Snapshot, resolved: &Resolved, context: &RequestContext) -> Decision {
    snapshot.policies.decide_in(
        &resolved.identity,
        resolved.action,
        &resolved.resource,
        context,
    )
}

/// Decides in `context` and explains.
pub fn explain(
    snapshot: &Snapshot,
    resolved: Resolved,
    token_verified: Option<bool>,
    context: &RequestContext,
) -> Result<Explanation, PolicyToolError> {
    let decision = decide(snapshot, &resolved, context);
    let wanted: std::collections::HashSet<&str> =
        decision.policy_ids.iter().map(String::as_str).collect();
    let mut determining = Vec::new();
    if !wanted.is_empty() {
        let listed: Vec<_> = snapshot
            .policies
            .listing()
            .into_iter()
            .filter(|l| wanted.contains(l.id.as_str()))
            .collect();
        determining = listing::print(&listed)?;
    }
    let mut notes = resolved.notes;
    if decision.policy_ids.is_empty() && !decision.allowed {
        notes.insert(
            0,
            "no policy permits this request: denied by default".to_owned(),
        );
    }
    let id = &resolved.identity;
    let mut load_errors: Vec<String> = snapshot
        .errors
        .iter()
        .take(MAX_LOAD_ERRORS)
        .map(ToString::to_string)
        .collect();
    if snapshot.errors.len() > MAX_LOAD_ERRORS {
        load_errors.push(format!(
            "… and {} more",
            snapshot.errors.len() - MAX_LOAD_ERRORS
        ));
    }
    Ok(Explanation {
        decision: match (token_verified, decision.allowed) {
            (Some(false), true) => "unverified-allow",
            (Some(false), false) => "unverified-deny",
            (_, true) => "allow",
            (_, false) => "deny",
        },
        partial_load: !snapshot.errors.is_empty(),
        load_errors,
        principal: PrincipalView {
            federation: id.federation.clone(),
            issuer: id.issuer.clone(),
            subject: id.subject.clone(),
            principal_type: id.kind().as_str().to_owned(),
            entity: id.canonical_id(),
            pod_name: id.service_account().and_then(|sa| sa.pod_name.clone()),
        },
        token_verified,
        action: resolved.action.to_string(),
        resource: resolved.resource.canonical().to_string(),
        policies: decision.policy_ids,
        context: ContextView::of(context),
        determining,
        notes,
        refusal: None,
    })
}

impl Explanation {
    /// Human-readable form: every value from the request, the tokens or the files on one
    /// line, escaped ([`printable`]).
    pub fn text(&self) -> String {
        let one = |s: &str| printable(s, usize::MAX);
        let mut out = String::new();
        if self.partial_load {
            out.push_str(
                "PARTIAL LOAD: objects did not load (listed at the end); the server keeps the last good form of what it already served, so this decision may not be the running server's\n",
            );
        }
        if let Some(r) = &self.refusal {
            out.push_str(&format!(
                "REFUSED: the server answers {} before any decision: {}\n",
                r.status,
                one(&r.reason)
            ));
        }
        out.push_str(&format!(
            "decision: {}{}\nprincipal: {} ({}federation {}, issuer {}{})\naction: {}\nresource: {}\n",
            self.decision.to_uppercase(),
            if self.refusal.is_some() {
                " (what the policies say; no request of this principal reaches them)"
            } else {
                ""
            },
            one(&self.principal.subject),
            if self.principal.principal_type == "ServiceAccount" {
                String::new()
            } else {
                format!("{} of ", self.principal.principal_type)
            },
            one(&self.principal.federation),
            one(&self.principal.issuer),
            self.principal
                .pod_name
                .as_deref()
                .map(|p| format!(", pod {}", one(p)))
                .unwrap_or_default(),
            self.action,
            one(&self.resource),
        ));
        out.push_str(&format!(
            "context: time {}{}\n",
            self.context.time,
            self.context
                .source_address
                .as_deref()
                .map(|a| format!(", sourceAddress {a}"))
                .unwrap_or_else(|| ", no sourceAddress".to_owned())
        ));
        match self.token_verified {
            Some(true) => {
                out.push_str("token: verified offline with the federation's static keys\n")
            }
            Some(false) => out.push_str("token: NOT VERIFIED (claims only)\n"),
            None => {}
        }
        if self.policies.is_empty() {
            out.push_str("determining policies: none\n");
        } else {
            let ids: Vec<String> = self.policies.iter().map(|i| one(i)).collect();
            out.push_str(&format!("determining policies: {}\n", ids.join(", ")));
        }
        for d in &self.determining {
            let origin = d
                .origin
                .as_deref()
                .map(|o| format!(" ({o})"))
                .unwrap_or_default();
            out.push_str(&format!(
                "\n// {}\n{}\n",
                one(&format!("{}{origin}", d.source)),
                d.text.trim_end()
            ));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out.push_str(&format!("note: {}\n", one(n)));
            }
        }
        if !self.load_errors.is_empty() {
            out.push('\n');
            for e in &self.load_errors {
                out.push_str(&format!("did not load: {}\n", one(e)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str, issuer: Option<&str>) -> PrincipalSpec {
        PrincipalSpec {
            path: path.into(),
            issuer: issuer.map(str::to_owned),
            ..Default::default()
        }
    }

    /// Issue 18: `FED/SUBJECT` of an OIDC federation is an OIDC subject, with the claims
    /// its federation hands to policies.
    #[test]
    fn an_oidc_federations_principal_is_an_oidc_subject() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("f.yaml"),
            "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: OIDCFederation\nmetadata: {name: github}\nspec: {issuer: 'https://token.actions.githubusercontent.com', audiences: [esi], claims: [repository]}\n",
        )
        .unwrap();
        let snapshot = crate::policy::load(&crate::policy::Sources {
            manifests: dir.path().to_path_buf(),
            policies: None,
        });
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        let mut notes = Vec::new();
        let mut s = spec("github/repo:org/app:ref:refs/heads/main", None);
        s.claims = [
            ("repository".to_owned(), "org/app".to_owned()),
            ("ref".to_owned(), "refs/heads/main".to_owned()),
        ]
        .into();
        let id = identity_of(&snapshot, &s, &mut notes).unwrap();
        assert_eq!(id.subject, "repo:org/app:ref:refs/heads/main");
        assert_eq!(id.issuer, "https://token.actions.githubusercontent.com");
        assert_eq!(id.canonical_id(), "github/repo:org/app:ref:refs/heads/main");
        assert_eq!(
            id.principal,
            crate::authn::Principal::OidcSubject {
                claims: [("repository".to_owned(), "org/app".to_owned())].into()
            }
        );
        assert!(
            notes
                .iter()
                .any(|n| n.contains("\"ref\" is not in spec.claims")),
            "{notes:?}"
        );
        s.pod_name = Some("p".into());
        assert!(identity_of(&snapshot, &s, &mut notes).is_err());
        // Claims for a ServiceAccount are a mistake, said.
        let mut sa = spec("f/ns/sa", Some("https://i"));
        sa.claims = [("a".to_owned(), "b".to_owned())].into();
        assert!(identity_of(&snapshot, &sa, &mut notes).is_err());
    }

    /// The authenticator's lookalike rule: while a SpiffeFederation serves `example.org`,
    /// an OIDC (or Okta preset) subject that is one of its workloads, or any `spiffe:`
    /// subject that is no workload ID, is refused (401, with the reason) by `test` and
    /// `explain`, whatever the policies say; a workload ID of another trust domain and an
    /// ordinary subject are not, nor is anything while no SpiffeFederation is loaded.
    /// (Before: `explain` said ALLOW without a refusal and `test` took `expect: allow`.)
    #[test]
    fn an_oidc_subject_that_reads_as_a_served_workload_is_refused() {
        use crate::policy::testing::{
            authorization_of, oidc_federation, spiffe_federation, store, tree,
        };
        let okta = "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: OktaFederation\nmetadata: {name: okta}\nspec: {domain: 'https://dev-1.okta.com', audiences: [esi]}\n".to_owned();
        let world = |spire: bool| {
            let mut w = vec![oidc_federation("github"), okta.clone(), store("main")];
            for (name, subject) in [
                ("served", "spiffe://example.org/ns/prod/sa/api"),
                ("other", "spiffe://other.org/ns/prod/sa/api"),
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
        let (_dir, served) = tree(&world(true), &[]);
        let (_dir2, unserved) = tree(&world(false), &[]);
        for t in [&served, &unserved] {
            assert!(t.snapshot.errors.is_empty(), "{:?}", t.snapshot.errors);
        }
        let refused = [
            (
                "github/spiffe://example.org/ns/prod/sa/api",
                "is a workload SPIFFE ID of trust domain example.org, which SpiffeFederation spire serves",
            ),
            (
                "okta/spiffe://example.org/x",
                "a token of OktaFederation okta with this subject is refused",
            ),
            (
                "github/SPIFFE://other.org/x",
                "is not a workload SPIFFE ID (the scheme must be spiffe://)",
            ),
            ("github/spiffe://example.org/x/", "a path segment is empty"),
        ];
        for (path, why) in refused {
            let r = authn_refusal(&served.snapshot, &spec(path, None)).expect(path);
            assert_eq!(r.status, 401, "{path}");
            assert!(r.reason.contains(why), "{path}: {}", r.reason);
            assert!(
                r.reason.ends_with("the server would answer 401"),
                "{}",
                r.reason
            );
            assert_eq!(
                authn_refusal(&unserved.snapshot, &spec(path, None)),
                None,
                "{path}"
            );
        }
        for path in [
            "github/spiffe://other.org/ns/prod/sa/api",
            "github/repo:org/app:ref:refs/heads/main",
            "okta/00u1",
        ] {
            assert_eq!(
                authn_refusal(&served.snapshot, &spec(path, None)),
                None,
                "{path}"
            );
        }
        // `explain` says the refusal beside what the policies say (the Authorization
        // `served` allows the find).
        let find = Target::Find {
            store: "main".into(),
        };
        let context = RequestContext::now(None);
        let explain_of = |t: &super::super::Tree, path: &str| {
            explain_request(
                &t.snapshot,
                &Who::Principal(spec(path, None)),
                &find,
                &context,
            )
            .expect("explained")
        };
        let e = explain_of(&served, "github/spiffe://example.org/ns/prod/sa/api");
        assert_eq!(e.decision, "allow");
        let r = e.refusal.as_ref().expect("refused");
        assert_eq!(r.status, 401);
        let json = serde_json::to_value(&e).expect("json");
        assert_eq!(json["refusal"]["status"], 401, "{json}");
        assert!(
            e.text()
                .starts_with("REFUSED: the server answers 401 before any decision: subject spiffe://example.org/ns/prod/sa/api is a workload SPIFFE ID"),
            "{}",
            e.text()
        );
        for (t, path) in [
            (&unserved, "github/spiffe://example.org/ns/prod/sa/api"),
            (&served, "github/spiffe://other.org/ns/prod/sa/api"),
        ] {
            let e = explain_of(t, path);
            assert_eq!((e.decision, &e.refusal), ("allow", &None), "{path}");
            assert!(
                serde_json::to_value(&e)
                    .expect("json")
                    .get("refusal")
                    .is_none()
            );
            assert!(e.text().starts_with("decision: ALLOW\n"), "{}", e.text());
        }
    }

    /// `FED/SUBJECT`: the federation is everything before the first `/`, the subject
    /// everything after it (`/` and `:` included); a subject longer than token
    /// verification accepts is refused, as no token carries it.
    #[test]
    fn oidc_principals_split_at_the_first_slash_and_are_bounded() {
        let (_dir, tree) =
            crate::policy::testing::tree(&[crate::policy::testing::oidc_federation("github")], &[]);
        let snapshot = &tree.snapshot;
        let mut notes = Vec::new();
        let id = identity_of(snapshot, &spec("github/a/b:c/d", None), &mut notes).expect("ok");
        assert_eq!(
            (id.federation.as_str(), id.subject.as_str()),
            ("github", "a/b:c/d")
        );
        let longest = format!("github/{}", "a".repeat(MAX_CLAIM_VALUE_BYTES));
        assert!(check_principal(snapshot, &spec(&longest, None)).is_ok());
        let over = format!("github/{}", "a".repeat(MAX_CLAIM_VALUE_BYTES + 1));
        for result in [
            check_principal(snapshot, &spec(&over, None)),
            identity_of(snapshot, &spec(&over, None), &mut notes).map(|_| ()),
        ] {
            let err = result.expect_err("too long");
            assert!(err.to_string().contains("longer than 1024 bytes"), "{err}");
        }
        assert!(check_principal(snapshot, &spec("github/", None)).is_err());
    }

    /// `FED/spiffe://TD/PATH` of a SpiffeFederation is the workload the server's
    /// `Identity::of_spiffe_workload` makes (the Kubernetes workload its path names
    /// included); a malformed SPIFFE ID, one of another trust domain, a foreign issuer or
    /// ServiceAccount/OIDC extras are refused clearly.
    #[test]
    fn a_spiffe_federations_principal_is_a_spiffe_workload() {
        use crate::policy::testing::{spiffe_federation, tree};
        let (_dir, tree) = tree(&[spiffe_federation("spire", "example.org")], &[]);
        let snapshot = &tree.snapshot;
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        let mut notes = Vec::new();
        let path = "spire/spiffe://example.org/ns/prod/sa/api";
        check_principal(snapshot, &spec(path, None)).expect("a workload");
        let id = identity_of(snapshot, &spec(path, None), &mut notes).expect("a workload");
        assert_eq!(
            Some(id.clone()),
            Identity::of_spiffe_workload("spire", "spiffe://example.org/ns/prod/sa/api")
        );
        assert_eq!(id.kind(), crate::authn::PrincipalKind::SpiffeWorkload);
        assert_eq!(id.issuer, "spiffe://example.org");
        assert_eq!(
            id.principal.workload().map(|sa| sa.name.as_str()),
            Some("api")
        );
        assert!(notes.is_empty(), "{notes:?}");
        let same_issuer = spec(path, Some("spiffe://example.org"));
        assert!(identity_of(snapshot, &same_issuer, &mut notes).is_ok());
        for (bad, why) in [
            (
                "spire/spiffe://example.net/ns/prod/sa/api",
                "not example.org",
            ),
            ("spire/spiffe://Example.org/x", "not a workload SPIFFE ID"),
            ("spire/spiffe://example.org", "not a workload SPIFFE ID"),
            (
                "spire/spiffe://example.org/a//b",
                "not a workload SPIFFE ID",
            ),
            ("spire/https://example.org/x", "not a workload SPIFFE ID"),
            ("spire/ns/sa", "not a workload SPIFFE ID"),
            ("spire/", "FEDERATION/spiffe://TRUST-DOMAIN/PATH"),
        ] {
            for result in [
                check_principal(snapshot, &spec(bad, None)),
                identity_of(snapshot, &spec(bad, None), &mut notes).map(|_| ()),
            ] {
                let err = result.expect_err(bad);
                assert!(err.to_string().contains(why), "{bad}: {err}");
            }
        }
        let other_issuer = spec(path, Some("https://example.org"));
        assert!(identity_of(snapshot, &other_issuer, &mut notes).is_err());
        let mut with_claims = spec(path, None);
        with_claims.claims = [("a".to_owned(), "b".to_owned())].into();
        assert!(identity_of(snapshot, &with_claims, &mut notes).is_err());
        let mut with_pod = spec(path, None);
        with_pod.pod_name = Some("p".into());
        assert!(identity_of(snapshot, &with_pod, &mut notes).is_err());
    }

    #[test]
    fn a_principal_is_the_identity_token_verification_would_give() {
        let snapshot = Snapshot::empty();
        let mut notes = Vec::new();
        // No federation: only with an explicit issuer, and said.
        assert!(identity_of(&snapshot, &spec("f/ns/sa", None), &mut notes).is_err());
        let id = identity_of(&snapshot, &spec("f/ns/sa", Some("https://i")), &mut notes)
            .expect("identity");
        assert_eq!(id.subject, "system:serviceaccount:ns:sa");
        assert_eq!(
            (
                id.federation.as_str(),
                id.service_account().unwrap().namespace.as_str()
            ),
            ("f", "ns")
        );
        assert!(notes[0].contains("no KubernetesFederation f"), "{notes:?}");
        for bad in ["f/ns", "f//sa", "", "/ns/sa"] {
            assert!(
                identity_of(&snapshot, &spec(bad, Some("i")), &mut notes).is_err(),
                "{bad}"
            );
        }
        let long = format!("f/ns/{}", "a".repeat(FIELD_MAX));
        assert!(identity_of(&snapshot, &spec(&long, Some("i")), &mut notes).is_err());
    }

    /// Review finding 10 (issue 13): a principal with `:` or an extra `/`, or a part
    /// Kubernetes would not accept as a name, is refused: no token carries it.
    #[test]
    fn principals_no_token_can_carry_are_refused() {
        let (_dir, tree) = crate::policy::testing::tree(&crate::policy::testing::app_world(), &[]);
        let snapshot = &tree.snapshot;
        let mut notes = Vec::new();
        for (bad, says) in [
            ("alpha/apps/app/extra", "three parts"),
            (
                "alpha/apps:x/app",
                "namespace \"apps:x\" is not a Kubernetes namespace name",
            ),
            ("alpha/apps/app:x", "ServiceAccount \"app:x\" is not"),
            ("alpha/Apps/app", "namespace \"Apps\""),
            ("alpha/apps/a_b", "ServiceAccount \"a_b\""),
            ("alpha/a.b/app", "namespace \"a.b\""),
            ("alpha/apps", "three parts"),
        ] {
            for given in [spec(bad, None), spec(bad, Some("https://alpha.example"))] {
                let err = identity_of(snapshot, &given, &mut notes).expect_err(bad);
                assert!(err.to_string().contains(says), "{bad}: {err}");
                let err = check_principal(snapshot, &given).expect_err(bad);
                assert!(err.to_string().contains(says), "{bad}: {err}");
            }
        }
        // A federation that is not loaded: its name must still be one.
        assert!(check_principal(snapshot, &spec("nowhere/ns/sa", None)).is_ok());
        assert!(check_principal(snapshot, &spec("no:where/ns/sa", None)).is_err());
        assert!(check_principal(snapshot, &spec("alpha/apps/app", None)).is_ok());
        assert!(check_principal(snapshot, &spec("alpha/apps/a.b-c", None)).is_ok());
        let id = identity_of(snapshot, &spec("alpha/apps/a.b-c", None), &mut notes).expect("ok");
        assert_eq!(id.subject, "system:serviceaccount:apps:a.b-c");
    }

    #[test]
    fn resources_take_the_canonical_form_the_api_decides() {
        let snapshot = Snapshot::empty();
        let mut notes = Vec::new();
        let target = Target::Generator {
            action: Action::Generate,
            path: "team/ClusterGenerator/root".into(),
        };
        let (action, resource) = resource_of(&snapshot, &target, &mut notes).expect("resource");
        assert_eq!(action, Action::Generate);
        assert_eq!(
            resource.to_string(),
            "generator:<cluster>/ClusterGenerator/root"
        );
        assert!(notes.iter().any(|n| n.contains("404")), "{notes:?}");
        let wrong = Target::Generator {
            action: Action::Get,
            path: "a/b/c".into(),
        };
        assert!(resource_of(&snapshot, &wrong, &mut notes).is_err());
        let key = Target::Key {
            store: "s".into(),
            key: "k".into(),
            property: None,
            version: None,
        };
        let (action, resource) = resource_of(&snapshot, &key, &mut notes).expect("resource");
        assert_eq!(
            (action, resource.to_string()),
            (Action::Get, "key:s/k".into())
        );
    }
}
