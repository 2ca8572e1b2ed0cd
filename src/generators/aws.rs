//! What the AWS generators (`STSSessionToken`, `ECRAuthorizationToken`) share: ESO's
//! `spec.region` / `spec.auth.secretRef` / `spec.role`, endpoints, and one SigV4-signed
//! call (signed with the `aws-sigv4` crate; no SDK).
//!
//! ```yaml
//! spec:
//!   region: eu-west-1
//!   role: arn:aws:iam::123456789012:role/ci   # optional: AssumeRole first (as ESO does)
//!   auth:
//!     secretRef:
//!       accessKeyIDSecretRef: {name: aws, key: access-key-id}
//!       secretAccessKeySecretRef: {name: aws, key: secret-access-key}
//!       sessionTokenSecretRef: {name: aws, key: session-token}   # optional
//!   endpoint: https://sts.eu-west-1.amazonaws.com   # extension: service endpoint
//!   stsEndpoint: https://sts.eu-west-1.amazonaws.com  # extension: where AssumeRole goes
//! ```
//! Credentials come only from `auth.secretRef`: ESO's fallbacks (the controller's own
//! environment, IRSA via `auth.jwt`) would hand this server's identity to whoever writes a
//! generator, so they are refused. Error messages carry AWS's error code, never its
//! message (which can echo request parts), nor keys or signatures.

use std::time::SystemTime;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use super::{BuildContext, GenerateContext, GeneratorConfigError, GeneratorError};
use crate::resources::SecretKeySelector;

/// Bound on an AWS answer (STS and ECR answers are a few KiB).
const MAX_BODY: usize = 256 * 1024;
/// STS query API version.
const STS_VERSION: &str = "2011-06-15";
/// Lifetime asked for assumed-role sessions: only used for the one call that follows.
const ASSUME_ROLE_SECONDS: u32 = 900;

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

/// ESO's `spec.auth`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AwsAuthSpec {
    #[serde(default)]
    secret_ref: Option<AwsSecretRefSpec>,
    /// IRSA: refused (see the module doc).
    #[serde(default)]
    jwt: Option<serde_json::Value>,
}

/// ESO's `spec.auth.secretRef`.
#[derive(Deserialize)]
struct AwsSecretRefSpec {
    #[serde(rename = "accessKeyIDSecretRef", default)]
    access_key_id: Option<SecretKeySelector>,
    #[serde(rename = "secretAccessKeySecretRef", default)]
    secret_access_key: Option<SecretKeySelector>,
    #[serde(rename = "sessionTokenSecretRef", default)]
    session_token: Option<SecretKeySelector>,
}

/// The fields every AWS generator spec has (ESO's, plus the endpoint extensions).
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

/// A signed-call client for one generator: region, static credentials, optional role.
pub(crate) struct AwsClient {
    kind: &'static str,
    http: reqwest::Client,
    region: String,
    credentials: Credentials,
    role: Option<String>,
    sts_endpoint: Url,
}

impl std::fmt::Debug for AwsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsClient")
            .field("region", &self.region)
            .field("role", &self.role.is_some())
            .field("sts_endpoint", &self.sts_endpoint.as_str())
            .finish_non_exhaustive()
    }
}

/// `{ "region": … }` is `[a-z0-9-]`, as AWS region names are.
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

/// A credential from a Secret: UTF-8, trimmed, non-empty, printable ASCII.
fn credential_text(
    ctx: &BuildContext<'_>,
    kind: &'static str,
    field: &'static str,
    selector: &SecretKeySelector,
) -> Result<String, GeneratorConfigError> {
    let bytes = ctx.resolve(kind, field, selector)?;
    let text = std::str::from_utf8(&bytes)
        .map(str::trim)
        .map_err(|_| ctx.invalid(kind, format!("{field}: the value is not UTF-8")))?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ctx.invalid(
            kind,
            format!("{field}: the value is empty or not printable ASCII"),
        ));
    }
    Ok(text.to_string())
}

