//! ESO's `VaultDynamicSecret` generator: one Vault/OpenBao API call per credential.
//!
//! ```yaml
//! spec:
//!   method: GET                 # GET (default) | LIST | POST | PUT | PATCH | DELETE
//!   path: database/creds/app    # API path under /v1
//!   parameters: {ttl: 5m}       # GET: query parameters; POST/PUT/PATCH: JSON body
//!   resultType: Data            # Data (default): `data`; Auth: `auth`; Raw: the whole answer
//!   allowEmptyResponse: false
//!   provider:                   # the vault provider block of a SecretStore (server, auth, …)
//!     server: https://vault.example.com:8200
//!     auth: {tokenSecretRef: {name: vault, key: token}}
//! ```
//! Answers strings as they are and other values as JSON text (as ESO does). A lease
//! (`lease_id`) or, for logins, the token accessor is the revocation state; revoking is
//! `PUT /v1/sys/leases/revoke` (or `auth/token/revoke-accessor`). The provider's client,
//! authentication (token, AppRole with re-login), TLS and limits are reused as they are.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    BuildContext, GenerateContext, Generated, Generator, GeneratorConfigError, GeneratorError,
    Renewed, RevocationState, unix_now,
};
use crate::providers::vault::{ConnectionError, ConnectionSpec, VaultClient, status_error};

const KIND: &str = "VaultDynamicSecret";
/// Bound on the parameters object (keeps requests and memory small).
const MAX_PARAMETERS_BYTES: usize = 64 * 1024;

/// `spec` of a VaultDynamicSecret generator.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VaultDynamicSecretSpec {
    /// ESO's controller-class selector: meaningless for a single server.
    #[serde(default)]
    #[allow(dead_code)]
    controller: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
    #[serde(default)]
    result_type: Option<String>,
    /// ESO's client retry settings: every call here is bounded by the server's timeout
    /// and the caller retries, so they are accepted and not used.
    #[serde(default)]
    #[allow(dead_code)]
    retry_settings: Option<Value>,
    #[serde(default)]
    allow_empty_response: bool,
    /// ESO's `provider.vault` block: its connection fields (`path`, `version` and
    /// other KV fields mean nothing to a generator and are ignored, as in ESO).
    provider: ConnectionSpec,
    path: String,
}

/// Which part of Vault's answer is the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResultType {
    Data,
    Auth,
    Raw,
}

/// How the call is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallMethod {
    Get,
    List,
    Delete,
    Write(WriteMethod),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteMethod {
    Post,
    Put,
    Patch,
}

/// Issues dynamic credentials from one Vault path.
pub struct VaultDynamicSecretGenerator {
    client: VaultClient,
    method: CallMethod,
    path: String,
    parameters: Option<serde_json::Map<String, Value>>,
    result_type: ResultType,
    allow_empty_response: bool,
}

// Parameters may carry sensitive inputs; Debug shows only the shape.
impl std::fmt::Debug for VaultDynamicSecretGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultDynamicSecretGenerator")
            .field("client", &self.client)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("result_type", &self.result_type)
            .finish_non_exhaustive()
    }
}

/// A `spec.provider` error as a generator error (field names only, never values).
fn connection_error(ctx: &BuildContext<'_>, e: ConnectionError) -> GeneratorConfigError {
    match e {
        ConnectionError::SecretRef { field, source } => {
            ctx.secret_ref_error(KIND, &format!("provider.{field}"), &source)
        }
        ConnectionError::Invalid(reason) => ctx.invalid(KIND, format!("provider: {reason}")),
        ConnectionError::Unsupported(reason) => {
            ctx.invalid(KIND, format!("provider: unsupported: {reason}"))
        }
    }
}

