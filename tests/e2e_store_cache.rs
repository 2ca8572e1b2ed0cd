//! The store cache and backend resilience (issue 14), end to end: the real `esi-server`
//! over HTTPS in front of an OpenBao of the test's own (started from the binary that
//! `scripts/openbao.sh` installed, `ESI_TEST_BAO_BIN`), so that it can be paused, killed
//! and restarted without disturbing other tests, and so that its backend reads can be
//! counted where they happen: in its file audit device.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const AUD: &str = "https://esi-federation.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";
const ROOT: &str = "esi-cache-test-root";

fn token() -> String {
    mint("ec-1", &sa_claims(ISS, AUD, "apps", "app"), None)
}

/// An OpenBao dev server of this test, with a file audit device.
struct Bao {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Bao {
    /// The binary from `scripts/openbao.sh`, or None (skipped) without it.
    fn bin() -> Option<PathBuf> {
        match std::env::var_os("ESI_TEST_BAO_BIN") {
            Some(b) => Some(PathBuf::from(b)),
            None => {
                if std::env::var("ESI_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                    panic!("ESI_REQUIRE_BACKENDS=1 but ESI_TEST_BAO_BIN is not set");
                }
                eprintln!("skipped: no OpenBao binary (run scripts/test.sh)");
                None
            }
        }
    }

    async fn start() -> Option<Bao> {
        let bin = Self::bin()?;
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut bao = Bao {
            bin,
            dir,
            port,
            child: None,
        };
        bao.launch().await;
        Some(bao)
    }

    fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// Starts (or restarts, on the same port) the dev server: in memory, so empty.
    async fn launch(&mut self) {
        let config = self.dir.path().join("audit.hcl");
        std::fs::write(
            &config,
            format!(
                "audit \"file\" \"counting\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                self.audit_log().display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.path().join("bao.log")).unwrap();
        let child = Command::new(&self.bin)
            .arg("server")
            .arg("-dev")
            .arg("-dev-no-store-token")
            .arg(format!("-dev-root-token-id={ROOT}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port))
            .arg(format!("-config={}", config.display()))
            .env("HOME", self.dir.path())
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start bao");
        self.child = Some(child);
        let health = format!("{}/v1/sys/health", self.addr());
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(&health).await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("bao did not become healthy");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Stops answering without closing connections (the process is frozen).
    fn pause(&self) {
        self.signal("-STOP");
    }

    /// Waits (at most 10 s) until OpenBao no longer answers its health endpoint within
    /// 300 ms: the freeze has taken effect before anything is asserted about it.
    async fn wait_until_unresponsive(&self) {
        let probe = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let health = format!("{}/v1/sys/health", self.addr());
        for _ in 0..30 {
            if probe.get(&health).send().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("OpenBao still answers after SIGSTOP");
    }

    fn resume(&self) {
        self.signal("-CONT");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn put(&self, key: &str, data: Value) {
        vault_put(&self.addr(), ROOT, "secret", key, data).await;
    }

    /// Reads of `secret/data/<key>` OpenBao answered (its audit device's response lines).
    fn reads(&self, key: &str) -> usize {
        let path = format!("secret/data/{key}");
        std::fs::read_to_string(self.audit_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                v["type"] == "response"
                    && v["request"]["path"] == path.as_str()
                    && v["request"]["operation"] == "read"
            })
            .count()
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen process must be thawed to die cleanly.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// A Vault ClusterSecretStore `name` on `addr` (KV v2 at `secret`, the root token), with
/// `cache` lines (indented for `spec:`) when given.
fn bao_store(name: &str, addr: &str, cache: &str) -> String {
    vault_store(name, addr, ROOT, "      path: secret\n      version: v2\n") + cache
}

fn manifests(stores: &[&str], body: &str) -> String {
    let list = stores
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    static_federation(ISS, AUD)
        + &app_authorization(ISS, &format!("  allowedClusterSecretStores: [{list}]\n"))
        + body
}

struct Answer {
    status: u16,
    age: Option<u64>,
    warning: Option<String>,
    body: String,
    elapsed: Duration,
}

async fn get(client: &reqwest::Client, server: &Server, store: &str, key: &str) -> Answer {
    let start = Instant::now();
    let resp = client
        .post(format!("{}/v1/secretstore/{store}/get", server.url))
        .bearer_auth(token())
        .json(&json!({"remoteRef": {"key": key, "property": "password"}}))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let age = resp
        .headers()
        .get("age")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let warning = resp
        .headers()
        .get("warning")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.text().await.unwrap();
    Answer {
        status,
        age,
        warning,
        body,
        elapsed: start.elapsed(),
    }
}

fn value(a: &Answer) -> String {
    use base64::Engine;
    assert_eq!(a.status, 200, "{}", a.body);
    let v: Value = serde_json::from_str(&a.body).unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
}

/// The value of the metric line that starts with `name{` and contains every `labels` item.
fn metric(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// 1,000 concurrent requests for one cold key make one read at OpenBao; the others wait
/// for it (or hit); TTL expiry reads again; a failure is not cached; a forbid applies to
/// a cached value; a changed store starts with an empty cache; a bad `spec.cache` is
/// refused at load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue14_cache_coalesces_expires_and_sits_after_the_decision() {
    install_crypto();
    let Some(bao) = Bao::start().await else {
        return;
    };
    bao.put("hot", json!({"password": "hot-v1"})).await;
    bao.put("long", json!({"password": "long-v1"})).await;
    let addr = bao.addr();
    let stores = bao_store("bao-cached", &addr, "  cache: {ttl: 2s}\n")
        + &bao_store(
            "bao-long",
            &addr,
            "  cache: {ttl: 5m, maxEntries: 100, maxBytes: 1Mi}\n",
        )
        + &bao_store("bao-bad", &addr, "  cache: {ttl: 2h}\n");
    let server = Server::start_with_args(
        &[(
            "all.yaml",
            manifests(&["bao-cached", "bao-long", "bao-bad"], &stores),
        )],
        &[],
        &[
            "--rate-limit-per-source",
            "0",
            "--rate-limit-per-identity",
            "0",
            "--max-concurrent-requests",
            "2048",
            "--max-concurrent-requests-per-source",
            "2048",
            "--http2-max-concurrent-streams",
            "1024",
        ],
    );
    server
        .wait_log(
            "store bao-bad: invalid spec.cache: ttl must be more than 0 and at most 1h",
            0,
        )
        .await;
    let client = h2_client_trusting(&server.ca_pem());

    // 1,000 at once on a cold key, while OpenBao is frozen so they all pile up on the
    // one read; then OpenBao answers it.
    bao.pause();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let client = client.clone();
            let url = server.url.clone();
            tokio::spawn(async move {
                let resp = client
                    .post(format!("{url}/v1/secretstore/bao-cached/get"))
                    .bearer_auth(token())
                    .json(&json!({"remoteRef": {"key": "hot", "property": "password"}}))
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .expect("request");
                let age = resp.headers().contains_key("age");
                (resp.status().as_u16(), age, resp.text().await.unwrap())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    bao.resume();
    let mut with_age = 0;
    for t in tasks {
        let (status, age, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&base64_of("hot-v1")), "{body}");
        with_age += usize::from(age);
    }
    assert_eq!(bao.reads("hot"), 1, "one backend read for 1,000 requests");
    assert_eq!(
        with_age, 999,
        "every answer but the reader's carries an Age"
    );
    let (_, metrics) = server.get("/metrics").await;
    let outcome = |o: &str| {
        metric(
            &metrics,
            "esi_store_cache_requests_total",
            &["store=\"bao-cached\"", &format!("outcome=\"{o}\"")],
        )
    };
    assert_eq!(outcome("miss"), 1.0);
    assert!(outcome("coalesced") >= 1.0, "{metrics}");
    assert_eq!(
        outcome("miss") + outcome("coalesced") + outcome("hit"),
        1000.0
    );

    // TTL expiry reads again (no Age: this request read); the next is a hit with an Age.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let a = get(&client, &server, "bao-cached", "hot").await;
    assert_eq!(value(&a), "hot-v1");
    assert_eq!(a.age, None);
    assert_eq!(bao.reads("hot"), 2);
    let a = get(&client, &server, "bao-cached", "hot").await;
    assert!(a.age.is_some_and(|s| s <= 2), "{:?}", a.age);
    assert_eq!(bao.reads("hot"), 2);

    // A failure is not cached: each read of a missing key reaches OpenBao.
    for n in 1..=3 {
        let a = get(&client, &server, "bao-cached", "absent").await;
        assert_eq!(a.status, 404, "{}", a.body);
        assert_eq!(bao.reads("absent"), n);
    }

    // A forbid added after a value was cached applies to it (denied answers 404, as a
    // missing key does); lifted, the same cached entry answers again.
    let a = get(&client, &server, "bao-long", "long").await;
    assert_eq!(value(&a), "long-v1");
    let a = get(&client, &server, "bao-long", "long").await;
    assert!(a.age.is_some(), "cached");
    assert_eq!(bao.reads("long"), 1);
    server
        .write_policy(
            "forbid.cedar",
            r#"@id("forbid-long")
forbid (principal, action == Esi::Action::"get", resource is Esi::RemoteKey)
when { resource.store == "bao-long" && resource.key == "long" };
"#,
        )
        .await;
    let a = get(&client, &server, "bao-long", "long").await;
    assert_eq!(a.status, 404, "the forbid applies to a cached value");
    assert!(!a.body.contains(&base64_of("long-v1")));
    server.write_policy("forbid.cedar", "// lifted\n").await;
    let a = get(&client, &server, "bao-long", "long").await;
    assert_eq!(value(&a), "long-v1");
    assert!(
        a.age.is_some(),
        "served from the cache kept across the reload"
    );
    assert_eq!(bao.reads("long"), 1);

    // A changed store spec is built anew, with an empty cache.
    bao.put("long", json!({"password": "long-v2"})).await;
    let changed = bao_store("bao-cached", &addr, "  cache: {ttl: 2s}\n")
        + &bao_store("bao-long", &addr, "  cache: {ttl: 4m}\n");
    server
        .write_manifest(
            "all.yaml",
            &manifests(&["bao-cached", "bao-long"], &changed),
        )
        .await;
    let a = get(&client, &server, "bao-long", "long").await;
    assert_eq!(value(&a), "long-v2");
    assert_eq!(a.age, None);
    assert_eq!(bao.reads("long"), 2);

    // No value reached the logs.
    server.sync_logs().await;
    for leak in ["hot-v1", "long-v1", "long-v2", ROOT] {
        assert!(
            server.logs().iter().all(|l| !l.contains(leak)),
            "{leak} reached the logs"
        );
    }
}

fn base64_of(s: &str) -> String {
    b64(s)
}

/// OpenBao frozen, then killed: once the store's circuit opens, calls fail fast with 503
/// (well under the backend timeout) without reaching it; another store keeps answering
/// and `/readyz` stays up; each time OpenBao returns, service resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue14_a_dead_backend_fails_fast_and_service_resumes() {
    install_crypto();
    let Some(mut bao) = Bao::start().await else {
        return;
    };
    bao.put("db", json!({"password": "db-v1"})).await;
    let fake = r#"---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {name: other}
spec:
  provider:
    fake:
      data: [{key: db, value: '{"password":"fake-v1"}'}]
"#;
    let body = bao_store("bao-live", &bao.addr(), "") + fake;
    let server = Server::start_with_args(
        &[("all.yaml", manifests(&["bao-live", "other"], &body))],
        &[],
        &["--backend-timeout", "2s", "--rate-limit-per-identity", "0"],
    );
    let client = client_trusting(&server.ca_pem());
    assert_eq!(
        value(&get(&client, &server, "bao-live", "db").await),
        "db-v1"
    );

    let circuit =
        |metrics: &str| metric(metrics, "esi_store_circuit_state", &["store=\"bao-live\""]);
    let other_store_and_readyz_answer = || async {
        assert_eq!(
            value(&get(&client, &server, "other", "db").await),
            "fake-v1"
        );
        assert_eq!(server.get("/readyz").await.0, 200);
    };

    for phase in ["frozen", "killed"] {
        if phase == "frozen" {
            bao.pause();
            bao.wait_until_unresponsive().await;
        } else {
            bao.kill();
        }
        // Calls fail (timing out, or refused) until five failures in a row open the circuit.
        let mut open = None;
        for _ in 0..10 {
            let a = get(&client, &server, "bao-live", "db").await;
            assert_eq!(a.status, 503, "{phase}: {}", a.body);
            if a.body.contains("circuit open") {
                open = Some(a);
                break;
            }
        }
        let open = open.unwrap_or_else(|| panic!("{phase}: the circuit never opened"));
        // Open: answered at once, without waiting on the backend.
        for _ in 0..5 {
            let a = get(&client, &server, "bao-live", "db").await;
            assert_eq!(a.status, 503);
            assert!(a.body.contains("circuit open"), "{}", a.body);
            assert!(
                a.elapsed < Duration::from_millis(500),
                "{phase}: an open circuit answers fast, not after the 2 s timeout: {:?}",
                a.elapsed
            );
        }
        assert!(open.elapsed < Duration::from_millis(2500));
        let (_, metrics) = server.get("/metrics").await;
        assert_eq!(circuit(&metrics), 1.0, "{phase}");
        other_store_and_readyz_answer().await;

        // OpenBao returns; after the cool-down a probe closes the circuit.
        if phase == "frozen" {
            bao.resume();
        } else {
            bao.launch().await;
            bao.put("db", json!({"password": "db-v1"})).await;
        }
        let back = Instant::now();
        loop {
            let a = get(&client, &server, "bao-live", "db").await;
            if a.status == 200 {
                assert_eq!(value(&a), "db-v1");
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(20),
                "{phase}: service did not resume: {}",
                a.body
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let (_, metrics) = server.get("/metrics").await;
        assert_eq!(circuit(&metrics), 0.0, "{phase}");
    }

    // One log line per state change, not one per request.
    server.sync_logs().await;
    let opened = server.count_log("store circuit opened");
    assert!((2..=4).contains(&opened), "{opened} opening lines");
    assert_eq!(server.count_log("store circuit closed"), 2);
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metric(
            &metrics,
            "esi_store_circuit_rejections_total",
            &["store=\"bao-live\""]
        ) >= 10.0
    );
}

/// `staleIfError`: OpenBao killed, a value read before and past its ttl is answered stale
/// (its true `Age`, `Warning: 110 - "Response is Stale"`); a key never read gets 503, and
/// so does the same key on a store without `staleIfError`. One warning line per store, not
/// one per request. OpenBao back, the value is fresh again; a key it no longer has (a
/// definite not found) evicts the stale value, so when OpenBao dies again that key is 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue14_stale_if_error_serves_the_last_good_value_while_the_backend_is_down() {
    install_crypto();
    let Some(mut bao) = Bao::start().await else {
        return;
    };
    bao.put("db", json!({"password": "db-v1"})).await;
    bao.put("gone", json!({"password": "gone-v1"})).await;
    let addr = bao.addr();
    let stores = bao_store("bao-stale", &addr, "  cache: {ttl: 1s, staleIfError: 5m}\n")
        + &bao_store("bao-fresh-only", &addr, "  cache: {ttl: 1s}\n");
    let server = Server::start_with_args(
        &[(
            "all.yaml",
            manifests(&["bao-stale", "bao-fresh-only"], &stores),
        )],
        &[],
        &[
            "--backend-timeout",
            "2s",
            "--rate-limit-per-identity",
            "0",
            "--store-breaker-cool-down",
            "500ms",
        ],
    );
    let client = client_trusting(&server.ca_pem());
    for store in ["bao-stale", "bao-fresh-only"] {
        let a = get(&client, &server, store, "db").await;
        assert_eq!(value(&a), "db-v1");
        assert_eq!((a.age, a.warning), (None, None));
    }
    assert_eq!(
        value(&get(&client, &server, "bao-stale", "gone").await),
        "gone-v1"
    );

    bao.kill();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for _ in 0..8 {
        let a = get(&client, &server, "bao-stale", "db").await;
        assert_eq!(value(&a), "db-v1", "served stale");
        assert!(a.age.is_some_and(|s| s >= 2), "the true age: {:?}", a.age);
        assert_eq!(a.warning.as_deref(), Some("110 - \"Response is Stale\""));
    }
    let a = get(&client, &server, "bao-stale", "never").await;
    assert_eq!(a.status, 503, "a key never read: {}", a.body);
    assert_eq!(a.warning, None);
    let a = get(&client, &server, "bao-fresh-only", "db").await;
    assert_eq!(a.status, 503, "without staleIfError: {}", a.body);
    assert_eq!(a.warning, None);
    let (_, metrics) = server.get("/metrics").await;
    let stale_served = |metrics: &str, store: &str| {
        metric(
            metrics,
            "esi_store_cache_stale_served_total",
            &[&format!("store=\"{store}\"")],
        )
    };
    assert_eq!(stale_served(&metrics, "bao-stale"), 8.0, "{metrics}");
    assert_eq!(stale_served(&metrics, "bao-fresh-only"), 0.0);
    server.sync_logs().await;
    assert_eq!(
        server.count_log("store cache serving stale values"),
        1,
        "one line per transition, not per request"
    );

    // OpenBao back (empty: "gone" is no more), with a new value for "db".
    bao.launch().await;
    bao.put("db", json!({"password": "db-v2"})).await;
    let back = Instant::now();
    loop {
        let a = get(&client, &server, "bao-stale", "db").await;
        if a.warning.is_none() {
            assert_eq!(value(&a), "db-v2");
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "never fresh again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.sync_logs().await;
    assert_eq!(
        server.count_log("store cache serving fresh values again"),
        1
    );
    // A definite answer replaces the stale value: not found evicts it.
    let a = get(&client, &server, "bao-stale", "gone").await;
    assert_eq!(a.status, 404, "{}", a.body);
    bao.kill();
    let a = get(&client, &server, "bao-stale", "gone").await;
    assert_eq!(a.status, 503, "evicted by the not found: {}", a.body);
    assert!(!a.body.contains(&base64_of("gone-v1")));

    server.sync_logs().await;
    for leak in ["db-v1", "db-v2", "gone-v1", ROOT] {
        assert!(
            server.logs().iter().all(|l| !l.contains(leak)),
            "{leak} reached the logs"
        );
    }
}

/// `scripts/bench.sh` measures the cached store too; the configuration it writes (with
/// `spec.cache`) passes `esi-server check` (its `--check` dry run: no build, no backend).
#[test]
fn issue14_bench_configuration_with_the_cached_store_is_valid() {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench.sh"))
        .arg("--check")
        .env("ESI_SERVER_BIN", server_bin())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("3 stores, 0 generators, 1 federations, 1 policies, 0 errors"),
        "{text}"
    );
    assert!(text.contains("bench configuration is valid"), "{text}");
}
