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

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde_json::Value;

use super::{
    BuildContext, GenerateContext, Generated, Generator, GeneratorConfigError, GeneratorError,
};
use crate::providers;
use crate::providers::webhook::call::{
    self, Part, parse_template, query_escape, raw, render, result_map,
};
use crate::resources::SecretKeySelector;
use crate::support::jsonpath::JsonPath;

const KIND: &str = "Webhook";

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
        let spec: call::WebhookSpec = ctx.parse(KIND, spec)?;
        if let Some(why) = spec.unsupported() {
            return Err(ctx.invalid(KIND, why));
        }
        let method =
            call::parse_method(spec.method.as_deref()).map_err(|why| ctx.invalid(KIND, why))?;
        let names = spec
            .secret_names(None)
            .map_err(|why| ctx.invalid(KIND, why))?;
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
            parse_template(text).map_err(|e| ctx.invalid(KIND, format!("{field} {e}")))
        };

        let url_text = render(&template("url", &spec.url)?, lookup, query_escape)?;
        let url = call::parse_url(&url_text)
            .ok_or_else(|| ctx.invalid(KIND, "url must be an http or https URL"))?;

        let mut headers = HeaderMap::new();
        for (name, value) in &spec.headers {
            let header = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                ctx.invalid(KIND, format!("headers: {name:?} is not a header name"))
            })?;
            let text = render(&template("headers", value)?, lookup, raw)?;
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
            Some(text) => Some(render(&template("body", text)?, lookup, raw)?),
        };
        let json_path = match spec.result.json_path.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(path) => Some(
                JsonPath::parse(path)
                    .map_err(|why| ctx.invalid(KIND, format!("result.jsonPath {why}")))?,
            ),
        };
        let timeout = call::parse_timeout(spec.timeout.as_deref(), ctx.settings.timeout)
            .map_err(|why| ctx.invalid(KIND, why))?;
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
        let body = call::send(req)
            .await
            .map_err(|e| GeneratorError::from(e.into_provider("webhook", false)))?;
        let map = result_map(&body, self.json_path.as_ref())
            .map_err(|e| GeneratorError::Backend(e.to_string()))?;
        Ok(Generated::plain(map))
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
            (
                base(json!({"auth": {"ntlm": {}}})),
                "auth (NTLM) is not supported",
            ),
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