impl VaultDynamicSecretGenerator {
    /// Parses the spec and builds the Vault client from `spec.provider`, resolving its
    /// secret refs in the generator's namespace (a ClusterGenerator's must name theirs).
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        spec: &Value,
    ) -> Result<Self, GeneratorConfigError> {
        let spec: VaultDynamicSecretSpec = ctx.parse(KIND, spec)?;
        let method = match spec
            .method
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("") | Some("GET") => CallMethod::Get,
            Some("LIST") => CallMethod::List,
            Some("DELETE") => CallMethod::Delete,
            Some("POST") => CallMethod::Write(WriteMethod::Post),
            Some("PUT") => CallMethod::Write(WriteMethod::Put),
            Some("PATCH") => CallMethod::Write(WriteMethod::Patch),
            Some(_) => {
                return Err(
                    ctx.invalid(KIND, "method must be GET, LIST, POST, PUT, PATCH or DELETE")
                );
            }
        };
        let result_type = match spec.result_type.as_deref() {
            None | Some("") | Some("Data") => ResultType::Data,
            Some("Auth") => ResultType::Auth,
            Some("Raw") => ResultType::Raw,
            Some(_) => return Err(ctx.invalid(KIND, "resultType must be Data, Auth or Raw")),
        };
        let parameters = match spec.parameters {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => {
                if Value::Object(map.clone()).to_string().len() > MAX_PARAMETERS_BYTES {
                    return Err(ctx.invalid(
                        KIND,
                        format!("parameters must be at most {MAX_PARAMETERS_BYTES} bytes"),
                    ));
                }
                Some(map)
            }
            Some(_) => return Err(ctx.invalid(KIND, "parameters must be an object")),
        };
        let path = spec.path.trim().trim_matches('/').to_string();
        if path.is_empty() {
            return Err(ctx.invalid(KIND, "path is required"));
        }
        let client = VaultClient::from_spec(
            spec.provider,
            ctx.secrets,
            ctx.owner_namespace(),
            ctx.settings.timeout,
        )
        .map_err(|e| connection_error(ctx, e))?;
        // Checks the path once here, so a bad path is a configuration error.
        client
            .api_url(&path)
            .map_err(|_| ctx.invalid(KIND, "path has empty, relative or control segments"))?;
        Ok(VaultDynamicSecretGenerator {
            client,
            method,
            path,
            parameters,
            result_type,
            allow_empty_response: spec.allow_empty_response,
        })
    }

    /// Makes the configured call and answers Vault's JSON body.
    async fn call(&self) -> Result<Value, GeneratorError> {
        let mut url = self.client.api_url(&self.path)?;
        let (method, body) = match self.method {
            CallMethod::Get => {
                if let Some(params) = &self.parameters {
                    let mut query = url.query_pairs_mut();
                    for (k, v) in params {
                        query.append_pair(k, &value_text(v));
                    }
                }
                (Method::GET, None)
            }
            CallMethod::List => {
                url.query_pairs_mut().append_pair("list", "true");
                (Method::GET, None)
            }
            CallMethod::Delete => (Method::DELETE, None),
            CallMethod::Write(w) => {
                let method = match w {
                    WriteMethod::Post => Method::POST,
                    WriteMethod::Put => Method::PUT,
                    WriteMethod::Patch => Method::PATCH,
                };
                let body = Value::Object(self.parameters.clone().unwrap_or_default());
                (method, Some(body))
            }
        };
        let (status, answer) = self.client.call(method, url, body.as_ref()).await?;
        if !status.is_success() {
            tracing::warn!(kind = KIND, path = %self.path, status = status.as_u16(), "vault refused the dynamic secret call");
            return Err(status_error(status).into());
        }
        Ok(answer)
    }
}

/// ESO's value rule: strings as they are, everything else as JSON text.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn non_empty_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

#[async_trait::async_trait]
impl Generator for VaultDynamicSecretGenerator {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn generate(&self, _ctx: &GenerateContext<'_>) -> Result<Generated, GeneratorError> {
        let issued_at = unix_now();
        let answer = self.call().await?;
        let part = match self.result_type {
            ResultType::Data => answer.get("data").cloned().unwrap_or(Value::Null),
            ResultType::Auth => answer.get("auth").cloned().unwrap_or(Value::Null),
            ResultType::Raw => answer.clone(),
        };
        let data: BTreeMap<String, String> = match part {
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| (k.clone(), value_text(v)))
                .collect(),
            Value::Null => BTreeMap::new(),
            _ => {
                return Err(GeneratorError::Backend(
                    "vault answered an unexpected shape".into(),
                ));
            }
        };

