//! End to end: generators and the credential lifecycle, with the real `esi-server` over
//! HTTPS, the OpenBao started by `scripts/openbao.sh` and the PostgreSQL started by
//! `scripts/postgres.sh` (both from `scripts/test.sh`). Each test configures its own
//! OpenBao mounts (a `database` engine on that PostgreSQL, a `pki` engine).
//!
//! A credential from `VaultDynamicSecret` must log in to PostgreSQL, and stop logging in
//! once revoked: by DELETE, by the sweeper after expiry, by an owner revocation, and
//! after a `kill -9` and restart on the same `--data-dir`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fake_vault::FakeVault;
use common::*;
use serde_json::{Value, json};

const AUD: &str = "https://esi-federation.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";

/// PostgreSQL from `scripts/postgres.sh` (env), or None with a notice.
#[derive(Clone, Debug)]
struct Pg {
    port: String,
    user: String,
    password: String,
    psql: String,
}

fn postgres() -> Option<Pg> {
    let var = |k: &str| std::env::var(k).ok();
    match (
        var("ESI_TEST_PG_PORT"),
        var("ESI_TEST_PG_USER"),
        var("ESI_TEST_PG_PASSWORD"),
    ) {
        (Some(port), Some(user), Some(password)) => Some(Pg {
            port,
            user,
            password,
            psql: var("ESI_TEST_PSQL").unwrap_or_else(|| "psql".into()),
        }),
        _ => {
            if std::env::var("ESI_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                panic!(
                    "PostgreSQL is required (ESI_REQUIRE_BACKENDS=1) but ESI_TEST_PG_PORT is not set"
                );
            }
            eprintln!(
                "skipped: PostgreSQL not running (run scripts/test.sh, or scripts/postgres.sh start)"
            );
            None
        }
    }
}

/// OpenBao and PostgreSQL, or None (skipped) when either is missing.
fn backends() -> Option<((String, String), Pg)> {
    let bao = openbao()?;
    let pg = postgres()?;
    Some((bao, pg))
}

impl Pg {
    /// True when `username`/`password` log in (over loopback TCP, password auth).
    fn can_login(&self, username: &str, password: &str) -> bool {
        let out = Command::new(&self.psql)
            .args(["-h", "127.0.0.1", "-p", &self.port, "-U", username])
            .args(["-d", "postgres", "-w", "-tAc", "select current_user"])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .expect("run psql");
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == username
    }
}

/// A raw OpenBao API call with the root token.
async fn bao(addr: &str, token: &str, method: reqwest::Method, path: &str, body: Value) -> Value {
    install_crypto();
    let resp = reqwest::Client::new()
        .request(method, format!("{addr}/v1/{path}"))
        .header("X-Vault-Token", token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "openbao {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A `database` mount on the test PostgreSQL with a role `app` issuing login roles
/// that live `ttl`. Returns the mount path.
async fn database_mount(addr: &str, token: &str, pg: &Pg, ttl: &str) -> String {
    database_mount_capped(addr, token, pg, ttl, "2h").await
}

/// [`database_mount`] whose leases cannot be renewed past `max_ttl`.
async fn database_mount_capped(
    addr: &str,
    token: &str,
    pg: &Pg,
    ttl: &str,
    max_ttl: &str,
) -> String {
    use reqwest::Method;
    let mount = format!("db-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    bao(
        addr,
        token,
        Method::POST,
        &format!("sys/mounts/{mount}"),
        json!({"type": "database"}),
    )
    .await;
    bao(
        addr,
        token,
        Method::POST,
        &format!("{mount}/config/pg"),
        json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable", pg.port),
            "username": pg.user,
            "password": pg.password,
            "allowed_roles": "*",
        }),
    )
    .await;
    bao(
        addr,
        token,
        Method::POST,
        &format!("{mount}/roles/app"),
        json!({
            "db_name": "pg",
            "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
            // The role is granted nothing, so dropping it is the whole revocation. Without
            // this, OpenBao's default revocation also runs `REVOKE USAGE ON SCHEMA public`
            // and `REVOKE CONNECT ON DATABASE postgres`, which rewrite one shared catalog
            // row each: two mounts revoking at once (tests run in parallel against one
            // PostgreSQL) fail with "tuple concurrently updated", and a DELETE answers 503.
            "revocation_statements": ["DROP ROLE IF EXISTS \"{{name}}\";"],
            "default_ttl": ttl,
            "max_ttl": max_ttl,
        }),
    )
    .await;
    mount
}

/// A `pki` mount with a root CA and a role `web` for `*.example.com`. Returns the mount
/// path and the CA certificate (PEM).
async fn pki_mount(addr: &str, token: &str) -> (String, String) {
    use reqwest::Method;
    let mount = format!("pki-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    bao(
        addr,
        token,
        Method::POST,
        &format!("sys/mounts/{mount}"),
        json!({"type": "pki", "config": {"max_lease_ttl": "87600h"}}),
    )
    .await;
    let root = bao(
        addr,
        token,
        Method::POST,
        &format!("{mount}/root/generate/internal"),
        json!({"common_name": "esi test root", "ttl": "87600h"}),
    )
    .await;
    let ca = root["data"]["certificate"].as_str().unwrap().to_string();
    bao(
        addr,
        token,
        Method::POST,
        &format!("{mount}/roles/web"),
        json!({"allowed_domains": "example.com", "allow_subdomains": true, "max_ttl": "72h"}),
    )
    .await;
    (mount, ca)
}

/// The real server, started on a data directory that outlives it (restart tests).
/// Collects `child`'s stderr lines (echoed with `tag` when `ESI_TEST_ECHO` is set).
fn capture_stderr(child: &mut Child, tag: &'static str) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if std::env::var("ESI_TEST_ECHO").is_ok() {
                eprintln!("[{tag}] {line}");
            }
            sink.lock().unwrap().push(line);
        }
    });
    log
}

