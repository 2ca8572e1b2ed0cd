//! Verification with freshly generated keys and static-JWKS federations: happy paths and the
//! attacks a verifier must refuse.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::support::{TestKey, claims};
use crate::authn::*;
use crate::resources::KubernetesFederationSpec;

const ISS: &str = "https://kubernetes.default.svc.cluster.local";
const AUD: &str = "https://esi.example";
const NOW: u64 = 1_700_000_000;

fn fed(name: &str, audiences: &[&str], jwks: &str) -> Federation {
    let spec = KubernetesFederationSpec {
        issuer: Some(ISS.into()),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        jwks: Some(jwks.into()),
        ..Default::default()
    };
    Federation::from_spec(name, &spec).unwrap()
}

fn auth_with(feds: Vec<Federation>) -> Authenticator {
    let a = Authenticator::new(AuthnSettings {
        clock: Clock::fixed(NOW),
        ..Default::default()
    });
    a.set_federations(feds);
    a
}

fn auth(key: &TestKey) -> Authenticator {
    auth_with(vec![fed("alpha", &[AUD], &TestKey::jwks(&[key]))])
}

#[tokio::test]
async fn happy_paths_for_each_key_type() {
    for key in [TestKey::es256(), TestKey::es384(), TestKey::rsa()] {
        let a = auth(&key);
        let id = a
            .authenticate(&key.sign(&claims(ISS, AUD, NOW)), None)
            .await
            .unwrap();
        assert_eq!(id.federation, "alpha");
        assert_eq!(id.issuer, ISS);
        assert_eq!(id.subject, "system:serviceaccount:default:app");
        assert_eq!(
            (
                id.service_account().unwrap().namespace.as_str(),
                id.service_account().unwrap().name.as_str()
            ),
            ("default", "app")
        );
        assert_eq!(id.service_account().unwrap().uid.as_deref(), Some("uid-1"));
        assert_eq!(
            id.service_account().unwrap().pod_name.as_deref(),
            Some("app-0")
        );
        assert_eq!(id.expires_at, Some(NOW + 3600));
    }
    // The other RSA algorithms with a key whose JWK names no alg.
    let mut key = TestKey::rsa();
    key.jwk.as_object_mut().unwrap().remove("alg");
    let a = auth(&key);
    for alg in [
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        let t = key.sign_with(alg, Some(&key.kid), &claims(ISS, AUD, NOW), |_| {});
        assert!(a.authenticate(&t, None).await.is_ok(), "{alg:?}");
    }
}

#[tokio::test]
async fn claim_failures() {
    let key = TestKey::es256();
    let a = auth(&key);
    let cases = [
        ("aud", json!(["https://other"]), AuthnError::BadAudience),
        ("aud", json!("https://other"), AuthnError::BadAudience),
        ("exp", json!(NOW - 61), AuthnError::Expired),
        ("nbf", json!(NOW + 61), AuthnError::NotYetValid),
        ("iat", json!(NOW + 3600), AuthnError::IssuedInFuture),
        (
            "sub",
            json!("system:serviceaccount:kube-system:admin"),
            AuthnError::BadSubject,
        ),
        ("sub", json!(42), AuthnError::BadSubject),
        (
            "kubernetes.io",
            json!({"namespace": "default"}),
            AuthnError::BadKubernetesClaim,
        ),
    ];
    for (claim, value, want) in cases {
        let mut c = claims(ISS, AUD, NOW);
        c[claim] = value;
        assert_eq!(
            a.authenticate(&key.sign(&c), None).await,
            Err(want.clone()),
            "{claim}"
        );
    }
    let mut c = claims(ISS, AUD, NOW);
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        a.authenticate(&key.sign(&c), None).await,
        Err(AuthnError::MissingExpiry)
    );
    // Without the kubernetes.io claim, the subject gives namespace and name.
    let mut c = claims(ISS, AUD, NOW);
    c.as_object_mut().unwrap().remove("kubernetes.io");
    let id = a.authenticate(&key.sign(&c), None).await.unwrap();
    assert_eq!(
        (
            id.service_account().unwrap().namespace.as_str(),
            id.service_account().unwrap().name.as_str(),
            id.service_account().unwrap().pod_name.clone()
        ),
        ("default", "app", None)
    );
    c["sub"] = json!("alice");
    assert_eq!(
        a.authenticate(&key.sign(&c), None).await,
        Err(AuthnError::BadSubject)
    );
    // Wrong issuer: no federation.
    let c = claims("https://other-issuer", AUD, NOW);
    assert_eq!(
        a.authenticate(&key.sign(&c), None).await,
        Err(AuthnError::UnknownIssuer)
    );
}

