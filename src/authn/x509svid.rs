//! X.509-SVIDs (SPIFFE `standards/X509-SVID.md`) presented as TLS client certificates.
//!
//! The TLS layer ([`crate::tls`]) only checks that the client holds the leaf's private key
//! (its CertificateVerify signature) and hands the chain to the request as a
//! [`ClientCertificate`]; it never decides who the client is. The identity comes only from
//! [`crate::authn::Authenticator::authenticate_x509`], at request time, against the current
//! `SpiffeFederation` bundles:
//! - the leaf ([`check_leaf`], X509-SVID §2, §4), in this order: parses as X.509;
//!   `basicConstraints` `cA` is not set; it has exactly one URI SAN and it is a workload
//!   SPIFFE ID ([`parse_workload_id`]); `keyUsage` is present with `digitalSignature` and without `keyCertSign` and
//!   `cRLSign`;
//! - every certificate after the leaf with a `keyUsage` has `keyCertSign` ([`check_signers`],
//!   RFC 5280 §6.1.4 (n): rustls-webpki ignores `keyUsage`);
//! - the SPIFFE ID's trust domain selects the `SpiffeFederation` (none → refused);
//! - the chain verifies (RFC 5280 path validation by rustls-webpki, `clientAuth` extended key
//!   usage when the leaf has the extension, validity at the server's clock) to one of that
//!   federation's bundle authorities with `use: x509-svid` valid at the server's clock — never
//!   to a `jwt-svid` key, never to another trust domain's authorities (X509-SVID §5).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::CertificateError;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;

use arc_swap::ArcSwapOption;

use super::identity::Identity;
use super::spiffe::parse_workload_id;

/// Most certificates a client may present (leaf and intermediates); longer chains fail the
/// TLS handshake. Not lower: nested SPIRE servers each add an intermediate, under those of an
/// upstream authority; a chain's verification (success or definitive refusal) is remembered
/// by its connection, so a long chain costs one path validation per connection.
pub const MAX_CLIENT_CHAIN_CERTS: usize = 8;
/// Most bytes of DER a client's certificate chain may hold; larger chains fail the TLS
/// handshake. An SVID and its intermediates take a few KiB (RSA-4096 certificates are about
/// 1.5 KiB each); the chain is kept for the connection's life, beside rustls' own copy.
pub const MAX_CLIENT_CHAIN_BYTES: usize = 16 * 1024;

/// Why an X.509-SVID was refused. Messages name the rule broken, never the certificate's
/// contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum X509SvidError {
    /// The leaf is not a DER X.509 certificate that parses.
    #[error("client certificate is not a valid X.509 certificate")]
    Malformed,
    /// More than [`MAX_CLIENT_CHAIN_CERTS`] certificates or [`MAX_CLIENT_CHAIN_BYTES`] bytes.
    #[error(
        "client certificate chain too large (at most {MAX_CLIENT_CHAIN_CERTS} certificates, {MAX_CLIENT_CHAIN_BYTES} bytes)"
    )]
    ChainTooLarge,
    /// The leaf has no URI SAN (X509-SVID §2: exactly one).
    #[error("client certificate is not an X.509-SVID: it has no URI SAN (exactly one is required)")]
    NoUriSan,
    /// The leaf has more than one URI SAN (X509-SVID §2: exactly one).
    #[error("X.509-SVID has more than one URI SAN (exactly one is required)")]
    SeveralUriSans,
    /// The URI SAN is not a workload SPIFFE ID (SPIFFE-ID spec).
    #[error("X.509-SVID's URI SAN is not a workload SPIFFE ID")]
    BadSpiffeId,
    /// The leaf is a CA certificate (X509-SVID §4.1: a leaf's `cA` must be false).
    #[error("X.509-SVID leaf is a CA certificate (basicConstraints cA must be false)")]
    CaAsLeaf,
    /// `keyUsage` absent, without `digitalSignature`, or with `keyCertSign`/`cRLSign`
    /// (X509-SVID §4.3).
    #[error(
        "X.509-SVID leaf keyUsage must include digitalSignature and exclude keyCertSign and cRLSign"
    )]
    KeyUsage,
    /// No `SpiffeFederation` has the SPIFFE ID's trust domain.
    #[error("no SpiffeFederation for the X.509-SVID's trust domain")]
    UnknownTrustDomain,
    /// The federation's bundle holds no `x509-svid` authority.
    #[error("the trust domain's bundle has no x509-svid authority")]
    NoAuthorities,
    /// A certificate of the chain is past its `notAfter` at the server's clock.
    #[error("X.509-SVID expired")]
    Expired,
    /// A certificate of the chain is before its `notBefore` at the server's clock.
    #[error("X.509-SVID not yet valid")]
    NotYetValid,
    /// A certificate after the leaf has `keyUsage` without `keyCertSign` (RFC 5280 §6.1.4
    /// (n), X509-SVID §4.3, §5.1; rustls-webpki ignores `keyUsage`).
    #[error("X.509-SVID chain: a signing certificate's keyUsage lacks keyCertSign")]
    SignerKeyUsage,
    /// The leaf's extended key usage does not allow client authentication.
    #[error("X.509-SVID is not valid for TLS client authentication (extendedKeyUsage)")]
    BadPurpose,
    /// The chain does not verify to the trust domain's `x509-svid` authorities.
    #[error(
        "X.509-SVID chain does not verify to its trust domain's bundle (x509-svid authorities)"
    )]
    Untrusted,
}

