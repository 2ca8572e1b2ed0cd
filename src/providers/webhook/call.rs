//! What ESO's webhook generator and webhook store provider share (one implementation):
//! the strict Go-template subset of `url`, `headers` and `body`, the method, the bounded
//! HTTP call and ESO's reading of the JSON answer (`result.jsonPath`:
//! [`crate::support::jsonpath`]).
//!
//! Templates are a strict subset of ESO's Go templates: only `{{ .<name>.<key> }}`, where
//! `<name>` is a `secrets[].name` (every key of the referenced Secret is available) or,
//! in the store provider, `remoteRef` (`.remoteRef.key`, `.remoteRef.property`,
//! `.remoteRef.version`). Anything else between `{{ }}` (functions, pipelines) is refused
//! when the object loads. In the URL every value is query-escaped (Go's
//! `url.QueryEscape`, as ESO does for `remoteRef`); in headers and body values are
//! inserted as they are (as ESO). Template texts and rendered outputs are bounded.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

use crate::providers::ProviderError;
use crate::support::jsonpath::JsonPath;

/// ESO's webhook block (the generator's `spec`, the store's `spec.provider.webhook`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WebhookSpec {
    #[serde(default)]
    pub method: Option<String>,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub result: WebhookResult,
    #[serde(default)]
    pub secrets: Vec<WebhookSecret>,
    #[serde(default)]
    pub ca_bundle: Option<String>,
    #[serde(default)]
    pub ca_provider: Option<Value>,
    /// ESO's NTLM auth: refused (credentials go in `headers`).
    #[serde(default)]
    pub auth: Option<Value>,
}

/// `result`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WebhookResult {
    #[serde(default)]
    pub json_path: Option<String>,
}

/// One of `secrets[]`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WebhookSecret {
    pub name: String,
    pub secret_ref: WebhookSecretRef,
}

/// ESO's `SecretKeySelector` here: the key is ignored (every key is available).
#[derive(Deserialize)]
pub(crate) struct WebhookSecretRef {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

impl WebhookSpec {
    /// What the block asks that is not served (`None`: nothing).
    pub fn unsupported(&self) -> Option<&'static str> {
        if self.ca_provider.is_some() {
            Some("caProvider is not supported (use caBundle)")
        } else if self.auth.is_some() {
            Some("auth (NTLM) is not supported (send credentials in headers)")
        } else {
            None
        }
    }

    /// `secrets[]` by name, checked: identifiers, not `reserved`, each once, with a Secret.
    pub fn secret_names(
        &self,
        reserved: Option<&str>,
    ) -> Result<BTreeMap<&str, &WebhookSecretRef>, String> {
        let mut names = BTreeMap::new();
        for s in &self.secrets {
            if !is_identifier(&s.name) || Some(s.name.as_str()) == reserved {
                return Err(match reserved {
                    Some(r) => format!("secrets[].name must be an identifier other than {r}"),
                    None => "secrets[].name must be an identifier".to_string(),
                });
            }
            if s.secret_ref.name.trim().is_empty() {
                return Err("secrets[].secretRef.name is required".to_string());
            }
            if names.insert(s.name.as_str(), &s.secret_ref).is_some() {
                return Err(format!("secrets[].name {:?} is repeated", s.name));
            }
        }
        Ok(names)
    }
}

/// Bound on the webhook's answer.
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// Bound on each template (URL, header value, body, jsonPath).
pub(crate) const MAX_TEMPLATE: usize = 64 * 1024;
/// Bound on each rendered template.
pub(crate) const MAX_RENDERED: usize = 256 * 1024;

/// Bound on `timeout` (a call holds a request open).
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// ESO's `timeout` (a Go duration), or `default` without one.
pub(crate) fn parse_timeout(text: Option<&str>, default: Duration) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(text) => match crate::support::duration::parse_duration(text) {
            Ok(d) if !d.is_zero() && d <= MAX_TIMEOUT => Ok(d),
            _ => Err(format!(
                "timeout must be a duration above 0 and at most {}s",
                MAX_TIMEOUT.as_secs()
            )),
        },
    }
}

/// One piece of a template.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Part {
    /// Text as written (or a secret value bound at load: never shown).
    Literal(String),
    /// `{{ .name.key }}`.
    Ref {
        /// A `secrets[].name` (or `remoteRef`).
        name: String,
        /// A key of that Secret (or `key`, `property`, `version`).
        key: String,
    },
}

impl std::fmt::Debug for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A literal may be a bound secret value.
            Part::Literal(text) => write!(f, "Literal(<{} bytes>)", text.len()),
            Part::Ref { name, key } => write!(f, "Ref(.{name}.{key})"),
        }
    }
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
    /// Longer than [`MAX_TEMPLATE`].
    #[error("must be at most {MAX_TEMPLATE} bytes")]
    TooLong,
}

