//! End to end: the federation clients (the `externalsecrets` store provider and the
//! `Federation` generator, built through the library as the reconciler builds them) against
//! the real `esi-server` binary over HTTPS, with its `fake` store, a `Password` generator
//! and a `VaultDynamicSecret` generator on an in-test Vault that records revocations. No
//! external backend is needed.

mod common;

use std::sync::{Arc, Mutex};

use base64::Engine;
use common::fake_vault::FakeVault;
use common::*;
use esi::generators::{
    GenerateContext, Generator, GeneratorError, RevocationState, build_generator_with,
};
use esi::providers::{
    FindRequest, ProviderError, ProviderSettings, RemoteRef, SecretProvider, build_provider,
};
use esi::remote::{ServiceAccountTokens, Token, TokenError};
use esi::resources::{SecretIndex, SecretObject, SecretStoreSpec};
use serde_json::{Value, json};

const AUD: &str = "https://esi-federation.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";

/// A value with what an ESE string answer mangles or a careless client keeps: quotes,
/// backslashes, NUL and other control bytes, CR LF, DEL, multi-byte UTF-8, trailing
/// whitespace.
const AWKWARD: &str = "\"quoted\" \\back\\slash \u{0}\u{1}\u{1f}\r\n\u{7f}é€😀 \t ";

fn token(ns: &str, sa: &str) -> String {
    mint("ec-1", &sa_claims(ISS, AUD, ns, sa), None)
}

/// `text` as a YAML double-quoted scalar: every control character escaped (YAML refuses
/// them raw), the rest as it is.
fn yaml_quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The Federation Server: federation `alpha` (static keys), `apps/app` may read
/// `fake-store` (but its key `forbidden`: a Cedar `forbid`) and use `pw` and `creds`; `remote-store` is an `externalsecrets` store
/// the server must refuse.
fn start_server(vault_url: &str) -> Server {
    let config = json!({"user": "u", "pass": "p\"q\\", "port": 5432}).to_string();
    let fake_store = format!(
        r#"apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: fake-store}}
spec:
  provider:
    fake:
      data:
        - {{key: bin, value: {}}}
        - {{key: app/config, value: {}}}
        - {{key: app/other, value: other-value}}
        - {{key: forbidden, value: not-for-this-app}}
"#,
        yaml_quoted(AWKWARD),
        yaml_quoted(&config)
    );
    let manifests = vec![
        ("federation.yaml", static_federation(ISS, AUD)),
        (
            "authorization.yaml",
            r#"apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {name: allow-app}
spec:
  federationRef: {kind: KubernetesFederation, name: alpha}
  subject:
    oidc: {issuer: "https://kubernetes.default.svc.cluster.local", subject: "system:serviceaccount:apps:app"}
  allowedClusterSecretStores: [fake-store, remote-store]
  allowedGenerators:
    - {name: pw, kind: Password, namespace: apps}
    - {name: creds, kind: VaultDynamicSecret, namespace: apps}
"#
            .to_string(),
        ),
        ("fake.yaml", fake_store),
        (
            "generators.yaml",
            format!(
                r#"apiVersion: generators.external-secrets.io/v1alpha1
kind: Password
metadata: {{name: pw, namespace: apps}}
spec: {{length: 24}}
---
apiVersion: v1
kind: Secret
metadata: {{name: vault-token, namespace: apps}}
stringData: {{token: t}}
---
apiVersion: generators.external-secrets.io/v1alpha1
kind: VaultDynamicSecret
metadata: {{name: creds, namespace: apps}}
spec:
  method: POST
  path: fake/creds
  provider:
    server: {vault_url}
    auth:
      tokenSecretRef: {{name: vault-token, key: token}}
"#
            ),
        ),
        (
            "remote-store.yaml",
            r#"apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {name: remote-store}
spec:
  provider:
    externalsecrets:
      server: {url: "https://127.0.0.1:9"}
      auth:
        tokenSecretRef: {name: fed, key: token, namespace: apps}
      target: {clusterSecretStoreName: fake-store}
---
apiVersion: v1
kind: Secret
metadata: {name: fed, namespace: apps}
stringData: {token: not-a-real-token}
"#
            .to_string(),
        ),
    ];
    // One key of the store is forbidden to everyone: `get` refuses it, `find` leaves it out.
    Server::start(
        &manifests,
        &[(
            "deny-forbidden.cedar",
            r#"@id("deny-forbidden")
forbid(principal, action, resource) when { resource has key && resource.key == "forbidden" };"#,
        )],
    )
}

