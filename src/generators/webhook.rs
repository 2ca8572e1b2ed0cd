//! ESO's `Webhook` generator: one HTTP call whose JSON answer is the credential.
//!
//! ```yaml
//! spec:
//!   url: "https://issuer.example/new?team={{ .auth.team }}"
//!   method: POST                                  # default GET
//!   headers: {Authorization: "Bearer {{ .auth.token }}", Content-Type: application/json}
//!   body: '{"user": "{{ .auth.user }}"}'
//!   timeout: 5s                                   # default: the server's backend timeout
//!   result: {jsonPath: "$.data"}                  # default: the whole answer
//!   secrets: [{name: auth, secretRef: {name: webhook-credentials}}]
//!   caBundle: <base64 PEM>
//! ```
//! Templates are a strict subset of ESO's Go templates: only `{{ .<name>.<key> }}`,
//! where `<name>` is a `secrets[].name` and `<key>` a key of that Secret (as in ESO, every
//! key of the referenced Secret is available; `secretRef.key` is not needed). Values are
//! query-escaped in the URL and inserted as they are in headers and body. Anything else
//! between `{{ }}` (functions, pipelines, `.remoteRef`) is refused when the object loads.
//! The answer is handled as ESO does: the value at `result.jsonPath` (RFC 9535 JSONPath,
//! filters included: [`crate::support::jsonpath`]; the first value when it selects
//! several) must be a JSON object (or a string holding one); each member becomes a
//! key, strings as they are and other values as JSON text. Webhooks hold no revocation
//! state. Secrets used in templates never appear in messages or Debug output.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

use super::{
    BuildContext, GenerateContext, Generated, Generator, GeneratorConfigError, GeneratorError,
};
use crate::providers;
use crate::resources::SecretKeySelector;
use crate::support::jsonpath::JsonPath;

const KIND: &str = "Webhook";
/// Bound on the webhook's answer.
const MAX_BODY: usize = 1024 * 1024;
/// Bound on `spec.timeout` (a generation holds a request open).
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on each template (URL, header value, body).
const MAX_TEMPLATE: usize = 64 * 1024;

/// `spec` of a Webhook generator.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WebhookSpec {
    #[serde(default)]
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    result: WebhookResult,
    #[serde(default)]
    secrets: Vec<WebhookSecret>,
    #[serde(default)]
    ca_bundle: Option<String>,
    #[serde(default)]
    ca_provider: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WebhookResult {
    #[serde(default)]
    json_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WebhookSecret {
    name: String,
    secret_ref: WebhookSecretRef,
}

/// ESO's generator `SecretKeySelector`: the key is optional (all keys are available).
#[derive(Deserialize)]
struct WebhookSecretRef {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    /// Text as written.
    Literal(String),
    /// `{{ .name.key }}`.
    Ref {
        /// A `secrets[].name`.
        name: String,
        /// A key of that Secret.
        key: String,
    },
}

/// Why a template is refused (messages hold no template text: it may hold secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TemplateError {
    /// `{{` without `}}`.
    #[error("has an unclosed {{{{")]
    Unclosed,
    /// Something other than `.name.key` between the braces.
    #[error("may only use {{{{ .<secret>.<key> }}}} references")]
    Unsupported,
}

/// A Go-template identifier (`[A-Za-z_][A-Za-z0-9_]*`).
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits a template into literals and `{{ .name.key }}` references.
pub(crate) fn parse_template(text: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(Part::Literal(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(TemplateError::Unclosed)?;
        let inner = after[..end].trim();
        let mut segments = inner
            .strip_prefix('.')
            .ok_or(TemplateError::Unsupported)?
            .split('.');
        match (segments.next(), segments.next(), segments.next()) {
            (Some(name), Some(key), None) if is_identifier(name) && is_identifier(key) => {
                parts.push(Part::Ref {
                    name: name.to_string(),
                    key: key.to_string(),
                });
            }
            _ => return Err(TemplateError::Unsupported),
        }
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_string()));
    }
    Ok(parts)
}

/// Renders parsed parts; `lookup` answers a reference's value, `escape` transforms it.
pub(crate) fn render<E>(
    parts: &[Part],
    mut lookup: impl FnMut(&str, &str) -> Result<String, E>,
    escape: impl Fn(&str) -> String,
) -> Result<String, E> {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Literal(text) => out.push_str(text),
            Part::Ref { name, key } => out.push_str(&escape(&lookup(name, key)?)),
        }
    }
    Ok(out)
}

