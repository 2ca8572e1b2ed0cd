//! SPIFFE X.509-SVIDs from files, as spiffe-helper writes them (`svid.pem`: the
//! certificate chain, leaf first; `svid_key.pem`: the leaf's private key), read afresh for
//! every request: spiffe-helper rewrites them in place well before the SVID expires.
//!
//! The checks here make a wrong file a clear error at the client (the trust bundle given
//! as the SVID, a key of another certificate); whether the SVID is trusted, current and
//! authorized is the server's decision (X.509-SVID spec: exactly one `spiffe://` URI SAN,
//! a leaf, not a CA).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::args::X509SvidFiles;
use super::error::FetchError;
use crate::authn::{MAX_CLIENT_CHAIN_BYTES, MAX_CLIENT_CHAIN_CERTS, chain_within_bounds};
use crate::remote::ClientIdentity;

/// Largest certificate chain file read (a leaf and a few intermediates are a few KiB).
pub const MAX_CHAIN_BYTES: u64 = 64 * 1024;
/// Largest private key file read (an RSA-4096 key in PEM is about 3.3 KiB).
pub const MAX_KEY_BYTES: u64 = 16 * 1024;

/// An X.509-SVID loaded from its files.
pub struct LoadedSvid {
    /// The chain and key, for the TLS client.
    pub identity: ClientIdentity,
    /// SHA-256 over both files' bytes: a change means the files were rotated.
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for LoadedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSvid")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> FetchError {
    FetchError::BadSvid {
        path: path.display().to_string(),
        reason: reason.into(),
        rotating: false,
    }
}

/// Reads a regular file of at most `max` bytes, following symlinks (spiffe-helper's and
/// Kubernetes volumes' files may be links); a FIFO or device is refused without blocking
/// (`O_NONBLOCK`). The reason names no content.
fn read_bounded(path: &Path, max: u64) -> Result<zeroize::Zeroizing<Vec<u8>>, FetchError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| bad(path, e.to_string()))?;
    let meta = file.metadata().map_err(|e| bad(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(bad(path, "not a regular file"));
    }
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| bad(path, e.to_string()))?;
    if buf.len() as u64 > max {
        return Err(bad(path, format!("file larger than {max} bytes")));
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(bad(path, "empty"));
    }
    Ok(buf)
}

/// Reads and checks an X.509-SVID: the chain file holds PEM certificates whose first is a
/// leaf (not a CA) with exactly one `spiffe://` URI SAN, within the bounds the server's TLS
/// handshake accepts ([`MAX_CLIENT_CHAIN_CERTS`] certificates, [`MAX_CLIENT_CHAIN_BYTES`]
/// bytes of DER); the key file holds one PEM private key (PKCS#8, SEC1 or PKCS#1) that
/// belongs to that leaf.
///
/// # Errors
/// [`FetchError::BadSvid`] naming the file and the cause, never its content.
pub fn load(files: &X509SvidFiles) -> Result<LoadedSvid, FetchError> {
    let chain_pem = read_bounded(&files.cert, MAX_CHAIN_BYTES)?;
    let key_pem = read_bounded(&files.key, MAX_KEY_BYTES)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| bad(&files.cert, "not PEM certificates"))?;
    let Some(leaf) = chain.first() else {
        return Err(bad(&files.cert, "no PEM certificate in the file"));
    };
    // The server refuses a longer chain in the TLS handshake, with an error that says nothing.
    let der_bytes: usize = chain.iter().map(|c| c.len()).sum();
    if !chain_within_bounds(chain.len(), der_bytes) {
        return Err(bad(
            &files.cert,
            format!(
                "certificate chain too large ({} certificates, {der_bytes} bytes of DER): \
                 the server accepts at most {MAX_CLIENT_CHAIN_CERTS} certificates and \
                 {MAX_CLIENT_CHAIN_BYTES} bytes",
                chain.len()
            ),
        ));
    }
    check_leaf(leaf).map_err(|reason| bad(&files.cert, reason))?;
    // The parser's error is not shown: it may quote the input.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        bad(
            &files.key,
            "no PEM private key (PKCS#8, SEC1 or PKCS#1) in the file",
        )
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
        |e| match e {
            rustls::Error::InconsistentKeys(_) => FetchError::BadSvid {
                path: files.key.display().to_string(),
                reason: format!(
                    "is not the private key of the certificate in {}",
                    files.cert.display()
                ),
                rotating: true,
            },
            _ => bad(&files.key, "the private key cannot be used to sign"),
        },
    )?;
    let mut digest = Sha256::new();
    digest.update((chain_pem.len() as u64).to_be_bytes());
    digest.update(&chain_pem[..]);
    digest.update(&key_pem[..]);
    Ok(LoadedSvid {
        identity: ClientIdentity {
            chain,
            key: Arc::new(key),
        },
        fingerprint: digest.finalize().into(),
    })
}