/// The client cluster's Secrets: `apps/fed` holds the token and the server's CA.
fn client_secrets(token: &str, ca_pem: &[u8]) -> SecretIndex {
    let mut idx = SecretIndex::default();
    idx.insert(
        "apps",
        "fed",
        &SecretObject {
            string_data: [
                ("token".to_string(), token.to_string()),
                (
                    "ca.crt".to_string(),
                    String::from_utf8(ca_pem.to_vec()).unwrap(),
                ),
                ("other-ca.crt".to_string(), test_ca().ca_pem),
            ]
            .into(),
            ..Default::default()
        },
    )
    .unwrap();
    idx
}

fn client_settings() -> ProviderSettings {
    ProviderSettings {
        client_side: true,
        ..ProviderSettings::default()
    }
}

/// A namespaced SecretStore `remote` in `apps` with `spec.provider.externalsecrets = block`.
fn store(
    block: Value,
    secrets: &SecretIndex,
    settings: &ProviderSettings,
) -> Arc<dyn SecretProvider> {
    let spec: SecretStoreSpec =
        serde_json::from_value(json!({"provider": {"externalsecrets": block}})).unwrap();
    build_provider("remote", Some("apps"), &spec, secrets, settings).unwrap()
}

fn store_block(server: &Server, ca_key: &str) -> Value {
    json!({
        "server": {"url": server.url, "caRef": {"name": "fed", "key": ca_key}},
        "auth": {"tokenSecretRef": {"name": "fed", "key": "token"}},
        "target": {"clusterSecretStoreName": "fake-store"}
    })
}

fn rr(key: &str, property: Option<&str>) -> RemoteRef {
    RemoteRef {
        key: key.into(),
        property: property.map(str::to_string),
        version: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_provider_reads_exact_bytes_through_v1() {
    let vault = FakeVault::start_with_password(AWKWARD).await;
    let server = start_server(&vault.url);
    let secrets = client_secrets(&token("apps", "app"), &server.ca_pem());
    let p = store(store_block(&server, "ca.crt"), &secrets, &client_settings());
    assert_eq!(p.kind(), "externalsecrets");

    // get: byte for byte (no quotes, no escapes, nothing trimmed).
    let v = p
        .get_secret(&p.canonical_ref(&rr("bin", None)).unwrap())
        .await
        .unwrap();
    assert_eq!(v, AWKWARD.as_bytes());
    // property.
    let v = p
        .get_secret(&p.canonical_ref(&rr("app/config", Some("pass"))).unwrap())
        .await
        .unwrap();
    assert_eq!(v, b"p\"q\\");
    // extract.
    let m = p
        .get_secret_map(&p.canonical_ref(&rr("app/config", None)).unwrap())
        .await
        .unwrap();
    assert_eq!(m["user"], b"u");
    assert_eq!(m["pass"], b"p\"q\\");
    assert_eq!(m["port"], b"5432");
    // find: only keys this identity may get (the remote decides), then the local filter.
    let all = FindRequest {
        name_regexp: Some(".*".into()),
        ..Default::default()
    };
    let found = p.find(&p.canonical_find(&all).unwrap()).await.unwrap();
    let keys: Vec<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(keys, ["app/config", "app/other", "bin"]);
    assert_eq!(found["bin"], AWKWARD.as_bytes());
    let under_app = FindRequest {
        path: Some("app/".into()),
        ..Default::default()
    };
    let found = p
        .find_allowed(&p.canonical_find(&under_app).unwrap(), &|k| {
            k != "app/other"
        })
        .await
        .unwrap();
    assert_eq!(found.keys().collect::<Vec<_>>(), ["app/config"]);
    // A key this identity may not read, and one that does not exist: the same NotFound.
    for key in ["forbidden", "app/missing"] {
        assert_eq!(
            p.get_secret(&p.canonical_ref(&rr(key, None)).unwrap())
                .await,
            Err(ProviderError::NotFound),
            "{key}"
        );
    }

    // The ESE call answers a JSON string: the shared client parses it (no quotes kept).
    let mut settings = esi::remote::RemoteSettings::new(server.url.clone());
    settings.trust.ca_pem = server.ca_pem();
    settings.trust.public_roots = false;
    let client = esi::remote::RemoteClient::new(&settings).unwrap();
    let tok = Token::new(&token("apps", "app")).unwrap();
    let v = client.ese_secret(&tok, "fake-store", "bin").await.unwrap();
    assert_eq!(v.as_str(), AWKWARD);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_provider_says_what_is_wrong() {
    let vault = FakeVault::start_with_password(AWKWARD).await;
    let server = start_server(&vault.url);
    let good = token("apps", "app");

    // A CA that did not issue the server's certificate: a TLS error that says so.
    let secrets = client_secrets(&good, &server.ca_pem());
    let p = store(
        store_block(&server, "other-ca.crt"),
        &secrets,
        &client_settings(),
    );
    let e = p
        .get_secret(&p.canonical_ref(&rr("bin", None)).unwrap())
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ProviderError::Backend(_)), "{e:?}");
    assert!(
        text.contains("TLS failure") && text.contains("does not trust"),
        "{text}"
    );
    assert!(text.contains("server.caRef"), "{text}");

    // A token the server does not accept (another audience): 401, said plainly.
    let wrong = mint(
        "ec-1",
        &sa_claims(ISS, "https://elsewhere", "apps", "app"),
        None,
    );
    let secrets = client_secrets(&wrong, &server.ca_pem());
    let p = store(store_block(&server, "ca.crt"), &secrets, &client_settings());
    let e = p
        .get_secret(&p.canonical_ref(&rr("bin", None)).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::Backend(m) if m.contains("refused the token (HTTP 401)")),
        "{e:?}"
    );
    assert!(!e.to_string().contains(&wrong[..20]), "{e}");

    // Another identity: everything is NotFound (the server reveals nothing).
    let secrets = client_secrets(&token("apps", "intruder"), &server.ca_pem());
    let p = store(store_block(&server, "ca.crt"), &secrets, &client_settings());
    assert_eq!(
        p.get_secret(&p.canonical_ref(&rr("bin", None)).unwrap())
            .await,
        Err(ProviderError::NotFound)
    );
}

