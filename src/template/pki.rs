//! ESO's PEM and JWK template functions (`runtime/template/v2/jwk.go`, `pem.go`,
//! `pem_chain.go`), with the RustCrypto crates already in the tree:
//! - `jwkPublicKeyPem JWK` → `PUBLIC KEY` (SubjectPublicKeyInfo) and `jwkPrivateKeyPem JWK`
//!   → `PRIVATE KEY` (PKCS#8 v1), for RSA, EC P-256/P-384/P-521 and OKP Ed25519, with the
//!   DER Go's `x509.MarshalPKIXPublicKey`/`MarshalPKCS8PrivateKey` write (byte for byte);
//! - `filterPEM TYPE INPUT`: the blocks of that type, re-encoded as Go's `pem.Encode` does;
//! - `filterCertChain leaf|intermediate|root INPUT` and `certSANs INPUT` (x509-parser).
//!
//! Every input is bounded (the JWK: [`MAX_JWK_BYTES`]; an RSA modulus: [`MAX_RSA_BITS`];
//! PEM input: the engine's value limit), nothing here panics on hostile input, and no
//! error holds a value: messages name a JWK member, a key type or a size, never its
//! content. Our copies of private key material (decoded JWK members, DER, PEM text) are
//! zeroized on drop; the template value the PEM becomes is the engine's, as every value.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use der::Encode as _;
use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier};
use rsa::pkcs1;
use rsa::traits::PrivateKeyParts as _;
use zeroize::{Zeroize, Zeroizing};

/// Largest JWK JSON accepted, in bytes (an 8192-bit RSA private key with an `x5c` chain
/// fits with room to spare).
pub(crate) const MAX_JWK_BYTES: usize = 64 * 1024;

/// Largest RSA modulus accepted, in bits.
pub(crate) const MAX_RSA_BITS: usize = 8192;

/// Why a PEM or JWK function failed. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PkiError {
    #[error("the JWK is {size} bytes, over the limit of {limit}")]
    JwkTooLarge { size: usize, limit: usize },
    #[error(
        "invalid JWK: not a JSON object of string members, or a member is repeated (line {line}, column {column})"
    )]
    JwkJson { line: usize, column: usize },
    #[error("invalid JWK: member \"{0}\" is missing")]
    Missing(&'static str),
    #[error("invalid JWK: member \"{0}\" is not base64url")]
    Base64(&'static str),
    #[error("invalid JWK: member \"{member}\" {reason}")]
    Invalid {
        member: &'static str,
        reason: &'static str,
    },
    #[error("unsupported JWK key type (\"kty\"): RSA, EC and OKP are supported")]
    UnsupportedKty,
    #[error("unsupported JWK curve (\"crv\") for kty {kty}: {supported} supported")]
    UnsupportedCrv {
        kty: &'static str,
        supported: &'static str,
    },
    #[error("the RSA modulus has {bits} bits, over the limit of {limit}")]
    ModulusTooLarge { bits: usize, limit: usize },
    #[error("multi-prime RSA keys (member \"oth\") are not supported")]
    MultiPrime,
    #[error("the JWK holds no private key (member \"d\" is missing)")]
    NotPrivate,
    #[error("invalid JWK: {0}")]
    Inconsistent(&'static str),
    #[error("the key could not be encoded")]
    Encode,
    #[error("error filtering pem: found junk")]
    Junk,
    #[error("the result exceeds the limit of {0} bytes")]
    TooLarge(usize),
    #[error("unknown certificate type: leaf, intermediate or root expected")]
    CertType,
    #[error("a PEM block is not a valid X.509 certificate")]
    Certificate,
    #[error("found multiple leaf or disjunct certificates")]
    Disjunct,
    #[error("no leaf certificate found")]
    NoLeaf,
    #[error("constructing chain resulted in cycle")]
    Cycle,
    #[error("failed to decode PEM block")]
    NoPem,
    #[error("failed to parse certificate: {0}")]
    San(&'static str),
}

impl From<der::Error> for PkiError {
    fn from(_: der::Error) -> Self {
        PkiError::Encode
    }
}

// ---------------------------------------------------------------------------------------
// JWK

/// A string member of the JWK, borrowed from the input when it has no escapes; a copy is
/// zeroized on drop.
struct Member<'a>(Cow<'a, str>);

impl Drop for Member<'_> {
    fn drop(&mut self) {
        if let Cow::Owned(s) = &mut self.0 {
            s.zeroize();
        }
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Member<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(V).map(Member)
    }
}

/// The members of a JWK these functions read (RFC 7517, RFC 7518 §6, RFC 8037); others
/// (`kid`, `use`, `alg`, `x5c` …) are ignored.
#[derive(serde::Deserialize)]
struct RawJwk<'a> {
    #[serde(borrow)]
    kty: Option<Member<'a>>,
    #[serde(borrow)]
    crv: Option<Member<'a>>,
    #[serde(borrow)]
    n: Option<Member<'a>>,
    #[serde(borrow)]
    e: Option<Member<'a>>,
    #[serde(borrow)]
    d: Option<Member<'a>>,
    #[serde(borrow)]
    p: Option<Member<'a>>,
    #[serde(borrow)]
    q: Option<Member<'a>>,
    #[serde(borrow)]
    dp: Option<Member<'a>>,
    #[serde(borrow)]
    dq: Option<Member<'a>>,
    #[serde(borrow)]
    qi: Option<Member<'a>>,
    #[serde(borrow)]
    x: Option<Member<'a>>,
    #[serde(borrow)]
    y: Option<Member<'a>>,
    oth: Option<serde::de::IgnoredAny>,
}

