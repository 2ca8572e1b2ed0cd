//! End to end: the real `esi-server webhook` over HTTPS (a test CA and a leaf it signed),
//! fed the golden `AdmissionReview`s of `tests/fixtures/webhook/`. Each patch is applied to
//! the fixture's Pod with the json-patch crate and the result checked field by field and
//! against `<name>.pod.json` (`ESI_UPDATE_GOLDEN=1` rewrites those); the patched Pod
//! re-admitted gives an empty patch. The last test runs the injected command lines for
//! real: `esi-cli install`, then the application container's exact esi-cli command (its
//! volumes standing in as temporary directories, the kubelet's `$(VAR)` expansion
//! applied) against a real `esi-server` (and OpenBao when `scripts/test.sh` runs it).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use common::*;
use serde_json::{Value, json};

const P: &str = "secretless.externalsecrets.com/";
const AUD: &str = "https://esi-federation.cluster-main.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";
const IMAGE: &str = "registry.example.com/esi-federation:test";

fn fixture(name: &str) -> Value {
    let path = format!("{FIXTURES}/webhook/{name}.review.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The real `esi-server webhook`, on a free port, with a certificate of a test CA.
struct Webhook {
    child: Child,
    url: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Webhook {
    fn start(extra: &[&str]) -> Webhook {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let ca = test_ca();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &ca.cert_pem).unwrap();
        std::fs::write(&key, &ca.key_pem).unwrap();
        let mut child = Command::new(server_bin())
            .arg("webhook")
            .arg("--listen=127.0.0.1:0")
            .arg(format!("--tls-cert={}", cert.display()))
            .arg(format!("--tls-key={}", key.display()))
            .arg(format!("--cli-image={IMAGE}"))
            .arg(format!("--audience={AUD}"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start esi-server webhook");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(rest) = l.strip_prefix("esi-server webhook listening on ") {
                        break rest.trim().to_string();
                    }
                }
                _ => panic!(
                    "esi-server webhook exited before listening: {:?}",
                    child.wait()
                ),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Webhook {
            child,
            url,
            client: client_trusting(ca.ca_pem.as_bytes()),
            _dir: dir,
        }
    }

    async fn post(&self, content_type: &str, body: Vec<u8>) -> (u16, String) {
        let resp = self
            .client
            .post(format!("{}/mutate", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Sends a review; returns the response part.
    async fn review(&self, review: &Value) -> Value {
        let (status, text) = self
            .post("application/json", serde_json::to_vec(review).unwrap())
            .await;
        assert_eq!(status, 200, "{text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(
            answer["response"]["uid"], review["request"]["uid"],
            "uid echoed"
        );
        answer["response"].clone()
    }

    /// Admits `review`'s Pod: the patched Pod (the patch applied with json-patch), after
    /// checking that re-admitting it changes nothing.
    async fn admit(&self, review: &Value) -> Value {
        let response = self.review(review).await;
        assert_eq!(response["allowed"], true, "{response}");
        let mut pod = review["request"]["object"].clone();
        if let Some(b64) = response["patch"].as_str() {
            assert_eq!(response["patchType"], "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
            json_patch::patch(&mut pod, &patch).unwrap();
            let mut again = review.clone();
            again["request"]["object"] = pod.clone();
            let second = self.review(&again).await;
            assert_eq!(
                second,
                json!({"uid": review["request"]["uid"], "allowed": true}),
                "re-admitted"
            );
        }
        pod
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Compares with `tests/fixtures/webhook/<name>.pod.json` (rewritten under
/// `ESI_UPDATE_GOLDEN=1`).
fn golden(name: &str, pod: &Value) {
    let path = format!("{FIXTURES}/webhook/{name}.pod.json");
    if std::env::var("ESI_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, serde_json::to_string_pretty(pod).unwrap() + "\n").unwrap();
    }
    let want: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        &want == pod,
        "{name}: the patched Pod differs from {path} (ESI_UPDATE_GOLDEN=1 rewrites it):\n{}",
        serde_json::to_string_pretty(pod).unwrap()
    );
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The hardened security context of an injected container.
fn assert_confined(c: &Value, uid: i64) {
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{c}");
    assert_eq!(sc["runAsUser"], uid, "{c}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{c}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{c}");
    assert_eq!(sc["privileged"], false, "{c}");
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}), "{c}");
    assert_eq!(
        sc["seccompProfile"],
        json!({"type": "RuntimeDefault"}),
        "{c}"
    );
    assert_eq!(c["image"], IMAGE);
    assert_eq!(c["resources"]["requests"]["memory"], "32Mi");
    assert_eq!(c["resources"]["limits"]["memory"], "128Mi");
}

#[tokio::test(flavor = "multi_thread")]
async fn env_mode_wraps_the_command_in_esi_cli() {
    let w = Webhook::start(&[]);
    let review = fixture("env");
    let pod = w.admit(&review).await;
    golden("env", &pod);
    let spec = &pod["spec"];
    let app = &spec["containers"][0];
    assert_eq!(
        strs(&app["command"]),
        [
            "/esi/bin/esi-cli",
            "--mode=init",
            "--federated-server-url=https://esi-federation.example.com",
            "--federated-store=vault-prod",
            "--federated-generators=monitoring/Password/app-pw",
            "--federated-token=/esi/token/token",
            "--federated-ca-crt=/esi/token/ca.crt",
            "--external-secrets=db-credentials",
            "--inject-on-env=DB_PASS=db-credentials.password,APP_PW=app-pw.password,*",
            "--binary-path=/bin/prometheus",
            "--args=--config.file=/etc/prometheus/prometheus.yml,--web.listen-address=:$(PORT)",
        ]
    );
    assert!(app.get("args").is_none(), "args folded into --args");
    // esi-cli execs the application in its container: the token is mounted there.
    assert_eq!(
        names(&app["volumeMounts"]),
        [
            "config",
            "kube-api-access-7xk2p",
            "esi-cli-bin",
            "esi-cli-token"
        ]
    );
    for m in &app["volumeMounts"].as_array().unwrap()[2..] {
        assert_eq!(m["readOnly"], true, "{m}");
    }
    assert_eq!(
        named(&app["volumeMounts"], "esi-cli-bin")["mountPath"],
        "/esi/bin"
    );
    assert_eq!(
        named(&app["volumeMounts"], "esi-cli-token")["mountPath"],
        "/esi/token"
    );
    // The user's init container first, untouched; then ours.
    assert_eq!(
        names(&spec["initContainers"]),
        ["init-chown", "esi-cli-install"]
    );
    assert_eq!(
        spec["initContainers"][0],
        review["request"]["object"]["spec"]["initContainers"][0]
    );
    let install = &spec["initContainers"][1];
    assert_eq!(
        strs(&install["command"]),
        ["/usr/local/bin/esi-cli", "install", "--to=/esi/bin/esi-cli"]
    );
    assert_confined(install, 65532);
    let bin = named(&spec["volumes"], "esi-cli-bin");
    assert_eq!(bin["emptyDir"]["medium"], "Memory");
    let token = named(&spec["volumes"], "esi-cli-token");
    let sources = &token["projected"]["sources"];
    assert_eq!(
        sources[0]["serviceAccountToken"],
        json!({"audience": AUD, "expirationSeconds": 600, "path": "token"})
    );
    assert_eq!(
        sources[1]["configMap"],
        json!({"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]})
    );
    // Appended without duplicates.
    assert_eq!(
        spec["imagePullSecrets"],
        json!([{"name": "regcred"}, {"name": "esi-registry"}])
    );
    assert_eq!(
        pod["metadata"]["annotations"][format!("{P}injected")],
        "true"
    );
    // Nothing else moved.
    assert_eq!(
        pod["metadata"]["ownerReferences"],
        review["request"]["object"]["metadata"]["ownerReferences"]
    );
    assert_eq!(app["env"], json!([{"name": "PORT", "value": "9090"}]));
}

#[tokio::test(flavor = "multi_thread")]
async fn file_mode_writes_before_the_application_starts() {
    let w = Webhook::start(&[]);
    let pod = w.admit(&fixture("file")).await;
    golden("file", &pod);
    let spec = &pod["spec"];
    assert_eq!(names(&spec["initContainers"]), ["esi-cli-init"]);
    let init = &spec["initContainers"][0];
    assert!(init.get("restartPolicy").is_none(), "runs to completion");
    assert_eq!(
        strs(&init["command"]),
        [
            "/usr/local/bin/esi-cli",
            "--mode=init",
            "--federated-server-url=https://esi-federation.example.com",
            "--federated-store=vault-prod",
            "--federated-token=/esi/token/token",
            "--federated-ca-crt=/esi/token/ca.crt",
            "--inject-on-file=/secrets/secrets.json=app-secrets,/etc/app/secrets/db.yaml=db-credentials,/etc/app/secrets/db-password=db-credentials.password",
        ]
    );
    // As the Pod's user, so that the application can read the 0400 files.
    assert_confined(init, 1000);
    assert_eq!(init["securityContext"]["runAsGroup"], 3000);
    assert_eq!(
        init["volumeMounts"],
        json!([
            {"name": "esi-cli-files", "mountPath": "/etc/app/secrets", "subPath": "etc/app/secrets"},
            {"name": "esi-cli-files", "mountPath": "/secrets", "subPath": "secrets"},
            {"name": "esi-cli-token", "mountPath": "/esi/token", "readOnly": true},
        ])
    );
    // Both application containers (one without a command: fine here) read them read-only,
    // each file mounted alone (nothing the image keeps beside them is hidden), keep their
    // commands, and get no token.
    for (i, c) in spec["containers"].as_array().unwrap().iter().enumerate() {
        let original = &fixture("file")["request"]["object"]["spec"]["containers"][i];
        assert_eq!(c["command"], original["command"]);
        let mounts = &c["volumeMounts"].as_array().unwrap()[1..];
        assert_eq!(
            mounts,
            [
                json!({"name": "esi-cli-files", "mountPath": "/secrets/secrets.json", "subPath": "secrets/secrets.json", "readOnly": true}),
                json!({"name": "esi-cli-files", "mountPath": "/etc/app/secrets/db.yaml", "subPath": "etc/app/secrets/db.yaml", "readOnly": true}),
                json!({"name": "esi-cli-files", "mountPath": "/etc/app/secrets/db-password", "subPath": "etc/app/secrets/db-password", "readOnly": true}),
            ]
        );
    }
    assert_eq!(
        names(&spec["volumes"]),
        ["kube-api-access-7xk2p", "esi-cli-token", "esi-cli-files"]
    );
    assert_eq!(
        named(&spec["volumes"], "esi-cli-files")["emptyDir"]["medium"],
        "Memory"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn file_and_daemon_mode_hands_generator_credentials_to_a_native_sidecar() {
    let w = Webhook::start(&[]);
    let pod = w.admit(&fixture("file-daemon")).await;
    golden("file-daemon", &pod);
    let spec = &pod["spec"];
    assert_eq!(
        names(&spec["initContainers"]),
        ["esi-cli-init", "esi-cli-daemon"]
    );
    let (init, daemon) = (&spec["initContainers"][0], &spec["initContainers"][1]);
    let files = "--inject-on-file=/secrets/db.yaml=db-credentials,/secrets/vault/creds.json=vault-db,/etc/worker/secrets/config.yaml=@/etc/worker/templates/config.yaml.tmpl";
    let init_cmd = strs(&init["command"]);
    assert!(init_cmd.contains(&files.to_string()), "{init_cmd:?}");
    assert!(init_cmd.contains(&"--credentials-file=/esi/state/credentials.json".to_string()));
    // The sidecar: native (restartPolicy Always), keeps the store file and the template
    // (the generator's file is the init step's), renews the handed-off credential.
    assert_eq!(daemon["restartPolicy"], "Always");
    assert_eq!(
        strs(&daemon["command"]),
        [
            "/usr/local/bin/esi-cli",
            "--mode=daemon",
            "--federated-server-url=https://esi-federation.example.com",
            "--federated-store=vault-prod",
            "--federated-generators=monitoring/VaultDynamicSecret/vault-db",
            "--federated-token=/esi/token/token",
            "--federated-ca-crt=/esi/token/ca.crt",
            "--inject-on-file=/secrets/db.yaml=db-credentials,/etc/worker/secrets/config.yaml=@/etc/worker/templates/config.yaml.tmpl",
            "--daemon-refresh-interval=5m",
            "--credentials-file=/esi/state/credentials.json",
        ]
    );
    for c in [init, daemon] {
        assert_confined(c, 2000);
        let mounts = &c["volumeMounts"];
        assert_eq!(
            names(mounts),
            [
                "esi-cli-files",
                "esi-cli-files",
                "esi-cli-token",
                "esi-cli-state",
                "templates"
            ]
        );
        // The template comes from the Pod's ConfigMap volume, lent read-only.
        assert_eq!(
            named(mounts, "templates"),
            &json!({"name": "templates", "mountPath": "/etc/worker/templates", "readOnly": true})
        );
    }
    let app = &spec["containers"][0];
    assert_eq!(strs(&app["command"]), ["/worker"]);
    assert_eq!(
        names(&app["volumeMounts"]),
        [
            "templates",
            "kube-api-access-7xk2p",
            "esi-cli-files",
            "esi-cli-files"
        ]
    );
    assert!(
        !app["volumeMounts"].to_string().contains("esi-cli-state"),
        "the handoff is esi-cli's"
    );
    assert_eq!(
        named(&spec["volumes"], "esi-cli-state")["emptyDir"]["medium"],
        "Memory"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_name_the_annotation_or_field() {
    let w = Webhook::start(&[]);
    // A container without a command: the entrypoint of its image is unknown here.
    let r = w.review(&fixture("no-command")).await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 400);
    assert_eq!(r["status"]["reason"], "BadRequest");
    let msg = r["status"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("spec.containers[0].command: container \"web\" has no command"),
        "{msg}"
    );
    // Bad annotations, each on the env fixture.
    let cases: &[(&str, Option<&str>, &str)] = &[
        (
            "inject-as-env",
            Some("true"),
            "inject-as-env: unknown annotation",
        ),
        (
            "federated-server-url",
            Some("http://esi.example.com"),
            "federated-server-url: esi-cli would refuse --federated-server-url: must be an https:// URL",
        ),
        (
            "inject-on-env",
            Some("DB_PASS"),
            "inject-on-env: esi-cli would refuse --inject-on-env: \"DB_PASS\" is not ENV=secret.key",
        ),
        (
            "federated-generators",
            Some("Password/app-pw"),
            "federated-generators: esi-cli would refuse --federated-generators: \"Password/app-pw\" is not NAMESPACE/KIND/NAME",
        ),
        (
            "daemon-refresh-interval",
            Some("soon"),
            "daemon-refresh-interval: esi-cli would refuse --daemon-refresh-interval",
        ),
        (
            "okta-client-id",
            Some("x"),
            "okta-client-id: is an ESE annotation this webhook does not support",
        ),
        (
            "env-vars",
            Some("yes"),
            "env-vars: \"yes\" must be \"true\" or \"false\"",
        ),
    ];
    for (key, value, want) in cases {
        let mut review = fixture("env");
        review["request"]["object"]["metadata"]["annotations"][format!("{P}{key}")] = json!(value);
        let r = w.review(&review).await;
        assert_eq!(r["allowed"], false, "{key}: {r}");
        assert_eq!(r["status"]["code"], 400, "{key}");
        let msg = r["status"]["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{P}{want}")), "{key}: {msg}");
    }
    // A name the injection reserves: 403.
    let mut review = fixture("env");
    review["request"]["object"]["spec"]["volumes"][0]["name"] = json!("esi-cli-bin");
    let r = w.review(&review).await;
    assert_eq!(
        (r["status"]["code"].as_u64(), r["status"]["reason"].as_str()),
        (Some(403), Some("Forbidden"))
    );
    // skip: "true" wins over everything.
    let mut review = fixture("no-command");
    review["request"]["object"]["metadata"]["annotations"][format!("{P}skip")] = json!("true");
    review["request"]["object"]["metadata"]["annotations"][format!("{P}bogus")] = json!("1");
    assert_eq!(
        w.review(&review).await,
        json!({"uid": review["request"]["uid"], "allowed": true})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn other_pods_requests_and_bodies() {
    let w = Webhook::start(&[]);
    // No annotation of ours: admitted as it is.
    let review = fixture("no-annotations");
    assert_eq!(
        w.review(&review).await,
        json!({"uid": review["request"]["uid"], "allowed": true})
    );
    // Not a Pod CREATE: admitted as it is, whatever its annotations.
    for (field, value) in [("operation", "UPDATE"), ("subResource", "status")] {
        let mut review = fixture("no-command");
        review["request"][field] = json!(value);
        assert_eq!(w.review(&review).await["allowed"], true, "{field}");
    }
    let mut review = fixture("no-command");
    review["request"]["kind"]["kind"] = json!("Deployment");
    review["request"]["resource"]["resource"] = json!("deployments");
    assert_eq!(w.review(&review).await["allowed"], true);
    // Malformed: 400 with the reason; the wrong type: 415; too large: 413.
    let (s, t) = w.post("application/json", b"{\"kind\":".to_vec()).await;
    assert_eq!(
        (s, t.starts_with("malformed AdmissionReview: not JSON")),
        (400, true),
        "{t}"
    );
    let (s, t) = w
        .post("application/json", br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#.to_vec())
        .await;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("admissionReviewVersions"), "{t}");
    let (s, _) = w
        .post("text/plain", serde_json::to_vec(&fixture("env")).unwrap())
        .await;
    assert_eq!(s, 415);
    let (s, _) = w
        .post("application/json", vec![b' '; 3 * 1024 * 1024 + 1])
        .await;
    assert_eq!(s, 413);
    // Second review H1: an annotated Pod with huge lists is refused quickly, naming the
    // list and its bound (before, 240,000 env entries took ~450 MiB to decode and copy).
    let mut review = fixture("env");
    let env: Vec<Value> = (0..240_000).map(|_| json!({"name": "B"})).collect();
    review["request"]["object"]["spec"]["containers"][0]["env"] = json!(env);
    let started = std::time::Instant::now();
    let response = w.review(&review).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response["allowed"], false);
    let msg = response["status"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("request.object: the Pod is ") && msg.contains("more than the 1572864"),
        "{msg}"
    );
    let env: Vec<Value> = (0..1025).map(|_| json!({"name": "B"})).collect();
    review["request"]["object"]["spec"]["containers"][0]["env"] = json!(env);
    let response = w.review(&review).await;
    let msg = response["status"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("spec.containers[0].env: more than 1024 entries"),
        "{msg}"
    );
    for path in ["/healthz", "/readyz"] {
        let resp = w
            .client
            .get(format!("{}{path}", w.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[test]
fn bad_settings_stop_the_webhook_with_the_flag_named() {
    let out = Command::new(server_bin())
        .args([
            "webhook",
            "--tls-cert=/nonexistent/c",
            "--tls-key=/nonexistent/k",
            "--token-expiration=1m",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--token-expiration"), "{err}");
}

// ---------------------------------------------------------------------------------------
// The injected command lines, run for real.

/// The kubelet's expansion of a command's `$(VAR)` references (`$$` is a literal `$`;
/// references to undefined variables are kept).
fn kubelet_expand(s: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A container's command as the kubelet starts it, its mount paths rewritten to the
/// directories standing in for its volumes (`root/<volume>/<subPath>`).
fn as_run(container: &Value, root: &Path) -> Vec<String> {
    let env: HashMap<String, String> = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    let mut mounts: Vec<(String, PathBuf)> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let dir = root
                .join(m["name"].as_str().unwrap())
                .join(m["subPath"].as_str().unwrap_or_default());
            if !dir.exists() {
                std::fs::create_dir_all(&dir).unwrap();
            }
            (m["mountPath"].as_str().unwrap().to_string(), dir)
        })
        .collect();
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    strs(&container["command"])
        .iter()
        .map(|arg| {
            let mut arg = kubelet_expand(arg, &env);
            for (path, dir) in &mounts {
                arg = arg.replace(&format!("{path}/"), &format!("{}/", dir.display()));
            }
            arg
        })
        .collect()
}

fn manifests(issuer: &Issuer, vault: Option<&(String, String)>) -> Vec<(&'static str, String)> {
    let mut m = vec![
        (
            "federation.yaml",
            format!(
                "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: KubernetesFederation\n\
                 metadata: {{name: client}}\nspec:\n  url: {}\n  issuer: {ISS}\n  audiences: [\"{AUD}\"]\n",
                issuer.url
            ),
        ),
        (
            "authorization.yaml",
            format!(
                "apiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\n\
                 metadata: {{name: app}}\nspec:\n  federationRef: {{kind: KubernetesFederation, name: client}}\n\
                 \x20 subject:\n    oidc: {{issuer: {ISS}, subject: \"system:serviceaccount:monitoring:app\"}}\n\
                 \x20 allowedClusterSecretStores: [app-store]\n\
                 \x20 allowedGenerators: [{{name: app-pw, kind: Password, namespace: monitoring}}]\n\
                 \x20 allowedRemoteKeys: {{app-store: [\"e2e-webhook/*\"]}}\n"
            ),
        ),
        (
            "generators.yaml",
            "apiVersion: generators.external-secrets.io/v1alpha1\nkind: Password\n\
             metadata: {name: app-pw, namespace: monitoring}\nspec: {length: 24}\n"
                .to_string(),
        ),
    ];
    let store = match vault {
        Some((addr, root)) => format!(
            "apiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {{name: app-store}}\n\
             spec:\n  provider:\n    vault:\n      server: {addr}\n      path: secret\n      version: v2\n\
             \x20     auth:\n        tokenSecretRef: {{name: vault-token, namespace: esi-system, key: token}}\n\
             ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: vault-token, namespace: esi-system}}\n\
             stringData: {{token: \"{root}\"}}\n"
        ),
        None => "apiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {name: app-store}\n\
                 spec:\n  provider:\n    fake:\n      data:\n\
                 \x20       - {key: e2e-webhook/db, value: '{\"user\":\"app\",\"password\":\"s3cr3t-db-pw\"}'}\n"
            .to_string(),
    };
    m.push(("store.yaml", store));
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn the_injected_command_lines_run_and_give_the_application_its_secrets() {
    let vault = openbao();
    let db = json!({"user": "app", "password": "s3cr3t-db-pw"});
    if let Some((addr, root)) = &vault {
        vault_put(addr, root, "secret", "e2e-webhook/db", db).await;
    }
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let server = Server::start(&manifests(&issuer, vault.as_ref()), &[]);
    let w = Webhook::start(&[]);
    let mut review = fixture("env");
    let object = &mut review["request"]["object"];
    let annotations = json!({
        format!("{P}env-vars"): "true",
        format!("{P}externalsecret"): "e2e-webhook/db",
        format!("{P}federated-server-url"): server.url,
        format!("{P}federated-store"): "app-store",
        format!("{P}federated-generators"): "monitoring/Password/app-pw",
        format!("{P}inject-on-env"): "DB_PASS=e2e-webhook/db.password,APP_PW=app-pw.password,*",
        format!("{P}inject-on-file"): "/secrets/db.yaml=e2e-webhook/db",
    });
    object["metadata"]["annotations"] = annotations;
    // esi-cli-init writes the files as the application's user (mode 0400).
    object["spec"]["securityContext"] = json!({"runAsUser": 1000});
    let app = &mut object["spec"]["containers"][0];
    app["command"] = json!(["/usr/bin/env"]);
    app["args"] = json!(["LISTEN=:$(PORT)", "LITERAL=$$(PORT)"]);
    let pod = w.admit(&review).await;

    // The volumes, as directories; the kubelet's token (minted by the test's issuer for
    // the webhook's audience) and the cluster CA (here with the server's, for its TLS).
    let root = tempfile::tempdir().unwrap();
    let token_dir = root.path().join("esi-cli-token");
    std::fs::create_dir_all(&token_dir).unwrap();
    std::fs::write(
        token_dir.join("token"),
        mint("rsa-1", &sa_claims(ISS, AUD, "monitoring", "app"), None),
    )
    .unwrap();
    let server_ca = String::from_utf8(server.ca_pem()).unwrap();
    std::fs::write(
        token_dir.join("ca.crt"),
        format!("{}\n{server_ca}", issuer.ca.ca_pem),
    )
    .unwrap();

    // 1. esi-cli-install, with the image's esi-cli being the one under test.
    let install = named(&pod["spec"]["initContainers"], "esi-cli-install");
    let argv = as_run(install, root.path());
    assert_eq!(argv[0], "/usr/local/bin/esi-cli");
    let out = Command::new(cli_bin()).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied = root.path().join("esi-cli-bin/esi-cli");
    assert_eq!(
        std::fs::metadata(&copied).unwrap().permissions().mode() & 0o777,
        0o555
    );

    // 2. esi-cli-init writes the files, once for the Pod.
    let init = named(&pod["spec"]["initContainers"], "esi-cli-init");
    let argv = as_run(init, root.path());
    assert_eq!(argv[0], "/usr/local/bin/esi-cli");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(cli_bin())
            .args(&argv[1..])
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 3. The application container: its exact command, run from the copy.
    let app = &pod["spec"]["containers"][0];
    let argv = as_run(app, root.path());
    assert_eq!(PathBuf::from(&argv[0]), copied);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .env("PORT", "9090")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env: HashMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(env["DB_PASS"], "s3cr3t-db-pw");
    assert_eq!(env["USER"], "app", "externalsecret: every key");
    assert_eq!(env["APP_PW"].len(), 24, "the generator's password");
    assert_eq!(env["LISTEN"], ":9090", "$(PORT) expanded by the kubelet");
    assert_eq!(env["LITERAL"], "$(PORT)", "$$ kept literal");
    assert_eq!(env["PORT"], "9090", "the container's own environment kept");
    let file = std::fs::read_to_string(root.path().join("esi-cli-files/secrets/db.yaml")).unwrap();
    assert!(file.contains("s3cr3t-db-pw"), "{file}");
    drop(server);
}

/// Issue 18: `federated-auth: spiffe` — the Pod's spiffe-helper volume holds a JWT-SVID;
/// the injected command lines (esi-cli-init writing a file, then the application's esi-cli)
/// run for real against a server with a `SpiffeFederation`, with no ServiceAccount token
/// anywhere in the injection.
#[tokio::test(flavor = "multi_thread")]
async fn the_injected_spiffe_command_lines_run_with_the_pods_jwt_svid() {
    const SPIFFE_AUD: &str = "esi-federation";
    const ID: &str = "spiffe://example.org/ns/monitoring/sa/prometheus";
    let mut key = jwk("ec-1");
    key["use"] = json!("jwt-svid");
    let bundle = json!({"spiffe_sequence": 1, "keys": [key]});
    let manifests = format!(
        "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: SpiffeFederation\n\
         metadata: {{name: spire}}\nspec:\n  trustDomain: example.org\n  audiences: [{SPIFFE_AUD}]\n  bundle: '{bundle}'\n\
         ---\napiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\n\
         metadata: {{name: prometheus}}\nspec:\n  federationRef: {{kind: SpiffeFederation, name: spire}}\n\
         \x20 subject: {{spiffe: {{spiffeID: \"{ID}\"}}}}\n  allowedClusterSecretStores: [app-store]\n\
         ---\napiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {{name: app-store}}\n\
         spec:\n  provider:\n    fake:\n      data:\n\
         \x20       - {{key: e2e-webhook/db, value: '{{\"user\":\"app\",\"password\":\"spiffe-db-pw\"}}'}}\n"
    );
    let server = Server::start(&[("spiffe.yaml", manifests)], &[]);
    let w = Webhook::start(&[]);
    let mut review = fixture("env");
    let object = &mut review["request"]["object"];
    object["metadata"]["annotations"] = json!({
        format!("{P}env-vars"): "true",
        format!("{P}externalsecret"): "e2e-webhook/db",
        format!("{P}federated-server-url"): server.url,
        format!("{P}federated-store"): "app-store",
        format!("{P}federated-auth"): "spiffe",
        format!("{P}federated-token"): "/run/spiffe/jwt_svid.token",
        format!("{P}inject-on-env"): "DB_PASS=e2e-webhook/db.password",
        format!("{P}inject-on-file"): "/secrets/db.yaml=e2e-webhook/db",
    });
    object["spec"]["securityContext"] = json!({"runAsUser": 1000});
    object["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "spiffe", "emptyDir": {"medium": "Memory"}}));
    let app = &mut object["spec"]["containers"][0];
    app["command"] = json!(["/usr/bin/env"]);
    app["args"] = json!([]);
    app["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "spiffe", "mountPath": "/run/spiffe", "readOnly": true}));
    let pod = w.admit(&review).await;

    // No ServiceAccount token is projected for esi-cli: its volume holds the CA only.
    let token_volume = named(&pod["spec"]["volumes"], "esi-cli-token");
    let sources = token_volume["projected"]["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "{sources:?}");
    assert!(sources[0].get("serviceAccountToken").is_none());
    let init = named(&pod["spec"]["initContainers"], "esi-cli-init");
    assert!(
        init["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "spiffe" && m["readOnly"] == true),
        "{init}"
    );

    // The volumes as directories: spiffe-helper's JWT-SVID, the CA (here the server's).
    let root = tempfile::tempdir().unwrap();
    let spiffe = root.path().join("spiffe");
    std::fs::create_dir_all(&spiffe).unwrap();
    let now = now();
    let svid = mint(
        "ec-1",
        &json!({"sub": ID, "aud": [SPIFFE_AUD], "iat": now, "exp": now + 300}),
        None,
    );
    std::fs::write(spiffe.join("jwt_svid.token"), &svid).unwrap();
    let token_dir = root.path().join("esi-cli-token");
    std::fs::create_dir_all(&token_dir).unwrap();
    std::fs::write(token_dir.join("ca.crt"), server.ca_pem()).unwrap();

    let install = named(&pod["spec"]["initContainers"], "esi-cli-install");
    let argv = as_run(install, root.path());
    let out = Command::new(cli_bin()).args(&argv[1..]).output().unwrap();
    assert!(out.status.success());
    let argv = as_run(init, root.path());
    assert!(
        argv.contains(&"--federated-auth=spiffe".to_string()),
        "{argv:?}"
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(cli_bin())
            .args(&argv[1..])
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let app = &pod["spec"]["containers"][0];
    let argv = as_run(app, root.path());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let env: HashMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(env["DB_PASS"], "spiffe-db-pw");
    let file = std::fs::read_to_string(root.path().join("esi-cli-files/secrets/db.yaml")).unwrap();
    assert!(file.contains("spiffe-db-pw"), "{file}");
    assert!(!stderr.contains(&svid));
    drop(server);
}
