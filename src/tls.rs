//! TLS for the server: certificates from files (reloaded when they change), or a
//! self-signed CA made at start; optionally client certificates required (mTLS).
//!
//! Client certificates, one of three ways ([`ServerTls`]):
//! - `client_ca` set: required, verified by rustls against that CA bundle (WebPKI, mTLS as a
//!   transport gate; the certificate is no identity and is not handed to requests);
//! - [`ClientAuth::Svid`] (the API server): asked for but optional. The handshake only
//!   proves that the client holds the leaf's private key (its CertificateVerify signature,
//!   checked with the crypto provider's algorithms) and bounds the chain's size; it accepts
//!   any chain, so by itself it authenticates no one. The chain is handed to requests
//!   (`crate::authn::ClientCertificate`) and verified there as an X.509-SVID against the
//!   current `SpiffeFederation` bundles, which change without a new TLS config;
//! - [`ClientAuth::None`] (the webhook): not asked for.
//!
//! Protocols are TLS 1.3 and 1.2 with aws-lc-rs' default suites only: AEAD ciphers
//! (AES-GCM, ChaCha20-Poly1305) with ECDHE key exchange; no CBC, no RSA key exchange.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// TLS setup failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No certificate in the PEM.
    #[error("{0}: no certificate found")]
    NoCertificate(PathBuf),
    /// No private key in the PEM.
    #[error("{0}: no private key found")]
    NoKey(PathBuf),
    /// rustls refused the pair.
    #[error("invalid certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
    /// Certificate generation failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The client CA file holds no usable certificate.
    #[error("{0}: no usable client CA certificate")]
    NoClientCa(PathBuf),
    /// The client certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    ClientVerifier(String),
}

/// How a server without `client_ca` treats client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// Not asked for.
    #[default]
    None,
    /// Asked for, optional; possession proven by the handshake, the chain handed to
    /// requests to be verified as an X.509-SVID (see the module docs).
    Svid,
}

/// A server's TLS files and how it treats client certificates.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The certificate, key and optional client CA.
    pub files: TlsFiles,
    /// Without `files.client_ca`: whether client certificates are asked for (X.509-SVIDs).
    pub client_auth: ClientAuth,
}

impl From<TlsFiles> for ServerTls {
    fn from(files: TlsFiles) -> Self {
        ServerTls {
            files,
            client_auth: ClientAuth::None,
        }
    }
}

impl ServerTls {
    /// Builds the rustls config from the files as they are now.
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        let f = &self.files;
        if f.client_ca.is_none() && self.client_auth == ClientAuth::Svid {
            let (certs, key) = read_pair(&f.cert, &f.key)?;
            return server_config(certs, key, ClientVerifier::Svid);
        }
        f.load()
    }

    /// Whether connections hand the client's certificate chain to requests (only
    /// [`ClientAuth::Svid`] without `client_ca`).
    pub fn hands_client_certificates(&self) -> bool {
        self.files.client_ca.is_none() && self.client_auth == ClientAuth::Svid
    }
}

/// Where the server's TLS material comes from, so it can be read again on change.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it issued.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Builds the rustls config from the files as they are now.
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        server_config_with_client_ca(&self.cert, &self.key, self.client_ca.as_deref())
    }

    /// A cheap fingerprint of the files (length and modification time of each).
    fn stamp(&self) -> Vec<Option<(u64, std::time::SystemTime)>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.len(), m.modified().ok()?)))
            })
            .collect()
    }
}

/// Polls `files` every `interval` and swaps a new config into `target` when they change.
/// A change that does not load (e.g. a key written before its certificate) keeps the
/// current config and is retried on the next change.
pub async fn reload_on_change(
    files: impl Into<ServerTls>,
    target: Arc<arc_swap::ArcSwap<ServerConfig>>,
    interval: std::time::Duration,
) {
    let files: ServerTls = files.into();
    let mut last = files.files.stamp();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = files.files.stamp();
        if now == last {
            continue;
        }
        let f = files.clone();
        match tokio::task::spawn_blocking(move || f.load()).await {
            Ok(Ok(config)) => {
                target.store(Arc::new(config));
                last = now;
                tracing::info!(cert = %files.files.cert.display(), "TLS certificate reloaded");
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "TLS files changed but do not load; keeping the current certificate");
                last = now;
            }
            Err(_) => tracing::error!("TLS reload task failed"),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A rustls server config (TLS 1.2+, aws-lc-rs suites, ALPN h2 and http/1.1) from PEM files.
pub fn server_config_from_files(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    server_config_with_client_ca(cert, key, None)
}

/// Like [`server_config_from_files`]; with `client_ca`, a client certificate issued by one
/// of its CAs is required (clients without one fail the handshake).
pub fn server_config_with_client_ca(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let (certs, key_der) = read_pair(cert, key)?;
    let roots = match client_ca {
        None => ClientVerifier::None,
        Some(path) => {
            let pem = read(path)?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok) {
                roots
                    .add(c)
                    .map_err(|_| TlsError::NoClientCa(path.to_path_buf()))?;
            }
            if roots.is_empty() {
                return Err(TlsError::NoClientCa(path.to_path_buf()));
            }
            ClientVerifier::Ca(roots)
        }
    };
    server_config(certs, key_der, roots)
}

