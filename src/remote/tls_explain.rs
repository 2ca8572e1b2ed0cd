//! TLS failures in plain words: what is wrong with the server's certificate (or the
//! handshake) and how to fix it, for every kind rustls reports (issue 8, finding f).
//!
//! The client keeps refusing exactly what rustls refuses; only the message changes.
//! `rustls::Error`'s own text (e.g. `invalid peer certificate:
//! Other(OtherError(CaUsedAsEndEntity))`) follows as the technical detail.

use rustls::{AlertDescription, CertificateError};

/// What the client trusted, for hints, and how its user names the settings involved.
#[derive(Debug, Clone)]
pub struct TrustHint {
    /// The CA file (or field) in use, if one was read.
    pub ca_file: Option<String>,
    /// The setting that gives the CA: `--federated-ca-crt` (esi-cli, the default) or
    /// `server.caRef` (an `externalsecrets` store, a `Federation` generator).
    pub ca_setting: &'static str,
    /// The setting that gives the server's URL (`--federated-server-url`, `server.url`).
    pub url_setting: &'static str,
    /// Whether the public (webpki) roots are trusted besides the CA (esi-cli: yes; a store
    /// or generator with a CA: no, the CA is pinned).
    pub public_roots: bool,
}

impl Default for TrustHint {
    fn default() -> Self {
        TrustHint {
            ca_file: None,
            ca_setting: "--federated-ca-crt",
            url_setting: "--federated-server-url",
            public_roots: true,
        }
    }
}

impl TrustHint {
    fn trusted(&self) -> String {
        match (&self.ca_file, self.public_roots) {
            (Some(f), true) => format!(
                "neither {} ({f}) nor the public roots hold it",
                self.ca_setting
            ),
            (Some(f), false) => format!("{} ({f}) does not hold it", self.ca_setting),
            (None, _) => format!(
                "no {} was given, so only the public roots are trusted",
                self.ca_setting
            ),
        }
    }

    fn add_ca(&self) -> String {
        match &self.ca_file {
            Some(f) => format!("add the CA that issued the server's certificate to {f}"),
            None => format!(
                "pass the CA that issued the server's certificate with {}",
                self.ca_setting
            ),
        }
    }
}

/// Explains `err`, met while connecting to `host` (as written in the server URL).
pub fn explain(err: &rustls::Error, host: &str, hint: &TrustHint) -> String {
    let what = match err {
        rustls::Error::InvalidCertificate(c) => certificate(c, host, hint),
        rustls::Error::NoCertificatesPresented => format!(
            "the server at {host} sent no certificate. Fix: configure the server with a certificate and key"
        ),
        rustls::Error::AlertReceived(alert) => alert_text(*alert, host),
        rustls::Error::PeerIncompatible(_) => format!(
            "the server at {host} offers no TLS version or cipher suite this client accepts (TLS 1.2 or 1.3 with ECDHE and AES-GCM or ChaCha20-Poly1305). Fix: enable TLS 1.2+ with modern suites on the server"
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "{host} did not answer with TLS: is the port in {} a plain-HTTP port, or is a proxy in between? Fix: use the server's HTTPS address",
            hint.url_setting
        ),
        rustls::Error::PeerMisbehaved(_) | rustls::Error::InappropriateHandshakeMessage { .. } => {
            format!(
                "the server at {host} broke the TLS protocol. Fix: check the server's TLS setup and any proxy in between"
            )
        }
        rustls::Error::DecryptError | rustls::Error::PeerSentOversizedRecord => format!(
            "the TLS connection to {host} was corrupted in transit. Fix: check any proxy or middlebox in between"
        ),
        _ => format!("the TLS handshake with {host} failed"),
    };
    format!("{what} [detail: {err}]")
}

