//! `esi-server policy compile`: every policy in force as Cedar text.
//!
//! Each policy is printed with an `@id("…")` annotation holding the id decisions report
//! (`authorization/<name>/<part>` for compiled Authorizations, the `@id` or
//! `<file stem>/<index>` of a hand-written one). Cedar's parser names policies
//! `policy0`, `policy1`, … whatever `@id` says, so the annotation is what carries the id:
//! [`ids_in_text`] reads the text back the way the engine reads `.cedar` files.

use cedar_policy::{Policy, PolicySet};
use serde::Serialize;

use super::PolicyToolError;
use crate::authz::{ListedPolicy, PolicySource};

/// One printed policy.
#[derive(Debug, Clone, Serialize)]
pub struct PrintedPolicy {
    /// The id decisions report.
    pub id: String,
    /// Where it came from: `Authorization/<name>` or the file's path.
    pub source: String,
    /// Where that object was read from (`file#document`), for compiled policies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `permit` or `forbid`.
    pub effect: &'static str,
    /// Cedar text, with `@id("<id>")`.
    pub text: String,
}

/// How a source is named in the output.
pub(crate) fn source_name(source: &PolicySource) -> (String, Option<String>) {
    match source {
        PolicySource::Authorization { name, origin } => {
            (format!("Authorization/{name}"), origin.clone())
        }
        PolicySource::File { path } => (path.clone(), None),
    }
}

/// The Cedar text of `policy` with `@id(id)` (replacing any `@id` it had).
pub fn text_with_id(policy: &Policy, id: &str) -> Result<String, PolicyToolError> {
    let mut est = policy
        .to_json()
        .map_err(|e| PolicyToolError::BadRequest(format!("policy {id}: {e}")))?;
    if let Some(obj) = est.as_object_mut() {
        let annotations = obj
            .entry("annotations")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(map) = annotations.as_object_mut() {
            map.insert("id".to_owned(), serde_json::Value::String(id.to_owned()));
        }
    }
    let annotated = Policy::from_json(None, est)
        .map_err(|e| PolicyToolError::BadRequest(format!("policy {id}: {e}")))?;
    Ok(annotated.to_string())
}

/// Every listed policy, printed.
pub fn print(listed: &[ListedPolicy]) -> Result<Vec<PrintedPolicy>, PolicyToolError> {
    listed
        .iter()
        .map(|l| {
            let (source, origin) = source_name(&l.source);
            Ok(PrintedPolicy {
                id: l.id.clone(),
                source,
                origin,
                effect: match l.policy.effect() {
                    cedar_policy::Effect::Permit => "permit",
                    cedar_policy::Effect::Forbid => "forbid",
                },
                text: text_with_id(&l.policy, &l.id)?,
            })
        })
        .collect()
}

/// The printed policies as one Cedar document, each preceded by a comment naming its
/// source.
pub fn as_cedar(printed: &[PrintedPolicy]) -> String {
    let mut out = String::new();
    for p in printed {
        let origin = p
            .origin
            .as_deref()
            .map(|o| format!(" ({o})"))
            .unwrap_or_default();
        // Names and paths are user text: one line each, whatever they hold, escaped.
        let comment = crate::support::text::printable(&format!("{}{origin}", p.source), usize::MAX);
        out.push_str(&format!("// {comment}\n{}\n\n", p.text.trim_end()));
    }
    out
}

/// The ids of the policies of a Cedar text, in order, read as the engine reads a `.cedar`
/// file: the `@id` annotation, else `<stem>/<index>`.
pub fn ids_in_text(text: &str, stem: &str) -> Result<Vec<(String, Policy)>, PolicyToolError> {
    let set = PolicySet::from_str_checked(text)?;
    Ok(crate::authz::in_file_order(&set)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let id = p
                .annotation("id")
                .map_or_else(|| format!("{stem}/{i}"), str::to_owned);
            (id, p.clone())
        })
        .collect())
}

/// `PolicySet::from_str` with the error as a [`PolicyToolError`].
trait FromStrChecked: Sized {
    fn from_str_checked(text: &str) -> Result<Self, PolicyToolError>;
}