#[tokio::test]
async fn algorithm_attacks() {
    let rsa = TestKey::rsa();
    let a = auth(&rsa);
    let c = claims(ISS, AUD, NOW);
    let enc = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());

    // alg none, with and without a signature part.
    let unsigned = format!(
        "{}.{}.",
        enc(&json!({"alg": "none", "kid": rsa.kid})),
        enc(&c)
    );
    assert_eq!(
        a.authenticate(&unsigned, None).await,
        Err(AuthnError::UnsupportedAlgorithm)
    );
    assert_eq!(
        a.authenticate(&format!("{unsigned}AAAA"), None).await,
        Err(AuthnError::UnsupportedAlgorithm)
    );

    // HS256 keyed with the RSA public key (classic alg confusion).
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some(rsa.kid.clone()),
            ..Header::new(Algorithm::HS256)
        },
        &c,
        &EncodingKey::from_secret(rsa.public_pem.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        a.authenticate(&hs, None).await,
        Err(AuthnError::UnsupportedAlgorithm)
    );

    // The JWK says RS256; a (validly signed) RS384 token is refused.
    let t = rsa.sign_with(Algorithm::RS384, Some(&rsa.kid), &c, |_| {});
    assert_eq!(
        a.authenticate(&t, None).await,
        Err(AuthnError::KeyAlgorithmMismatch)
    );
    // An EC alg against an RSA key.
    let ec = TestKey::es256();
    let t = ec.sign_with(Algorithm::ES256, Some(&rsa.kid), &c, |_| {});
    assert_eq!(
        a.authenticate(&t, None).await,
        Err(AuthnError::KeyAlgorithmMismatch)
    );

    // ES256 token against a P-384 key (JWK without alg, so only the curve pins it).
    let mut p384 = TestKey::es384();
    p384.jwk.as_object_mut().unwrap().remove("alg");
    let a384 = auth(&p384);
    let t = ec.sign_with(Algorithm::ES256, Some(&p384.kid), &c, |_| {});
    assert_eq!(
        a384.authenticate(&t, None).await,
        Err(AuthnError::KeyAlgorithmMismatch)
    );
    assert!(a384.authenticate(&p384.sign(&c), None).await.is_ok());

    // crit is refused even on an otherwise valid token.
    let t = rsa.sign_with(Algorithm::RS256, Some(&rsa.kid), &c, |h| {
        h.crit = Some(vec!["exp".into()]);
    });
    assert_eq!(
        a.authenticate(&t, None).await,
        Err(AuthnError::CriticalHeader)
    );
}

#[tokio::test]
async fn keys_in_the_token_header_are_ignored() {
    let legit = TestKey::es256();
    let attacker = TestKey::es256();
    let a = auth(&legit);
    let c = claims(ISS, AUD, NOW);
    // A legit token carrying jku/x5u still verifies with the configured key (the URLs are unused).
    let t = legit.sign_with(Algorithm::ES256, Some(&legit.kid), &c, |h| {
        h.jku = Some("https://127.0.0.1:1/jwks".into());
        h.x5u = Some("https://127.0.0.1:1/cert".into());
    });
    assert!(a.authenticate(&t, None).await.is_ok());
    // An attacker's token that embeds its own key (jwk) and points at its own JWKS (jku).
    let attacker_jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(attacker.jwk.clone()).unwrap();
    let forged = |kid: Option<&str>| {
        attacker.sign_with(Algorithm::ES256, kid, &c, |h| {
            h.jku = Some("https://127.0.0.1:1/jwks".into());
            h.jwk = Some(attacker_jwk.clone());
        })
    };
    assert_eq!(
        a.authenticate(&forged(Some(&legit.kid)), None).await,
        Err(AuthnError::BadSignature)
    );
    assert_eq!(
        a.authenticate(&forged(Some(&attacker.kid)), None).await,
        Err(AuthnError::UnknownKeyId)
    );
    assert_eq!(
        a.authenticate(&forged(None), None).await,
        Err(AuthnError::BadSignature)
    );
}

