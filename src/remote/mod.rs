//! The client of a Federation Server, shared by `esi-cli`, the `externalsecrets` store
//! provider and the `Federation` generator (`docs/federation-clients.md`).
//!
//! One [`RemoteClient`] talks to one server over HTTPS (rustls): it trusts a pinned CA
//! bundle ([`Trust`]) or the public roots, follows no redirect (a redirect would carry the
//! bearer token elsewhere), bounds every call ([`RemoteSettings::timeout`]) and every
//! answer ([`RemoteSettings::max_answer_bytes`]), sends the client cluster's CA as the
//! body's `ca.crt` when one is configured, and takes the bearer [`Token`] per call (the
//! caller owns the token source). Each method is one attempt; callers retry
//! ([`RemoteError::is_transient`]).
//!
//! Calls (the server side is `crate::api`; the contract is `CONTRACT.md`):
//! - ESE: [`RemoteClient::ese_secret`] (`POST /secretstore/{store}/secrets/{name}`, the
//!   value as a JSON string, parsed: the quotes are not part of the value) and
//!   [`RemoteClient::ese_generate`] (`POST /generators/{ns}/{kind}/{name}`),
//!   [`RemoteClient::ese_revoke`] (`DELETE /generators/{ns}/{kind}/{name}`).
//! - `/v1`, binary-safe (values travel base64-encoded): [`RemoteClient::get`],
//!   [`RemoteClient::extract`], [`RemoteClient::find`], [`RemoteClient::issue`] (data and
//!   the credential's handle), [`RemoteClient::renew`], [`RemoteClient::revoke`].
//!
//! Errors ([`RemoteError`]) name the cause and the HTTP status, never a value, a token or
//! the server's error body.

pub mod spec;
pub mod tls_explain;
pub mod token;
pub mod token_request;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::header::{AUTHORIZATION, RETRY_AFTER};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;
use zeroize::Zeroizing;

pub use tls_explain::TrustHint;
pub use token::{ServiceAccountTokens, Token, TokenError};

/// Largest CA bundle accepted (PEM).
pub const MAX_CA_BYTES: usize = 1 << 20;
/// Default bound on one answer's body.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 4 << 20;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// What TLS trusts for the server's certificate.
#[derive(Clone, Default)]
pub struct Trust {
    /// PEM certificates (a CA bundle). Empty: none.
    pub ca_pem: Vec<u8>,
    /// Where `ca_pem` came from, for messages (a file path, `server.caRef secret ns/name`).
    pub ca_label: Option<String>,
    /// Trust the public (webpki) roots too. Always on when `ca_pem` is empty.
    pub public_roots: bool,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("ca_label", &self.ca_label)
            .field("ca_bytes", &self.ca_pem.len())
            .field("public_roots", &self.public_roots)
            .finish()
    }
}

/// A TLS client identity: a certificate chain (leaf first) and the leaf's private key,
/// presented when the server asks for a client certificate (a SPIFFE X.509-SVID on the
/// server's mTLS listener). `Debug` shows the chain's length, never the key.
#[derive(Clone)]
pub struct ClientIdentity {
    /// DER certificates, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8, SEC1 or PKCS#1 DER).
    pub key: Arc<rustls_pki_types::PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// How one call proves who is calling: exactly one of a bearer token or the client's TLS
/// certificate ([`RemoteSettings::client_identity`]), never both (the server refuses a
/// request carrying both). `&Token` converts into [`Auth::Bearer`].
#[derive(Clone, Copy, Debug)]
pub enum Auth<'a> {
    /// `Authorization: Bearer …`.
    Bearer(&'a Token),
    /// No `Authorization` header: the TLS client certificate of the connection is the
    /// identity. A client built without [`RemoteSettings::client_identity`] refuses it
    /// ([`RemoteError::InvalidRequest`]).
    ClientCertificate,
}

impl<'a> From<&'a Token> for Auth<'a> {
    fn from(token: &'a Token) -> Self {
        Auth::Bearer(token)
    }
}

/// How to reach one Federation Server.
#[derive(Clone, Debug)]
pub struct RemoteSettings {
    /// The server's base URL (`https://esi-federation.example.com`, a path prefix allowed).
    pub url: String,
    /// What TLS trusts.
    pub trust: Trust,
    /// The client cluster's CA (PEM), sent base64-encoded as the body's `ca.crt` on every
    /// call (the server may use it to reach that cluster's keys): only its certificates,
    /// re-encoded, never anything else the bundle holds. `None`: not sent.
    pub client_ca: Option<Vec<u8>>,
    /// Bound on one call, connect to last byte.
    pub timeout: Duration,
    /// Bound on connecting.
    pub connect_timeout: Duration,
    /// Bound on one answer's body, bytes.
    pub max_answer_bytes: usize,
    /// `User-Agent`.
    pub user_agent: &'static str,
    /// Names of the settings, for TLS error texts (`--federated-ca-crt` or `server.caRef`).
    pub ca_setting: &'static str,
    /// Name of the URL setting (`--federated-server-url` or `server.url`).
    pub url_setting: &'static str,
    /// The TLS client certificate to present (`None`: none). A client with one sends no
    /// bearer token: its calls take [`Auth::ClientCertificate`].
    pub client_identity: Option<ClientIdentity>,
}

