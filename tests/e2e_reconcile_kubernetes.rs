//! End to end, the reconciler's Kubernetes mode: the real `esi-server reconcile
//! --kubernetes` against the fake API server of `tests/common/fake_kube.rs`. ExternalSecrets
//! become Secrets per creationPolicy (owner references and their garbage collection, Orphan,
//! Merge into an existing Secret only), with ESO's status and Events, the force-sync
//! annotation, per-object backoff, and the refusal of the API server's own token audiences.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fake_kube::FakeKube;
use common::*;
use serde_json::{Value, json};

const ESO: &str = "external-secrets.io/v1";
const NS: &str = "apps";

async fn cluster() -> FakeKube {
    let k = FakeKube::start().await;
    for (g, v, kind, plural, namespaced, status) in [
        (
            "external-secrets.io",
            "v1",
            "ExternalSecret",
            "externalsecrets",
            true,
            true,
        ),
        (
            "external-secrets.io",
            "v1",
            "SecretStore",
            "secretstores",
            true,
            true,
        ),
        (
            "external-secrets.io",
            "v1",
            "ClusterSecretStore",
            "clustersecretstores",
            false,
            true,
        ),
        (
            "generators.external-secrets.io",
            "v1alpha1",
            "Password",
            "passwords",
            true,
            false,
        ),
        ("events.k8s.io", "v1", "Event", "events", true, false),
    ] {
        k.register(g, v, kind, plural, namespaced, status);
    }
    k
}

/// The reconciler process; killed when dropped.
struct Reconciler {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Reconciler {
    fn start(k: &FakeKube, extra: &[&str]) -> Reconciler {
        Self::start_as(k, common::fake_kube::DEFAULT_USER, extra)
    }

    /// As `user` of the fake (its requests are logged with it).
    fn start_as(k: &FakeKube, user: &str, extra: &[&str]) -> Reconciler {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        k.add_user(user);
        k.kubeconfig_as(&kubeconfig, user);
        let mut child = Command::new(server_bin())
            .args([
                "reconcile",
                "--kubernetes",
                "--leader-election-namespace",
                "esi-system",
                "--leader-election-lease-duration",
                "2s",
                "--log-format",
                "json",
            ])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env(
                "RUST_LOG",
                std::env::var("ESI_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start esi-server reconcile");
        let log = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if std::env::var("ESI_TEST_ECHO").is_ok() {
                        eprintln!("[reconciler] {line}");
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        Reconciler {
            child,
            log,
            _dir: dir,
        }
    }

    fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Reconciler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for<T>(what: &str, secs: u64, r: &Reconciler, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; reconciler log:\n{}",
                r.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn fake_store(k: &FakeKube, value: &str) {
    k.apply(json!({
        "apiVersion": ESO,
        "kind": "ClusterSecretStore",
        "metadata": {"name": "fake"},
        "spec": {"provider": {"fake": {"data": [{"key": "db", "value": value}]}}}
    }));
}

fn external_secret(name: &str, target: Value, extra_meta: Value) -> Value {
    let mut meta = json!({"name": name, "namespace": NS});
    if let Value::Object(m) = extra_meta {
        for (key, v) in m {
            meta[key] = v;
        }
    }
    json!({
        "apiVersion": ESO,
        "kind": "ExternalSecret",
        "metadata": meta,
        "spec": {
            "refreshInterval": "1h",
            "secretStoreRef": {"kind": "ClusterSecretStore", "name": "fake"},
            "target": target,
            "data": [{"secretKey": "password", "remoteRef": {"key": "db"}}]
        }
    })
}

fn secret(k: &FakeKube, name: &str) -> Option<Value> {
    k.get("v1", "Secret", Some(NS), name)
}

fn data(s: &Value, key: &str) -> Option<String> {
    use base64::Engine;
    let v = s.pointer(&format!("/data/{key}"))?.as_str()?;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).ok()?).ok()
}

fn es(k: &FakeKube, name: &str) -> Value {
    k.get(ESO, "ExternalSecret", Some(NS), name).unwrap()
}

fn ready(es: &Value) -> Option<(String, String, String)> {
    let c = es
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
        c["message"].as_str()?.to_string(),
    ))
}

/// Owner: the Secret is created with a controller owner reference to the ExternalSecret,
/// the status is ESO's, an Event says `Updated`; deleting the ExternalSecret collects the
/// Secret.
#[tokio::test(flavor = "multi_thread")]
async fn owner_policy_writes_the_secret_status_and_event_and_gc_collects_it() {
    let k = cluster().await;
    fake_store(&k, "s3cr3t");
    let created = k.apply(external_secret("app", json!({"name": "app-db"}), json!({})));
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    let r = Reconciler::start(&k, &["--metrics-listen", "127.0.0.1:0"]);
    let s = wait_for("the Secret", 30, &r, || secret(&k, "app-db"));
    assert_eq!(data(&s, "password").as_deref(), Some("s3cr3t"));
    let owners = s["metadata"]["ownerReferences"].as_array().unwrap();
    assert_eq!(owners.len(), 1, "{s}");
    assert_eq!(owners[0]["kind"], "ExternalSecret");
    assert_eq!(owners[0]["uid"], uid.as_str());
    assert_eq!(owners[0]["controller"], true);
    assert_eq!(
        s["metadata"]["labels"]["reconcile.external-secrets.io/managed"],
        "true"
    );

    let status = wait_for("the status", 15, &r, || {
        let e = es(&k, "app");
        (ready(&e)?.0 == "True").then_some(e)
    });
    let (_, reason, message) = ready(&status).unwrap();
    assert_eq!(reason, "SecretSynced");
    assert_eq!(message, "secret synced");
    assert!(status["status"]["refreshTime"].is_string(), "{status}");
    assert!(
        status["status"]["syncedResourceVersion"].is_string(),
        "{status}"
    );
    assert_eq!(status["status"]["binding"]["name"], "app-db");

    let event = wait_for("the Event", 15, &r, || {
        k.list("events.k8s.io/v1", "Event", Some(NS))
            .into_iter()
            .find(|e| e["regarding"]["name"] == "app" && e["reason"] == "Updated")
    });
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["regarding"]["kind"], "ExternalSecret");

    // ESO's metrics, on the metrics listener.
    let addr = wait_for("the metrics listener", 10, &r, || {
        r.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == "metrics listening (plain HTTP)")
            .and_then(|l| l["addr"].as_str().map(str::to_string))
    });
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "externalsecret_sync_calls_total{name=\"app\",namespace=\"apps\"} 1",
        "externalsecret_status_condition{condition=\"Ready\",name=\"app\",namespace=\"apps\",status=\"True\"} 1",
        "externalsecret_status_condition{condition=\"Ready\",name=\"app\",namespace=\"apps\",status=\"False\"} 0",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    assert!(text.contains("externalsecret_reconcile_duration{name=\"app\",namespace=\"apps\"}"));
    assert!(
        text.contains(
            "externalsecret_provider_api_calls_count{call=\"GetSecret\",provider=\"fake\",status=\"success\"}"
        ),
        "{text}"
    );

    // A Secret edited by hand is written back.
    let mut edited = secret(&k, "app-db").unwrap();
    edited["data"]["password"] = json!(b64("tampered"));
    k.apply(edited);
    wait_for("the Secret written back", 15, &r, || {
        (data(&secret(&k, "app-db")?, "password")? == "s3cr3t").then_some(())
    });

    // A Secret another controller owns is not taken over.
    k.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "taken", "namespace": NS, "ownerReferences": [{
            "apiVersion": ESO, "kind": "ExternalSecret", "name": "someone",
            "uid": "0000-other", "controller": true}]},
        "data": {"password": b64("theirs")}
    }));
    k.apply(external_secret(
        "thief",
        json!({"name": "taken"}),
        json!({}),
    ));
    let refused = wait_for("the refusal", 15, &r, || {
        let c = ready(&es(&k, "thief"))?;
        (c.0 == "False").then_some(c.2)
    });
    assert!(
        refused.contains("already owned by ExternalSecret someone"),
        "{refused}"
    );
    assert_eq!(
        data(&secret(&k, "taken").unwrap(), "password").as_deref(),
        Some("theirs")
    );

    assert!(k.delete(ESO, "ExternalSecret", Some(NS), "app"));
    wait_for("the Secret collected", 15, &r, || {
        secret(&k, "app-db").is_none().then_some(())
    });
}