#[tokio::test]
async fn size_cap_and_garbage() {
    let key = TestKey::es256();
    let a = auth(&key);
    let big = format!("{}.{}.{}", "a".repeat(8 * 1024), "b".repeat(8 * 1024), "c");
    let e = a.authenticate(&big, None).await.unwrap_err();
    assert_eq!(e, AuthnError::TooLarge);
    assert!(e.is_too_large());
    // A validly signed token over the cap is refused too (size before anything else).
    let mut c = claims(ISS, AUD, NOW);
    c["padding"] = json!("x".repeat(17 * 1024));
    assert_eq!(
        a.authenticate(&key.sign(&c), None).await,
        Err(AuthnError::TooLarge)
    );
    let good = key.sign(&claims(ISS, AUD, NOW));
    let parts: Vec<&str> = good.split('.').collect();
    let garbage = [
        String::new(),
        "garbage".into(),
        "a.b.c".into(),
        "....".into(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra"),
        format!("{}.!!!.{}", parts[0], parts[2]),
        format!("{}.{}.###", parts[0], parts[1]),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!("Bearer {good}"),
        "\u{0}\u{1}.\u{2}.\u{3}".into(),
    ];
    for g in garbage {
        let e = a.authenticate(&g, None).await.unwrap_err();
        assert!(matches!(e, AuthnError::Malformed(_)), "{g:?} → {e:?}");
        assert!(!e.is_too_large());
    }
    // A tampered payload fails the signature.
    let mut c = claims(ISS, AUD, NOW);
    c["sub"] = json!("system:serviceaccount:default:other");
    c["kubernetes.io"]["serviceaccount"]["name"] = json!("other");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(c.to_string()),
        parts[2]
    );
    assert_eq!(
        a.authenticate(&tampered, None).await,
        Err(AuthnError::BadSignature)
    );
}

#[tokio::test]
async fn federations_sharing_an_issuer() {
    let k1 = TestKey::es256();
    let k2 = TestKey::rsa();
    let a = auth_with(vec![
        fed("b-second", &[AUD], &TestKey::jwks(&[&k2])),
        fed("a-first", &[AUD], &TestKey::jwks(&[&k1])),
    ]);
    let c = claims(ISS, AUD, NOW);
    assert_eq!(
        a.authenticate(&k1.sign(&c), None).await.unwrap().federation,
        "a-first"
    );
    assert_eq!(
        a.authenticate(&k2.sign(&c), None).await.unwrap().federation,
        "b-second"
    );
    // Both hold the key: the first by name wins.
    let both = TestKey::jwks(&[&k1]);
    let a = auth_with(vec![fed("zeta", &[AUD], &both), fed("eta", &[AUD], &both)]);
    assert_eq!(
        a.authenticate(&k1.sign(&c), None).await.unwrap().federation,
        "eta"
    );
    // Same key, different audiences: the federation whose audience matches.
    let a = auth_with(vec![
        fed("one", &["aud-1"], &both),
        fed("two", &["aud-2"], &both),
    ]);
    let id = a
        .authenticate(&k1.sign(&claims(ISS, "aud-2", NOW)), None)
        .await
        .unwrap();
    assert_eq!(id.federation, "two");
    assert_eq!(
        a.authenticate(&k1.sign(&claims(ISS, "aud-3", NOW)), None)
            .await,
        Err(AuthnError::BadAudience)
    );
    // No federations at all.
    let a = auth_with(vec![]);
    assert_eq!(
        a.authenticate(&k1.sign(&c), None).await,
        Err(AuthnError::UnknownIssuer)
    );
}

#[tokio::test]
async fn token_cache_with_static_keys() {
    let key = TestKey::es256();
    let t = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(NOW));
    let t2 = t.clone();
    let a = Authenticator::new(AuthnSettings {
        clock: Clock::from_fn(move || t2.load(std::sync::atomic::Ordering::SeqCst)),
        ..Default::default()
    });
    let f = fed("alpha", &[AUD], &TestKey::jwks(&[&key]));
    a.set_federations(vec![f.clone()]);
    let mut c = claims(ISS, AUD, NOW);
    c["exp"] = json!(NOW + 100);
    let token = key.sign(&c);
    assert!(!a.is_cached(&token));
    let first = a.authenticate(&token, None).await.unwrap();
    assert!(a.is_cached(&token));
    assert_eq!(a.authenticate(&token, None).await.unwrap(), first);
    // Same config reloaded: the cache survives.
    a.set_federations(vec![f.clone()]);
    assert!(a.is_cached(&token));
    // The cached entry still expires with the token (checked against the clock on a hit).
    t.store(NOW + 100 + 61, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(a.authenticate(&token, None).await, Err(AuthnError::Expired));
    assert!(!a.is_cached(&token));
    // Failures are not cached.
    t.store(NOW, std::sync::atomic::Ordering::SeqCst);
    let mut bad = c.clone();
    bad["aud"] = json!("nope");
    let bad = key.sign(&bad);
    assert!(a.authenticate(&bad, None).await.is_err());
    assert!(!a.is_cached(&bad));
    // A changed federation drops cached tokens; a removed one rejects them.
    assert!(a.authenticate(&token, None).await.is_ok());
    assert!(a.is_cached(&token));
    a.set_federations(vec![fed("alpha", &["other-aud"], &TestKey::jwks(&[&key]))]);
    assert_eq!(
        a.authenticate(&token, None).await,
        Err(AuthnError::BadAudience)
    );
    a.set_federations(vec![f.clone()]);
    assert!(a.authenticate(&token, None).await.is_ok());
    a.set_federations(vec![]);
    assert_eq!(
        a.authenticate(&token, None).await,
        Err(AuthnError::UnknownIssuer)
    );
}

