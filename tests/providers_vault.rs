//! The vault provider against a real OpenBao dev server.
//!
//! Start one with `scripts/openbao.sh start`, then
//! `source target/test-backends/openbao.env` and run `cargo test --test providers_vault`.
//! Without that environment the tests print a "skipped" line and pass, unless
//! `ESI_REQUIRE_BACKENDS=1` is set, which turns a missing backend into a failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use esi::providers::{
    FindRequest, ProviderError, ProviderSettings, RemoteRef, SecretProvider, build_provider,
};
use esi::resources::SecretIndex;
use esi::resources::{SecretObject, SecretStoreSpec};
use serde_json::{Value, json};

struct Backend {
    addr: String,
    token: String,
    role_id: String,
    secret_id: String,
    http: reqwest::Client,
}

/// The OpenBao under test, or None (after saying why) when it is not configured.
fn backend() -> Option<Backend> {
    let vars = [
        "ESI_TEST_VAULT_ADDR",
        "ESI_TEST_VAULT_TOKEN",
        "ESI_TEST_APPROLE_ROLE_ID",
        "ESI_TEST_APPROLE_SECRET_ID",
    ];
    let values: Vec<Option<String>> = vars
        .iter()
        .map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .collect();
    if values.iter().any(Option::is_none) {
        let missing: Vec<&str> = vars
            .iter()
            .zip(&values)
            .filter(|(_, v)| v.is_none())
            .map(|(n, _)| *n)
            .collect();
        if std::env::var("ESI_REQUIRE_BACKENDS").as_deref() == Ok("1") {
            panic!(
                "ESI_REQUIRE_BACKENDS=1 but {missing:?} are unset: run scripts/openbao.sh start and source target/test-backends/openbao.env"
            );
        }
        eprintln!(
            "skipped: {missing:?} unset; start scripts/openbao.sh and source target/test-backends/openbao.env"
        );
        return None;
    }
    let mut values = values.into_iter().flatten();
    // reqwest is built without a default crypto provider; plain http needs none, but the
    // builder still asks for one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Some(Backend {
        addr: values.next()?,
        token: values.next()?,
        role_id: values.next()?,
        secret_id: values.next()?,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .ok()?,
    })
}

/// A fresh prefix so runs against a long-lived server do not collide.
fn prefix() -> String {
    format!("esi-test-{}", uuid::Uuid::new_v4().simple())
}

