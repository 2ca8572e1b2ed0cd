//! The ledger's connection string and the TLS it asks for.
//!
//! Both of libpq's forms are read (`postgresql://user:password@host:5432/db?opt=value`
//! and `host=… user=… dbname=…`). tokio-postgres parses everything but libpq's TLS
//! options, which it does not know (it has no `verify-ca`/`verify-full` and no certificate
//! files); those are taken out here first:
//!
//! | option | accepted values |
//! | --- | --- |
//! | `sslmode` | `verify-full` (the default for any host that is not local), `verify-ca`, `disable` (the default for loopback and Unix sockets; refused for other hosts). `allow` and `prefer` are read as `disable` on loopback and Unix sockets and refused elsewhere; `require` is refused everywhere: it encrypts without verifying who answers. |
//! | `sslrootcert` | a PEM file of CA certificates trusted for the server (then `verify-full` is the default even on loopback); `system` or absent: the webpki roots (Mozilla's) |
//! | `sslcert`, `sslkey` | a PEM client certificate chain and its private key (PKCS#8, PKCS#1 or SEC1, unencrypted), both or neither |
//!
//! "Local" is a Unix socket, `localhost`, or a loopback address (`127.0.0.0/8`, `::1`),
//! judged on where the connection goes: `hostaddr` when given, else `host`. TLS is never
//! used over a Unix socket (as in libpq). Errors never repeat the string: it may hold a
//! password.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_postgres::Config;
use tokio_postgres::config::{Host, SslMode};

/// How long opening one connection may take (TCP and the PostgreSQL and TLS handshakes,
/// per address tried) when the string sets no `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS options of libpq that are read here rather than by tokio-postgres.
const TLS_OPTIONS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// How the ledger's connections are protected (libpq's `sslmode`, narrowed to the modes
/// that either verify the server or stay on the machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS: every host is a Unix socket or loopback.
    Disable,
    /// TLS; the server's certificate must chain to a trusted root, its name is not
    /// checked (meant for a CA that issues only the database's certificates).
    VerifyCa,
    /// TLS; the certificate must chain to a trusted root and name the host connected to
    /// (RFC 6125 through rustls/webpki).
    VerifyFull,
}

impl TlsMode {
    /// The `sslmode` spelling, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

/// Why a connection string is refused. Messages name options and files, never the
/// string's values otherwise (it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    /// Neither form parses, or tokio-postgres refused an option.
    #[error(
        "the PostgreSQL URL cannot be parsed: check the option names and the quoting (the URL is not repeated here, it may hold a password)"
    )]
    Unparsable,
    /// No host and no hostaddr.
    #[error("the PostgreSQL URL names no host")]
    NoHost,
    /// An `sslmode` libpq does not define.
    #[error(
        "sslmode={0} is unknown: use verify-full, verify-ca, or disable (loopback and Unix sockets only)"
    )]
    UnknownSslMode(String),
    /// `sslmode=require`: encryption without knowing who answers.
    #[error(
        "sslmode=require is refused: it encrypts but does not verify the server's certificate, so anyone on the path could pose as the database and read the ledger's revocation state and the password. Use sslmode=verify-full (the default for remote hosts), or verify-ca with a CA that issues only the database's certificates"
    )]
    Unverified,
    /// No TLS to a host that is not local.
    #[error(
        "sslmode={0} is refused for a host that is not loopback or a Unix socket: the ledger's revocation state and the password would cross the network in clear text. Use sslmode=verify-full (the default for remote hosts) or verify-ca"
    )]
    Plaintext(&'static str),
    /// Certificate files given with `sslmode=disable`.
    #[error("sslrootcert, sslcert and sslkey need sslmode=verify-full or verify-ca, not disable")]
    FilesWithoutTls,
    /// TLS asked for with both Unix sockets and TCP hosts listed.
    #[error(
        "TLS is not used over Unix sockets, so one URL cannot list a Unix socket and TCP hosts with sslmode=verify-full or verify-ca: list one kind"
    )]
    MixedSockets,
    /// TLS to an address without a name to verify.
    #[error(
        "TLS needs the server's name (host=) for every address: hostaddr alone gives nothing to verify"
    )]
    NoHostName,
    /// Only one of `sslcert` and `sslkey`.
    #[error("sslcert and sslkey go together: give both or neither")]
    HalfClientCert,
    /// A file could not be read.
    #[error("cannot read {option} file {path}: {reason}")]
    File {
        /// `sslrootcert`, `sslcert` or `sslkey`.
        option: &'static str,
        /// The path as given.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// A file holds nothing usable.
    #[error("{option} file {path} holds no usable {what}")]
    Content {
        /// `sslrootcert`, `sslcert` or `sslkey`.
        option: &'static str,
        /// The path as given.
        path: String,
        /// What was looked for.
        what: &'static str,
    },
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("cannot set up TLS for PostgreSQL: {0}")]
    Tls(String),
}

