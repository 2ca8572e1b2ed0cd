//! `KubernetesFederation` specs turned into validated, ready-to-use federations.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Url;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::keys::{JwksError, VerifyKey, parse_jwks, parse_public_key_pems};
use crate::resources::{ClientCaPolicy, KubernetesFederationSpec};

/// Most static keys (`jwks` and `publicKeys` together; the same bound as the default for
/// fetched ones).
const MAX_STATIC_KEYS: usize = 64;
/// Largest `publicKeys` entry (an 8192-bit RSA key in PEM is under 1.5 KiB).
const MAX_PUBLIC_KEY_PEM_BYTES: usize = 64 * 1024;
/// Most certificates a CA bundle may hold.
pub(crate) const MAX_BUNDLE_CERTS: usize = 64;
/// Largest base64 CA bundle we decode.
pub(crate) const MAX_BUNDLE_B64_BYTES: usize = 512 * 1024;

/// Why a `KubernetesFederation` spec is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    /// `metadata.name` is empty.
    #[error("federation name is empty")]
    EmptyName,
    /// `url` does not parse.
    #[error("url is not a valid URL: {0}")]
    BadUrl(String),
    /// `url` is not `https` (keys fetched in clear text could be swapped on the wire).
    #[error("url must use https (keys fetched over plain http could be forged)")]
    InsecureUrl,
    /// `url` has a user name or password (we never send credentials to the key endpoint).
    #[error("url must not contain credentials")]
    UrlWithCredentials,
    /// `url` has a query or fragment (the key paths are appended to it).
    #[error("url must not have a query or fragment")]
    UrlWithQuery,
    /// `issuer` is set but empty.
    #[error("issuer is empty")]
    EmptyIssuer,
    /// One of `audiences` is empty.
    #[error("audiences must not contain an empty string")]
    EmptyAudience,
    /// `caBundle` is not base64.
    #[error("caBundle is not valid base64")]
    CaBundleBase64,
    /// `caBundle` is not a PEM bundle of X.509 certificates.
    #[error("caBundle is not a PEM certificate bundle: {0}")]
    CaBundlePem(String),
    /// `jwks` is not a usable JWKS document.
    #[error("jwks is not a usable JWKS document: {0}")]
    BadStaticJwks(String),
    /// An entry of `publicKeys` is not PEM public keys we can use (index, reason).
    #[error("publicKeys[{0}] is not usable: {1}")]
    BadPublicKey(usize, String),
    /// `jwks` and `publicKeys` together hold more keys than allowed.
    #[error("jwks and publicKeys hold {0} keys, more than the limit of {MAX_STATIC_KEYS}")]
    TooManyStaticKeys(usize),
    /// Neither `url` nor `jwks` nor `publicKeys`: no keys could ever be had.
    #[error("neither url nor jwks nor publicKeys is set: no keys to verify tokens with")]
    NoKeySource,
    /// Static keys (`jwks`, `publicKeys`) without `issuer` or `url`: the expected `iss` is unknown.
    #[error(
        "static keys (jwks, publicKeys) without url need issuer: the expected token issuer is unknown"
    )]
    NoIssuer,
}

/// A validated `KubernetesFederation`: one trusted client cluster.
#[derive(Clone)]
pub struct Federation {
    pub(crate) name: String,
    spec: KubernetesFederationSpec,
    pub(crate) url: Option<Url>,
    /// `url` as written: the expected `iss` when neither `issuer` nor discovery gives one
    /// (the parsed form may gain a trailing `/`).
    pub(crate) url_raw: Option<String>,
    pub(crate) issuer: Option<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) ca_bundle: Vec<CertificateDer<'static>>,
    pub(crate) client_ca_policy: ClientCaPolicy,
    pub(crate) static_keys: Option<Arc<Vec<VerifyKey>>>,
    /// `spec.allowLegacyTokens`: accept secret-based tokens without `exp`/`iat`.
    pub(crate) allow_legacy_tokens: bool,
}

