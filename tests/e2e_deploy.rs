//! End to end: what `deploy/` ships.
//!
//! 1. The directory-mode manifest starts (issue 19, finding 8): `deploy/kubernetes/esi-server.yaml`
//!    is parsed; the container's args and volume mounts are taken as written and the real
//!    binary runs with them, each mount standing in as a temporary directory (ConfigMaps with
//!    their data, the TLS Secret with a test certificate, the PersistentVolumeClaim empty).
//!    Nothing outside the mounts may be written: the working directory and `$HOME` are empty
//!    directories that must stay empty (the image's root filesystem is read-only).
//! 2. The Helm chart (issue 10): rendered with Helm's own engine (`scripts/helm.sh`, Helm's Go
//!    SDK from PyPI) for each source, ledger and TLS choice, linted strictly, every document
//!    parsed and checked for the security properties (non-root, read-only root filesystem,
//!    every capability dropped, probes, least-privilege RBAC); the plain manifests under
//!    `deploy/kubernetes` must be the chart's output; every value is documented.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use esi::config::kubernetes::FEDERATION_KINDS;
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

// ---------------------------------------------------------------------------------------
// The Helm chart.

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/charts/esi-federation");

/// Whether Helm's SDK can be used (`scripts/helm.sh install`, which `scripts/test.sh` runs).
/// Missing: the test is skipped with a message, or fails under `ESI_REQUIRE_BACKENDS=1`.
fn helm_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import helm_python"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("ESI_REQUIRE_BACKENDS").as_deref() == Ok("1") {
            panic!("Helm's SDK is required (ESI_REQUIRE_BACKENDS=1): run scripts/helm.sh install");
        }
        eprintln!("skipped: Helm's SDK is not installed (scripts/helm.sh install)");
    }
    ok
}

/// `scripts/helm.sh ARGS…`: Ok(stdout) on success, Err(stdout + stderr) otherwise.
fn helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new(format!("{ROOT}/scripts/helm.sh"))
        .args(args)
        .output()
        .expect("scripts/helm.sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr).into_owned()
        ))
    }
}

/// The chart rendered with `values` (JSON, merged over the chart's defaults) as release
/// `esi-federation` in `esi-system`: every document, parsed.
fn render(values: &Value) -> Vec<Value> {
    let set = values.to_string();
    let text = helm(&["template", CHART, "--set-json", &set])
        .unwrap_or_else(|e| panic!("render with {set}: {e}"));
    parse_docs(&text)
}

fn parse_docs(text: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)
        .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{text}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// What a values set chooses, as the checks need it.
struct Case {
    name: &'static str,
    values: Value,
    kubernetes_source: bool,
    ledger: &'static str,
    replicas: Option<u64>,
    /// `server.enabled` (default true).
    server: bool,
    /// `reconciler.enabled`: its replicas (None: not deployed).
    reconciler: Option<u64>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "defaults",
            values: serde_json::json!({}),
            kubernetes_source: true,
            ledger: "kubernetes",
            replicas: Some(2),
            server: true,
            reconciler: None,
        },
        Case {
            name: "postgres ledger",
            values: serde_json::json!({"ledger": {"type": "postgres", "postgres": {"existingSecret": "esi-ledger", "tlsSecret": "esi-ledger-tls"}}, "replicaCount": 3}),
            kubernetes_source: true,
            ledger: "postgres",
            replicas: Some(3),
            server: true,
            reconciler: None,
        },
        Case {
            name: "embedded ledger",
            values: serde_json::json!({"ledger": {"type": "embedded"}, "replicaCount": 3}),
            kubernetes_source: true,
            ledger: "embedded",
            replicas: Some(1),
            server: true,
            reconciler: None,
        },
        Case {
            name: "directory source, embedded ledger",
            values: serde_json::json!({"source": "directory", "ledger": {"type": "embedded"},
                "directory": {"manifests": {"a.yaml": "kind: Password\n"}}}),
            kubernetes_source: false,
            ledger: "embedded",
            replicas: Some(1),
            server: true,
            reconciler: None,
        },
        Case {
            name: "directory source, kubernetes ledger",
            values: serde_json::json!({"source": "directory"}),
            kubernetes_source: false,
            ledger: "kubernetes",
            replicas: Some(2),
            server: true,
            reconciler: None,
        },
        Case {
            name: "cert-manager, autoscaling, PodMonitor, per-namespace Secrets, mTLS, hard anti-affinity, extra flags",
            values: serde_json::json!({
                "tls": {"source": "certManager", "certManager": {"issuerRef": {"name": "ca"}, "dnsNames": ["esi.example.com"]},
                        "clientCA": {"existingSecret": "clients"}},
                "autoscaling": {"enabled": true, "targetMemoryUtilizationPercentage": 80},
                "metrics": {"podMonitor": {"enabled": true}},
                "rbac": {"secrets": {"namespaces": ["vault", "platform"], "resourceNames": ["vault-token"]}},
                "podAntiAffinity": "hard",
                "server": {"extraArgs": ["--rate-limit-per-source=500"], "extraEnv": [{"name": "A", "value": "b"}]},
            }),
            kubernetes_source: true,
            ledger: "kubernetes",
            replicas: None,
            server: true,
            reconciler: None,
        },
        Case {
            name: "reconciler beside the server",
            values: serde_json::json!({"reconciler": {"enabled": true}}),
            kubernetes_source: true,
            ledger: "kubernetes",
            replicas: Some(2),
            server: true,
            reconciler: Some(2),
        },
        Case {
            name: "reconciler alone (client cluster): one replica, rollout, given issuers, no discovery, PodMonitor, own image",
            values: serde_json::json!({"server": {"enabled": false},
                "reconciler": {"enabled": true, "replicaCount": 1, "controllerClass": "esi",
                    "image": {"repository": "reg.example.com/esi", "digest": "sha256:0123"},
                    "apiServerIssuers": ["https://old.example.com", "https://new.example.com"],
                    "apiServerAudiences": ["https://kubernetes.default.svc", "extra"],
                    "leaderElection": {"name": "esi-rec"},
                    "rbac": {"rollout": true, "issuerDiscovery": false},
                    "metrics": {"podMonitor": {"enabled": true}}}}),
            kubernetes_source: true,
            ledger: "kubernetes",
            replicas: None,
            server: false,
            reconciler: Some(1),
        },
        Case {
            name: "reconciler without metrics, webhook, no server",
            values: serde_json::json!({"server": {"enabled": false}, "webhook": {"enabled": true},
                "reconciler": {"enabled": true, "replicaCount": 3, "metrics": {"enabled": false}}}),
            kubernetes_source: true,
            ledger: "kubernetes",
            replicas: None,
            server: false,
            reconciler: Some(3),
        },
    ]
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or("<not a string>").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `selector` (matchLabels or a plain map) selects a Pod with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let want = selector
        .get("matchLabels")
        .unwrap_or(selector)
        .as_object()
        .cloned()
        .unwrap_or_default();
    !want.is_empty() && want.iter().all(|(k, v)| &labels[k] == v)
}

/// A Pod template's confinement problems, as sentences (empty: none): non-root, seccomp
/// `RuntimeDefault`, and for every container a read-only root filesystem, no privilege
/// escalation, every capability dropped, requests and a memory limit.
fn pod_problems(pod: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let psc = &pod["securityContext"];
    if psc["runAsNonRoot"] != true {
        p.push("pod: runAsNonRoot is not true".into());
    }
    if psc["runAsUser"] == 0 || psc["runAsUser"].is_null() {
        p.push("pod: runAsUser is root or unset".into());
    }
    if psc["seccompProfile"]["type"] != "RuntimeDefault" {
        p.push("pod: seccomp is not RuntimeDefault".into());
    }
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[field] == true {
            p.push(format!("pod: {field}"));
        }
    }
    for v in pod["volumes"].as_array().cloned().unwrap_or_default() {
        if !v["hostPath"].is_null() {
            p.push(format!("pod: hostPath volume {}", v["name"]));
        }
    }
    let containers = pod["containers"].as_array().cloned().unwrap_or_default();
    for c in &containers {
        let n = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        if sc["readOnlyRootFilesystem"] != true {
            p.push(format!("container {n}: root filesystem not read-only"));
        }
        if sc["allowPrivilegeEscalation"] != false {
            p.push(format!(
                "container {n}: privilege escalation not disallowed"
            ));
        }
        if sc["privileged"] == true {
            p.push(format!("container {n}: privileged"));
        }
        if strs(&sc["capabilities"]["drop"]) != ["ALL"] || !sc["capabilities"]["add"].is_null() {
            p.push(format!("container {n}: capabilities are not drop [ALL]"));
        }
        if sc["runAsUser"] == 0 {
            p.push(format!("container {n}: runs as root"));
        }
        let r = &c["resources"];
        if r["requests"]["cpu"].is_null()
            || r["requests"]["memory"].is_null()
            || r["limits"]["memory"].is_null()
        {
            p.push(format!(
                "container {n}: no cpu/memory requests or memory limit"
            ));
        }
    }
    p
}