/// The leaf rules a client can check without the trust bundle.
fn check_leaf(leaf: &CertificateDer<'_>) -> Result<(), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|_| "the first certificate cannot be parsed".to_string())?;
    if cert.is_ca() {
        return Err(
            "the first certificate is a CA certificate, not an X.509-SVID (the trust bundle?)"
                .into(),
        );
    }
    let uris: Vec<&str> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [one] if one.starts_with("spiffe://") => Ok(()),
        [] => Err("the certificate has no URI SAN: not an X.509-SVID".into()),
        [_] => Err("the certificate's URI SAN is not a spiffe:// ID: not an X.509-SVID".into()),
        _ => Err("the certificate has more than one URI SAN: not an X.509-SVID".into()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

    /// A test CA and SVIDs it signs, as SPIRE issues them (P-256 keys).
    pub(crate) struct Ca {
        pub(crate) issuer: rcgen::CertifiedIssuer<'static, KeyPair>,
    }

    impl Ca {
        pub(crate) fn new() -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.subject_alt_names =
                vec![SanType::URI("spiffe://example.org".try_into().unwrap())];
            let issuer =
                rcgen::CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            Ca { issuer }
        }

        pub(crate) fn pem(&self) -> String {
            self.issuer.pem()
        }

        /// (chain PEM, key PEM) of a leaf with these URI SANs.
        pub(crate) fn svid(&self, uris: &[&str]) -> (String, String) {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.subject_alt_names = uris
                .iter()
                .map(|u| SanType::URI((*u).try_into().unwrap()))
                .collect();
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    fn files(dir: &Path, chain: &str, key: &str) -> X509SvidFiles {
        let cert = dir.join("svid.pem");
        let key_path = dir.join("svid_key.pem");
        std::fs::write(&cert, chain).unwrap();
        std::fs::write(&key_path, key).unwrap();
        X509SvidFiles {
            cert,
            key: key_path,
            jwt_svid_not_sent: None,
        }
    }

    /// Issue 18: spiffe-helper's files load into a TLS client identity; a rotation
    /// changes the fingerprint, the same files keep it.
    #[test]
    fn an_svid_and_its_key_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let (chain, key) = ca.svid(&["spiffe://example.org/ns/prod/sa/api"]);
        let f = files(dir.path(), &format!("{chain}{}", ca.pem()), &key);
        let svid = load(&f).unwrap();
        assert_eq!(svid.identity.chain.len(), 2);
        assert_eq!(load(&f).unwrap().fingerprint, svid.fingerprint);
        let dbg = format!("{svid:?}");
        assert!(
            !dbg.contains("PRIVATE") && !dbg.contains(&key[30..60]),
            "{dbg}"
        );
        // The identity builds a client (rustls accepts the chain and key).
        let mut settings = crate::remote::RemoteSettings::new("https://esi.example.com");
        settings.client_identity = Some(svid.identity);
        crate::remote::RemoteClient::new(&settings).unwrap();
        let (chain2, key2) = ca.svid(&["spiffe://example.org/ns/prod/sa/api"]);
        let f = files(dir.path(), &chain2, &key2);
        assert_ne!(load(&f).unwrap().fingerprint, svid.fingerprint);
    }

    /// A chain the server's handshake would refuse (more than MAX_CLIENT_CHAIN_CERTS
    /// certificates or MAX_CLIENT_CHAIN_BYTES bytes of DER) is refused here, naming the
    /// bound, instead of failing as an opaque TLS error.
    #[test]
    fn a_chain_beyond_the_servers_bounds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let (leaf, key) = ca.svid(&["spiffe://example.org/a"]);
        let with = |n: usize, pem: &str| format!("{leaf}{}", pem.repeat(n));
        let most = files(
            dir.path(),
            &with(MAX_CLIENT_CHAIN_CERTS - 1, &ca.pem()),
            &key,
        );
        assert_eq!(
            load(&most).unwrap().identity.chain.len(),
            MAX_CLIENT_CHAIN_CERTS
        );
        let long = files(dir.path(), &with(MAX_CLIENT_CHAIN_CERTS, &ca.pem()), &key);
        let e = load(&long).unwrap_err().to_string();
        assert!(
            e.contains("svid.pem")
                && e.contains(&format!("at most {MAX_CLIENT_CHAIN_CERTS} certificates")),
            "{e}"
        );
        // Fewer certificates, but more bytes: a CA with many names (about 4 KiB of DER).
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.subject_alt_names = (0..100)
            .map(|i| {
                SanType::DnsName(
                    format!("ca-{i:03}.a-long-name.example.org")
                        .try_into()
                        .unwrap(),
                )
            })
            .collect();
        let big = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
        let n = MAX_CLIENT_CHAIN_BYTES / big.der().len() + 1;
        assert!(n < MAX_CLIENT_CHAIN_CERTS, "{n}");
        let heavy = files(dir.path(), &with(n, &big.pem()), &key);
        let e = load(&heavy).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{MAX_CLIENT_CHAIN_BYTES} bytes")) && !e.contains("BEGIN"),
            "{e}"
        );
    }

    /// Issue 18: bad input is refused naming the file and the cause, never its content.
    #[test]
    fn bad_svid_files_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let (chain, key) = ca.svid(&["spiffe://example.org/a"]);
        let (_, other_key) = ca.svid(&["spiffe://example.org/b"]);
        let (no_uri, no_uri_key) = ca.svid(&[]);
        let (two, two_key) = ca.svid(&["spiffe://example.org/a", "spiffe://example.org/b"]);
        let (https, https_key) = ca.svid(&["https://example.org/a"]);
        let ca_key = ca.issuer.key().serialize_pem();
        let cases: Vec<(String, String, &str, &str)> = vec![
            ("".into(), key.clone(), "svid.pem", ": empty"),
            (" \n".into(), key.clone(), "svid.pem", ": empty"),
            (chain.clone(), "".into(), "svid_key.pem", ": empty"),
            (
                "not a certificate".into(),
                key.clone(),
                "svid.pem",
                "no PEM certificate",
            ),
            (
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".into(),
                key.clone(),
                "svid.pem",
                "not PEM certificates",
            ),
            (
                chain.clone(),
                "garbage".into(),
                "svid_key.pem",
                "no PEM private key",
            ),
            (
                chain.clone(),
                other_key.clone(),
                "svid_key.pem",
                "is not the private key of the certificate",
            ),
            (ca.pem(), ca_key, "svid.pem", "CA certificate"),
            (no_uri, no_uri_key, "svid.pem", "no URI SAN"),
            (two, two_key, "svid.pem", "more than one URI SAN"),
            (https, https_key, "svid.pem", "not a spiffe:// ID"),
            (
                "x".repeat(MAX_CHAIN_BYTES as usize + 1),
                key.clone(),
                "svid.pem",
                "larger than 65536 bytes",
            ),
            (
                chain.clone(),
                "k".repeat(MAX_KEY_BYTES as usize + 1),
                "svid_key.pem",
                "larger than 16384 bytes",
            ),
        ];
        for (c, k, file, needle) in cases {
            let e = load(&files(dir.path(), &c, &k)).unwrap_err();
            assert!(matches!(e, FetchError::BadSvid { .. }), "{e:?}");
            // Only a key of another certificate (spiffe-helper writes the chain, then the
            // key) is worth reading again within --timeout.
            assert_eq!(
                e.is_transient(),
                needle.contains("is not the private key"),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(
                text.starts_with("bad X.509-SVID ") && text.contains(file) && text.contains(needle),
                "{needle}: {text}"
            );
            assert!(
                !text.contains("PRIVATE KEY") && !text.contains("BEGIN"),
                "{text}"
            );
        }
        // Missing files, and a directory.
        let mut f = files(dir.path(), &chain, &key);
        f.key = dir.path().join("nope.pem");
        let e = load(&f).unwrap_err().to_string();
        assert!(e.contains("nope.pem") && e.contains("No such file"), "{e}");
        f.key = dir.path().to_path_buf();
        let e = load(&f).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        // A FIFO planted as the key: refused at once, not a blocked read.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        f.key = fifo;
        let e = load(&f).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        // A symlink to the real file is followed (Kubernetes volumes link their files).
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(dir.path().join("svid_key.pem"), &link).unwrap();
        f.key = link;
        load(&f).unwrap();
    }
}
