//! `esi-server policy lint`: what the policies allow that is probably not meant, and what
//! they can never allow.
//!
//! | rule | how | finding |
//! |---|---|---|
//! | `invalid` | [`super::validate`] | every error `validate` reports (the rest of lint runs on what loaded) |
//! | `broad-subject` | structural, exact ([`names::matches_every_service_account`], [`names::matches_every_subject`]) | an Authorization whose subject glob matches every ServiceAccount (every subject, for an OIDC federation) of its federation |
//! | `broad-subject` | evaluated | a hand-written permit that grants something to `FED/*/*` (any ServiceAccount of a federation) or `FED/*` (any subject of an OIDC federation) |
//! | `refused-subject` | structural ([`super::explain::lookalike`], the authenticator's rule) | an Authorization of an OIDC federation whose subject (or every subject its glob matches) the server refuses while a `SpiffeFederation` is loaded: one that could be read as a served trust domain's workload |
//! | `unrestricted-store` | structural | an Authorization granting every key of a store that another Authorization restricts by key |
//! | `shadowed-permit` | evaluated | a permit every evaluated request it satisfies is denied by a forbid |
//! | `unused-federation` | structural | a federation (of any kind) no Authorization and no `.cedar` policy names |
//! | `unreadable-store` | evaluated | a ClusterSecretStore no evaluated principal may `get` any key of, or `find` on |
//!
//! Evaluated rules decide the relevant requests ([`super::requests`]) with the tree's engine
//! (and, for `shadowed-permit`, [`crate::authz::PermitView`], which tells the permits a
//! request satisfies whatever the forbids say). They are only as good as the enumeration: a
//! permit satisfied only by a request it does not contain (a key, a principal or a pod name
//! no manifest or policy names) may be reported shadowed, and a store readable only by such
//! a principal reported unreadable. A permit *not* reported shadowed is shown to allow at
//! least one request.
//!
//! Every finding names its object and points at a file and line, as `validate` does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde::Serialize;

use super::names;
use super::requests::{Column, Outcome, Probe, Universe};
use super::validate::{self, FileCache, Problem, Severity};
use super::{Sources, Tree, listing, render};
use crate::authn::PrincipalKind;
use crate::authz::PolicySource;
use crate::source::dir::DirectoryScanner;
use crate::source::{SourceEvent, SourceObject};
use crate::support::text::printable;

/// Examples quoted in one finding.
const EXAMPLES: usize = 3;

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The rule (`invalid`, `broad-subject`, …).
    pub rule: &'static str,
    /// What, where.
    #[serde(flatten)]
    pub problem: Problem,
}

/// How many requests the evaluated rules decided.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Evaluated {
    /// Principals enumerated.
    pub principals: usize,
    /// Resources (with their actions) enumerated.
    pub probes: usize,
    /// Requests decided.
    pub requests: usize,
    /// Requests there were; more than `requests` when the bound cut some.
    pub total: usize,
}

/// Every finding of one tree.
#[derive(Debug, Clone, Serialize)]
pub struct LintReport {
    /// Errors first, then warnings by rule.
    pub findings: Vec<Finding>,
    /// What the evaluated rules decided.
    pub evaluated: Evaluated,
}

impl LintReport {
    /// Findings of severity error.
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.problem.severity == Severity::Error)
            .count()
    }

    /// Findings of severity warning.
    pub fn warnings(&self) -> usize {
        self.findings.len() - self.errors()
    }

    /// Every finding with its source line, then a summary line.
    pub fn render(&self) -> String {
        let mut files = FileCache::default();
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&validate::render_problem(
                &mut files,
                &f.problem,
                Some(f.rule),
            ));
        }
        let e = &self.evaluated;
        out.push_str(&format!(
            "{} errors, {} warnings ({} requests evaluated: {} principals × {} resources{})\n",
            self.errors(),
            self.warnings(),
            e.requests,
            e.principals,
            e.probes,
            if e.requests < e.total {
                format!(
                    "; {} more not evaluated, see --max-requests",
                    e.total - e.requests
                )
            } else {
                String::new()
            }
        ));
        out
    }
}

