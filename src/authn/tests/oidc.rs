//! OIDC federations (issue 18): discovery at the issuer (its `issuer` must match, its
//! `jwks_uri` must stay on the issuer's host), an explicit `jwksUri`, the client's `ca.crt`
//! never trusted, and the identity a token proves (subject claim, `boundClaims`, claims
//! handed to policies). The key cache, rotation and flood limits are the Kubernetes
//! federations' own: `server` runs those tests for both kinds (`Profile`).

use std::sync::Arc;

use serde_json::json;

use super::server::{AUD, T0, TestServer};
use super::support::{TestKey, oidc_claims};
use crate::authn::*;
use crate::resources::{KubernetesFederationSpec, OidcCommonSpec, OidcFederationSpec};

fn authenticator(federations: Vec<Federation>) -> Arc<Authenticator> {
    let a = Authenticator::new(AuthnSettings {
        clock: Clock::fixed(T0),
        ..Default::default()
    });
    a.set_federations(federations);
    Arc::new(a)
}

fn oidc(name: &str, spec: &OidcFederationSpec) -> Federation {
    Federation::from_oidc_spec(name, spec).unwrap()
}

/// A valid token of `iss` signed by `key` finds no usable keys.
async fn assert_no_keys(a: &Authenticator, key: &TestKey, iss: &str) {
    assert_eq!(
        a.authenticate(&key.sign(&oidc_claims(iss, AUD, T0)), None)
            .await,
        Err(AuthnError::KeysUnavailable)
    );
}

#[tokio::test]
async fn discovery_at_the_issuer_gives_an_oidc_subject() {
    let srv = TestServer::start().await;
    let key = TestKey::rsa();
    srv.discovery();
    srv.jwks(&[&key]);
    let mut spec = srv.oidc_spec();
    spec.common.claims = vec!["repository".into(), "environment".into(), "missing".into()];
    spec.common.bound_claims = [("repository".to_owned(), "org/*".to_owned())].into();
    let a = authenticator(vec![oidc("github", &spec)]);
    let id = a
        .authenticate(&key.sign(&oidc_claims(&srv.url, AUD, T0)), None)
        .await
        .unwrap();
    assert_eq!(id.federation, "github");
    assert_eq!(id.federation_kind, FederationKind::Oidc);
    assert_eq!(id.subject, "repo:org/app:ref:refs/heads/main");
    assert_eq!(id.kind(), PrincipalKind::OidcSubject);
    assert_eq!(
        id.principal,
        Principal::OidcSubject {
            claims: [
                ("environment".to_owned(), "prod".to_owned()),
                ("repository".to_owned(), "org/app".to_owned()),
            ]
            .into()
        }
    );
    assert_eq!(id.expires_at, Some(T0 + 600));
    assert_eq!(srv.hits("/.well-known/openid-configuration"), 1);
    assert_eq!(srv.hits("/openid/v1/jwks"), 1);
    // A token of another repository is refused by boundClaims, after its signature.
    let mut other = oidc_claims(&srv.url, AUD, T0);
    other["repository"] = json!("evil/app");
    assert_eq!(
        a.authenticate(&key.sign(&other), None).await,
        Err(AuthnError::UnboundClaims)
    );
    // So is one for another audience.
    assert_eq!(
        a.authenticate(&key.sign(&oidc_claims(&srv.url, "https://other", T0)), None)
            .await,
        Err(AuthnError::BadAudience)
    );
    // And a ServiceAccount-shaped token of this issuer is an OIDC subject like any other:
    // the federation decides the kind, never the token.
    let mut sa_like = oidc_claims(&srv.url, AUD, T0);
    sa_like["sub"] = json!("system:serviceaccount:kube-system:admin");
    let id = a.authenticate(&key.sign(&sa_like), None).await.unwrap();
    assert_eq!(id.kind(), PrincipalKind::OidcSubject);
    assert!(id.service_account().is_none());
}

