//! X.509-SVIDs (issue 18): the leaf rules of the X509-SVID spec, chains verified only to the
//! `x509-svid` authorities of the bundle of the SPIFFE ID's trust domain, and the identity
//! shared with JWT-SVIDs for the same SPIFFE ID.

use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};

use super::server::{AUD, T0, TestClock, TestServer};
use super::support::TestKey;
use crate::authn::x509svid::{X509SvidError, check_leaf};
use crate::authn::*;
use crate::resources::SpiffeFederationSpec;

const TD: &str = "example.org";
const ID: &str = "spiffe://example.org/billing/ns/prod/sa/u-sa/api/pod/u-pod/api-0";

/// A CA of a trust domain (root, or intermediate when made by [`Ca::intermediate`]).
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl Ca {
    pub(crate) fn root(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let der = params.self_signed(&key).unwrap().der().clone();
        Ca {
            issuer: Issuer::new(params, key),
            der,
        }
    }

    /// A CA signed by this one.
    pub(crate) fn intermediate(&self, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let der = params.signed_by(&key, &self.issuer).unwrap().der().clone();
        Ca {
            issuer: Issuer::new(params, key),
            der,
        }
    }

    /// A leaf signed by this CA from `params`.
    pub(crate) fn sign(&self, params: &CertificateParams) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, &self.issuer).unwrap().der().clone()
    }

    /// This CA as a SPIFFE bundle entry (`use: x509-svid`, its DER in `x5c`).
    pub(crate) fn entry(&self, use_: &str) -> Value {
        json!({
            "use": use_,
            "kty": "EC",
            "crv": "P-256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.der)],
        })
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// An X.509-SVID leaf's parameters (X509-SVID §4): the URI SANs given, `cA` false,
/// `digitalSignature`, `clientAuth`.
pub(crate) fn svid_params(uris: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p
}

fn bundle(entries: Vec<Value>) -> String {
    json!({"spiffe_sequence": 1, "keys": entries}).to_string()
}

fn federation(name: &str, trust_domain: &str, entries: Vec<Value>) -> Federation {
    let spec = SpiffeFederationSpec {
        trust_domain: trust_domain.into(),
        bundle: Some(bundle(entries)),
        audiences: vec![AUD.into()],
        ..Default::default()
    };
    Federation::from_spiffe_spec(name, &spec).unwrap()
}

fn authenticator(now: u64, federations: Vec<Federation>) -> Authenticator {
    let a = Authenticator::new(AuthnSettings {
        clock: Clock::fixed(now),
        ..Default::default()
    });
    a.set_federations(federations);
    a
}

fn cert(chain: &[CertificateDer<'static>]) -> Arc<ClientCertificate> {
    ClientCertificate::new(chain).unwrap()
}

async fn refused(a: &Authenticator, chain: &[CertificateDer<'static>]) -> X509SvidError {
    match a.authenticate_x509(&cert(chain)).await {
        Err(AuthnError::X509Svid(e)) => e,
        other => panic!("expected an X.509-SVID refusal, got {other:?}"),
    }
}

/// A JWT-SVID and an X.509-SVID for the same SPIFFE ID prove the same identity (federation,
/// subject, principal, issuer: the same owner, Authorizations and audit subject).
#[tokio::test]
async fn an_x509_svid_proves_the_same_workload_as_a_jwt_svid() {
    let ca = Ca::root("spire");
    let key = TestKey::es256();
    let mut jwt_entry = key.jwk.clone();
    jwt_entry["use"] = json!("jwt-svid");
    let a = authenticator(
        T0,
        vec![federation(
            "spire",
            TD,
            vec![jwt_entry, ca.entry("x509-svid")],
        )],
    );
    let leaf = ca.sign(&svid_params(&[ID]));
    let x509 = a
        .authenticate_x509(&cert(std::slice::from_ref(&leaf)))
        .await
        .unwrap();
    let jwt = a
        .authenticate(
            &key.sign(&json!({"sub": ID, "aud": [AUD], "iat": T0 - 5, "exp": T0 + 300})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(x509.federation, "spire");
    assert_eq!(x509.kind(), PrincipalKind::SpiffeWorkload);
    assert_eq!(x509.subject, ID);
    assert_eq!(x509.canonical_id(), jwt.canonical_id());
    assert_eq!(x509.issuer, jwt.issuer);
    assert_eq!(x509.principal, jwt.principal);
    let sa = x509.service_account().unwrap();
    assert_eq!((sa.namespace.as_str(), sa.name.as_str()), ("prod", "api"));
    // rcgen's default notAfter: 4096-01-01.
    assert!(x509.expires_at.unwrap() > T0 + 100 * 365 * 86400);
    // The connection's next request: its verification remembered, the identity shared.
    let conn = cert(std::slice::from_ref(&leaf));
    let first = a.authenticate_x509(&conn).await.unwrap();
    assert!(Arc::ptr_eq(
        &first,
        &a.authenticate_x509(&conn).await.unwrap()
    ));
    // Another connection with the same chain verifies it again.
    let other = a.authenticate_x509(&cert(&[leaf])).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &other));
    assert_eq!(first, other);
}

/// A connection's remembered verification ends with the chain's validity.
#[tokio::test]
async fn a_remembered_verification_expires_with_the_chain() {
    let (clock, c) = TestClock::new();
    let ca = Ca::root("spire");
    let a = Authenticator::new(AuthnSettings {
        clock: c,
        ..Default::default()
    });
    a.set_federations(vec![federation("spire", TD, vec![ca.entry("x509-svid")])]);
    let mut p = svid_params(&[ID]);
    let at = |secs: u64| time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
    p.not_before = at(T0 - 10);
    p.not_after = at(T0 + 100);
    let conn = cert(&[ca.sign(&p)]);
    let id = a.authenticate_x509(&conn).await.unwrap();
    assert_eq!(id.expires_at, Some(T0 + 100));
    clock.advance(100);
    assert!(
        a.authenticate_x509(&conn).await.is_ok(),
        "notAfter itself is valid"
    );
    clock.advance(1);
    assert_eq!(
        a.authenticate_x509(&conn).await.unwrap_err(),
        AuthnError::X509Svid(X509SvidError::Expired)
    );
}

/// X509-SVID §2 and §4, each rule on its own (everything else valid).
#[test]
fn leaf_rules() {
    let ca = Ca::root("spire");
    assert_eq!(
        check_leaf(&ca.sign(&svid_params(&[ID]))).unwrap().spiffe_id,
        ID
    );
    let with = |f: &dyn Fn(&mut CertificateParams)| {
        let mut p = svid_params(&[ID]);
        f(&mut p);
        check_leaf(&ca.sign(&p)).unwrap_err()
    };
    use X509SvidError::*;
    assert_eq!(with(&|p| p.subject_alt_names.clear()), NoUriSan);
    assert_eq!(
        with(&|p| p.subject_alt_names =
            vec![SanType::DnsName("api.example.org".try_into().unwrap())]),
        NoUriSan
    );
    assert_eq!(
        with(&|p| p.subject_alt_names.push(SanType::URI(
            "spiffe://example.org/other".try_into().unwrap()
        ))),
        SeveralUriSans
    );
    assert_eq!(
        with(&|p| p
            .subject_alt_names
            .push(SanType::URI("https://example.org/x".try_into().unwrap()))),
        SeveralUriSans
    );
    for bad in [
        "https://example.org/x",
        "spiffe://example.org",
        "spiffe://Example.org/x",
        "spiffe://example.org/a/../b",
    ] {
        assert_eq!(
            with(&|p| p.subject_alt_names = vec![SanType::URI(bad.try_into().unwrap())]),
            BadSpiffeId,
            "{bad}"
        );
    }
    assert_eq!(
        with(&|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
        CaAsLeaf
    );
    assert_eq!(with(&|p| p.key_usages.clear()), KeyUsage);
    assert_eq!(
        with(&|p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]),
        KeyUsage
    );
    assert_eq!(
        with(&|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign)),
        KeyUsage
    );
    assert_eq!(
        with(&|p| p.key_usages.push(KeyUsagePurpose::CrlSign)),
        KeyUsage
    );
    // A basicConstraints extension is not required; cA false when absent.
    let mut p = svid_params(&[ID]);
    p.is_ca = IsCa::NoCa;
    assert!(check_leaf(&ca.sign(&p)).is_ok());
    assert_eq!(check_leaf(b"not a certificate").unwrap_err(), Malformed);
    let mut trailing = ca.sign(&svid_params(&[ID])).to_vec();
    trailing.push(0);
    assert_eq!(check_leaf(&trailing).unwrap_err(), Malformed);
    // Messages name the rule, never the certificate.
    for e in [NoUriSan, SeveralUriSans, BadSpiffeId, CaAsLeaf, KeyUsage] {
        assert!(!e.to_string().contains("example.org"), "{e}");
    }
}

/// Whether a presented certificate claims to be an X.509-SVID (decides whether a bearer
/// token may accompany it).
#[test]
fn which_certificates_claim_to_be_svids() {
    let ca = Ca::root("spire");
    let claims = |p: CertificateParams| cert(&[ca.sign(&p)]).is_svid();
    assert!(claims(svid_params(&[ID])));
    assert!(
        claims(svid_params(&["spiffe://example.org"])),
        "malformed IDs too"
    );
    assert!(
        claims(svid_params(&["SPIFFE://example.org/x"])),
        "scheme case"
    );
    assert!(claims(svid_params(&["https://x.example", ID])));
    assert!(!claims(svid_params(&[])));
    assert!(!claims(svid_params(&["https://x.example/spiffe://"])));
    let mut dns = svid_params(&[]);
    dns.subject_alt_names = vec![SanType::DnsName("client.example".try_into().unwrap())];
    assert!(!claims(dns));
    assert!(
        cert(&[CertificateDer::from(b"garbage".to_vec())]).is_svid(),
        "unparsable: cannot be ruled out"
    );
    assert!(ClientCertificate::new(&[]).is_none());
}

/// Each chain that must not authenticate, with the rule that refuses it.
#[tokio::test]
async fn chains_that_do_not_hold_are_refused() {
    let ca = Ca::root("spire");
    let other = Ca::root("other");
    let feds = vec![
        federation("spire", TD, vec![ca.entry("x509-svid")]),
        federation("partner", "partner.example", vec![other.entry("x509-svid")]),
    ];
    let a = authenticator(T0, feds);
    let good = ca.sign(&svid_params(&[ID]));
    assert!(
        a.authenticate_x509(&cert(std::slice::from_ref(&good)))
            .await
            .is_ok()
    );

    use X509SvidError::*;
    // Another trust domain (no federation).
    let foreign = ca.sign(&svid_params(&["spiffe://elsewhere.example/app"]));
    assert_eq!(refused(&a, &[foreign]).await, UnknownTrustDomain);
    // A leaf of example.org signed by partner.example's CA: only example.org's bundle counts.
    let cross = other.sign(&svid_params(&[ID]));
    assert_eq!(refused(&a, &[cross]).await, Untrusted);
    // A CA of no bundle.
    let stranger = Ca::root("spire").sign(&svid_params(&[ID]));
    assert_eq!(refused(&a, &[stranger]).await, Untrusted);
    // Expired, not yet valid (at the server's clock).
    let mut p = svid_params(&[ID]);
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    assert_eq!(refused(&a, &[ca.sign(&p)]).await, Expired);
    p.not_before = rcgen::date_time_ymd(2030, 1, 1);
    p.not_after = rcgen::date_time_ymd(2031, 1, 1);
    assert_eq!(refused(&a, &[ca.sign(&p)]).await, NotYetValid);
    // The leaf rules come first, before any bundle.
    assert_eq!(
        refused(
            &a,
            &[ca.sign(&svid_params(&[ID, "spiffe://example.org/b"]))]
        )
        .await,
        SeveralUriSans
    );
    assert_eq!(refused(&a, &[ca.sign(&svid_params(&[]))]).await, NoUriSan);
    assert_eq!(refused(&a, std::slice::from_ref(&ca.der)).await, CaAsLeaf);
    // Only for client authentication.
    let mut server_only = svid_params(&[ID]);
    server_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    assert_eq!(refused(&a, &[ca.sign(&server_only)]).await, BadPurpose);
    // Bounded chains.
    let long = vec![good.clone(); MAX_CLIENT_CHAIN_CERTS + 1];
    assert_eq!(refused(&a, &long).await, ChainTooLarge);
    // Failures are never cached as successes; the good one still works.
    assert!(a.authenticate_x509(&cert(&[good])).await.is_ok());
}

/// An intermediate presented by the client chains to the bundle's root.
#[tokio::test]
async fn intermediates_presented_by_the_client_chain_to_the_bundle() {
    let root = Ca::root("spire root");
    let mid = root.intermediate("spire server");
    let a = authenticator(
        T0,
        vec![federation("spire", TD, vec![root.entry("x509-svid")])],
    );
    let leaf = mid.sign(&svid_params(&[ID]));
    assert_eq!(
        refused(&a, std::slice::from_ref(&leaf)).await,
        X509SvidError::Untrusted,
        "without its intermediate"
    );
    let id = a
        .authenticate_x509(&cert(&[leaf, mid.der.clone()]))
        .await
        .unwrap();
    assert_eq!(id.subject, ID);
}

/// Only `x509-svid` entries are authorities: the same CA certificate under `use: jwt-svid`
/// (or without `use`) verifies no chain, and `x509-svid` entries verify no JWT.
#[tokio::test]
async fn only_x509_svid_entries_are_authorities() {
    let ca = Ca::root("spire");
    let key = TestKey::es256();
    let mut jwt_entry = key.jwk.clone();
    jwt_entry["use"] = json!("jwt-svid");
    let mut ca_as_jwt = ca.entry("jwt-svid");
    ca_as_jwt["x"] = key.jwk["x"].clone();
    ca_as_jwt["y"] = key.jwk["y"].clone();
    let a = authenticator(
        T0,
        vec![federation("spire", TD, vec![jwt_entry, ca_as_jwt])],
    );
    assert_eq!(
        refused(&a, &[ca.sign(&svid_params(&[ID]))]).await,
        X509SvidError::NoAuthorities
    );
    // A bundle of an x509-svid entry only loads (X.509-SVIDs only) and verifies no JWT.
    let a = authenticator(
        T0,
        vec![federation("spire", TD, vec![ca.entry("x509-svid")])],
    );
    assert!(
        a.authenticate_x509(&cert(&[ca.sign(&svid_params(&[ID]))]))
            .await
            .is_ok()
    );
    let jwt = key.sign(&json!({"sub": ID, "aud": [AUD], "iat": T0 - 5, "exp": T0 + 300}));
    assert!(a.authenticate(&jwt, None).await.is_err());
    // An x509-svid entry with no usable certificate is no key at all.
    for x5c in [json!([]), json!(["bm90IGEgY2VydA=="]), json!(["%%%"])] {
        let mut e = ca.entry("x509-svid");
        e["x5c"] = x5c;
        let spec = SpiffeFederationSpec {
            trust_domain: TD.into(),
            bundle: Some(bundle(vec![e])),
            audiences: vec![AUD.into()],
            ..Default::default()
        };
        assert!(matches!(
            Federation::from_spiffe_spec("spire", &spec),
            Err(FederationError::BadSpiffeBundle(_))
        ));
    }
}

/// Rotation: after the federation's bundle changes, an SVID of the old CA is refused at
/// once (its cached verification dropped) and one of the new CA accepted.
#[tokio::test]
async fn a_rotated_bundle_no_longer_trusts_the_old_ca() {
    let old = Ca::root("spire 1");
    let new = Ca::root("spire 2");
    let a = authenticator(
        T0,
        vec![federation("spire", TD, vec![old.entry("x509-svid")])],
    );
    let old_leaf = old.sign(&svid_params(&[ID]));
    let new_leaf = new.sign(&svid_params(&[ID]));
    // A connection verified before the rotation.
    let old_conn = cert(std::slice::from_ref(&old_leaf));
    assert!(a.authenticate_x509(&old_conn).await.is_ok());
    assert_eq!(
        refused(&a, std::slice::from_ref(&new_leaf)).await,
        X509SvidError::Untrusted
    );
    a.set_federations(vec![federation("spire", TD, vec![new.entry("x509-svid")])]);
    assert_eq!(
        a.authenticate_x509(&old_conn).await.unwrap_err(),
        AuthnError::X509Svid(X509SvidError::Untrusted),
        "what the connection verified before no longer holds"
    );
    assert_eq!(refused(&a, &[old_leaf]).await, X509SvidError::Untrusted);
    assert!(a.authenticate_x509(&cert(&[new_leaf])).await.is_ok());
}

/// A bundle endpoint's `x509-svid` authorities are fetched and refreshed like its JWT-SVID
/// keys; a refresh that changes only the authorities still ends what connections verified
/// with the old ones.
#[tokio::test]
async fn a_bundle_endpoint_serves_and_rotates_authorities() {
    let srv = TestServer::start().await;
    let key = TestKey::es256();
    let mut jwt_entry = key.jwk.clone();
    jwt_entry["use"] = json!("jwt-svid");
    let old = Ca::root("spire 1");
    let new = Ca::root("spire 2");
    let doc = |ca: &Ca| {
        json!({"spiffe_refresh_hint": 60, "keys": [jwt_entry.clone(), ca.entry("x509-svid")]})
            .to_string()
    };
    srv.route("/bundle", 200, doc(&old));
    let spec = SpiffeFederationSpec {
        trust_domain: TD.into(),
        bundle_endpoint: Some(crate::resources::SpiffeBundleEndpoint {
            url: format!("{}/bundle", srv.url),
            ca_bundle: Some(srv.ca_b64()),
        }),
        audiences: vec![AUD.into()],
        ..Default::default()
    };
    let (clock, c) = TestClock::new();
    let a = Authenticator::new(AuthnSettings {
        clock: c,
        ..Default::default()
    });
    a.set_federations(vec![Federation::from_spiffe_spec("spire", &spec).unwrap()]);
    let old_conn = cert(&[old.sign(&svid_params(&[ID]))]);
    assert!(a.authenticate_x509(&old_conn).await.is_ok());
    assert_eq!(srv.hits("/bundle"), 1);
    let new_leaf = new.sign(&svid_params(&[ID]));
    assert_eq!(
        refused(&a, std::slice::from_ref(&new_leaf)).await,
        X509SvidError::Untrusted
    );
    // The same JWT-SVID key, another CA. Another connection's request refreshes the
    // bundle; then the old connection's verification no longer holds.
    srv.route("/bundle", 200, doc(&new));
    clock.advance(61);
    assert!(a.authenticate_x509(&cert(&[new_leaf])).await.is_ok());
    assert_eq!(srv.hits("/bundle"), 2);
    assert_eq!(
        a.authenticate_x509(&old_conn).await.unwrap_err(),
        AuthnError::X509Svid(X509SvidError::Untrusted)
    );
    // And a stale bundle is refreshed by a connection's own next request.
    let conn = cert(&[new.sign(&svid_params(&[ID]))]);
    assert!(a.authenticate_x509(&conn).await.is_ok());
    srv.route("/bundle", 200, doc(&old));
    clock.advance(61);
    assert_eq!(
        a.authenticate_x509(&conn).await.unwrap_err(),
        AuthnError::X509Svid(X509SvidError::Untrusted)
    );
    assert_eq!(srv.hits("/bundle"), 3);
}

/// A bundle's `x509-svid` entry must hold a CA certificate (X509-SVID §3, §4.1, §4.3): a
/// workload's leaf pasted into the bundle is no authority, so its key holder cannot issue
/// SVIDs for the trust domain (webpki checks nothing of a trust anchor but its name and key).
#[tokio::test]
async fn a_non_ca_bundle_entry_is_no_authority() {
    let ca = Ca::root("spire");
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = svid_params(&["spiffe://example.org/workload"]);
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "workload");
    let leaf_der = leaf_params.self_signed(&leaf_key).unwrap().der().clone();
    let workload = Ca {
        issuer: Issuer::new(leaf_params, leaf_key),
        der: leaf_der,
    };
    let a = authenticator(
        T0,
        vec![federation(
            "spire",
            TD,
            vec![ca.entry("x509-svid"), workload.entry("x509-svid")],
        )],
    );
    assert!(
        a.authenticate_x509(&cert(&[ca.sign(&svid_params(&[ID]))]))
            .await
            .is_ok()
    );
    assert_eq!(
        refused(&a, &[workload.sign(&svid_params(&[ID]))]).await,
        X509SvidError::Untrusted
    );
    // A CA certificate whose keyUsage lacks keyCertSign is no authority either.
    let mut no_sign = ca_params("no keyCertSign");
    no_sign.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let der = no_sign.self_signed(&key).unwrap().der().clone();
    let no_sign = Ca {
        issuer: Issuer::new(no_sign, key),
        der,
    };
    let a = authenticator(
        T0,
        vec![federation(
            "spire",
            TD,
            vec![ca.entry("x509-svid"), no_sign.entry("x509-svid")],
        )],
    );
    assert_eq!(
        refused(&a, &[no_sign.sign(&svid_params(&[ID]))]).await,
        X509SvidError::Untrusted
    );
    // A bundle of such entries only has no usable key.
    let spec = SpiffeFederationSpec {
        trust_domain: TD.into(),
        bundle: Some(bundle(vec![workload.entry("x509-svid")])),
        audiences: vec![AUD.into()],
        ..Default::default()
    };
    assert!(matches!(
        Federation::from_spiffe_spec("spire", &spec),
        Err(FederationError::BadSpiffeBundle(_))
    ));
}

/// A bundle authority past its `notAfter` (or before its `notBefore`) is no trust anchor
/// (webpki keeps no validity for anchors), and a connection's remembered verification
/// ends when the authorities that verified it expire.
#[tokio::test]
async fn an_expired_authority_verifies_nothing() {
    let at = |secs: u64| time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
    let with_validity = |name: &str, not_before: u64, not_after: u64| {
        let mut p = ca_params(name);
        p.not_before = at(not_before);
        p.not_after = at(not_after);
        let key = KeyPair::generate().unwrap();
        let der = p.self_signed(&key).unwrap().der().clone();
        Ca {
            issuer: Issuer::new(p, key),
            der,
        }
    };
    let expired = with_validity("expired", T0 - 1000, T0 - 1);
    let future = with_validity("future", T0 + 1000, T0 + 2000);
    let current = with_validity("current", T0 - 1000, T0 + 100);
    let (clock, c) = TestClock::new();
    let a = Authenticator::new(AuthnSettings {
        clock: c,
        ..Default::default()
    });
    a.set_federations(vec![federation(
        "spire",
        TD,
        vec![
            expired.entry("x509-svid"),
            future.entry("x509-svid"),
            current.entry("x509-svid"),
        ],
    )]);
    // The leaves themselves are valid now (rcgen's default validity).
    assert_eq!(
        refused(&a, &[expired.sign(&svid_params(&[ID]))]).await,
        X509SvidError::Untrusted
    );
    assert_eq!(
        refused(&a, &[future.sign(&svid_params(&[ID]))]).await,
        X509SvidError::Untrusted
    );
    let conn = cert(&[current.sign(&svid_params(&[ID]))]);
    let id = a.authenticate_x509(&conn).await.unwrap();
    assert_eq!(id.expires_at, Some(T0 + 100));
    clock.advance(100);
    assert!(a.authenticate_x509(&conn).await.is_ok());
    clock.advance(1);
    assert_eq!(
        a.authenticate_x509(&conn).await.unwrap_err(),
        AuthnError::X509Svid(X509SvidError::Untrusted),
        "the connection's verification ends with its authority"
    );
}

/// A connection's remembered verification is bound to the federations it was made among,
/// as a cached token is: after a federation of the same trust domain is added under a name
/// tried first, the connection's next request proves what a new connection's would.
#[tokio::test]
async fn a_remembered_verification_follows_an_added_federation() {
    let ca = Ca::root("spire");
    let a = authenticator(
        T0,
        vec![federation("spire", TD, vec![ca.entry("x509-svid")])],
    );
    let conn = cert(&[ca.sign(&svid_params(&[ID]))]);
    assert_eq!(
        a.authenticate_x509(&conn).await.unwrap().federation,
        "spire"
    );
    a.set_federations(vec![
        federation("spire", TD, vec![ca.entry("x509-svid")]),
        federation("a-mesh", TD, vec![ca.entry("x509-svid")]),
    ]);
    let fresh = cert(conn.chain());
    assert_eq!(
        a.authenticate_x509(&fresh).await.unwrap().federation,
        "a-mesh"
    );
    assert_eq!(
        a.authenticate_x509(&conn).await.unwrap().federation,
        "a-mesh",
        "the same answer on the connection verified before"
    );
}

/// RFC 5280 §6.1.4 (n), which X509-SVID §5.1 requires: a signing certificate with a
/// `keyUsage` must have `keyCertSign`. rustls-webpki ignores `keyUsage`, so an intermediate
/// marked `cA` but restricted to `digitalSignature` would otherwise issue SVIDs.
#[tokio::test]
async fn a_signer_without_key_cert_sign_is_refused() {
    let root = Ca::root("spire root");
    let a = authenticator(
        T0,
        vec![federation("spire", TD, vec![root.entry("x509-svid")])],
    );
    let mut p = ca_params("not a signer");
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let der = p.signed_by(&key, &root.issuer).unwrap().der().clone();
    let mid = Ca {
        issuer: Issuer::new(p, key),
        der,
    };
    let leaf = mid.sign(&svid_params(&[ID]));
    assert_eq!(
        refused(&a, &[leaf, mid.der.clone()]).await,
        X509SvidError::SignerKeyUsage
    );
    // An intermediate with keyCertSign (or without keyUsage) still chains.
    let good = root.intermediate("spire server");
    let leaf = good.sign(&svid_params(&[ID]));
    assert!(
        a.authenticate_x509(&cert(&[leaf, good.der.clone()]))
            .await
            .is_ok()
    );
    let mut p = ca_params("no keyUsage");
    p.key_usages = Vec::new();
    let key = KeyPair::generate().unwrap();
    let der = p.signed_by(&key, &root.issuer).unwrap().der().clone();
    let bare = Ca {
        issuer: Issuer::new(p, key),
        der,
    };
    let leaf = bare.sign(&svid_params(&[ID]));
    assert!(
        a.authenticate_x509(&cert(&[leaf, bare.der.clone()]))
            .await
            .is_ok()
    );
}

/// A chain that never verifies costs one path validation per connection, not one per request
/// (an HTTP/2 stream each): the connection remembers the refusal, with the federations and
/// key sets it was made with. A bundle rotation that makes the chain valid is honoured on
/// the connection's next request.
#[tokio::test]
async fn a_refused_chain_is_verified_once_per_connection() {
    let bundle_ca = Ca::root("spire");
    // Another CA with the bundle CA's name: path building tries it.
    let other = Ca::root("spire");
    let mid = other.intermediate("spire server");
    let a = authenticator(
        T0,
        vec![federation("spire", TD, vec![bundle_ca.entry("x509-svid")])],
    );
    let conn = cert(&[mid.sign(&svid_params(&[ID])), mid.der.clone()]);
    for _ in 0..3 {
        assert_eq!(
            a.authenticate_x509(&conn).await.unwrap_err(),
            AuthnError::X509Svid(X509SvidError::Untrusted)
        );
    }
    assert_eq!(conn.validations(), 1, "the refusal is remembered");
    // The same federations again: nothing changed, the refusal holds.
    a.set_federations(vec![federation(
        "spire",
        TD,
        vec![bundle_ca.entry("x509-svid")],
    )]);
    assert!(a.authenticate_x509(&conn).await.is_err());
    assert_eq!(conn.validations(), 1);
    // A rotation to the chain's CA: the connection's next request verifies again.
    a.set_federations(vec![federation(
        "spire",
        TD,
        vec![other.entry("x509-svid")],
    )]);
    assert_eq!(
        a.authenticate_x509(&conn).await.unwrap().federation,
        "spire"
    );
    assert_eq!(conn.validations(), 2);
}

/// A remembered refusal holds only while every certificate involved keeps its validity: an
/// authority that becomes valid later makes the connection's next request verify again.
#[tokio::test]
async fn a_remembered_refusal_ends_when_an_authority_becomes_valid() {
    let at = |secs: u64| time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
    let mut p = ca_params("future");
    p.not_before = at(T0 + 10);
    p.not_after = at(T0 + 2000);
    let key = KeyPair::generate().unwrap();
    let der = p.self_signed(&key).unwrap().der().clone();
    let future = Ca {
        issuer: Issuer::new(p, key),
        der,
    };
    let (clock, c) = TestClock::new();
    let a = Authenticator::new(AuthnSettings {
        clock: c,
        ..Default::default()
    });
    a.set_federations(vec![federation(
        "spire",
        TD,
        vec![future.entry("x509-svid")],
    )]);
    let conn = cert(&[future.sign(&svid_params(&[ID]))]);
    assert_eq!(
        a.authenticate_x509(&conn).await.unwrap_err(),
        AuthnError::X509Svid(X509SvidError::Untrusted)
    );
    clock.advance(9);
    assert!(a.authenticate_x509(&conn).await.is_err());
    assert_eq!(
        conn.validations(),
        1,
        "remembered until the authority's notBefore"
    );
    clock.advance(1);
    assert!(a.authenticate_x509(&conn).await.is_ok());
    assert_eq!(conn.validations(), 2);
}