/// Go's `url.QueryEscape` (spaces as `+`, everything but unreserved escaped).
fn query_escape(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// ESO's value rule for a member of the result object.
fn member_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// The data map from the webhook's answer, as ESO's GetSecretMap builds it.
pub(crate) fn result_map(
    body: &[u8],
    path: Option<&JsonPath>,
) -> Result<BTreeMap<String, String>, GeneratorError> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|_| GeneratorError::Backend("webhook answered malformed JSON".into()))?;
    let found = match path {
        None => Some(&doc),
        Some(path) => path.select_one(&doc),
    };
    let found = found.ok_or_else(|| {
        GeneratorError::Backend("result.jsonPath matches nothing in the webhook answer".into())
    })?;
    // As ESO: a string result is parsed as JSON once more.
    let parsed;
    let value = match found {
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).map_err(|_| {
                GeneratorError::Backend(
                    "the webhook result is a string that is not a JSON object".into(),
                )
            })?;
            &parsed
        }
        other => other,
    };
    let Value::Object(map) = value else {
        return Err(GeneratorError::Backend(
            "the webhook result is not a JSON object".into(),
        ));
    };
    Ok(map
        .iter()
        .map(|(k, v)| (k.clone(), member_text(v)))
        .collect())
}

/// Calls one webhook per generation.
pub struct WebhookGenerator {
    client: reqwest::Client,
    method: Method,
    /// Rendered at load: it may hold secret values (never shown).
    url: Url,
    headers: HeaderMap,
    body: Option<String>,
    json_path: Option<JsonPath>,
}

impl std::fmt::Debug for WebhookGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookGenerator")
            .field("method", &self.method)
            .field("host", &self.url.host_str())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body", &self.body.is_some())
            .field("json_path", &self.json_path)
            .finish_non_exhaustive()
    }
}

impl WebhookGenerator {
    /// Parses the spec, resolves the referenced Secret keys and renders the request.
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        spec: &Value,
    ) -> Result<Self, GeneratorConfigError> {
        let spec: WebhookSpec = ctx.parse(KIND, spec)?;
        if spec.ca_provider.is_some() {
            return Err(ctx.invalid(KIND, "caProvider is not supported (use caBundle)"));
        }
        let method = match spec
            .method
            .as_deref()
            .map(str::trim)
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("") | Some("GET") => Method::GET,
            Some("POST") => Method::POST,
            Some("PUT") => Method::PUT,
            Some("PATCH") => Method::PATCH,
            Some("DELETE") => Method::DELETE,
            Some(_) => {
                return Err(ctx.invalid(KIND, "method must be GET, POST, PUT, PATCH or DELETE"));
            }
        };
        let mut names = BTreeMap::new();
        for s in &spec.secrets {
            if !is_identifier(&s.name) {
                return Err(ctx.invalid(KIND, "secrets[].name must be an identifier"));
            }
            if s.secret_ref.name.trim().is_empty() {
                return Err(ctx.invalid(KIND, "secrets[].secretRef.name is required"));
            }
            if names.insert(s.name.clone(), &s.secret_ref).is_some() {
                return Err(ctx.invalid(KIND, format!("secrets[].name {:?} is repeated", s.name)));
            }
        }
        // Resolves `{{ .name.key }}` to that key of the Secret `name` refers to.
        let lookup = |name: &str, key: &str| -> Result<String, GeneratorConfigError> {
            let Some(secret_ref) = names.get(name) else {
                return Err(ctx.invalid(
                    KIND,
                    format!("template refers to {name:?}, which is not in secrets[]"),
                ));
            };
            let selector = SecretKeySelector {
                name: secret_ref.name.clone(),
                key: key.to_string(),
                namespace: secret_ref.namespace.clone(),
            };
            let bytes = ctx.resolve(KIND, "secrets[].secretRef", &selector)?;
            String::from_utf8(bytes).map_err(|_| {
                ctx.invalid(KIND, format!("secret value for {name}.{key} is not UTF-8"))
            })
        };
        let template = |field: &str, text: &str| -> Result<Vec<Part>, GeneratorConfigError> {
            if text.len() > MAX_TEMPLATE {
                return Err(ctx.invalid(
                    KIND,
                    format!("{field} must be at most {MAX_TEMPLATE} bytes"),
                ));
            }
            parse_template(text).map_err(|e| ctx.invalid(KIND, format!("{field} {e}")))
        };

        let url_text = render(&template("url", &spec.url)?, lookup, query_escape)?;
        let url = Url::parse(url_text.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| ctx.invalid(KIND, "url must be an http or https URL"))?;

        let mut headers = HeaderMap::new();
        for (name, value) in &spec.headers {
            let header = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                ctx.invalid(KIND, format!("headers: {name:?} is not a header name"))
            })?;
            let text = render(&template("headers", value)?, lookup, str::to_string)?;
            let mut value = HeaderValue::from_str(&text).map_err(|_| {
                ctx.invalid(
                    KIND,
                    format!("headers.{name}: the value is not a valid header value"),
                )
            })?;
            // Header values often carry credentials; keep them out of any debug output.
            value.set_sensitive(true);
            headers.append(header, value);
        }
        let body = match spec.body.as_deref() {
            None | Some("") => None,
            Some(text) => Some(render(&template("body", text)?, lookup, str::to_string)?),
        };
        let json_path = match spec.result.json_path.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(path) => Some(
                JsonPath::parse(path)
                    .map_err(|why| ctx.invalid(KIND, format!("result.jsonPath {why}")))?,
            ),
        };
        let timeout = match spec.timeout.as_deref() {
            None => ctx.settings.timeout,
            Some(text) => match crate::support::duration::parse_duration(text) {
                Ok(d) if !d.is_zero() && d <= MAX_TIMEOUT => d,
                _ => {
                    return Err(ctx.invalid(
                        KIND,
                        format!(
                            "timeout must be a duration above 0 and at most {}s",
                            MAX_TIMEOUT.as_secs()
                        ),
                    ));
                }
            },
        };
        let client = providers::tls::http_client(spec.ca_bundle.as_deref(), timeout)
            .map_err(|e| ctx.invalid(KIND, e.to_string()))?;
        Ok(WebhookGenerator {
            client,
            method,
            url,
            headers,
            body,
            json_path,
        })
    }
}