type Secret = Zeroizing<Vec<u8>>;

impl RawJwk<'_> {
    fn kty(&self) -> Result<&str, PkiError> {
        self.kty
            .as_ref()
            .map(|m| &*m.0)
            .ok_or(PkiError::Missing("kty"))
    }

    fn crv(&self) -> Result<&str, PkiError> {
        self.crv
            .as_ref()
            .map(|m| &*m.0)
            .ok_or(PkiError::Missing("crv"))
    }

    fn member(&self, name: &'static str) -> Option<&Member<'_>> {
        match name {
            "n" => self.n.as_ref(),
            "e" => self.e.as_ref(),
            "d" => self.d.as_ref(),
            "p" => self.p.as_ref(),
            "q" => self.q.as_ref(),
            "dp" => self.dp.as_ref(),
            "dq" => self.dq.as_ref(),
            "qi" => self.qi.as_ref(),
            "x" => self.x.as_ref(),
            "y" => self.y.as_ref(),
            _ => None,
        }
    }

    /// The bytes of a base64url member, or `None` when it is absent.
    fn opt_bytes(&self, name: &'static str) -> Result<Option<Secret>, PkiError> {
        self.member(name).map(|m| b64url(name, &m.0)).transpose()
    }

    fn bytes(&self, name: &'static str) -> Result<Secret, PkiError> {
        self.opt_bytes(name)?.ok_or(PkiError::Missing(name))
    }
}

/// A base64url member (RFC 7515 §2: no padding). Like Go's jwx, padding and the standard
/// alphabet are tolerated; mixing the alphabets is not.
fn b64url(name: &'static str, s: &str) -> Result<Secret, PkiError> {
    let t = s.trim_end_matches('=');
    if s.len() - t.len() > 2 {
        return Err(PkiError::Base64(name));
    }
    let alphabet = if t.contains(['+', '/']) {
        &base64::alphabet::STANDARD
    } else {
        &base64::alphabet::URL_SAFE
    };
    let engine = base64::engine::GeneralPurpose::new(
        alphabet,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
    );
    // Reserved in full, so that decoding never reallocates (and leaves no copy behind).
    let mut out = Zeroizing::new(Vec::with_capacity(base64::decoded_len_estimate(t.len())));
    engine
        .decode_vec(t, &mut out)
        .map_err(|_| PkiError::Base64(name))?;
    Ok(out)
}

fn parse_jwk(json: &[u8]) -> Result<RawJwk<'_>, PkiError> {
    if json.len() > MAX_JWK_BYTES {
        return Err(PkiError::JwkTooLarge {
            size: json.len(),
            limit: MAX_JWK_BYTES,
        });
    }
    // serde_json's messages can quote the input: only the position is kept.
    serde_json::from_slice(json).map_err(|e| PkiError::JwkJson {
        line: e.line(),
        column: e.column(),
    })
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

/// `b` as exactly `size` big-endian bytes (leading zeros added or removed), Go's
/// `big.Int.FillBytes`; an error when the value needs more.
fn fixed(name: &'static str, b: &[u8], size: usize) -> Result<Secret, PkiError> {
    let b = strip_zeros(b);
    if b.len() > size {
        return Err(PkiError::Invalid {
            member: name,
            reason: "is longer than the curve allows",
        });
    }
    let mut out = Zeroizing::new(vec![0u8; size]);
    out[size - b.len()..].copy_from_slice(b);
    Ok(out)
}

/// `jwkPublicKeyPem`: the JWK's public key as a `PUBLIC KEY` PEM block. A private JWK
/// gives its public key (ESO fails: its `x509.MarshalPKIXPublicKey` gets a private key).
pub(crate) fn jwk_public_key_pem(json: &[u8]) -> Result<Vec<u8>, PkiError> {
    let jwk = parse_jwk(json)?;
    let der = match jwk.kty()? {
        "RSA" => rsa_public(&jwk)?,
        "EC" => ec_public(&jwk)?,
        "OKP" => ed25519_public(&jwk)?,
        _ => return Err(PkiError::UnsupportedKty),
    };
    let mut out = Vec::new();
    pem_encode(&mut out, b"PUBLIC KEY", &BTreeMap::new(), &der);
    Ok(out)
}

/// `jwkPrivateKeyPem`: the JWK's private key as a `PRIVATE KEY` (PKCS#8) PEM block; a
/// public-only JWK is an error.
pub(crate) fn jwk_private_key_pem(json: &[u8]) -> Result<Secret, PkiError> {
    let jwk = parse_jwk(json)?;
    let kty = jwk.kty()?;
    if !matches!(kty, "RSA" | "EC" | "OKP") {
        return Err(PkiError::UnsupportedKty);
    }
    if jwk.d.is_none() {
        return Err(PkiError::NotPrivate);
    }
    let der = match kty {
        "RSA" => rsa_private(&jwk)?,
        "EC" => ec_private(&jwk)?,
        _ => ed25519_private(&jwk)?,
    };
    let mut out = Zeroizing::new(Vec::new());
    pem_encode(&mut out, b"PRIVATE KEY", &BTreeMap::new(), &der);
    Ok(out)
}

