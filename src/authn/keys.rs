//! Verification keys: JWKS parsing, algorithm pinning and the Kubernetes key-id rule.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The Kubernetes key id of a public key: base64url-nopad(sha256(DER SubjectPublicKeyInfo)),
/// as kube-apiserver computes the `kid` of the tokens it signs.
pub fn kubernetes_key_id(spki_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(spki_der))
}

/// Smallest RSA modulus we accept: smaller keys are forgeable and no Kubernetes version makes them.
const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus we accept (bounds verification cost).
const MAX_RSA_BITS: usize = 8192;

/// The kind of a verification key; it fixes which algorithms may use it (no alg confusion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// RSA: RS256/384/512 and PS256/384/512.
    Rsa,
    /// EC P-256: ES256 only.
    P256,
    /// EC P-384: ES384 only.
    P384,
}

impl KeyKind {
    /// Whether `alg` may be verified with a key of this kind.
    pub(crate) fn allows(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
        }
    }
}

/// Maps a JOSE `alg` name to one of the algorithms we accept; `none`, HS*, EdDSA and
/// anything else give `None`.
pub(crate) fn accepted_algorithm(name: &str) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match name {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        _ => return None,
    })
}

/// One usable public key of a federation.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    /// `kid`, `None` when absent or empty.
    pub(crate) kid: Option<String>,
    /// Key type (pins the algorithms).
    pub(crate) kind: KeyKind,
    /// The JWK's `alg`, when it names one: the token's alg must then equal it.
    pub(crate) alg: Option<Algorithm>,
    /// The key itself.
    pub(crate) key: DecodingKey,
    /// sha256 of the key material, to tell whether a re-fetched set really changed.
    pub(crate) fingerprint: [u8; 32],
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.allows(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why a JWKS document was rejected as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JwksError {
    /// Not JSON of the shape `{"keys": [...]}`.
    #[error("not a JWKS document ({0})")]
    Malformed(String),
    /// More keys than `max_jwks_keys`.
    #[error("JWKS has {count} keys, more than the limit of {max}")]
    TooManyKeys {
        /// Keys in the document.
        count: usize,
        /// The limit.
        max: usize,
    },
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
    /// A SPIFFE bundle's refresh hint (seconds); ignored in a plain JWKS.
    #[serde(default)]
    spiffe_refresh_hint: Option<serde_json::Value>,
}

/// Which keys of a key set may verify tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyUse {
    /// A JWKS: keys with `use: sig` or without `use`.
    Sig,
    /// A SPIFFE bundle (SPIFFE Trust Domain and Bundle §4.2.1): only keys with
    /// `use: jwt-svid` verify JWT-SVIDs (`x509-svid` keys are CA certificates).
    JwtSvid,
}

/// The JWK members we read; everything else is ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    /// An `x509-svid` entry's certificate (SPIFFE bundle).
    #[serde(default)]
    x5c: Option<Vec<String>>,
}

/// Parses a JWKS document. Keys we cannot use (other types or curves, `use` other than
/// `sig`, an `alg` that does not fit the key, bad encodings, weak RSA) are skipped, not fatal:
/// issuers publish keys for other purposes. A document over `max_keys` is rejected whole.
pub(crate) fn parse_jwks(doc: &[u8], max_keys: usize) -> Result<Vec<VerifyKey>, JwksError> {
    parse_key_set(doc, max_keys, KeyUse::Sig)
}

/// A SPIFFE bundle in its JWKS form (SPIFFE Trust Domain and Bundle §4).
#[derive(Debug, Default)]
pub(crate) struct SpiffeBundle {
    /// The keys with `use: jwt-svid`: they verify JWT-SVIDs, nothing else.
    pub(crate) jwt_keys: Vec<VerifyKey>,
    /// The CA certificates (DER) of the keys with `use: x509-svid` (each key's `x5c`, exactly
    /// one certificate, §4.2.2): they verify X.509-SVID chains, nothing else.
    pub(crate) x509_authorities: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// `spiffe_refresh_hint` in seconds when it is a non-negative integer.
    pub(crate) refresh_hint: Option<u64>,
}

