//! A minimal Vault for lease bookkeeping, in process over plain HTTP on loopback:
//! `POST /v1/fake/creds` issues a lease (`fake/creds/<n>`, one hour, `username` `user-<n>`
//! and, if given, a fixed `password`), `PUT /v1/sys/leases/revoke` records the revoked lease
//! id (`500` while [`FakeVault::set_revocations_failing`]). For tests of who revokes what (generators, the `Federation` client, the reconciler);
//! real Vault behaviour is tested against OpenBao.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// The running fake.
pub struct FakeVault {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    revoked: Arc<Mutex<Vec<String>>>,
    issued: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl FakeVault {
    /// Leases whose data is only `username`.
    pub async fn start() -> FakeVault {
        FakeVault::serve(None).await
    }

    /// Leases whose data also holds `password`.
    pub async fn start_with_password(password: &'static str) -> FakeVault {
        FakeVault::serve(Some(password)).await
    }

    async fn serve(password: Option<&'static str>) -> FakeVault {
        use axum::routing::{post, put};
        let revoked = Arc::new(Mutex::new(Vec::new()));
        let counter = Arc::new(AtomicUsize::new(0));
        let issued = counter.clone();
        let failing = Arc::new(AtomicBool::new(false));
        let refuse = failing.clone();
        let seen = revoked.clone();
        let app = axum::Router::new()
            .route(
                "/v1/fake/creds",
                post(move || {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let mut data = json!({"username": format!("user-{n}")});
                        if let Some(p) = password {
                            data["password"] = json!(p);
                        }
                        axum::Json(json!({
                            "lease_id": format!("fake/creds/{n}"),
                            "lease_duration": 3600,
                            "data": data
                        }))
                    }
                }),
            )
            .route(
                "/v1/sys/leases/revoke",
                put(move |axum::Json(body): axum::Json<Value>| {
                    let seen = seen.clone();
                    let refuse = refuse.load(Ordering::SeqCst);
                    async move {
                        if refuse {
                            return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        seen.lock()
                            .unwrap()
                            .push(body["lease_id"].as_str().unwrap_or_default().to_string());
                        axum::http::StatusCode::NO_CONTENT
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeVault {
            url,
            revoked,
            issued,
            failing,
        }
    }

    /// Manifests of a `VaultDynamicSecret` generator `creds` in `namespace` that issues
    /// from this fake (`POST fake/creds`), with the token Secret it reads.
    pub fn generator_manifests(&self, namespace: &str) -> String {
        format!(
            r#"---
apiVersion: v1
kind: Secret
metadata: {{name: vault-token, namespace: {namespace}}}
stringData: {{token: t}}
---
apiVersion: generators.external-secrets.io/v1alpha1
kind: VaultDynamicSecret
metadata: {{name: creds, namespace: {namespace}}}
spec:
  method: POST
  path: fake/creds
  provider:
    server: {}
    auth:
      tokenSecretRef: {{name: vault-token, key: token}}
"#,
            self.url
        )
    }

    /// The revoked lease ids, sorted.
    pub fn revoked(&self) -> Vec<String> {
        let mut v = self.revoked.lock().unwrap().clone();
        v.sort();
        v
    }

    /// How many leases were issued.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    /// Whether every revocation answers `500` (and is not recorded).
    pub fn set_revocations_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// The shared list of revoked lease ids, in revocation order.
    pub fn revoked_handle(&self) -> Arc<Mutex<Vec<String>>> {
        self.revoked.clone()
    }
}
