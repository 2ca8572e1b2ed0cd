//! ESO's `STSSessionToken` generator: STS `GetSessionToken` (query API, SigV4 `sts`).
//!
//! ```yaml
//! spec:
//!   region: eu-west-1
//!   role: arn:aws:iam::123456789012:role/x    # optional: AssumeRole first, as ESO does
//!   auth: {secretRef: {accessKeyIDSecretRef: …, secretAccessKeySecretRef: …}}
//!   requestParameters: {sessionDuration: 3600, serialNumber: …, tokenCode: …}
//!   endpoint: https://sts.eu-west-1.amazonaws.com   # extension (default: regional STS)
//! ```
//! Answers ESO's keys `access_key_id`, `secret_access_key`, `session_token` and
//! `expiration` (seconds since the epoch). STS session tokens cannot be revoked, so the
//! credential carries its expiry and no revocation state.

use std::collections::BTreeMap;

use reqwest::Url;
use serde::Deserialize;
use serde_json::Value;

use super::aws::{self, AwsClient, AwsCommonSpec};
use super::{
    BuildContext, GenerateContext, Generated, Generator, GeneratorConfigError, GeneratorError,
};

const KIND: &str = "STSSessionToken";
/// STS's bounds on `DurationSeconds` for IAM users (15 minutes to 36 hours).
const MIN_DURATION: i64 = 900;
const MAX_DURATION: i64 = 129_600;

/// `spec` of an STSSessionToken generator.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StsSessionTokenSpec {
    #[serde(flatten)]
    common: AwsCommonSpec,
    #[serde(default)]
    request_parameters: Option<RequestParameters>,
}

/// ESO's `spec.requestParameters`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RequestParameters {
    #[serde(default)]
    session_duration: Option<i64>,
    #[serde(default)]
    serial_number: Option<String>,
    #[serde(default)]
    token_code: Option<String>,
}

/// Issues STS session tokens for one IAM user (or the role it assumes).
pub struct StsSessionTokenGenerator {
    client: AwsClient,
    endpoint: Url,
    duration: Option<i64>,
    serial_number: Option<String>,
    /// An MFA code: short-lived, but still kept out of Debug and logs.
    token_code: Option<String>,
}

impl std::fmt::Debug for StsSessionTokenGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StsSessionTokenGenerator")
            .field("client", &self.client)
            .field("endpoint", &self.endpoint.as_str())
            .field("duration", &self.duration)
            .field("mfa", &self.token_code.is_some())
            .finish_non_exhaustive()
    }
}

impl StsSessionTokenGenerator {
    /// Parses the spec and resolves the credentials it refers to.
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        spec: &Value,
    ) -> Result<Self, GeneratorConfigError> {
        let spec: StsSessionTokenSpec = ctx.parse(KIND, spec)?;
        let endpoint =
            aws::service_endpoint(&spec.common, "sts").map_err(|why| ctx.invalid(KIND, why))?;
        // AssumeRole goes to the same STS unless stsEndpoint says otherwise.
        let client = aws::client(ctx, KIND, &spec.common, Some(endpoint.clone()))?;
        let params = spec.request_parameters.unwrap_or_default();
        if let Some(d) = params.session_duration
            && !(MIN_DURATION..=MAX_DURATION).contains(&d)
        {
            return Err(ctx.invalid(
                KIND,
                format!(
                    "requestParameters.sessionDuration must be {MIN_DURATION}..={MAX_DURATION} seconds"
                ),
            ));
        }
        let text = |v: Option<String>,
                    field: &str|
         -> Result<Option<String>, GeneratorConfigError> {
            match v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) {
                Some(s) if s.len() > 256 || s.chars().any(char::is_control) => Err(ctx.invalid(
                    KIND,
                    format!("requestParameters.{field} is too long or has control characters"),
                )),
                other => Ok(other),
            }
        };
        let serial_number = text(params.serial_number, "serialNumber")?;
        let token_code = text(params.token_code, "tokenCode")?;
        Ok(StsSessionTokenGenerator {
            client,
            endpoint,
            duration: params.session_duration,
            serial_number,
            token_code,
        })
    }

    /// The GetSessionToken form body.
    fn body(&self) -> String {
        let duration = self.duration.map(|d| d.to_string());
        let mut pairs = vec![("Action", "GetSessionToken"), ("Version", "2011-06-15")];
        if let Some(d) = &duration {
            pairs.push(("DurationSeconds", d));
        }
        if let Some(s) = &self.serial_number {
            pairs.push(("SerialNumber", s));
        }
        if let Some(t) = &self.token_code {
            pairs.push(("TokenCode", t));
        }
        aws::form_body(&pairs)
    }
}

