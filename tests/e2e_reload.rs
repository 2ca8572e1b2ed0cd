//! End to end: configuration reload keeps "last good" per object (issue 19, finding 7).
//! The real `esi-server` polls its manifest and policy directories; each step writes
//! files, waits for the reload, and observes decisions over HTTPS.

mod common;

use common::*;
use serde_json::{Value, json};

const AUD: &str = "https://esi-federation.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";

fn federation(issuer: &Issuer) -> String {
    format!(
        "apiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: KubernetesFederation\nmetadata: {{name: alpha}}\nspec:\n  url: {}\n  audiences: [\"{AUD}\"]\n",
        issuer.url
    )
}

fn fake_store(name: &str) -> String {
    format!(
        "apiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {{name: {name}}}\nspec:\n  provider:\n    fake:\n      data:\n        - {{key: k, value: v-{name}}}\n"
    )
}

fn authorization(name: &str, sa: &str, stores: &[&str]) -> String {
    format!(
        "apiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {{name: {name}}}\nspec:\n  federationRef: {{kind: KubernetesFederation, name: alpha}}\n  subject: {{oidc: {{issuer: {ISS}, subject: 'system:serviceaccount:apps:{sa}'}}}}\n  allowedClusterSecretStores: {stores:?}\n"
    )
}

/// The finding's typo: `allowedRemoteKeys` names a store that is not listed.
const TYPO: &str = "apiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {name: typo}\nspec:\n  federationRef: {kind: KubernetesFederation, name: alpha}\n  subject: {oidc: {issuer: 'https://kubernetes.default.svc.cluster.local', subject: 'system:serviceaccount:apps:ops'}}\n  allowedClusterSecretStores: [vault-prod]\n  allowedRemoteKeys: {vault-prdo: ['db/*']}\n";

fn body(issuer: &Issuer) -> Value {
    json!({ "ca.crt": b64(&issuer.ca.ca_pem) })
}

async fn status(server: &Server, issuer: &Issuer, sa: &str, store: &str) -> u16 {
    let token = mint("ec-1", &sa_claims(ISS, AUD, "apps", sa), None);
    server
        .post(
            &format!("/secretstore/{store}/secrets/k"),
            Some(&token),
            body(issuer),
        )
        .await
        .0
}

async fn remove_manifest(server: &Server, name: &str) {
    let before = server.count_log("configuration loaded");
    std::fs::remove_file(server.manifests.join(name)).unwrap();
    server.wait_log("configuration loaded", before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_object_does_not_freeze_the_rest_of_a_reload() {
    let issuer = Issuer::start(jwks(&["ec-1"]), true).await;
    let server = Server::start(
        &[
            ("fed.yaml", federation(&issuer)),
            ("store-a.yaml", fake_store("store-a")),
            ("store-b.yaml", fake_store("store-b")),
            ("app.yaml", authorization("app", "app", &["store-a"])),
            ("batch.yaml", authorization("batch", "batch", &["store-b"])),
        ],
        &[],
    );
    assert_eq!(status(&server, &issuer, "app", "store-a").await, 200);
    assert_eq!(status(&server, &issuer, "batch", "store-b").await, 200);

    // An unrelated Authorization with a typo: reported, grants nothing, blocks nothing.
    server.write_manifest("typo.yaml", TYPO).await;
    let line = server
        .logs()
        .into_iter()
        .rev()
        .find(|l| l.contains("Authorization/typo"))
        .unwrap_or_default();
    assert!(line.contains("vault-prdo"), "{line}");

    // Deleting an Authorization revokes it at once.
    remove_manifest(&server, "batch.yaml").await;
    assert_eq!(status(&server, &issuer, "batch", "store-b").await, 404);
    assert_eq!(status(&server, &issuer, "app", "store-a").await, 200);

    // A new forbid applies at once.
    server
        .write_policy(
            "deny-a.cedar",
            "forbid (principal, action, resource) when { resource has store && resource.store == \"store-a\" };",
        )
        .await;
    assert_eq!(status(&server, &issuer, "app", "store-a").await, 404);

    // A broken Authorization keeps its last good form, and a new grant still applies.
    server
        .write_manifest("batch.yaml", &authorization("batch", "batch", &["store-b"]))
        .await;
    assert_eq!(status(&server, &issuer, "batch", "store-b").await, 200);
    server
        .write_manifest(
            "batch.yaml",
            &authorization("batch", "batch", &["store-b", ""]),
        )
        .await;
    server
        .write_manifest("new.yaml", &authorization("new", "new", &["store-b"]))
        .await;
    assert_eq!(status(&server, &issuer, "new", "store-b").await, 200);
    assert_eq!(status(&server, &issuer, "batch", "store-b").await, 200);
    server.sync_logs().await;
    assert!(server.count_log("keeps its last good form") > 0);

    // A forbid that stops compiling keeps its last good form (still denies).
    server
        .write_policy(
            "deny-a.cedar",
            "forbid (principal, action, resource) when {",
        )
        .await;
    assert_eq!(status(&server, &issuer, "app", "store-a").await, 404);
    // Fixed: the fixed form applies at once.
    server
        .write_policy(
            "deny-a.cedar",
            "forbid (principal, action, resource) when { resource has store && resource.store == \"nothing\" };",
        )
        .await;
    assert_eq!(status(&server, &issuer, "app", "store-a").await, 200);

    // A store that stops building keeps its last good form; one that never built is absent.
    server
        .write_manifest(
            "store-a.yaml",
            "apiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {name: store-a}\nspec: {provider: {nosuch: {}}}\n",
        )
        .await;
    assert_eq!(status(&server, &issuer, "app", "store-a").await, 200);

    // `esi-server check` reports the broken objects.
    let out = std::process::Command::new(server_bin())
        .args(["check", "--manifests"])
        .arg(&server.manifests)
        .arg("--policies")
        .arg(&server.policies)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("Authorization/typo"), "{text}");
    assert!(text.contains("Authorization/batch"), "{text}");
    assert!(text.contains("ClusterSecretStore/store-a"), "{text}");
}