        // Revocation state: the lease, else (logins) the token accessor.
        let auth = answer.get("auth").cloned().unwrap_or(Value::Null);
        let renewable_of = |v: &Value| v.get("renewable").and_then(Value::as_bool) == Some(true);
        let (revocation, lease_seconds, renewable) =
            if let Some(lease) = non_empty_str(&answer, "lease_id") {
                let seconds = answer.get("lease_duration").and_then(Value::as_u64);
                (
                    Some(json!({ "leaseId": lease })),
                    seconds,
                    renewable_of(&answer),
                )
            } else if let Some(accessor) = non_empty_str(&auth, "accessor") {
                let seconds = auth.get("lease_duration").and_then(Value::as_u64);
                (
                    Some(json!({ "accessor": accessor })),
                    seconds,
                    renewable_of(&auth),
                )
            } else {
                (None, None, false)
            };
        let expires_at = lease_seconds
            .filter(|s| *s > 0)
            .map(|s| issued_at.saturating_add(s));

        if data.is_empty() && !self.allow_empty_response {
            // A credential may have been issued all the same: give it back at once.
            if let Some(state) = &revocation
                && let Err(e) = self.revoke(&RevocationState(state.clone())).await
            {
                tracing::warn!(kind = KIND, error = %e, "could not revoke an empty dynamic secret");
            }
            return Err(GeneratorError::Backend(
                "vault answered no data (set allowEmptyResponse to accept it)".into(),
            ));
        }
        Ok(Generated {
            data,
            renewable: renewable && expires_at.is_some(),
            revocation: revocation.map(RevocationState),
            expires_at,
        })
    }

    async fn renew(
        &self,
        state: &RevocationState,
        increment: Option<u64>,
    ) -> Result<Renewed, GeneratorError> {
        let started = unix_now();
        let (method, path, mut body, part) = if let Some(lease) = non_empty_str(&state.0, "leaseId")
        {
            (
                Method::PUT,
                "sys/leases/renew",
                json!({ "lease_id": lease }),
                None,
            )
        } else if let Some(accessor) = non_empty_str(&state.0, "accessor") {
            (
                Method::POST,
                "auth/token/renew-accessor",
                json!({ "accessor": accessor }),
                Some("auth"),
            )
        } else {
            return Err(GeneratorError::NotRenewable);
        };
        if let (Some(seconds), Some(map)) = (increment, body.as_object_mut()) {
            map.insert("increment".into(), json!(seconds));
        }
        let url = self.client.api_url(path)?;
        let (status, answer) = self.client.call(method, url, Some(&body)).await?;
        if status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND {
            // Unknown, not renewable, or past its maximum TTL: the holder needs a new one.
            tracing::info!(
                kind = KIND,
                status = status.as_u16(),
                "vault refused a renewal"
            );
            return Err(GeneratorError::NotRenewable);
        }
        if !status.is_success() {
            return Err(status_error(status).into());
        }
        let lease = match part {
            Some(key) => answer.get(key).cloned().unwrap_or(Value::Null),
            None => answer,
        };
        let seconds = lease
            .get("lease_duration")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                GeneratorError::Backend("vault answered a renewal without a lease".into())
            })?;
        if seconds == 0 {
            return Err(GeneratorError::NotRenewable);
        }
        Ok(Renewed {
            expires_at: started.saturating_add(seconds),
            renewable: lease.get("renewable").and_then(Value::as_bool) == Some(true),
        })
    }

    async fn revoke(&self, state: &RevocationState) -> Result<(), GeneratorError> {
        let (path, body) = if let Some(lease) = non_empty_str(&state.0, "leaseId") {
            ("sys/leases/revoke", json!({ "lease_id": lease }))
        } else if let Some(accessor) = non_empty_str(&state.0, "accessor") {
            (
                "auth/token/revoke-accessor",
                json!({ "accessor": accessor }),
            )
        } else {
            return Err(GeneratorError::NotRevocable);
        };
        let url = self.client.api_url(path)?;
        let method = if path == "sys/leases/revoke" {
            Method::PUT
        } else {
            Method::POST
        };
        let (status, _) = self.client.call(method, url, Some(&body)).await?;
        if status.is_success() {
            return Ok(());
        }
        // Vault answers 400 for an accessor it no longer knows: the token is gone.
        if status == StatusCode::BAD_REQUEST && path != "sys/leases/revoke" {
            return Ok(());
        }
        tracing::warn!(
            kind = KIND,
            status = status.as_u16(),
            "vault refused a revocation"
        );
        Err(status_error(status).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderSettings;
    use crate::resources::SecretIndex;
    use crate::resources::SecretObject;

    fn build_in(
        namespace: &str,
        spec: Value,
        secrets: &SecretIndex,
    ) -> Result<VaultDynamicSecretGenerator, GeneratorConfigError> {
        let settings = ProviderSettings::default();
        let ctx = BuildContext {
            namespace,
            name: "vds",
            secrets,
            settings: &settings,
        };
        VaultDynamicSecretGenerator::from_spec(&ctx, &spec)
    }

    fn secrets() -> SecretIndex {
        let mut idx = SecretIndex::default();
        idx.insert(
            "apps",
            "vault-token",
            &SecretObject {
                string_data: [("token".to_string(), "s.sekrit".to_string())].into(),
                ..Default::default()
            },
        )
        .unwrap();
        idx
    }

    fn spec(extra: Value) -> Value {
        let mut base = json!({
            "path": "/database/creds/app",
            "provider": {"server": "http://127.0.0.1:1",
                "auth": {"tokenSecretRef": {"name": "vault-token", "key": "token"}}}
        });
        if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
            b.extend(e);
        }
        base
    }

    #[test]
    fn parses_eso_fields() {
        let g = build_in(
            "apps",
            spec(json!({"method": "post", "resultType": "Raw",
                "parameters": {"common_name": "a.example.com", "ttl": 60}})),
            &secrets(),
        )
        .unwrap();
        assert_eq!(g.method, CallMethod::Write(WriteMethod::Post));
        assert_eq!(g.result_type, ResultType::Raw);
        assert_eq!(g.path, "database/creds/app");
        let shown = format!("{g:?}");
        assert!(
            !shown.contains("sekrit") && !shown.contains("a.example.com"),
            "{shown}"
        );
        let g = build_in("apps", spec(json!({})), &secrets()).unwrap();
        assert_eq!(
            (g.method, g.result_type),
            (CallMethod::Get, ResultType::Data)
        );
    }

    #[test]
    fn rejects_bad_specs_without_values() {
        for extra in [
            json!({"method": "TRACE"}),
            json!({"resultType": "Everything"}),
            json!({"parameters": ["a"]}),
            json!({"path": ""}),
            json!({"path": "database/../sys/raw"}),
            json!({"provider": {"server": "ftp://x"}}),
        ] {
            assert!(
                build_in("apps", spec(extra.clone()), &secrets()).is_err(),
                "{extra}"
            );
        }
        // The token Secret lives in another namespace: not resolvable from here.
        let err = build_in("other", spec(json!({})), &secrets())
            .err()
            .unwrap();
        assert!(
            matches!(err, GeneratorConfigError::SecretRef { .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("sekrit"));
        // A cluster-scoped wrapper's refs must name their namespace.
        assert!(build_in("", spec(json!({})), &secrets()).is_err());
    }

    #[tokio::test]
    async fn backend_down_is_unavailable() {
        let g = build_in("apps", spec(json!({})), &secrets()).unwrap();
        let err = g.generate(&GenerateContext::default()).await.err().unwrap();
        assert!(matches!(err, GeneratorError::Unavailable(_)), "{err:?}");
        let err = g
            .revoke(&RevocationState(json!({"leaseId": "database/creds/app/x"})))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, GeneratorError::Unavailable(_)), "{err:?}");
        assert_eq!(
            g.revoke(&RevocationState(json!({"other": 1}))).await,
            Err(GeneratorError::NotRevocable)
        );
    }

    #[test]
    fn values_follow_eso() {
        assert_eq!(value_text(&json!("s")), "s");
        assert_eq!(value_text(&json!(5)), "5");
        assert_eq!(value_text(&json!({"a": [1]})), r#"{"a":[1]}"#);
        assert_eq!(value_text(&Value::Null), "null");
    }
}
