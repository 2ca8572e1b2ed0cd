//! Reads a directory of Kubernetes manifests (recursive, multi-document YAML or JSON).
//!
//! The loader only splits files into objects and reports what it cannot read; turning
//! objects into validated domain types is the snapshot builder's job. A bad file or
//! object is reported with its origin and skipped: the rest still loads.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::resources::ObjectMeta;

/// Largest manifest or policy file read (bytes); bigger files are reported and skipped.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Most files read from one directory tree.
pub const MAX_FILES: usize = 10_000;
/// Deepest directory nesting followed.
const MAX_DEPTH: usize = 16;

/// One object read from a manifest file.
#[derive(Clone)]
pub struct RawObject {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata`.
    pub metadata: ObjectMeta,
    /// The whole object, for kind-specific parsing.
    pub body: serde_json::Value,
    /// Where it came from: `path#document`.
    pub origin: String,
}

// The body may hold Secret data: Debug shows only what identifies the object.
impl fmt::Debug for RawObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawObject")
            .field("api_version", &self.api_version)
            .field("kind", &self.kind)
            .field("metadata", &self.metadata)
            .field("origin", &self.origin)
            .finish()
    }
}

impl RawObject {
    /// `Kind/namespace/name` or `Kind/name`, for messages.
    pub fn display_name(&self) -> String {
        match &self.metadata.namespace {
            Some(ns) => format!("{}/{}/{}", self.kind, ns, self.metadata.name),
            None => format!("{}/{}", self.kind, self.metadata.name),
        }
    }
}

/// Something that could not be loaded, with where and why. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// File (and document) it came from.
    pub origin: String,
    /// The object, when known (`Kind/name`).
    pub object: Option<String>,
    /// Why it was rejected.
    pub reason: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.object {
            Some(o) => write!(f, "{}: {}: {}", self.origin, o, self.reason),
            None => write!(f, "{}: {}", self.origin, self.reason),
        }
    }
}

/// A text file read from a directory.
#[derive(Debug, Clone)]
pub struct TextFile {
    /// Its path.
    pub path: PathBuf,
    /// Its content.
    pub text: String,
}

/// Lists files under `dir` whose extension is one of `extensions`, sorted, bounded.
fn list_files(dir: &Path, extensions: &[&str], errors: &mut Vec<LoadError>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((current, depth)) = stack.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(e) => e,
            Err(e) => {
                errors.push(LoadError {
                    origin: current.display().to_string(),
                    object: None,
                    reason: format!("cannot read directory: {e}"),
                });
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            // Hidden entries include Kubernetes ConfigMap mounts' `..data` swaps: the
            // visible symlinks already point at the current content.
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if depth + 1 < MAX_DEPTH {
                    stack.push((path, depth + 1));
                }
            } else if meta.is_file()
                && path
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| extensions.contains(&e))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    if out.len() > MAX_FILES {
        errors.push(LoadError {
            origin: dir.display().to_string(),
            object: None,
            reason: format!("more than {MAX_FILES} files; the rest are ignored"),
        });
        out.truncate(MAX_FILES);
    }
    out
}

/// Path, size and modification time (ns since the epoch) of each file `read_text_files`
/// would read: a cheap change detector.
pub fn file_stamps(
    dir: &Path,
    extensions: &[&str],
    errors: &mut Vec<LoadError>,
) -> Vec<(PathBuf, u64, u128)> {
    list_files(dir, extensions, errors)
        .into_iter()
        .map(|path| {
            let (len, modified) = std::fs::metadata(&path)
                .map(|m| {
                    let t = m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos());
                    (m.len(), t)
                })
                .unwrap_or((0, 0));
            (path, len, modified)
        })
        .collect()
}

/// Reads every file with one of `extensions` under `dir` (sorted by path), bounded in size.
pub fn read_text_files(dir: &Path, extensions: &[&str]) -> (Vec<TextFile>, Vec<LoadError>) {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    for path in list_files(dir, extensions, &mut errors) {
        match read_bounded(&path) {
            Ok(text) => files.push(TextFile { path, text }),
            Err(reason) => errors.push(LoadError {
                origin: path.display().to_string(),
                object: None,
                reason,
            }),
        }
    }
    (files, errors)
}

