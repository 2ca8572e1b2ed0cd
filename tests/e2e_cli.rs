//! End to end: the real `esi-cli` binary against the real `esi-server` over HTTPS (with
//! an in-test OIDC issuer) and the OpenBao started by `scripts/test.sh`. Tests that need
//! OpenBao skip without it (fail with `ESI_REQUIRE_BACKENDS=1`); the others use the
//! server's `fake` store.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const AUD: &str = "https://esi-federation.cluster-main.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";

fn manifests(issuer: &Issuer, vault: Option<(&str, &str)>) -> Vec<(&'static str, String)> {
    let mut m = vec![
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
  allowedClusterSecretStores: [vault-prod, fake-store]
  allowedGenerators:
    - {{name: pw, kind: Password, namespace: monitoring}}
    - {{name: id, kind: UUID, namespace: monitoring}}
  allowedRemoteKeys:
    vault-prod: ["e2e-cli/*"]
    fake-store: ["app/*", plain-token]
"#
            ),
        ),
        (
            "fake.yaml",
            r#"apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {name: fake-store}
spec:
  provider:
    fake:
      data:
        - {key: app/config, value: '{"db-host":"db.internal","log.level":"debug","port":5432}'}
        - {key: plain-token, value: fake-plain-token-value}
        - {key: forbidden-key, value: not-for-this-app}
"#
            .to_string(),
        ),
        (
            "generators.yaml",
            r#"apiVersion: generators.external-secrets.io/v1alpha1
kind: Password
metadata: {name: pw, namespace: monitoring}
spec: {length: 24}
---
apiVersion: generators.external-secrets.io/v1alpha1
kind: UUID
metadata: {name: id, namespace: monitoring}
spec: {}
"#
            .to_string(),
        ),
    ];
    if let Some((addr, root)) = vault {
        m.push((
            "vault.yaml",
            format!(
                r#"apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: vault-prod}}
spec:
  provider:
    vault:
      server: {addr}
      path: secret
      version: v2
      auth:
        tokenSecretRef: {{name: vault-token, namespace: esi-system, key: token}}
---
apiVersion: v1
kind: Secret
metadata: {{name: vault-token, namespace: esi-system}}
stringData: {{token: "{root}"}}
"#
            ),
        ));
    }
    m
}

/// The files a Pod would have: its token, and a CA bundle that holds the client
/// cluster's CA (sent as `ca.crt`) and the CA that signed the server's certificate.
struct PodFiles {
    dir: tempfile::TempDir,
    token: PathBuf,
    ca: PathBuf,
}

fn pod_files(issuer: &Issuer, server: &Server, sa: &str) -> PodFiles {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(
        &token,
        mint("rsa-1", &sa_claims(ISS, AUD, "monitoring", sa), None),
    )
    .unwrap();
    let server_ca =
        std::fs::read_to_string(server.manifests.parent().unwrap().join("data/tls/ca.crt"))
            .unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, format!("{}\n{}", issuer.ca.ca_pem, server_ca)).unwrap();
    PodFiles { dir, token, ca }
}

fn base_args(server: &Server, pod: &PodFiles, store: &str) -> Vec<String> {
    vec![
        format!("--federated-server-url={}", server.url),
        format!("--federated-store={store}"),
        format!("--federated-token={}", pod.token.display()),
        format!("--federated-ca-crt={}", pod.ca.display()),
    ]
}

/// Runs esi-cli to completion off the async threads (the issuer is served in-process).
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