// ---- RSA -------------------------------------------------------------------------------

/// `n` and `e`, checked: the modulus within [`MAX_RSA_BITS`], the exponent in
/// 2..=2^33-1 (the rsa crate's bounds).
fn rsa_public_parts(jwk: &RawJwk<'_>) -> Result<(Vec<u8>, Vec<u8>), PkiError> {
    let n = strip_zeros(&jwk.bytes("n")?).to_vec();
    let e = strip_zeros(&jwk.bytes("e")?).to_vec();
    let Some(top) = n.first() else {
        return Err(PkiError::Invalid {
            member: "n",
            reason: "is zero",
        });
    };
    let bits = n.len() * 8 - top.leading_zeros() as usize;
    if bits > MAX_RSA_BITS {
        return Err(PkiError::ModulusTooLarge {
            bits,
            limit: MAX_RSA_BITS,
        });
    }
    if e.len() > 8 {
        return Err(PkiError::Invalid {
            member: "e",
            reason: "is out of range",
        });
    }
    rsa::RsaPublicKey::new_with_max_size(
        rsa::BigUint::from_bytes_be(&n),
        rsa::BigUint::from_bytes_be(&e),
        MAX_RSA_BITS,
    )
    .map_err(|_| PkiError::Invalid {
        member: "e",
        reason: "is out of range",
    })?;
    Ok((n, e))
}

fn rsa_public(jwk: &RawJwk<'_>) -> Result<Vec<u8>, PkiError> {
    let (n, e) = rsa_public_parts(jwk)?;
    let key = pkcs1::RsaPublicKey {
        modulus: pkcs1::UintRef::new(&n)?,
        public_exponent: pkcs1::UintRef::new(&e)?,
    }
    .to_der()?;
    Ok(spki::SubjectPublicKeyInfoRef {
        algorithm: pkcs1::ALGORITHM_ID,
        subject_public_key: BitStringRef::new(0, &key)?,
    }
    .to_der()?)
}

fn big(b: &[u8]) -> Zeroizing<rsa::BigUint> {
    Zeroizing::new(rsa::BigUint::from_bytes_be(b))
}

fn be(v: &rsa::BigUint) -> Secret {
    Zeroizing::new(v.to_bytes_be())
}

fn rsa_private(jwk: &RawJwk<'_>) -> Result<Secret, PkiError> {
    if jwk.oth.is_some() {
        return Err(PkiError::MultiPrime);
    }
    let (n, e) = rsa_public_parts(jwk)?;
    let limit = n.len();
    let member = |name: &'static str| -> Result<Option<Secret>, PkiError> {
        match jwk.opt_bytes(name)? {
            Some(b) if strip_zeros(&b).len() > limit => Err(PkiError::Invalid {
                member: name,
                reason: "is larger than the modulus",
            }),
            other => Ok(other),
        }
    };
    let d = member("d")?.ok_or(PkiError::NotPrivate)?;
    // The primes are required (as Go needs them); recovering them from d is not done.
    let p = member("p")?.ok_or(PkiError::Missing("p"))?;
    let q = member("q")?.ok_or(PkiError::Missing("q"))?;
    let (dp, dq, qi) = (member("dp")?, member("dq")?, member("qi")?);

    // from_components checks p·q = n, p, q > 1 and d·e ≡ 1 mod (p-1), (q-1).
    let key = rsa::RsaPrivateKey::from_components(
        rsa::BigUint::from_bytes_be(&n),
        rsa::BigUint::from_bytes_be(&e),
        rsa::BigUint::from_bytes_be(&d),
        vec![
            rsa::BigUint::from_bytes_be(&p),
            rsa::BigUint::from_bytes_be(&q),
        ],
    )
    .map_err(|_| PkiError::Inconsistent("the RSA private key does not match its modulus"))?;
    let crt = PkiError::Inconsistent("the RSA CRT parameters (dp, dq, qi) are inconsistent");
    let computed_dp = key.dp().ok_or(crt.clone())?;
    let computed_dq = key.dq().ok_or(crt.clone())?;
    let computed_qi = Zeroizing::new(key.crt_coefficient().ok_or(crt.clone())?);
    for (given, computed) in [(&dp, computed_dp), (&dq, computed_dq), (&qi, &*computed_qi)] {
        if let Some(given) = given
            && *big(given) != *computed
        {
            return Err(crt);
        }
    }
    let (d, p, q) = (be(key.d()), be(&key.primes()[0]), be(&key.primes()[1]));
    let (dp, dq, qi) = (be(computed_dp), be(computed_dq), be(&computed_qi));
    let pkcs1_der = Zeroizing::new(
        pkcs1::RsaPrivateKey {
            modulus: pkcs1::UintRef::new(&n)?,
            public_exponent: pkcs1::UintRef::new(&e)?,
            private_exponent: pkcs1::UintRef::new(&d)?,
            prime1: pkcs1::UintRef::new(&p)?,
            prime2: pkcs1::UintRef::new(&q)?,
            exponent1: pkcs1::UintRef::new(&dp)?,
            exponent2: pkcs1::UintRef::new(&dq)?,
            coefficient: pkcs1::UintRef::new(&qi)?,
            other_prime_infos: None,
        }
        .to_der()?,
    );
    Ok(Zeroizing::new(
        pkcs8::PrivateKeyInfo::new(pkcs1::ALGORITHM_ID, &pkcs1_der).to_der()?,
    ))
}

