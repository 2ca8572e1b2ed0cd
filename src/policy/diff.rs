//! `esi-server policy diff`: which principals gain or lose which access between two trees.
//!
//! Both trees are loaded as `serve` loads them; the relevant requests of both
//! ([`super::requests`]: every principal and resource either names) are decided by each
//! tree's own engine, and a request is a change when the server would serve it in one tree
//! and not in the other ([`Outcome::allowed`]: the policies allow it, and its federation
//! and store are loaded). A request whose determining policies changed but whose answer
//! did not is not a change.

use serde::Serialize;

use super::Tree;
use super::names::PrincipalName;
use super::requests::{Outcome, Probe, Universe};
use crate::support::text::printable;

/// Most rows of the Markdown form (a pull-request comment has a size limit); the rest are
/// counted.
pub const MARKDOWN_ROWS: usize = 200;

/// Gained or lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Denied before, allowed now.
    Gained,
    /// Allowed before, denied now.
    Lost,
}

/// One request whose answer changed.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Gained or lost.
    pub change: Direction,
    /// The caller.
    pub principal: PrincipalName,
    /// `FED/NS/SA` (a ServiceAccount) or `FED/SUBJECT` (an OIDC subject), escaped
    /// ([`PrincipalName::label`]).
    pub principal_label: String,
    /// For a representative: the subject glob it stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub represents: Option<String>,
    /// The action.
    pub action: String,
    /// The resource.
    pub resource: Probe,
    /// The resource, short.
    pub resource_label: String,
    /// The answer in the old tree.
    pub old: Outcome,
    /// The answer in the new tree.
    pub new: Outcome,
}

/// How much was compared.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Compared {
    /// Principals.
    pub principals: usize,
    /// Resources (with their actions).
    pub probes: usize,
    /// Requests decided in each tree.
    pub requests: usize,
    /// Requests there were; more than `requests` when `--max-requests` cut some.
    pub total: usize,
}

/// The changes between two trees.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    /// The old tree's name.
    pub old: String,
    /// The new tree's name.
    pub new: String,
    /// Requests now allowed.
    pub gained: usize,
    /// Requests now denied.
    pub lost: usize,
    /// What was compared.
    pub compared: Compared,
    /// Whether some requests were not compared (`compared.total > compared.requests`).
    pub truncated: bool,
    /// By principal, then resource, then action.
    pub changes: Vec<Change>,
    /// Objects that did not load, per tree (`old`, `new`): the comparison is of what loaded.
    pub load_errors: [usize; 2],
}

/// Indexes of the requests whose answer differs.
pub fn changed(old: &[Outcome], new: &[Outcome]) -> Vec<usize> {
    old.iter()
        .zip(new)
        .enumerate()
        .filter(|(_, (o, n))| o.allowed != n.allowed)
        .map(|(i, _)| i)
        .collect()
}

/// Compares `old` and `new`, evaluating at most `max_requests` requests in each.
pub fn diff(old: &Tree, new: &Tree, max_requests: usize) -> Diff {
    let universe = Universe::of(&[old, new], max_requests);
    let before = universe.evaluate(old);
    let after = universe.evaluate(new);
    let mut changes = Vec::new();
    for i in changed(&before, &after) {
        let r = &universe.requests[i];
        let principal = universe.principals[r.principal].clone();
        let probe = universe.probes[r.probe].clone();
        changes.push(Change {
            change: if after[i].allowed {
                Direction::Gained
            } else {
                Direction::Lost
            },
            principal_label: principal.label(),
            represents: principal.represents(),
            principal,
            action: r.action.to_string(),
            resource_label: probe.label(),
            resource: probe,
            old: before[i].clone(),
            new: after[i].clone(),
        });
    }
    let gained = changes
        .iter()
        .filter(|c| c.change == Direction::Gained)
        .count();
    Diff {
        old: old.label.clone(),
        new: new.label.clone(),
        gained,
        lost: changes.len() - gained,
        compared: Compared {
            principals: universe.principals.len(),
            probes: universe.probes.len(),
            requests: universe.requests.len(),
            total: universe.total,
        },
        truncated: universe.truncated(),
        changes,
        load_errors: [old.snapshot.errors.len(), new.snapshot.errors.len()],
    }
}

