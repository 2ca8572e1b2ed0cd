//! ESO's `webhook` store provider: one HTTP call per read, its JSON answer the secret.
//!
//! ```yaml
//! spec:
//!   provider:
//!     webhook:
//!       url: "https://secrets.example/get?id={{ .remoteRef.key }}&v={{ .remoteRef.version }}"
//!       method: GET                                   # default GET
//!       headers: {Authorization: "Bearer {{ .auth.token }}"}
//!       body: '{"name": "{{ .remoteRef.key }}"}'      # optional
//!       timeout: 5s                                   # default: the server's backend timeout
//!       result: {jsonPath: "$.secrets[?(@.name=='{{ .remoteRef.property }}')].value"}
//!       secrets: [{name: auth, secretRef: {name: webhook-credentials}}]
//!       caBundle: <base64 PEM>
//! ```
//! Templates, the call and the reading of the answer are the webhook generator's
//! ([`call`]). `.remoteRef.key`, `.remoteRef.property` and `.remoteRef.version` are
//! query-escaped in the URL (as ESO) and inserted as they are in headers, body and
//! `result.jsonPath`. They may only appear in the URL after its host (path or query), so
//! a key never chooses the host; escaping keeps a key inside its path segment or query
//! value (`/`, `?`, `#`, `&`, `%` are escaped), and the keys `.` and `..` (which a URL
//! parser would resolve as path steps) are refused.
//!
//! GetSecret: without `result.jsonPath`, the whole answer; with it, the selected value
//! (ESO's rule: strings as they are, a list its first element, objects as JSON). A 404 is
//! "not found", as in ESO. GetSecretMap: the selected object's members. No `find`.
//!
//! **Canonical form** (`docs/security.md`): the key byte for byte as given (there is no
//! other spelling of it: the backend sees exactly that key, escaped), non-empty, without
//! control characters, not `.` or `..`; property and version likewise, as given.

pub(crate) mod call;

use std::collections::BTreeMap;

use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;

use super::{
    BuildContext, FindRequest, KeyFilter, ProviderConfigError, ProviderError, RemoteRef,
    SecretProvider,
};
use crate::resources::SecretKeySelector;
use crate::support::jsonpath::JsonPath;
use call::Part;

/// The key of `spec.provider`.
pub(crate) const PROVIDER: &str = "webhook";
/// The template name of the reference (`{{ .remoteRef.key }}`).
const REMOTE_REF: &str = "remoteRef";
/// Bound on a key, property or version.
const MAX_REF: usize = 4096;

/// `result.jsonPath`: parsed at load, or per call when it uses `.remoteRef.*`.
enum ResultPath {
    None,
    Fixed(JsonPath),
    Template(Vec<Part>),
}

/// Reads secrets through a webhook.
pub struct WebhookProvider {
    client: reqwest::Client,
    method: Method,
    /// Secret values bound at load; `.remoteRef.*` rendered per call (never shown).
    url: Vec<Part>,
    host: String,
    headers: Vec<(HeaderName, Vec<Part>)>,
    body: Option<Vec<Part>>,
    json_path: ResultPath,
}

impl std::fmt::Debug for WebhookProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookProvider")
            .field("method", &self.method)
            .field("host", &self.host)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("body", &self.body.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether a template refers to `.remoteRef.*`.
fn uses_remote_ref(parts: &[Part]) -> bool {
    parts
        .iter()
        .any(|p| matches!(p, Part::Ref { name, .. } if name == REMOTE_REF))
}

/// The value of `.remoteRef.<key>` for `remote`.
fn remote_value<'a>(remote: &'a RemoteRef, key: &str) -> &'a str {
    match key {
        "key" => &remote.key,
        "property" => remote.property.as_deref().unwrap_or(""),
        _ => remote.version.as_deref().unwrap_or(""),
    }
}

/// Renders a template whose secrets are bound: only `.remoteRef.*` is left.
fn render_ref(
    parts: &[Part],
    remote: &RemoteRef,
    escape: impl Fn(&str) -> String,
) -> Result<String, ProviderError> {
    let out = call::render(
        parts,
        |_, key| Ok::<_, ProviderError>(remote_value(remote, key).to_string()),
        escape,
    )?;
    if out.len() > call::MAX_RENDERED {
        return Err(ProviderError::InvalidRequest(
            "the rendered webhook request is too large".into(),
        ));
    }
    Ok(out)
}