/// Kubernetes mode's token source, played by the test: tokens of the asked ServiceAccount
/// with the asked audience.
#[derive(Debug, Default)]
struct Minter {
    asked: Mutex<Vec<(String, String, Vec<String>)>>,
}

#[async_trait::async_trait]
impl ServiceAccountTokens for Minter {
    async fn token(&self, ns: &str, sa: &str, audiences: &[String]) -> Result<Token, TokenError> {
        self.asked
            .lock()
            .unwrap()
            .push((ns.into(), sa.into(), audiences.to_vec()));
        let aud = audiences.first().map(String::as_str).unwrap_or("none");
        Token::new(&mint("ec-1", &sa_claims(ISS, aud, ns, sa), None))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn service_account_tokens_come_from_the_token_source() {
    let vault = FakeVault::start_with_password(AWKWARD).await;
    let server = start_server(&vault.url);
    let secrets = client_secrets("unused", &server.ca_pem());
    let block = json!({
        "server": {"url": server.url, "caBundle": base64::engine::general_purpose::STANDARD.encode(server.ca_pem())},
        "auth": {"kubernetes": {"serviceAccountRef": {"name": "app", "audiences": [AUD]}}},
        "target": {"clusterSecretStoreName": "fake-store"}
    });
    let minter = Arc::new(Minter::default());
    let settings = ProviderSettings {
        service_account_tokens: Some(minter.clone()),
        ..client_settings()
    };
    let p = store(block.clone(), &secrets, &settings);
    let v = p
        .get_secret(&p.canonical_ref(&rr("bin", None)).unwrap())
        .await
        .unwrap();
    assert_eq!(v, AWKWARD.as_bytes());
    assert_eq!(
        minter.asked.lock().unwrap().as_slice(),
        [("apps".to_string(), "app".to_string(), vec![AUD.to_string()])]
    );
    // Without a token source (--manifests mode), a clear error at use.
    let p = store(block, &secrets, &client_settings());
    let e = p
        .get_secret(&p.canonical_ref(&rr("bin", None)).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("auth.kubernetes needs Kubernetes mode"), "{e}");
}

/// Kubernetes mode: `auth.kubernetes.serviceAccountRef` tokens from the TokenRequest API
/// (the fake API server signs them with the federation's key), with the configured
/// audience, asked once and reused.
#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_mode_tokens_come_from_the_token_request_api() {
    use common::fake_kube::FakeKube;
    let vault = FakeVault::start_with_password(AWKWARD).await;
    let server = start_server(&vault.url);
    let fake = FakeKube::start().await;
    fake.sign_tokens_with_fixture(ISS, "ec-1");
    fake.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "app", "namespace": "apps"}}));
    let settings = ProviderSettings {
        service_account_tokens: Some(Arc::new(esi::remote::token_request::KubeTokenRequest::new(
            fake.client().await,
        ))),
        ..client_settings()
    };
    let secrets = client_secrets("unused", &server.ca_pem());
    let block = |sa: &str| {
        json!({
            "server": {"url": server.url, "caRef": {"name": "fed", "key": "ca.crt"}},
            "auth": {"kubernetes": {"serviceAccountRef": {"name": sa, "audiences": [AUD]}}},
            "target": {"clusterSecretStoreName": "fake-store"}
        })
    };
    let p = store(block("app"), &secrets, &settings);
    for _ in 0..2 {
        let v = p
            .get_secret(&p.canonical_ref(&rr("bin", None)).unwrap())
            .await
            .unwrap();
        assert_eq!(v, AWKWARD.as_bytes());
    }
    let asked = fake
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "POST" && r.path == "/api/v1/namespaces/apps/serviceaccounts/app/token"
        })
        .count();
    assert_eq!(asked, 1, "one token, reused");
    // A ServiceAccount the cluster does not have: the error names it and the status.
    let p = store(block("ghost"), &secrets, &settings);
    let e = p
        .get_secret(&p.canonical_ref(&rr("bin", None)).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("TokenRequest for ServiceAccount apps/ghost refused: HTTP 404"),
        "{e}"
    );
}

