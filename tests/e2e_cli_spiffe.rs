//! End to end, issue 18: the real `esi-cli` with `--federated-auth=spiffe` against the real
//! `esi-server` over HTTPS, with a `SpiffeFederation` whose bundle (JWKS form, `use:
//! jwt-svid` keys) and JWT-SVIDs the test mints with the fixture keys (no SPIRE server or
//! spiffe-helper here: the test writes the JWT-SVID file as spiffe-helper does). The
//! JWT-SVID file gets the secret; a rotated file is read again by the daemon; a missing or
//! empty file fails clearly and runs nothing; the token is never printed.
//!
//! The X.509-SVID path (`--federated-x509-svid`) needs the server's mTLS listener: its
//! client side is covered by `cli::federated::tests::x509_svids_are_presented_and_rotated`
//! (a TLS server requiring client certificates).

mod common;

use std::io::BufRead;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const AUD: &str = "https://esi-federation.example.com";
const VALUE: &str = "spiffe-cli-value-4d1e";
const API: &str = "spiffe://example.org/ns/prod/sa/api";
const OTHER: &str = "spiffe://example.org/ns/prod/sa/other";

/// A `SpiffeFederation` `spire` of trust domain `example.org` with the fixture key `ec-1`
/// as its JWT authority, an Authorization for [`API`] and the store `mesh-store`.
fn manifests() -> String {
    manifests_with(vec![jwt_authority()])
}

/// The fixture key `ec-1` as a `jwt-svid` bundle entry.
fn jwt_authority() -> Value {
    let mut key = jwk("ec-1");
    key["use"] = json!("jwt-svid");
    key
}

/// [`manifests`] with these bundle entries.
fn manifests_with(keys: Vec<Value>) -> String {
    let bundle = json!({"spiffe_sequence": 1, "spiffe_refresh_hint": 300, "keys": keys});
    format!(
        r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: SpiffeFederation
metadata: {{name: spire}}
spec:
  trustDomain: example.org
  audiences: ["{AUD}"]
  bundle: '{bundle}'
---
apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {{name: api}}
spec:
  federationRef: {{kind: SpiffeFederation, name: spire}}
  subject: {{spiffe: {{spiffeID: "{API}"}}}}
  allowedClusterSecretStores: [mesh-store]
---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: mesh-store}}
spec:
  provider:
    fake:
      data:
        - {{key: db-password, value: {VALUE}}}
"#
    )
}

/// A JWT-SVID for `sub`, as SPIRE mints them (no `iss`), valid for five minutes.
fn jwt_svid(sub: &str) -> String {
    let now = now();
    let claims: Value = json!({"sub": sub, "aud": [AUD], "iat": now, "exp": now + 300});
    mint("ec-1", &claims, None)
}

struct Setup {
    server: Server,
    dir: tempfile::TempDir,
}

