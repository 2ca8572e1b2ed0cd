//! ESO's `ClusterGenerator`: a cluster-scoped wrapper around any namespaced kind.
//!
//! ```yaml
//! kind: ClusterGenerator
//! metadata: {name: my-generator}      # no namespace
//! spec:
//!   kind: Password
//!   generator:
//!     passwordSpec: {length: 42}
//! ```
//! The spec key of each kind is ESO's (`passwordSpec`, `sshKeySpec`, …); exactly the one
//! matching `kind` must be set. Secret references inside the wrapped spec are resolved
//! as for a ClusterSecretStore: they must name their namespace.

use std::sync::Arc;

use serde::Deserialize;

use super::{
    BuildContext, CLUSTER_GENERATOR, GenerateContext, Generated, Generator, GeneratorConfigError,
    GeneratorError, Renewed, RevocationState,
};

/// `spec` of a ClusterGenerator.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClusterGeneratorSpec {
    kind: String,
    #[serde(default)]
    generator: serde_json::Map<String, serde_json::Value>,
}

/// Serves the wrapped generator; revocation goes to it as well.
pub struct ClusterGenerator {
    inner: Arc<dyn Generator>,
}

impl std::fmt::Debug for ClusterGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterGenerator")
            .field("kind", &self.inner.kind())
            .finish()
    }
}

impl ClusterGenerator {
    /// Parses `spec.kind` and builds the wrapped kind from its `spec.generator` key.
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        spec: &serde_json::Value,
    ) -> Result<Self, GeneratorConfigError> {
        let spec: ClusterGeneratorSpec = ctx.parse(CLUSTER_GENERATOR, spec)?;
        let Some(key) = super::namespaced_kind(&spec.kind).map(|e| e.cluster_spec_key) else {
            return Err(ctx.invalid(
                CLUSTER_GENERATOR,
                "spec.kind names no generator kind ClusterGenerator can wrap",
            ));
        };
        if let Some(other) = spec.generator.keys().find(|k| k.as_str() != key) {
            return Err(ctx.invalid(
                CLUSTER_GENERATOR,
                format!(
                    "spec.generator.{other} does not match spec.kind {}",
                    spec.kind
                ),
            ));
        }
        let inner_spec = spec
            .generator
            .get(key)
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let inner = super::build(ctx, &spec.kind, &inner_spec).map_err(|e| match e {
            // This build may not serve every kind ESO can wrap.
            GeneratorConfigError::UnknownKind { kind } => ctx.invalid(
                CLUSTER_GENERATOR,
                format!("spec.kind {kind} is not supported by this server yet"),
            ),
            other => other,
        })?;
        Ok(ClusterGenerator { inner })
    }
}

#[async_trait::async_trait]
impl Generator for ClusterGenerator {
    /// The wrapped kind: metrics and audit name the backend doing the work.
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn generate(&self, ctx: &GenerateContext<'_>) -> Result<Generated, GeneratorError> {
        self.inner.generate(ctx).await
    }

    async fn revoke(&self, state: &RevocationState) -> Result<(), GeneratorError> {
        self.inner.revoke(state).await
    }

    async fn renew(
        &self,
        state: &RevocationState,
        increment: Option<u64>,
    ) -> Result<Renewed, GeneratorError> {
        self.inner.renew(state, increment).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A generator that renews by a fixed 60 s.
    struct Renewing;

    #[async_trait::async_trait]
    impl Generator for Renewing {
        fn kind(&self) -> &'static str {
            "Renewing"
        }
        async fn generate(&self, _: &GenerateContext<'_>) -> Result<Generated, GeneratorError> {
            Err(GeneratorError::Random)
        }
        async fn renew(
            &self,
            _: &RevocationState,
            _: Option<u64>,
        ) -> Result<Renewed, GeneratorError> {
            Ok(Renewed {
                expires_at: 60,
                renewable: true,
            })
        }
    }

    /// Every call of the trait reaches the wrapped generator (a wrapper that forgot one
    /// answered the trait's default: renewals of cluster generators were refused).
    #[tokio::test]
    async fn renewals_reach_the_wrapped_generator() {
        let g = ClusterGenerator {
            inner: Arc::new(Renewing),
        };
        let state = RevocationState(json!({"leaseId": "x"}));
        assert_eq!(
            g.renew(&state, None).await,
            Ok(Renewed {
                expires_at: 60,
                renewable: true
            })
        );
    }

    fn build(spec: serde_json::Value) -> Result<ClusterGenerator, GeneratorConfigError> {
        crate::generators::test_support::with_ctx("", "cg", |ctx| {
            ClusterGenerator::from_spec(ctx, &spec)
        })
    }

    #[tokio::test]
    async fn wraps_the_eso_sample() {
        let g = build(json!({"kind": "Password", "generator": {"passwordSpec": {
            "length": 42, "digits": 5, "symbols": 5, "symbolCharacters": "-_$@",
            "noUpper": false, "allowRepeat": true}}}))
        .unwrap();
        assert_eq!(g.kind(), "Password");
        let out = g.generate(&GenerateContext::default()).await.unwrap();
        assert_eq!(out.data["password"].len(), 42);
    }

    #[tokio::test]
    async fn wraps_other_kinds() {
        let g = build(json!({"kind": "UUID", "generator": {"uuidSpec": {}}})).unwrap();
        assert_eq!(g.kind(), "UUID");
        let g = build(json!({"kind": "Fake", "generator": {"fakeSpec": {"data": {"a": "b"}}}}))
            .unwrap();
        let out = g.generate(&GenerateContext::default()).await.unwrap();
        assert_eq!(out.data["a"], "b");
        // The wrapped spec may be omitted when the kind needs none.
        assert!(build(json!({"kind": "UUID"})).is_ok());
    }

    #[test]
    fn rejects_mismatch_and_unknown_kinds() {
        for spec in [
            json!({"kind": "Password", "generator": {"uuidSpec": {}}}),
            json!({"kind": "Password", "generator": {"passwordSpec": {}, "uuidSpec": {}}}),
            json!({"kind": "Nope", "generator": {}}),
            json!({"kind": "ClusterGenerator", "generator": {}}),
            json!({"generator": {"passwordSpec": {}}}),
            json!({"kind": "Password", "generator": {"passwordSpec": {"length": 0}}}),
        ] {
            assert!(build(spec.clone()).is_err(), "{spec}");
        }
        // Every kind ESO can wrap is served now: the wrapped spec's own errors show.
        let err = build(json!({"kind": "Webhook", "generator": {"webhookSpec": {}}}))
            .err()
            .unwrap();
        assert!(err.to_string().contains("missing field `url`"), "{err}");
    }
}