// ---- EC --------------------------------------------------------------------------------

/// id-ecPublicKey (RFC 5480).
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// id-Ed25519 (RFC 8410).
const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

#[derive(Clone, Copy)]
enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn of(jwk: &RawJwk<'_>) -> Result<Curve, PkiError> {
        match jwk.crv()? {
            "P-256" => Ok(Curve::P256),
            "P-384" => Ok(Curve::P384),
            "P-521" => Ok(Curve::P521),
            _ => Err(PkiError::UnsupportedCrv {
                kty: "EC",
                supported: "P-256, P-384 and P-521 are",
            }),
        }
    }

    /// Bytes of a coordinate and of the private scalar.
    fn size(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    fn oid(self) -> ObjectIdentifier {
        match self {
            Curve::P256 => ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7"),
            Curve::P384 => ObjectIdentifier::new_unwrap("1.3.132.0.34"),
            Curve::P521 => ObjectIdentifier::new_unwrap("1.3.132.0.35"),
        }
    }

    /// The point `04 || x || y`, checked to be on the curve.
    fn point(self, x: &[u8], y: &[u8]) -> Result<Vec<u8>, PkiError> {
        let mut sec1 = Vec::with_capacity(1 + 2 * self.size());
        sec1.push(4);
        sec1.extend_from_slice(&fixed("x", x, self.size())?);
        sec1.extend_from_slice(&fixed("y", y, self.size())?);
        let ok = match self {
            Curve::P256 => p256::PublicKey::from_sec1_bytes(&sec1).is_ok(),
            Curve::P384 => p384::PublicKey::from_sec1_bytes(&sec1).is_ok(),
            Curve::P521 => p521::PublicKey::from_sec1_bytes(&sec1).is_ok(),
        };
        if !ok {
            return Err(PkiError::Inconsistent(
                "the point (x, y) is not on the curve",
            ));
        }
        Ok(sec1)
    }

    /// The uncompressed public point of the private scalar `d` (exactly `size` bytes).
    fn public_of(self, d: &[u8]) -> Result<Vec<u8>, PkiError> {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        let bad = PkiError::Invalid {
            member: "d",
            reason: "is not a valid private key for the curve",
        };
        // SecretKey zeroizes itself on drop.
        Ok(match self {
            Curve::P256 => p256::SecretKey::from_slice(d)
                .map_err(|_| bad)?
                .public_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
            Curve::P384 => p384::SecretKey::from_slice(d)
                .map_err(|_| bad)?
                .public_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
            Curve::P521 => p521::SecretKey::from_slice(d)
                .map_err(|_| bad)?
                .public_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
        })
    }
}

fn ec_public(jwk: &RawJwk<'_>) -> Result<Vec<u8>, PkiError> {
    let curve = Curve::of(jwk)?;
    let point = curve.point(&jwk.bytes("x")?, &jwk.bytes("y")?)?;
    let oid = curve.oid();
    Ok(spki::SubjectPublicKeyInfoRef {
        algorithm: spki::AlgorithmIdentifierRef {
            oid: ID_EC_PUBLIC_KEY,
            parameters: Some(AnyRef::from(&oid)),
        },
        subject_public_key: BitStringRef::new(0, &point)?,
    }
    .to_der()?)
}

fn ec_private(jwk: &RawJwk<'_>) -> Result<Secret, PkiError> {
    let curve = Curve::of(jwk)?;
    let point = curve.point(&jwk.bytes("x")?, &jwk.bytes("y")?)?;
    let d = fixed("d", &jwk.bytes("d")?, curve.size())?;
    if curve.public_of(&d)? != point {
        return Err(PkiError::Inconsistent(
            "the private key does not match the public key (x, y)",
        ));
    }
    // Go's MarshalPKCS8PrivateKey: the curve is named in the AlgorithmIdentifier only; the
    // ECPrivateKey (RFC 5915) carries the padded scalar and the public point.
    let inner = Zeroizing::new(
        sec1::EcPrivateKey {
            private_key: &d,
            parameters: None,
            public_key: Some(&point),
        }
        .to_der()?,
    );
    let oid = curve.oid();
    Ok(Zeroizing::new(
        pkcs8::PrivateKeyInfo::new(
            spki::AlgorithmIdentifierRef {
                oid: ID_EC_PUBLIC_KEY,
                parameters: Some(AnyRef::from(&oid)),
            },
            &inner,
        )
        .to_der()?,
    ))
}

// ---- OKP (Ed25519) ---------------------------------------------------------------------