/// Parses a SPIFFE bundle in its JWKS form (SPIFFE Trust Domain and Bundle §4): the keys
/// with `use: jwt-svid` and the authorities with `use: x509-svid` (others, and entries that
/// are not usable, skipped, as [`parse_jwks`] skips keys), and `spiffe_refresh_hint`.
pub(crate) fn parse_spiffe_bundle(doc: &[u8], max_keys: usize) -> Result<SpiffeBundle, JwksError> {
    let raw = parse_raw(doc, max_keys)?;
    let mut bundle = SpiffeBundle {
        refresh_hint: raw.spiffe_refresh_hint.as_ref().and_then(|v| v.as_u64()),
        ..Default::default()
    };
    for value in raw.keys {
        let Ok(jwk) = serde_json::from_value::<RawJwk>(value) else {
            tracing::debug!("JWK skipped: not a JWK object");
            continue;
        };
        let parsed = if jwk.use_.as_deref() == Some("x509-svid") {
            parse_x509_authority(&jwk).map(|c| bundle.x509_authorities.push(c))
        } else {
            parse_jwk(&jwk, KeyUse::JwtSvid).map(|k| bundle.jwt_keys.push(k))
        };
        if let Err(reason) = parsed {
            tracing::debug!(
                kid = jwk.kid.as_deref().unwrap_or(""),
                reason,
                "JWK skipped"
            );
        }
    }
    Ok(bundle)
}

/// An `x509-svid` entry's CA certificate: `x5c` holds exactly one base64 (not base64url,
/// RFC 7517 §4.7) DER X.509 certificate, and it is a signing certificate (X509-SVID §3,
/// §4.1, §4.3: `basicConstraints` `cA` true; `keyCertSign` when it has `keyUsage`). webpki
/// checks nothing of a trust anchor but its name and key: a workload's leaf pasted into a
/// bundle would otherwise let its key holder issue SVIDs for the whole trust domain.
fn parse_x509_authority(
    jwk: &RawJwk,
) -> Result<rustls_pki_types::CertificateDer<'static>, &'static str> {
    let [cert] = jwk.x5c.as_deref().ok_or("missing x5c")? else {
        return Err("x5c must hold exactly one certificate");
    };
    let der = base64::engine::general_purpose::STANDARD
        .decode(cert)
        .map_err(|_| "x5c is not base64")?;
    let cert = match x509_parser::parse_x509_certificate(&der) {
        Ok(([], cert)) => cert,
        _ => return Err("x5c is not a DER X.509 certificate"),
    };
    let ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let signs = match cert.key_usage() {
        Ok(None) => true,
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Err(_) => false,
    };
    if !ca || !signs {
        return Err("x5c is not a CA certificate (basicConstraints cA, keyCertSign)");
    }
    Ok(der.into())
}

fn parse_raw(doc: &[u8], max_keys: usize) -> Result<RawJwks, JwksError> {
    let raw: RawJwks =
        serde_json::from_slice(doc).map_err(|e| JwksError::Malformed(e.to_string()))?;
    if raw.keys.len() > max_keys {
        return Err(JwksError::TooManyKeys {
            count: raw.keys.len(),
            max: max_keys,
        });
    }
    Ok(raw)
}

fn parse_key_set(
    doc: &[u8],
    max_keys: usize,
    key_use: KeyUse,
) -> Result<Vec<VerifyKey>, JwksError> {
    let raw = parse_raw(doc, max_keys)?;
    let mut keys = Vec::with_capacity(raw.keys.len());
    for value in raw.keys {
        match serde_json::from_value::<RawJwk>(value) {
            Ok(jwk) => match parse_jwk(&jwk, key_use) {
                Ok(key) => keys.push(key),
                Err(reason) => {
                    tracing::debug!(
                        kid = jwk.kid.as_deref().unwrap_or(""),
                        reason,
                        "JWK skipped"
                    )
                }
            },
            Err(_) => tracing::debug!("JWK skipped: not a JWK object"),
        }
    }
    Ok(keys)
}

fn b64(field: &Option<String>, name: &'static str) -> Result<Vec<u8>, &'static str> {
    let s = field.as_deref().ok_or(name)?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| "bad base64url")
}

/// Public key material, before the checks every key goes through.
enum Material<'a> {
    /// RSA modulus and public exponent, big-endian.
    Rsa { n: &'a [u8], e: &'a [u8] },
    /// An EC point's affine coordinates, each exactly the curve's size.
    Ec {
        kind: KeyKind,
        x: &'a [u8],
        y: &'a [u8],
    },
}

fn parse_jwk(jwk: &RawJwk, key_use: KeyUse) -> Result<VerifyKey, &'static str> {
    match key_use {
        KeyUse::Sig if jwk.use_.as_deref().is_some_and(|u| u != "sig") => {
            return Err("use is not sig");
        }
        KeyUse::JwtSvid if jwk.use_.as_deref() != Some("jwt-svid") => {
            return Err("use is not jwt-svid");
        }
        _ => {}
    }
    match jwk.kty.as_str() {
        "RSA" => {
            let n = b64(&jwk.n, "missing n")?;
            let e = b64(&jwk.e, "missing e")?;
            build_key(
                Material::Rsa { n: &n, e: &e },
                jwk.kid.as_deref(),
                jwk.alg.as_deref(),
            )
        }
        "EC" => {
            let kind = match jwk.crv.as_deref() {
                Some("P-256") => KeyKind::P256,
                Some("P-384") => KeyKind::P384,
                _ => return Err("unsupported curve"),
            };
            let x = b64(&jwk.x, "missing x")?;
            let y = b64(&jwk.y, "missing y")?;
            build_key(
                Material::Ec { kind, x: &x, y: &y },
                jwk.kid.as_deref(),
                jwk.alg.as_deref(),
            )
        }
        _ => Err("unsupported kty"),
    }
}