/// Review finding 2 at the sink: kube-core formats the namespace and name into the
/// TokenRequest path unencoded, so the token source itself refuses what is not a
/// Kubernetes name: no request with `..` or `/` in a name reaches the API server.
#[tokio::test(flavor = "multi_thread")]
async fn the_token_request_source_refuses_names_that_are_not_kubernetes_names() {
    use common::fake_kube::FakeKube;
    use esi::remote::ServiceAccountTokens;
    let fake = FakeKube::start().await;
    fake.sign_tokens_with_fixture(ISS, "ec-1");
    fake.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "admin", "namespace": "kube-system"}}));
    let source = esi::remote::token_request::KubeTokenRequest::new(fake.client().await);
    let aud = vec![AUD.to_string()];
    for (ns, sa) in [
        ("apps", "../../kube-system/serviceaccounts/admin"),
        ("apps/../kube-system", "admin"),
        ("apps", "admin/token?dryRun=All&x="),
        ("apps", ""),
    ] {
        let got = source.token(ns, sa, &aud).await;
        assert!(
            matches!(&got, Err(TokenError::Refused(m)) if m.contains("not a Kubernetes name")),
            "{ns}/{sa}: {got:?}"
        );
    }
    // Review finding 3 at the sink: no audience would be the API server's own.
    fake.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "app", "namespace": "apps"}}));
    let got = source.token("apps", "app", &[]).await;
    assert!(
        matches!(&got, Err(TokenError::Refused(m)) if m.contains("no audience")),
        "{got:?}"
    );
    let sent: Vec<String> = fake
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.contains("serviceaccounts"))
        .collect();
    assert!(sent.is_empty(), "{sent:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_refuses_an_externalsecrets_store() {
    let vault = FakeVault::start_with_password(AWKWARD).await;
    let server = start_server(&vault.url);
    server
        .wait_log(
            "the externalsecrets provider is a client of another Federation Server; this server does not serve it",
            0,
        )
        .await;
    // Not served: the same 404 as any store this identity may not read.
    let (status, body) = server
        .post(
            "/v1/secretstore/remote-store/get",
            Some(&token("apps", "app")),
            json!({"remoteRef": {"key": "bin"}}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    // The store next to it is served.
    let (status, _) = server
        .post(
            "/v1/secretstore/fake-store/get",
            Some(&token("apps", "app")),
            json!({"remoteRef": {"key": "bin"}}),
        )
        .await;
    assert_eq!(status, 200);
}

fn federation_generator(server: &Server, kind: &str, name: &str) -> Arc<dyn Generator> {
    let secrets = client_secrets(&token("apps", "app"), &server.ca_pem());
    // ESE's Federation shape (its sample, over https), plus the server's CA.
    let spec = json!({
        "server": {"url": server.url, "caRef": {"name": "fed", "key": "ca.crt"}},
        "generator": {"namespace": "apps", "kind": kind, "name": name},
        "auth": {
            "tokenSecretRef": {"name": "fed", "key": "token"},
            "caCertSecretRef": {"name": "fed", "key": "ca.crt"}
        }
    });
    build_generator_with(
        "Federation",
        "apps",
        "fed",
        &spec,
        &secrets,
        &client_settings(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_federation_generator_issues_and_revokes_by_handle() {
    let vault = FakeVault::start_with_password(AWKWARD).await;
    let server = start_server(&vault.url);
    let ctx = GenerateContext::default();

    // A revocable credential: bytes exact, a handle in the revocation state, an expiry.
    let g = federation_generator(&server, "VaultDynamicSecret", "creds");
    assert_eq!(g.kind(), "Federation");
    let out = g.generate(&ctx).await.unwrap();
    assert_eq!(out.data["username"], "user-0");
    assert_eq!(out.data["password"], AWKWARD);
    let state = out.revocation.clone().expect("a handle");
    let id = state.0["credentialId"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::try_parse(&id).is_ok(), "{id}");
    assert_eq!(state.0.as_object().unwrap().len(), 1, "only the handle");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expires = out.expires_at.unwrap();
    assert!(expires > now + 3500 && expires <= now + 3601, "{expires}");
    // The fake lease is not renewable: the remote says 409, the generator NotRenewable.
    assert_eq!(
        g.renew(&state, None).await,
        Err(GeneratorError::NotRenewable)
    );
    assert!(vault.revoked().is_empty());
    // Revoke: DELETE /v1/credentials/{id}, and the remote revoked exactly that lease.
    g.revoke(&state).await.unwrap();
    assert_eq!(vault.revoked(), ["fake/creds/0"]);
    // Gone: a second revoke succeeds without revoking anything else.
    g.revoke(&state).await.unwrap();
    assert_eq!(vault.revoked(), ["fake/creds/0"]);
    // A state that is not a handle is not this generator's.
    assert_eq!(
        g.revoke(&RevocationState(json!({"leaseId": "fake/creds/0"})))
            .await,
        Err(GeneratorError::NotRevocable)
    );

    // The ESE calls of the shared client: generate (a JSON object of strings), then
    // DELETE, which revokes what this identity was issued by that generator.
    let mut settings = esi::remote::RemoteSettings::new(server.url.clone());
    settings.trust.ca_pem = server.ca_pem();
    settings.trust.public_roots = false;
    let client = esi::remote::RemoteClient::new(&settings).unwrap();
    let tok = Token::new(&token("apps", "app")).unwrap();
    let out = client
        .ese_generate(&tok, "apps", "VaultDynamicSecret", "creds")
        .await
        .unwrap();
    assert_eq!(out["username"].as_str(), "user-1");
    assert_eq!(out["password"].as_str(), AWKWARD);
    client
        .ese_revoke(&tok, "apps", "VaultDynamicSecret", "creds")
        .await
        .unwrap();
    assert_eq!(vault.revoked(), ["fake/creds/0", "fake/creds/1"]);

    // A plain credential (Password): data, no handle.
    let g = federation_generator(&server, "Password", "pw");
    let out = g.generate(&ctx).await.unwrap();
    assert_eq!(out.data["password"].chars().count(), 24);
    assert!(out.revocation.is_none() && out.expires_at.is_none());

    // A generator this identity may not use: a clear 404 error.
    let g = federation_generator(&server, "Password", "not-granted");
    let e = g.generate(&ctx).await.err().unwrap().to_string();
    assert!(
        e.contains("has no generator apps/Password/not-granted this identity may use (HTTP 404)"),
        "{e}"
    );
}

/// The shared client against a server that misbehaves on purpose: each failure is its own
/// typed error, with no value or token in its text; the token and `ca.crt` are sent; a
/// redirect is not followed; answers and calls are bounded.
#[tokio::test(flavor = "multi_thread")]
async fn the_client_types_every_failure() {
    use axum::extract::{Path as AxPath, Request};
    use axum::response::{IntoResponse, Response};
    use esi::remote::{RemoteClient, RemoteError, RemoteSettings};
    install_crypto();
    let ca = test_ca();
    async fn answer(AxPath(store): AxPath<String>, req: Request) -> Response {
        use axum::http::StatusCode;
        let auth = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(req.into_body(), 1 << 20)
            .await
            .unwrap();
        match store.as_str() {
            "s429" => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "7")],
                "slow down",
            )
                .into_response(),
            "s503" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "\"s3cr3t in an error body\"",
            )
                .into_response(),
            "s403" => StatusCode::FORBIDDEN.into_response(),
            "s413" => StatusCode::PAYLOAD_TOO_LARGE.into_response(),
            "notb64" => axum::Json(json!({"value": "s3cr3t!"})).into_response(),
            "string" => axum::Json(json!("s3cr3t")).into_response(),
            "huge" => axum::Json(json!({"value": "A".repeat(5 << 20)})).into_response(),
            "redirect" => (
                StatusCode::FOUND,
                [("location", "https://127.0.0.1:9/steal")],
            )
                .into_response(),
            "slow" => {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                StatusCode::OK.into_response()
            }
            _ => {
                // Echo what arrived: the header and the body, base64 as the contract says.
                let echo = json!({"authorization": auth, "body": serde_json::from_slice::<Value>(&body).unwrap()});
                let b64 = base64::engine::general_purpose::STANDARD.encode(echo.to_string());
                axum::Json(json!({"value": b64})).into_response()
            }
        }
    }
    let app = axum::Router::new().route("/v1/secretstore/{store}/get", axum::routing::post(answer));
    let config = axum_server::tls_rustls::RustlsConfig::from_pem(
        ca.cert_pem.clone().into_bytes(),
        ca.key_pem.clone().into_bytes(),
    )
    .await
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum_server::from_tcp_rustls(listener, config)
            .unwrap()
            .serve(app.into_make_service())
            .await
            .unwrap();
    });
    let client_ca = test_ca().ca_pem;
    let mut settings = RemoteSettings::new(format!("https://127.0.0.1:{port}"));
    settings.trust.ca_pem = ca.ca_pem.clone().into_bytes();
    settings.trust.public_roots = false;
    settings.client_ca = Some(client_ca.clone().into_bytes());
    settings.timeout = std::time::Duration::from_secs(1);
    let client = RemoteClient::new(&settings).unwrap();
    let tok = Token::new("tok.en.value").unwrap();
    let get = |store: &'static str| {
        let client = client.clone();
        let tok = tok.clone();
        async move { client.get(&tok, store, "k", Some("p"), None).await }
    };

    // What was sent.
    let echo: Value = serde_json::from_slice(&get("echo").await.unwrap()).unwrap();
    assert_eq!(echo["authorization"], "Bearer tok.en.value");
    assert_eq!(
        echo["body"]["remoteRef"],
        json!({"key": "k", "property": "p"})
    );
    assert_eq!(
        echo["body"]["ca.crt"],
        base64::engine::general_purpose::STANDARD.encode(&client_ca)
    );

    let cases: Vec<(&'static str, RemoteError)> = vec![
        (
            "s429",
            RemoteError::RateLimited {
                retry_after: Some(std::time::Duration::from_secs(7)),
            },
        ),
        ("s503", RemoteError::Server(503)),
        ("s403", RemoteError::Forbidden),
        ("s413", RemoteError::Rejected(413)),
        ("notb64", RemoteError::Malformed("a value is not base64")),
        (
            "string",
            RemoteError::Malformed("expected {\"value\": <base64>}"),
        ),
        (
            "huge",
            RemoteError::Malformed("answer larger than the client's limit"),
        ),
        ("redirect", RemoteError::Rejected(302)),
        ("slow", RemoteError::Timeout),
    ];
    for (store, want) in cases {
        let got = get(store).await.unwrap_err();
        assert_eq!(got, want, "{store}");
        let text = got.to_string();
        assert!(
            !text.contains("s3cr3t") && !text.contains("tok.en"),
            "{text}"
        );
    }
    assert!(RemoteError::Server(503).is_transient());
}
