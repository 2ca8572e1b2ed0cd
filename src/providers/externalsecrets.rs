//! The `externalsecrets` store provider: secrets of a ClusterSecretStore on another
//! Federation Server, read through its binary-safe `/v1` calls (ESE's "ESE as a
//! Federation Client"; `docs/federation-clients.md`).
//!
//! ```yaml
//! provider:
//!   externalsecrets:
//!     server:
//!       url: https://esi-federation.example.com
//!       caRef: {name: federation-ca, key: ca.crt}   # or caBundle: <base64 PEM>; neither: public roots
//!     auth:
//!       kubernetes:
//!         serviceAccountRef: {name: app, audiences: [https://esi-federation.example.com]}
//!       # or tokenSecretRef: {name: federation-token, key: token}
//!       # caCertSecretRef: {name: federation-token, key: ca.crt}   # sent as `ca.crt`
//!     target:
//!       clusterSecretStoreName: vault-prod            # the store on the Federation Server
//! ```
//! `get` → `POST /v1/secretstore/{target}/get`, `extract` → `…/extract`, `find` →
//! `…/find`. **Client-side only**: [`super::build_provider`] refuses it unless
//! `ProviderSettings::client_side` (the federation server never serves it: it would
//! decide on one spelling of a key while the remote server canonicalizes another).
//! Canonical forms are the identity (bounded, no control characters): the remote server
//! canonicalizes, decides and audits; this side only forwards.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{
    BuildContext, FindRequest, KeyFilter, ProviderConfigError, ProviderError, RemoteRef,
    SecretProvider,
};
use crate::remote::spec::{AuthSpec, ConnectContext, ConnectError, Connection, ServerSpec};
use crate::remote::{Find, RemoteError};

/// The provider's key under `spec.provider`.
pub(crate) const PROVIDER: &str = "externalsecrets";

/// Longest key, property, version or find path forwarded.
const MAX_TEXT_LEN: usize = 1024;
/// Most tags in a `find`.
const MAX_TAGS: usize = 64;

/// `spec.provider.externalsecrets`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    server: ServerSpec,
    auth: AuthSpec,
    target: Target,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Target {
    cluster_secret_store_name: String,
}

/// Reads a ClusterSecretStore of another Federation Server.
pub struct ExternalSecretsProvider {
    connection: Connection,
    /// The store on the remote server.
    target: String,
}

impl std::fmt::Debug for ExternalSecretsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalSecretsProvider")
            .field("server", &self.connection.client.base().as_str())
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// A remote failure as a provider error: 404 (missing or not allowed) is `NotFound`;
/// connect failures, timeouts, 429, 5xx and a TokenRequest that may pass are
/// `Unavailable`; the rest (401, 403, TLS, malformed answers, no usable token, a refused
/// TokenRequest) `Backend`, each with its plain-words cause.
pub(crate) fn provider_error(e: RemoteError) -> ProviderError {
    match e {
        RemoteError::NotFound => ProviderError::NotFound,
        RemoteError::Timeout => ProviderError::Timeout,
        e if e.is_transient() => ProviderError::Unavailable(e.to_string()),
        RemoteError::Rejected(400) => ProviderError::InvalidRequest(e.to_string()),
        e => ProviderError::Backend(e.to_string()),
    }
}

/// A caller's text, bounded and without control characters.
fn bounded(text: &str, what: &str) -> Result<String, ProviderError> {
    if text.len() > MAX_TEXT_LEN {
        return Err(ProviderError::InvalidRequest(format!("{what} is too long")));
    }
    if text.chars().any(char::is_control) {
        return Err(ProviderError::InvalidRequest(format!(
            "{what} has control characters"
        )));
    }
    Ok(text.to_string())
}

fn bounded_opt(text: Option<&str>, what: &str) -> Result<Option<String>, ProviderError> {
    text.filter(|t| !t.is_empty())
        .map(|t| bounded(t, what))
        .transpose()
}

impl ExternalSecretsProvider {
    /// Parses `spec.provider.externalsecrets` and resolves its Secret references.
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        block: &Value,
    ) -> Result<Self, ProviderConfigError> {
        let spec: Spec = ctx.parse(PROVIDER, block)?;
        let target = spec.target.cluster_secret_store_name;
        // One path segment of every call: no control characters (the `url` crate skips
        // tab, CR and LF) and not `.` or `..` (dropped from a path).
        if target.is_empty()
            || target.len() > 253
            || target.chars().any(char::is_control)
            || target == "."
            || target == ".."
        {
            return Err(ctx.invalid(
                PROVIDER,
                "target.clusterSecretStoreName must be 1 to 253 characters, without control characters, and not `.` or `..`",
            ));
        }
        let connect_ctx = ConnectContext {
            namespace: ctx.namespace,
            secrets: ctx.secrets,
            timeout: ctx.settings.timeout,
            tokens: ctx.settings.service_account_tokens.clone(),
        };
        let connection = crate::remote::spec::connect(&connect_ctx, &spec.server, &spec.auth)
            .map_err(|e| match e {
                ConnectError::Invalid(reason) => ctx.invalid(PROVIDER, reason),
                ConnectError::SecretRef { field, source } => ProviderConfigError::SecretRef {
                    store: ctx.store.to_string(),
                    field,
                    source,
                },
            })?;
        Ok(ExternalSecretsProvider { connection, target })
    }

    fn require_canonical(&self, remote: &RemoteRef) -> Result<(), ProviderError> {
        if self.canonical_ref(remote)? == *remote {
            Ok(())
        } else {
            Err(ProviderError::InvalidRequest(
                "reference is not in canonical form".into(),
            ))
        }
    }
}

