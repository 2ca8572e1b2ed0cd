//! The AWS client shared by the `aws` store provider (Secrets Manager, Parameter Store)
//! and the AWS generators (`STSSessionToken`, `ECRAuthorizationToken`): ESO's `region` /
//! `auth.secretRef` / `role` fields, the endpoint overrides, one SigV4-signed call (the
//! `aws-sigv4` crate; no SDK), STS AssumeRole, and the mapping of AWS's refusals.
//!
//! ```yaml
//! region: eu-west-1
//! role: arn:aws:iam::123456789012:role/ci   # optional: AssumeRole first (as ESO does)
//! auth:
//!   secretRef:
//!     accessKeyIDSecretRef: {name: aws, key: access-key-id}
//!     secretAccessKeySecretRef: {name: aws, key: secret-access-key}
//!     sessionTokenSecretRef: {name: aws, key: session-token}   # optional
//! endpoint: https://sts.eu-west-1.amazonaws.com   # extension: service endpoint
//! stsEndpoint: https://sts.eu-west-1.amazonaws.com  # extension: where AssumeRole goes
//! ```
//! Credentials come only from `auth.secretRef`: ESO's fallbacks (the controller's own
//! environment or instance role, IRSA via `auth.jwt`) would hand this server's identity to
//! whoever writes a store or generator, so they are refused. Calls are bounded (the
//! settings timeout, [`MAX_BODY`]); error messages carry AWS's error code, never its
//! message (which can echo request parts), nor keys or signatures.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use crate::providers::ProviderError;
use crate::resources::{SecretIndex, SecretKeySelector, SecretRefError};

/// Bound on one AWS answer (a Secrets Manager value is at most 64 KiB, base64 in JSON; a
/// page of a listing is a few hundred KiB at most).
pub(crate) const MAX_BODY: usize = 1 << 20;
/// STS query API version.
const STS_VERSION: &str = "2011-06-15";
/// Longest role ARN or external id accepted.
const MAX_ROLE_LEN: usize = 2048;

/// AWS credentials. Debug never shows them.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("session_token", &self.session_token.is_some())
            .finish_non_exhaustive()
    }
}

/// ESO's `auth`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AwsAuthSpec {
    #[serde(default)]
    secret_ref: Option<AwsSecretRefSpec>,
    /// IRSA: refused (see the module doc).
    #[serde(default)]
    jwt: Option<serde_json::Value>,
}

/// ESO's `auth.secretRef`.
#[derive(Deserialize)]
struct AwsSecretRefSpec {
    #[serde(rename = "accessKeyIDSecretRef", default)]
    access_key_id: Option<SecretKeySelector>,
    #[serde(rename = "secretAccessKeySecretRef", default)]
    secret_access_key: Option<SecretKeySelector>,
    #[serde(rename = "sessionTokenSecretRef", default)]
    session_token: Option<SecretKeySelector>,
}

/// The fields every AWS spec has (ESO's, plus the endpoint extensions).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AwsCommonSpec {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub auth: AwsAuthSpec,
    #[serde(default)]
    pub role: Option<String>,
    /// Extension: the service endpoint (default: the regional AWS endpoint).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Extension: the STS endpoint for AssumeRole (default: the regional STS endpoint).
    #[serde(default)]
    pub sts_endpoint: Option<String>,
}

/// Why an AWS block cannot be used (field names and fixed text, never values). The
/// embedding provider or generator adds whose block it is.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AwsConfigError {
    /// A field is missing or malformed.
    #[error("{0}")]
    Invalid(String),
    /// An `auth.secretRef` selector does not resolve.
    #[error("{field}: {source}")]
    SecretRef {
        /// The referring field (`auth.secretRef.accessKeyIDSecretRef`, …).
        field: &'static str,
        /// Why it does not resolve.
        source: SecretRefError,
    },
}

impl AwsConfigError {
    fn invalid(reason: impl Into<String>) -> Self {
        AwsConfigError::Invalid(reason.into())
    }
}

/// What kind of failure an [`AwsError`] is (how providers and generators report it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AwsErrorKind {
    /// AWS said the object (or its version) does not exist.
    NotFound,
    /// AWS refused the call (credentials, permissions, a bad request) or answered
    /// something unusable.
    Backend,
    /// AWS could not be reached, throttled, or failed (5xx).
    Unavailable,
    /// The call did not finish within the settings timeout.
    Timeout,
}

/// A failed AWS call. The message is safe to show callers: fixed text, the action, the
/// HTTP status and AWS's error code; never AWS's message, keys or signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct AwsError {
    pub kind: AwsErrorKind,
    pub message: String,
}

impl AwsError {
    fn new(kind: AwsErrorKind, message: impl Into<String>) -> Self {
        AwsError {
            kind,
            message: message.into(),
        }
    }

    /// An unusable answer (`what` is fixed text naming the call).
    pub(crate) fn malformed(what: &str) -> Self {
        AwsError::new(AwsErrorKind::Backend, format!("{what} with malformed data"))
    }
}

impl From<AwsError> for ProviderError {
    fn from(e: AwsError) -> Self {
        match e.kind {
            AwsErrorKind::NotFound => ProviderError::NotFound,
            AwsErrorKind::Backend => ProviderError::Backend(e.message),
            AwsErrorKind::Unavailable => ProviderError::Unavailable(e.message),
            AwsErrorKind::Timeout => ProviderError::Timeout,
        }
    }
}

/// AWS error codes that mean "no such object or version".
const NOT_FOUND_CODES: [&str; 4] = [
    "ResourceNotFoundException",
    "ParameterNotFound",
    "ParameterVersionNotFound",
    "ParameterVersionLabelNotFound",
];

/// AWS error codes that mean "slow down" (retrying later may work).
const THROTTLING_CODES: [&str; 8] = [
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "ProvisionedThroughputExceededException",
];

/// AWS error codes that mean "these credentials are expired or unknown".
const REJECTED_CREDENTIALS_CODES: [&str; 4] = [
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
];