impl X509SvidError {
    /// A short, bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            X509SvidError::Malformed => "x509_malformed",
            X509SvidError::ChainTooLarge => "x509_chain_too_large",
            X509SvidError::NoUriSan => "x509_no_uri_san",
            X509SvidError::SeveralUriSans => "x509_several_uri_sans",
            X509SvidError::BadSpiffeId => "x509_bad_spiffe_id",
            X509SvidError::CaAsLeaf => "x509_ca_leaf",
            X509SvidError::KeyUsage => "x509_key_usage",
            X509SvidError::UnknownTrustDomain => "x509_unknown_trust_domain",
            X509SvidError::NoAuthorities => "x509_no_authorities",
            X509SvidError::Expired => "x509_expired",
            X509SvidError::NotYetValid => "x509_not_yet_valid",
            X509SvidError::SignerKeyUsage => "x509_signer_key_usage",
            X509SvidError::BadPurpose => "x509_bad_purpose",
            X509SvidError::Untrusted => "x509_untrusted",
        }
    }
}

/// The certificate chain a client presented in its TLS handshake (leaf first), made once per
/// connection and shared by its requests (a request extension); it remembers its last
/// successful verification, so a connection's requests verify the chain once (while the
/// federation's keys stay the same and the chain valid), and its last definitive refusal, so
/// a chain that never verifies costs one path validation per connection, not one per request
/// (while the federations, their keys and the validity of every certificate involved stay
/// the same). Holding one proves only
/// that the client has the leaf's private key: who the client is, if anyone, is decided by
/// [`crate::authn::Authenticator::authenticate_x509`].
pub struct ClientCertificate {
    chain: Vec<CertificateDer<'static>>,
    /// Whether the leaf claims to be an X.509-SVID: it has a URI SAN with the `spiffe`
    /// scheme, or does not parse (so its claim cannot be ruled out).
    svid: bool,
    /// The last successful verification, for the connection's next requests (re-checked
    /// against the federation's current key set and the clock on every use).
    verified: ArcSwapOption<VerifiedChain>,
    /// The last definitive refusal, for the connection's next requests (re-checked against
    /// what it depended on on every use).
    refused: ArcSwapOption<RefusedChain>,
    /// How many times this chain went through path validation (one per federation tried).
    validations: AtomicU64,
}

/// A chain's definitive refusal: one that a new verification would repeat while what it
/// depended on is unchanged. Never a transient one (keys unavailable).
#[derive(Debug)]
pub(crate) struct RefusedChain {
    pub(crate) error: X509SvidError,
    /// The federation that refused (for logs), if any.
    pub(crate) federation: Option<String>,
    /// What the refusal depended on besides the chain; `None`: the chain alone (the leaf
    /// and signer rules).
    pub(crate) bundles: Option<RefusalBasis>,
}

