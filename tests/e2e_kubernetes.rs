//! End to end, Kubernetes mode: the real `esi-server serve --kubernetes` against the
//! stateful fake API server of `tests/common/fake_kube.rs` (HTTPS, a kubeconfig), driven
//! as `kubectl` would: objects applied, changed and deleted take effect, a rotated Secret
//! reaches its store, a bad object gets `Ready=False` while the rest serves, only the
//! elected leader writes status, and a failing API keeps the last snapshot serving. The
//! identity kinds (OIDCFederation and its presets, SpiffeFederation) are served like
//! KubernetesFederations: their tokens, conditions, invalid specs and deletion.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::fake_kube::{FakeKube, Fault};
use common::*;
use serde_json::{Value, json};

const AUD: &str = "https://esi-federation.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";
const AUTHZ: &str = "federation.external-secrets.io/v1alpha1";
const STORE: &str = "external-secrets.io/v1";

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap()
}

fn token(ns: &str, sa: &str) -> String {
    mint("ec-1", &sa_claims(ISS, AUD, ns, sa), None)
}

/// The fake API server with our kinds and ESO's we serve.
async fn cluster() -> FakeKube {
    let k = FakeKube::start().await;
    k.register(
        "federation.external-secrets.io",
        "v1alpha1",
        "Authorization",
        "authorizations",
        false,
        true,
    );
    k.register(
        "identity.federation.external-secrets.io",
        "v1alpha1",
        "KubernetesFederation",
        "kubernetesfederations",
        false,
        true,
    );
    k.register(
        "external-secrets.io",
        "v1",
        "ClusterSecretStore",
        "clustersecretstores",
        false,
        true,
    );
    k.register(
        "generators.external-secrets.io",
        "v1alpha1",
        "Password",
        "passwords",
        true,
        false,
    );
    k
}

/// What the Kubernetes ledger and a VaultDynamicSecret generator need registered.
fn ledger_kinds(k: &FakeKube) {
    for (g, kind, plural, namespaced, status) in [
        (
            "generators.external-secrets.io",
            "VaultDynamicSecret",
            "vaultdynamicsecrets",
            true,
            false,
        ),
        (
            "generators.external-secrets.io",
            "GeneratorState",
            "generatorstates",
            true,
            false,
        ),
        (
            "federation.external-secrets.io",
            "AuthorizedIdentity",
            "authorizedidentities",
            false,
            true,
        ),
    ] {
        k.register(g, "v1alpha1", kind, plural, namespaced, status);
    }
}

fn authorization(name: &str, stores: &[&str]) -> Value {
    json!({
        "apiVersion": AUTHZ,
        "kind": "Authorization",
        "metadata": {"name": name},
        "spec": {
            "federationRef": {"kind": "KubernetesFederation", "name": "alpha"},
            "subject": {"oidc": {"issuer": ISS, "subject": "system:serviceaccount:apps:app"}},
            "allowedClusterSecretStores": stores,
        }
    })
}

fn fake_store(name: &str, value: &str) -> Value {
    json!({
        "apiVersion": STORE,
        "kind": "ClusterSecretStore",
        "metadata": {"name": name},
        "spec": {"provider": {"fake": {"data": [{"key": "db", "value": value}]}}}
    })
}

/// A kubeconfig for `user` in a fresh directory (kept alive by the returned guard).
fn kubeconfig(k: &FakeKube, user: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    k.kubeconfig_as(&path, user);
    (dir, path)
}

fn start(path: &std::path::Path) -> Server {
    start_with_lease(path, "2s")
}

fn start_with_lease(path: &std::path::Path, lease: &str) -> Server {
    Server::start_kubernetes(
        path,
        &[
            "--leader-election-namespace",
            "esi-system",
            "--leader-election-lease-duration",
            lease,
        ],
    )
}

async fn wait_ready(server: &Server, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, _) = server.get("/readyz").await;
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not ready within {within:?}:\n{}",
            server.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn read(server: &Server, store: &str, token: &str) -> (u16, String) {
    server
        .post(
            &format!("/secretstore/{store}/secrets/db"),
            Some(token),
            json!({}),
        )
        .await
}

/// Polls `read` until it answers `want`; returns how long that took.
async fn until_status(
    server: &Server,
    store: &str,
    token: &str,
    want: u16,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body) = read(server, store, token).await;
        if status == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "no {want} within {within:?} (last {status} {body}):\n{}",
            server.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `Ready` condition of an object, once it exists (and matches `pred`).