/// The Deployment's problems, as sentences (empty: none).
fn deployment_problems(docs: &[Value], case: &Case) -> Vec<String> {
    let mut p = Vec::new();
    let deployments = of_kind(docs, "Deployment");
    if deployments.len() != 1 {
        return vec![format!("{} Deployments", deployments.len())];
    }
    let d = deployments[0];
    let spec = &d["spec"];
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    if !selects(&spec["selector"], labels) {
        p.push("the Deployment's selector does not select its Pods".into());
    }
    p.extend(pod_problems(pod));
    let containers = pod["containers"].as_array().cloned().unwrap_or_default();
    let Some(server) = containers.iter().find(|c| c["name"] == "esi-server") else {
        p.push("no esi-server container".into());
        return p;
    };
    let args = strs(&server["args"]);
    let listen_port = args
        .iter()
        .find_map(|a| a.strip_prefix("--listen="))
        .and_then(|a| a.rsplit(':').next())
        .and_then(|port| port.parse::<u64>().ok());
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let g = &server[probe]["httpGet"];
        if g["path"] != path || g["scheme"] != "HTTPS" || g["port"].as_u64() != listen_port {
            p.push(format!(
                "{probe} is not GET {path} over HTTPS on the listener: {g}"
            ));
        }
    }
    let has = |flag: &str| {
        args.iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    if has("--kubernetes") != case.kubernetes_source {
        p.push(format!("--kubernetes present: {}", has("--kubernetes")));
    }
    if has("--manifests") == case.kubernetes_source {
        p.push(format!("--manifests present: {}", has("--manifests")));
    }
    if has("--ledger") != (case.ledger == "kubernetes")
        || (case.ledger == "kubernetes" && !args.iter().any(|a| a == "--ledger=kubernetes"))
    {
        p.push(format!(
            "--ledger=kubernetes does not match ledger {}",
            case.ledger
        ));
    }
    if !has("--tls-cert") || !has("--tls-key") {
        p.push("no --tls-cert/--tls-key: replicas would each make their own CA".into());
    }
    if has("--ledger-url") {
        p.push("the ledger URL (with its password) is an argument".into());
    }
    let env = server["env"].as_array().cloned().unwrap_or_default();
    let env_of = |name: &str| env.iter().find(|e| e["name"] == name).cloned();
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        if env_of(name).map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone())
            != Some(field.into())
        {
            p.push(format!("{name} is not the downward API's {field}"));
        }
    }
    match env_of("ESI_LEDGER_URL") {
        Some(e) if case.ledger == "postgres" => {
            if e["valueFrom"]["secretKeyRef"]["name"].is_null() || !e["value"].is_null() {
                p.push("ESI_LEDGER_URL is not read from a Secret".into());
            }
        }
        None if case.ledger != "postgres" => {}
        other => p.push(format!(
            "ESI_LEDGER_URL with ledger {}: {other:?}",
            case.ledger
        )),
    }
    // The ledger's TLS files (ledger.postgres.tlsSecret): mounted read-only, group-readable
    // only, where the docs tell the URL to name them; nothing without it.
    let tls_secret = case.values["ledger"]["postgres"]["tlsSecret"].as_str();
    let ledger_tls = pod["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == "ledger-tls"))
        .cloned();
    let ledger_tls_mount = server["volumeMounts"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == "ledger-tls"))
        .cloned();
    match (tls_secret, &ledger_tls, &ledger_tls_mount) {
        (None, None, None) => {}
        (Some(name), Some(v), Some(m)) => {
            if v["secret"]["secretName"] != name || v["secret"]["defaultMode"] != 0o440 {
                p.push(format!("ledger-tls volume: {v}"));
            }
            if m["mountPath"] != "/etc/esi/ledger-tls" || m["readOnly"] != true {
                p.push(format!("ledger-tls mount: {m}"));
            }
        }
        other => p.push(format!(
            "ledger-tls with tlsSecret {tls_secret:?}: {other:?}"
        )),
    }
    let needs_api = case.kubernetes_source || case.ledger == "kubernetes";
    if pod["automountServiceAccountToken"] != needs_api {
        p.push(format!(
            "automountServiceAccountToken is {} but the server {} the API",
            pod["automountServiceAccountToken"],
            if needs_api { "uses" } else { "never uses" }
        ));
    }
    // Replicas, strategy and the data volume follow the ledger.
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    let data = volumes.iter().find(|v| v["name"] == "data");
    let pvcs = of_kind(docs, "PersistentVolumeClaim");
    if case.ledger == "embedded" {
        if spec["replicas"] != 1 || spec["strategy"]["type"] != "Recreate" {
            p.push("embedded ledger without replicas 1 and Recreate".into());
        }
        let claim = data.map(|v| v["persistentVolumeClaim"]["claimName"].clone());
        if claim.is_none_or(|c| !pvcs.iter().any(|pvc| pvc["metadata"]["name"] == c)) {
            p.push("embedded ledger: data is not the chart's PersistentVolumeClaim".into());
        }
        if !of_kind(docs, "HorizontalPodAutoscaler").is_empty() {
            p.push("embedded ledger with a HorizontalPodAutoscaler".into());
        }
    } else {
        if spec["replicas"].as_u64() != case.replicas {
            p.push(format!(
                "replicas {} (want {:?})",
                spec["replicas"], case.replicas
            ));
        }
        if spec["strategy"]["type"] != "RollingUpdate"
            || spec["strategy"]["rollingUpdate"]["maxUnavailable"] != 0
        {
            p.push("several replicas without a RollingUpdate that keeps them all".into());
        }
        if data.is_none_or(|v| v["emptyDir"].is_null()) || !pvcs.is_empty() {
            p.push("shared ledger, yet the data directory is not scratch space".into());
        }
        if pod["topologySpreadConstraints"]
            .as_array()
            .is_none_or(|a| a.is_empty())
            && pod["affinity"]["podAntiAffinity"].is_null()
        {
            p.push("several replicas and nothing spreads them".into());
        }
    }
    // The only writable mount is the data directory.
    for m in server["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        if m["readOnly"] != true && m["name"] != "data" {
            p.push(format!("writable mount {m}"));
        }
    }
    // TLS: the Secret the Pod mounts is the one cert-manager writes, when it does.
    let tls_secret = volumes
        .iter()
        .find(|v| v["name"] == "tls")
        .map(|v| v["secret"]["secretName"].clone());
    for cert in of_kind(docs, "Certificate") {
        if Some(cert["spec"]["secretName"].clone()) != tls_secret {
            p.push("the Certificate writes another Secret than the Pod mounts".into());
        }
    }
    // Service, PDB, PodMonitor, HPA point at these Pods.
    let ports = server["ports"].as_array().cloned().unwrap_or_default();
    for s in of_kind(docs, "Service") {
        if !selects(&s["spec"]["selector"], labels) {
            p.push("the Service does not select the Pods".into());
        }
        for port in s["spec"]["ports"].as_array().cloned().unwrap_or_default() {
            if !ports.iter().any(|cp| cp["name"] == port["targetPort"]) {
                p.push(format!("Service port {port} targets no container port"));
            }
        }
    }
    for kind in ["PodDisruptionBudget", "PodMonitor"] {
        for d in of_kind(docs, kind) {
            if !selects(&d["spec"]["selector"], labels) {
                p.push(format!("the {kind} does not select the Pods"));
            }
        }
    }
    for hpa in of_kind(docs, "HorizontalPodAutoscaler") {
        if hpa["spec"]["scaleTargetRef"]["name"] != d["metadata"]["name"]
            || !spec["replicas"].is_null()
        {
            p.push("the HPA does not own the Deployment's replicas".into());
        }
    }
    p
}

/// The plurals of the federation kinds served in Kubernetes mode (all in
/// `identity.federation.external-secrets.io`): each kind of
/// `esi::config::kubernetes::FEDERATION_KINDS`, named as its CRD (`esi::resources::crd`)
/// names it, so a kind added to the server without RBAC fails the checks below.
fn federations() -> Vec<String> {
    let crds = esi::resources::crd::crds().unwrap();
    let plurals: Vec<String> = FEDERATION_KINDS
        .iter()
        .map(|kind| {
            let crd = crds
                .iter()
                .find(|c| {
                    c.spec.group == "identity.federation.external-secrets.io"
                        && c.spec.names.kind == *kind
                })
                .unwrap_or_else(|| panic!("no CRD for the served kind {kind}"));
            crd.spec.names.plural.clone()
        })
        .collect();
    assert!(plurals.len() >= 5, "FEDERATION_KINDS lists {plurals:?}");
    plurals
}

