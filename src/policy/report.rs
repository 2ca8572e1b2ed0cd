//! `esi-server policy report --html OUT`: the access matrix as one self-contained page.
//!
//! Rows are the principals of the relevant requests ([`super::requests`]), grouped by
//! federation: ServiceAccounts by namespace, then OIDC subjects (`any` stands for any other
//! ServiceAccount or subject, a glob's representative for what the glob matches that
//! nothing names); columns are the
//! ClusterSecretStores, generators and generator-state namespaces. A cell lists what the
//! row may do in the column (the keys and key patterns it may `get`, or `all keys`, and
//! `find`; the generator actions), what a forbid takes from it (highlighted: requests a
//! permit would allow and a forbid denies), and links to the
//! policies that decided those requests, which the page lists with their Cedar text. With
//! an old tree too, each cell shows what was gained and lost, coloured.
//!
//! The page has no script and loads nothing: CSS is inline, and every user value (names,
//! keys, policy text, paths) is HTML-escaped ([`esc`]). Cells carry `id="cell-R-C"` and
//! `data-principal`, `data-column`, `data-access` (`full`, `partial`, `none`),
//! `data-forbid` and, with two trees, `data-diff` (`gained`, `lost`, `changed`, `same`),
//! so tests (and readers of the DOM) can check them.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use super::names::Caller;
use super::requests::{Column, Outcome, Probe, Request, Universe};
use super::{PolicyToolError, Tree, listing};
use crate::authz::Action;
use crate::support::text::printable;

/// The rendered page and what it holds.
#[derive(Debug, Clone)]
pub struct Page {
    /// The HTML document.
    pub html: String,
    /// Rows (principals).
    pub rows: usize,
    /// Columns (stores, generators, state namespaces).
    pub columns: usize,
    /// Cells whose access changed (two trees).
    pub changed: usize,
    /// Whether some requests were not evaluated (over the bound).
    pub truncated: bool,
}

