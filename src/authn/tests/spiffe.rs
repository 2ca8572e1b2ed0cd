//! SPIFFE federations (issue 18 part 2): JWT-SVIDs routed by the trust domain of `sub`,
//! verified only by that trust domain's bundle keys (`use: jwt-svid`), with the checks every
//! token gets (`exp`, `aud`, signature) and a bundle endpoint refreshed per its
//! `spiffe_refresh_hint`, bounded.

use std::sync::Arc;

use serde_json::{Value, json};

use super::server::{AUD, T0, TestClock, TestServer};
use super::support::{TestKey, claims, oidc_claims};
use crate::authn::*;
use crate::resources::{KubernetesFederationSpec, SpiffeBundleEndpoint, SpiffeFederationSpec};

const TD: &str = "example.org";
const ID: &str = "spiffe://example.org/billing/ns/prod/sa/u-sa/api/pod/u-pod/api-0";

/// A SPIFFE bundle (JWKS form) of `keys`, each `use: jwt-svid`, with `hint`.
fn bundle(keys: &[&TestKey], hint: Option<u64>) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| {
            let mut jwk = k.jwk.clone();
            jwk["use"] = json!("jwt-svid");
            jwk
        })
        .collect();
    let mut doc = json!({"spiffe_sequence": 1, "keys": keys});
    if let Some(hint) = hint {
        doc["spiffe_refresh_hint"] = json!(hint);
    }
    doc.to_string()
}

fn spec(trust_domain: &str, bundle_doc: &str) -> SpiffeFederationSpec {
    SpiffeFederationSpec {
        trust_domain: trust_domain.into(),
        bundle: Some(bundle_doc.into()),
        audiences: vec![AUD.into()],
        ..Default::default()
    }
}

/// JWT-SVID claims (no `iss`, as SPIRE's by default) for `sub`, valid for five minutes.
fn svid(sub: &str, now: u64) -> Value {
    json!({"sub": sub, "aud": [AUD], "iat": now - 5, "exp": now + 300})
}

fn authenticator(clock: Clock, federations: Vec<Federation>) -> Arc<Authenticator> {
    let a = Authenticator::new(AuthnSettings {
        clock,
        ..Default::default()
    });
    a.set_federations(federations);
    Arc::new(a)
}

#[tokio::test]
async fn a_jwt_svid_proves_a_spiffe_workload_of_its_trust_domain() {
    let key = TestKey::es256();
    let fed = Federation::from_spiffe_spec("spire", &spec(TD, &bundle(&[&key], None))).unwrap();
    assert_eq!(fed.kind(), FederationKind::Spiffe);
    assert_eq!(fed.trust_domain(), Some(TD));
    let a = authenticator(Clock::fixed(T0), vec![fed]);
    let id = a
        .authenticate(&key.sign(&svid(ID, T0)), None)
        .await
        .unwrap();
    assert_eq!(id.federation, "spire");
    assert_eq!(id.federation_kind, FederationKind::Spiffe);
    assert_eq!(id.kind(), PrincipalKind::SpiffeWorkload);
    assert_eq!(id.subject, ID);
    assert_eq!(id.issuer, "spiffe://example.org");
    assert_eq!(id.canonical_id(), format!("spire/{ID}"));
    assert_eq!(id.expires_at, Some(T0 + 300));
    let sa = id.service_account().unwrap();
    assert_eq!(
        (sa.namespace.as_str(), sa.name.as_str(), sa.uid.as_deref()),
        ("prod", "api", Some("u-sa"))
    );
    assert_eq!(
        (sa.pod_name.as_deref(), sa.pod_uid.as_deref()),
        (Some("api-0"), Some("u-pod"))
    );
    // An `iss` changes nothing: the trust domain routes it, the bundle verifies it.
    let mut with_iss = svid("spiffe://example.org/billing", T0);
    with_iss["iss"] = json!("https://oidc.example.org");
    let id = a.authenticate(&key.sign(&with_iss), None).await.unwrap();
    assert_eq!(id.issuer, "spiffe://example.org");
    assert_eq!(
        id.principal,
        Principal::SpiffeWorkload {
            trust_domain: TD.into(),
            path: "/billing".into(),
            kubernetes: None,
        }
    );
    // JWT-SVID §3: `iat` is optional.
    let no_iat = json!({"sub": ID, "aud": AUD, "exp": T0 + 300});
    assert!(a.authenticate(&key.sign(&no_iat), None).await.is_ok());
}