/// The federations, keys and time window a refusal holds for.
#[derive(Debug)]
pub(crate) struct RefusalBasis {
    /// The authenticator's federation-set epoch when verification began.
    pub(crate) epoch: u64,
    /// Every federation of the trust domain tried, with the generation of its key set.
    pub(crate) generations: Vec<(String, u64)>,
    /// The server's clock when verified (seconds since the epoch): the refusal holds from
    /// then ...
    pub(crate) from: u64,
    /// ... until (excluded) the next time a certificate of the chain or an authority of the
    /// bundles becomes valid or expires ([`next_validity_change`]).
    pub(crate) until: u64,
}

/// A chain's successful verification.
pub(crate) struct VerifiedChain {
    pub(crate) identity: Arc<Identity>,
    /// The generation of the key set that verified it.
    pub(crate) generation: u64,
    /// The chain's earliest `notAfter` (seconds since the epoch).
    pub(crate) not_after: u64,
    /// The authenticator's federation-set epoch when verification began: a federation
    /// added since (the same trust domain under a name tried first) may answer otherwise.
    pub(crate) epoch: u64,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("certificates", &self.chain.len())
            .field("svid", &self.svid)
            .field("validations", &self.validations())
            .finish()
    }
}

impl ClientCertificate {
    /// The chain as presented; `None` when it is empty (no certificate).
    pub fn new(chain: &[CertificateDer<'_>]) -> Option<Arc<ClientCertificate>> {
        let svid = claims_spiffe(chain.first()?);
        // Only an SVID's chain is ever verified: of any other, the leaf alone (to say why).
        let kept = if svid { chain.len() } else { 1 };
        Some(Arc::new(ClientCertificate {
            chain: chain[..kept]
                .iter()
                .map(|c| c.clone().into_owned())
                .collect(),
            svid,
            verified: ArcSwapOption::empty(),
            refused: ArcSwapOption::empty(),
            validations: AtomicU64::new(0),
        }))
    }

    /// Whether the client presents it as an X.509-SVID (a `spiffe` URI SAN, or a leaf that
    /// does not parse). A certificate that is not one is no credential of this server: a
    /// bearer token then authenticates the request as if no certificate had been sent.
    pub fn is_svid(&self) -> bool {
        self.svid
    }

    /// The chain, leaf first; the leaf alone when it is no X.509-SVID ([`Self::is_svid`]).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The last successful verification of this chain (this connection's).
    pub(crate) fn verified(&self) -> Option<Arc<VerifiedChain>> {
        self.verified.load_full()
    }

    /// Records (or, with `None`, forgets) this chain's verification.
    pub(crate) fn set_verified(&self, verified: Option<VerifiedChain>) {
        self.verified.store(verified.map(Arc::new));
    }

    /// The last definitive refusal of this chain (this connection's).
    pub(crate) fn refused(&self) -> Option<Arc<RefusedChain>> {
        self.refused.load_full()
    }

    /// Records (or, with `None`, forgets) this chain's definitive refusal.
    pub(crate) fn set_refused(&self, refused: Option<RefusedChain>) {
        self.refused.store(refused.map(Arc::new));
    }

    /// How many path validations this chain has cost (one per federation tried per
    /// verification; remembered outcomes cost none).
    pub(crate) fn validations(&self) -> u64 {
        self.validations.load(Ordering::Relaxed)
    }

    /// Counts one path validation of this chain.
    pub(crate) fn count_validation(&self) {
        self.validations.fetch_add(1, Ordering::Relaxed);
    }
}

fn claims_spiffe(leaf: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return true;
    };
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().any(
            |n| matches!(n, GeneralName::URI(u) if u.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("spiffe:"))),
        ),
        Ok(None) => false,
        Err(_) => true,
    }
}

/// Whether `chain` is within [`MAX_CLIENT_CHAIN_CERTS`] and [`MAX_CLIENT_CHAIN_BYTES`].
pub fn chain_within_bounds(chain_len: usize, total_bytes: usize) -> bool {
    chain_len <= MAX_CLIENT_CHAIN_CERTS && total_bytes <= MAX_CLIENT_CHAIN_BYTES
}