/// One key from its material, with the checks shared by JWKs and PEM keys: RSA modulus of
/// 2048–8192 bits and a sane exponent, EC coordinates of the curve's size, an `alg` (if
/// named) that fits the key type.
fn build_key(
    material: Material<'_>,
    kid: Option<&str>,
    alg_name: Option<&str>,
) -> Result<VerifyKey, &'static str> {
    let mut hasher = Sha256::new();
    let (kind, key) = match material {
        Material::Rsa { n, e } => {
            let n_trimmed: &[u8] = {
                let first = n.iter().position(|b| *b != 0).unwrap_or(n.len());
                &n[first..]
            };
            let bits = n_trimmed.len() * 8;
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err("RSA modulus size out of range");
            }
            let e_trimmed: &[u8] = {
                let first = e.iter().position(|b| *b != 0).unwrap_or(e.len());
                &e[first..]
            };
            if e_trimmed.is_empty() || e_trimmed.len() > 8 {
                return Err("bad RSA exponent");
            }
            hasher.update(b"RSA\0");
            hasher.update(n_trimmed);
            hasher.update(b"\0");
            hasher.update(e_trimmed);
            (
                KeyKind::Rsa,
                DecodingKey::from_rsa_raw_components(n_trimmed, e_trimmed),
            )
        }
        Material::Ec { kind, x, y } => {
            let len = match kind {
                KeyKind::P256 => 32,
                KeyKind::P384 => 48,
                KeyKind::Rsa => return Err("unsupported curve"),
            };
            if x.len() != len || y.len() != len {
                return Err("bad EC coordinate length");
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            hasher.update(b"EC\0");
            hasher.update(&point);
            (kind, DecodingKey::from_ec_der(&point))
        }
    };
    let alg = match alg_name {
        None | Some("") => None,
        Some(name) => {
            let alg = accepted_algorithm(name).ok_or("unsupported alg")?;
            if !kind.allows(alg) {
                return Err("alg does not fit the key type");
            }
            Some(alg)
        }
    };
    let kid = kid.filter(|k| !k.is_empty()).map(str::to_owned);
    hasher.update(b"\0kid\0");
    hasher.update(kid.as_deref().unwrap_or("").as_bytes());
    hasher.update(b"\0alg\0");
    hasher.update(alg_name.unwrap_or("").as_bytes());
    Ok(VerifyKey {
        kid,
        kind,
        alg,
        key,
        fingerprint: hasher.finalize().into(),
    })
}