#[tokio::test]
async fn jwt_svids_that_do_not_hold_are_refused() {
    let key = TestKey::es256();
    let other_key = TestKey::es256();
    let sig_key = TestKey::rsa();
    // The bundle also holds a `use: sig` key: it never verifies a JWT-SVID.
    let mut doc: Value = serde_json::from_str(&bundle(&[&key], None)).unwrap();
    doc["keys"]
        .as_array_mut()
        .unwrap()
        .push(sig_key.jwk.clone());
    let feds = vec![
        Federation::from_spiffe_spec("spire", &spec(TD, &doc.to_string())).unwrap(),
        Federation::from_spiffe_spec(
            "partner",
            &spec("partner.org", &bundle(&[&other_key], None)),
        )
        .unwrap(),
    ];
    let a = authenticator(Clock::fixed(T0), feds);
    let refused = |claims: Value, by: &TestKey| by.sign(&claims);
    let cases: Vec<(&str, String, AuthnError)> = vec![
        (
            "another trust domain, no federation",
            refused(svid("spiffe://evil.org/ns/prod/sa/api", T0), &key),
            AuthnError::UnknownIssuer,
        ),
        (
            "another federation's trust domain, this bundle's key",
            refused(svid("spiffe://partner.org/ns/prod/sa/api", T0), &key),
            AuthnError::UnknownKeyId,
        ),
        (
            "this trust domain, the other bundle's key",
            refused(svid(ID, T0), &other_key),
            AuthnError::UnknownKeyId,
        ),
        (
            "signed by the bundle's use=sig key",
            refused(svid(ID, T0), &sig_key),
            AuthnError::UnknownKeyId,
        ),
        (
            "expired",
            refused(svid(ID, T0 - 1000), &key),
            AuthnError::Expired,
        ),
        (
            "no aud",
            refused(json!({"sub": ID, "iat": T0, "exp": T0 + 300}), &key),
            AuthnError::BadAudience,
        ),
        (
            "wrong aud",
            refused(
                json!({"sub": ID, "aud": ["https://other"], "iat": T0, "exp": T0 + 300}),
                &key,
            ),
            AuthnError::BadAudience,
        ),
        (
            "no exp",
            refused(json!({"sub": ID, "aud": AUD, "iat": T0}), &key),
            AuthnError::MissingExpiry,
        ),
        (
            "no iat, exp beyond the longest lifetime",
            refused(
                json!({"sub": ID, "aud": AUD, "exp": T0 + 400 * 86400}),
                &key,
            ),
            AuthnError::LifetimeTooLong,
        ),
        (
            "a trust domain ID names no workload",
            refused(svid("spiffe://example.org", T0), &key),
            AuthnError::BadSubject,
        ),
        (
            "a malformed SPIFFE ID",
            refused(svid("spiffe://example.org/a/../b", T0), &key),
            AuthnError::BadSubject,
        ),
        (
            "no iss, and a sub that is no SPIFFE ID",
            refused(svid("system:serviceaccount:prod:api", T0), &key),
            AuthnError::BadIssuer,
        ),
    ];
    for (what, token, want) in cases {
        assert_eq!(a.authenticate(&token, None).await, Err(want), "{what}");
    }
    // A malformed `sub` with an `iss` routes to no SPIFFE federation at all.
    let mut claims = svid("spiffe://example.org/a/../b", T0);
    claims["iss"] = json!("https://i");
    assert_eq!(
        a.authenticate(&key.sign(&claims), None).await,
        Err(AuthnError::UnknownIssuer)
    );
}