/// How long a failed AssumeRole is every caller's answer before STS is asked again.
const FAILURE_HOLD: Duration = Duration::from_secs(2);

/// The assumed-role credentials of [`AwsClient::cached_credentials`].
#[derive(Default)]
struct RoleCache {
    /// The last credentials STS issued.
    issued: Option<Issued>,
    /// The running (or last) AssumeRole, which every caller needing one joins.
    attempt: Option<std::sync::Arc<Attempt>>,
}

/// One AssumeRole, shared by its callers: its result (a failure with when it failed).
#[derive(Default)]
struct Attempt {
    result: tokio::sync::OnceCell<Result<Issued, (AwsError, Instant)>>,
    /// Whether a caller holding still-valid credentials runs it (the others do not wait).
    driven: AtomicBool,
}

/// Clears [`Attempt::driven`] when its caller is done or cancelled.
struct Driving<'a>(&'a AtomicBool);

impl Drop for Driving<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A signed-call client: region, static credentials, optional role.
pub(crate) struct AwsClient {
    /// Who uses it (a generator kind, `aws/SecretsManager`, …), for logs.
    label: &'static str,
    http: reqwest::Client,
    region: String,
    credentials: Credentials,
    role: Option<String>,
    external_id: Option<String>,
    sts_endpoint: Url,
    /// The assumed role's credentials, for [`AwsClient::cached_credentials`].
    assumed: std::sync::Mutex<RoleCache>,
}

impl std::fmt::Debug for AwsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsClient")
            .field("label", &self.label)
            .field("region", &self.region)
            .field("role", &self.role.is_some())
            .field("sts_endpoint", &self.sts_endpoint.as_str())
            .finish_non_exhaustive()
    }
}

/// `region` is `[a-z0-9-]`, as AWS region names are.
fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The DNS suffix of a region's partition (China has its own).
fn dns_suffix(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    }
}

/// `https://{prefix}.{region}.{suffix}`, the default endpoint of a service.
pub(crate) fn regional_endpoint(prefix: &str, region: &str) -> Result<Url, ()> {
    if !valid_region(region) {
        return Err(());
    }
    Url::parse(&format!("https://{prefix}.{region}.{}", dns_suffix(region))).map_err(|_| ())
}

/// Parses an endpoint override: http(s), a host, no credentials, query or fragment.
pub(crate) fn parse_endpoint(raw: &str) -> Result<Url, &'static str> {
    let url = Url::parse(raw.trim()).map_err(|_| "is not a URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment");
    }
    Ok(url)
}

/// `endpoint` when set (checked), else the regional endpoint of `prefix`.
pub(crate) fn service_endpoint(spec: &AwsCommonSpec, prefix: &str) -> Result<Url, String> {
    match spec.endpoint.as_deref() {
        Some(raw) => parse_endpoint(raw).map_err(|why| format!("endpoint {why}")),
        None => regional_endpoint(prefix, spec.region.trim())
            .map_err(|_| "region is required (an AWS region name)".to_string()),
    }
}

/// A role ARN or external id: trimmed, empty is none, bounded, no control characters.
fn optional_text(value: Option<&str>, what: &str) -> Result<Option<String>, AwsConfigError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) if v.len() > MAX_ROLE_LEN || v.chars().any(char::is_control) => Err(
            AwsConfigError::invalid(format!("{what} is too long or has control characters")),
        ),
        Some(v) => Ok(Some(v.to_string())),
    }
}

/// An STS role session name from `raw`: STS's characters (`[\w+=,.@-]`, others become
/// `-`) and at most 64 bytes, so CloudTrail shows who asked.
pub(crate) fn session_name(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(64);
    name
}