/// The RBAC's problems, as sentences (empty: none).
fn rbac_problems(docs: &[Value], case: &Case) -> Vec<String> {
    let mut p = Vec::new();
    let sa = of_kind(docs, "ServiceAccount");
    let [sa] = sa.as_slice() else {
        return vec![format!("{} ServiceAccounts", sa.len())];
    };
    if sa["automountServiceAccountToken"] != false {
        p.push("the ServiceAccount mounts its token everywhere".into());
    }
    let sa_name = sa["metadata"]["name"].clone();
    let sa_ns = sa["metadata"]["namespace"].clone();
    let release_ns = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .map(|d| d["metadata"]["namespace"].clone())
        .unwrap_or_default();
    // Each role: (kind, namespace, name, rules).
    let roles: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .collect();
    let needs_api = case.kubernetes_source || case.ledger == "kubernetes";
    if !needs_api && !roles.is_empty() {
        p.push("RBAC for a server that never uses the API".into());
    }
    let writes = ["create", "update", "patch"];
    let known = ["get", "list", "watch", "create", "update", "patch"];
    // (group, resource) → verbs, over every role the ServiceAccount is bound to.
    let mut granted: Vec<(String, String, String, Vec<String>)> = Vec::new(); // (scope, group, resource, verbs)
    for role in &roles {
        let kind = role["kind"].as_str().unwrap_or("");
        let name = &role["metadata"]["name"];
        let ns = &role["metadata"]["namespace"];
        let bound = docs.iter().any(|b| {
            let binding_kind = if kind == "ClusterRole" {
                "ClusterRoleBinding"
            } else {
                "RoleBinding"
            };
            b["kind"] == binding_kind
                && b["roleRef"]["kind"] == kind
                && &b["roleRef"]["name"] == name
                && (kind == "ClusterRole" || &b["metadata"]["namespace"] == ns)
                && b["subjects"].as_array().is_some_and(|s| {
                    s.iter().any(|s| {
                        s["kind"] == "ServiceAccount"
                            && s["name"] == sa_name
                            && s["namespace"] == sa_ns
                    })
                })
        });
        if !bound {
            p.push(format!("{kind} {name} is not bound to the ServiceAccount"));
        }
        for rule in role["rules"].as_array().cloned().unwrap_or_default() {
            let groups = strs(&rule["apiGroups"]);
            let resources = strs(&rule["resources"]);
            let verbs = strs(&rule["verbs"]);
            for field in [
                "apiGroups",
                "resources",
                "verbs",
                "resourceNames",
                "nonResourceURLs",
            ] {
                if strs(&rule[field]).iter().any(|s| s.contains('*')) {
                    p.push(format!("{kind} {name}: a wildcard in {field}: {rule}"));
                }
            }
            if !rule["nonResourceURLs"].is_null() {
                p.push(format!("{kind} {name}: nonResourceURLs"));
            }
            let scope = if kind == "ClusterRole" {
                "cluster".to_string()
            } else {
                ns.as_str().unwrap_or("").to_string()
            };
            // The one delete: the Kubernetes ledger removes a revoked credential's
            // GeneratorState (in the release's namespace only).
            let ledger_delete = case.ledger == "kubernetes"
                && scope == release_ns.as_str().unwrap_or("-")
                && groups == ["generators.external-secrets.io"]
                && resources == ["generatorstates"];
            for v in &verbs {
                let allowed = known.contains(&v.as_str()) || (v == "delete" && ledger_delete);
                if !allowed {
                    p.push(format!("{kind} {name}: verb {v} (delete, escalate, bind, impersonate… are never needed)"));
                }
            }
            for g in &groups {
                for r in &resources {
                    granted.push((scope.clone(), g.clone(), r.clone(), verbs.clone()));
                }
            }
        }
    }
    // No verb the server does not use: status is only patched (src/status/writer.rs sends
    // a JSON patch, whose `test` op the API server evaluates: no get, no update), the Lease
    // read, created and replaced (src/status/lease.rs: no patch), every other kind it
    // watches only read. The ledger's kinds are checked below.
    for (scope, group, resource, verbs) in &granted {
        let used: &[&str] = match (group.as_str(), resource.as_str()) {
            (_, r) if r.ends_with("/status") => &["patch"],
            ("coordination.k8s.io", "leases") => &["get", "create", "update"],
            ("generators.external-secrets.io", "generatorstates")
            | ("federation.external-secrets.io", "authorizedidentities") => continue,
            _ => &["get", "list", "watch"],
        };
        for v in verbs.iter().filter(|v| !used.contains(&v.as_str())) {
            p.push(format!(
                "{resource}.{group} ({scope}): verb {v}, which the server never uses"
            ));
        }
    }
    // Writes only where allowed.
    let federations = federations();
    let kube = case.kubernetes_source;
    let kube_ledger = case.ledger == "kubernetes";
    for (scope, group, resource, verbs) in &granted {
        let write = verbs.iter().any(|v| writes.contains(&v.as_str()));
        if resource == "secrets" && write {
            p.push(format!("writes Secrets ({scope})"));
        }
        if !write {
            continue;
        }
        let federation_status = group == "identity.federation.external-secrets.io"
            && federations
                .iter()
                .any(|f| resource.strip_suffix("/status") == Some(f.as_str()));
        let allowed = match (group.as_str(), resource.as_str()) {
            _ if federation_status => kube && scope == "cluster",
            ("federation.external-secrets.io", "authorizations/status")
            | ("external-secrets.io", "clustersecretstores/status") => kube && scope == "cluster",
            ("coordination.k8s.io", "leases") => {
                kube && *scope == release_ns.as_str().unwrap_or("-")
            }
            ("federation.external-secrets.io", "authorizedidentities") => {
                kube_ledger && scope == "cluster"
            }
            // Never cluster-wide: tenants write GeneratorStates in their namespaces.
            ("generators.external-secrets.io", "generatorstates") => {
                kube_ledger && *scope == release_ns.as_str().unwrap_or("-")
            }
            _ => false,
        };
        if !allowed {
            p.push(format!(
                "writes {resource}.{group} ({scope}) with {verbs:?}"
            ));
        }
    }
    // And what the server needs is granted.
    let can = |group: &str, resource: &str, verbs: &[&str]| {
        verbs.iter().all(|v| {
            granted
                .iter()
                .any(|(_, g, r, vs)| g == group && r == resource && vs.iter().any(|x| x == v))
        })
    };
    let read = ["get", "list", "watch"];
    if kube {
        // Every federation kind the server watches (src/config/kubernetes.rs), read and its
        // status patched.
        for f in &federations {
            let g = "identity.federation.external-secrets.io";
            if !can(g, f, &read) {
                p.push(format!("cannot read {f}.{g}"));
            }
            if !can(g, &format!("{f}/status"), &["patch"]) {
                p.push(format!("cannot patch {f}/status.{g}"));
            }
        }
        for (g, r) in [
            ("federation.external-secrets.io", "authorizations"),
            ("external-secrets.io", "clustersecretstores"),
            ("generators.external-secrets.io", "passwords"),
            ("generators.external-secrets.io", "clustergenerators"),
            ("generators.external-secrets.io", "vaultdynamicsecrets"),
            ("", "secrets"),
        ] {
            if !can(g, r, &read) {
                p.push(format!("cannot read {r}.{g}"));
            }
        }
        for (g, r) in [
            ("federation.external-secrets.io", "authorizations/status"),
            ("external-secrets.io", "clustersecretstores/status"),
        ] {
            if !can(g, r, &["patch"]) {
                p.push(format!("cannot patch {r}.{g}"));
            }
        }
        if !can(
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update"],
        ) {
            p.push("cannot hold the leader-election Lease".into());
        }
    }
    if kube_ledger {
        // Exactly what src/ledger/kubernetes.rs uses, no more.
        for (g, r, needed) in [
            (
                "generators.external-secrets.io",
                "generatorstates",
                &["get", "list", "watch", "create", "update", "delete"][..],
            ),
            (
                "federation.external-secrets.io",
                "authorizedidentities",
                &["get", "create", "update"][..],
            ),
        ] {
            if !can(g, r, needed) {
                p.push(format!("the ledger cannot use {r}.{g}"));
            }
            for (scope, _, _, verbs) in granted.iter().filter(|(_, gg, rr, _)| gg == g && rr == r) {
                for v in verbs.iter().filter(|v| !needed.contains(&v.as_str())) {
                    p.push(format!(
                        "{r}.{g} ({scope}): verb {v}, which the ledger never uses"
                    ));
                }
            }
        }
    }
    p
}

/// The component a rendered object belongs to: its `app.kubernetes.io/component` label
/// (`webhook`, `reconciler`), else `server`.
fn component(doc: &Value) -> &str {
    doc["metadata"]["labels"]["app.kubernetes.io/component"]
        .as_str()
        .unwrap_or("server")
}

fn of_component(docs: &[Value], name: &str) -> Vec<Value> {
    docs.iter()
        .filter(|d| component(d) == name)
        .cloned()
        .collect()
}

/// Built-in ClusterRoles the chart may bind without shipping them: the reconciler's
/// issuer discovery (GET `/.well-known/openid-configuration` only).
const BUILTIN_ROLES: [&str; 1] = ["system:service-account-issuer-discovery"];

