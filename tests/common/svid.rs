//! X.509-SVIDs minted by the tests (no SPIRE server here): a trust domain's CA, SVIDs it
//! signs (X509-SVID §4 by default, each rule breakable), its SPIFFE bundle entry, and HTTPS
//! clients presenting them.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

/// A trust domain's signing CA.
pub struct SpiffeCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, DER.
    pub der: CertificateDer<'static>,
    /// The CA certificate, PEM (spiffe-helper's `bundle.pem`).
    pub pem: String,
}

/// A certificate chain and its key, as spiffe-helper writes them (`svid.pem`,
/// `svid_key.pem`).
pub struct Svid {
    pub chain_pem: String,
    pub key_pem: String,
}

impl SpiffeCa {
    /// A root CA whose URI SAN is the trust domain's SPIFFE ID, as SPIRE's.
    pub fn new(trust_domain: &str) -> SpiffeCa {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(trust_domain);
        let cert = params.self_signed(&key).unwrap();
        SpiffeCa {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An X.509-SVID for `uris` (one, normally) that `edit` may break.
    pub fn svid_with(&self, uris: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Svid {
        let mut p = svid_params(uris);
        edit(&mut p);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Svid {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A valid X.509-SVID for `spiffe_id`.
    pub fn svid(&self, spiffe_id: &str) -> Svid {
        self.svid_with(&[spiffe_id], |_| {})
    }

    /// A CA certificate (`cA` true) with `spiffe_id` as URI SAN, signed by this CA: a CA
    /// presented as a leaf.
    pub fn ca_as_leaf(&self, spiffe_id: &str) -> Svid {
        self.svid_with(&[spiffe_id], |p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
            ];
        })
    }

    /// This CA as a SPIFFE bundle entry: `use: x509-svid`, its DER in `x5c` (SPIFFE Trust
    /// Domain and Bundle §4.2.2).
    pub fn bundle_entry(&self) -> Value {
        json!({
            "use": "x509-svid",
            "kty": "EC",
            "crv": "P-256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.der)],
        })
    }
}

fn ca_params(trust_domain: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, format!("{trust_domain} CA"));
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}").try_into().unwrap(),
    )];
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

fn svid_params(uris: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p
}

/// A plain client certificate (DNS SAN only, no URI SAN) from a throwaway CA.
pub fn plain_client_cert() -> Svid {
    let ca = SpiffeCa::new("corp.example");
    ca.svid_with(&[], |p| {
        p.subject_alt_names = vec![SanType::DnsName("client.corp.example".try_into().unwrap())]
    })
}

/// How a test client speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// TLS 1.3 (or 1.2), HTTP/1.1.
    Default,
    /// TLS 1.2 only.
    Tls12,
    /// HTTP/2 (ALPN `h2`).
    H2,
}

/// An HTTPS client trusting `server_ca_pem` and presenting `identity` as its client
/// certificate; `tls12_only` limits it to TLS 1.2.
pub fn client_with(server_ca_pem: &[u8], identity: &Svid, tls12_only: bool) -> reqwest::Client {
    let wire = if tls12_only {
        Wire::Tls12
    } else {
        Wire::Default
    };
    client_presenting(server_ca_pem, identity, &identity.key_pem, wire)
}

/// Presents the certificate chain of `identity` but signs the handshake with `key_pem`
/// (another key when they differ: a stolen certificate, no private key), speaking `wire`.
pub fn client_presenting(
    server_ca_pem: &[u8],
    identity: &Svid,
    key_pem: &str,
    wire: Wire,
) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(server_ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(identity.chain_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let signer = provider.key_provider.load_private_key(key).unwrap();
    // No key/certificate match check (what `with_client_auth_cert` would refuse).
    let certified = Arc::new(rustls::sign::CertifiedKey::new(chain, signer));
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    let builder = if wire == Wire::Tls12 {
        builder.with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        builder.with_safe_default_protocol_versions()
    };
    let mut tls = builder
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(Always(certified)));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20));
    let client = if wire == Wire::H2 {
        tls.alpn_protocols = vec![b"h2".to_vec()];
        client.http2_prior_knowledge()
    } else {
        client
    };
    client.tls_backend_preconfigured(tls).build().unwrap()
}

#[derive(Debug)]
struct Always(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Always {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