/// Orphan: no owner reference, the Secret outlives its ExternalSecret. Merge: nothing
/// while the target is absent (`Ready=False`, `SecretMissing`), then only our key is
/// patched into it.
#[tokio::test(flavor = "multi_thread")]
async fn orphan_keeps_the_secret_and_merge_patches_only_its_keys() {
    let k = cluster().await;
    fake_store(&k, "s3cr3t");
    k.apply(external_secret(
        "orphan",
        json!({"name": "orphan-db", "creationPolicy": "Orphan"}),
        json!({}),
    ));
    k.apply(external_secret(
        "merge",
        json!({"name": "shared", "creationPolicy": "Merge"}),
        json!({}),
    ));
    let r = Reconciler::start(&k, &[]);
    let s = wait_for("the orphan Secret", 30, &r, || secret(&k, "orphan-db"));
    assert!(s["metadata"].get("ownerReferences").is_none(), "{s}");
    assert_eq!(data(&s, "password").as_deref(), Some("s3cr3t"));

    let waiting = wait_for("Merge waiting", 15, &r, || {
        let e = es(&k, "merge");
        let c = ready(&e)?;
        (c.0 == "False").then_some(c)
    });
    assert_eq!(waiting.1, "SecretMissing", "{waiting:?}");
    assert!(secret(&k, "shared").is_none(), "Merge must not create");
    // Waiting is retried with backoff, and its unchanged status is not rewritten.
    std::thread::sleep(Duration::from_secs(3));
    let writes = k
        .requests()
        .iter()
        .filter(|q| q.is_status_write() && q.path.ends_with("/externalsecrets/merge/status"))
        .count();
    assert_eq!(writes, 1, "status writes while waiting");

    k.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "shared", "namespace": NS, "labels": {"team": "a"}},
        "type": "Opaque",
        "data": {"other": b64("kept")}
    }));
    let merged = wait_for("the merge", 30, &r, || {
        let s = secret(&k, "shared")?;
        data(&s, "password").map(|_| s)
    });
    assert_eq!(data(&merged, "password").as_deref(), Some("s3cr3t"));
    assert_eq!(data(&merged, "other").as_deref(), Some("kept"));
    assert_eq!(merged["metadata"]["labels"]["team"], "a");
    assert!(merged["metadata"].get("ownerReferences").is_none());
    wait_for("Merge ready", 15, &r, || {
        (ready(&es(&k, "merge"))?.0 == "True").then_some(())
    });

    assert!(k.delete(ESO, "ExternalSecret", Some(NS), "orphan"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(secret(&k, "orphan-db").is_some(), "Orphan outlives its ES");
}

/// Not due (1h interval): a changed store value is not fetched; the force-sync annotation
/// syncs again at once.
#[tokio::test(flavor = "multi_thread")]
async fn force_sync_annotation_syncs_before_the_interval() {
    let k = cluster().await;
    fake_store(&k, "v1");
    k.apply(external_secret("app", json!({"name": "app-db"}), json!({})));
    let r = Reconciler::start(&k, &[]);
    wait_for("the first sync", 30, &r, || {
        (data(&secret(&k, "app-db")?, "password")? == "v1").then_some(())
    });
    fake_store(&k, "v2");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        data(&secret(&k, "app-db").unwrap(), "password").as_deref(),
        Some("v1"),
        "not due before the interval"
    );
    k.apply(external_secret(
        "app",
        json!({"name": "app-db"}),
        json!({"annotations": {"force-sync": "1"}}),
    ));
    wait_for("the forced sync", 15, &r, || {
        (data(&secret(&k, "app-db")?, "password")? == "v2").then_some(())
    });
}

/// A broken ExternalSecret (its store does not exist) is retried with growing delays
/// (each attempt reads its target Secret: counted in the fake's log), not in a loop, and
/// a good one still syncs meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_external_secret_backs_off_and_does_not_hold_up_others() {
    let k = cluster().await;
    fake_store(&k, "s3cr3t");
    let mut bad = external_secret("bad", json!({"name": "bad-db"}), json!({}));
    bad["spec"]["secretStoreRef"]["name"] = json!("nope");
    k.apply(bad);
    let r = Reconciler::start(&k, &[]);
    let e = wait_for("Ready=False", 30, &r, || {
        let e = es(&k, "bad");
        (ready(&e)?.0 == "False").then_some(e)
    });
    let (_, reason, message) = ready(&e).unwrap();
    assert_eq!(reason, "SecretSyncedError");
    assert!(message.contains("\"nope\""), "{message}");
    let start = Instant::now();
    k.apply(external_secret(
        "good",
        json!({"name": "good-db"}),
        json!({}),
    ));
    wait_for("the good Secret", 10, &r, || secret(&k, "good-db"));
    std::thread::sleep(Duration::from_secs(14).saturating_sub(start.elapsed()));
    let path = format!("/api/v1/namespaces/{NS}/secrets/bad-db");
    let attempts = k
        .requests()
        .iter()
        .filter(|q| q.method == "GET" && q.path == path)
        .count();
    // 1 s, 2 s, 4 s, 8 s (jittered up to twice): at most ~6 attempts in ~15 s, not dozens.
    assert!(
        (3..=7).contains(&attempts),
        "attempts of the broken ExternalSecret: {attempts}"
    );
    // Growing: over the next 6 s at most one more attempt (the next delay is ≥ 8 s).
    std::thread::sleep(Duration::from_secs(6));
    let later = k
        .requests()
        .iter()
        .filter(|q| q.method == "GET" && q.path == path)
        .count();
    assert!(
        later - attempts <= 1,
        "the delays must grow: {attempts} then {later}"
    );
    assert!(secret(&k, "bad-db").is_none());
}

/// A SecretStore `remote` whose token is asked for `audience` (the server URL goes
/// nowhere), and an ExternalSecret `steal` reading it.
fn token_store(k: &FakeKube, audience: &str) {
    k.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "admin-sa", "namespace": NS}}));
    k.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "fed", "namespace": NS},
        "data": {"ca.crt": b64(k.ca_pem())}
    }));
    k.apply(json!({
        "apiVersion": ESO,
        "kind": "SecretStore",
        "metadata": {"name": "remote", "namespace": NS},
        "spec": {"provider": {"externalsecrets": {
            "server": {"url": "https://127.0.0.1:9", "caRef": {"name": "fed", "key": "ca.crt"}},
            "auth": {"kubernetes": {"serviceAccountRef": {
                "name": "admin-sa", "audiences": [audience]}}},
            "target": {"clusterSecretStoreName": "any"}
        }}}
    }));
    let mut e = external_secret("steal", json!({"name": "stolen"}), json!({}));
    e["spec"]["secretStoreRef"] = json!({"kind": "SecretStore", "name": "remote"});
    k.apply(e);
}

