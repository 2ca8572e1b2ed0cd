//! ESO's `ECRAuthorizationToken` generator: ECR `GetAuthorizationToken` (JSON 1.1 API,
//! SigV4 `ecr`, or `ecr-public` for `scope: public`).
//!
//! ```yaml
//! spec:
//!   region: eu-west-1
//!   role: arn:aws:iam::123456789012:role/pull   # optional: AssumeRole first, as ESO does
//!   auth: {secretRef: {accessKeyIDSecretRef: …, secretAccessKeySecretRef: …}}
//!   scope: private                               # private (default) | public
//!   endpoint: https://api.ecr.eu-west-1.amazonaws.com   # extension (default: regional)
//!   stsEndpoint: https://sts.eu-west-1.amazonaws.com    # extension, for AssumeRole
//! ```
//! Answers ESO's keys: `username`, `password` (the decoded `user:password` token),
//! `proxy_endpoint` (private registries only) and `expires_at` (seconds since the epoch).
//! ECR tokens cannot be revoked; the credential carries its expiry.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Url;
use serde::Deserialize;
use serde_json::Value;

use super::aws::{self, AwsClient, AwsCommonSpec};
use super::{
    BuildContext, GenerateContext, Generated, Generator, GeneratorConfigError, GeneratorError,
};

const KIND: &str = "ECRAuthorizationToken";

/// `spec` of an ECRAuthorizationToken generator.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EcrAuthorizationTokenSpec {
    #[serde(flatten)]
    common: AwsCommonSpec,
    #[serde(default)]
    scope: Option<String>,
}

/// Which ECR the token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Private,
    Public,
}

impl Scope {
    /// SigV4 service name.
    fn service(self) -> &'static str {
        match self {
            Scope::Private => "ecr",
            Scope::Public => "ecr-public",
        }
    }

    /// `X-Amz-Target` of GetAuthorizationToken.
    fn target(self) -> &'static str {
        match self {
            Scope::Private => "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken",
            Scope::Public => "SpencerFrontendService.GetAuthorizationToken",
        }
    }

    /// Host prefix of the default endpoint.
    fn endpoint_prefix(self) -> &'static str {
        match self {
            Scope::Private => "api.ecr",
            Scope::Public => "api.ecr-public",
        }
    }
}

/// Issues registry login tokens for one IAM identity.
#[derive(Debug)]
pub struct EcrAuthorizationTokenGenerator {
    client: AwsClient,
    endpoint: Url,
    scope: Scope,
}

/// `authorizationData` entry of ECR's answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizationData {
    authorization_token: String,
    expires_at: f64,
    #[serde(default)]
    proxy_endpoint: Option<String>,
}

/// Private ECR answers a list (one per registry asked; we ask for the default one).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PrivateAnswer {
    authorization_data: Vec<AuthorizationData>,
}

/// ECR Public answers one object.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublicAnswer {
    authorization_data: AuthorizationData,
}

/// Why a token cannot be decoded (no detail: the text is the credential).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadToken;

/// Splits ECR's token (base64 of `user:password`) as ESO does: exactly one colon.
pub(crate) fn decode_token(token: &str) -> Result<(String, String), BadToken> {
    let bytes = STANDARD.decode(token.trim()).map_err(|_| BadToken)?;
    let text = String::from_utf8(bytes).map_err(|_| BadToken)?;
    let mut parts = text.split(':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(user), Some(password), None) if !user.is_empty() && !password.is_empty() => {
            Ok((user.to_string(), password.to_string()))
        }
        _ => Err(BadToken),
    }
}