/// Lints `tree`, evaluating at most `max_requests` requests.
pub fn lint(tree: &Tree, max_requests: usize) -> LintReport {
    let mut files = FileCache::default();
    let mut findings: Vec<Finding> = validate::report(&tree.snapshot)
        .problems
        .into_iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|problem| Finding {
            rule: "invalid",
            problem,
        })
        .collect();
    let universe = Universe::of(&[tree], max_requests);
    let outcomes = universe.evaluate(tree);
    let origins = origins(&tree.sources);

    broad_subjects(tree, &universe, &outcomes, &mut files, &mut findings);
    refused_subjects(tree, &mut files, &mut findings);
    unrestricted_stores(tree, &mut files, &mut findings);
    shadowed_permits(tree, &universe, &outcomes, &mut files, &mut findings);
    unused_federations(tree, &origins, &mut files, &mut findings);
    unreadable_stores(
        tree,
        &universe,
        &outcomes,
        &origins,
        &mut files,
        &mut findings,
    );

    LintReport {
        findings,
        evaluated: Evaluated {
            principals: universe.principals.len(),
            probes: universe.probes.len(),
            requests: universe.requests.len(),
            total: universe.total,
        },
    }
}

fn warn(rule: &'static str, problem: Problem) -> Finding {
    Finding { rule, problem }
}

/// Where each manifest object was read: `(kind, name)` → origin, scanned with the loader's
/// own scanner (the snapshot keeps no origin for stores and federations).
fn origins(sources: &Sources) -> HashMap<(String, String), String> {
    let mut found = HashMap::new();
    let mut scanner = DirectoryScanner::new(sources.manifests.clone(), None);
    scanner.scan(&mut |event| {
        if let SourceEvent::InitApply(_, SourceObject::Manifest(obj))
        | SourceEvent::Apply(_, SourceObject::Manifest(obj)) = event
        {
            found
                .entry((obj.kind.clone(), obj.metadata.name.clone()))
                .or_insert(obj.origin.clone());
        }
    });
    found
}

/// A problem about a manifest object; unlocated when its origin is unknown.
fn manifest_problem(
    files: &mut FileCache,
    origin: Option<&String>,
    object: String,
    message: String,
) -> Problem {
    match origin {
        Some(origin) => {
            validate::object_problem(files, Severity::Warning, origin, &object, None, message)
        }
        None => Problem {
            severity: Severity::Warning,
            file: String::new(),
            origin: "(unknown)".to_owned(),
            object: Some(object),
            message,
            span: None,
        },
    }
}

/// A problem about policy `id`: at its Authorization's field for a compiled one, at the
/// policy in its file for a hand-written one.
fn policy_problem(tree: &Tree, files: &mut FileCache, id: &str, message: String) -> Problem {
    let source = tree.listing.iter().find(|l| l.id == id).map(|l| &l.source);
    match source {
        Some(PolicySource::Authorization {
            name,
            origin: Some(origin),
        }) => {
            let field = match id.rsplit('/').next() {
                Some("stores") => "allowedClusterSecretStores",
                Some("remote-keys") => "allowedRemoteKeys",
                Some("generators") => "allowedGenerators",
                _ => "allowedGeneratorStates",
            };
            validate::object_problem(
                files,
                Severity::Warning,
                origin,
                &format!("Authorization/{name}"),
                Some((None, field)),
                format!("policy {id}: {message}"),
            )
        }
        Some(PolicySource::File { path }) => {
            let stem = Path::new(path)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let span = files
                .text(path)
                .and_then(|text| policy_span(text, id, &stem));
            Problem {
                severity: Severity::Warning,
                file: path.clone(),
                origin: path.clone(),
                object: Some(format!("policy {id}")),
                message,
                span,
            }
        }
        _ => Problem {
            severity: Severity::Warning,
            file: String::new(),
            origin: "(unknown)".to_owned(),
            object: Some(format!("policy {id}")),
            message,
            span: None,
        },
    }
}

/// Where policy `id` begins in a `.cedar` file's text (read as the engine reads it: `@id`,
/// else `<stem>/<index>`).
fn policy_span(text: &str, id: &str, stem: &str) -> Option<render::Span> {
    let policies = listing::ids_in_text(text, stem).ok()?;
    let mut from = 0;
    for (pid, policy) in policies {
        // A parsed policy prints its own source text.
        let source = policy.to_string();
        let at = from + text.get(from..)?.find(source.trim())?;
        if pid == id {
            let (line, column) = crate::authz::line_column(text, at);
            return Some(render::span_at(text, line, column));
        }
        from = at + source.trim().len();
    }
    None
}