/// A Go-template identifier (`[A-Za-z_][A-Za-z0-9_]*`).
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits a template into literals and `{{ .name.key }}` references.
pub(crate) fn parse_template(text: &str) -> Result<Vec<Part>, TemplateError> {
    if text.len() > MAX_TEMPLATE {
        return Err(TemplateError::TooLong);
    }
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

/// Replaces the references `lookup` answers (`Some`) by literals (escaped), keeping the
/// others (`None`: rendered later, e.g. `.remoteRef.*` per call).
pub(crate) fn bind<E>(
    parts: &[Part],
    mut lookup: impl FnMut(&str, &str) -> Result<Option<String>, E>,
    escape: impl Fn(&str) -> String,
) -> Result<Vec<Part>, E> {
    let mut out: Vec<Part> = Vec::new();
    for part in parts {
        let literal = match part {
            Part::Literal(text) => text.clone(),
            Part::Ref { name, key } => match lookup(name, key)? {
                Some(value) => escape(&value),
                None => {
                    out.push(part.clone());
                    continue;
                }
            },
        };
        match out.last_mut() {
            Some(Part::Literal(prev)) => prev.push_str(&literal),
            _ => out.push(Part::Literal(literal)),
        }
    }
    Ok(out)
}

/// Go's `url.QueryEscape` (spaces as `+`, everything but unreserved escaped).
pub(crate) fn query_escape(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The identity escape (headers, body).
pub(crate) fn raw(value: &str) -> String {
    value.to_string()
}

/// ESO's `method` (default GET).
pub(crate) fn parse_method(method: Option<&str>) -> Result<Method, &'static str> {
    match method
        .map(str::trim)
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("") | Some("GET") => Ok(Method::GET),
        Some("POST") => Ok(Method::POST),
        Some("PUT") => Ok(Method::PUT),
        Some("PATCH") => Ok(Method::PATCH),
        Some("DELETE") => Ok(Method::DELETE),
        Some(_) => Err("method must be GET, POST, PUT, PATCH or DELETE"),
    }
}

/// A rendered URL, if it is an http(s) URL with a host.
pub(crate) fn parse_url(text: &str) -> Option<Url> {
    Url::parse(text.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
}

/// A failed webhook call, before each caller maps it (no URL, no value in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// The webhook answered a non-2xx status.
    Status(StatusCode),
    /// The answer is larger than [`MAX_BODY`].
    TooLarge,
    /// The call did not answer in time.
    Timeout,
    /// No connection.
    Connect,
    /// Any other transport failure.
    Failed,
}

impl CallError {
    /// As a provider error, naming `backend`; `not_found`: a 404 means "no such secret".
    pub(crate) fn into_provider(self, backend: &str, not_found: bool) -> ProviderError {
        match self {
            CallError::Status(StatusCode::NOT_FOUND) if not_found => ProviderError::NotFound,
            CallError::Status(status) => {
                tracing::warn!(
                    backend,
                    status = status.as_u16(),
                    "the backend refused the call"
                );
                let what = format!("{backend} answered HTTP {}", status.as_u16());
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    ProviderError::Unavailable(what)
                } else {
                    ProviderError::Backend(what)
                }
            }
            CallError::TooLarge => ProviderError::Backend(format!("{backend} answer is too large")),
            CallError::Timeout => ProviderError::Timeout,
            CallError::Connect => {
                ProviderError::Unavailable(format!("cannot connect to the {backend}"))
            }
            CallError::Failed => ProviderError::Unavailable(format!("{backend} request failed")),
        }
    }
}

/// Maps a transport error without its text (the URL may hold secret values).
fn transport_error(err: &reqwest::Error) -> CallError {
    if err.is_timeout() {
        CallError::Timeout
    } else if err.is_connect() {
        CallError::Connect
    } else {
        CallError::Failed
    }
}

/// Sends one request and reads the answer, refusing non-2xx and answers above
/// [`MAX_BODY`] (read in chunks: a large answer is never held whole).
pub(crate) async fn send(req: reqwest::RequestBuilder) -> Result<Vec<u8>, CallError> {
    send_bounded(req, MAX_BODY).await
}