/// A Kubernetes federation never takes a JWT-SVID, and a SPIFFE federation never a
/// ServiceAccount token: each kind checks what its tokens must carry.
#[tokio::test]
async fn kinds_do_not_cross() {
    let key = TestKey::es256();
    let k8s = KubernetesFederationSpec {
        issuer: Some("https://kube".into()),
        jwks: Some(TestKey::jwks(&[&key])),
        audiences: vec![AUD.into()],
        ..Default::default()
    };
    let feds = vec![
        Federation::from_spec("kube", &k8s).unwrap(),
        Federation::from_spiffe_spec("spire", &spec(TD, &bundle(&[&key], None))).unwrap(),
    ];
    let a = authenticator(Clock::fixed(T0), feds);
    let sa = a
        .authenticate(&key.sign(&claims("https://kube", AUD, T0)), None)
        .await
        .unwrap();
    assert_eq!(sa.kind(), PrincipalKind::ServiceAccount);
    let mut svid_with_kube_iss = svid(ID, T0);
    svid_with_kube_iss["iss"] = json!("https://kube");
    let id = a
        .authenticate(&key.sign(&svid_with_kube_iss), None)
        .await
        .unwrap();
    assert_eq!(
        id.federation, "spire",
        "the Kubernetes federation refuses its sub"
    );
}

#[tokio::test]
async fn a_bundle_endpoint_is_refreshed_per_its_hint_bounded() {
    let srv = TestServer::start().await;
    let old = TestKey::es256();
    let new = TestKey::es256();
    // A hint below the minimum is raised to it.
    srv.route("/bundle", 200, bundle(&[&old], Some(5)));
    let spec = SpiffeFederationSpec {
        trust_domain: TD.into(),
        bundle_endpoint: Some(SpiffeBundleEndpoint {
            url: format!("{}/bundle", srv.url),
            ca_bundle: Some(srv.ca_b64()),
        }),
        audiences: vec![AUD.into()],
        ..Default::default()
    };
    let (clock, c) = TestClock::new();
    // No waiting for a rotation: the test clock is not tokio's.
    let a = Authenticator::new(AuthnSettings {
        clock: c,
        jwks_rotation_wait: std::time::Duration::ZERO,
        ..Default::default()
    });
    a.set_federations(vec![Federation::from_spiffe_spec("spire", &spec).unwrap()]);
    assert!(
        a.authenticate(&old.sign(&svid(ID, clock.now())), None)
            .await
            .is_ok()
    );
    assert_eq!(srv.hits("/bundle"), 1);
    srv.route("/bundle", 200, bundle(&[&new], Some(3600 * 24)));
    clock.advance(MIN_SPIFFE_REFRESH_SECS - 5);
    assert!(
        a.authenticate(&old.sign(&svid(ID, clock.now())), None)
            .await
            .is_ok()
    );
    assert_eq!(
        srv.hits("/bundle"),
        1,
        "fresh for the minimum, not the hint of 5 s"
    );
    clock.advance(10);
    // Stale: refreshed; the old key is gone from the bundle.
    let _ = a
        .authenticate(&old.sign(&svid(ID, clock.now())), None)
        .await;
    assert_eq!(srv.hits("/bundle"), 2);
    assert_eq!(
        a.authenticate(&old.sign(&svid(ID, clock.now() + 1)), None)
            .await,
        Err(AuthnError::UnknownKeyId)
    );
    assert!(
        a.authenticate(&new.sign(&svid(ID, clock.now())), None)
            .await
            .is_ok()
    );
    // A day's hint is cut to the maximum: past it, a token of a key the bundle holds
    // triggers a refresh.
    srv.route("/bundle", 200, bundle(&[&old, &new], None));
    clock.advance(MAX_SPIFFE_REFRESH_SECS - 10);
    assert!(
        a.authenticate(&new.sign(&svid(ID, clock.now())), None)
            .await
            .is_ok()
    );
    assert_eq!(srv.hits("/bundle"), 2);
    clock.advance(11);
    assert!(
        a.authenticate(&new.sign(&svid(ID, clock.now())), None)
            .await
            .is_ok()
    );
    assert_eq!(srv.hits("/bundle"), 3);
    assert!(
        a.authenticate(&old.sign(&svid(ID, clock.now())), None)
            .await
            .is_ok()
    );
}