fn certificate(c: &CertificateError, host: &str, hint: &TrustHint) -> String {
    #[allow(deprecated)]
    match c {
        CertificateError::UnknownIssuer => format!(
            "the server's certificate at {host} was issued by a CA this client does not trust: {}. Fix: {} (for esi-server's self-signed mode, that is its <data-dir>/tls/ca.crt), or serve a certificate from a CA the client trusts",
            hint.trusted(),
            hint.add_ca()
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            let when = match c {
                CertificateError::ExpiredContext { time, not_after } => format!(
                    " (valid until {}, now {})",
                    utc(not_after.as_secs()),
                    utc(time.as_secs())
                ),
                _ => String::new(),
            };
            format!(
                "the server's certificate at {host} has expired{when}. Fix: renew the server's certificate; if it is in fact still valid, correct this machine's clock"
            )
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            let when = match c {
                CertificateError::NotValidYetContext { time, not_before } => format!(
                    " (valid from {}, now {})",
                    utc(not_before.as_secs()),
                    utc(time.as_secs())
                ),
                _ => String::new(),
            };
            format!(
                "the server's certificate at {host} is not valid yet{when}. Fix: correct the clock of this machine or of the CA that issued it, or wait until it is valid"
            )
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            let names = match c {
                CertificateError::NotValidForNameContext { presented, .. }
                    if !presented.is_empty() =>
                {
                    format!("; it names {}", presented.join(", "))
                }
                _ => String::new(),
            };
            format!(
                "the server's certificate is not valid for {host}, the host in {}{names}. Fix: call the server by a name its certificate lists, or reissue the certificate with subjectAltName DNS:{host} (IP:{host} for an address)",
                hint.url_setting
            )
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            format!(
                "the server's certificate at {host} is not meant for TLS servers (its extendedKeyUsage lacks serverAuth). Fix: reissue it with extendedKeyUsage serverAuth"
            )
        }
        CertificateError::BadSignature => format!(
            "the signature on the server's certificate at {host} does not verify against the trusted CA of that name: the chain is broken, or a different CA with the same name is trusted. Fix: make the server send its full chain and trust the CA that really issued it"
        ),
        CertificateError::UnsupportedSignatureAlgorithm
        | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => format!(
            "the server's certificate at {host} is signed with an algorithm this client does not accept (e.g. SHA-1, or RSA shorter than 2048 bits). Fix: reissue it with ECDSA P-256/P-384, Ed25519, or RSA (2048+ bits) with SHA-256 or better"
        ),
        CertificateError::BadEncoding => format!(
            "the server's certificate at {host} is malformed (not valid DER). Fix: reissue it"
        ),
        CertificateError::Revoked => format!(
            "the server's certificate at {host} was revoked by its CA. Fix: the server needs a new certificate"
        ),
        CertificateError::UnhandledCriticalExtension => format!(
            "the server's certificate at {host} has a critical extension this client does not understand. Fix: reissue it without that extension (or with it non-critical)"
        ),
        CertificateError::Other(other) => webpki_text(&other.to_string(), host, hint),
        _ => format!(
            "the server's certificate at {host} was rejected. Fix: inspect the chain it sends (openssl s_client -connect <host>:<port> -showcerts)"
        ),
    }
}

/// rustls hands over these webpki errors only as `OtherError(<name>)`.
fn webpki_text(name: &str, host: &str, hint: &TrustHint) -> String {
    match name {
        n if n.contains("CaUsedAsEndEntity") => format!(
            "the server at {host} presents a CA certificate (basicConstraints CA:TRUE) as its own certificate, which is what `openssl req -x509` makes by default; a CA certificate cannot identify a server. Fix on the server: keep that CA, issue a server certificate from it (CA:FALSE, subjectAltName DNS:{host}, extendedKeyUsage serverAuth) and serve that one; then {} (esi-server without --tls-cert does all this itself: trust its <data-dir>/tls/ca.crt)",
            hint.add_ca()
        ),
        n if n.contains("EndEntityUsedAsCa") => format!(
            "the certificate chain of the server at {host} uses a non-CA certificate (CA:FALSE) as an issuer. Fix: the issuing certificate must be a CA (basicConstraints CA:TRUE, keyUsage keyCertSign)"
        ),
        n if n.contains("PathLenConstraintViolated") || n.contains("MaximumPathDepthExceeded") => {
            format!(
                "the certificate chain of the server at {host} is longer than its CAs allow (pathLenConstraint). Fix: issue the server's certificate from a CA allowed to sign it"
            )
        }
        n if n.contains("NameConstraintViolation") => format!(
            "the server's certificate at {host} names a host its CA is not allowed to certify (name constraints). Fix: issue it from a CA whose constraints include {host}"
        ),
        n if n.contains("UnsupportedCertVersion") => format!(
            "the server's certificate at {host} is an X.509 v1 certificate, which cannot carry the extensions TLS needs. Fix: reissue it as v3 (e.g. openssl with -extfile or -addext)"
        ),
        n if n.contains("UnsupportedCriticalExtension") => format!(
            "the server's certificate at {host} has a critical extension this client does not understand. Fix: reissue it without that extension (or with it non-critical)"
        ),
        _ => format!(
            "the server's certificate at {host} was rejected: {}; or the chain it sends is wrong (inspect it with openssl s_client -connect <host>:<port> -showcerts)",
            hint.trusted()
        ),
    }
}

