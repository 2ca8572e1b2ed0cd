//! ESE's `Federation` generator: a credential from a generator of another Federation
//! Server, with its handle, so that it can be revoked exactly (`docs/federation-clients.md`).
//!
//! ```yaml
//! apiVersion: generators.external-secrets.io/v1alpha1
//! kind: Federation
//! spec:
//!   server:
//!     url: https://esi-federation.example.com
//!     caRef: {name: federation-ca, key: ca.crt}     # extension; or caBundle; neither: public roots
//!   generator: {namespace: federation-example, kind: Password, name: db-password}
//!   auth:
//!     tokenSecretRef: {name: federation-token, key: token}
//!     caCertSecretRef: {name: federation-token, key: ca.crt}   # sent as `ca.crt`, as ESE does
//!     # or (extension) kubernetes: {serviceAccountRef: {name: app, audiences: [...]}}
//! ```
//! generate → `POST /v1/generators/{ns}/{kind}/{name}` on the remote server (binary-safe
//! data and the credential's handle); the [`RevocationState`] is `{"credentialId": <handle>}`
//! (never a value); revoke → `DELETE /v1/credentials/{handle}`; renew →
//! `POST /v1/credentials/{handle}/renew`. **Client-side only**: built only when
//! `ProviderSettings::client_side` (the federation server keeps ignoring `Federation`
//! objects). Outputs must be UTF-8 text (generator outputs here are strings): a
//! credential with a binary value is revoked at once and refused.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    BuildContext, GenerateContext, Generated, Generator, GeneratorConfigError, GeneratorError,
    Renewed, RevocationState, is_namespace_name, unix_now,
};
use crate::remote::spec::{AuthSpec, ConnectContext, ConnectError, Connection, ServerSpec};
use crate::remote::{Credential, RemoteError};

/// The kind, as in manifests.
pub(crate) const KIND: &str = "Federation";

/// `spec` of a Federation generator (ESE's CRD, plus `server.caRef`/`caBundle` and
/// `auth.kubernetes`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FederationSpec {
    server: ServerSpec,
    generator: Target,
    auth: AuthSpec,
}

/// `spec.generator`: the generator on the remote server.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Target {
    namespace: String,
    kind: String,
    name: String,
}

/// Issues credentials from a generator of another Federation Server.
pub struct FederationGenerator {
    connection: Connection,
    target: Target,
}

impl std::fmt::Debug for FederationGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationGenerator")
            .field("server", &self.connection.client.base().as_str())
            .field(
                "generator",
                &format_args!(
                    "{}/{}/{}",
                    self.target.namespace, self.target.kind, self.target.name
                ),
            )
            .finish_non_exhaustive()
    }
}

/// Handles are UUIDs; anything else in a state is not this generator's.
fn handle_of(state: &RevocationState) -> Result<&str, GeneratorError> {
    state
        .0
        .get("credentialId")
        .and_then(Value::as_str)
        .filter(|id| uuid::Uuid::try_parse(id).is_ok())
        .ok_or(GeneratorError::NotRevocable)
}

/// When a credential lapses (seconds since the epoch): `leaseDuration` from now (clocks
/// need not agree), else `expiresAt`.
fn expiry(c: &Credential) -> Option<u64> {
    if let Some(d) = c.lease_duration {
        return Some(unix_now().saturating_add(d));
    }
    let at = c.expires_at.as_deref()?;
    let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

impl FederationGenerator {
    /// Parses `spec` and resolves its Secret references.
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        spec: &Value,
    ) -> Result<Self, GeneratorConfigError> {
        let spec: FederationSpec = ctx.parse(KIND, spec)?;
        let t = &spec.generator;
        if !is_namespace_name(&t.namespace) {
            return Err(ctx.invalid(
                KIND,
                "generator.namespace is not a Kubernetes namespace name",
            ));
        }
        if t.kind.is_empty()
            || t.kind.len() > 63
            || !t.kind.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ctx.invalid(KIND, "generator.kind must be 1 to 63 letters or digits"));
        }
        // One path segment of every call: not `.` or `..` (dropped from a path).
        if t.name.is_empty()
            || t.name.len() > 253
            || t.name.chars().any(char::is_control)
            || t.name == "."
            || t.name == ".."
        {
            return Err(ctx.invalid(
                KIND,
                "generator.name must be 1 to 253 characters, without control characters, and not `.` or `..`",
            ));
        }
        let connect_ctx = ConnectContext {
            namespace: ctx.owner_namespace(),
            secrets: ctx.secrets,
            timeout: ctx.settings.timeout,
            tokens: ctx.settings.service_account_tokens.clone(),
        };
        let connection = crate::remote::spec::connect(&connect_ctx, &spec.server, &spec.auth)
            .map_err(|e| match e {
                ConnectError::Invalid(reason) => ctx.invalid(KIND, reason),
                ConnectError::SecretRef { field, source } => {
                    ctx.secret_ref_error(KIND, field, &source)
                }
            })?;
        Ok(FederationGenerator {
            connection,
            target: spec.generator,
        })
    }

    fn error(&self, e: RemoteError) -> GeneratorError {
        match e {
            RemoteError::NotFound => GeneratorError::Backend(format!(
                "the Federation Server has no generator {}/{}/{} this identity may use (HTTP 404)",
                self.target.namespace, self.target.kind, self.target.name
            )),
            RemoteError::NotRenewable => GeneratorError::NotRenewable,
            e if e.is_transient() => GeneratorError::Unavailable(e.to_string()),
            e => GeneratorError::Backend(e.to_string()),
        }
    }
}