impl Setup {
    fn start() -> Setup {
        let server = Server::start(&[("spiffe.yaml", manifests())], &[]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server-ca.crt"), server.ca_pem()).unwrap();
        Setup { server, dir }
    }

    /// spiffe-helper's `jwt_svid_file_name` in its shared directory.
    fn token(&self) -> std::path::PathBuf {
        self.dir.path().join("jwt_svid.token")
    }

    fn args(&self, extra: &[String]) -> Vec<String> {
        let mut args = vec![
            format!("--federated-server-url={}", self.server.url),
            "--federated-store=mesh-store".into(),
            "--federated-auth=spiffe".into(),
            format!("--federated-token={}", self.token().display()),
            format!(
                "--federated-ca-crt={}",
                self.dir.path().join("server-ca.crt").display()
            ),
        ];
        args.extend_from_slice(extra);
        args
    }
}

/// Runs esi-cli to completion off the async threads.
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

fn init_args() -> Vec<String> {
    vec![
        "--mode=init".into(),
        "--inject-on-env=DB_PASSWORD=db-password".into(),
        "--binary-path=/usr/bin/env".into(),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn esi_cli_gets_the_secret_with_a_jwt_svid_file() {
    let s = Setup::start();
    std::fs::write(s.token(), format!("{}\n", jwt_svid(API))).unwrap();
    let out = run_cli(s.args(&init_args())).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.lines().any(|l| l == format!("DB_PASSWORD={VALUE}")),
        "{stdout}"
    );

    // Another workload of the trust domain is not authorized: nothing runs, and the
    // JWT-SVID is not printed.
    let other = jwt_svid(OTHER);
    std::fs::write(s.token(), &other).unwrap();
    let out = run_cli(s.args(&init_args())).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("not found"), "{stderr}");
    assert!(!stderr.contains(&other), "{stderr}");

    // A missing or empty file: a clear line naming it, nothing run.
    std::fs::remove_file(s.token()).unwrap();
    let out = run_cli(s.args(&init_args())).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains(&format!("bad token file {}", s.token().display()))
            && stderr.contains("No such file"),
        "{stderr}"
    );
    std::fs::write(s.token(), "\n").unwrap();
    let out = run_cli(s.args(&init_args())).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("empty"), "{stderr}");

    // The Workload API socket is refused with the alternative, before anything is read.
    let mut args = init_args();
    args.push("--federated-socket-path=unix:///run/spire/agent.sock".into());
    let out = run_cli(s.args(&args)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--federated-socket-path") && stderr.contains("spiffe-helper"),
        "{stderr}"
    );
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// esi-cli started with `args` (a daemon), its stderr (RUST_LOG=info) collected into the
/// shared log by a reader thread (join it after killing the child).
fn daemon(
    args: Vec<String>,
) -> (
    std::process::Child,
    Arc<Mutex<String>>,
    std::thread::JoinHandle<()>,
) {
    let mut child = Command::new(cli_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let reader = {
        let log = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        })
    };
    (child, log, reader)
}

/// spiffe-helper rewrites the JWT-SVID file before the SVID expires: the daemon reads it
/// for every request, so a rotated file takes effect at the next refresh (here the new
/// SVID names a workload the server does not authorize, which only a re-read can show; then
/// an authorized one again).
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_reads_the_rotated_jwt_svid_file() {
    let s = Setup::start();
    std::fs::write(s.token(), jwt_svid(API)).unwrap();
    let out_file = s.dir.path().join("out/db");
    let (mut child, log, reader) = daemon(s.args(&[
        "--mode=daemon".into(),
        "--daemon-refresh-interval=200ms".into(),
        "--timeout=2s".into(),
        format!("--inject-on-file={}=db-password", out_file.display()),
    ]));
    wait_for("the first file", || {
        std::fs::read_to_string(&out_file).is_ok_and(|v| v == VALUE)
    })
    .await;
    let refused = || log.lock().unwrap().matches("cannot fetch").count();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(refused(), 0, "{}", log.lock().unwrap());

    // Rotated to an SVID of a workload without access: the next rounds are refused.
    let other = jwt_svid(OTHER);
    std::fs::write(s.token(), &other).unwrap();
    wait_for("a refused round", || refused() > 0).await;
    assert!(log.lock().unwrap().contains("not found"));
    // Rotated back: the rounds succeed again (no new refusal after a settled round).
    // (A refused round is retried after up to a second: wait that out first.)
    std::fs::write(s.token(), jwt_svid(API)).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = refused();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(refused(), settled, "{}", log.lock().unwrap());
    assert!(child.try_wait().unwrap().is_none(), "the daemon exited");
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), VALUE);

    child.kill().unwrap();
    let _ = child.wait();
    reader.join().unwrap();
    let log = log.lock().unwrap();
    assert!(!log.contains(&other) && !log.contains(VALUE), "{log}");
}