impl WebhookProvider {
    /// Parses `spec.provider.webhook`, resolves the referenced Secrets and binds their
    /// values into the templates.
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        block: &Value,
    ) -> Result<Self, ProviderConfigError> {
        let spec: call::WebhookSpec = ctx.parse(PROVIDER, block)?;
        if let Some(why) = spec.unsupported() {
            return Err(ctx.unsupported(PROVIDER, why));
        }
        let method =
            call::parse_method(spec.method.as_deref()).map_err(|why| ctx.invalid(PROVIDER, why))?;
        let names = spec
            .secret_names(Some(REMOTE_REF))
            .map_err(|why| ctx.invalid(PROVIDER, why))?;
        // `{{ .name.key }}`: that key of the Secret `name` refers to; `.remoteRef.*` later.
        let lookup = |name: &str, key: &str| -> Result<Option<String>, ProviderConfigError> {
            if name == REMOTE_REF {
                return match key {
                    "key" | "property" | "version" => Ok(None),
                    _ => Err(ctx.invalid(
                        PROVIDER,
                        "templates may use .remoteRef.key, .remoteRef.property and .remoteRef.version",
                    )),
                };
            }
            let Some(secret_ref) = names.get(name) else {
                return Err(ctx.invalid(
                    PROVIDER,
                    format!("template refers to {name:?}, which is not in secrets[]"),
                ));
            };
            let selector = SecretKeySelector {
                name: secret_ref.name.clone(),
                key: key.to_string(),
                namespace: secret_ref.namespace.clone(),
            };
            let bytes = ctx
                .secrets
                .resolve(&selector, ctx.namespace)
                .map_err(|source| ProviderConfigError::SecretRef {
                    store: ctx.store.to_string(),
                    field: "secrets[].secretRef",
                    source,
                })?;
            String::from_utf8(bytes.to_vec()).map(Some).map_err(|_| {
                ctx.invalid(
                    PROVIDER,
                    format!("secret value for {name}.{key} is not UTF-8"),
                )
            })
        };
        let template = |field: &str,
                        text: &str,
                        escape: fn(&str) -> String|
         -> Result<Vec<Part>, ProviderConfigError> {
            let parts = call::parse_template(text)
                .map_err(|e| ctx.invalid(PROVIDER, format!("{field} {e}")))?;
            call::bind(&parts, lookup, escape)
        };

        let url = template("url", spec.url.trim(), call::query_escape)?;
        // `.remoteRef.*` only after the host: the literal text before the first one must
        // already hold the scheme, the host and the `/` that starts the path.
        let prefix = match url.first() {
            Some(Part::Literal(text)) => text.as_str(),
            _ => "",
        };
        let prefix_ok = prefix
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains('/'));
        if uses_remote_ref(&url) && !prefix_ok {
            return Err(ctx.invalid(
                PROVIDER,
                "url may use .remoteRef only after the host (in the path or the query)",
            ));
        }
        // The URL of an example reference must be an http(s) URL.
        let example = RemoteRef {
            key: "k".into(),
            ..Default::default()
        };
        let host = render_ref(&url, &example, call::query_escape)
            .ok()
            .and_then(|text| call::parse_url(&text))
            .and_then(|u| u.host_str().map(str::to_string))
            .ok_or_else(|| ctx.invalid(PROVIDER, "url must be an http or https URL"))?;

        let mut headers = Vec::new();
        for (name, value) in &spec.headers {
            let header = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                ctx.invalid(PROVIDER, format!("headers: {name:?} is not a header name"))
            })?;
            let parts = template("headers", value, call::raw)?;
            let text = render_ref(&parts, &example, call::raw)
                .map_err(|_| ctx.invalid(PROVIDER, "headers: too large"))?;
            HeaderValue::from_str(&text).map_err(|_| {
                ctx.invalid(
                    PROVIDER,
                    format!("headers.{name}: the value is not a valid header value"),
                )
            })?;
            headers.push((header, parts));
        }
        let body = match spec.body.as_deref() {
            None | Some("") => None,
            Some(text) => Some(template("body", text, call::raw)?),
        };
        let json_path = match spec.result.json_path.as_deref().map(str::trim) {
            None | Some("") => ResultPath::None,
            Some(text) => {
                let parts = template("result.jsonPath", text, call::raw)?;
                let check = |text: &str| {
                    JsonPath::parse(text)
                        .map_err(|why| ctx.invalid(PROVIDER, format!("result.jsonPath {why}")))
                };
                if uses_remote_ref(&parts) {
                    ResultPath::Template(parts)
                } else {
                    let text = render_ref(&parts, &example, call::raw)
                        .map_err(|_| ctx.invalid(PROVIDER, "result.jsonPath: too large"))?;
                    ResultPath::Fixed(check(&text)?)
                }
            }
        };
        let timeout = call::parse_timeout(spec.timeout.as_deref(), ctx.settings.timeout)
            .map_err(|why| ctx.invalid(PROVIDER, why))?;
        let client = super::tls::http_client(spec.ca_bundle.as_deref(), timeout)
            .map_err(|e| ctx.invalid(PROVIDER, e.to_string()))?;
        Ok(WebhookProvider {
            client,
            method,
            url,
            host,
            headers,
            body,
            json_path,
        })
    }

    /// Calls the webhook for `remote` (canonical) and returns its answer.
    async fn call(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
        check_ref(remote)?;
        let url_text = render_ref(&self.url, remote, call::query_escape)?;
        let url = call::parse_url(&url_text).ok_or_else(|| {
            ProviderError::InvalidRequest("the key does not make a valid webhook URL".into())
        })?;
        let mut req = self.client.request(self.method.clone(), url);
        for (name, parts) in &self.headers {
            let text = render_ref(parts, remote, call::raw)?;
            let mut value = HeaderValue::from_str(&text).map_err(|_| {
                ProviderError::InvalidRequest(format!("the reference makes header {name} invalid"))
            })?;
            // Header values often carry credentials; keep them out of any debug output.
            value.set_sensitive(true);
            req = req.header(name.clone(), value);
        }
        if let Some(body) = &self.body {
            req = req.body(render_ref(body, remote, call::raw)?);
        }
        call::send(req)
            .await
            .map_err(|e| e.into_provider("webhook", true))
    }

    /// `result.jsonPath` for `remote`.
    fn path_for(&self, remote: &RemoteRef) -> Result<Option<JsonPath>, ProviderError> {
        match &self.json_path {
            ResultPath::None => Ok(None),
            ResultPath::Fixed(p) => Ok(Some(p.clone())),
            ResultPath::Template(parts) => {
                let text = render_ref(parts, remote, call::raw)?;
                JsonPath::parse(&text).map(Some).map_err(|_| {
                    ProviderError::InvalidRequest(
                        "the reference makes result.jsonPath invalid".into(),
                    )
                })
            }
        }
    }
}