/// Short description of what some requests ask: `get vault-prod:db/*, find vault-prod`.
fn examples<'a>(universe: &Universe, requests: impl Iterator<Item = &'a usize>) -> String {
    let mut shown: Vec<String> = Vec::new();
    let mut more = 0;
    for &i in requests {
        let r = &universe.requests[i];
        let text = format!("{} {}", r.action, universe.probes[r.probe].label());
        if shown.contains(&text) {
            continue;
        }
        if shown.len() < EXAMPLES {
            shown.push(text);
        } else {
            more += 1;
        }
    }
    let mut out = shown.join(", ");
    if more > 0 {
        out.push_str(&format!(" and {more} more"));
    }
    out
}

fn broad_subjects(
    tree: &Tree,
    universe: &Universe,
    outcomes: &[Outcome],
    files: &mut FileCache,
    out: &mut Vec<Finding>,
) {
    for a in &tree.authorizations {
        let Some((_, subject)) = a.subject() else {
            continue;
        };
        let fed = &a.spec().federation_ref.name;
        let message = match a.principal_kind() {
            PrincipalKind::ServiceAccount if names::matches_every_service_account(subject) => {
                format!(
                    "subject {subject:?} matches every ServiceAccount of every namespace of KubernetesFederation {fed}: any workload of that cluster gets what this Authorization grants (name the namespace: system:serviceaccount:NAMESPACE:*)"
                )
            }
            PrincipalKind::OidcSubject if names::matches_every_subject(subject) => format!(
                "subject {subject:?} matches every subject of {} {fed}: any token that federation accepts gets what this Authorization grants (name the subject, or narrow the glob, e.g. repo:ORG/REPO:*)",
                a.spec().federation_ref.kind
            ),
            PrincipalKind::SpiffeWorkload if names::matches_every_workload(subject) => format!(
                "subject {subject:?} matches every workload of the trust domain of SpiffeFederation {fed}: any JWT-SVID that federation accepts gets what this Authorization grants (name the workload, or narrow the glob, e.g. spiffe://TRUST-DOMAIN/ns/NAMESPACE/*)"
            ),
            _ => continue,
        };
        let problem = validate::object_problem(
            files,
            Severity::Warning,
            a.origin(),
            &format!("Authorization/{}", a.name()),
            Some((Some("subject"), subject)),
            message,
        );
        out.push(warn("broad-subject", problem));
    }
    // Hand-written permits that grant something to any caller of a federation (its
    // `FED/*/*`, `FED/*` or `FED/spiffe://TD/*`).
    type Feds<'a> = BTreeSet<(PrincipalKind, &'a str)>;
    let mut by_policy: BTreeMap<&str, (Feds, Vec<usize>)> = BTreeMap::new();
    // Each federation's "any other" principal, as evaluated.
    let mut any_label: BTreeMap<&str, String> = BTreeMap::new();
    for (i, (r, o)) in universe.requests.iter().zip(outcomes).enumerate() {
        let p = &universe.principals[r.principal];
        if !o.decided || !p.is_any() {
            continue;
        }
        any_label
            .entry(p.federation.as_str())
            .or_insert_with(|| p.label());
        for id in &o.policies {
            let hand_written = tree
                .listing
                .iter()
                .any(|l| &l.id == id && matches!(l.source, PolicySource::File { .. }));
            if hand_written {
                let entry = by_policy.entry(id).or_default();
                entry.0.insert((p.kind(), &p.federation));
                entry.1.push(i);
            }
        }
    }
    for (id, (feds, requests)) in by_policy {
        let mut whom = Vec::new();
        for (kind, what) in [
            (
                PrincipalKind::ServiceAccount,
                "any ServiceAccount of KubernetesFederation",
            ),
            (PrincipalKind::OidcSubject, "any subject of OIDC federation"),
            (
                PrincipalKind::SpiffeWorkload,
                "any workload of SpiffeFederation",
            ),
        ] {
            let of_kind: Vec<&str> = feds
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, f)| *f)
                .collect();
            if let Some(first) = of_kind.first() {
                whom.push(format!(
                    "{what} {} (evaluated as {})",
                    printable(&of_kind.join(", "), usize::MAX),
                    any_label.get(first).cloned().unwrap_or_default()
                ));
            }
        }
        let message = format!(
            "permits {}: {}",
            whom.join(" and "),
            examples(universe, requests.iter())
        );
        out.push(warn(
            "broad-subject",
            policy_problem(tree, files, id, message),
        ));
    }
}

