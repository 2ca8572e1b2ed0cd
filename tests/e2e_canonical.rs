//! Canonical forms, end to end (issues 8 and 19): the decision, the audit line and the
//! backend call name one object, whatever the caller's spelling. Runs the real
//! `esi-server` against the OpenBao of `scripts/openbao.sh` (skipped without it, unless
//! `ESI_REQUIRE_BACKENDS=1`).

mod common;

use common::*;
use serde_json::{Value, json};

const AUD: &str = "https://esi-federation.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";

fn token(ns: &str, sa: &str) -> String {
    mint("ec-1", &sa_claims(ISS, AUD, ns, sa), None)
}

/// Federation `alpha` (static keys), and an Authorization for `apps/app` on `stores`.
fn base(stores: &[&str], generators: &str) -> String {
    let stores = stores
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    static_federation(ISS, AUD)
        + &app_authorization(
            ISS,
            &format!(
                "  allowedClusterSecretStores: [{stores}]\n  allowedGenerators: {generators}\n"
            ),
        )
}

fn forbid_policy() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies/examples/forbid-prod-admin.cedar"
    ))
    .unwrap()
}

async fn post(server: &Server, path: &str, token: &str, body: Value) -> (u16, String) {
    server.post(path, Some(token), body).await
}

/// Decision lines (target `esi::decision`) naming `resource`.
fn decisions(server: &Server, resource: &str) -> Vec<Value> {
    server
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["target"] == "esi::decision"
                && (v["resource"] == resource || v["fields"]["resource"] == resource)
        })
        .collect()
}