/// `s` with `& < > " '` escaped: safe as element text and as a quoted attribute value.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1b1f24; background: #fff; }
h1 { font-size: 1.4em; margin: 0 0 .3em; } h2 { font-size: 1.15em; margin-top: 1.8em; }
.meta { color: #57606a; margin: .2em 0; }
.note { background: #fff8c5; border: 1px solid #d4a72c; padding: .4em .6em; margin: .6em 0; }
.legend span { margin-right: 1em; }
table.matrix { border-collapse: collapse; margin-top: 1em; }
.matrix th, .matrix td { border: 1px solid #d0d7de; padding: .3em .45em; vertical-align: top; }
.matrix thead th { background: #f6f8fa; position: sticky; top: 0; }
.matrix th.group { background: #eaeef2; text-align: left; }
.matrix th.kind { font-weight: normal; color: #57606a; font-size: .85em; }
.matrix td.access-none { background: #fafbfc; }
.matrix td.access-partial { background: #eef9f0; }
.matrix td.access-full { background: #d5f5dc; }
.matrix td.forbid { box-shadow: inset 0 0 0 2px #cf222e; }
.matrix td.diff-gained { background: #aff0b5; }
.matrix td.diff-lost { background: #ffd8d3; }
.matrix td.diff-changed { background: linear-gradient(135deg, #aff0b5 50%, #ffd8d3 50%); }
.any { font-style: italic; color: #57606a; }
.item { display: inline-block; border-radius: 3px; padding: 0 .3em; margin: 1px; font: 12px ui-monospace, monospace; }
.item.allow { background: #2da44e22; border: 1px solid #2da44e; }
.item.gained { background: #2da44e; color: #fff; }
.item.lost { background: #cf222e; color: #fff; text-decoration: line-through; }
.item.forbid { background: #cf222e18; border: 1px solid #cf222e; color: #a40e26; }
.why { display: block; font-size: 11px; margin-top: .2em; }
.why a { color: #0969da; margin-right: .4em; }
.policy { border: 1px solid #d0d7de; border-left: 4px solid #2da44e; margin: .8em 0; padding: .3em .8em; }
.policy.forbid { border-left-color: #cf222e; }
.policy.added { background: #eef9f0; } .policy.removed { background: #fff0ee; } .policy.changed { background: #fff8c5; }
.policy h3 { font: 600 13px ui-monospace, monospace; margin: .3em 0; }
.policy pre { white-space: pre-wrap; font: 12px ui-monospace, monospace; margin: .3em 0; }
:target { outline: 3px solid #0969da; }
"#;

/// One cell's requests.
type Cells = HashMap<(usize, usize), Vec<usize>>;

/// What a request is within its cell: the key (or `(any other key)`), `find`, or the
/// action.
fn item(probe: &Probe, action: Action) -> String {
    match probe {
        Probe::Key { .. } | Probe::Find { .. } => probe.short(),
        _ => action.to_string(),
    }
}

/// Builds the page for `new` (and the changes from `old`), evaluating at most
/// `max_requests` requests per tree.
pub fn report(
    new: &Tree,
    old: Option<&Tree>,
    max_requests: usize,
) -> Result<Page, PolicyToolError> {
    let trees: Vec<&Tree> = old.into_iter().chain([new]).collect();
    let universe = Universe::of(&trees, max_requests);
    let after = universe.evaluate(new);
    let before = old.map(|t| universe.evaluate(t));
    let columns = universe.columns();
    let column_index: HashMap<&Column, usize> =
        columns.iter().enumerate().map(|(i, c)| (c, i)).collect();
    let mut cells: Cells = HashMap::new();
    for (i, r) in universe.requests.iter().enumerate() {
        let column = universe.probes[r.probe].column();
        if let Some(c) = column_index.get(&column) {
            cells.entry((r.principal, *c)).or_default().push(i);
        }
    }

    // Policies of both trees, one anchor per id.
    let printed_new = listing::print(&new.listing)?;
    let printed_old = match old {
        Some(t) => listing::print(&t.listing)?,
        None => Vec::new(),
    };
    let mut ids: BTreeSet<&str> = printed_new.iter().map(|p| p.id.as_str()).collect();
    ids.extend(printed_old.iter().map(|p| p.id.as_str()));
    let anchors: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();

    let mut html = String::new();
    let title = match old {
        Some(o) => format!("ESI policy report: {} → {}", o.label, new.label),
        None => format!("ESI policy report: {}", new.label),
    };
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    let _ = writeln!(
        html,
        "<p class=\"meta\" id=\"summary\" data-requests=\"{}\" data-principals=\"{}\" data-columns=\"{}\">{} requests evaluated per tree: {} principals × {} resources, {} policies in force.</p>",
        universe.requests.len(),
        universe.principals.len(),
        columns.len(),
        universe.requests.len(),
        universe.principals.len(),
        universe.probes.len(),
        printed_new.len()
    );
    if universe.truncated() {
        let _ = writeln!(
            html,
            "<p class=\"note\" id=\"truncated\">Only {} of {} requests were evaluated (--max-requests): cells may be incomplete.</p>",
            universe.requests.len(),
            universe.total
        );
    }
    for t in &trees {
        if !t.snapshot.errors.is_empty() {
            let _ = writeln!(
                html,
                "<p class=\"note\">{}: {} objects did not load and are not in force (see <code>esi-server policy validate</code>).</p>",
                esc(&t.label),
                t.snapshot.errors.len()
            );
        }
    }
    html.push_str("<p class=\"legend\"><span class=\"item allow\">allowed</span><span class=\"item forbid\">denied by a forbid</span>");
    if old.is_some() {
        html.push_str(
            "<span class=\"item gained\">gained</span><span class=\"item lost\">lost</span>",
        );
    }
    html.push_str(
        "<span class=\"any\">any = any other ServiceAccount (or subject, for an OIDC federation)</span></p>\n",
    );

    // The matrix.
    html.push_str("<table class=\"matrix\" id=\"matrix\"><thead><tr><th>namespace</th><th>ServiceAccount or subject</th>");
    for c in &columns {
        let kind = match c {
            Column::Store { .. } => "store",
            Column::Generator(_) => "generator",
            Column::States { .. } => "revokeStates",
        };
        let _ = write!(
            html,
            "<th data-column=\"{}\"><span class=\"kind\">{kind}</span><br>{}</th>",
            esc(&c.label()),
            esc(&c.label())
        );
    }
    html.push_str("</tr></thead><tbody>\n");
    let mut changed = 0;
    let mut federation: Option<&str> = None;
    for (row, p) in universe.principals.iter().enumerate() {
        if federation != Some(p.federation.as_str()) {
            let _ = writeln!(
                html,
                "<tr><th class=\"group\" colspan=\"{}\">federation {}</th></tr>",
                columns.len() + 2,
                esc(&p.federation)
            );
            federation = Some(&p.federation);
        }
        let shown = |s: &str| {
            if s == "*" {
                "<span class=\"any\">any</span>".to_owned()
            } else {
                esc(&printable(s, usize::MAX))
            }
        };
        let title = p
            .represents()
            .map(|g| {
                format!(
                    " title=\"any {} matching {}\"",
                    p.noun(),
                    esc(&printable(&g, usize::MAX))
                )
            })
            .unwrap_or_default();
        let (first, second) = match &p.caller {
            Caller::ServiceAccount { namespace, name } => (shown(namespace), shown(name)),
            Caller::OidcSubject { subject } => (
                "<span class=\"kind\">OIDC subject</span>".to_owned(),
                shown(subject),
            ),
            Caller::SpiffeWorkload { spiffe_id } => (
                "<span class=\"kind\">SPIFFE workload</span>".to_owned(),
                shown(spiffe_id),
            ),
        };
        let _ = write!(
            html,
            "<tr id=\"row-{row}\" data-principal=\"{}\" data-type=\"{}\"><th{title}>{first}</th><th{title}>{second}</th>",
            esc(&p.label()),
            p.kind(),
        );
        for (col, c) in columns.iter().enumerate() {
            let requests = cells.get(&(row, col)).map(Vec::as_slice).unwrap_or(&[]);
            let cell = Cell::of(&universe, requests, &after, before.as_deref());
            if cell.diff.is_some_and(|d| d != "same") {
                changed += 1;
            }
            cell.write(&mut html, row, col, &p.label(), &c.label(), &anchors);
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody></table>\n");

    // The policies.
    html.push_str("<h2 id=\"policies\">Policies</h2>\n");
    let old_text: HashMap<&str, &listing::PrintedPolicy> =
        printed_old.iter().map(|p| (p.id.as_str(), p)).collect();
    let new_ids: BTreeSet<&str> = printed_new.iter().map(|p| p.id.as_str()).collect();
    for p in &printed_new {
        let status = match (old, old_text.get(p.id.as_str())) {
            (None, _) => "",
            (Some(_), None) => "added",
            (Some(_), Some(o)) if o.text != p.text => "changed",
            (Some(_), Some(_)) => "",
        };
        write_policy(&mut html, p, new, status, &anchors);
    }
    if let Some(o) = old {
        for p in printed_old
            .iter()
            .filter(|p| !new_ids.contains(p.id.as_str()))
        {
            write_policy(&mut html, p, o, "removed", &anchors);
        }
    }
    html.push_str("</body></html>\n");
    Ok(Page {
        html,
        rows: universe.principals.len(),
        columns: columns.len(),
        changed,
        truncated: universe.truncated(),
    })
}

fn write_policy(
    html: &mut String,
    p: &listing::PrintedPolicy,
    tree: &Tree,
    status: &str,
    anchors: &HashMap<&str, usize>,
) {
    let anchor = anchors.get(p.id.as_str()).copied().unwrap_or(usize::MAX);
    let origin = p
        .origin
        .as_deref()
        .map(|o| format!(" ({})", tree.shown(o)))
        .unwrap_or_default();
    let source = if p.origin.is_some() {
        p.source.clone()
    } else {
        tree.shown(&p.source)
    };
    let badge = if status.is_empty() {
        String::new()
    } else {
        format!(" — {status}")
    };
    let _ = writeln!(
        html,
        "<section class=\"policy {} {status}\" id=\"policy-{anchor}\" data-policy=\"{}\"><h3>{} ({}){badge}</h3><div class=\"meta\">{}{}</div><pre>{}</pre></section>",
        p.effect,
        esc(&p.id),
        esc(&p.id),
        p.effect,
        esc(&source),
        esc(&origin),
        esc(&p.text)
    );
}

/// What one cell shows.
struct Cell {
    /// `(item, class)`: `allow`, `forbid`, `gained`, `lost`.
    items: Vec<(String, &'static str)>,
    /// Policy ids that decided the cell's requests: the permits that allow, the forbids
    /// that take something away and the permits they override (the new tree's), and the
    /// old tree's permits for what was lost.
    policies: BTreeSet<String>,
    access: &'static str,
    forbid: bool,
    diff: Option<&'static str>,
}

impl Cell {
    fn of(
        universe: &Universe,
        requests: &[usize],
        after: &[Outcome],
        before: Option<&[Outcome]>,
    ) -> Cell {
        let mut items: Vec<(String, &'static str)> = Vec::new();
        let mut policies = BTreeSet::new();
        let (mut allowed, mut gained, mut lost, mut forbid) = (0, 0, 0, false);
        // Keys of a store, for "all keys".
        let mut keys = 0;
        let mut keys_allowed_unchanged = 0;
        // `(item, class, is a key)`.
        let mut shown: Vec<(String, &'static str, bool)> = Vec::new();
        for &i in requests {
            let Request { probe, action, .. } = universe.requests[i];
            let p = &universe.probes[probe];
            let now = &after[i];
            let was = before.map(|b| &b[i]);
            let label = item(p, action);
            let is_key = matches!(p, Probe::Key { .. });
            if is_key {
                keys += 1;
            }
            let class = match (now.allowed, was.map(|w| w.allowed)) {
                (true, Some(false)) => {
                    gained += 1;
                    Some("gained")
                }
                (false, Some(true)) => {
                    lost += 1;
                    Some("lost")
                }
                (true, _) => {
                    if is_key {
                        keys_allowed_unchanged += 1;
                    }
                    Some("allow")
                }
                (false, _) if !now.overrides.is_empty() => Some("forbid"),
                (false, _) => None,
            };
            if now.allowed {
                allowed += 1;
            }
            // A forbid is shown where it takes something away (a permit it overrides).
            let overriding = !now.overrides.is_empty();
            if overriding {
                forbid = true;
            }
            if now.allowed || overriding {
                policies.extend(now.policies.iter().cloned());
                policies.extend(now.overrides.iter().cloned());
            }
            if let Some(w) = was.filter(|w| w.allowed && !now.allowed) {
                policies.extend(w.policies.iter().cloned());
            }
            if let Some(class) = class {
                shown.push((label, class, is_key));
            }
        }
        // Every key allowed, unchanged: one item says so.
        if keys > 0 && keys_allowed_unchanged == keys {
            items.push(("all keys".to_owned(), "allow"));
            shown.retain(|(_, _, is_key)| !is_key);
        }
        items.extend(shown.into_iter().map(|(label, class, _)| (label, class)));
        let total = requests.len();
        let access = if total > 0 && allowed == total {
            "full"
        } else if allowed > 0 {
            "partial"
        } else {
            "none"
        };
        let diff = before.map(|_| match (gained > 0, lost > 0) {
            (true, true) => "changed",
            (true, false) => "gained",
            (false, true) => "lost",
            (false, false) => "same",
        });
        Cell {
            items,
            policies,
            access,
            forbid,
            diff,
        }
    }

    fn write(
        &self,
        html: &mut String,
        row: usize,
        col: usize,
        principal: &str,
        column: &str,
        anchors: &HashMap<&str, usize>,
    ) {
        let mut classes = format!("access-{}", self.access);
        if self.forbid {
            classes.push_str(" forbid");
        }
        if let Some(d) = self.diff.filter(|d| *d != "same") {
            classes.push_str(&format!(" diff-{d}"));
        }
        let diff = self
            .diff
            .map(|d| format!(" data-diff=\"{d}\""))
            .unwrap_or_default();
        let _ = write!(
            html,
            "<td id=\"cell-{row}-{col}\" class=\"{classes}\" data-principal=\"{}\" data-column=\"{}\" data-access=\"{}\" data-forbid=\"{}\"{diff}>",
            esc(principal),
            esc(column),
            self.access,
            self.forbid
        );
        for (label, class) in &self.items {
            let _ = write!(
                html,
                "<span class=\"item {class}\" data-item=\"{}\" data-state=\"{class}\">{}</span>",
                esc(label),
                esc(label)
            );
        }
        if !self.policies.is_empty() {
            html.push_str("<span class=\"why\">");
            for id in &self.policies {
                match anchors.get(id.as_str()) {
                    Some(a) => {
                        let _ = write!(html, "<a href=\"#policy-{a}\">{}</a>", esc(id));
                    }
                    None => {
                        let _ = write!(html, "<span>{}</span>", esc(id));
                    }
                }
            }
            html.push_str("</span>");
        }
        html.push_str("</td>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{app_world, authorization, federation, store, tree};

    /// Names, keys, ids and policy text are user data: none of it becomes markup.
    #[test]
    fn user_values_cannot_inject_markup() {
        let (_dir, t) = tree(
            &[
                federation("alpha"),
                store("main"),
                authorization(
                    "app",
                    "system:serviceaccount:<b>:x",
                    "  allowedClusterSecretStores: [main]\n  allowedRemoteKeys: {main: [\"<script>alert(1)</script>*\"]}\n",
                ),
            ],
            &[(
                "p.cedar",
                "@id(\"<img/src=x/onerror=alert(2)>\")\nforbid (principal, action, resource is Esi::RemoteKey) when { resource.key == \"</pre><script>alert(3)</script>\" };\n",
            )],
        );
        assert!(t.snapshot.errors.is_empty(), "{:?}", t.snapshot.errors);
        let page = report(&t, None, 10_000).expect("page");
        for bad in ["<script", "<img", "<b>"] {
            assert!(!page.html.contains(bad), "{bad} in the page");
        }
        assert!(page.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;*"));
        assert!(page.html.contains("data-principal=\"alpha/&lt;b&gt;/x\""));
        assert!(page.html.contains("&lt;img/src=x/onerror=alert(2)&gt;"));
        // The only elements are ours: no script, no external reference.
        assert!(!page.html.contains("src=\"") && !page.html.contains("href=\"http"));
    }

    /// Cells: full, partial and no access; forbids marked; with two trees, gains and
    /// losses.
    #[test]
    fn cells_say_what_each_principal_may_do() {
        let world = |subject: &str| {
            let mut world = app_world();
            world.push(store("other"));
            world.push(authorization(
                "reports",
                subject,
                "  allowedClusterSecretStores: [main]\n  allowedRemoteKeys: {main: [reports/*]}\n",
            ));
            world
        };
        let forbid = [(
            "f.cedar",
            "@id(\"no-admin\") forbid (principal, action, resource is Esi::RemoteKey) when { resource.key == \"admin\" };",
        )];
        let (_a, old) = tree(&world("system:serviceaccount:reporting:nightly"), &forbid);
        let (_b, new) = tree(&world("system:serviceaccount:reporting:*"), &forbid);
        let page = report(&new, None, 10_000).expect("page");
        let cell = |html: &str, principal: &str, column: &str| -> String {
            let at = html
                .find(&format!(
                    "data-principal=\"{principal}\" data-column=\"{column}\""
                ))
                .unwrap_or_else(|| panic!("{principal} {column}"));
            let end = html[at..].find("</td>").map_or(html.len(), |e| at + e);
            html[at..end].to_owned()
        };
        let app = cell(&page.html, "alpha/apps/app", "main");
        assert!(
            app.contains("data-access=\"partial\" data-forbid=\"true\""),
            "{app}"
        );
        assert!(
            app.contains("data-item=\"admin\" data-state=\"forbid\""),
            "{app}"
        );
        assert!(
            app.contains("data-item=\"find\" data-state=\"allow\""),
            "{app}"
        );
        assert!(app.contains("href=\"#policy-"), "{app}");
        // reports/* does not cover `admin`: the forbid takes nothing from reporting.
        let reporting = cell(&page.html, "alpha/reporting/*", "main");
        assert!(
            reporting.contains("data-access=\"partial\" data-forbid=\"false\""),
            "{reporting}"
        );
        assert!(
            reporting.contains("data-item=\"reports/*\" data-state=\"allow\""),
            "{reporting}"
        );
        let none = cell(&page.html, "alpha/*/*", "other");
        assert!(
            none.contains("data-access=\"none\" data-forbid=\"false\""),
            "{none}"
        );
        assert_eq!((page.columns, page.changed), (2, 0));
        // Every linked policy is on the page.
        assert!(page.html.contains("data-policy=\"no-admin\""));
        assert!(
            page.html
                .contains("data-policy=\"authorization/reports/remote-keys\"")
        );

        let page = report(&new, Some(&old), 10_000).expect("page");
        let widened = cell(&page.html, "alpha/reporting/*", "main");
        assert!(widened.contains("data-diff=\"gained\""), "{widened}");
        assert!(
            widened.contains("data-item=\"reports/*\" data-state=\"gained\""),
            "{widened}"
        );
        let nightly = cell(&page.html, "alpha/reporting/nightly", "main");
        assert!(nightly.contains("data-diff=\"same\""), "{nightly}");
        assert_eq!(page.changed, 1);
        assert!(
            page.html.contains("— changed</h3>"),
            "the compiled policy changed"
        );
    }

    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
