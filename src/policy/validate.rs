//! `esi-server policy validate` (and `check`): every problem of a load, located.
//!
//! The problems are the loader's own ([`Snapshot::errors`], [`Snapshot::warnings`]), so
//! `validate`, `check` and the server report the same things. `validate` adds to them:
//!
//! * references to what does not exist (an Authorization naming a federation, store or
//!   generator that is not there) count as **errors** (the server loads such an
//!   Authorization, and that part of it grants nothing: a typo, usually);
//! * each problem points at its file and line: `.cedar` errors at the `line:column` the
//!   Cedar parser or validator gave; manifest problems at the object's document, and a
//!   missing reference at the line that names it.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::render::{self, Span};
use crate::config::Snapshot;
use crate::config::snapshot::MISSING_PREFIX;
use crate::source::LoadError;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Fails `validate`.
    Error,
    /// Shown, does not fail.
    Warning,
}

impl Severity {
    /// `error` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem, located.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// The file (without the `#document` suffix of origins).
    pub file: String,
    /// The origin as the loader reports it (`file#document`, a path, …).
    pub origin: String,
    /// The object, when known (`Kind/name`, `policy file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// What is wrong.
    pub message: String,
    /// Where, when it could be found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span: Option<Span>,
}

/// Every problem of a load.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// In the loader's order: errors, then warnings.
    pub problems: Vec<Problem>,
    /// Stores, generators, federations and policies in force.
    pub counts: Counts,
}

/// What a load put in force.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Counts {
    /// ClusterSecretStores.
    pub stores: usize,
    /// Generators.
    pub generators: usize,
    /// KubernetesFederations.
    pub federations: usize,
    /// Policies (compiled and hand-written).
    pub policies: usize,
}

impl Report {
    /// Problems that fail `validate`.
    pub fn errors(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count()
    }

    /// Every problem rendered with its source line.
    pub fn render(&self) -> String {
        let mut files = FileCache::default();
        let mut out = String::new();
        for p in &self.problems {
            if p.span.is_none() && p.object.is_none() && p.message.starts_with(NOT_LOADED) {
                // A skipped file: one line.
                out.push_str(&format!(
                    "{}: {}: {}\n",
                    p.severity.as_str(),
                    p.origin,
                    p.message
                ));
                continue;
            }
            out.push_str(&render_problem(&mut files, p, None));
        }
        out
    }
}

/// One problem with its source line (`severity[rule]: object: message`, `--> file:line`),
/// followed by an empty line.
pub(crate) fn render_problem(files: &mut FileCache, p: &Problem, rule: Option<&str>) -> String {
    let message = match &p.object {
        Some(o) => format!("{o}: {}", p.message),
        None => p.message.clone(),
    };
    let severity = match rule {
        Some(rule) => format!("{}[{rule}]", p.severity.as_str()),
        None => p.severity.as_str().to_owned(),
    };
    let source_line = p.span.as_ref().and_then(|s| files.line(&p.file, s.line));
    let shown = if p.span.is_some() { &p.file } else { &p.origin };
    let mut out = render::render(&severity, &message, shown, p.span.as_ref(), source_line);
    out.push('\n');
    out
}

/// Files read again to locate problems (each once, bounded), with their line starts and
/// YAML document bounds indexed once: locating a problem costs the lines it searches, not
/// the file (review finding 7: 20,000 problems in one file re-split it 20,000 times, 46.8 s).
#[derive(Default)]
pub(crate) struct FileCache {
    texts: HashMap<String, Option<Indexed>>,
}

/// A file's text, the byte offset of each line's start, and its documents' line bounds.
struct Indexed {
    text: String,
    line_starts: Vec<usize>,
    documents: Vec<(usize, usize)>,
}

impl Indexed {
    fn new(text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1)
                .filter(|&i| i < text.len()),
        );
        let documents = documents(&text);
        Self {
            text,
            line_starts,
            documents,
        }
    }

    /// Lines `[from, to)` (1-based; `to` `None`: to the end) as one slice.
    fn lines(&self, from: usize, to: Option<usize>) -> &str {
        let at = |line: usize| {
            line.checked_sub(1)
                .and_then(|i| self.line_starts.get(i).copied())
                .unwrap_or(self.text.len())
        };
        let start = at(from.max(1));
        let end = to.map_or(self.text.len(), at).max(start);
        self.text.get(start..end).unwrap_or_default()
    }
}

