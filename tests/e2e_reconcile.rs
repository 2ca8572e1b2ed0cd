//! End to end: `esi-server reconcile --manifests DIR --output OUT --once`, the real binary
//! over manifest directories: fake and vault (OpenBao from `scripts/test.sh`) stores,
//! generators (Password; VaultDynamicSecret tokens, revoked on cleanup), a failing
//! ExternalSecret beside good ones, reruns that rewrite nothing, and ClusterSecretStore
//! conditions.

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use common::reconcile_files::{read_yaml, reconcile_once, secret_data};
use common::*;
use serde_json::{Value, json};
use sha3::Digest;

/// Runs one pass; returns the exit code and stdout.
fn reconcile(manifests: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let pass = reconcile_once(manifests, out, extra);
    (pass.code, pass.stdout)
}

fn sha3_224(text: &str) -> String {
    sha3::Sha3_224::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A YAML scalar as the writer spells a hash: quoted when it starts with a digit.
fn hash_scalar(h: String) -> String {
    if h.starts_with(|c: char| c.is_ascii_digit()) {
        format!("\"{h}\"")
    } else {
        h
    }
}

fn ready(status: &Path) -> (String, String, String) {
    let v = read_yaml(status);
    let c = &v["status"]["conditions"][0];
    assert_eq!(c["type"], "Ready");
    (
        c["status"].as_str().unwrap().to_string(),
        c["reason"].as_str().unwrap().to_string(),
        c["message"].as_str().unwrap().to_string(),
    )
}

/// (path, inode, mtime ns) of every file under `dir`.
fn stamps(dir: &Path) -> Vec<(String, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.display().to_string(),
                    m.ino(),
                    m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                ));
            }
        }
    }
    out.sort();
    out
}

const STORE: &str = r#"apiVersion: external-secrets.io/v1
kind: SecretStore
metadata: {name: fake, namespace: team}
spec:
  provider:
    fake:
      data:
        - {key: db, value: '{"user":"admin","pass":"s3cr3t"}'}
        - {key: app/api, value: "k1"}
        - {key: app/web, value: "k2"}
        - {key: cert, value: "AP8AAQ=="}
"#;
const ES_APP: &str = r#"apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: app, namespace: team, uid: uid-1111, labels: {team: a}}
spec:
  secretStoreRef: {name: fake}
  target: {name: app-secret}
  data:
    - {secretKey: password, remoteRef: {key: db, property: pass}}
    - {secretKey: cert.bin, remoteRef: {key: cert, decodingStrategy: Base64}}
  dataFrom:
    - extract: {key: db}
      rewrite: [{regexp: {source: "^", target: "db_"}}]
    - find: {path: app/}
    - find: {name: {regexp: "^app/"}}
      rewrite:
        - {regexp: {source: "^app/(.*)$", target: "svc-$1"}}
        - {regexp: {source: "-", target: "."}}
"#;
const ES_BROKEN: &str = r#"apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: broken, namespace: team}
spec:
  secretStoreRef: {name: fake}
  data:
    - {secretKey: ok, remoteRef: {key: app/api}}
    - {secretKey: missing, remoteRef: {key: no/such/key}}
"#;
const ES_KEPT: &str = r#"apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: kept, namespace: team}
spec:
  secretStoreRef: {name: fake}
  target: {creationPolicy: Orphan}
  data: [{secretKey: api, remoteRef: {key: app/api}}]
"#;

fn docs(parts: &[&str]) -> String {
    parts.join("---\n")
}

