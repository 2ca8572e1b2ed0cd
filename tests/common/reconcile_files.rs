//! `esi-server reconcile --manifests DIR --output OUT --once` as a test drives it: one pass
//! of the real binary, and the YAML files it writes read back.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use base64::Engine;
use serde_json::Value;

/// What one pass printed.
pub struct Pass {
    /// The exit code (-1: killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs one pass over `manifests` into `out` with `extra` arguments (`RUST_LOG=warn`).
pub fn reconcile_once(manifests: &Path, out: &Path, extra: &[&str]) -> Pass {
    let o = Command::new(super::server_bin())
        .arg("reconcile")
        .arg("--manifests")
        .arg(manifests)
        .arg("--output")
        .arg(out)
        .arg("--once")
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    eprintln!("stdout:\n{stdout}\nstderr:\n{stderr}");
    Pass {
        code: o.status.code().unwrap_or(-1),
        stdout,
        stderr,
    }
}

/// A YAML file as JSON.
pub fn read_yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The decoded `data` of a Secret file.
pub fn secret_data(path: &Path) -> BTreeMap<String, Vec<u8>> {
    read_yaml(path)["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            (k.clone(), bytes)
        })
        .collect()
}