/// Seconds since the epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AwsClient {
    /// Checks region, role and STS endpoint and resolves the static credentials from
    /// `secrets` for an object of `owner_namespace` (`None`: cluster-scoped;
    /// [`SecretIndex::resolve`]'s namespace rule applies). `default_sts` is the STS
    /// endpoint when `stsEndpoint` is not set; `timeout` bounds every call; `label` names
    /// the user in logs.
    pub(crate) fn from_spec(
        label: &'static str,
        spec: &AwsCommonSpec,
        secrets: &SecretIndex,
        owner_namespace: Option<&str>,
        timeout: Duration,
        default_sts: Option<Url>,
    ) -> Result<Self, AwsConfigError> {
        let region = spec.region.trim();
        if !valid_region(region) {
            return Err(AwsConfigError::invalid(
                "region is required (an AWS region name)",
            ));
        }
        if spec.auth.jwt.is_some() {
            return Err(AwsConfigError::invalid(
                "auth.jwt is not supported by this server: use auth.secretRef",
            ));
        }
        let Some(secret_ref) = &spec.auth.secret_ref else {
            return Err(AwsConfigError::invalid(
                "auth.secretRef is required (this server has no ambient AWS credentials)",
            ));
        };
        let (Some(key_id), Some(secret)) =
            (&secret_ref.access_key_id, &secret_ref.secret_access_key)
        else {
            return Err(AwsConfigError::invalid(
                "auth.secretRef needs accessKeyIDSecretRef and secretAccessKeySecretRef",
            ));
        };
        let text = |field: &'static str, selector: &SecretKeySelector| {
            credential_text(secrets, owner_namespace, field, selector)
        };
        let credentials = Credentials {
            access_key_id: text("auth.secretRef.accessKeyIDSecretRef", key_id)?,
            secret_access_key: text("auth.secretRef.secretAccessKeySecretRef", secret)?,
            session_token: secret_ref
                .session_token
                .as_ref()
                .map(|s| text("auth.secretRef.sessionTokenSecretRef", s))
                .transpose()?,
        };
        let role = optional_text(spec.role.as_deref(), "role")?;
        let sts_endpoint = match spec.sts_endpoint.as_deref() {
            Some(raw) => parse_endpoint(raw)
                .map_err(|why| AwsConfigError::invalid(format!("stsEndpoint {why}")))?,
            None => match default_sts {
                Some(url) => url,
                None => regional_endpoint("sts", region)
                    .map_err(|_| AwsConfigError::invalid("region does not form an endpoint"))?,
            },
        };
        let http = crate::providers::tls::http_client(None, timeout)
            .map_err(|e| AwsConfigError::invalid(e.to_string()))?;
        Ok(AwsClient {
            label,
            http,
            region: region.to_string(),
            credentials,
            role,
            external_id: None,
            sts_endpoint,
            assumed: std::sync::Mutex::default(),
        })
    }

    /// Sets ESO's `externalID`, sent with AssumeRole (only meaningful with a role).
    pub(crate) fn with_external_id(mut self, id: Option<&str>) -> Result<Self, AwsConfigError> {
        self.external_id = optional_text(id, "externalID")?;
        Ok(self)
    }

    /// The region calls are signed for.
    #[cfg(test)]
    pub(crate) fn region(&self) -> &str {
        &self.region
    }

    /// The credentials to sign a call with: the static ones, or, with a role, fresh ones
    /// from STS AssumeRole (session `session`, 15 minutes: used for the call that follows).
    pub(crate) async fn credentials(&self, session: &str) -> Result<Credentials, AwsError> {
        match &self.role {
            None => Ok(self.credentials.clone()),
            Some(role) => Ok(self.assume_role(role, session, 900).await?.credentials),
        }
    }

    /// Like [`AwsClient::credentials`], but an assumed role's credentials are kept (one
    /// hour sessions) and asked for again only within five minutes of their expiry.
    ///
    /// The refresh is single-flight: one AssumeRole at a time, which every caller that
    /// needs it joins (no lock is held across it). While credentials are still valid (in
    /// the last five minutes), one caller runs the refresh and the others keep using them,
    /// also when it fails. A failed AssumeRole is the answer of every caller for
    /// [`FAILURE_HOLD`], so N concurrent callers make one STS call, not N.
    pub(crate) async fn cached_credentials(&self, session: &str) -> Result<Credentials, AwsError> {
        const SECONDS: u32 = 3600;
        const MARGIN: u64 = 300;
        let Some(role) = &self.role else {
            return Ok(self.credentials.clone());
        };
        let now = unix_now();
        let (attempt, fallback) = {
            let mut cache = self.role_cache();
            if let Some(issued) = &cache.issued
                && issued.expires_at > now + MARGIN
            {
                return Ok(issued.credentials.clone());
            }
            let reuse = cache
                .attempt
                .as_ref()
                .is_some_and(|a| match a.result.get() {
                    // Running, or abandoned by a cancelled caller (the next one takes it over).
                    None => true,
                    Some(Err((_, failed_at))) => failed_at.elapsed() < FAILURE_HOLD,
                    // Its credentials are within the margin by now: a new one.
                    Some(Ok(_)) => false,
                });
            let attempt = match &cache.attempt {
                Some(a) if reuse => a.clone(),
                _ => {
                    let a = std::sync::Arc::new(Attempt::default());
                    cache.attempt = Some(a.clone());
                    a
                }
            };
            let fallback = cache
                .issued
                .as_ref()
                .filter(|i| i.expires_at > now)
                .map(|i| i.credentials.clone());
            (attempt, fallback)
        };
        let run = || async {
            match self.assume_role(role, session, SECONDS).await {
                Ok(issued) => {
                    let mut cache = self.role_cache();
                    if cache
                        .issued
                        .as_ref()
                        .is_none_or(|c| c.expires_at <= issued.expires_at)
                    {
                        cache.issued = Some(issued.clone());
                    }
                    Ok(issued)
                }
                Err(e) => Err((e, Instant::now())),
            }
        };
        let result = match (&fallback, attempt.result.get()) {
            (_, Some(done)) => done,
            (None, None) => attempt.result.get_or_init(run).await,
            (Some(fallback), None) => {
                if attempt.driven.swap(true, Ordering::SeqCst) {
                    // Another caller runs the refresh: these credentials are still valid.
                    return Ok(fallback.clone());
                }
                let _driving = Driving(&attempt.driven);
                attempt.result.get_or_init(run).await
            }
        };
        match (result, fallback) {
            (Ok(issued), _) => Ok(issued.credentials.clone()),
            (Err(_), Some(fallback)) => Ok(fallback),
            (Err((e, _)), None) => Err(e.clone()),
        }
    }

    /// Forgets the cached assumed-role credentials `used` when AWS refused a call signed
    /// with them because they expired or are unknown (`body` is AWS's answer), so the next
    /// call assumes the role again instead of failing until their stated expiry.
    pub(crate) fn after_refusal(&self, used: &Credentials, body: &[u8]) {
        if self.role.is_none()
            || !error_code(body).is_some_and(|c| REJECTED_CREDENTIALS_CODES.contains(&c.as_str()))
        {
            return;
        }
        let mut cache = self.role_cache();
        if cache
            .issued
            .as_ref()
            .is_some_and(|i| i.credentials == *used)
        {
            cache.issued = None;
            tracing::info!(
                user = self.label,
                "AWS refused the assumed role's credentials; assuming the role again"
            );
        }
    }

    fn role_cache(&self) -> std::sync::MutexGuard<'_, RoleCache> {
        self.assumed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// STS AssumeRole, signed with the static credentials.
    async fn assume_role(
        &self,
        role: &str,
        session: &str,
        seconds: u32,
    ) -> Result<Issued, AwsError> {
        let duration = seconds.to_string();
        let mut pairs = vec![
            ("Action", "AssumeRole"),
            ("Version", STS_VERSION),
            ("RoleArn", role),
            ("RoleSessionName", session),
            ("DurationSeconds", &duration),
        ];
        if let Some(id) = &self.external_id {
            pairs.push(("ExternalId", id));
        }
        let (status, answer) = self
            .query_call(
                &self.credentials,
                self.sts_endpoint.clone(),
                form_body(&pairs),
            )
            .await?;
        if !status.is_success() {
            return Err(self.refusal("AssumeRole", status, &answer));
        }
        let issued = parse_sts_credentials(&answer)
            .map_err(|_| AwsError::malformed("STS answered AssumeRole"))?;
        tracing::debug!(user = self.label, "assumed the configured role");
        Ok(issued)
    }

    /// A signed STS-style query API call (POST, form body) to `endpoint`.
    pub(crate) async fn query_call(
        &self,
        creds: &Credentials,
        endpoint: Url,
        body: String,
    ) -> Result<(StatusCode, Vec<u8>), AwsError> {
        self.send(
            creds,
            "sts",
            endpoint,
            &[(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )],
            body.into_bytes(),
        )
        .await
    }

    /// A signed JSON 1.1 API call (`X-Amz-Target: {target}`) to `endpoint`.
    pub(crate) async fn json_call(
        &self,
        creds: &Credentials,
        service: &str,
        endpoint: &Url,
        target: &str,
        body: &serde_json::Value,
    ) -> Result<(StatusCode, Vec<u8>), AwsError> {
        let body = serde_json::to_vec(body)
            .map_err(|_| AwsError::new(AwsErrorKind::Backend, "cannot encode the AWS request"))?;
        self.send(
            creds,
            service,
            endpoint.clone(),
            &[
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amz-target", target),
            ],
            body,
        )
        .await
    }

    /// Signs (SigV4, `service`, the client's region) and sends a POST, answering the
    /// status and the body (at most [`MAX_BODY`] bytes).
    pub(crate) async fn send(
        &self,
        creds: &Credentials,
        service: &str,
        url: Url,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(StatusCode, Vec<u8>), AwsError> {
        let backend = |what: &str| AwsError::new(AwsErrorKind::Backend, what);
        let signed = sign(creds, &self.region, service, &url, headers, &body)
            .map_err(|()| backend("cannot sign the AWS request"))?;
        let mut map = HeaderMap::new();
        for (name, value) in headers
            .iter()
            .copied()
            .chain(signed.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| backend("invalid AWS request header"))?;
            let mut value =
                HeaderValue::from_str(value).map_err(|_| backend("invalid AWS request header"))?;
            value.set_sensitive(true);
            map.insert(name, value);
        }
        let req = self.http.request(Method::POST, url).headers(map).body(body);
        let mut resp = req.send().await.map_err(|e| transport_error(&e))?;
        let status = resp.status();
        let mut answer = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e))? {
            if answer.len() + chunk.len() > MAX_BODY {
                return Err(backend("AWS answer is too large"));
            }
            answer.extend_from_slice(&chunk);
        }
        Ok((status, answer))
    }

    /// A refused call (`action`, non-success `status`, AWS's answer `body`) as an error
    /// naming the HTTP status and AWS's error code only, logged the same way:
    /// not-found codes are [`AwsErrorKind::NotFound`], throttling, 429 and 5xx
    /// [`AwsErrorKind::Unavailable`], everything else (credentials, permissions, bad
    /// requests) [`AwsErrorKind::Backend`].
    pub(crate) fn refusal(&self, action: &str, status: StatusCode, body: &[u8]) -> AwsError {
        let code = error_code(body);
        let code_text = code.as_deref().unwrap_or_default();
        let kind = if NOT_FOUND_CODES.contains(&code_text)
            || (code_text == "InvalidRequestException" && marked_for_deletion(body))
        {
            AwsErrorKind::NotFound
        } else if THROTTLING_CODES.contains(&code_text)
            || status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            AwsErrorKind::Unavailable
        } else {
            AwsErrorKind::Backend
        };
        if kind != AwsErrorKind::NotFound {
            tracing::warn!(
                user = self.label,
                action,
                status = status.as_u16(),
                aws_error = if code_text.is_empty() { "-" } else { code_text },
                "AWS refused the call"
            );
        }
        let message = match &code {
            Some(code) => format!("AWS {action} failed: HTTP {} ({code})", status.as_u16()),
            None => format!("AWS {action} failed: HTTP {}", status.as_u16()),
        };
        AwsError::new(kind, message)
    }
}

