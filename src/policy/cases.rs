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
    expect: Expect,
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

    /// The report: one line per case, a diff under each failure, a summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.cases {
            match &c.failure {
                None => out.push_str(&format!("ok    {}  {}\n", c.at, c.name)),
                Some(diff) => out.push_str(&format!("FAIL  {}  {}\n{diff}", c.at, c.name)),
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
                context.source_address =
                    Some(s.parse().map_err(|_| {
                        format!("context.sourceAddress {s:?} is not an IP address")
                    })?);
            }
            ("time", serde_json::Value::String(s)) => {
                context.time = s
                    .parse::<jiff::Timestamp>()
                    .map_err(|e| format!("context.time {s:?} is not an RFC 3339 time: {e}"))?
                    .as_second();
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

fn run_case(snapshot: &Snapshot, case: &Case) -> Result<Option<String>, String> {
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
    let identity =
        explain::identity_of(snapshot, &principal, &mut notes).map_err(|e| e.to_string())?;
    let (action, resource) =
        explain::resource_of(snapshot, &target, &mut notes).map_err(|e| e.to_string())?;
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
    let got = if decision.allowed {
        Expect::Allow
    } else {
        Expect::Deny
    };
    let mut expected_ids = case.policies.clone();
    if let Some(ids) = &mut expected_ids {
        ids.sort();
        ids.dedup();
    }
    let ids_differ = expected_ids
        .as_ref()
        .is_some_and(|ids| *ids != decision.policy_ids);
    if got == case.expect && !ids_differ {
        return Ok(None);
    }
    let show = |ids: &[String]| {
        if ids.is_empty() {
            "(no policy)".to_owned()
        } else {
            ids.join(", ")
        }
    };
    let expected_line = match &expected_ids {
        Some(ids) => format!("{} by {}", case.expect.as_str(), show(ids)),
        None => case.expect.as_str().to_owned(),
    };
    let mut diff = format!(
        "      request:  {action} {} by {}\n    - expected: {expected_line}\n    + actual:   {} by {}\n",
        resolved.resource.canonical(),
        case.principal,
        got.as_str(),
        show(&decision.policy_ids)
    );
    for n in &resolved.notes {
        diff.push_str(&format!("      note: {n}\n"));
    }
    Ok(Some(diff))
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