/// What a leaf that follows the X.509-SVID rules proves before its chain is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SvidLeaf {
    /// The URI SAN: a workload SPIFFE ID.
    pub(crate) spiffe_id: String,
    /// `notAfter`, seconds since the epoch (0 if before it).
    pub(crate) not_after: u64,
}

/// The leaf rules of X509-SVID §2 and §4 (see the module docs).
///
/// # Errors
/// The first rule broken.
pub(crate) fn check_leaf(der: &[u8]) -> Result<SvidLeaf, X509SvidError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| X509SvidError::Malformed)?;
    if !rest.is_empty() {
        return Err(X509SvidError::Malformed);
    }
    let ca = cert
        .basic_constraints()
        .map_err(|_| X509SvidError::Malformed)?
        .is_some_and(|bc| bc.value.ca);
    if ca {
        return Err(X509SvidError::CaAsLeaf);
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|_| X509SvidError::Malformed)?;
    let mut uris = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        });
    let uri = uris.next().ok_or(X509SvidError::NoUriSan)?;
    if uris.next().is_some() {
        return Err(X509SvidError::SeveralUriSans);
    }
    parse_workload_id(uri).map_err(|_| X509SvidError::BadSpiffeId)?;
    let usage = cert
        .key_usage()
        .map_err(|_| X509SvidError::Malformed)?
        .ok_or(X509SvidError::KeyUsage)?;
    let ku = usage.value;
    if !ku.digital_signature() || ku.key_cert_sign() || ku.crl_sign() {
        return Err(X509SvidError::KeyUsage);
    }
    Ok(SvidLeaf {
        spiffe_id: uri.to_owned(),
        not_after: u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0),
    })
}

/// The certificates after the leaf, as signing certificates: one with a `keyUsage` must
/// have `keyCertSign` (RFC 5280 §6.1.4 (n), which X509-SVID §5.1 requires; rustls-webpki
/// checks `cA` but ignores `keyUsage`). Certificates that do not parse are left to path
/// validation.
///
/// # Errors
/// [`X509SvidError::SignerKeyUsage`], also for a malformed or repeated `keyUsage`.
pub(crate) fn check_signers(signers: &[CertificateDer<'_>]) -> Result<(), X509SvidError> {
    for der in signers {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            continue;
        };
        match cert.key_usage() {
            Ok(None) => {}
            Ok(Some(ku)) if ku.value.key_cert_sign() => {}
            _ => return Err(X509SvidError::SignerKeyUsage),
        }
    }
    Ok(())
}

