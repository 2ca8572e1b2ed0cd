//! ESO's `kubernetes` store provider: Secrets of a (usually other) cluster, read through
//! its API server.
//!
//! ```yaml
//! spec:
//!   provider:
//!     kubernetes:
//!       remoteNamespace: apps                      # default: default
//!       server:
//!         url: https://api.remote.example:6443     # required, https
//!         caBundle: <base64 PEM>                   # or caProvider {type: Secret, name, key}
//!       auth:                                      # exactly one
//!         token: {bearerToken: {name: remote-token, key: token}}
//!         # cert: {clientCert: {name: c, key: tls.crt}, clientKey: {name: c, key: tls.key}}
//!         # serviceAccount: {name: reader, audiences: [https://api.remote.example]}
//! ```
//! GetSecret: the data key `property` of Secret `key` in `remoteNamespace` (decoded, the
//! exact data key, as ESO); without `property`, the whole Secret as a JSON object of its
//! data (values as text), as ESO. GetSecretMap: the data map (with `property`: the members
//! of the JSON object that data key holds). `find` by name regexp and tags
//! (labels): the listing asks for metadata only (`PartialObjectMetadataList`); each name is
//! turned into its canonical key and decided before that Secret is read; values the
//! server sends anyway are not kept.
//!
//! **Canonical form**: the Secret's name, as Kubernetes requires it (a DNS-1123
//! subdomain: at most 253 of `a-z0-9-.`, each dot-separated label starting and ending
//! alphanumeric); anything else is refused (400). No `version`, no `find.path`.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::webhook::call;
use super::{
    BuildContext, FindRequest, KeyFilter, ProviderConfigError, ProviderError, RemoteRef,
    SecretProvider, property,
};
use crate::remote::{ServiceAccountTokens, Token};
use crate::resources::SecretKeySelector;

