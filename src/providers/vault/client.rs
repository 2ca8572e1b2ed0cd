//! The Vault/OpenBao connection shared by the `vault` provider (KV reads) and the
//! `VaultDynamicSecret` generator (any API call): server, namespace, TLS trust, and
//! authentication (a static token, or AppRole with a cached token renewed before its
//! lease ends and re-login once on 403). Calls are bounded (timeout, body size) and their
//! errors carry status codes and fixed text, never URLs, tokens or values.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::providers::ProviderError;
use crate::providers::tls::http_client;
use crate::resources::{SecretIndex, SecretKeySelector, SecretRefError};

/// Longest key we accept (bounds URL size and work on caller input).
const MAX_KEY_LEN: usize = 1024;
/// Largest answer body we read from Vault.
const MAX_BODY: usize = 8 << 20;
/// Renew an AppRole token this long before its lease ends (at most a fifth of the lease).
const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(30);
const HEADER_TOKEN: &str = "x-vault-token";
const HEADER_NAMESPACE: &str = "x-vault-namespace";

/// Why a connection block cannot be used (field names and fixed text, never values). The
/// embedding provider or generator adds whose block it is.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    /// A field is missing or malformed.
    #[error("{0}")]
    Invalid(String),
    /// The block asks for something this build does not support.
    #[error("{0}")]
    Unsupported(String),
    /// An auth `…SecretRef` does not resolve.
    #[error("{field}: {source}")]
    SecretRef {
        /// The referring field (`auth.tokenSecretRef`, …).
        field: &'static str,
        /// Why it does not resolve.
        source: SecretRefError,
    },
}

impl ConnectionError {
    fn invalid(reason: impl Into<String>) -> Self {
        ConnectionError::Invalid(reason.into())
    }

    fn unsupported(reason: impl Into<String>) -> Self {
        ConnectionError::Unsupported(reason.into())
    }
}

/// The connection fields of ESO's `provider.vault` block (`server`, `namespace`,
/// `caBundle`, `auth`; `caProvider` and `tls` are refused, as ignoring them would change
/// trust). Other fields (`path`, `version`, …) belong to whoever embeds it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnectionSpec {
    server: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    ca_bundle: Option<String>,
    /// Trust material from another object: not served, and ignoring it would change trust.
    #[serde(default)]
    ca_provider: Option<Value>,
    /// Client certificates: not served.
    #[serde(default)]
    tls: Option<Value>,
    #[serde(default)]
    auth: Option<VaultAuthSpec>,
}

/// `auth`: exactly one method.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VaultAuthSpec {
    /// Namespace to log in to, when it differs from the store's.
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    token_secret_ref: Option<SecretKeySelector>,
    #[serde(default)]
    app_role: Option<AppRoleSpec>,
    /// Every other ESO method (kubernetes, jwt, ldap, cert, iam, userPass, …).
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// `auth.appRole`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppRoleSpec {
    #[serde(default = "default_approle_path")]
    path: String,
    #[serde(default)]
    role_id: Option<String>,
    #[serde(default)]
    role_ref: Option<SecretKeySelector>,
    secret_ref: SecretKeySelector,
}

fn default_approle_path() -> String {
    "approle".to_string()
}

/// How requests authenticate.
enum Auth {
    /// A static token (sensitive header value).
    Token(HeaderValue),
    /// AppRole: logs in lazily, caches the token until shortly before its lease ends.
    AppRole(Box<AppRole>),
}

struct AppRole {
    login_url: Url,
    namespace: Option<HeaderValue>,
    role_id: String,
    secret_id: String,
    cached: Mutex<Option<CachedToken>>,
}

struct CachedToken {
    token: HeaderValue,
    /// None: the token does not expire.
    renew_at: Option<Instant>,
}

/// An authenticated Vault/OpenBao client.
pub(crate) struct VaultClient {
    client: reqwest::Client,
    server: Url,
    namespace: Option<HeaderValue>,
    auth: Auth,
}