/// Problems of every workload and every RBAC object of the chart, whichever component
/// (the server's get more in [`deployment_problems`] and [`rbac_problems`]): each
/// Deployment's Pods confined ([`pod_problems`]); no role with a wildcard, a non-resource
/// URL, a verb that escalates (`escalate`, `bind`, `impersonate`, `deletecollection`) or any
/// right on RBAC objects, ServiceAccounts, Pods or nodes; every role bound, every binding to a role of the
/// chart (or [`BUILTIN_ROLES`]) and to ServiceAccounts of the chart only, none of which mounts
/// its token by default.
fn generic_problems(docs: &[Value]) -> Vec<String> {
    let mut p = Vec::new();
    for d in of_kind(docs, "Deployment") {
        if component(d) != "server" {
            for problem in pod_problems(&d["spec"]["template"]["spec"]) {
                p.push(format!("Deployment {}: {problem}", d["metadata"]["name"]));
            }
        }
    }
    let accounts: Vec<(Value, Value)> = of_kind(docs, "ServiceAccount")
        .into_iter()
        .map(|a| {
            if a["automountServiceAccountToken"] != false {
                p.push(format!(
                    "ServiceAccount {} mounts its token everywhere",
                    a["metadata"]["name"]
                ));
            }
            (
                a["metadata"]["name"].clone(),
                a["metadata"]["namespace"].clone(),
            )
        })
        .collect();
    let roles: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .collect();
    let bindings: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
        .collect();
    let forbidden_resources = [
        "roles",
        "clusterroles",
        "rolebindings",
        "clusterrolebindings",
        "serviceaccounts",
        "pods",
        "pods/exec",
        "nodes",
        "certificatesigningrequests",
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
        "customresourcedefinitions",
    ];
    for role in &roles {
        let kind = role["kind"].as_str().unwrap_or("");
        let name = &role["metadata"]["name"];
        for rule in role["rules"].as_array().cloned().unwrap_or_default() {
            for field in [
                "apiGroups",
                "resources",
                "verbs",
                "resourceNames",
                "nonResourceURLs",
            ] {
                if strs(&rule[field]).iter().any(|s| s.contains('*')) {
                    p.push(format!("{kind} {name}: a wildcard in {field}: {rule}"));
                }
            }
            if !rule["nonResourceURLs"].is_null() {
                p.push(format!("{kind} {name}: nonResourceURLs"));
            }
            for v in strs(&rule["verbs"]) {
                if ["escalate", "bind", "impersonate", "deletecollection"].contains(&v.as_str()) {
                    p.push(format!("{kind} {name}: verb {v}"));
                }
            }
            for r in strs(&rule["resources"]) {
                if forbidden_resources.contains(&r.as_str()) {
                    p.push(format!("{kind} {name}: rights on {r}"));
                }
            }
        }
        let bound = bindings.iter().any(|b| {
            b["roleRef"]["kind"] == kind
                && &b["roleRef"]["name"] == name
                && (kind == "ClusterRole"
                    || b["metadata"]["namespace"] == role["metadata"]["namespace"])
        });
        if !bound {
            p.push(format!("{kind} {name} is bound to nothing"));
        }
    }
    for b in &bindings {
        let r = &b["roleRef"];
        let ours = roles.iter().any(|role| {
            role["kind"] == r["kind"]
                && role["metadata"]["name"] == r["name"]
                && (r["kind"] == "ClusterRole"
                    || role["metadata"]["namespace"] == b["metadata"]["namespace"])
        });
        let builtin = r["kind"] == "ClusterRole"
            && r["name"]
                .as_str()
                .is_some_and(|n| BUILTIN_ROLES.contains(&n));
        if !ours && !builtin {
            let str_of = |v: &Value| v.as_str().unwrap_or("?").to_string();
            p.push(format!(
                "{} {} binds {} {:?}, which the chart does not ship",
                str_of(&b["kind"]),
                str_of(&b["metadata"]["name"]),
                str_of(&r["kind"]),
                str_of(&r["name"])
            ));
        }
        for s in b["subjects"].as_array().cloned().unwrap_or_default() {
            let known = s["kind"] == "ServiceAccount"
                && accounts
                    .iter()
                    .any(|(n, ns)| &s["name"] == n && &s["namespace"] == ns);
            if !known {
                p.push(format!(
                    "{} {}: subject {s} is not a ServiceAccount of the chart",
                    b["kind"], b["metadata"]["name"]
                ));
            }
        }
    }
    p
}

/// (scope, group, resource) → (verbs, resourceNames): what `docs`' roles grant the
/// ServiceAccount `sa` (in `sa_ns`), through the bindings in `docs`; the scope is
/// `cluster` or the Role's namespace. A rule's `resourceNames` are kept per verb set.
type Grants = std::collections::BTreeMap<(String, String, String), Vec<(Vec<String>, Vec<String>)>>;

fn grants(docs: &[Value], sa: &Value, sa_ns: &Value) -> Grants {
    let mut out = Grants::new();
    for b in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        let to_sa = b["subjects"].as_array().is_some_and(|s| {
            s.iter().any(|s| {
                s["kind"] == "ServiceAccount" && &s["name"] == sa && &s["namespace"] == sa_ns
            })
        });
        if !to_sa {
            continue;
        }
        let r = &b["roleRef"];
        let Some(role) = docs.iter().find(|d| {
            d["kind"] == r["kind"]
                && d["metadata"]["name"] == r["name"]
                && (r["kind"] == "ClusterRole"
                    || d["metadata"]["namespace"] == b["metadata"]["namespace"])
        }) else {
            continue;
        };
        // A ClusterRole bound by a RoleBinding grants only in that namespace.
        let scope = if b["kind"] == "ClusterRoleBinding" {
            "cluster".to_string()
        } else {
            b["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        for rule in role["rules"].as_array().cloned().unwrap_or_default() {
            let mut verbs = strs(&rule["verbs"]);
            verbs.sort();
            let names = strs(&rule["resourceNames"]);
            for g in strs(&rule["apiGroups"]) {
                for res in strs(&rule["resources"]) {
                    out.entry((scope.clone(), g.clone(), res))
                        .or_default()
                        .push((verbs.clone(), names.clone()));
                }
            }
        }
    }
    out
}