/// `k`'s public JWK without its `kid` (a JWKS made from a cluster's `sa.pub`).
fn without_kid(k: &TestKey) -> serde_json::Value {
    let mut j = k.jwk.clone();
    j.as_object_mut().unwrap().remove("kid");
    j
}

#[tokio::test]
async fn keys_without_kid_verify_tokens_of_any_kid() {
    let rsa = TestKey::rsa();
    let ec = TestKey::es256();
    let doc = json!({"keys": [without_kid(&rsa), without_kid(&ec)]}).to_string();
    let a = auth_with(vec![fed("airgap", &[AUD], &doc)]);
    let c = claims(ISS, AUD, NOW);
    // Real Kubernetes tokens always carry a kid (sha256 of the key); any kid, or none, finds
    // the kid-less keys.
    for t in [
        rsa.sign(&c),
        ec.sign(&c),
        rsa.sign_with(rsa.alg, Some("whatever"), &c, |_| {}),
        ec.sign_with(ec.alg, None, &c, |_| {}),
    ] {
        assert_eq!(a.authenticate(&t, None).await.unwrap().federation, "airgap");
    }
    // The hardening holds: another key fails the signature, algorithms stay pinned to the key
    // type (and to the JWK's alg), HMAC keyed with the public key is refused.
    let attacker = TestKey::rsa();
    assert_eq!(
        a.authenticate(&attacker.sign(&c), None).await,
        Err(AuthnError::BadSignature)
    );
    let p384 = TestKey::es384();
    assert_eq!(
        a.authenticate(&p384.sign(&c), None).await,
        Err(AuthnError::KeyAlgorithmMismatch)
    );
    let rs384 = rsa.sign_with(Algorithm::RS384, Some(&rsa.kid), &c, |_| {});
    assert_eq!(
        a.authenticate(&rs384, None).await,
        Err(AuthnError::KeyAlgorithmMismatch)
    );
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some(rsa.kid.clone()),
            ..Header::new(Algorithm::HS256)
        },
        &c,
        &EncodingKey::from_secret(rsa.public_pem.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        a.authenticate(&hs, None).await,
        Err(AuthnError::UnsupportedAlgorithm)
    );

    // Mixed: a key with a kid is a candidate only for its kid; kid-less keys stand in only
    // when no key has the token's kid.
    let doc = json!({"keys": [ec.jwk.clone(), without_kid(&rsa)]}).to_string();
    let a = auth_with(vec![fed("mixed", &[AUD], &doc)]);
    assert!(a.authenticate(&ec.sign(&c), None).await.is_ok());
    assert!(a.authenticate(&rsa.sign(&c), None).await.is_ok());
    // RSA-signed, claiming the EC key's kid: only the EC key is a candidate.
    let t = rsa.sign_with(rsa.alg, Some(&ec.kid), &c, |_| {});
    assert_eq!(
        a.authenticate(&t, None).await,
        Err(AuthnError::KeyAlgorithmMismatch)
    );
    // Signed by the EC key under an unknown kid: only the kid-less RSA key is a candidate.
    let t = ec.sign_with(ec.alg, Some("other"), &c, |_| {});
    assert_eq!(
        a.authenticate(&t, None).await,
        Err(AuthnError::KeyAlgorithmMismatch)
    );
}

/// DER tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A PEM SubjectPublicKeyInfo of an RSA key with a `bits`-bit modulus (not a real key).
fn rsa_spki_pem(bits: usize) -> String {
    let mut n = vec![0x00, 0xc5];
    n.resize(1 + bits / 8, 0x5b);
    let rsa = tlv(0x30, &[tlv(0x02, &n), tlv(0x02, &[1, 0, 1])].concat());
    let mut bitstring = vec![0];
    bitstring.extend(rsa);
    let alg = tlv(
        0x30,
        &[
            tlv(
                0x06,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
            ),
            vec![0x05, 0x00],
        ]
        .concat(),
    );
    pem(
        "PUBLIC KEY",
        &tlv(0x30, &[alg, tlv(0x03, &bitstring)].concat()),
    )
}

