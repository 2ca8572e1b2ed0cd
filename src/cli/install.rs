//! `esi-cli install --to=PATH`: copies the running `esi-cli` binary to PATH (mode 0555,
//! written to a temporary file beside it and renamed into place), then exits. The
//! injection webhook's init container runs it to put `esi-cli` on an in-memory volume
//! that the application containers mount read-only (`docs/webhook.md`): the images are
//! distroless, with no `cp` to do it.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

/// The `install` form's flags.
#[derive(Parser, Debug)]
#[command(
    name = "esi-cli install",
    about = "Copies this esi-cli binary to --to (mode 0555) and exits"
)]
struct InstallArgs {
    /// Where to put the copy (absolute; its directory must exist).
    #[arg(long)]
    to: PathBuf,
}

/// Whether `argv` (as the process got it) asks for the install form: `esi-cli install …`.
pub fn requested(argv: &[OsString]) -> bool {
    argv.get(1).is_some_and(|a| a == "install")
}

/// The install form's whole life: parse `argv[2..]`, copy, exit.
pub fn main(argv: &[OsString]) -> ExitCode {
    let rest = argv.iter().skip(2).cloned();
    let args = match InstallArgs::try_parse_from(
        std::iter::once(OsString::from("esi-cli install")).chain(rest),
    ) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(super::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let source = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("esi-cli: install: cannot find this binary: {e}");
            return ExitCode::from(super::EXIT_FAILURE);
        }
    };
    match copy_executable(&source, &args.to) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("esi-cli: install: {}: {e}", args.to.display());
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}

/// Largest binary copied (this one is about 16 MiB).
const MAX_BINARY_BYTES: u64 = 256 * 1024 * 1024;

/// Copies `source` to `dest` as an executable (0555), the way esi-cli writes secret files
/// ([`super::files::write_if_changed_mode`]: a temporary file beside `dest`, synced, then
/// renamed over it), so that nobody ever runs a partial copy.
///
/// # Errors
/// `dest` not absolute, `source` unreadable or too large, or any I/O failure.
pub fn copy_executable(source: &Path, dest: &Path) -> std::io::Result<()> {
    if !dest.is_absolute() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the destination must be an absolute path",
        ));
    }
    let mut bytes = Vec::new();
    File::open(source)?
        .take(MAX_BINARY_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_BINARY_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the binary is larger than 256 MiB",
        ));
    }
    super::files::write_if_changed_mode(dest, &bytes, 0o555).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn copies_an_executable_atomically_and_refuses_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, b"#!binary").unwrap();
        let dest = dir.path().join("bin-esi-cli");
        copy_executable(&src, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"#!binary");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o555);
        // Again over the first copy (a restarted init container): replaced, no leftovers.
        std::fs::write(&src, b"#!binary v2").unwrap();
        copy_executable(&src, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"#!binary v2");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(copy_executable(&src, Path::new("relative/esi-cli")).is_err());
        assert!(copy_executable(&dir.path().join("missing"), &dest).is_err());
    }

    #[test]
    fn only_the_first_word_selects_the_install_form() {
        let v = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(requested(&v(&["esi-cli", "install", "--to=/x"])));
        assert!(!requested(&v(&["esi-cli", "--mode=init", "install"])));
        assert!(!requested(&v(&["esi-cli"])));
    }
}