#[async_trait::async_trait]
impl SecretProvider for ExternalSecretsProvider {
    fn kind(&self) -> &'static str {
        PROVIDER
    }

    /// The identity on the key as given (the remote server canonicalizes, decides and
    /// audits on its own form). Empty keys and keys, properties or versions over 1024
    /// bytes or with control characters are refused; empty property and version mean none.
    fn canonical_ref(&self, remote: &RemoteRef) -> Result<RemoteRef, ProviderError> {
        let key = bounded(&remote.key, "key")?;
        if key.is_empty() {
            return Err(ProviderError::InvalidRequest("key is empty".into()));
        }
        Ok(RemoteRef {
            key,
            property: bounded_opt(remote.property.as_deref(), "property")?,
            version: bounded_opt(remote.version.as_deref(), "version")?,
        })
    }

    /// `path` and the regexp as given (bounded), at most 64 tags.
    fn canonical_find(&self, find: &FindRequest) -> Result<FindRequest, ProviderError> {
        if find.tags.len() > MAX_TAGS {
            return Err(ProviderError::InvalidRequest("too many find.tags".into()));
        }
        for (k, v) in &find.tags {
            bounded(k, "a find.tags key")?;
            bounded(v, "a find.tags value")?;
        }
        Ok(FindRequest {
            path: bounded_opt(find.path.as_deref(), "find.path")?,
            name_regexp: bounded_opt(find.name_regexp.as_deref(), "find.name.regexp")?,
            tags: find.tags.clone(),
        })
    }

    async fn get_secret(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
        self.require_canonical(remote)?;
        let token = self
            .connection
            .credentials
            .token()
            .await
            .map_err(provider_error)?;
        let value = self
            .connection
            .client
            .get(
                &token,
                &self.target,
                &remote.key,
                remote.property.as_deref(),
                remote.version.as_deref(),
            )
            .await
            .map_err(provider_error)?;
        Ok(value.to_vec())
    }

    async fn get_secret_map(
        &self,
        remote: &RemoteRef,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        self.require_canonical(remote)?;
        let token = self
            .connection
            .credentials
            .token()
            .await
            .map_err(provider_error)?;
        let map = self
            .connection
            .client
            .extract(
                &token,
                &self.target,
                &remote.key,
                remote.property.as_deref(),
                remote.version.as_deref(),
            )
            .await
            .map_err(provider_error)?;
        Ok(map.into_iter().map(|(k, v)| (k, v.to_vec())).collect())
    }

    /// The remote server answers only keys this identity may `get` there; `allow` then
    /// filters them here. Unlike a backend store, the values of refused keys have crossed
    /// the wire (the remote server reads them for its own answer): they are dropped
    /// unread.
    async fn find_allowed(
        &self,
        find: &FindRequest,
        allow: &KeyFilter<'_>,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        if self.canonical_find(find)? != *find {
            return Err(ProviderError::InvalidRequest(
                "find is not in canonical form".into(),
            ));
        }
        let token = self
            .connection
            .credentials
            .token()
            .await
            .map_err(provider_error)?;
        let request = Find {
            path: find.path.as_deref(),
            name_regexp: find.name_regexp.as_deref(),
            tags: Some(&find.tags),
        };
        let map = self
            .connection
            .client
            .find(&token, &self.target, &request)
            .await
            .map_err(provider_error)?;
        Ok(map
            .into_iter()
            .filter(|(k, _)| allow(k))
            .map(|(k, v)| (k, v.to_vec()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{ProviderSettings, build_provider};
    use crate::resources::{SecretIndex, SecretObject, SecretStoreSpec};
    use serde_json::json;

    fn index() -> SecretIndex {
        let mut idx = SecretIndex::default();
        idx.insert(
            "esi",
            "fed",
            &SecretObject {
                string_data: [("token".to_string(), "eyJ.a.b".to_string())].into(),
                ..Default::default()
            },
        )
        .unwrap();
        idx
    }

    fn build(
        block: serde_json::Value,
        client_side: bool,
    ) -> Result<std::sync::Arc<dyn SecretProvider>, ProviderConfigError> {
        let spec: SecretStoreSpec =
            serde_json::from_value(json!({"provider": {"externalsecrets": block}})).unwrap();
        let settings = ProviderSettings {
            client_side,
            ..ProviderSettings::default()
        };
        build_provider("remote", None, &spec, &index(), &settings)
    }

    fn good() -> serde_json::Value {
        json!({
            "server": {"url": "https://esi.example.com"},
            "auth": {"tokenSecretRef": {"name": "fed", "key": "token", "namespace": "esi"}},
            "target": {"clusterSecretStoreName": "vault-prod"}
        })
    }

    #[test]
    fn the_server_refuses_it_and_clients_build_it() {
        let err = build(good(), false).err().unwrap();
        assert!(
            matches!(err, ProviderConfigError::ClientSideOnly { .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("is a client of another Federation Server; this server does not serve it"),
            "{msg}"
        );
        let p = build(good(), true).unwrap();
        assert_eq!(p.kind(), "externalsecrets");
    }

    #[test]
    fn spec_errors_name_the_field() {
        let mut typo = good();
        typo["target"] = json!({"clusterSecretStore": "vault-prod"});
        let e = build(typo, true).err().unwrap().to_string();
        assert!(e.contains("unknown field"), "{e}");
        let mut empty = good();
        empty["target"]["clusterSecretStoreName"] = json!("");
        let e = build(empty, true).err().unwrap().to_string();
        assert!(e.contains("clusterSecretStoreName"), "{e}");
        // Review finding 9: names a path would change are refused when the store loads.
        for bad in ["vault\tprod", "..", "."] {
            let mut b = good();
            b["target"]["clusterSecretStoreName"] = json!(bad);
            let e = build(b, true).err().unwrap().to_string();
            assert!(e.contains("clusterSecretStoreName"), "{bad:?}: {e}");
        }
        let mut no_auth = good();
        no_auth["auth"] = json!({});
        let e = build(no_auth, true).err().unwrap().to_string();
        assert!(e.contains("token source"), "{e}");
        let mut missing = good();
        missing["auth"]["tokenSecretRef"]["name"] = json!("nope");
        let e = build(missing, true).err().unwrap();
        assert!(e.is_missing_secret(), "{e}");
        let mut plain = good();
        plain["server"]["url"] = json!("http://esi.example.com");
        let e = build(plain, true).err().unwrap().to_string();
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn canonical_forms_are_the_identity_within_bounds() {
        let p = build(good(), true).unwrap();
        let r = RemoteRef {
            key: " A/b//c ".into(),
            property: Some("x.y".into()),
            version: Some(String::new()),
        };
        let c = p.canonical_ref(&r).unwrap();
        assert_eq!(c.key, " A/b//c ");
        assert_eq!(c.property.as_deref(), Some("x.y"));
        assert_eq!(c.version, None);
        for bad in ["", "a\nb", &"k".repeat(1025)] {
            let r = RemoteRef {
                key: bad.into(),
                ..Default::default()
            };
            assert!(matches!(
                p.canonical_ref(&r),
                Err(ProviderError::InvalidRequest(_))
            ));
        }
        let f = FindRequest {
            path: Some(String::new()),
            name_regexp: Some("^a".into()),
            tags: Default::default(),
        };
        let c = p.canonical_find(&f).unwrap();
        assert_eq!(c.path, None);
        assert_eq!(c.name_regexp.as_deref(), Some("^a"));
        let many = FindRequest {
            tags: (0..65).map(|i| (format!("t{i}"), "v".into())).collect(),
            ..Default::default()
        };
        assert!(p.canonical_find(&many).is_err());
    }

    #[test]
    fn remote_errors_map_to_provider_errors() {
        assert_eq!(
            provider_error(RemoteError::NotFound),
            ProviderError::NotFound
        );
        assert_eq!(provider_error(RemoteError::Timeout), ProviderError::Timeout);
        assert!(matches!(
            provider_error(RemoteError::Server(503)),
            ProviderError::Unavailable(_)
        ));
        assert!(matches!(
            provider_error(RemoteError::Unauthorized),
            ProviderError::Backend(m) if m.contains("401")
        ));
        // A TokenRequest that may pass (API server unreachable, throttling, 5xx, the
        // gateway's own credentials rejected) is transient: retried, served stale.
        assert!(matches!(
            provider_error(RemoteError::Token(crate::remote::TokenError::Unavailable("HTTP 503".into()))),
            ProviderError::Unavailable(m) if m.contains("503")
        ));
        // A refused one (ServiceAccount gone, RBAC removed) is definite.
        assert!(matches!(
            provider_error(RemoteError::Token(crate::remote::TokenError::Refused("HTTP 403".into()))),
            ProviderError::Backend(m) if m.contains("403")
        ));
    }
}
