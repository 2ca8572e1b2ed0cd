//! Writing secret files: only when the content changed, atomically (temp file in the
//! same directory, fsync, rename, fsync of the directory), mode 0400.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use rand::Rng;

/// Whether a write happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The file already held exactly this content: untouched (same inode, same mtime).
    Unchanged,
    /// The file was created or replaced.
    Written,
}

/// Writes `content` to `path` unless it already holds it. Readers see the old file or
/// the new one, never a partial one.
pub fn write_if_changed(path: &Path, content: &[u8]) -> std::io::Result<WriteOutcome> {
    write_if_changed_mode(path, content, 0o400)
}

/// [`write_if_changed`] with the file's permission bits (`mode`, e.g. `0o600`); a file
/// left untouched keeps its mode.
pub fn write_if_changed_mode(
    path: &Path,
    content: &[u8],
    mode: u32,
) -> std::io::Result<WriteOutcome> {
    if let Ok(current) = std::fs::read(path)
        && current == content
    {
        return Ok(WriteOutcome::Unchanged);
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no parent directory")
        })?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = parent.join(format!(
        ".{}.esi-tmp-{:016x}",
        name.to_string_lossy(),
        rand::rng().random::<u64>()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable only once the directory is synced.
        std::fs::File::open(parent)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| WriteOutcome::Written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_creates_dirs_and_skips_identical_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/secret.yaml");
        assert_eq!(
            write_if_changed(&path, b"one").unwrap(),
            WriteOutcome::Written
        );
        let m1 = std::fs::metadata(&path).unwrap();
        assert_eq!(m1.mode() & 0o777, 0o400);
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(
            write_if_changed(&path, b"one").unwrap(),
            WriteOutcome::Unchanged
        );
        let m2 = std::fs::metadata(&path).unwrap();
        assert_eq!((m1.ino(), m1.mtime_nsec()), (m2.ino(), m2.mtime_nsec()));
        assert_eq!(
            write_if_changed(&path, b"two").unwrap(),
            WriteOutcome::Written
        );
        let m3 = std::fs::metadata(&path).unwrap();
        assert_ne!(
            m1.ino(),
            m3.ino(),
            "replaced by rename, not rewritten in place"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(m3.mode() & 0o777, 0o400);
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn failure_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a directory: the rename fails.
        let target = dir.path().join("taken");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("x"), "keep").unwrap();
        assert!(write_if_changed(&target, b"v").is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