#[test]
fn spiffe_federation_specs() {
    let key = TestKey::es256();
    let doc = bundle(&[&key], None);
    let f = Federation::from_spiffe_spec("spire", &spec(TD, &doc)).unwrap();
    assert!(f.warnings().is_empty(), "{:?}", f.warnings());
    assert_eq!(f.known_issuer(), None);
    let bad = |s: SpiffeFederationSpec| Federation::from_spiffe_spec("spire", &s).unwrap_err();
    for td in [
        "",
        "Example.org",
        "spiffe://example.org",
        "example.org/x",
        "example.org:443",
    ] {
        assert!(
            matches!(bad(spec(td, &doc)), FederationError::BadTrustDomain(_)),
            "{td:?}"
        );
    }
    assert_eq!(
        bad(SpiffeFederationSpec {
            audiences: vec![],
            ..spec(TD, &doc)
        }),
        FederationError::NoSpiffeAudiences
    );
    assert_eq!(
        bad(SpiffeFederationSpec {
            bundle: None,
            ..spec(TD, &doc)
        }),
        FederationError::NoBundle
    );
    // A bundle whose keys are all `use: sig` (a plain JWKS) has no JWT-SVID key.
    assert!(matches!(
        bad(spec(TD, &TestKey::jwks(&[&key]))),
        FederationError::BadSpiffeBundle(_)
    ));
    assert!(matches!(
        bad(spec(TD, "{")),
        FederationError::BadSpiffeBundle(_)
    ));
    for url in [
        "http://spire.example/bundle",
        "https://u:p@spire.example",
        "spire",
    ] {
        let s = SpiffeFederationSpec {
            bundle: None,
            bundle_endpoint: Some(SpiffeBundleEndpoint {
                url: url.into(),
                ca_bundle: None,
            }),
            ..spec(TD, &doc)
        };
        assert!(
            matches!(bad(s), FederationError::BadBundleEndpoint(_)),
            "{url}"
        );
    }
    let both = SpiffeFederationSpec {
        bundle_endpoint: Some(SpiffeBundleEndpoint {
            url: "https://spire.example/bundle".into(),
            ca_bundle: None,
        }),
        ..spec(TD, &doc)
    };
    let f = Federation::from_spiffe_spec("spire", &both).unwrap();
    assert!(
        f.warnings().iter().any(|w| w.contains("bundleEndpoint")),
        "{:?}",
        f.warnings()
    );
}