/// The canonical-form rule for one field.
fn check_text(what: &str, text: &str) -> Result<(), ProviderError> {
    if text.len() > MAX_REF {
        return Err(ProviderError::InvalidRequest(format!(
            "{what} must be at most {MAX_REF} bytes"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(ProviderError::InvalidRequest(format!(
            "{what} must not hold control characters"
        )));
    }
    if text == "." || text == ".." {
        return Err(ProviderError::InvalidRequest(format!(
            "{what} must not be . or .."
        )));
    }
    Ok(())
}

/// Refuses a reference that is not canonical.
fn check_ref(remote: &RemoteRef) -> Result<(), ProviderError> {
    if remote.key.is_empty() {
        return Err(ProviderError::InvalidRequest("key is empty".into()));
    }
    check_text("key", &remote.key)?;
    if let Some(p) = &remote.property {
        check_text("property", p)?;
    }
    if let Some(v) = &remote.version {
        check_text("version", v)?;
    }
    Ok(())
}

fn no_find() -> ProviderError {
    ProviderError::Unsupported("the webhook provider has no find".into())
}

#[async_trait::async_trait]
impl SecretProvider for WebhookProvider {
    fn kind(&self) -> &'static str {
        PROVIDER
    }

    fn canonical_ref(&self, remote: &RemoteRef) -> Result<RemoteRef, ProviderError> {
        check_ref(remote)?;
        Ok(remote.clone())
    }

    fn canonical_find(&self, _find: &FindRequest) -> Result<FindRequest, ProviderError> {
        Err(no_find())
    }

    async fn get_secret(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
        let path = self.path_for(remote)?;
        let body = self.call(remote).await?;
        let Some(path) = path else {
            return Ok(body);
        };
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|_| ProviderError::Backend("webhook answered malformed JSON".into()))?;
        path.select_one(&doc)
            .and_then(call::single_value)
            .ok_or(ProviderError::NotFound)
    }

    async fn get_secret_map(
        &self,
        remote: &RemoteRef,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        let path = self.path_for(remote)?;
        let body = self.call(remote).await?;
        let map = call::result_map(&body, path.as_ref()).map_err(|e| match e {
            call::ResultError::NoMatch => ProviderError::NotFound,
            other => ProviderError::Backend(other.to_string()),
        })?;
        Ok(map.into_iter().map(|(k, v)| (k, v.into_bytes())).collect())
    }

    async fn find_allowed(
        &self,
        _find: &FindRequest,
        _allow: &KeyFilter<'_>,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        Err(no_find())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderMap, Method as HttpMethod, Uri};
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use serde_json::json;

    use super::*;
    use crate::providers::ProviderSettings;
    use crate::resources::{SecretIndex, SecretObject};

    /// One request the test webhook received.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        uri: String,
        headers: HeaderMap,
        body: String,
    }

    /// An HTTPS webhook: answers by the `id` query value, records every request.
    struct Hook {
        url: String,
        ca_pem: String,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    async fn answer(uri: &Uri) -> (u16, String) {
        let id = uri
            .query()
            .and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "id")
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_default();
        match id.as_str() {
            "missing" => (404, "{}".into()),
            "busy" => (503, "{}".into()),
            "denied" => (403, "{}".into()),
            "huge" => (200, format!("\"{}\"", "x".repeat(call::MAX_BODY + 10))),
            "slow" => {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                (200, "{}".into())
            }
            _ => (
                200,
                json!({
                    "id": id,
                    "secrets": [{"name": "db", "value": "x"}, {"name": "api", "value": "y"}],
                    "data": {"user": "u", "n": 3},
                    "plain": "text",
                })
                .to_string(),
            ),
        }
    }

    async fn hook() -> Hook {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let app = axum::Router::new().fallback(
            move |method: HttpMethod, uri: Uri, headers: HeaderMap, body: String| {
                let record = record.clone();
                async move {
                    record.lock().unwrap().push(Seen {
                        method: method.to_string(),
                        uri: uri.to_string(),
                        headers,
                        body,
                    });
                    let (status, body) = answer(&uri).await;
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        [("content-type", "application/json")],
                        body,
                    )
                }
            },
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = axum_server::from_tcp_rustls(
            listener,
            axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)),
        )
        .unwrap();
        tokio::spawn(async move { server.serve(app.into_make_service()).await });
        Hook {
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: ca.pem(),
            seen,
        }
    }

    fn secrets() -> SecretIndex {
        let mut idx = SecretIndex::default();
        let obj = SecretObject {
            string_data: [("token".to_string(), "s3cr3t&x=1".to_string())].into(),
            ..Default::default()
        };
        idx.insert("ns", "creds", &obj).unwrap();
        idx
    }

    fn build(block: Value) -> Result<WebhookProvider, ProviderConfigError> {
        let secrets = secrets();
        let settings = ProviderSettings::default();
        WebhookProvider::from_spec(
            &BuildContext {
                store: "wh",
                namespace: Some("ns"),
                secrets: &secrets,
                settings: &settings,
            },
            &block,
        )
    }

    fn spec(hook: &Hook, extra: Value) -> Value {
        let mut spec = json!({
            "url": format!("{}/get?id={{{{ .remoteRef.key }}}}&v={{{{ .remoteRef.version }}}}", hook.url),
            "headers": {"Authorization": "Bearer {{ .auth.token }}", "X-Key": "{{ .remoteRef.key }}"},
            "secrets": [{"name": "auth", "secretRef": {"name": "creds"}}],
            "caBundle": hook.ca_pem,
        });
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec
    }

    fn key(k: &str) -> RemoteRef {
        RemoteRef {
            key: k.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn calls_the_webhook_with_the_key_escaped_and_secret_headers() {
        let hook = hook().await;
        let p = build(spec(&hook, json!({"result": {"jsonPath": "$.id"}}))).unwrap();
        let tricky = "a/b c&id=other?#x/../..";
        let r = RemoteRef {
            key: tricky.into(),
            version: Some("2".into()),
            ..Default::default()
        };
        assert_eq!(p.canonical_ref(&r).unwrap(), r, "the key is kept as given");
        // The backend sees exactly the key: `id` decodes to it, nothing else moved.
        assert_eq!(p.get_secret(&r).await.unwrap(), tricky.as_bytes());
        let seen = hook.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, "GET");
        assert_eq!(
            seen[0].uri,
            "/get?id=a%2Fb+c%26id%3Dother%3F%23x%2F..%2F..&v=2"
        );
        assert_eq!(seen[0].headers["authorization"], "Bearer s3cr3t&x=1");
        assert_eq!(seen[0].headers["x-key"], tricky);
        let shown = format!("{p:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[tokio::test]
    async fn json_path_filters_maps_and_body() {
        let hook = hook().await;
        let p = build(spec(
            &hook,
            json!({
                "method": "POST",
                "body": "{\"name\": \"{{ .remoteRef.key }}\", \"t\": \"{{ .auth.token }}\"}",
                "result": {"jsonPath": "$.secrets[?(@.name=='{{ .remoteRef.property }}')].value"},
            }),
        ))
        .unwrap();
        let r = RemoteRef {
            key: "k 1".into(),
            property: Some("api".into()),
            version: None,
        };
        assert_eq!(p.get_secret(&r).await.unwrap(), b"y");
        let none = RemoteRef {
            property: Some("nope".into()),
            ..r.clone()
        };
        assert_eq!(p.get_secret(&none).await, Err(ProviderError::NotFound));
        let seen = hook.seen.lock().unwrap().clone();
        assert_eq!(seen[0].method, "POST");
        assert_eq!(seen[0].body, r#"{"name": "k 1", "t": "s3cr3t&x=1"}"#);
        assert_eq!(seen[0].uri, "/get?id=k+1&v=");

        // GetSecretMap: the object at result.jsonPath; the whole answer without one.
        let m = build(spec(&hook, json!({"result": {"jsonPath": "$.data"}}))).unwrap();
        let map = m.get_secret_map(&key("k")).await.unwrap();
        assert_eq!(map["user"], b"u");
        assert_eq!(map["n"], b"3");
        let whole = build(spec(&hook, json!({}))).unwrap();
        let raw = whole.get_secret(&key("k")).await.unwrap();
        assert!(serde_json::from_slice::<Value>(&raw).unwrap()["plain"] == "text");
        assert_eq!(
            whole.get_secret_map(&key("k")).await.unwrap()["plain"],
            b"text"
        );
    }

    #[tokio::test]
    async fn errors_are_mapped_and_bounded() {
        let hook = hook().await;
        let p = build(spec(&hook, json!({"timeout": "1s"}))).unwrap();
        assert_eq!(
            p.get_secret(&key("missing")).await,
            Err(ProviderError::NotFound)
        );
        assert!(matches!(
            p.get_secret(&key("busy")).await,
            Err(ProviderError::Unavailable(m)) if m == "webhook answered HTTP 503"
        ));
        assert!(matches!(
            p.get_secret(&key("denied")).await,
            Err(ProviderError::Backend(m)) if m == "webhook answered HTTP 403"
        ));
        assert_eq!(
            p.get_secret(&key("huge")).await,
            Err(ProviderError::Backend("webhook answer is too large".into()))
        );
        assert_eq!(
            p.get_secret(&key("slow")).await,
            Err(ProviderError::Timeout)
        );
        // No find; refused keys never reach the webhook.
        assert!(matches!(
            p.canonical_find(&FindRequest::default()),
            Err(ProviderError::Unsupported(_))
        ));
        let before = hook.seen.lock().unwrap().len();
        for bad in ["", "a\nb", "x\u{7f}", ".", ".."] {
            assert!(
                matches!(
                    p.canonical_ref(&key(bad)),
                    Err(ProviderError::InvalidRequest(_))
                ),
                "{bad:?}"
            );
            assert!(p.get_secret(&key(bad)).await.is_err());
        }
        assert_eq!(hook.seen.lock().unwrap().len(), before);
        // A webhook the store's CA did not sign is refused.
        let other = hook_spec_without_ca(&hook);
        let err = build(other)
            .unwrap()
            .get_secret(&key("k"))
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Unavailable(_)), "{err}");
    }

    fn hook_spec_without_ca(hook: &Hook) -> Value {
        let mut s = spec(hook, json!({}));
        s.as_object_mut().unwrap().remove("caBundle");
        s
    }

    #[test]
    fn config_errors_are_safe() {
        let base = |extra: Value| {
            let mut spec = json!({"url": "https://h.example/x?id={{ .remoteRef.key }}",
                "secrets": [{"name": "auth", "secretRef": {"name": "creds"}}]});
            spec.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            spec
        };
        for (spec, needle) in [
            (
                base(json!({"url": "https://{{ .remoteRef.key }}.example/"})),
                "only after the host",
            ),
            (
                base(json!({"url": "https://h.example?id={{ .remoteRef.key }}"})),
                "only after the host",
            ),
            (
                base(json!({"url": "{{ .auth.token }}/{{ .remoteRef.key }}"})),
                "only after the host",
            ),
            (
                base(json!({"url": "https://h/{{ .remoteRef.other }}"})),
                ".remoteRef.key",
            ),
            (
                base(json!({"url": "https://h/{{ .other.token }}"})),
                "not in secrets[]",
            ),
            (
                base(json!({"url": "https://h/{{ .auth.missing }}"})),
                "has no key \"missing\"",
            ),
            (
                base(json!({"url": "ftp://h/{{ .auth.token }}"})),
                "url must be an http or https URL",
            ),
            (
                base(json!({"body": "{{ .auth.token | upper }}"})),
                "body may only use",
            ),
            (
                base(json!({"result": {"jsonPath": "$.a[?(@.x==]"}})),
                "result.jsonPath is not a valid JSONPath",
            ),
            (base(json!({"method": "TRACE"})), "method must be"),
            (base(json!({"timeout": "10m"})), "timeout must be"),
            (
                base(json!({"caProvider": {"type": "Secret"}})),
                "caProvider",
            ),
            (
                base(json!({"headers": {"X": "a\n{{ .auth.token }}"}})),
                "not a valid header value",
            ),
            (
                base(json!({"secrets": [{"name": "remoteRef", "secretRef": {"name": "creds"}}]})),
                "other than remoteRef",
            ),
        ] {
            let msg = build(spec).err().unwrap().to_string();
            assert!(msg.contains(needle), "{msg} lacks {needle}");
            assert!(!msg.contains("s3cr3t"), "{msg}");
        }
    }

    #[tokio::test]
    async fn builds_behind_the_wrappers() {
        let hook = hook().await;
        let store: crate::resources::SecretStoreSpec = serde_json::from_value(
            json!({"provider": {"webhook": spec(&hook, json!({"result": {"jsonPath": "$.id"}}))}}),
        )
        .unwrap();
        let p = crate::providers::build_provider(
            "wh",
            Some("ns"),
            &store,
            &secrets(),
            &ProviderSettings::default(),
        )
        .unwrap();
        assert_eq!(p.kind(), "webhook");
        let r = p.canonical_ref(&key("db/x")).unwrap();
        assert_eq!(p.get_secret(&r).await.unwrap(), b"db/x");
    }
}
