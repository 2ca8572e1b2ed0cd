//! TLS for the server: certificates from files (reloaded when they change), or a
//! self-signed CA made at start; optionally client certificates required (mTLS).
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
    files: TlsFiles,
    target: Arc<arc_swap::ArcSwap<ServerConfig>>,
    interval: std::time::Duration,
) {
    let mut last = files.stamp();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = files.stamp();
        if now == last {
            continue;
        }
        let f = files.clone();
        match tokio::task::spawn_blocking(move || f.load()).await {
            Ok(Ok(config)) => {
                target.store(Arc::new(config));
                last = now;
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
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
    let roots = match client_ca {
        None => None,
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
            Some(roots)
        }
    };
    server_config(certs, key_der, roots)
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: Option<rustls::RootCertStore>,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
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