/// (a) data[] + dataFrom extract/find + rewrite through a fake store: the Secret's exact
/// bytes; (d) a failing ExternalSecret beside it: Ready=False with the key named, no Secret,
/// the others written, exit non-zero; (e) a rerun rewrites nothing; and the cleanup when an
/// ExternalSecret goes (an owned Secret goes with it, an orphan stays).
#[test]
fn fake_store_secret_bytes_failure_rerun_and_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("manifests");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("team.yaml"),
        docs(&[STORE, ES_APP, ES_BROKEN, ES_KEPT]),
    )
    .unwrap();

    let (code, stdout) = reconcile(&m, &out, &[]);
    assert_ne!(code, 0, "a failed ExternalSecret fails the run");
    assert!(
        stdout.contains("failed: ExternalSecret team/broken"),
        "{stdout}"
    );

    // ESO's data hash: SHA3-224 of Go's %+v of the data map.
    let data_hash = sha3_224(
        "map[app_api:[107 49] app_web:[107 50] cert.bin:[0 255 0 1] db_pass:[115 51 99 114 51 116] \
         db_user:[97 100 109 105 110] password:[115 51 99 114 51 116] svc.api:[107 49] svc.web:[107 50]]",
    );
    let expected = format!(
        "apiVersion: v1
kind: Secret
metadata:
  name: app-secret
  namespace: team
  labels:
    reconcile.external-secrets.io/created-by: {owner}
    reconcile.external-secrets.io/managed: \"true\"
    team: a
  annotations:
    reconcile.external-secrets.io/data-hash: {hash}
  ownerReferences:
    - apiVersion: external-secrets.io/v1
      kind: ExternalSecret
      name: app
      uid: uid-1111
      controller: true
      blockOwnerDeletion: true
type: Opaque
data:
  app_api: azE=
  app_web: azI=
  cert.bin: AP8AAQ==
  db_pass: czNjcjN0
  db_user: YWRtaW4=
  password: czNjcjN0
  svc.api: azE=
  svc.web: azI=
",
        owner = hash_scalar(sha3_224("team/app")),
        hash = hash_scalar(data_hash),
    );
    let team = out.join("team");
    assert_eq!(
        std::fs::read_to_string(team.join("app-secret.yaml")).unwrap(),
        expected
    );
    let (status, reason, message) = ready(&team.join("app.externalsecret-status.yaml"));
    assert_eq!(
        (status.as_str(), reason.as_str(), message.as_str()),
        ("True", "SecretSynced", "secret synced")
    );
    let st = read_yaml(&team.join("app.externalsecret-status.yaml"));
    assert_eq!(st["status"]["binding"]["name"], "app-secret");
    assert!(st["status"]["refreshTime"].as_str().unwrap().ends_with('Z'));
    assert!(
        !st["status"]["syncedResourceVersion"]
            .as_str()
            .unwrap()
            .is_empty()
    );

    // The failing one: no Secret at all (not even its good key), a clear message.
    assert!(!team.join("broken.yaml").exists());
    let (status, reason, message) = ready(&team.join("broken.externalsecret-status.yaml"));
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretSyncedError")
    );
    assert_eq!(
        message,
        "could not get secret data from provider: error processing spec.data[1] (key: no/such/key) from store \"fake\": secret not found"
    );
    // Orphan: written without owner reference or owner label.
    let kept = read_yaml(&team.join("kept.yaml"));
    assert!(kept["metadata"].get("ownerReferences").is_none());
    assert!(
        kept["metadata"]["labels"]
            .get("reconcile.external-secrets.io/created-by")
            .is_none()
    );

    // The state file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join(".esi-reconcile-state.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        !std::fs::read_to_string(out.join(".esi-reconcile-state.json"))
            .unwrap()
            .contains("s3cr3t")
    );

    // (e) A rerun with nothing changed rewrites nothing.
    let before = stamps(&out);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (code, stdout) = reconcile(&m, &out, &[]);
    assert_ne!(code, 0);
    assert!(stdout.contains("0 files changed"), "{stdout}");
    assert_eq!(stamps(&out), before);

    // The failing ExternalSecret fixed, the owning one removed: the owned Secret and both
    // statuses follow, the orphan stays.
    let fixed = ES_BROKEN.replace("no/such/key", "app/web");
    std::fs::write(m.join("team.yaml"), docs(&[STORE, &fixed, ES_KEPT])).unwrap();
    let (code, stdout) = reconcile(&m, &out, &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(!team.join("app-secret.yaml").exists());
    assert!(!team.join("app.externalsecret-status.yaml").exists());
    assert_eq!(secret_data(&team.join("broken.yaml"))["missing"], b"k2");
    assert_eq!(
        ready(&team.join("broken.externalsecret-status.yaml")).0,
        "True"
    );
    std::fs::write(m.join("team.yaml"), docs(&[STORE, ES_KEPT])).unwrap();
    let (code, _) = reconcile(&m, &out, &[]);
    assert_eq!(code, 0);
    assert!(
        !team.join("broken.yaml").exists(),
        "owned: removed with its ExternalSecret"
    );
    assert!(team.join("kept.yaml").exists(), "orphan: kept");
}