fn env_lines(out: &Output) -> HashMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn init_injects_store_keys_properties_and_generators() {
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let server = Server::start(&manifests(&issuer, None), &[]);
    let pod = pod_files(&issuer, &server, "app");
    let mut args = base_args(&server, &pod, "fake-store");
    args.extend([
        "--mode=init".to_string(),
        "--external-secrets=app/config".into(),
        "--inject-on-env=DB=app/config.db-host,TOKEN=plain-token,PW=pw.password,*".into(),
        "--federated-generators=monitoring/Password/pw,monitoring/UUID/id".into(),
        format!(
            "--inject-on-file={0}/conf/app.yaml=app/config,{0}/conf/port=app/config.port",
            pod.dir.path().display()
        ),
        "--binary-path=/usr/bin/env".into(),
    ]);
    let out = run_cli(args).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let env = env_lines(&out);
    // --external-secrets: every key, names upper-cased with non-alphanumerics as `_`.
    assert_eq!(env["DB_HOST"], "db.internal");
    assert_eq!(env["LOG_LEVEL"], "debug");
    assert_eq!(env["PORT"], "5432");
    // `.key` properties and a whole raw value.
    assert_eq!(env["DB"], "db.internal");
    assert_eq!(env["TOKEN"], "fake-plain-token-value");
    // A generator's output, by key and through `*`.
    assert_eq!(env["PW"].len(), 24);
    assert_eq!(env["PASSWORD"], env["PW"], "one request per generator");
    assert_eq!(env["UUID"].len(), 36);
    // Files.
    let yaml = std::fs::read_to_string(pod.dir.path().join("conf/app.yaml")).unwrap();
    let parsed: HashMap<String, String> = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(parsed["db-host"], "db.internal");
    assert_eq!(parsed["port"], "5432");
    let port = pod.dir.path().join("conf/port");
    assert_eq!(std::fs::read_to_string(&port).unwrap(), "5432");
    assert_eq!(std::fs::metadata(&port).unwrap().mode() & 0o777, 0o400);
    // Values never on stderr; one request per distinct secret.
    assert!(
        !stderr.contains("db.internal") && !stderr.contains(&env["PW"]),
        "{stderr}"
    );
    assert!(stdout.contains("DB_HOST="));
    server.sync_logs().await;
    // Two store secrets and two generators, however often each is referenced.
    let answered = |route: &str| {
        server
            .logs()
            .iter()
            .filter(|l| l.contains("\"answered\"") && l.contains(route))
            .count()
    };
    wait_for("the server's request logs", || {
        answered("/generators/") >= 2
    })
    .await;
    assert_eq!(answered("/secretstore/"), 2);
    assert_eq!(answered("/generators/"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn init_against_openbao() {
    install_crypto();
    let Some((addr, root)) = openbao() else {
        return;
    };
    vault_put(
        &addr,
        &root,
        "secret",
        "e2e-cli/db",
        json!({"username": "cli-user", "password": "cli-s3cr3t-openbao", "api-key": "k-123"}),
    )
    .await;
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let server = Server::start(&manifests(&issuer, Some((&addr, &root))), &[]);
    let pod = pod_files(&issuer, &server, "app");
    let mut args = base_args(&server, &pod, "vault-prod");
    args.extend([
        "--mode=init".to_string(),
        "--external-secrets=e2e-cli/db".into(),
        "--inject-on-env=PASSWORD=e2e-cli/db.username".into(),
        "--binary-path=/bin/sh".into(),
        "--args=-c,env".into(),
    ]);
    let out = run_cli(args).await;
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let env = env_lines(&out);
    assert_eq!(env["USERNAME"], "cli-user");
    assert_eq!(env["API_KEY"], "k-123");
    // --inject-on-env wins over the expanded name.
    assert_eq!(env["PASSWORD"], "cli-user");
    assert!(!stderr.contains("cli-s3cr3t"), "{stderr}");
}

/// Runs a failing init and checks: non-zero, the expected line, and no exec.
async fn expect_failure(args: Vec<String>, needles: &[&str]) -> String {
    let mut args = args;
    args.extend([
        "--mode=init".to_string(),
        "--binary-path=/bin/sh".into(),
        "--args=-c,echo EXECUTED".into(),
    ]);
    let started = Instant::now();
    let out = run_cli(args).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        !stdout.contains("EXECUTED"),
        "the application ran: {stdout}"
    );
    for n in needles {
        assert!(stderr.contains(n), "missing {n:?} in:\n{stderr}");
    }
    assert!(stderr.contains("nothing injected"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
    stderr
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_clear_and_nothing_is_started() {
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let server = Server::start(&manifests(&issuer, None), &[]);
    let pod = pod_files(&issuer, &server, "app");
    let files_dir = pod.dir.path().join("out");

    // A missing key: the other secrets were fine, still nothing is injected (no file either).
    let mut a = base_args(&server, &pod, "fake-store");
    a.push("--inject-on-env=X=app/config.nope,T=plain-token".into());
    a.push(format!(
        "--inject-on-file={}/f=plain-token",
        files_dir.display()
    ));
    let err = expect_failure(
        a,
        &["secret \"app/config\" (for X): key \"nope\" not found"],
    )
    .await;
    assert!(!err.contains("fake-plain-token-value"), "{err}");
    assert!(!files_dir.exists(), "a file was written");

    // A secret that exists but that the ServiceAccount may not read, and one that does
    // not exist: the same 404, one line each.
    let mut a = base_args(&server, &pod, "fake-store");
    a.push("--external-secrets=forbidden-key,app/missing".into());
    let err = expect_failure(
        a,
        &[
            "secret \"forbidden-key\": not found",
            "secret \"app/missing\": not found",
            "HTTP 404",
        ],
    )
    .await;
    assert!(!err.contains("not-for-this-app"), "{err}");

    // Another ServiceAccount: denied like a missing secret.
    let intruder = pod_files(&issuer, &server, "intruder");
    let mut a = base_args(&server, &intruder, "fake-store");
    a.push("--external-secrets=app/config".into());
    expect_failure(a, &["secret \"app/config\": not found"]).await;

    // A token the server refuses: 401.
    std::fs::write(&intruder.token, "not.a.jwt").unwrap();
    let mut a = base_args(&server, &intruder, "fake-store");
    a.push("--external-secrets=app/config".into());
    expect_failure(a, &["unauthorized"]).await;

    // An unreadable token file.
    let mut a = base_args(&server, &pod, "fake-store");
    a[2] = format!(
        "--federated-token={}/no-such-token",
        pod.dir.path().display()
    );
    a.push("--external-secrets=app/config".into());
    expect_failure(a, &["bad token file", "no-such-token"]).await;

    // A CA bundle without the server's CA: TLS failure, not retried until the timeout.
    let only_issuer = pod.dir.path().join("issuer-only.crt");
    std::fs::write(&only_issuer, &issuer.ca.ca_pem).unwrap();
    let mut a = base_args(&server, &pod, "fake-store");
    a[3] = format!("--federated-ca-crt={}", only_issuer.display());
    a.push("--external-secrets=app/config".into());
    let started = Instant::now();
    expect_failure(a, &["TLS failure"]).await;
    assert!(started.elapsed() < Duration::from_secs(5));

    // A dead server: retried within --timeout, then "server unreachable".
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut a = base_args(&server, &pod, "fake-store");
    a[0] = format!("--federated-server-url=https://127.0.0.1:{dead}");
    a.push("--external-secrets=app/config".into());
    a.push("--timeout=2s".into());
    let started = Instant::now();
    expect_failure(a, &["secret \"app/config\": server unreachable"]).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(6),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_code_signal_and_pid_belong_to_the_application() {
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let server = Server::start(&manifests(&issuer, None), &[]);
    let pod = pod_files(&issuer, &server, "app");
    let run = |script: &str| {
        let mut a = base_args(&server, &pod, "fake-store");
        a.extend([
            "--mode=init".to_string(),
            "--inject-on-env=T=plain-token".into(),
            "--binary-path=/bin/sh".into(),
            format!("--args=-c,{script}"),
        ]);
        a
    };
    let out = run_cli(run("exit 7")).await;
    assert_eq!(out.status.code(), Some(7), "{}", text(&out).1);
    let out = run_cli(run("kill -TERM $$")).await;
    assert_eq!(out.status.signal(), Some(15), "{:?}", out.status);
    // The application has esi-cli's pid: the process was replaced, not forked.
    let args = run("echo $$");
    let (pid, stdout) = tokio::task::spawn_blocking(move || {
        let child = Command::new(cli_bin())
            .args(&args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        (pid, String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
    .await
    .unwrap();
    assert_eq!(stdout, pid.to_string());
}

fn ino_mtime(p: &Path) -> (u64, i64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_rewrites_only_changed_files_survives_outage_and_stops_on_sigterm() {
    install_crypto();
    let Some((addr, root)) = openbao() else {
        return;
    };
    vault_put(
        &addr,
        &root,
        "secret",
        "e2e-cli/daemon",
        json!({"user": "u1", "password": "first-pass"}),
    )
    .await;
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let server = Server::start(&manifests(&issuer, Some((&addr, &root))), &[]);
    let pod = pod_files(&issuer, &server, "app");
    let out = pod.dir.path().join("secrets");
    let pass = out.join("nested/password");
    let whole = out.join("daemon.yaml");
    let user = out.join("user");
    let mut args = base_args(&server, &pod, "vault-prod");
    args.extend([
        "--mode=daemon".to_string(),
        "--daemon-refresh-interval=300ms".into(),
        "--timeout=2s".into(),
        format!(
            "--inject-on-file={}=e2e-cli/daemon.password,{}=e2e-cli/daemon,{}=e2e-cli/daemon.user",
            pass.display(),
            whole.display(),
            user.display()
        ),
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

    wait_for("the first files", || {
        pass.exists() && whole.exists() && user.exists()
    })
    .await;
    assert_eq!(std::fs::read_to_string(&pass).unwrap(), "first-pass");
    assert_eq!(std::fs::metadata(&pass).unwrap().mode() & 0o777, 0o400);
    let before = (ino_mtime(&pass), ino_mtime(&whole), ino_mtime(&user));
    // Several refreshes with the same value: nothing is rewritten.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        before,
        (ino_mtime(&pass), ino_mtime(&whole), ino_mtime(&user))
    );

    // The value changes in OpenBao: the files that depend on it are replaced.
    vault_put(
        &addr,
        &root,
        "secret",
        "e2e-cli/daemon",
        json!({"user": "u1", "password": "second-pass"}),
    )
    .await;
    wait_for("the new password", || {
        std::fs::read_to_string(&pass)
            .map(|s| s == "second-pass")
            .unwrap_or(false)
    })
    .await;
    wait_for("the new YAML", || {
        std::fs::read_to_string(&whole)
            .map(|s| s.contains("second-pass"))
            .unwrap_or(false)
    })
    .await;
    assert_ne!(
        ino_mtime(&pass).0,
        before.0.0,
        "replaced by an atomic rename"
    );
    assert_eq!(
        ino_mtime(&user),
        before.2,
        "the unchanged key's file is left alone"
    );
    assert_eq!(std::fs::metadata(&pass).unwrap().mode() & 0o777, 0o400);

    // The server goes away: the daemon keeps running and keeps the last files.
    let kept = (ino_mtime(&pass), std::fs::read_to_string(&pass).unwrap());
    drop(server);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon exited during the outage"
    );
    assert_eq!(
        (ino_mtime(&pass), std::fs::read_to_string(&pass).unwrap()),
        kept
    );

    // SIGTERM: a clean exit.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    let log = log.join().unwrap();
    assert!(log.contains("file written"), "{log}");
    assert!(
        log.contains("server unreachable"),
        "the outage is logged: {log}"
    );
    assert!(
        !log.contains("first-pass") && !log.contains("second-pass"),
        "{log}"
    );
}

/// Issue 8 (e): `secret.a.b` follows the server's `remoteRef.property` rule: an exact
/// key first, then the dotted path into the JSON value.
#[tokio::test(flavor = "multi_thread")]
async fn nested_properties_follow_the_servers_rule() {
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let mut m = manifests(&issuer, None);
    m.push((
        "nested.yaml",
        format!(
            r#"apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: nested-store}}
spec:
  provider:
    fake:
      data:
        - {{key: cfg, value: '{{"database":{{"host":"db.internal","ports":[5432,5433]}},"a.b":"exact","a":{{"b":"nested"}}}}'}}
---
apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {{name: allow-app-nested}}
spec:
  federationRef: {{kind: KubernetesFederation, name: client-cluster-alpha}}
  subject:
    oidc: {{issuer: {ISS}, subject: "system:serviceaccount:monitoring:app"}}
  allowedClusterSecretStores: [nested-store]
"#
        ),
    ));
    let server = Server::start(&m, &[]);
    let pod = pod_files(&issuer, &server, "app");
    let mut args = base_args(&server, &pod, "nested-store");
    args.extend([
        "--mode=init".to_string(),
        "--inject-on-env=DBHOST=cfg.database.host,PORT2=cfg.database.ports.1,AB=cfg.a.b".into(),
        format!(
            "--inject-on-file={}/host=cfg.database.host",
            pod.dir.path().display()
        ),
        "--binary-path=/usr/bin/env".into(),
    ]);
    let out = run_cli(args).await;
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let env = env_lines(&out);
    assert_eq!(env["DBHOST"], "db.internal");
    assert_eq!(env["PORT2"], "5433");
    assert_eq!(env["AB"], "exact", "an exact key wins over the path");
    assert_eq!(
        std::fs::read_to_string(pod.dir.path().join("host")).unwrap(),
        "db.internal"
    );
    // A path that does not exist is still a clear failure.
    let mut args = base_args(&server, &pod, "nested-store");
    args.push("--inject-on-env=X=cfg.database.nope".into());
    expect_failure(args, &["key \"database.nope\" not found"]).await;
}

/// Serves HTTPS with `cert_pem` (chain) and `key_pem`; answers nothing useful.
async fn tls_server(
    cert_pem: String,
    key_pem: String,
) -> (String, axum_server::Handle<std::net::SocketAddr>) {
    let config = axum_server::tls_rustls::RustlsConfig::from_pem(
        cert_pem.into_bytes(),
        key_pem.into_bytes(),
    )
    .await
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        let app = axum::Router::new();
        let _ = axum_server::from_tcp_rustls(listener, config)
            .unwrap()
            .handle(h)
            .serve(app.into_make_service())
            .await;
    });
    (format!("https://127.0.0.1:{port}"), handle)
}

/// Issue 8 (f): every kind of TLS failure is still refused, and said in plain words with
/// what to fix.
#[tokio::test(flavor = "multi_thread")]
async fn tls_failures_say_what_is_wrong_and_how_to_fix_it() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(
        &token,
        mint("rsa-1", &sa_claims(ISS, AUD, "monitoring", "app"), None),
    )
    .unwrap();
    let ca = test_ca();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "esi e2e tls CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf = |names: Vec<String>, expired: bool| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        (
            p.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    // What `openssl req -x509` makes: a self-signed CA certificate used as the server's.
    let self_signed_ca = {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
    };
    let trust = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let ours = trust("ours.crt", &ca_cert.pem());
    let other = trust("other.crt", &ca.ca_pem);
    // (what, (server certificate, key), trusted CA file, expected phrases)
    type Case<'a> = (&'a str, (String, String), std::path::PathBuf, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "self-signed CA as server certificate",
            self_signed_ca.clone(),
            trust("selfsigned.crt", &self_signed_ca.0),
            vec![
                "presents a CA certificate",
                "openssl req -x509",
                "issue a server certificate",
            ],
        ),
        (
            "unknown issuer",
            leaf(vec!["127.0.0.1".into()], false),
            other.clone(),
            vec!["does not trust", "other.crt", "add the CA that issued"],
        ),
        (
            "another CA of the same name",
            (ca.cert_pem.clone(), ca.key_pem.clone()),
            trust("same-name.crt", &test_ca().ca_pem),
            vec!["does not verify", "same name"],
        ),
        (
            "name mismatch",
            leaf(vec!["other.example".into()], false),
            ours.clone(),
            vec!["not valid for 127.0.0.1", "other.example", "subjectAltName"],
        ),
        (
            "expired",
            leaf(vec!["127.0.0.1".into()], true),
            ours.clone(),
            vec!["has expired (valid until 2021-01-01", "renew"],
        ),
    ];
    for (what, (cert, key), ca_file, needles) in cases {
        let (url, handle) = tls_server(cert, key).await;
        let args = vec![
            format!("--federated-server-url={url}"),
            "--federated-store=fake-store".into(),
            format!("--federated-token={}", token.display()),
            format!("--federated-ca-crt={}", ca_file.display()),
            "--inject-on-env=X=plain-token".into(),
        ];
        let stderr = expect_failure(args, &needles).await;
        assert!(stderr.contains("Fix"), "{what}: {stderr}");
        handle.shutdown();
    }
}

/// Issue 17, found in use: logs written to a file or a pipe carry no ANSI colour codes
/// (esi-cli's stderr is a pipe here; `RUST_LOG=debug` makes it log the retries).
#[tokio::test(flavor = "multi_thread")]
async fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(
        &token,
        mint("rsa-1", &sa_claims(ISS, AUD, "ns", "sa"), None),
    )
    .unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let args = vec![
        format!("--federated-server-url=https://127.0.0.1:{dead}"),
        "--federated-store=s".to_string(),
        format!("--federated-token={}", token.display()),
        "--external-secrets=app/config".into(),
        "--timeout=1s".into(),
        "--mode=init".into(),
        "--binary-path=/bin/true".into(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new(cli_bin())
            .args(&args)
            .env("RUST_LOG", "debug")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DEBUG"), "no log line to check:\n{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI codes in a pipe:\n{stderr:?}"
    );
}