/// SPIRE's OIDC discovery provider publishes a trust domain's JWT-SVID keys as an OIDC
/// issuer, so a JWT-SVID that carries that `iss` is also a valid token of an
/// `OIDCFederation` of the same keys. Which identity it proves must not depend on the
/// federations' names or on which key fetch answers first: a `sub` that is a SPIFFE ID of a
/// served trust domain is proved by that trust domain's bundle only.
#[tokio::test]
async fn a_spiffe_id_of_a_served_trust_domain_is_proved_by_its_bundle_only() {
    let srv = TestServer::start().await;
    let spire_key = TestKey::es256();
    let idp_key = TestKey::rsa();
    srv.discovery();
    srv.jwks(&[&spire_key, &idp_key]);
    let oidc_spec = srv.oidc_spec();
    // Before and after "spire" in name order (the order federations with fresh keys are tried).
    for oidc_name in ["aaa-oidc", "zzz-oidc"] {
        let a = authenticator(
            Clock::fixed(T0),
            vec![
                Federation::from_oidc_spec(oidc_name, &oidc_spec).unwrap(),
                Federation::from_spiffe_spec("spire", &spec(TD, &bundle(&[&spire_key], None)))
                    .unwrap(),
            ],
        );
        // An ordinary token of the issuer: the OIDC federation now holds fresh keys.
        let plain = a
            .authenticate(&idp_key.sign(&oidc_claims(&srv.url, AUD, T0)), None)
            .await
            .unwrap();
        assert_eq!(plain.federation, oidc_name);

        let mut both = svid(ID, T0);
        both["iss"] = json!(srv.url);
        let id = a.authenticate(&spire_key.sign(&both), None).await.unwrap();
        assert_eq!(id.federation, "spire", "{oidc_name}");
        assert_eq!(id.kind(), PrincipalKind::SpiffeWorkload);
        assert_eq!(id.subject, ID);

        // The IdP's own key may sign its subjects, not the trust domain's workloads.
        let mut forged = oidc_claims(&srv.url, AUD, T0);
        forged["sub"] = json!(ID);
        assert!(
            a.authenticate(&idp_key.sign(&forged), None).await.is_err(),
            "{oidc_name}: an OIDC token naming a served trust domain's workload"
        );

        // A SPIFFE ID of a trust domain no SpiffeFederation serves is just a subject.
        let mut other = oidc_claims(&srv.url, AUD, T0);
        other["sub"] = json!("spiffe://partner.org/ns/prod/sa/api");
        let id = a.authenticate(&idp_key.sign(&other), None).await.unwrap();
        assert_eq!(id.federation, oidc_name);
        assert_eq!(id.kind(), PrincipalKind::OidcSubject);
    }
}

/// Review of the rule above: a `sub` that only *looks* like a served trust domain's
/// workload (a form the SPIFFE-ID parser refuses, so it was not routed to the bundle) or a
/// served workload's ID in the OIDC federation's `subjectClaim` was taken as an OIDC
/// subject that reads as that workload (audit, ledger, a policy on `principal.subject`).
/// Refused while a `SpiffeFederation` is served; accepted, as any subject, when none is.
#[tokio::test]
async fn an_oidc_subject_that_reads_as_a_served_workload_is_refused() {
    let srv = TestServer::start().await;
    let spire_key = TestKey::es256();
    let idp_key = TestKey::rsa();
    srv.discovery();
    srv.jwks(&[&idp_key]);
    let oidc_spec = srv.oidc_spec();
    let mut by_email = srv.oidc_spec();
    by_email.subject_claim = Some("email".into());
    let spire =
        || Federation::from_spiffe_spec("spire", &spec(TD, &bundle(&[&spire_key], None))).unwrap();
    let with_spire = authenticator(
        Clock::fixed(T0),
        vec![
            Federation::from_oidc_spec("idp", &oidc_spec).unwrap(),
            spire(),
        ],
    );
    let without_spire = authenticator(
        Clock::fixed(T0),
        vec![Federation::from_oidc_spec("idp", &oidc_spec).unwrap()],
    );
    let lookalikes = [
        "spiffe://example.org/ns/prod/sa/api/",
        "spiffe://example.org//ns/prod/sa/api",
        "spiffe://example.org/ns/prod/sa/./api",
        "SPIFFE://example.org/ns/prod/sa/api",
        "Spiffe://example.org/ns/prod/sa/api",
        "spiffe://Example.org/ns/prod/sa/api",
        "spiffe://EXAMPLE.ORG/ns/prod/sa/api",
        "spiffe://example.org:443/ns/prod/sa/api",
        "spiffe://user@example.org/ns/prod/sa/api",
        "spiffe://exam%70le.org/ns/prod/sa/api",
        "spiffe://example.org/ns/prod/sa/%61pi",
        "spiffe:/example.org/ns/prod/sa/api",
        "spiffe:example.org/ns/prod/sa/api",
        "spiffe://example.org",
        "spiffe://example.org/ns/prod/sa/api?x=1",
    ];
    for sub in lookalikes {
        let mut c = oidc_claims(&srv.url, AUD, T0);
        c["sub"] = json!(sub);
        let token = idp_key.sign(&c);
        assert!(
            matches!(
                with_spire.authenticate(&token, None).await,
                Err(AuthnError::BadSubject)
            ),
            "{sub:?} taken as an OIDC subject while {TD} is served"
        );
        let id = without_spire.authenticate(&token, None).await.unwrap();
        assert_eq!(
            (id.kind(), id.subject.as_str()),
            (PrincipalKind::OidcSubject, sub)
        );
    }

    // The served workload's exact ID in another subject claim.
    let by_email_a = authenticator(
        Clock::fixed(T0),
        vec![
            Federation::from_oidc_spec("idp", &by_email).unwrap(),
            spire(),
        ],
    );
    let mut c = oidc_claims(&srv.url, AUD, T0);
    c["email"] = json!(ID);
    assert!(matches!(
        by_email_a.authenticate(&idp_key.sign(&c), None).await,
        Err(AuthnError::BadSubject)
    ));
    // Another trust domain's valid ID there, or an ordinary email, is just a subject.
    for email in ["spiffe://partner.org/ns/prod/sa/api", "ci@example.org"] {
        c["email"] = json!(email);
        let id = by_email_a
            .authenticate(&idp_key.sign(&c), None)
            .await
            .unwrap();
        assert_eq!(id.subject, email);
        assert_eq!(id.kind(), PrincipalKind::OidcSubject);
    }
}