impl Federation {
    /// Validates a spec. Everything that can be checked without the network is checked here,
    /// so a bad resource is reported at load instead of failing requests later.
    pub fn from_spec(
        name: &str,
        spec: &KubernetesFederationSpec,
    ) -> Result<Federation, FederationError> {
        if name.is_empty() {
            return Err(FederationError::EmptyName);
        }
        let url = spec
            .url
            .as_deref()
            .map(|u| parse_url(u.trim()))
            .transpose()?;
        let issuer = match spec.issuer.as_deref() {
            Some("") => return Err(FederationError::EmptyIssuer),
            other => other.map(str::to_owned),
        };
        if spec.audiences.iter().any(String::is_empty) {
            return Err(FederationError::EmptyAudience);
        }
        let ca_bundle = match spec.ca_bundle.as_deref() {
            Some(b64) => parse_ca_bundle_b64(b64).map_err(|e| match e {
                CaParseError::Base64 => FederationError::CaBundleBase64,
                CaParseError::Pem(reason) => FederationError::CaBundlePem(reason),
            })?,
            None => Vec::new(),
        };
        let mut keys = Vec::new();
        if let Some(doc) = spec.jwks.as_deref() {
            let jwks = parse_jwks(doc.as_bytes(), MAX_STATIC_KEYS).map_err(|e| match e {
                JwksError::Malformed(m) => FederationError::BadStaticJwks(m),
                other => FederationError::BadStaticJwks(other.to_string()),
            })?;
            if jwks.is_empty() {
                return Err(FederationError::BadStaticJwks(
                    "no usable signing key (RSA, EC P-256 or P-384 with use=sig)".into(),
                ));
            }
            keys.extend(jwks);
        }
        for (i, pem) in spec.public_keys.iter().enumerate() {
            if pem.len() > MAX_PUBLIC_KEY_PEM_BYTES {
                return Err(FederationError::BadPublicKey(i, "too large".into()));
            }
            let parsed =
                parse_public_key_pems(pem).map_err(|e| FederationError::BadPublicKey(i, e))?;
            keys.extend(parsed);
            if keys.len() > MAX_STATIC_KEYS {
                return Err(FederationError::TooManyStaticKeys(keys.len()));
            }
        }
        let static_keys = (!keys.is_empty()).then(|| Arc::new(keys));
        if url.is_none() && static_keys.is_none() {
            return Err(FederationError::NoKeySource);
        }
        if static_keys.is_some() && url.is_none() && issuer.is_none() {
            return Err(FederationError::NoIssuer);
        }
        // ESE trusts the client's CA; once an operator pins a bundle, default to the safe choice.
        let client_ca_policy = spec.client_ca_policy.unwrap_or(if ca_bundle.is_empty() {
            ClientCaPolicy::Trust
        } else {
            ClientCaPolicy::MustMatch
        });
        Ok(Federation {
            name: name.to_owned(),
            spec: spec.clone(),
            url,
            url_raw: spec.url.as_ref().map(|u| u.trim().to_owned()),
            issuer,
            audiences: spec.audiences.clone(),
            ca_bundle,
            client_ca_policy,
            static_keys,
            allow_legacy_tokens: spec.allow_legacy_tokens,
        })
    }

