//! Generators (`generators.external-secrets.io/v1alpha1`): produce a fresh credential
//! per call. Each kind lives in its own file and parses its own `spec` (ESO field names);
//! [`Metered`] is the one place that records backend metrics for them.

mod fake;
mod password;
mod uuid;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::config::SecretIndex;
use crate::metrics::METRICS;

pub use fake::FakeGenerator;
pub use password::PasswordGenerator;
pub use uuid::UuidGenerator;

/// A generator kind, as ESE serves it.
#[async_trait::async_trait]
pub trait Generator: Send + Sync {
    /// The generator kind (`Fake`, `Password`, `UUID`), used as a metrics label.
    fn kind(&self) -> &'static str;
    /// Produce a new credential as a map of strings (the ESE answer body).
    async fn generate(&self) -> Result<BTreeMap<String, String>, GeneratorError>;
}

/// A failed generation. Messages never hold generated values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeneratorError {
    /// The operating system's random source failed.
    #[error("random source unavailable")]
    Random,
    /// The requested output cannot be produced (e.g. no repeats left to draw from).
    #[error("cannot generate: {0}")]
    Impossible(String),
}

impl GeneratorError {
    /// A short stable name of the variant (metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            GeneratorError::Random => "random",
            GeneratorError::Impossible(_) => "impossible",
        }
    }
}

/// A generator object that cannot be built. Messages name fields, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeneratorConfigError {
    /// This build does not know the kind.
    #[error("unknown generator kind {kind:?}")]
    UnknownKind {
        /// The kind asked for.
        kind: String,
    },
    /// The spec is missing or malformed.
    #[error("{kind} {namespace}/{name}: invalid spec: {reason}")]
    InvalidSpec {
        /// Generator kind.
        kind: &'static str,
        /// Generator namespace.
        namespace: String,
        /// Generator name.
        name: String,
        /// What is wrong (field names only).
        reason: String,
    },
}

/// The kinds this build knows.
const KINDS: [&str; 3] = ["Fake", "Password", "UUID"];

/// True for the generator kinds this build knows: `Fake`, `Password`, `UUID`.
pub fn is_generator_kind(kind: &str) -> bool {
    KINDS.contains(&kind)
}

/// What a generator's constructor needs to report errors.
pub(crate) struct BuildContext<'a> {
    /// Generator namespace.
    pub namespace: &'a str,
    /// Generator name.
    pub name: &'a str,
}

impl BuildContext<'_> {
    /// An `InvalidSpec` error for this generator.
    pub fn invalid(&self, kind: &'static str, reason: impl Into<String>) -> GeneratorConfigError {
        GeneratorConfigError::InvalidSpec {
            kind,
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            reason: reason.into(),
        }
    }

    /// Parses `spec` (null counts as `{}`), with a value-free message on error.
    pub fn parse<T: serde::de::DeserializeOwned>(
        &self,
        kind: &'static str,
        spec: &serde_json::Value,
    ) -> Result<T, GeneratorConfigError> {
        let spec = if spec.is_null() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            spec.clone()
        };
        serde_json::from_value(spec)
            .map_err(|e| self.invalid(kind, crate::providers::safe_serde_message(&e)))
    }
}

/// Builds a generator from its object's `spec`. `secrets` resolves `…SecretRef`s of
/// kinds that have them (none of this build's kinds do).
pub fn build_generator(
    kind: &str,
    namespace: &str,
    name: &str,
    spec: &serde_json::Value,
    secrets: &SecretIndex,
) -> Result<Arc<dyn Generator>, GeneratorConfigError> {
    let _ = secrets;
    let ctx = BuildContext { namespace, name };
    let generator: Arc<dyn Generator> = match kind {
        "Fake" => Arc::new(Metered::new(FakeGenerator::from_spec(&ctx, spec)?)),
        "Password" => Arc::new(Metered::new(PasswordGenerator::from_spec(&ctx, spec)?)),
        "UUID" => Arc::new(Metered::new(UuidGenerator::from_spec(&ctx, spec)?)),
        other => {
            return Err(GeneratorConfigError::UnknownKind {
                kind: other.to_string(),
            });
        }
    };
    Ok(generator)
}

/// Wraps a generator and records `backend_calls` (kind, outcome) and `backend_latency`.
pub struct Metered<G> {
    inner: G,
}

impl<G: Generator> Metered<G> {
    /// Wraps `inner`.
    pub fn new(inner: G) -> Self {
        Metered { inner }
    }
}

#[async_trait::async_trait]
impl<G: Generator> Generator for Metered<G> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn generate(&self) -> Result<BTreeMap<String, String>, GeneratorError> {
        let kind = self.inner.kind();
        let start = Instant::now();
        let result = self.inner.generate().await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        METRICS
            .backend_calls
            .with_label_values(&[kind, outcome])
            .inc();
        METRICS
            .backend_latency
            .with_label_values(&[kind])
            .observe(start.elapsed().as_secs_f64());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(
        kind: &str,
        spec: serde_json::Value,
    ) -> Result<Arc<dyn Generator>, GeneratorConfigError> {
        build_generator(kind, "ns", "gen", &spec, &SecretIndex::default())
    }

    #[test]
    fn knows_its_kinds() {
        for kind in ["Fake", "Password", "UUID"] {
            assert!(is_generator_kind(kind));
            assert_eq!(build(kind, json!(null)).unwrap().kind(), kind);
        }
        assert!(!is_generator_kind("password"));
        assert!(!is_generator_kind("VaultDynamicSecret"));
        assert_eq!(
            build("SSHKey", json!({})).err(),
            Some(GeneratorConfigError::UnknownKind {
                kind: "SSHKey".into()
            })
        );
    }

    #[tokio::test]
    async fn metered_counts_calls() {
        let g = build("UUID", json!({})).unwrap();
        let counter = METRICS.backend_calls.with_label_values(&["UUID", "ok"]);
        let before = counter.get();
        g.generate().await.unwrap();
        assert!(counter.get() > before);
    }

    #[test]
    fn spec_errors_name_the_object() {
        let err = build("Password", json!({"length": "long"})).err().unwrap();
        let msg = err.to_string();
        assert!(msg.starts_with("Password ns/gen: invalid spec"), "{msg}");
        assert!(!msg.contains("long"), "{msg}");
    }
}