/// The `Ready=False` message of `steal`, once no token was requested.
fn refused_without_token(k: &FakeKube, r: &Reconciler) -> String {
    let e = wait_for("Ready=False", 30, r, || {
        let e = es(k, "steal");
        (ready(&e)?.0 == "False").then_some(e)
    });
    let asked = k
        .requests()
        .iter()
        .filter(|q| q.method == "POST" && q.path.ends_with("/serviceaccounts/admin-sa/token"))
        .count();
    assert_eq!(asked, 0, "no token may be requested");
    ready(&e).unwrap().2
}

/// A SecretStore asking for a ServiceAccount token with an audience the API server
/// accepts is refused before any TokenRequest, with a clear status: a default audience,
/// or the issuer the cluster publishes.
#[tokio::test(flavor = "multi_thread")]
async fn api_server_audiences_are_refused() {
    let k = cluster().await;
    token_store(&k, "https://kubernetes.default.svc");
    let r = Reconciler::start(&k, &[]);
    let message = refused_without_token(&k, &r);
    assert!(
        message.contains("accepted by the Kubernetes API server"),
        "{message}"
    );
    drop(r);

    // A custom issuer (`--service-account-issuer`), read from the cluster's discovery.
    let k = cluster().await;
    k.sign_tokens_with_fixture("https://issuer.example", "ec-1");
    token_store(&k, "https://issuer.example/");
    let r = Reconciler::start(&k, &[]);
    let message = refused_without_token(&k, &r);
    assert!(
        message.contains("accepted by the Kubernetes API server"),
        "{message}"
    );
}

/// When the API server's issuer cannot be read, no token is requested at all, even for an
/// audience that looks harmless (before: the refusal list silently lacked the issuer).
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_api_server_issuer_fails_closed() {
    let k = cluster().await;
    k.refuse_issuer_discovery(true);
    token_store(&k, "https://esi-federation.example.com");
    let r = Reconciler::start(&k, &[]);
    let message = refused_without_token(&k, &r);
    assert!(message.contains("issuer is unknown"), "{message}");
}

/// An issuer unknown at start is asked for again in the background: once the cluster
/// serves it, tokens are requested without a restart (before: refused until restarted),
/// and the API server's own audiences stay refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_issuer_discovered_later_lifts_the_refusal_without_restart() {
    let k = cluster().await;
    k.refuse_issuer_discovery(true);
    token_store(&k, "https://esi-federation.example.com");
    let r = Reconciler::start(&k, &[]);
    let message = refused_without_token(&k, &r);
    assert!(message.contains("issuer is unknown"), "{message}");
    k.refuse_issuer_discovery(false);
    wait_for("a TokenRequest", 60, &r, || {
        k.requests()
            .iter()
            .any(|q| q.method == "POST" && q.path.ends_with("/serviceaccounts/admin-sa/token"))
            .then_some(())
    });
    wait_for("the refusal lifted in the status", 30, &r, || {
        let c = ready(&es(&k, "steal"))?;
        (c.0 == "False" && !c.2.contains("issuer is unknown")).then_some(())
    });
    // The defaults are still refused.
    let mut e = external_secret("steal", json!({"name": "stolen"}), json!({}));
    e["spec"]["secretStoreRef"] = json!({"kind": "SecretStore", "name": "remote"});
    let mut store = k.get(ESO, "SecretStore", Some(NS), "remote").unwrap();
    store["spec"]["provider"]["externalsecrets"]["auth"]["kubernetes"]["serviceAccountRef"]["audiences"] =
        json!(["https://kubernetes.default.svc"]);
    k.apply(store);
    std::thread::sleep(Duration::from_secs(1));
    e["metadata"]["annotations"] = json!({"force-sync": "1"});
    k.apply(e);
    wait_for("the default audience refused", 30, &r, || {
        let c = ready(&es(&k, "steal"))?;
        c.2.contains("accepted by the Kubernetes API server")
            .then_some(())
    });
}

fn deployment(name: &str, secret: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "app", "image": "app:1",
                    "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}}]
                }]}
            }
        }
    })
}