struct TestServer {
    child: Child,
    url: String,
    client: reqwest::Client,
    log: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    fn start(root: &Path, extra: &[&str]) -> TestServer {
        install_crypto();
        let mut child = Command::new(server_bin())
            .arg("serve")
            .arg("--manifests")
            .arg(root.join("manifests"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(root.join("data"))
            .args(["--reload-interval", "200ms", "--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start esi-server");
        let log = capture_stderr(&mut child, "esi-server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("esi-server listening on ") {
                        break rest.trim().to_string();
                    }
                }
                _ => panic!(
                    "esi-server exited before listening:\n{}",
                    log.lock().unwrap().join("\n")
                ),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let ca = std::fs::read(root.join("data/tls/ca.crt")).unwrap();
        TestServer {
            child,
            url,
            client: client_trusting(&ca),
            log,
        }
    }

    /// SIGKILL: no shutdown path runs.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Value,
    ) -> (u16, String) {
        self.call_for(method, path, token, None, body).await
    }

    /// A call, optionally on behalf of a workload (`x-workload-token`).
    async fn call_for(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        workload: Option<&str>,
        body: Value,
    ) -> (u16, String) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(&body);
        if let Some(w) = workload {
            req = req.header("x-workload-token", w);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn generate(&self, path: &str, token: &str) -> Value {
        let (status, body) = self
            .call(reqwest::Method::POST, path, token, json!({}))
            .await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The credential audit lines of `event` logged so far (after the log reader caught up
    /// with everything logged before this call: the log is written by a thread of its own).
    async fn audit_lines(&self, event: &str) -> Vec<Value> {
        let resp = self
            .client
            .get(format!("{}/healthz", self.url))
            .send()
            .await
            .unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        for _ in 0..200 {
            if self.log.lock().unwrap().iter().any(|l| l.contains(&id)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.audit_lines_now(event)
    }

    /// The credential audit lines of `event` the log reader has seen (for polling loops).
    fn audit_lines_now(&self, event: &str) -> Vec<Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "esi::audit" && v["event"] == event)
            .collect()
    }

    fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token(ns: &str, sa: &str) -> String {
    mint("ec-1", &sa_claims(ISS, AUD, ns, sa), None)
}

/// Federation (static keys), the Authorization of `apps/app` (and `apps/other`), an
/// admin who may revoke states in `apps`, and the generators.
fn manifests(root: &Path, generators: &str) {
    let dir = root.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let allowed = r#"
    - {name: db, kind: VaultDynamicSecret, namespace: apps}
    - {name: db-short, kind: VaultDynamicSecret, namespace: apps}
    - {name: pki, kind: VaultDynamicSecret, namespace: apps}
    - {name: pw, kind: Password, namespace: apps}
    - {name: ssh-ed, kind: SSHKey, namespace: apps}
    - {name: ssh-ec, kind: SSHKey, namespace: apps}
    - {name: cluster-pw, kind: ClusterGenerator, namespace: apps}"#;
    let mut text = static_federation(ISS, AUD);
    for (name, subject, extra) in [
        ("app", "system:serviceaccount:apps:app", ""),
        ("other", "system:serviceaccount:apps:other", ""),
        (
            "admin",
            "system:serviceaccount:ops:admin",
            "  allowedGeneratorStates: [{namespace: apps}]\n",
        ),
    ] {
        text.push_str(&format!(
            r#"---
apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {{name: {name}}}
spec:
  federationRef: {{kind: KubernetesFederation, name: alpha}}
  subject: {{oidc: {{issuer: {ISS}, subject: "{subject}"}}}}
  allowedGenerators:{allowed}
{extra}"#
        ));
    }
    std::fs::write(dir.join("base.yaml"), text).unwrap();
    std::fs::write(dir.join("generators.yaml"), generators).unwrap();
}

fn vault_generator(
    name: &str,
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    params: Value,
) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Secret
metadata: {{name: vault-token-{name}, namespace: apps}}
stringData: {{token: "{token}"}}
---
apiVersion: generators.external-secrets.io/v1alpha1
kind: VaultDynamicSecret
metadata: {{name: {name}, namespace: apps}}
spec:
  method: {method}
  path: {path}
  parameters: {params}
  resultType: Data
  provider:
    server: {addr}
    auth:
      tokenSecretRef: {{name: vault-token-{name}, key: token}}
"#
    )
}

fn creds(v: &Value) -> (String, String) {
    (
        v["username"].as_str().unwrap().to_string(),
        v["password"].as_str().unwrap().to_string(),
    )
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn database_credentials_are_revoked_by_delete_owner_and_sweeper() {
    let Some(((addr, root), pg)) = backends() else {
        return;
    };
    let long = database_mount(&addr, &root, &pg, "1h").await;
    let short = database_mount(&addr, &root, &pg, "4s").await;
    let dir = tempfile::tempdir().unwrap();
    manifests(
        dir.path(),
        &format!(
            "{}{}",
            vault_generator(
                "db",
                &addr,
                &root,
                "GET",
                &format!("{long}/creds/app"),
                json!({})
            ),
            vault_generator(
                "db-short",
                &addr,
                &root,
                "GET",
                &format!("/{short}/creds/app"),
                json!({})
            )
        ),
    );
    let server = TestServer::start(dir.path(), &["--sweep-interval", "1s"]);
    let app = token("apps", "app");
    let other = token("apps", "other");
    let admin = token("ops", "admin");
    let gen_path = "/generators/apps/VaultDynamicSecret/db";

    // Issued credentials log in; the answer is ESE's: a JSON object of strings.
    let (user, pass) = creds(&server.generate(gen_path, &app).await);
    assert!(pg.can_login(&user, &pass), "fresh credential must log in");
    assert!(!pg.can_login(&user, "wrong-password"));
    // Nothing of the lease leaks into the logs; the audit line carries its fingerprint.
    assert!(!server.logs().contains(&pass));
    assert!(
        !server.logs().contains(&format!("{long}/creds/app/")),
        "lease id logged"
    );
    let issued = server.audit_lines("issue").await;
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0]["pod"], "app-pod");
    assert_eq!(issued[0]["federation"], "alpha");
    assert_eq!(issued[0]["lease_id_hash"].as_str().unwrap().len(), 16);

    // Another workload's DELETE revokes only its own (nothing here).
    let (status, body) = server
        .call(reqwest::Method::DELETE, gen_path, &other, json!({}))
        .await;
    assert_eq!((status, body.as_str()), (200, "null"));
    assert!(
        pg.can_login(&user, &pass),
        "another caller's DELETE must not revoke mine"
    );

    // The caller's DELETE revokes at the backend.
    let (status, body) = server
        .call(reqwest::Method::DELETE, gen_path, &app, json!({}))
        .await;
    assert_eq!((status, body.as_str()), (200, "null"));
    assert!(
        !pg.can_login(&user, &pass),
        "revoked credential must not log in"
    );
    let revoked = server.audit_lines("revoke").await;
    assert!(
        revoked
            .iter()
            .any(|l| l["reason"] == "request" && l["outcome"] == "ok"),
        "{revoked:?}"
    );

    // An owner revocation by an Authorization with allowedGeneratorStates.
    let (user2, pass2) = creds(&server.generate(gen_path, &app).await);
    assert!(pg.can_login(&user2, &pass2));
    let revoke_body = json!({"owner": "app-pod", "namespace": "apps"});
    let (status, _) = server
        .call(
            reqwest::Method::POST,
            "/generators/apps/revoke",
            &app,
            revoke_body.clone(),
        )
        .await;
    assert_eq!(status, 404, "app has no allowedGeneratorStates");
    assert!(pg.can_login(&user2, &pass2));
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            "/generators/apps/revoke",
            &admin,
            revoke_body,
        )
        .await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#""GeneratorState deleted""#)
    );
    assert!(
        !pg.can_login(&user2, &pass2),
        "owner revocation must revoke"
    );

