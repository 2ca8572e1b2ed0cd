//! Providers behind [`Metered`], the one place that records backend metrics, so
//! providers stay free of bookkeeping and every call is counted the same way.

use std::collections::BTreeMap;
use std::future::Future;

use super::{FindRequest, KeyFilter, ProviderError, RemoteRef, SecretProvider};
#[cfg(test)]
use crate::metrics::METRICS;
pub use crate::metrics::Metered;
use crate::metrics::observe_backend_call;

/// Records one provider call: `backend_calls` (kind, outcome) and `backend_latency`.
async fn observe<T>(
    kind: &'static str,
    call_name: &'static str,
    call: impl Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    observe_backend_call(
        kind,
        call_name,
        true,
        |r| match r {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        },
        call,
    )
    .await
}

#[async_trait::async_trait]
impl<P: SecretProvider> SecretProvider for Metered<P> {
    fn kind(&self) -> &'static str {
        self.inner().kind()
    }

    fn canonical_ref(&self, remote: &RemoteRef) -> Result<RemoteRef, ProviderError> {
        self.inner().canonical_ref(remote)
    }

    fn canonical_find(&self, find: &FindRequest) -> Result<FindRequest, ProviderError> {
        self.inner().canonical_find(find)
    }

    async fn get_secret(&self, remote: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
        observe(
            self.inner().kind(),
            "GetSecret",
            self.inner().get_secret(remote),
        )
        .await
    }

    async fn get_secret_map(
        &self,
        remote: &RemoteRef,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        observe(
            self.inner().kind(),
            "GetSecretMap",
            self.inner().get_secret_map(remote),
        )
        .await
    }

    async fn find_allowed(
        &self,
        find: &FindRequest,
        allow: &KeyFilter<'_>,
    ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        observe(
            self.inner().kind(),
            "GetAllSecrets",
            self.inner().find_allowed(find, allow),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing;

    #[async_trait::async_trait]
    impl SecretProvider for Failing {
        fn kind(&self) -> &'static str {
            "metered_test"
        }
        async fn get_secret(&self, _: &RemoteRef) -> Result<Vec<u8>, ProviderError> {
            Err(ProviderError::NotFound)
        }
        async fn get_secret_map(
            &self,
            _: &RemoteRef,
        ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
            Ok(BTreeMap::new())
        }
        async fn find_allowed(
            &self,
            _: &FindRequest,
            _: &KeyFilter<'_>,
        ) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
            Err(ProviderError::Timeout)
        }
    }

    #[tokio::test]
    async fn counts_outcomes_by_kind() {
        let p = Metered::new(Failing);
        let count = |outcome: &str| {
            METRICS
                .backend_calls
                .with_label_values(&["metered_test", outcome])
                .get()
        };
        let eso = |call: &str, status: &str| {
            METRICS
                .es_provider_api_calls
                .with_label_values(&["metered_test", call, status])
                .get()
        };
        let before = (count("not_found"), count("ok"), count("timeout"));
        let eso_before = (
            eso("GetSecret", "error"),
            eso("GetSecretMap", "success"),
            eso("GetAllSecrets", "error"),
        );
        let _ = p.get_secret(&RemoteRef::default()).await;
        let _ = p.get_secret_map(&RemoteRef::default()).await;
        let _ = p.find(&FindRequest::default()).await;
        assert_eq!(count("not_found"), before.0 + 1);
        assert_eq!(count("ok"), before.1 + 1);
        assert_eq!(count("timeout"), before.2 + 1);
        // ESO's names and statuses.
        assert_eq!(eso("GetSecret", "error"), eso_before.0 + 1);
        assert_eq!(eso("GetSecretMap", "success"), eso_before.1 + 1);
        assert_eq!(eso("GetAllSecrets", "error"), eso_before.2 + 1);
        let samples = METRICS
            .backend_latency
            .with_label_values(&["metered_test"])
            .get_sample_count();
        assert!(samples >= 3);
    }
}