/// Rollout extension: an ExternalSecret annotated `esi.external-secrets.io/rollout: "true"`
/// whose Secret's data changes records the Secret's new resourceVersion in the pod template
/// of each Deployment reading it, once per change; a sync that changes nothing rolls
/// nothing, and a Deployment reading another Secret is left alone.
#[tokio::test(flavor = "multi_thread")]
async fn rollout_patches_the_deployment_once_per_change() {
    let k = cluster().await;
    k.register_kind::<k8s_openapi::api::apps::v1::Deployment>(true, false);
    k.register_kind::<k8s_openapi::api::apps::v1::StatefulSet>(true, false);
    k.register_kind::<k8s_openapi::api::apps::v1::DaemonSet>(true, false);
    k.apply(deployment("web", "app-db"));
    k.apply(deployment("other", "unrelated"));
    fake_store(&k, "v1");
    let rollout = json!({"esi.external-secrets.io/rollout": "true"});
    k.apply(external_secret(
        "app",
        json!({"name": "app-db"}),
        json!({"annotations": rollout}),
    ));
    let r = Reconciler::start(&k, &[]);
    wait_for("the first sync", 30, &r, || {
        (data(&secret(&k, "app-db")?, "password")? == "v1").then_some(())
    });
    let versions = |name: &str| {
        k.get("apps/v1", "Deployment", Some(NS), name).unwrap()["spec"]["template"]["metadata"]
            ["annotations"]["esi.external-secrets.io/secret-versions"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(versions("web"), None, "a new Secret rolls nothing");

    fake_store(&k, "v2");
    // The store's change reaches the inventory first.
    std::thread::sleep(Duration::from_secs(1));
    k.apply(external_secret(
        "app",
        json!({"name": "app-db"}),
        json!({"annotations": {"esi.external-secrets.io/rollout": "true", "force-sync": "1"}}),
    ));
    let rolled = wait_for("the rollout", 15, &r, || versions("web"));
    let rv = secret(&k, "app-db").unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(rolled, format!("app-db={rv}"));
    assert_eq!(versions("other"), None);
    let synced = |e: &Value| {
        e["status"]["syncedResourceVersion"]
            .as_str()
            .map(str::to_string)
    };
    let first = wait_for("the forced sync's status", 15, &r, || {
        let e = es(&k, "app");
        let v = synced(&e)?;
        (e["status"]["binding"]["name"] == "app-db").then_some(v)
    });

    // Synced again with the same data: no second rollout.
    k.apply(external_secret(
        "app",
        json!({"name": "app-db"}),
        json!({"annotations": {"esi.external-secrets.io/rollout": "true", "force-sync": "2"}}),
    ));
    wait_for("the second sync", 15, &r, || {
        let e = es(&k, "app");
        (synced(&e)? != first && ready(&e)?.0 == "True").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let patches = k
        .requests()
        .iter()
        .filter(|q| q.method == "PATCH" && q.path.ends_with("/deployments/web"))
        .count();
    assert_eq!(patches, 1, "one rollout per change");
    assert_eq!(versions("web"), Some(rolled.clone()));

    // A patch the API refuses for a while (500) is retried (before: logged and lost, the
    // Deployment kept the old value until the next change).
    fake_store(&k, "v3");
    std::thread::sleep(Duration::from_secs(1));
    k.fail_next_writes("deployments", 2);
    k.apply(external_secret(
        "app",
        json!({"name": "app-db"}),
        json!({"annotations": {"esi.external-secrets.io/rollout": "true", "force-sync": "3"}}),
    ));
    let again = wait_for("the retried rollout", 15, &r, || {
        versions("web").filter(|v| *v != rolled)
    });
    let rv = secret(&k, "app-db").unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(again, format!("app-db={rv}"));
    let patches = k
        .requests()
        .iter()
        .filter(|q| q.method == "PATCH" && q.path.ends_with("/deployments/web"))
        .count();
    assert_eq!(patches, 1 + 3, "two refused, the third went through");
}

/// The shared fake Vault (`common::fake_vault`): its URL and the revoked lease ids, in
/// revocation order.
async fn fake_vault() -> (String, Arc<Mutex<Vec<String>>>) {
    let vault = common::fake_vault::FakeVault::start_with_password("pw").await;
    (vault.url.clone(), vault.revoked_handle())
}

/// An ExternalSecret `name` writing `target` from the generator `kind`/`generator`.
fn generated_external_secret(name: &str, target: &str, kind: &str, generator: &str) -> Value {
    json!({
        "apiVersion": ESO,
        "kind": "ExternalSecret",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "refreshInterval": "1h",
            "target": {"name": target},
            "dataFrom": [{"sourceRef": {"generatorRef": {
                "apiVersion": "generators.external-secrets.io/v1alpha1",
                "kind": kind, "name": generator}}}]
        }
    })
}

/// Deletes the ExternalSecret `name`; waits until it is gone (its finalizer removed) and
/// checks what was revoked by then.
fn deleted_and_revoked(
    k: &FakeKube,
    r: &Reconciler,
    name: &str,
    revoked: &Mutex<Vec<String>>,
    expected: &[&str],
) {
    assert!(k.delete(ESO, "ExternalSecret", Some(NS), name));
    wait_for("the ExternalSecret gone", 30, r, || {
        k.get(ESO, "ExternalSecret", Some(NS), name)
            .is_none()
            .then_some(())
    });
    assert_eq!(*revoked.lock().unwrap(), expected);
}

/// A `Federation` generator's credential (a VaultDynamicSecret lease on the real server) is
/// revoked when its ExternalSecret is deleted: the finalizer holds the deletion until the
/// server's `DELETE /v1/credentials/{id}` revoked it; an ExternalSecret without such a
/// generator gets no finalizer.
#[tokio::test(flavor = "multi_thread")]
async fn a_federation_credential_is_revoked_through_the_finalizer() {
    const AUD: &str = "https://esi-federation.example.com";
    const ISS: &str = "https://kubernetes.default.svc.cluster.local";
    let (vault_url, revoked) = fake_vault().await;
    let server = Server::start(
        &[
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
  allowedGenerators:
    - {name: creds, kind: VaultDynamicSecret, namespace: apps}
"#
                .to_string(),
            ),
            (
                "generators.yaml",
                format!(
                    r#"apiVersion: v1
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
"#
                ),
            ),
        ],
        &[],
    );
    let k = cluster().await;
    k.register(
        "generators.external-secrets.io",
        "v1alpha1",
        "Federation",
        "federations",
        true,
        false,
    );
    let ca = String::from_utf8(server.ca_pem()).unwrap();
    k.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "fed", "namespace": NS},
        "data": {
            "token": b64(&mint("ec-1", &sa_claims(ISS, AUD, NS, "app"), None)),
            "ca.crt": b64(&ca)
        }
    }));
    k.apply(json!({
        "apiVersion": "generators.external-secrets.io/v1alpha1",
        "kind": "Federation",
        "metadata": {"name": "fed", "namespace": NS},
        "spec": {
            "server": {"url": server.url, "caRef": {"name": "fed", "key": "ca.crt"}},
            "generator": {"namespace": NS, "kind": "VaultDynamicSecret", "name": "creds"},
            "auth": {
                "tokenSecretRef": {"name": "fed", "key": "token"},
                "caCertSecretRef": {"name": "fed", "key": "ca.crt"}
            }
        }
    }));
    k.apply(generated_external_secret(
        "db",
        "db-creds",
        "Federation",
        "fed",
    ));
    fake_store(&k, "s3cr3t");
    k.apply(external_secret(
        "plain",
        json!({"name": "plain-db"}),
        json!({}),
    ));
    let r = Reconciler::start(&k, &[]);
    let s = wait_for("the generated Secret", 30, &r, || secret(&k, "db-creds"));
    assert_eq!(data(&s, "username").as_deref(), Some("user-0"));
    let finalizers = es(&k, "db")["metadata"]["finalizers"].clone();
    assert_eq!(
        finalizers,
        json!(["esi.external-secrets.io/revoke-credentials"])
    );
    wait_for("the plain Secret", 15, &r, || secret(&k, "plain-db"));
    assert!(
        es(&k, "plain")["metadata"].get("finalizers").is_none(),
        "no finalizer without outside state"
    );
    assert!(revoked.lock().unwrap().is_empty());

    deleted_and_revoked(&k, &r, "db", &revoked, &["fake/creds/0"]);
    wait_for("the Secret collected", 15, &r, || {
        secret(&k, "db-creds").is_none().then_some(())
    });
}

/// A ClusterSecretStore's `conditions.namespaceSelector` reads the Namespace's labels from
/// the cluster: a labelled namespace is admitted, another is refused (deny by default).
#[tokio::test(flavor = "multi_thread")]
async fn cluster_store_conditions_read_namespace_labels() {
    let k = cluster().await;
    k.apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NS, "labels": {"team": "a"}}}));
    k.apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "other", "labels": {"team": "b"}}}));
    k.apply(json!({
        "apiVersion": ESO,
        "kind": "ClusterSecretStore",
        "metadata": {"name": "fake"},
        "spec": {
            "provider": {"fake": {"data": [{"key": "db", "value": "s3cr3t"}]}},
            "conditions": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]
        }
    }));
    k.apply(external_secret("app", json!({"name": "app-db"}), json!({})));
    let mut other = external_secret("app", json!({"name": "app-db"}), json!({}));
    other["metadata"]["namespace"] = json!("other");
    k.apply(other);
    let r = Reconciler::start(&k, &[]);
    let s = wait_for("the admitted Secret", 30, &r, || secret(&k, "app-db"));
    assert_eq!(data(&s, "password").as_deref(), Some("s3cr3t"));
    let refused = wait_for("the refusal", 15, &r, || {
        let e = k.get(ESO, "ExternalSecret", Some("other"), "app")?;
        let c = ready(&e)?;
        (c.0 == "False").then_some(c.2)
    });
    assert!(refused.contains("not allowed from namespace"), "{refused}");
    assert!(k.get("v1", "Secret", Some("other"), "app-db").is_none());
}