/// Parses PEM `PUBLIC KEY` blocks (X.509 SubjectPublicKeyInfo, RFC 5280 §4.1.2.7; what
/// `openssl pkey -pubout` and kubeadm's `sa.pub` hold) into keys **without a `kid`**: such keys
/// are candidates for any token of their federation whatever its `kid`, as Vault's
/// `jwt_validation_pubkeys`. RSA (2048–8192 bits), EC P-256 and P-384 only. Any other PEM
/// block (a certificate, a private key), trailing garbage or an unsupported key type is an
/// error, as is text without a block. The error holds no key material.
pub(crate) fn parse_public_key_pems(pem: &str) -> Result<Vec<VerifyKey>, String> {
    use rustls_pki_types::pem::{PemObject, SectionKind};
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    };
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    use x509_parser::x509::SubjectPublicKeyInfo;

    let mut keys = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        // A fixed text: the PEM error would quote the offending line.
        let (kind, der) = section.map_err(|_| "not PEM (bad block syntax or base64)".to_owned())?;
        if kind != SectionKind::PublicKey {
            return Err(format!(
                "a {kind:?} block; only PUBLIC KEY (SubjectPublicKeyInfo) blocks are keys"
            ));
        }
        let (rest, spki) = SubjectPublicKeyInfo::from_der(&der)
            .map_err(|_| "a PUBLIC KEY block does not parse".to_owned())?;
        if !rest.is_empty() {
            return Err("a PUBLIC KEY block has trailing data".into());
        }
        let key = if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
            let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
                return Err("an RSA public key does not parse".into());
            };
            build_key(
                Material::Rsa {
                    n: rsa.modulus,
                    e: rsa.exponent,
                },
                None,
                None,
            )
        } else if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            let (kind, len) = match curve {
                Some(c) if c == OID_EC_P256 => (KeyKind::P256, 32),
                Some(c) if c == OID_NIST_EC_P384 => (KeyKind::P384, 48),
                _ => return Err("unsupported EC curve (P-256 and P-384 only)".into()),
            };
            let point = spki.subject_public_key.data.as_ref();
            // Uncompressed points only (0x04 ‖ x ‖ y), as every JOSE implementation uses.
            if point.len() != 1 + 2 * len || point[0] != 0x04 {
                return Err("EC public key is not an uncompressed point of its curve".into());
            }
            build_key(
                Material::Ec {
                    kind,
                    x: &point[1..1 + len],
                    y: &point[1 + len..],
                },
                None,
                None,
            )
        } else {
            return Err("unsupported key type (RSA, EC P-256 or P-384 only)".into());
        };
        keys.push(key.map_err(str::to_owned)?);
    }
    if keys.is_empty() {
        return Err("no PUBLIC KEY block".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256: &str = r#"{"kty":"EC","crv":"P-256","kid":"a","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn parses_and_skips() {
        let doc = format!(
            r#"{{"keys":[{P256},
            {{"kty":"EC","crv":"P-256","use":"enc","kid":"enc","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}},
            {{"kty":"EC","crv":"P-256","alg":"RS256","kid":"wrongalg","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}},
            {{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}},
            {{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ed"}},
            {{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"tiny"}},
            "not an object"]}}"#
        );
        let keys = parse_jwks(doc.as_bytes(), 64).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("a"));
        assert_eq!(keys[0].kind, KeyKind::P256);
        assert!(keys[0].accepts(Algorithm::ES256));
        assert!(!keys[0].accepts(Algorithm::ES384));
        assert!(!keys[0].accepts(Algorithm::RS256));
    }

    /// A SPIFFE bundle verifies JWT-SVIDs with its `jwt-svid` keys only: `x509-svid`, `sig`
    /// and use-less keys are skipped; a plain JWKS never takes a `jwt-svid` key.
    #[test]
    fn spiffe_bundle_keys_and_hint() {
        let key = |kid: &str, use_: Option<&str>| {
            let use_ = use_.map(|u| format!(r#","use":"{u}""#)).unwrap_or_default();
            format!(
                r#"{{"kty":"EC","crv":"P-256","kid":"{kid}"{use_},"x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}}"#
            )
        };
        let doc = format!(
            r#"{{"spiffe_sequence":3,"spiffe_refresh_hint":300,"keys":[{},{},{},{}]}}"#,
            key("svid", Some("jwt-svid")),
            key("ca", Some("x509-svid")),
            key("sig", Some("sig")),
            key("none", None)
        );
        let bundle = parse_spiffe_bundle(doc.as_bytes(), 64).unwrap();
        let kids: Vec<_> = bundle.jwt_keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("svid")]);
        assert_eq!(bundle.refresh_hint, Some(300));
        // An x509-svid entry is an authority only with its certificate in `x5c`.
        assert!(bundle.x509_authorities.is_empty());
        let plain = parse_jwks(doc.as_bytes(), 64).unwrap();
        let kids: Vec<_> = plain.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("sig"), Some("none")]);
        for bad_hint in ["-1", "1.5", "\"300\"", "null"] {
            let doc = format!(r#"{{"spiffe_refresh_hint":{bad_hint},"keys":[]}}"#);
            assert_eq!(
                parse_spiffe_bundle(doc.as_bytes(), 64)
                    .unwrap()
                    .refresh_hint,
                None
            );
        }
    }

    #[test]
    fn rejects_bad_documents() {
        assert!(matches!(
            parse_jwks(b"[]", 64),
            Err(JwksError::Malformed(_))
        ));
        assert!(matches!(
            parse_jwks(b"{\"keys\":{}}", 64),
            Err(JwksError::Malformed(_))
        ));
        let doc = format!(r#"{{"keys":[{P256},{P256},{P256}]}}"#);
        assert_eq!(
            parse_jwks(doc.as_bytes(), 2).unwrap_err(),
            JwksError::TooManyKeys { count: 3, max: 2 }
        );
    }

    #[test]
    fn algorithm_pinning() {
        for bad in ["none", "HS256", "HS384", "HS512", "EdDSA", "", "rs256"] {
            assert!(accepted_algorithm(bad).is_none(), "{bad}");
        }
        assert!(KeyKind::Rsa.allows(Algorithm::PS512));
        assert!(!KeyKind::Rsa.allows(Algorithm::ES256));
        assert!(!KeyKind::P384.allows(Algorithm::ES256));
        assert!(KeyKind::P384.allows(Algorithm::ES384));
    }
}