#[async_trait::async_trait]
impl Generator for FederationGenerator {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn generate(&self, _ctx: &GenerateContext<'_>) -> Result<Generated, GeneratorError> {
        let token = self
            .connection
            .credentials
            .token()
            .await
            .map_err(|e| self.error(e))?;
        let t = &self.target;
        let issued = self
            .connection
            .client
            .issue(&token, &t.namespace, &t.kind, &t.name)
            .await
            .map_err(|e| self.error(e))?;
        let credential = issued.credential;
        let revocation = credential
            .id
            .as_ref()
            .map(|id| RevocationState(json!({ "credentialId": id })));
        let mut data = std::collections::BTreeMap::new();
        for (k, v) in issued.data {
            match String::from_utf8(v.to_vec()) {
                Ok(text) => {
                    data.insert(k, text);
                }
                Err(e) => {
                    let mut bytes = e.into_bytes();
                    zeroize::Zeroize::zeroize(&mut bytes);
                    // Nothing is handed out: give the credential back now.
                    if let Some(state) = &revocation
                        && let Err(e) = self.revoke(state).await
                    {
                        tracing::warn!(kind = KIND, error = %e, "could not revoke a refused credential; it lapses at its expiry");
                    }
                    return Err(GeneratorError::Backend(format!(
                        "the generated key {k:?} is not UTF-8 text, which generator outputs must be"
                    )));
                }
            }
        }
        Ok(Generated {
            data,
            expires_at: expiry(&credential),
            renewable: credential.renewable && revocation.is_some(),
            revocation,
        })
    }

    async fn revoke(&self, state: &RevocationState) -> Result<(), GeneratorError> {
        let id = handle_of(state)?;
        let token = self
            .connection
            .credentials
            .token()
            .await
            .map_err(|e| self.error(e))?;
        self.connection
            .client
            .revoke(&token, id)
            .await
            .map_err(|e| self.error(e))
    }

