//! The Federation Server client: ESE calls over HTTPS with the ServiceAccount token.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::args::{GeneratorRef, SecretId};
use super::error::{FetchError, SetupError};
use super::tls_explain::{self, TrustHint};
use super::value::{SecretData, SecretValue};

/// Largest answer accepted: one secret, not a data dump.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// An issued or renewed credential's handle and lease, as the server's `/v1` calls answer
/// them. Never holds a value: safe to write to a handoff file.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The handle (absent: nothing to renew or revoke, e.g. a Password).
    #[serde(default)]
    pub id: Option<String>,
    /// Seconds from the answer until it lapses (absent: it does not).
    #[serde(default)]
    pub lease_duration: Option<u64>,
    /// Whether it can be renewed.
    #[serde(default)]
    pub renewable: bool,
}
/// Largest token file read (projected tokens are a few KiB).
const MAX_TOKEN_BYTES: u64 = 64 * 1024;
/// Largest CA bundle read.
const MAX_CA_BYTES: u64 = 1 << 20;

/// Talks to one Federation Server.
pub struct FederatedClient {
    http: reqwest::Client,
    base: reqwest::Url,
    store: Option<String>,
    token_path: PathBuf,
    /// `{"ca.crt": "<base64 PEM>"}` or `{}`, the same for every call.
    body: Arc<serde_json::Value>,
    /// What TLS trusts, for error messages.
    trust: TrustHint,
}

impl std::fmt::Debug for FederatedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederatedClient")
            .field("base", &self.base.as_str())
            .field("store", &self.store)
            .field("token_path", &self.token_path)
            .finish_non_exhaustive()
    }
}