    /// The federation's name (`metadata.name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Accepted but risky settings, for the load log and the federation's status.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.audiences.is_empty() {
            w.push("no audiences: any aud is accepted".to_owned());
        }
        if self.allow_legacy_tokens {
            w.push(
                "allowLegacyTokens: secret-based tokens never expire; prefer projected tokens"
                    .into(),
            );
        }
        if self.static_keys.is_none() && self.client_ca_policy == ClientCaPolicy::Trust {
            w.push(
                "clientCAPolicy Trust: a CA sent by a client is trusted to fetch this \
                 federation's keys (set caBundle to pin it)"
                    .to_owned(),
            );
        }
        if self.static_keys.is_some() && self.url.is_some() {
            w.push(
                "static keys (jwks/publicKeys) are set: keys are not fetched from url".to_owned(),
            );
        }
        if self.static_keys.is_none() && self.issuer.is_none() {
            w.push(
                "no issuer: the expected iss is taken from the discovery document (or url)"
                    .to_owned(),
            );
        }
        w
    }

    /// The expected `iss` when it is known without fetching: `issuer`, or `url` for static keys.
    pub(crate) fn configured_issuer(&self) -> Option<&str> {
        match (&self.issuer, &self.static_keys) {
            (Some(i), _) => Some(i),
            (None, Some(_)) => self.url_raw.as_deref(),
            (None, None) => None,
        }
    }

    /// Whether keys are fetched (no static `jwks`).
    pub(crate) fn fetches(&self) -> bool {
        self.static_keys.is_none()
    }
}

impl PartialEq for Federation {
    /// Everything else is derived from the name and the spec.
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.spec == other.spec
    }
}

impl fmt::Debug for Federation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Federation")
            .field("name", &self.name)
            .field("url", &self.url.as_ref().map(Url::as_str))
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("ca_bundle_certs", &self.ca_bundle.len())
            .field("client_ca_policy", &self.client_ca_policy)
            .field("static_keys", &self.static_keys.as_ref().map(|k| k.len()))
            .field("allow_legacy_tokens", &self.allow_legacy_tokens)
            .finish()
    }
}