fn ed25519_x(jwk: &RawJwk<'_>) -> Result<[u8; 32], PkiError> {
    if jwk.crv()? != "Ed25519" {
        return Err(PkiError::UnsupportedCrv {
            kty: "OKP",
            supported: "Ed25519 is",
        });
    }
    let x: [u8; 32] = jwk
        .bytes("x")?
        .as_slice()
        .try_into()
        .map_err(|_| PkiError::Invalid {
            member: "x",
            reason: "is not 32 bytes",
        })?;
    ed25519_dalek::VerifyingKey::from_bytes(&x)
        .map_err(|_| PkiError::Inconsistent("x is not an Ed25519 public key"))?;
    Ok(x)
}

fn ed25519_public(jwk: &RawJwk<'_>) -> Result<Vec<u8>, PkiError> {
    let x = ed25519_x(jwk)?;
    Ok(spki::SubjectPublicKeyInfoRef {
        algorithm: spki::AlgorithmIdentifierRef {
            oid: ID_ED25519,
            parameters: None,
        },
        subject_public_key: BitStringRef::new(0, &x)?,
    }
    .to_der()?)
}

fn ed25519_private(jwk: &RawJwk<'_>) -> Result<Secret, PkiError> {
    let x = ed25519_x(jwk)?;
    let d = jwk.bytes("d")?;
    let mut seed = Zeroizing::new([0u8; 32]);
    if d.len() != 32 {
        return Err(PkiError::Invalid {
            member: "d",
            reason: "is not 32 bytes",
        });
    }
    seed.copy_from_slice(&d);
    // ed25519-dalek is built without its `zeroize` feature in this tree: the signing key
    // it derives here is not wiped by the crate.
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    if public != x {
        return Err(PkiError::Inconsistent(
            "the private key does not match the public key (x)",
        ));
    }
    // RFC 8410 CurvePrivateKey: the seed as an OCTET STRING, inside the PKCS#8 OCTET STRING.
    let inner = Zeroizing::new(der::asn1::OctetStringRef::new(&seed[..])?.to_der()?);
    Ok(Zeroizing::new(
        pkcs8::PrivateKeyInfo::new(
            spki::AlgorithmIdentifierRef {
                oid: ID_ED25519,
                parameters: None,
            },
            &inner,
        )
        .to_der()?,
    ))
}

// ---------------------------------------------------------------------------------------
// PEM, as Go's encoding/pem

const PEM_START: &[u8] = b"\n-----BEGIN ";
const PEM_END: &[u8] = b"\n-----END ";
const PEM_EOL: &[u8] = b"-----";

/// A decoded PEM block; `der` may be a private key.
pub(crate) struct Block<'a> {
    pub kind: &'a [u8],
    pub headers: BTreeMap<&'a [u8], &'a [u8]>,
    pub der: Secret,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Go's `getLine`: the first line without its `\n` or `\r\n` and trailing spaces and tabs,
/// and how many bytes it took (with the newline).
fn get_line(data: &[u8]) -> (&[u8], usize) {
    let (mut end, taken) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (i, i + 1),
        None => (data.len(), data.len()),
    };
    if taken > end && end > 0 && data[end - 1] == b'\r' {
        end -= 1;
    }
    let mut line = &data[..end];
    while let [rest @ .., b' ' | b'\t'] = line {
        line = rest;
    }
    (line, taken)
}

fn trim_space(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b
        && first.is_ascii_whitespace()
    {
        b = rest;
    }
    while let [rest @ .., last] = b
        && last.is_ascii_whitespace()
    {
        b = rest;
    }
    b
}

/// Go's `pem.Decode` over one input, block after block. Linear: the search for an END
/// line is remembered, so hostile input (many BEGIN lines without an END) stays cheap.
struct Decoder<'a> {
    input: &'a [u8],
    /// The last END search: where it started and what it found (absolute offsets).
    end_cache: Option<(usize, Option<usize>)>,
    /// The last search for a byte that cannot be in a block body, likewise.
    bad_cache: Option<(usize, Option<usize>)>,
}

/// Whether `b` can stand in a block body (base64, padding, spaces and newlines).
fn body_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b' ' | b'\t' | b'\r' | b'\n')
}

/// The first match of `pred` at or after `from`, remembering the last search: offsets only
/// grow from one search to the next, so every byte is looked at about once.
fn cached_search(
    cache: &mut Option<(usize, Option<usize>)>,
    from: usize,
    search: impl FnOnce(usize) -> Option<usize>,
) -> Option<usize> {
    if let Some((start, found)) = *cache
        && start <= from
        && found.is_none_or(|e| e >= from)
    {
        return found;
    }
    let found = search(from);
    *cache = Some((from, found));
    found
}

impl<'a> Decoder<'a> {
    fn new(input: &'a [u8]) -> Self {
        Decoder {
            input,
            end_cache: None,
            bad_cache: None,
        }
    }

    /// The first `\n-----END ` at or after `from`.
    fn find_end(&mut self, from: usize) -> Option<usize> {
        let input = self.input;
        cached_search(&mut self.end_cache, from, |from| {
            find(&input[from..], PEM_END).map(|i| from + i)
        })
    }