/// A credential from a Secret: UTF-8, trimmed, non-empty, printable ASCII.
fn credential_text(
    secrets: &SecretIndex,
    owner_namespace: Option<&str>,
    field: &'static str,
    selector: &SecretKeySelector,
) -> Result<String, AwsConfigError> {
    let bytes = secrets
        .resolve(selector, owner_namespace)
        .map_err(|source| AwsConfigError::SecretRef { field, source })?;
    let text = std::str::from_utf8(bytes)
        .map(str::trim)
        .map_err(|_| AwsConfigError::invalid(format!("{field}: the value is not UTF-8")))?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AwsConfigError::invalid(format!(
            "{field}: the value is empty or not printable ASCII"
        )));
    }
    Ok(text.to_string())
}

/// The SigV4 headers for a POST (name, value); the caller marks them all sensitive.
fn sign(
    creds: &Credentials,
    region: &str,
    service: &str,
    url: &Url,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<(String, String)>, ()> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings};
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        creds.session_token.clone(),
        None,
        "esi-federation",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| ())?
        .into();
    let signable = SignableRequest::new(
        "POST",
        url.as_str(),
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|_| ())?;
    let (instructions, _signature) = aws_sigv4::http_request::sign(signable, &params)
        .map_err(|_| ())?
        .into_parts();
    let (signed, _params) = instructions.into_parts();
    Ok(signed
        .into_iter()
        .map(|h| (h.name().to_string(), h.value().to_string()))
        .collect())
}

/// `k=v&…`, form-encoded.
pub(crate) fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        ser.append_pair(k, v);
    }
    ser.finish()
}