impl RemoteSettings {
    /// Settings for `url` with the defaults: public roots, no `ca.crt`, 15 s per call
    /// (5 s to connect), 4 MiB answers, texts naming `server.url` / `server.caRef`.
    pub fn new(url: impl Into<String>) -> Self {
        RemoteSettings {
            url: url.into(),
            trust: Trust {
                public_roots: true,
                ..Trust::default()
            },
            client_ca: None,
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
            user_agent: concat!("esi-federation/", env!("CARGO_PKG_VERSION")),
            ca_setting: "server.caRef",
            url_setting: "server.url",
            client_identity: None,
        }
    }
}

/// A client that cannot be built. Messages name the setting, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteConfigError {
    /// The URL is not an absolute `https://` URL.
    #[error("{setting}: {reason}")]
    Url {
        /// The setting.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The CA bundle is unusable.
    #[error("{setting}: {reason}")]
    Ca {
        /// The setting (and source).
        setting: String,
        /// What is wrong.
        reason: String,
    },
    /// The HTTPS client could not be built.
    #[error("cannot build the HTTPS client: {0}")]
    Client(String),
}

/// A failed call. Texts name the cause (and HTTP status), never a value or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// 401: the server refused the token.
    #[error("unauthorized: the Federation Server refused the token (HTTP 401)")]
    Unauthorized,
    /// 403.
    #[error("forbidden: the Federation Server refused the request (HTTP 403)")]
    Forbidden,
    /// 404: missing, or this identity may not see it (the server does not tell which).
    #[error(
        "not found: does not exist on the Federation Server, or this identity may not read it (HTTP 404)"
    )]
    NotFound,
    /// 409 on a renewal: the credential cannot be extended; a new one is needed.
    #[error("the Federation Server cannot renew the credential (HTTP 409)")]
    NotRenewable,
    /// 429.
    #[error("rate limited by the Federation Server (HTTP 429)")]
    RateLimited {
        /// The server's `Retry-After` (seconds form), capped at 5 minutes.
        retry_after: Option<Duration>,
    },
    /// 5xx.
    #[error("Federation Server error (HTTP {0})")]
    Server(u16),
    /// Any other refusal (400, 413, …).
    #[error("request refused by the Federation Server (HTTP {0})")]
    Rejected(u16),
    /// The answer is not what the call returns (or is larger than the bound).
    #[error("malformed answer from the Federation Server: {0}")]
    Malformed(&'static str),
    /// The server's certificate was not trusted, or the handshake failed (plain words
    /// and the fix, [`tls_explain`]).
    #[error("TLS failure: {0}")]
    Tls(String),
    /// No connection, a broken one, or no answer in time.
    #[error("Federation Server unreachable: {0}")]
    Unreachable(String),
    /// The call timed out ([`RemoteSettings::timeout`]).
    #[error("the Federation Server did not answer in time")]
    Timeout,
    /// No usable token.
    #[error("no usable token: {0}")]
    Token(#[from] TokenError),
    /// The request cannot be built (a name that cannot be a path segment, …).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
}

impl RemoteError {
    /// Whether trying again may help (connect errors, timeouts, 429, 5xx, a TokenRequest
    /// that may pass: [`TokenError::Unavailable`]).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RemoteError::Unreachable(_)
                | RemoteError::Timeout
                | RemoteError::RateLimited { .. }
                | RemoteError::Server(_)
                | RemoteError::Token(TokenError::Unavailable(_))
        )
    }
}

/// An issued or renewed credential's handle and lease facts, as `/v1` answers them. Never
/// holds a value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// The handle (absent: nothing to renew or revoke, e.g. a Password).
    #[serde(default)]
    pub id: Option<String>,
    /// When it lapses (RFC 3339), if it does.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Seconds from the answer until it lapses (absent: it does not).
    #[serde(default)]
    pub lease_duration: Option<u64>,
    /// Whether `renew` can extend it.
    #[serde(default)]
    pub renewable: bool,
}

/// A generator's output with its credential (`/v1/generators/…`).
pub struct Issued {
    /// Key → raw bytes.
    pub data: BTreeMap<String, Zeroizing<Vec<u8>>>,
    /// The handle and lease.
    pub credential: Credential,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("credential", &self.credential)
            .finish()
    }
}

