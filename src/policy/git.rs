//! Trees at git revisions, for `diff --git A..B` and `report --git A..B`.
//!
//! The manifest and policy directories are given as for the working tree; their paths
//! relative to the repository's top level are extracted at each revision into a fresh
//! temporary directory (removed when the [`Checkout`] is dropped), with `git ls-tree` and
//! `git cat-file --batch`: only regular files (no symlinks, no submodules), each at most
//! [`super::MAX_FILE_BYTES`], at most [`MAX_FILES`] of them. A directory that does not
//! exist at a revision is extracted empty (a tree that gains its first policy file is a
//! diff, not an error). Nothing in the repository or its working tree is changed.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use super::{MAX_FILE_BYTES, PolicyToolError, Sources};

/// Most files extracted per revision.
pub const MAX_FILES: usize = 20_000;

/// `A..B` → (`A`, `Some(B)`, `HEAD` when empty); `A` → (`A`, `None`: the working tree).
pub fn parse_range(range: &str) -> Result<(String, Option<String>), PolicyToolError> {
    let bad = |why: &str| PolicyToolError::Git(format!("--git {range:?}: {why}"));
    if range.contains("...") {
        return Err(bad("A...B (merge base) is not supported; give A..B"));
    }
    let (old, new) = match range.split_once("..") {
        Some((a, b)) => (a, Some(if b.is_empty() { "HEAD" } else { b })),
        None => (range, None),
    };
    for rev in std::iter::once(old).chain(new) {
        if rev.is_empty() || rev.starts_with('-') || rev.len() > 256 {
            return Err(bad("a revision is empty, too long, or starts with '-'"));
        }
    }
    Ok((old.to_owned(), new.map(str::to_owned)))
}

/// A tree extracted at a revision; its directory is removed on drop.
#[derive(Debug)]
pub struct Checkout {
    root: PathBuf,
    /// The revision as given.
    pub rev: String,
    /// `REV (short sha)`.
    pub label: String,
    /// The extracted directories (same relative places as the working tree's).
    pub sources: Sources,
}

impl Checkout {
    /// The temporary root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>, PolicyToolError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| PolicyToolError::Git(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or("failed");
        return Err(PolicyToolError::Git(format!(
            "git {}: {first}",
            args.first().copied().unwrap_or_default()
        )));
    }
    Ok(out.stdout)
}

/// `path` made absolute without requiring it to exist (`..` resolved lexically, the
/// longest existing ancestor canonicalised).
fn absolute(path: &Path) -> Result<PathBuf, PolicyToolError> {
    let cwd = std::env::current_dir()
        .map_err(|e| PolicyToolError::Git(format!("no current directory: {e}")))?;
    let joined = cwd.join(path);
    let mut normal = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    let mut existing = normal.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match existing.file_name() {
            Some(name) => rest.push(name.to_owned()),
            None => break,
        }
        existing.pop();
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    for name in rest.into_iter().rev() {
        out.push(name);
    }
    Ok(out)
}

/// The repository holding `path` (or the current directory): its canonical top level.
fn toplevel(near: &Path) -> Result<PathBuf, PolicyToolError> {
    let mut dir = absolute(near)?;
    while !dir.is_dir() {
        if !dir.pop() {
            break;
        }
    }
    let out = git(&dir, &["rev-parse", "--show-toplevel"])?;
    let top = String::from_utf8_lossy(&out).trim().to_owned();
    PathBuf::from(&top)
        .canonicalize()
        .map_err(|e| PolicyToolError::Git(format!("{top}: {e}")))
}

/// `path` relative to `top`, or an error if it is outside.
fn relative(top: &Path, path: &Path) -> Result<PathBuf, PolicyToolError> {
    let abs = absolute(path)?;
    abs.strip_prefix(top).map(Path::to_path_buf).map_err(|_| {
        PolicyToolError::Git(format!(
            "{} is not inside the repository {}",
            path.display(),
            top.display()
        ))
    })
}

/// One file of `git ls-tree -r -l -z`.
struct Entry {
    object: String,
    size: u64,
    path: PathBuf,
}

/// Extracts the directories of `sources` (working-tree paths) as they are at `rev`.
pub fn extract(sources: &Sources, rev: &str) -> Result<Checkout, PolicyToolError> {
    let top = toplevel(&sources.manifests)?;
    let commit = git(
        &top,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &format!("{rev}^{{commit}}"),
        ],
    )
    .map_err(|_| PolicyToolError::Git(format!("{rev:?} is not a commit")))?;
    let commit = String::from_utf8_lossy(&commit).trim().to_owned();
    let short: String = commit.chars().take(12).collect();

    let root = std::env::temp_dir().join(format!("esi-policy-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&root).map_err(|source| PolicyToolError::Write {
        path: root.display().to_string(),
        source,
    })?;
    // From here the directory is removed on any return.
    let mut checkout = Checkout {
        root: root.clone(),
        rev: rev.to_owned(),
        label: format!("{rev} ({short})"),
        sources: sources.clone(),
    };
    let manifests = relative(&top, &sources.manifests)?;
    let policies = match &sources.policies {
        Some(p) => Some(relative(&top, p)?),
        None => None,
    };
    let mut entries = Vec::new();
    for dir in std::iter::once(&manifests).chain(policies.as_ref()) {
        create_dir(&root.join(dir))?;
        entries.extend(list(&top, &commit, dir)?);
        if entries.len() > MAX_FILES {
            return Err(PolicyToolError::Git(format!(
                "more than {MAX_FILES} files under the directories at {rev}"
            )));
        }
    }
    write_blobs(&top, &root, &entries)?;
    checkout.sources = Sources {
        manifests: root.join(&manifests),
        policies: policies.map(|p| root.join(p)),
    };
    Ok(checkout)
}