/// The key of `spec.provider`.
pub(crate) const PROVIDER: &str = "kubernetes";
/// Bound on one Secret's answer (Secrets are at most 1 MiB of data, base64 in JSON).
const MAX_SECRET_ANSWER: usize = 2 << 20;
/// Bound on one page of a metadata listing.
const MAX_LIST_ANSWER: usize = 8 << 20;
/// Objects per page.
const PAGE: usize = 100;
/// Bound on the Secrets a `find` lists (400 past it: narrow it with tags).
const MAX_LISTED: usize = 1000;
/// Bound on the values a `find` returns, together.
const MAX_FIND_BYTES: usize = 16 << 20;
/// Longest Kubernetes name.
const MAX_NAME: usize = 253;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KubernetesSpec {
    #[serde(default)]
    server: ServerSpec,
    #[serde(default)]
    auth: Option<AuthSpec>,
    #[serde(default)]
    auth_ref: Option<Value>,
    #[serde(default)]
    remote_namespace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ServerSpec {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    ca_bundle: Option<String>,
    #[serde(default)]
    ca_provider: Option<CaProvider>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CaProvider {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    key: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AuthSpec {
    #[serde(default)]
    token: Option<TokenAuth>,
    #[serde(default)]
    cert: Option<CertAuth>,
    #[serde(default)]
    service_account: Option<ServiceAccountAuth>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenAuth {
    bearer_token: SecretKeySelector,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CertAuth {
    client_cert: SecretKeySelector,
    client_key: SecretKeySelector,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceAccountAuth {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
}

/// How each call authenticates.
enum Auth {
    /// A bearer token from a Secret.
    Token(Token),
    /// The client certificate is in the TLS client.
    Cert,
    /// A TokenRequest token of a ServiceAccount of this cluster, per call (cached by the
    /// source).
    ServiceAccount {
        namespace: String,
        name: String,
        audiences: Vec<String>,
        tokens: Option<std::sync::Arc<dyn ServiceAccountTokens>>,
    },
}

/// Reads Secrets of a cluster.
pub struct KubernetesProvider {
    client: reqwest::Client,
    base: reqwest::Url,
    namespace: String,
    auth: Auth,
}

impl std::fmt::Debug for KubernetesProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match self.auth {
            Auth::Token(_) => "token",
            Auth::Cert => "cert",
            Auth::ServiceAccount { .. } => "serviceAccount",
        };
        f.debug_struct("KubernetesProvider")
            .field("host", &self.base.host_str())
            .field("namespace", &self.namespace)
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}

/// Whether `name` is a DNS-1123 subdomain (Kubernetes object names).
pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= MAX_NAME && crate::support::text::is_dns_subdomain(name)
}

/// Whether `name` is a DNS-1123 label (namespaces).
fn is_dns_label(name: &str) -> bool {
    crate::support::text::is_dns_label(name)
}

/// A label value (`(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?`, at most 63).
fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    v.is_empty()
        || (v.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

/// A label key (`[prefix/]name`: a DNS subdomain prefix, a name like a value, not empty).
fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    !name.is_empty() && is_label_value(name) && prefix.is_none_or(is_dns_subdomain)
}

/// The whole Secret as ESO gives it without `property`: a JSON object of its data, values
/// as text.
fn data_json(data: &BTreeMap<String, Vec<u8>>) -> Map<String, Value> {
    data.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Value::String(String::from_utf8_lossy(v).into_owned()),
            )
        })
        .collect()
}

#[derive(Deserialize)]
struct SecretAnswer {
    #[serde(default)]
    data: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ListAnswer {
    #[serde(default)]
    items: Vec<MetadataOnly>,
    #[serde(default)]
    metadata: ListMeta,
}

/// Only the metadata of a listed object: a `data` the server sends anyway is skipped by
/// serde, never kept.
#[derive(Deserialize)]
struct MetadataOnly {
    #[serde(default)]
    metadata: ObjectMeta,
}

#[derive(Deserialize, Default)]
struct ObjectMeta {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(default, rename = "continue")]
    continue_token: Option<String>,
}

impl KubernetesProvider {
    /// Parses `spec.provider.kubernetes` and resolves its secret refs.
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        block: &Value,
    ) -> Result<Self, ProviderConfigError> {
        let spec: KubernetesSpec = ctx.parse(PROVIDER, block)?;
        if spec.auth_ref.is_some() {
            return Err(ctx.unsupported(PROVIDER, "authRef (a kubeconfig; use auth)"));
        }
        let url = spec.server.url.as_deref().map(str::trim).unwrap_or("");
        if url.is_empty() {
            return Err(ctx.invalid(
                PROVIDER,
                "server.url is required (this server does not read its own cluster's Secrets through this provider)",
            ));
        }
        let base = reqwest::Url::parse(url)
            .ok()
            .filter(|u| u.scheme() == "https" && u.host_str().is_some())
            .filter(|u| u.query().is_none() && u.fragment().is_none())
            .ok_or_else(|| ctx.invalid(PROVIDER, "server.url must be an https URL"))?;
        let namespace = spec
            .remote_namespace
            .unwrap_or_else(|| "default".to_string());
        if !is_dns_label(&namespace) {
            return Err(ctx.invalid(PROVIDER, "remoteNamespace must be a namespace name"));
        }
        let resolve = |field: &'static str, selector: &SecretKeySelector| {
            ctx.secrets
                .resolve(selector, ctx.namespace)
                .map(<[u8]>::to_vec)
                .map_err(|source| ProviderConfigError::SecretRef {
                    store: ctx.store.to_string(),
                    field,
                    source,
                })
        };
        let ca_bundle = match (&spec.server.ca_bundle, &spec.server.ca_provider) {
            (Some(_), Some(_)) => {
                return Err(ctx.invalid(PROVIDER, "server: set caBundle or caProvider, not both"));
            }
            (Some(b), None) => Some(b.clone()),
            (None, Some(p)) if p.kind == "Secret" => {
                let selector = SecretKeySelector {
                    name: p.name.clone(),
                    key: p.key.clone(),
                    namespace: p.namespace.clone(),
                };
                let pem = resolve("server.caProvider", &selector)?;
                Some(String::from_utf8(pem).map_err(|_| {
                    ctx.invalid(PROVIDER, "server.caProvider: the CA is not PEM text")
                })?)
            }
            (None, Some(_)) => {
                return Err(ctx.unsupported(
                    PROVIDER,
                    "server.caProvider of type ConfigMap (use type Secret or caBundle)",
                ));
            }
            (None, None) => None,
        };
        let auth = spec.auth.unwrap_or_default();
        let chosen = [
            auth.token.is_some(),
            auth.cert.is_some(),
            auth.service_account.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if chosen != 1 {
            return Err(ctx.invalid(
                PROVIDER,
                "auth must set exactly one of token, cert and serviceAccount",
            ));
        }
        let mut identity = None;
        let auth = if let Some(t) = auth.token {
            let bytes =
                zeroize::Zeroizing::new(resolve("auth.token.bearerToken", &t.bearer_token)?);
            Auth::Token(
                Token::from_bytes(&bytes)
                    .map_err(|e| ctx.invalid(PROVIDER, format!("auth.token.bearerToken: {e}")))?,
            )
        } else if let Some(c) = auth.cert {
            let cert = resolve("auth.cert.clientCert", &c.client_cert)?;
            let key = zeroize::Zeroizing::new(resolve("auth.cert.clientKey", &c.client_key)?);
            identity = Some((cert, key));
            Auth::Cert
        } else if let Some(sa) = auth.service_account {
            let namespace = match (ctx.namespace, sa.namespace) {
                (Some(own), Some(other)) if own != other => {
                    return Err(ctx.invalid(
                        PROVIDER,
                        "auth.serviceAccount.namespace must be the store's namespace",
                    ));
                }
                (Some(own), _) => own.to_string(),
                (None, Some(ns)) => ns,
                (None, None) => {
                    return Err(ctx.invalid(
                        PROVIDER,
                        "auth.serviceAccount.namespace is required in a ClusterSecretStore",
                    ));
                }
            };
            if sa.audiences.is_empty() {
                return Err(ctx.invalid(
                    PROVIDER,
                    "auth.serviceAccount.audiences is required (the remote API server's audience)",
                ));
            }
            Auth::ServiceAccount {
                namespace,
                name: sa.name,
                audiences: sa.audiences,
                tokens: ctx.settings.service_account_tokens.clone(),
            }
        } else {
            return Err(ctx.invalid(PROVIDER, "auth is required"));
        };
        let client = super::tls::http_client_with_identity(
            ca_bundle.as_deref(),
            identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
            ctx.settings.timeout,
        )
        .map_err(|e| ctx.invalid(PROVIDER, format!("server: {e}")))?;
        Ok(KubernetesProvider {
            client,
            base,
            namespace,
            auth,
        })
    }

    /// The URL of `segments` under the namespace's Secrets.
    fn url(&self, name: Option<&str>) -> Result<reqwest::Url, ProviderError> {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| ProviderError::Backend("server.url cannot take a path".into()))?;
            path.pop_if_empty()
                .extend(["api", "v1", "namespaces", &self.namespace, "secrets"]);
            if let Some(name) = name {
                path.push(name);
            }
        }
        Ok(url)
    }

    /// The Authorization header of a call.
    async fn authorization(&self) -> Result<Option<HeaderValue>, ProviderError> {
        match &self.auth {
            Auth::Token(t) => Ok(Some(t.header().clone())),
            Auth::Cert => Ok(None),
            Auth::ServiceAccount {
                namespace,
                name,
                audiences,
                tokens,
            } => {
                let tokens = tokens.as_ref().ok_or_else(|| {
                    ProviderError::Unavailable(
                        "auth.serviceAccount needs the TokenRequest API (Kubernetes mode)".into(),
                    )
                })?;
                // A refusal (the ServiceAccount gone, or the server may no longer ask for
                // its tokens) is a definite answer: not retried, not counted against the
                // circuit, and a cached value is not served in its place.
                let token =
                    tokens
                        .token(namespace, name, audiences)
                        .await
                        .map_err(|e| match e {
                            crate::remote::TokenError::Refused(_) => {
                                ProviderError::Backend(e.to_string())
                            }
                            _ => ProviderError::Unavailable(e.to_string()),
                        })?;
                Ok(Some(token.header().clone()))
            }
        }
    }

    /// One GET, bounded; statuses mapped.
    async fn get(
        &self,
        url: reqwest::Url,
        metadata_only: bool,
        max: usize,
    ) -> Result<Vec<u8>, ProviderError> {
        let mut req = self.client.get(url);
        if let Some(h) = self.authorization().await? {
            req = req.header(AUTHORIZATION, h);
        }
        if metadata_only {
            req = req.header(
                ACCEPT,
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
            );
        }
        call::send_bounded(req, max)
            .await
            .map_err(|e| e.into_provider("kubernetes API server", true))
    }

    /// The decoded data of Secret `name` (canonical).
    async fn read(&self, name: &str) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        if !is_dns_subdomain(name) {
            return Err(ProviderError::InvalidRequest(
                "key must be a Secret name".into(),
            ));
        }
        let body = zeroize::Zeroizing::new(
            self.get(self.url(Some(name))?, false, MAX_SECRET_ANSWER)
                .await?,
        );
        let answer: SecretAnswer = serde_json::from_slice(&body)
            .map_err(|_| ProviderError::Backend("kubernetes answered a malformed Secret".into()))?;
        answer
            .data
            .into_iter()
            .map(|(k, v)| {
                B64.decode(v.as_bytes())
                    .map(|v| (k, v))
                    .map_err(|_| ProviderError::Backend("a Secret value is not base64".into()))
            })
            .collect()
    }

    /// The names of the Secrets carrying `tags`, listed by metadata, bounded.
    async fn list_names(
        &self,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, ProviderError> {
        let selector = tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut names = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut url = self.url(None)?;
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("limit", &PAGE.to_string());
                if !selector.is_empty() {
                    q.append_pair("labelSelector", &selector);
                }
                if let Some(c) = &next {
                    q.append_pair("continue", c);
                }
            }
            let body = zeroize::Zeroizing::new(self.get(url, true, MAX_LIST_ANSWER).await?);
            let page: ListAnswer = serde_json::from_slice(&body).map_err(|_| {
                ProviderError::Backend("kubernetes answered a malformed list".into())
            })?;
            names.extend(page.items.into_iter().map(|i| i.metadata.name));
            if names.len() > MAX_LISTED {
                return Err(ProviderError::InvalidRequest(format!(
                    "find matches more than {MAX_LISTED} Secrets; narrow it with tags"
                )));
            }
            match page.metadata.continue_token.filter(|c| !c.is_empty()) {
                Some(c) if c.len() <= 4096 => next = Some(c),
                Some(_) => {
                    return Err(ProviderError::Backend(
                        "kubernetes answered an oversized continue token".into(),
                    ));
                }
                None => return Ok(names),
            }
        }
    }
}

