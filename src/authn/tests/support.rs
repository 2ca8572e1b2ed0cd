//! Test helpers: freshly generated signing keys, their JWKs, and signed tokens.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::PublicKeyData;
use serde_json::{Value, json};

use crate::authn::kubernetes_key_id;

/// A generated key pair with its public JWK.
pub(crate) struct TestKey {
    pub(crate) enc: EncodingKey,
    pub(crate) alg: Algorithm,
    pub(crate) kid: String,
    pub(crate) jwk: Value,
    pub(crate) public_pem: String,
}

impl TestKey {
    fn generate(rcgen_alg: &'static rcgen::SignatureAlgorithm, alg: Algorithm) -> TestKey {
        let kp = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
        let pem = kp.serialize_pem();
        let enc = match alg {
            Algorithm::ES256 | Algorithm::ES384 => {
                EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()
            }
            _ => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        };
        let kid = kubernetes_key_id(&kp.subject_public_key_info());
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&enc, alg).unwrap()).unwrap();
        let obj = jwk.as_object_mut().unwrap();
        obj.insert("kid".into(), json!(kid));
        obj.insert("use".into(), json!("sig"));
        TestKey {
            enc,
            alg,
            kid,
            jwk,
            public_pem: kp.public_key_pem(),
        }
    }

    /// EC P-256 (ES256).
    pub(crate) fn es256() -> TestKey {
        Self::generate(&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256)
    }

    /// EC P-384 (ES384).
    pub(crate) fn es384() -> TestKey {
        Self::generate(&rcgen::PKCS_ECDSA_P384_SHA384, Algorithm::ES384)
    }

    /// RSA 2048 (RS256 by default).
    pub(crate) fn rsa() -> TestKey {
        Self::generate(&rcgen::PKCS_RSA_SHA256, Algorithm::RS256)
    }

    /// A JWKS document of these keys.
    pub(crate) fn jwks(keys: &[&TestKey]) -> String {
        json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
    }

    /// Signs `claims` with this key's algorithm and kid.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        self.sign_with(self.alg, Some(&self.kid), claims, |_| {})
    }

    /// Signs with any algorithm, kid and header tweaks.
    pub(crate) fn sign_with(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        claims: &Value,
        tweak: impl FnOnce(&mut Header),
    ) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        tweak(&mut header);
        jsonwebtoken::encode(&header, claims, &self.enc).unwrap()
    }
}

/// Bound-token claims for `default/app`, valid from `now - 10` for an hour.
pub(crate) fn claims(iss: &str, aud: &str, now: u64) -> Value {
    json!({
        "iss": iss,
        "aud": [aud],
        "sub": "system:serviceaccount:default:app",
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + 3600,
        "kubernetes.io": {
            "namespace": "default",
            "serviceaccount": {"name": "app", "uid": "uid-1"},
            "pod": {"name": "app-0", "uid": "uid-2"},
        },
    })
}

/// A GitHub Actions-shaped OIDC token's claims for `org/app` on `main`, valid from
/// `now - 10` for ten minutes.
pub(crate) fn oidc_claims(iss: &str, aud: &str, now: u64) -> Value {
    json!({
        "iss": iss,
        "aud": aud,
        "sub": "repo:org/app:ref:refs/heads/main",
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + 600,
        "repository": "org/app",
        "repository_owner": "org",
        "ref": "refs/heads/main",
        "environment": "prod",
        "run_id": 7,
    })
}
