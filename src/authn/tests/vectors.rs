//! Third-party ServiceAccount token vectors (`tests/fixtures/k8s-sa-tokens/`), each
//! checked for the outcome its `source.txt` states.

use std::path::PathBuf;

use rustls_pki_types::SubjectPublicKeyInfoDer;
use rustls_pki_types::pem::PemObject;

use crate::authn::*;
use crate::resources::KubernetesFederationSpec;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/k8s-sa-tokens");

fn path(rel: &str) -> PathBuf {
    PathBuf::from(VECTORS).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A static-JWKS federation for `iss` from a JWKS document.
fn fed(name: &str, iss: &str, audiences: &[&str], jwks: &str) -> Federation {
    let spec = KubernetesFederationSpec {
        issuer: Some(iss.to_owned()),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        jwks: Some(jwks.to_owned()),
        ..Default::default()
    };
    Federation::from_spec(name, &spec).unwrap()
}

async fn run(
    dir: &str,
    token_file: &str,
    audiences: &[&str],
    iss: &str,
    clock: u64,
) -> Result<Identity, AuthnError> {
    run_with(dir, token_file, audiences, iss, vector_settings(clock)).await
}

/// Some vectors were minted with lifetimes of years (test clusters); they are checked for
/// their own outcome with the lifetime cap out of the way, and for the cap separately.
fn vector_settings(clock: u64) -> AuthnSettings {
    AuthnSettings {
        clock: Clock::fixed(clock),
        max_token_lifetime: std::time::Duration::from_secs(20 * 366 * 86400),
        ..Default::default()
    }
}

async fn run_with(
    dir: &str,
    token_file: &str,
    audiences: &[&str],
    iss: &str,
    settings: AuthnSettings,
) -> Result<Identity, AuthnError> {
    let jwks_file = if path(dir).join("jwks.json").exists() {
        "jwks.json"
    } else {
        "jwks.derived.json"
    };
    let auth = Authenticator::new(settings);
    auth.set_federations(vec![fed(
        dir,
        iss,
        audiences,
        &read(&format!("{dir}/{jwks_file}")),
    )]);
    auth.authenticate(read(&format!("{dir}/{token_file}")).trim(), None)
        .await
}

#[tokio::test]
async fn multi_year_vectors_exceed_the_default_lifetime_cap() {
    let aud = ["kubernetes.default.svc"];
    for (dir, clock) in [
        ("vault-k8s-projected-rs256-minikube-2018", 1_550_000_000),
        ("vault-k8s-projected-rs256-minikube-2020", 1_700_000_000),
    ] {
        let default = AuthnSettings {
            clock: Clock::fixed(clock),
            ..Default::default()
        };
        assert_eq!(
            run_with(dir, "token.jwt", &aud, K8S, default).await,
            Err(AuthnError::LifetimeTooLong),
            "{dir}"
        );
        assert!(
            run(dir, "token.jwt", &aud, K8S, clock).await.is_ok(),
            "{dir}"
        );
    }
}

const K8S: &str = "kubernetes/serviceaccount";

#[test]
fn vectors_directory_resolves() {
    assert!(path("README.md").is_file(), "{VECTORS} does not resolve");
}

#[tokio::test]
async fn legacy_tokens_without_exp_are_rejected_after_signature_check() {
    // Signature valid (else we would see BadSignature): rejected as a legacy token.
    for dir in ["vault-k8s-legacy-rs256", "vault-k8s-legacy-rs256-wrong-sa"] {
        assert_eq!(
            run(dir, "token.jwt", &[], K8S, 1_600_000_000).await,
            Err(AuthnError::LegacyToken),
            "{dir}"
        );
    }
}

#[tokio::test]
async fn legacy_tokens_accepted_when_the_federation_opts_in() {
    let dir = "vault-k8s-legacy-rs256";
    let spec = KubernetesFederationSpec {
        issuer: Some(K8S.to_owned()),
        jwks: Some(read(&format!("{dir}/jwks.derived.json"))),
        allow_legacy_tokens: true,
        ..Default::default()
    };
    let auth = Authenticator::new(AuthnSettings {
        clock: Clock::fixed(1_600_000_000),
        ..Default::default()
    });
    auth.set_federations(vec![Federation::from_spec("legacy", &spec).unwrap()]);
    let token = read(&format!("{dir}/token.jwt"));
    let id = auth.authenticate(token.trim(), None).await.unwrap();
    assert_eq!(id.subject, "system:serviceaccount:default:vault-auth");
    assert_eq!(id.service_account().unwrap().namespace, "default");
    assert_eq!(id.expires_at, None);
    // Never cached: a legacy token is verified on every call.
    assert!(!auth.is_cached(token.trim()));
    // The opt-in does not waive the signature check.
    let bad = read("vault-k8s-legacy-rs256-bad-signature/token.jwt");
    assert_eq!(
        auth.authenticate(bad.trim(), None).await,
        Err(AuthnError::BadSignature)
    );
}

#[tokio::test]
async fn legacy_bad_signature_is_a_signature_error() {
    let r = run(
        "vault-k8s-legacy-rs256-bad-signature",
        "token.jwt",
        &[],
        K8S,
        1_600_000_000,
    )
    .await;
    assert_eq!(r, Err(AuthnError::BadSignature));
}

#[tokio::test]
async fn es384_with_mismatched_kid_is_unknown_kid() {
    let r = run(
        "vault-k8s-legacy-es384",
        "token.jwt",
        &[],
        K8S,
        1_600_000_000,
    )
    .await;
    assert_eq!(r, Err(AuthnError::UnknownKeyId));
}

#[tokio::test]
async fn minikube_2020_projected() {
    let aud = ["kubernetes.default.svc"];
    let id = run(
        "vault-k8s-projected-rs256-minikube-2020",
        "token.jwt",
        &aud,
        K8S,
        1_700_000_000,
    )
    .await
    .unwrap();
    assert_eq!(id.federation, "vault-k8s-projected-rs256-minikube-2020");
    assert_eq!(id.issuer, K8S);
    assert_eq!(id.subject, "system:serviceaccount:default:default");
    assert_eq!(
        (
            id.service_account().unwrap().namespace.as_str(),
            id.service_account().unwrap().name.as_str()
        ),
        ("default", "default")
    );
    assert_eq!(
        id.service_account().unwrap().uid.as_deref(),
        Some("77c81ad7-1bea-4d94-9ca5-f5d7f3632331")
    );
    assert_eq!(
        id.service_account().unwrap().pod_name.as_deref(),
        Some("vault")
    );
    assert_eq!(
        id.service_account().unwrap().pod_uid.as_deref(),
        Some("086c2f61-dea2-47bb-b5ca-63e63c5c9885")
    );
    assert_eq!(id.expires_at, Some(1_920_082_797));
    // After 2030 it expires.
    let r = run(
        "vault-k8s-projected-rs256-minikube-2020",
        "token.jwt",
        &aud,
        K8S,
        1_920_082_797 + 61,
    )
    .await;
    assert_eq!(r, Err(AuthnError::Expired));
    // Another audience configured → rejected.
    let r = run(
        "vault-k8s-projected-rs256-minikube-2020",
        "token.jwt",
        &["esi"],
        K8S,
        1_700_000_000,
    )
    .await;
    assert_eq!(r, Err(AuthnError::BadAudience));
    // Another issuer configured → no federation for this token.
    let r = run(
        "vault-k8s-projected-rs256-minikube-2020",
        "token.jwt",
        &aud,
        "https://other",
        1_700_000_000,
    )
    .await;
    assert_eq!(r, Err(AuthnError::UnknownIssuer));

    let dir = "vault-k8s-projected-rs256-minikube-2020-expired";
    assert_eq!(
        run(dir, "token.jwt", &aud, K8S, 1_700_000_000).await,
        Err(AuthnError::Expired)
    );
    assert!(
        run(dir, "token.jwt", &aud, K8S, 1_604_083_500)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn minikube_2018_empty_kid_tries_all_keys() {
    let aud = ["kubernetes.default.svc"];
    let dir = "vault-k8s-projected-rs256-minikube-2018";
    let id = run(dir, "token.jwt", &aud, K8S, 1_550_000_000)
        .await
        .unwrap();
    assert_eq!(id.subject, "system:serviceaccount:default:default");
    assert_eq!(
        run(dir, "token.jwt", &aud, K8S, 1_700_000_000).await,
        Err(AuthnError::Expired)
    );
    // With other keys first in the set, the right one is still found.
    let other = read("vault-k8s-projected-rs256-minikube-2020/jwks.derived.json");
    let mine = read(&format!("{dir}/jwks.derived.json"));
    let o: serde_json::Value = serde_json::from_str(&other).unwrap();
    let m: serde_json::Value = serde_json::from_str(&mine).unwrap();
    let both = serde_json::json!({"keys": [o["keys"][0], m["keys"][0]]}).to_string();
    let auth = Authenticator::new(vector_settings(1_550_000_000));
    auth.set_federations(vec![fed("two", K8S, &aud, &both)]);
    assert!(
        auth.authenticate(read(&format!("{dir}/token.jwt")).trim(), None)
            .await
            .is_ok()
    );

    let dir = "vault-k8s-projected-rs256-minikube-2018-expired";
    assert_eq!(
        run(dir, "token.jwt", &aud, K8S, 1_550_000_000).await,
        Err(AuthnError::Expired)
    );
}

#[tokio::test]
async fn salrashid_tokens_valid_at_their_clocks_expired_now() {
    let dir = "salrashid-minikube-oidc-2021";
    let iss = "https://e782-72-83-67-174.ngrok.io";
    let aud = ["gcp-sts-audience"];
    let id = run(dir, "token.jwt", &aud, iss, 1_634_912_000)
        .await
        .unwrap();
    assert_eq!(id.subject, "system:serviceaccount:default:svc1-sa");
    assert_eq!(
        id.service_account().unwrap().pod_name.as_deref(),
        Some("myapp-deployment-86d84cff8f-ckljb")
    );
    let id = run(dir, "token2.jwt", &aud, iss, 1_634_916_000)
        .await
        .unwrap();
    assert_eq!(
        id.service_account().unwrap().pod_name.as_deref(),
        Some("myapp-deployment-548bb79f55-brddj")
    );
    let now = Clock::system().now();
    for t in ["token.jwt", "token2.jwt"] {
        assert_eq!(
            run(dir, t, &aud, iss, now).await,
            Err(AuthnError::Expired),
            "{t}"
        );
    }
    // The discovery document's issuer is the tokens' iss.
    let disc: serde_json::Value =
        serde_json::from_str(&read(&format!("{dir}/openid-configuration.json"))).unwrap();
    assert_eq!(disc["issuer"], iss);
}

#[tokio::test]
async fn eks_token_by_kid_and_only_that_key() {
    let dir = "eks-nats-k8s-oidc-callout";
    let iss = "https://oidc.eks.eu-west-1.amazonaws.com/id/B88E7287E54DB073AC9CDC2FD1BE0969";
    let aud = ["sts.amazonaws.com"];
    let kid = "e3b1d185e0d794058a6346c32b2575ac0efb622e";
    let id = run(dir, "token.jwt", &aud, iss, 1_764_000_000)
        .await
        .unwrap();
    assert_eq!(
        id.subject,
        "system:serviceaccount:hakawai:hakawai-litellm-proxy"
    );
    assert_eq!(
        id.service_account().unwrap().pod_name.as_deref(),
        Some("hakawai-litellm-proxy-57456bb9cb-bwzxh")
    );
    assert_eq!(
        run(dir, "token.jwt", &aud, iss, Clock::system().now()).await,
        Err(AuthnError::Expired)
    );

    let jwks: serde_json::Value = serde_json::from_str(&read(&format!("{dir}/jwks.json"))).unwrap();
    let all = jwks["keys"].as_array().unwrap();
    assert_eq!(all.len(), 13);
    let others: Vec<_> = all.iter().filter(|k| k["kid"] != kid).cloned().collect();
    assert_eq!(others.len(), 12);
    let token = read(&format!("{dir}/token.jwt"));
    let settings = || AuthnSettings {
        clock: Clock::fixed(1_764_000_000),
        ..Default::default()
    };
    // Without that key: rejected.
    let auth = Authenticator::new(settings());
    auth.set_federations(vec![fed(
        "eks",
        iss,
        &aud,
        &serde_json::json!({"keys": others}).to_string(),
    )]);
    assert_eq!(
        auth.authenticate(token.trim(), None).await,
        Err(AuthnError::UnknownKeyId)
    );
    // None of the other 12 keys verifies it, even under its kid.
    for other in &others {
        let mut k = other.clone();
        k["kid"] = kid.into();
        let auth = Authenticator::new(settings());
        auth.set_federations(vec![fed(
            "eks",
            iss,
            &aud,
            &serde_json::json!({"keys": [k]}).to_string(),
        )]);
        assert_eq!(
            auth.authenticate(token.trim(), None).await,
            Err(AuthnError::BadSignature)
        );
    }
}

#[test]
fn kubernetes_key_id_rule() {
    let der =
        SubjectPublicKeyInfoDer::from_pem_slice(read("k8s-keyid-stability/key.pem").as_bytes())
            .unwrap();
    assert_eq!(
        kubernetes_key_id(der.as_ref()),
        read("k8s-keyid-stability/expected_kid.txt").trim()
    );
    // The derived JWKS kids follow the same rule (and minikube-2020's equals its tokens' kid).
    for dir in [
        "vault-k8s-projected-rs256-minikube-2020",
        "vault-k8s-legacy-es384",
        "vault-k8s-legacy-rs256",
    ] {
        let der =
            SubjectPublicKeyInfoDer::from_pem_slice(read(&format!("{dir}/key.pem")).as_bytes())
                .unwrap();
        let jwks: serde_json::Value =
            serde_json::from_str(&read(&format!("{dir}/jwks.derived.json"))).unwrap();
        assert_eq!(
            jwks["keys"][0]["kid"],
            kubernetes_key_id(der.as_ref()),
            "{dir}"
        );
    }
    assert_eq!(
        kubernetes_key_id(b""),
        "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
    );
}