/// The verbs `grants` holds for one (scope, group, resource), any resource name, sorted
/// and deduplicated.
fn verbs_of(g: &Grants, scope: &str, group: &str, resource: &str) -> Vec<String> {
    let mut v: Vec<String> = g
        .get(&(scope.into(), group.into(), resource.into()))
        .map(|rules| rules.iter().flat_map(|(v, _)| v.clone()).collect())
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

/// The reconciler's problems (`reconciler.enabled`, docs/reconciler.md), as sentences:
/// one Deployment of `esi-server reconcile --kubernetes` under its own ServiceAccount
/// (token mounted: it uses the API), with the Lease's namespace and its identity from the
/// downward API, the flags its values give, no probe (it serves no health endpoint), its
/// metrics port and PodMonitor wired, a PodDisruptionBudget and spreading when it has more
/// than one replica; and its RBAC exactly what "RBAC it needs" lists, the Lease in the
/// release namespace only.
fn reconciler_problems(docs: &[Value], all: &[Value], case: &Case) -> Vec<String> {
    let mut p = Vec::new();
    let v = &case.values["reconciler"];
    let deployments = of_kind(docs, "Deployment");
    let [d] = deployments.as_slice() else {
        return vec![format!("{} reconciler Deployments", deployments.len())];
    };
    let ns = d["metadata"]["namespace"].clone();
    let spec = &d["spec"];
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    if !selects(&spec["selector"], labels) {
        p.push("the reconciler's selector does not select its Pods".into());
    }
    // Never the server's or the webhook's Pods, nor they its.
    for other in of_kind(all, "Deployment")
        .into_iter()
        .filter(|o| component(o) != "reconciler")
    {
        if selects(
            &spec["selector"],
            &other["spec"]["template"]["metadata"]["labels"],
        ) || selects(&other["spec"]["selector"], labels)
        {
            p.push(format!(
                "the reconciler's selector and {}'s overlap",
                other["metadata"]["name"]
            ));
        }
    }
    for kind in ["Service", "PodDisruptionBudget", "PodMonitor"] {
        for o in of_kind(all, kind)
            .into_iter()
            .filter(|o| component(o) != "reconciler")
        {
            if selects(&o["spec"]["selector"], labels) {
                p.push(format!(
                    "{kind} {} selects the reconciler",
                    o["metadata"]["name"]
                ));
            }
        }
    }
    if spec["replicas"].as_u64() != case.reconciler {
        p.push(format!("reconciler replicas {}", spec["replicas"]));
    }
    let containers = pod["containers"].as_array().cloned().unwrap_or_default();
    let [c] = containers.as_slice() else {
        p.push(format!("{} reconciler containers", containers.len()));
        return p;
    };
    let args = strs(&c["args"]);
    if args.first().map(String::as_str) != Some("reconcile")
        || !args.iter().any(|a| a == "--kubernetes")
    {
        p.push(format!("not `esi-server reconcile --kubernetes`: {args:?}"));
    }
    let flag = |name: &str| -> Vec<String> {
        args.iter()
            .filter_map(|a| a.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
            .collect()
    };
    let want_str = |value: &Value, default: &str| value.as_str().unwrap_or(default).to_string();
    for (name, want) in [
        (
            "--leader-election-name",
            vec![want_str(&v["leaderElection"]["name"], "esi-reconciler")],
        ),
        (
            "--revocation-grace",
            vec![want_str(&v["revocationGrace"], "5m")],
        ),
        ("--concurrency", vec!["4".to_string()]),
        ("--backend-timeout", vec!["10s".to_string()]),
        (
            "--controller-class",
            v["controllerClass"]
                .as_str()
                .map(str::to_string)
                .into_iter()
                .collect(),
        ),
        ("--api-server-issuer", strs(&v["apiServerIssuers"])),
        (
            "--api-server-audiences",
            v["apiServerAudiences"]
                .as_array()
                .map(|_| strs(&v["apiServerAudiences"]).join(","))
                .into_iter()
                .collect(),
        ),
    ] {
        if flag(name) != want {
            p.push(format!("{name}: {:?}, want {want:?}", flag(name)));
        }
    }
    for forbidden in ["--manifests", "--output", "--once", "--interval"] {
        if !flag(forbidden).is_empty() || args.iter().any(|a| a == forbidden) {
            p.push(format!("directory-mode flag {forbidden}"));
        }
    }
    let image = c["image"].as_str().unwrap_or("");
    let want_image = match v["image"]["repository"].as_str() {
        Some(repo) => format!("{repo}@{}", v["image"]["digest"].as_str().unwrap_or("")),
        None => "esi-federation:0.1.0".to_string(),
    };
    if image != want_image {
        p.push(format!("reconciler image {image}, want {want_image}"));
    }
    let env = c["env"].as_array().cloned().unwrap_or_default();
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let e = env.iter().find(|e| e["name"] == name);
        if e.map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone()) != Some(field.into()) {
            p.push(format!(
                "reconciler: {name} is not the downward API's {field}"
            ));
        }
    }
    // It serves no health endpoint: no probe may name one.
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        if !c[probe].is_null() {
            p.push(format!("reconciler {probe}: {}", c[probe]));
        }
    }
    if !c["volumeMounts"].is_null() || !pod["volumes"].is_null() {
        p.push("the reconciler mounts volumes (it writes no file)".into());
    }
    // Metrics: the named port is the listener's; the PodMonitor scrapes it.
    let metrics = v["metrics"]["enabled"] != false;
    let listen = flag("--metrics-listen");
    let ports = c["ports"].as_array().cloned().unwrap_or_default();
    match (metrics, listen.as_slice(), ports.as_slice()) {
        (false, [], []) => {}
        (true, [addr], [port]) => {
            if port["name"] != "metrics"
                || Some(port["containerPort"].to_string())
                    != addr.rsplit(':').next().map(str::to_string)
            {
                p.push(format!(
                    "metrics port {port} is not --metrics-listen={addr}"
                ));
            }
        }
        other => p.push(format!("metrics {metrics}: {other:?}")),
    }
    let monitors = of_kind(docs, "PodMonitor");
    if monitors.len() != usize::from(v["metrics"]["podMonitor"]["enabled"] == true) {
        p.push(format!("{} reconciler PodMonitors", monitors.len()));
    }
    for m in monitors {
        if !selects(&m["spec"]["selector"], labels)
            || m["spec"]["podMetricsEndpoints"][0]["port"] != "metrics"
        {
            p.push("the reconciler's PodMonitor does not scrape its metrics port".into());
        }
    }
    let pdbs = of_kind(docs, "PodDisruptionBudget");
    let several = case.reconciler.unwrap_or(0) > 1;
    if pdbs.len() != usize::from(several) {
        p.push(format!("{} reconciler PodDisruptionBudgets", pdbs.len()));
    }
    for pdb in pdbs {
        if !selects(&pdb["spec"]["selector"], labels) {
            p.push("the reconciler's PodDisruptionBudget does not select its Pods".into());
        }
    }
    if several && pod["affinity"]["podAntiAffinity"].is_null() {
        p.push("several reconciler replicas and nothing spreads them".into());
    }
    // Its own ServiceAccount, token mounted by the Pod only.
    if pod["automountServiceAccountToken"] != true {
        p.push("the reconciler's Pod does not mount its token (it uses the API)".into());
    }
    let sa = pod["serviceAccountName"].clone();
    let accounts = of_kind(docs, "ServiceAccount");
    let [account] = accounts.as_slice() else {
        p.push(format!("{} reconciler ServiceAccounts", accounts.len()));
        return p;
    };
    if account["metadata"]["name"] != sa || account["metadata"]["namespace"] != ns {
        p.push(format!(
            "the reconciler runs as {sa}, not its own ServiceAccount"
        ));
    }
    if of_kind(all, "Deployment").iter().any(|o| {
        component(o) != "reconciler" && o["spec"]["template"]["spec"]["serviceAccountName"] == sa
    }) {
        p.push("another Deployment runs as the reconciler's ServiceAccount".into());
    }
    // RBAC: exactly the rights docs/reconciler.md lists, no more, no less.
    p.extend(reconciler_rbac_problems(all, &sa, &ns, v));
    p
}

/// What docs/reconciler.md ("RBAC it needs") lists, as (scope, group, resource, verbs);
/// `ns` is the release namespace.
fn reconciler_rights(ns: &str, v: &Value) -> Vec<(String, String, String, Vec<String>)> {
    let mut want: Vec<(&str, &str, &str, &[&str])> = vec![
        (
            "cluster",
            "external-secrets.io",
            "externalsecrets",
            &["get", "list", "patch", "watch"],
        ),
        (
            "cluster",
            "external-secrets.io",
            "externalsecrets/status",
            &["patch"],
        ),
        (
            "cluster",
            "external-secrets.io",
            "secretstores",
            &["get", "list", "watch"],
        ),
        (
            "cluster",
            "external-secrets.io",
            "clustersecretstores",
            &["get", "list", "watch"],
        ),
        (
            "cluster",
            "",
            "secrets",
            &[
                "create", "delete", "get", "list", "patch", "update", "watch",
            ],
        ),
        ("cluster", "", "configmaps", &["get", "list", "watch"]),
        ("cluster", "", "namespaces", &["list", "watch"]),
        ("cluster", "", "serviceaccounts/token", &["create"]),
        ("cluster", "events.k8s.io", "events", &["create", "patch"]),
        (
            ns,
            "coordination.k8s.io",
            "leases",
            &["create", "get", "update"],
        ),
    ];
    let kinds = match v["rbac"]["generatorKinds"].as_array() {
        Some(_) => strs(&v["rbac"]["generatorKinds"]),
        None => [
            "fakes",
            "passwords",
            "uuids",
            "sshkeys",
            "vaultdynamicsecrets",
            "stssessiontokens",
            "ecrauthorizationtokens",
            "webhooks",
            "federations",
            "clustergenerators",
        ]
        .map(String::from)
        .to_vec(),
    };
    if v["rbac"]["rollout"] == true {
        for r in ["deployments", "statefulsets", "daemonsets"] {
            want.push(("cluster", "apps", r, &["get", "list", "patch"]));
        }
    }
    let mut out: Vec<(String, String, String, Vec<String>)> = want
        .into_iter()
        .map(|(s, g, r, v)| {
            (
                s.to_string(),
                g.to_string(),
                r.to_string(),
                v.iter().map(|x| x.to_string()).collect(),
            )
        })
        .collect();
    for k in kinds {
        out.push((
            "cluster".into(),
            "generators.external-secrets.io".into(),
            k,
            vec!["get".into(), "list".into(), "watch".into()],
        ));
    }
    out.sort();
    out
}

fn reconciler_rbac_problems(all: &[Value], sa: &Value, ns: &Value, v: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let ns_str = ns.as_str().unwrap_or("");
    let g = grants(all, sa, ns);
    let mut have: Vec<(String, String, String, Vec<String>)> = g
        .keys()
        .map(|(s, gr, r)| (s.clone(), gr.clone(), r.clone(), verbs_of(&g, s, gr, r)))
        .collect();
    have.sort();
    let want = reconciler_rights(ns_str, v);
    for w in &want {
        if !have.contains(w) {
            p.push(format!(
                "reconciler: wanted {w:?}, granted {:?}",
                have.iter().find(|h| h.0 == w.0 && h.1 == w.1 && h.2 == w.2)
            ));
        }
    }
    for h in &have {
        if !want.contains(h) {
            p.push(format!(
                "reconciler: granted {h:?}, which docs/reconciler.md does not list"
            ));
        }
    }
    // The Lease: in the release namespace only, and its get/update limited to its name.
    for ((scope, group, resource), rules) in &g {
        if group == "coordination.k8s.io" && resource == "leases" {
            if scope != ns_str {
                p.push(format!("reconciler: leases granted at scope {scope}"));
            }
            let name = v["leaderElection"]["name"]
                .as_str()
                .unwrap_or("esi-reconciler");
            for (verbs, names) in rules {
                if *verbs != ["create"] && *names != [name] {
                    p.push(format!(
                        "reconciler: leases {verbs:?} not limited to {name}: {names:?}"
                    ));
                }
            }
        }
    }
    // Issuer discovery: Kubernetes' own ClusterRole, bound iff reconciler.rbac.issuerDiscovery.
    let discovery = all.iter().any(|b| {
        b["kind"] == "ClusterRoleBinding"
            && b["roleRef"]["name"] == "system:service-account-issuer-discovery"
            && b["subjects"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| &s["name"] == sa && &s["namespace"] == ns))
    });
    if discovery != (v["rbac"]["issuerDiscovery"] != false) {
        p.push(format!("reconciler: issuer discovery bound: {discovery}"));
    }
    p
}

