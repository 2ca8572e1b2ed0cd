//! End to end: what `deploy/` ships starts (issue 19, finding 8). The Kubernetes
//! manifest is parsed; the container's args and volume mounts are taken as written and
//! the real binary runs with them, each mount standing in as a temporary directory
//! (ConfigMaps with their data, the TLS Secret with a test certificate, the
//! PersistentVolumeClaim empty). Nothing outside the mounts may be written: the working
//! directory and `$HOME` are empty directories that must stay empty (the image's root
//! filesystem is read-only).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

const MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/kubernetes/esi-server.yaml"
);

fn docs() -> Vec<Value> {
    let text = std::fs::read_to_string(MANIFEST).unwrap();
    serde_saphyr::from_multiple(&text).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} is not in {MANIFEST}"))
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_deployment_starts_and_keeps_its_ledger_on_the_volume() {
    install_crypto();
    let docs = docs();
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let spec = &deployment["spec"];
    // One ledger per pod until the ledger is shared: one replica, never two at once.
    assert_eq!(spec["replicas"], 1, "replicas");
    assert_eq!(spec["strategy"]["type"], "Recreate", "strategy");
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"], true,
        "the root filesystem stays read-only"
    );

    let root = tempfile::tempdir().unwrap();
    let ca = test_ca();
    // Volumes, by name, as directories.
    let mut volume_dirs: HashMap<String, PathBuf> = HashMap::new();
    let mut pvc_dirs = Vec::new();
    for (i, v) in pod["volumes"].as_array().unwrap().iter().enumerate() {
        let name = v["name"].as_str().unwrap().to_string();
        let dir = root.path().join(format!("volume-{i}-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(cm) = v["configMap"]["name"].as_str() {
            let map = find(&docs, "ConfigMap", cm);
            if let Some(data) = map["data"].as_object() {
                for (file, text) in data {
                    std::fs::write(dir.join(file), text.as_str().unwrap()).unwrap();
                }
            }
        } else if v["secret"]["secretName"].is_string() {
            // The TLS Secret the header tells the operator to create.
            std::fs::write(dir.join("tls.crt"), &ca.cert_pem).unwrap();
            std::fs::write(dir.join("tls.key"), &ca.key_pem).unwrap();
        } else if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
            let pvc = find(&docs, "PersistentVolumeClaim", claim);
            assert!(
                pvc["spec"]["accessModes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m == "ReadWriteOnce"),
                "{claim}"
            );
            pvc_dirs.push(dir.clone());
        } else {
            panic!("volume {name}: a kind this test does not stand in for: {v}");
        }
        volume_dirs.insert(name, dir);
    }
    assert_eq!(pvc_dirs.len(), 1, "one PersistentVolumeClaim for the data");
    // Mount paths → those directories; writable mounts must be volumes that persist.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in container["volumeMounts"].as_array().unwrap() {
        let dir = volume_dirs[m["name"].as_str().unwrap()].clone();
        if m["readOnly"] != true {
            assert!(pvc_dirs.contains(&dir), "writable mount {m} is not the PVC");
        }
        mounts.push((m["mountPath"].as_str().unwrap().to_string(), dir));
    }
    // Longest mount path first, so nested mounts resolve to the innermost.
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let listen_port = args
        .iter()
        .find_map(|a| a.strip_prefix("--listen="))
        .and_then(|a| a.rsplit(':').next())
        .expect("--listen")
        .to_string();
    assert_eq!(
        container["readinessProbe"]["httpGet"]["port"].to_string(),
        listen_port,
        "the probe checks the HTTPS listener"
    );
    let args: Vec<String> = args
        .into_iter()
        .map(|a| {
            // Ports: any free one on loopback (the test's only change to the flags).
            if a.starts_with("--listen=") {
                return "--listen=127.0.0.1:0".into();
            }
            if a.starts_with("--metrics-listen=") {
                return "--metrics-listen=127.0.0.1:0".into();
            }
            let mut a = a;
            for (path, dir) in &mounts {
                if let Some(pos) = a.find(path.as_str()) {
                    let rest = &a[pos + path.len()..];
                    if rest.is_empty() || rest.starts_with('/') {
                        a = format!("{}{}{rest}", &a[..pos], dir.display());
                        break;
                    }
                }
            }
            a
        })
        .collect();
    assert!(
        args.iter()
            .all(|a| !a.contains("/etc/esi") && !a.contains("/var/lib")),
        "every path is on a mount: {args:?}"
    );

    let cwd = root.path().join("cwd");
    let home = root.path().join("home");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    let mut child = Command::new(server_bin())
        .args(&args)
        .current_dir(&cwd)
        .env("HOME", &home)
        .env_remove("XDG_STATE_HOME")
        .env_remove("STATE_DIRECTORY")
        .env_remove("ESI_DATA_DIR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(rest) = l.strip_prefix("esi-server listening on ") {
                    break rest.trim().to_string();
                }
            }
            _ => {
                let _ = child.wait();
                panic!(
                    "the shipped Deployment's server exited:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let probe = container["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap();
    let client = client_trusting(ca.ca_pem.as_bytes());
    let status = client
        .get(format!("{url}{probe}"))
        .send()
        .await
        .unwrap()
        .status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status.as_u16(), 200, "{}", log.lock().unwrap().join("\n"));

    // The ledger is on the volume, private; nothing was written anywhere else.
    let ledger = walk(&pvc_dirs[0])
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "ledger.redb"))
        .unwrap_or_else(|| panic!("no ledger on the data volume"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ledger.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "data directory mode");
    }
    assert!(
        entries(&cwd).is_empty(),
        "wrote into its working directory: {:?}",
        entries(&cwd)
    );
    assert!(
        entries(&home).is_empty(),
        "wrote into $HOME: {:?}",
        entries(&home)
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in entries(dir) {
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