/// Two replicas: only the holder of the Lease writes Secrets and statuses.
#[tokio::test(flavor = "multi_thread")]
async fn only_the_lease_holder_reconciles() {
    let k = cluster().await;
    fake_store(&k, "s3cr3t");
    k.apply(external_secret("app", json!({"name": "app-db"}), json!({})));
    let a = Reconciler::start_as(&k, "replica-a", &["--leader-election-identity", "a"]);
    let b = Reconciler::start_as(&k, "replica-b", &["--leader-election-identity", "b"]);
    wait_for("the Secret", 30, &a, || secret(&k, "app-db"));
    wait_for("the status", 15, &b, || {
        (ready(&es(&k, "app"))?.0 == "True").then_some(())
    });
    // More ExternalSecrets while both run.
    for i in 0..3 {
        k.apply(external_secret(
            &format!("more-{i}"),
            json!({"name": format!("more-{i}")}),
            json!({}),
        ));
    }
    for i in 0..3 {
        wait_for("more Secrets", 15, &a, || secret(&k, &format!("more-{i}")));
    }
    std::thread::sleep(Duration::from_secs(1));
    let writers: std::collections::BTreeSet<String> = k
        .requests()
        .into_iter()
        .filter(|q| {
            (q.path.contains("/secrets") && matches!(q.method.as_str(), "POST" | "PUT" | "PATCH"))
                || (q.is_status_write() && q.path.contains("/externalsecrets/"))
        })
        .filter_map(|q| q.user)
        .collect();
    assert_eq!(writers.len(), 1, "writers: {writers:?}");
    drop(b);
}

/// The ExternalSecret `app` (Secret `app-db`) with one `templateFrom` entry.
fn templated_external_secret(from: Value) -> Value {
    let mut e = external_secret("app", json!({"name": "app-db"}), json!({}));
    e["spec"]["target"]["template"] = json!({ "templateFrom": [from] });
    e
}

/// `templateFrom` a Secret of the ExternalSecret's namespace: that Secret is watched (by
/// name) and its template rendered.
#[tokio::test(flavor = "multi_thread")]
async fn template_from_a_secret_is_read_from_the_cluster() {
    let k = cluster().await;
    fake_store(&k, "s3cr3t");
    k.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "tpl", "namespace": NS},
        "data": {"config": b64("user=app password={{ .password }}")}
    }));
    k.apply(templated_external_secret(
        json!({"secret": {"name": "tpl", "items": [{"key": "config"}]}}),
    ));
    let r = Reconciler::start(&k, &[]);
    let s = wait_for("the templated Secret", 30, &r, || {
        data(&secret(&k, "app-db")?, "config")
    });
    assert_eq!(s, "user=app password=s3cr3t");
}

/// A `ClusterGenerator` wrapping a revocable kind (here `VaultDynamicSecret`) gets the
/// finalizer like the kind itself, and its lease is revoked when the ExternalSecret goes
/// (before: no finalizer, the lease outlived the ExternalSecret).
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_generator_wrapping_a_revocable_kind_is_revoked_through_the_finalizer() {
    let (vault_url, revoked) = fake_vault().await;
    let k = cluster().await;
    generator_kind_and_vault_token(&k, "ClusterGenerator", "clustergenerators", false);
    k.apply(json!({
        "apiVersion": "generators.external-secrets.io/v1alpha1",
        "kind": "ClusterGenerator",
        "metadata": {"name": "db"},
        "spec": {
            "kind": "VaultDynamicSecret",
            "generator": {"vaultDynamicSecretSpec": {
                "method": "POST",
                "path": "fake/creds",
                "provider": {
                    "server": vault_url,
                    "auth": {"tokenSecretRef": {"name": "vault-token", "namespace": NS, "key": "token"}}
                }
            }}
        }
    }));
    k.apply(generated_external_secret(
        "db",
        "db-creds",
        "ClusterGenerator",
        "db",
    ));
    let r = Reconciler::start(&k, &[]);
    let s = wait_for("the generated Secret", 30, &r, || secret(&k, "db-creds"));
    assert_eq!(data(&s, "username").as_deref(), Some("user-0"));
    assert_eq!(
        es(&k, "db")["metadata"]["finalizers"],
        json!(["esi.external-secrets.io/revoke-credentials"])
    );
    assert!(revoked.lock().unwrap().is_empty());
    deleted_and_revoked(&k, &r, "db", &revoked, &["fake/creds/0"]);
}

/// `templateFrom` a ConfigMap: watched by name like a Secret; an ExternalSecret whose
/// ConfigMap is missing fails naming it, and syncs once the ConfigMap is created (before:
/// ConfigMaps were never watched, the template failed for good).
#[tokio::test(flavor = "multi_thread")]
async fn template_from_a_config_map_is_read_from_the_cluster() {
    let k = cluster().await;
    fake_store(&k, "s3cr3t");
    k.apply(templated_external_secret(
        json!({"configMap": {"name": "tpl", "items": [{"key": "config"}]}}),
    ));
    let r = Reconciler::start(&k, &[]);
    let failed = wait_for("the missing ConfigMap reported", 30, &r, || {
        let c = ready(&es(&k, "app"))?;
        (c.0 == "False").then_some(c.2)
    });
    assert!(failed.contains("tpl"), "{failed}");
    assert!(secret(&k, "app-db").is_none());
    k.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "tpl", "namespace": NS},
        "data": {"config": "user=app password={{ .password }}"}
    }));
    let s = wait_for("the templated Secret", 30, &r, || {
        data(&secret(&k, "app-db")?, "config")
    });
    assert_eq!(s, "user=app password=s3cr3t");
    // A change of the ConfigMap re-renders.
    k.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "tpl", "namespace": NS},
        "data": {"config": "pw={{ .password }}"}
    }));
    wait_for("the re-rendered Secret", 30, &r, || {
        (data(&secret(&k, "app-db")?, "config")? == "pw=s3cr3t").then_some(())
    });
}

/// Registers the generator `kind` and writes the Vault token Secret `vault-token` of `NS`.
fn generator_kind_and_vault_token(k: &FakeKube, kind: &str, plural: &str, namespaced: bool) {
    k.register(
        "generators.external-secrets.io",
        "v1alpha1",
        kind,
        plural,
        namespaced,
        false,
    );
    k.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "vault-token", "namespace": NS},
        "data": {"token": b64("t")}
    }));
}

/// A namespaced `VaultDynamicSecret` generator `creds` on the fake Vault at `vault_url`.
fn vault_generator(k: &FakeKube, vault_url: &str) {
    generator_kind_and_vault_token(k, "VaultDynamicSecret", "vaultdynamicsecrets", true);
    k.apply(json!({
        "apiVersion": "generators.external-secrets.io/v1alpha1",
        "kind": "VaultDynamicSecret",
        "metadata": {"name": "creds", "namespace": NS},
        "spec": {
            "method": "POST",
            "path": "fake/creds",
            "provider": {"server": vault_url, "auth": {"tokenSecretRef": {"name": "vault-token", "key": "token"}}}
        }
    }));
}

/// The reconciler's record of the credentials issued for the ExternalSecret `uid`.
fn record(k: &FakeKube, uid: &str) -> Option<Value> {
    k.get(
        "v1",
        "Secret",
        Some("esi-system"),
        &format!("esi-issued-{uid}"),
    )
}

/// Waits until the ExternalSecret `uid` has nothing recorded.
fn no_record(k: &FakeKube, r: &Reconciler, uid: &str) {
    wait_for("nothing left recorded", 15, r, || {
        record(k, uid).is_none().then_some(())
    });
}

/// The `metadata.uid` of the ExternalSecret `name`.
fn es_uid(k: &FakeKube, name: &str) -> String {
    es(k, name)["metadata"]["uid"].as_str().unwrap().to_string()
}

/// The ExternalSecret `db` from the `VaultDynamicSecret` `creds` on a fake Vault, synced:
/// the cluster, the reconciler and the leases revoked.
async fn generated_db() -> (FakeKube, Reconciler, Arc<Mutex<Vec<String>>>) {
    generated_db_with(&[]).await
}