/// A trust domain's CA as the tests mint it (no SPIRE server here) and X.509-SVIDs it
/// signs per the X509-SVID spec (one `spiffe://` URI SAN, not a CA, digitalSignature),
/// written where spiffe-helper writes them.
struct SpiffeCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl SpiffeCa {
    fn new() -> SpiffeCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![SanType::URI("spiffe://example.org".try_into().unwrap())];
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = rcgen::CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        SpiffeCa { issuer }
    }

    /// This CA as a SPIFFE bundle entry (`use: x509-svid`, its DER in `x5c`).
    fn bundle_entry(&self) -> Value {
        use base64::Engine;
        json!({"use": "x509-svid", "kty": "EC", "crv": "P-256",
               "x5c": [base64::engine::general_purpose::STANDARD.encode(self.issuer.der())]})
    }

    /// Writes an X.509-SVID for `id` as `svid.pem` and `svid_key.pem` in `dir`.
    fn write_svid(&self, dir: &std::path::Path, id: &str) {
        use rcgen::{
            CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
        };
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        // spiffe-helper replaces the files; the key first, as a half-written rotation
        // would leave it.
        std::fs::write(dir.join("svid_key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("svid.pem"), cert.pem()).unwrap();
    }
}

/// The X.509-SVID path end to end: esi-cli presents spiffe-helper's `svid.pem` and
/// `svid_key.pem` as its TLS client certificate (no bearer token) and gets the secret;
/// given a JWT-SVID too, it uses the X.509-SVID only (the JWT-SVID here names a workload
/// without access, and the server refuses a request carrying both); the daemon follows a
/// rotation of the files. Needs the server's X.509-SVID support (optional client
/// certificates on the API listener, `x509-svid` bundle authorities): branch `wip/x509`.
#[tokio::test(flavor = "multi_thread")]
async fn esi_cli_presents_the_x509_svid_files_as_its_client_certificate() {
    let ca = SpiffeCa::new();
    let manifests = manifests_with(vec![ca.bundle_entry(), jwt_authority()]);
    let server = Server::start(&[("spiffe.yaml", manifests)], &[]);
    let dir = tempfile::tempdir().unwrap();
    let server_ca = dir.path().join("server-ca.crt");
    std::fs::write(&server_ca, server.ca_pem()).unwrap();
    ca.write_svid(dir.path(), API);
    let x509_args = |extra: &[String]| {
        let mut args = vec![
            format!("--federated-server-url={}", server.url),
            "--federated-store=mesh-store".into(),
            "--federated-auth=spiffe".into(),
            format!(
                "--federated-x509-svid={}",
                dir.path().join("svid.pem").display()
            ),
            format!(
                "--federated-x509-svid-key={}",
                dir.path().join("svid_key.pem").display()
            ),
            format!("--federated-ca-crt={}", server_ca.display()),
        ];
        args.extend_from_slice(extra);
        args
    };
    let out = run_cli(x509_args(&init_args())).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.lines().any(|l| l == format!("DB_PASSWORD={VALUE}")),
        "{stdout}"
    );

    // Both given: the X.509-SVID is used, the JWT-SVID (of a workload without access) is
    // not sent, and esi-cli says so.
    let jwt_file = dir.path().join("jwt_svid.token");
    std::fs::write(&jwt_file, jwt_svid(OTHER)).unwrap();
    let mut args = init_args();
    args.push(format!("--federated-token={}", jwt_file.display()));
    let out = run_cli(x509_args(&args)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(VALUE), "{stdout}");
    assert!(stderr.contains("the JWT-SVID is not sent"), "{stderr}");

    // Another workload's X.509-SVID: refused, nothing run.
    ca.write_svid(dir.path(), OTHER);
    let out = run_cli(x509_args(&init_args())).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    // The daemon follows spiffe-helper's rotations: the authorized SVID, then another
    // workload's (refused at the next refresh: the files were read again and a new
    // connection presented them).
    ca.write_svid(dir.path(), API);
    let out_file = dir.path().join("out/db");
    let (mut child, log, reader) = daemon(x509_args(&[
        "--mode=daemon".into(),
        "--daemon-refresh-interval=200ms".into(),
        "--timeout=2s".into(),
        format!("--inject-on-file={}=db-password", out_file.display()),
    ]));
    wait_for("the first file", || {
        std::fs::read_to_string(&out_file).is_ok_and(|v| v == VALUE)
    })
    .await;
    ca.write_svid(dir.path(), OTHER);
    wait_for("a refused round", || {
        log.lock().unwrap().contains("cannot fetch")
    })
    .await;
    assert!(log.lock().unwrap().contains("X.509-SVID rotated"));
    child.kill().unwrap();
    let _ = child.wait();
    reader.join().unwrap();
}