impl Backend {
    /// A raw call with the root token; panics on an unexpected status.
    async fn call(&self, method: &str, path: &str, ns: Option<&str>, body: Option<Value>) -> Value {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.token);
        if let Some(ns) = ns {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{path}: HTTP {status}: {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    async fn put_v2(&self, ns: Option<&str>, path: &str, data: Value) {
        self.call(
            "POST",
            &format!("secret/data/{path}"),
            ns,
            Some(json!({"data": data})),
        )
        .await;
    }

    async fn tag_v2(&self, path: &str, tags: Value) {
        self.call(
            "POST",
            &format!("secret/metadata/{path}"),
            None,
            Some(json!({"custom_metadata": tags})),
        )
        .await;
    }

    fn secrets(&self) -> SecretIndex {
        let mut idx = SecretIndex::default();
        idx.insert(
            "eso",
            "vault",
            &SecretObject {
                string_data: [
                    ("token".to_string(), self.token.clone()),
                    ("role-id".to_string(), self.role_id.clone()),
                    ("secret-id".to_string(), self.secret_id.clone()),
                    ("bad-secret-id".to_string(), "not-a-secret-id".to_string()),
                    ("bad-token".to_string(), "not-a-token".to_string()),
                ]
                .into(),
                ..Default::default()
            },
        )
        .unwrap();
        idx
    }

    fn provider(&self, mut vault: Value) -> Arc<dyn SecretProvider> {
        self.provider_with(&mut vault, ProviderSettings::default())
    }

    fn provider_with(
        &self,
        vault: &mut Value,
        settings: ProviderSettings,
    ) -> Arc<dyn SecretProvider> {
        if vault.get("server").is_none() {
            vault["server"] = json!(self.addr);
        }
        if vault.get("auth").is_none() {
            vault["auth"] =
                json!({"tokenSecretRef": {"name": "vault", "key": "token", "namespace": "eso"}});
        }
        let spec: SecretStoreSpec =
            serde_json::from_value(json!({"provider": {"vault": vault}})).unwrap();
        build_provider("vault-backend", None, &spec, &self.secrets(), &settings).unwrap()
    }
}

fn rr(key: &str, property: Option<&str>, version: Option<&str>) -> RemoteRef {
    RemoteRef {
        key: key.to_string(),
        property: property.map(str::to_string),
        version: version.map(str::to_string),
    }
}

#[tokio::test]
async fn kv_v2_reads_whole_property_dotted_and_versions() {
    let Some(b) = backend() else { return };
    let p = prefix();
    let key = format!("{p}/db");
    b.put_v2(None, &key, json!({"user": "alice", "n": 1})).await;
    let latest = json!({"user": "bob", "n": 5, "nested": {"a": {"b": "deep"}}, "a.b": "exact", "flag": true});
    b.put_v2(None, &key, latest.clone()).await;

    let store = b.provider(json!({"path": "secret", "version": "v2"}));
    let whole = store.get_secret(&rr(&key, None, None)).await.unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&whole).unwrap(), latest);
    assert_eq!(
        store
            .get_secret(&rr(&key, Some("user"), None))
            .await
            .unwrap(),
        b"bob"
    );
    assert_eq!(
        store
            .get_secret(&rr(&key, Some("user"), Some("1")))
            .await
            .unwrap(),
        b"alice"
    );
    assert_eq!(
        store
            .get_secret(&rr(&key, Some("user"), Some("2")))
            .await
            .unwrap(),
        b"bob"
    );
    assert_eq!(
        store
            .get_secret(&rr(&key, Some("nested.a.b"), None))
            .await
            .unwrap(),
        b"deep"
    );
    assert_eq!(
        store
            .get_secret(&rr(&key, Some("a.b"), None))
            .await
            .unwrap(),
        b"exact"
    );
    assert_eq!(
        store.get_secret(&rr(&key, Some("n"), None)).await.unwrap(),
        b"5"
    );
    assert_eq!(
        store
            .get_secret(&rr(&key, Some("nested"), None))
            .await
            .unwrap(),
        br#"{"a":{"b":"deep"}}"#
    );
    assert_eq!(
        store.get_secret(&rr(&key, Some("missing"), None)).await,
        Err(ProviderError::NotFound)
    );
    assert_eq!(
        store.get_secret(&rr(&key, None, Some("99"))).await,
        Err(ProviderError::NotFound)
    );
    // ESO accepts keys that repeat the mount (and `data/`): they have one canonical
    // form, the mount-relative key, and reads take only that form (issue 8).
    let spelled = rr(&format!("secret/data/{key}"), Some("user"), None);
    let canonical = store.canonical_ref(&spelled).unwrap();
    assert_eq!(canonical, rr(&key, Some("user"), None));
    assert_eq!(store.get_secret(&canonical).await.unwrap(), b"bob");
    assert!(matches!(
        store.get_secret(&spelled).await,
        Err(ProviderError::InvalidRequest(_))
    ));