// Tokens and ids never appear in Debug output.
impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("server", &self.server.as_str())
            .field(
                "auth",
                &match self.auth {
                    Auth::Token(_) => "token",
                    Auth::AppRole(_) => "appRole",
                },
            )
            .finish_non_exhaustive()
    }
}

/// Checks one path segment of a key or mount: no traversal, no empty segments.
pub(super) fn check_segment(segment: &str) -> Result<(), &'static str> {
    if segment.is_empty() {
        return Err("has an empty path segment");
    }
    if segment == "." || segment == ".." {
        return Err("has a relative path segment");
    }
    if segment.chars().any(char::is_control) {
        return Err("has control characters");
    }
    Ok(())
}

/// Splits a slash-separated path into checked segments.
pub(super) fn segments(path: &str) -> Result<Vec<String>, &'static str> {
    if path.len() > MAX_KEY_LEN {
        return Err("is too long");
    }
    let parts: Vec<String> = path.split('/').map(str::to_string).collect();
    for p in &parts {
        check_segment(p)?;
    }
    Ok(parts)
}

/// A sensitive header value from secret bytes (the message never holds the value).
fn secret_header(bytes: &[u8]) -> Option<HeaderValue> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    let mut value = HeaderValue::from_str(text).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Maps a transport error without its text (which may hold the URL).
fn transport_error(err: &reqwest::Error) -> ProviderError {
    if err.is_timeout() {
        ProviderError::Timeout
    } else if err.is_connect() {
        ProviderError::Unavailable("cannot connect to vault".into())
    } else {
        ProviderError::Unavailable("request to vault failed".into())
    }
}

/// Maps a non-success status. 404 is handled by callers (NotFound).
pub(crate) fn status_error(status: StatusCode) -> ProviderError {
    match status.as_u16() {
        404 => ProviderError::NotFound,
        403 => ProviderError::Backend("permission denied by vault".into()),
        401 => ProviderError::Backend("vault authentication failed".into()),
        429 => ProviderError::Unavailable("vault is rate limiting (HTTP 429)".into()),
        code if status.is_server_error() => {
            ProviderError::Unavailable(format!("vault answered HTTP {code}"))
        }
        code => ProviderError::Backend(format!("vault answered HTTP {code}")),
    }
}

