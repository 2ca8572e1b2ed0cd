//! Local-cluster mode: the Secrets that ExternalSecrets of this cluster manage, read
//! through the Kubernetes API with the Pod's in-cluster configuration.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};

use super::args::SecretId;
use super::error::{FetchError, SetupError};
use super::value::{SecretData, SecretValue};

/// Reads ExternalSecrets and their target Secrets in one namespace.
#[derive(Clone)]
pub struct LocalClient {
    client: kube::Client,
    namespace: String,
}

impl std::fmt::Debug for LocalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalClient")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn external_secret_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("external-secrets.io", "v1", "ExternalSecret"),
        "externalsecrets",
    )
}

/// Maps a Kubernetes API error to a cause; kube's own texts are not used for
/// deserialization errors, which can quote the body (a Secret).
fn classify(err: kube::Error, what: &str) -> FetchError {
    match err {
        kube::Error::Api(status) => match status.code {
            401 => FetchError::Unauthorized,
            403 => FetchError::Forbidden(format!(
                "the ServiceAccount may not read {what} (HTTP 403: {})",
                status.reason
            )),
            404 => FetchError::NotFound(format!("{what} does not exist")),
            429 => FetchError::RateLimited { retry_after: None },
            c @ 500..=599 => FetchError::Server(c),
            // kube reads a JSON body without a code as code 0.
            0 => FetchError::Unreachable(
                "the Kubernetes API answered an error without a status".into(),
            ),
            c => FetchError::Rejected(c),
        },
        kube::Error::HyperError(e) => FetchError::Unreachable(e.to_string()),
        kube::Error::Service(e) => FetchError::Unreachable(e.to_string()),
        kube::Error::SerdeError(_) => {
            FetchError::Malformed("the API server's answer did not decode")
        }
        _ => FetchError::Unreachable("the Kubernetes API request failed".into()),
    }
}