fn alert_text(alert: AlertDescription, host: &str) -> String {
    match alert {
        AlertDescription::CertificateRequired => format!(
            "the server at {host} requires a client certificate (mutual TLS, e.g. esi-server --client-ca), and this client does not send one. Fix: call a listener of the server that does not require client certificates"
        ),
        AlertDescription::HandshakeFailure
        | AlertDescription::ProtocolVersion
        | AlertDescription::InsufficientSecurity => format!(
            "the server at {host} refused the handshake ({alert:?}): it has no TLS version or cipher suite in common with this client (TLS 1.2/1.3, ECDHE with AES-GCM or ChaCha20-Poly1305), or it requires a client certificate, which this client does not send. Fix: enable modern TLS on the server, or use a listener without client certificates"
        ),
        AlertDescription::UnknownCA | AlertDescription::BadCertificate => format!(
            "the server at {host} refused this client's certificate ({alert:?}). Fix: call a listener of the server that does not require client certificates"
        ),
        other => format!("the server at {host} ended the handshake with the alert {other:?}"),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` from seconds since the epoch.
fn utc(secs: u64) -> String {
    match i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
    {
        Some(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        None => format!("{secs} s after the epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{ServerName, UnixTime};
    use std::sync::Arc;

    fn hint() -> TrustHint {
        TrustHint {
            ca_file: Some("/var/run/ca.crt".into()),
            ..TrustHint::default()
        }
    }

    fn cert(c: CertificateError) -> String {
        explain(
            &rustls::Error::InvalidCertificate(c),
            "esi.example",
            &hint(),
        )
    }

    #[derive(Debug)]
    struct Named(&'static str);
    impl std::fmt::Display for Named {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Named {}

    #[test]
    fn every_kind_says_what_and_how() {
        let ca_as_leaf = cert(CertificateError::Other(rustls::OtherError(Arc::new(
            Named("CaUsedAsEndEntity"),
        ))));
        assert!(
            ca_as_leaf.contains("presents a CA certificate"),
            "{ca_as_leaf}"
        );
        assert!(ca_as_leaf.contains("openssl req -x509"), "{ca_as_leaf}");
        assert!(ca_as_leaf.contains("Fix"), "{ca_as_leaf}");
        assert!(ca_as_leaf.contains("/var/run/ca.crt"), "{ca_as_leaf}");
        let unknown = cert(CertificateError::UnknownIssuer);
        assert!(unknown.contains("does not trust") && unknown.contains("/var/run/ca.crt"));
        let expired = cert(CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_700_000_000)),
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_600_000_000)),
        });
        assert!(
            expired
                .contains("expired (valid until 2020-09-13T12:26:40Z, now 2023-11-14T22:13:20Z)"),
            "{expired}"
        );
        let name = cert(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("esi.example").unwrap().to_owned(),
            presented: vec!["DNS:other.example".into()],
        });
        assert!(
            name.contains("not valid for esi.example") && name.contains("other.example"),
            "{name}"
        );
        for (c, needle) in [
            (CertificateError::NotValidYet, "not valid yet"),
            (CertificateError::InvalidPurpose, "serverAuth"),
            (CertificateError::BadSignature, "does not verify"),
            (CertificateError::BadEncoding, "malformed"),
            (CertificateError::Revoked, "revoked"),
            (
                CertificateError::UnhandledCriticalExtension,
                "critical extension",
            ),
            (CertificateError::UnknownRevocationStatus, "rejected"),
        ] {
            let text = cert(c);
            assert!(text.contains(needle), "{text}");
            assert!(text.contains("Fix"), "{text}");
            assert!(text.contains("[detail: "), "{text}");
        }
        for (name, needle) in [
            ("EndEntityUsedAsCa", "non-CA certificate"),
            ("UnsupportedCertVersion", "v1"),
            ("NameConstraintViolation", "name constraints"),
            ("Whatever", "rejected"),
        ] {
            let text = cert(CertificateError::Other(rustls::OtherError(Arc::new(
                Named(name),
            ))));
            assert!(text.contains(needle), "{text}");
        }
        let mtls = explain(
            &rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            "h",
            &TrustHint::default(),
        );
        assert!(mtls.contains("client certificate"), "{mtls}");
        let plain = explain(
            &rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            "h",
            &TrustHint::default(),
        );
        assert!(plain.contains("plain-HTTP"), "{plain}");
        let none = cert(CertificateError::UnknownIssuer);
        assert!(!none.contains("OtherError"), "{none}");
        let public_only = explain(
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            "h",
            &TrustHint::default(),
        );
        assert!(
            public_only.contains("only the public roots"),
            "{public_only}"
        );
        // A store's pinned CA: the texts name its settings, and no public roots.
        let store = TrustHint {
            ca_file: Some("Secret apps/fed key ca.crt".into()),
            ca_setting: "server.caRef",
            url_setting: "server.url",
            public_roots: false,
        };
        let pinned = explain(
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            "h",
            &store,
        );
        assert!(
            pinned.contains("server.caRef (Secret apps/fed key ca.crt) does not hold it"),
            "{pinned}"
        );
        assert!(!pinned.contains("public roots"), "{pinned}");
        let plain = explain(
            &rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            "h",
            &store,
        );
        assert!(plain.contains("the port in server.url"), "{plain}");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