/// A `find` for `/v1/secretstore/{store}/find` (ESO's `dataFrom.find`).
#[derive(Clone, Debug, Default)]
pub struct Find<'a> {
    /// Only keys under this path.
    pub path: Option<&'a str>,
    /// Keys whose name matches this regular expression.
    pub name_regexp: Option<&'a str>,
    /// Secrets carrying all of these tags.
    pub tags: Option<&'a BTreeMap<String, String>>,
}

/// Talks to one Federation Server. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct RemoteClient {
    http: reqwest::Client,
    base: reqwest::Url,
    /// `base64(client CA PEM)` for the body's `ca.crt`.
    client_ca: Option<Arc<str>>,
    max_answer_bytes: usize,
    timeout: Duration,
    /// What TLS trusts, for error messages.
    hint: TrustHint,
    /// Whether a TLS client certificate is presented ([`Auth::ClientCertificate`]).
    client_identity: bool,
}

impl std::fmt::Debug for RemoteClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteClient")
            .field("base", &self.base.as_str())
            .field("sends_ca_crt", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

/// PEM certificates of a bundle; an error when it holds none or is not PEM.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    if pem.len() > MAX_CA_BYTES {
        return Err("CA bundle larger than 1 MiB".into());
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM certificates ({e})"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

/// Certificates as PEM (`CERTIFICATE` blocks, 64-character lines, LF), nothing else.
fn certificates_pem(certs: &[CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for c in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = B64.encode(c.as_ref());
        for line in b64.as_bytes().chunks(64) {
            // Base64 is ASCII: every chunk is UTF-8.
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

impl RemoteClient {
    /// Builds the client. Errors: [`RemoteConfigError::Url`] (not an absolute `https`
    /// URL, or one with credentials, a query or a fragment), [`RemoteConfigError::Ca`] (no PEM certificate in `trust.ca_pem` or
    /// `client_ca`), [`RemoteConfigError::Client`].
    pub fn new(settings: &RemoteSettings) -> Result<Self, RemoteConfigError> {
        let url_err = |reason: &str| RemoteConfigError::Url {
            setting: settings.url_setting,
            reason: reason.to_string(),
        };
        let base =
            reqwest::Url::parse(&settings.url).map_err(|e| url_err(&format!("not a URL ({e})")))?;
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(url_err("not an absolute URL with a host"));
        }
        if base.scheme() != "https" {
            return Err(url_err(
                "must be an https:// URL (the token and secret values travel on it)",
            ));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(url_err("must not hold credentials"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(url_err("must not have a query or fragment"));
        }
        let ca_err = |reason: String| RemoteConfigError::Ca {
            setting: match &settings.trust.ca_label {
                Some(l) => format!("{} ({l})", settings.ca_setting),
                None => settings.ca_setting.to_string(),
            },
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        let pinned = !settings.trust.ca_pem.is_empty();
        if pinned {
            for c in pem_certificates(&settings.trust.ca_pem).map_err(ca_err)? {
                roots.add(c).map_err(|e| ca_err(e.to_string()))?;
            }
        }
        let public_roots = settings.trust.public_roots || !pinned;
        if public_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        let client_ca = match &settings.client_ca {
            Some(pem) => {
                let certs = pem_certificates(pem).map_err(|reason| RemoteConfigError::Ca {
                    setting: "ca.crt (the client cluster's CA)".into(),
                    reason,
                })?;
                // Only the certificates, re-encoded: never what else the file or Secret
                // holds (a private key next to its certificate, comments).
                Some(Arc::from(B64.encode(certificates_pem(&certs))))
            }
            None => None,
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RemoteConfigError::Client(e.to_string()))?
            .with_root_certificates(roots);
        let tls = match &settings.client_identity {
            // rustls checks that the key is usable and matches the leaf; its error names
            // no key material.
            Some(id) => tls
                .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
                .map_err(|e| {
                    RemoteConfigError::Client(format!("the TLS client certificate: {e}"))
                })?,
            None => tls.with_no_client_auth(),
        };
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            // A redirect would carry the bearer token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(settings.user_agent)
            .build()
            .map_err(|e| RemoteConfigError::Client(e.to_string()))?;
        Ok(RemoteClient {
            http,
            base,
            client_ca,
            max_answer_bytes: settings.max_answer_bytes,
            timeout: settings.timeout,
            hint: TrustHint {
                ca_file: settings.trust.ca_label.clone().filter(|_| pinned),
                ca_setting: settings.ca_setting,
                url_setting: settings.url_setting,
                public_roots,
            },
            client_identity: settings.client_identity.is_some(),
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &reqwest::Url {
        &self.base
    }

    /// `base/segments…`, each segment percent-encoded as one (a `/` in a name is `%2F`, a
    /// `%` is `%25`). Empty, `.` and `..` segments and control characters are refused
    /// ([`RemoteError::InvalidRequest`]): they would change which resource the path names
    /// (the `url` crate drops a `.` or `..` segment rather than encode it, and skips tab,
    /// CR and LF, so `vault\tprod` would name `vaultprod`).
    pub fn url_of(&self, segments: &[&str]) -> Result<reqwest::Url, RemoteError> {
        if segments.iter().any(|s| s.is_empty()) {
            return Err(RemoteError::InvalidRequest("an empty name in the path"));
        }
        if segments.iter().any(|s| s.chars().any(char::is_control)) {
            return Err(RemoteError::InvalidRequest(
                "a name with control characters in the path",
            ));
        }
        if segments.iter().any(|s| matches!(*s, "." | "..")) {
            return Err(RemoteError::InvalidRequest(
                "a name `.` or `..` in the path",
            ));
        }
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| RemoteError::InvalidRequest("the server URL cannot have a path"))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// The body every call sends: `{"ca.crt": …}` when configured, plus `extra`'s members.
    fn body(&self, extra: serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
        let mut map = extra;
        if let Some(ca) = &self.client_ca {
            map.insert("ca.crt".into(), serde_json::Value::String(ca.to_string()));
        }
        serde_json::Value::Object(map)
    }

    /// Sends one request; any status but those in `ok` becomes its [`RemoteError`].
    async fn send(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        auth: Auth<'_>,
        body: serde_json::Value,
        ok: &[u16],
    ) -> Result<reqwest::Response, RemoteError> {
        let request = self.http.request(method, url);
        // One credential per request: the server refuses a bearer token on a connection
        // that presented a client certificate, and a request with neither.
        let request = match (auth, self.client_identity) {
            (Auth::Bearer(token), false) => request.header(AUTHORIZATION, token.header().clone()),
            (Auth::ClientCertificate, true) => request,
            (Auth::Bearer(_), true) => {
                return Err(RemoteError::InvalidRequest(
                    "a bearer token on a client that presents a TLS client certificate",
                ));
            }
            (Auth::ClientCertificate, false) => {
                return Err(RemoteError::InvalidRequest(
                    "no TLS client certificate is configured to authenticate with",
                ));
            }
        };
        let resp = request
            .json(&body)
            .send()
            .await
            .map_err(|e| self.classify(&e))?;
        let status = resp.status().as_u16();
        if ok.contains(&status) {
            return Ok(resp);
        }
        Err(match status {
            401 => RemoteError::Unauthorized,
            403 => RemoteError::Forbidden,
            404 => RemoteError::NotFound,
            409 => RemoteError::NotRenewable,
            429 => RemoteError::RateLimited {
                retry_after: retry_after(resp.headers()),
            },
            500..=599 => RemoteError::Server(status),
            other => RemoteError::Rejected(other),
        })
    }

    /// Reads an answer within [`RemoteSettings::max_answer_bytes`]; the buffer is wiped.
    async fn read(&self, mut resp: reqwest::Response) -> Result<Zeroizing<Vec<u8>>, RemoteError> {
        let limit = self.max_answer_bytes;
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(RemoteError::Malformed(
                "answer larger than the client's limit",
            ));
        }
        let mut out = Zeroizing::new(Vec::new());
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.classify(&e))? {
            if out.len() + chunk.len() > limit {
                return Err(RemoteError::Malformed(
                    "answer larger than the client's limit",
                ));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    fn classify(&self, err: &reqwest::Error) -> RemoteError {
        let host = err
            .url()
            .and_then(|u| u.host_str())
            .unwrap_or("the server")
            .to_owned();
        if let Some(t) = tls_cause(err, &host, &self.hint) {
            return RemoteError::Tls(t);
        }
        if err.is_timeout() {
            return RemoteError::Timeout;
        }
        RemoteError::Unreachable(root_cause(err))
    }

    /// The call's timeout, for callers that bound a sequence of calls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// ESE `POST /secretstore/{store}/secrets/{name}`: the value, parsed from the JSON
    /// string the server answers (ESE's own client keeps the quotes; this one does not).
    /// Text only: the server answers invalid UTF-8 as U+FFFD (Go's `string(bytes)`); use
    /// [`RemoteClient::get`] for bytes.
    pub async fn ese_secret(
        &self,
        auth: impl Into<Auth<'_>>,
        store: &str,
        name: &str,
    ) -> Result<Zeroizing<String>, RemoteError> {
        let url = self.url_of(&["secretstore", store, "secrets", name])?;
        let resp = self
            .send(
                reqwest::Method::POST,
                url,
                auth.into(),
                self.body(Default::default()),
                &[200],
            )
            .await?;
        let body = self.read(resp).await?;
        // Parser errors are not shown: they can quote the input.
        let value: String = serde_json::from_slice(&body)
            .map_err(|_| RemoteError::Malformed("expected the value as a JSON string"))?;
        Ok(Zeroizing::new(value))
    }

    /// ESE `POST /generators/{namespace}/{kind}/{name}`: the generated keys (strings as
    /// they are, other JSON values as JSON text, as ESE's client reads them).
    pub async fn ese_generate(
        &self,
        auth: impl Into<Auth<'_>>,
        namespace: &str,
        kind: &str,
        name: &str,
    ) -> Result<BTreeMap<String, Zeroizing<String>>, RemoteError> {
        let url = self.url_of(&["generators", namespace, kind, name])?;
        let resp = self
            .send(
                reqwest::Method::POST,
                url,
                auth.into(),
                self.body(Default::default()),
                &[200],
            )
            .await?;
        let body = self.read(resp).await?;
        let map: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&body)
            .map_err(|_| RemoteError::Malformed("expected a JSON object of generated keys"))?;
        Ok(map
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, Zeroizing::new(text))
            })
            .collect())
    }

    /// ESE `DELETE /generators/{namespace}/{kind}/{name}`: revokes every credential this
    /// identity was issued by that generator (the server answers `null`).
    pub async fn ese_revoke(
        &self,
        auth: impl Into<Auth<'_>>,
        namespace: &str,
        kind: &str,
        name: &str,
    ) -> Result<(), RemoteError> {
        let url = self.url_of(&["generators", namespace, kind, name])?;
        self.send(
            reqwest::Method::DELETE,
            url,
            auth.into(),
            self.body(Default::default()),
            &[200, 204],
        )
        .await
        .map(drop)
    }

    /// `POST /v1/secretstore/{store}/get`: the bytes of `key` (its `property`, at
    /// `version`).
    pub async fn get(
        &self,
        auth: impl Into<Auth<'_>>,
        store: &str,
        key: &str,
        property: Option<&str>,
        version: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, RemoteError> {
        let url = self.url_of(&["v1", "secretstore", store, "get"])?;
        let body = self.body(remote_ref(key, property, version));
        let resp = self
            .send(reqwest::Method::POST, url, auth.into(), body, &[200])
            .await?;
        let body = self.read(resp).await?;
        #[derive(Deserialize)]
        struct Answer {
            value: Wiped,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|_| RemoteError::Malformed("expected {\"value\": <base64>}"))?;
        decode(&answer.value.0)
    }

    /// `POST /v1/secretstore/{store}/extract`: every property of `key` (or of the object
    /// at its `property`), as bytes.
    pub async fn extract(
        &self,
        auth: impl Into<Auth<'_>>,
        store: &str,
        key: &str,
        property: Option<&str>,
        version: Option<&str>,
    ) -> Result<BTreeMap<String, Zeroizing<Vec<u8>>>, RemoteError> {
        let url = self.url_of(&["v1", "secretstore", store, "extract"])?;
        let body = self.body(remote_ref(key, property, version));
        let resp = self
            .send(reqwest::Method::POST, url, auth.into(), body, &[200])
            .await?;
        let body = self.read(resp).await?;
        decode_data(&body)
    }

    /// `POST /v1/secretstore/{store}/find`: the matching keys this identity may `get`.
    pub async fn find(
        &self,
        auth: impl Into<Auth<'_>>,
        store: &str,
        find: &Find<'_>,
    ) -> Result<BTreeMap<String, Zeroizing<Vec<u8>>>, RemoteError> {
        let url = self.url_of(&["v1", "secretstore", store, "find"])?;
        let mut f = serde_json::Map::new();
        if let Some(p) = find.path {
            f.insert("path".into(), p.into());
        }
        if let Some(r) = find.name_regexp {
            f.insert("name".into(), serde_json::json!({ "regexp": r }));
        }
        if let Some(tags) = find.tags.filter(|t| !t.is_empty()) {
            f.insert("tags".into(), serde_json::json!(tags));
        }
        let mut extra = serde_json::Map::new();
        extra.insert("find".into(), serde_json::Value::Object(f));
        let resp = self
            .send(
                reqwest::Method::POST,
                url,
                auth.into(),
                self.body(extra),
                &[200],
            )
            .await?;
        let body = self.read(resp).await?;
        decode_data(&body)
    }

    /// `POST /v1/generators/{namespace}/{kind}/{name}`: a credential, as bytes, with its
    /// handle.
    pub async fn issue(
        &self,
        auth: impl Into<Auth<'_>>,
        namespace: &str,
        kind: &str,
        name: &str,
    ) -> Result<Issued, RemoteError> {
        let url = self.url_of(&["v1", "generators", namespace, kind, name])?;
        let resp = self
            .send(
                reqwest::Method::POST,
                url,
                auth.into(),
                self.body(Default::default()),
                &[200],
            )
            .await?;
        let body = self.read(resp).await?;
        #[derive(Deserialize)]
        struct Answer {
            data: BTreeMap<String, Wiped>,
            #[serde(default)]
            credential: Credential,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|_| RemoteError::Malformed("expected {data, credential}"))?;
        let mut data = BTreeMap::new();
        for (k, v) in answer.data {
            data.insert(k, decode(&v.0)?);
        }
        Ok(Issued {
            data,
            credential: answer.credential,
        })
    }

    /// `POST /v1/credentials/{id}/renew` by `increment` seconds (`None`: the backend's
    /// default). [`RemoteError::NotRenewable`] when a new credential is needed.
    pub async fn renew(
        &self,
        auth: impl Into<Auth<'_>>,
        id: &str,
        increment: Option<u64>,
    ) -> Result<Credential, RemoteError> {
        let url = self.url_of(&["v1", "credentials", id, "renew"])?;
        let mut extra = serde_json::Map::new();
        if let Some(seconds) = increment {
            extra.insert("increment".into(), seconds.into());
        }
        let resp = self
            .send(
                reqwest::Method::POST,
                url,
                auth.into(),
                self.body(extra),
                &[200],
            )
            .await?;
        let body = self.read(resp).await?;
        #[derive(Deserialize)]
        struct Answer {
            credential: Credential,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|_| RemoteError::Malformed("expected {credential}"))?;
        Ok(answer.credential)
    }

    /// `DELETE /v1/credentials/{id}`: revokes exactly that credential. Already gone (404,
    /// also what another identity's handle answers) counts as revoked.
    pub async fn revoke(&self, auth: impl Into<Auth<'_>>, id: &str) -> Result<(), RemoteError> {
        let url = self.url_of(&["v1", "credentials", id])?;
        self.send(
            reqwest::Method::DELETE,
            url,
            auth.into(),
            self.body(Default::default()),
            &[200, 204, 404],
        )
        .await
        .map(drop)
    }
}

fn remote_ref(
    key: &str,
    property: Option<&str>,
    version: Option<&str>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut r = serde_json::Map::new();
    r.insert("key".into(), key.into());
    if let Some(p) = property {
        r.insert("property".into(), p.into());
    }
    if let Some(v) = version {
        r.insert("version".into(), v.into());
    }
    let mut extra = serde_json::Map::new();
    extra.insert("remoteRef".into(), serde_json::Value::Object(r));
    extra
}

/// A string of an answer (base64 of a value), wiped when dropped.
#[derive(Deserialize)]
#[serde(transparent)]
struct Wiped(String);

impl Drop for Wiped {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

fn decode(b64: &str) -> Result<Zeroizing<Vec<u8>>, RemoteError> {
    B64.decode(b64.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| RemoteError::Malformed("a value is not base64"))
}

/// `{"data": {key: base64}}` → key → bytes.
fn decode_data(body: &[u8]) -> Result<BTreeMap<String, Zeroizing<Vec<u8>>>, RemoteError> {
    #[derive(Deserialize)]
    struct Answer {
        data: BTreeMap<String, Wiped>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|_| RemoteError::Malformed("expected {\"data\": {key: <base64>}}"))?;
    let mut out = BTreeMap::new();
    for (k, v) in answer.data {
        out.insert(k, decode(&v.0)?);
    }
    Ok(out)
}

/// Walks an error's causes for a TLS failure (rustls errors sit inside `io::Error`s)
/// and says in plain words what is wrong and how to fix it ([`tls_explain`]).
fn tls_cause(
    err: &(dyn std::error::Error + 'static),
    host: &str,
    hint: &TrustHint,
) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(tls_explain::explain(r, host, hint));
        }
        // An `io::Error`'s `source()` skips the error it wraps (itself often another
        // `io::Error` around the rustls error): descend into it instead.
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            cur = Some(inner as &(dyn std::error::Error + 'static));
            continue;
        }
        // Some layers re-wrap the rustls error as text; its messages are distinctive.
        // Not reqwest's own text: it holds the URL, whose names (a key called
        // `tls-handshake-key`) are the caller's words, not a TLS failure.
        if e.downcast_ref::<reqwest::Error>().is_none() {
            let text = e.to_string();
            if TLS_PHRASES.iter().any(|p| text.contains(p)) {
                return Some(root_cause(e));
            }
        }
        cur = e.source();
    }
    None
}

/// Beginnings of rustls error messages (`rustls::Error`'s `Display`).
const TLS_PHRASES: &[&str] = &[
    "invalid peer certificate",
    "peer is incompatible",
    "peer misbehaved",
    "received fatal alert",
    "invalid certificate",
    "handshake",
];

/// The deepest cause's text (e.g. "Connection refused"), for "server unreachable" lines.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `Retry-After` in its seconds form, capped at 5 minutes.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn client(url: &str) -> RemoteClient {
        RemoteClient::new(&RemoteSettings::new(url)).unwrap()
    }

    #[test]
    fn urls_encode_names_as_one_segment() {
        let c = client("https://esi.example.com/prefix/");
        let u = c
            .url_of(&["v1", "secretstore", "vault prod", "get"])
            .unwrap();
        assert_eq!(
            u.as_str(),
            "https://esi.example.com/prefix/v1/secretstore/vault%20prod/get"
        );
        let u = c.url_of(&["secretstore", "s", "secrets", "a/b?c"]).unwrap();
        assert_eq!(
            u.as_str(),
            "https://esi.example.com/prefix/secretstore/s/secrets/a%2Fb%3Fc"
        );
        assert!(matches!(
            c.url_of(&["v1", "credentials", "", "renew"]),
            Err(RemoteError::InvalidRequest(_))
        ));
    }

    /// Review finding 1: the `url` crate drops a `.` or `..` segment given to
    /// `path_segments_mut().extend` instead of encoding it, so a name `..` changed which
    /// resource the path names (`/generators/../ns/revoke` became `/generators/ns/revoke`).
    #[test]
    fn dot_names_are_refused_not_dropped() {
        let c = client("https://esi.example.com/prefix/");
        for bad in [".", ".."] {
            for segments in [
                ["v1", "secretstore", bad, "get"].as_slice(),
                ["generators", bad, "ns", "revoke"].as_slice(),
                ["v1", "credentials", bad, "renew"].as_slice(),
            ] {
                assert!(
                    matches!(c.url_of(segments), Err(RemoteError::InvalidRequest(_))),
                    "{segments:?}: {:?}",
                    c.url_of(segments).map(|u| u.to_string())
                );
            }
        }
        // Dots that are not a whole segment, and encoded dots, stay text of one segment.
        let u = c.url_of(&["secretstore", "s", "secrets", "..."]).unwrap();
        assert_eq!(
            u.as_str(),
            "https://esi.example.com/prefix/secretstore/s/secrets/..."
        );
        let u = c
            .url_of(&["secretstore", "s", "secrets", "%2e%2E"])
            .unwrap();
        assert_eq!(
            u.as_str(),
            "https://esi.example.com/prefix/secretstore/s/secrets/%252e%252E"
        );
    }

    /// Review finding 9: the `url` crate skips tab, CR and LF inside a segment, so
    /// `vault\tprod` named the store `vaultprod`, `.\n.` became a `..` segment and `\t` an
    /// empty one.
    #[test]
    fn control_characters_in_names_are_refused() {
        let c = client("https://esi.example.com/prefix/");
        for bad in ["vault\tprod", ".\n.", "\t", "a\rb", "a\u{0}b", "a\u{7f}b"] {
            let got = c.url_of(&["v1", "secretstore", bad, "get"]);
            assert!(
                matches!(got, Err(RemoteError::InvalidRequest(_))),
                "{bad:?}: {:?}",
                got.map(|u| u.to_string())
            );
        }
    }

    /// Review finding 10: `ca.crt` was the file or Secret value as it is, so a bundle
    /// holding a private key next to its certificate (a combined `cert+key` PEM, a
    /// careless `caCertSecretRef`) sent the key to the server on every call. Only the
    /// certificates go now.
    #[test]
    fn only_the_certificates_of_the_client_ca_are_sent() {
        let ca = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let mut pem = ca.cert.pem();
        pem.push_str(&ca.signing_key.serialize_pem());
        pem.push_str("# a comment, then the certificate again\n");
        pem.push_str(&ca.cert.pem());
        let mut s = RemoteSettings::new("https://h");
        s.client_ca = Some(pem.into_bytes());
        let c = RemoteClient::new(&s).unwrap();
        let sent = B64
            .decode(c.body(Default::default())["ca.crt"].as_str().unwrap())
            .unwrap();
        let sent = String::from_utf8(sent).unwrap();
        assert!(!sent.contains("PRIVATE KEY"), "{sent}");
        assert!(!sent.contains("comment"), "{sent}");
        assert_eq!(
            pem_certificates(sent.as_bytes()).unwrap(),
            vec![ca.cert.der().clone(), ca.cert.der().clone()]
        );
    }

    /// Review finding 4: a name with a TLS word ("handshake") in the URL made a refused
    /// connection look like a TLS failure (reqwest's text holds the URL), which is not
    /// retried.
    #[tokio::test]
    async fn a_name_in_the_url_is_not_a_tls_failure() {
        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = client(&format!("https://127.0.0.1:{port}"));
        let tok = Token::new("t").unwrap();
        let e = c
            .ese_secret(&tok, "s", "tls-handshake-key")
            .await
            .unwrap_err();
        assert!(matches!(e, RemoteError::Unreachable(_)), "{e:?}");
        assert!(e.is_transient());
    }

    /// Issue 18: one credential per request: a client presenting a TLS client certificate
    /// sends no bearer token, and a client without one cannot be asked to rely on one;
    /// both are refused before anything is sent.
    #[tokio::test]
    async fn exactly_one_credential_per_request() {
        let plain = client("https://127.0.0.1:1");
        let e = plain
            .ese_secret(Auth::ClientCertificate, "s", "n")
            .await
            .unwrap_err();
        assert!(
            matches!(e, RemoteError::InvalidRequest(m) if m.contains("no TLS client certificate")),
            "{e:?}"
        );
        let ca = crate::cli::svid::tests::Ca::new();
        let (chain, key) = ca.svid(&["spiffe://example.org/a"]);
        let mut settings = RemoteSettings::new("https://127.0.0.1:1");
        settings.client_identity = Some(ClientIdentity {
            chain: CertificateDer::pem_slice_iter(chain.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap(),
            key: Arc::new(rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()),
        });
        let mtls = RemoteClient::new(&settings).unwrap();
        let token = Token::new("eyJ.a.b").unwrap();
        let e = mtls.ese_secret(&token, "s", "n").await.unwrap_err();
        assert!(
            matches!(e, RemoteError::InvalidRequest(m) if m.contains("bearer token")),
            "{e:?}"
        );
        // A key that is not the leaf's: the client is not built.
        let (_, other) = ca.svid(&["spiffe://example.org/b"]);
        settings.client_identity = Some(ClientIdentity {
            chain: CertificateDer::pem_slice_iter(chain.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap(),
            key: Arc::new(
                rustls_pki_types::PrivateKeyDer::from_pem_slice(other.as_bytes()).unwrap(),
            ),
        });
        let e = RemoteClient::new(&settings).unwrap_err();
        assert!(
            matches!(&e, RemoteConfigError::Client(m) if m.contains("TLS client certificate")),
            "{e:?}"
        );
    }

    #[test]
    fn only_https_urls() {
        for bad in [
            "http://esi.example.com",
            "http://127.0.0.1:8080",
            "ftp://esi.example.com",
            "https://user:pw@esi.example.com",
            "https://esi.example.com/?q=1",
            "not a url",
            "mailto:x@y",
        ] {
            let e = RemoteClient::new(&RemoteSettings::new(bad)).unwrap_err();
            assert!(
                matches!(
                    e,
                    RemoteConfigError::Url {
                        setting: "server.url",
                        ..
                    }
                ),
                "{bad}: {e}"
            );
            assert!(!e.to_string().contains("pw"), "{e}");
        }
        for good in ["https://esi.example.com", "https://127.0.0.1:8443/prefix"] {
            RemoteClient::new(&RemoteSettings::new(good)).unwrap();
        }
    }

    #[test]
    fn ca_bundles_must_hold_certificates() {
        let mut s = RemoteSettings::new("https://h");
        s.trust.ca_pem = b"not a certificate".to_vec();
        s.trust.ca_label = Some("secret ns/ca".into());
        s.trust.public_roots = false;
        let e = RemoteClient::new(&s).unwrap_err().to_string();
        assert!(e.starts_with("server.caRef (secret ns/ca): "), "{e}");
        let ca = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        s.trust.ca_pem = ca.cert.pem().into_bytes();
        s.client_ca = Some(b"junk".to_vec());
        assert!(
            RemoteClient::new(&s)
                .unwrap_err()
                .to_string()
                .contains("ca.crt")
        );
        s.client_ca = Some(ca.cert.pem().into_bytes());
        let c = RemoteClient::new(&s).unwrap();
        let body = c.body(Default::default());
        assert_eq!(
            B64.decode(body["ca.crt"].as_str().unwrap()).unwrap(),
            ca.cert.pem().into_bytes()
        );
        assert!(!c.hint.public_roots, "a given CA is pinned");
        // Without a client CA, no `ca.crt` member at all.
        s.client_ca = None;
        let c = RemoteClient::new(&s).unwrap();
        assert_eq!(c.body(Default::default()), serde_json::json!({}));
    }

    #[test]
    fn answers_decode_strictly() {
        let m = decode_data(br#"{"data": {"a": "AP8=", "b": ""}}"#).unwrap();
        assert_eq!(m["a"].as_slice(), &[0u8, 0xff]);
        assert!(m["b"].is_empty());
        assert_eq!(
            decode_data(br#"{"data": {"a": "not base64!"}}"#).unwrap_err(),
            RemoteError::Malformed("a value is not base64")
        );
        assert!(decode_data(br#"{"value": "AA=="}"#).is_err());
        assert!(decode_data(br#""s3cr3t""#).is_err());
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("99999"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn transient_errors() {
        assert!(RemoteError::Server(503).is_transient());
        assert!(RemoteError::Timeout.is_transient());
        assert!(RemoteError::RateLimited { retry_after: None }.is_transient());
        assert!(!RemoteError::NotFound.is_transient());
        assert!(!RemoteError::Unauthorized.is_transient());
        assert!(!RemoteError::Tls("x".into()).is_transient());
        assert!(RemoteError::Token(TokenError::Unavailable("x".into())).is_transient());
        assert!(!RemoteError::Token(TokenError::Refused("x".into())).is_transient());
        assert!(!RemoteError::Token(TokenError::Empty).is_transient());
    }
}
