//! ESO's `UUID` generator: `{"uuid": "<v4>"}`.

use serde::Deserialize;

use super::{
    BuildContext, GenerateContext, Generated, Generator, GeneratorConfigError, GeneratorError,
};

const KIND: &str = "UUID";

/// `spec` of a UUID generator: ESO defines no fields.
#[derive(Deserialize)]
struct UuidSpec {}

/// Produces a random (v4) UUID per call.
#[derive(Debug)]
pub struct UuidGenerator;

impl UuidGenerator {
    /// Parses the (empty) spec.
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        spec: &serde_json::Value,
    ) -> Result<Self, GeneratorConfigError> {
        let _: UuidSpec = ctx.parse(KIND, spec)?;
        Ok(UuidGenerator)
    }
}

#[async_trait::async_trait]
impl Generator for UuidGenerator {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn generate(&self, _ctx: &GenerateContext<'_>) -> Result<Generated, GeneratorError> {
        Ok(Generated::plain(
            [("uuid".to_string(), ::uuid::Uuid::new_v4().to_string())].into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn generates_distinct_v4_uuids() {
        let g = crate::generators::test_support::with_ctx("ns", "u", |ctx| {
            UuidGenerator::from_spec(ctx, &serde_json::json!({}))
        })
        .unwrap();
        let a = g
            .generate(&GenerateContext::default())
            .await
            .map(|g| g.data)
            .unwrap();
        let b = g
            .generate(&GenerateContext::default())
            .await
            .map(|g| g.data)
            .unwrap();
        assert_eq!(a.len(), 1);
        let parsed = ::uuid::Uuid::parse_str(&a["uuid"]).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_ne!(a["uuid"], b["uuid"]);
    }
}
