//! What the AWS generators (`STSSessionToken`, `ECRAuthorizationToken`) add to the AWS
//! client they share with the `aws` store provider ([`crate::providers::aws::client`]:
//! ESO's `spec.region` / `spec.auth.secretRef` / `spec.role`, the `endpoint` and
//! `stsEndpoint` extensions, SigV4 signing, AssumeRole, error mapping): the generator's
//! error types, and a role session named after the workload.
//!
//! ```yaml
//! spec:
//!   region: eu-west-1
//!   role: arn:aws:iam::123456789012:role/ci   # optional: AssumeRole first (as ESO does)
//!   auth:
//!     secretRef:
//!       accessKeyIDSecretRef: {name: aws, key: access-key-id}
//!       secretAccessKeySecretRef: {name: aws, key: secret-access-key}
//!       sessionTokenSecretRef: {name: aws, key: session-token}   # optional
//!   endpoint: https://sts.eu-west-1.amazonaws.com   # extension: service endpoint
//!   stsEndpoint: https://sts.eu-west-1.amazonaws.com  # extension: where AssumeRole goes
//! ```
//! Credentials come only from `auth.secretRef`: ESO's fallbacks (the controller's own
//! environment, IRSA via `auth.jwt`) would hand this server's identity to whoever writes a
//! generator, so they are refused. Error messages carry AWS's error code, never its
//! message (which can echo request parts), nor keys or signatures.

use reqwest::Url;

use super::{BuildContext, GenerateContext, GeneratorConfigError, GeneratorError};
pub(crate) use crate::providers::aws::client::{
    AwsClient, AwsCommonSpec, AwsConfigError, AwsError, AwsErrorKind, Credentials, form_body,
    parse_sts_credentials, service_endpoint,
};

impl From<AwsError> for GeneratorError {
    fn from(e: AwsError) -> Self {
        match e.kind {
            AwsErrorKind::Timeout | AwsErrorKind::Unavailable => {
                GeneratorError::Unavailable(e.message)
            }
            AwsErrorKind::NotFound | AwsErrorKind::Backend => GeneratorError::Backend(e.message),
        }
    }
}

/// Builds the shared client for generator `kind` from its spec, resolving the credentials
/// in the generator's namespace. `default_sts` is the STS endpoint when `stsEndpoint` is
/// not set.
pub(crate) fn client(
    ctx: &BuildContext<'_>,
    kind: &'static str,
    spec: &AwsCommonSpec,
    default_sts: Option<Url>,
) -> Result<AwsClient, GeneratorConfigError> {
    AwsClient::from_spec(
        kind,
        spec,
        ctx.secrets,
        ctx.owner_namespace(),
        ctx.settings.timeout,
        default_sts,
    )
    .map_err(|e| match e {
        AwsConfigError::Invalid(reason) => ctx.invalid(kind, reason),
        AwsConfigError::SecretRef { field, source } => ctx.secret_ref_error(kind, field, &source),
    })
}

/// The credentials to sign the generator's call with: the static ones, or, with a role,
/// fresh ones from STS AssumeRole in a session named after the workload.
pub(crate) async fn credentials(
    client: &AwsClient,
    ctx: &GenerateContext<'_>,
) -> Result<Credentials, GeneratorError> {
    Ok(client.credentials(&session_name(ctx)).await?)
}