    /// The first byte at or after `from` that cannot be in a block body.
    fn find_bad(&mut self, from: usize) -> Option<usize> {
        let input = self.input;
        cached_search(&mut self.bad_cache, from, |from| {
            input[from..]
                .iter()
                .position(|b| !body_byte(*b))
                .map(|i| from + i)
        })
    }

    /// The next block at or after `at`, and where the rest begins; `None` when there is
    /// none (the rest is then everything from `at`, as in Go).
    fn decode(&mut self, at: usize) -> Option<(Block<'a>, usize)> {
        let input = self.input;
        let mut rest = at;
        loop {
            let r = &input[rest..];
            if r.starts_with(&PEM_START[1..]) {
                rest += PEM_START.len() - 1;
            } else if let Some(i) = find(r, PEM_START) {
                rest += i + PEM_START.len();
            } else {
                return None;
            }
            let (type_line, taken) = get_line(&input[rest..]);
            rest += taken;
            let Some(kind) = type_line.strip_suffix(PEM_EOL) else {
                continue;
            };
            let mut headers = BTreeMap::new();
            loop {
                if rest == input.len() {
                    return None;
                }
                let (line, taken) = get_line(&input[rest..]);
                let Some(colon) = line.iter().position(|b| *b == b':') else {
                    break;
                };
                headers.insert(trim_space(&line[..colon]), trim_space(&line[colon + 1..]));
                rest += taken;
            }
            let r = &input[rest..];
            let (end_index, trailer_index) = if headers.is_empty() && r.starts_with(&PEM_END[1..]) {
                (0, PEM_END.len() - 1)
            } else {
                match self.find_end(rest) {
                    Some(abs) => (abs - rest, abs - rest + PEM_END.len()),
                    None => continue,
                }
            };
            let trailer = &r[trailer_index..];
            let trailer_len = kind.len() + PEM_EOL.len();
            if trailer.len() < trailer_len {
                continue;
            }
            let (end_line, rest_of_end_line) = trailer.split_at(trailer_len);
            if !end_line.starts_with(kind) || !end_line.ends_with(PEM_EOL) {
                continue;
            }
            if !get_line(rest_of_end_line).0.is_empty() {
                continue;
            }
            // A body with a byte base64 cannot hold fails; found without decoding it, so
            // that retries over the same END line (Go retries from every BEGIN) stay cheap.
            if self.find_bad(rest).is_some_and(|b| b < rest + end_index) {
                continue;
            }
            let body = &r[..end_index];
            let mut b64 = Zeroizing::new(Vec::with_capacity(body.len()));
            b64.extend(
                body.iter()
                    .copied()
                    .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n')),
            );
            let mut der =
                Zeroizing::new(Vec::with_capacity(base64::decoded_len_estimate(b64.len())));
            if super::funcs::b64_engine(&base64::alphabet::STANDARD)
                .decode_vec(&b64[..], &mut der)
                .is_err()
            {
                continue;
            }
            let after = rest + end_index + PEM_END.len() - 1;
            let (_, taken) = get_line(&input[after..]);
            return Some((Block { kind, headers, der }, after + taken));
        }
    }
}

/// Size of [`pem_encode`]'s output.
fn pem_len(kind: &[u8], headers: &BTreeMap<&[u8], &[u8]>, der: &[u8]) -> usize {
    let b64 = der.len().div_ceil(3) * 4;
    let header_bytes: usize = headers.iter().map(|(k, v)| k.len() + 2 + v.len() + 1).sum();
    let blank = usize::from(!headers.is_empty());
    (11 + kind.len() + 6) + header_bytes + blank + b64 + b64.div_ceil(64) + (9 + kind.len() + 6)
}

