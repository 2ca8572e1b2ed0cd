//! Test harness: the real `esi-server` binary over HTTPS, an in-test OIDC issuer with
//! its own CA, token minting with the test-only keys in `tests/fixtures/keys`, and the
//! OpenBao started by `scripts/test.sh`.
#![allow(dead_code)]

pub mod fake_kube;
pub mod fake_vault;
pub mod moto;
pub mod reconcile_files;
pub mod svid;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The `esi-server` binary under test: `ESI_SERVER_BIN` when set (several worktrees may
/// share one target directory), else the one cargo built for this test.
pub fn server_bin() -> PathBuf {
    std::env::var_os("ESI_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_esi-server")))
}

/// The `esi-cli` binary under test (`ESI_CLI_BIN` overrides).
pub fn cli_bin() -> PathBuf {
    std::env::var_os("ESI_CLI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_esi-cli")))
}

/// The public JWK of a test key (`rsa-1`, `rsa-2`, `ec-1`, `ec-2`).
pub fn jwk(name: &str) -> Value {
    let all: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{FIXTURES}/keys/jwks.json")).unwrap(),
    )
    .unwrap();
    all[name].clone()
}

pub fn jwks(names: &[&str]) -> Value {
    json!({ "keys": names.iter().map(|n| jwk(n)).collect::<Vec<_>>() })
}

/// Claims of a projected ServiceAccount token.
pub fn sa_claims(issuer: &str, aud: &str, namespace: &str, sa: &str) -> Value {
    let now = now();
    json!({
        "iss": issuer,
        "sub": format!("system:serviceaccount:{namespace}:{sa}"),
        "aud": [aud],
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": sa, "uid": "3f0a1c5e-0000-4000-8000-000000000001"},
            "pod": {"name": format!("{sa}-pod"), "uid": "3f0a1c5e-0000-4000-8000-000000000002"}
        }
    })
}

/// Signs `claims` with the test key `key` (kid from the fixture unless `kid` overrides).
pub fn mint(key: &str, claims: &Value, kid: Option<&str>) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem = std::fs::read(format!("{FIXTURES}/keys/{key}.pem")).unwrap();
    let (alg, enc) = if key.starts_with("rsa") {
        (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem).unwrap())
    } else {
        (Algorithm::ES256, EncodingKey::from_ec_pem(&pem).unwrap())
    };
    let mut header = Header::new(alg);
    header.kid = Some(
        kid.map(str::to_string)
            .unwrap_or_else(|| jwk(key)["kid"].as_str().unwrap().to_string()),
    );
    jsonwebtoken::encode(&header, claims, &enc).unwrap()
}

/// A CA and a leaf certificate for 127.0.0.1/localhost.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn test_ca() -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    TestCa {
        ca_pem: ca.pem(),
        cert_pem: leaf.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// The base64 field `field` of a JSON answer, decoded as UTF-8 (`/v1` values).
pub fn decoded(body: &str, field: &str) -> String {
    use base64::Engine;
    let v: Value = serde_json::from_str(body).unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(v[field].as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
}

pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// What an [`Issuer`] answers at `/.well-known/openid-configuration`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DiscoveryMode {
    /// 404 (a Kubernetes API server without discovery: keys at `/openid/v1/jwks`).
    None,
    /// A Kubernetes API server's: the in-cluster issuer, `jwks_uri` on another host.
    Kubernetes,
    /// An OIDC provider's: this issuer's own URL, `jwks_uri` beside it.
    Oidc,
}

#[derive(Clone)]
struct IssuerState {
    jwks: Arc<Mutex<Value>>,
    jwks_hits: Arc<AtomicUsize>,
    discovery: DiscoveryMode,
    /// The issuer's own URL, once bound.
    url: Arc<std::sync::OnceLock<String>>,
}

/// An OIDC issuer like a Kubernetes API server's discovery endpoints (or, with
/// [`Issuer::start_oidc`], an OIDC provider's), over HTTPS with its own CA.
pub struct Issuer {
    pub url: String,
    pub ca: TestCa,
    jwks: Arc<Mutex<Value>>,
    jwks_hits: Arc<AtomicUsize>,
    handle: axum_server::Handle<SocketAddr>,
}

impl Issuer {
    /// Starts an issuer serving `keys`. With `discovery`, `/.well-known/openid-configuration`
    /// names a `jwks_uri` on another host (the server must re-base it onto `url`).
    pub async fn start(keys: Value, discovery: bool) -> Issuer {
        let mode = if discovery {
            DiscoveryMode::Kubernetes
        } else {
            DiscoveryMode::None
        };
        Self::start_mode(keys, mode).await
    }