/// The CA file's PEM text (sent as `ca.crt`) and its certificates (trusted for TLS).
type CaBundle = (Vec<u8>, Vec<CertificateDer<'static>>);

/// Reads the CA bundle: `None` when the default path is absent (outside a Pod), an
/// error when a named file is missing or holds no certificate.
fn read_ca(path: &Path, explicit: bool) -> Result<Option<CaBundle>, SetupError> {
    let err = |reason: String| SetupError::Ca {
        path: path.display().to_string(),
        reason,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            tracing::info!(path = %path.display(), "no cluster CA file; trusting the public roots only and sending no ca.crt");
            return Ok(None);
        }
        Err(e) => return Err(err(e.to_string())),
    };
    if meta.len() > MAX_CA_BYTES {
        return Err(err("file too large".into()));
    }
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("not PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(Some((pem, certs)))
}

/// Reads the token afresh (projected tokens rotate) and makes the header from it.
fn bearer(path: &Path) -> Result<HeaderValue, FetchError> {
    let bad = |reason: String| FetchError::BadToken {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.len() > MAX_TOKEN_BYTES {
        return Err(bad("file too large for a token".into()));
    }
    let raw = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let token = std::str::from_utf8(&raw)
        .map_err(|_| bad("not UTF-8 text".into()))?
        .trim();
    if token.is_empty() {
        return Err(bad("empty".into()));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| bad("holds characters a token cannot have".into()))?;
    // Keeps the header out of any debug output of the HTTP stack.
    value.set_sensitive(true);
    Ok(value)
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
        let text = e.to_string();

        if TLS_PHRASES.iter().any(|p| text.contains(p)) {
            return Some(root_cause(e));
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

fn classify(err: &reqwest::Error, hint: &TrustHint) -> FetchError {
    let host = err
        .url()
        .and_then(|u| u.host_str())
        .unwrap_or("the server")
        .to_owned();
    if let Some(t) = tls_cause(err, &host, hint) {
        return FetchError::Tls(t);
    }
    if err.is_timeout() {
        return FetchError::Unreachable("the request timed out".into());
    }
    FetchError::Unreachable(root_cause(err))
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(300)))
}

impl FederatedClient {
    /// Builds the client: TLS trusts the CA bundle plus the public (webpki) roots.
    pub fn new(
        url: &str,
        store: Option<String>,
        token_path: PathBuf,
        ca_path: &Path,
        ca_explicit: bool,
    ) -> Result<Self, SetupError> {
        let base = reqwest::Url::parse(url).map_err(|e| SetupError::Client(e.to_string()))?;
        if base.cannot_be_a_base() {
            return Err(SetupError::Client(
                "the server URL cannot have a path".into(),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let mut body = serde_json::json!({});
        let mut trust = TrustHint::default();
        if let Some((pem, certs)) = read_ca(ca_path, ca_explicit)? {
            trust.ca_file = Some(ca_path.display().to_string());
            for c in certs {
                roots.add(c).map_err(|e| SetupError::Ca {
                    path: ca_path.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
            body = serde_json::json!({
                "ca.crt": base64::engine::general_purpose::STANDARD.encode(pem)
            });
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SetupError::Client(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            // A redirect would carry the bearer token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("esi-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SetupError::Client(e.to_string()))?;
        Ok(Self {
            http,
            base,
            store,
            token_path,
            body: Arc::new(body),
            trust,
        })
    }

    /// The URL of an ESE call; each part is one path segment (a `/` in a name is `%2F`).
    pub fn url_for(&self, id: &SecretId) -> Result<reqwest::Url, FetchError> {
        let mut url = self.base.clone();
        {
            let mut segs = url
                .path_segments_mut()
                .map_err(|_| FetchError::Malformed("server URL cannot have a path"))?;
            segs.pop_if_empty();
            match id {
                SecretId::Store(name) => {
                    let store = self
                        .store
                        .as_deref()
                        .ok_or(FetchError::Malformed("no --federated-store"))?;
                    segs.extend(["secretstore", store, "secrets", name.as_str()]);
                }
                SecretId::Generator(GeneratorRef {
                    namespace,
                    kind,
                    name,
                }) => {
                    segs.extend([
                        "generators",
                        namespace.as_str(),
                        kind.as_str(),
                        name.as_str(),
                    ]);
                }
                SecretId::Local(_) => {
                    return Err(FetchError::Malformed("a local secret asked of the server"));
                }
            }
        }
        Ok(url)
    }

    /// Sends one request with the token (and `ca.crt` unless `body` replaces it); any
    /// status but `ok` becomes its [`FetchError`].
    async fn send(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        body: Option<serde_json::Value>,
        ok: &[u16],
    ) -> Result<reqwest::Response, FetchError> {
        let auth = bearer(&self.token_path)?;
        let resp = self
            .http
            .request(method, url)
            .header(AUTHORIZATION, auth)
            .json(body.as_ref().unwrap_or(&*self.body))
            .send()
            .await
            .map_err(|e| classify(&e, &self.trust))?;
        let status = resp.status().as_u16();
        if ok.contains(&status) {
            return Ok(resp);
        }
        Err(match status {
            401 => FetchError::Unauthorized,
            403 => FetchError::Forbidden("the server refused the request (HTTP 403)".into()),
            404 => FetchError::NotFound(
                "does not exist, or this ServiceAccount may not read it (HTTP 404)".into(),
            ),
            409 => FetchError::NotRenewable,
            429 => FetchError::RateLimited {
                retry_after: retry_after(resp.headers()),
            },
            500..=599 => FetchError::Server(status),
            other => FetchError::Rejected(other),
        })
    }

    /// `base/segments…`, each segment percent-encoded as one.
    fn url_of(&self, segments: &[&str]) -> Result<reqwest::Url, FetchError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| FetchError::Malformed("server URL cannot have a path"))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// One attempt at issuing a generator's credential with its handle (`POST /v1/generators/…`).
    pub async fn issue_once(&self, g: &GeneratorRef) -> Result<(SecretData, Lease), FetchError> {
        let url = self.url_of(&["v1", "generators", &g.namespace, &g.kind, &g.name])?;
        let resp = self.send(reqwest::Method::POST, url, None, &[200]).await?;
        let body = read_capped(resp).await?;
        #[derive(serde::Deserialize)]
        struct Issued {
            data: BTreeMap<String, String>,
            #[serde(default)]
            credential: Lease,
        }
        let issued: Issued = serde_json::from_slice(&body)
            .map_err(|_| FetchError::Malformed("expected {data, credential}"))?;
        let mut keys = BTreeMap::new();
        for (k, v) in issued.data {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .map_err(|_| FetchError::Malformed("a value is not base64"))?;
            keys.insert(k, SecretValue::new(bytes));
        }
        Ok((SecretData::from_keys(keys), issued.credential))
    }

    /// One attempt at renewing credential `id` by `increment` seconds (`None`: the
    /// backend's default). [`FetchError::NotRenewable`] when a new one is needed.
    pub async fn renew_once(&self, id: &str, increment: Option<u64>) -> Result<Lease, FetchError> {
        let url = self.url_of(&["v1", "credentials", id, "renew"])?;
        let mut body = (*self.body).clone();
        if let (Some(seconds), Some(map)) = (increment, body.as_object_mut()) {
            map.insert("increment".into(), seconds.into());
        }
        let resp = self
            .send(reqwest::Method::POST, url, Some(body), &[200])
            .await?;
        let body = read_capped(resp).await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            credential: Lease,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|_| FetchError::Malformed("expected {credential}"))?;
        Ok(answer.credential)
    }

    /// One attempt at revoking credential `id`. Already gone (404) counts as revoked.
    pub async fn revoke_once(&self, id: &str) -> Result<(), FetchError> {
        let url = self.url_of(&["v1", "credentials", id])?;
        self.send(reqwest::Method::DELETE, url, None, &[204, 404])
            .await
            .map(drop)
    }

    /// One attempt at one secret (the caller retries).
    pub async fn fetch_once(&self, id: &SecretId) -> Result<SecretData, FetchError> {
        let url = self.url_for(id)?;
        let resp = self.send(reqwest::Method::POST, url, None, &[200]).await?;
        let body = read_capped(resp).await?;
        match id {
            SecretId::Store(_) => {
                // ESE answers the value as a JSON string. Parser errors are not shown:
                // they can quote the input.
                let value: String = serde_json::from_slice(&body)
                    .map_err(|_| FetchError::Malformed("expected the value as a JSON string"))?;
                Ok(SecretData::from_store_value(value))
            }
            _ => {
                let map: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&body)
                    .map_err(|_| {
                        FetchError::Malformed("expected a JSON object of generated keys")
                    })?;
                Ok(SecretData::from_keys(
                    map.into_iter()
                        .map(|(k, v)| {
                            let text = match v {
                                serde_json::Value::String(s) => s,
                                other => other.to_string(),
                            };
                            (k, SecretValue::new(text))
                        })
                        .collect(),
                ))
            }
        }
    }
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| classify(&e, &TrustHint::default()))?
    {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(FetchError::Malformed("answer larger than 1 MiB"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn client(url: &str) -> FederatedClient {
        FederatedClient::new(
            url,
            Some("vault-prod".into()),
            PathBuf::from("/nonexistent/token"),
            Path::new("/nonexistent/ca.crt"),
            false,
        )
        .unwrap()
    }

    #[test]
    fn urls_encode_names_as_one_segment() {
        let c = client("https://esi.example.com");
        let u = c
            .url_for(&SecretId::Store("api-keys/service-a".into()))
            .unwrap();
        assert_eq!(
            u.as_str(),
            "https://esi.example.com/secretstore/vault-prod/secrets/api-keys%2Fservice-a"
        );
        let c = client("https://esi.example.com/prefix/");
        let u = c
            .url_for(&SecretId::Generator(GeneratorRef {
                namespace: "ns".into(),
                kind: "Password".into(),
                name: "a b?".into(),
            }))
            .unwrap();
        assert_eq!(
            u.as_str(),
            "https://esi.example.com/prefix/generators/ns/Password/a%20b%3F"
        );
    }

    #[test]
    fn token_file_problems_are_clear_and_never_show_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = bearer(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with("bad token file") && e.contains("No such file"),
            "{e}"
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "  \n").unwrap();
        assert!(bearer(&empty).unwrap_err().to_string().contains("empty"));
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "secret-token-abc\x01def").unwrap();
        let e = bearer(&bad).unwrap_err().to_string();
        assert!(!e.contains("secret-token"), "{e}");
        let good = dir.path().join("good");
        let mut f = std::fs::File::create(&good).unwrap();
        writeln!(f, "eyJ.a.b").unwrap();
        let h = bearer(&good).unwrap();
        assert!(h.is_sensitive());
        assert_eq!(h.to_str().unwrap(), "Bearer eyJ.a.b");
        assert!(!format!("{h:?}").contains("eyJ"));
    }

    #[test]
    fn ca_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        // Default path absent: tolerated; named path absent: an error.
        assert!(read_ca(&dir.path().join("x"), false).unwrap().is_none());
        assert!(read_ca(&dir.path().join("x"), true).is_err());
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "not a certificate").unwrap();
        assert!(
            read_ca(&junk, true)
                .unwrap_err()
                .to_string()
                .contains("no PEM")
        );
        let ca = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let good = dir.path().join("ca.crt");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        let (pem, certs) = read_ca(&good, true).unwrap().unwrap();
        assert_eq!(certs.len(), 1);
        assert!(!pem.is_empty());
        let c = FederatedClient::new("https://h", None, good.clone(), &good, true).unwrap();
        assert!(c.body["ca.crt"].as_str().unwrap().len() > 100);
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