/// (f) ClusterSecretStore conditions: a namespace neither listed nor labelled is refused;
/// listed and labelled ones are served. And a store of another controller class is left
/// alone.
#[test]
fn cluster_store_conditions_refuse_a_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("manifests");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&m).unwrap();
    let es = |ns: &str, store: &str, kind: &str| {
        format!(
            "---\napiVersion: external-secrets.io/v1\nkind: ExternalSecret\nmetadata: {{name: es, namespace: {ns}}}\nspec:\n  secretStoreRef: {{name: {store}, kind: {kind}}}\n  data: [{{secretKey: k, remoteRef: {{key: shared}}}}]\n"
        )
    };
    let text = format!(
        r#"apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: shared}}
spec:
  conditions:
    - namespaces: [team]
    - namespaceSelector: {{matchLabels: {{tier: db}}}}
  provider: {{fake: {{data: [{{key: shared, value: v}}]}}}}
---
apiVersion: external-secrets.io/v1
kind: SecretStore
metadata: {{name: theirs, namespace: team}}
spec:
  controller: other
  provider: {{fake: {{data: [{{key: shared, value: v}}]}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: labelled, labels: {{tier: db}}}}
{}{}{}{}"#,
        es("team", "shared", "ClusterSecretStore"),
        es("labelled", "shared", "ClusterSecretStore"),
        es("other", "shared", "ClusterSecretStore"),
        es("skipped", "theirs", "SecretStore")
            .replace("namespace: skipped", "namespace: team")
            .replace("name: es,", "name: theirs-es,"),
    );
    std::fs::write(m.join("all.yaml"), text).unwrap();
    let (code, stdout) = reconcile(&m, &out, &[]);
    assert_ne!(code, 0);
    assert!(stdout.contains("1 skipped"), "{stdout}");
    assert_eq!(secret_data(&out.join("team/es.yaml"))["k"], b"v");
    assert_eq!(secret_data(&out.join("labelled/es.yaml"))["k"], b"v");
    assert!(!out.join("other/es.yaml").exists());
    let (status, _, message) = ready(&out.join("other/es.externalsecret-status.yaml"));
    assert_eq!(status, "False");
    assert!(
        message.ends_with("using cluster store \"shared\" is not allowed from namespace \"other\": denied by spec.conditions"),
        "{message}"
    );
    // The other controller's ExternalSecret: untouched, no status.
    assert!(!out.join("team/theirs-es.yaml").exists());
    assert!(
        !out.join("team/theirs-es.externalsecret-status.yaml")
            .exists()
    );
    // With that controller class, it is ours (and the cluster store, classless, still is).
    let (_, stdout) = reconcile(&m, &out, &["--controller-class", "other"]);
    assert!(stdout.contains("0 skipped"), "{stdout}");
    assert_eq!(secret_data(&out.join("team/theirs-es.yaml"))["k"], b"v");
}

/// (c) A generatorRef to a Password generator: a fresh password in the Secret; a rerun
/// within the refresh interval keeps it (nothing rewritten); a new `force-sync` annotation
/// generates a new one.
#[test]
fn password_generator() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("manifests");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&m).unwrap();
    let manifest = |force: &str| {
        format!(
            r#"apiVersion: generators.external-secrets.io/v1alpha1
kind: Password
metadata: {{name: pw, namespace: team}}
spec: {{length: 32, symbols: 0}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {{name: db, namespace: team, annotations: {{force-sync: "{force}"}}}}
spec:
  refreshInterval: 1h
  dataFrom:
    - sourceRef: {{generatorRef: {{apiVersion: generators.external-secrets.io/v1alpha1, kind: Password, name: pw}}}}
      rewrite: [{{regexp: {{source: "^password$", target: "db-password"}}}}]
"#
        )
    };
    std::fs::write(m.join("pw.yaml"), manifest("1")).unwrap();
    let (code, stdout) = reconcile(&m, &out, &[]);
    assert_eq!(code, 0, "{stdout}");
    let first = secret_data(&out.join("team/db.yaml"));
    assert_eq!(first.keys().collect::<Vec<_>>(), ["db-password"]);
    assert_eq!(first["db-password"].len(), 32);
    assert!(first["db-password"].iter().all(u8::is_ascii_alphanumeric));
    let before = stamps(&out);
    let (code, stdout) = reconcile(&m, &out, &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("0 synced, 1 unchanged"), "{stdout}");
    assert_eq!(stamps(&out), before);
    std::fs::write(m.join("pw.yaml"), manifest("2")).unwrap();
    let (code, stdout) = reconcile(&m, &out, &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("1 synced"), "{stdout}");
    assert_ne!(
        secret_data(&out.join("team/db.yaml"))["db-password"],
        first["db-password"]
    );
}