/// A verification still running while a `SpiffeFederation` is added must not leave its
/// answer cached: the reload's `invalidate_all` only drops what was cached before it, so
/// an IdP token naming the new trust domain's workload, verified under the old set, stayed
/// accepted from the cache (until its `exp`, up to an hour) though the new set refuses it.
#[tokio::test]
async fn a_verification_across_a_reload_does_not_cache_what_the_new_set_refuses() {
    let srv = TestServer::start().await;
    let spire_key = TestKey::es256();
    let idp_key = TestKey::rsa();
    srv.discovery();
    srv.jwks(&[&idp_key]);
    let oidc_spec = srv.oidc_spec();
    let idp = || Federation::from_oidc_spec("idp", &oidc_spec).unwrap();
    let a = authenticator(Clock::fixed(T0), vec![idp()]);
    let mut c = oidc_claims(&srv.url, AUD, T0);
    c["sub"] = json!(ID);
    let token = idp_key.sign(&c);

    // The first verification waits on the issuer's discovery and keys…
    srv.state
        .delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let first = {
        let (a, token) = (a.clone(), token.clone());
        tokio::spawn(async move { a.authenticate(&token, None).await })
    };
    let asked = std::time::Instant::now();
    while srv.hits("/.well-known/openid-configuration") == 0 {
        assert!(asked.elapsed().as_secs() < 5, "the issuer was never asked");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // …while the trust domain's SpiffeFederation is added (the OIDC one unchanged).
    a.set_federations(vec![
        idp(),
        Federation::from_spiffe_spec("spire", &spec(TD, &bundle(&[&spire_key], None))).unwrap(),
    ]);
    // Verified under the set it began with: an OIDC subject then.
    let id = first.await.unwrap().unwrap();
    assert_eq!(id.kind(), PrincipalKind::OidcSubject);
    srv.state
        .delay_ms
        .store(0, std::sync::atomic::Ordering::SeqCst);
    // From now on refused, not answered from the cache.
    let again = a.authenticate(&token, None).await;
    assert!(
        again.is_err(),
        "an IdP token naming a served workload, cached across the reload: {again:?}"
    );
    assert!(!a.is_cached(&token));
}