fn create_dir(dir: &Path) -> Result<(), PolicyToolError> {
    std::fs::create_dir_all(dir).map_err(|source| PolicyToolError::Write {
        path: dir.display().to_string(),
        source,
    })
}

/// The regular files under `dir` at `commit`.
fn list(top: &Path, commit: &str, dir: &Path) -> Result<Vec<Entry>, PolicyToolError> {
    let dir_arg = dir.to_string_lossy();
    let pathspec = if dir_arg.is_empty() {
        ".".to_owned()
    } else {
        dir_arg.into_owned()
    };
    let out = git(
        top,
        &[
            "ls-tree",
            "-r",
            "-l",
            "-z",
            "--full-tree",
            commit,
            "--",
            &pathspec,
        ],
    )?;
    let mut entries = Vec::new();
    for record in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let text = String::from_utf8_lossy(record);
        let Some((meta, path)) = text.split_once('\t') else {
            continue;
        };
        let fields: Vec<&str> = meta.split_whitespace().collect();
        let [mode, kind, object, size] = fields[..] else {
            continue;
        };
        // Regular files only: symlinks (120000) and submodules (commit) are skipped.
        if kind != "blob" || !(mode == "100644" || mode == "100755") {
            continue;
        }
        let path = PathBuf::from(path);
        if !path.components().all(|c| matches!(c, Component::Normal(_))) {
            continue;
        }
        let size: u64 = size.parse().unwrap_or(u64::MAX);
        if size > MAX_FILE_BYTES {
            return Err(PolicyToolError::TooLarge {
                path: format!("{commit}:{}", path.display()),
            });
        }
        entries.push(Entry {
            object: object.to_owned(),
            size,
            path,
        });
    }
    Ok(entries)
}

/// Writes each entry's blob under `root`, with one `git cat-file --batch`.
fn write_blobs(top: &Path, root: &Path, entries: &[Entry]) -> Result<(), PolicyToolError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("git")
        .arg("-C")
        .arg(top)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| PolicyToolError::Git(format!("cannot run git cat-file: {e}")))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| PolicyToolError::Git("git cat-file: no stdin".into()))?;
    let objects: Vec<String> = entries.iter().map(|e| format!("{}\n", e.object)).collect();
    // Written from another thread, so a full stdout pipe cannot block both sides.
    let feeder = std::thread::spawn(move || {
        for o in objects {
            if stdin.write_all(o.as_bytes()).is_err() {
                break;
            }
        }
    });
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| PolicyToolError::Git("git cat-file: no stdout".into()))?;
    let mut reader = BufReader::new(stdout);
    let result = (|| {
        for e in entries {
            let mut header = String::new();
            reader
                .read_line(&mut header)
                .map_err(|err| PolicyToolError::Git(format!("git cat-file: {err}")))?;
            let size: Option<u64> = header
                .split_whitespace()
                .nth(2)
                .and_then(|s| s.parse().ok());
            if size != Some(e.size) {
                return Err(PolicyToolError::Git(format!(
                    "git cat-file: unexpected answer for {}",
                    e.path.display()
                )));
            }
            let mut body = vec![0u8; usize::try_from(e.size).unwrap_or(usize::MAX)];
            reader
                .read_exact(&mut body)
                .map_err(|err| PolicyToolError::Git(format!("git cat-file: {err}")))?;
            let mut newline = [0u8; 1];
            reader
                .read_exact(&mut newline)
                .map_err(|err| PolicyToolError::Git(format!("git cat-file: {err}")))?;
            let target = root.join(&e.path);
            if let Some(parent) = target.parent() {
                create_dir(parent)?;
            }
            std::fs::write(&target, &body).map_err(|source| PolicyToolError::Write {
                path: target.display().to_string(),
                source,
            })?;
        }
        Ok(())
    })();
    let _ = feeder.join();
    drop(reader);
    let _ = child.wait();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_two_revisions_or_one_against_the_working_tree() {
        assert_eq!(
            parse_range("main..HEAD").ok(),
            Some(("main".into(), Some("HEAD".into())))
        );
        assert_eq!(
            parse_range("main..").ok(),
            Some(("main".into(), Some("HEAD".into())))
        );
        assert_eq!(parse_range("v1").ok(), Some(("v1".into(), None)));
        for bad in ["a...b", "..b", "--output=x..HEAD", "", "a..-b"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }
}
