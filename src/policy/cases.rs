//! `esi-server policy test DIR`: YAML cases run against the policies in force.
//!
//! Every `*.yaml`/`*.yml` file directly in DIR holds cases:
//!
//! ```yaml
//! cases:
//!   - name: the app reads its database password
//!     principal: cluster-main/apps/app        # FEDERATION/NAMESPACE/SERVICEACCOUNT
//!                                             # (OIDC federations: FEDERATION/SUBJECT)
//!     action: get                             # get | find | generate | revoke | renew | revokeStates
//!     resource: {store: vault-prod, key: db/password}
//!     expect: allow                           # allow | deny
//!     policies: [authorization/app/stores]    # optional: the determining policy ids
//! ```
//!
//! A request the server answers with a status rather than a decision of its own (a
//! federation or issuer it does not know: 401; a store or generator that is not loaded:
//! 404; a generator namespace that is not a namespace name: 400; see
//! [`explain::authn_refusal`], [`explain::resource_refusal`]) fails an `expect` case; a
//! case about it gives `expectStatus: 401|404|400` instead of `expect`.
//!
//! `resource` is `{store, key}` (get), `{store}` (find), `{generator: NS/KIND/NAME}`
//! (generate, revoke, renew) or `{namespace}` (revokeStates). A principal may add
//! `issuer`, `uid`, `podName`, `podUid` (a ServiceAccount) or `claims` (an OIDC subject:
//! `{repository: org/app}`). `context` may set `sourceAddress` (an IP address) and `time`
//! (RFC 3339, e.g. `"2026-06-01T00:00:00Z"`, or seconds since the epoch); absent, a case is
//! decided with no source address, now. `context.pod`/`context.namespace` come from the
//! principal (`podName`, its namespace). Each case is resolved and decided as `explain`
//! does, in that context.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::PolicyToolError;
use super::explain::{self, PrincipalSpec, Resolved, Target};
use crate::authz::{Action, RequestContext};
use crate::config::Snapshot;
use crate::support::text::printable;

/// Most case files read from one directory.
const MAX_FILES: usize = 1000;
/// Most cases in one file.
const MAX_CASES: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Spanned<Case>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    name: String,
    principal: String,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    pod_name: Option<String>,
    #[serde(default)]
    pod_uid: Option<String>,
    /// An OIDC subject's claims (`principal: FEDERATION/SUBJECT`).
    #[serde(default)]
    claims: BTreeMap<String, String>,
    action: String,
    resource: CaseResource,
    #[serde(default)]
    context: BTreeMap<String, serde_json::Value>,
    /// The decision expected (exactly one of `expect` and `expect_status`).
    #[serde(default)]
    expect: Option<Expect>,
    /// The status the server answers instead of a decision of its own (401, 404, 400):
    /// a case about a token refused or an object that does not exist says so.
    #[serde(default)]
    expect_status: Option<u16>,
    #[serde(default)]
    policies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseResource {
    #[serde(default)]
    store: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    generator: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

impl Expect {
    fn as_str(self) -> &'static str {
        match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
        }
    }
}

/// One case's outcome.
#[derive(Debug, Clone)]
pub struct CaseOutcome {
    /// `file:line`.
    pub at: String,
    /// The case's name.
    pub name: String,
    /// `None` when it passed; else what differs, ready to print.
    pub failure: Option<String>,
}

/// Every case's outcome.
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    /// In file order, then case order.
    pub cases: Vec<CaseOutcome>,
}

impl Outcomes {
    /// Cases that failed.
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| c.failure.is_some()).count()
    }

    /// The report: one line per case, a diff under each failure, a summary. Names and
    /// places are user text, escaped ([`printable`]).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.cases {
            let (at, name) = (printable(&c.at, usize::MAX), printable(&c.name, usize::MAX));
            match &c.failure {
                None => out.push_str(&format!("ok    {at}  {name}\n")),
                Some(diff) => out.push_str(&format!("FAIL  {at}  {name}\n{diff}")),
            }
        }
        let failed = self.failed();
        out.push_str(&format!(
            "\n{} passed, {failed} failed\n",
            self.cases.len() - failed
        ));
        out
    }
}