/// Authorizations of a loaded OIDC federation whose subject only the server's lookalike
/// rule refuses (a served trust domain's workload named as an OIDC subject, a `spiffe:`
/// subject that is no workload ID, or a glob every match of which is one of those): they
/// grant nothing.
fn refused_subjects(tree: &Tree, files: &mut FileCache, out: &mut Vec<Finding>) {
    for a in &tree.authorizations {
        let Some((_, subject)) = a.subject() else {
            continue;
        };
        if a.principal_kind() != PrincipalKind::OidcSubject {
            continue;
        }
        let fed_ref = &a.spec().federation_ref;
        let Some(fed) = tree.snapshot.federations.iter().find(|f| {
            f.name() == fed_ref.name && f.kind().principal_kind() == PrincipalKind::OidcSubject
        }) else {
            continue;
        };
        let glob = subject.contains('*');
        let Some(why) = super::explain::lookalike(&tree.snapshot, fed, subject, glob) else {
            continue;
        };
        let problem = validate::object_problem(
            files,
            Severity::Warning,
            a.origin(),
            &format!("Authorization/{}", a.name()),
            Some((Some("subject"), subject)),
            format!(
                "{why}: this Authorization grants nothing (a SpiffeFederation's workload is granted by an Authorization of that federation, subject: {{spiffe: {{spiffeID: …}}}})"
            ),
        );
        out.push(warn("refused-subject", problem));
    }
}

fn unrestricted_stores(tree: &Tree, files: &mut FileCache, out: &mut Vec<Finding>) {
    // store → (Authorization, its globs) for those restricting it.
    let mut restricted: BTreeMap<&str, Vec<(&str, &Vec<String>)>> = BTreeMap::new();
    for a in &tree.authorizations {
        for (store, globs) in &a.spec().allowed_remote_keys {
            restricted.entry(store).or_default().push((a.name(), globs));
        }
    }
    for a in &tree.authorizations {
        let spec = a.spec();
        let open = spec
            .allowed_cluster_secret_stores
            .iter()
            .filter(|s| !spec.allowed_remote_keys.contains_key(*s));
        for store in open {
            let Some(others) = restricted.get(store.as_str()) else {
                continue;
            };
            let others: Vec<String> = others
                .iter()
                .filter(|(name, _)| *name != a.name())
                .map(|(name, globs)| format!("Authorization/{name} to {}", globs.join(", ")))
                .collect();
            if others.is_empty() {
                continue;
            }
            let problem = validate::object_problem(
                files,
                Severity::Warning,
                a.origin(),
                &format!("Authorization/{}", a.name()),
                Some((Some("allowedClusterSecretStores"), store)),
                format!(
                    "grants every key of ClusterSecretStore {store} (and find on it), which others restrict by key ({}); add allowedRemoteKeys.{store} if this one should be restricted too",
                    others.join("; ")
                ),
            );
            out.push(warn("unrestricted-store", problem));
        }
    }
}

