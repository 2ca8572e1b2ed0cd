//! The authenticator's tests that span modules: generated keys and static key sets
//! (`keys`), JWKS fetched from a local HTTPS server (`server`), OIDC federations' discovery
//! and claim rules (`oidc`), SPIFFE federations' JWT-SVIDs and bundles (`spiffe`), third-party token vectors (`vectors`), X.509-SVIDs (`x509svid`), with shared keys and
//! claims (`support`). Unit tests of one module stay beside its code.

mod keys;
mod oidc;
mod server;
mod spiffe;
pub(crate) mod support;
mod vectors;
mod x509svid;

/// `check_token_shape` accepts exactly the base64url alphabet (RFC 4648 §5) in every part,
/// at every position (its scan has no early exit, so the last byte counts as the first).
#[test]
fn token_shape_accepts_exactly_the_base64url_alphabet() {
    use super::{AuthnError, check_token_shape};
    for b in 0..=255u8 {
        let expected = b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        let c = b as char;
        // A byte in each part, first and last (non-ASCII as its UTF-8 bytes).
        for token in [
            format!("{c}aaaa.bbbb.cccc"),
            format!("aaaa.bbbb{c}.cccc"),
            format!("aaaa.bbbb.cccc{c}"),
            format!("aaaa.bbbb.{}{c}", "d".repeat(100)),
        ] {
            if b == b'.' {
                continue;
            }
            let got = check_token_shape(&token, 8192);
            assert_eq!(got.is_ok(), expected, "byte {b:#04x} in {token:?}: {got:?}");
            if !expected {
                assert!(matches!(got, Err(AuthnError::Malformed(_))), "{got:?}");
            }
        }
    }
    assert!(
        check_token_shape("aaaa.bbbb.", 8192).is_ok(),
        "an empty signature part is a shape (alg none is refused later)"
    );
}