#[tokio::test]
async fn discovery_must_name_the_issuer_and_keep_keys_on_its_host() {
    let key = TestKey::es256();
    type Doc = Box<dyn Fn(&TestServer) -> serde_json::Value>;
    let on_host = "jwks_uri is not an https URL on the issuer's host";
    let cases: Vec<(&str, &str, Doc)> = vec![
        (
            "jwks_uri on another host",
            on_host,
            Box::new(
                |s: &TestServer| json!({"issuer": s.url, "jwks_uri": "https://attacker.invalid/openid/v1/jwks"}),
            ),
        ),
        (
            "jwks_uri on another port",
            on_host,
            Box::new(
                |s: &TestServer| json!({"issuer": s.url, "jwks_uri": "https://127.0.0.1:1/openid/v1/jwks"}),
            ),
        ),
        (
            "jwks_uri over http",
            on_host,
            Box::new(
                |s: &TestServer| json!({"issuer": s.url, "jwks_uri": s.url.replace("https", "http") + "/openid/v1/jwks"}),
            ),
        ),
        (
            "another issuer",
            "issuer differs",
            Box::new(
                |s: &TestServer| json!({"issuer": "https://impostor.example", "jwks_uri": format!("{}/openid/v1/jwks", s.url)}),
            ),
        ),
        (
            "no issuer",
            "no issuer",
            Box::new(|s: &TestServer| json!({"jwks_uri": format!("{}/openid/v1/jwks", s.url)})),
        ),
        (
            "no jwks_uri",
            "no jwks_uri",
            Box::new(|s: &TestServer| json!({"issuer": s.url})),
        ),
    ];
    for (name, why, doc) in cases {
        let srv = TestServer::start().await;
        srv.jwks(&[&key]);
        srv.route(
            "/.well-known/openid-configuration",
            200,
            doc(&srv).to_string(),
        );
        let a = authenticator(vec![oidc("o", &srv.oidc_spec())]);
        assert_no_keys(&a, &key, &srv.url).await;
        assert_eq!(srv.hits("/openid/v1/jwks"), 0, "{name}");
        match &a.key_health()[0].1 {
            KeyHealth::Unreachable { reason, .. } => {
                assert!(reason.contains(why), "{name}: {reason}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // No discovery document: no fallback path is tried (that is a Kubernetes API server's).
    let srv = TestServer::start().await;
    srv.jwks(&[&key]);
    let a = authenticator(vec![oidc("o", &srv.oidc_spec())]);
    assert_no_keys(&a, &key, &srv.url).await;
    assert_eq!(srv.hits("/openid/v1/jwks"), 0);
    assert_eq!(srv.hits("/.well-known/openid-configuration"), 1);
}

#[tokio::test]
async fn jwks_uri_is_fetched_without_discovery_and_static_jwks_without_fetching() {
    let srv = TestServer::start().await;
    let key = TestKey::es384();
    srv.route("/keys", 200, TestKey::jwks(&[&key]));
    let issuer = "https://token.issuer.example";
    let spec = OidcFederationSpec {
        issuer: issuer.into(),
        jwks_uri: Some(format!("{}/keys", srv.url)),
        ..srv.oidc_spec()
    };
    let a = authenticator(vec![oidc("o", &spec)]);
    let id = a
        .authenticate(&key.sign(&oidc_claims(issuer, AUD, T0)), None)
        .await
        .unwrap();
    assert_eq!(id.issuer, issuer);
    assert_eq!(srv.hits("/keys"), 1);
    assert_eq!(srv.hits("/.well-known/openid-configuration"), 0);
    let offline = OidcFederationSpec {
        issuer: issuer.into(),
        jwks: Some(TestKey::jwks(&[&key])),
        common: OidcCommonSpec {
            audiences: vec![AUD.into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let a = authenticator(vec![oidc("o", &offline)]);
    assert!(
        a.authenticate(&key.sign(&oidc_claims(issuer, AUD, T0)), None)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_clients_ca_is_never_trusted_for_an_oidc_issuer() {
    let srv = TestServer::start().await;
    let key = TestKey::rsa();
    srv.discovery();
    srv.jwks(&[&key]);
    // No caBundle: the public roots only, which do not know the test CA, and the client's
    // `ca.crt` (the test CA) is ignored whatever it says.
    let mut spec = srv.oidc_spec();
    spec.common.ca_bundle = None;
    let a = authenticator(vec![oidc("o", &spec)]);
    assert_eq!(
        a.authenticate(
            &key.sign(&oidc_claims(&srv.url, AUD, T0)),
            Some(&srv.ca_b64())
        )
        .await,
        Err(AuthnError::KeysUnavailable)
    );
    assert_eq!(srv.hits("/.well-known/openid-configuration"), 0);
}

#[tokio::test]
async fn federations_sharing_an_issuer_are_told_apart_by_their_rules() {
    let srv = TestServer::start().await;
    let key = TestKey::rsa();
    srv.discovery();
    srv.jwks(&[&key]);
    let team = |name: &str, owner: &str| {
        let mut spec = srv.oidc_spec();
        spec.common.bound_claims = [("repository_owner".to_owned(), owner.to_owned())].into();
        oidc(name, &spec)
    };
    // A KubernetesFederation of the same issuer is tried too: its rules refuse the token.
    let kube = Federation::from_spec(
        "a-kube",
        &KubernetesFederationSpec {
            url: Some(srv.url.clone()),
            issuer: Some(srv.url.clone()),
            audiences: vec![AUD.into()],
            ca_bundle: Some(srv.ca_b64()),
            ..Default::default()
        },
    )
    .unwrap();
    let a = authenticator(vec![kube, team("b-other", "other"), team("c-org", "org")]);
    let id = a
        .authenticate(&key.sign(&oidc_claims(&srv.url, AUD, T0)), None)
        .await
        .unwrap();
    assert_eq!(id.federation, "c-org");
    let mut nobody = oidc_claims(&srv.url, AUD, T0);
    nobody["repository_owner"] = json!("nobody");
    // Refused by every one of them (which refusal is reported depends on which answered
    // last: each got as far as its claim checks).
    let refused = a.authenticate(&key.sign(&nobody), None).await;
    assert!(
        matches!(
            refused,
            Err(AuthnError::UnboundClaims | AuthnError::BadSubject)
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn discovery_redirects_and_oversized_documents_are_refused() {
    let key = TestKey::rsa();
    let srv = TestServer::start().await;
    srv.jwks(&[&key]);
    srv.redirect(
        "/.well-known/openid-configuration",
        &format!("{}/elsewhere", srv.url),
    );
    srv.discovery_at("/elsewhere");
    let a = authenticator(vec![oidc("o", &srv.oidc_spec())]);
    assert_no_keys(&a, &key, &srv.url).await;
    assert_eq!(srv.hits("/elsewhere"), 0);
    let srv = TestServer::start().await;
    srv.jwks(&[&key]);
    srv.route(
        "/.well-known/openid-configuration",
        200,
        json!({"issuer": srv.url, "jwks_uri": format!("{}/openid/v1/jwks", srv.url), "pad": "x".repeat(300 * 1024)})
            .to_string(),
    );
    let a = authenticator(vec![oidc("o", &srv.oidc_spec())]);
    assert_no_keys(&a, &key, &srv.url).await;
    assert_eq!(srv.hits("/openid/v1/jwks"), 0);
    match &a.key_health()[0].1 {
        KeyHealth::Unreachable { reason, .. } => assert!(reason.contains("larger"), "{reason}"),
        other => panic!("{other:?}"),
    }
}
