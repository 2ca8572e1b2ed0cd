//! The `kubernetes` store provider end to end (issue 14): the real `esi-server` in
//! directory mode reads Secrets of a "remote cluster" — the fake API server of
//! `tests/common/fake_kube.rs` (HTTPS with its own CA, bearer tokens checked) — through a
//! ClusterSecretStore with `auth.token`. A forbid applies to `get` and to each key of a
//! `find`, and a refused key is never read at the API server.

mod common;

use common::fake_kube::FakeKube;
use common::*;
use serde_json::{Value, json};

const AUD: &str = "https://esi-federation.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";

const FORBID_ADMIN: &str = r#"
@id("forbid-remote-admin")
forbid (
  principal,
  action == Esi::Action::"get",
  resource is Esi::RemoteKey
)
when { resource.store == "kube-remote" && resource.key like "admin-*" };
"#;

fn secret(name: &str, labels: Value, data: Value) -> Value {
    let data: serde_json::Map<String, Value> = data
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(b64(v.as_str().unwrap()))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "remote", "labels": labels},
        "data": data})
}

fn manifests(kube: &FakeKube, token: &str) -> String {
    static_federation(ISS, AUD)
        + &app_authorization(
            ISS,
            "  allowedClusterSecretStores: [\"kube-remote\", \"kube-wrong\"]\n",
        )
        + &format!(
            r#"---
apiVersion: v1
kind: Secret
metadata: {{name: remote-token, namespace: esi-system}}
stringData: {{token: "{token}", wrong: "not-a-known-token"}}
---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: kube-remote}}
spec:
  provider:
    kubernetes:
      remoteNamespace: remote
      server: {{url: "{url}", caBundle: "{ca}"}}
      auth: {{token: {{bearerToken: {{name: remote-token, namespace: esi-system, key: token}}}}}}
---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: kube-wrong}}
spec:
  provider:
    kubernetes:
      remoteNamespace: remote
      server: {{url: "{url}", caBundle: "{ca}"}}
      auth: {{token: {{bearerToken: {{name: remote-token, namespace: esi-system, key: wrong}}}}}}
"#,
            url = kube.url,
            ca = b64(kube.ca_pem()),
        )
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_remote_secrets_with_a_token_and_decides_each_key_before_reading() {
    install_crypto();
    let kube = FakeKube::start().await;
    kube.apply(secret(
        "db-creds",
        json!({"team": "a"}),
        json!({"user": "app", "password": "DB-REMOTE-pw", "config": "{\"host\":\"db\",\"port\":5432}"}),
    ));
    kube.apply(secret(
        "api-key",
        json!({"team": "a"}),
        json!({"key": "API-REMOTE-k"}),
    ));
    kube.apply(secret(
        "admin-root",
        json!({"team": "a"}),
        json!({"pw": "ADMIN-REMOTE-pw"}),
    ));
    kube.apply(secret(
        "other",
        json!({"team": "b"}),
        json!({"x": "OTHER-REMOTE"}),
    ));
    let server = Server::start(
        &[("all.yaml", manifests(&kube, &kube.token()))],
        &[("forbid.cedar", FORBID_ADMIN)],
    );
    let t = mint("ec-1", &sa_claims(ISS, AUD, "apps", "app"), None);
    let get = |key: &str, property: Option<&str>| {
        let mut remote = json!({"key": key});
        if let Some(p) = property {
            remote["property"] = json!(p);
        }
        server.post(
            "/v1/secretstore/kube-remote/get",
            Some(&t),
            json!({"remoteRef": remote}),
        )
    };

    // A data key, decoded; the whole Secret as JSON.
    let (status, body) = get("db-creds", Some("password")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(decoded(&body, "value"), "DB-REMOTE-pw");
    let (status, body) = get("db-creds", None).await;
    assert_eq!(status, 200, "{body}");
    let whole: Value = serde_json::from_str(&decoded(&body, "value")).unwrap();
    assert_eq!(whole["user"], "app");
    assert_eq!(whole["password"], "DB-REMOTE-pw");
    // extract: the data map.
    let (status, body) = server
        .post(
            "/v1/secretstore/kube-remote/extract",
            Some(&t),
            json!({"remoteRef": {"key": "api-key"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&b64("API-REMOTE-k")), "{body}");
    // extract with a property: the members of the JSON object that data key holds.
    let (status, body) = server
        .post(
            "/v1/secretstore/kube-remote/extract",
            Some(&t),
            json!({"remoteRef": {"key": "db-creds", "property": "config"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&b64("5432")) && body.contains("host"),
        "{body}"
    );
    // ESE's path.
    let (status, body) = server
        .post(
            "/secretstore/kube-remote/secrets/api-key",
            Some(&t),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("API-REMOTE-k"), "{body}");

    // Missing Secret, missing property: 404.
    assert_eq!(get("nope", None).await.0, 404);
    assert_eq!(get("db-creds", Some("nope")).await.0, 404);

    // Not a Secret name: 400, never sent to the API server.
    kube.clear_requests();
    for bad in ["Db-Creds", "db_creds", "../admin-root", "a/b", "-x", "x."] {
        let (status, body) = get(bad, None).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert!(kube.requests().is_empty(), "{:?}", kube.requests());

    // The forbid: refused (as missing: 404), and admin-root is never read.
    let (status, body) = get("admin-root", Some("pw")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = server
        .post(
            "/v1/secretstore/kube-remote/find",
            Some(&t),
            json!({"find": {"tags": {"team": "a"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let found: Value = serde_json::from_str(&body).unwrap();
    let keys: Vec<&String> = found["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["api-key", "db-creds"], "{body}");
    assert!(!body.contains(&b64("OTHER-REMOTE")) && !body.contains("ADMIN"));
    let (status, body) = server
        .post(
            "/v1/secretstore/kube-remote/find",
            Some(&t),
            json!({"find": {"name": {"regexp": "^(db|admin)-"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let found: Value = serde_json::from_str(&body).unwrap();
    let keys: Vec<&String> = found["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["db-creds"], "{body}");
    let requests = kube.requests();
    assert!(
        requests
            .iter()
            .all(|r| !r.path.ends_with("/secrets/admin-root")),
        "a refused key was read: {requests:?}"
    );
    // Listings ask for metadata, with the tags as a label selector, paginated.
    let lists: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/remote/secrets")
        .collect();
    assert_eq!(lists.len(), 2, "{requests:?}");
    assert!(
        lists[0].query.contains("labelSelector=team%3Da"),
        "{:?}",
        lists[0]
    );
    assert!(lists.iter().all(|r| r.query.contains("limit=100")));
    assert!(
        requests.iter().all(|r| r.user.is_some()),
        "the token is sent"
    );

    // A token the API server does not know: a clear backend error, no value.
    let (status, body) = server
        .post(
            "/v1/secretstore/kube-wrong/get",
            Some(&t),
            json!({"remoteRef": {"key": "db-creds"}}),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("kubernetes API server answered HTTP 401"),
        "{body}"
    );
    server.sync_logs().await;
    for line in server.logs() {
        assert!(
            !line.contains("DB-REMOTE-pw") && !line.contains(&kube.token()),
            "{line}"
        );
    }
}
