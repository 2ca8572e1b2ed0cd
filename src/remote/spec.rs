//! The connection blocks that the `externalsecrets` store provider and the `Federation`
//! generator share: `server` (where, and what TLS trusts) and `auth` (which token, and the
//! client cluster's CA sent as `ca.crt`), parsed and resolved into a [`Connection`].
//!
//! ```yaml
//! server:
//!   url: https://esi-federation.example.com       # https only
//!   caRef: {name: federation-ca, key: ca.crt}     # a Secret key holding PEM; or
//!   caBundle: <base64 PEM>                         # (extension); neither: public roots
//! auth:                                            # exactly one token source:
//!   tokenSecretRef: {name: federation-token, key: token}
//!   kubernetes:
//!     serviceAccountRef: {name: app, audiences: [https://esi-federation.example.com]}
//!   caCertSecretRef: {name: federation-token, key: ca.crt}  # sent as `ca.crt` (ESE)
//! ```
//! A given CA is pinned: the public roots are not trusted besides it. Secret references
//! follow [`SecretIndex::resolve`] (a namespaced object reads only its own namespace); a
//! namespaced object's `serviceAccountRef` likewise names only its own namespace.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

use super::{
    RemoteClient, RemoteError, RemoteSettings, ServiceAccountTokens, Token, TokenError, Trust,
};
use crate::resources::{SecretIndex, SecretKeySelector, SecretRefError};

/// Longest `server.url`.
const MAX_URL_LEN: usize = 2048;
/// Most audiences of a `serviceAccountRef`, and the longest one.
const MAX_AUDIENCES: usize = 16;
const MAX_AUDIENCE_LEN: usize = 512;

/// `server`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSpec {
    /// The Federation Server's base URL.
    pub url: String,
    /// A Secret key holding the PEM CA bundle that issued the server's certificate.
    #[serde(default)]
    pub ca_ref: Option<SecretKeySelector>,
    /// The same, inline: base64 of the PEM bundle (raw PEM accepted too). Extension.
    #[serde(default)]
    pub ca_bundle: Option<String>,
}

/// `auth`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthSpec {
    /// A token from the TokenRequest API.
    #[serde(default)]
    pub kubernetes: Option<KubernetesAuth>,
    /// A token kept in a Secret (ESE's Federation generator).
    #[serde(default)]
    pub token_secret_ref: Option<SecretKeySelector>,
    /// The client cluster's CA (PEM) in a Secret, sent as `ca.crt` (ESE's Federation
    /// generator).
    #[serde(default)]
    pub ca_cert_secret_ref: Option<SecretKeySelector>,
}

/// `auth.kubernetes`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesAuth {
    /// The ServiceAccount whose token is sent.
    pub service_account_ref: ServiceAccountRef,
}

/// `auth.kubernetes.serviceAccountRef` (ESO's `ServiceAccountSelector`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountRef {
    /// ServiceAccount name.
    pub name: String,
    /// Its namespace (a cluster-scoped object must set it; a namespaced one may only name
    /// its own).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The token's audiences (the Federation Server's `audiences`): 1 to 16 (none would
    /// mean the API server's own audience, a token valid against this cluster).
    #[serde(default)]
    pub audiences: Vec<String>,
}

/// A connection block that cannot be used. Messages name fields, never values.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A field is missing, malformed or contradicts another.
    #[error("{0}")]
    Invalid(String),
    /// A Secret reference does not resolve.
    #[error("{field}: {source}")]
    SecretRef {
        /// The field.
        field: &'static str,
        /// Why.
        source: SecretRefError,
    },
}

/// Where each call's token comes from.
#[derive(Clone)]
pub enum Credentials {
    /// A token read from a Secret when the object was built.
    Static(Token),
    /// A ServiceAccount's token from the TokenRequest API, asked at each call.
    ServiceAccount {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Audiences.
        audiences: Vec<String>,
        /// The source (`None`: not in Kubernetes mode).
        tokens: Option<Arc<dyn ServiceAccountTokens>>,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Static(_) => f.write_str("Credentials::Static(<redacted>)"),
            Credentials::ServiceAccount {
                namespace, name, ..
            } => write!(f, "Credentials::ServiceAccount({namespace}/{name})"),
        }
    }
}