/// Go's `pem.Encode`: BEGIN line, headers (`Proc-Type` first, then by key) and a blank
/// line, base64 in lines of 64, END line. `out` grows by exactly [`pem_len`] (reserved
/// first, so a private key never lands in a buffer left behind by a reallocation).
fn pem_encode(out: &mut Vec<u8>, kind: &[u8], headers: &BTreeMap<&[u8], &[u8]>, der: &[u8]) {
    out.reserve_exact(pem_len(kind, headers, der));
    out.extend_from_slice(&PEM_START[1..]);
    out.extend_from_slice(kind);
    out.extend_from_slice(b"-----\n");
    if !headers.is_empty() {
        let proc_type: &[u8] = b"Proc-Type";
        let ordered = headers
            .iter()
            .filter(|(k, _)| **k == proc_type)
            .chain(headers.iter().filter(|(k, _)| **k != proc_type));
        for (k, v) in ordered {
            out.extend_from_slice(k);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let mut line = [0u8; 64];
    for chunk in der.chunks(48) {
        // 48 bytes → 64 characters: the buffer always fits.
        if let Ok(n) = engine.encode_slice(chunk, &mut line) {
            out.extend_from_slice(&line[..n]);
            out.push(b'\n');
        }
    }
    line.zeroize();
    out.extend_from_slice(&PEM_END[1..]);
    out.extend_from_slice(kind);
    out.extend_from_slice(b"-----\n");
}

/// Go's `strings.EqualFold` (simple case folding; ASCII and the common letters).
fn eq_fold(a: &[u8], b: &[u8]) -> bool {
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    match (std::str::from_utf8(a), std::str::from_utf8(b)) {
        (Ok(a), Ok(b)) => {
            let one = |c: char, lower: bool| {
                let mut it: Box<dyn Iterator<Item = char>> = if lower {
                    Box::new(c.to_lowercase())
                } else {
                    Box::new(c.to_uppercase())
                };
                match (it.next(), it.next()) {
                    (Some(x), None) => x,
                    _ => c,
                }
            };
            a.chars().count() == b.chars().count()
                && a.chars().zip(b.chars()).all(|(x, y)| {
                    x == y || one(x, true) == one(y, true) || one(x, false) == one(y, false)
                })
        }
        _ => false,
    }
}

/// ESO's `trimJunk`: the input from its first `-----BEGIN` (Go's `pem.Decode` skipped
/// leading text before Go 1.25.3).
fn trim_junk(input: &[u8]) -> &[u8] {
    find(input, b"-----BEGIN").map_or(input, |i| &input[i..])
}

/// `filterPEM TYPE INPUT`: every block whose type equals TYPE (ignoring case),
/// re-encoded, in order. Text around and between blocks is skipped as Go's `pem.Decode`
/// skips it; "found junk" when no block matched and something that is not PEM remains.
pub(crate) fn filter_pem(kind: &[u8], input: &[u8], max_out: usize) -> Result<Secret, PkiError> {
    let input = trim_junk(input);
    let mut dec = Decoder::new(input);
    let mut pos = 0;
    let mut matched = Vec::new();
    while let Some((block, next)) = dec.decode(pos) {
        pos = next;
        if eq_fold(block.kind, kind) {
            matched.push(block);
        }
    }
    if matched.is_empty() && pos < input.len() {
        return Err(PkiError::Junk);
    }
    let total = matched.iter().fold(0usize, |t, b| {
        t.saturating_add(pem_len(b.kind, &b.headers, &b.der))
    });
    if total > max_out {
        return Err(PkiError::TooLarge(max_out));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(total));
    for b in &matched {
        pem_encode(&mut out, b.kind, &b.headers, &b.der);
    }
    Ok(out)
}

/// A certificate of a chain: its DER and key identifiers (Go's `AuthorityKeyId`,
/// `SubjectKeyId`; `None` where Go has nil).
struct Cert {
    der: Vec<u8>,
    aki: Option<Vec<u8>>,
    ski: Option<Vec<u8>>,
}

impl Cert {
    /// Go's `isRootCertificate`.
    fn is_root(&self) -> bool {
        self.aki.is_none() || self.aki_bytes() == self.ski_bytes()
    }
    fn aki_bytes(&self) -> &[u8] {
        self.aki.as_deref().unwrap_or(&[])
    }
    fn ski_bytes(&self) -> &[u8] {
        self.ski.as_deref().unwrap_or(&[])
    }
}

/// Parses one certificate as Go's `x509.ParseCertificate` would accept it: no trailing
/// data, no duplicate extension, well-formed key identifier and SAN extensions.
fn parse_cert(der: &[u8]) -> Result<X509<'_>, PkiError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| PkiError::Certificate)?;
    if !rest.is_empty() {
        return Err(PkiError::Certificate);
    }
    cert.extensions_map().map_err(|_| PkiError::Certificate)?;
    Ok(cert)
}

impl Cert {
    /// The certificate in `der`, with its key identifiers.
    fn parse(der: Vec<u8>) -> Result<Cert, PkiError> {
        let (aki, ski) = {
            let cert = parse_cert(&der)?;
            (aki_of(&cert)?, ski_of(&cert)?)
        };
        Ok(Cert { der, aki, ski })
    }
}

type X509<'a> = x509_parser::certificate::X509Certificate<'a>;

/// Go's `AuthorityKeyId`: the key identifier of the extension (nil without one).
fn aki_of(cert: &X509<'_>) -> Result<Option<Vec<u8>>, PkiError> {
    use x509_parser::extensions::ParsedExtension;
    let oid = x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER;
    let ext = cert
        .get_extension_unique(&oid)
        .map_err(|_| PkiError::Certificate)?;
    match ext.map(|e| e.parsed_extension()) {
        None => Ok(None),
        Some(ParsedExtension::AuthorityKeyIdentifier(a)) => {
            Ok(a.key_identifier.as_ref().map(|k| k.0.to_vec()))
        }
        Some(_) => Err(PkiError::Certificate),
    }
}

/// Go's `SubjectKeyId` (nil without the extension).
fn ski_of(cert: &X509<'_>) -> Result<Option<Vec<u8>>, PkiError> {
    use x509_parser::extensions::ParsedExtension;
    let oid = x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER;
    let ext = cert
        .get_extension_unique(&oid)
        .map_err(|_| PkiError::Certificate)?;
    match ext.map(|e| e.parsed_extension()) {
        None => Ok(None),
        Some(ParsedExtension::SubjectKeyIdentifier(k)) => Ok(Some(k.0.to_vec())),
        Some(_) => Err(PkiError::Certificate),
    }
}

/// ESO's `fetchX509CertChains`: every PEM block parsed as a certificate, linked to its
/// issuer by key identifiers, ordered leaf → intermediates → root.
fn cert_chain(input: &[u8]) -> Result<Vec<Cert>, PkiError> {
    let mut dec = Decoder::new(input);
    let mut pos = 0;
    let mut certs = Vec::new();
    while let Some((block, next)) = dec.decode(pos) {
        pos = next;
        certs.push(Cert::parse(block.der.to_vec())?);
    }
    // Go: for each i, the first j != i whose SubjectKeyId equals i's AuthorityKeyId (nil
    // and empty equal) is its parent. The first two indices per key make it linear.
    let mut by_ski: HashMap<&[u8], (usize, Option<usize>)> = HashMap::new();
    for (j, c) in certs.iter().enumerate() {
        by_ski
            .entry(c.ski_bytes())
            .and_modify(|e| {
                if e.1.is_none() {
                    e.1 = Some(j);
                }
            })
            .or_insert((j, None));
    }
    let mut parent = vec![None; certs.len()];
    let mut is_parent = vec![false; certs.len()];
    for (i, c) in certs.iter().enumerate() {
        let j = match by_ski.get(c.aki_bytes()) {
            Some((first, _)) if *first != i => Some(*first),
            Some((_, second)) => *second,
            None => None,
        };
        if let Some(j) = j {
            is_parent[j] = true;
            parent[i] = Some(j);
        }
    }
    let mut leaves = is_parent.iter().enumerate().filter(|(_, p)| !**p);
    let leaf = match (leaves.next(), leaves.next()) {
        (Some((i, _)), None) => i,
        (Some(_), Some(_)) => return Err(PkiError::Disjunct),
        (None, _) => return Err(PkiError::NoLeaf),
    };
    let mut order = Vec::new();
    let mut at = Some(leaf);
    while let Some(i) = at {
        if order.len() == certs.len() {
            return Err(PkiError::Cycle);
        }
        order.push(i);
        at = parent[i];
    }
    let mut slots: Vec<Option<Cert>> = certs.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// `filterCertChain leaf|intermediate|root INPUT` (ESO): the leaf (when it has an issuer
/// key id other than its own), the intermediates (up to the first root), or the root (when
/// the chain ends in one), as `CERTIFICATE` PEM; `""` when the chain has none.
pub(crate) fn filter_cert_chain(
    kind: &[u8],
    input: &[u8],
    max_out: usize,
) -> Result<Vec<u8>, PkiError> {
    if !matches!(kind, b"leaf" | b"intermediate" | b"root") {
        return Err(PkiError::CertType);
    }
    let chain = cert_chain(input)?;
    let picked: Vec<&Cert> = match kind {
        b"leaf" => chain
            .first()
            .filter(|c| c.aki.is_some() && c.aki_bytes() != c.ski_bytes())
            .into_iter()
            .collect(),
        b"intermediate" => chain.iter().skip(1).take_while(|c| !c.is_root()).collect(),
        _ => chain.last().filter(|c| c.is_root()).into_iter().collect(),
    };
    let none = BTreeMap::new();
    let total = picked.iter().fold(0usize, |t, c| {
        t.saturating_add(pem_len(b"CERTIFICATE", &none, &c.der))
    });
    if total > max_out {
        return Err(PkiError::TooLarge(max_out));
    }
    let mut out = Vec::with_capacity(total);
    for c in picked {
        pem_encode(&mut out, b"CERTIFICATE", &none, &c.der);
    }
    Ok(out)
}

/// Go's `net.IP.String` of a 4- or 16-byte address.
fn ip_string(b: &[u8]) -> Option<String> {
    match b.len() {
        4 => Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            let v6 = std::net::Ipv6Addr::from(a);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => v6.to_string(),
            })
        }
        _ => None,
    }
}

