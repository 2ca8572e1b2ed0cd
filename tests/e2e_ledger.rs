//! End to end: the credential ledger file (issue 19, finding 11). Private modes; a
//! damaged or empty ledger is refused at start with a message naming it, no panic.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `esi-server serve` on `data`; Ok(child) once listening, else Err(stderr).
fn start(manifests: &Path, data: &Path) -> Result<Child, String> {
    let mut child = Command::new(server_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--manifests")
        .arg(manifests)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "info")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if line.starts_with("esi-server listening on ") {
            return Ok(child);
        }
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    Err(err)
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn damaged_or_empty_ledgers_are_refused_and_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let data = dir.path().join("data");
    let ledger = data.join("ledger.redb");

    stop(start(&manifests, &data).expect("first start"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700, "data directory");
        assert_eq!(mode(&ledger), 0o600, "ledger file");
    }
    let full = std::fs::read(&ledger).unwrap();
    assert!(full.len() > 4096);

    // (Pages overwritten inside a ledger that holds entries: `ledger::redb_store::
    // damage_tests`; here the ledger is empty, so its header is what can be damaged.)
    let mut overwritten = full.clone();
    overwritten[..64].iter_mut().for_each(|b| *b ^= 0xff);
    for (what, bytes) in [
        ("truncated", full[..full.len() / 2].to_vec()),
        ("truncated to a page", full[..4096].to_vec()),
        ("header overwritten", overwritten),
        ("empty", Vec::new()),
    ] {
        std::fs::write(&ledger, &bytes).unwrap();
        let err = match start(&manifests, &data) {
            Ok(child) => {
                stop(child);
                panic!("{what}: the server started on a {what} ledger");
            }
            Err(e) => e,
        };
        assert!(
            err.contains(&ledger.display().to_string()),
            "{what}: the message must name the file:\n{err}"
        );
        assert!(
            err.contains("damaged") || err.contains("empty"),
            "{what}:\n{err}"
        );
        let lower = err.to_lowercase();
        assert!(!lower.contains("panic"), "{what}:\n{err}");
        assert!(!lower.contains("backtrace"), "{what}:\n{err}");
        assert_eq!(
            std::fs::read(&ledger).unwrap(),
            bytes,
            "{what}: file left as it was"
        );
    }

    // Restored: it starts again.
    std::fs::write(&ledger, &full).unwrap();
    stop(start(&manifests, &data).expect("restored ledger"));
}