    /// Starts an OIDC provider serving `keys`: its discovery document names its own URL as
    /// `issuer` (the `iss` of its tokens) and `{url}/openid/v1/jwks` as `jwks_uri`.
    pub async fn start_oidc(keys: Value) -> Issuer {
        Self::start_mode(keys, DiscoveryMode::Oidc).await
    }

    async fn start_mode(keys: Value, discovery: DiscoveryMode) -> Issuer {
        install_crypto();
        let ca = test_ca();
        let state = IssuerState {
            jwks: Arc::new(Mutex::new(keys)),
            jwks_hits: Arc::new(AtomicUsize::new(0)),
            discovery,
            url: Arc::new(std::sync::OnceLock::new()),
        };
        async fn discovery_doc(State(s): State<IssuerState>) -> axum::response::Response {
            use axum::response::IntoResponse;
            let own = s.url.get().cloned().unwrap_or_default();
            let (issuer, jwks_uri) = match s.discovery {
                DiscoveryMode::None => {
                    return axum::http::StatusCode::NOT_FOUND.into_response();
                }
                DiscoveryMode::Kubernetes => (
                    "https://kubernetes.default.svc.cluster.local".to_string(),
                    "https://10.0.0.1:6443/openid/v1/jwks".to_string(),
                ),
                DiscoveryMode::Oidc => (own.clone(), format!("{own}/openid/v1/jwks")),
            };
            axum::Json(json!({
                "issuer": issuer,
                "jwks_uri": jwks_uri,
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"]
            }))
            .into_response()
        }
        async fn jwks(State(s): State<IssuerState>) -> axum::Json<Value> {
            s.jwks_hits.fetch_add(1, Ordering::SeqCst);
            axum::Json(s.jwks.lock().unwrap().clone())
        }
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery_doc))
            .route("/openid/v1/jwks", get(jwks))
            .with_state(state.clone());
        let config = axum_server::tls_rustls::RustlsConfig::from_pem(
            ca.cert_pem.clone().into_bytes(),
            ca.key_pem.clone().into_bytes(),
        )
        .await
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = axum_server::Handle::new();
        let h = handle.clone();
        tokio::spawn(async move {
            axum_server::from_tcp_rustls(listener, config)
                .unwrap()
                .handle(h)
                .serve(app.into_make_service())
                .await
                .unwrap();
        });
        let url = format!("https://127.0.0.1:{}", addr.port());
        let _ = state.url.set(url.clone());
        Issuer {
            url,
            ca,
            jwks: state.jwks,
            jwks_hits: state.jwks_hits,
            handle,
        }
    }

    pub fn set_keys(&self, keys: Value) {
        *self.jwks.lock().unwrap() = keys;
    }

    pub fn jwks_hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }

    /// Stops answering (connections are refused from now on).
    pub fn stop(&self) {
        self.handle.shutdown();
    }
}

/// The `esi-server` binary, serving a temporary manifest directory over HTTPS.
pub struct Server {
    child: Child,
    pub url: String,
    pub manifests: PathBuf,
    pub policies: PathBuf,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the server on the files in `manifests` (name → YAML) and `policies`.
    pub fn start(manifests: &[(&str, String)], policies: &[(&str, &str)]) -> Server {
        Self::start_with_args(manifests, policies, &[])
    }

    pub fn start_with_args(
        manifests: &[(&str, String)],
        policies: &[(&str, &str)],
        extra: &[&str],
    ) -> Server {
        Self::start_with_log_filter(manifests, policies, extra, None)
    }

    /// As [`Server::start_with_args`], with `RUST_LOG` set to `rust_log` (default: the
    /// `ESI_TEST_LOG` variable, else `info`).
    pub fn start_with_log_filter(
        manifests: &[(&str, String)],
        policies: &[(&str, &str)],
        extra: &[&str],
        rust_log: Option<&str>,
    ) -> Server {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let mdir = dir.path().join("manifests");
        let pdir = dir.path().join("policies");
        std::fs::create_dir_all(&mdir).unwrap();
        std::fs::create_dir_all(&pdir).unwrap();
        for (name, text) in manifests {
            std::fs::write(mdir.join(name), text).unwrap();
        }
        for (name, text) in policies {
            std::fs::write(pdir.join(name), text).unwrap();
        }
        let mut cmd = Command::new(server_bin());
        cmd.arg("serve")
            .arg("--manifests")
            .arg(&mdir)
            .arg("--policies")
            .arg(&pdir);
        if let Some(filter) = rust_log {
            cmd.env("ESI_TEST_RUST_LOG", filter);
        }
        Self::launch(cmd, dir, extra)
    }