/// Maps a transport error without its text (which holds the URL).
fn transport_error(err: &reqwest::Error) -> AwsError {
    if err.is_timeout() {
        AwsError::new(AwsErrorKind::Timeout, "AWS call timed out")
    } else if err.is_connect() {
        AwsError::new(
            AwsErrorKind::Unavailable,
            "cannot connect to the AWS endpoint",
        )
    } else {
        AwsError::new(AwsErrorKind::Unavailable, "AWS request failed")
    }
}

/// AWS's error code from an answer: XML `<Code>` (query APIs) or JSON `__type` /
/// `code` (JSON APIs). Only a short identifier is kept; messages are dropped.
pub(crate) fn error_code(body: &[u8]) -> Option<String> {
    let code = if body.first() == Some(&b'{') {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let raw = v
            .get("__type")
            .or_else(|| v.get("code"))
            .and_then(serde_json::Value::as_str)?;
        raw.rsplit('#').next().unwrap_or(raw).to_string()
    } else {
        xml_code(body)?
    };
    let safe = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    safe.then_some(code)
}

/// Whether a Secrets Manager refusal says the secret is scheduled for deletion (as ESO,
/// such a secret reads as absent). The message is only looked at, never passed on.
fn marked_for_deletion(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    v.get("message")
        .or_else(|| v.get("Message"))
        .and_then(serde_json::Value::as_str)
        .is_some_and(|m| m.contains("marked for deletion"))
}

/// The text of the first `<Code>` element of an XML error answer.
fn xml_code(body: &[u8]) -> Option<String> {
    use quick_xml::events::Event;
    let text = std::str::from_utf8(body).ok()?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut in_code = false;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => in_code = e.local_name().into_inner() == "Code",
            Event::Text(t) if in_code => return Some(t.into_inner().trim().to_string()),
            Event::End(_) => in_code = false,
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// `…Response/…Result/Credentials` of STS (`GetSessionToken`, `AssumeRole`).
#[derive(Deserialize)]
struct StsResponse {
    #[serde(rename = "GetSessionTokenResult", alias = "AssumeRoleResult")]
    result: StsResult,
}

#[derive(Deserialize)]
struct StsResult {
    #[serde(rename = "Credentials")]
    credentials: StsCredentials,
}

#[derive(Deserialize)]
struct StsCredentials {
    #[serde(rename = "AccessKeyId")]
    access_key_id: String,
    #[serde(rename = "SecretAccessKey")]
    secret_access_key: String,
    #[serde(rename = "SessionToken")]
    session_token: String,
    #[serde(rename = "Expiration")]
    expiration: String,
}

/// Temporary credentials STS issued, with their expiry (seconds since the epoch).
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub credentials: Credentials,
    pub expires_at: u64,
}

/// Why an STS answer is unusable (no detail: the text may hold credentials).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MalformedAnswer;