#[async_trait::async_trait]
impl Generator for StsSessionTokenGenerator {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn generate(&self, ctx: &GenerateContext<'_>) -> Result<Generated, GeneratorError> {
        let creds = aws::credentials(&self.client, ctx).await?;
        let (status, answer) = self
            .client
            .query_call(&creds, self.endpoint.clone(), self.body())
            .await?;
        if !status.is_success() {
            return Err(self
                .client
                .refusal("GetSessionToken", status, &answer)
                .into());
        }
        let issued = aws::parse_sts_credentials(&answer).map_err(|_| {
            GeneratorError::Backend("STS answered GetSessionToken with malformed XML".into())
        })?;
        tracing::debug!(
            kind = KIND,
            mfa = self.token_code.is_some(),
            "STS issued a session token"
        );
        let c = issued.credentials;
        let mut data = BTreeMap::new();
        data.insert("access_key_id".to_string(), c.access_key_id);
        data.insert("secret_access_key".to_string(), c.secret_access_key);
        data.insert(
            "session_token".to_string(),
            c.session_token.unwrap_or_default(),
        );
        data.insert("expiration".to_string(), issued.expires_at.to_string());
        Ok(Generated {
            data,
            revocation: None,
            expires_at: Some(issued.expires_at),
            renewable: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generators::RevocationState;
    use crate::generators::aws::tests::{auth, with_ctx};
    use axum::Router;
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    use axum::routing::post;
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    fn build(spec: Value) -> Result<StsSessionTokenGenerator, GeneratorConfigError> {
        with_ctx("ns", |ctx| StsSessionTokenGenerator::from_spec(ctx, &spec))
    }

    #[test]
    fn parses_eso_spec() {
        let g = build(json!({
            "region": "eu-west-1",
            "auth": auth(),
            "requestParameters": {"sessionDuration": 3600, "serialNumber": "arn:aws:iam::1:mfa/u", "tokenCode": "123456"}
        }))
        .unwrap();
        assert_eq!(g.endpoint.as_str(), "https://sts.eu-west-1.amazonaws.com/");
        assert_eq!(
            g.body(),
            "Action=GetSessionToken&Version=2011-06-15&DurationSeconds=3600&SerialNumber=arn%3Aaws%3Aiam%3A%3A1%3Amfa%2Fu&TokenCode=123456"
        );
        assert!(!format!("{g:?}").contains("EXAMPLEKEY"));
        let plain =
            build(json!({"region": "us-east-1", "auth": auth(), "endpoint": "http://127.0.0.1:1"}))
                .unwrap();
        assert_eq!(plain.body(), "Action=GetSessionToken&Version=2011-06-15");
        assert_eq!(plain.endpoint.as_str(), "http://127.0.0.1:1/");

        for (spec, needle) in [
            (
                json!({"region": "us-east-1", "auth": auth(), "requestParameters": {"sessionDuration": 60}}),
                "sessionDuration must be",
            ),
            (
                json!({"region": "us-east-1", "auth": auth(), "endpoint": "file:///x"}),
                "endpoint must be an http or https URL",
            ),
            (json!({"auth": auth()}), "region is required"),
        ] {
            let msg = build(spec).err().unwrap().to_string();
            assert!(msg.contains(needle), "{msg}");
        }
    }

    /// A fake STS answering `answers` in turn and recording (headers, body).
    async fn fake_sts(
        answers: Vec<(u16, &'static str)>,
    ) -> (String, Arc<Mutex<Vec<(HeaderMap, String)>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(answers));
        let (s, a) = (seen.clone(), answers.clone());
        let app = Router::new().route(
            "/",
            post(move |headers: HeaderMap, body: Bytes| {
                let (s, a) = (s.clone(), a.clone());
                async move {
                    s.lock()
                        .unwrap()
                        .push((headers, String::from_utf8_lossy(&body).into_owned()));
                    let (code, text) = a.lock().unwrap().remove(0);
                    (axum::http::StatusCode::from_u16(code).unwrap(), text)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    const ANSWER: &str = "<GetSessionTokenResponse><GetSessionTokenResult><Credentials>\
<AccessKeyId>ASIATEMP</AccessKeyId><SecretAccessKey>tempsecret</SecretAccessKey>\
<SessionToken>temptoken</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration>\
</Credentials></GetSessionTokenResult></GetSessionTokenResponse>";

    const ASSUMED: &str = "<AssumeRoleResponse><AssumeRoleResult><Credentials>\
<AccessKeyId>ASIAROLE</AccessKeyId><SecretAccessKey>rolesecret</SecretAccessKey>\
<SessionToken>roletoken</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration>\
</Credentials></AssumeRoleResult></AssumeRoleResponse>";

    #[tokio::test]
    async fn generates_signed_session_tokens() {
        let (url, seen) = fake_sts(vec![(200, ANSWER)]).await;
        let g = build(json!({"region": "us-east-1", "auth": auth(), "endpoint": url})).unwrap();
        let out = g.generate(&GenerateContext::default()).await.unwrap();
        assert_eq!(out.data["access_key_id"], "ASIATEMP");
        assert_eq!(out.data["secret_access_key"], "tempsecret");
        assert_eq!(out.data["session_token"], "temptoken");
        assert_eq!(out.data["expiration"], "1893456000");
        assert_eq!(out.expires_at, Some(1_893_456_000));
        assert!(out.revocation.is_none());
        assert_eq!(
            g.revoke(&RevocationState(json!({}))).await,
            Err(GeneratorError::NotRevocable)
        );
        let seen = seen.lock().unwrap();
        let (headers, body) = &seen[0];
        assert_eq!(body, "Action=GetSessionToken&Version=2011-06-15");
        let auth = headers["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
                && auth.contains("/us-east-1/sts/aws4_request"),
            "{auth}"
        );
    }

    #[tokio::test]
    async fn assumes_the_role_first() {
        let (url, seen) = fake_sts(vec![(200, ASSUMED), (200, ANSWER)]).await;
        let g = build(
            json!({"region": "us-east-1", "auth": auth(), "endpoint": url,
            "role": "arn:aws:iam::123456789012:role/ci"}),
        )
        .unwrap();
        let out = g.generate(&GenerateContext::default()).await.unwrap();
        assert_eq!(out.data["access_key_id"], "ASIATEMP");
        let seen = seen.lock().unwrap();
        assert!(seen[0].1.starts_with("Action=AssumeRole&"), "{}", seen[0].1);
        assert!(seen[0].1.contains("RoleSessionName=esi-federation"));
        // The second call is signed with the assumed role's credentials.
        let auth = seen[1].0["authorization"].to_str().unwrap();
        assert!(auth.contains("Credential=ASIAROLE/"), "{auth}");
        assert_eq!(seen[1].0["x-amz-security-token"], "roletoken");
    }

    #[tokio::test]
    async fn refusals_are_safe() {
        let refusal = "<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code>\
<Message>calculated for AKIDEXAMPLE wJalrXUtnFEMI</Message></Error></ErrorResponse>";
        let (url, _) = fake_sts(vec![(403, refusal), (200, "<garbage>temptoken")]).await;
        let g = build(json!({"region": "us-east-1", "auth": auth(), "endpoint": url})).unwrap();
        let err = g.generate(&GenerateContext::default()).await.unwrap_err();
        assert_eq!(
            err,
            GeneratorError::Backend(
                "AWS GetSessionToken failed: HTTP 403 (SignatureDoesNotMatch)".into()
            )
        );
        let err = g.generate(&GenerateContext::default()).await.unwrap_err();
        assert!(!err.to_string().contains("temptoken"), "{err}");

        let closed =
            build(json!({"region": "us-east-1", "auth": auth(), "endpoint": "http://127.0.0.1:9"}))
                .unwrap();
        let err = closed
            .generate(&GenerateContext::default())
            .await
            .unwrap_err();
        assert!(matches!(err, GeneratorError::Unavailable(_)), "{err}");
        assert!(!err.to_string().contains("127.0.0.1"), "{err}");
    }
}