/// An STS role session name for the workload: `esi-<namespace>-<serviceaccount>` (an OIDC
/// subject: `esi-<federation>-<subject>`), restricted to STS's characters and 64 bytes, so
/// CloudTrail shows who.
pub(crate) fn session_name(ctx: &GenerateContext<'_>) -> String {
    let raw = match ctx.workload {
        Some(id) => match id.service_account() {
            Some(sa) => format!("esi-{}-{}", sa.namespace, sa.name),
            None => format!("esi-{}-{}", id.federation, id.subject),
        },
        None => "esi-federation".to_string(),
    };
    crate::providers::aws::client::session_name(&raw)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::authn::Identity;
    use crate::providers::ProviderSettings;
    pub use crate::providers::aws::client::tests::{auth, secrets};
    use serde_json::json;

    /// Runs `f` with a BuildContext over [`secrets`].
    pub fn with_ctx<T>(namespace: &str, f: impl FnOnce(&BuildContext<'_>) -> T) -> T {
        let secrets = secrets();
        let settings = ProviderSettings::default();
        f(&BuildContext {
            namespace,
            name: "gen",
            secrets: &secrets,
            settings: &settings,
        })
    }

    fn build(namespace: &str, spec: serde_json::Value) -> Result<AwsClient, GeneratorConfigError> {
        with_ctx(namespace, |ctx| {
            let spec: AwsCommonSpec = ctx.parse("STSSessionToken", &spec)?;
            client(ctx, "STSSessionToken", &spec, None)
        })
    }

    #[test]
    fn config_errors_are_generator_errors_without_values() {
        let c = build("ns", json!({"region": "eu-west-1", "auth": auth()})).unwrap();
        assert_eq!(c.region(), "eu-west-1");
        for (spec, needle) in [
            (json!({"auth": auth()}), "invalid spec: region is required"),
            (
                json!({"region": "us-east-1", "auth": {"secretRef": {
                    "accessKeyIDSecretRef": {"name": "aws", "key": "bad"},
                    "secretAccessKeySecretRef": {"name": "aws", "key": "secret"}}}}),
                "not printable ASCII",
            ),
            (
                json!({"region": "us-east-1", "auth": {"secretRef": {
                    "accessKeyIDSecretRef": {"name": "aws", "key": "id", "namespace": "other"},
                    "secretAccessKeySecretRef": {"name": "aws", "key": "secret"}}}}),
                "names namespace \"other\", not its object's",
            ),
        ] {
            let err = build("ns", spec).err().unwrap();
            assert!(
                matches!(err, GeneratorConfigError::InvalidSpec { .. }),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(needle), "{msg} lacks {needle}");
            assert!(!msg.contains("two words"), "{msg}");
        }
        // A Secret that may still arrive is a SecretRef error (retried), not a bad spec.
        let err = build(
            "ns",
            json!({"region": "us-east-1", "auth": {"secretRef": {
                "accessKeyIDSecretRef": {"name": "aws", "key": "missing"},
                "secretAccessKeySecretRef": {"name": "aws", "key": "secret"}}}}),
        )
        .err()
        .unwrap();
        assert!(
            matches!(err, GeneratorConfigError::SecretRef { .. })
                && err.to_string().contains("has no key"),
            "{err}"
        );
    }

    #[test]
    fn aws_errors_map_to_generator_errors() {
        let e = |kind| AwsError {
            kind,
            message: "m".into(),
        };
        assert_eq!(
            GeneratorError::from(e(AwsErrorKind::Timeout)),
            GeneratorError::Unavailable("m".into())
        );
        assert_eq!(
            GeneratorError::from(e(AwsErrorKind::NotFound)),
            GeneratorError::Backend("m".into())
        );
    }

    #[test]
    fn session_names_follow_sts_rules() {
        assert_eq!(session_name(&GenerateContext::default()), "esi-federation");
        let id = Identity::of_service_account("f", "i", "team-a", "builder:x");
        let ctx = GenerateContext {
            workload: Some(&id),
        };
        assert_eq!(session_name(&ctx), "esi-team-a-builder-x");
        let long = Identity::of_service_account("f", "i", &"n".repeat(80), "x");
        assert_eq!(
            session_name(&GenerateContext {
                workload: Some(&long)
            })
            .len(),
            64
        );
        let ci = Identity::of_oidc_subject("github", "i", "repo:org/app:ref:refs/heads/main", &[]);
        assert_eq!(
            session_name(&GenerateContext {
                workload: Some(&ci)
            }),
            "esi-github-repo-org-app-ref-refs-heads-main"
        );
    }
}