    let map = store.get_secret_map(&rr(&key, None, None)).await.unwrap();
    assert_eq!(map["user"], b"bob");
    assert_eq!(map["flag"], b"true");
    assert_eq!(map["nested"], br#"{"a":{"b":"deep"}}"#);
    let old = store
        .get_secret_map(&rr(&key, None, Some("1")))
        .await
        .unwrap();
    assert_eq!(
        old,
        BTreeMap::from([
            ("n".to_string(), b"1".to_vec()),
            ("user".to_string(), b"alice".to_vec())
        ])
    );

    // Without `path`, the key's first segment is the mount.
    let no_path = b.provider(json!({}));
    assert_eq!(
        no_path
            .get_secret(&rr(&format!("secret/{key}"), Some("user"), None))
            .await
            .unwrap(),
        b"bob"
    );
}

#[tokio::test]
async fn kv_v1_reads() {
    let Some(b) = backend() else { return };
    let key = format!("{}/cfg", prefix());
    b.call(
        "POST",
        &format!("kv1/{key}"),
        None,
        Some(json!({"url": "https://x", "port": 443})),
    )
    .await;
    let store = b.provider(json!({"path": "kv1", "version": "v1"}));
    assert_eq!(
        store
            .get_secret(&rr(&key, Some("url"), None))
            .await
            .unwrap(),
        b"https://x"
    );
    assert_eq!(
        store
            .get_secret(&rr(&key, Some("port"), None))
            .await
            .unwrap(),
        b"443"
    );
    let whole: Value =
        serde_json::from_slice(&store.get_secret(&rr(&key, None, None)).await.unwrap()).unwrap();
    assert_eq!(whole, json!({"url": "https://x", "port": 443}));
    let no_path = b.provider(json!({"version": "v1"}));
    assert_eq!(
        no_path
            .get_secret(&rr(&format!("kv1/{key}"), Some("url"), None))
            .await
            .unwrap(),
        b"https://x"
    );
    assert!(matches!(
        store.get_secret(&rr(&key, None, Some("1"))).await,
        Err(ProviderError::Unsupported(_))
    ));
}

#[tokio::test]
async fn missing_secrets_and_bad_tokens() {
    let Some(b) = backend() else { return };
    let p = prefix();
    let v2 = b.provider(json!({"path": "secret"}));
    assert_eq!(
        v2.get_secret(&rr(&format!("{p}/none"), None, None)).await,
        Err(ProviderError::NotFound)
    );
    assert_eq!(
        v2.get_secret_map(&rr(&format!("{p}/none"), None, None))
            .await,
        Err(ProviderError::NotFound)
    );
    let v1 = b.provider(json!({"path": "kv1", "version": "v1"}));
    assert_eq!(
        v1.get_secret(&rr(&format!("{p}/none"), None, None)).await,
        Err(ProviderError::NotFound)
    );
    let denied = b.provider(json!({"path": "secret",
        "auth": {"tokenSecretRef": {"name": "vault", "key": "bad-token", "namespace": "eso"}}}));
    assert_eq!(
        denied
            .get_secret(&rr(&format!("{p}/none"), None, None))
            .await,
        Err(ProviderError::Backend("permission denied by vault".into()))
    );
    assert!(matches!(
        v2.get_secret(&rr("../../sys/seal-status", None, None))
            .await,
        Err(ProviderError::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn approle_auth_reads_both_mounts() {
    let Some(b) = backend() else { return };
    let key = format!("{}/app", prefix());
    b.put_v2(None, &key, json!({"password": "pw2"})).await;
    b.call(
        "POST",
        &format!("kv1/{key}"),
        None,
        Some(json!({"password": "pw1"})),
    )
    .await;
    let approle = json!({"appRole": {"path": "approle",
        "roleRef": {"name": "vault", "key": "role-id", "namespace": "eso"},
        "secretRef": {"name": "vault", "key": "secret-id", "namespace": "eso"}}});
    let v2 = b.provider(json!({"path": "secret", "auth": approle.clone()}));
    assert_eq!(
        v2.get_secret(&rr(&key, Some("password"), None))
            .await
            .unwrap(),
        b"pw2"
    );
    // The second call reuses the cached token.
    assert_eq!(
        v2.get_secret(&rr(&key, Some("password"), None))
            .await
            .unwrap(),
        b"pw2"
    );
    let v1 = b.provider(json!({"path": "kv1", "version": "v1", "auth": approle}));
    assert_eq!(
        v1.get_secret(&rr(&key, Some("password"), None))
            .await
            .unwrap(),
        b"pw1"
    );
    let by_id = b.provider(
        json!({"path": "secret", "auth": {"appRole": {"roleId": b.role_id,
        "secretRef": {"name": "vault", "key": "secret-id", "namespace": "eso"}}}}),
    );
    assert_eq!(
        by_id
            .get_secret(&rr(&key, Some("password"), None))
            .await
            .unwrap(),
        b"pw2"
    );

    let wrong = b.provider(
        json!({"path": "secret", "auth": {"appRole": {"roleId": b.role_id,
        "secretRef": {"name": "vault", "key": "bad-secret-id", "namespace": "eso"}}}}),
    );
    let err = wrong.get_secret(&rr(&key, None, None)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Backend(_)), "{err:?}");
    assert!(!err.to_string().contains("not-a-secret-id"));
}

#[tokio::test]
async fn namespace_header_selects_the_namespace() {
    let Some(b) = backend() else { return };
    let ns = format!("esi-ns-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    b.call(
        "POST",
        &format!("sys/namespaces/{ns}"),
        None,
        Some(json!({})),
    )
    .await;
    b.call(
        "POST",
        "sys/mounts/secret",
        Some(&ns),
        Some(json!({"type": "kv", "options": {"version": "2"}})),
    )
    .await;
    let key = format!("{}/in-ns", prefix());
    b.put_v2(Some(&ns), &key, json!({"where": "namespace"}))
        .await;

    let in_ns = b.provider(json!({"path": "secret", "namespace": ns}));
    assert_eq!(
        in_ns
            .get_secret(&rr(&key, Some("where"), None))
            .await
            .unwrap(),
        b"namespace"
    );
    let root = b.provider(json!({"path": "secret"}));
    assert_eq!(
        root.get_secret(&rr(&key, None, None)).await,
        Err(ProviderError::NotFound)
    );
}

#[tokio::test]
async fn find_by_regexp_and_tags_on_v2() {
    let Some(b) = backend() else { return };
    let base = format!("{}/find", prefix());
    for (name, team) in [
        ("app-one", "a"),
        ("app-two", "b"),
        ("sub/app-three", "a"),
        ("other", "a"),
    ] {
        let path = format!("{base}/{name}");
        b.put_v2(None, &path, json!({"name": name})).await;
        b.tag_v2(&path, json!({"team": team, "env": "test"})).await;
    }
    let store = b.provider(json!({"path": "secret"}));
    let find = |regexp: Option<&str>, tags: &[(&str, &str)]| FindRequest {
        path: Some(base.clone()),
        name_regexp: regexp.map(str::to_string),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };

    let by_name = store.find(&find(Some("app-"), &[])).await.unwrap();
    let names: Vec<&String> = by_name.keys().collect();
    assert_eq!(
        names,
        [
            &format!("{base}/app-one"),
            &format!("{base}/app-two"),
            &format!("{base}/sub/app-three")
        ]
    );
    let value: Value = serde_json::from_slice(&by_name[&format!("{base}/app-one")]).unwrap();
    assert_eq!(value, json!({"name": "app-one"}));

    let by_tag = store
        .find(&find(None, &[("team", "a"), ("env", "test")]))
        .await
        .unwrap();
    assert_eq!(
        by_tag.keys().collect::<Vec<_>>(),
        [
            &format!("{base}/app-one"),
            &format!("{base}/other"),
            &format!("{base}/sub/app-three")
        ]
    );
    let both = store
        .find(&find(Some("one$"), &[("team", "a")]))
        .await
        .unwrap();
    assert_eq!(
        both.keys().collect::<Vec<_>>(),
        [&format!("{base}/app-one")]
    );
    let none = store.find(&find(None, &[("team", "zzz")])).await.unwrap();
    assert!(none.is_empty());

    // Without `path` on the store, names start with the mount and work as keys.
    let no_path = b.provider(json!({}));
    let found = no_path
        .find(&FindRequest {
            path: Some(format!("secret/{base}")),
            name_regexp: Some("two".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let name = found.keys().next().unwrap().clone();
    assert_eq!(name, format!("secret/{base}/app-two"));
    assert_eq!(
        no_path
            .get_secret(&rr(&name, Some("name"), None))
            .await
            .unwrap(),
        b"app-two"
    );

    assert!(matches!(
        store.find(&find(Some("("), &[])).await,
        Err(ProviderError::InvalidRequest(_))
    ));
    let v1 = b.provider(json!({"path": "kv1", "version": "v1"}));
    assert!(matches!(
        v1.find(&find(Some("."), &[])).await,
        Err(ProviderError::Unsupported(_))
    ));
}

#[tokio::test]
async fn silent_backend_times_out() {
    let Some(b) = backend() else { return };
    // A local port that accepts connections but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let mut vault = json!({"server": format!("http://{addr}"), "path": "secret"});
    let store = b.provider_with(
        &mut vault,
        ProviderSettings {
            timeout: Duration::from_millis(500),
            ..ProviderSettings::default()
        },
    );
    let started = std::time::Instant::now();
    assert_eq!(
        store.get_secret(&rr("k", None, None)).await,
        Err(ProviderError::Timeout)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    hold.abort();
}