/// `certSANs INPUT` (ESO): the subject alternative names of the first PEM block's
/// certificate: DNS names, then IP addresses, e-mail addresses, URIs (Go's order).
pub(crate) fn cert_sans(input: &[u8]) -> Result<Vec<String>, PkiError> {
    use x509_parser::extensions::GeneralName;
    let input = trim_junk(input);
    let (block, _) = Decoder::new(input).decode(0).ok_or(PkiError::NoPem)?;
    let cert = parse_cert(&block.der).map_err(|_| PkiError::San("not an X.509 certificate"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| PkiError::San("malformed subject alternative name extension"))?;
    let (mut dns, mut ips, mut emails, mut uris) = (vec![], vec![], vec![], vec![]);
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s)
                if !s.is_ascii() =>
            {
                return Err(PkiError::San("a SAN is not an IA5String"));
            }
            GeneralName::DNSName(s) => dns.push(s.to_string()),
            GeneralName::RFC822Name(s) => emails.push(s.to_string()),
            GeneralName::URI(s) => uris.push(s.to_string()),
            GeneralName::IPAddress(b) => {
                ips.push(ip_string(b).ok_or(PkiError::San("an IP address SAN has a bad length"))?)
            }
            _ => {}
        }
    }
    Ok([dns, ips, emails, uris].concat())
}

#[cfg(test)]
#[path = "pki_tests.rs"]
mod tests;