impl FileCache {
    fn indexed(&mut self, file: &str) -> Option<&Indexed> {
        self.texts
            .entry(file.to_owned())
            .or_insert_with(|| super::read_bounded(Path::new(file)).ok().map(Indexed::new))
            .as_ref()
    }

    /// The text of `file` (`None` if it cannot be read or is too large).
    pub(crate) fn text(&mut self, file: &str) -> Option<&str> {
        self.indexed(file).map(|i| i.text.as_str())
    }

    /// Line `line` (1-based) of `file`, without its line break.
    pub(crate) fn line(&mut self, file: &str, line: usize) -> Option<&str> {
        let indexed = self.indexed(file)?;
        if line == 0 || line > indexed.line_starts.len() {
            return None;
        }
        indexed
            .lines(line, Some(line + 1))
            .lines()
            .next()
            .or(Some(""))
    }

    /// Lines `[start, end)` of YAML document `doc` of `file` ([`documents`]).
    fn document(&mut self, file: &str, doc: usize) -> Option<(usize, Option<usize>)> {
        let (start, end) = *self.indexed(file)?.documents.get(doc)?;
        Some((start, Some(end)))
    }

    /// [`render::find_token`] in lines `[from, to)` of `file`, searching those lines only.
    pub(crate) fn find_token(
        &mut self,
        file: &str,
        needle: &str,
        from: usize,
        to: Option<usize>,
    ) -> Option<Span> {
        let indexed = self.indexed(file)?;
        let from = from.max(1);
        render::find_token(indexed.lines(from, to), needle, 1, None).map(|span| Span {
            line: span.line + from - 1,
            ..span
        })
    }
}

/// The problems of `snapshot`, located.
pub fn report(snapshot: &Snapshot) -> Report {
    let mut files = FileCache::default();
    let mut problems = Vec::new();
    for e in &snapshot.errors {
        locate_error(e, &mut files, &mut problems);
    }
    // Review finding 5 (issue 13): an object of our API groups with a kind or version the
    // loader does not know was ignored (or loaded as if it were served) without a word.
    for u in &snapshot.unrecognized {
        let token = if u.error.reason.starts_with("unknown kind") {
            u.kind.as_str()
        } else {
            u.api_version.as_str()
        };
        problems.push(object_problem(
            &mut files,
            Severity::Error,
            &u.error.origin,
            u.error.object.as_deref().unwrap_or_default(),
            Some((None, token)),
            u.error.reason.clone(),
        ));
    }
    for w in &snapshot.warnings {
        locate_warning(w, &mut files, &mut problems);
    }
    Report {
        problems,
        counts: Counts {
            stores: snapshot.stores.len(),
            generators: snapshot.generators.len(),
            federations: snapshot.federations.len(),
            policies: snapshot.policies.policy_count(),
        },
    }
}

/// How the message of a file the loader skips begins ([`report_with_files`]).
const NOT_LOADED: &str = "not loaded: ";

/// [`report`], and the files the directory loader skips without a word that were probably
/// meant to load ([`crate::source::dir::skipped_files`]: hidden files, extensions of the
/// wrong case, directories below its depth limit, symlinks that resolve to nothing), one
/// warning each (the loader does not refuse them; it does not read them).
pub fn report_with_files(snapshot: &Snapshot, sources: &super::Sources) -> Report {
    let mut report = report(snapshot);
    for s in crate::source::dir::skipped_files(&sources.manifests, sources.policies.as_deref()) {
        let shown = s.path.display().to_string();
        report.problems.push(Problem {
            severity: Severity::Warning,
            file: shown.clone(),
            origin: shown,
            object: None,
            message: format!("{NOT_LOADED}{}", s.reason),
            span: None,
        });
    }
    report
}

/// `file#3/items/0` → (`file`, document 3).
fn split_origin(origin: &str) -> (&str, Option<usize>) {
    match origin.rsplit_once('#') {
        Some((file, rest)) => {
            let doc = rest.split('/').next().and_then(|d| d.parse().ok());
            match doc {
                Some(doc) => (file, Some(doc)),
                None => (origin, None),
            }
        }
        None => (origin, None),
    }
}

/// Every YAML document's lines `[first line with content, end)` (1-based) of `text`, in
/// order, counting documents as the loader does (empty ones are skipped).
fn documents(text: &str) -> Vec<(usize, usize)> {
    let mut docs: Vec<(usize, usize)> = Vec::new();
    let mut start = 1;
    let mut content = false;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let number = i + 1;
        let marker = *line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if marker {
            if content {
                docs.push((start, number));
            }
            start = number + 1;
            content = false;
            continue;
        }
        let t = line.trim();
        if !t.is_empty() && !t.starts_with('#') && t != "..." {
            content = true;
        }
    }
    if content {
        docs.push((start, lines.len() + 1));
    }
    // The first line with content, so the span points at the object, not a comment.
    docs.into_iter()
        .map(|(s, e)| {
            let first = (s..e)
                .find(|n| {
                    lines
                        .get(n - 1)
                        .is_some_and(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
                })
                .unwrap_or(s);
            (first, e)
        })
        .collect()
}