/// The generator's answer from ECR's JSON body.
fn parse_answer(scope: Scope, body: &[u8]) -> Result<Generated, GeneratorError> {
    let malformed = || GeneratorError::Backend("ECR answered malformed JSON".into());
    let data = match scope {
        Scope::Private => {
            let mut answer: PrivateAnswer =
                serde_json::from_slice(body).map_err(|_| malformed())?;
            if answer.authorization_data.len() != 1 {
                return Err(GeneratorError::Backend(format!(
                    "ECR answered {} authorization tokens, expected 1",
                    answer.authorization_data.len()
                )));
            }
            answer.authorization_data.remove(0)
        }
        Scope::Public => {
            let answer: PublicAnswer = serde_json::from_slice(body).map_err(|_| malformed())?;
            answer.authorization_data
        }
    };
    let (username, password) = decode_token(&data.authorization_token).map_err(|_| {
        GeneratorError::Backend("ECR authorization token is not base64 of user:password".into())
    })?;
    if !data.expires_at.is_finite() || data.expires_at < 0.0 {
        return Err(GeneratorError::Backend(
            "ECR answered an invalid expiry".into(),
        ));
    }
    // Seconds (ECR sends fractional seconds); the cast saturates for absurd values.
    let expires_at = data.expires_at.floor() as u64;
    let mut out = BTreeMap::new();
    out.insert("username".to_string(), username);
    out.insert("password".to_string(), password);
    out.insert("expires_at".to_string(), expires_at.to_string());
    if scope == Scope::Private {
        let Some(proxy) = data.proxy_endpoint.filter(|p| !p.is_empty()) else {
            return Err(GeneratorError::Backend(
                "ECR answered no proxyEndpoint".into(),
            ));
        };
        out.insert("proxy_endpoint".to_string(), proxy);
    }
    Ok(Generated {
        data: out,
        revocation: None,
        expires_at: Some(expires_at),
        renewable: false,
    })
}

impl EcrAuthorizationTokenGenerator {
    /// Parses the spec and resolves the credentials it refers to.
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        spec: &Value,
    ) -> Result<Self, GeneratorConfigError> {
        let spec: EcrAuthorizationTokenSpec = ctx.parse(KIND, spec)?;
        let scope = match spec.scope.as_deref().map(str::trim) {
            None | Some("") | Some("private") => Scope::Private,
            Some("public") => Scope::Public,
            Some(_) => return Err(ctx.invalid(KIND, "scope must be private or public")),
        };
        let client = aws::client(ctx, KIND, &spec.common, None)?;
        let endpoint = aws::service_endpoint(&spec.common, scope.endpoint_prefix())
            .map_err(|why| ctx.invalid(KIND, why))?;
        Ok(EcrAuthorizationTokenGenerator {
            client,
            endpoint,
            scope,
        })
    }
}