impl VaultClient {
    /// Checks the connection fields and resolves the auth secret refs in `secrets` for an
    /// object of `owner_namespace` (`None`: cluster-scoped; [`SecretIndex::resolve`]'s
    /// namespace rule applies). `timeout` bounds every call.
    pub(crate) fn from_spec(
        spec: ConnectionSpec,
        secrets: &SecretIndex,
        owner_namespace: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, ConnectionError> {
        let resolve = |field: &'static str, selector: &SecretKeySelector| {
            secrets
                .resolve(selector, owner_namespace)
                .map(<[u8]>::to_vec)
                .map_err(|source| ConnectionError::SecretRef { field, source })
        };
        if spec.ca_provider.is_some() {
            return Err(ConnectionError::unsupported("caProvider (use caBundle)"));
        }
        if spec.tls.is_some() {
            return Err(ConnectionError::unsupported("tls client certificates"));
        }
        let server = Url::parse(spec.server.trim())
            .map_err(|_| ConnectionError::invalid("server is not a URL"))?;
        if !matches!(server.scheme(), "http" | "https")
            || server.host_str().is_none()
            || server.cannot_be_a_base()
            || server.query().is_some()
            || server.fragment().is_some()
            || !server.username().is_empty()
            || server.password().is_some()
        {
            return Err(ConnectionError::invalid(
                "server must be an http(s) URL without query, fragment or credentials",
            ));
        }
        let header = |field: &str, value: &str| {
            HeaderValue::from_str(value).map_err(|_| {
                ConnectionError::invalid(format!("{field} is not a valid header value"))
            })
        };
        let namespace = match spec.namespace.as_deref().filter(|n| !n.is_empty()) {
            Some(ns) => Some(header("namespace", ns)?),
            None => None,
        };
        let auth_spec = spec
            .auth
            .ok_or_else(|| ConnectionError::invalid("auth is required"))?;
        if let Some(method) = auth_spec.other.keys().next() {
            return Err(ConnectionError::unsupported(format!(
                "auth method {method:?}"
            )));
        }
        let auth = match (auth_spec.token_secret_ref, auth_spec.app_role) {
            (Some(_), Some(_)) => {
                return Err(ConnectionError::invalid(
                    "auth must name exactly one method",
                ));
            }
            (None, None) => {
                return Err(ConnectionError::invalid(
                    "auth needs tokenSecretRef or appRole",
                ));
            }
            (Some(selector), None) => {
                let bytes = resolve("auth.tokenSecretRef", &selector)?;
                let token = secret_header(&bytes).ok_or_else(|| {
                    ConnectionError::invalid("auth.tokenSecretRef does not hold a usable token")
                })?;
                Auth::Token(token)
            }
            (None, Some(role)) => {
                let role_id = match (role.role_id, role.role_ref) {
                    (Some(id), None) if !id.trim().is_empty() => id.trim().to_string(),
                    (None, Some(selector)) => {
                        let bytes = resolve("auth.appRole.roleRef", &selector)?;
                        std::str::from_utf8(&bytes)
                            .ok()
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .ok_or_else(|| {
                                ConnectionError::invalid(
                                    "auth.appRole.roleRef does not hold a role id",
                                )
                            })?
                            .to_string()
                    }
                    _ => {
                        return Err(ConnectionError::invalid(
                            "auth.appRole needs exactly one of roleId and roleRef",
                        ));
                    }
                };
                let bytes = resolve("auth.appRole.secretRef", &role.secret_ref)?;
                let secret_id = std::str::from_utf8(&bytes)
                    .ok()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        ConnectionError::invalid("auth.appRole.secretRef does not hold a secret id")
                    })?
                    .to_string();
                let mut login_segments = vec!["v1".to_string(), "auth".to_string()];
                login_segments.extend(
                    segments(role.path.trim_matches('/')).map_err(|why| {
                        ConnectionError::invalid(format!("auth.appRole.path {why}"))
                    })?,
                );
                login_segments.push("login".to_string());
                let login_url = join(&server, &login_segments)
                    .ok_or_else(|| ConnectionError::invalid("server cannot carry a path"))?;
                let login_namespace = match auth_spec.namespace.as_deref().filter(|n| !n.is_empty())
                {
                    Some(ns) => Some(header("auth.namespace", ns)?),
                    None => namespace.clone(),
                };
                Auth::AppRole(Box::new(AppRole {
                    login_url,
                    namespace: login_namespace,
                    role_id,
                    secret_id,
                    cached: Mutex::new(None),
                }))
            }
        };
        let client = http_client(spec.ca_bundle.as_deref(), timeout)
            .map_err(|e| ConnectionError::invalid(e.to_string()))?;
        Ok(VaultClient {
            client,
            server,
            namespace,
            auth,
        })
    }

    /// `{server}/v1/…` from checked segments (`None` if the server URL cannot carry a path).
    pub(crate) fn url(&self, segments: &[String]) -> Result<Url, ProviderError> {
        join(&self.server, segments)
            .ok_or_else(|| ProviderError::InvalidRequest("cannot build the vault URL".into()))
    }

    /// The token to send: static, or the cached AppRole token (logging in when needed).
    /// The flag tells whether the token came from a cache (and may be stale).
    async fn token(&self, force_login: bool) -> Result<(HeaderValue, bool), ProviderError> {
        let role = match &self.auth {
            Auth::Token(t) => return Ok((t.clone(), false)),
            Auth::AppRole(role) => role,
        };
        // Holding the lock across the login makes concurrent callers share one login.
        let mut cached = role.cached.lock().await;
        if !force_login
            && let Some(c) = cached.as_ref()
            && c.renew_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok((c.token.clone(), true));
        }
        let fresh = self.login(role).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok((token, false))
    }

    async fn login(&self, role: &AppRole) -> Result<CachedToken, ProviderError> {
        let mut req = self
            .client
            .post(role.login_url.clone())
            .json(&serde_json::json!({"role_id": role.role_id, "secret_id": role.secret_id}));
        if let Some(ns) = &role.namespace {
            req = req.header(HEADER_NAMESPACE, ns.clone());
        }
        let started = Instant::now();
        let (status, body) = self.send(req).await?;
        if !status.is_success() {
            tracing::warn!(status = status.as_u16(), "vault AppRole login refused");
            return Err(match status_error(status) {
                ProviderError::Unavailable(m) => ProviderError::Unavailable(m),
                _ => ProviderError::Backend(format!(
                    "vault AppRole login failed (HTTP {})",
                    status.as_u16()
                )),
            });
        }
        let auth = body.get("auth").cloned().unwrap_or(Value::Null);
        let token = auth
            .get("client_token")
            .and_then(Value::as_str)
            .and_then(|t| secret_header(t.as_bytes()))
            .ok_or_else(|| ProviderError::Backend("vault AppRole login gave no token".into()))?;
        let lease = auth
            .get("lease_duration")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        // checked_add: an absurd lease must not overflow `Instant` (it then never expires
        // here, and a 403 still triggers a fresh login).
        let renew_at = (lease > 0)
            .then(|| {
                let lease = Duration::from_secs(lease);
                started.checked_add(lease - TOKEN_RENEW_MARGIN.min(lease / 5))
            })
            .flatten();
        tracing::debug!(lease_seconds = lease, "vault AppRole login succeeded");
        Ok(CachedToken { token, renew_at })
    }

    /// Sends a request and reads a bounded JSON body (empty body: `null`).
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Value), ProviderError> {
        let mut resp = req.send().await.map_err(|e| transport_error(&e))?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(ProviderError::Backend("vault answer is too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() || body.is_empty() {
            return Ok((status, Value::Null));
        }
        let value = serde_json::from_slice(&body)
            .map_err(|_| ProviderError::Backend("vault answered malformed JSON".into()))?;
        Ok((status, value))
    }

    /// An authenticated GET; on 403 with a cached AppRole token, logs in again once.
    pub(crate) async fn get(&self, url: Url) -> Result<Value, ProviderError> {
        let (status, body) = self.call(reqwest::Method::GET, url, None).await?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(status_error(status))
        }
    }

    /// An authenticated request with an optional JSON body, answering the status and
    /// the bounded JSON body (`null` for non-success). On 403 with a cached AppRole
    /// token, logs in again once. Used by the `VaultDynamicSecret` generator too.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ProviderError> {
        let (mut token, mut from_cache) = self.token(false).await?;
        loop {
            let mut req = self
                .client
                .request(method.clone(), url.clone())
                .header(HEADER_TOKEN, token.clone());
            if let Some(ns) = &self.namespace {
                req = req.header(HEADER_NAMESPACE, ns.clone());
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            let (status, answer) = self.send(req).await?;
            if status == StatusCode::FORBIDDEN && from_cache {
                // The cached token may have been revoked or expired early.
                (token, _) = self.token(true).await?;
                from_cache = false;
                continue;
            }
            return Ok((status, answer));
        }
    }

    /// `{server}/v1/{segments…}` for an API path (`database/creds/app`): segments are
    /// checked (no traversal, no empty segments) and percent-encoded.
    pub(crate) fn api_url(&self, path: &str) -> Result<Url, ProviderError> {
        let mut all = vec!["v1".to_string()];
        all.extend(
            segments(path.trim_matches('/'))
                .map_err(|why| ProviderError::InvalidRequest(format!("path {why}")))?,
        );
        join(&self.server, &all)
            .ok_or_else(|| ProviderError::InvalidRequest("cannot build the vault URL".into()))
    }
}

fn join(server: &Url, segments: &[String]) -> Option<Url> {
    let mut url = server.clone();
    url.path_segments_mut()
        .ok()?
        .pop_if_empty()
        .extend(segments.iter());
    Some(url)
}