impl AwsClient {
    /// Checks region, role and endpoints and resolves the static credentials.
    /// `default_sts` is the STS endpoint when `stsEndpoint` is not set.
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        kind: &'static str,
        spec: &AwsCommonSpec,
        default_sts: Option<Url>,
    ) -> Result<Self, GeneratorConfigError> {
        let region = spec.region.trim();
        if !valid_region(region) {
            return Err(ctx.invalid(kind, "region is required (an AWS region name)"));
        }
        if spec.auth.jwt.is_some() {
            return Err(ctx.invalid(
                kind,
                "auth.jwt is not supported by this server: use auth.secretRef",
            ));
        }
        let Some(secret_ref) = &spec.auth.secret_ref else {
            return Err(ctx.invalid(
                kind,
                "auth.secretRef is required (this server has no ambient AWS credentials)",
            ));
        };
        let (Some(key_id), Some(secret)) =
            (&secret_ref.access_key_id, &secret_ref.secret_access_key)
        else {
            return Err(ctx.invalid(
                kind,
                "auth.secretRef needs accessKeyIDSecretRef and secretAccessKeySecretRef",
            ));
        };
        let credentials = Credentials {
            access_key_id: credential_text(
                ctx,
                kind,
                "auth.secretRef.accessKeyIDSecretRef",
                key_id,
            )?,
            secret_access_key: credential_text(
                ctx,
                kind,
                "auth.secretRef.secretAccessKeySecretRef",
                secret,
            )?,
            session_token: secret_ref
                .session_token
                .as_ref()
                .map(|s| credential_text(ctx, kind, "auth.secretRef.sessionTokenSecretRef", s))
                .transpose()?,
        };
        let role = spec
            .role
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string);
        if let Some(role) = &role
            && (role.len() > 2048 || role.chars().any(char::is_control))
        {
            return Err(ctx.invalid(kind, "role must be a role ARN"));
        }
        let sts_endpoint = match spec.sts_endpoint.as_deref() {
            Some(raw) => parse_endpoint(raw)
                .map_err(|why| ctx.invalid(kind, format!("stsEndpoint {why}")))?,
            None => match default_sts {
                Some(url) => url,
                None => regional_endpoint("sts", region)
                    .map_err(|_| ctx.invalid(kind, "region does not form an endpoint"))?,
            },
        };
        let http = crate::providers::tls::http_client(None, ctx.settings.timeout)
            .map_err(|e| ctx.invalid(kind, e.to_string()))?;
        Ok(AwsClient {
            kind,
            http,
            region: region.to_string(),
            credentials,
            role,
            sts_endpoint,
        })
    }

    /// The region calls are signed for.
    pub(crate) fn region(&self) -> &str {
        &self.region
    }

    /// The credentials to sign the generator's call with: the static ones, or, with a
    /// role, fresh ones from STS AssumeRole (signed with the static ones).
    pub(crate) async fn credentials(
        &self,
        ctx: &GenerateContext<'_>,
    ) -> Result<Credentials, GeneratorError> {
        let Some(role) = &self.role else {
            return Ok(self.credentials.clone());
        };
        let duration = ASSUME_ROLE_SECONDS.to_string();
        let session = session_name(ctx);
        let body = form_body(&[
            ("Action", "AssumeRole"),
            ("Version", STS_VERSION),
            ("RoleArn", role),
            ("RoleSessionName", &session),
            ("DurationSeconds", &duration),
        ]);
        let (status, answer) = self
            .query_call(&self.credentials, self.sts_endpoint.clone(), body)
            .await?;
        if !status.is_success() {
            return Err(aws_error(self.kind, "AssumeRole", status, &answer));
        }
        let creds = parse_sts_credentials(&answer).map_err(|_| {
            GeneratorError::Backend("STS answered AssumeRole with malformed XML".into())
        })?;
        tracing::debug!(kind = self.kind, "assumed the generator's role");
        Ok(creds.credentials)
    }

    /// A signed STS-style query API call (POST, form body) to `endpoint`.
    pub(crate) async fn query_call(
        &self,
        creds: &Credentials,
        endpoint: Url,
        body: String,
    ) -> Result<(StatusCode, Vec<u8>), GeneratorError> {
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

    /// Signs (SigV4, `service`, the client's region) and sends a POST, answering the
    /// status and the bounded body.
    pub(crate) async fn send(
        &self,
        creds: &Credentials,
        service: &str,
        url: Url,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(StatusCode, Vec<u8>), GeneratorError> {
        let signed = sign(creds, &self.region, service, &url, headers, &body)
            .map_err(|()| GeneratorError::Backend("cannot sign the AWS request".into()))?;
        let mut map = HeaderMap::new();
        for (name, value) in headers
            .iter()
            .copied()
            .chain(signed.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| GeneratorError::Backend("invalid AWS request header".into()))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| GeneratorError::Backend("invalid AWS request header".into()))?;
            value.set_sensitive(true);
            map.insert(name, value);
        }
        let req = self.http.request(Method::POST, url).headers(map).body(body);
        let mut resp = req.send().await.map_err(|e| transport_error(&e))?;
        let status = resp.status();
        let mut answer = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e))? {
            if answer.len() + chunk.len() > MAX_BODY {
                return Err(GeneratorError::Backend("AWS answer is too large".into()));
            }
            answer.extend_from_slice(&chunk);
        }
        Ok((status, answer))
    }
}