    // The sweeper revokes what expires.
    let (user3, pass3) = creds(
        &server
            .generate("/generators/apps/VaultDynamicSecret/db-short", &app)
            .await,
    );
    assert!(pg.can_login(&user3, &pass3));
    let swept = || {
        server
            .audit_lines_now("revoke")
            .iter()
            .any(|l| l["reason"] == "sweep" && l["outcome"] == "ok")
    };
    wait_until(
        "the sweeper revoked the expired lease",
        Duration::from_secs(30),
        swept,
    )
    .await;
    assert!(
        !pg.can_login(&user3, &pass3),
        "expired credential must not log in"
    );

    let metrics = server.metrics().await;
    assert!(
        metrics
            .contains(r#"esi_credentials_issued_total{kind="VaultDynamicSecret",outcome="ok"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"esi_credentials_revoked_total{kind="VaultDynamicSecret",outcome="ok"} 3"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ledger_survives_kill_and_restart() {
    let Some(((addr, root), pg)) = backends() else {
        return;
    };
    let mount = database_mount(&addr, &root, &pg, "1h").await;
    let dir = tempfile::tempdir().unwrap();
    manifests(
        dir.path(),
        &vault_generator(
            "db",
            &addr,
            &root,
            "GET",
            &format!("{mount}/creds/app"),
            json!({}),
        ),
    );
    let app = token("apps", "app");
    let gen_path = "/generators/apps/VaultDynamicSecret/db";
    let server = TestServer::start(dir.path(), &[]);
    let (user, pass) = creds(&server.generate(gen_path, &app).await);
    assert!(pg.can_login(&user, &pass));
    // Issued to another caller on behalf of the workload (ESE's x-workload-token): the
    // workload owns it.
    let (status, body) = server
        .call_for(
            reqwest::Method::POST,
            gen_path,
            &token("apps", "other"),
            Some(&app),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (user2, pass2) = creds(&serde_json::from_str(&body).unwrap());
    assert!(pg.can_login(&user2, &pass2));
    let issued = server.audit_lines("issue").await;
    assert_eq!(issued[1]["pod"], "app-pod");
    assert_eq!(
        issued[1]["requested_by"],
        "system:serviceaccount:apps:other"
    );
    server.kill9();

    let server = TestServer::start(dir.path(), &[]);
    let (status, body) = server
        .call(reqwest::Method::DELETE, gen_path, &app, json!({}))
        .await;
    assert_eq!((status, body.as_str()), (200, "null"));
    assert!(
        !pg.can_login(&user, &pass),
        "revocation after restart must work"
    );
    assert!(
        !pg.can_login(&user2, &pass2),
        "the workload's credential is revoked too"
    );
}

/// The lease ids OpenBao holds under `{mount}/creds/app/` (root token).
async fn leases(addr: &str, root: &str, mount: &str) -> Vec<String> {
    install_crypto();
    let resp = reqwest::Client::new()
        .request(
            reqwest::Method::from_bytes(b"LIST").unwrap(),
            format!("{addr}/v1/sys/leases/lookup/{mount}/creds/app/"),
        )
        .header("X-Vault-Token", root)
        .send()
        .await
        .unwrap();
    if resp.status() == 404 {
        return Vec::new();
    }
    let v: Value = resp.json().await.unwrap();
    v["data"]["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k.as_str())
                .map(|k| format!("{mount}/creds/app/{k}"))
                .collect()
        })
        .unwrap_or_default()
}

/// Seconds OpenBao says the lease has left.
async fn lease_ttl(addr: &str, root: &str, lease: &str) -> u64 {
    let v = bao(
        addr,
        root,
        reqwest::Method::PUT,
        "sys/leases/lookup",
        json!({ "lease_id": lease }),
    )
    .await;
    v["data"]["ttl"].as_u64().unwrap()
}

/// Issue 17: a credential's handle renews it (the lease's expiry moves at OpenBao and in the
/// ledger, across a server restart) and revokes exactly it; no other workload can use it.
#[tokio::test(flavor = "multi_thread")]
async fn credential_handles_renew_and_revoke_only_for_their_workload() {
    use base64::Engine;
    let Some(((addr, root), pg)) = backends() else {
        return;
    };
    let mount = database_mount(&addr, &root, &pg, "20s").await;
    let dir = tempfile::tempdir().unwrap();
    manifests(
        dir.path(),
        &format!(
            "{}---\napiVersion: generators.external-secrets.io/v1alpha1\nkind: Password\nmetadata: {{name: pw, namespace: apps}}\nspec: {{length: 12}}\n",
            vault_generator(
                "db",
                &addr,
                &root,
                "GET",
                &format!("{mount}/creds/app"),
                json!({}),
            )
        ),
    );
    let app = token("apps", "app");
    let server = TestServer::start(dir.path(), &[]);
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            "/v1/generators/apps/VaultDynamicSecret/db",
            &app,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let issued: Value = serde_json::from_str(&body).unwrap();
    let decode = |v: &Value| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let (user, pass) = (
        decode(&issued["data"]["username"]),
        decode(&issued["data"]["password"]),
    );
    assert!(pg.can_login(&user, &pass));
    let cred = &issued["credential"];
    let id = cred["id"].as_str().unwrap().to_string();
    assert_eq!(cred["renewable"], true, "{cred}");
    assert!(cred["leaseDuration"].as_u64().unwrap() <= 20, "{cred}");
    assert!(cred["expiresAt"].as_str().unwrap().ends_with('Z'), "{cred}");
    let lease = leases(&addr, &root, &mount).await;
    assert_eq!(lease.len(), 1, "{lease:?}");
    assert!(lease_ttl(&addr, &root, &lease[0]).await <= 20);

    // Renewed by an hour: OpenBao's lease and the answer agree.
    let renew = format!("/v1/credentials/{id}/renew");
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            &renew,
            &app,
            json!({"increment": 3600}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let renewed: Value = serde_json::from_str(&body).unwrap();
    assert!(
        renewed["credential"]["leaseDuration"].as_u64().unwrap() > 3000,
        "{body}"
    );
    assert!(lease_ttl(&addr, &root, &lease[0]).await > 3000);
    assert_eq!(server.audit_lines("renew").await.len(), 1);
    assert!(
        server.metrics().await.contains(
            "esi_credentials_renewed_total{kind=\"VaultDynamicSecret\",outcome=\"ok\"} 1"
        )
    );

    // Another workload (same namespace, another ServiceAccount; or the same ServiceAccount
    // without the Pod) cannot renew or revoke it, nor can a made-up handle be used.
    let mut no_pod = sa_claims(ISS, AUD, "apps", "app");
    no_pod["kubernetes.io"]
        .as_object_mut()
        .unwrap()
        .remove("pod");
    let no_pod = mint("ec-1", &no_pod, None);
    for (who, path) in [
        (token("apps", "other"), renew.clone()),
        (no_pod.clone(), renew.clone()),
        (
            app.clone(),
            "/v1/credentials/not-a-handle/renew".to_string(),
        ),
        (
            app.clone(),
            format!("/v1/credentials/{}/renew", uuid::Uuid::new_v4()),
        ),
    ] {
        let (status, body) = server
            .call(reqwest::Method::POST, &path, &who, json!({}))
            .await;
        assert_eq!(status, 404, "{path}: {body}");
        let (status, _) = server
            .call(
                reqwest::Method::DELETE,
                path.trim_end_matches("/renew"),
                &who,
                json!({}),
            )
            .await;
        assert_eq!(status, 404, "{path}");
    }
    assert!(pg.can_login(&user, &pass), "still live after refused calls");
    // A bad increment is refused before anything happens.
    let (status, _) = server
        .call(reqwest::Method::POST, &renew, &app, json!({"increment": 0}))
        .await;
    assert_eq!(status, 400);

    // A restart in between does not break renewal (the ledger is durable).
    server.kill9();
    let server = TestServer::start(dir.path(), &[]);
    let (status, body) = server
        .call(reqwest::Method::POST, &renew, &app, json!({}))
        .await;
    assert_eq!(status, 200, "{body}");

    // Revoked by its handle: the login role is gone, the handle names nothing any more.
    let (status, body) = server
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/credentials/{id}"),
            &app,
            json!({}),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(!pg.can_login(&user, &pass));
    assert!(leases(&addr, &root, &mount).await.is_empty());
    let (status, _) = server
        .call(reqwest::Method::POST, &renew, &app, json!({}))
        .await;
    assert_eq!(status, 404);

    // A credential nothing holds has no handle and is not renewable; the ESE call is as it was.
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            "/v1/generators/apps/Password/pw",
            &app,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let plain: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(plain["credential"], json!({"renewable": false}), "{body}");
    assert_eq!(decode(&plain["data"]["password"]).len(), 12);
    let ese = server.generate("/generators/apps/Password/pw", &app).await;
    assert_eq!(
        ese.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["password"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pki_certificate_verifies_against_the_mount_ca() {
    let Some((addr, root)) = openbao() else {
        return;
    };
    let (mount, ca_pem) = pki_mount(&addr, &root).await;
    let dir = tempfile::tempdir().unwrap();
    manifests(
        dir.path(),
        &vault_generator(
            "pki",
            &addr,
            &root,
            "POST",
            &format!("{mount}/issue/web"),
            json!({"common_name": "app.example.com", "ttl": "1h"}),
        ),
    );
    let server = TestServer::start(dir.path(), &[]);
    let out = server
        .generate(
            "/generators/apps/VaultDynamicSecret/pki",
            &token("apps", "app"),
        )
        .await;
    let cert = out["certificate"].as_str().unwrap();
    assert!(out["private_key"].as_str().unwrap().contains("PRIVATE KEY"));
    // Nested values come as JSON text, as ESO writes them.
    let chain: Vec<String> = serde_json::from_str(out["ca_chain"].as_str().unwrap()).unwrap();
    assert!(!chain.is_empty());

    assert!(
        verifies(cert, &ca_pem, "app.example.com"),
        "must verify against the mount CA"
    );
    assert!(
        !verifies(cert, &ca_pem, "other.example.org"),
        "name must be checked"
    );
    assert!(
        !verifies(cert, &test_ca().ca_pem, "app.example.com"),
        "a foreign CA must not verify"
    );
}

/// Verifies a leaf against a CA with rustls' webpki verifier.
fn verifies(cert_pem: &str, ca_pem: &str, name: &str) -> bool {
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    verifier
        .verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn password_sshkey_and_cluster_generator_outputs() {
    let dir = tempfile::tempdir().unwrap();
    manifests(
        dir.path(),
        r#"apiVersion: generators.external-secrets.io/v1alpha1
kind: Password
metadata: {name: pw, namespace: apps}
spec: {length: 32, digits: 6, symbols: 4, symbolCharacters: "-_", noUpper: false, allowRepeat: true}
---
apiVersion: generators.external-secrets.io/v1alpha1
kind: SSHKey
metadata: {name: ssh-ed, namespace: apps}
spec: {keyType: ed25519, comment: "app@apps"}
---
apiVersion: generators.external-secrets.io/v1alpha1
kind: SSHKey
metadata: {name: ssh-ec, namespace: apps}
spec: {keyType: ecdsa, keySize: 384}
---
apiVersion: generators.external-secrets.io/v1alpha1
kind: ClusterGenerator
metadata: {name: cluster-pw}
spec:
  kind: Password
  generator:
    passwordSpec: {length: 12, digits: 0, symbols: 0, noUpper: true, allowRepeat: true}
"#,
    );
    let server = TestServer::start(dir.path(), &[]);
    let app = token("apps", "app");

    let pw = server.generate("/generators/apps/Password/pw", &app).await;
    let pw = pw["password"].as_str().unwrap();
    assert_eq!(pw.chars().count(), 32);
    assert_eq!(pw.chars().filter(char::is_ascii_digit).count(), 6);
    assert_eq!(pw.chars().filter(|c| "-_".contains(*c)).count(), 4);
    assert_eq!(pw.chars().filter(char::is_ascii_alphabetic).count(), 22);

    let ed = server
        .generate("/generators/apps/SSHKey/ssh-ed", &app)
        .await;
    let private = ssh_key::PrivateKey::from_openssh(ed["privateKey"].as_str().unwrap()).unwrap();
    let public = ssh_key::PublicKey::from_openssh(ed["publicKey"].as_str().unwrap()).unwrap();
    assert_eq!(private.algorithm(), ssh_key::Algorithm::Ed25519);
    assert_eq!(private.public_key().key_data(), public.key_data());
    assert_eq!(public.comment(), "app@apps");

    let ec = server
        .generate("/generators/apps/SSHKey/ssh-ec", &app)
        .await;
    let private = ssh_key::PrivateKey::from_openssh(ec["privateKey"].as_str().unwrap()).unwrap();
    assert_eq!(
        private.algorithm(),
        ssh_key::Algorithm::Ecdsa {
            curve: ssh_key::EcdsaCurve::NistP384
        }
    );
    assert!(
        ec["publicKey"]
            .as_str()
            .unwrap()
            .starts_with("ecdsa-sha2-nistp384 ")
    );

    // A ClusterGenerator is found whatever namespace the (authorized) URL names.
    let cg = server
        .generate("/generators/apps/ClusterGenerator/cluster-pw", &app)
        .await;
    let cg = cg["password"].as_str().unwrap();
    assert_eq!(cg.len(), 12);
    assert!(cg.chars().all(|c| c.is_ascii_lowercase()));
    let (status, _) = server
        .call(
            reqwest::Method::POST,
            "/generators/other/ClusterGenerator/cluster-pw",
            &app,
            json!({}),
        )
        .await;
    // A ClusterGenerator has one identity: the namespace a URL names changes nothing,
    // neither widening nor narrowing what the caller is granted.
    assert_eq!(status, 200, "one identity whatever the URL's namespace");

    // Nothing revocable was issued: DELETE answers ESE's `null`, and the ledger is empty.
    let (status, body) = server
        .call(
            reqwest::Method::DELETE,
            "/generators/apps/Password/pw",
            &app,
            json!({}),
        )
        .await;
    assert_eq!((status, body.as_str()), (200, "null"));
    // Five issues: four generators, and the ClusterGenerator again under another URL namespace.
    assert_eq!(server.audit_lines("issue").await.len(), 5);
    assert!(
        server
            .audit_lines("issue")
            .await
            .iter()
            .all(|l| l["lease_id_hash"] == "")
    );
}

/// Issue 19, finding 10: a ServiceAccount named like another workload's pod is another
/// owner. SA `app-pod` (no pod claim) must not revoke what SA `app` in Pod `app-pod`
/// was issued, nor the reverse; ESE's revoke-states `owner` keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_account_named_like_a_pod_revokes_only_its_own() {
    let vault = FakeVault::start().await;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = jwks(&["ec-1"]).to_string();
    let mut text = format!(
        "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: KubernetesFederation\nmetadata: {{name: alpha}}\nspec:\n  url: https://127.0.0.1:9\n  issuer: {ISS}\n  audiences: [\"{AUD}\"]\n  jwks: '{jwks}'\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: vault-token, namespace: apps}}\nstringData: {{token: t}}\n---\napiVersion: generators.external-secrets.io/v1alpha1\nkind: VaultDynamicSecret\nmetadata: {{name: creds, namespace: apps}}\nspec:\n  method: POST\n  path: fake/creds\n  provider:\n    server: {}\n    auth:\n      tokenSecretRef: {{name: vault-token, key: token}}\n",
        vault.url
    );
    for (name, subject, extra) in [
        ("app", "system:serviceaccount:apps:app", ""),
        ("app-pod", "system:serviceaccount:apps:app-pod", ""),
        (
            "admin",
            "system:serviceaccount:ops:admin",
            "  allowedGeneratorStates: [{namespace: apps}]\n",
        ),
    ] {
        text.push_str(&format!(
            "---\napiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {{name: {name}}}\nspec:\n  federationRef: {{kind: KubernetesFederation, name: alpha}}\n  subject: {{oidc: {{issuer: {ISS}, subject: \"{subject}\"}}}}\n  allowedGenerators:\n    - {{name: creds, kind: VaultDynamicSecret, namespace: apps}}\n{extra}"
        ));
    }
    std::fs::write(dir.join("all.yaml"), text).unwrap();
    let server = TestServer::start(root.path(), &[]);

    // SA `app` in Pod `app-pod` (sa_claims adds the pod claim `<sa>-pod`).
    let in_pod = token("apps", "app");
    // SA `app-pod`, not pod-bound.
    let mut claims = sa_claims(ISS, AUD, "apps", "app-pod");
    claims["kubernetes.io"]
        .as_object_mut()
        .unwrap()
        .remove("pod");
    let sa_only = mint("ec-1", &claims, None);
    let admin = token("ops", "admin");
    let path = "/generators/apps/VaultDynamicSecret/creds";
    let lease = |v: &Value| format!("fake/creds/{}", &v["username"].as_str().unwrap()[5..]);

    let pod_cred = server.generate(path, &in_pod).await;
    let sa_cred = server.generate(path, &sa_only).await;

    // The ServiceAccount's DELETE revokes its own credential only.
    let (status, body) = server
        .call(reqwest::Method::DELETE, path, &sa_only, json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(vault.revoked(), vec![lease(&sa_cred)], "{}", server.logs());
    // And the pod's DELETE revokes the pod's only (nothing of the SA's is left anyway).
    let sa_cred2 = server.generate(path, &sa_only).await;
    let (status, _) = server
        .call(reqwest::Method::DELETE, path, &in_pod, json!({}))
        .await;
    assert_eq!(status, 200);
    let mut want = vec![lease(&sa_cred), lease(&pod_cred)];
    want.sort();
    assert_eq!(vault.revoked(), want);

    // ESE's revoke-states: `pod/<name>` and `serviceaccount/<name>` select one owner;
    // the plain name (ESE's form) both.
    let pod_cred2 = server.generate(path, &in_pod).await;
    let revoke = |owner: &str| json!({"owner": owner, "namespace": "apps"});
    let (status, _) = server
        .call(
            reqwest::Method::POST,
            "/generators/apps/revoke",
            &admin,
            revoke("pod/app-pod"),
        )
        .await;
    assert_eq!(status, 200);
    assert!(vault.revoked().contains(&lease(&pod_cred2)));
    assert!(!vault.revoked().contains(&lease(&sa_cred2)));
    let pod_cred3 = server.generate(path, &in_pod).await;
    let (status, _) = server
        .call(
            reqwest::Method::POST,
            "/generators/apps/revoke",
            &admin,
            revoke("app-pod"),
        )
        .await;
    assert_eq!(status, 200);
    let revoked = vault.revoked();
    assert!(revoked.contains(&lease(&sa_cred2)) && revoked.contains(&lease(&pod_cred3)));
    assert_eq!(revoked.len(), 5);
}

/// An `esi-cli` process talking to a [`TestServer`] as the workload `apps/app`.
struct CliProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl CliProcess {
    fn start(server: &TestServer, root: &Path, args: &[String]) -> CliProcess {
        let token_file = root.join("sa-token");
        std::fs::write(&token_file, token("apps", "app")).unwrap();
        let mut child = Command::new(cli_bin())
            .arg(format!("--federated-server-url={}", server.url))
            .arg(format!("--federated-token={}", token_file.display()))
            .arg(format!(
                "--federated-ca-crt={}",
                root.join("data/tls/ca.crt").display()
            ))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start esi-cli");
        let log = capture_stderr(&mut child, "esi-cli");
        CliProcess { child, log }
    }

    fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Runs to its end (init mode) within `limit`.
    async fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "esi-cli still running:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then its exit.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: a plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        self.wait(Duration::from_secs(20)).await
    }
}

impl Drop for CliProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `esi-cli` daemon for the `db` generator writing its credential to `out/db.yaml`
/// under `root`, with `extra` flags.
fn daemon(server: &TestServer, root: &Path, extra: &[&str]) -> (CliProcess, std::path::PathBuf) {
    let out = root.join("out/db.yaml");
    let mut args: Vec<String> = vec![
        "--mode=daemon".into(),
        "--federated-generators=apps/VaultDynamicSecret/db".into(),
        format!("--inject-on-file={}=db", out.display()),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    (CliProcess::start(server, root, &args), out)
}

/// `username: …` and `password: …` of a whole-secret YAML file (one file, so both halves
/// always belong to one credential).
fn read_creds(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_saphyr::from_str(&text).ok()?;
    Some((
        v["username"].as_str()?.to_string(),
        v["password"].as_str()?.to_string(),
    ))
}

async fn wait_for_file(path: &Path, cli: &CliProcess) -> (String, String) {
    for _ in 0..200 {
        if let Some(c) = read_creds(path) {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} never written:\n{}", path.display(), cli.logs());
}

/// The setup of the daemon tests: OpenBao's `database` role on the test PostgreSQL with
/// leases of `ttl` (renewable up to `max_ttl`), the `db` generator on it, and a server.
struct Role {
    addr: String,
    root: String,
    pg: Pg,
    mount: String,
    dir: tempfile::TempDir,
    server: TestServer,
}

impl Role {
    async fn start(ttl: &str, max_ttl: &str) -> Option<Role> {
        let ((addr, root), pg) = backends()?;
        let mount = database_mount_capped(&addr, &root, &pg, ttl, max_ttl).await;
        let dir = tempfile::tempdir().unwrap();
        manifests(
            dir.path(),
            &vault_generator(
                "db",
                &addr,
                &root,
                "GET",
                &format!("{mount}/creds/app"),
                json!({}),
            ),
        );
        let server = TestServer::start(dir.path(), &[]);
        Some(Role {
            addr,
            root,
            pg,
            mount,
            dir,
            server,
        })
    }
}

/// Issue 17: a daemon refreshing every 2 s holds exactly one database login, renewed
/// past its 6 s TTL again and again (not re-issued), and revoked at SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn daemon_renews_one_credential_and_revokes_it_at_exit() {
    let Some(role) = Role::start("6s", "2h").await else {
        return;
    };
    let Role {
        addr,
        root,
        pg,
        mount,
        dir,
        server,
    } = role;
    let (mut cli, out) = daemon(&server, dir.path(), &["--daemon-refresh-interval=2s"]);
    let (user, pass) = wait_for_file(&out, &cli).await;
    let first = leases(&addr, &root, &mount).await;
    assert_eq!(first.len(), 1, "{first:?}");
    // Three TTLs: the one credential stays, live and alone.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(18) {
        assert_eq!(leases(&addr, &root, &mount).await, first, "{}", cli.logs());
        assert_eq!(read_creds(&out), Some((user.clone(), pass.clone())));
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert!(pg.can_login(&user, &pass), "{}", cli.logs());
    assert!(lease_ttl(&addr, &root, &first[0]).await > 0);
    let renewals = server.audit_lines("renew").await;
    assert!(
        renewals.len() >= 3,
        "{} renewals:\n{}",
        renewals.len(),
        cli.logs()
    );
    assert_eq!(server.audit_lines("issue").await.len(), 1);

    let status = cli.terminate().await;
    assert!(status.success(), "{status:?}\n{}", cli.logs());
    assert!(
        leases(&addr, &root, &mount).await.is_empty(),
        "{}",
        cli.logs()
    );
    assert!(!pg.can_login(&user, &pass));
}

/// Issue 17: at the maximum TTL the daemon rotates: the file always holds a credential that
/// logs in (checked every 200 ms across two rotations), and each old one is revoked by the
/// daemon after the grace (before its own maximum TTL would end it).
#[tokio::test(flavor = "multi_thread")]
async fn rotation_at_the_maximum_ttl_never_leaves_the_file_without_a_working_login() {
    let Some(role) = Role::start("4s", "12s").await else {
        return;
    };
    let Role {
        addr,
        root,
        pg,
        mount,
        dir,
        server,
    } = role;
    let (mut cli, out) = daemon(
        &server,
        dir.path(),
        &[
            "--daemon-refresh-interval=1m",
            // Renewals at 2, 4, 6, 8 s; at 10 s only 2 s are granted, so the credential is
            // replaced at 11 s and the old one revoked by the daemon at 11.5 s, before its
            // maximum TTL would end it at 12 s.
            "--renewal-percent=50",
            "--rotation-grace=500ms",
        ],
    );
    let mut seen: Vec<(String, String)> = vec![wait_for_file(&out, &cli).await];
    let start = std::time::Instant::now();
    while seen.len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "fewer than two rotations:\n{}",
            cli.logs()
        );
        let current = read_creds(&out).unwrap();
        assert!(
            pg.can_login(&current.0, &current.1),
            "the file's credential does not log in:\n{}",
            cli.logs()
        );
        if seen.last() != Some(&current) {
            seen.push(current);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Rotated-out credentials are gone once their grace has passed; at most the current one
    // and one in its grace are live.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Each rotated-out credential was revoked by the daemon (a request), not left to lapse.
    let by_request = server
        .audit_lines("revoke")
        .await
        .into_iter()
        .filter(|l| l["reason"] == "request" && l["outcome"] == "ok")
        .count();
    assert!(
        by_request >= 2,
        "{by_request} revoked by request:\n{}",
        cli.logs()
    );
    assert!(!pg.can_login(&seen[0].0, &seen[0].1));
    assert!(leases(&addr, &root, &mount).await.len() <= 2);
    assert!(server.audit_lines("renew").await.len() >= 2);
    cli.terminate().await;
    assert!(
        leases(&addr, &root, &mount).await.is_empty(),
        "{}",
        cli.logs()
    );
}

/// Issue 17, init mode: the init step writes handles (never values) for the daemon sidecar,
/// which renews them past their TTL and revokes them when stopped.
#[tokio::test(flavor = "multi_thread")]
async fn init_hands_credentials_to_the_daemon_which_renews_and_revokes_them() {
    let Some(role) = Role::start("6s", "2h").await else {
        return;
    };
    let Role {
        addr,
        root,
        pg,
        mount,
        dir,
        server,
    } = role;
    let handles = dir.path().join("shared/handles.json");
    let out = dir.path().join("out/db.yaml");
    // An init that cannot have everything hands nothing over and gives back what it issued.
    let mut failed = CliProcess::start(
        &server,
        dir.path(),
        &[
            "--mode=init".into(),
            "--federated-generators=apps/VaultDynamicSecret/db,apps/Password/not-granted".into(),
            format!(
                "--inject-on-file={}=db,{}=not-granted",
                out.display(),
                dir.path().join("out/pw.yaml").display()
            ),
            format!("--credentials-file={}", handles.display()),
            "--timeout=5s".into(),
        ],
    );
    let status = failed.wait(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1), "{}", failed.logs());
    assert!(!handles.exists() && !out.exists());
    assert!(
        leases(&addr, &root, &mount).await.is_empty(),
        "{}",
        failed.logs()
    );
    assert_eq!(server.audit_lines("revoke").await.len(), 1);
    let mut init = CliProcess::start(
        &server,
        dir.path(),
        &[
            "--mode=init".into(),
            "--federated-generators=apps/VaultDynamicSecret/db".into(),
            format!("--inject-on-file={}=db", out.display()),
            format!("--credentials-file={}", handles.display()),
        ],
    );
    let status = init.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "{}", init.logs());
    let (user, pass) = read_creds(&out).unwrap();
    let text = std::fs::read_to_string(&handles).unwrap();
    assert!(!text.contains(&pass) && !text.contains(&user), "{text}");
    let file: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(file["credentials"].as_array().unwrap().len(), 1, "{text}");

    let mut daemon = CliProcess::start(
        &server,
        dir.path(),
        &[
            "--mode=daemon".into(),
            format!("--credentials-file={}", handles.display()),
        ],
    );
    // Twice the TTL later, still live: the sidecar renewed it.
    tokio::time::sleep(Duration::from_secs(13)).await;
    assert!(pg.can_login(&user, &pass), "{}", daemon.logs());
    assert_eq!(leases(&addr, &root, &mount).await.len(), 1);
    assert!(
        server.audit_lines("renew").await.len() >= 2,
        "{}",
        daemon.logs()
    );
    let status = daemon.terminate().await;
    assert!(status.success(), "{}", daemon.logs());
    assert!(!pg.can_login(&user, &pass), "{}", daemon.logs());
    assert!(leases(&addr, &root, &mount).await.is_empty());
}

/// Measurement for issue 17's closing note (not run by the suite: it takes ten minutes):
/// `ESI_MEASURE_SECONDS=600 scripts/test.sh --test e2e_generators measure_ -- --ignored
/// --nocapture`. A daemon at a 2 s refresh against a 60 s database role; every 10 s it
/// counts the role's live leases (never more than the one held), and at the end prints the
/// backend calls the server made for it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a ten-minute measurement, run by hand"]
async fn measure_live_credentials_of_a_daemon() {
    let seconds: u64 = std::env::var("ESI_MEASURE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let Some(role) = Role::start("60s", "2h").await else {
        return;
    };
    let Role {
        addr,
        root,
        mount,
        dir,
        server,
        ..
    } = role;
    let (mut cli, out) = daemon(&server, dir.path(), &["--daemon-refresh-interval=2s"]);
    wait_for_file(&out, &cli).await;
    let start = std::time::Instant::now();
    let mut most = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        let live = leases(&addr, &root, &mount).await.len();
        most = most.max(live);
        assert_eq!(live, 1, "{}", cli.logs());
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let issued = server.audit_lines("issue").await.len();
    let renewed = server.audit_lines("renew").await.len();
    let per_hour = |n: usize| n as f64 * 3600.0 / seconds as f64;
    eprintln!(
        "over {seconds} s: at most {most} live credential(s); backend calls: {issued} issue(s), {renewed} renewal(s) = {:.0}/h (a re-issue every 2 s round: {:.0}/h)",
        per_hour(issued + renewed),
        3600.0 / 2.0
    );
    cli.terminate().await;
    assert!(leases(&addr, &root, &mount).await.is_empty());
}

/// Issue 17's own case: a `VaultDynamicSecret` issuing OpenBao tokens (`auth/token/create`,
/// `resultType: Auth`). The handle renews the token through its accessor (its TTL moves at
/// OpenBao) and revokes exactly it.
#[tokio::test(flavor = "multi_thread")]
async fn token_credentials_renew_and_revoke_by_accessor() {
    let Some((addr, root)) = openbao() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    manifests(
        dir.path(),
        &format!(
            r#"---
apiVersion: v1
kind: Secret
metadata: {{name: vault-token-db, namespace: apps}}
stringData: {{token: "{root}"}}
---
apiVersion: generators.external-secrets.io/v1alpha1
kind: VaultDynamicSecret
metadata: {{name: db, namespace: apps}}
spec:
  method: POST
  path: auth/token/create
  parameters: {{ttl: "30s", policies: [default], no_parent: true}}
  resultType: Auth
  provider:
    server: {addr}
    auth:
      tokenSecretRef: {{name: vault-token-db, key: token}}
"#
        ),
    );
    let app = token("apps", "app");
    let server = TestServer::start(dir.path(), &[]);
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            "/v1/generators/apps/VaultDynamicSecret/db",
            &app,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let issued: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(issued["credential"]["renewable"], true, "{body}");
    assert!(issued["credential"]["leaseDuration"].as_u64().unwrap() <= 30);
    let accessor = {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(issued["data"]["accessor"].as_str().unwrap())
            .unwrap();
        String::from_utf8(raw).unwrap()
    };
    let lookup = || async {
        install_crypto();
        reqwest::Client::new()
            .post(format!("{addr}/v1/auth/token/lookup-accessor"))
            .header("X-Vault-Token", &root)
            .json(&json!({ "accessor": accessor }))
            .send()
            .await
            .unwrap()
    };
    let ttl = |v: Value| v["data"]["ttl"].as_u64().unwrap();
    assert!(ttl(lookup().await.json().await.unwrap()) <= 30);

    let id = issued["credential"]["id"].as_str().unwrap();
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/credentials/{id}/renew"),
            &app,
            json!({"increment": 3600}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(ttl(lookup().await.json().await.unwrap()) > 3000);

    let (status, body) = server
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/credentials/{id}"),
            &app,
            json!({}),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    // The accessor (and its token) is gone.
    assert!(!lookup().await.status().is_success());
}

/// Issue 10 (several replicas outside Kubernetes): two servers on one PostgreSQL ledger. A
/// credential issued by one is renewed and revoked through the other. The second reaches
/// the database over TLS (`sslmode=verify-full` by the CA file, the suite's server speaks
/// TLS), the first over plain loopback.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_a_postgres_ledger() {
    use base64::Engine;
    let Some(((addr, root), pg)) = backends() else {
        return;
    };
    let db = format!("esi_replicas_{}", uuid::Uuid::new_v4().simple());
    let created = Command::new(&pg.psql)
        .args(["-h", "127.0.0.1", "-p", &pg.port, "-U", &pg.user])
        .args([
            "-d",
            "postgres",
            "-w",
            "-c",
            &format!("CREATE DATABASE {db}"),
        ])
        .env("PGPASSWORD", &pg.password)
        .output()
        .expect("run psql");
    assert!(created.status.success(), "{created:?}");
    let ledger = format!(
        "--ledger-url=postgresql://{}:{}@127.0.0.1:{}/{db}",
        pg.user, pg.password, pg.port
    );
    let mount = database_mount(&addr, &root, &pg, "1h").await;
    let generators = vault_generator(
        "db",
        &addr,
        &root,
        "GET",
        &format!("{mount}/creds/app"),
        json!({}),
    );
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    manifests(dir_a.path(), &generators);
    manifests(dir_b.path(), &generators);
    let ca = std::env::var("ESI_TEST_PG_CA").expect("ESI_TEST_PG_CA (scripts/postgres.sh)");
    let ledger_tls = format!(
        "--ledger-url=postgresql://{}:{}@localhost:{}/{db}?sslrootcert={ca}",
        pg.user, pg.password, pg.port
    );
    let a = TestServer::start(dir_a.path(), &[&ledger]);
    let b = TestServer::start(dir_b.path(), &[&ledger_tls]);
    assert!(!a.logs().contains(&pg.password) && !b.logs().contains(&pg.password));
    assert!(a.logs().contains(r#""tls":"disable""#), "{}", a.logs());
    assert!(b.logs().contains(r#""tls":"verify-full""#), "{}", b.logs());
    let app = token("apps", "app");

    let (status, body) = a
        .call(
            reqwest::Method::POST,
            "/v1/generators/apps/VaultDynamicSecret/db",
            &app,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let issued: Value = serde_json::from_str(&body).unwrap();
    let text = |k: &str| {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(issued["data"][k].as_str().unwrap())
            .unwrap();
        String::from_utf8(raw).unwrap()
    };
    let (user, pass) = (text("username"), text("password"));
    assert!(pg.can_login(&user, &pass));
    let id = issued["credential"]["id"].as_str().unwrap();
    let (status, body) = b
        .call(
            reqwest::Method::POST,
            &format!("/v1/credentials/{id}/renew"),
            &app,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "renewed through the other replica: {body}");
    // ESE's DELETE on the other replica revokes it.
    let (status, body) = b
        .call(
            reqwest::Method::DELETE,
            "/generators/apps/VaultDynamicSecret/db",
            &app,
            json!({}),
        )
        .await;
    assert_eq!((status, body.as_str()), (200, "null"));
    assert!(!pg.can_login(&user, &pass));
    assert_eq!(a.audit_lines("issue").await.len(), 1);
    assert_eq!(b.audit_lines("revoke").await.len(), 1);
}