    async fn renew(
        &self,
        state: &RevocationState,
        increment: Option<u64>,
    ) -> Result<Renewed, GeneratorError> {
        let id = handle_of(state).map_err(|_| GeneratorError::NotRenewable)?;
        let token = self
            .connection
            .credentials
            .token()
            .await
            .map_err(|e| self.error(e))?;
        let credential = self
            .connection
            .client
            .renew(&token, id, increment)
            .await
            .map_err(|e| self.error(e))?;
        let expires_at = expiry(&credential)
            .ok_or_else(|| GeneratorError::Backend("the renewal answered no expiry".into()))?;
        Ok(Renewed {
            expires_at,
            renewable: credential.renewable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generators::{GeneratorConfigError, build_generator_with};
    use crate::providers::ProviderSettings;
    use crate::resources::{SecretIndex, SecretObject};

    fn index() -> SecretIndex {
        let mut idx = SecretIndex::default();
        idx.insert(
            "apps",
            "federation-token",
            &SecretObject {
                string_data: [("token".to_string(), "eyJ.a.b".to_string())].into(),
                ..Default::default()
            },
        )
        .unwrap();
        idx
    }

    fn build(
        spec: Value,
        client_side: bool,
    ) -> Result<std::sync::Arc<dyn Generator>, GeneratorConfigError> {
        let settings = ProviderSettings {
            client_side,
            ..ProviderSettings::default()
        };
        build_generator_with("Federation", "apps", "fed", &spec, &index(), &settings)
    }

    fn ese_sample() -> Value {
        // ESE's sample (config/samples/federation/generator-client), over https.
        json!({
            "server": {"url": "https://localhost:30080"},
            "generator": {"namespace": "federation-example", "kind": "Fake", "name": "federation-generator"},
            "auth": {"tokenSecretRef": {"name": "federation-token", "key": "token"}}
        })
    }

    #[test]
    fn builds_only_client_side() {
        let e = build(ese_sample(), false).err().unwrap();
        assert!(
            matches!(e, GeneratorConfigError::ClientSideOnly { .. }),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("client of another Federation Server"),
            "{e}"
        );
        assert_eq!(build(ese_sample(), true).unwrap().kind(), "Federation");
        // The server's own check stays: Federation is not a kind it serves.
        assert!(!crate::generators::is_generator_kind("Federation"));
    }

    #[test]
    fn spec_errors_name_the_field_and_never_a_value() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"server": {"url": "https://x"}, "auth": {}}),
                "missing field `generator`",
            ),
            (
                {
                    let mut s = ese_sample();
                    s["generator"]["namespace"] = json!("Not_A_Namespace");
                    s
                },
                "generator.namespace",
            ),
            (
                {
                    let mut s = ese_sample();
                    s["generator"]["kind"] = json!("Pass/word");
                    s
                },
                "generator.kind",
            ),
            (
                {
                    let mut s = ese_sample();
                    s["generator"]["name"] = json!("");
                    s
                },
                "generator.name",
            ),
            // Review finding 9: a name a path would drop.
            (
                {
                    let mut s = ese_sample();
                    s["generator"]["name"] = json!("..");
                    s
                },
                "generator.name",
            ),
            (
                {
                    let mut s = ese_sample();
                    s["server"]["url"] = json!("http://localhost:30080");
                    s
                },
                "https://",
            ),
            (
                {
                    let mut s = ese_sample();
                    s["auth"] =
                        json!({"caCertSecretRef": {"name": "federation-token", "key": "ca.crt"}});
                    s
                },
                "token source",
            ),
            (
                {
                    let mut s = ese_sample();
                    s["auth"]["tokenSecretRf"] = json!({});
                    s
                },
                "unknown field",
            ),
        ];
        for (spec, needle) in cases {
            let e = build(spec.clone(), true).err().unwrap().to_string();
            assert!(e.starts_with("Federation apps/fed: "), "{e}");
            assert!(e.contains(needle), "{spec}: {e}");
            assert!(!e.contains("eyJ"), "{e}");
        }
        // A Secret that is not there yet is a SecretRef error (it may still arrive).
        let mut s = ese_sample();
        s["auth"]["tokenSecretRef"]["name"] = json!("later");
        assert!(matches!(
            build(s, true).err().unwrap(),
            GeneratorConfigError::SecretRef { .. }
        ));
    }

    #[test]
    fn handles_are_uuids() {
        let id = "3f0a1c5e-0000-4000-8000-000000000001";
        assert_eq!(
            handle_of(&RevocationState(json!({"credentialId": id}))).unwrap(),
            id
        );
        for bad in [
            json!({"credentialId": "../x"}),
            json!({"leaseId": id}),
            json!(null),
        ] {
            assert_eq!(
                handle_of(&RevocationState(bad)),
                Err(GeneratorError::NotRevocable)
            );
        }
    }

    #[test]
    fn expiries() {
        let now = unix_now();
        let c = Credential {
            lease_duration: Some(60),
            ..Default::default()
        };
        let at = expiry(&c).unwrap();
        assert!(at >= now + 60 && at <= now + 62);
        let c = Credential {
            expires_at: Some("2030-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert_eq!(expiry(&c), Some(1_893_456_000));
        assert_eq!(expiry(&Credential::default()), None);
    }

    /// Answers every TokenRequest with the scripted error.
    #[derive(Debug)]
    struct FailingTokens(crate::remote::TokenError);

    #[async_trait::async_trait]
    impl crate::remote::ServiceAccountTokens for FailingTokens {
        async fn token(
            &self,
            _: &str,
            _: &str,
            _: &[String],
        ) -> Result<crate::remote::Token, crate::remote::TokenError> {
            Err(self.0.clone())
        }
    }

    /// A TokenRequest that may pass is transient (`Unavailable`: retried); a refused one
    /// is definite (`Backend`).
    #[tokio::test]
    async fn token_request_failures_keep_their_class() {
        use crate::remote::TokenError;
        for (failure, transient) in [
            (TokenError::Unavailable("HTTP 503".into()), true),
            (TokenError::Refused("HTTP 403".into()), false),
        ] {
            let settings = ProviderSettings {
                service_account_tokens: Some(std::sync::Arc::new(FailingTokens(failure))),
                client_side: true,
                ..ProviderSettings::default()
            };
            let spec = json!({
                "server": {"url": "https://localhost:30080"},
                "generator": {"namespace": "federation-example", "kind": "Fake", "name": "g"},
                "auth": {"kubernetes": {"serviceAccountRef": {"name": "app", "audiences": ["https://esi"]}}}
            });
            let g = build_generator_with("Federation", "apps", "fed", &spec, &index(), &settings)
                .unwrap();
            let e = g.generate(&GenerateContext::default()).await.unwrap_err();
            if transient {
                assert!(
                    matches!(&e, GeneratorError::Unavailable(m) if m.contains("503")),
                    "{e:?}"
                );
            } else {
                assert!(
                    matches!(&e, GeneratorError::Backend(m) if m.contains("403")),
                    "{e:?}"
                );
            }
        }
    }
}