impl LocalClient {
    /// Uses the Pod's in-cluster configuration (service host env, token, CA).
    pub async fn in_cluster(namespace: Option<String>) -> Result<Self, SetupError> {
        let config = kube::Config::incluster().map_err(|e| {
            SetupError::Kube(format!(
                "no in-cluster configuration ({e}); outside a Pod, use --federated-server-url"
            ))
        })?;
        let ns = namespace.unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config).map_err(|e| SetupError::Kube(e.to_string()))?;
        Ok(Self::new(client, ns))
    }

    /// Wraps a client (tests give one over a mock service).
    pub fn new(client: kube::Client, namespace: String) -> Self {
        Self { client, namespace }
    }

    /// One attempt: the ExternalSecret, then the Secret it manages
    /// (`spec.target.name`, else the ExternalSecret's own name).
    pub async fn fetch_once(&self, id: &SecretId) -> Result<SecretData, FetchError> {
        let SecretId::Local(name) = id else {
            return Err(FetchError::Malformed(
                "a federated secret asked of the cluster",
            ));
        };
        let ns = &self.namespace;
        let es_api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &external_secret_resource());
        let es = es_api
            .get(name)
            .await
            .map_err(|e| classify(e, &format!("ExternalSecret {ns}/{name}")))?;
        let target = es
            .data
            .get("spec")
            .and_then(|s| s.get("target"))
            .and_then(|t| t.get("name"))
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(name)
            .to_string();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let secret = secrets.get(&target).await.map_err(|e| {
            classify(
                e,
                &format!("Secret {ns}/{target} (managed by ExternalSecret {name}; has it synced?)"),
            )
        })?;
        let keys: BTreeMap<String, SecretValue> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, SecretValue::new(v.0)))
            .collect();
        Ok(SecretData::from_keys(keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use kube::client::Body;
    use serde_json::{Value, json};
    use std::sync::{Arc, Mutex};

    /// A Kubernetes API server in a closure: answers canned objects by path and records
    /// every request path (kube-rs's mock-service pattern).
    fn mock(objects: Vec<(&'static str, u16, Value)>) -> (kube::Client, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let svc = tower::service_fn(move |req: http::Request<Body>| {
            let path = req.uri().path().to_string();
            log.lock().unwrap().push(path.clone());
            let (status, body) = objects
                .iter()
                .find(|(p, _, _)| *p == path)
                .map(|(_, s, b)| (*s, b.clone()))
                .unwrap_or((
                    404,
                    json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"}),
                ));
            let resp = http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            async move { Ok::<_, std::convert::Infallible>(resp) }
        });
        (kube::Client::new(svc, "apps"), seen)
    }

    fn es(name: &str, target: Option<&str>) -> Value {
        let mut spec = json!({"secretStoreRef": {"name": "vault", "kind": "ClusterSecretStore"}});
        if let Some(t) = target {
            spec["target"] = json!({"name": t});
        }
        json!({
            "apiVersion": "external-secrets.io/v1",
            "kind": "ExternalSecret",
            "metadata": {"name": name, "namespace": "apps"},
            "spec": spec
        })
    }

    fn secret(name: &str, data: &[(&str, &str)]) -> Value {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), json!(b64(v))))
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "apps"},
            "data": data
        })
    }

    #[tokio::test]
    async fn reads_the_target_secret_of_an_external_secret() {
        let (client, seen) = mock(vec![
            (
                "/apis/external-secrets.io/v1/namespaces/apps/externalsecrets/db",
                200,
                es("db", Some("db-synced")),
            ),
            (
                "/api/v1/namespaces/apps/secrets/db-synced",
                200,
                secret("db-synced", &[("password", "pa55"), ("tls.crt", "CERT")]),
            ),
            (
                "/apis/external-secrets.io/v1/namespaces/apps/externalsecrets/plain",
                200,
                es("plain", None),
            ),
            (
                "/api/v1/namespaces/apps/secrets/plain",
                200,
                secret("plain", &[("k", "v")]),
            ),
        ]);
        let local = LocalClient::new(client, "apps".into());
        let d = local
            .fetch_once(&SecretId::Local("db".into()))
            .await
            .unwrap();
        assert_eq!(d.keys["password"].as_str(), Some("pa55"));
        assert_eq!(d.keys["tls.crt"].as_str(), Some("CERT"));
        assert!(d.raw.is_none());
        // Without spec.target.name the Secret has the ExternalSecret's name.
        let d = local
            .fetch_once(&SecretId::Local("plain".into()))
            .await
            .unwrap();
        assert_eq!(d.keys["k"].as_str(), Some("v"));
        let paths = seen.lock().unwrap().clone();
        assert_eq!(
            paths,
            vec![
                "/apis/external-secrets.io/v1/namespaces/apps/externalsecrets/db",
                "/api/v1/namespaces/apps/secrets/db-synced",
                "/apis/external-secrets.io/v1/namespaces/apps/externalsecrets/plain",
                "/api/v1/namespaces/apps/secrets/plain",
            ]
        );
    }

    #[tokio::test]
    async fn missing_objects_and_refusals_are_named() {
        let forbidden = json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,"message":"secrets is forbidden"});
        let (client, _) = mock(vec![
            (
                "/apis/external-secrets.io/v1/namespaces/apps/externalsecrets/unsynced",
                200,
                es("unsynced", None),
            ),
            (
                "/apis/external-secrets.io/v1/namespaces/apps/externalsecrets/denied",
                200,
                es("denied", None),
            ),
            ("/api/v1/namespaces/apps/secrets/denied", 403, forbidden),
            (
                "/apis/external-secrets.io/v1/namespaces/apps/externalsecrets/broken",
                503,
                json!("upstream down"),
            ),
        ]);
        let local = LocalClient::new(client, "apps".into());
        let e = local
            .fetch_once(&SecretId::Local("nope".into()))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            FetchError::NotFound("ExternalSecret apps/nope does not exist".into())
        );
        let e = local
            .fetch_once(&SecretId::Local("unsynced".into()))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("Secret apps/unsynced") && e.to_string().contains("synced"),
            "{e}"
        );
        let e = local
            .fetch_once(&SecretId::Local("denied".into()))
            .await
            .unwrap_err();
        assert!(matches!(e, FetchError::Forbidden(_)), "{e:?}");
        let e = local
            .fetch_once(&SecretId::Local("broken".into()))
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e:?}");
    }

    #[tokio::test]
    async fn init_plan_end_to_end_over_the_mock() {
        use crate::cli::args::{Args, Plan};
        use crate::cli::fetch::Fetcher;
        use clap::Parser;
        let (client, _) = mock(vec![
            (
                "/apis/external-secrets.io/v1/namespaces/apps/externalsecrets/db",
                200,
                es("db", Some("db-synced")),
            ),
            (
                "/api/v1/namespaces/apps/secrets/db-synced",
                200,
                secret("db-synced", &[("db-password", "pa55"), ("user", "app")]),
            ),
        ]);
        let plan = Plan::from_args(
            &Args::try_parse_from([
                "esi-cli",
                "--mode=init",
                "--namespace=apps",
                "--binary-path=/bin/true",
                "--external-secrets=db",
                "--inject-on-env=LOGIN=db.user",
            ])
            .unwrap(),
        )
        .unwrap();
        let fetcher = Fetcher::Local(LocalClient::new(client, "apps".into()));
        let ids = plan.secrets().unwrap();
        let results = fetcher
            .fetch_all(&ids, std::time::Duration::from_secs(5))
            .await;
        let inj = crate::cli::inject::assemble(&plan, &results, &ids).unwrap();
        let env: Vec<(String, Option<String>)> = inj
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string)))
            .collect();
        assert!(
            env.contains(&("DB_PASSWORD".into(), Some("pa55".into()))),
            "{env:?}"
        );
        assert!(env.contains(&("USER".into(), Some("app".into()))));
        assert!(env.contains(&("LOGIN".into(), Some("app".into()))));
    }
}