fn vault_store(addr: &str, token: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: vault-token, namespace: team}}
stringData: {{token: "{token}"}}
---
apiVersion: external-secrets.io/v1
kind: SecretStore
metadata: {{name: vault, namespace: team}}
spec:
  provider:
    vault:
      server: {addr}
      path: secret
      version: v2
      auth: {{tokenSecretRef: {{name: vault-token, key: token}}}}
"#
    )
}

/// (b) A vault store against OpenBao: properties, ESO's `secret/data/…` spelling, a binary
/// value (stored base64, `decodingStrategy: Base64`), `find` with a rewrite.
#[tokio::test(flavor = "multi_thread")]
async fn vault_store_against_openbao() {
    let Some((addr, token)) = openbao() else {
        return;
    };
    install_crypto();
    let prefix = format!("esi-reconcile-{}", uuid::Uuid::new_v4().simple());
    let binary: Vec<u8> = vec![0, 159, 146, 150, 255, b'\n', 0];
    let blob = base64::engine::general_purpose::STANDARD.encode(&binary);
    vault_put(
        &addr,
        &token,
        "secret",
        &format!("{prefix}/db"),
        json!({"user": "bob", "blob": blob}),
    )
    .await;
    vault_put(
        &addr,
        &token,
        "secret",
        &format!("{prefix}/other"),
        json!({"x": "1"}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("manifests");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&m).unwrap();
    let es = format!(
        r#"---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {{name: app, namespace: team}}
spec:
  secretStoreRef: {{name: vault}}
  data:
    - {{secretKey: user, remoteRef: {{key: "{prefix}/db", property: user}}}}
    - {{secretKey: blob, remoteRef: {{key: "secret/data/{prefix}/db", property: blob, decodingStrategy: Base64}}}}
  dataFrom:
    - find: {{path: "{prefix}", name: {{regexp: "db$"}}}}
      rewrite: [{{regexp: {{source: ".*/", target: "found-"}}}}]
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {{name: denied, namespace: team}}
spec:
  secretStoreRef: {{name: vault}}
  data: [{{secretKey: x, remoteRef: {{key: "{prefix}/absent"}}}}]
"#
    );
    std::fs::write(
        m.join("all.yaml"),
        format!("{}{es}", vault_store(&addr, &token)),
    )
    .unwrap();
    let (code, stdout) = tokio::task::spawn_blocking({
        let (m, out) = (m.clone(), out.clone());
        move || reconcile(&m, &out, &[])
    })
    .await
    .unwrap();
    assert_ne!(code, 0, "{stdout}");
    let data = secret_data(&out.join("team/app.yaml"));
    assert_eq!(data["user"], b"bob");
    assert_eq!(data["blob"], binary, "binary value byte for byte");
    let found: Value = serde_json::from_slice(&data["found-db"]).unwrap();
    assert_eq!(found["user"], "bob");
    assert_eq!(data.len(), 3);
    assert!(!out.join("team/denied.yaml").exists());
    let (status, _, message) = ready(&out.join("team/denied.externalsecret-status.yaml"));
    assert_eq!(status, "False");
    assert!(
        message.contains(&format!("(key: {prefix}/absent)"))
            && message.contains("secret not found"),
        "{message}"
    );
    assert!(!message.contains(&token));
}

/// Generated credentials that a backend holds (a VaultDynamicSecret issuing OpenBao
/// tokens): the state keeps what revokes them; a regeneration revokes the replaced token,
/// and the ExternalSecret's removal revokes the last one.
#[tokio::test(flavor = "multi_thread")]
async fn generated_tokens_are_revoked_when_replaced_or_gone() {
    let Some((addr, root)) = openbao() else {
        return;
    };
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("manifests");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&m).unwrap();
    let generator = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: vault-token, namespace: team}}
