//! ESO's `SSHKey` generator: a fresh SSH key pair per call.
//!
//! ```yaml
//! spec:
//!   keyType: rsa        # rsa (default) | ecdsa | ed25519
//!   keySize: 4096       # rsa: 2048 (default), 3072, 4096; ecdsa: 256 (default), 384, 521
//!   comment: "app@host" # set on the public key
//! ```
//! Answers ESO's keys: `privateKey` (OpenSSH PEM) and `publicKey` (authorized_keys line).
//! Key generation is CPU work (RSA takes seconds), so it runs on the blocking pool.

use std::collections::BTreeMap;

use serde::Deserialize;
use ssh_key::private::{EcdsaKeypair, Ed25519Keypair, KeypairData, RsaKeypair};
use ssh_key::rand_core::OsRng;
use ssh_key::{EcdsaCurve, LineEnding, PrivateKey};

use super::{
    BuildContext, GenerateContext, Generated, Generator, GeneratorConfigError, GeneratorError,
};

const KIND: &str = "SSHKey";
/// Longest comment accepted (it ends up in every authorized_keys line).
const MAX_COMMENT_LEN: usize = 1024;

/// `spec` of an SSHKey generator.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SshKeySpec {
    #[serde(default)]
    key_type: Option<String>,
    #[serde(default)]
    key_size: Option<u32>,
    #[serde(default)]
    comment: Option<String>,
}

/// The validated key type and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeySpec {
    Rsa(usize),
    Ecdsa(EcdsaCurve),
    Ed25519,
}

/// Makes an SSH key pair per call.
#[derive(Debug)]
pub struct SshKeyGenerator {
    key: KeySpec,
    comment: String,
}

impl SshKeyGenerator {
    /// Parses and validates the spec (type and size pairs ESO accepts).
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        spec: &serde_json::Value,
    ) -> Result<Self, GeneratorConfigError> {
        let spec: SshKeySpec = ctx.parse(KIND, spec)?;
        let key = match spec.key_type.as_deref().unwrap_or("rsa") {
            "rsa" | "" => match spec.key_size.unwrap_or(2048) {
                size @ (2048 | 3072 | 4096) => KeySpec::Rsa(size as usize),
                _ => {
                    return Err(ctx.invalid(KIND, "keySize for rsa must be 2048, 3072 or 4096"));
                }
            },
            "ecdsa" => match spec.key_size.unwrap_or(256) {
                256 => KeySpec::Ecdsa(EcdsaCurve::NistP256),
                384 => KeySpec::Ecdsa(EcdsaCurve::NistP384),
                521 => KeySpec::Ecdsa(EcdsaCurve::NistP521),
                _ => return Err(ctx.invalid(KIND, "keySize for ecdsa must be 256, 384 or 521")),
            },
            // ESO ignores keySize for ed25519.
            "ed25519" => KeySpec::Ed25519,
            _ => return Err(ctx.invalid(KIND, "keyType must be rsa, ecdsa or ed25519")),
        };
        let comment = spec.comment.unwrap_or_default();
        if comment.len() > MAX_COMMENT_LEN || comment.chars().any(char::is_control) {
            return Err(ctx.invalid(
                KIND,
                format!(
                    "comment must be at most {MAX_COMMENT_LEN} bytes without control characters"
                ),
            ));
        }
        Ok(SshKeyGenerator { key, comment })
    }
}

/// Generates and encodes one key pair (blocking: RSA key generation is slow).
fn make_key(key: KeySpec, comment: &str) -> Result<BTreeMap<String, String>, GeneratorError> {
    let failed = |_| GeneratorError::Impossible("SSH key generation failed".into());
    let data = match key {
        KeySpec::Rsa(bits) => {
            KeypairData::from(RsaKeypair::random(&mut OsRng, bits).map_err(failed)?)
        }
        KeySpec::Ecdsa(curve) => {
            KeypairData::from(EcdsaKeypair::random(&mut OsRng, curve).map_err(failed)?)
        }
        KeySpec::Ed25519 => KeypairData::from(Ed25519Keypair::random(&mut OsRng)),
    };
    let private = PrivateKey::new(data, comment).map_err(failed)?;
    let private_pem = private.to_openssh(LineEnding::LF).map_err(failed)?;
    let public = private.public_key().to_openssh().map_err(failed)?;
    Ok([
        ("privateKey".to_string(), private_pem.to_string()),
        ("publicKey".to_string(), public),
    ]
    .into())
}