fn parse_url(raw: &str) -> Result<Url, FederationError> {
    let url = Url::parse(raw).map_err(|e| FederationError::BadUrl(e.to_string()))?;
    if url.scheme() != "https" {
        return Err(FederationError::InsecureUrl);
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(FederationError::BadUrl("no host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FederationError::UrlWithCredentials);
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(FederationError::UrlWithQuery);
    }
    Ok(url)
}

/// Why a base64 PEM bundle did not parse.
#[derive(Debug)]
pub(crate) enum CaParseError {
    Base64,
    Pem(String),
}

/// Decodes base64 of a PEM bundle into its certificates (at least one, each a parseable X.509
/// certificate usable as a trust anchor).
pub(crate) fn parse_ca_bundle_b64(b64: &str) -> Result<Vec<CertificateDer<'static>>, CaParseError> {
    if b64.len() > MAX_BUNDLE_B64_BYTES {
        return Err(CaParseError::Pem("bundle too large".into()));
    }
    let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let pem = STANDARD.decode(compact).map_err(|_| CaParseError::Base64)?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&pem) {
        let cert = item.map_err(|e| CaParseError::Pem(e.to_string()))?;
        if x509_parser::parse_x509_certificate(&cert).is_err() {
            return Err(CaParseError::Pem("a certificate does not parse".into()));
        }
        let mut probe = rustls::RootCertStore::empty();
        probe
            .add(cert.clone())
            .map_err(|e| CaParseError::Pem(format!("not usable as a trust anchor: {e}")))?;
        certs.push(cert);
        if certs.len() > MAX_BUNDLE_CERTS {
            return Err(CaParseError::Pem("too many certificates".into()));
        }
    }
    if certs.is_empty() {
        return Err(CaParseError::Pem("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KubernetesFederationSpec {
        KubernetesFederationSpec {
            url: Some("https://kube.example.com:6443".into()),
            ..Default::default()
        }
    }

    fn ca_b64() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        STANDARD.encode(cert.pem())
    }

    #[test]
    fn valid_specs_and_defaults() {
        let f = Federation::from_spec("alpha", &spec()).unwrap();
        assert_eq!(f.name(), "alpha");
        assert_eq!(f.client_ca_policy, ClientCaPolicy::Trust);
        assert!(f.fetches());
        let w = f.warnings();
        assert!(w.iter().any(|m| m.contains("no audiences")), "{w:?}");
        assert!(w.iter().any(|m| m.contains("Trust")), "{w:?}");

        let mut s = spec();
        s.ca_bundle = Some(ca_b64());
        s.audiences = vec!["esi".into()];
        let f = Federation::from_spec("beta", &s).unwrap();
        assert_eq!(f.client_ca_policy, ClientCaPolicy::MustMatch);
        assert_eq!(f.ca_bundle.len(), 1);
        assert!(!f.warnings().iter().any(|m| m.contains("no audiences")));
        assert_eq!(f, f.clone());
        assert_ne!(f, Federation::from_spec("gamma", &s).unwrap());
        let dbg = format!("{f:?}");
        assert!(dbg.contains("beta") && dbg.contains("ca_bundle_certs"));
    }

    #[test]
    fn invalid_specs() {
        let cases: Vec<(KubernetesFederationSpec, FederationError)> = vec![
            (
                KubernetesFederationSpec::default(),
                FederationError::NoKeySource,
            ),
            (
                KubernetesFederationSpec {
                    url: Some("not a url".into()),
                    ..Default::default()
                },
                FederationError::BadUrl("relative URL without a base".into()),
            ),
            (
                KubernetesFederationSpec {
                    url: Some("http://k.example".into()),
                    ..Default::default()
                },
                FederationError::InsecureUrl,
            ),
            (
                KubernetesFederationSpec {
                    url: Some("https://u:p@k.example".into()),
                    ..Default::default()
                },
                FederationError::UrlWithCredentials,
            ),
            (
                KubernetesFederationSpec {
                    url: Some("https://k.example/?a=b".into()),
                    ..Default::default()
                },
                FederationError::UrlWithQuery,
            ),
            (
                KubernetesFederationSpec {
                    issuer: Some(String::new()),
                    ..spec()
                },
                FederationError::EmptyIssuer,
            ),
            (
                KubernetesFederationSpec {
                    audiences: vec![String::new()],
                    ..spec()
                },
                FederationError::EmptyAudience,
            ),
            (
                KubernetesFederationSpec {
                    ca_bundle: Some("!!!".into()),
                    ..spec()
                },
                FederationError::CaBundleBase64,
            ),
            (
                KubernetesFederationSpec {
                    ca_bundle: Some(STANDARD.encode("hello")),
                    ..spec()
                },
                FederationError::CaBundlePem("no CERTIFICATE block".into()),
            ),
            (
                KubernetesFederationSpec {
                    jwks: Some("{".into()),
                    ..spec()
                },
                FederationError::BadStaticJwks(
                    "EOF while parsing an object at line 1 column 1".into(),
                ),
            ),
            (
                KubernetesFederationSpec {
                    jwks: Some(r#"{"keys":[]}"#.into()),
                    ..spec()
                },
                FederationError::BadStaticJwks(
                    "no usable signing key (RSA, EC P-256 or P-384 with use=sig)".into(),
                ),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(Federation::from_spec("x", &s).unwrap_err(), want, "{s:?}");
        }
        assert_eq!(
            Federation::from_spec("", &spec()).unwrap_err(),
            FederationError::EmptyName
        );
        let jwks = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let s = KubernetesFederationSpec {
            jwks: Some(jwks.into()),
            ..Default::default()
        };
        assert_eq!(
            Federation::from_spec("x", &s).unwrap_err(),
            FederationError::NoIssuer
        );
        let s = KubernetesFederationSpec {
            jwks: Some(jwks.into()),
            issuer: Some("iss".into()),
            ..Default::default()
        };
        let f = Federation::from_spec("x", &s).unwrap();
        assert!(!f.fetches());
        // Error messages never echo the URL (it could carry credentials).
        let e = Federation::from_spec(
            "x",
            &KubernetesFederationSpec {
                url: Some("https://u:secretpw@k".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(!e.to_string().contains("secretpw"));
    }
}