    /// Starts the server in Kubernetes mode on the API server of `kubeconfig` (a
    /// [`fake_kube::FakeKube`]'s), with `extra` flags.
    pub fn start_kubernetes(kubeconfig: &Path, extra: &[&str]) -> Server {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(server_bin());
        cmd.arg("serve")
            .arg("--kubernetes")
            .env("KUBECONFIG", kubeconfig)
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE");
        Self::launch(cmd, dir, extra)
    }

    fn launch(mut cmd: Command, dir: tempfile::TempDir, extra: &[&str]) -> Server {
        let mdir = dir.path().join("manifests");
        let pdir = dir.path().join("policies");
        // A filter of the test's own (ESI_TEST_RUST_LOG on the command), else the run's.
        let rust_log = cmd
            .get_envs()
            .find(|(k, _)| *k == "ESI_TEST_RUST_LOG")
            .and_then(|(_, v)| v)
            .map(|v| v.to_string_lossy().into_owned())
            .or_else(|| std::env::var("ESI_TEST_LOG").ok())
            .unwrap_or_else(|| "info".into());
        // Tests count requests and sync with the log by the per-request access line
        // (`esi::access`, debug), which a filter of the test's own may set otherwise.
        let rust_log = if rust_log.contains("esi::access") {
            rust_log
        } else {
            format!("{rust_log},esi::access=debug")
        };
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--reload-interval")
            .arg("200ms")
            .arg("--log-format")
            .arg("json")
            .args(extra)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start esi-server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let stderr = child.stderr.take().unwrap();
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if std::env::var("ESI_TEST_ECHO").is_ok() {
                        eprintln!("[esi-server] {line}");
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("esi-server listening on ") {
                        break rest.trim().to_string();
                    }
                }
                _ => {
                    let status = child.wait().ok();
                    panic!(
                        "esi-server exited before listening ({status:?}):\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let ca = std::fs::read(dir.path().join("data/tls/ca.crt")).unwrap();
        let client = client_trusting(&ca);
        Server {
            child,
            url,
            manifests: mdir,
            policies: pdir,
            client,
            _dir: dir,
            log,
        }
    }

    /// The server's process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CA that signed the server's (self-signed) certificate, PEM.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self._dir.path().join("data/tls/ca.crt")).unwrap()
    }

    /// Waits until the log reader has caught up with everything the server logged before
    /// now: makes a request and waits for the log line carrying its `x-request-id`. Call it
    /// before asserting on the logs right after a request (the reader runs on its own thread).
    pub async fn sync_logs(&self) {
        let resp = self
            .client
            .get(format!("{}/healthz", self.url))
            .send()
            .await
            .unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        self.wait_log(&id, 0).await;
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log has a line containing `needle` (count > `after` occurrences).
    pub async fn wait_log(&self, needle: &str, after: usize) {
        for _ in 0..100 {
            if self.count_log(needle) > after {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no log line with {needle:?}:\n{}", self.logs().join("\n"));
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.logs().iter().filter(|l| l.contains(needle)).count()
    }

    /// Replaces a manifest file and waits for the reload to be applied.
    pub async fn write_manifest(&self, name: &str, text: &str) {
        let before = self.count_log("configuration loaded");
        std::fs::write(self.manifests.join(name), text).unwrap();
        self.wait_log("configuration loaded", before).await;
    }

    pub async fn write_policy(&self, name: &str, text: &str) {
        let before = self.count_log("configuration loaded");
        std::fs::write(self.policies.join(name), text).unwrap();
        self.wait_log("configuration loaded", before).await;
    }

    /// POSTs `body` to `path` with `token`; returns status and body text.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, String) {
        let mut req = self
            .client
            .post(format!("{}{}", self.url, path))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .client
            .get(format!("{}{}", self.url, path))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `KubernetesFederation` `alpha` for `issuer`/`audience` whose keys are the static JWKS of
/// the fixture key `ec-1` (its URL is never fetched), ending with a newline.
pub fn static_federation(issuer: &str, audience: &str) -> String {
    let jwks = jwks(&["ec-1"]).to_string();
    format!(
        r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: KubernetesFederation
metadata: {{name: alpha}}
spec:
  url: https://127.0.0.1:9
  issuer: {issuer}
  audiences: ["{audience}"]
  jwks: '{jwks}'
"#
    )
}

/// An `OIDCFederation` `name` whose issuer is `issuer` (an [`Issuer::start_oidc`]; its CA
/// pinned), for audience `audience`, with `extra` YAML lines under `spec` (indented two
/// spaces, each ending with a newline).
pub fn oidc_federation(name: &str, issuer: &Issuer, audience: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: OIDCFederation
metadata: {{name: {name}}}
spec:
  issuer: {}
  audiences: ["{audience}"]
  caBundle: {}
{extra}"#,
        issuer.url,
        b64(&issuer.ca.ca_pem)
    )
}

/// A SPIFFE bundle (JWKS form) of the fixture keys `keys`, each `use: jwt-svid`, as
/// `spire-server bundle show -format spiffe` prints it (X.509 authorities left out).
pub fn spiffe_bundle(keys: &[&str]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| {
            let mut jwk = jwk(k);
            jwk["use"] = json!("jwt-svid");
            jwk
        })
        .collect();
    json!({"spiffe_sequence": 1, "spiffe_refresh_hint": 300, "keys": keys}).to_string()
}

/// A `SpiffeFederation` `name` of `trust_domain` for `audience` whose static bundle
/// ([`spiffe_bundle`]) holds the fixture keys `keys`, ending with a newline.
pub fn spiffe_federation(name: &str, trust_domain: &str, audience: &str, keys: &[&str]) -> String {
    format!(
        r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: SpiffeFederation
metadata: {{name: {name}}}
spec:
  trustDomain: {trust_domain}
  audiences: ["{audience}"]
  bundle: '{}'
"#,
        spiffe_bundle(keys)
    )
}

/// JWT-SVID claims for the SPIFFE ID `sub` and `audience`, as SPIRE mints them (no `iss`),
/// valid for five minutes.
pub fn svid_claims(sub: &str, audience: &str) -> Value {
    let now = now();
    json!({"sub": sub, "aud": [audience], "iat": now, "exp": now + 300})
}

/// An `Authorization` `app` (after a `---` line) for ServiceAccount `apps/app` of `issuer`
/// through the federation `alpha` of [`static_federation`], granting `grants`: YAML lines
/// under `spec` (indented two spaces, each ending with a newline).
pub fn app_authorization(issuer: &str, grants: &str) -> String {
    format!(
        r#"---
apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {{name: app}}
spec:
  federationRef: {{kind: KubernetesFederation, name: alpha}}
  subject: {{oidc: {{issuer: {issuer}, subject: "system:serviceaccount:apps:app"}}}}
{grants}"#
    )
}

/// A reqwest client that trusts only `ca_pem` (HTTP/1.1: no ALPN).
pub fn client_trusting(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_trusting(ca_pem))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A reqwest client that trusts only `ca_pem` and speaks HTTP/2 (ALPN `h2`).
pub fn h2_client_trusting(ca_pem: &[u8]) -> reqwest::Client {
    let mut tls = tls_trusting(ca_pem);
    tls.alpn_protocols = vec![b"h2".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A rustls client config that trusts only `ca_pem` (no ALPN).
pub fn tls_trusting(ca_pem: &[u8]) -> rustls::ClientConfig {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// OpenBao from `scripts/openbao.sh` (env), or None with a notice. With
/// `ESI_REQUIRE_BACKENDS=1` a missing OpenBao fails the test instead.
pub fn openbao() -> Option<(String, String)> {
    match (
        std::env::var("ESI_TEST_VAULT_ADDR"),
        std::env::var("ESI_TEST_VAULT_TOKEN"),
    ) {
        (Ok(a), Ok(t)) => Some((a, t)),
        _ => {
            if std::env::var("ESI_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                panic!(
                    "OpenBao is required (ESI_REQUIRE_BACKENDS=1) but ESI_TEST_VAULT_ADDR is not set"
                );
            }
            eprintln!(
                "skipped: OpenBao not running (run scripts/test.sh, or scripts/openbao.sh start)"
            );
            None
        }
    }
}

/// A Vault ClusterSecretStore `name` on OpenBao with the root token; `extra` adds
/// `path`/`version` lines (indented for `vault:`).
pub fn vault_store(name: &str, addr: &str, root: &str, extra: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Secret
metadata: {{name: vault-token-{name}, namespace: esi-system}}
stringData: {{token: "{root}"}}
---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: {name}}}
spec:
  provider:
    vault:
      server: {addr}
{extra}      auth:
        tokenSecretRef: {{name: vault-token-{name}, namespace: esi-system, key: token}}
"#
    )
}

/// Writes a KV v2 secret into OpenBao.
pub async fn vault_put(addr: &str, token: &str, mount: &str, key: &str, data: Value) {
    let resp = reqwest::Client::new()
        .post(format!("{addr}/v1/{mount}/data/{key}"))
        .header("X-Vault-Token", token)
        .json(&json!({ "data": data }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "vault put: {}", resp.status());
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}