/// A parsed connection string: tokio-postgres' configuration (its `ssl_mode` set to match
/// `mode`) and, unless `mode` is `Disable`, the rustls configuration to connect with.
pub struct Target {
    /// Hosts, credentials and the other libpq options.
    pub config: Config,
    /// The protection chosen.
    pub mode: TlsMode,
    /// The client configuration (roots, verifier, client certificate), with TLS.
    pub tls: Option<rustls::ClientConfig>,
}

/// libpq's TLS options as found in the string (values decoded).
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsOptions {
    mode: Option<String>,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl TlsOptions {
    fn set(&mut self, key: &str, value: String) {
        let slot = match key {
            "sslmode" => &mut self.mode,
            "sslrootcert" => &mut self.root_cert,
            "sslcert" => &mut self.cert,
            _ => &mut self.key,
        };
        *slot = Some(value);
    }

    fn any_file(&self) -> bool {
        self.root_cert.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// Reads `url` (see the module documentation for the rules) and builds what connecting
/// needs; certificate files are read now, so a missing one fails at start-up.
pub fn parse(url: &str) -> Result<Target, ConnInfoError> {
    let (rest, options) = split_tls_options(url)?;
    let mut config: Config = rest.parse().map_err(|_| ConnInfoError::Unparsable)?;
    let mode = choose_mode(&config, &options)?;
    config.ssl_mode(if mode == TlsMode::Disable {
        SslMode::Disable
    } else {
        SslMode::Require
    });
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("esi-server");
    }
    let tls = match mode {
        TlsMode::Disable => None,
        TlsMode::VerifyCa | TlsMode::VerifyFull => Some(client_config(mode, &options)?),
    };
    Ok(Target { config, mode, tls })
}

/// Where connection `i` of the configuration goes, as tokio-postgres connects: to
/// `hostaddr` when given, else to `host`; TLS verifies `host` (a TCP host's name).
enum Endpoint {
    Unix,
    Tcp { local: bool, named: bool },
}

fn endpoints(config: &Config) -> Vec<Endpoint> {
    let (hosts, addrs) = (config.get_hosts(), config.get_hostaddrs());
    (0..hosts.len().max(addrs.len()))
        .map(|i| {
            let named = matches!(hosts.get(i), Some(Host::Tcp(_)));
            match (addrs.get(i), hosts.get(i)) {
                (Some(ip), _) => Endpoint::Tcp {
                    local: ip.is_loopback(),
                    named,
                },
                (None, Some(Host::Tcp(name))) => Endpoint::Tcp {
                    local: local_name(name),
                    named,
                },
                #[cfg(unix)]
                (None, Some(Host::Unix(_))) => Endpoint::Unix,
                (None, None) => Endpoint::Tcp {
                    local: false,
                    named: false,
                },
            }
        })
        .collect()
}

fn local_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn choose_mode(config: &Config, options: &TlsOptions) -> Result<TlsMode, ConnInfoError> {
    let endpoints = endpoints(config);
    if endpoints.is_empty() {
        return Err(ConnInfoError::NoHost);
    }
    let all_local = endpoints.iter().all(|e| match e {
        Endpoint::Unix => true,
        Endpoint::Tcp { local, .. } => *local,
    });
    let plaintext = |name: &'static str| {
        if options.any_file() {
            Err(ConnInfoError::FilesWithoutTls)
        } else if all_local {
            Ok(TlsMode::Disable)
        } else {
            Err(ConnInfoError::Plaintext(name))
        }
    };
    let asked = match options.mode.as_deref() {
        None if all_local && !options.any_file() => return Ok(TlsMode::Disable),
        None | Some("verify-full") => TlsMode::VerifyFull,
        Some("verify-ca") => TlsMode::VerifyCa,
        Some("disable") => return plaintext("disable"),
        Some("allow") => return plaintext("allow"),
        Some("prefer") => return plaintext("prefer"),
        Some("require") => return Err(ConnInfoError::Unverified),
        Some(other) => {
            return Err(ConnInfoError::UnknownSslMode(
                other.chars().take(32).collect(),
            ));
        }
    };
    let unix = endpoints.iter().any(|e| matches!(e, Endpoint::Unix));
    let tcp = endpoints.len()
        - endpoints
            .iter()
            .filter(|e| matches!(e, Endpoint::Unix))
            .count();
    match (unix, tcp) {
        // libpq, too, ignores sslmode on Unix sockets: they never leave the machine.
        (true, 0) => Ok(TlsMode::Disable),
        (true, _) => Err(ConnInfoError::MixedSockets),
        _ if endpoints
            .iter()
            .any(|e| matches!(e, Endpoint::Tcp { named: false, .. })) =>
        {
            Err(ConnInfoError::NoHostName)
        }
        _ => Ok(asked),
    }
}

/// Splits libpq's TLS options off `url`, returning the rest (for tokio-postgres) in the
/// same form and the options' decoded values.
fn split_tls_options(url: &str) -> Result<(String, TlsOptions), ConnInfoError> {
    for prefix in ["postgres://", "postgresql://"] {
        if let Some(tail) = url.strip_prefix(prefix) {
            return Ok(split_url(url, url.len() - tail.len()));
        }
    }
    split_key_values(url)
}

/// The URL form: options are the query's `key=value` pairs, percent-encoded. The query
/// starts at the first `?` after the credentials (which end at the first `@`), as
/// tokio-postgres reads it; other pairs are kept byte for byte.
fn split_url(url: &str, after_scheme: usize) -> (String, TlsOptions) {
    let mut options = TlsOptions::default();
    let body_start = url[after_scheme..]
        .find('@')
        .map_or(after_scheme, |at| after_scheme + at + 1);
    let Some(q) = url[body_start..].find('?').map(|q| body_start + q) else {
        return (url.to_owned(), options);
    };
    let mut kept: Vec<&str> = Vec::new();
    for pair in url[q + 1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key);
        if TLS_OPTIONS.contains(&key.as_str()) {
            options.set(&key, decode(value));
        } else {
            kept.push(pair);
        }
    }
    let mut rest = url[..q].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    (rest, options)
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The `key=value` form, tokenized as libpq (and tokio-postgres) do: whitespace between
/// pairs, optional whitespace around `=`, values bare or in single quotes, `\` escaping
/// the next character. The pairs kept are written back quoted.
fn split_key_values(s: &str) -> Result<(String, TlsOptions), ConnInfoError> {
    let mut options = TlsOptions::default();
    let mut rest = String::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if key.is_empty() || chars.next() != Some('=') {
            return Err(ConnInfoError::Unparsable);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(ConnInfoError::Unparsable),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if TLS_OPTIONS.contains(&key.as_str()) {
            options.set(&key, value);
        } else {
            if !rest.is_empty() {
                rest.push(' ');
            }
            rest.push_str(&key);
            rest.push_str("='");
            for c in value.chars() {
                if c == '\'' || c == '\\' {
                    rest.push('\\');
                }
                rest.push(c);
            }
            rest.push('\'');
        }
    }
    Ok((rest, options))
}

fn read(option: &'static str, path: &str) -> Result<Vec<u8>, ConnInfoError> {
    std::fs::read(Path::new(path)).map_err(|e| ConnInfoError::File {
        option,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Every PEM certificate of the file (none, or one that does not parse: refused).
fn certificates(
    option: &'static str,
    path: &str,
) -> Result<Vec<CertificateDer<'static>>, ConnInfoError> {
    let content = || ConnInfoError::Content {
        option,
        path: path.to_owned(),
        what: "PEM certificate",
    };
    let pem = read(option, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| content())?;
    if certs.is_empty() {
        return Err(content());
    }
    Ok(certs)
}

fn client_config(
    mode: TlsMode,
    options: &TlsOptions,
) -> Result<rustls::ClientConfig, ConnInfoError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = match options.root_cert.as_deref() {
        None | Some("system") => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("sslrootcert", path)? {
                roots.add(cert).map_err(|_| ConnInfoError::Content {
                    option: "sslrootcert",
                    path: path.to_owned(),
                    what: "CA certificate",
                })?;
            }
            roots
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnInfoError::Tls(e.to_string()))?;
    let builder = match mode {
        TlsMode::VerifyCa => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly {
                roots: Arc::new(roots),
                provider,
            })),
        TlsMode::VerifyFull | TlsMode::Disable => builder.with_root_certificates(roots),
    };
    let mut config = match (options.cert.as_deref(), options.key.as_deref()) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certificates("sslcert", cert)?;
            let pem = zeroize::Zeroizing::new(read("sslkey", key)?);
            let key_der =
                PrivateKeyDer::from_pem_slice(&pem).map_err(|_| ConnInfoError::Content {
                    option: "sslkey",
                    path: key.to_owned(),
                    what: "unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)",
                })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| ConnInfoError::Tls(e.to_string()))?
        }
        _ => return Err(ConnInfoError::HalfClientCert),
    };
    // PostgreSQL 17's direct TLS negotiation requires it; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// `sslmode=verify-ca`: the chain is verified (signatures, validity, server-auth usage,