async fn wait_ready_condition(
    k: &FakeKube,
    api_version: &str,
    kind: &str,
    name: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let obj = k.get(api_version, kind, None, name);
        if let Some(obj) = &obj {
            // ESO's own `Ready` is left alone on stores: ours is `FederationReady` there.
            let ty = if kind == "ClusterSecretStore" {
                "FederationReady"
            } else {
                "Ready"
            };
            let cond = obj["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == ty))
                .cloned();
            if let Some(c) = cond
                && pred(&c)
            {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{kind}/{name}: no matching Ready condition; object: {obj:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_applied_changed_and_deleted_change_the_decision_and_get_ready_conditions() {
    let k = cluster().await;
    k.apply(yaml(&static_federation(ISS, AUD)));
    k.apply(fake_store("fake", "v1"));
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = start(&path);
    wait_ready(&server, Duration::from_secs(20)).await;
    let t = token("apps", "app");

    // No Authorization yet: denied (shown as not found).
    assert_eq!(read(&server, "fake", &t).await.0, 404);

    // Applied: in effect within a second.
    k.apply(authorization("app", &["fake"]));
    let took = until_status(&server, "fake", &t, 200, Duration::from_secs(5)).await;
    eprintln!("applied Authorization in effect after {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let (_, body) = read(&server, "fake", &t).await;
    assert_eq!(body, "\"v1\"");
    let ready =
        wait_ready_condition(&k, AUTHZ, "Authorization", "app", |c| c["status"] == "True").await;
    assert_eq!(ready["reason"], "Loaded");
    assert_eq!(ready["observedGeneration"], 1);

    // Changed: the store is no longer allowed.
    let mut changed = authorization("app", &[]);
    changed["spec"]["allowedClusterSecretStores"] = json!([]);
    k.apply(changed);
    let took = until_status(&server, "fake", &t, 404, Duration::from_secs(5)).await;
    eprintln!("changed Authorization in effect after {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    wait_ready_condition(&k, AUTHZ, "Authorization", "app", |c| {
        c["observedGeneration"] == 2
    })
    .await;
    k.apply(authorization("app", &["fake"]));
    until_status(&server, "fake", &t, 200, Duration::from_secs(5)).await;

    // A bad object gets Ready=False with the reason; the rest keeps serving.
    let mut broken = authorization("broken", &["fake"]);
    broken["spec"]["allowedRemoteKeys"] = json!({"fake": []});
    k.apply(broken);
    k.apply(authorization("dangling", &["nope"]));
    let invalid = wait_ready_condition(&k, AUTHZ, "Authorization", "broken", |c| {
        c["status"] == "False"
    })
    .await;
    assert_eq!(invalid["reason"], "InvalidSpec", "{invalid}");
    assert!(
        invalid["message"]
            .as_str()
            .unwrap()
            .contains("allowedRemoteKeys"),
        "{invalid}"
    );
    let missing = wait_ready_condition(&k, AUTHZ, "Authorization", "dangling", |c| {
        c["status"] == "False"
    })
    .await;
    assert_eq!(missing["reason"], "MissingReference", "{missing}");
    assert!(
        missing["message"]
            .as_str()
            .unwrap()
            .contains("ClusterSecretStore nope"),
        "{missing}"
    );
    assert_eq!(read(&server, "fake", &t).await.0, 200);
    // The federation is in force, with what its owner should know (static keys beside a
    // url that is then never fetched); the store is loaded.
    let fed = wait_ready_condition(
        &k,
        "identity.federation.external-secrets.io/v1alpha1",
        "KubernetesFederation",
        "alpha",
        |c| c["status"] == "True",
    )
    .await;
    assert_eq!(fed["reason"], "LoadedWithWarnings", "{fed}");
    assert!(
        fed["message"]
            .as_str()
            .unwrap()
            .contains("keys are not fetched from url"),
        "{fed}"
    );
    wait_ready_condition(&k, STORE, "ClusterSecretStore", "fake", |c| {
        c["status"] == "True"
    })
    .await;

    // Status is written once per generation, not in a loop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes = k.requests().iter().filter(|r| r.is_status_write()).count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = k.requests().iter().filter(|r| r.is_status_write()).count();
    assert_eq!(writes, later, "status writes continued without a change");

    // Deleted: denied again.
    k.delete(AUTHZ, "Authorization", None, "app");
    let took = until_status(&server, "fake", &t, 404, Duration::from_secs(5)).await;
    eprintln!("deleted Authorization in effect after {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_reaches_its_store_and_no_other_secret_is_read() {
    install_crypto();
    let Some((addr, root)) = openbao() else {
        return;
    };
    vault_put(
        &addr,
        &root,
        "secret",
        "kube-e2e/db",
        json!({"v": "from-openbao"}),
    )
    .await;
    let k = cluster().await;
    k.apply(yaml(&static_federation(ISS, AUD)));
    k.apply(authorization("app", &["vault"]));
    k.apply(json!({
        "apiVersion": STORE, "kind": "ClusterSecretStore", "metadata": {"name": "vault"},
        "spec": {"provider": {"vault": {"server": addr, "path": "secret", "version": "v2",
            "auth": {"tokenSecretRef": {"name": "vault-token", "namespace": "esi-system", "key": "token"}}}}}
    }));
    let secret = |token: &str| {
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "vault-token", "namespace": "esi-system"},
               "data": {"token": b64(token)}})
    };
    k.apply(secret("not-the-token"));
    // Unrelated Secrets are never listed or watched.
    k.apply(json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "unrelated", "namespace": "esi-system"},
                   "data": {"password": b64("do-not-read")}}));
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = start(&path);
    wait_ready(&server, Duration::from_secs(20)).await;
    let t = token("apps", "app");
    let path_of = "/secretstore/vault/secrets/kube-e2e%2Fdb";
    let (status, body) = server.post(path_of, Some(&t), json!({})).await;
    assert_ne!(status, 200, "a wrong token must not read: {body}");

    // Rotated: the store uses the new token within seconds.
    k.apply(secret(&root));
    let start = Instant::now();
    loop {
        let (status, body) = server.post(path_of, Some(&t), json!({})).await;
        if status == 200 {
            assert!(body.contains("from-openbao"), "{body}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "rotation not in effect: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("rotated Secret in effect after {:?}", start.elapsed());

    for r in k.requests() {
        if r.path.contains("/secrets") {
            assert!(
                r.path.starts_with("/api/v1/namespaces/esi-system/secrets")
                    && r.query
                        .contains("fieldSelector=metadata.name%3Dvault-token"),
                "a Secret read beyond the referenced one: {} {}?{}",
                r.method,
                r.path,
                r.query
            );
        }
    }
    assert!(
        !server
            .logs()
            .iter()
            .any(|l| l.contains(&root) || l.contains("do-not-read")),
        "a value reached the logs"
    );
}

/// A Secret named by a field other than `…SecretRef` (vault's `auth.appRole.roleRef`) is
/// watched too: the store builds once it arrives and follows its rotation; no other
/// Secret is read.
#[tokio::test(flavor = "multi_thread")]
async fn an_approle_role_ref_secret_is_watched_and_its_rotation_reaches_the_store() {
    install_crypto();
    let Some((addr, root)) = openbao() else {
        return;
    };
    let (Ok(role_id), Ok(secret_id)) = (
        std::env::var("ESI_TEST_APPROLE_ROLE_ID"),
        std::env::var("ESI_TEST_APPROLE_SECRET_ID"),
    ) else {
        eprintln!("skipped: no AppRole (run scripts/openbao.sh start)");
        return;
    };
    vault_put(
        &addr,
        &root,
        "secret",
        "kube-e2e/approle",
        json!({"v": "via-approle"}),
    )
    .await;
    let k = cluster().await;
    k.apply(yaml(&static_federation(ISS, AUD)));
    k.apply(authorization("app", &["vault-approle"]));
    k.apply(json!({
        "apiVersion": STORE, "kind": "ClusterSecretStore", "metadata": {"name": "vault-approle"},
        "spec": {"provider": {"vault": {"server": addr, "path": "secret", "version": "v2",
            "auth": {"appRole": {
                "roleRef": {"name": "approle-role", "namespace": "esi-system", "key": "id"},
                "secretRef": {"name": "approle-secret", "namespace": "esi-system", "key": "id"}}}}}}
    }));
    let secret = |name: &str, value: &str| {
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": name, "namespace": "esi-system"},
               "data": {"id": b64(value)}})
    };
    k.apply(secret("approle-secret", &secret_id));
    k.apply(secret("approle-role", "not-the-role"));
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = start(&path);
    wait_ready(&server, Duration::from_secs(20)).await;
    let t = token("apps", "app");
    let path_of = "/secretstore/vault-approle/secrets/kube-e2e%2Fapprole";
    let (status, body) = server.post(path_of, Some(&t), json!({})).await;
    assert_ne!(status, 200, "a wrong role must not read: {body}");

    // Rotated: the store logs in with the new role id within seconds.
    k.apply(secret("approle-role", &role_id));
    let start = Instant::now();
    loop {
        let (status, body) = server.post(path_of, Some(&t), json!({})).await;
        if status == 200 {
            assert!(body.contains("via-approle"), "{body}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the roleRef Secret's rotation not in effect: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "rotated roleRef Secret in effect after {:?}",
        start.elapsed()
    );
    for r in k.requests() {
        if r.path.contains("/secrets") {
            assert!(
                r.path.starts_with("/api/v1/namespaces/esi-system/secrets")
                    && (r
                        .query
                        .contains("fieldSelector=metadata.name%3Dapprole-role")
                        || r.query
                            .contains("fieldSelector=metadata.name%3Dapprole-secret")),
                "a Secret read beyond the referenced ones: {} {}?{}",
                r.method,
                r.path,
                r.query
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_leader_writes_status_and_another_replica_takes_over() {
    let k = cluster().await;
    k.add_user("replica-a");
    k.add_user("replica-b");
    k.apply(yaml(&static_federation(ISS, AUD)));
    k.apply(fake_store("fake", "v1"));
    k.apply(authorization("app", &["fake"]));
    let (_da, path_a) = kubeconfig(&k, "replica-a");
    let (_db, path_b) = kubeconfig(&k, "replica-b");
    // A lease long enough that a loaded machine does not flip it by itself.
    let a = start_with_lease(&path_a, "4s");
    let b = start_with_lease(&path_b, "4s");
    wait_ready(&a, Duration::from_secs(20)).await;
    wait_ready(&b, Duration::from_secs(20)).await;
    let t = token("apps", "app");
    assert_eq!(read(&a, "fake", &t).await.0, 200);
    assert_eq!(read(&b, "fake", &t).await.0, 200);

    wait_ready_condition(&k, AUTHZ, "Authorization", "app", |c| c["status"] == "True").await;
    let writers = |k: &FakeKube| -> std::collections::BTreeSet<String> {
        k.requests()
            .iter()
            .filter(|r| r.is_status_write() && r.status < 300)
            .filter_map(|r| r.user.clone())
            .collect()
    };
    let first = writers(&k);
    assert_eq!(first.len(), 1, "status written by {first:?}");
    let leader = first.into_iter().next().unwrap();
    let lease = k
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            Some("esi-system"),
            "esi-federation",
        )
        .expect("a Lease");
    eprintln!("leader {leader}, lease {}", lease["spec"]);

    // The leader goes away; the other replica takes the Lease over and writes status.
    let (survivor, survivor_user) = if leader == "replica-a" {
        drop(a);
        (b, "replica-b")
    } else {
        drop(b);
        (a, "replica-a")
    };
    k.clear_requests();
    k.apply(authorization("second", &["fake"]));
    let c = wait_ready_condition(&k, AUTHZ, "Authorization", "second", |c| {
        c["status"] == "True"
    })
    .await;
    assert_eq!(c["reason"], "Loaded");
    let now = writers(&k);
    assert_eq!(
        now,
        [survivor_user.to_string()].into(),
        "status after the leader left"
    );
    assert_eq!(read(&survivor, "fake", &t).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_that_fails_keeps_the_last_snapshot_serving() {
    let k = cluster().await;
    k.apply(yaml(&static_federation(ISS, AUD)));
    k.apply(fake_store("fake", "v1"));
    k.apply(authorization("app", &["fake"]));
    // Not ready while nothing can be listed.
    k.set_fault(Fault::RefuseReads);
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = start(&path);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(server.get("/readyz").await.0, 503);
    let t = token("apps", "app");
    assert_ne!(
        read(&server, "fake", &t).await.0,
        200,
        "nothing is granted before the first sync"
    );
    k.set_fault(Fault::None);
    wait_ready(&server, Duration::from_secs(30)).await;
    assert_eq!(read(&server, "fake", &t).await.0, 200);

    // Watches and lists fail: the last snapshot keeps serving, readiness stays.
    k.set_fault(Fault::RefuseReads);
    k.drop_watches();
    for _ in 0..20 {
        assert_eq!(read(&server, "fake", &t).await.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.get("/readyz").await.0, 200);
    // Back: a change made meanwhile arrives through the re-list.
    k.apply(fake_store("fake", "v2"));
    k.set_fault(Fault::None);
    let start = Instant::now();
    loop {
        let (status, body) = read(&server, "fake", &t).await;
        if status == 200 && body == "\"v2\"" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the change made during the outage never arrived ({status} {body})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hand_written_policies_apply_beside_the_watched_authorizations() {
    let k = cluster().await;
    k.apply(yaml(&static_federation(ISS, AUD)));
    k.apply(fake_store("fake", "v1"));
    k.apply(authorization("app", &["fake"]));
    let (dir, path) = kubeconfig(&k, "admin");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let server = Server::start_kubernetes(
        &path,
        &[
            "--policies",
            policies.to_str().unwrap(),
            "--leader-election-namespace",
            "esi-system",
        ],
    );
    wait_ready(&server, Duration::from_secs(20)).await;
    let t = token("apps", "app");
    assert_eq!(read(&server, "fake", &t).await.0, 200);

    // A forbid in a .cedar file wins over the watched Authorization's permit.
    std::fs::write(
        policies.join("forbid.cedar"),
        "@id(\"no-fake-db\")\nforbid (principal, action == Esi::Action::\"get\", resource is Esi::RemoteKey)\nwhen { resource.store == \"fake\" && resource.key == \"db\" };\n",
    )
    .unwrap();
    until_status(&server, "fake", &t, 404, Duration::from_secs(5)).await;
    // The watches still apply beside it: another store, allowed.
    k.apply(fake_store("other", "v1"));
    k.apply(authorization("app", &["fake", "other"]));
    until_status(&server, "other", &t, 200, Duration::from_secs(5)).await;
    assert_eq!(read(&server, "fake", &t).await.0, 404);
    // Removed: allowed again.
    std::fs::remove_file(policies.join("forbid.cedar")).unwrap();
    until_status(&server, "fake", &t, 200, Duration::from_secs(5)).await;
}

/// Audit lines of `event` in a server's log.
fn audit(server: &Server, event: &str) -> Vec<Value> {
    server
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "esi::audit" && v["event"] == event)
        .collect()
}

/// Issue 10: two replicas on the Kubernetes ledger (ESO GeneratorStates, ESE
/// AuthorizedIdentities). A credential issued through one is renewed and revoked through
/// the other; credentials left to expire are revoked by the sweepers exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_the_kubernetes_ledger_and_revoke_each_credential_once() {
    install_crypto();
    let Some((addr, root)) = openbao() else {
        return;
    };
    let k = cluster().await;
    ledger_kinds(&k);
    k.add_user("replica-a");
    k.add_user("replica-b");
    k.apply(yaml(&static_federation(ISS, AUD)));
    let mut authz = authorization("app", &[]);
    authz["spec"]["allowedGenerators"] =
        json!([{"name": "db", "kind": "VaultDynamicSecret", "namespace": "apps"}]);
    k.apply(authz);
    k.apply(json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "vault-token-db", "namespace": "apps"},
                   "data": {"token": b64(&root)}}));
    k.apply(json!({
        "apiVersion": "generators.external-secrets.io/v1alpha1", "kind": "VaultDynamicSecret",
        "metadata": {"name": "db", "namespace": "apps"},
        "spec": {"method": "POST", "path": "auth/token/create",
                 "parameters": {"ttl": "4s", "policies": ["default"], "no_parent": true},
                 "resultType": "Auth",
                 "provider": {"server": addr, "auth": {"tokenSecretRef": {"name": "vault-token-db", "key": "token"}}}}
    }));
    let (_da, path_a) = kubeconfig(&k, "replica-a");
    let (_db, path_b) = kubeconfig(&k, "replica-b");
    let extra = [
        "--leader-election-namespace",
        "esi-system",
        "--ledger",
        "kubernetes",
        "--sweep-interval",
        "1s",
    ];
    let a = Server::start_kubernetes(&path_a, &extra);
    let b = Server::start_kubernetes(&path_b, &extra);
    wait_ready(&a, Duration::from_secs(20)).await;
    wait_ready(&b, Duration::from_secs(20)).await;
    let t = token("apps", "app");
    let states = |k: &FakeKube| {
        // The ledger keeps its GeneratorStates in the server's namespace only.
        k.list(
            "generators.external-secrets.io/v1alpha1",
            "GeneratorState",
            Some("esi-system"),
        )
    };
    let accessor_alive = |accessor: String| {
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
    let accessor_of = |issued: &Value| {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(issued["data"]["accessor"].as_str().unwrap())
            .unwrap();
        String::from_utf8(raw).unwrap()
    };

    // Issued through A: recorded as a GeneratorState and on the AuthorizedIdentity.
    let (status, body) = a
        .post(
            "/v1/generators/apps/VaultDynamicSecret/db",
            Some(&t),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let issued: Value = serde_json::from_str(&body).unwrap();
    let id = issued["credential"]["id"].as_str().unwrap().to_string();
    let accessor = accessor_of(&issued);
    assert!(accessor_alive(accessor.clone()).await);
    assert_eq!(states(&k).len(), 1);
    let identities = k.list(
        "federation.external-secrets.io/v1alpha1",
        "AuthorizedIdentity",
        None,
    );
    assert_eq!(identities.len(), 1, "{identities:?}");
    assert_eq!(
        identities[0]["spec"]["issuedCredentials"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{}",
        identities[0]
    );

    // Renewed, then revoked, through B.
    let resp = b
        .client
        .post(format!("{}/v1/credentials/{id}/renew", b.url))
        .bearer_auth(&t)
        .json(&json!({"increment": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let resp = b
        .client
        .delete(format!("{}/v1/credentials/{id}", b.url))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "{}", resp.text().await.unwrap());
    assert!(!accessor_alive(accessor).await, "revoked at OpenBao");
    assert!(states(&k).is_empty(), "{:?}", states(&k));

    // Three credentials left to expire (4 s): both sweepers run every second; each
    // credential is revoked once.
    let mut accessors = Vec::new();
    for server in [&a, &b, &a] {
        let (status, body) = server
            .post(
                "/v1/generators/apps/VaultDynamicSecret/db",
                Some(&t),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        accessors.push(accessor_of(&serde_json::from_str(&body).unwrap()));
    }
    let start = Instant::now();
    while !states(&k).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not swept: {:?}",
            states(&k)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let swept = |s: &Server| {
        audit(s, "revoke")
            .into_iter()
            .filter(|l| l["reason"] == "sweep" && l["outcome"] == "ok")
            .count()
    };
    assert_eq!(
        swept(&a) + swept(&b),
        3,
        "sweep revocations: a {} b {}",
        swept(&a),
        swept(&b)
    );
    for accessor in accessors {
        assert!(!accessor_alive(accessor).await);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn federations_say_whether_their_keys_can_be_fetched() {
    let k = cluster().await;
    let issuer = Issuer::start(jwks(&["rsa-1"]), true).await;
    let federation = |name: &str, url: &str, ca: Option<&str>| {
        let mut f = json!({
            "apiVersion": "identity.federation.external-secrets.io/v1alpha1",
            "kind": "KubernetesFederation",
            "metadata": {"name": name},
            "spec": {"url": url, "issuer": ISS, "audiences": [AUD], "clientCAPolicy": "Ignore"}
        });
        if let Some(ca) = ca {
            f["spec"]["caBundle"] = json!(b64(ca));
        }
        f
    };
    k.apply(federation("up", &issuer.url, Some(&issuer.ca.ca_pem)));
    k.apply(federation("down", "https://127.0.0.1:9", None));
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = start(&path);
    wait_ready(&server, Duration::from_secs(20)).await;
    const FED: &str = "identity.federation.external-secrets.io/v1alpha1";
    let down = wait_ready_condition(&k, FED, "KubernetesFederation", "down", |c| {
        c["reason"] == "JWKSUnreachable"
    })
    .await;
    assert_eq!(down["status"], "False", "{down}");
    assert!(
        down["message"]
            .as_str()
            .unwrap()
            .contains("cannot be fetched"),
        "{down}"
    );
    let up = wait_ready_condition(&k, FED, "KubernetesFederation", "up", |c| {
        c["status"] == "True"
    })
    .await;
    assert_eq!(up["reason"], "Loaded", "{up}");
    assert!(
        issuer.jwks_hits() >= 1,
        "the keys were fetched ahead of any request"
    );
}

// ---------------------------------------------------------------------------------------
// Review (wip/review)
// ---------------------------------------------------------------------------------------

/// ESO, running in the same cluster, keeps its own `Ready` condition on every
/// ClusterSecretStore (and its ExternalSecret controller refuses a store whose `Ready` is not
/// `True`: the flood gate). A store ESO serves but this server does not (here: a provider it
/// does not implement) must not be flipped to `Ready=False` under ESO's feet.
#[tokio::test(flavor = "multi_thread")]
async fn review_status_writes_leave_esos_ready_condition_on_cluster_secret_stores() {
    let k = cluster().await;
    k.apply(yaml(&static_federation(ISS, AUD)));
    k.apply(json!({
        "apiVersion": STORE, "kind": "ClusterSecretStore", "metadata": {"name": "aws-for-eso"},
        "spec": {"provider": {"aws": {"service": "SecretsManager", "region": "eu-west-1"}}}
    }));
    // What ESO's store controller writes (its SecretStoreStatusCondition has no
    // observedGeneration).
    let eso_ready = json!({"type": "Ready", "status": "True", "reason": "Valid",
                           "message": "store validated", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    k.apply_status(json!({
        "apiVersion": STORE, "kind": "ClusterSecretStore", "metadata": {"name": "aws-for-eso"},
        "status": {"conditions": [eso_ready.clone()], "capabilities": "ReadWrite"}
    }));
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = start(&path);
    wait_ready(&server, Duration::from_secs(20)).await;
    // Give the leader time to write.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let obj = k
        .get(STORE, "ClusterSecretStore", None, "aws-for-eso")
        .unwrap();
    let conditions = obj["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        conditions.contains(&eso_ready),
        "ESO's Ready condition was overwritten: {conditions:#?}"
    );
}

/// The referenced-Secret watch budget (MAX_WATCHED_OBJECTS = 2000) is shared by every
/// namespace: a namespace editor's generator (here a Password generator in `aaa`, whose
/// spec need not even be valid) that names 2000 Secrets of its own namespace takes every
/// slot, and the administrator's ClusterSecretStore Secret (namespace `esi-system` sorts
/// after `aaa`) is never watched: the store is not ready.
#[tokio::test(flavor = "multi_thread")]
async fn review_a_tenants_generator_cannot_starve_the_admins_secret_watches() {
    let k = cluster().await;
    k.apply(yaml(&static_federation(ISS, AUD)));
    k.apply(json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "vault-token", "namespace": "esi-system"},
                   "data": {"token": b64("t")}}));
    k.apply(json!({
        "apiVersion": STORE, "kind": "ClusterSecretStore", "metadata": {"name": "vault"},
        "spec": {"provider": {"vault": {"server": "https://127.0.0.1:1", "path": "secret", "version": "v2",
            "auth": {"tokenSecretRef": {"name": "vault-token", "namespace": "esi-system", "key": "token"}}}}}
    }));
    let refs: Vec<Value> = (0..2000)
        .map(|i| json!({"secretRef": {"name": format!("s{i:04}"), "key": "k"}}))
        .collect();
    k.apply(json!({
        "apiVersion": "generators.external-secrets.io/v1alpha1", "kind": "Password",
        "metadata": {"name": "hog", "namespace": "aaa"},
        "spec": {"length": 8, "x": refs}
    }));
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = start(&path);
    wait_ready(&server, Duration::from_secs(180)).await;
    let c = wait_ready_condition(&k, STORE, "ClusterSecretStore", "vault", |_| true).await;
    assert_eq!(
        c["status"], "True",
        "the admin's store was starved of its Secret by a tenant's generator: {c}"
    );
}

/// The sweeper starts at once with the snapshot of the moment, which in Kubernetes mode is
/// the empty one until the first full sync: every generator looks "no longer configured",
/// so an expired credential is dropped from the ledger as `lapsed`, without asking its
/// backend to revoke it. Here one kind cannot be listed (a 500, not a 403), so the server
/// stays unready: nothing may be decided about credentials meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn review_nothing_is_swept_before_the_first_sync() {
    use esi::ledger::{GeneratorRef, Holder, KubernetesLedger, Ledger, LedgerEntry};
    let k = cluster().await;
    ledger_kinds(&k);
    k.apply(yaml(&static_federation(ISS, AUD)));
    k.apply(json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "vault-token-db", "namespace": "apps"},
                   "data": {"token": b64("t")}}));
    k.apply(json!({
        "apiVersion": "generators.external-secrets.io/v1alpha1", "kind": "VaultDynamicSecret",
        "metadata": {"name": "db", "namespace": "apps"},
        "spec": {"method": "POST", "path": "auth/token/create", "resultType": "Auth",
                 "provider": {"server": "https://127.0.0.1:1", "auth": {"tokenSecretRef": {"name": "vault-token-db", "key": "token"}}}}
    }));
    // A credential issued earlier (by a previous replica), expired a second ago.
    let caller = esi::authn::Identity::of_service_account("alpha", ISS, "apps", "app");
    let entry = LedgerEntry {
        id: uuid::Uuid::new_v4().to_string(),
        holder: Holder::new(&caller, None),
        generator: GeneratorRef {
            namespace: "apps".into(),
            kind: "VaultDynamicSecret".into(),
            name: "db".into(),
        },
        state: esi::generators::RevocationState(json!({"accessor": "still-alive"})),
        issued_at: now() - 60,
        expires_at: Some(now() - 1),
        renewable: true,
        retry_at: None,
        claimed_until: None,
        attempts: 0,
        last_error: None,
    };
    let ledger = KubernetesLedger::new(k.client().await, "esi-system")
        .await
        .unwrap();
    ledger.record(&entry).await.unwrap();
    drop(ledger);
    k.set_fault(Fault::RefuseReadsOf("authorizations"));
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = Server::start_kubernetes(
        &path,
        &[
            "--leader-election-namespace",
            "esi-system",
            "--ledger",
            "kubernetes",
            "--sweep-interval",
            "200ms",
        ],
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(server.get("/readyz").await.0, 503, "not synced yet");
    let lapsed: Vec<Value> = audit(&server, "revoke")
        .into_iter()
        .filter(|l| l["outcome"] == "lapsed")
        .collect();
    assert!(
        lapsed.is_empty(),
        "dropped without revocation before the first sync: {lapsed:?}"
    );
    assert!(
        k.get(
            "generators.external-secrets.io/v1alpha1",
            "GeneratorState",
            Some("esi-system"),
            &format!("esi-{}", entry.id)
        )
        .is_some(),
        "the ledger entry is gone before the generators were even loaded"
    );
}

/// The writer's resync (`RESYNC`, 30 s: "a failed write retried, a lost leadership's writes
/// redone", and a status someone else overwrote rewritten) is a sleep restarted on every
/// wake-up, and the Lease loop wakes the writer at every renewal (`send_replace`), so while a
/// replica leads it never fires: a status overwritten by someone else stays wrong.
#[tokio::test(flavor = "multi_thread")]
async fn review_a_status_overwritten_by_someone_else_is_rewritten_at_the_resync() {
    let k = cluster().await;
    k.apply(yaml(&static_federation(ISS, AUD)));
    k.apply(fake_store("fake", "v1"));
    k.apply(authorization("app", &["fake"]));
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = start(&path);
    wait_ready(&server, Duration::from_secs(20)).await;
    wait_ready_condition(&k, AUTHZ, "Authorization", "app", |c| c["status"] == "True").await;
    // Someone (a stale former leader's late write, `kubectl edit --subresource=status`, a
    // GitOps tool) writes another status.
    k.apply_status(json!({
        "apiVersion": AUTHZ, "kind": "Authorization", "metadata": {"name": "app"},
        "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Forged",
            "message": "not in force", "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": 1}]}
    }));
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let obj = k.get(AUTHZ, "Authorization", None, "app").unwrap();
        if obj["status"]["conditions"][0]["status"] == "True" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the overwritten status was never repaired: {}",
            obj["status"]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(server.get("/readyz").await.0, 200);
}

/// `served_kind` also serves `KubernetesFederation` of `federation.external-secrets.io` (the
/// group ESE's samples use, namespaced there), and federations are looked up by name alone
/// with "the first wins": that group sorts before `identity.federation.external-secrets.io`,
/// so whoever may create one in any namespace replaces the administrator's trust anchor of
/// the same name with keys of their own, and mints tokens for any workload.
#[tokio::test(flavor = "multi_thread")]
async fn review_a_federation_of_the_same_name_in_another_group_cannot_replace_the_trust_anchor() {
    let k = cluster().await;
    k.register(
        "federation.external-secrets.io",
        "v1alpha1",
        "KubernetesFederation",
        "kubernetesfederations",
        true,
        true,
    );
    k.apply(yaml(&static_federation(ISS, AUD)));
    k.apply(fake_store("fake", "v1"));
    k.apply(authorization("app", &["fake"]));
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = start(&path);
    wait_ready(&server, Duration::from_secs(20)).await;
    let legit = token("apps", "app");
    assert_eq!(read(&server, "fake", &legit).await.0, 200);
    // A tenant's object in its own namespace, with its own key.
    k.apply(json!({
        "apiVersion": "federation.external-secrets.io/v1alpha1",
        "kind": "KubernetesFederation",
        "metadata": {"name": "alpha", "namespace": "aaa"},
        "spec": {"url": "https://127.0.0.1:9", "issuer": ISS, "audiences": [AUD],
                 "jwks": jwks(&["ec-2"]).to_string()}
    }));
    let forged = mint("ec-2", &sa_claims(ISS, AUD, "apps", "app"), None);
    for _ in 0..30 {
        assert_ne!(
            read(&server, "fake", &forged).await.0,
            200,
            "a token signed by the tenant's key was accepted as apps/app"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read(&server, "fake", &legit).await.0, 200);
}

/// kube 5's client has no read timeout by default, and the reload loop re-discovers the API
/// groups inline (every 60 s) with no bound of its own: one discovery request the API never
/// answers (a black-holed connection, a stuck aggregated API) freezes the loop for good. The
/// server stays ready and keeps serving its last snapshot: a deleted Authorization keeps
/// granting.
#[tokio::test(flavor = "multi_thread")]
async fn review_a_hung_discovery_request_does_not_freeze_the_configuration() {
    let k = cluster().await;
    k.apply(yaml(&static_federation(ISS, AUD)));
    k.apply(fake_store("fake", "v1"));
    k.apply(authorization("app", &["fake"]));
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = start(&path);
    wait_ready(&server, Duration::from_secs(20)).await;
    let t = token("apps", "app");
    assert_eq!(read(&server, "fake", &t).await.0, 200);
    // The next rediscovery (60 s after the first sync) asks this group and never hears back.
    k.hang_requests_to(Some("/apis/external-secrets.io/v1"));
    tokio::time::sleep(Duration::from_secs(65)).await;
    k.delete(AUTHZ, "Authorization", None, "app");
    until_status(&server, "fake", &t, 404, Duration::from_secs(10)).await;
}

/// Review finding 8: a transient error (500) listing a referenced Secret before the first
/// sync keeps the server unready (only 403/404 count the Secret as absent).
#[tokio::test(flavor = "multi_thread")]
async fn a_transient_error_on_a_referenced_secret_keeps_the_server_unready() {
    let k = cluster().await;
    k.apply(yaml(&static_federation(ISS, AUD)));
    k.apply(authorization("app", &["vault"]));
    k.apply(json!({
        "apiVersion": STORE, "kind": "ClusterSecretStore", "metadata": {"name": "vault"},
        "spec": {"provider": {"vault": {"server": "https://127.0.0.1:1", "path": "secret", "version": "v2",
            "auth": {"tokenSecretRef": {"name": "vault-token", "namespace": "esi-system", "key": "token"}}}}}
    }));
    k.apply(json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "vault-token", "namespace": "esi-system"},
                   "data": {"token": b64("t")}}));
    k.set_fault(Fault::RefuseReadsOf("secrets"));
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = start(&path);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        server.get("/readyz").await.0,
        503,
        "ready before its Secret was read"
    );
    k.set_fault(Fault::None);
    wait_ready(&server, Duration::from_secs(30)).await;
    wait_ready_condition(&k, STORE, "ClusterSecretStore", "vault", |c| {
        c["status"] == "True"
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Issue 18: the identity kinds (OIDCFederation, its Okta and PingIdentity presets,
// SpiffeFederation) in Kubernetes mode, as KubernetesFederations are.
// ---------------------------------------------------------------------------------------

const IDENTITY: &str = "identity.federation.external-secrets.io/v1alpha1";

/// Serves the identity kinds besides [`cluster`]'s (their CRDs installed).
fn identity_kinds(k: &FakeKube) {
    for (kind, plural) in [
        ("OIDCFederation", "oidcfederations"),
        ("OktaFederation", "oktafederations"),
        ("PingIdentityFederation", "pingidentityfederations"),
        ("SpiffeFederation", "spiffefederations"),
    ] {
        k.register(
            "identity.federation.external-secrets.io",
            "v1alpha1",
            kind,
            plural,
            false,
            true,
        );
    }
}

/// An Authorization `name` of the `kind` federation `federation` for the OIDC `subject`
/// of `issuer`, allowing `stores`.
fn oidc_authorization(
    name: &str,
    kind: &str,
    federation: &str,
    issuer: &str,
    subject: &str,
    stores: &[&str],
) -> Value {
    json!({
        "apiVersion": AUTHZ,
        "kind": "Authorization",
        "metadata": {"name": name},
        "spec": {
            "federationRef": {"kind": kind, "name": federation},
            "subject": {"oidc": {"issuer": issuer, "subject": subject}},
            "allowedClusterSecretStores": stores,
        }
    })
}

/// An Authorization `name` of the SpiffeFederation `federation` for `spiffe_id`, allowing
/// `stores`.
fn spiffe_authorization(name: &str, federation: &str, spiffe_id: &str, stores: &[&str]) -> Value {
    json!({
        "apiVersion": AUTHZ,
        "kind": "Authorization",
        "metadata": {"name": name},
        "spec": {
            "federationRef": {"kind": "SpiffeFederation", "name": federation},
            "subject": {"spiffe": {"spiffeID": spiffe_id}},
            "allowedClusterSecretStores": stores,
        }
    })
}

/// A token of the OIDC provider `issuer` for `sub` (signed with the fixture key `key`),
/// with `extra` claims.
fn oidc_token(key: &str, issuer: &Issuer, sub: &str, extra: Value) -> String {
    let now = now();
    let mut claims = json!({
        "iss": issuer.url, "aud": AUD, "sub": sub, "iat": now, "nbf": now, "exp": now + 300
    });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    mint(key, &claims, None)
}

/// An OIDCFederation and an Authorization created through the API: a token of that issuer
/// gets the secret, the federation gets `Ready=True` (one whose issuer cannot be reached
/// `JWKSUnreachable`); ESE's OktaFederation preset (its org authorization server) serves
/// alike; deleting the OIDCFederation refuses its tokens
/// (401) and leaves its Authorization `MissingReference`, while the Okta one keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn oidc_federations_created_through_the_api_serve_their_tokens_until_deleted() {
    let k = cluster().await;
    identity_kinds(&k);
    let github = Issuer::start_oidc(jwks(&["rsa-1"])).await;
    let okta = Issuer::start_oidc(jwks(&["ec-1"])).await;
    let main = "repo:org/app:ref:refs/heads/main";
    k.apply(yaml(&oidc_federation(
        "github",
        &github,
        AUD,
        "  boundClaims:\n    repository_owner: org\n  claims: [repository]\n",
    )));
    k.apply(json!({
        "apiVersion": IDENTITY,
        "kind": "OktaFederation",
        "metadata": {"name": "okta"},
        "spec": {"domain": okta.url, "authorizationServerId": "", "audiences": [AUD],
                 "caBundle": b64(&okta.ca.ca_pem)}
    }));
    // Valid, but its issuer cannot be reached: the condition says so.
    k.apply(json!({
        "apiVersion": IDENTITY,
        "kind": "OIDCFederation",
        "metadata": {"name": "down"},
        "spec": {"issuer": "https://127.0.0.1:9", "audiences": [AUD]}
    }));
    k.apply(fake_store("fake", "v1"));
    k.apply(oidc_authorization(
        "ci",
        "OIDCFederation",
        "github",
        &github.url,
        main,
        &["fake"],
    ));
    k.apply(oidc_authorization(
        "svc",
        "OktaFederation",
        "okta",
        &okta.url,
        "0oa-service",
        &["fake"],
    ));
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = start(&path);
    wait_ready(&server, Duration::from_secs(20)).await;

    let ci = oidc_token(
        "rsa-1",
        &github,
        main,
        json!({"repository": "org/app", "repository_owner": "org"}),
    );
    until_status(&server, "fake", &ci, 200, Duration::from_secs(10)).await;
    assert_eq!(read(&server, "fake", &ci).await.1, "\"v1\"");
    // Its boundClaims hold: another owner's token of the same subject is refused.
    let foreign = oidc_token(
        "rsa-1",
        &github,
        main,
        json!({"repository": "org/app", "repository_owner": "evil"}),
    );
    assert_eq!(read(&server, "fake", &foreign).await.0, 401);
    let svc = oidc_token("ec-1", &okta, "0oa-service", json!({}));
    assert_eq!(read(&server, "fake", &svc).await, (200, "\"v1\"".into()));
    for (kind, name) in [("OIDCFederation", "github"), ("OktaFederation", "okta")] {
        let ready = wait_ready_condition(&k, IDENTITY, kind, name, |c| c["status"] == "True").await;
        assert_eq!(ready["reason"], "Loaded", "{kind}: {ready}");
        assert_eq!(ready["observedGeneration"], 1, "{kind}: {ready}");
    }
    let down = wait_ready_condition(&k, IDENTITY, "OIDCFederation", "down", |c| {
        c["reason"] == "JWKSUnreachable"
    })
    .await;
    assert_eq!(down["status"], "False", "{down}");

    // Deleted: its tokens are refused, the Authorization says what is missing.
    assert!(k.delete(IDENTITY, "OIDCFederation", None, "github"));
    let took = until_status(&server, "fake", &ci, 401, Duration::from_secs(5)).await;
    eprintln!("deleted OIDCFederation in effect after {took:?}");
    let missing =
        wait_ready_condition(&k, AUTHZ, "Authorization", "ci", |c| c["status"] == "False").await;
    assert_eq!(missing["reason"], "MissingReference", "{missing}");
    assert!(
        missing["message"].as_str().unwrap().contains("github"),
        "{missing}"
    );
    assert_eq!(read(&server, "fake", &svc).await.0, 200);
}

/// A SpiffeFederation with a static bundle created through the API: a JWT-SVID gets the
/// secret (one whose bundle endpoint cannot be reached is `JWKSUnreachable`). Invalid specs
/// get `Ready=False` with the reason and serve nothing, checked with tokens their keys
/// verify for subjects their Authorizations name (ESE's shape, `trustDomain`, with a bundle
/// but no audiences; an OIDCFederation with static keys whose issuer is not https, beside
/// the same spec with an https issuer, which serves); the first, fixed through the API,
/// serves the same JWT-SVID at its next generation; the valid one, deleted, refuses its
/// JWT-SVIDs.
#[tokio::test(flavor = "multi_thread")]
async fn spiffe_federations_created_through_the_api_serve_jwt_svids_and_invalid_ones_say_why() {
    let k = cluster().await;
    identity_kinds(&k);
    k.apply(yaml(&spiffe_federation(
        "spire",
        "example.org",
        AUD,
        &["ec-1"],
    )));
    // ESE's shape (`trustDomain`) with the bundle whose key signs `partner_svid` below,
    // but no audiences: refused, although its key would verify that JWT-SVID.
    let ese_form = json!({
        "apiVersion": IDENTITY,
        "kind": "SpiffeFederation",
        "metadata": {"name": "partner"},
        "spec": {"trustDomain": "partner.org", "bundle": spiffe_bundle(&["ec-2"])}
    });
    k.apply(ese_form.clone());
    // An http issuer with static keys (nothing to fetch): refused; the same spec with an
    // https issuer serves the same token form (the control below).
    let plain_issuer = "http://127.0.0.1:9";
    let tls_issuer = "https://127.0.0.1:9";
    let static_keys = jwks(&["rsa-2"]).to_string();
    for (name, issuer) in [("plain", plain_issuer), ("tls", tls_issuer)] {
        k.apply(json!({
            "apiVersion": IDENTITY,
            "kind": "OIDCFederation",
            "metadata": {"name": name},
            "spec": {"issuer": issuer, "audiences": [AUD], "jwks": static_keys}
        }));
        k.apply(json!({
            "apiVersion": AUTHZ,
            "kind": "Authorization",
            "metadata": {"name": name},
            "spec": {
                "federationRef": {"kind": "OIDCFederation", "name": name},
                "subject": {"oidc": {"issuer": issuer, "subject": "svc"}},
                "allowedClusterSecretStores": ["fake"],
            }
        }));
    }
    // Valid, but its bundle endpoint cannot be reached: the condition says so.
    k.apply(json!({
        "apiVersion": IDENTITY,
        "kind": "SpiffeFederation",
        "metadata": {"name": "unreachable"},
        "spec": {"trustDomain": "far.example", "audiences": [AUD],
                 "bundleEndpoint": {"url": "https://127.0.0.1:9"}}
    }));
    k.apply(fake_store("fake", "v1"));
    let api = "spiffe://example.org/ns/prod/sa/api";
    let partner = "spiffe://partner.org/ns/prod/sa/api";
    k.apply(spiffe_authorization("api", "spire", api, &["fake"]));
    k.apply(spiffe_authorization(
        "partner",
        "partner",
        partner,
        &["fake"],
    ));
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = start(&path);
    wait_ready(&server, Duration::from_secs(20)).await;

    let svid = mint("ec-1", &svid_claims(api, AUD), None);
    until_status(&server, "fake", &svid, 200, Duration::from_secs(10)).await;
    assert_eq!(read(&server, "fake", &svid).await.1, "\"v1\"");
    let ready = wait_ready_condition(&k, IDENTITY, "SpiffeFederation", "spire", |c| {
        c["status"] == "True"
    })
    .await;
    assert_eq!(ready["reason"], "Loaded", "{ready}");
    let down = wait_ready_condition(&k, IDENTITY, "SpiffeFederation", "unreachable", |c| {
        c["reason"] == "JWKSUnreachable"
    })
    .await;
    assert_eq!(down["status"], "False", "{down}");

    // Invalid: the condition says why; nothing is served from it.
    let invalid = wait_ready_condition(&k, IDENTITY, "SpiffeFederation", "partner", |c| {
        c["status"] == "False"
    })
    .await;
    assert_eq!(invalid["reason"], "InvalidSpec", "{invalid}");
    let message = invalid["message"].as_str().unwrap();
    assert!(
        message.contains("audiences") || message.contains("bundle"),
        "{invalid}"
    );
    let plain = wait_ready_condition(&k, IDENTITY, "OIDCFederation", "plain", |c| {
        c["status"] == "False"
    })
    .await;
    assert_eq!(plain["reason"], "InvalidSpec", "{plain}");
    assert!(
        plain["message"].as_str().unwrap().contains("https"),
        "{plain}"
    );
    // Nothing is served from either: tokens their keys verify, for subjects their
    // Authorizations name, are refused; the https control serves the same token form.
    let token_of = |issuer: &str| {
        let now = now();
        mint(
            "rsa-2",
            &json!({"iss": issuer, "aud": AUD, "sub": "svc", "iat": now, "nbf": now, "exp": now + 300}),
            None,
        )
    };
    until_status(
        &server,
        "fake",
        &token_of(tls_issuer),
        200,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(read(&server, "fake", &token_of(plain_issuer)).await.0, 401);
    let partner_svid = mint("ec-2", &svid_claims(partner, AUD), None);
    assert_eq!(read(&server, "fake", &partner_svid).await.0, 401);

    // Fixed through the API (audiences added, same bundle): the same JWT-SVID is served,
    // and the condition follows the generation.
    let mut fixed = ese_form;
    fixed["spec"]["audiences"] = json!([AUD]);
    k.apply(fixed);
    until_status(&server, "fake", &partner_svid, 200, Duration::from_secs(5)).await;
    let ready = wait_ready_condition(&k, IDENTITY, "SpiffeFederation", "partner", |c| {
        c["status"] == "True"
    })
    .await;
    assert_eq!(ready["observedGeneration"], 2, "{ready}");

    // Deleted: its JWT-SVIDs are refused; the other trust domain keeps serving.
    assert!(k.delete(IDENTITY, "SpiffeFederation", None, "spire"));
    until_status(&server, "fake", &svid, 401, Duration::from_secs(5)).await;
    assert_eq!(read(&server, "fake", &partner_svid).await.0, 200);
}

/// docs/identities.md: "an edit that breaks one that did keeps its last good form serving,
/// and says so". A valid OIDCFederation and a valid SpiffeFederation, edited through the API
/// into specs the loader refuses (the OIDC one without `audiences`, the SPIFFE one with a
/// bundle that is not a SPIFFE bundle): their tokens are still accepted, and each one's
/// `Ready` condition, computed for the new generation, is `False`/`InvalidSpec` with the
/// reason and that the last good form stays in force. Fixed again, each is `Loaded` at the
/// next generation.
#[tokio::test(flavor = "multi_thread")]
async fn an_edit_that_breaks_a_served_federation_keeps_its_last_good_form_and_says_why() {
    let k = cluster().await;
    identity_kinds(&k);
    let github = Issuer::start_oidc(jwks(&["rsa-1"])).await;
    let main = "repo:org/app:ref:refs/heads/main";
    let oidc = yaml(&oidc_federation("github", &github, AUD, ""));
    let spiffe = yaml(&spiffe_federation("spire", "example.org", AUD, &["ec-1"]));
    k.apply(oidc.clone());
    k.apply(spiffe.clone());
    k.apply(fake_store("fake", "v1"));
    k.apply(oidc_authorization(
        "ci",
        "OIDCFederation",
        "github",
        &github.url,
        main,
        &["fake"],
    ));
    let api = "spiffe://example.org/ns/prod/sa/api";
    k.apply(spiffe_authorization("api", "spire", api, &["fake"]));
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = start(&path);
    wait_ready(&server, Duration::from_secs(20)).await;

    let ci = oidc_token("rsa-1", &github, main, json!({}));
    let svid = mint("ec-1", &svid_claims(api, AUD), None);
    until_status(&server, "fake", &ci, 200, Duration::from_secs(10)).await;
    until_status(&server, "fake", &svid, 200, Duration::from_secs(10)).await;
    for (kind, name) in [("OIDCFederation", "github"), ("SpiffeFederation", "spire")] {
        let ready = wait_ready_condition(&k, IDENTITY, kind, name, |c| {
            c["status"] == "True" && c["observedGeneration"] == 1
        })
        .await;
        assert_eq!(ready["reason"], "Loaded", "{kind}: {ready}");
    }

    // Broken through the API (generation 2).
    let mut broken_oidc = oidc.clone();
    broken_oidc["spec"]
        .as_object_mut()
        .unwrap()
        .remove("audiences");
    k.apply(broken_oidc);
    let mut broken_spiffe = spiffe.clone();
    broken_spiffe["spec"]["bundle"] = json!("not a SPIFFE bundle");
    k.apply(broken_spiffe);
    for (kind, name, says) in [
        ("OIDCFederation", "github", "audiences"),
        ("SpiffeFederation", "spire", "bundle"),
    ] {
        let refused =
            wait_ready_condition(&k, IDENTITY, kind, name, |c| c["observedGeneration"] == 2).await;
        assert_eq!(refused["status"], "False", "{kind}: {refused}");
        assert_eq!(refused["reason"], "InvalidSpec", "{kind}: {refused}");
        let message = refused["message"].as_str().unwrap();
        assert!(message.contains(says), "{kind}: {refused}");
        assert!(
            message.contains("its last good form stays in force"),
            "{kind}: {refused}"
        );
    }
    // The condition is computed from the snapshot that refused generation 2: the tokens of
    // generation 1 are still accepted.
    assert_eq!(read(&server, "fake", &ci).await, (200, "\"v1\"".into()));
    assert_eq!(read(&server, "fake", &svid).await, (200, "\"v1\"".into()));
    // And the Authorizations naming them stay in force.
    for name in ["ci", "api"] {
        let ready = wait_ready_condition(&k, AUTHZ, "Authorization", name, |_| true).await;
        assert_eq!(ready["status"], "True", "{name}: {ready}");
    }

    // Fixed (generation 3): loaded again.
    k.apply(oidc);
    k.apply(spiffe);
    for (kind, name) in [("OIDCFederation", "github"), ("SpiffeFederation", "spire")] {
        let ready =
            wait_ready_condition(&k, IDENTITY, kind, name, |c| c["observedGeneration"] == 3).await;
        assert_eq!(ready["status"], "True", "{kind}: {ready}");
    }
    assert_eq!(read(&server, "fake", &ci).await.0, 200);
    assert_eq!(read(&server, "fake", &svid).await.0, 200);
}

/// Review (issue 18): a KubernetesFederation created with the name of an OIDCFederation in
/// force is refused while the server runs; after a restart (no federation in force, and
/// objects come in (group, kind) order, `KubernetesFederation` first) the older one, by
/// `metadata.creationTimestamp`, still holds the name: its tokens keep their grants and the
/// restarted server refuses the newcomer, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_restart_the_older_federation_keeps_a_shared_name() {
    let k = cluster().await;
    identity_kinds(&k);
    let github = Issuer::start_oidc(jwks(&["rsa-1"])).await;
    let main = "repo:org/app:ref:refs/heads/main";
    k.apply(yaml(&oidc_federation("shared", &github, AUD, "")));
    k.apply(fake_store("fake", "v1"));
    k.apply(oidc_authorization(
        "ci",
        "OIDCFederation",
        "shared",
        &github.url,
        main,
        &["fake"],
    ));
    let (_dir, path) = kubeconfig(&k, "admin");
    let server = start(&path);
    wait_ready(&server, Duration::from_secs(20)).await;
    let ci = oidc_token("rsa-1", &github, main, json!({}));
    until_status(&server, "fake", &ci, 200, Duration::from_secs(10)).await;

    // creationTimestamp has a resolution of one second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    k.apply(json!({
        "apiVersion": IDENTITY,
        "kind": "KubernetesFederation",
        "metadata": {"name": "shared"},
        "spec": {"url": "https://127.0.0.1:9"}
    }));
    let refused = |c: &Value| {
        c["status"] == "False"
            && c["message"]
                .as_str()
                .is_some_and(|m| m.contains("duplicate federation name: OIDCFederation shared"))
    };
    wait_ready_condition(&k, IDENTITY, "KubernetesFederation", "shared", refused).await;
    assert_eq!(read(&server, "fake", &ci).await.0, 200);

    // Restarted: nothing in force; the KubernetesFederation comes first in object order.
    drop(server);
    let server = start(&path);
    wait_ready(&server, Duration::from_secs(20)).await;
    until_status(&server, "fake", &ci, 200, Duration::from_secs(10)).await;
    // The restarted server refuses the newcomer itself (the conditions in the API are the
    // previous leader's until they differ, so its log says it).
    let logs = server.logs().join("\n");
    assert!(
        logs.contains("duplicate federation name: OIDCFederation shared"),
        "{logs}"
    );
}