#[async_trait::async_trait]
impl SecretProvider for KubernetesProvider {
    fn kind(&self) -> &'static str {
        PROVIDER
    }

    fn canonical_ref(&self, remote: &RemoteRef) -> Result<RemoteRef, ProviderError> {
        if !is_dns_subdomain(&remote.key) {
            return Err(ProviderError::InvalidRequest(
                "key must be a Secret name (a DNS-1123 subdomain: a-z, 0-9, - and .)".into(),
            ));
        }
        if remote.version.as_deref().is_some_and(|v| !v.is_empty()) {
            return Err(ProviderError::InvalidRequest(
                "the kubernetes provider has no versions".into(),
            ));
        }
        Ok(RemoteRef {
            key: remote.key.clone(),
            property: property::canonical_property(remote.property.as_deref())?,
            version: None,
        })
    }

    fn canonical_find(&self, find: &FindRequest) -> Result<FindRequest, ProviderError> {
        if find.path.as_deref().is_some_and(|p| !p.is_empty()) {
            return Err(ProviderError::InvalidRequest(
                "the kubernetes provider's find has no path (use name or tags)".into(),
            ));
        }
        for (k, v) in &find.tags {
            if !is_label_key(k) || !is_label_value(v) {
                return Err(ProviderError::InvalidRequest(
                    "find.tags must be Kubernetes label keys and values".into(),
                ));
            }
        }
        if let Some(re) = &find.name_regexp {
            super::fake::compile_name_regexp(re)?;
        }
        Ok(FindRequest {
            path: None,
            name_regexp: find.name_regexp.clone(),
            tags: find.tags.clone(),
        })
    }

    async fn get_secret(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
        let mut data = self.read(&remote.key).await?;
        match remote.property.as_deref().filter(|p| !p.is_empty()) {
            // As ESO: the data key's bytes as they are (binary-safe).
            Some(p) => data.remove(p).ok_or(ProviderError::NotFound),
            None => serde_json::to_vec(&data_json(&data))
                .map_err(|_| ProviderError::Backend("cannot encode secret".into())),
        }
    }

    async fn get_secret_map(
        &self,
        remote: &RemoteRef,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        let mut data = self.read(&remote.key).await?;
        match remote.property.as_deref().filter(|p| !p.is_empty()) {
            None => Ok(data),
            // A data key holding a JSON object: its members.
            Some(p) => {
                let value = zeroize::Zeroizing::new(data.remove(p).ok_or(ProviderError::NotFound)?);
                let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&value) else {
                    return Err(ProviderError::InvalidRequest(
                        "property does not hold a JSON object".into(),
                    ));
                };
                property::secret_map(&map, None)
            }
        }
    }

    async fn find_allowed(
        &self,
        find: &FindRequest,
        allow: &KeyFilter<'_>,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        let find = self.canonical_find(find)?;
        if find.name_regexp.is_none() && find.tags.is_empty() {
            return Err(ProviderError::InvalidRequest(
                "find needs name.regexp or tags".into(),
            ));
        }
        let re = find
            .name_regexp
            .as_deref()
            .map(super::fake::compile_name_regexp)
            .transpose()?;
        let mut out = BTreeMap::new();
        let mut total = 0usize;
        for name in self.list_names(&find.tags).await? {
            // Decided on the canonical key before the value is read.
            if !is_dns_subdomain(&name)
                || re.as_ref().is_some_and(|re| !re.is_match(&name))
                || !allow(&name)
            {
                continue;
            }
            let data = match self.read(&name).await {
                Ok(d) => d,
                // Deleted since the listing.
                Err(ProviderError::NotFound) => continue,
                Err(e) => return Err(e),
            };
            let value = serde_json::to_vec(&data_json(&data))
                .map_err(|_| ProviderError::Backend("cannot encode secret".into()))?;
            total += name.len() + value.len();
            if total > MAX_FIND_BYTES {
                return Err(ProviderError::InvalidRequest(
                    "find answer is larger than 16 MiB; narrow it".into(),
                ));
            }
            out.insert(name, value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderSettings;
    use crate::resources::{SecretIndex, SecretObject};
    use serde_json::json;

    fn secrets() -> SecretIndex {
        let mut idx = SecretIndex::default();
        let obj = SecretObject {
            string_data: [("token".to_string(), "tok-s3cr3t".to_string())].into(),
            ..Default::default()
        };
        idx.insert("ns", "remote", &obj).unwrap();
        idx
    }

    fn build(block: Value) -> Result<KubernetesProvider, ProviderConfigError> {
        let secrets = secrets();
        let settings = ProviderSettings::default();
        KubernetesProvider::from_spec(
            &BuildContext {
                store: "k",
                namespace: Some("ns"),
                secrets: &secrets,
                settings: &settings,
            },
            &block,
        )
    }

    fn base(extra: Value) -> Value {
        let mut spec = json!({"server": {"url": "https://api.example:6443"},
            "auth": {"token": {"bearerToken": {"name": "remote", "key": "token"}}}});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec
    }

    #[test]
    fn names_and_labels() {
        for ok in ["a", "db-creds", "a.b-c.d", "x1", &"a".repeat(253)] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a_b",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "a/b",
            "..",
            "a b",
            &"a".repeat(254),
        ] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
        assert!(is_label_key("team") && is_label_key("app.kubernetes.io/name"));
        assert!(!is_label_key("a,b") && !is_label_key("a=b") && !is_label_key("/x"));
        assert!(is_label_value("") && is_label_value("v1.2_x"));
        assert!(!is_label_value("a,b=c") && !is_label_value("-a") && !is_label_value("a b"));
    }

    #[test]
    fn canonical_forms() {
        let p = build(base(json!({}))).unwrap();
        let r = |key: &str| RemoteRef {
            key: key.into(),
            ..Default::default()
        };
        assert_eq!(p.canonical_ref(&r("db")).unwrap(), r("db"));
        for bad in ["DB", "a/b", "..", "", "a_b"] {
            assert!(
                matches!(
                    p.canonical_ref(&r(bad)),
                    Err(ProviderError::InvalidRequest(_))
                ),
                "{bad}"
            );
        }
        let versioned = RemoteRef {
            version: Some("1".into()),
            ..r("db")
        };
        assert!(p.canonical_ref(&versioned).is_err());
        let find = |tags: &[(&str, &str)], path: Option<&str>| FindRequest {
            path: path.map(str::to_string),
            name_regexp: None,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(p.canonical_find(&find(&[("team", "a")], None)).is_ok());
        assert!(p.canonical_find(&find(&[("team", "a,b=c")], None)).is_err());
        assert!(p.canonical_find(&find(&[], Some("x"))).is_err());
        assert!(!format!("{p:?}").contains("tok-s3cr3t"));
    }

    #[test]
    fn config_errors_are_safe() {
        for (spec, needle) in [
            (
                json!({"auth": {"token": {"bearerToken": {"name": "remote", "key": "token"}}}}),
                "server.url is required",
            ),
            (
                base(json!({"server": {"url": "http://api.example"}})),
                "https URL",
            ),
            (
                base(json!({"remoteNamespace": "Bad_NS"})),
                "remoteNamespace",
            ),
            (base(json!({"auth": {}})), "exactly one"),
            (
                base(json!({"auth": {"serviceAccount": {"name": "sa"}}})),
                "audiences is required",
            ),
            (base(json!({"authRef": {"name": "kubeconfig"}})), "authRef"),
            (
                base(
                    json!({"server": {"url": "https://a", "caProvider": {"type": "ConfigMap", "name": "c", "key": "k"}}}),
                ),
                "ConfigMap",
            ),
            (
                base(json!({"server": {"url": "https://a", "caBundle": "%%%"}})),
                "caBundle is not valid base64",
            ),
            (
                base(json!({"auth": {"token": {"bearerToken": {"name": "nope", "key": "token"}}}})),
                "auth.token.bearerToken",
            ),
        ] {
            let msg = build(spec).err().unwrap().to_string();
            assert!(msg.contains(needle), "{msg} lacks {needle}");
            assert!(!msg.contains("tok-s3cr3t"), "{msg}");
        }
    }

    #[test]
    fn client_certificates_load_and_bad_keys_are_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["esi".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let mut idx = secrets();
        let obj = SecretObject {
            string_data: [
                ("tls.crt".to_string(), cert.pem()),
                ("tls.key".to_string(), key.serialize_pem()),
                ("other.key".to_string(), other.serialize_pem()),
                ("junk".to_string(), "not pem".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        idx.insert("ns", "client", &obj).unwrap();
        let settings = ProviderSettings::default();
        let build_cert = |cert_key: &str, key_key: &str| {
            KubernetesProvider::from_spec(
                &BuildContext {
                    store: "k",
                    namespace: Some("ns"),
                    secrets: &idx,
                    settings: &settings,
                },
                &base(json!({"auth": {"cert": {
                    "clientCert": {"name": "client", "key": cert_key},
                    "clientKey": {"name": "client", "key": key_key}}}})),
            )
        };
        let p = build_cert("tls.crt", "tls.key").unwrap();
        assert!(matches!(p.auth, Auth::Cert));
        let msg = build_cert("junk", "tls.key").err().unwrap().to_string();
        assert!(msg.contains("client certificate"), "{msg}");
        let msg = build_cert("tls.crt", "junk").err().unwrap().to_string();
        assert!(msg.contains("client key"), "{msg}");
        let msg = build_cert("tls.crt", "other.key")
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("client key"), "{msg}");
        assert!(!msg.contains("PRIVATE KEY"), "{msg}");
    }

    /// The TokenRequest API answering 403 (the server may no longer ask for the
    /// ServiceAccount's tokens), as `KubeTokenRequest` maps it.
    #[derive(Debug)]
    struct Revoked;

    #[async_trait::async_trait]
    impl ServiceAccountTokens for Revoked {
        async fn token(
            &self,
            namespace: &str,
            service_account: &str,
            _: &[String],
        ) -> Result<Token, crate::remote::TokenError> {
            let forbidden = kube::core::Status::failure("forbidden", "Forbidden")
                .with_code(403)
                .boxed();
            Err(crate::remote::token_request::request_error(
                namespace,
                service_account,
                &kube::Error::Api(forbidden),
            ))
        }
    }

    /// Answers one value (read while access was granted), then asks the real provider.
    struct GrantedOnce {
        answered: std::sync::atomic::AtomicBool,
        then: KubernetesProvider,
    }

    #[async_trait::async_trait]
    impl SecretProvider for GrantedOnce {
        fn kind(&self) -> &'static str {
            "kubernetes_granted_once"
        }
        async fn get_secret(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
            if !self
                .answered
                .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                return Ok(b"v0".to_vec());
            }
            self.then.get_secret(remote).await
        }
        async fn get_secret_map(
            &self,
            remote: &RemoteRef,
        ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
            self.then.get_secret_map(remote).await
        }
    }

    /// F2: access revoked (TokenRequest answers 403) is a definite answer: not retried,
    /// and with staleIfError the cached value is not served in its place (before: it was
    /// `Unavailable`, and the value was served stale for up to 24 h).
    #[tokio::test]
    async fn a_revoked_service_account_is_refused_not_served_stale() {
        let secrets = secrets();
        let settings = ProviderSettings {
            service_account_tokens: Some(std::sync::Arc::new(Revoked)),
            ..ProviderSettings::default()
        };
        let p = KubernetesProvider::from_spec(
            &BuildContext {
                store: "k",
                namespace: Some("ns"),
                secrets: &secrets,
                settings: &settings,
            },
            &base(json!({"auth": {"serviceAccount": {"name": "sa", "audiences": ["https://api.example"]}}})),
        )
        .unwrap();
        let db = RemoteRef {
            key: "db".into(),
            ..Default::default()
        };
        let err = p.get_secret(&db).await.unwrap_err();
        assert!(
            matches!(&err, ProviderError::Backend(m) if m.contains("HTTP 403")),
            "{err:?}"
        );
        let resilient = crate::providers::resilient::Resilient::new(
            "k-revoked",
            std::sync::Arc::new(GrantedOnce {
                answered: Default::default(),
                then: p,
            }),
            crate::providers::resilient::ResilienceSettings::with_backend_timeout(
                std::time::Duration::from_secs(5),
            ),
        );
        let cached = crate::providers::cache::Cached::new(
            "k-revoked",
            std::sync::Arc::new(resilient),
            &crate::providers::cache::CacheSettings {
                ttl: std::time::Duration::from_millis(100),
                max_entries: 10,
                max_bytes: 1 << 20,
                stale_if_error: std::time::Duration::from_secs(3600),
            },
        );
        assert_eq!(cached.get_secret(&db).await.unwrap(), b"v0");
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        for _ in 0..2 {
            let err = cached.get_secret(&db).await.unwrap_err();
            assert!(
                matches!(&err, ProviderError::Backend(m) if m.contains("HTTP 403")),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn service_account_auth_needs_token_requests() {
        let p = build(base(json!({"auth": {"serviceAccount": {"name": "sa", "audiences": ["https://api.example"]}}})))
            .unwrap();
        let err = p
            .get_secret(&RemoteRef {
                key: "db".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProviderError::Unavailable(m) if m.contains("TokenRequest")),
            "{err}"
        );
    }
}
