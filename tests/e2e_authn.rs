//! End to end, authentication findings: static keys without `kid` and PEM public keys
//! (air-gapped clusters), key rotation right after a fetch, and federations sharing an issuer
//! with one unreachable. The real `esi-server` over HTTPS; issuers from `tests/common`.

mod common;

use common::*;
use std::time::{Duration, Instant};

use serde_json::json;

const AUD: &str = "https://esi-federation.cluster-main.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";
const PATH: &str = "/secretstore/fake-store/secrets/other";
const VALUE: &str = "authn-OTHER-value-93af";

fn federation(name: &str, spec: &str) -> String {
    format!(
        r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: KubernetesFederation
metadata: {{name: {name}}}
spec:
  issuer: {ISS}
  audiences: ["{AUD}"]
{spec}"#
    )
}

fn authorization(federation: &str) -> String {
    format!(
        r#"apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {{name: allow-{federation}}}
spec:
  federationRef: {{kind: KubernetesFederation, name: {federation}}}
  subject:
    oidc:
      issuer: {ISS}
      subject: system:serviceaccount:monitoring:app
  allowedClusterSecretStores: ["fake-store"]
"#
    )
}

fn fake_store() -> String {
    format!(
        r#"apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: fake-store}}
spec:
  provider:
    fake:
      data:
        - {{key: other, value: {VALUE}}}
"#
    )
}

fn app_token(key: &str, kid: Option<&str>) -> String {
    mint(key, &sa_claims(ISS, AUD, "monitoring", "app"), kid)
}

/// The public half of a fixture key as PEM (what `sa.pub` holds).
fn public_pem(key: &str) -> String {
    let pem = std::fs::read_to_string(format!("{FIXTURES}/keys/{key}.pem")).unwrap();
    rcgen::KeyPair::from_pem(&pem).unwrap().public_key_pem()
}

fn indented(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

/// Issue 8: a static JWKS whose keys have no `kid` (made from `sa.pub`) verifies real tokens,
/// which always carry one; PEM `publicKeys` do the same; other keys and algorithms still fail.
#[tokio::test(flavor = "multi_thread")]
async fn static_keys_without_kid_and_pem_public_keys() {
    let mut no_kid = jwk("rsa-1");
    no_kid.as_object_mut().unwrap().remove("kid");
    let jwks_doc = json!({ "keys": [no_kid] }).to_string();
    let manifests = vec![
        (
            "airgap.yaml",
            federation("airgap", &format!("  jwks: '{jwks_doc}'\n")),
        ),
        (
            "pem.yaml",
            federation(
                "pem",
                &format!(
                    "  publicKeys:\n    - |\n{}",
                    indented(&public_pem("ec-1"), "      ")
                ),
            ),
        ),
        ("authz-airgap.yaml", authorization("airgap")),
        ("authz-pem.yaml", authorization("pem")),
        ("store.yaml", fake_store()),
    ];
    let server = Server::start(&manifests, &[]);
    // rsa-1's token carries the Kubernetes kid: verified by the kid-less JWKS key.
    let (status, text) = server
        .post(PATH, Some(&app_token("rsa-1", None)), json!({}))
        .await;
    assert_eq!(
        (status, text.as_str()),
        (200, format!("\"{VALUE}\"").as_str())
    );
    // ec-1's token by the PEM key, under any kid.
    for kid in [None, Some("rotated-or-unknown")] {
        let (status, text) = server
            .post(PATH, Some(&app_token("ec-1", kid)), json!({}))
            .await;
        assert_eq!(status, 200, "{kid:?}: {text}");
    }
    // Other keys fail, whatever kid they claim.
    for (key, kid) in [
        ("rsa-2", None),
        (
            "rsa-2",
            Some(jwk("rsa-1")["kid"].as_str().unwrap().to_owned()),
        ),
        ("ec-2", None),
    ] {
        let (status, _) = server
            .post(PATH, Some(&app_token(key, kid.as_deref())), json!({}))
            .await;
        assert_eq!(status, 401, "{key} {kid:?}");
    }
}

fn fetched_federation(name: &str, issuer: &Issuer) -> String {
    federation(
        name,
        &format!(
            "  url: {}\n  caBundle: {}\n",
            issuer.url,
            b64(&issuer.ca.ca_pem)
        ),
    )
}

/// Issue 8: the cluster rotates its key right after the server fetched the JWKS; the first
/// token of the new key is held until the next permitted refresh and succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn rotation_right_after_a_fetch_is_not_a_401() {
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let manifests = vec![
        ("federation.yaml", fetched_federation("alpha", &issuer)),
        ("authz.yaml", authorization("alpha")),
        ("store.yaml", fake_store()),
    ];
    let server = Server::start_with_args(&manifests, &[], &["--jwks-min-refresh-interval", "2s"]);
    let (status, _) = server
        .post(PATH, Some(&app_token("rsa-1", None)), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(issuer.jwks_hits(), 1);
    issuer.set_keys(jwks(&["rsa-1", "rsa-2"]));
    let start = Instant::now();
    let (status, text) = server
        .post(PATH, Some(&app_token("rsa-2", None)), json!({}))
        .await;
    assert_eq!(status, 200, "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(issuer.jwks_hits(), 2);
    // The old key still works, without a fetch.
    let (status, _) = server
        .post(PATH, Some(&app_token("rsa-1", None)), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(issuer.jwks_hits(), 2);
}

/// Security review finding 4: a second `KubernetesFederation` for the same issuer whose URL
/// accepts connections and never answers does not hold up the healthy federation's callers,
/// cold or warm, nor after junk tokens naming that issuer with changing `kid` and `ca.crt`.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_federation_sharing_the_issuer_does_not_stall_the_healthy_one() {
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_url = format!("https://{}", hung.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = hung.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(sock);
            }
        });
    }
    let manifests = vec![
        // Sorts first: it used to be tried (and waited for, 5 s) first.
        (
            "a-stale.yaml",
            federation("a-stale-copy", &format!("  url: {hung_url}\n")),
        ),
        ("b-live.yaml", fetched_federation("b-live", &issuer)),
        ("authz.yaml", authorization("b-live")),
        ("store.yaml", fake_store()),
    ];
    // A long refresh interval: the junk below falls within one back-off period (and is not
    // held for a rotation refetch).
    let server = Server::start_with_args(&manifests, &[], &["--jwks-min-refresh-interval", "30s"]);
    for round in ["cold", "warm"] {
        let start = Instant::now();
        let (status, text) = server
            .post(PATH, Some(&app_token("rsa-1", None)), json!({}))
            .await;
        assert_eq!(status, 200, "{round}: {text}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{round}: {:?}",
            start.elapsed()
        );
    }
    let before = accepted.load(std::sync::atomic::Ordering::SeqCst);
    let start = Instant::now();
    for i in 0..5 {
        let junk_ca = b64(&test_ca().ca_pem);
        let (status, _) = server
            .post(
                PATH,
                Some(&app_token("rsa-2", Some(&format!("junk-{i}")))),
                json!({ "ca.crt": junk_ca }),
            )
            .await;
        assert_eq!(status, 401);
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "junk: {:?}",
        start.elapsed()
    );
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) <= before + 1);
    let start = Instant::now();
    let (status, _) = server
        .post(PATH, Some(&app_token("rsa-1", None)), json!({}))
        .await;
    assert_eq!(status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}
