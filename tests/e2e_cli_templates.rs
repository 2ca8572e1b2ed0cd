//! End to end: `esi-cli --inject-on-file=/path=@template` (issue 11) with the real
//! `esi-cli` binary against the real `esi-server` over HTTPS and its `fake` store (no
//! external backend): the rendered file byte for byte (binary value included), a template
//! that cannot work failing at start before anything is fetched, a render error naming the
//! key and no value, and daemon mode re-rendering when a secret changes.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const AUD: &str = "https://esi-federation.cluster-main.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";

fn fake_store(db_host: &str) -> String {
    format!(
        r#"apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: fake-store}}
spec:
  provider:
    fake:
      data:
        - {{key: app/config, value: '{{"db-host":"{db_host}","port":5432,"user":"app"}}'}}
        - {{key: app/blob, value: '{{"bin":"/wCAYfSPvoA="}}'}}
        - {{key: plain-token, value: fake-plain-token-value}}
"#
    )
}

fn manifests(issuer: &Issuer) -> Vec<(&'static str, String)> {
    vec![
        (
            "federation.yaml",
            format!(
                r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: KubernetesFederation
metadata: {{name: client-cluster-alpha}}
spec:
  url: {}
  issuer: {ISS}
  audiences: ["{AUD}"]
"#,
                issuer.url
            ),
        ),
        (
            "authorization.yaml",
            format!(
                r#"apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {{name: allow-app}}
spec:
  federationRef: {{kind: KubernetesFederation, name: client-cluster-alpha}}
  subject:
    oidc: {{issuer: {ISS}, subject: "system:serviceaccount:monitoring:app"}}
  allowedClusterSecretStores: [fake-store]
  allowedGenerators:
    - {{name: pw, kind: Password, namespace: monitoring}}
  allowedRemoteKeys:
    fake-store: ["app/*", plain-token]
"#
            ),
        ),
        ("fake.yaml", fake_store("db.internal")),
        (
            "generators.yaml",
            r#"apiVersion: generators.external-secrets.io/v1alpha1
kind: Password
metadata: {name: pw, namespace: monitoring}
spec: {length: 24}
"#
            .to_string(),
        ),
    ]
}

struct Pod {
    dir: tempfile::TempDir,
    token: PathBuf,
    ca: PathBuf,
}

fn pod(issuer: &Issuer, server: &Server) -> Pod {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(
        &token,
        mint("rsa-1", &sa_claims(ISS, AUD, "monitoring", "app"), None),
    )
    .unwrap();
    let server_ca =
        std::fs::read_to_string(server.manifests.parent().unwrap().join("data/tls/ca.crt"))
            .unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, format!("{}\n{}", issuer.ca.ca_pem, server_ca)).unwrap();
    Pod { dir, token, ca }
}

fn base_args(server: &Server, pod: &Pod) -> Vec<String> {
    vec![
        format!("--federated-server-url={}", server.url),
        "--federated-store=fake-store".into(),
        format!("--federated-token={}", pod.token.display()),
        format!("--federated-ca-crt={}", pod.ca.display()),
    ]
}

async fn run_cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(cli_bin())
            .args(&args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run esi-cli")
    })
    .await
    .unwrap()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const CONFIG_TEMPLATE: &str = r#"# rendered by esi-cli
{{- $db := index . "app/config" }}
database:
  host: {{ $db | dig "db-host" "none" }}
  url: {{ printf "postgres://%s@%s:%s/app" $db.user (index $db "db-host") $db.port | quote }}
token: {{ index . "plain-token" | upper }}
password-length: {{ len .pw.password }}
password-b64-roundtrip: {{ eq (.pw.password | b64enc | b64dec) .pw.password }}
blob: {{ index . "app/blob" "bin" | b64dec }}
"#;

fn expected(db_host: &str) -> Vec<u8> {
    let mut want = format!(
        "# rendered by esi-cli\ndatabase:\n  host: {db_host}\n  url: \"postgres://app@{db_host}:5432/app\"\ntoken: FAKE-PLAIN-TOKEN-VALUE\npassword-length: 24\npassword-b64-roundtrip: true\nblob: "
    )
    .into_bytes();
    want.extend_from_slice(&[0xff, 0x00, 0x80, 0x61, 0xf4, 0x8f, 0xbe, 0x80]);
    want.push(b'\n');
    want
}

