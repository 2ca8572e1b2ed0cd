//! Directory mode: a directory of manifests (recursive, multi-document YAML or JSON) and
//! an optional directory of `.cedar` policy files, told as [`SourceEvent`]s.
//!
//! The first [`scan`](DirectoryScanner::scan) lists everything (`Init`, `InitApply`…,
//! `InitDone`). Later scans look at each file's size, modification and change times and
//! inode: only files whose stamp moved are read again, and of those only the objects whose
//! content hash changed are reported (`Apply`), as are the objects that are gone
//! (`Delete`). Nothing is kept of an object but its key and hash.
//!
//! What cannot be read is reported (`Problems`) and changes nothing: the objects last read
//! from an unreadable directory, file or document stay as they were (the file is broken,
//! not emptied), and are listed as `stale` so that the builder says they serve in their
//! last good form.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{LoadError, ObjectKey, SourceEvent, SourceObject, inside, parse_manifest};
use crate::resources::{ContentHash, text_hash};

/// Largest manifest or policy file read (bytes); bigger files are reported and skipped.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Most files read from one directory tree.
pub const MAX_FILES: usize = 10_000;
/// Deepest directory nesting followed.
const MAX_DEPTH: usize = 16;
/// Extensions of manifest files.
const MANIFEST_EXTENSIONS: &[&str] = &["yaml", "yml", "json"];
/// Extension of policy files.
const POLICY_EXTENSIONS: &[&str] = &["cedar"];

/// What changes when a file is written: size, modification and change times (ns), inode.
/// The change time cannot be set back by a writer (unlike the modification time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: u128,
    changed: i128,
    inode: u64,
}

/// A file modified this close to a scan may be written again within the file system's
/// timestamp granularity without its stamp changing (git's "racily clean" entries), so it
/// is read again (its content hash then says whether anything changed).
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

impl Stamp {
    /// Whether the stamp is too recent to be trusted at `now`.
    fn racy(&self, now: std::time::SystemTime) -> bool {
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        now.saturating_sub(self.modified) < RACY.as_nanos()
    }

    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        #[cfg(unix)]
        let (changed, inode) = {
            use std::os::unix::fs::MetadataExt;
            (
                i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
                meta.ino(),
            )
        };
        #[cfg(not(unix))]
        let (changed, inode) = (0, 0);
        Some(Stamp {
            len: meta.len(),
            modified,
            changed,
            inode,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Manifests,
    Policies,
}

/// What the scanner remembers of one file.
#[derive(Debug, Clone)]
struct FileState {
    /// `None` when the file could not be examined.
    stamp: Option<Stamp>,
    /// The objects last reported from it, in order.
    objects: Vec<(ObjectKey, ContentHash)>,
    /// What could not be read in it (the whole file, or documents).
    problems: Vec<LoadError>,
    /// Origins in it whose objects were kept because of `problems`.
    stale: Vec<String>,
}

/// The directory source. Keep one per server: it remembers what it reported.
#[derive(Debug)]
pub struct DirectoryScanner {
    manifests: Option<PathBuf>,
    policies: Option<PathBuf>,
    files: BTreeMap<Arc<Path>, FileState>,
    /// The last `Problems` reported (errors, stale), to report only changes.
    reported: Option<(Vec<LoadError>, Vec<String>)>,
}

/// What one scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Events were reported.
    pub changed: bool,
    /// Some file was written, added or removed (even if no object changed).
    pub touched: bool,
}

impl DirectoryScanner {
    /// A scanner of `manifests` (recursive) and, if given, `policies`.
    pub fn new(manifests: PathBuf, policies: Option<PathBuf>) -> Self {
        DirectoryScanner {
            manifests: Some(manifests),
            policies,
            files: BTreeMap::new(),
            reported: None,
        }
    }

