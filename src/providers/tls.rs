//! HTTP clients for providers: rustls with the aws-lc-rs provider, trusting either the
//! store's `caBundle` or the webpki roots, with the settings timeout on every call.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Why a client could not be built (messages are value-free).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientBuildError {
    /// `caBundle` is not base64.
    #[error("caBundle is not valid base64")]
    CaBase64,
    /// `caBundle` holds no usable PEM certificate.
    #[error("caBundle holds no valid PEM certificate")]
    CaPem,
    /// The client certificate is not PEM.
    #[error("the client certificate holds no valid PEM certificate")]
    ClientCert,
    /// The client key is not a PEM private key matching the certificate.
    #[error("the client key is not a PEM private key of the client certificate")]
    ClientKey,
    /// rustls or reqwest refused the configuration.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Decodes ESO's `caBundle` (base64 of a PEM bundle) into a root store.
/// Raw PEM is accepted as well, since hand-written YAML often carries it unencoded.
pub fn roots_from_ca_bundle(ca_bundle: &str) -> Result<RootCertStore, ClientBuildError> {
    let trimmed = ca_bundle.trim();
    let pem = if trimmed.starts_with("-----BEGIN") {
        trimmed.as_bytes().to_vec()
    } else {
        let compact: String = trimmed.chars().filter(|c| !c.is_whitespace()).collect();
        STANDARD
            .decode(compact)
            .map_err(|_| ClientBuildError::CaBase64)?
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|_| ClientBuildError::CaPem)?;
        roots.add(cert).map_err(|_| ClientBuildError::CaPem)?;
    }
    if roots.is_empty() {
        return Err(ClientBuildError::CaPem);
    }
    Ok(roots)
}

/// Builds the one shared client of a provider.
pub fn http_client(
    ca_bundle: Option<&str>,
    timeout: Duration,
) -> Result<reqwest::Client, ClientBuildError> {
    http_client_with_identity(ca_bundle, None, timeout)
}

/// [`http_client`], presenting a client certificate when `identity` (PEM certificate
/// chain, PEM private key) is given.
pub fn http_client_with_identity(
    ca_bundle: Option<&str>,
    identity: Option<(&[u8], &[u8])>,
    timeout: Duration,
) -> Result<reqwest::Client, ClientBuildError> {
    let roots = match ca_bundle {
        Some(bundle) => roots_from_ca_bundle(bundle)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientBuildError::Client(e.to_string()))?
    .with_root_certificates(roots);
    let mut tls = match identity {
        None => tls.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let certs = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or(ClientBuildError::ClientCert)?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|_| ClientBuildError::ClientKey)?;
            tls.with_client_auth_cert(certs, key)
                .map_err(|_| ClientBuildError::ClientKey)?
        }
    };
    // A preconfigured rustls config gets no ALPN from reqwest; offer what it speaks.
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        // Redirects would carry the token header to wherever the backend points.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ClientBuildError::Client(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["vault.local".to_string()]).unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn ca_bundle_base64_or_raw_pem() {
        let pem = pem();
        assert_eq!(
            roots_from_ca_bundle(&STANDARD.encode(&pem)).unwrap().len(),
            1
        );
        assert_eq!(roots_from_ca_bundle(&pem).unwrap().len(), 1);
        assert_eq!(
            roots_from_ca_bundle("%%%").err(),
            Some(ClientBuildError::CaBase64)
        );
        assert_eq!(
            roots_from_ca_bundle(&STANDARD.encode("not a pem")).err(),
            Some(ClientBuildError::CaPem)
        );
    }

    #[test]
    fn builds_clients() {
        assert!(http_client(None, Duration::from_secs(1)).is_ok());
        assert!(http_client(Some(&STANDARD.encode(pem())), Duration::from_secs(1)).is_ok());
    }
}