/// [`generated_db`] with the reconciler's `extra` flags.
async fn generated_db_with(extra: &[&str]) -> (FakeKube, Reconciler, Arc<Mutex<Vec<String>>>) {
    let (vault_url, revoked) = fake_vault().await;
    let k = cluster().await;
    vault_generator(&k, &vault_url);
    k.apply(generated_external_secret(
        "db",
        "db-creds",
        "VaultDynamicSecret",
        "creds",
    ));
    let r = Reconciler::start(&k, extra);
    wait_for("the generated Secret", 30, &r, || secret(&k, "db-creds"));
    (k, r, revoked)
}

/// The entries of the record of the ExternalSecret `uid`.
fn record_entries(k: &FakeKube, uid: &str) -> Vec<Value> {
    record(k, uid)
        .and_then(|r| data(&r, "issued"))
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Forces a sync of the generated ExternalSecret `db` (a new credential) with the
/// force-sync annotation `n`.
fn force_sync_db(k: &FakeKube, n: &str) {
    let mut again = generated_external_secret("db", "db-creds", "VaultDynamicSecret", "creds");
    again["metadata"]["annotations"] = json!({"force-sync": n});
    k.apply(again);
}

/// The record of issued credentials lives in the reconciler's namespace, not on the target
/// Secret tenants can write: a revocation entry forged on the Secret is never acted on
/// (before: the next sync revoked whatever the annotation named with the generator's
/// token); the replaced credential is revoked from the record; and a Secret deleted before
/// its ExternalSecret does not stop the revocation (before: the finalizer went without it).
#[tokio::test(flavor = "multi_thread")]
async fn revocation_follows_the_reconcilers_record_not_the_target_secret() {
    let (k, r, revoked) = generated_db_with(&["--revocation-grace", "0s"]).await;
    let uid = es_uid(&k, "db");
    let recorded = record(&k, &uid).expect("the record in the reconciler's namespace");
    assert!(recorded["data"]["issued"].is_string());

    // A tenant forges an entry on the target Secret.
    let mut forged = secret(&k, "db-creds").unwrap();
    forged["metadata"]["annotations"]["esi.external-secrets.io/issued-credentials"] = json!(
        r#"[{"namespace":"apps","kind":"VaultDynamicSecret","name":"creds","state":{"leaseId":"victim/lease"}}]"#
    );
    k.apply(forged);
    let mut again = generated_external_secret("db", "db-creds", "VaultDynamicSecret", "creds");
    again["metadata"]["annotations"] = json!({"force-sync": "1"});
    k.apply(again);
    wait_for("the second credential", 15, &r, || {
        (data(&secret(&k, "db-creds")?, "username")? == "user-1").then_some(())
    });
    wait_for("the first credential revoked", 15, &r, || {
        (!revoked.lock().unwrap().is_empty()).then_some(())
    });
    assert_eq!(
        *revoked.lock().unwrap(),
        ["fake/creds/0"],
        "never the forged one"
    );

    // The Secret goes first (a namespace deletion removes both at once).
    assert!(k.delete("v1", "Secret", Some(NS), "db-creds"));
    deleted_and_revoked(&k, &r, "db", &revoked, &["fake/creds/0", "fake/creds/1"]);
    no_record(&k, &r, &uid);
}

/// A target Secret that cannot take a generator's output (immutable with other data, or
/// controlled by another owner) is refused before anything is issued (before: a credential
/// was issued and revoked on every backoff retry; earlier still, leaked).
#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_cannot_be_written_is_refused_before_issuing() {
    let vault = common::fake_vault::FakeVault::start_with_password("pw").await;
    let k = cluster().await;
    vault_generator(&k, &vault.url);
    k.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db-creds", "namespace": NS},
        "immutable": true,
        "data": {"username": b64("someone-else")}
    }));
    k.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "app-creds", "namespace": NS, "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "Deployment", "name": "app",
            "uid": "0000-app", "controller": true}]},
        "data": {"username": b64("theirs")}
    }));
    k.apply(generated_external_secret(
        "db",
        "db-creds",
        "VaultDynamicSecret",
        "creds",
    ));
    k.apply(generated_external_secret(
        "app",
        "app-creds",
        "VaultDynamicSecret",
        "creds",
    ));
    let r = Reconciler::start(&k, &[]);
    for (es_name, why) in [("db", "immutable"), ("app", "owned by")] {
        let failed = wait_for("the failure", 30, &r, || {
            let c = ready(&es(&k, es_name))?;
            (c.0 == "False").then_some(c.2)
        });
        assert!(failed.contains(why), "{failed}");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(vault.issued(), 0, "nothing issued");
    assert!(vault.revoked().is_empty());
    no_record(&k, &r, &es_uid(&k, "db"));
    no_record(&k, &r, &es_uid(&k, "app"));
}

/// An ExternalSecret whose generator was deleted first (a `kubectl delete -f` of both, a
/// namespace deletion) is not held forever by the finalizer: what can never be revoked is
/// let go with a Warning Event (before: the finalizer stayed, the namespace hung).
#[tokio::test(flavor = "multi_thread")]
async fn a_gone_generator_does_not_hold_the_finalizer_forever() {
    let (k, r, revoked) = generated_db().await;
    assert!(k.delete(
        "generators.external-secrets.io/v1alpha1",
        "VaultDynamicSecret",
        Some(NS),
        "creds"
    ));
    // A reconciler that never built the generator (restarted: what it remembers is lost).
    drop(r);
    let r = Reconciler::start(&k, &[]);
    wait_for("the reconciler up", 30, &r, || {
        r.logs()
            .contains("Kubernetes resources synced")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    deleted_and_revoked(&k, &r, "db", &revoked, &[]);
    let event = wait_for("the Warning Event", 15, &r, || {
        k.list("events.k8s.io/v1", "Event", Some(NS))
            .into_iter()
            .find(|e| e["reason"] == "RevocationAbandoned")
    });
    assert_eq!(event["type"], "Warning");
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("VaultDynamicSecret apps/creds"),
        "{event}"
    );
}

/// `deletionPolicy: Delete` with nothing at the provider deletes only a Secret this
/// ExternalSecret wrote: a Secret of that name written by someone else survives (before:
/// deleted on every refresh, whoever wrote it).
#[tokio::test(flavor = "multi_thread")]
async fn deletion_policy_delete_spares_a_secret_it_did_not_write() {
    let k = cluster().await;
    fake_store(&k, "s3cr3t");
    k.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "victim", "namespace": NS},
        "data": {"tls.key": b64("theirs")}
    }));
    let mut e = external_secret(
        "x",
        json!({"name": "victim", "deletionPolicy": "Delete"}),
        json!({}),
    );
    e["spec"]["data"] = json!([]);
    e["spec"]["dataFrom"] = json!([{"find": {"name": {"regexp": "^nothing-matches$"}}}]);
    k.apply(e);
    let r = Reconciler::start(&k, &[]);
    let refused = wait_for("the refusal", 30, &r, || {
        let c = ready(&es(&k, "x"))?;
        (c.0 == "False").then_some(c.2)
    });
    assert!(refused.contains("victim"), "{refused}");
    assert_eq!(
        data(
            &secret(&k, "victim").expect("the Secret survives"),
            "tls.key"
        )
        .as_deref(),
        Some("theirs")
    );
}