impl Credentials {
    /// The token for one call. Without a TokenRequest source (`--manifests` mode), a
    /// ServiceAccount token cannot be had, definitely: [`TokenError::Refused`] says how to
    /// fix it.
    pub async fn token(&self) -> Result<Token, RemoteError> {
        match self {
            Credentials::Static(t) => Ok(t.clone()),
            Credentials::ServiceAccount {
                namespace,
                name,
                audiences,
                tokens,
            } => match tokens {
                Some(source) => Ok(source.token(namespace, name, audiences).await?),
                None => Err(RemoteError::Token(TokenError::Refused(
                    "auth.kubernetes needs Kubernetes mode (the TokenRequest API); use auth.tokenSecretRef in --manifests mode".into(),
                ))),
            },
        }
    }
}

/// A resolved connection: the client and the token source.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The HTTPS client.
    pub client: RemoteClient,
    /// The token source.
    pub credentials: Credentials,
}

/// What resolving a connection block needs.
pub struct ConnectContext<'a> {
    /// The referring object's namespace (`None`: cluster-scoped).
    pub namespace: Option<&'a str>,
    /// Known Secrets.
    pub secrets: &'a SecretIndex,
    /// Bound on each call.
    pub timeout: Duration,
    /// The TokenRequest source, in Kubernetes mode.
    pub tokens: Option<Arc<dyn ServiceAccountTokens>>,
}

fn resolve(
    ctx: &ConnectContext<'_>,
    field: &'static str,
    selector: &SecretKeySelector,
) -> Result<Vec<u8>, ConnectError> {
    if selector.name.is_empty() || selector.key.is_empty() {
        return Err(ConnectError::Invalid(format!(
            "{field}: name and key are required"
        )));
    }
    ctx.secrets
        .resolve(selector, ctx.namespace)
        .map(<[u8]>::to_vec)
        .map_err(|source| ConnectError::SecretRef { field, source })
}

/// Checked at the top of [`connect`]; an error rather than a panic all the same.
fn unreachable_token_source() -> Result<Credentials, ConnectError> {
    Err(ConnectError::Invalid("auth needs a token source".into()))
}

fn ca_bundle_pem(text: &str) -> Result<Vec<u8>, ConnectError> {
    let trimmed = text.trim();
    if trimmed.starts_with("-----BEGIN") {
        return Ok(trimmed.as_bytes().to_vec());
    }
    let compact: String = trimmed.chars().filter(|c| !c.is_whitespace()).collect();
    B64.decode(compact)
        .map_err(|_| ConnectError::Invalid("server.caBundle is not valid base64".into()))
}

/// `a-z0-9-`, at least one, no `-` at either end.
fn is_dns_part(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 label (a namespace name): at most 63 bytes (Kubernetes'
/// `IsDNS1123Label`).
pub(crate) fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && is_dns_part(name)
}

/// A DNS-1123 subdomain (a ServiceAccount name): at most 253 bytes, parts joined by `.`
/// (Kubernetes' `IsDNS1123Subdomain`).
pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_part)
}