fn answered_store_calls(server: &Server) -> usize {
    server
        .logs()
        .iter()
        .filter(|l| l.contains("\"answered\"") && l.contains("/secretstore/"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn init_renders_a_file_template_byte_for_byte() {
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let server = Server::start(&manifests(&issuer), &[]);
    let pod = pod(&issuer, &server);
    let tmpl = pod.dir.path().join("config.tmpl");
    std::fs::write(&tmpl, CONFIG_TEMPLATE).unwrap();
    let target = pod.dir.path().join("etc/app/config.yaml");
    let mut args = base_args(&server, &pod);
    args.extend([
        "--mode=init".to_string(),
        "--federated-generators=monitoring/Password/pw".into(),
        format!("--inject-on-file={}=@{}", target.display(), tmpl.display()),
    ]);
    let out = run_cli(args).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read(&target).unwrap(), expected("db.internal"));
    assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o777, 0o400);
    assert!(
        !stderr.contains("db.internal") && !stderr.contains("FAKE"),
        "{stderr}"
    );
    // Exactly the secrets the template names, each once.
    server.sync_logs().await;
    wait_for("the server's request logs", || {
        answered_store_calls(&server) >= 3
    })
    .await;
    assert_eq!(answered_store_calls(&server), 3);
}

async fn expect_start_failure(server: &Server, pod: &Pod, template: &str, needles: &[&str]) {
    let tmpl = pod.dir.path().join("broken.tmpl");
    std::fs::write(&tmpl, template).unwrap();
    let target = pod.dir.path().join("etc/app/broken.yaml");
    let mut args = base_args(server, pod);
    args.extend([
        "--mode=init".to_string(),
        format!("--inject-on-file={}=@{}", target.display(), tmpl.display()),
        "--binary-path=/bin/sh".into(),
        "--args=-c,echo EXECUTED".into(),
    ]);
    let out = run_cli(args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        !stdout.contains("EXECUTED"),
        "the application ran: {stdout}"
    );
    assert!(stderr.contains(&tmpl.display().to_string()), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "missing {n:?} in:\n{stderr}");
    }
    assert!(!Path::new(&target).exists(), "a file was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_that_cannot_work_fails_at_start_before_any_fetch() {
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let server = Server::start(&manifests(&issuer), &[]);
    let pod = pod(&issuer, &server);
    // An unsupported function, even in a branch that never runs.
    expect_start_failure(
        &server,
        &pod,
        "ok: {{ .pw.password }}\n{{ if false }}{{ now | date \"2006\" }}{{ end }}\n",
        &["2:18: function \"now\" is not supported"],
    )
    .await;
    // A syntax error, with its line and column.
    expect_start_failure(
        &server,
        &pod,
        "a: {{ index . \"app/config\" \"user\" }}\n{{ range .x }}\n",
        &["2:1: unexpected EOF"],
    )
    .await;
    // Nothing was fetched: the templates failed before the first request.
    server.sync_logs().await;
    assert_eq!(answered_store_calls(&server), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_render_error_names_the_key_and_writes_nothing() {
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let server = Server::start(&manifests(&issuer), &[]);
    let pod = pod(&issuer, &server);
    let tmpl = pod.dir.path().join("missing.tmpl");
    std::fs::write(
        &tmpl,
        "host: {{ index . \"app/config\" \"db-host\" }}\npass: {{ (index . \"app/config\").password }}\n",
    )
    .unwrap();
    let target = pod.dir.path().join("out/missing.yaml");
    let mut args = base_args(&server, &pod);
    args.extend([
        "--mode=init".to_string(),
        format!("--inject-on-file={}=@{}", target.display(), tmpl.display()),
        "--binary-path=/bin/sh".into(),
        "--args=-c,echo EXECUTED".into(),
    ]);
    let out = run_cli(args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stdout.contains("EXECUTED"), "{stdout}");
    assert!(
        stderr.contains("missing.tmpl") && stderr.contains("map has no entry for key \"password\""),
        "{stderr}"
    );
    assert!(stderr.contains("nothing injected"), "{stderr}");
    assert!(
        !stderr.contains("db.internal") && !stderr.contains("app@"),
        "{stderr}"
    );
    assert!(!target.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_re_renders_when_a_secret_changes() {
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let server = Server::start(&manifests(&issuer), &[]);
    let pod = pod(&issuer, &server);
    let tmpl = pod.dir.path().join("config.tmpl");
    std::fs::write(&tmpl, CONFIG_TEMPLATE).unwrap();
    let target = pod.dir.path().join("etc/app/config.yaml");
    let mut args = base_args(&server, &pod);
    args.extend([
        "--mode=daemon".to_string(),
        "--daemon-refresh-interval=300ms".into(),
        "--timeout=2s".into(),
        "--federated-generators=monitoring/Password/pw".into(),
        format!("--inject-on-file={}=@{}", target.display(), tmpl.display()),
    ]);
    let mut child = Command::new(cli_bin())
        .args(&args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        use std::io::Read;
        let mut s = String::new();
        let mut r = stderr;
        let _ = r.read_to_string(&mut s);
        s
    });
    wait_for("the first render", || {
        std::fs::read(&target).is_ok_and(|b| b == expected("db.internal"))
    })
    .await;
    server
        .write_manifest("fake.yaml", &fake_store("db2.internal"))
        .await;
    wait_for("the re-render", || {
        std::fs::read(&target).is_ok_and(|b| b == expected("db2.internal"))
    })
    .await;
    assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o777, 0o400);
    // SIGTERM to our own child: a clean exit.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "{log}");
    assert!(
        !log.contains("db2.internal") && !log.contains("FAKE"),
        "{log}"
    );
}