fn shadowed_permits(
    tree: &Tree,
    universe: &Universe,
    outcomes: &[Outcome],
    files: &mut FileCache,
    out: &mut Vec<Finding>,
) {
    #[derive(Default)]
    struct Seen<'a> {
        satisfied: usize,
        allowed: usize,
        forbids: BTreeSet<&'a str>,
        requests: Vec<usize>,
    }
    let view = tree.snapshot.policies.permit_view();
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    for (i, (r, o)) in universe.requests.iter().zip(outcomes).enumerate() {
        let resolved = universe.resolve(tree, r);
        for id in view.satisfied(&resolved.identity, r.action, &resolved.resource) {
            let s = seen.entry(id).or_default();
            s.satisfied += 1;
            if o.decided {
                s.allowed += 1;
            } else {
                s.forbids.extend(o.policies.iter().map(String::as_str));
                if s.requests.len() < EXAMPLES {
                    s.requests.push(i);
                }
            }
        }
    }
    for (id, s) in seen {
        if s.satisfied == 0 || s.allowed > 0 {
            continue;
        }
        let forbids: Vec<&str> = s.forbids.into_iter().collect();
        let message = format!(
            "every one of the {} evaluated requests it permits is denied by {} (e.g. {}): it grants nothing those forbids leave",
            s.satisfied,
            forbids.join(", "),
            examples(universe, s.requests.iter())
        );
        out.push(warn(
            "shadowed-permit",
            policy_problem(tree, files, &id, message),
        ));
    }
}

fn unused_federations(
    tree: &Tree,
    origins: &HashMap<(String, String), String>,
    files: &mut FileCache,
    out: &mut Vec<Finding>,
) {
    let mut named: BTreeSet<String> = tree
        .authorizations
        .iter()
        .map(|a| a.spec().federation_ref.name.clone())
        .collect();
    for l in &tree.listing {
        if matches!(l.source, PolicySource::File { .. }) {
            named.extend(names::federations_named_by(&l.policy));
        }
    }
    let mut feds: Vec<(&str, &str)> = tree
        .snapshot
        .federations
        .iter()
        .map(|f| (f.name(), f.kind().as_str()))
        .collect();
    feds.sort_unstable();
    for (fed, kind) in feds {
        if named.contains(fed) {
            continue;
        }
        let origin = origins.get(&(kind.to_owned(), fed.to_owned()));
        let problem = manifest_problem(
            files,
            origin,
            format!("{kind}/{fed}"),
            "no Authorization and no .cedar policy names this federation: its tokens are verified and then denied everything (remove it, or grant something)".to_owned(),
        );
        out.push(warn("unused-federation", problem));
    }
}