#[test]
fn the_chart_renders_safely_for_each_source_ledger_and_tls_choice() {
    if !helm_available() {
        return;
    }
    for case in cases() {
        let docs = render(&case.values);
        let server = of_component(&docs, "server");
        let mut problems = generic_problems(&docs);
        if case.server {
            problems.extend(deployment_problems(&server, &case));
            problems.extend(rbac_problems(&server, &case));
        } else if !server.is_empty() {
            problems.push(format!(
                "server.enabled=false, yet {} server objects",
                server.len()
            ));
        }
        let reconciler = of_component(&docs, "reconciler");
        if case.reconciler.is_some() {
            problems.extend(reconciler_problems(&reconciler, &docs, &case));
        } else if !reconciler.is_empty() {
            problems.push(format!(
                "{} reconciler objects, not enabled",
                reconciler.len()
            ));
        }
        assert!(problems.is_empty(), "{}: {problems:#?}", case.name);
        // Every document is a whole Kubernetes object.
        for d in &docs {
            assert!(
                d["apiVersion"].is_string()
                    && d["kind"].is_string()
                    && d["metadata"]["name"].is_string(),
                "{}: not an object: {d}",
                case.name
            );
        }
    }
}

#[test]
fn the_checks_catch_a_wildcard_an_unconfined_container_and_a_secret_write() {
    // The checks above are only worth something if they fail on a chart that is wrong:
    // values that smuggle in a wildcard resource, an extra container without a security
    // context, and a Secret-writing rule.
    if !helm_available() {
        return;
    }
    let case = Case {
        name: "broken",
        values: serde_json::json!({
            "rbac": {"generatorKinds": ["*"]},
            "extraContainers": [{"name": "proxy", "image": "proxy:1"}],
        }),
        kubernetes_source: true,
        ledger: "kubernetes",
        replicas: Some(2),
        server: true,
        reconciler: None,
    };
    let mut docs = render(&case.values);
    for d in docs.iter_mut().filter(|d| d["kind"] == "ClusterRole") {
        d["rules"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "update", "delete"]}));
        d["rules"].as_array_mut().unwrap().push(serde_json::json!({"apiGroups": ["federation.external-secrets.io"], "resources": ["authorizedidentities"], "verbs": ["delete", "patch"]}));
        d["rules"].as_array_mut().unwrap().push(serde_json::json!({"apiGroups": ["identity.federation.external-secrets.io"], "resources": ["spiffefederations/status"], "verbs": ["get", "patch", "update"]}));
        // A served kind the RBAC forgot (as when a kind joins FEDERATION_KINDS alone).
        for rule in d["rules"].as_array_mut().unwrap() {
            if let Some(resources) = rule["resources"].as_array_mut() {
                resources.retain(|r| {
                    r != "pingidentityfederations" && r != "pingidentityfederations/status"
                });
            }
        }
    }
    let problems = [
        deployment_problems(&docs, &case),
        rbac_problems(&docs, &case),
    ]
    .concat();
    let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
    assert!(has("a wildcard in resources"), "{problems:#?}");
    // Every kind of FEDERATION_KINDS read and its status patched.
    assert!(
        has("cannot read pingidentityfederations.identity.federation.external-secrets.io"),
        "{problems:#?}"
    );
    assert!(
        has("cannot patch pingidentityfederations/status.identity.federation.external-secrets.io"),
        "{problems:#?}"
    );
    // Status is only patched.
    for v in ["get", "update"] {
        assert!(
            has(&format!(
                "spiffefederations/status.identity.federation.external-secrets.io (cluster): verb {v}, which the server never uses"
            )),
            "{problems:#?}"
        );
    }
    assert!(
        has("container proxy: root filesystem not read-only"),
        "{problems:#?}"
    );
    assert!(
        has("container proxy: capabilities are not drop [ALL]"),
        "{problems:#?}"
    );
    assert!(has("writes Secrets"), "{problems:#?}");
    assert!(has("verb delete"), "{problems:#?}");
    // The ledger's rights are exact: nothing it does not use.
    assert!(
        has("authorizedidentities.federation.external-secrets.io (cluster): verb patch"),
        "{problems:#?}"
    );
    assert!(
        has("authorizedidentities.federation.external-secrets.io (cluster): verb delete"),
        "{problems:#?}"
    );
}

/// The reconciler's checks fail on RBAC that is wrong: a right docs/reconciler.md does
/// not list, a listed one missing, the Lease granted cluster-wide, an escalating verb, a
/// binding to a role the chart does not ship, and a container left unconfined.
#[test]
fn the_reconciler_checks_catch_extra_rights_a_cluster_lease_and_an_unconfined_container() {
    if !helm_available() {
        return;
    }
    let case = Case {
        name: "broken reconciler",
        values: serde_json::json!({"server": {"enabled": false}, "reconciler": {"enabled": true}}),
        kubernetes_source: true,
        ledger: "kubernetes",
        replicas: None,
        server: false,
        reconciler: Some(2),
    };
    let docs = render(&case.values);
    let ok = [
        generic_problems(&docs),
        reconciler_problems(&of_component(&docs, "reconciler"), &docs, &case),
    ]
    .concat();
    assert!(ok.is_empty(), "{ok:#?}");
    let mut docs = docs;
    for d in docs.iter_mut() {
        if d["kind"] == "ClusterRole" {
            let rules = d["rules"].as_array_mut().unwrap();
            // Secrets without delete, plus deletecollection; leases cluster-wide; RBAC objects.
            for r in rules.iter_mut() {
                if r["resources"] == serde_json::json!(["secrets"]) {
                    r["verbs"] = serde_json::json!([
                        "get",
                        "list",
                        "watch",
                        "create",
                        "update",
                        "patch",
                        "deletecollection"
                    ]);
                }
            }
            rules.push(serde_json::json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"]}));
            rules.push(serde_json::json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["escalate"]}));
        }
        if d["kind"] == "Role" {
            d["rules"][1]["resourceNames"] = serde_json::json!([]);
        }
        if d["kind"] == "ClusterRoleBinding"
            && d["roleRef"]["name"] == "system:service-account-issuer-discovery"
        {
            d["roleRef"]["name"] = "cluster-admin".into();
        }
        if d["kind"] == "Deployment" {
            d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] =
                false.into();
            d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"] =
                serde_json::json!({"httpGet": {"path": "/healthz", "port": 8080}});
        }
    }
    let problems = [
        generic_problems(&docs),
        reconciler_problems(&of_component(&docs, "reconciler"), &docs, &case),
    ]
    .concat();
    let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
    for needle in [
        "verb deletecollection",
        "verb escalate",
        "rights on clusterroles",
        "leases granted at scope cluster",
        "not limited to esi-reconciler",
        "which docs/reconciler.md does not list",
        "wanted (\"cluster\", \"\", \"secrets\"",
        "binds ClusterRole \"cluster-admin\"",
        "issuer discovery bound: false",
        "root filesystem not read-only",
        "reconciler livenessProbe",
    ] {
        assert!(has(needle), "{needle}: {problems:#?}");
    }
}

#[test]
fn the_chart_lints_clean_with_each_choice() {
    if !helm_available() {
        return;
    }
    for case in cases() {
        let set = case.values.to_string();
        if let Err(e) = helm(&["lint", CHART, "--set-json", &set]) {
            panic!("{}: helm lint --strict: {e}", case.name);
        }
    }
}

#[test]
fn values_that_cannot_work_fail_the_render_with_the_reason() {
    if !helm_available() {
        return;
    }
    for (values, reason) in [
        (
            serde_json::json!({"ledger": {"type": "postgres"}}),
            "ledger.postgres.existingSecret",
        ),
        (
            serde_json::json!({"ledger": {"type": "embedded"}, "autoscaling": {"enabled": true}}),
            "exactly one replica",
        ),
        (
            serde_json::json!({"tls": {"source": "certManager"}}),
            "issuerRef.name",
        ),
        (
            serde_json::json!({"source": "files"}),
            "source must be kubernetes or directory",
        ),
        (
            serde_json::json!({"ledger": {"type": "redb"}}),
            "ledger.type must be",
        ),
        (
            serde_json::json!({"metrics": {"enabled": false, "podMonitor": {"enabled": true}}}),
            "needs metrics.enabled",
        ),
        (
            serde_json::json!({"server": {"enabled": false}}),
            "nothing to deploy",
        ),
        (
            serde_json::json!({"reconciler": {"enabled": true, "concurrency": 0}}),
            "reconciler.concurrency must be",
        ),
        (
            serde_json::json!({"reconciler": {"enabled": true, "replicaCount": 0}}),
            "reconciler.replicaCount must be",
        ),
        (
            serde_json::json!({"reconciler": {"enabled": true, "metrics": {"enabled": false, "podMonitor": {"enabled": true}}}}),
            "needs reconciler.metrics.enabled",
        ),
    ] {
        let set = values.to_string();
        match helm(&["template", CHART, "--set-json", &set]) {
            Ok(_) => panic!("{set} rendered"),
            Err(e) => assert!(e.contains(reason), "{set}: {e}"),
        }
    }
}