/// Why a request got its answer: `allowed by a, b`, `denied by f`, `denied by default`,
/// `refused: <reason>`.
pub fn why(o: &Outcome) -> String {
    match (&o.unreachable, o.decided) {
        (Some(reason), _) => format!("refused: {reason}"),
        (None, true) => format!("allowed by {}", o.policies.join(", ")),
        (None, false) if o.forbidden && !o.overrides.is_empty() => format!(
            "denied by {} (over {})",
            o.policies.join(", "),
            o.overrides.join(", ")
        ),
        (None, false) if o.forbidden => format!("denied by {}", o.policies.join(", ")),
        (None, false) => "denied by default".to_owned(),
    }
}

impl Diff {
    /// Whether anything changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    fn summary(&self) -> String {
        let c = &self.compared;
        let mut s = format!(
            "{} gained, {} lost over {} requests ({} principals × {} resources)",
            self.gained, self.lost, c.requests, c.principals, c.probes
        );
        if self.truncated {
            s.push_str(&format!(
                "; {} requests NOT compared (over --max-requests)",
                c.total - c.requests
            ));
        }
        if self.load_errors.iter().any(|n| *n > 0) {
            s.push_str(&format!(
                "; objects that did not load: {} old, {} new (see `policy validate`)",
                self.load_errors[0], self.load_errors[1]
            ));
        }
        s
    }

    /// Text: changes grouped by principal, `+` gained, `-` lost.
    pub fn text(&self) -> String {
        let mut out = format!(
            "policy diff: {} -> {}\n{}\n",
            self.old,
            self.new,
            self.summary()
        );
        let mut last: Option<&PrincipalName> = None;
        for c in &self.changes {
            if last != Some(&c.principal) {
                out.push('\n');
                out.push_str(&c.principal_label);
                if let Some(glob) = &c.represents {
                    out.push_str(&format!(
                        " (any {} matching {})",
                        c.principal.noun(),
                        printable(glob, usize::MAX)
                    ));
                }
                out.push('\n');
                last = Some(&c.principal);
            }
            let sign = match c.change {
                Direction::Gained => '+',
                Direction::Lost => '-',
            };
            out.push_str(&format!(
                "  {sign} {:<12} {}\n      now {}; was {}\n",
                c.action,
                c.resource_label,
                why(&c.new),
                why(&c.old)
            ));
        }
        if self.changes.is_empty() {
            out.push_str("\nno access changes\n");
        }
        out
    }

    /// Markdown for a pull-request comment: a summary and one table row per change (at
    /// most [`MARKDOWN_ROWS`]). Every user value is entity-encoded, so names cannot
    /// inject Markdown or HTML.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "### ESI policy diff: {} → {}\n\n",
            md(&self.old),
            md(&self.new)
        );
        out.push_str(&format!("**{}**\n\n", md(&self.summary())));
        if self.changes.is_empty() {
            out.push_str("No principal gains or loses access.\n");
            return out;
        }
        out.push_str("| | principal | action | resource | now | before |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for c in self.changes.iter().take(MARKDOWN_ROWS) {
            let principal = match &c.represents {
                Some(glob) => format!("{} (any matching {glob})", c.principal_label),
                None => c.principal_label.clone(),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                match c.change {
                    Direction::Gained => "🟢 gained",
                    Direction::Lost => "🔴 lost",
                },
                md(&principal),
                md(&c.action),
                md(&c.resource_label),
                md(&why(&c.new)),
                md(&why(&c.old)),
            ));
        }
        if self.changes.len() > MARKDOWN_ROWS {
            out.push_str(&format!(
                "\n… and {} more changes (see `esi-server policy diff --json`).\n",
                self.changes.len() - MARKDOWN_ROWS
            ));
        }
        out
    }
}