/// up to a trusted root) exactly as for verify-full, the name is not.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "s3cr3t-pa55";

    fn err(url: &str) -> ConnInfoError {
        match parse(url) {
            Ok(t) => panic!("accepted with {:?}", t.mode),
            Err(e) => {
                assert!(!e.to_string().contains(PASSWORD), "{e}");
                e
            }
        }
    }

    fn mode(url: &str) -> TlsMode {
        parse(url).map(|t| t.mode).unwrap()
    }

    #[test]
    fn local_hosts_default_to_plaintext_remote_hosts_to_verify_full() {
        for url in [
            "postgresql://esi:pw@127.0.0.1:5432/esi",
            "postgresql://esi:pw@localhost/esi",
            "postgresql://esi:pw@[::1]:5432/esi",
            "postgresql://esi@%2Fvar%2Frun%2Fpostgresql/esi",
            "host=/var/run/postgresql user=esi",
            "host=127.0.0.1 user=esi sslmode=prefer",
            "postgresql://esi@localhost/esi?sslmode=allow",
            "postgresql://esi@localhost/esi?sslmode=disable",
        ] {
            let t = parse(url).unwrap();
            assert_eq!(t.mode, TlsMode::Disable, "{url}");
            assert_eq!(t.config.get_ssl_mode(), SslMode::Disable, "{url}");
            assert!(t.tls.is_none());
        }
        for url in [
            "postgresql://esi:pw@db.example.com/esi",
            "host=db.example.com user=esi",
            "postgresql://esi:pw@db.example.com/esi?sslmode=verify-full",
            // A CA file asks for TLS, on loopback too.
            "postgresql://esi@localhost/esi?sslrootcert=system",
        ] {
            let t = parse(url).unwrap();
            assert_eq!(t.mode, TlsMode::VerifyFull, "{url}");
            assert_eq!(t.config.get_ssl_mode(), SslMode::Require, "{url}");
            assert!(t.tls.is_some());
        }
        assert_eq!(
            mode("postgresql://esi@db.example.com/esi?sslmode=verify-ca"),
            TlsMode::VerifyCa
        );
        // TLS never runs over a Unix socket, as in libpq.
        assert_eq!(
            mode("host=/run/postgresql user=esi sslmode=verify-full"),
            TlsMode::Disable
        );
    }

    #[test]
    fn plaintext_and_unverified_tls_are_refused_for_remote_hosts() {
        let url = |q: &str| format!("postgresql://esi:{PASSWORD}@db.example.com:5432/esi?{q}");
        for m in ["disable", "allow", "prefer"] {
            assert!(matches!(
                err(&url(&format!("sslmode={m}"))),
                ConnInfoError::Plaintext(_)
            ));
        }
        assert_eq!(err(&url("sslmode=require")), ConnInfoError::Unverified);
        // require is refused on loopback too: asked-for TLS is never silently dropped.
        assert_eq!(
            err(&format!(
                "postgresql://esi:{PASSWORD}@127.0.0.1/esi?sslmode=require"
            )),
            ConnInfoError::Unverified
        );
        assert!(matches!(
            err(&url("sslmode=bogus")),
            ConnInfoError::UnknownSslMode(m) if m == "bogus"
        ));
        // Where the bytes go decides, not the name: hostaddr overrides host.
        assert_eq!(
            mode("host=localhost hostaddr=10.0.0.5 user=esi"),
            TlsMode::VerifyFull
        );
        assert!(matches!(
            err(&format!(
                "host=localhost hostaddr=10.0.0.5 user=esi password={PASSWORD} sslmode=disable"
            )),
            ConnInfoError::Plaintext("disable")
        ));
        // One remote host among local ones is enough.
        assert_eq!(
            mode("postgresql://esi@127.0.0.1:5432,db.example.com:5432/esi"),
            TlsMode::VerifyFull
        );
        assert!(matches!(
            err(&format!(
                "postgresql://esi:{PASSWORD}@127.0.0.1:5432,db.example.com:5432/esi?sslmode=disable"
            )),
            ConnInfoError::Plaintext("disable")
        ));
        assert_eq!(
            err(&format!(
                "postgresql://esi:{PASSWORD}@localhost/esi?sslmode=disable&sslrootcert=/ca.pem"
            )),
            ConnInfoError::FilesWithoutTls
        );
        assert_eq!(
            err(&format!(
                "hostaddr=10.0.0.5 user=esi password={PASSWORD} sslmode=verify-full"
            )),
            ConnInfoError::NoHostName
        );
        assert_eq!(
            err(&format!(
                "host=/run/postgresql,db.example.com user=esi password={PASSWORD}"
            )),
            ConnInfoError::MixedSockets
        );
        assert_eq!(err("postgresql:///esi"), ConnInfoError::NoHost);
    }

    #[test]
    fn options_are_split_off_both_forms_and_the_rest_kept() {
        let (rest, o) = split_tls_options(
            "postgresql://u:p%3Fw@h1:5432,h2/db?sslmode=verify-ca&application_name=a%20b&sslrootcert=%2Fetc%2Fca%20x.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgresql://u:p%3Fw@h1:5432,h2/db?application_name=a%20b"
        );
        assert_eq!(o.mode.as_deref(), Some("verify-ca"));
        assert_eq!(o.root_cert.as_deref(), Some("/etc/ca x.pem"));
        let config: Config = rest.parse().unwrap();
        assert_eq!(config.get_application_name(), Some("a b"));
        assert_eq!(config.get_password(), Some(&b"p?w"[..]));

        let (rest, o) = split_tls_options(
            "host = db.example.com  password='it\\'s' sslcert='/a b/c.pem' sslkey=/k\\ x user=esi",
        )
        .unwrap();
        assert_eq!(rest, "host='db.example.com' password='it\\'s' user='esi'");
        assert_eq!(o.cert.as_deref(), Some("/a b/c.pem"));
        assert_eq!(o.key.as_deref(), Some("/k x"));
        let config: Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"it's"[..]));
        assert_eq!(config.get_user(), Some("esi"));

        // A `?` or `@` inside the (encoded) password does not start the query.
        let (rest, o) =
            split_tls_options("postgresql://u:a%40b?c@h/db?sslmode=verify-full").unwrap();
        assert_eq!(rest, "postgresql://u:a%40b?c@h/db");
        assert_eq!(o.mode.as_deref(), Some("verify-full"));

        for bad in ["user", "user=", "password='open", "= x"] {
            assert!(
                matches!(
                    parse(bad),
                    Err(ConnInfoError::Unparsable) | Err(ConnInfoError::NoHost)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn certificate_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(path("junk.pem"), "not a certificate").unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["client".to_string()])
            .unwrap()
            .signed_by(&key, &rcgen::Issuer::new(ca_params, &ca_key))
            .unwrap();
        std::fs::write(path("client.pem"), leaf.pem()).unwrap();
        std::fs::write(path("client.key"), key.serialize_pem()).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(path("other.key"), other.serialize_pem()).unwrap();

        let base = format!("host=db.example.com user=esi password={PASSWORD}");
        let ok = |opts: String| parse(&format!("{base} {opts}")).map(|t| t.mode);
        assert_eq!(
            ok(format!("sslrootcert={}", path("ca.pem"))),
            Ok(TlsMode::VerifyFull)
        );
        assert_eq!(
            ok(format!(
                "sslmode=verify-ca sslrootcert={} sslcert={} sslkey={}",
                path("ca.pem"),
                path("client.pem"),
                path("client.key")
            )),
            Ok(TlsMode::VerifyCa)
        );
        assert!(matches!(
            err(&format!("{base} sslrootcert={}", path("missing.pem"))),
            ConnInfoError::File {
                option: "sslrootcert",
                ..
            }
        ));
        assert!(matches!(
            err(&format!("{base} sslrootcert={}", path("junk.pem"))),
            ConnInfoError::Content {
                option: "sslrootcert",
                ..
            }
        ));
        assert_eq!(
            err(&format!("{base} sslcert={}", path("client.pem"))),
            ConnInfoError::HalfClientCert
        );
        assert!(matches!(
            err(&format!(
                "{base} sslcert={} sslkey={}",
                path("client.pem"),
                path("junk.pem")
            )),
            ConnInfoError::Content {
                option: "sslkey",
                ..
            }
        ));
        // A key that is not the certificate's.
        assert!(matches!(
            err(&format!(
                "{base} sslcert={} sslkey={}",
                path("client.pem"),
                path("other.key")
            )),
            ConnInfoError::Tls(_)
        ));
    }
}