/// Every `deploy/kubernetes/NAME.yaml` is the chart rendered with `NAME.values.yaml`
/// (release and namespace from its `# render:` line), after one Namespace document.
#[test]
fn the_plain_manifests_are_the_charts_output() {
    if !helm_available() {
        return;
    }
    let dir = format!("{ROOT}/deploy/kubernetes");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".values.yaml"))
        else {
            continue;
        };
        seen += 1;
        let values = std::fs::read_to_string(&path).unwrap();
        let line = values
            .lines()
            .find_map(|l| l.strip_prefix("# render: "))
            .unwrap_or_else(|| panic!("{}: no '# render:' line", path.display()));
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .unwrap()
                .to_string()
        };
        let (release, namespace) = (field("release"), field("namespace"));
        let want = parse_docs(
            &helm(&[
                "template",
                CHART,
                "-f",
                path.to_str().unwrap(),
                "--name",
                &release,
                "--namespace",
                &namespace,
            ])
            .unwrap(),
        );
        let plain = format!("{dir}/{stem}.yaml");
        let have = parse_docs(&std::fs::read_to_string(&plain).unwrap());
        assert_eq!(have[0]["kind"], "Namespace", "{plain}");
        assert_eq!(have[0]["metadata"]["name"], namespace.as_str(), "{plain}");
        assert!(
            have[1..] == want[..],
            "{plain} is not the chart's output with {}: run scripts/helm.sh manifests",
            path.display()
        );
    }
    assert_eq!(seen, 2, "esi-federation and esi-server values files");
}

/// Every value of `values.yaml` has a `# --` comment above it and is named in the chart's
/// README (a map without such a comment is a group: each of its keys is a value).
#[test]
fn every_chart_value_is_documented() {
    let values = std::fs::read_to_string(format!("{CHART}/values.yaml")).unwrap();
    let readme = std::fs::read_to_string(format!("{CHART}/README.md")).unwrap();
    let parsed: Value = serde_saphyr::from_str(&values).unwrap();
    let lines: Vec<&str> = values.lines().collect();
    let mut problems = Vec::new();
    let mut documented = 0;
    // `block`: the line range of the parent's children; `depth`: their indentation level.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        prefix: &str,
        map: &serde_json::Map<String, Value>,
        depth: usize,
        block: std::ops::Range<usize>,
        lines: &[&str],
        readme: &str,
        problems: &mut Vec<String>,
        documented: &mut usize,
    ) {
        let indent = "  ".repeat(depth);
        for (k, v) in map {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let Some(at) = block.clone().find(|&i| {
                lines[i]
                    .strip_prefix(&indent)
                    .is_some_and(|rest| rest.starts_with(&format!("{k}:")))
            }) else {
                problems.push(format!("{key}: its line is not found"));
                continue;
            };
            let comment = lines[..at]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with('#'))
                .any(|l| l.trim_start().starts_with("# --"));
            if comment {
                *documented += 1;
                if !readme.contains(&format!("`{key}`")) {
                    problems.push(format!("{key}: not in README.md"));
                }
                continue;
            }
            match v.as_object() {
                Some(children) if !children.is_empty() => {
                    let end = (at + 1..block.end)
                        .find(|&i| {
                            let l = lines[i];
                            !l.trim().is_empty()
                                && !l.trim_start().starts_with('#')
                                && l.len() - l.trim_start().len() <= depth * 2
                        })
                        .unwrap_or(block.end);
                    walk(
                        &key,
                        children,
                        depth + 1,
                        at + 1..end,
                        lines,
                        readme,
                        problems,
                        documented,
                    );
                }
                _ => problems.push(format!("{key}: no `# --` comment above it in values.yaml")),
            }
        }
    }
    walk(
        "",
        parsed.as_object().unwrap(),
        0,
        0..lines.len(),
        &lines,
        &readme,
        &mut problems,
        &mut documented,
    );
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(documented > 60, "{documented} values");
}

/// The image runs as the user the chart asks for, non-root, with both binaries.
#[test]
fn the_image_is_distroless_non_root_with_both_binaries() {
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(
        last_stage.starts_with("gcr.io/distroless/"),
        "final stage: {last_stage}"
    );
    assert!(last_stage.lines().next().unwrap().contains("nonroot"));
    let user = last_stage
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(format!("{CHART}/values.yaml")).unwrap())
            .unwrap();
    let sc = &values["securityContext"];
    assert_eq!(
        user.trim(),
        format!("{}:{}", sc["runAsUser"], sc["runAsGroup"]),
        "the image's user is the chart's"
    );
    assert_ne!(sc["runAsUser"], 0);
    for bin in ["esi-server", "esi-cli"] {
        assert!(
            last_stage
                .lines()
                .any(|l| l.starts_with("COPY --from=build") && l.contains(&format!("/{bin}"))),
            "{bin} is not copied into the image"
        );
    }
    // Everything the build stage copies is sent by .dockerignore.
    let ignore = std::fs::read_to_string(format!("{ROOT}/.dockerignore")).unwrap();
    for copy in dockerfile.lines().filter_map(|l| l.strip_prefix("COPY ")) {
        if copy.starts_with("--from") {
            continue;
        }
        let mut parts: Vec<&str> = copy.split_whitespace().collect();
        parts.pop();
        for src in parts {
            let src = src.trim_end_matches('/');
            assert!(
                ignore.lines().any(|l| l.trim() == format!("!{src}")),
                ".dockerignore leaves out {src}"
            );
        }
    }
}

/// The chart installs the CRDs `esi-server crds` prints (deploy/crds), byte for byte.
#[test]
fn the_chart_ships_the_servers_crds() {
    let crds = std::fs::read_to_string(format!("{ROOT}/deploy/crds/esi-federation-crds.yaml"))
        .expect("deploy/crds/esi-federation-crds.yaml");
    let chart = std::fs::read_to_string(format!("{CHART}/crds/esi-federation-crds.yaml"))
        .expect("the chart's crds/esi-federation-crds.yaml: run scripts/helm.sh manifests");
    assert_eq!(chart, crds, "run scripts/helm.sh manifests");
    let out = Command::new(server_bin()).arg("crds").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        crds,
        "deploy/crds is not `esi-server crds`"
    );
}

/// The webhook's NetworkPolicy (`webhook.networkPolicy.enabled`, review finding 1):
/// it selects the webhook's Pods only, admits ingress on the port they listen on alone
/// (from the given peers), and allows no egress; `annotatedPodsOnly: false` drops the
/// match condition.
#[test]
fn the_webhook_network_policy_admits_only_its_port() {
    if !helm_available() {
        return;
    }
    let peers = serde_json::json!([{"ipBlock": {"cidr": "10.0.0.0/24"}}]);
    let values = serde_json::json!({"webhook": {"enabled": true, "port": 8443,
        "annotatedPodsOnly": false,
        "networkPolicy": {"enabled": true, "from": peers}}});
    if let Err(e) = helm(&["lint", CHART, "--set-json", &values.to_string()]) {
        panic!("helm lint --strict: {e}");
    }
    let docs = render(&values);
    let policies = of_kind(&docs, "NetworkPolicy");
    let [policy] = policies.as_slice() else {
        panic!("one NetworkPolicy: {policies:?}")
    };
    let spec = &policy["spec"];
    let hookd = of_kind(&docs, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] != "esi-federation")
        .unwrap();
    let server = of_kind(&docs, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "esi-federation")
        .unwrap();
    assert!(selects(
        &spec["podSelector"]["matchLabels"],
        &hookd["spec"]["template"]["metadata"]["labels"]
    ));
    assert!(!selects(
        &spec["podSelector"]["matchLabels"],
        &server["spec"]["template"]["metadata"]["labels"]
    ));
    assert_eq!(strs(&spec["policyTypes"]), ["Ingress", "Egress"]);
    assert_eq!(
        spec["ingress"],
        serde_json::json!([{"ports": [{"port": 8443, "protocol": "TCP"}], "from": peers}])
    );
    assert_eq!(spec["egress"], serde_json::json!([]));
    let hook = &of_kind(&docs, "MutatingWebhookConfiguration")[0]["webhooks"][0];
    assert!(hook["matchConditions"].is_null());
}

