//! The PEM and JWK functions: RFC 7517 (Appendix A, B) and RFC 8037 example keys against
//! PEM written by OpenSSL (the DER Go writes too), round trips with keys generated here,
//! ESO's filterPEM/filterCertChain/certSANs cases, hostile input, and that no error holds
//! key material.

use std::collections::BTreeMap;

use base64::Engine as _;
use der::Decode as _;
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use rsa::rand_core::{OsRng, RngCore as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

use super::*;
use crate::template::{Engine, TemplateError, TemplateSettings};

// ---- RFC keys ---------------------------------------------------------------------------

// RFC 7517 Appendix A.1/A.2 RSA key ("2011-04-29").
const RSA_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
const RSA_D: &str = "X4cTteJY_gn4FYPsXB8rdXix5vwsg1FLN5E3EaG6RJoVH-HLLKD9M7dx5oo7GURknchnrRweUkC7hT5fJLM0WbFAKNLWY2vv7B6NqXSzUvxT0_YSfqijwp3RTzlBaCxWp4doFk5N2o8Gy_nHNKroADIkJ46pRUohsXywbReAdYaMwFs9tv8d_cPVY3i07a3t8MN6TNwm0dSawm9v47UiCl3Sk5ZiG7xojPLu4sbg1U2jx4IBTNBznbJSzFHK66jT8bgkuqsk0GjskDJk19Z4qwjwbsnn4j2WBii3RL-Us2lGVkY8fkFzme1z0HbIkfz0Y6mqnOYtqc0X4jfcKoAC8Q";
const RSA_P: &str = "83i-7IvMGXoMXCskv73TKr8637FiO7Z27zv8oj6pbWUQyLPQBQxtPVnwD20R-60eTDmD2ujnMt5PoqMrm8RfmNhVWDtjjMmCMjOpSXicFHj7XOuVIYQyqVWlWEh6dN36GVZYk93N8Bc9vY41xy8B9RzzOGVQzXvNEvn7O0nVbfs";
const RSA_Q: &str = "3dfOR9cuYq-0S-mkFLzgItgMEfFzB2q3hWehMuG0oCuqnb3vobLyumqjVZQO1dIrdwgTnCdpYzBcOfW5r370AFXjiWft_NGEiovonizhKpo9VVS78TzFgxkIdrecRezsZ-1kYd_s1qDbxtkDEgfAITAG9LUnADun4vIcb6yelxk";
const RSA_DP: &str = "G4sPXkc6Ya9y8oJW9_ILj4xuppu0lzi_H7VTkS8xj5SdX3coE0oimYwxIi2emTAue0UOa5dpgFGyBJ4c8tQ2VF402XRugKDTP8akYhFo5tAA77Qe_NmtuYZc3C3m3I24G2GvR5sSDxUyAN2zq8Lfn9EUms6rY3Ob8YeiKkTiBj0";
const RSA_DQ: &str = "s9lAH9fggBsoFR8Oac2R_E2gw282rT2kGOAhvIllETE1efrA6huUUvMfBcMpn8lqeW6vzznYY5SSQF7pMdC_agI3nG8Ibp1BUb0JUiraRNqUfLhcQb_d9GF4Dh7e74WbRsobRonujTYN1xCaP6TO61jvWrX-L18txXw494Q_cgk";
const RSA_QI: &str = "GyM_p6JrXySiz1toFgKbWV-JdI3jQ4ypu9rbMWx3rQJBfmt0FoYzgUIZEVFEcOqwemRN81zoDAaa-Bk0KWNGDjJHZDdDmFhW3AN7lI-puxk_mHZGJ11rxyR8O55XLSe3SPmRfKwZI6yU24ZxvQKFYItdldUKGzO6Ia6zTKhAVRU";
// RFC 7517 Appendix A.1/A.2 EC key ("1").
const EC_X: &str = "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4";
const EC_Y: &str = "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM";
const EC_D: &str = "870MB6gfuTJ4HtUnUvYMyJpr5eUZNP4Bk43bVdj3eAE";
// RFC 7517 Appendix B (RSA key with an x5c chain; the chain is ignored).
const B_N: &str = "vrjOfz9Ccdgx5nQudyhdoR17V-IubWMeOZCwX_jj0hgAsz2J_pqYW08PLbK_PdiVGKPrqzmDIsLI7sA25VEnHU1uCLNwBuUiCO11_-7dYbsr4iJmG0Qu2j8DsVyT1azpJC_NG84Ty5KKthuCaPod7iI7w0LK9orSMhBEwwZDCxTWq4aYWAchc8t-emd9qOvWtVMDC2BXksRngh6X5bUYLy6AyHKvj-nUy1wgzjYQDwHMTplCoLtU-o-8SNnZ1tmRoGE9uJkBLdh5gFENabWnU5m1ZqZPdwS-qo-meMvVfJb6jJVWRpl2SUtCnYG2C32qvbWbjZ_jBPD5eunqsIo1vQ";
// RFC 8037 Appendix A.1/A.2 Ed25519 key.
const OKP_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
const OKP_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

fn rsa_public_jwk() -> String {
    format!(r#"{{"kty":"RSA","n":"{RSA_N}","e":"AQAB","alg":"RS256","kid":"2011-04-29"}}"#)
}

fn rsa_private_jwk() -> String {
    format!(
        r#"{{"kty":"RSA","n":"{RSA_N}","e":"AQAB","d":"{RSA_D}","p":"{RSA_P}","q":"{RSA_Q}","dp":"{RSA_DP}","dq":"{RSA_DQ}","qi":"{RSA_QI}","alg":"RS256","kid":"2011-04-29"}}"#
    )
}

fn ec_public_jwk() -> String {
    format!(r#"{{"kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}","use":"enc","kid":"1"}}"#)
}

fn ec_private_jwk() -> String {
    format!(
        r#"{{"kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}","d":"{EC_D}","use":"enc","kid":"1"}}"#
    )
}

fn okp_public_jwk() -> String {
    format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{OKP_X}"}}"#)
}

fn okp_private_jwk() -> String {
    format!(r#"{{"kty":"OKP","crv":"Ed25519","d":"{OKP_D}","x":"{OKP_X}"}}"#)
}

fn appendix_b_jwk() -> String {
    // The x5c values are shortened: they are not read.
    format!(
        r#"{{"kty":"RSA","use":"sig","kid":"1b94c","n":"{B_N}","e":"AQAB","x5c":["MIIE3jCCA8agAwIBAgICAwEwDQYJKoZIhvcNAQEFBQAw","MIIE+zCCBGSgAwIBAgICAQ0wDQYJKoZIhvcNAQEFBQAw"]}}"#
    )
}

// PEM written by OpenSSL (Python `cryptography`) for the keys above: the same DER as Go's
// x509.MarshalPKIXPublicKey / MarshalPKCS8PrivateKey (PKCS#8 v1; the EC curve named in
// the AlgorithmIdentifier only; the Ed25519 seed without its public key).
const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA0vx7agoebGcQSuuPiLJX
ZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tS
oc/BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ/2W+5JsGY4Hc5n9yBXArwl93lqt
7/RN5w6Cf0h4QyQ5v+65YGjQR0/FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0
zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt+bFTWhAI4vMQFh6WeZu0f
M4lFd2NcRwr3XPksINHaQ+G/xBniIqbw0Ls1jF44+csFCur+kEgU8awapJzKnqDK
gwIDAQAB
-----END PUBLIC KEY-----
";

const RSA_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDS/HtqCh5sZxBK
64+Isldmm032ed2tCZtcSmzZqIAVtaEzvwuFbHhxtt8AC1VPzrPC7VErto8UXG6E
NHUvq1Khz8EkQI95tYpFeMFkKIVXifeiSeOEyy2fri1n/Zb7kmwZjgdzmf3IFcCv
CX3eWq3v9E3nDoJ/SHhDJDm/7rlgaNBHT8UNbZC/OpjfrxBAyJwC1pKrOzwolmCd
hv1zt3TOB0BkfO7qoxC9EvmFqOufWf3UJs6lshIPTyo0vKt2S35sVNaEAji8xAWH
pZ5m7R8ziUV3Y1xHCvdc+Swg0dpD4b/EGeIipvDQuzWMXjj5ywUK6v6QSBTxrBqk
nMqeoMqDAgMBAAECggEAX4cTteJY/gn4FYPsXB8rdXix5vwsg1FLN5E3EaG6RJoV
H+HLLKD9M7dx5oo7GURknchnrRweUkC7hT5fJLM0WbFAKNLWY2vv7B6NqXSzUvxT
0/YSfqijwp3RTzlBaCxWp4doFk5N2o8Gy/nHNKroADIkJ46pRUohsXywbReAdYaM
wFs9tv8d/cPVY3i07a3t8MN6TNwm0dSawm9v47UiCl3Sk5ZiG7xojPLu4sbg1U2j
x4IBTNBznbJSzFHK66jT8bgkuqsk0GjskDJk19Z4qwjwbsnn4j2WBii3RL+Us2lG
VkY8fkFzme1z0HbIkfz0Y6mqnOYtqc0X4jfcKoAC8QKBgQDzeL7si8wZegxcKyS/
vdMqvzrfsWI7tnbvO/yiPqltZRDIs9AFDG09WfAPbRH7rR5MOYPa6Ocy3k+ioyub
xF+Y2FVYO2OMyYIyM6lJeJwUePtc65UhhDKpVaVYSHp03foZVliT3c3wFz29jjXH
LwH1HPM4ZVDNe80S+fs7SdVt+wKBgQDd185H1y5ir7RL6aQUvOAi2AwR8XMHareF
Z6Ey4bSgK6qdve+hsvK6aqNVlA7V0it3CBOcJ2ljMFw59bmvfvQAVeOJZ+380YSK
i+ieLOEqmj1VVLvxPMWDGQh2t5xF7Oxn7WRh3+zWoNvG2QMSB8AhMAb0tScAO6fi
8hxvrJ6XGQKBgBuLD15HOmGvcvKCVvfyC4+MbqabtJc4vx+1U5EvMY+UnV93KBNK
IpmMMSItnpkwLntFDmuXaYBRsgSeHPLUNlReNNl0boCg0z/GpGIRaObQAO+0HvzZ
rbmGXNwt5tyNuBthr0ebEg8VMgDds6vC35/RFJrOq2Nzm/GHoipE4gY9AoGBALPZ
QB/X4IAbKBUfDmnNkfxNoMNvNq09pBjgIbyJZRExNXn6wOoblFLzHwXDKZ/Janlu
r8852GOUkkBe6THQv2oCN5xvCG6dQVG9CVIq2kTalHy4XEG/3fRheA4e3u+Fm0bK
G0aJ7o02DdcQmj+kzutY71q1/i9fLcV8OPeEP3IJAoGAGyM/p6JrXySiz1toFgKb
WV+JdI3jQ4ypu9rbMWx3rQJBfmt0FoYzgUIZEVFEcOqwemRN81zoDAaa+Bk0KWNG
DjJHZDdDmFhW3AN7lI+puxk/mHZGJ11rxyR8O55XLSe3SPmRfKwZI6yU24ZxvQKF
YItdldUKGzO6Ia6zTKhAVRU=
-----END PRIVATE KEY-----
";

const EC_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEMKBCTNIcKUSDii11ySs3526iDZ8A
iTo7Tu6KPAqv7D7gS2XpJFbZiItSs3m9+9Ue6GnvHw/GW2ZZaVtszggXIw==
-----END PUBLIC KEY-----
";

const EC_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg870MB6gfuTJ4HtUn
UvYMyJpr5eUZNP4Bk43bVdj3eAGhRANCAAQwoEJM0hwpRIOKLXXJKzfnbqINnwCJ
OjtO7oo8Cq/sPuBLZekkVtmIi1Kzeb371R7oae8fD8ZbZllpW2zOCBcj
-----END PRIVATE KEY-----
";

const B_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAvrjOfz9Ccdgx5nQudyhd
oR17V+IubWMeOZCwX/jj0hgAsz2J/pqYW08PLbK/PdiVGKPrqzmDIsLI7sA25VEn
HU1uCLNwBuUiCO11/+7dYbsr4iJmG0Qu2j8DsVyT1azpJC/NG84Ty5KKthuCaPod
7iI7w0LK9orSMhBEwwZDCxTWq4aYWAchc8t+emd9qOvWtVMDC2BXksRngh6X5bUY
Ly6AyHKvj+nUy1wgzjYQDwHMTplCoLtU+o+8SNnZ1tmRoGE9uJkBLdh5gFENabWn
U5m1ZqZPdwS+qo+meMvVfJb6jJVWRpl2SUtCnYG2C32qvbWbjZ/jBPD5eunqsIo1
vQIDAQAB
-----END PUBLIC KEY-----
";

const OKP_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=
-----END PUBLIC KEY-----
";

const OKP_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g
-----END PRIVATE KEY-----
";

fn public(jwk: &str) -> String {
    String::from_utf8(jwk_public_key_pem(jwk.as_bytes()).unwrap()).unwrap()
}

fn private(jwk: &str) -> String {
    String::from_utf8(jwk_private_key_pem(jwk.as_bytes()).unwrap().to_vec()).unwrap()
}

#[test]
fn rfc7517_appendix_a_rsa() {
    assert_eq!(public(&rsa_public_jwk()), RSA_PUBLIC_PEM);
    assert_eq!(private(&rsa_private_jwk()), RSA_PRIVATE_PEM);
    // A private JWK gives its public key.
    assert_eq!(public(&rsa_private_jwk()), RSA_PUBLIC_PEM);
    // Without the optional CRT members the same key comes out (they are computed).
    let bare = format!(
        r#"{{"kty":"RSA","n":"{RSA_N}","e":"AQAB","d":"{RSA_D}","p":"{RSA_P}","q":"{RSA_Q}"}}"#
    );
    assert_eq!(private(&bare), RSA_PRIVATE_PEM);
}

#[test]
fn rfc7517_appendix_a_ec() {
    assert_eq!(public(&ec_public_jwk()), EC_PUBLIC_PEM);
    assert_eq!(private(&ec_private_jwk()), EC_PRIVATE_PEM);
    assert_eq!(public(&ec_private_jwk()), EC_PUBLIC_PEM);
}

#[test]
fn rfc7517_appendix_b_rsa_with_x5c() {
    assert_eq!(public(&appendix_b_jwk()), B_PUBLIC_PEM);
}

#[test]
fn rfc8037_ed25519() {
    assert_eq!(public(&okp_public_jwk()), OKP_PUBLIC_PEM);
    assert_eq!(private(&okp_private_jwk()), OKP_PRIVATE_PEM);
    assert_eq!(public(&okp_private_jwk()), OKP_PUBLIC_PEM);
}

/// A P-521 key generated with OpenSSL whose scalar starts with a zero byte, and the
/// PKCS#8 OpenSSL writes for it (scalar padded to 66 bytes).
const P521_JWK: &str = r#"{"kty": "EC", "crv": "P-521", "x": "ARFCt4e5cGB_DAJAELJtxJKVZyVvYhHzBWE3ApOcxxkYbMHH4TDxiZnXhq-UZEWfiXY1JYS4zQrYSdLSlqRZ3F11", "y": "AedmrkQDp5fhryC4XN2Nxc0JpA-rxy55mUQQp3fHfzrg5miWQzOuX7KkDSpFv-k_YReLH0hCkZBbqNtHyIoZV88X", "d": "ADuTWYX81hJ9r9OkOtmtFK9pWnrjBo2GcPvnIVwQJOVCMKmzUdQ7oxNEEyoUlvo5i7Ibt7E0ndrS8HXwAxsD44e-"}"#;
const P521_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIHuAgEAMBAGByqGSM49AgEGBSuBBAAjBIHWMIHTAgEBBEIAO5NZhfzWEn2v06Q6
2a0Ur2laeuMGjYZw++chXBAk5UIwqbNR1DujE0QTKhSW+jmLshu3sTSd2tLwdfAD
GwPjh76hgYkDgYYABAERQreHuXBgfwwCQBCybcSSlWclb2IR8wVhNwKTnMcZGGzB
x+Ew8YmZ14avlGRFn4l2NSWEuM0K2EnS0pakWdxddQHnZq5EA6eX4a8guFzdjcXN
CaQPq8cueZlEEKd3x3864OZolkMzrl+ypA0qRb/pP2EXix9IQpGQW6jbR8iKGVfP
Fw==
-----END PRIVATE KEY-----
";

#[test]
fn p521_scalar_is_padded_as_go() {
    assert_eq!(private(P521_JWK), P521_PRIVATE_PEM);
    // The scalar without its leading zero byte (65 bytes) gives the same key.
    let d = b64url(
        "d",
        "ADuTWYX81hJ9r9OkOtmtFK9pWnrjBo2GcPvnIVwQJOVCMKmzUdQ7oxNEEyoUlvo5i7Ibt7E0ndrS8HXwAxsD44e-",
    )
    .unwrap();
    assert_eq!(d.len(), 66);
    let short = P521_JWK.replace(
        "ADuTWYX81hJ9r9OkOtmtFK9pWnrjBo2GcPvnIVwQJOVCMKmzUdQ7oxNEEyoUlvo5i7Ibt7E0ndrS8HXwAxsD44e-",
        &b64u(&d[1..]),
    );
    assert_eq!(private(&short), P521_PRIVATE_PEM);
}

#[test]
fn jwk_members_padding_alphabet_escapes_and_whitespace() {
    // Padded base64url, the standard alphabet, JSON escapes and layout are accepted.
    let padded = format!(r#"{{"kty":"EC","crv":"P-256","x":"{EC_X}=","y":"{EC_Y}="}}"#);
    assert_eq!(public(&padded), EC_PUBLIC_PEM);
    let std_alphabet = EC_Y.replace('-', "+").replace('_', "/");
    let jwk = format!(r#"{{"kty":"EC","crv":"P-256","x":"{EC_X}","y":"{std_alphabet}"}}"#);
    assert_eq!(public(&jwk), EC_PUBLIC_PEM);
    let escaped = format!(
        "{{ \"kty\" : \"\\u0045C\",\n \"crv\":\"P-256\", \"x\":\"{EC_X}\", \"y\":\"{EC_Y}\", \"d\":\"\\u0038{}\" }}",
        &EC_D[1..]
    );
    assert_eq!(private(&escaped), EC_PRIVATE_PEM);
    // Leading zero bytes in a coordinate are tolerated (Go's big.Int).
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode([&[0u8][..], &b64url("x", EC_X).unwrap()].concat());
    let jwk = format!(r#"{{"kty":"EC","crv":"P-256","x":"{x}","y":"{EC_Y}"}}"#);
    assert_eq!(public(&jwk), EC_PUBLIC_PEM);
}

// ---- round trips with generated keys ----------------------------------------------------

fn b64u(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn pem_private_der(pem: &[u8]) -> Vec<u8> {
    PrivatePkcs8KeyDer::from_pem_slice(pem)
        .unwrap()
        .secret_pkcs8_der()
        .to_vec()
}

fn pem_public_der(pem: &[u8]) -> Vec<u8> {
    SubjectPublicKeyInfoDer::from_pem_slice(pem)
        .unwrap()
        .to_vec()
}

#[test]
fn round_trip_rsa() {
    use rsa::traits::PublicKeyParts as _;
    for bits in [1024, 2048] {
        let key = rsa::RsaPrivateKey::new(&mut OsRng, bits).unwrap();
        let be = |v: &rsa::BigUint| b64u(&v.to_bytes_be());
        let jwk = format!(
            r#"{{"kty":"RSA","n":"{}","e":"{}","d":"{}","p":"{}","q":"{}"}}"#,
            be(key.n()),
            be(key.e()),
            be(key.d()),
            be(&key.primes()[0]),
            be(&key.primes()[1]),
        );
        let pem = jwk_private_key_pem(jwk.as_bytes()).unwrap();
        let back = rsa::RsaPrivateKey::from_pkcs8_der(&pem_private_der(&pem)).unwrap();
        assert_eq!(back, key);
        let pem = jwk_public_key_pem(jwk.as_bytes()).unwrap();
        let back = rsa::RsaPublicKey::from_public_key_der(&pem_public_der(&pem)).unwrap();
        assert_eq!(back, key.to_public_key());
    }
}

/// The curve OID and point of an SPKI, and the scalar and point of a PKCS#8 EC key.
fn ec_spki(der: &[u8]) -> (ObjectIdentifier, Vec<u8>) {
    let spki = spki::SubjectPublicKeyInfoRef::from_der(der).unwrap();
    assert_eq!(spki.algorithm.oid, ID_EC_PUBLIC_KEY);
    let curve: ObjectIdentifier = spki.algorithm.parameters.unwrap().decode_as().unwrap();
    (curve, spki.subject_public_key.raw_bytes().to_vec())
}

fn ec_pkcs8(der: &[u8]) -> (ObjectIdentifier, Vec<u8>, Vec<u8>) {
    let info = pkcs8::PrivateKeyInfo::from_der(der).unwrap();
    assert_eq!(info.algorithm.oid, ID_EC_PUBLIC_KEY);
    assert!(info.public_key.is_none(), "PKCS#8 v1 as Go");
    let curve: ObjectIdentifier = info.algorithm.parameters.unwrap().decode_as().unwrap();
    let ec = sec1::EcPrivateKey::from_der(info.private_key).unwrap();
    assert!(
        ec.parameters.is_none(),
        "curve only in the AlgorithmIdentifier, as Go"
    );
    (
        curve,
        ec.private_key.to_vec(),
        ec.public_key.unwrap().to_vec(),
    )
}

macro_rules! ec_round_trip {
    ($curve:ident, $crv:expr, $oid:expr) => {{
        use $curve::elliptic_curve::sec1::ToEncodedPoint as _;
        let secret = $curve::SecretKey::random(&mut OsRng);
        let point = secret.public_key().to_encoded_point(false);
        let d = secret.to_bytes();
        let jwk = format!(
            r#"{{"kty":"EC","crv":"{}","x":"{}","y":"{}","d":"{}"}}"#,
            $crv,
            b64u(point.x().unwrap()),
            b64u(point.y().unwrap()),
            b64u(&d)
        );
        let pem = jwk_private_key_pem(jwk.as_bytes()).unwrap();
        let (curve, scalar, public) = ec_pkcs8(&pem_private_der(&pem));
        assert_eq!(curve, ObjectIdentifier::new_unwrap($oid));
        assert_eq!(scalar, d.to_vec());
        assert_eq!(public, point.as_bytes());
        assert_eq!(
            $curve::SecretKey::from_slice(&scalar).unwrap().public_key(),
            secret.public_key()
        );
        let pem = jwk_public_key_pem(jwk.as_bytes()).unwrap();
        let (curve, public) = ec_spki(&pem_public_der(&pem));
        assert_eq!(curve, ObjectIdentifier::new_unwrap($oid));
        assert_eq!(
            $curve::PublicKey::from_sec1_bytes(&public).unwrap(),
            secret.public_key()
        );
    }};
}

#[test]
fn round_trip_ec() {
    ec_round_trip!(p256, "P-256", "1.2.840.10045.3.1.7");
    ec_round_trip!(p384, "P-384", "1.3.132.0.34");
    ec_round_trip!(p521, "P-521", "1.3.132.0.35");
}

#[test]
fn round_trip_ed25519() {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let x = key.verifying_key().to_bytes();
    let jwk = format!(
        r#"{{"kty":"OKP","crv":"Ed25519","x":"{}","d":"{}"}}"#,
        b64u(&x),
        b64u(&seed)
    );
    let der = pem_private_der(&jwk_private_key_pem(jwk.as_bytes()).unwrap());
    let info = pkcs8::PrivateKeyInfo::from_der(&der).unwrap();
    assert_eq!(info.algorithm.oid, ID_ED25519);
    assert!(info.algorithm.parameters.is_none() && info.public_key.is_none());
    let inner = der::asn1::OctetStringRef::from_der(info.private_key).unwrap();
    assert_eq!(inner.as_bytes(), seed);
    let der = pem_public_der(&jwk_public_key_pem(jwk.as_bytes()).unwrap());
    let spki = spki::SubjectPublicKeyInfoRef::from_der(&der).unwrap();
    assert_eq!(spki.algorithm.oid, ID_ED25519);
    assert!(spki.algorithm.parameters.is_none());
    assert_eq!(spki.subject_public_key.raw_bytes(), x);
}

// ---- errors -----------------------------------------------------------------------------

/// Every key member of the example keys: no error may contain any of them (nor a part).
fn key_material() -> Vec<String> {
    [
        RSA_N, RSA_D, RSA_P, RSA_Q, RSA_DP, RSA_DQ, RSA_QI, EC_X, EC_Y, EC_D, OKP_D, OKP_X,
    ]
    .iter()
    .map(|m| m[..12].to_string())
    .chain(["S3CRET".to_string()])
    .collect()
}

fn assert_clean(e: &PkiError) {
    let text = format!("{e} {e:?}");
    for m in key_material() {
        assert!(!text.contains(&m), "{text}");
    }
}

fn public_err(jwk: &str) -> PkiError {
    let e = jwk_public_key_pem(jwk.as_bytes()).unwrap_err();
    assert_clean(&e);
    e
}

fn private_err(jwk: &str) -> PkiError {
    let e = jwk_private_key_pem(jwk.as_bytes()).unwrap_err();
    assert_clean(&e);
    e
}

#[test]
fn malformed_json_is_refused_without_quoting_it() {
    for bad in [
        String::new(),
        "S3CRET".to_string(),
        format!(r#"{{"kty":"EC","d":"{EC_D}""#),
        format!(r#"["{EC_D}"]"#),
        format!(r#"{{"kty":"EC","crv":"P-256","x":5,"d":"{EC_D}"}}"#),
        format!(r#"{{"kty":"EC","crv":"P-256","d":"{EC_D}","d":"{EC_D}"}}"#),
        format!("{{\"kty\":\"EC\",\"d\":\"{EC_D}\u{0}S3CRET\"}}"),
    ] {
        assert!(
            matches!(private_err(&bad), PkiError::JwkJson { .. }),
            "{bad}"
        );
        assert!(matches!(public_err(&bad), PkiError::JwkJson { .. }));
    }
    // Not UTF-8.
    let e = jwk_private_key_pem(b"{\"kty\":\"\xff\"}").unwrap_err();
    assert!(matches!(e, PkiError::JwkJson { .. }));
}

#[test]
fn missing_members_are_named() {
    let cases = [
        (format!(r#"{{"n":"{RSA_N}","e":"AQAB"}}"#), "kty"),
        (format!(r#"{{"kty":"RSA","e":"AQAB","d":"{RSA_D}"}}"#), "n"),
        (format!(r#"{{"kty":"RSA","n":"{RSA_N}"}}"#), "e"),
        (
            format!(r#"{{"kty":"EC","x":"{EC_X}","y":"{EC_Y}"}}"#),
            "crv",
        ),
        (format!(r#"{{"kty":"EC","crv":"P-256","y":"{EC_Y}"}}"#), "x"),
        (format!(r#"{{"kty":"EC","crv":"P-256","x":"{EC_X}"}}"#), "y"),
        (r#"{"kty":"OKP","crv":"Ed25519"}"#.to_string(), "x"),
    ];
    for (jwk, member) in &cases {
        assert_eq!(public_err(jwk), PkiError::Missing(member), "{jwk}");
    }
    let no_primes =
        format!(r#"{{"kty":"RSA","n":"{RSA_N}","e":"AQAB","d":"{RSA_D}","q":"{RSA_Q}"}}"#);
    assert_eq!(private_err(&no_primes), PkiError::Missing("p"));
    let no_x = format!(r#"{{"kty":"OKP","crv":"Ed25519","d":"{OKP_D}"}}"#);
    assert_eq!(private_err(&no_x), PkiError::Missing("x"));
    assert_eq!(
        PkiError::Missing("n").to_string(),
        "invalid JWK: member \"n\" is missing"
    );
}

#[test]
fn public_only_jwk_has_no_private_key() {
    for jwk in [
        rsa_public_jwk(),
        ec_public_jwk(),
        okp_public_jwk(),
        appendix_b_jwk(),
    ] {
        let e = private_err(&jwk);
        assert_eq!(e, PkiError::NotPrivate);
        assert_eq!(
            e.to_string(),
            "the JWK holds no private key (member \"d\" is missing)"
        );
    }
}

#[test]
fn wrong_kty_and_crv_are_refused() {
    for kty in ["oct", "rsa", "S3CRET", ""] {
        let jwk = format!(r#"{{"kty":"{kty}","k":"{EC_D}","d":"{EC_D}"}}"#);
        assert_eq!(public_err(&jwk), PkiError::UnsupportedKty);
        assert_eq!(private_err(&jwk), PkiError::UnsupportedKty);
    }
    for crv in ["secp256k1", "P-192", "S3CRET"] {
        let jwk = format!(r#"{{"kty":"EC","crv":"{crv}","x":"{EC_X}","y":"{EC_Y}","d":"{EC_D}"}}"#);
        assert!(matches!(
            public_err(&jwk),
            PkiError::UnsupportedCrv { kty: "EC", .. }
        ));
        assert!(matches!(
            private_err(&jwk),
            PkiError::UnsupportedCrv { kty: "EC", .. }
        ));
    }
    for crv in ["X25519", "Ed448"] {
        let jwk = format!(r#"{{"kty":"OKP","crv":"{crv}","x":"{OKP_X}","d":"{OKP_D}"}}"#);
        assert!(matches!(
            public_err(&jwk),
            PkiError::UnsupportedCrv { kty: "OKP", .. }
        ));
        assert!(matches!(
            private_err(&jwk),
            PkiError::UnsupportedCrv { kty: "OKP", .. }
        ));
    }
    // A P-384 key named P-256 (wrong sizes / not on the curve).
    let jwk = format!(r#"{{"kty":"EC","crv":"P-384","x":"{EC_X}","y":"{EC_Y}"}}"#);
    assert!(matches!(public_err(&jwk), PkiError::Inconsistent(_)));
}

#[test]
fn invalid_members_are_refused() {
    let bad_b64 = format!(r#"{{"kty":"EC","crv":"P-256","x":"{EC_X}!","y":"{EC_Y}"}}"#);
    assert_eq!(public_err(&bad_b64), PkiError::Base64("x"));
    let mixed = format!(r#"{{"kty":"EC","crv":"P-256","x":"a+b_{EC_X}","y":"{EC_Y}"}}"#);
    assert_eq!(public_err(&mixed), PkiError::Base64("x"));
    // Point off the curve.
    let off = format!(r#"{{"kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_X}"}}"#);
    assert!(matches!(public_err(&off), PkiError::Inconsistent(_)));
    // d of another key.
    let other = format!(r#"{{"kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}","d":"{OKP_D}"}}"#);
    assert!(matches!(private_err(&other), PkiError::Inconsistent(_)));
    // d zero or ≥ n.
    let zero = format!(r#"{{"kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}","d":"AA"}}"#);
    assert!(matches!(
        private_err(&zero),
        PkiError::Invalid { member: "d", .. }
    ));
    let big = b64u(&[0xff; 32]);
    let big = format!(r#"{{"kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}","d":"{big}"}}"#);
    assert!(matches!(
        private_err(&big),
        PkiError::Invalid { member: "d", .. }
    ));
    let long = b64u(&[1; 33]);
    let long = format!(r#"{{"kty":"EC","crv":"P-256","x":"{long}","y":"{EC_Y}"}}"#);
    assert!(matches!(
        public_err(&long),
        PkiError::Invalid { member: "x", .. }
    ));
    // Ed25519: wrong sizes, x not a point, x of another key.
    let short = format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{EC_D}A"}}"#);
    assert!(matches!(
        public_err(&short),
        PkiError::Invalid { member: "x", .. }
    ));
    let other = format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{OKP_X}","d":"{EC_D}"}}"#);
    assert!(matches!(private_err(&other), PkiError::Inconsistent(_)));
    let short_d = format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{OKP_X}","d":"AAAA"}}"#);
    assert!(matches!(
        private_err(&short_d),
        PkiError::Invalid { member: "d", .. }
    ));
    // RSA: e out of range, n zero, wrong d, wrong CRT members, swapped primes' product,
    // multi-prime.
    for e in ["AQ", "AAAAAAAAAAAB", "AQAAAAAAAAAAAQ"] {
        let jwk = format!(r#"{{"kty":"RSA","n":"{RSA_N}","e":"{e}"}}"#);
        assert!(matches!(
            public_err(&jwk),
            PkiError::Invalid { member: "e", .. }
        ));
    }
    let jwk = r#"{"kty":"RSA","n":"AAAA","e":"AQAB"}"#;
    assert!(matches!(
        public_err(jwk),
        PkiError::Invalid { member: "n", .. }
    ));
    let wrong_d = rsa_private_jwk().replace(RSA_D, RSA_DP);
    assert!(matches!(private_err(&wrong_d), PkiError::Inconsistent(_)));
    let wrong_dp = rsa_private_jwk().replace(RSA_DP, RSA_DQ);
    assert!(matches!(private_err(&wrong_dp), PkiError::Inconsistent(_)));
    let wrong_qi = rsa_private_jwk().replace(RSA_QI, RSA_DQ);
    assert!(matches!(private_err(&wrong_qi), PkiError::Inconsistent(_)));
    let same_primes = rsa_private_jwk().replace(RSA_Q, RSA_P);
    assert!(matches!(
        private_err(&same_primes),
        PkiError::Inconsistent(_)
    ));
    let zero_prime = rsa_private_jwk().replace(RSA_Q, "AA");
    assert!(matches!(
        private_err(&zero_prime),
        PkiError::Inconsistent(_)
    ));
    let oth = rsa_private_jwk().replace("\"alg\"", "\"oth\":[{\"r\":\"AQ\"}],\"alg\"");
    assert_eq!(private_err(&oth), PkiError::MultiPrime);
    let huge_d = rsa_private_jwk().replace(RSA_D, &format!("{RSA_D}{RSA_D}"));
    assert!(matches!(
        private_err(&huge_d),
        PkiError::Invalid { member: "d", .. }
    ));
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let padding = " ".repeat(MAX_JWK_BYTES);
    let jwk =
        format!(r#"{{"kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}","d":"{EC_D}"}}{padding}"#);
    let e = private_err(&jwk);
    assert!(matches!(e, PkiError::JwkTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("over the limit of 65536"));
    // A modulus over 8192 bits.
    let n = b64u(&vec![0xc5; MAX_RSA_BITS / 8 + 1]);
    let jwk = format!(r#"{{"kty":"RSA","n":"{n}","e":"AQAB"}}"#);
    assert_eq!(
        public_err(&jwk),
        PkiError::ModulusTooLarge {
            bits: MAX_RSA_BITS + 8,
            limit: MAX_RSA_BITS
        }
    );
    // 8192 bits exactly is accepted.
    let mut n = vec![0xc5; MAX_RSA_BITS / 8];
    n[MAX_RSA_BITS / 8 - 1] |= 1;
    let jwk = format!(r#"{{"kty":"RSA","n":"{}","e":"AQAB"}}"#, b64u(&n));
    assert!(jwk_public_key_pem(jwk.as_bytes()).is_ok());
}

#[test]
fn hostile_jwk_never_panics() {
    // Truncations and byte flips of every example JWK: any result, never a panic.
    for jwk in [
        rsa_private_jwk(),
        ec_private_jwk(),
        okp_private_jwk(),
        appendix_b_jwk(),
    ] {
        let b = jwk.as_bytes();
        for cut in (0..b.len()).step_by(7) {
            let _ = jwk_private_key_pem(&b[..cut]);
            let _ = jwk_public_key_pem(&b[..cut]);
        }
        for i in (0..b.len()).step_by(5) {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut m = b.to_vec();
                m[i] ^= flip;
                if let Err(e) = jwk_private_key_pem(&m) {
                    assert_clean(&e);
                }
                let _ = jwk_public_key_pem(&m);
            }
        }
    }
}

// ---- PEM ------------------------------------------------------------------------------

struct Chain {
    root: String,
    intermediate: String,
    leaf: String,
    leaf_key: String,
}

fn chain() -> Chain {
    let ca = |name: &str| {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p
    };
    let root = rcgen::CertifiedIssuer::self_signed(ca("root"), rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let mut p = ca("intermediate");
    p.use_authority_key_identifier_extension = true;
    let intermediate =
        rcgen::CertifiedIssuer::signed_by(p, rcgen::KeyPair::generate().unwrap(), &root).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["leaf.example".to_string()]).unwrap();
    // A subject key id on the leaf too (ESO's chain matching compares key ids; Go's
    // bytes.Equal(nil, nil) would make a leaf without one the "parent" of a root without
    // an authority key id).
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    let leaf = p.signed_by(&leaf_key, &intermediate).unwrap();
    Chain {
        root: root.pem(),
        intermediate: intermediate.pem(),
        leaf: leaf.pem(),
        leaf_key: leaf_key.serialize_pem(),
    }
}

fn filter(kind: &str, input: &str) -> Result<String, PkiError> {
    filter_pem(kind.as_bytes(), input.as_bytes(), 1 << 20)
        .map(|out| String::from_utf8(out.to_vec()).unwrap())
}

#[test]
fn filter_pem_eso_cases() {
    let c = chain();
    let (cert, key, other) = (&c.leaf, &c.leaf_key, &c.intermediate);
    assert_eq!(
        filter("CERTIFICATE", &format!("{cert}{key}")).unwrap(),
        *cert
    );
    assert_eq!(
        filter("certificate", &format!("{key}{cert}")).unwrap(),
        *cert
    );
    assert_eq!(
        filter("CERTIFICATE", &format!("{key}{cert}{key}{other}")).unwrap(),
        format!("{cert}{other}")
    );
    assert_eq!(
        filter("private key", &format!("{key}{cert}")).unwrap(),
        *key
    );
    assert_eq!(
        filter("PRIVATE KEY", &format!("{cert}{key}some ---junk---")).unwrap(),
        *key
    );
    assert_eq!(
        filter(
            "PRIVATE KEY",
            &format!("some junk{cert}{key}some ---junk---")
        )
        .unwrap(),
        *key
    );
    // Junk glued to the BEGIN line of the key: the key is not found.
    assert_eq!(
        filter("PRIVATE KEY", &format!("{cert}some junk{key}")),
        Err(PkiError::Junk)
    );
    assert_eq!(filter("PRIVATE KEY", "---junk---"), Err(PkiError::Junk));
    assert_eq!(
        PkiError::Junk.to_string(),
        "error filtering pem: found junk"
    );
    // Nothing of that type but only PEM, or nothing at all: empty, no error.
    assert_eq!(filter("PUBLIC KEY", &format!("{cert}{key}")).unwrap(), "");
    assert_eq!(filter("CERTIFICATE", "").unwrap(), "");
}

#[test]
fn filter_pem_reencodes_as_go() {
    // CRLF, short lines, spaces and tabs, headers (Proc-Type first, then by key): the
    // block comes out as Go's pem.Encode writes it.
    let input = "text before\r\n-----BEGIN RSA PRIVATE KEY-----\r\nZ: last\r\nDEK-Info: AES-128-CBC,00\r\nProc-Type: 4,ENCRYPTED\r\n\r\nAAEC AwQF\r\n\tBgcICQ==\r\n-----END RSA PRIVATE KEY-----  \r\ntrailer";
    assert_eq!(
        filter("RSA PRIVATE KEY", input).unwrap(),
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\nZ: last\n\nAAECAwQFBgcICQ==\n-----END RSA PRIVATE KEY-----\n"
    );
    // Long bodies are cut into lines of 64; an empty block stays empty.
    let raw: Vec<u8> = (0..=255u8).collect();
    let one_line = base64::engine::general_purpose::STANDARD.encode(&raw);
    let out = filter(
        "X",
        &format!("-----BEGIN X-----\n{one_line}\n-----END X-----\n"),
    )
    .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2 + one_line.len().div_ceil(64));
    assert!(lines[1..lines.len() - 1].iter().all(|l| l.len() <= 64));
    assert_eq!(
        filter("X", "-----BEGIN X-----\n-----END X-----\n").unwrap(),
        "-----BEGIN X-----\n-----END X-----\n"
    );
    // A block whose body is not base64, or whose END does not match, is skipped.
    assert_eq!(
        filter(
            "X",
            "-----BEGIN X-----\nnot base64!\n-----END X-----\n-----BEGIN X-----\nAA==\n-----END Y-----\n"
        ),
        Err(PkiError::Junk)
    );
}

#[test]
fn filter_pem_is_bounded_and_linear_on_hostile_input() {
    // Many BEGIN lines and one END far away: Go's decoder retries from every BEGIN.
    let mut input = "-----BEGIN X-----\nAAAA\n".repeat(40_000);
    input.push_str("-----END X-----\n");
    let start = std::time::Instant::now();
    let _ = filter("X", &input);
    let mut input = "-----BEGIN X-----\n".repeat(50_000);
    input.push_str("AAAA\n-----END X-----\n");
    let _ = filter("X", &input);
    let input = "\n-----BEGIN ".repeat(80_000);
    let _ = filter("X", &input);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // The result is capped.
    let c = chain();
    let many = c.leaf.repeat(10);
    assert_eq!(
        filter_pem(b"CERTIFICATE", many.as_bytes(), c.leaf.len() * 3),
        Err(PkiError::TooLarge(c.leaf.len() * 3))
    );
}

fn chain_filter(kind: &str, parts: &[&str]) -> Result<String, PkiError> {
    filter_cert_chain(kind.as_bytes(), parts.concat().as_bytes(), 1 << 20)
        .map(|out| String::from_utf8(out).unwrap())
}

#[test]
fn filter_cert_chain_eso_cases() {
    let c = chain();
    let (leaf, int, root) = (c.leaf.as_str(), c.intermediate.as_str(), c.root.as_str());
    // ESO's TestFilterCertChain, case by case.
    assert_eq!(chain_filter("leaf", &[]), Err(PkiError::NoLeaf));
    assert_eq!(
        chain_filter("leaf", &[leaf, &c.leaf_key]),
        Err(PkiError::Certificate)
    );
    assert_eq!(chain_filter("leaf", &[leaf]).unwrap(), leaf);
    assert_eq!(chain_filter("leaf", &[leaf, int]).unwrap(), leaf);
    assert_eq!(chain_filter("leaf", &[root]).unwrap(), "");
    assert_eq!(chain_filter("leaf", &[leaf, int, root]).unwrap(), leaf);
    assert_eq!(chain_filter("intermediate", &[leaf]).unwrap(), "");
    assert_eq!(chain_filter("intermediate", &[leaf, int]).unwrap(), int);
    assert_eq!(
        chain_filter("intermediate", &[leaf, int, root]).unwrap(),
        int
    );
    assert_eq!(chain_filter("root", &[leaf]).unwrap(), "");
    assert_eq!(chain_filter("root", &[root]).unwrap(), root);
    assert_eq!(chain_filter("root", &[leaf, int, root]).unwrap(), root);
    // Any order in, leaf → root out.
    assert_eq!(chain_filter("root", &[root, leaf, int]).unwrap(), root);
    assert_eq!(
        chain_filter("intermediate", &[int, root, leaf]).unwrap(),
        int
    );
    // Two unrelated leaves.
    let other = chain();
    assert_eq!(
        chain_filter("leaf", &[leaf, &other.leaf]),
        Err(PkiError::Disjunct)
    );
    // Unknown type: an error (ESO returns "").
    assert_eq!(chain_filter("Leaf", &[leaf]), Err(PkiError::CertType));
    // Not PEM at all, or garbage in a block.
    assert_eq!(chain_filter("leaf", &["S3CRET"]), Err(PkiError::NoLeaf));
    let e = chain_filter(
        "root",
        &["-----BEGIN CERTIFICATE-----\nUzNDUkVU\n-----END CERTIFICATE-----\n"],
    );
    assert_eq!(e, Err(PkiError::Certificate));
}

#[test]
fn cert_sans_in_go_order() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let ia5 = |s: &str| rcgen::string::Ia5String::try_from(s).unwrap();
    p.subject_alt_names = vec![
        rcgen::SanType::URI(ia5("https://example.com/x")),
        rcgen::SanType::IpAddress("192.168.1.10".parse().unwrap()),
        rcgen::SanType::Rfc822Name(ia5("admin@example.com")),
        rcgen::SanType::DnsName(ia5("example.com")),
        rcgen::SanType::IpAddress("2001:db8::1".parse().unwrap()),
        rcgen::SanType::IpAddress("::ffff:10.0.0.1".parse().unwrap()),
        rcgen::SanType::DnsName(ia5("www.example.com")),
    ];
    let pem = p.self_signed(&key).unwrap().pem();
    let want = [
        "example.com",
        "www.example.com",
        "192.168.1.10",
        "2001:db8::1",
        "10.0.0.1",
        "admin@example.com",
        "https://example.com/x",
    ];
    assert_eq!(cert_sans(pem.as_bytes()).unwrap(), want);
    assert_eq!(
        cert_sans(format!("some junk\n{pem}").as_bytes()).unwrap(),
        want
    );
    // No SAN extension: an empty list.
    let bare = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem();
    assert!(cert_sans(bare.as_bytes()).unwrap().is_empty());
    assert_eq!(cert_sans(b"not a pem"), Err(PkiError::NoPem));
    assert_eq!(cert_sans(b""), Err(PkiError::NoPem));
    // The first block must be a certificate.
    let e = cert_sans(key.serialize_pem().as_bytes()).unwrap_err();
    assert!(matches!(e, PkiError::San(_)));
    assert_eq!(
        e.to_string(),
        "failed to parse certificate: not an X.509 certificate"
    );
    // The DER check reads what rustls-pki-types reads.
    assert!(CertificateDer::from_pem_slice(pem.as_bytes()).is_ok());
}

// ---- through the engine -----------------------------------------------------------------

fn render(tpl: &str, data: &[(&str, &str)]) -> Result<String, TemplateError> {
    let data: BTreeMap<String, Vec<u8>> = data
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    Engine::new(TemplateSettings::default())
        .unwrap()
        .render("tls.key", tpl, &data)
        .map(|out| String::from_utf8(out).unwrap())
}

#[test]
fn template_functions_render() {
    let jwk = rsa_private_jwk();
    assert_eq!(
        render("{{ .jwk | jwkPrivateKeyPem }}", &[("jwk", &jwk)]).unwrap(),
        RSA_PRIVATE_PEM
    );
    assert_eq!(
        render("{{ .jwk | jwkPublicKeyPem }}", &[("jwk", &ec_public_jwk())]).unwrap(),
        EC_PUBLIC_PEM
    );
    let c = chain();
    let bundle = format!("{}{}{}{}", c.leaf_key, c.leaf, c.intermediate, c.root);
    assert_eq!(
        render(
            // filterCertChain reads every block as a certificate: the key is filtered out first.
            r#"{{ .tls | filterPEM "PRIVATE KEY" }}{{ .tls | filterPEM "CERTIFICATE" | filterCertChain "intermediate" }}"#,
            &[("tls", &bundle)]
        )
        .unwrap(),
        format!("{}{}", c.leaf_key, c.intermediate)
    );
    assert_eq!(
        render(
            r#"{{ range $i, $s := .crt | certSANs }}{{ $i }}={{ $s }};{{ end }}"#,
            &[("crt", &c.leaf)]
        )
        .unwrap(),
        "0=leaf.example;"
    );
    // A JWK from a JSON secret, through b64dec as ESO users write it.
    let b64 = base64::engine::general_purpose::STANDARD.encode(okp_private_jwk());
    assert_eq!(
        render(
            "{{ .k | b64dec | jwkPrivateKeyPem | b64enc }}",
            &[("k", &b64)]
        )
        .unwrap(),
        base64::engine::general_purpose::STANDARD.encode(OKP_PRIVATE_PEM)
    );
}

#[test]
fn template_errors_hold_no_key_material() {
    let public_only = rsa_public_jwk();
    let e = render("{{ .jwk | jwkPrivateKeyPem }}", &[("jwk", &public_only)]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unable to execute template at key tls.key: error calling jwkPrivateKeyPem: the JWK holds no private key (member \"d\" is missing)"
    );
    let cases = [
        (
            "{{ .v | jwkPrivateKeyPem }}",
            format!(r#"{{"kty":"S3CRET","d":"{EC_D}"}}"#),
        ),
        (
            "{{ .v | jwkPublicKeyPem }}",
            format!(r#"{{"kty":"EC","crv":"P-256","x":"{EC_D}","y":"{EC_X}"}}"#),
        ),
        (
            "{{ .v | jwkPrivateKeyPem }}",
            ec_private_jwk().replace(EC_D, OKP_D),
        ),
        (
            "{{ .v | jwkPrivateKeyPem }}",
            format!("{{\"d\":\"{EC_D}\" S3CRET"),
        ),
        ("{{ filterPEM \"X\" .v }}", format!("S3CRET {EC_D}")),
        ("{{ filterCertChain .v .v }}", EC_D.to_string()),
        (
            "{{ filterCertChain \"leaf\" .v }}",
            format!("-----BEGIN C-----\n{EC_D}=\n-----END C-----\n"),
        ),
        (
            "{{ .v | certSANs }}",
            format!("-----BEGIN C-----\n{EC_D}=\n-----END C-----\n"),
        ),
        ("{{ .v | certSANs }}", format!("S3CRET{EC_D}")),
    ];
    for (tpl, v) in &cases {
        let e = render(tpl, &[("v", v)]).unwrap_err().to_string();
        for m in key_material() {
            assert!(!e.contains(&m), "{tpl}: {e}");
        }
        assert!(
            e.starts_with("unable to execute template at key tls.key: error calling "),
            "{e}"
        );
    }
    // PKCS#12 stays refused at parse time.
    let e = render("{{ .v | pkcs12key }}", &[("v", "x")]).unwrap_err();
    assert!(
        e.to_string()
            .contains("function \"pkcs12key\" is not supported"),
        "{e}"
    );
}

#[test]
fn jwk_calls_are_charged_to_the_work_budget() {
    // Each key check costs like hashing 256 KiB: a loop of them stops at the work limit.
    let mut settings = TemplateSettings::default();
    settings.limits.max_work = 4 * 1024 * 1024;
    let engine = Engine::new(settings).unwrap();
    let data: BTreeMap<String, Vec<u8>> = [("k".to_string(), ec_private_jwk().into_bytes())].into();
    let e = engine
        .render(
            "k",
            "{{ range 100 }}{{ $.k | jwkPrivateKeyPem }}{{ end }}",
            &data,
        )
        .unwrap_err();
    assert!(e.to_string().contains("work limit"), "{e}");
    assert!(
        engine
            .render(
                "k",
                "{{ range 10 }}{{ $.k | jwkPrivateKeyPem }}{{ end }}",
                &data
            )
            .is_ok()
    );
}

#[test]
fn pem_encoding_matches_its_length() {
    let mut headers = BTreeMap::new();
    headers.insert(&b"Proc-Type"[..], &b"4,ENCRYPTED"[..]);
    headers.insert(&b"A"[..], &b""[..]);
    for n in [0usize, 1, 47, 48, 49, 96, 1000] {
        let der = vec![7u8; n];
        for h in [&BTreeMap::new(), &headers] {
            let mut out = Vec::new();
            pem_encode(&mut out, b"T", h, &der);
            assert_eq!(out.len(), pem_len(b"T", h, &der), "{n}");
            let (block, _) = Decoder::new(&out).decode(0).unwrap();
            assert_eq!(&block.der[..], &der[..]);
            assert_eq!(block.headers.len(), h.len());
        }
    }
}