/// [`send`] with another bound on the answer.
pub(crate) async fn send_bounded(
    req: reqwest::RequestBuilder,
    max: usize,
) -> Result<Vec<u8>, CallError> {
    let mut resp = req.send().await.map_err(|e| transport_error(&e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(CallError::Status(status));
    }
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(CallError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e))? {
        if body.len() + chunk.len() > max {
            return Err(CallError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// ESO's value rule for a member of the result object.
pub(crate) fn member_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// Why an answer cannot be read (messages hold no part of the answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ResultError {
    /// The answer is not JSON.
    #[error("webhook answered malformed JSON")]
    Malformed,
    /// `result.jsonPath` selects nothing.
    #[error("result.jsonPath matches nothing in the webhook answer")]
    NoMatch,
    /// A string result that is not JSON.
    #[error("the webhook result is a string that is not a JSON object")]
    StringNotObject,
    /// Not an object.
    #[error("the webhook result is not a JSON object")]
    NotObject,
}

/// The data map from the webhook's answer, as ESO's GetSecretMap builds it: the value at
/// `path` (the whole answer without one) must be an object, or a string holding one;
/// each member becomes a key (strings as they are, other values as JSON text).
pub(crate) fn result_map(
    body: &[u8],
    path: Option<&JsonPath>,
) -> Result<BTreeMap<String, String>, ResultError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| ResultError::Malformed)?;
    let found = match path {
        None => Some(&doc),
        Some(path) => path.select_one(&doc),
    };
    let found = found.ok_or(ResultError::NoMatch)?;
    // As ESO: a string result is parsed as JSON once more.
    let parsed;
    let value = match found {
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).map_err(|_| ResultError::StringNotObject)?;
            &parsed
        }
        other => other,
    };
    let Value::Object(map) = value else {
        return Err(ResultError::NotObject);
    };
    Ok(map
        .iter()
        .map(|(k, v)| (k.clone(), member_text(v)))
        .collect())
}

/// ESO's GetSecret value of a `result.jsonPath` selection: strings as they are, `null`
/// empty, booleans and numbers as text, objects as JSON, a list its first element (ESO:
/// a filter answers a list). `None`: an empty list (nothing selected).
pub(crate) fn single_value(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Array(items) => items.first().and_then(single_value),
        other => Some(member_text(other).into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            parse_template("a{{ .auth.user }}b{{.remoteRef.key}}").unwrap(),
            vec![
                Part::Literal("a".into()),
                refs("auth", "user"),
                Part::Literal("b".into()),
                refs("remoteRef", "key"),
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
        assert_eq!(
            parse_template(&"x".repeat(MAX_TEMPLATE + 1)),
            Err(TemplateError::TooLong)
        );
        let parts = parse_template("q={{ .a.b }}").unwrap();
        let out: Result<String, ()> = render(&parts, |_, _| Ok("a b&c".to_string()), query_escape);
        assert_eq!(out.unwrap(), "q=a+b%26c");
    }

    #[test]
    fn bind_keeps_late_references() {
        let parts = parse_template("u/{{ .auth.user }}/{{ .remoteRef.key }}?x").unwrap();
        let bound: Result<Vec<Part>, ()> = bind(
            &parts,
            |name, _| Ok((name != "remoteRef").then(|| "a b".to_string())),
            query_escape,
        );
        let bound = bound.unwrap();
        assert_eq!(
            bound,
            vec![
                Part::Literal("u/a+b/".into()),
                refs("remoteRef", "key"),
                Part::Literal("?x".into())
            ]
        );
        assert!(!format!("{bound:?}").contains("a+b"));
    }

    #[test]
    fn results_follow_eso() {
        let body = br#"{"data": {"user": "u", "n": 3, "f": 1.5, "ok": true, "none": null, "obj": {"k": "v"}, "arr": [1]},
            "nested": "{\"inner\": \"x\"}", "scalar": 5, "text": "plain"}"#;
        let path = |p: &str| JsonPath::parse(p).unwrap();
        let map = result_map(body, Some(&path("$.data"))).unwrap();
        assert_eq!(map["user"], "u");
        assert_eq!(map["n"], "3");
        assert_eq!(map["f"], "1.5");
        assert_eq!(map["ok"], "true");
        assert_eq!(map["none"], "");
        assert_eq!(map["obj"], r#"{"k":"v"}"#);
        assert_eq!(map["arr"], "[1]");
        let nested = result_map(body, Some(&path("$.nested"))).unwrap();
        assert_eq!(nested["inner"], "x");
        // ESO's filter expressions select the object.
        let items = br#"{"items": [{"n": "a", "v": {"k": "1"}}, {"n": "b", "v": {"k": "2"}}]}"#;
        let picked = result_map(items, Some(&path("$.items[?(@.n=='b')].v"))).unwrap();
        assert_eq!(picked["k"], "2");
        let whole = result_map(br#"{"a": "b"}"#, None).unwrap();
        assert_eq!(whole["a"], "b");
        for (p, err) in [
            ("$.scalar", ResultError::NotObject),
            ("$.text", ResultError::StringNotObject),
            ("$.nope", ResultError::NoMatch),
        ] {
            assert_eq!(result_map(body, Some(&path(p))), Err(err), "{p}");
        }
        assert_eq!(
            result_map(b"not json s3cr3t", None),
            Err(ResultError::Malformed)
        );
        assert_eq!(single_value(&json!("s")), Some(b"s".to_vec()));
        assert_eq!(single_value(&json!(null)), Some(Vec::new()));
        assert_eq!(single_value(&json!(12)), Some(b"12".to_vec()));
        assert_eq!(single_value(&json!(["a", "b"])), Some(b"a".to_vec()));
        assert_eq!(single_value(&json!([])), None);
        assert_eq!(single_value(&json!({"k": 1})), Some(br#"{"k":1}"#.to_vec()));
    }
}