fn read_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    let key_der =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey(key.to_path_buf()))?;
    Ok((certs, key_der))
}

/// Which client certificate verifier a config gets.
enum ClientVerifier {
    None,
    /// Required, issued by one of these CAs.
    Ca(rustls::RootCertStore),
    /// Optional, possession only ([`PossessionOnly`]).
    Svid,
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client: ClientVerifier,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client {
        ClientVerifier::None => builder.with_no_client_auth(),
        ClientVerifier::Svid => builder.with_client_cert_verifier(Arc::new(PossessionOnly {
            algorithms: provider.signature_verification_algorithms,
        })),
        ClientVerifier::Ca(roots) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| TlsError::ClientVerifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Optional client certificates whose chain is verified later, per request (X.509-SVIDs,
/// see the module docs). rustls' `ClientCertVerifier` contract: `verify_client_cert` here
/// accepts any chain within [`crate::authn::MAX_CLIENT_CHAIN_CERTS`] and
/// [`crate::authn::MAX_CLIENT_CHAIN_BYTES`] — which is why a certificate accepted here is
/// never an identity by itself — while the CertificateVerify signature over the handshake
/// is checked with the leaf's public key ([`rustls::crypto::verify_tls13_signature`] and
/// its TLS 1.2 twin), so a client cannot present a certificate whose key it lacks.
#[derive(Debug)]
struct PossessionOnly {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for PossessionOnly {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // No hints: a client offers its certificate whatever its issuer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let bytes = end_entity.len() + intermediates.iter().map(|c| c.len()).sum::<usize>();
        if !crate::authn::chain_within_bounds(1 + intermediates.len(), bytes) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        // Not a verification: the request verifies the chain against the current bundles.
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Files written by [`self_signed`].
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The CA certificate clients should trust.
    pub ca_cert: PathBuf,
    /// The server certificate chain.
    pub cert: PathBuf,
    /// The server key (mode 0600).
    pub key: PathBuf,
}

/// Makes a throwaway CA and a server certificate for `names` (DNS names or IPs), writes
/// them under `dir`, and returns their paths. For development and first runs only.
pub fn self_signed(dir: &Path, names: &[String]) -> Result<SelfSigned, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "esi-server self-signed CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);

    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(names.to_vec())?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "esi-server");
    let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer)?;

    let out = SelfSigned {
        ca_cert: dir.join("ca.crt"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    write(&out.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    write(
        &out.cert,
        format!("{}{}", leaf_cert.pem(), ca_cert.pem()).as_bytes(),
        0o644,
    )?;
    write(&out.key, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    Ok(out)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_material_loads() {
        let dir = tempfile::tempdir().unwrap();
        let s = self_signed(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let cfg = server_config_from_files(&s.cert, &s.key).unwrap();
        assert_eq!(cfg.alpn_protocols.len(), 2);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&s.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn only_aead_suites_with_ecdhe() {
        let dir = tempfile::tempdir().unwrap();
        let s = self_signed(dir.path(), &["localhost".into()]).unwrap();
        let cfg = server_config_from_files(&s.cert, &s.key).unwrap();
        let suites = &cfg.crypto_provider().cipher_suites;
        assert!(!suites.is_empty());
        for suite in suites {
            let name = format!("{:?}", suite.suite());
            assert!(
                name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                "{name}"
            );
            assert!(!name.contains("CBC"), "{name}");
            if name.starts_with("TLS_") && !name.starts_with("TLS13_") {
                assert!(
                    name.starts_with("TLS_ECDHE_"),
                    "no RSA key exchange: {name}"
                );
            }
        }
    }

    #[test]
    fn client_ca_requires_client_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let s = self_signed(dir.path(), &["localhost".into()]).unwrap();
        // The handshake itself is proven end to end (tests/e2e_hostile.rs).
        server_config_with_client_ca(&s.cert, &s.key, Some(&s.ca_cert)).unwrap();
        let err = server_config_with_client_ca(&s.cert, &s.key, Some(&s.key)).unwrap_err();
        assert!(matches!(err, TlsError::NoClientCa(_)), "{err}");
    }

    /// X.509-SVID mode: certificates asked for but optional, chains bounded, none ever
    /// verified here (the request does); `client_ca` keeps its mandatory verification and
    /// hands no chain to requests.
    #[test]
    fn svid_client_auth_is_optional_and_bounded() {
        use rustls::server::danger::ClientCertVerifier;
        let dir = tempfile::tempdir().unwrap();
        let s = self_signed(dir.path(), &["localhost".into()]).unwrap();
        let files = TlsFiles {
            cert: s.cert.clone(),
            key: s.key.clone(),
            client_ca: None,
        };
        let svid = ServerTls {
            files: files.clone(),
            client_auth: ClientAuth::Svid,
        };
        assert!(svid.hands_client_certificates());
        svid.load().unwrap();
        assert!(!ServerTls::from(files.clone()).hands_client_certificates());
        let with_ca = ServerTls {
            files: TlsFiles {
                client_ca: Some(s.ca_cert.clone()),
                ..files
            },
            client_auth: ClientAuth::Svid,
        };
        assert!(!with_ca.hands_client_certificates());
        with_ca.load().unwrap();

        let v = PossessionOnly {
            algorithms: rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms,
        };
        assert!(v.offer_client_auth() && !v.client_auth_mandatory());
        assert!(v.root_hint_subjects().is_empty());
        let leaf = CertificateDer::from_pem_file(&s.cert).unwrap();
        let now = rustls_pki_types::UnixTime::now();
        assert!(v.verify_client_cert(&leaf, &[], now).is_ok());
        let most = vec![leaf.clone(); crate::authn::MAX_CLIENT_CHAIN_CERTS - 1];
        assert!(v.verify_client_cert(&leaf, &most, now).is_ok());
        let too_many = vec![leaf.clone(); crate::authn::MAX_CLIENT_CHAIN_CERTS];
        assert!(v.verify_client_cert(&leaf, &too_many, now).is_err());
        let huge = CertificateDer::from(vec![0u8; crate::authn::MAX_CLIENT_CHAIN_BYTES]);
        assert!(v.verify_client_cert(&leaf, &[huge], now).is_err());
    }

    #[tokio::test]
    async fn changed_files_are_reloaded() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let s = self_signed(dir.path(), &["localhost".into()]).unwrap();
        let files = TlsFiles {
            cert: s.cert.clone(),
            key: s.key.clone(),
            client_ca: None,
        };
        let rc = Arc::new(arc_swap::ArcSwap::from_pointee(files.load().unwrap()));
        let before = rc.load_full();
        let task = tokio::spawn(reload_on_change(
            files,
            rc.clone(),
            std::time::Duration::from_millis(20),
        ));
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        assert!(
            Arc::ptr_eq(&before, &rc.load_full()),
            "unchanged files: no reload"
        );
        // New material in place (another CA): swapped in.
        let other = tempfile::tempdir().unwrap();
        let n = self_signed(other.path(), &["localhost".into()]).unwrap();
        std::fs::copy(&n.cert, &s.cert).unwrap();
        std::fs::copy(&n.key, &s.key).unwrap();
        let mut reloaded = false;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if !Arc::ptr_eq(&before, &rc.load_full()) {
                reloaded = true;
                break;
            }
        }
        assert!(reloaded);
        // Garbage: the current config stays.
        let current = rc.load_full();
        std::fs::write(&s.cert, "not a certificate, longer than before").unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        assert!(Arc::ptr_eq(&current, &rc.load_full()));
        task.abort();
    }

    #[test]
    fn missing_key_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let s = self_signed(dir.path(), &["localhost".into()]).unwrap();
        let err = server_config_from_files(&s.cert, &s.ca_cert).unwrap_err();
        assert!(matches!(err, TlsError::NoKey(_)), "{err}");
    }
}