stringData: {{token: "{root}"}}
---
apiVersion: generators.external-secrets.io/v1alpha1
kind: VaultDynamicSecret
metadata: {{name: tokens, namespace: team}}
spec:
  method: POST
  path: auth/token/create
  parameters: {{ttl: "10m", policies: [default], no_parent: true}}
  resultType: Auth
  provider:
    server: {addr}
    auth:
      tokenSecretRef: {{name: vault-token, key: token}}
"#
    );
    let es = |force: &str| {
        format!(
            "---\napiVersion: external-secrets.io/v1\nkind: ExternalSecret\nmetadata: {{name: tok, namespace: team, annotations: {{force-sync: \"{force}\"}}}}\nspec:\n  dataFrom:\n    - sourceRef: {{generatorRef: {{kind: VaultDynamicSecret, name: tokens}}}}\n"
        )
    };
    let run = |m: std::path::PathBuf, out: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || reconcile(&m, &out, &[]))
            .await
            .unwrap()
    };
    let accessor = |out: &Path| {
        String::from_utf8(secret_data(&out.join("team/tok.yaml"))["accessor"].clone()).unwrap()
    };
    let alive = |accessor: String| {
        let (addr, root) = (addr.clone(), root.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{addr}/v1/auth/token/lookup-accessor"))
                .header("X-Vault-Token", &root)
                .json(&json!({ "accessor": accessor }))
                .send()
                .await
                .unwrap()
                .status()
                .is_success()
        }
    };
    std::fs::write(m.join("all.yaml"), format!("{generator}{}", es("1"))).unwrap();
    let (code, stdout) = run(m.clone(), out.clone()).await;
    assert_eq!(code, 0, "{stdout}");
    let first = accessor(&out);
    assert!(alive(first.clone()).await);
    let state = std::fs::read_to_string(out.join(".esi-reconcile-state.json")).unwrap();
    assert!(state.contains("credentials"), "{state}");

    // Regenerated (force-sync): the new token lives, the replaced one is revoked.
    std::fs::write(m.join("all.yaml"), format!("{generator}{}", es("2"))).unwrap();
    let (code, stdout) = run(m.clone(), out.clone()).await;
    assert_eq!(code, 0, "{stdout}");
    let second = accessor(&out);
    assert_ne!(first, second);
    assert!(alive(second.clone()).await);
    assert!(!alive(first).await, "replaced token revoked");

    // The ExternalSecret gone: its Secret goes, its token is revoked.
    std::fs::write(m.join("all.yaml"), &generator).unwrap();
    let (code, stdout) = run(m.clone(), out.clone()).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(!out.join("team/tok.yaml").exists());
    assert!(
        !alive(second).await,
        "token of a removed ExternalSecret revoked"
    );
    let state = std::fs::read_to_string(out.join(".esi-reconcile-state.json")).unwrap();
    assert!(!state.contains("pendingRevocations"), "{state}");
}

/// Names from manifests become paths: an ExternalSecret whose namespace (refused at load)
/// or target (refused when synced) is not a Kubernetes name writes nothing anywhere (and
/// fails the run); OUT inside the manifests directory is refused.
#[test]
fn hostile_names_write_nothing_outside_output() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("manifests");
    let out = dir.path().join("deep/out");
    std::fs::create_dir_all(&m).unwrap();
    let text = format!(
        "{STORE}---\n{}---\n{}",
        ES_KEPT.replace("namespace: team", "namespace: ../../escaped"),
        ES_KEPT.replace("name: kept", "name: renamed").replace(
            "creationPolicy: Orphan",
            "creationPolicy: Orphan, name: ../../../escaped-secret"
        )
    );
    std::fs::write(m.join("all.yaml"), text).unwrap();
    let (code, stdout) = reconcile(&m, &out, &[]);
    assert_ne!(code, 0);
    // The namespace is refused at load, as Kubernetes would refuse the object; the target
    // name when the ExternalSecret is synced.
    assert!(
        stdout.contains("\"../../escaped\" is not a DNS-1123 label"),
        "{stdout}"
    );
    assert!(stdout.contains("1 failed, "), "{stdout}");
    let all: Vec<String> = stamps(dir.path()).into_iter().map(|s| s.0).collect();
    assert!(all.iter().all(|p| !p.contains("escaped")), "{all:?}");
    let status = read_yaml(&out.join("team/renamed.externalsecret-status.yaml"));
    assert!(
        status["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("is not a Kubernetes object name"),
        "{status}"
    );
    // OUT inside DIR: refused before anything is written.
    let inside = m.join("out");
    let (code, _) = reconcile(&m, &inside, &[]);
    assert_ne!(code, 0);
    assert!(!inside.exists());
}