/// Parses STS's XML credentials answer.
pub(crate) fn parse_sts_credentials(body: &[u8]) -> Result<Issued, MalformedAnswer> {
    let text = std::str::from_utf8(body).map_err(|_| MalformedAnswer)?;
    let parsed: StsResponse = quick_xml::de::from_str(text).map_err(|_| MalformedAnswer)?;
    let c = parsed.result.credentials;
    let expires = time::OffsetDateTime::parse(
        c.expiration.trim(),
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|_| MalformedAnswer)?;
    let expires_at = u64::try_from(expires.unix_timestamp()).map_err(|_| MalformedAnswer)?;
    let credentials = Credentials {
        access_key_id: c.access_key_id.trim().to_string(),
        secret_access_key: c.secret_access_key.trim().to_string(),
        session_token: Some(c.session_token.trim().to_string()),
    };
    if credentials.access_key_id.is_empty() || credentials.secret_access_key.is_empty() {
        return Err(MalformedAnswer);
    }
    Ok(Issued {
        credentials,
        expires_at,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::resources::SecretObject;
    use serde_json::json;

    /// `ns/aws` holding a key pair (and an unusable value under `bad`).
    pub fn secrets() -> SecretIndex {
        let mut idx = SecretIndex::default();
        let obj = SecretObject {
            string_data: [
                ("id".to_string(), "AKIDEXAMPLE".to_string()),
                (
                    "secret".to_string(),
                    "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string(),
                ),
                ("bad".to_string(), "two words".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        idx.insert("ns", "aws", &obj).unwrap();
        idx
    }

    /// `auth` naming the key pair of [`secrets`].
    pub fn auth() -> serde_json::Value {
        json!({"secretRef": {
            "accessKeyIDSecretRef": {"name": "aws", "key": "id"},
            "secretAccessKeySecretRef": {"name": "aws", "key": "secret"}
        }})
    }

    fn client(spec: serde_json::Value) -> Result<AwsClient, AwsConfigError> {
        let spec: AwsCommonSpec = serde_json::from_value(spec).unwrap();
        AwsClient::from_spec(
            "test",
            &spec,
            &secrets(),
            Some("ns"),
            Duration::from_secs(5),
            None,
        )
    }

    fn refusal(status: u16, body: &[u8]) -> AwsError {
        client(json!({"region": "us-east-1", "auth": auth()}))
            .unwrap()
            .refusal(
                "GetSecretValue",
                StatusCode::from_u16(status).unwrap(),
                body,
            )
    }

    #[test]
    fn builds_and_checks_the_common_spec() {
        let c = client(json!({"region": "eu-west-1", "auth": auth()})).unwrap();
        assert_eq!(c.region(), "eu-west-1");
        assert_eq!(c.credentials.access_key_id, "AKIDEXAMPLE");
        assert_eq!(
            c.sts_endpoint.as_str(),
            "https://sts.eu-west-1.amazonaws.com/"
        );
        let shown = format!("{c:?} {:?}", c.credentials);
        assert!(
            !shown.contains("EXAMPLEKEY") && !shown.contains("AKID"),
            "{shown}"
        );

        let cn = client(json!({"region": "cn-north-1", "auth": auth()})).unwrap();
        assert_eq!(
            cn.sts_endpoint.as_str(),
            "https://sts.cn-north-1.amazonaws.com.cn/"
        );
        let custom = client(json!({"region": "us-east-1", "auth": auth(),
            "stsEndpoint": "http://127.0.0.1:5000"}))
        .unwrap();
        assert_eq!(custom.sts_endpoint.as_str(), "http://127.0.0.1:5000/");

        for (spec, needle) in [
            (json!({"auth": auth()}), "region is required"),
            (
                json!({"region": "EU West", "auth": auth()}),
                "region is required",
            ),
            (json!({"region": "us-east-1"}), "auth.secretRef is required"),
            (
                json!({"region": "us-east-1", "auth": {"jwt": {"serviceAccountRef": {"name": "x"}}}}),
                "auth.jwt is not supported",
            ),
            (
                json!({"region": "us-east-1", "auth": {"secretRef": {
                    "accessKeyIDSecretRef": {"name": "aws", "key": "id"}}}}),
                "needs accessKeyIDSecretRef and secretAccessKeySecretRef",
            ),
            (
                json!({"region": "us-east-1", "auth": {"secretRef": {
                    "accessKeyIDSecretRef": {"name": "aws", "key": "bad"},
                    "secretAccessKeySecretRef": {"name": "aws", "key": "secret"}}}}),
                "not printable ASCII",
            ),
            (
                json!({"region": "us-east-1", "auth": {"secretRef": {
                    "accessKeyIDSecretRef": {"name": "aws", "key": "missing"},
                    "secretAccessKeySecretRef": {"name": "aws", "key": "secret"}}}}),
                "has no key",
            ),
            (
                json!({"region": "us-east-1", "auth": {"secretRef": {
                    "accessKeyIDSecretRef": {"name": "aws", "key": "id", "namespace": "other"},
                    "secretAccessKeySecretRef": {"name": "aws", "key": "secret"}}}}),
                "names namespace \"other\", not its object's",
            ),
            (
                json!({"region": "us-east-1", "auth": auth(), "stsEndpoint": "ftp://x"}),
                "stsEndpoint must be an http or https URL",
            ),
            (
                json!({"region": "us-east-1", "auth": auth(), "stsEndpoint": "https://u:p@x"}),
                "must not carry credentials",
            ),
        ] {
            let msg = client(spec).err().unwrap().to_string();
            assert!(msg.contains(needle), "{msg} lacks {needle}");
            assert!(
                !msg.contains("two words") && !msg.contains("EXAMPLEKEY"),
                "{msg}"
            );
        }
    }

    #[test]
    fn parses_sts_credentials() {
        let xml = r#"<GetSessionTokenResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetSessionTokenResult>
    <Credentials>
      <SessionToken>FQoGZXIvYXdzEJr//////////wEaDKEY</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
      <Expiration>2011-07-11T19:55:29.611Z</Expiration>
      <AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>
    </Credentials>
  </GetSessionTokenResult>
  <ResponseMetadata><RequestId>58c5dbae-abef-11e0-8cfe-09039844ac7d</RequestId></ResponseMetadata>
</GetSessionTokenResponse>"#;
        let issued = parse_sts_credentials(xml.as_bytes()).unwrap();
        assert_eq!(issued.credentials.access_key_id, "ASIAIOSFODNN7EXAMPLE");
        assert_eq!(
            issued.credentials.secret_access_key,
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
        );
        assert_eq!(
            issued.credentials.session_token.as_deref(),
            Some("FQoGZXIvYXdzEJr//////////wEaDKEY")
        );
        assert_eq!(issued.expires_at, 1_310_414_129);

        let assumed = r#"<AssumeRoleResponse><AssumeRoleResult><AssumedRoleUser><Arn>a</Arn></AssumedRoleUser>
<Credentials><AccessKeyId>ASIA2</AccessKeyId><SecretAccessKey>s2</SecretAccessKey>
<SessionToken>t2</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration></Credentials>
</AssumeRoleResult></AssumeRoleResponse>"#;
        let issued = parse_sts_credentials(assumed.as_bytes()).unwrap();
        assert_eq!(issued.credentials.access_key_id, "ASIA2");
        assert_eq!(issued.expires_at, 1_893_456_000);

        for bad in [
            "",
            "<x/>",
            "not xml at all",
            r#"<GetSessionTokenResponse><GetSessionTokenResult><Credentials>
<AccessKeyId>A</AccessKeyId><SecretAccessKey>S</SecretAccessKey><SessionToken>T</SessionToken>
<Expiration>yesterday</Expiration></Credentials></GetSessionTokenResult></GetSessionTokenResponse>"#,
            r#"<GetSessionTokenResponse><GetSessionTokenResult><Credentials>
<AccessKeyId></AccessKeyId><SecretAccessKey>S</SecretAccessKey><SessionToken>T</SessionToken>
<Expiration>2030-01-01T00:00:00Z</Expiration></Credentials></GetSessionTokenResult></GetSessionTokenResponse>"#,
        ] {
            assert_eq!(
                parse_sts_credentials(bad.as_bytes()).err(),
                Some(MalformedAnswer),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_codes_are_short_identifiers_only() {
        let xml = br#"<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code>
<Message>The request signature we calculated does not match AKIDEXAMPLE</Message></Error></ErrorResponse>"#;
        assert_eq!(error_code(xml).as_deref(), Some("SignatureDoesNotMatch"));
        let nested = br#"<ErrorResponse><Errors><Error><Code>InvalidClientTokenId</Code></Error></Errors></ErrorResponse>"#;
        assert_eq!(error_code(nested).as_deref(), Some("InvalidClientTokenId"));
        let json =
            br#"{"__type":"com.amazonaws.ecr#AccessDeniedException","message":"no AKIDEXAMPLE"}"#;
        assert_eq!(error_code(json).as_deref(), Some("AccessDeniedException"));
        assert_eq!(error_code(br#"{"__type":"has spaces and AKID"}"#), None);
        assert_eq!(error_code(b"plain text"), None);

        assert_eq!(
            refusal(403, json),
            AwsError::new(
                AwsErrorKind::Backend,
                "AWS GetSecretValue failed: HTTP 403 (AccessDeniedException)"
            )
        );
        assert_eq!(
            refusal(503, b"").kind,
            AwsErrorKind::Unavailable,
            "5xx without a code"
        );
    }

    #[test]
    fn signs_with_sigv4() {
        let creds = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            session_token: Some("tok".into()),
        };
        let url = Url::parse("http://127.0.0.1:4566/").unwrap();
        let headers = sign(
            &creds,
            "us-east-1",
            "sts",
            &url,
            &[("content-type", "x")],
            b"a=b",
        )
        .unwrap();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let auth = get("authorization").unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
        assert!(auth.contains("/us-east-1/sts/aws4_request"), "{auth}");
        assert!(
            auth.contains("SignedHeaders=content-type;host;x-amz-date"),
            "{auth}"
        );
        assert_eq!(get("x-amz-security-token").unwrap(), "tok");
        assert!(get("x-amz-date").is_some());
    }

    #[test]
    fn endpoints_parse() {
        assert!(parse_endpoint("https://ecr.example:8443/base").is_ok());
        assert_eq!(parse_endpoint("nope").err(), Some("is not a URL"));
        assert_eq!(
            parse_endpoint("https://x/?a=b").err(),
            Some("must not have a query or fragment")
        );
        assert_eq!(
            form_body(&[
                ("Action", "AssumeRole"),
                ("RoleArn", "arn:aws:iam::1:role/a b")
            ]),
            "Action=AssumeRole&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fa+b"
        );
    }

    #[test]
    fn refusals_map_by_code_and_status() {
        let json = |code: &str, msg: &str| {
            format!(r#"{{"__type":"{code}","message":"{msg} AKIDEXAMPLE"}}"#).into_bytes()
        };
        for (status, code, kind) in [
            (400, "ResourceNotFoundException", AwsErrorKind::NotFound),
            (400, "ParameterNotFound", AwsErrorKind::NotFound),
            (400, "ParameterVersionNotFound", AwsErrorKind::NotFound),
            (400, "AccessDeniedException", AwsErrorKind::Backend),
            (400, "UnrecognizedClientException", AwsErrorKind::Backend),
            (400, "InvalidSignatureException", AwsErrorKind::Backend),
            (400, "ValidationException", AwsErrorKind::Backend),
            (400, "InvalidRequestException", AwsErrorKind::Backend),
            (400, "ThrottlingException", AwsErrorKind::Unavailable),
            (429, "TooManyRequestsException", AwsErrorKind::Unavailable),
            (500, "InternalServiceError", AwsErrorKind::Unavailable),
            (503, "ServiceUnavailable", AwsErrorKind::Unavailable),
        ] {
            let err = refusal(status, &json(code, "wJalrXUtnFEMI"));
            assert_eq!(err.kind, kind, "{code}");
            assert_eq!(
                err.message,
                format!("AWS GetSecretValue failed: HTTP {status} ({code})")
            );
            assert!(!err.message.contains("AKID") && !err.message.contains("wJalr"));
        }
        // A secret scheduled for deletion reads as absent (as in ESO).
        assert_eq!(
            refusal(
                400,
                &json(
                    "InvalidRequestException",
                    "You can't perform this operation on the secret because it was marked for deletion."
                )
            )
            .kind,
            AwsErrorKind::NotFound
        );
        // Provider errors: not found is a 404, throttling a 503, refusals a 502 with the code.
        assert_eq!(
            ProviderError::from(refusal(400, &json("ParameterNotFound", ""))),
            ProviderError::NotFound
        );
        assert_eq!(
            ProviderError::from(refusal(400, &json("UnrecognizedClientException", ""))),
            ProviderError::Backend(
                "AWS GetSecretValue failed: HTTP 400 (UnrecognizedClientException)".into()
            )
        );
        assert!(matches!(
            ProviderError::from(refusal(400, &json("ThrottlingException", ""))),
            ProviderError::Unavailable(_)
        ));
        assert_eq!(
            ProviderError::from(AwsError::new(AwsErrorKind::Timeout, "x")),
            ProviderError::Timeout
        );
    }

    #[test]
    fn session_names_follow_sts_rules() {
        assert_eq!(session_name("esi-store-prod:eu"), "esi-store-prod-eu");
        assert_eq!(session_name(&"x".repeat(80)).len(), 64);
    }

    /// A fake STS answering AssumeRole with credentials valid for `valid_for` seconds,
    /// counting the calls.
    async fn fake_sts(valid_for: i64) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |body: String| {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    assert!(body.contains("Action=AssumeRole"), "{body}");
                    assert!(body.contains("ExternalId=ext-1"), "{body}");
                    assert!(body.contains("RoleSessionName=esi-store-s"), "{body}");
                    let expires =
                        time::OffsetDateTime::now_utc() + time::Duration::seconds(valid_for);
                    let expires = expires
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap();
                    format!(
                        "<AssumeRoleResponse><AssumeRoleResult><Credentials>\
<AccessKeyId>ASIA{n}</AccessKeyId><SecretAccessKey>s</SecretAccessKey>\
<SessionToken>t</SessionToken><Expiration>{expires}</Expiration>\
</Credentials></AssumeRoleResult></AssumeRoleResponse>"
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), calls)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn assumed_role_credentials_are_cached_until_near_expiry() {
        use std::sync::atomic::Ordering;
        let (sts, calls) = fake_sts(3600).await;
        let c = client(json!({"region": "us-east-1", "auth": auth(),
            "role": "arn:aws:iam::123456789012:role/r", "stsEndpoint": sts}))
        .unwrap()
        .with_external_id(Some("ext-1"))
        .unwrap();
        let session = session_name("esi-store-s");
        let (a, b) = tokio::join!(
            c.cached_credentials(&session),
            c.cached_credentials(&session)
        );
        assert_eq!(a.unwrap().access_key_id, "ASIA0");
        assert_eq!(b.unwrap().access_key_id, "ASIA0");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one AssumeRole for both");
        // The generators' path asks every time.
        assert_eq!(
            c.credentials(&session).await.unwrap().access_key_id,
            "ASIA1"
        );

        // Credentials within five minutes of their expiry are not kept.
        let (sts, calls) = fake_sts(120).await;
        let c = client(json!({"region": "us-east-1", "auth": auth(),
            "role": "arn:aws:iam::123456789012:role/r", "stsEndpoint": sts}))
        .unwrap()
        .with_external_id(Some("ext-1"))
        .unwrap();
        c.cached_credentials(&session).await.unwrap();
        c.cached_credentials(&session).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // Without a role: the static keys, no call.
        let plain = client(json!({"region": "us-east-1", "auth": auth()})).unwrap();
        assert_eq!(
            plain
                .cached_credentials(&session)
                .await
                .unwrap()
                .access_key_id,
            "AKIDEXAMPLE"
        );
    }

    /// A fake STS: the first `ok_first` AssumeRole calls answer credentials valid for
    /// `valid_for` seconds at once, every later one fails (HTTP 403) after 300 ms; counts
    /// the calls.
    async fn flaky_sts(
        ok_first: usize,
        valid_for: i64,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n >= ok_first {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        return (
                            axum::http::StatusCode::FORBIDDEN,
                            "<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>"
                                .to_string(),
                        );
                    }
                    let expires =
                        time::OffsetDateTime::now_utc() + time::Duration::seconds(valid_for);
                    let expires = expires
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap();
                    (
                        axum::http::StatusCode::OK,
                        format!(
                            "<AssumeRoleResponse><AssumeRoleResult><Credentials>\
<AccessKeyId>ASIA{n}</AccessKeyId><SecretAccessKey>s</SecretAccessKey>\
<SessionToken>t</SessionToken><Expiration>{expires}</Expiration>\
</Credentials></AssumeRoleResult></AssumeRoleResponse>"
                        ),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), calls)
    }

    fn role_client(sts: &str) -> AwsClient {
        client(json!({"region": "us-east-1", "auth": auth(),
            "role": "arn:aws:iam::123456789012:role/r", "stsEndpoint": sts}))
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_callers_share_one_failing_assume_role() {
        use std::sync::atomic::Ordering;
        let (sts, calls) = flaky_sts(0, 3600).await;
        let c = role_client(&sts);
        let start = std::time::Instant::now();
        let results =
            futures_util::future::join_all((0..5).map(|_| c.cached_credentials("esi-store-s")))
                .await;
        for r in &results {
            let err = r.as_ref().unwrap_err();
            assert_eq!(err.kind, AwsErrorKind::Backend);
            assert!(err.message.contains("AssumeRole"), "{err}");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one AssumeRole for all five"
        );
        assert!(start.elapsed() < Duration::from_millis(1500));
        // The failure is kept for a moment: callers right after make no call either.
        assert!(c.cached_credentials("esi-store-s").await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Then asked again.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(c.cached_credentials("esi-store-s").await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn still_valid_credentials_are_served_while_a_refresh_runs_or_fails() {
        use std::sync::atomic::Ordering;
        // Valid for 200 s: inside the five minute margin, so the next caller refreshes.
        let (sts, calls) = flaky_sts(1, 200).await;
        let c = role_client(&sts);
        assert_eq!(
            c.cached_credentials("esi-store-s")
                .await
                .unwrap()
                .access_key_id,
            "ASIA0"
        );
        let start = std::time::Instant::now();
        let results =
            futures_util::future::join_all((0..5).map(|_| c.cached_credentials("esi-store-s")))
                .await;
        for r in results {
            assert_eq!(r.unwrap().access_key_id, "ASIA0");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one refresh for all five");
        assert!(start.elapsed() < Duration::from_millis(1500));
        // The failed refresh is not retried at once; the old credentials still serve.
        assert_eq!(
            c.cached_credentials("esi-store-s")
                .await
                .unwrap()
                .access_key_id,
            "ASIA0"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn rejected_credentials_are_dropped() {
        use std::sync::atomic::Ordering;
        let (sts, calls) = fake_sts_plain(3600).await;
        let c = role_client(&sts);
        let first = c.cached_credentials("esi-store-s").await.unwrap();
        assert_eq!(c.cached_credentials("esi-store-s").await.unwrap(), first);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another code keeps them.
        c.after_refusal(&first, br#"{"__type":"AccessDeniedException"}"#);
        assert_eq!(c.cached_credentials("esi-store-s").await.unwrap(), first);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        for body in [
            &br#"{"__type":"ExpiredTokenException","message":"x"}"#[..],
            br#"<ErrorResponse><Error><Code>ExpiredToken</Code></Error></ErrorResponse>"#,
            br#"<ErrorResponse><Error><Code>InvalidClientTokenId</Code></Error></ErrorResponse>"#,
            br#"{"__type":"UnrecognizedClientException"}"#,
        ] {
            let before = calls.load(Ordering::SeqCst);
            let used = c.cached_credentials("esi-store-s").await.unwrap();
            c.after_refusal(&used, body);
            let fresh = c.cached_credentials("esi-store-s").await.unwrap();
            assert_ne!(fresh, used, "{}", String::from_utf8_lossy(body));
            assert_eq!(calls.load(Ordering::SeqCst), before + 1);
        }
        // Credentials no longer cached (already replaced) are not dropped again.
        let current = c.cached_credentials("esi-store-s").await.unwrap();
        c.after_refusal(&first, br#"{"__type":"ExpiredTokenException"}"#);
        assert_eq!(c.cached_credentials("esi-store-s").await.unwrap(), current);
    }

    /// A fake STS answering every AssumeRole with fresh credentials (any session).
    async fn fake_sts_plain(
        valid_for: i64,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        flaky_sts(usize::MAX, valid_for).await
    }
}