/// Writes the record of the ExternalSecret `uid` by hand: `entries` lease ids of the
/// generator `creds`.
fn preload_record(k: &FakeKube, uid: &str, lease_ids: impl IntoIterator<Item = String>) {
    let entries: Vec<Value> = lease_ids
        .into_iter()
        .map(|id| {
            json!({"namespace": NS, "kind": "VaultDynamicSecret", "name": "creds",
                "state": {"leaseId": id}})
        })
        .collect();
    k.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("esi-issued-{uid}"), "namespace": "esi-system",
            "labels": {"esi.external-secrets.io/issued-credentials": "true"}},
        "data": {"issued": b64(&serde_json::to_string(&entries).unwrap())}
    }));
}

/// The record is read and checked before anything is issued: with revocations failing and
/// the record nearly full (250 of 256), nothing new is issued, and the status says why
/// (before: a credential was issued, then could not be recorded, and the failure never
/// reached the status).
#[tokio::test(flavor = "multi_thread")]
async fn a_full_record_issues_nothing_and_says_why() {
    let vault = common::fake_vault::FakeVault::start_with_password("pw").await;
    vault.set_revocations_failing(true);
    let k = cluster().await;
    vault_generator(&k, &vault.url);
    let created = k.apply(generated_external_secret(
        "db",
        "db-creds",
        "VaultDynamicSecret",
        "creds",
    ));
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    preload_record(&k, &uid, (0..250).map(|n| format!("old/{n}")));
    let r = Reconciler::start(&k, &[]);
    let failed = wait_for("Ready=False", 30, &r, || {
        let c = ready(&es(&k, "db"))?;
        (c.0 == "False").then_some(c)
    });
    assert_eq!(failed.1, "SecretSyncedError");
    assert!(
        failed.2.contains("record of issued credentials is full")
            && failed.2.contains("no credential is issued"),
        "{failed:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(vault.issued(), 0, "nothing issued");
    assert!(secret(&k, "db-creds").is_none());
    let kept = record(&k, &uid).expect("the record is kept");
    assert!(kept["data"]["issued"].is_string());
}

/// The record of an ExternalSecret that is gone (deleted without our finalizer) is swept
/// by the leader at start: its credentials revoked, the record deleted (before: kept, and
/// its credentials never revoked); a live ExternalSecret's record is left alone.
#[tokio::test(flavor = "multi_thread")]
async fn records_of_gone_external_secrets_are_swept() {
    let vault = common::fake_vault::FakeVault::start_with_password("pw").await;
    let k = cluster().await;
    vault_generator(&k, &vault.url);
    let created = k.apply(generated_external_secret(
        "db",
        "db-creds",
        "VaultDynamicSecret",
        "creds",
    ));
    let live = created["metadata"]["uid"].as_str().unwrap().to_string();
    preload_record(&k, "0000-gone", ["old/gone".to_string()]);
    let r = Reconciler::start(&k, &[]);
    wait_for("the generated Secret", 30, &r, || secret(&k, "db-creds"));
    wait_for("the gone record revoked", 30, &r, || {
        vault
            .revoked()
            .contains(&"old/gone".to_string())
            .then_some(())
    });
    no_record(&k, &r, "0000-gone");
    assert!(record(&k, &live).is_some(), "a live record stays");
    assert_eq!(vault.revoked(), ["old/gone"]);
}

/// An ExternalSecret of another controller class keeps the (shared) finalizer when deleted:
/// its own reconciler revokes what it recorded (before: this one removed the finalizer
/// without revoking anything, and the other never got to).
#[tokio::test(flavor = "multi_thread")]
async fn another_classs_external_secret_keeps_its_finalizer() {
    let k = cluster().await;
    fake_store(&k, "s3cr3t");
    k.apply(json!({
        "apiVersion": ESO,
        "kind": "ClusterSecretStore",
        "metadata": {"name": "theirs"},
        "spec": {"controller": "other", "provider": {"fake": {"data": [{"key": "db", "value": "x"}]}}}
    }));
    let mut theirs = external_secret(
        "theirs",
        json!({"name": "theirs-db"}),
        json!({"finalizers": ["esi.external-secrets.io/revoke-credentials"]}),
    );
    theirs["spec"]["secretStoreRef"]["name"] = json!("theirs");
    k.apply(theirs);
    k.apply(external_secret(
        "mine",
        json!({"name": "mine-db"}),
        json!({}),
    ));
    let r = Reconciler::start(&k, &[]);
    wait_for("our Secret", 30, &r, || secret(&k, "mine-db"));
    assert!(k.delete(ESO, "ExternalSecret", Some(NS), "theirs"));
    std::thread::sleep(Duration::from_secs(3));
    let left = k
        .get(ESO, "ExternalSecret", Some(NS), "theirs")
        .expect("still there, being deleted");
    assert_eq!(
        left["metadata"]["finalizers"],
        json!(["esi.external-secrets.io/revoke-credentials"])
    );
    assert!(secret(&k, "theirs-db").is_none());
}

/// A Secret write whose answer is lost (applied, then `504`; kube's client retries and
/// meets `409`) is read back: the Secret holds the new credential, so it counts as written
/// and nothing is revoked (before: the credential handed out in the Secret was revoked, and
/// another issued).
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_write_that_landed_despite_an_error_keeps_its_credential() {
    let vault = common::fake_vault::FakeVault::start_with_password("pw").await;
    let k = cluster().await;
    vault_generator(&k, &vault.url);
    k.lose_answers_to_next_writes(&format!("/api/v1/namespaces/{NS}/secrets"), 1);
    let created = k.apply(generated_external_secret(
        "db",
        "db-creds",
        "VaultDynamicSecret",
        "creds",
    ));
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    let r = Reconciler::start(&k, &[]);
    wait_for("Ready=True", 30, &r, || {
        (ready(&es(&k, "db"))?.0 == "True").then_some(())
    });
    let lost = k
        .requests()
        .iter()
        .filter(|q| {
            q.status == 504
                && q.path
                    .starts_with(&format!("/api/v1/namespaces/{NS}/secrets"))
        })
        .count();
    assert_eq!(lost, 1, "the fault was met");
    assert_eq!(
        data(&secret(&k, "db-creds").unwrap(), "username").as_deref(),
        Some("user-0")
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(vault.revoked().is_empty(), "{:?}", vault.revoked());
    assert_eq!(vault.issued(), 1);
    assert!(record(&k, &uid).is_some(), "the credential stays recorded");
}

/// A template reading its own target Secret, with a generator, is refused before anything
/// is issued (before: each write changed the source, which rendered again and issued a new
/// credential, without end).
#[tokio::test(flavor = "multi_thread")]
async fn a_template_reading_its_own_target_is_refused_before_issuing() {
    let vault = common::fake_vault::FakeVault::start_with_password("pw").await;
    let k = cluster().await;
    vault_generator(&k, &vault.url);
    let mut e = generated_external_secret("db", "db-creds", "VaultDynamicSecret", "creds");
    e["spec"]["target"]["template"] = json!({"mergePolicy": "Merge", "templateFrom": [
        {"secret": {"name": "db-creds", "items": [{"key": "username"}]}}]});
    k.apply(e);
    let r = Reconciler::start(&k, &[]);
    let failed = wait_for("Ready=False", 30, &r, || {
        let c = ready(&es(&k, "db"))?;
        (c.0 == "False").then_some(c.2)
    });
    assert!(
        failed.contains("names the target Secret \"db-creds\" itself"),
        "{failed}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(vault.issued(), 0);
    assert!(secret(&k, "db-creds").is_none());
}

/// A replaced credential stays valid for `--revocation-grace` after the Secret holding its
/// successor was written (workloads still read it until the kubelet refreshes the mounted
/// Secret, or until they restart), then it is revoked (before: revoked right after the
/// write). The record holds it meanwhile, with its deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_credential_stays_valid_for_the_grace() {
    let (k, r, revoked) = generated_db_with(&["--revocation-grace", "4s"]).await;
    let uid = es_uid(&k, "db");
    force_sync_db(&k, "1");
    wait_for("the second credential", 15, &r, || {
        (data(&secret(&k, "db-creds")?, "username")? == "user-1").then_some(())
    });
    let written = Instant::now();
    let entries = wait_for(
        "both recorded, the old one with its deadline",
        5,
        &r,
        || {
            let e = record_entries(&k, &uid);
            (e.len() == 2 && e.iter().any(|e| e["revokeAfter"].is_u64())).then_some(e)
        },
    );
    let old = entries.iter().find(|e| e["revokeAfter"].is_u64()).unwrap();
    assert_eq!(old["state"]["leaseId"], "fake/creds/0");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        revoked.lock().unwrap().is_empty(),
        "still valid right after the write: {:?}",
        revoked.lock().unwrap()
    );
    wait_for("the old credential revoked after the grace", 20, &r, || {
        (!revoked.lock().unwrap().is_empty()).then_some(())
    });
    assert!(
        written.elapsed() >= Duration::from_secs(2),
        "{:?}",
        written.elapsed()
    );
    assert_eq!(*revoked.lock().unwrap(), ["fake/creds/0"]);
    wait_for("only the current one recorded", 10, &r, || {
        (record_entries(&k, &uid).len() == 1).then_some(())
    });
    deleted_and_revoked(&k, &r, "db", &revoked, &["fake/creds/0", "fake/creds/1"]);
}

/// Deleting the ExternalSecret revokes everything it recorded at once, replaced credentials
/// still in their grace included.
#[tokio::test(flavor = "multi_thread")]
async fn deletion_revokes_credentials_in_their_grace_at_once() {
    let (k, r, revoked) = generated_db_with(&["--revocation-grace", "1h"]).await;
    let uid = es_uid(&k, "db");
    force_sync_db(&k, "1");
    wait_for("both recorded", 15, &r, || {
        (record_entries(&k, &uid).len() == 2).then_some(())
    });
    assert!(revoked.lock().unwrap().is_empty());
    assert!(k.delete(ESO, "ExternalSecret", Some(NS), "db"));
    wait_for("the ExternalSecret gone", 30, &r, || {
        k.get(ESO, "ExternalSecret", Some(NS), "db")
            .is_none()
            .then_some(())
    });
    let mut all = revoked.lock().unwrap().clone();
    all.sort();
    assert_eq!(all, ["fake/creds/0", "fake/creds/1"]);
    no_record(&k, &r, &uid);
}

/// The credentials of an ExternalSecret whose generator object was deleted first (a
/// namespace deletion, `kubectl delete -f` of both) are still revoked, through the
/// generator this reconciler last built (before: abandoned, left to lapse at their TTL).
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_generators_credentials_are_still_revoked() {
    let (k, r, revoked) = generated_db().await;
    assert!(k.delete(
        "generators.external-secrets.io/v1alpha1",
        "VaultDynamicSecret",
        Some(NS),
        "creds"
    ));
    std::thread::sleep(Duration::from_secs(1));
    deleted_and_revoked(&k, &r, "db", &revoked, &["fake/creds/0"]);
    assert!(
        !k.list("events.k8s.io/v1", "Event", Some(NS))
            .iter()
            .any(|e| e["reason"] == "RevocationAbandoned"),
        "nothing abandoned"
    );
}

/// The Merge patch carries the `resourceVersion` read: a Secret changed in between (another
/// writer) makes it a 409; this sync's credential is revoked and the next sync merges into
/// the Secret as it is then (before: merged over the change blindly).
#[tokio::test(flavor = "multi_thread")]
async fn a_merge_into_a_secret_changed_meanwhile_is_refused_and_retried() {
    let vault = common::fake_vault::FakeVault::start_with_password("pw").await;
    let k = cluster().await;
    vault_generator(&k, &vault.url);
    k.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db-creds", "namespace": NS},
        "data": {"keep": b64("theirs")}
    }));
    let path = format!("/api/v1/namespaces/{NS}/secrets/db-creds");
    k.change_before_next_writes(&path, 1);
    let mut e = generated_external_secret("db", "db-creds", "VaultDynamicSecret", "creds");
    e["spec"]["target"]["creationPolicy"] = json!("Merge");
    k.apply(e);
    let r = Reconciler::start(&k, &[]);
    let s = wait_for("the second credential merged", 30, &r, || {
        let s = secret(&k, "db-creds")?;
        (data(&s, "username")? == "user-1").then_some(s)
    });
    assert_eq!(data(&s, "keep").as_deref(), Some("theirs"));
    assert_eq!(s["metadata"]["annotations"]["fake.test/changed"], "0");
    let conflicts = k
        .requests()
        .iter()
        .filter(|q| q.method == "PATCH" && q.path == path && q.status == 409)
        .count();
    assert_eq!(conflicts, 1);
    wait_for("the first credential revoked", 10, &r, || {
        (vault.revoked() == ["fake/creds/0"]).then_some(())
    });
}