fn parse_action(s: &str) -> Result<Action, String> {
    Action::ALL
        .into_iter()
        .find(|a| a.as_str() == s)
        .ok_or_else(|| {
            format!("unknown action {s:?} (get, find, generate, revoke, renew, revokeStates)")
        })
}

fn target_of(action: Action, r: &CaseResource) -> Result<Target, String> {
    let need = |v: &Option<String>, what: &str| {
        v.clone()
            .ok_or_else(|| format!("resource.{what} is required for {action}"))
    };
    let only = |allowed: &[&str]| {
        let given = [
            ("store", r.store.is_some()),
            ("key", r.key.is_some()),
            ("generator", r.generator.is_some()),
            ("namespace", r.namespace.is_some()),
        ];
        match given
            .iter()
            .find(|(name, set)| *set && !allowed.contains(name))
        {
            Some((name, _)) => Err(format!("resource.{name} does not apply to {action}")),
            None => Ok(()),
        }
    };
    match action {
        Action::Get => {
            only(&["store", "key"])?;
            Ok(Target::Key {
                store: need(&r.store, "store")?,
                key: need(&r.key, "key")?,
                property: None,
                version: None,
            })
        }
        Action::Find => {
            only(&["store"])?;
            Ok(Target::Find {
                store: need(&r.store, "store")?,
            })
        }
        Action::Generate | Action::Revoke | Action::Renew => {
            only(&["generator"])?;
            Ok(Target::Generator {
                action,
                path: need(&r.generator, "generator")?,
            })
        }
        Action::RevokeStates => {
            only(&["namespace"])?;
            Ok(Target::States {
                namespace: need(&r.namespace, "namespace")?,
            })
        }
    }
}

/// The case files of `dir`, sorted.
fn case_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyToolError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PolicyToolError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| PolicyToolError::Read {
            path: dir.display().to_string(),
            source,
        })?;
        let path = entry.path();
        let yaml = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml");
        if yaml && path.is_file() {
            files.push(path);
        }
        if files.len() > MAX_FILES {
            return Err(PolicyToolError::BadCases {
                path: dir.display().to_string(),
                reason: format!("more than {MAX_FILES} case files"),
            });
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(PolicyToolError::BadCases {
            path: dir.display().to_string(),
            reason: "no case files (*.yaml, *.yml)".to_owned(),
        });
    }
    Ok(files)
}