/// `--interval`: passes repeat until SIGTERM; a manifest change shows in the next pass.
#[test]
fn interval_mode_follows_changes_until_terminated() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("manifests");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("all.yaml"), docs(&[STORE, ES_KEPT])).unwrap();
    let mut child = Command::new(server_bin())
        .args(["reconcile", "--interval", "200ms", "--manifests"])
        .arg(&m)
        .arg("--output")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wait_for = |what: &dyn Fn() -> bool| {
        for _ in 0..100 {
            if what() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    };
    let secret = out.join("team/kept.yaml");
    assert!(wait_for(&|| secret.exists()));
    assert_eq!(secret_data(&secret)["api"], b"k1");
    std::fs::write(
        m.join("all.yaml"),
        docs(&[STORE, &ES_KEPT.replace("key: app/api", "key: app/web")]),
    )
    .unwrap();
    assert!(wait_for(&|| secret_data(&secret)
        .get("api")
        .map(Vec::as_slice)
        == Some(b"k2")));
    // SIGTERM ends it cleanly.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The issue's case: an ExternalSecret on a client instance whose store is the
/// `externalsecrets` provider (a real `esi-server` over HTTPS) gets the Secret with the right
/// bytes, binary included; a key the server denies yields `Ready=False` and no Secret; a
/// `Federation` generator's credential is revoked at the server (its DELETE, which revokes
/// the backend lease) when its ExternalSecret goes.
mod federation_client {
    use super::*;

    const AUD: &str = "https://esi-federation.example.com";
    const ISS: &str = "https://kubernetes.default.svc.cluster.local";
    const AWKWARD: &str = "\"quoted\" \\back\\slash \u{0}\u{1}\u{1f}\r\n\u{7f}é€😀 \t ";

    /// A YAML double-quoted scalar: every control character escaped (YAML refuses DEL and
    /// others raw).
    fn quoted(text: &str) -> String {
        let mut out = String::from("\"");
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn server(vault_url: &str) -> Server {
        let config = json!({"user": "u", "pass": "p\"q\\"}).to_string();
        let manifests = vec![
            ("federation.yaml", static_federation(ISS, AUD)),
            (
                "authorization.yaml",
                r#"apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {name: allow-app}
spec:
  federationRef: {kind: KubernetesFederation, name: alpha}
  subject:
    oidc: {issuer: "https://kubernetes.default.svc.cluster.local", subject: "system:serviceaccount:apps:app"}
  allowedClusterSecretStores: [fake-store]
  allowedGenerators:
    - {name: creds, kind: VaultDynamicSecret, namespace: apps}
"#
                .to_string(),
            ),
            (
                "stores.yaml",
                format!(
                    r#"apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: fake-store}}
spec:
  provider:
    fake:
      data:
        - {{key: bin, value: {}}}
        - {{key: blob, value: "AP+A/w=="}}
        - {{key: app/config, value: {}}}
        - {{key: app/other, value: other-value}}
        - {{key: forbidden, value: not-for-this-app}}
---
apiVersion: v1
kind: Secret
metadata: {{name: vault-token, namespace: apps}}
stringData: {{token: t}}
---
apiVersion: generators.external-secrets.io/v1alpha1
kind: VaultDynamicSecret
metadata: {{name: creds, namespace: apps}}
spec:
  method: POST
  path: fake/creds
  provider:
    server: {vault_url}
    auth:
      tokenSecretRef: {{name: vault-token, key: token}}
"#,
                    quoted(AWKWARD),
                    quoted(&config)
                ),
            ),
        ];
        Server::start(
            &manifests,
            &[(
                "deny-forbidden.cedar",
                r#"@id("deny-forbidden")
forbid(principal, action, resource) when { resource has key && resource.key == "forbidden" };"#,
            )],
        )
    }

    fn client_manifests(server: &Server, with_creds: bool) -> String {
        let token = mint("ec-1", &sa_claims(ISS, AUD, "apps", "app"), None);
        let ca = String::from_utf8(server.ca_pem()).unwrap();
        let url = &server.url;
        let mut text = format!(
            r#"apiVersion: v1
kind: Secret
metadata: {{name: fed, namespace: apps}}
stringData: {{token: {token}, ca.crt: {ca}}}
---
apiVersion: external-secrets.io/v1
kind: SecretStore
metadata: {{name: remote, namespace: apps}}
spec:
  provider:
    externalsecrets:
      server: {{url: "{url}", caRef: {{name: fed, key: ca.crt}}}}
      auth: {{tokenSecretRef: {{name: fed, key: token}}}}
      target: {{clusterSecretStoreName: fake-store}}
---
apiVersion: generators.external-secrets.io/v1alpha1
kind: Federation
metadata: {{name: fed-creds, namespace: apps}}
spec:
  server: {{url: "{url}", caRef: {{name: fed, key: ca.crt}}}}
  generator: {{namespace: apps, kind: VaultDynamicSecret, name: creds}}
  auth: {{tokenSecretRef: {{name: fed, key: token}}}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {{name: app, namespace: apps}}
spec:
  secretStoreRef: {{name: remote}}
  data:
    - {{secretKey: awkward, remoteRef: {{key: bin}}}}
    - {{secretKey: pass, remoteRef: {{key: app/config, property: pass}}}}
    - {{secretKey: binary, remoteRef: {{key: blob, decodingStrategy: Base64}}}}
  dataFrom:
    - find: {{path: app/}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {{name: denied, namespace: apps}}
spec:
  secretStoreRef: {{name: remote}}
  data: [{{secretKey: x, remoteRef: {{key: forbidden}}}}]
"#,
            token = quoted(&token),
            ca = quoted(&ca),
        );
        if with_creds {
            text.push_str(
                "---\napiVersion: external-secrets.io/v1\nkind: ExternalSecret\nmetadata: {name: creds, namespace: apps}\nspec:\n  dataFrom:\n    - sourceRef: {generatorRef: {apiVersion: generators.external-secrets.io/v1alpha1, kind: Federation, name: fed-creds}}\n",
            );
        }
        text
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn external_secrets_store_and_federation_generator() {
        let vault = common::fake_vault::FakeVault::start_with_password(AWKWARD).await;
        let (vault_url, revoked) = (vault.url.clone(), vault.revoked_handle());
        let server = server(&vault_url);
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("manifests");
        let out = dir.path().join("out");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("client.yaml"), client_manifests(&server, true)).unwrap();
        let run = |m: std::path::PathBuf, out: std::path::PathBuf| async move {
            tokio::task::spawn_blocking(move || reconcile(&m, &out, &[]))
                .await
                .unwrap()
        };
        let (code, stdout) = run(m.clone(), out.clone()).await;
        assert_ne!(code, 0, "the denied ExternalSecret fails the run: {stdout}");

        let data = secret_data(&out.join("apps/app.yaml"));
        assert_eq!(data["awkward"], AWKWARD.as_bytes(), "byte for byte");
        assert_eq!(data["pass"], b"p\"q\\");
        assert_eq!(data["binary"], [0x00, 0xff, 0x80, 0xff]);
        assert_eq!(data["app_other"], b"other-value");
        let config: Value = serde_json::from_slice(&data["app_config"]).unwrap();
        assert_eq!(config["user"], "u");
        assert_eq!(data.len(), 5, "{:?}", data.keys());

        assert!(!out.join("apps/denied.yaml").exists());
        let (status, reason, message) = ready(&out.join("apps/denied.externalsecret-status.yaml"));
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "SecretSyncedError")
        );
        assert!(
            message.contains("(key: forbidden)") && message.contains("secret not found"),
            "{message}"
        );
        assert!(!message.contains("not-for-this-app"));

        let creds = secret_data(&out.join("apps/creds.yaml"));
        assert_eq!(creds["username"], b"user-0");
        assert_eq!(creds["password"], AWKWARD.as_bytes());
        assert!(revoked.lock().unwrap().is_empty());

        // The generated credential's ExternalSecret goes: the client DELETEs it at the
        // server, which revokes the lease.
        std::fs::write(m.join("client.yaml"), client_manifests(&server, false)).unwrap();
        let (_, stdout) = run(m.clone(), out.clone()).await;
        assert!(!out.join("apps/creds.yaml").exists(), "{stdout}");
        assert_eq!(*revoked.lock().unwrap(), ["fake/creds/0"]);
        assert!(!stdout.contains("revocation pending"), "{stdout}");
    }
}

/// An ExternalSecret that is gone, or whose target moved, removes its old Secret file only
/// when the file still holds what it wrote: another ExternalSecret that took the same
/// target name in the same pass keeps its fresh Secret (review: it was deleted, with the
/// new owner reporting Ready=True).
#[test]
fn a_gone_owner_never_removes_the_secret_another_one_just_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&manifests).unwrap();
    let es = |name: &str, key: &str| {
        format!(
            "apiVersion: external-secrets.io/v1\nkind: ExternalSecret\nmetadata: {{name: {name}, namespace: team}}\nspec:\n  secretStoreRef: {{name: fake}}\n  target: {{name: shared}}\n  data: [{{secretKey: k, remoteRef: {{key: {key}}}}}]\n"
        )
    };
    let write = |parts: &[&str]| std::fs::write(manifests.join("all.yaml"), docs(parts)).unwrap();
    let shared = out.join("team/shared.yaml");
    // Gone: `a` is removed while `b` takes its target.
    write(&[STORE, &es("a", "app/api")]);
    assert_eq!(reconcile(&manifests, &out, &[]).0, 0);
    assert_eq!(secret_data(&shared)["k"], b"k1");
    write(&[STORE, &es("b", "app/web")]);
    assert_eq!(reconcile(&manifests, &out, &[]).0, 0);
    assert!(shared.exists(), "b's Secret was removed by a's cleanup");
    assert_eq!(secret_data(&shared)["k"], b"k2");
    // Moved: `b` retargets while `a` (synced first) takes `shared`.
    let es_b_moved = es("b", "app/web").replace("name: shared", "name: elsewhere");
    write(&[STORE, &es_b_moved, &es("a", "app/api")]);
    assert_eq!(reconcile(&manifests, &out, &[]).0, 0);
    assert_eq!(secret_data(&out.join("team/elsewhere.yaml"))["k"], b"k2");
    assert!(shared.exists(), "a's Secret was removed by b's move");
    assert_eq!(secret_data(&shared)["k"], b"k1");
}