#[async_trait::async_trait]
impl Generator for SshKeyGenerator {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn generate(&self, _ctx: &GenerateContext<'_>) -> Result<Generated, GeneratorError> {
        let (key, comment) = (self.key, self.comment.clone());
        let data = tokio::task::spawn_blocking(move || make_key(key, &comment))
            .await
            .map_err(|_| {
                GeneratorError::Impossible("SSH key generation was interrupted".into())
            })??;
        Ok(Generated::plain(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use ssh_key::{Algorithm, PublicKey};

    fn build(spec: serde_json::Value) -> Result<SshKeyGenerator, GeneratorConfigError> {
        crate::generators::test_support::with_ctx("ns", "ssh", |ctx| {
            SshKeyGenerator::from_spec(ctx, &spec)
        })
    }

    async fn keys(spec: serde_json::Value) -> (PrivateKey, PublicKey, String) {
        let out = build(spec)
            .unwrap()
            .generate(&GenerateContext::default())
            .await
            .unwrap();
        assert!(out.revocation.is_none());
        assert_eq!(
            out.data.keys().collect::<Vec<_>>(),
            ["privateKey", "publicKey"]
        );
        let private = PrivateKey::from_openssh(&out.data["privateKey"]).unwrap();
        let public = PublicKey::from_openssh(&out.data["publicKey"]).unwrap();
        // The two halves belong together.
        assert_eq!(private.public_key().key_data(), public.key_data());
        (private, public, out.data["publicKey"].clone())
    }

    #[tokio::test]
    async fn ed25519_with_comment() {
        let (private, public, line) =
            keys(json!({"keyType": "ed25519", "comment": "app@host"})).await;
        assert_eq!(private.algorithm(), Algorithm::Ed25519);
        assert_eq!(public.comment(), "app@host");
        assert!(line.starts_with("ssh-ed25519 "), "{line}");
        assert!(line.ends_with(" app@host"), "{line}");
    }

    #[tokio::test]
    async fn ecdsa_sizes() {
        for (size, curve) in [
            (256, EcdsaCurve::NistP256),
            (384, EcdsaCurve::NistP384),
            (521, EcdsaCurve::NistP521),
        ] {
            let (private, _, _) = keys(json!({"keyType": "ecdsa", "keySize": size})).await;
            assert_eq!(private.algorithm(), Algorithm::Ecdsa { curve });
        }
    }

    #[tokio::test]
    async fn rsa_default_is_2048() {
        let (private, _, line) = keys(json!({})).await;
        assert!(matches!(private.algorithm(), Algorithm::Rsa { .. }));
        let rsa = private.key_data().rsa().unwrap();
        assert_eq!(rsa.public.n.as_positive_bytes().unwrap().len() * 8, 2048);
        assert!(line.starts_with("ssh-rsa "));
    }

    #[tokio::test]
    async fn keys_differ() {
        let g = build(json!({"keyType": "ed25519"})).unwrap();
        let a = g.generate(&GenerateContext::default()).await.unwrap();
        let b = g.generate(&GenerateContext::default()).await.unwrap();
        assert_ne!(a.data["publicKey"], b.data["publicKey"]);
    }

    #[test]
    fn rejects_bad_specs() {
        for spec in [
            json!({"keyType": "dsa"}),
            json!({"keyType": "rsa", "keySize": 1024}),
            json!({"keyType": "rsa", "keySize": 16384}),
            json!({"keyType": "ecdsa", "keySize": 2048}),
            json!({"comment": "a\nb"}),
            json!({"keySize": "big"}),
        ] {
            assert!(build(spec.clone()).is_err(), "{spec}");
        }
        assert!(build(json!({"keyType": "ed25519", "keySize": 4096})).is_ok());
    }
}