/// `s` safe in a Markdown table cell: every character but letters, digits and `-./:,=@ `
/// becomes a numeric character reference (so `|`, `*`, `_`, `<`, backticks… are text).
pub fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_alphanumeric() || " -./:,=@;()→×".contains(c) {
            out.push(c);
        } else {
            out.push_str(&format!("&#{};", u32::from(c)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{authorization, federation, store, tree};

    /// A subject glob widened from one ServiceAccount to a namespace: the namespace's
    /// representative gains what the Authorization grants; the named one keeps it.
    #[test]
    fn a_widened_glob_is_a_gain_for_its_representative() {
        let world = |subject: &str| {
            vec![
                federation("alpha"),
                store("main"),
                authorization(
                    "reports",
                    subject,
                    "  allowedClusterSecretStores: [main]\n  allowedRemoteKeys: {main: [reports/*]}\n",
                ),
            ]
        };
        let (_a, old) = tree(&world("system:serviceaccount:reporting:nightly"), &[]);
        let (_b, new) = tree(&world("system:serviceaccount:reporting:*"), &[]);
        let d = diff(&old, &new, 10_000);
        let changes: Vec<(Direction, String, String)> = d
            .changes
            .iter()
            .map(|c| {
                (
                    c.change,
                    c.principal_label.clone(),
                    format!("{} {}", c.action, c.resource_label),
                )
            })
            .collect();
        assert_eq!(
            changes,
            [(
                Direction::Gained,
                "alpha/reporting/*".to_owned(),
                "get main:reports/*".to_owned()
            )]
        );
        assert_eq!((d.gained, d.lost, d.truncated), (1, 0, false));
        assert_eq!(
            d.changes[0].new.policies,
            ["authorization/reports/remote-keys"]
        );
        assert_eq!(
            d.changes[0].represents.as_deref(),
            Some("system:serviceaccount:reporting:*")
        );
        // The other way round it is a loss; a tree against itself has no change.
        let back = diff(&new, &old, 10_000);
        assert_eq!((back.gained, back.lost), (0, 1));
        assert!(diff(&new, &new, 10_000).is_empty());
        let text = d.text();
        assert!(text.contains("alpha/reporting/* (any ServiceAccount matching system:serviceaccount:reporting:*)\n  + get"), "{text}");
        let md = d.markdown();
        assert!(md.contains("| 🟢 gained | alpha/reporting/&#42;"), "{md}");
    }

    /// A store that is gone is lost access, whatever the policies say.
    #[test]
    fn a_store_that_is_gone_is_lost() {
        let grants = "  allowedClusterSecretStores: [main]\n";
        let app = authorization("app", "system:serviceaccount:apps:app", grants);
        let (_a, old) = tree(&[federation("alpha"), store("main"), app.clone()], &[]);
        let (_b, new) = tree(&[federation("alpha"), app], &[]);
        let d = diff(&old, &new, 10_000);
        assert!(
            d.changes.iter().all(|c| c.change == Direction::Lost),
            "{}",
            d.text()
        );
        let find = d
            .changes
            .iter()
            .find(|c| c.action == "find")
            .expect("find lost");
        assert!(find.new.decided && !find.new.allowed);
        assert!(why(&find.new).contains("ClusterSecretStore main is not loaded"));
    }

    #[test]
    fn markdown_cells_cannot_inject() {
        assert_eq!(md("a|b"), "a&#124;b");
        assert_eq!(md("<script>"), "&#60;script&#62;");
        assert_eq!(md("db/*"), "db/&#42;");
        assert_eq!(md("x\ny"), "x&#10;y");
        assert_eq!(md("`x`_y_"), "&#96;x&#96;&#95;y&#95;");
    }

    #[test]
    fn reasons_name_the_policies() {
        let o =
            |allowed, decided, forbidden, policies: &[&str], unreachable: Option<&str>| Outcome {
                allowed,
                decided,
                forbidden,
                policies: policies.iter().map(|s| s.to_string()).collect(),
                overrides: Vec::new(),
                unreachable: unreachable.map(str::to_owned),
            };
        assert_eq!(
            why(&o(true, true, false, &["a", "b"], None)),
            "allowed by a, b"
        );
        assert_eq!(why(&o(false, false, true, &["f"], None)), "denied by f");
        assert_eq!(why(&o(false, false, false, &[], None)), "denied by default");
        assert_eq!(
            why(&o(false, true, false, &["a"], Some("gone"))),
            "refused: gone"
        );
        let old = [
            o(true, true, false, &[], None),
            o(false, false, false, &[], None),
        ];
        let new = [
            o(true, true, false, &["x"], None),
            o(true, true, false, &[], None),
        ];
        assert_eq!(changed(&old, &new), [1]);
    }
}