/// creationPolicy Merge whose target Secret manifest is removed from DIR: ESO waits for
/// the Secret (SecretMissing) and creates nothing (review finding: the earlier output
/// counted as the Secret and was rewritten with the ExternalSecret's data alone, the base's
/// keys and type lost). The merged output goes with its base.
#[test]
fn merge_never_recreates_a_target_whose_manifest_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&manifests).unwrap();
    let es = "apiVersion: external-secrets.io/v1\nkind: ExternalSecret\nmetadata: {name: m, namespace: team}\nspec:\n  secretStoreRef: {name: fake}\n  target: {name: base, creationPolicy: Merge}\n  data: [{secretKey: k, remoteRef: {key: app/api}}]\n";
    let base = "apiVersion: v1\nkind: Secret\nmetadata: {name: base, namespace: team}\ntype: kubernetes.io/tls\ndata: {tls.crt: Yw==, tls.key: aw==}\n";
    std::fs::write(manifests.join("all.yaml"), docs(&[STORE, es, base])).unwrap();
    assert_eq!(reconcile(&manifests, &out, &[]).0, 0);
    let file = out.join("team/base.yaml");
    assert_eq!(secret_data(&file).len(), 3);
    std::fs::write(manifests.join("all.yaml"), docs(&[STORE, es])).unwrap();
    // Force a sync (the ExternalSecret changed: a new resourceVersion).
    std::fs::write(
        manifests.join("all.yaml"),
        docs(&[STORE, &es.replace("name: m,", "name: m, labels: {x: z},")]),
    )
    .unwrap();
    assert_eq!(reconcile(&manifests, &out, &[]).0, 0);
    let (status, reason, _) = ready(&out.join("team/m.externalsecret-status.yaml"));
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "SecretMissing")
    );
    assert!(
        !file.exists(),
        "the merged output of a gone Secret is removed"
    );
}