/// The object's name in `Kind/name` or `Kind/namespace/name`.
fn object_name(object: Option<&str>) -> Option<&str> {
    object?.rsplit('/').next().filter(|n| !n.is_empty())
}

fn problem(severity: Severity, e: &LoadError, message: String, span: Option<Span>) -> Problem {
    let (file, _) = split_origin(&e.origin);
    Problem {
        severity,
        file: file.to_owned(),
        origin: e.origin.clone(),
        object: e.object.clone(),
        message,
        span,
    }
}

/// The span of an object's document: its `name: <name>` line, else its first line.
fn document_span(e: &LoadError, files: &mut FileCache) -> Option<Span> {
    object_span(files, &e.origin, e.object.as_deref())
}

/// The span of the document `origin` (`file#document`) holding `object` (`Kind/name`):
/// its name's line, else its first line.
fn object_span(files: &mut FileCache, origin: &str, object: Option<&str>) -> Option<Span> {
    let (file, doc) = split_origin(origin);
    let (start, end) = files.document(file, doc?)?;
    object_name(object)
        .and_then(|name| files.find_token(file, name, start, end))
        .or_else(|| {
            let line = files.line(file, start)?;
            Some(render::span_at(line, 1, 1)).map(|s| Span { line: start, ..s })
        })
}

/// A problem about `object` (`Kind/name`) read from `origin` (`file#document`), pointing
/// at `token` in its document — after the line naming `after`, when given — else at the
/// object's name.
pub(crate) fn object_problem(
    files: &mut FileCache,
    severity: Severity,
    origin: &str,
    object: &str,
    at: Option<(Option<&str>, &str)>,
    message: String,
) -> Problem {
    let (file, doc) = split_origin(origin);
    let found = at.and_then(|(after, token)| {
        let (mut start, end) = files.document(file, doc?)?;
        if let Some(after) = after {
            start = files
                .find_token(file, after, start, end)
                .map_or(start, |s| s.line);
        }
        files.find_token(file, token, start, end)
    });
    let span = found.or_else(|| object_span(files, origin, Some(object)));
    Problem {
        severity,
        file: file.to_owned(),
        origin: origin.to_owned(),
        object: Some(object.to_owned()),
        message,
        span,
    }
}

fn locate_error(e: &LoadError, files: &mut FileCache, out: &mut Vec<Problem>) {
    if e.object.as_deref() == Some("policy file") {
        let segments = cedar_segments(&e.reason);
        if !segments.is_empty() {
            let text = files.text(&e.origin).map(str::to_owned);
            for (line, column, message) in segments {
                let span = text
                    .as_deref()
                    .map(|t| render::span_at(t, line, column))
                    .or(Some(Span {
                        line,
                        column,
                        len: 1,
                    }));
                out.push(problem(Severity::Error, e, message, span));
            }
            return;
        }
    }
    let span = document_span(e, files);
    out.push(problem(Severity::Error, e, e.reason.clone(), span));
}

fn locate_warning(w: &LoadError, files: &mut FileCache, out: &mut Vec<Problem>) {
    let Some(missing) = w.reason.strip_prefix(MISSING_PREFIX) else {
        let span = document_span(w, files);
        out.push(problem(Severity::Warning, w, w.reason.clone(), span));
        return;
    };
    let (file, doc) = split_origin(&w.origin);
    let bounds = doc.and_then(|doc| files.document(file, doc));
    // `Kind name` entries, joined with ", " (names cannot hold ", ").
    for entry in missing.split(", ") {
        let (kind, name) = entry.split_once(' ').unwrap_or(("", entry));
        // A generator is `namespace/name`: its name is what the line shows.
        let shown = name.rsplit('/').next().unwrap_or(name);
        let span = bounds.and_then(|(start, end)| files.find_token(file, shown, start, end));
        let span = span.or_else(|| document_span(w, files));
        out.push(problem(
            Severity::Error,
            w,
            format!("{kind} {name} does not exist (that part of the Authorization grants nothing)"),
            span,
        ));
    }
}