fn read_bounded(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes, more than the {MAX_FILE_BYTES} allowed",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "file is not UTF-8".to_string())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeAndMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
}

/// Splits one manifest text into objects. `List` kinds are flattened.
pub fn parse_manifest(path: &str, text: &str) -> (Vec<RawObject>, Vec<LoadError>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    let docs: Vec<serde_json::Value> = match serde_saphyr::from_multiple(text) {
        Ok(d) => d,
        Err(e) => {
            errors.push(LoadError {
                origin: path.to_string(),
                object: None,
                reason: format!("invalid YAML: {}", first_line(&e.to_string())),
            });
            return (objects, errors);
        }
    };
    for (index, doc) in docs.into_iter().enumerate() {
        let origin = format!("{path}#{index}");
        push_object(doc, &origin, &mut objects, &mut errors, 0);
    }
    (objects, errors)
}

fn push_object(
    doc: serde_json::Value,
    origin: &str,
    objects: &mut Vec<RawObject>,
    errors: &mut Vec<LoadError>,
    depth: usize,
) {
    if doc.is_null() {
        return; // empty document (e.g. a trailing `---`)
    }
    let head: TypeAndMeta = match serde_json::from_value(doc.clone()) {
        Ok(h) => h,
        Err(e) => {
            errors.push(LoadError {
                origin: origin.to_string(),
                object: None,
                reason: format!("not a Kubernetes object: {e}"),
            });
            return;
        }
    };
    if head.kind.ends_with("List")
        && depth == 0
        && let Some(items) = doc.get("items").and_then(|i| i.as_array())
    {
        for (i, item) in items.iter().enumerate() {
            push_object(
                item.clone(),
                &format!("{origin}/items/{i}"),
                objects,
                errors,
                depth + 1,
            );
        }
        return;
    }
    if head.kind.is_empty() || head.api_version.is_empty() {
        errors.push(LoadError {
            origin: origin.to_string(),
            object: None,
            reason: "missing apiVersion or kind".into(),
        });
        return;
    }
    if head.metadata.name.is_empty() {
        errors.push(LoadError {
            origin: origin.to_string(),
            object: Some(head.kind),
            reason: "missing metadata.name".into(),
        });
        return;
    }
    objects.push(RawObject {
        api_version: head.api_version,
        kind: head.kind,
        metadata: head.metadata,
        body: doc,
        origin: origin.to_string(),
    });
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// Reads every manifest under `dir`.
pub fn read_manifest_dir(dir: &Path) -> (Vec<RawObject>, Vec<LoadError>) {
    let (files, mut errors) = read_text_files(dir, &["yaml", "yml", "json"]);
    let mut objects = Vec::new();
    for file in files {
        let (mut objs, mut errs) = parse_manifest(&file.path.display().to_string(), &file.text);
        objects.append(&mut objs);
        errors.append(&mut errs);
    }
    (objects, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_with_lists_and_bad_docs() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: a, namespace: ns}\nstringData: {k: v}\n---\n---\nkind: Broken\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: b}\n";
        let (objs, errs) = parse_manifest("f.yaml", text);
        assert_eq!(objs.len(), 2, "{objs:?}");
        assert_eq!(objs[0].display_name(), "Secret/ns/a");
        assert_eq!(objs[1].origin, "f.yaml#2/items/0");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].origin.starts_with("f.yaml#1"));
        assert!(!format!("{:?}", objs[0]).contains("stringData"));
    }

    #[test]
    fn invalid_yaml_is_reported_not_fatal() {
        let (objs, errs) = parse_manifest("bad.yaml", "a: [unclosed");
        assert!(objs.is_empty());
        assert_eq!(errs.len(), 1);
        assert!(errs[0].reason.starts_with("invalid YAML"));
    }

    #[test]
    fn reads_ese_samples() {
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/ese-samples"
        ));
        let (objs, errs) = read_manifest_dir(dir);
        assert!(errs.is_empty(), "{errs:?}");
        let kinds: Vec<_> = objs.iter().map(|o| o.kind.as_str()).collect();
        assert!(kinds.contains(&"KubernetesFederation"));
        assert!(kinds.contains(&"Authorization"));
        assert!(kinds.contains(&"ClusterSecretStore"));
    }
}