/// The earliest `notAfter` (seconds since the epoch) among the certificates of `chain`
/// that parse (`u64::MAX` when none does).
pub(crate) fn earliest_not_after(chain: &[CertificateDer<'_>]) -> u64 {
    chain
        .iter()
        .filter_map(|c| x509_parser::parse_x509_certificate(c).ok())
        .map(|(_, c)| u64::try_from(c.validity().not_after.timestamp()).unwrap_or(0))
        .min()
        .unwrap_or(u64::MAX)
}

/// The first time after `now` (seconds since the epoch) at which a certificate of `chain`
/// becomes valid (`notBefore`) or expires (`notAfter` + 1: valid up to `notAfter`
/// included); `u64::MAX` when none will. Certificates that do not parse are ignored.
pub(crate) fn next_validity_change(chain: &[CertificateDer<'_>], now: u64) -> u64 {
    let secs = |t: i64| u64::try_from(t).unwrap_or(0);
    next_change(
        chain
            .iter()
            .filter_map(|c| x509_parser::parse_x509_certificate(c).ok())
            .map(|(_, c)| {
                let v = c.validity();
                (
                    secs(v.not_before.timestamp()),
                    secs(v.not_after.timestamp()),
                )
            }),
        now,
    )
}

fn next_change(validities: impl Iterator<Item = (u64, u64)>, now: u64) -> u64 {
    validities
        .flat_map(|(nb, na)| [nb, na.saturating_add(1)])
        .filter(|&t| t > now)
        .min()
        .unwrap_or(u64::MAX)
}

/// A trust domain's `x509-svid` authorities, ready to verify chains.
pub(crate) struct X509Authorities {
    /// The CA certificates (DER), as in the bundle.
    pub(crate) roots: Vec<CertificateDer<'static>>,
    /// Each usable root's validity, `(notBefore, notAfter)` in seconds since the epoch, in
    /// the order of `roots` that parse.
    validity: Vec<(CertificateDer<'static>, u64, u64)>,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for X509Authorities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Authorities")
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl X509Authorities {
    /// Authorities from CA certificates; `None` when there is none or none is usable as a
    /// trust anchor.
    pub(crate) fn new(roots: Vec<CertificateDer<'static>>) -> Option<X509Authorities> {
        let validity: Vec<_> = roots
            .iter()
            .filter_map(|der| {
                let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
                let v = c.validity();
                let secs = |t: i64| u64::try_from(t).unwrap_or(0);
                Some((
                    der.clone(),
                    secs(v.not_before.timestamp()),
                    secs(v.not_after.timestamp()),
                ))
            })
            .collect();
        let verifier = client_verifier(validity.iter().map(|(der, _, _)| der))?;
        Some(X509Authorities {
            roots,
            validity,
            verifier,
        })
    }

    /// The first time after `now` (seconds since the epoch) at which one of these
    /// authorities becomes valid or expires (see [`next_validity_change`]).
    pub(crate) fn next_validity_change(&self, now: u64) -> u64 {
        next_change(self.validity.iter().map(|&(_, nb, na)| (nb, na)), now)
    }

    /// Verifies `chain` (leaf first) to these authorities at `now` (seconds since the
    /// epoch): RFC 5280 path validation, `clientAuth` extended key usage when present. Only
    /// the authorities valid at `now` (`notBefore` ≤ now ≤ `notAfter`) are trust anchors:
    /// webpki keeps no validity for its anchors, and a bundle (a static one above all) may
    /// still list a CA past its `notAfter`. Returns the earliest `notAfter` of those
    /// authorities (seconds since the epoch): the verification holds until then at most.
    ///
    /// # Errors
    /// [`X509SvidError::Expired`], [`X509SvidError::NotYetValid`],
    /// [`X509SvidError::BadPurpose`], else [`X509SvidError::Untrusted`] (also when no
    /// authority is valid at `now`).
    pub(crate) fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now_secs: u64,
    ) -> Result<u64, X509SvidError> {
        let (leaf, intermediates) = chain.split_first().ok_or(X509SvidError::Malformed)?;
        let valid =
            |&&(_, nb, na): &&(CertificateDer<'static>, u64, u64)| nb <= now_secs && now_secs <= na;
        let anchors_not_after = self
            .validity
            .iter()
            .filter(valid)
            .map(|(_, _, na)| *na)
            .min()
            .ok_or(X509SvidError::Untrusted)?;
        let subset;
        let verifier = if self.validity.iter().all(|v| valid(&v)) {
            &self.verifier
        } else {
            // Rare (a bundle that lists an expired or future CA): a verifier of the others.
            subset = client_verifier(self.validity.iter().filter(valid).map(|(der, _, _)| der))
                .ok_or(X509SvidError::Untrusted)?;
            &subset
        };
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now_secs));
        verifier
            .verify_client_cert(leaf, intermediates, now)
            .map(|_| anchors_not_after)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                ) => X509SvidError::Expired,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
                ) => X509SvidError::NotYetValid,
                rustls::Error::InvalidCertificate(
                    CertificateError::InvalidPurpose
                    | CertificateError::InvalidPurposeContext { .. },
                ) => X509SvidError::BadPurpose,
                _ => X509SvidError::Untrusted,
            })
    }
}

/// A webpki client verifier with `roots` as trust anchors; `None` when none is usable.
fn client_verifier<'a>(
    roots: impl Iterator<Item = &'a CertificateDer<'static>>,
) -> Option<Arc<dyn ClientCertVerifier>> {
    let mut store = rustls::RootCertStore::empty();
    store.add_parsable_certificates(roots.cloned());
    if store.is_empty() {
        return None;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .ok()
}
