//! End to end, SPIFFE federations (issue 18 part 2): the real `esi-server` over HTTPS with
//! a `SpiffeFederation` whose bundle (JWKS form, `use: jwt-svid` keys) and JWT-SVIDs the
//! test mints with the fixture keys (no SPIRE server here). A SPIFFE ID allowed (exact and by
//! glob) and one denied; JWT-SVIDs of another trust domain, expired, without `aud`, with a
//! wrong `aud`, signed by a key not in the bundle: refused; a `forbid` on the workload
//! holds; bundle rotation by a directory reload; credentials issued to a SPIFFE workload
//! revoked by it and by nobody else.

mod common;

use common::fake_vault::FakeVault;
use common::*;
use serde_json::{Value, json};

const AUD: &str = "https://esi-federation.example.com";
const VALUE: &str = "spiffe-value-9c2e";
const SECRET: &str = "/secretstore/mesh-store/secrets/db-password";
const API: &str = "spiffe://example.org/ns/prod/sa/api";

/// A SPIFFE bundle (JWKS form) of the fixture keys `keys`, each `use: jwt-svid`, as
/// `spire-server bundle show -format spiffe` prints it (X.509 authorities left out).
fn bundle(keys: &[&str]) -> String {
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

/// A `SpiffeFederation` `spire` of trust domain `example.org` with the bundle of `keys`.
fn federation(keys: &[&str]) -> String {
    format!(
        r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: SpiffeFederation
metadata: {{name: spire}}
spec:
  trustDomain: example.org
  audiences: ["{AUD}"]
  bundle: '{}'
"#,
        bundle(keys)
    )
}

fn authorization(name: &str, spiffe_id: &str, grants: &str) -> String {
    format!(
        r#"---
apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {{name: {name}}}
spec:
  federationRef: {{kind: SpiffeFederation, name: spire}}
  subject: {{spiffe: {{spiffeID: "{spiffe_id}"}}}}
{grants}"#
    )
}

fn store() -> String {
    format!(
        r#"---
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

/// JWT-SVID claims for `sub`, as SPIRE mints them (no `iss`), valid for five minutes.
fn svid_claims(sub: &str) -> Value {
    let now = now();
    json!({"sub": sub, "aud": [AUD], "iat": now, "exp": now + 300})
}

fn svid(key: &str, sub: &str) -> String {
    mint(key, &svid_claims(sub), None)
}

#[tokio::test(flavor = "multi_thread")]
async fn spiffe_workloads_are_authorized_refused_forbidden_and_rotated() {
    let mut manifests = store();
    manifests.push_str(&authorization(
        "api",
        API,
        "  allowedClusterSecretStores: [mesh-store]\n",
    ));
    manifests.push_str(&authorization(
        "batch",
        "spiffe://example.org/ns/batch/*",
        "  allowedClusterSecretStores: [mesh-store]\n",
    ));
    let forbid = r#"@id("no-archived-workloads")
forbid (principal is Esi::SpiffeWorkload, action, resource)
when { principal has serviceAccount && principal.serviceAccount == "archived" };
"#;
    let server = Server::start(
        &[
            ("federation.yaml", federation(&["ec-1"])),
            ("all.yaml", manifests),
        ],
        &[("mesh.cedar", forbid)],
    );
    let get = |token: String| {
        let server = &server;
        async move { server.post(SECRET, Some(&token), json!({})).await }
    };
    let ok = (200, format!("\"{VALUE}\""));

    // Allowed: the exact SPIFFE ID, and one of the glob.
    assert_eq!(get(svid("ec-1", API)).await, ok);
    let job = "spiffe://example.org/ns/batch/sa/job";
    assert_eq!(get(svid("ec-1", job)).await, ok);
    // Denied (404, as for anything the caller may not see): another workload.
    let other = "spiffe://example.org/ns/prod/sa/other";
    assert_eq!(get(svid("ec-1", other)).await.0, 404);
    // The forbid on the workload holds against the glob's permit.
    assert_eq!(
        get(svid("ec-1", "spiffe://example.org/ns/batch/sa/archived"))
            .await
            .0,
        404
    );

    // Refused (401): what the federation's bundle and rules do not prove.
    let mut no_aud = svid_claims(API);
    no_aud.as_object_mut().unwrap().remove("aud");
    let mut wrong_aud = svid_claims(API);
    wrong_aud["aud"] = json!(["https://another-relying-party"]);
    let mut expired = svid_claims(API);
    expired["iat"] = json!(now() - 4000);
    expired["exp"] = json!(now() - 3000);
    for (what, token) in [
        (
            "another trust domain",
            svid("ec-1", "spiffe://evil.org/ns/prod/sa/api"),
        ),
        ("expired", mint("ec-1", &expired, None)),
        ("without aud", mint("ec-1", &no_aud, None)),
        ("wrong aud", mint("ec-1", &wrong_aud, None)),
        ("a key not in the bundle", svid("ec-2", API)),
        (
            "the bundle's key under another kid",
            mint(
                "ec-2",
                &svid_claims(API),
                Some(jwk("ec-1")["kid"].as_str().unwrap()),
            ),
        ),
        (
            "a malformed SPIFFE ID",
            svid("ec-1", "spiffe://example.org/ns/prod/sa/../api"),
        ),
    ] {
        let (status, body) = get(token).await;
        assert_eq!(status, 401, "{what}: {body}");
    }

    // The decision lines name the principal's type and id.
    server.sync_logs().await;
    let decisions: Vec<Value> = server
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "esi::decision")
        .collect();
    assert!(
        decisions.iter().any(|d| d["principal"] == API
            && d["principal_type"] == "SpiffeWorkload"
            && d["principal_id"] == format!("spire/{API}")
            && d["decision"] == "allow"),
        "{decisions:#?}"
    );
    assert!(
        decisions.iter().any(|d| d["decision"] == "deny"
            && d["policies"].to_string().contains("no-archived-workloads")),
        "{decisions:#?}"
    );

    // Bundle rotation: a reload replaces ec-1 by ec-2; ec-1's JWT-SVIDs stop verifying
    // (even one verified, and cached, before).
    let before = svid("ec-1", API);
    assert_eq!(get(before.clone()).await, ok);
    server
        .write_manifest("federation.yaml", &federation(&["ec-2"]))
        .await;
    assert_eq!(get(before).await.0, 401);
    assert_eq!(get(svid("ec-1", API)).await.0, 401);
    assert_eq!(get(svid("ec-2", API)).await, ok);
}

/// Issue 18: credentials a generator issued to a SPIFFE workload are owned by it (its
/// path names a Pod by ESE's convention, so the owner is that Pod, in its own
/// federation): its DELETE revokes them; another SPIFFE workload of the namespace, and a
/// Kubernetes ServiceAccount of the same namespace, ServiceAccount and Pod names in another
/// federation, revoke only their own.
#[tokio::test(flavor = "multi_thread")]
async fn a_spiffe_workload_revokes_its_own_credentials_and_nobody_else_does() {
    let vault = FakeVault::start().await;
    let kube_issuer = "https://kube.example.test";
    let mut manifests = federation(&["ec-1"]);
    manifests.push_str(&format!(
        r#"---
apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: KubernetesFederation
metadata: {{name: kube}}
spec:
  issuer: {kube_issuer}
  audiences: ["{AUD}"]
  jwks: '{}'
---
apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {{name: kube-app}}
spec:
  federationRef: {{kind: KubernetesFederation, name: kube}}
  subject: {{oidc: {{issuer: "{kube_issuer}", subject: "system:serviceaccount:ci:app"}}}}
  allowedGenerators:
    - {{name: creds, kind: VaultDynamicSecret, namespace: ci}}
"#,
        jwks(&["rsa-1"])
    ));
    manifests.push_str(&vault.generator_manifests("ci"));
    manifests.push_str(&authorization(
        "mesh-ci",
        "spiffe://example.org/*",
        "  allowedGenerators:\n    - {name: creds, kind: VaultDynamicSecret, namespace: ci}\n",
    ));
    let server = Server::start(&[("all.yaml", manifests)], &[]);
    // ESE's path convention: /{app}/ns/{ns}/sa/{saUID}/{saName}/pod/{podUID}/{podName}.
    let app = svid(
        "ec-1",
        "spiffe://example.org/shop/ns/ci/sa/u-sa-1/app/pod/u-pod-1/app-pod",
    );
    let other = svid("ec-1", "spiffe://example.org/ns/ci/sa/other");
    // The same namespace, ServiceAccount and Pod names (`app-pod`), another federation.
    let kube = mint("rsa-1", &sa_claims(kube_issuer, AUD, "ci", "app"), None);
    let path = "/generators/ci/VaultDynamicSecret/creds";
    let call = |method: reqwest::Method, path: &str, token: &str| {
        let req = server
            .client
            .request(method, format!("{}{path}", server.url))
            .bearer_auth(token)
            .json(&json!({}));
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let lease = |body: &str| {
        let v: Value = serde_json::from_str(body).unwrap();
        format!("fake/creds/{}", &v["username"].as_str().unwrap()[5..])
    };

    let (status, app_cred) = call(reqwest::Method::POST, path, &app).await;
    assert_eq!(status, 200, "{app_cred}");
    let (status, other_cred) = call(reqwest::Method::POST, path, &other).await;
    assert_eq!(status, 200, "{other_cred}");
    let (status, kube_cred) = call(reqwest::Method::POST, path, &kube).await;
    assert_eq!(status, 200, "{kube_cred}");
    // Another SPIFFE workload's DELETE revokes its own, never app's.
    let (status, body) = call(reqwest::Method::DELETE, path, &other).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(vault.revoked(), vec![lease(&other_cred)]);
    // The ServiceAccount of the same names in another federation: its own only.
    let (status, body) = call(reqwest::Method::DELETE, path, &kube).await;
    assert_eq!(status, 200, "{body}");
    let mut want = vec![lease(&other_cred), lease(&kube_cred)];
    want.sort();
    assert_eq!(vault.revoked(), want);
    // app's own DELETE revokes app's.
    let (status, body) = call(reqwest::Method::DELETE, path, &app).await;
    assert_eq!(status, 200, "{body}");
    want.push(lease(&app_cred));
    want.sort();
    assert_eq!(vault.revoked(), want);

    // By handle (`/v1`): only the workload it was issued to may revoke it.
    let (status, body) = call(
        reqwest::Method::POST,
        "/v1/generators/ci/VaultDynamicSecret/creds",
        &app,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let issued: Value = serde_json::from_str(&body).unwrap();
    let id = issued["credential"]["id"].as_str().unwrap().to_owned();
    let handle = format!("/v1/credentials/{id}");
    for stranger in [&other, &kube] {
        let (status, _) = call(reqwest::Method::DELETE, &handle, stranger).await;
        assert_eq!(status, 404);
    }
    assert_eq!(vault.revoked().len(), 3);
    let (status, body) = call(reqwest::Method::DELETE, &handle, &app).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(vault.revoked().len(), 4);
}