/// The SigV4 headers for a request (name, value); the caller marks them all sensitive.
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
        "esi-generator",
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

/// An STS role session name for the workload: `esi-<namespace>-<serviceaccount>`,
/// restricted to STS's characters (`[\w+=,.@-]`) and 64 bytes, so CloudTrail shows who.
pub(crate) fn session_name(ctx: &GenerateContext<'_>) -> String {
    let raw = match ctx.workload {
        Some(id) => format!("esi-{}-{}", id.namespace, id.service_account),
        None => "esi-federation".to_string(),
    };
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

/// Maps a transport error without its text (which holds the URL).
fn transport_error(err: &reqwest::Error) -> GeneratorError {
    if err.is_timeout() {
        GeneratorError::Unavailable("AWS call timed out".into())
    } else if err.is_connect() {
        GeneratorError::Unavailable("cannot connect to the AWS endpoint".into())
    } else {
        GeneratorError::Unavailable("AWS request failed".into())
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

/// A refused AWS call as a generator error: HTTP status and AWS's error code only.
pub(crate) fn aws_error(
    kind: &'static str,
    action: &'static str,
    status: StatusCode,
    body: &[u8],
) -> GeneratorError {
    let code = error_code(body);
    tracing::warn!(
        kind,
        action,
        status = status.as_u16(),
        aws_error = code.as_deref().unwrap_or("-"),
        "AWS refused the generator's call"
    );
    let what = match &code {
        Some(code) => format!("AWS {action} failed: HTTP {} ({code})", status.as_u16()),
        None => format!("AWS {action} failed: HTTP {}", status.as_u16()),
    };
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        GeneratorError::Unavailable(what)
    } else {
        GeneratorError::Backend(what)
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
#[derive(Debug)]
pub(crate) struct StsIssued {
    pub credentials: Credentials,
    pub expires_at: u64,
}

/// Why an STS answer is unusable (no detail: the text may hold credentials).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MalformedAnswer;

/// Parses STS's XML credentials answer.
pub(crate) fn parse_sts_credentials(body: &[u8]) -> Result<StsIssued, MalformedAnswer> {
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
    Ok(StsIssued {
        credentials,
        expires_at,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::authn::Identity;
    use crate::providers::ProviderSettings;
    use crate::resources::SecretIndex;
    use crate::resources::SecretObject;
    use serde_json::json;

    /// A SecretIndex with `ns/aws` holding a key pair.
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

    /// Runs `f` with a BuildContext over [`secrets`].
    pub fn with_ctx<T>(namespace: &str, f: impl FnOnce(&BuildContext<'_>) -> T) -> T {
        let secrets = secrets();
        let settings = ProviderSettings::default();
        f(&BuildContext {
            namespace,
            name: "gen",
            secrets: &secrets,
            settings: &settings,
        })
    }

    pub fn auth() -> serde_json::Value {
        json!({"secretRef": {
            "accessKeyIDSecretRef": {"name": "aws", "key": "id"},
            "secretAccessKeySecretRef": {"name": "aws", "key": "secret"}
        }})
    }

    fn client(spec: serde_json::Value) -> Result<AwsClient, GeneratorConfigError> {
        with_ctx("ns", |ctx| {
            let spec: AwsCommonSpec = ctx.parse("STSSessionToken", &spec)?;
            AwsClient::from_spec(ctx, "STSSessionToken", &spec, None)
        })
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

        let err = aws_error(
            "ECRAuthorizationToken",
            "GetAuthorizationToken",
            StatusCode::FORBIDDEN,
            json,
        );
        assert_eq!(
            err,
            GeneratorError::Backend(
                "AWS GetAuthorizationToken failed: HTTP 403 (AccessDeniedException)".into()
            )
        );
        assert!(matches!(
            aws_error(
                "STSSessionToken",
                "GetSessionToken",
                StatusCode::SERVICE_UNAVAILABLE,
                b""
            ),
            GeneratorError::Unavailable(_)
        ));
    }

    #[test]
    fn session_names_follow_sts_rules() {
        assert_eq!(session_name(&GenerateContext::default()), "esi-federation");
        let id = Identity {
            federation: "f".into(),
            issuer: "i".into(),
            subject: "s".into(),
            namespace: "team-a".into(),
            service_account: "builder:x".into(),
            service_account_uid: None,
            pod_name: None,
            pod_uid: None,
            expires_at: None,
        };
        let ctx = GenerateContext {
            workload: Some(&id),
        };
        assert_eq!(session_name(&ctx), "esi-team-a-builder-x");
        let long = Identity {
            namespace: "n".repeat(80),
            ..id.clone()
        };
        assert_eq!(
            session_name(&GenerateContext {
                workload: Some(&long)
            })
            .len(),
            64
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
}