/// Issue 8 (reproduced with OpenBao): policies/examples/forbid-prod-admin.cedar forbids
/// `admin/*` on `vault-prod` (`path: secret`, v2). Every spelling of `admin/…` that
/// reaches the admin secret is decided — and logged — as `admin/…`, and refused; the
/// same spellings of an allowed key read it.
#[tokio::test(flavor = "multi_thread")]
async fn issue8_every_spelling_of_a_vault_key_is_decided_on_one_key() {
    install_crypto();
    let Some((addr, root)) = openbao() else {
        return;
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let admin = format!("admin/{id}/root");
    let app = format!("app/{id}/db");
    vault_put(
        &addr,
        &root,
        "secret",
        &admin,
        json!({"password": "ADMIN-8-value"}),
    )
    .await;
    vault_put(
        &addr,
        &root,
        "secret",
        &app,
        json!({"password": "APP-8-value"}),
    )
    .await;
    vault_put(
        &addr,
        &root,
        "secret",
        &format!("team-{id}/one"),
        json!({"a": "1"}),
    )
    .await;

    let mut manifests = base(&["vault-prod", "vault-nopath"], "[]");
    manifests.push_str(&vault_store(
        "vault-prod",
        &addr,
        &root,
        "      path: secret\n      version: v2\n",
    ));
    manifests.push_str(&vault_store("vault-nopath", &addr, &root, ""));
    let policy = forbid_policy();
    let server = Server::start(
        &[("all.yaml", manifests)],
        &[("forbid-prod-admin.cedar", &policy)],
    );
    let t = token("apps", "app");

    // ESE calls: the key is the URL's path (percent-decoded once).
    for spelling in [
        admin.clone(),
        format!("secret/{admin}"),
        format!("secret/data/{admin}"),
        format!("data/{admin}"),
        format!("secret%2Fdata%2Fadmin%2F{id}%2Froot"),
        format!("secret/data/%61dmin/{id}/root"),
    ] {
        let (status, body) = post(
            &server,
            &format!("/secretstore/vault-prod/secrets/{spelling}"),
            &t,
            json!({}),
        )
        .await;
        assert_eq!(status, 404, "{spelling}: {body}");
        assert!(!body.contains("ADMIN-8-value"));
    }
    // /v1 get and extract, with and without a property.
    for key in [
        admin.clone(),
        format!("secret/{admin}"),
        format!("secret/data/{admin}"),
    ] {
        for property in [json!("password"), Value::Null] {
            for call in ["get", "extract"] {
                let (status, body) = post(
                    &server,
                    &format!("/v1/secretstore/vault-prod/{call}"),
                    &t,
                    json!({"remoteRef": {"key": key, "property": property}}),
                )
                .await;
                assert_eq!(status, 404, "{call} {key} {property}: {body}");
            }
        }
    }
    // Every one of those decisions named the canonical key; none the spelling.
    let canonical = format!("key:vault-prod/{admin}");
    server.sync_logs().await;
    let lines = decisions(&server, &canonical);
    assert_eq!(lines.len(), 6 + 3 * 2 * 2, "{lines:?}");
    assert!(lines.iter().all(|l| {
        let d = if l["decision"].is_null() {
            &l["fields"]["decision"]
        } else {
            &l["decision"]
        };
        d == "deny"
    }));
    assert_eq!(
        server.count_log("key:vault-prod/secret/"),
        0,
        "a spelling reached the decision"
    );

    // The same spellings of an allowed key read it, and are decided as `app/…`.
    for spelling in [
        app.clone(),
        format!("secret/{app}"),
        format!("secret/data/{app}"),
    ] {
        let (status, body) = post(
            &server,
            &format!("/secretstore/vault-prod/secrets/{spelling}"),
            &t,
            json!({}),
        )
        .await;
        assert_eq!(status, 200, "{spelling}: {body}");
        assert!(body.contains("APP-8-value"), "{body}");
        let (status, body) = post(
            &server,
            "/v1/secretstore/vault-prod/get",
            &t,
            json!({"remoteRef": {"key": spelling, "property": "password"}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(decoded(&body, "value"), "APP-8-value");
    }
    server.sync_logs().await;
    assert_eq!(
        decisions(&server, &format!("key:vault-prod/{app}")).len(),
        6
    );

    // Spellings with no canonical form are refused, never read.
    for spelling in [
        format!("x%2F..%2F{admin}"),
        format!("secret/secret/{app}"),
        format!("data/data/{app}"),
        format!("secret/data/{id}//db"),
    ] {
        let (status, body) = post(
            &server,
            &format!("/secretstore/vault-prod/secrets/{spelling}"),
            &t,
            json!({}),
        )
        .await;
        assert_eq!(status, 400, "{spelling}: {body}");
    }

    // find written the ESO way on a v2 store without `path` lists `secret/team-…`.
    let want = post(
        &server,
        "/v1/secretstore/vault-nopath/find",
        &t,
        json!({"find": {"path": format!("secret/team-{id}"), "name": {"regexp": "."}}}),
    )
    .await;
    assert_eq!(want.0, 200, "{}", want.1);
    let data: Value = serde_json::from_str(&want.1).unwrap();
    assert_eq!(
        data["data"].as_object().unwrap().keys().collect::<Vec<_>>(),
        [&format!("secret/team-{id}/one")]
    );
    let eso = post(
        &server,
        "/v1/secretstore/vault-nopath/find",
        &t,
        json!({"find": {"path": format!("secret/data/team-{id}"), "name": {"regexp": "."}}}),
    )
    .await;
    assert_eq!(eso, want);
    // And each name it answers is a key `get` accepts on that store.
    let (status, _) = post(
        &server,
        &format!("/secretstore/vault-nopath/secrets/secret/team-{id}/one"),
        &t,
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
}

/// Issue 19, finding 1: a KV v1 store without `path` (as ESO allows) was a proxy to any
/// Vault GET API with the server's own token: `auth/token/lookup-self` answered that
/// token, `sys/internal/ui/mounts` the mount table. Keys now stay inside KV mounts of
/// the store's version: Vault's own mounts are refused outright, any other mount is
/// verified (`sys/internal/ui/mounts/<m>`) before the first read under it.
#[tokio::test(flavor = "multi_thread")]
async fn issue19_a_store_without_path_reads_only_kv_mounts_of_its_version() {
    install_crypto();
    let Some((addr, root)) = openbao() else {
        return;
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let http = reqwest::Client::new();
    // A non-KV engine, and a v1 and a v2 secret.
    let resp = http
        .post(format!("{addr}/v1/sys/mounts/transit-{id}"))
        .header("X-Vault-Token", &root)
        .json(&json!({"type": "transit"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let resp = http
        .post(format!("{addr}/v1/transit-{id}/keys/k"))
        .header("X-Vault-Token", &root)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let resp = http
        .post(format!("{addr}/v1/kv1/{id}/cfg"))
        .header("X-Vault-Token", &root)
        .json(&json!({"url": "https://v1-19"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    vault_put(
        &addr,
        &root,
        "secret",
        &format!("{id}/v2"),
        json!({"a": "V2-19"}),
    )
    .await;

    let mut manifests = base(&["vault-v1", "vault-v2"], "[]");
    manifests.push_str(&vault_store(
        "vault-v1",
        &addr,
        &root,
        "      version: v1\n",
    ));
    manifests.push_str(&vault_store("vault-v2", &addr, &root, ""));
    let server = Server::start(&[("all.yaml", manifests)], &[]);
    let t = token("apps", "app");

    for (store, key) in [
        ("vault-v1", "auth/token/lookup-self".to_string()),
        ("vault-v1", "sys/internal/ui/mounts".to_string()),
        ("vault-v1", "sys/internal/ui/mounts/secret".to_string()),
        ("vault-v1", "identity/entity/name".to_string()),
        ("vault-v1", "cubbyhole/x".to_string()),
        ("vault-v1", format!("transit-{id}/keys/k")),
        // A KV v2 mount read through a v1 store (`GET secret/data/…` is the v2 API).
        ("vault-v1", format!("secret/data/{id}/v2")),
        ("vault-v2", "auth/token/lookup-self".to_string()),
        ("vault-v2", format!("transit-{id}/keys/k")),
        ("vault-v2", format!("kv1/{id}/cfg")),
    ] {
        let (status, body) = post(
            &server,
            &format!("/secretstore/{store}/secrets/{key}"),
            &t,
            json!({}),
        )
        .await;
        assert_eq!(status, 400, "{store} {key}: {body}");
        assert!(
            !body.contains(&root),
            "{store} {key} leaked the server's token"
        );
        for call in ["get", "extract"] {
            let (status, body) = post(
                &server,
                &format!("/v1/secretstore/{store}/{call}"),
                &t,
                json!({"remoteRef": {"key": key}}),
            )
            .await;
            assert_eq!(status, 400, "{call} {store} {key}: {body}");
            assert!(!body.contains(&root));
        }
    }
    // KV mounts of the store's version still read.
    let (status, body) = post(
        &server,
        &format!("/secretstore/vault-v1/secrets/kv1/{id}/cfg"),
        &t,
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("https://v1-19"));
    let (status, body) = post(
        &server,
        &format!("/secretstore/vault-v2/secrets/secret/{id}/v2"),
        &t,
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("V2-19"));
    server.sync_logs().await;
    // No log line carries the token either.
    assert_eq!(server.count_log(&root), 0);
}

/// Issue 19, finding 2: `find` was decided on the store only, so a key-level forbid did
/// not hold: `get admin/root` → 404, but `find {"name": {"regexp": "^admin/"}}` answered
/// the admin password. Every key of a find answer now passes the same `get` decision on
/// its canonical key (before its value is read), or is left out.
#[tokio::test(flavor = "multi_thread")]
async fn issue19_find_leaves_out_keys_the_caller_may_not_get() {
    install_crypto();
    const POLICY: &str = r#"
@id("forbid-admin-keys")
forbid (principal, action == Esi::Action::"get", resource is Esi::RemoteKey)
when { resource.key like "admin/*" };
"#;
    let fake = r#"---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {name: fake-store}
spec:
  provider:
    fake:
      data:
        - {key: admin/root, value: '{"password":"ADMIN-FAKE-19"}'}
        - {key: admin/root, value: old-admin, version: "1"}
        - {key: app/db, value: '{"password":"APP-FAKE-19"}'}
"#;
    let vault = openbao();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut manifests = base(&["fake-store", "vault-find"], "[]");
    manifests.push_str(fake);
    if let Some((addr, root)) = &vault {
        // A fresh KV v2 mount, so a whole-mount find sees only this test's secrets.
        let resp = reqwest::Client::new()
            .post(format!("{addr}/v1/sys/mounts/kv-{id}"))
            .header("X-Vault-Token", root)
            .json(&json!({"type": "kv", "options": {"version": "2"}}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let mount = format!("kv-{id}");
        vault_put(
            addr,
            root,
            &mount,
            "admin/root",
            json!({"password": "ADMIN-VAULT-19"}),
        )
        .await;
        vault_put(
            addr,
            root,
            &mount,
            "app/db",
            json!({"password": "APP-VAULT-19"}),
        )
        .await;
        manifests.push_str(&vault_store(
            "vault-find",
            addr,
            root,
            &format!("      path: {mount}\n      version: v2\n"),
        ));
    }
    let server = Server::start(&[("all.yaml", manifests)], &[("forbid.cedar", POLICY)]);
    let t = token("apps", "app");

    let mut stores = vec![("fake-store", "ADMIN-FAKE-19", "APP-FAKE-19")];
    if vault.is_some() {
        stores.push(("vault-find", "ADMIN-VAULT-19", "APP-VAULT-19"));
    }
    for (store, admin, app) in stores {
        // get is forbidden…
        let (status, _) = post(
            &server,
            &format!("/secretstore/{store}/secrets/admin/root"),
            &t,
            json!({}),
        )
        .await;
        assert_eq!(status, 404, "{store}");
        // …and so is every way a find could carry it.
        for find in [
            json!({"name": {"regexp": "^admin/"}}),
            json!({"name": {"regexp": "."}}),
            json!({"path": "admin", "name": {"regexp": "."}}),
        ] {
            let (status, body) = post(
                &server,
                &format!("/v1/secretstore/{store}/find"),
                &t,
                json!({ "find": find }),
            )
            .await;
            assert_eq!(status, 200, "{store} {find}: {body}");
            let data: Value = serde_json::from_str(&body).unwrap();
            let keys: Vec<&String> = data["data"].as_object().unwrap().keys().collect();
            assert!(
                keys.iter().all(|k| !k.starts_with("admin/")),
                "{store} {find}: {keys:?}"
            );
            assert!(!body.contains(&b64(admin)) && !body.contains(admin));
            assert!(!body.contains(&b64("old-admin")));
        }
        let (_, body) = post(
            &server,
            &format!("/v1/secretstore/{store}/find"),
            &t,
            json!({"find": {"name": {"regexp": "."}}}),
        )
        .await;
        let data: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            data["data"].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["app/db"],
            "{store}"
        );
        assert!(decoded_field(&data, "app/db").contains(app));
        // Each key of the answer was decided as a `get`, and the admin key denied.
        server.sync_logs().await;
        assert!(!decisions(&server, &format!("key:{store}/admin/root")).is_empty());
    }
}

fn decoded_field(data: &Value, key: &str) -> String {
    use base64::Engine;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(data["data"][key].as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
}

/// Issue 19, finding 3: a ClusterGenerator was decided under the namespace the caller
/// wrote in the URL, so a permit scoped to namespace `team`'s generators granted
/// `/generators/team/ClusterGenerator/platform-root-creds`, and a forbid on it was
/// walked around by spelling another namespace. It now has one identity,
/// `Generator::"<cluster>/ClusterGenerator/<name>"`, under every spelling.
#[tokio::test(flavor = "multi_thread")]
async fn issue19_a_cluster_generator_has_one_identity() {
    install_crypto();
    let generators = r#"---
apiVersion: generators.external-secrets.io/v1alpha1
kind: Password
metadata: {name: pw, namespace: team}
spec: {length: 16}
---
apiVersion: generators.external-secrets.io/v1alpha1
kind: ClusterGenerator
metadata: {name: platform-root-creds}
spec:
  kind: Password
  generator:
    passwordSpec: {length: 20}
---
apiVersion: generators.external-secrets.io/v1alpha1
kind: ClusterGenerator
metadata: {name: cluster-pw}
spec:
  kind: Password
  generator:
    passwordSpec: {length: 12}
"#;
    let mut manifests = base(
        &[],
        "[{name: cluster-pw, kind: ClusterGenerator, namespace: apps}]",
    );
    manifests.push_str(generators);
    const POLICIES: &str = r#"
@id("team-generators")
permit (principal, action == Esi::Action::"generate", resource is Esi::Generator)
when { principal.namespace == "team" && resource.namespace == "team" };

@id("ops-all-generators")
permit (principal, action == Esi::Action::"generate", resource is Esi::Generator)
when { principal.namespace == "ops" };

@id("forbid-platform-root")
forbid (principal, action, resource == Esi::Generator::"<cluster>/ClusterGenerator/platform-root-creds");
"#;
    let server = Server::start(&[("all.yaml", manifests)], &[("p.cedar", POLICIES)]);
    let team = token("team", "app");
    let ops = token("ops", "admin");
    let apps = token("apps", "app");

    // The team's permit is for its own generators…
    let (status, body) = post(&server, "/generators/team/Password/pw", &team, json!({})).await;
    assert_eq!(status, 200, "{body}");
    // …not for a ClusterGenerator spelled under its namespace.
    for ns in ["team", "platform"] {
        for name in ["platform-root-creds", "cluster-pw"] {
            let (status, body) = post(
                &server,
                &format!("/generators/{ns}/ClusterGenerator/{name}"),
                &team,
                json!({}),
            )
            .await;
            assert_eq!(status, 404, "team {ns}/{name}: {body}");
        }
    }
    // The forbid on the one identity holds under every spelling; other
    // ClusterGenerators stay reachable for a caller allowed all generators.
    for ns in ["platform", "team", "ops", "kube-system"] {
        let (status, body) = post(
            &server,
            &format!("/generators/{ns}/ClusterGenerator/platform-root-creds"),
            &ops,
            json!({}),
        )
        .await;
        assert_eq!(status, 404, "ops {ns}: {body}");
        let (status, body) = post(
            &server,
            &format!("/generators/{ns}/ClusterGenerator/cluster-pw"),
            &ops,
            json!({}),
        )
        .await;
        assert_eq!(status, 200, "ops {ns}: {body}");
    }
    // An Authorization entry naming the ClusterGenerator grants it under any spelling.
    for ns in ["apps", "other"] {
        let (status, body) = post(
            &server,
            &format!("/generators/{ns}/ClusterGenerator/cluster-pw"),
            &apps,
            json!({}),
        )
        .await;
        assert_eq!(status, 200, "apps {ns}: {body}");
    }
    server.sync_logs().await;
    // Every decision named the one identity; none the spelled namespace.
    assert_eq!(
        decisions(
            &server,
            "generator:<cluster>/ClusterGenerator/platform-root-creds"
        )
        .len(),
        2 + 4
    );
    assert_eq!(server.count_log("generator:platform/ClusterGenerator"), 0);
    assert_eq!(server.count_log("generator:team/ClusterGenerator"), 0);
    // A URL namespace that is no Kubernetes namespace names nothing.
    for path in [
        "/generators/%3Ccluster%3E/ClusterGenerator/cluster-pw",
        "/generators/Team/Password/pw",
        "/generators/a%2Fb/Password/pw",
    ] {
        let (status, body) = post(&server, path, &ops, json!({})).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
}