impl FromStrChecked for PolicySet {
    fn from_str_checked(text: &str) -> Result<Self, PolicyToolError> {
        crate::authz::check_nesting(text, crate::authz::MAX_NESTING)
            .map_err(|e| PolicyToolError::BadRequest(e.to_string()))?;
        text.parse()
            .map_err(|e: cedar_policy::ParseErrors| PolicyToolError::BadRequest(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{AuthorizationSource, PolicyEngine, PolicyFile};
    use crate::resources::{AuthorizationSpec, AuthorizationSubject, FederationRef, OidcSubject};

    fn engine() -> PolicyEngine {
        let spec = AuthorizationSpec {
            federation_ref: FederationRef {
                kind: "KubernetesFederation".into(),
                name: "alpha".into(),
            },
            subject: Some(AuthorizationSubject {
                oidc: Some(OidcSubject {
                    issuer: "https://issuer".into(),
                    // A value that would break a policy pasted as text.
                    subject: "system:serviceaccount:ns:x\" || true || \"".into(),
                }),
                ..Default::default()
            }),
            allowed_cluster_secret_stores: vec!["vault".into(), "other".into()],
            allowed_remote_keys: [("vault".to_owned(), vec!["db/*".to_owned()])].into(),
            ..Default::default()
        };
        let glob = AuthorizationSpec {
            subject: Some(AuthorizationSubject {
                oidc: Some(OidcSubject {
                    issuer: "https://issuer".into(),
                    subject: "system:serviceaccount:mon:*".into(),
                }),
                ..Default::default()
            }),
            ..spec.clone()
        };
        let files = [PolicyFile {
            path: "p/extra.cedar".into(),
            text: "@id(\"no-admin\") forbid (principal, action, resource is Esi::RemoteKey) when { resource.key like \"admin/*\" };\npermit (principal, action == Esi::Action::\"find\", resource);".into(),
        }];
        let (engine, errors) = PolicyEngine::build(
            &[
                AuthorizationSource {
                    name: "b".into(),
                    origin: "m.yaml#1".into(),
                    spec,
                },
                AuthorizationSource {
                    name: "a".into(),
                    origin: "m.yaml#0".into(),
                    spec: glob,
                },
            ],
            &files,
        );
        assert!(errors.is_empty(), "{errors:?}");
        engine
    }

    #[test]
    fn every_policy_is_listed_with_its_source_in_a_stable_order() {
        let printed = print(&engine().listing()).expect("prints");
        let ids: Vec<&str> = printed.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "authorization/a/stores",
                "authorization/a/remote-keys",
                "authorization/b/stores",
                "authorization/b/remote-keys",
                "extra/1",
                "no-admin"
            ]
        );
        assert_eq!(printed[0].source, "Authorization/a");
        assert_eq!(printed[0].origin.as_deref(), Some("m.yaml#0"));
        assert_eq!(printed[5].source, "p/extra.cedar");
        assert_eq!(printed[5].effect, "forbid");
    }

    /// The listing does not depend on the order of `.cedar` files (their paths) or of
    /// policies within them: the same policies in renamed, reordered files list alike.
    #[test]
    fn listing_is_the_same_whatever_the_file_order() {
        let one = "@id(\"zeta\") forbid (principal, action, resource is Esi::RemoteKey) when { resource.key like \"admin/*\" };\n@id(\"beta\") permit (principal, action == Esi::Action::\"find\", resource);";
        let two = "@id(\"alpha\") forbid (principal, action, resource is Esi::RemoteKey) when { resource.key like \"root/*\" };";
        let listed = |files: &[(&str, &str)]| {
            let files: Vec<PolicyFile> = files
                .iter()
                .map(|(path, text)| PolicyFile {
                    path: (*path).into(),
                    text: (*text).into(),
                })
                .collect();
            let (engine, errors) = PolicyEngine::build(&[], &files);
            assert!(errors.is_empty(), "{errors:?}");
            let printed = print(&engine.listing()).expect("prints");
            let ids: Vec<String> = printed.iter().map(|p| p.id.clone()).collect();
            let texts: Vec<String> = printed.into_iter().map(|p| p.text).collect();
            (ids, texts)
        };
        let reordered = "@id(\"beta\") permit (principal, action == Esi::Action::\"find\", resource);\n@id(\"zeta\") forbid (principal, action, resource is Esi::RemoteKey) when { resource.key like \"admin/*\" };";
        let a = listed(&[("p/a.cedar", one), ("p/b.cedar", two)]);
        let b = listed(&[("p/0.cedar", two), ("p/z.cedar", reordered)]);
        assert_eq!(a.0, ["alpha", "beta", "zeta"]);
        assert_eq!(a, b);
    }

    /// Cedar's parser ignores `@id` for naming; the printed text carries the ids in the
    /// annotation, and reading it back as the engine reads a file gives the same ids
    /// and the same policies.
    #[test]
    fn printed_text_round_trips_with_the_ids_decisions_report() {
        let listed = engine().listing();
        let text = as_cedar(&print(&listed).expect("prints"));
        let back = ids_in_text(&text, "compiled").expect("parses");
        assert_eq!(back.len(), listed.len());
        for ((id, policy), original) in back.iter().zip(&listed) {
            assert_eq!(id, &original.id);
            // The same policy: printing what was read back gives the printed text again
            // (Cedar's parser normalises `[a]` to `a` and splits `like` literals, so the
            // forms are compared after one trip through the text).
            let norm = |p: &Policy| {
                let text = text_with_id(p, id).expect("text");
                let again: Policy = text.parse().expect("parses");
                again.to_json().expect("json")
            };
            assert_eq!(norm(policy), norm(&original.policy), "{id}");
        }
        // The quoting of user values survives the round trip: the subject read back is
        // the one string, not a condition.
        assert!(text.contains(r#"x\" || true || \""#), "{text}");
        let subject =
            serde_json::Value::String("system:serviceaccount:ns:x\" || true || \"".into());
        let read_back = back
            .iter()
            .map(|(_, p)| p.to_json().expect("json").to_string())
            .collect::<String>();
        assert!(read_back.contains(&subject.to_string()), "{read_back}");
    }
}