/// Runs every case of `dir` against `snapshot`.
pub fn run(snapshot: &Snapshot, dir: &Path) -> Result<Outcomes, PolicyToolError> {
    let mut outcomes = Outcomes::default();
    for file in case_files(dir)? {
        let shown = file.display().to_string();
        let text = super::read_bounded(&file)?;
        let parsed: CaseFile =
            serde_saphyr::from_str(&text).map_err(|e| PolicyToolError::BadCases {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        if parsed.cases.len() > MAX_CASES {
            return Err(PolicyToolError::BadCases {
                path: shown,
                reason: format!("more than {MAX_CASES} cases"),
            });
        }
        for spanned in parsed.cases {
            let at = format!("{shown}:{}", spanned.referenced.line());
            let case = spanned.value;
            let failure =
                run_case(snapshot, &case).map_err(|reason| PolicyToolError::BadCases {
                    path: at.clone(),
                    reason: format!("case {:?}: {reason}", case.name),
                })?;
            outcomes.cases.push(CaseOutcome {
                at,
                name: case.name,
                failure,
            });
        }
    }
    if outcomes.cases.is_empty() {
        // Review finding (issue 13): files holding `cases: []` passed, so a CI step checked
        // nothing and said ok.
        return Err(PolicyToolError::BadCases {
            path: dir.display().to_string(),
            reason: "no cases (its case files hold none): nothing would be checked".to_owned(),
        });
    }
    Ok(outcomes)
}

/// `Ok(None)`: passed; `Ok(Some(diff))`: failed; `Err`: the case is not well formed.
/// A case's `context:` map as the request context it is decided in.
fn context_of(map: &BTreeMap<String, serde_json::Value>) -> Result<RequestContext, String> {
    let mut context = RequestContext::now(None);
    for (name, value) in map {
        match (name.as_str(), value) {
            ("sourceAddress", serde_json::Value::String(s)) => {
                context.source_address = Some(
                    explain::parse_source_address(s)
                        .map_err(|e| format!("context.sourceAddress {e}"))?,
                );
            }
            ("time", serde_json::Value::String(s)) => {
                context.time = explain::parse_time(s).map_err(|e| format!("context.time {e}"))?;
            }
            ("time", v) if v.as_i64().is_some() => {
                context.time = v.as_i64().unwrap_or_default();
            }
            ("pod" | "namespace", _) => {
                return Err(format!(
                    "context.{name} comes from the principal (podName, its namespace), not the case's context"
                ));
            }
            _ => {
                return Err(format!(
                    "context.{name:.64}: unknown or of the wrong type (expected sourceAddress: an IP address, time: RFC 3339 or seconds)"
                ));
            }
        }
    }
    Ok(context)
}

/// Statuses a case may expect (`expectStatus`): what the server answers without a decision
/// of its own ([`explain::Refusal`]).
const EXPECTABLE_STATUSES: [u16; 3] = [400, 401, 404];

/// What a case expects: a decision, or a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    Decision(Expect),
    Status(u16),
}

fn expected_of(case: &Case) -> Result<Expected, String> {
    match (case.expect, case.expect_status) {
        (Some(e), None) => Ok(Expected::Decision(e)),
        (None, Some(s)) if EXPECTABLE_STATUSES.contains(&s) => {
            if case.policies.is_some() {
                return Err(
                    "policies applies to expect (a decision), not to expectStatus".to_owned(),
                );
            }
            Ok(Expected::Status(s))
        }
        (None, Some(s)) => Err(format!(
            "expectStatus {s}: the server answers 401 (token refused), 404 (no such store or generator) or 400 (not a namespace name) without a decision of its own"
        )),
        (Some(_), Some(_)) => Err("give expect or expectStatus, not both".to_owned()),
        (None, None) => {
            Err("expect (allow, deny) or expectStatus (401, 404, 400) is required".to_owned())
        }
    }
}

fn run_case(snapshot: &Snapshot, case: &Case) -> Result<Option<String>, String> {
    let expected = expected_of(case)?;
    let context = context_of(&case.context)?;
    let action = parse_action(&case.action)?;
    let target = target_of(action, &case.resource)?;
    let mut notes = Vec::new();
    let principal = PrincipalSpec {
        path: case.principal.clone(),
        issuer: case.issuer.clone(),
        uid: case.uid.clone(),
        pod_name: case.pod_name.clone(),
        pod_uid: case.pod_uid.clone(),
        claims: case.claims.clone(),
    };
    let (action, resource) =
        explain::resource_of(snapshot, &target, &mut notes).map_err(|e| e.to_string())?;
    let request = format!(
        "      request:  {action} {} by {}\n",
        printable(&resource.canonical().to_string(), usize::MAX),
        printable(&case.principal, usize::MAX)
    );
    // A principal no token can carry is a mistake in the case, not a request.
    explain::check_principal(snapshot, &principal).map_err(|e| e.to_string())?;
    // The server refuses the token before deciding (401): no decision is made.
    if let Some(refusal) = explain::authn_refusal(snapshot, &principal) {
        return Ok(refused(expected, &request, &refusal));
    }
    let identity =
        explain::identity_of(snapshot, &principal, &mut notes).map_err(|e| e.to_string())?;
    let resolved = Resolved {
        identity,
        action,
        resource,
        notes,
    };
    let decision = snapshot.policies.decide_in(
        &resolved.identity,
        resolved.action,
        &resolved.resource,
        &context,
    );
    if let Some(refusal) = explain::resource_refusal(snapshot, &target, decision.allowed) {
        return Ok(refused(expected, &request, &refusal));
    }
    let got = if decision.allowed {
        Expect::Allow
    } else {
        Expect::Deny
    };
    let expect = match expected {
        Expected::Decision(e) => e,
        Expected::Status(status) => {
            return Ok(Some(format!(
                "{request}    - expected: status {status}\n    + actual:   {} by {} (the server decides this request; a denial answers 404 like a missing object: write expect: deny)\n",
                got.as_str(),
                show_ids(&decision.policy_ids)
            )));
        }
    };
    let mut expected_ids = case.policies.clone();
    if let Some(ids) = &mut expected_ids {
        ids.sort();
        ids.dedup();
    }
    let ids_differ = expected_ids
        .as_ref()
        .is_some_and(|ids| *ids != decision.policy_ids);
    if got == expect && !ids_differ {
        return Ok(None);
    }
    let expected_line = match &expected_ids {
        Some(ids) => format!("{} by {}", expect.as_str(), show_ids(ids)),
        None => expect.as_str().to_owned(),
    };
    let mut diff = format!(
        "{request}    - expected: {expected_line}\n    + actual:   {} by {}\n",
        got.as_str(),
        show_ids(&decision.policy_ids)
    );
    for n in &resolved.notes {
        diff.push_str(&format!("      note: {}\n", printable(n, usize::MAX)));
    }
    Ok(Some(diff))
}

fn show_ids(ids: &[String]) -> String {
    if ids.is_empty() {
        "(no policy)".to_owned()
    } else {
        let ids: Vec<String> = ids.iter().map(|i| printable(i, usize::MAX)).collect();
        ids.join(", ")
    }
}

/// The outcome of a case the server answers with `refusal` rather than a decision: it
/// passes only when the case expects exactly that status (review finding 4: an
/// `expect: deny` case about a federation that does not exist passed on Cedar's default
/// deny, while the server answers 401).
fn refused(expected: Expected, request: &str, refusal: &explain::Refusal) -> Option<String> {
    let expected_line = match expected {
        Expected::Status(status) if status == refusal.status => return None,
        Expected::Status(status) => format!("status {status}"),
        Expected::Decision(e) => format!(
            "{} (a decision; the server makes none here: give expectStatus: {} if that is meant)",
            e.as_str(),
            refusal.status
        ),
    };
    Some(format!(
        "{request}    - expected: {expected_line}\n    + actual:   status {}: {}\n",
        refusal.status,
        printable(&refusal.reason, usize::MAX)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_must_fit_their_action() {
        let r = |store: Option<&str>, key: Option<&str>, generator: Option<&str>| CaseResource {
            store: store.map(str::to_owned),
            key: key.map(str::to_owned),
            generator: generator.map(str::to_owned),
            namespace: None,
        };
        assert!(target_of(Action::Get, &r(Some("s"), Some("k"), None)).is_ok());
        assert_eq!(
            target_of(Action::Get, &r(Some("s"), None, None)),
            Err("resource.key is required for get".into())
        );
        assert_eq!(
            target_of(Action::Find, &r(Some("s"), Some("k"), None)),
            Err("resource.key does not apply to find".into())
        );
        assert!(target_of(Action::Renew, &r(None, None, Some("n/Password/p"))).is_ok());
        assert!(parse_action("revokeStates").is_ok());
        assert!(parse_action("delete").is_err());
    }

    #[test]
    fn case_context_sets_source_address_and_time() {
        let map = |yaml: &str| -> BTreeMap<String, serde_json::Value> {
            serde_saphyr::from_str(yaml).expect("map")
        };
        let c = context_of(&map(
            "{sourceAddress: 127.0.0.1, time: \"2026-06-01T00:00:00Z\"}",
        ))
        .expect("context");
        assert_eq!(c.source_address, Some("127.0.0.1".parse().expect("ip")));
        assert_eq!(c.time, 1_780_272_000);
        assert_eq!(context_of(&map("{time: 5}")).expect("seconds").time, 5);
        for bad in [
            "{sourceAddress: nowhere}",
            "{time: yesterday}",
            "{pod: web-1}",
            "{sourceAdress: 127.0.0.1}",
        ] {
            assert!(context_of(&map(bad)).is_err(), "{bad}");
        }
    }

    /// A directory without cases is an error, not a pass.
    #[test]
    fn no_cases_is_an_error_not_a_pass() {
        let snapshot = crate::config::Snapshot::empty();
        let dir = tempfile::tempdir().expect("dir");
        let err = run(&snapshot, dir.path()).expect_err("empty dir");
        assert!(err.to_string().contains("no case files"), "{err}");
        std::fs::write(dir.path().join("a.yaml"), "cases: []\n").expect("write");
        let err = run(&snapshot, dir.path()).expect_err("cases: []");
        assert!(err.to_string().contains("no cases"), "{err}");
    }

    /// Review finding 4: a case the server answers 401/404 without a decision of its own
    /// fails unless it expects that status (before, Cedar's default deny made `expect: deny`
    /// pass for a federation, issuer, store or generator that does not exist).
    #[test]
    fn cases_the_server_refuses_need_expect_status() {
        let (_dir, tree) = crate::policy::testing::tree(&crate::policy::testing::app_world(), &[]);
        assert!(
            tree.snapshot.errors.is_empty(),
            "{:?}",
            tree.snapshot.errors
        );
        let cases = tempfile::tempdir().expect("dir");
        let case = |principal: &str, extra: &str, resource: &str, expect: &str| {
            format!(
                "  - name: c\n    principal: {principal}\n{extra}    action: {}\n    resource: {resource}\n    {expect}\n",
                if resource.contains("generator") {
                    "generate"
                } else {
                    "get"
                }
            )
        };
        let key = |store: &str| format!("{{store: {store}, key: k}}");
        let refused = [
            (
                case(
                    "nowhere/apps/app",
                    "    issuer: https://alpha.example\n",
                    &key("main"),
                    "expect: deny",
                ),
                401,
                "federation nowhere does not exist",
            ),
            (
                case("nowhere/apps/app", "", &key("main"), "expect: deny"),
                401,
                "federation nowhere does not exist",
            ),
            (
                case(
                    "alpha/apps/app",
                    "    issuer: https://other.example\n",
                    &key("main"),
                    "expect: deny",
                ),
                401,
                "KubernetesFederation alpha accepts tokens of issuer https://alpha.example, not https://other.example",
            ),
            (
                case("alpha/apps/app", "", &key("mian"), "expect: deny"),
                404,
                "store mian (ClusterSecretStore) does not exist",
            ),
            (
                case("alpha/apps/app", "", &key("mian"), "expect: allow"),
                404,
                "store mian (ClusterSecretStore) does not exist",
            ),
            (
                case(
                    "alpha/apps/app",
                    "",
                    "{generator: apps/Password/nope}",
                    "expect: deny",
                ),
                404,
                "generator Password apps/nope does not exist",
            ),
        ];
        for (text, status, reason) in &refused {
            // Expecting a decision: the case fails, saying what the server answers.
            std::fs::write(cases.path().join("a.yaml"), format!("cases:\n{text}")).expect("write");
            let out = run(&tree.snapshot, cases.path()).expect("runs");
            let failure = out.cases[0].failure.as_deref().unwrap_or_default();
            assert!(
                failure.contains(&format!("+ actual:   status {status}: {reason}"))
                    && failure.contains(&format!("the server would answer {status}")),
                "{text}: {failure:?}"
            );
            // Expecting that status: it passes; another status: it fails.
            for (expected, passes) in [
                (*status, true),
                (if *status == 401 { 404 } else { 401 }, false),
            ] {
                let text = text
                    .replace("expect: deny", &format!("expectStatus: {expected}"))
                    .replace("expect: allow", &format!("expectStatus: {expected}"));
                std::fs::write(cases.path().join("a.yaml"), format!("cases:\n{text}"))
                    .expect("write");
                let out = run(&tree.snapshot, cases.path()).expect("runs");
                assert_eq!(
                    out.cases[0].failure.is_none(),
                    passes,
                    "{text}: {:?}",
                    out.cases[0]
                );
            }
        }
        // A decided request does not pass as a status: a denial is `expect: deny`.
        let denied = case("alpha/other/x", "", &key("main"), "expectStatus: 404");
        std::fs::write(cases.path().join("a.yaml"), format!("cases:\n{denied}")).expect("write");
        let out = run(&tree.snapshot, cases.path()).expect("runs");
        let failure = out.cases[0].failure.as_deref().unwrap_or_default();
        assert!(failure.contains("write expect: deny"), "{failure}");
        let allowed = case("alpha/apps/app", "", &key("main"), "expect: allow");
        std::fs::write(cases.path().join("a.yaml"), format!("cases:\n{allowed}")).expect("write");
        assert_eq!(run(&tree.snapshot, cases.path()).expect("runs").failed(), 0);
        // Both, neither, or a status the server never answers without a decision: refused.
        for bad in [
            allowed.replace("expect: allow", "expect: allow\n    expectStatus: 404"),
            allowed.replace("    expect: allow\n", ""),
            allowed.replace("expect: allow", "expectStatus: 403"),
        ] {
            std::fs::write(cases.path().join("a.yaml"), format!("cases:\n{bad}")).expect("write");
            assert!(run(&tree.snapshot, cases.path()).is_err(), "{bad}");
        }
    }

    /// A case for an OIDC subject the server refuses as a served SPIFFE workload's
    /// lookalike (401) fails when it expects a decision, even the `allow` the policies
    /// give, and passes with `expectStatus: 401`; another trust domain's ID is decided.
    /// (Before: `expect: allow` passed.)
    #[test]
    fn a_case_for_an_oidc_lookalike_of_a_served_workload_expects_401() {
        use crate::policy::testing::{authorization_of, oidc_federation, spiffe_federation, store};
        let mut world = vec![
            oidc_federation("github"),
            spiffe_federation("spire", "example.org"),
            store("main"),
        ];
        for (name, subject) in [
            ("served", "spiffe://example.org/ns/prod/sa/api"),
            ("other", "spiffe://other.org/ns/prod/sa/api"),
        ] {
            world.push(authorization_of(
                name,
                "OIDCFederation",
                "github",
                subject,
                "  allowedClusterSecretStores: [main]\n",
            ));
        }
        let (_dir, tree) = crate::policy::testing::tree(&world, &[]);
        assert!(
            tree.snapshot.errors.is_empty(),
            "{:?}",
            tree.snapshot.errors
        );
        let cases = tempfile::tempdir().expect("dir");
        let run_one = |principal: &str, expect: &str| {
            let text = format!(
                "cases:\n  - name: c\n    principal: {principal}\n    action: find\n    resource: {{store: main}}\n    {expect}\n"
            );
            std::fs::write(cases.path().join("a.yaml"), text).expect("write");
            run(&tree.snapshot, cases.path()).expect("runs").cases[0]
                .failure
                .clone()
        };
        let served = "github/spiffe://example.org/ns/prod/sa/api";
        let failure = run_one(served, "expect: allow").unwrap_or_default();
        assert!(
            failure.contains("+ actual:   status 401: subject spiffe://example.org/ns/prod/sa/api is a workload SPIFFE ID of trust domain example.org, which SpiffeFederation spire serves"),
            "{failure}"
        );
        assert_eq!(run_one(served, "expectStatus: 401"), None);
        let other = "github/spiffe://other.org/ns/prod/sa/api";
        assert_eq!(run_one(other, "expect: allow"), None);
        assert!(run_one(other, "expectStatus: 401").is_some());
    }

    #[test]
    fn case_files_are_strict() {
        let ok = "cases:\n  - name: a\n    principal: f/n/s\n    action: get\n    resource: {store: s, key: k}\n    expect: deny\n";
        let parsed: CaseFile = serde_saphyr::from_str(ok).expect("parses");
        assert_eq!(parsed.cases[0].referenced.line(), 2);
        let typo = ok.replace("expect:", "expected:");
        assert!(serde_saphyr::from_str::<CaseFile>(&typo).is_err());
        let bad = ok.replace("deny", "maybe");
        assert!(serde_saphyr::from_str::<CaseFile>(&bad).is_err());
    }
}