/// A credential is recorded as soon as its generator issued it, before the rest of the sync
/// (here a store read that hangs until the backend timeout): a crash meanwhile leaves it
/// recorded (before: recorded only after every fetch and template, so the whole sync was a
/// window in which a crash left it unrecorded). The sync then fails and it is revoked.
#[tokio::test(flavor = "multi_thread")]
async fn a_credential_is_recorded_before_the_rest_of_the_sync() {
    let vault = common::fake_vault::FakeVault::start_with_password("pw").await;
    // A backend that accepts connections and never answers.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_addr = format!("http://{}", hang.local_addr().unwrap());
    let k = cluster().await;
    vault_generator(&k, &vault.url);
    k.apply(json!({
        "apiVersion": ESO, "kind": "SecretStore",
        "metadata": {"name": "hang", "namespace": NS},
        "spec": {"provider": {"vault": {"server": hang_addr, "path": "secret", "version": "v2",
            "auth": {"tokenSecretRef": {"name": "vault-token", "key": "token"}}}}}
    }));
    let mut e = generated_external_secret("db", "db-creds", "VaultDynamicSecret", "creds");
    e["spec"]["data"] = json!([{"secretKey": "other", "remoteRef": {"key": "app"},
        "sourceRef": {"storeRef": {"kind": "SecretStore", "name": "hang"}}}]);
    let created = k.apply(e);
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    let r = Reconciler::start(&k, &["--backend-timeout", "8s"]);
    let entries = wait_for(
        "the credential recorded while the sync goes on",
        20,
        &r,
        || {
            let e = record_entries(&k, &uid);
            (!e.is_empty()).then_some(e)
        },
    );
    assert_eq!(entries[0]["state"]["leaseId"], "fake/creds/0");
    assert!(vault.revoked().is_empty(), "the sync is still running");
    assert!(secret(&k, "db-creds").is_none());
    wait_for("revoked once the sync failed", 30, &r, || {
        vault
            .revoked()
            .contains(&"fake/creds/0".to_string())
            .then_some(())
    });
    drop(hang);
}