/// The webhook's objects (`webhook.enabled`), for each certificate choice: the
/// `MutatingWebhookConfiguration` reaches the webhook's Service and trusts its certificate,
/// the Service selects the webhook's Pods only, the Deployment runs `esi-server webhook`
/// confined, without a token or RBAC, and the server's own objects are unchanged.
#[test]
fn the_webhook_renders_wired_and_confined() {
    if !helm_available() {
        return;
    }
    let ns = "esi-system";
    let without = render(&serde_json::json!({}));
    for (case, values) in [
        (
            "self-signed CA",
            serde_json::json!({"webhook": {"enabled": true}}),
        ),
        (
            "cluster issuer",
            serde_json::json!({"webhook": {"enabled": true, "failurePolicy": "Ignore", "timeoutSeconds": 5,
                "tls": {"certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}},
                "cli": {"audience": "https://esi.example.com", "image": "reg.example.com/esi-cli:1"}}}),
        ),
        (
            "existing Secret",
            serde_json::json!({"webhook": {"enabled": true, "namespaceSelector": {"matchLabels": null},
                "tls": {"source": "secret", "secretName": "hook-tls", "caBundle": "Q0EK"}}}),
        ),
    ] {
        let set = values.to_string();
        if let Err(e) = helm(&["lint", CHART, "--set-json", &set]) {
            panic!("{case}: helm lint --strict: {e}");
        }
        let docs = render(&values);
        let w = &values["webhook"];
        // The server's objects are as without the webhook.
        for d in &without {
            assert!(docs.contains(d), "{case}: changed: {d}");
        }
        let hooks = of_kind(&docs, "MutatingWebhookConfiguration");
        assert_eq!(hooks.len(), 1, "{case}");
        let cfg = hooks[0];
        let [hook] = cfg["webhooks"].as_array().unwrap().as_slice() else {
            panic!("{case}: one webhook")
        };
        assert_eq!(strs(&hook["admissionReviewVersions"]), ["v1"], "{case}");
        assert_eq!(hook["sideEffects"], "None");
        assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
        assert_eq!(
            hook["failurePolicy"],
            w["failurePolicy"].as_str().unwrap_or("Fail"),
            "{case}"
        );
        assert_eq!(
            hook["timeoutSeconds"],
            w["timeoutSeconds"].as_u64().unwrap_or(10),
            "{case}"
        );
        assert_eq!(
            hook["rules"],
            serde_json::json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                "resources": ["pods"], "scope": "Namespaced"}])
        );
        let exprs = hook["namespaceSelector"]["matchExpressions"]
            .as_array()
            .unwrap();
        assert!(
            exprs.contains(
                &serde_json::json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                               "values": [ns, "kube-system"]})
            ),
            "{case}: its own namespace is never selected: {exprs:?}"
        );
        let labels_wanted =
            !w["namespaceSelector"]["matchLabels"].is_null() || w["namespaceSelector"].is_null();
        assert_eq!(
            hook["namespaceSelector"]["matchLabels"]["esi-federation.io/injection"] == "enabled",
            labels_wanted,
            "{case}"
        );
        assert_eq!(
            hook["objectSelector"]["matchExpressions"][0]["key"],
            "secretless.externalsecrets.com/skip"
        );
        // Only annotated Pods are sent (review finding 6: selection by annotation).
        let conditions = hook["matchConditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 1, "{case}");
        assert!(
            conditions[0]["expression"]
                .as_str()
                .unwrap()
                .contains("startsWith('secretless.externalsecrets.com/')"),
            "{case}"
        );
        assert!(
            of_kind(&docs, "NetworkPolicy").is_empty(),
            "{case}: off by default"
        );
        // clientConfig → the Service → the webhook's Pods, on the port they listen on.
        let svc_ref = &hook["clientConfig"]["service"];
        assert_eq!(
            (svc_ref["namespace"].as_str(), svc_ref["path"].as_str()),
            (Some(ns), Some("/mutate"))
        );
        let service = docs
            .iter()
            .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == svc_ref["name"])
            .unwrap_or_else(|| panic!("{case}: no Service {}", svc_ref["name"]));
        let port = &service["spec"]["ports"][0];
        assert_eq!(port["port"], svc_ref["port"], "{case}");
        let deployments = of_kind(&docs, "Deployment");
        assert_eq!(deployments.len(), 2, "{case}");
        let (server, hookd) =
            match deployments[0]["metadata"]["name"].as_str() == Some("esi-federation") {
                true => (deployments[0], deployments[1]),
                false => (deployments[1], deployments[0]),
            };
        let pod_labels = &hookd["spec"]["template"]["metadata"]["labels"];
        assert!(selects(&service["spec"]["selector"], pod_labels), "{case}");
        assert!(selects(&hookd["spec"]["selector"], pod_labels), "{case}");
        let server_labels = &server["spec"]["template"]["metadata"]["labels"];
        assert!(
            !selects(&service["spec"]["selector"], server_labels),
            "{case}: the webhook Service selects the server"
        );
        for s in of_kind(&docs, "Service")
            .into_iter()
            .chain(of_kind(&docs, "PodDisruptionBudget"))
        {
            if s["metadata"]["name"] == "esi-federation" {
                assert!(
                    !selects(&s["spec"]["selector"], pod_labels),
                    "{case}: the server's {} selects the webhook",
                    s["kind"]
                );
            }
        }
        let pod = &hookd["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert!(
            c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == port["targetPort"]),
            "{case}: the Service targets no container port"
        );
        // Confined, no token, no RBAC.
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let sc = &c["securityContext"];
        assert_eq!(
            (
                &sc["readOnlyRootFilesystem"],
                &sc["allowPrivilegeEscalation"],
                strs(&sc["capabilities"]["drop"])
            ),
            (
                &Value::Bool(true),
                &Value::Bool(false),
                vec!["ALL".to_string()]
            ),
            "{case}"
        );
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert!(!c["resources"]["limits"]["memory"].is_null());
        let sa = pod["serviceAccountName"].clone();
        assert!(
            of_kind(&docs, "ServiceAccount")
                .iter()
                .any(|s| s["metadata"]["name"] == sa && s["automountServiceAccountToken"] == false)
        );
        for b in of_kind(&docs, "RoleBinding")
            .into_iter()
            .chain(of_kind(&docs, "ClusterRoleBinding"))
        {
            assert!(
                !b["subjects"].to_string().contains(sa.as_str().unwrap()),
                "{case}: the webhook has RBAC"
            );
        }
        let args = strs(&c["args"]);
        assert_eq!(args[0], "webhook");
        let listen = args
            .iter()
            .find_map(|a| a.strip_prefix("--listen=0.0.0.0:"))
            .unwrap();
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let g = &c[probe]["httpGet"];
            assert_eq!(
                (g["scheme"].as_str(), g["port"].to_string()),
                (Some("HTTPS"), listen.to_string()),
                "{case}: {probe}"
            );
        }
        let image = w["cli"]["image"]
            .as_str()
            .unwrap_or(c["image"].as_str().unwrap())
            .to_string();
        assert!(
            args.contains(&format!("--cli-image={image}")),
            "{case}: {args:?}"
        );
        let audience = w["cli"]["audience"].as_str().unwrap_or("esi-federation");
        assert!(
            args.contains(&format!("--audience={audience}")),
            "{case}: {args:?}"
        );
        // The certificate the Pod serves is the one the API server is told to trust.
        let tls_secret = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "tls")
            .map(|v| v["secret"]["secretName"].clone())
            .unwrap();
        let certs = of_kind(&docs, "Certificate");
        let issuers = of_kind(&docs, "Issuer");
        if w["tls"]["source"] == "secret" {
            assert_eq!(tls_secret, "hook-tls");
            assert_eq!(hook["clientConfig"]["caBundle"], "Q0EK");
            assert!(cfg["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].is_null());
            assert!(certs.is_empty() && issuers.is_empty(), "{case}");
            continue;
        }
        assert!(hook["clientConfig"]["caBundle"].is_null(), "{case}");
        let inject = cfg["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
            .as_str()
            .unwrap();
        let (inject_ns, inject_name) = inject.split_once('/').unwrap();
        let leaf = certs
            .iter()
            .find(|c| {
                c["metadata"]["name"] == inject_name && c["metadata"]["namespace"] == inject_ns
            })
            .unwrap_or_else(|| panic!("{case}: no Certificate {inject}"));
        assert_eq!(leaf["spec"]["secretName"], tls_secret, "{case}");
        let svc_dns = format!("{}.{ns}.svc", service["metadata"]["name"].as_str().unwrap());
        assert!(strs(&leaf["spec"]["dnsNames"]).contains(&svc_dns), "{case}");
        let issuer_ref = &leaf["spec"]["issuerRef"];
        match w["tls"]["certManager"]["issuerRef"]["name"].as_str() {
            Some(given) => {
                assert_eq!(
                    (issuer_ref["name"].as_str(), issuer_ref["kind"].as_str()),
                    (Some(given), Some("ClusterIssuer"))
                );
                assert!(issuers.is_empty(), "{case}");
            }
            None => {
                // Leaf ← CA Issuer ← CA Certificate (isCA) ← self-signed Issuer.
                let ca_issuer = issuers
                    .iter()
                    .find(|i| i["metadata"]["name"] == issuer_ref["name"])
                    .unwrap();
                let ca_secret = &ca_issuer["spec"]["ca"]["secretName"];
                let ca_cert = certs
                    .iter()
                    .find(|c| &c["spec"]["secretName"] == ca_secret)
                    .unwrap();
                assert_eq!(ca_cert["spec"]["isCA"], true);
                let root = issuers
                    .iter()
                    .find(|i| i["metadata"]["name"] == ca_cert["spec"]["issuerRef"]["name"])
                    .unwrap();
                assert!(root["spec"]["selfSigned"].is_object(), "{case}");
            }
        }
    }
    for (values, reason) in [
        (
            serde_json::json!({"webhook": {"enabled": true, "tls": {"source": "secret"}}}),
            "webhook.tls.caBundle",
        ),
        (
            serde_json::json!({"webhook": {"enabled": true, "failurePolicy": "Sometimes"}}),
            "webhook.failurePolicy must be",
        ),
        (
            serde_json::json!({"webhook": {"enabled": true, "timeoutSeconds": 60}}),
            "webhook.timeoutSeconds",
        ),
    ] {
        let set = values.to_string();
        match helm(&["template", CHART, "--set-json", &set]) {
            Ok(_) => panic!("{set} rendered"),
            Err(e) => assert!(e.contains(reason), "{set}: {e}"),
        }
    }
}