#[tokio::test]
async fn pem_public_keys() {
    let rsa = TestKey::rsa();
    let ec = TestKey::es256();
    let p384 = TestKey::es384();
    let in_jwks = TestKey::es256();
    // Written as an operator would: a YAML manifest with an sa.pub pasted in, one entry holding
    // two blocks, and a JWKS beside them.
    let indent = |p: &str| p.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let yaml = format!(
        "issuer: {ISS}\naudiences: ['{AUD}']\njwks: '{}'\npublicKeys:\n  - |\n{}  - |\n{}{}",
        TestKey::jwks(&[&in_jwks]),
        indent(&rsa.public_pem),
        indent(&ec.public_pem),
        indent(&p384.public_pem),
    );
    let spec: KubernetesFederationSpec = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(spec.public_keys.len(), 2);
    let f = Federation::from_spec("pem", &spec).unwrap();
    assert!(!f.fetches());
    let a = auth_with(vec![f]);
    let c = claims(ISS, AUD, NOW);
    for k in [&rsa, &ec, &p384, &in_jwks] {
        assert_eq!(
            a.authenticate(&k.sign(&c), None).await.unwrap().federation,
            "pem"
        );
    }
    // PEM keys have no kid: any kid (or none) finds them, the key type pins the algorithm.
    let t = rsa.sign_with(Algorithm::PS512, None, &c, |_| {});
    assert!(a.authenticate(&t, None).await.is_ok());
    assert_eq!(
        a.authenticate(&TestKey::rsa().sign(&c), None).await,
        Err(AuthnError::BadSignature)
    );
    let ec_as_p384 = ec.sign_with(Algorithm::ES256, Some("x"), &c, |_| {});
    assert!(a.authenticate(&ec_as_p384, None).await.is_ok());
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(rsa.public_pem.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        a.authenticate(&hs, None).await,
        Err(AuthnError::UnsupportedAlgorithm)
    );
    // The JWKS key with a kid is still only used for that kid.
    let t = in_jwks.sign_with(Algorithm::ES256, Some(&rsa.kid), &c, |_| {});
    assert_eq!(
        a.authenticate(&t, None).await,
        Err(AuthnError::BadSignature)
    );

    // Errors name the entry and never echo it.
    let base = |keys: Vec<String>| KubernetesFederationSpec {
        issuer: Some(ISS.into()),
        public_keys: keys,
        ..Default::default()
    };
    let cert = {
        let kp = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&kp)
            .unwrap()
            .pem()
    };
    let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .unwrap()
        .public_key_pem();
    let private = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let cases = [
        (String::new(), "no PUBLIC KEY block"),
        ("hello".to_string(), "no PUBLIC KEY block"),
        (cert, "only PUBLIC KEY"),
        (private.clone(), "only PUBLIC KEY"),
        (ed25519, "unsupported key type"),
        (rsa_spki_pem(1024), "RSA modulus size out of range"),
        (rsa_spki_pem(16384), "RSA modulus size out of range"),
        (
            "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n".to_string(),
            "not PEM",
        ),
        (pem("PUBLIC KEY", b"\x30\x03\x02\x01\x01"), "does not parse"),
    ];
    for (text, want) in cases {
        let e = Federation::from_spec("x", &base(vec![ec.public_pem.clone(), text.clone()]))
            .unwrap_err();
        assert!(
            matches!(&e, FederationError::BadPublicKey(1, r) if r.contains(want)),
            "{text:.40}: {e}"
        );
        if text.len() > 10 {
            assert!(!e.to_string().contains(&text[10..]), "{e}");
        }
    }
    // A real 2048-bit RSA SPKI built the same way parses (the size rule, not the builder, refused).
    assert!(Federation::from_spec("x", &base(vec![rsa_spki_pem(2048)])).is_ok());
    // Static keys need an issuer (or url); too many keys are refused whole.
    assert_eq!(
        Federation::from_spec(
            "x",
            &KubernetesFederationSpec {
                public_keys: vec![ec.public_pem.clone()],
                ..Default::default()
            }
        )
        .unwrap_err(),
        FederationError::NoIssuer
    );
    let many: Vec<String> = (0..65).map(|_| TestKey::es256().public_pem).collect();
    assert_eq!(
        Federation::from_spec("x", &base(many)).unwrap_err(),
        FederationError::TooManyStaticKeys(65)
    );
}