fn unreadable_stores(
    tree: &Tree,
    universe: &Universe,
    outcomes: &[Outcome],
    origins: &HashMap<(String, String), String>,
    files: &mut FileCache,
    out: &mut Vec<Finding>,
) {
    let mut readable: HashMap<&str, bool> = tree
        .snapshot
        .stores
        .keys()
        .map(|s| (s.as_str(), false))
        .collect();
    let mut evaluated: HashMap<&str, usize> = HashMap::new();
    for (r, o) in universe.requests.iter().zip(outcomes) {
        let (Probe::Key { store, .. } | Probe::Find { store }) = &universe.probes[r.probe] else {
            continue;
        };
        *evaluated.entry(store).or_default() += 1;
        if o.allowed
            && let Some(seen) = readable.get_mut(store.as_str())
        {
            *seen = true;
        }
    }
    let mut unreadable: Vec<&str> = readable
        .into_iter()
        .filter(|(_, r)| !r)
        .map(|(s, _)| s)
        .collect();
    unreadable.sort_unstable();
    for store in unreadable {
        let n = evaluated.get(store).copied().unwrap_or(0);
        let column = Column::Store {
            store: store.to_owned(),
        };
        let keys = universe
            .probes
            .iter()
            .filter(|p| p.column() == column && matches!(p, Probe::Key { .. }))
            .count();
        let origin = origins.get(&("ClusterSecretStore".to_owned(), store.to_owned()));
        let problem = manifest_problem(
            files,
            origin,
            format!("ClusterSecretStore/{store}"),
            format!(
                "no principal may read it: none of its {n} evaluated requests (by {} principals: get of {keys} keys or key patterns, and find) is allowed",
                universe.principals.len()
            ),
        );
        out.push(warn("unreadable-store", problem));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{app_world, authorization, federation, store, tree};

    const FORBID_ADMIN: &str = "@id(\"no-admin\")\nforbid (principal, action == Esi::Action::\"get\", resource is Esi::RemoteKey)\nwhen { resource.store == \"main\" && resource.key like \"admin/*\" };\n";

    fn rules(report: &LintReport) -> Vec<(&'static str, String)> {
        report
            .findings
            .iter()
            .map(|f| (f.rule, f.problem.object.clone().unwrap_or_default()))
            .collect()
    }

    /// One world, one finding per rule, each on the object it is about.
    #[test]
    fn each_rule_finds_its_case() {
        let (_dir, tree) = tree(
            &[
                federation("alpha"),
                federation("idle"),
                store("main"),
                store("restricted"),
                store("orphan"),
                authorization(
                    "app",
                    "system:serviceaccount:apps:app",
                    "  allowedClusterSecretStores: [main, restricted]\n",
                ),
                authorization(
                    "team",
                    "system:serviceaccount:team:*",
                    "  allowedClusterSecretStores: [restricted]\n  allowedRemoteKeys: {restricted: [db/*]}\n",
                ),
                authorization(
                    "everyone",
                    "system:serviceaccount:*",
                    "  allowedClusterSecretStores: [main]\n",
                ),
                authorization(
                    "admins",
                    "system:serviceaccount:ops:admin",
                    "  allowedClusterSecretStores: [main]\n  allowedRemoteKeys: {main: [admin/*]}\n",
                ),
            ],
            &[
                ("forbid.cedar", FORBID_ADMIN),
                (
                    "wide.cedar",
                    "permit (principal in Esi::Federation::\"alpha\", action == Esi::Action::\"find\", resource == Esi::Store::\"restricted\");\n",
                ),
            ],
        );
        assert!(
            tree.snapshot.errors.is_empty(),
            "{:?}",
            tree.snapshot.errors
        );
        let report = lint(&tree, 100_000);
        let found = rules(&report);
        let expected: Vec<(&str, String)> = vec![
            ("broad-subject", "Authorization/everyone".into()),
            ("broad-subject", "policy wide/0".into()),
            // `admins` restricts `main` (to admin/*), `team` restricts `restricted`.
            ("unrestricted-store", "Authorization/app".into()),
            ("unrestricted-store", "Authorization/app".into()),
            ("unrestricted-store", "Authorization/everyone".into()),
            ("shadowed-permit", "Authorization/admins".into()),
            ("unused-federation", "KubernetesFederation/idle".into()),
            ("unreadable-store", "ClusterSecretStore/orphan".into()),
        ];
        assert_eq!(found, expected, "{}", report.render());
        assert_eq!((report.errors(), report.warnings()), (0, 8));
        // Each is located: the Authorization's field, the policy in its file, the object.
        let world =
            std::fs::read_to_string(tree.sources.manifests.join("world.yaml")).expect("world");
        let line_of = |needle: &str| {
            world
                .lines()
                .position(|l| l.contains(needle))
                .map(|i| i + 1)
                .expect(needle)
        };
        let spans: Vec<Option<usize>> = report
            .findings
            .iter()
            .map(|f| f.problem.span.as_ref().map(|s| s.line))
            .collect();
        assert_eq!(spans[0], Some(line_of("\"system:serviceaccount:*\"")));
        assert_eq!(spans[1], Some(1));
        assert!(report.findings[1].problem.file.ends_with("wide.cedar"));
        let app_stores = line_of("allowedClusterSecretStores: [main, restricted]");
        assert_eq!((spans[2], spans[3]), (Some(app_stores), Some(app_stores)));
        // The store's own name on that line: `restricted`, not the `main` before it.
        let columns: Vec<usize> = report.findings[2..4]
            .iter()
            .filter_map(|f| f.problem.span.as_ref().map(|s| s.column))
            .collect();
        assert_eq!(columns, [32, 38]);
        assert!(
            report.findings[3]
                .problem
                .message
                .contains("Authorization/team to db/*")
        );
        assert_eq!(
            spans[5],
            Some(line_of("allowedRemoteKeys: {main: [admin/*]}"))
        );
        assert_eq!(spans[6], Some(line_of("name: idle")));
        assert_eq!(spans[7], Some(line_of("name: orphan")));
        assert!(
            report.findings[5].problem.message.contains("no-admin"),
            "{}",
            report.findings[5].problem.message
        );
        let rendered = report.render();
        assert!(rendered.contains("warning[shadowed-permit]: Authorization/admins: policy authorization/admins/remote-keys"), "{rendered}");
        assert!(rendered.contains("0 errors, 8 warnings"), "{rendered}");
    }

    /// A permit that still allows one request is not shadowed; a clean world has no
    /// finding.
    #[test]
    fn a_clean_world_has_no_findings() {
        let (_dir, tree) = tree(&app_world(), &[("forbid.cedar", FORBID_ADMIN)]);
        let report = lint(&tree, 100_000);
        assert!(report.findings.is_empty(), "{}", report.render());
        assert!(report.evaluated.requests > 0);
        // A bound below the requests there are is reported.
        let cut = lint(&tree, 3);
        assert_eq!(cut.evaluated.requests, 3);
        assert!(
            cut.render().contains("more not evaluated"),
            "{}",
            cut.render()
        );
    }

    #[test]
    fn policies_are_located_by_id_or_place() {
        let text = "// c\n@id(\"a\")\npermit (principal, action, resource);\n\n  forbid (principal, action, resource);\n";
        assert_eq!(policy_span(text, "a", "f").map(|s| s.line), Some(2));
        let second = policy_span(text, "f/1", "f").expect("found");
        assert_eq!((second.line, second.column), (5, 3));
        assert_eq!(policy_span(text, "nope", "f"), None);
    }
    /// Issue 13: the rules about subjects and federations apply to OIDC federations: a
    /// subject `*` matches every subject of the federation (a ServiceAccount-shaped glob
    /// does not: it is an OIDC subject pattern like any other), a hand-written permit for
    /// `FED/*` is broad, and an unused OIDC federation is named by its kind, at its line.
    #[test]
    fn subject_rules_apply_to_oidc_federations() {
        use crate::policy::testing::{authorization_of, oidc_federation};
        let oidc = |name: &str, subject: &str, keys: &str| {
            authorization_of(
                name,
                "OIDCFederation",
                "github",
                subject,
                &format!(
                    "  allowedClusterSecretStores: [main]\n  allowedRemoteKeys: {{main: [{keys}]}}\n"
                ),
            )
        };
        let (_dir, tree) = tree(
            &[
                oidc_federation("github"),
                oidc_federation("idle-ci"),
                store("main"),
                oidc("all-ci", "*", "ci/*"),
                oidc("sa-shaped", "system:serviceaccount:*", "x/*"),
            ],
            &[(
                "wide.cedar",
                "permit (principal is Esi::OidcSubject in Esi::Federation::\"github\", action == Esi::Action::\"find\", resource == Esi::Store::\"main\");\n",
            )],
        );
        assert!(
            tree.snapshot.errors.is_empty(),
            "{:?}",
            tree.snapshot.errors
        );
        let report = lint(&tree, 100_000);
        let expected: Vec<(&str, String)> = vec![
            ("broad-subject", "Authorization/all-ci".into()),
            ("broad-subject", "policy wide/0".into()),
            ("unused-federation", "OIDCFederation/idle-ci".into()),
        ];
        assert_eq!(rules(&report), expected, "{}", report.render());
        let messages: Vec<&str> = report
            .findings
            .iter()
            .map(|f| f.problem.message.as_str())
            .collect();
        assert!(
            messages[0].contains("matches every subject of OIDCFederation github"),
            "{}",
            messages[0]
        );
        assert!(
            messages[1].contains(
                "permits any subject of OIDC federation github (evaluated as github/*): find main"
            ),
            "{}",
            messages[1]
        );
        let world =
            std::fs::read_to_string(tree.sources.manifests.join("world.yaml")).expect("world");
        let idle = world
            .lines()
            .position(|l| l.contains("name: idle-ci"))
            .map(|i| i + 1);
        assert_eq!(
            report.findings[2].problem.span.as_ref().map(|s| s.line),
            idle
        );
    }

    /// `refused-subject`: while SpiffeFederation `spire` serves `example.org`, an OIDC
    /// Authorization for one of its workloads, for a `spiffe:` subject that is no workload
    /// ID, or for a glob every match of which is one of those grants nothing, said at its
    /// subject; another trust domain's ID and a glob that also matches accepted subjects
    /// are not reported, nor is anything without `spire`.
    #[test]
    fn oidc_subjects_the_server_refuses_are_reported() {
        use crate::policy::testing::{authorization_of, oidc_federation, spiffe_federation};
        let world = |spire: bool| {
            let mut w = vec![oidc_federation("github"), store("main")];
            for (name, subject) in [
                ("served", "spiffe://example.org/ns/prod/sa/api"),
                ("upper", "SPIFFE://other.org/x"),
                ("served-glob", "spiffe://example.org/ns/*"),
                ("other", "spiffe://other.org/ns/prod/sa/api"),
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
                // Named, so that it is not an unused federation.
                w.push(crate::policy::testing::spiffe_authorization(
                    "mesh",
                    "spire",
                    "spiffe://example.org/ns/prod/sa/api",
                    "  allowedClusterSecretStores: [main]\n",
                ));
            }
            w
        };
        let (_dir, served) = tree(&world(true), &[]);
        assert!(
            served.snapshot.errors.is_empty(),
            "{:?}",
            served.snapshot.errors
        );
        let report = lint(&served, 100_000);
        let refused: Vec<(&str, String)> = rules(&report)
            .into_iter()
            .filter(|(rule, _)| *rule == "refused-subject")
            .collect();
        let expected: Vec<(&str, String)> = ["served", "served-glob", "upper"]
            .iter()
            .map(|n| ("refused-subject", format!("Authorization/{n}")))
            .collect();
        assert_eq!(refused, expected, "{}", report.render());
        let first = &report
            .findings
            .iter()
            .find(|f| f.rule == "refused-subject")
            .expect("finding")
            .problem;
        assert!(
            first
                .message
                .contains("which SpiffeFederation spire serves")
                && first.message.contains("this Authorization grants nothing"),
            "{}",
            first.message
        );
        let world_text =
            std::fs::read_to_string(served.sources.manifests.join("world.yaml")).expect("world");
        let line = world_text
            .lines()
            .position(|l| l.contains("subject: \"spiffe://example.org/ns/prod/sa/api\""))
            .map(|i| i + 1);
        assert_eq!(first.span.as_ref().map(|s| s.line), line);
        let (_dir2, unserved) = tree(&world(false), &[]);
        let report = lint(&unserved, 100_000);
        assert!(
            !report.findings.iter().any(|f| f.rule == "refused-subject"),
            "{}",
            report.render()
        );
    }

    /// The rules about subjects apply to SpiffeFederations: a `spiffeID` glob matching
    /// every workload of the trust domain is broad (one narrowed to a namespace is not),
    /// and so is a hand-written permit for any workload (`FED/spiffe://TD/*`).
    #[test]
    fn subject_rules_apply_to_spiffe_federations() {
        use crate::policy::testing::{spiffe_authorization, spiffe_federation};
        let grants = "  allowedClusterSecretStores: [main]\n  allowedRemoteKeys: {main: [ci/*]}\n";
        let (_dir, tree) = tree(
            &[
                spiffe_federation("spire", "example.org"),
                store("main"),
                spiffe_authorization("all", "spire", "spiffe://example.org/*", grants),
                spiffe_authorization("prod", "spire", "spiffe://example.org/ns/prod/*", grants),
            ],
            &[(
                "wide.cedar",
                "permit (principal is Esi::SpiffeWorkload in Esi::Federation::\"spire\", action == Esi::Action::\"find\", resource == Esi::Store::\"main\");\n",
            )],
        );
        assert!(
            tree.snapshot.errors.is_empty(),
            "{:?}",
            tree.snapshot.errors
        );
        let report = lint(&tree, 100_000);
        let expected: Vec<(&str, String)> = vec![
            ("broad-subject", "Authorization/all".into()),
            ("broad-subject", "policy wide/0".into()),
        ];
        assert_eq!(rules(&report), expected, "{}", report.render());
        let messages: Vec<&str> = report
            .findings
            .iter()
            .map(|f| f.problem.message.as_str())
            .collect();
        assert!(
            messages[0]
                .contains("matches every workload of the trust domain of SpiffeFederation spire"),
            "{}",
            messages[0]
        );
        assert!(
            messages[1].contains(
                "permits any workload of SpiffeFederation spire (evaluated as spire/spiffe://example.org/*): find main"
            ),
            "{}",
            messages[1]
        );
    }
}