#[async_trait::async_trait]
impl Generator for EcrAuthorizationTokenGenerator {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn generate(&self, ctx: &GenerateContext<'_>) -> Result<Generated, GeneratorError> {
        let creds = aws::credentials(&self.client, ctx).await?;
        let (status, answer) = self
            .client
            .json_call(
                &creds,
                self.scope.service(),
                &self.endpoint,
                self.scope.target(),
                &serde_json::json!({}),
            )
            .await?;
        if !status.is_success() {
            return Err(self
                .client
                .refusal("GetAuthorizationToken", status, &answer)
                .into());
        }
        let out = parse_answer(self.scope, &answer)?;
        tracing::debug!(kind = KIND, scope = ?self.scope, "ECR issued an authorization token");
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generators::aws::tests::{auth, with_ctx};
    use axum::Router;
    use axum::http::HeaderMap;
    use axum::routing::post;
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    fn build(spec: Value) -> Result<EcrAuthorizationTokenGenerator, GeneratorConfigError> {
        with_ctx("ns", |ctx| {
            EcrAuthorizationTokenGenerator::from_spec(ctx, &spec)
        })
    }

    fn token(text: &str) -> String {
        STANDARD.encode(text)
    }

    #[test]
    fn decodes_tokens_like_eso() {
        assert_eq!(
            decode_token(&token("AWS:eyJwYXlsb2FkIjoi")),
            Ok(("AWS".to_string(), "eyJwYXlsb2FkIjoi".to_string()))
        );
        for bad in [
            token("no-colon"),
            token("a:b:c"),
            token(":password"),
            token("user:"),
            "%%% not base64".to_string(),
            STANDARD.encode([0xff, b':', 0xfe]),
        ] {
            assert_eq!(decode_token(&bad), Err(BadToken), "{bad}");
        }
    }

    #[test]
    fn parses_answers() {
        let private = json!({"authorizationData": [{
            "authorizationToken": token("AWS:pw"),
            "expiresAt": 1_893_456_000.5,
            "proxyEndpoint": "https://123456789012.dkr.ecr.us-east-1.amazonaws.com"
        }]});
        let out = parse_answer(Scope::Private, private.to_string().as_bytes()).unwrap();
        assert_eq!(out.data["username"], "AWS");
        assert_eq!(out.data["password"], "pw");
        assert_eq!(out.data["expires_at"], "1893456000");
        assert_eq!(
            out.data["proxy_endpoint"],
            "https://123456789012.dkr.ecr.us-east-1.amazonaws.com"
        );
        assert_eq!(out.expires_at, Some(1_893_456_000));
        assert!(out.revocation.is_none());

        let public = json!({"authorizationData": {
            "authorizationToken": token("AWS:pub"), "expiresAt": 1_893_456_000
        }});
        let out = parse_answer(Scope::Public, public.to_string().as_bytes()).unwrap();
        assert_eq!(
            out.data.keys().collect::<Vec<_>>(),
            ["expires_at", "password", "username"]
        );

        let two = json!({"authorizationData": [
            {"authorizationToken": token("a:b"), "expiresAt": 1, "proxyEndpoint": "x"},
            {"authorizationToken": token("a:b"), "expiresAt": 1, "proxyEndpoint": "y"}
        ]});
        let bad_token = json!({"authorizationData": [
            {"authorizationToken": token("secretvalue"), "expiresAt": 1, "proxyEndpoint": "x"}
        ]});
        for (body, needle) in [
            (two.to_string(), "2 authorization tokens"),
            (bad_token.to_string(), "not base64 of user:password"),
            ("{}".to_string(), "malformed JSON"),
            (
                json!({"authorizationData": [{"authorizationToken": token("a:b"), "expiresAt": 1}]})
                    .to_string(),
                "no proxyEndpoint",
            ),
        ] {
            let err = parse_answer(Scope::Private, body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
            assert!(!err.contains("secretvalue"), "{err}");
        }
    }

    #[test]
    fn parses_eso_spec() {
        let g = build(json!({"region": "eu-west-1", "auth": auth()})).unwrap();
        assert_eq!(g.scope, Scope::Private);
        assert_eq!(
            g.endpoint.as_str(),
            "https://api.ecr.eu-west-1.amazonaws.com/"
        );
        let g = build(json!({"region": "us-east-1", "auth": auth(), "scope": "public"})).unwrap();
        assert_eq!(g.scope, Scope::Public);
        assert_eq!(
            g.endpoint.as_str(),
            "https://api.ecr-public.us-east-1.amazonaws.com/"
        );
        let msg = build(json!({"region": "us-east-1", "auth": auth(), "scope": "both"}))
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("scope must be private or public"), "{msg}");
    }

    #[tokio::test]
    async fn calls_ecr_with_the_json_protocol() {
        let seen = Arc::new(Mutex::new(Vec::<HeaderMap>::new()));
        let s = seen.clone();
        let answer = json!({"authorizationData": [{
            "authorizationToken": token("AWS:registrypw"), "expiresAt": 1_893_456_000,
            "proxyEndpoint": "https://1.dkr.ecr.us-east-1.amazonaws.com"
        }]});
        let app = Router::new().route(
            "/",
            post(move |headers: HeaderMap| {
                let s = s.clone();
                let answer = answer.clone();
                async move {
                    s.lock().unwrap().push(headers);
                    axum::Json(answer)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let g = build(json!({"region": "us-east-1", "auth": auth(),
            "endpoint": format!("http://{addr}")}))
        .unwrap();
        let out = g.generate(&GenerateContext::default()).await.unwrap();
        assert_eq!(out.data["password"], "registrypw");
        let headers = &seen.lock().unwrap()[0];
        assert_eq!(
            headers["x-amz-target"],
            "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
        );
        assert_eq!(headers["content-type"], "application/x-amz-json-1.1");
        let auth = headers["authorization"].to_str().unwrap();
        assert!(auth.contains("/us-east-1/ecr/aws4_request"), "{auth}");
        assert!(auth.contains("x-amz-target"), "{auth}");
    }
}
