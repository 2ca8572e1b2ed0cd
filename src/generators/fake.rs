//! ESO's `Fake` generator: returns `spec.data` as is (tests and demos).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    BuildContext, GenerateContext, Generated, Generator, GeneratorConfigError, GeneratorError,
};

const KIND: &str = "Fake";

/// `spec` of a Fake generator.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FakeSpec {
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// Answers the configured data on every call.
pub struct FakeGenerator {
    data: BTreeMap<String, String>,
}

// Values never appear in Debug output.
impl std::fmt::Debug for FakeGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGenerator")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl FakeGenerator {
    /// Parses `spec.data`.
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        spec: &serde_json::Value,
    ) -> Result<Self, GeneratorConfigError> {
        let spec: FakeSpec = ctx.parse(KIND, spec)?;
        Ok(FakeGenerator { data: spec.data })
    }
}

#[async_trait::async_trait]
impl Generator for FakeGenerator {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn generate(&self, _ctx: &GenerateContext<'_>) -> Result<Generated, GeneratorError> {
        Ok(Generated::plain(self.data.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from_spec(spec: &serde_json::Value) -> Result<FakeGenerator, GeneratorConfigError> {
        crate::generators::test_support::with_ctx(
            "federation-example",
            "federation-generator",
            |ctx| FakeGenerator::from_spec(ctx, spec),
        )
    }

    #[tokio::test]
    async fn echoes_data() {
        let spec = json!({"data": {"username": "test-user", "password": "test-password",
            "api-key": "1234567890abcdef"}});
        let g = from_spec(&spec).unwrap();
        let out = g
            .generate(&GenerateContext::default())
            .await
            .map(|g| g.data)
            .unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out["username"], "test-user");
        assert_eq!(out["api-key"], "1234567890abcdef");
        assert!(!format!("{g:?}").contains("test-password"));
    }

    #[test]
    fn rejects_non_string_values_without_echoing() {
        let err = from_spec(&json!({"data": {"k": {"x": "sekrit"}}}))
            .err()
            .unwrap();
        assert!(!err.to_string().contains("sekrit"));
    }

    #[tokio::test]
    async fn matches_the_ese_sample() {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/ese-samples/federation-server/05-fake-generator.yaml"
        ));
        let doc: serde_json::Value = serde_saphyr::from_str(text).unwrap();
        let g = from_spec(&doc["spec"]).unwrap();
        assert_eq!(
            g.generate(&GenerateContext::default())
                .await
                .map(|g| g.data)
                .unwrap()["username"],
            "test-user"
        );
    }
}
