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

/// Reads `path` when it is a regular file (a symlink is not followed: `Ok(None)`, as for
/// a FIFO, a device or a missing file) of at most `max` bytes (larger: `Ok(None)`). Files
/// in an output directory are read this way, so that a symlink to `/dev/zero` or a FIFO
/// planted there cannot exhaust memory or block a pass.
///
/// # Errors
/// Any other I/O error of opening or reading.
pub fn read_regular_file(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ELOOP) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() > max {
        return Ok(None);
    }
    let mut buf = Vec::new();
    (&mut f).take(max.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Ok(None);
    }
    Ok(Some(buf))
}

/// [`write_if_changed`] with the file's permission bits (`mode`, e.g. `0o600`); a file
/// left untouched keeps its mode.
pub fn write_if_changed_mode(
    path: &Path,
    content: &[u8],
    mode: u32,
) -> std::io::Result<WriteOutcome> {
    if let Ok(Some(current)) = read_regular_file(path, content.len() as u64)
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

    /// A symlink planted at the target (to a file with the same bytes, or to /dev/zero) is
    /// replaced by a regular file, never followed (review: it was read, so a link to a
    /// copy kept the link, and a link to /dev/zero read without end).
    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"same").unwrap();
        let path = dir.path().join("out/secret.yaml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert_eq!(
            write_if_changed(&path, b"same").unwrap(),
            WriteOutcome::Written
        );
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"same");
        let zero = dir.path().join("out/zero.yaml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert_eq!(
            write_if_changed(&zero, b"x").unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(read_regular_file(&zero, 10).unwrap().unwrap(), b"x");
        assert_eq!(read_regular_file(&zero, 0).unwrap(), None);
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("z2")).unwrap();
        assert_eq!(read_regular_file(&dir.path().join("z2"), 10).unwrap(), None);
    }

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