/// Maps a transport error without its text (the URL may hold secret values).
fn transport_error(err: &reqwest::Error) -> GeneratorError {
    if err.is_timeout() {
        GeneratorError::Unavailable("webhook call timed out".into())
    } else if err.is_connect() {
        GeneratorError::Unavailable("cannot connect to the webhook".into())
    } else {
        GeneratorError::Unavailable("webhook request failed".into())
    }
}

#[async_trait::async_trait]
impl Generator for WebhookGenerator {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn generate(&self, _ctx: &GenerateContext<'_>) -> Result<Generated, GeneratorError> {
        let mut req = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone());
        if let Some(body) = &self.body {
            req = req.body(body.clone());
        }
        let mut resp = req.send().await.map_err(|e| transport_error(&e))?;
        let status = resp.status();
        if !status.is_success() {
            tracing::warn!(
                kind = KIND,
                status = status.as_u16(),
                "the webhook refused the call"
            );
            let what = format!("webhook answered HTTP {}", status.as_u16());
            return Err(
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    GeneratorError::Unavailable(what)
                } else {
                    GeneratorError::Backend(what)
                },
            );
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(GeneratorError::Backend(
                    "webhook answer is too large".into(),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Generated::plain(result_map(
            &body,
            self.json_path.as_ref(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderSettings;
    use crate::resources::SecretIndex;
    use crate::resources::SecretObject;
    use serde_json::json;

    fn secrets() -> SecretIndex {
        let mut idx = SecretIndex::default();
        let obj = SecretObject {
            string_data: [
                ("user".to_string(), "alice smith".to_string()),
                ("token".to_string(), "s3cr3t&x=1".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        idx.insert("ns", "creds", &obj).unwrap();
        idx
    }

    fn build(spec: Value) -> Result<WebhookGenerator, GeneratorConfigError> {
        let secrets = secrets();
        let settings = ProviderSettings::default();
        WebhookGenerator::from_spec(
            &BuildContext {
                namespace: "ns",
                name: "wh",
                secrets: &secrets,
                settings: &settings,
            },
            &spec,
        )
    }

    fn refs(name: &str, key: &str) -> Part {
        Part::Ref {
            name: name.into(),
            key: key.into(),
        }
    }

    #[test]
    fn templates_are_strict() {
        assert_eq!(parse_template("").unwrap(), vec![]);
        assert_eq!(
            parse_template("plain").unwrap(),
            vec![Part::Literal("plain".into())]
        );
        assert_eq!(
            parse_template("a{{ .auth.user }}b{{.auth.token}}").unwrap(),
            vec![
                Part::Literal("a".into()),
                refs("auth", "user"),
                Part::Literal("b".into()),
                refs("auth", "token"),
            ]
        );
        for bad in [
            "{{ .auth.user | b64enc }}",
            "{{ print .auth.user }}",
            "{{ .auth }}",
            "{{ .auth.user.x }}",
            "{{ auth.user }}",
            "{{ .auth.user-name }}",
            "{{- .auth.user }}",
        ] {
            assert_eq!(
                parse_template(bad),
                Err(TemplateError::Unsupported),
                "{bad}"
            );
        }
        assert_eq!(
            parse_template("x {{ .auth.user"),
            Err(TemplateError::Unclosed)
        );
        let parts = parse_template("q={{ .a.b }}").unwrap();
        let out: Result<String, ()> = render(&parts, |_, _| Ok("a b&c".to_string()), query_escape);
        assert_eq!(out.unwrap(), "q=a+b%26c");
    }

    #[test]
    fn results_follow_eso() {
        let body = br#"{"data": {"user": "u", "n": 3, "f": 1.5, "ok": true, "none": null, "obj": {"k": "v"}, "arr": [1]},
            "nested": "{\"inner\": \"x\"}", "scalar": 5, "text": "plain"}"#;
        let map = result_map(body, Some(&JsonPath::parse("$.data").unwrap())).unwrap();
        assert_eq!(map["user"], "u");
        assert_eq!(map["n"], "3");
        assert_eq!(map["f"], "1.5");
        assert_eq!(map["ok"], "true");
        assert_eq!(map["none"], "");
        assert_eq!(map["obj"], r#"{"k":"v"}"#);
        assert_eq!(map["arr"], "[1]");
        let nested = result_map(body, Some(&JsonPath::parse("$.nested").unwrap())).unwrap();
        assert_eq!(nested["inner"], "x");
        // ESO's filter expressions select the object.
        let items = br#"{"items": [{"n": "a", "v": {"k": "1"}}, {"n": "b", "v": {"k": "2"}}]}"#;
        let picked = result_map(
            items,
            Some(&JsonPath::parse("$.items[?(@.n=='b')].v").unwrap()),
        )
        .unwrap();
        assert_eq!(picked["k"], "2");
        let whole = result_map(br#"{"a": "b"}"#, None).unwrap();
        assert_eq!(whole["a"], "b");
        for (path, needle) in [
            ("$.scalar", "not a JSON object"),
            ("$.text", "string that is not a JSON object"),
            ("$.nope", "matches nothing"),
        ] {
            let err = result_map(body, Some(&JsonPath::parse(path).unwrap())).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
        let err = result_map(b"not json s3cr3t", None)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "backend error: webhook answered malformed JSON");
    }

    #[test]
    fn renders_the_request_at_load() {
        let g = build(json!({
            "url": "http://127.0.0.1:1/new?u={{ .auth.user }}&t={{ .auth.token }}",
            "method": "post",
            "headers": {"Authorization": "Bearer {{ .auth.token }}", "X-Plain": "p"},
            "body": "{\"user\": \"{{ .auth.user }}\"}",
            "result": {"jsonPath": "$.data"},
            "timeout": "2s",
            "secrets": [{"name": "auth", "secretRef": {"name": "creds"}}]
        }))
        .unwrap();
        assert_eq!(g.method, Method::POST);
        assert_eq!(
            g.url.as_str(),
            "http://127.0.0.1:1/new?u=alice+smith&t=s3cr3t%26x%3D1"
        );
        assert_eq!(g.headers["authorization"], "Bearer s3cr3t&x=1");
        assert!(g.headers["x-plain"].is_sensitive());
        assert_eq!(g.body.as_deref(), Some("{\"user\": \"alice smith\"}"));
        let shown = format!("{g:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("alice"),
            "{shown}"
        );
    }

    #[test]
    fn config_errors_are_safe() {
        let base = |extra: Value| {
            let mut spec = json!({"url": "http://127.0.0.1:1/", "secrets": [{"name": "auth", "secretRef": {"name": "creds"}}]});
            spec.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            spec
        };
        for (spec, needle) in [
            (
                base(json!({"url": "{{ .other.user }}"})),
                "not in secrets[]",
            ),
            (
                base(json!({"url": "{{ .auth.missing }}"})),
                "has no key \"missing\"",
            ),
            (
                base(json!({"body": "{{ .auth.user | upper }}"})),
                "body may only use",
            ),
            (
                base(json!({"url": "ftp://x/{{ .auth.token }}"})),
                "url must be an http or https URL",
            ),
            (base(json!({"method": "TRACE"})), "method must be"),
            (base(json!({"timeout": "10m"})), "timeout must be"),
            (
                base(json!({"result": {"jsonPath": "$.a[?(@.x==]"}})),
                "result.jsonPath is not a valid JSONPath",
            ),
            (
                base(json!({"caProvider": {"type": "Secret", "name": "ca"}})),
                "caProvider is not supported",
            ),
            (
                base(json!({"caBundle": "%%%"})),
                "caBundle is not valid base64",
            ),
            (
                base(
                    json!({"secrets": [{"name": "auth", "secretRef": {"name": "creds", "namespace": "other"}}],
                    "url": "http://x/{{ .auth.user }}"}),
                ),
                "names namespace \"other\", not its object's",
            ),
            (
                base(json!({"headers": {"X": "a\n{{ .auth.token }}"}})),
                "not a valid header value",
            ),
        ] {
            let msg = build(spec).err().unwrap().to_string();
            assert!(msg.contains(needle), "{msg} lacks {needle}");
            assert!(!msg.contains("s3cr3t") && !msg.contains("alice"), "{msg}");
        }
    }
}