/// Resolves `server` and `auth` into a [`Connection`]. Errors: [`ConnectError::Invalid`]
/// (no or two token sources, `caRef` with `caBundle`, a URL that is not `https://`, a CA
/// without certificates, a bad token, a `serviceAccountRef` outside the object's
/// namespace or whose name or namespace is not a Kubernetes name, no or more than 16
/// audiences), [`ConnectError::SecretRef`].
pub fn connect(
    ctx: &ConnectContext<'_>,
    server: &ServerSpec,
    auth: &AuthSpec,
) -> Result<Connection, ConnectError> {
    let invalid = |m: &str| ConnectError::Invalid(m.to_string());
    if server.url.len() > MAX_URL_LEN {
        return Err(invalid("server.url is too long"));
    }
    // The shape first, then the Secrets: a spec that cannot work says so even before its
    // Secrets exist.
    match (&auth.token_secret_ref, &auth.kubernetes) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "set auth.tokenSecretRef or auth.kubernetes, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "auth needs a token source: auth.kubernetes.serviceAccountRef or auth.tokenSecretRef",
            ));
        }
        _ => {}
    }
    if server.ca_ref.is_some() && server.ca_bundle.is_some() {
        return Err(invalid("set server.caRef or server.caBundle, not both"));
    }
    let trust = match (&server.ca_ref, &server.ca_bundle) {
        (Some(r), _) => Trust {
            ca_pem: resolve(ctx, "server.caRef", r)?,
            ca_label: Some(format!(
                "Secret {}/{} key {}",
                r.namespace.as_deref().or(ctx.namespace).unwrap_or(""),
                r.name,
                r.key
            )),
            public_roots: false,
        },
        (None, Some(b)) => Trust {
            ca_pem: ca_bundle_pem(b)?,
            ca_label: Some("server.caBundle".into()),
            public_roots: false,
        },
        (None, None) => Trust {
            public_roots: true,
            ..Trust::default()
        },
    };
    let client_ca = match &auth.ca_cert_secret_ref {
        Some(r) => Some(resolve(ctx, "auth.caCertSecretRef", r)?),
        None => None,
    };
    let credentials = match (&auth.token_secret_ref, &auth.kubernetes) {
        (Some(r), _) => {
            let raw = zeroize::Zeroizing::new(resolve(ctx, "auth.tokenSecretRef", r)?);
            Credentials::Static(
                Token::from_bytes(&raw)
                    .map_err(|e| ConnectError::Invalid(format!("auth.tokenSecretRef: {e}")))?,
            )
        }
        (None, Some(k)) => {
            let sa = &k.service_account_ref;
            if sa.name.is_empty() {
                return Err(invalid(
                    "auth.kubernetes.serviceAccountRef.name is required",
                ));
            }
            // Both become path segments of the TokenRequest call, which kube-core formats in
            // unencoded: only Kubernetes names, so `..` or `/` cannot name another object.
            if !is_dns_subdomain(&sa.name) {
                return Err(invalid(
                    "auth.kubernetes.serviceAccountRef.name is not a ServiceAccount name (lowercase letters, digits, '-' and '.', at most 253)",
                ));
            }
            let namespace = match (ctx.namespace, sa.namespace.as_deref()) {
                (Some(own), Some(named)) if own != named => {
                    return Err(ConnectError::Invalid(format!(
                        "auth.kubernetes.serviceAccountRef names namespace {named:?}, not its object's {own:?}"
                    )));
                }
                (Some(own), _) => own.to_string(),
                (None, Some(named)) => named.to_string(),
                (None, None) => {
                    return Err(invalid(
                        "auth.kubernetes.serviceAccountRef.namespace is required in a cluster-scoped object",
                    ));
                }
            };
            if !is_dns_label(&namespace) {
                return Err(invalid(
                    "auth.kubernetes.serviceAccountRef.namespace is not a namespace name (lowercase letters, digits and '-', at most 63)",
                ));
            }
            // No audience would ask for the API server's own: a token this cluster's API
            // server accepts, handed to another server. Deny by default.
            if sa.audiences.is_empty() {
                return Err(invalid(
                    "auth.kubernetes.serviceAccountRef.audiences: name the Federation Server's audience (without one, the token would be valid for this cluster's API server, and would be sent to another server)",
                ));
            }
            if sa.audiences.len() > MAX_AUDIENCES
                || sa
                    .audiences
                    .iter()
                    .any(|a| a.is_empty() || a.len() > MAX_AUDIENCE_LEN)
            {
                return Err(invalid(
                    "auth.kubernetes.serviceAccountRef.audiences: at most 16, each 1 to 512 bytes",
                ));
            }
            Credentials::ServiceAccount {
                namespace,
                name: sa.name.clone(),
                audiences: sa.audiences.clone(),
                tokens: ctx.tokens.clone(),
            }
        }
        (None, None) => unreachable_token_source()?,
    };
    let mut settings = RemoteSettings::new(server.url.clone());
    settings.trust = trust;
    settings.client_ca = client_ca;
    settings.timeout = ctx.timeout;
    settings.connect_timeout = ctx.timeout.min(Duration::from_secs(5));
    let client = RemoteClient::new(&settings).map_err(|e| ConnectError::Invalid(e.to_string()))?;
    Ok(Connection {
        client,
        credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::SecretObject;
    use serde_json::json;

    fn index() -> SecretIndex {
        let ca = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let mut idx = SecretIndex::default();
        idx.insert(
            "apps",
            "fed",
            &SecretObject {
                string_data: [
                    ("token".to_string(), "eyJ.a.b\n".to_string()),
                    ("ca.crt".to_string(), ca.cert.pem()),
                    ("bad".to_string(), "hunter2 with space".to_string()),
                ]
                .into(),
                ..Default::default()
            },
        )
        .unwrap();
        idx
    }

    fn try_connect(
        ns: Option<&str>,
        server: serde_json::Value,
        auth: serde_json::Value,
    ) -> Result<Connection, ConnectError> {
        let idx = index();
        let ctx = ConnectContext {
            namespace: ns,
            secrets: &idx,
            timeout: Duration::from_secs(5),
            tokens: None,
        };
        let server: ServerSpec = serde_json::from_value(server).unwrap();
        let auth: AuthSpec = serde_json::from_value(auth).unwrap();
        connect(&ctx, &server, &auth)
    }

    fn err(ns: Option<&str>, server: serde_json::Value, auth: serde_json::Value) -> String {
        try_connect(ns, server, auth).unwrap_err().to_string()
    }

    #[tokio::test]
    async fn connections_resolve_and_refuse_what_cannot_work() {
        let url = json!({"url": "https://esi.example.com"});
        let tok = json!({"tokenSecretRef": {"name": "fed", "key": "token"}});
        let c = try_connect(Some("apps"), url.clone(), tok.clone()).unwrap();
        assert!(matches!(c.credentials, Credentials::Static(_)));
        assert_eq!(
            c.credentials
                .token()
                .await
                .unwrap()
                .header()
                .to_str()
                .unwrap(),
            "Bearer eyJ.a.b"
        );
        // Pinned CA from a Secret, and the client CA sent as ca.crt.
        try_connect(
            Some("apps"),
            json!({"url": "https://esi.example.com", "caRef": {"name": "fed", "key": "ca.crt"}}),
            json!({"tokenSecretRef": {"name": "fed", "key": "token"}, "caCertSecretRef": {"name": "fed", "key": "ca.crt"}}),
        )
        .unwrap();
        for (ns, server, auth, needle) in [
            (Some("apps"), url.clone(), json!({}), "needs a token source"),
            (
                Some("apps"),
                url.clone(),
                json!({"tokenSecretRef": {"name": "fed", "key": "token"}, "kubernetes": {"serviceAccountRef": {"name": "a"}}}),
                "not both",
            ),
            (
                Some("apps"),
                json!({"url": "http://esi.example.com"}),
                tok.clone(),
                "https://",
            ),
            (
                Some("apps"),
                json!({"url": "https://e", "caRef": {"name": "fed", "key": "ca.crt"}, "caBundle": "x"}),
                tok.clone(),
                "not both",
            ),
            (
                Some("apps"),
                json!({"url": "https://e", "caRef": {"name": "fed", "key": "token"}}),
                tok.clone(),
                "server.caRef",
            ),
            (
                Some("apps"),
                json!({"url": "https://e", "caBundle": "%%%"}),
                tok.clone(),
                "base64",
            ),
            (
                Some("apps"),
                url.clone(),
                json!({"tokenSecretRef": {"name": "fed", "key": "bad"}}),
                "characters",
            ),
            (
                Some("apps"),
                url.clone(),
                json!({"tokenSecretRef": {"name": "fed", "key": "missing"}}),
                "has no key",
            ),
            (
                Some("apps"),
                url.clone(),
                json!({"tokenSecretRef": {"name": "fed", "key": "token", "namespace": "other"}}),
                "not its object's",
            ),
            (
                None,
                url.clone(),
                json!({"tokenSecretRef": {"name": "fed", "key": "token"}}),
                "needs a namespace",
            ),
            (
                Some("apps"),
                url.clone(),
                json!({"kubernetes": {"serviceAccountRef": {"name": "a", "namespace": "other"}}}),
                "not its object's",
            ),
            (
                None,
                url.clone(),
                json!({"kubernetes": {"serviceAccountRef": {"name": "a"}}}),
                "namespace is required",
            ),
            (
                Some("apps"),
                url.clone(),
                json!({"kubernetes": {"serviceAccountRef": {"name": "a", "audiences": [""]}}}),
                "audiences",
            ),
            // Review finding 2: names that are not Kubernetes names would become path
            // segments of the TokenRequest call unencoded (kube-core formats them in).
            (
                Some("apps"),
                url.clone(),
                json!({"kubernetes": {"serviceAccountRef": {"name": "../../kube-system/serviceaccounts/admin", "audiences": ["a"]}}}),
                "serviceAccountRef.name",
            ),
            (
                Some("apps"),
                url.clone(),
                json!({"kubernetes": {"serviceAccountRef": {"name": "app/token?x=", "audiences": ["a"]}}}),
                "serviceAccountRef.name",
            ),
            (
                None,
                url.clone(),
                json!({"kubernetes": {"serviceAccountRef": {"name": "app", "namespace": "../kube-system", "audiences": ["a"]}}}),
                "serviceAccountRef.namespace",
            ),
            // Review finding 3: no audiences would ask a token for the API server's own
            // audience, which the remote server could then use against this cluster.
            (
                Some("apps"),
                url.clone(),
                json!({"kubernetes": {"serviceAccountRef": {"name": "a"}}}),
                "audiences",
            ),
            (
                Some("apps"),
                url.clone(),
                json!({"kubernetes": {"serviceAccountRef": {"name": "a", "audiences": []}}}),
                "audiences",
            ),
        ] {
            let e = err(ns, server.clone(), auth.clone());
            assert!(e.contains(needle), "{server} {auth}: {e}");
            assert!(!e.contains("hunter2") && !e.contains("eyJ"), "{e}");
        }
    }

    #[tokio::test]
    async fn service_account_tokens_need_kubernetes_mode() {
        let c = try_connect(
            None,
            json!({"url": "https://esi.example.com"}),
            json!({"kubernetes": {"serviceAccountRef": {"name": "app", "namespace": "apps", "audiences": ["https://esi"]}}}),
        )
        .unwrap();
        let e = c.credentials.token().await.unwrap_err().to_string();
        assert!(
            e.contains("auth.kubernetes needs Kubernetes mode")
                && e.contains("auth.tokenSecretRef"),
            "{e}"
        );
    }

    #[derive(Debug)]
    struct Minted;
    #[async_trait::async_trait]
    impl ServiceAccountTokens for Minted {
        async fn token(&self, ns: &str, sa: &str, aud: &[String]) -> Result<Token, TokenError> {
            Token::new(&format!("{ns}.{sa}.{}", aud.join("+")))
        }
    }

    #[tokio::test]
    async fn service_account_tokens_come_from_the_source() {
        let idx = SecretIndex::default();
        let ctx = ConnectContext {
            namespace: Some("apps"),
            secrets: &idx,
            timeout: Duration::from_secs(5),
            tokens: Some(Arc::new(Minted)),
        };
        let server: ServerSpec = serde_json::from_value(json!({"url": "https://e"})).unwrap();
        let auth: AuthSpec = serde_json::from_value(
            json!({"kubernetes": {"serviceAccountRef": {"name": "app", "audiences": ["a1", "a2"]}}}),
        )
        .unwrap();
        let c = connect(&ctx, &server, &auth).unwrap();
        let t = c.credentials.token().await.unwrap();
        assert_eq!(t.header().to_str().unwrap(), "Bearer apps.app.a1+a2");
    }
}