/// The `line L:C: message` parts of a policy file's load error (the engine's format:
/// `<what>: line L:C: msg; line L:C: msg`).
fn cedar_segments(reason: &str) -> Vec<(usize, usize, String)> {
    let Ok(re) = regex::Regex::new(r"line (\d+):(\d+): ") else {
        return Vec::new();
    };
    let found: Vec<(usize, usize, usize, usize)> = re
        .captures_iter(reason)
        .filter_map(|c| {
            let whole = c.get(0)?;
            let line = c.get(1)?.as_str().parse().ok()?;
            let column = c.get(2)?.as_str().parse().ok()?;
            Some((whole.start(), whole.end(), line, column))
        })
        .collect();
    let Some(first) = found.first() else {
        return Vec::new();
    };
    let prefix = reason[..first.0].trim_end_matches([':', ' ']);
    let mut out = Vec::new();
    for (i, (_, end, line, column)) in found.iter().enumerate() {
        let stop = found.get(i + 1).map_or(reason.len(), |next| next.0);
        let message = reason[*end..stop].trim_end_matches([';', ' ']);
        out.push((*line, *column, format!("{prefix}: {message}")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The indexed lookups answer as searching the whole text does, for every token on
    /// every line range (the index only makes them cost the lines searched).
    #[test]
    fn indexed_lookups_agree_with_whole_text_search() {
        let text = "# c\nkind: A\nmetadata: {name: a}\n---\n\n---\nkind: B\nmetadata: {name: b}\nspec: {x: [a, b]}\n...\n---\nkind: C\nmetadata: {name: c}";
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("f.yaml");
        std::fs::write(&path, text).expect("write");
        let file = path.to_str().expect("utf-8");
        let mut files = FileCache::default();
        let lines = text.lines().count();
        for n in 0..=lines + 1 {
            assert_eq!(files.line(file, n), render::line_of(text, n), "line {n}");
        }
        for (i, bounds) in documents(text).into_iter().enumerate() {
            assert_eq!(files.document(file, i), Some((bounds.0, Some(bounds.1))));
        }
        for needle in ["a", "b", "c", "kind", "name", "x", "spec", "zz"] {
            for from in 1..=lines + 1 {
                for to in (from..=lines + 2).map(Some).chain([None]) {
                    assert_eq!(
                        files.find_token(file, needle, from, to),
                        render::find_token(text, needle, from, to),
                        "{needle} [{from}, {to:?})"
                    );
                }
            }
        }
    }

    #[test]
    fn documents_are_counted_as_the_loader_counts_them() {
        let text = "# header\n---\na: 1\n---\n---\n# only a comment\nb: 2\nc: 3\n---\nd: 4\n";
        assert_eq!(documents(text).first(), Some(&(3, 4)));
        assert_eq!(documents(text).get(1), Some(&(7, 9)));
        assert_eq!(documents(text).get(2), Some(&(10, 11)));
        assert_eq!(documents(text).get(3), None);
        assert_eq!(split_origin("m/a.yaml#2/items/1"), ("m/a.yaml", Some(2)));
        assert_eq!(split_origin("p/x.cedar"), ("p/x.cedar", None));
    }

    #[test]
    fn cedar_errors_split_into_located_messages() {
        let reason = "does not validate against the schema: line 3:14: attribute `nope` not found; line 9:1: unknown action (help: did you mean `get`?)";
        assert_eq!(
            cedar_segments(reason),
            vec![
                (
                    3,
                    14,
                    "does not validate against the schema: attribute `nope` not found".into()
                ),
                (
                    9,
                    1,
                    "does not validate against the schema: unknown action (help: did you mean `get`?)"
                        .into()
                ),
            ]
        );
        assert!(cedar_segments("policy id \"x\" appears twice in this file").is_empty());
    }

    /// The engine's message format is what `cedar_segments` reads: a schema error in a
    /// file comes back located.
    #[test]
    fn engine_messages_carry_line_and_column() {
        use crate::authz::{PolicyEngine, PolicyFile};
        let text =
            "// c\npermit (principal, action, resource)\nwhen { principal.nope == \"x\" };\n";
        let (_, errors) = PolicyEngine::build(
            &[],
            &[PolicyFile {
                path: "bad.cedar".into(),
                text: text.into(),
            }],
        );
        assert_eq!(errors.len(), 1);
        let segments = cedar_segments(&errors[0].reason);
        assert!(!segments.is_empty(), "{:?}", errors[0]);
        assert!(
            segments.iter().all(|(line, _, _)| *line == 3),
            "{segments:?}"
        );
    }
}