    /// A scanner of a policy directory alone (Kubernetes mode: the objects come from the
    /// API, hand-written `.cedar` files from a directory).
    pub fn policies_only(policies: PathBuf) -> Self {
        DirectoryScanner {
            manifests: None,
            policies: Some(policies),
            files: BTreeMap::new(),
            reported: None,
        }
    }

    /// Reads what changed since the last scan and reports it to `sink`. The first scan is
    /// a full list, from `Init` to `InitDone`.
    pub fn scan(&mut self, sink: &mut dyn FnMut(SourceEvent)) -> ScanOutcome {
        let scan_started = std::time::SystemTime::now();
        let first = self.reported.is_none();
        if first {
            sink(SourceEvent::Init);
        }
        let mut changed = first;
        let mut touched = first;
        let mut dir_errors = Vec::new();
        let mut listing: Vec<(PathBuf, FileKind)> = match &self.manifests {
            Some(dir) => list_files(dir, MANIFEST_EXTENSIONS, &mut dir_errors)
                .into_iter()
                .map(|p| (p, FileKind::Manifests))
                .collect(),
            None => Vec::new(),
        };
        if let Some(dir) = &self.policies {
            listing.extend(
                list_files(dir, POLICY_EXTENSIONS, &mut dir_errors)
                    .into_iter()
                    .map(|p| (p, FileKind::Policies)),
            );
        }

        let mut previous = std::mem::take(&mut self.files);
        let mut emit = |event: SourceEvent, changed: &mut bool| {
            *changed = true;
            sink(match event {
                SourceEvent::Apply(k, o) if first => SourceEvent::InitApply(k, o),
                other => other,
            });
        };
        let mut to_read = Vec::new();
        let mut listed = std::collections::HashSet::new();
        for (path, kind) in listing {
            let path: Arc<Path> = Arc::from(path);
            if !listed.insert(path.clone()) {
                continue; // listed twice (the policy directory inside the manifests one)
            }
            let stamp = Stamp::of(&path);
            let old = previous.remove(&path);
            if let Some(old) = &old
                && old.stamp == stamp
                && stamp.is_some_and(|s| !s.racy(scan_started))
            {
                self.files.insert(path, old.clone());
                continue;
            }
            to_read.push((path, kind, stamp, old));
        }
        // Files are read and parsed on every core, a batch at a time (bounding what is held
        // parsed at once), and reported one by one in path order.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut to_read = to_read.into_iter().peekable();
        while to_read.peek().is_some() {
            let batch: Vec<_> = to_read.by_ref().take(threads * 2).collect();
            touched = true;
            let parsed = parse_files(&batch, threads);
            for ((path, _, stamp, old), parsed) in batch.into_iter().zip(parsed) {
                let state = read_file(&path, stamp, old, parsed, &mut |e| emit(e, &mut changed));
                self.files.insert(path, state);
            }
        }
        // Files no longer listed: gone, unless a directory could not be read (then kept).
        for (path, old) in previous {
            let shown = path.display().to_string();
            if dir_errors.iter().any(|e| inside(&shown, &e.origin)) {
                let mut kept = old;
                if !kept.objects.is_empty() && !kept.stale.contains(&shown) {
                    kept.stale = vec![shown];
                }
                self.files.insert(path, kept);
                continue;
            }
            touched = true;
            for (key, _) in old.objects {
                emit(SourceEvent::Delete(key), &mut changed);
            }
        }

        let mut errors = dir_errors;
        let mut stale = Vec::new();
        for state in self.files.values() {
            errors.extend(state.problems.iter().cloned());
            stale.extend(state.stale.iter().cloned());
        }
        if self.reported.as_ref() != Some(&(errors.clone(), stale.clone())) {
            self.reported = Some((errors.clone(), stale.clone()));
            changed = true;
            sink(SourceEvent::Problems { errors, stale });
        }
        if first {
            sink(SourceEvent::InitDone);
        }
        ScanOutcome { changed, touched }
    }
}

/// A file to read: path, kind, new stamp, what was known of it.
type ToRead = (Arc<Path>, FileKind, Option<Stamp>, Option<FileState>);

/// What one file holds: its objects and the documents that are not objects, or why it
/// cannot be read at all.
type FileContent = Result<(Vec<(ObjectKey, SourceObject)>, Vec<LoadError>), String>;

/// Reads and parses `batch` on up to `threads` threads; results in `batch` order.
fn parse_files(batch: &[ToRead], threads: usize) -> Vec<FileContent> {
    if threads <= 1 || batch.len() <= 1 {
        return batch.iter().map(|(p, k, _, _)| parse_file(p, *k)).collect();
    }
    let mut results: Vec<Option<FileContent>> = (0..batch.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    batch
                        .iter()
                        .enumerate()
                        .skip(t)
                        .step_by(threads)
                        .map(|(i, (p, k, _, _))| (i, parse_file(p, *k)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for worker in workers {
            // A panicking parser leaves its files unread: reported as such below.
            if let Ok(done) = worker.join() {
                for (i, content) in done {
                    results[i] = Some(content);
                }
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("could not be parsed (internal error)".to_owned())))
        .collect()
}

fn parse_file(path: &Arc<Path>, kind: FileKind) -> FileContent {
    let text = read_bounded(path)?;
    match kind {
        FileKind::Policies => Ok((
            vec![(
                ObjectKey::File { path: path.clone() },
                SourceObject::Policy(text),
            )],
            Vec::new(),
        )),
        FileKind::Manifests => match parse_manifest(path, &text) {
            Ok((objects, problems)) => Ok((
                objects
                    .into_iter()
                    .map(|(k, o)| (k, SourceObject::Manifest(Box::new(o))))
                    .collect(),
                problems,
            )),
            Err(e) => Err(e.reason),
        },
    }
}

/// Records one new or written file and reports what changed against `old`.
fn read_file(
    path: &Arc<Path>,
    stamp: Option<Stamp>,
    old: Option<FileState>,
    content: FileContent,
    emit: &mut dyn FnMut(SourceEvent),
) -> FileState {
    let shown = path.display().to_string();
    // Unreadable: report it, keep whatever was read from it before.
    let unreadable = |reason: String, old: Option<FileState>| {
        let old_objects = old.map(|o| o.objects).unwrap_or_default();
        FileState {
            stamp,
            stale: if old_objects.is_empty() {
                Vec::new()
            } else {
                vec![shown.clone()]
            },
            objects: old_objects,
            problems: vec![LoadError {
                origin: shown.clone(),
                object: None,
                reason,
            }],
        }
    };
    let (objects, problems) = match content {
        Ok(content) => content,
        Err(reason) => return unreadable(reason, old),
    };
    let mut before: HashMap<ObjectKey, ContentHash> = old
        .map(|o| o.objects.into_iter().collect())
        .unwrap_or_default();
    let mut now = Vec::with_capacity(objects.len());
    for (key, object) in objects {
        let hash = match &object {
            SourceObject::Manifest(raw) => raw.hash,
            SourceObject::Policy(text) => text_hash(text),
        };
        if before.remove(&key) != Some(hash) {
            emit(SourceEvent::Apply(key.clone(), object));
        }
        now.push((key, hash));
    }
    // Objects no longer read: gone, unless their document could not be read (then kept).
    let mut stale = Vec::new();
    let mut gone: Vec<(ObjectKey, ContentHash)> = before.into_iter().collect();
    gone.sort();
    for (key, hash) in gone {
        let origin = key.to_string();
        match problems.iter().find(|p| inside(&origin, &p.origin)) {
            Some(p) => {
                if !stale.contains(&p.origin) {
                    stale.push(p.origin.clone());
                }
                now.push((key, hash));
            }
            None => emit(SourceEvent::Delete(key)),
        }
    }
    now.sort();
    FileState {
        stamp,
        objects: now,
        problems,
        stale,
    }
}

/// Lists files under `dir` whose extension is one of `extensions`, sorted, bounded.
fn list_files(dir: &Path, extensions: &[&str], errors: &mut Vec<LoadError>) -> Vec<PathBuf> {
    walk(dir, extensions, errors, &mut |_| {})
}

/// A file (or directory) the loader passes over without a word that a user probably meant
/// it to read ([`skipped_files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file or directory.
    pub path: PathBuf,
    /// Why the loader does not read it.
    pub reason: String,
}

/// What the directory loader skips silently under `manifests` (manifest extensions) and
/// `policies` (`.cedar`), by the loader's own walk ([`list_files`]), that was probably
/// meant to load: hidden files with a loaded extension (`.x.cedar`; `..name` entries are
/// Kubernetes ConfigMap mount internals and left out), extensions of the wrong case
/// (`X.CEDAR`, `a.YAML`: the loader compares exactly), directories below the depth limit
/// ([`MAX_DEPTH`] levels), entries it cannot examine (a symlink that resolves to nothing or
/// loops) and special files. Hidden directories (`.git`) are not listed. In path order,
/// each once.
pub fn skipped_files(manifests: &Path, policies: Option<&Path>) -> Vec<Skipped> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    walk(manifests, MANIFEST_EXTENSIONS, &mut errors, &mut |s| {
        out.push(s)
    });
    if let Some(policies) = policies {
        walk(policies, POLICY_EXTENSIONS, &mut errors, &mut |s| {
            out.push(s)
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup();
    out
}

/// The files under `dir` whose extension is one of `extensions` (exactly), at most
/// [`MAX_DEPTH`] levels deep, hidden entries left out; what it passes over that was
/// probably meant to load goes to `skipped`.
fn walk(
    dir: &Path,
    extensions: &[&str],
    errors: &mut Vec<LoadError>,
    skipped: &mut dyn FnMut(Skipped),
) -> Vec<PathBuf> {
    let extension_of = |path: &Path| path.extension().and_then(|e| e.to_str()).map(str::to_owned);
    let loaded_ignoring_case = |e: &Option<String>| {
        e.as_deref()
            .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
    };
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
            let extension = extension_of(&path);
            // Hidden entries include Kubernetes ConfigMap mounts' `..data` swaps: the
            // visible symlinks already point at the current content.
            if name.to_string_lossy().starts_with('.') {
                if !name.to_string_lossy().starts_with("..")
                    && loaded_ignoring_case(&extension)
                    && std::fs::metadata(&path).is_ok_and(|m| m.is_file())
                {
                    skipped(Skipped {
                        path,
                        reason: "hidden file (its name starts with `.`): the loader skips hidden entries".into(),
                    });
                }
                continue;
            }
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) => {
                    let link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink());
                    skipped(Skipped {
                        path,
                        reason: if link {
                            format!("symlink that does not resolve ({e}): not read")
                        } else {
                            format!("cannot be examined ({e}): not read")
                        },
                    });
                    continue;
                }
            };
            if meta.is_dir() {
                if depth + 1 < MAX_DEPTH {
                    stack.push((path, depth + 1));
                } else {
                    skipped(Skipped {
                        path,
                        reason: format!(
                            "directory deeper than the loader's limit of {MAX_DEPTH} levels: nothing in it is read"
                        ),
                    });
                }
            } else if extension
                .as_deref()
                .is_some_and(|e| extensions.contains(&e))
            {
                if meta.is_file() {
                    out.push(path);
                } else {
                    skipped(Skipped {
                        path,
                        reason: "not a regular file: not read".into(),
                    });
                }
            } else if loaded_ignoring_case(&extension) {
                skipped(Skipped {
                    reason: format!(
                        "extension .{} is not one the loader reads ({}: compared exactly, lowercase)",
                        extension.as_deref().unwrap_or_default(),
                        extensions
                            .iter()
                            .map(|e| format!(".{e}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    path,
                });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The events of one scan, shown compactly: `init`, `+key`, `-key`, `problems:N/M`, `done`.
    fn scan(s: &mut DirectoryScanner) -> Vec<String> {
        let mut out = Vec::new();
        s.scan(&mut |e| {
            out.push(match e {
                SourceEvent::Init => "init".to_string(),
                SourceEvent::InitDone => "done".to_string(),
                SourceEvent::Apply(k, _) | SourceEvent::InitApply(k, _) => format!("+{k}"),
                SourceEvent::Delete(k) => format!("-{k}"),
                SourceEvent::Problems { errors, stale } => {
                    format!("problems:{}/{}", errors.len(), stale.len())
                }
            })
        });
        out
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const A: &str =
        "apiVersion: v1\nkind: Secret\nmetadata: {name: a, namespace: ns}\nstringData: {k: v}\n";
    const B: &str =
        "apiVersion: v1\nkind: Secret\nmetadata: {name: b, namespace: ns}\nstringData: {k: v}\n";

    /// Review finding 5 (issue 13): what the walk passes over that was probably meant to
    /// load is named, by the walk itself; what it reads is unchanged.
    #[test]
    fn skipped_files_are_named_by_the_loaders_own_walk() {
        let root = tempfile::tempdir().unwrap();
        let m = root.path().join("m");
        let p = root.path().join("p");
        std::fs::create_dir_all(m.join("..2026_01_01/x")).unwrap();
        std::fs::create_dir_all(m.join(".git")).unwrap();
        std::fs::create_dir_all(&p).unwrap();
        for name in [
            "a.yaml",
            ".b.yaml",
            "C.YAML",
            "d.Json",
            "notes.txt",
            ".git/c.yaml",
        ] {
            write(&m, name, A);
        }
        write(&m.join("..2026_01_01"), "cm.yaml", A);
        for name in ["ok.cedar", "X.CEDAR", ".x.cedar", "y.yaml"] {
            write(&p, name, "");
        }
        #[cfg(unix)]
        std::os::unix::fs::symlink(m.join("nowhere.yaml"), m.join("e.yaml")).unwrap();
        // 16 levels: the 15th is read, the 16th is not.
        let mut deep = m.clone();
        for level in 1..=MAX_DEPTH {
            deep = deep.join(format!("d{level}"));
            std::fs::create_dir_all(&deep).unwrap();
            write(&deep, "f.yaml", A);
        }
        let mut errors = Vec::new();
        let read = list_files(&m, MANIFEST_EXTENSIONS, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(read.contains(&m.join("a.yaml")));
        assert_eq!(read.len(), 1 + MAX_DEPTH - 1, "{read:?}");
        let skipped: Vec<(String, String)> = skipped_files(&m, Some(&p))
            .into_iter()
            .map(|s| {
                let shown = s
                    .path
                    .strip_prefix(root.path())
                    .unwrap()
                    .display()
                    .to_string();
                (shown, s.reason)
            })
            .collect();
        let shown: Vec<&str> = skipped.iter().map(|(p, _)| p.as_str()).collect();
        let deepest = format!(
            "m/{}",
            (1..=MAX_DEPTH)
                .map(|l| format!("d{l}"))
                .collect::<Vec<_>>()
                .join("/")
        );
        let mut expected = vec![
            "m/.b.yaml",
            "m/C.YAML",
            "m/d.Json",
            deepest.as_str(),
            "p/.x.cedar",
            "p/X.CEDAR",
        ];
        #[cfg(unix)]
        expected.push("m/e.yaml");
        expected.sort_unstable();
        assert_eq!(shown, expected, "{skipped:?}");
        let reason = |p: &str| &skipped.iter().find(|(s, _)| s == p).unwrap().1;
        assert!(reason("m/.b.yaml").contains("hidden"));
        assert!(reason("p/X.CEDAR").contains("extension .CEDAR"));
        assert!(reason(&deepest).contains("deeper than the loader's limit of 16 levels"));
        #[cfg(unix)]
        assert!(reason("m/e.yaml").contains("symlink that does not resolve"));
    }

    #[test]
    fn the_first_scan_lists_everything_and_later_scans_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        write(p, "one.yaml", &format!("{A}---\n{B}"));
        write(p, "two.yaml", A);
        let mut s = DirectoryScanner::new(p.to_path_buf(), None);
        let shown = |name: &str| format!("{}/{name}", p.display());
        assert_eq!(
            scan(&mut s),
            [
                "init".to_string(),
                format!("+{}#0", shown("one.yaml")),
                format!("+{}#1", shown("one.yaml")),
                format!("+{}#0", shown("two.yaml")),
                "problems:0/0".to_string(),
                "done".to_string()
            ]
        );
        assert!(scan(&mut s).is_empty(), "nothing changed");
        // One document of one file changes: only it is reported.
        write(
            p,
            "one.yaml",
            &format!("{A}---\n{}", B.replace("k: v", "k: w")),
        );
        assert_eq!(scan(&mut s), [format!("+{}#1", shown("one.yaml"))]);
        // A file written with the same content: nothing to report, but it was touched.
        write(p, "two.yaml", A);
        let mut events = 0;
        let outcome = s.scan(&mut |_| events += 1);
        assert_eq!(events, 0);
        assert!(outcome.touched && !outcome.changed);
        // A document removed, a file removed.
        write(p, "one.yaml", A);
        std::fs::remove_file(p.join("two.yaml")).unwrap();
        assert_eq!(
            scan(&mut s),
            [
                format!("-{}#1", shown("one.yaml")),
                format!("-{}#0", shown("two.yaml"))
            ]
        );
    }

    #[test]
    fn what_cannot_be_read_stays_as_it_was_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        write(p, "one.yaml", &format!("{A}---\n{B}"));
        let mut s = DirectoryScanner::new(p.to_path_buf(), None);
        scan(&mut s);
        // The whole file breaks: no delete, one problem, the file is stale.
        write(p, "one.yaml", "a: [unclosed");
        assert_eq!(scan(&mut s), ["problems:1/1"]);
        // Fixed again with one document broken: that document's object stays.
        write(p, "one.yaml", &format!("{A}---\nkind: Broken\n"));
        assert_eq!(scan(&mut s), ["problems:1/1"]);
        // Both fine again: the second document is gone for good now.
        write(p, "one.yaml", A);
        let shown = format!("{}/one.yaml", p.display());
        assert_eq!(scan(&mut s), [format!("-{shown}#1"), "problems:0/0".into()]);
    }

    #[test]
    fn policy_files_are_whole_objects() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", A);
        write(
            pdir.path(),
            "deny.cedar",
            "forbid (principal, action, resource);",
        );
        let mut s = DirectoryScanner::new(dir.path().to_path_buf(), Some(pdir.path().into()));
        let events = scan(&mut s);
        let policy = format!("+{}/deny.cedar", pdir.path().display());
        assert!(events.contains(&policy), "{events:?}");
        std::fs::remove_file(pdir.path().join("deny.cedar")).unwrap();
        assert_eq!(
            scan(&mut s),
            [format!("-{}/deny.cedar", pdir.path().display())]
        );
    }

    #[test]
    fn reads_ese_samples() {
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/ese-samples"
        ));
        let mut kinds = Vec::new();
        let mut problems = Vec::new();
        DirectoryScanner::new(dir.to_path_buf(), None).scan(&mut |e| match e {
            SourceEvent::InitApply(_, SourceObject::Manifest(o)) => kinds.push(o.kind),
            SourceEvent::Problems { errors, .. } => problems = errors,
            _ => {}
        });
        assert!(problems.is_empty(), "{problems:?}");
        assert!(kinds.iter().any(|k| k == "KubernetesFederation"));
        assert!(kinds.iter().any(|k| k == "Authorization"));
        assert!(kinds.iter().any(|k| k == "ClusterSecretStore"));
    }
}
