//! Transport end-to-end tests: the real `esi-server` (and `esi-cli`) binary on failure
//! exits and per-connection log noise. See `docs/security.md` ("Failure exits and log
//! noise").

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const AUD: &str = "https://esi-federation.cluster-main.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";
const FAKE_OTHER: &str = "transport-OTHER-value-4e1a";

fn setup(issuer: &Issuer) -> Vec<(&'static str, String)> {
    vec![
        (
            "federation.yaml",
            format!(
                r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: KubernetesFederation
metadata: {{name: alpha}}
spec:
  url: {url}
  issuer: {ISS}
  audiences: ["{AUD}"]
"#,
                url = issuer.url
            ),
        ),
        (
            "authorization.yaml",
            format!(
                r#"apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {{name: allow-app}}
spec:
  federationRef: {{kind: KubernetesFederation, name: alpha}}
  subject:
    oidc:
      issuer: {ISS}
      subject: system:serviceaccount:monitoring:app
  allowedClusterSecretStores: ["fake-store"]
"#
            ),
        ),
        (
            "store.yaml",
            format!(
                r#"apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: fake-store}}
spec:
  provider:
    fake:
      data:
        - {{key: other, value: {FAKE_OTHER}}}
"#
            ),
        ),
    ]
}

fn server_port(server: &Server) -> u16 {
    server.url.rsplit(':').next().unwrap().parse().unwrap()
}

fn warn_lines(server: &Server) -> Vec<String> {
    server
        .logs()
        .into_iter()
        .filter(|l| l.contains("\"level\":\"WARN\""))
        .collect()
}

// --- Issue 8 (b): failure exits ------------------------------------------------------

/// Runs `bin args` with backtraces requested; returns (exit code, stderr).
fn run_failing(bin: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn expected_failures_exit_non_zero_with_a_message_and_no_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("broken.yaml"),
        "apiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {name: s}\nspec: {provider: {nonsense: {}}}\n",
    )
    .unwrap();
    let m = manifests.to_str().unwrap();
    let missing = dir.path().join("missing");
    let missing = missing.to_str().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let server = server_bin();
    let cases: Vec<(&std::path::Path, Vec<&str>, &str)> = vec![
        (&server, vec!["check", "--manifests", m], "problems found"),
        (
            &server,
            vec!["serve", "--manifests", missing, "--listen", "127.0.0.1:0"],
            "is not a directory",
        ),
        (
            &server,
            vec![
                "serve",
                "--manifests",
                m,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data,
                "--tls-cert",
                missing,
                "--tls-key",
                missing,
            ],
            "missing",
        ),
        (
            &server,
            vec![
                "dev-token",
                "--key",
                missing,
                "--issuer",
                "i",
                "--namespace",
                "n",
                "--service-account",
                "s",
            ],
            "missing",
        ),
    ];
    for (bin, args, needle) in cases {
        let (code, stderr) = run_failing(bin, &args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(
            !stderr.to_lowercase().contains("backtrace"),
            "{args:?} printed a backtrace:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // esi-cli: a usage error and a failed fetch (nothing listens there).
    let cli = cli_bin();
    for args in [
        vec!["--no-such-flag"],
        vec![
            "--mode",
            "init",
            "--federated-server-url",
            "https://127.0.0.1:1",
            "--federated-store",
            "s",
            "--federated-token",
            missing,
            "--external-secrets",
            "x",
            "--binary-path",
            "/bin/true",
            "--timeout",
            "1s",
        ],
    ] {
        let (code, stderr) = run_failing(&cli, &args);
        assert!(matches!(code, Some(c) if c != 0), "{args:?}: {stderr}");
        assert!(!stderr.trim().is_empty(), "{args:?}: no message");
        assert!(
            !stderr.to_lowercase().contains("backtrace"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

// --- Issue 8 (c): no per-connection warnings -----------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn ip_address_sni_does_not_log_a_warning_per_connection() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIPPED: openssl not installed (needed to send an IP address as SNI)");
        return;
    }
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let server = Server::start_with_args(&setup(&issuer), &[], &[]);
    // Start-up warnings (self-signed certificate, …) are written before this request's line.
    server.sync_logs().await;
    let before = warn_lines(&server);
    let port = server_port(&server);
    for _ in 0..5 {
        let out = tokio::task::spawn_blocking(move || {
            Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &format!("127.0.0.1:{port}"),
                    "-servername",
                    "127.0.0.1",
                ])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("BEGIN CERTIFICATE") || text.contains("Server certificate"),
            "{text}"
        );
    }
    // The server still answers, and logged nothing at WARN for those connections.
    assert_eq!(server.get("/healthz").await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.sync_logs().await;
    let after = warn_lines(&server);
    assert_eq!(
        after.len(),
        before.len(),
        "per-connection warnings:\n{}",
        after[before.len()..].join("\n")
    );
}
