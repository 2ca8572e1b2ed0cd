//! Fetching keys from a local HTTPS server: discovery, re-basing, fallback, TLS trust per
//! `clientCAPolicy`, rotation, single-flight, stale-if-error, token cache, redirects, limits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

use super::support::{TestKey, claims, oidc_claims};
use crate::authn::*;
use crate::resources::{
    ClientCaPolicy, KubernetesFederationSpec, OidcCommonSpec, OidcFederationSpec,
};

pub(super) const AUD: &str = "https://esi.example";
pub(super) const T0: u64 = 1_700_000_000;

/// A canned answer.
#[derive(Clone)]
struct Route {
    status: u16,
    location: Option<String>,
    body: String,
}

#[derive(Default)]
pub(super) struct ServerState {
    routes: Mutex<HashMap<String, Route>>,
    hits: Mutex<HashMap<String, usize>>,
    /// Requests that carried any credential header.
    credentialed: AtomicUsize,
    /// Answer 503 to everything.
    pub(super) down: AtomicBool,
    /// Delay before answering (to make concurrent requests overlap).
    pub(super) delay_ms: AtomicU64,
}

pub(super) struct TestServer {
    pub(super) state: Arc<ServerState>,
    pub(super) url: String,
    ca_pem: String,
    handle: axum_server::Handle<std::net::SocketAddr>,
}

impl TestServer {
    pub(super) async fn start() -> TestServer {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "esi test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        let state = Arc::new(ServerState::default());
        let st = state.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let st = st.clone();
            async move { answer(&st, uri, headers).await }
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(
            listener,
            axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)),
        )
        .unwrap()
        .handle(handle.clone());
        tokio::spawn(async move { server.serve(app.into_make_service()).await });
        TestServer {
            state,
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: ca.pem(),
            handle,
        }
    }

    pub(super) fn route(&self, path: &str, status: u16, body: impl Into<String>) {
        let r = Route {
            status,
            location: None,
            body: body.into(),
        };
        self.state.routes.lock().unwrap().insert(path.to_owned(), r);
    }

    pub(super) fn redirect(&self, path: &str, location: &str) {
        let r = Route {
            status: 302,
            location: Some(location.to_owned()),
            body: String::new(),
        };
        self.state.routes.lock().unwrap().insert(path.to_owned(), r);
    }

    pub(super) fn jwks(&self, keys: &[&TestKey]) {
        self.route("/openid/v1/jwks", 200, TestKey::jwks(keys));
    }

    pub(super) fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub(super) fn ca_b64(&self) -> String {
        STANDARD.encode(&self.ca_pem)
    }

    fn spec(&self) -> KubernetesFederationSpec {
        KubernetesFederationSpec {
            url: Some(self.url.clone()),
            audiences: vec![AUD.into()],
            ca_bundle: Some(self.ca_b64()),
            ..Default::default()
        }
    }

    /// An `OIDCFederation` of this server as issuer (its discovery document must be routed:
    /// [`TestServer::discovery`]).
    pub(super) fn oidc_spec(&self) -> OidcFederationSpec {
        OidcFederationSpec {
            issuer: self.url.clone(),
            common: OidcCommonSpec {
                audiences: vec![AUD.into()],
                ca_bundle: Some(self.ca_b64()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// An OIDC discovery document announcing this server as issuer, keys at
    /// `/openid/v1/jwks` (where [`TestServer::jwks`] puts them).
    pub(super) fn discovery(&self) {
        self.discovery_at("/.well-known/openid-configuration");
    }

    /// The document of [`TestServer::discovery`] at `path`.
    pub(super) fn discovery_at(&self, path: &str) {
        self.route(
            path,
            200,
            json!({"issuer": self.url, "jwks_uri": format!("{}/openid/v1/jwks", self.url)})
                .to_string(),
        );
    }
}

/// The kinds of federation the shared key machinery is tested with: what is fetched, and
/// how, differs; the cache, rotation and flood limits must not.
#[derive(Debug, Clone, Copy)]
pub(super) enum Profile {
    /// A `KubernetesFederation` at the server's URL (no discovery: `/openid/v1/jwks`).
    Kubernetes,
    /// An `OIDCFederation` whose issuer is the server (discovery, then the same JWKS path).
    Oidc,
}

impl Profile {
    fn federation(self, srv: &TestServer) -> Federation {
        match self {
            Profile::Kubernetes => Federation::from_spec("alpha", &srv.spec()).unwrap(),
            Profile::Oidc => {
                srv.discovery();
                Federation::from_oidc_spec("alpha", &srv.oidc_spec()).unwrap()
            }
        }
    }

    /// Valid claims of this kind's tokens issued by `iss` at `now`.
    fn claims(self, iss: &str, now: u64) -> serde_json::Value {
        match self {
            Profile::Kubernetes => claims(iss, AUD, now),
            Profile::Oidc => oidc_claims(iss, AUD, now),
        }
    }

    fn authenticator(
        self,
        clock: Clock,
        srv: &TestServer,
        tweak: impl FnOnce(&mut AuthnSettings),
    ) -> Arc<Authenticator> {
        authenticator_of(clock, self.federation(srv), tweak)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Every test server also checks that we never sent a credential.
        let credentialed = self.state.credentialed.load(Ordering::SeqCst);
        self.handle.shutdown();
        if !std::thread::panicking() {
            assert_eq!(credentialed, 0, "a request carried credentials");
        }
    }
}

async fn answer(st: &ServerState, uri: Uri, headers: HeaderMap) -> Response {
    let key = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    *st.hits.lock().unwrap().entry(key.clone()).or_default() += 1;
    if headers.contains_key("authorization")
        || headers.contains_key("cookie")
        || headers.contains_key("x-workload-token")
    {
        st.credentialed.fetch_add(1, Ordering::SeqCst);
    }
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let route = if st.down.load(Ordering::SeqCst) {
        Route {
            status: 503,
            location: None,
            body: "down".into(),
        }
    } else {
        let routes = st.routes.lock().unwrap();
        routes
            .get(&key)
            .or_else(|| routes.get(uri.path()))
            .cloned()
            .unwrap_or(Route {
                status: 404,
                location: None,
                body: "not found".into(),
            })
    };
    let mut b = Response::builder().status(StatusCode::from_u16(route.status).unwrap());
    if let Some(l) = route.location {
        b = b.header("location", l);
    }
    b.header("content-type", "application/json")
        .body(Body::from(route.body))
        .unwrap()
}

/// A clock tests can move.
pub(super) struct TestClock(Arc<AtomicU64>);

impl TestClock {
    pub(super) fn new() -> (TestClock, Clock) {
        let t = Arc::new(AtomicU64::new(T0));
        let t2 = t.clone();
        (
            TestClock(t),
            Clock::from_fn(move || t2.load(Ordering::SeqCst)),
        )
    }
    pub(super) fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    pub(super) fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

fn authenticator(clock: Clock, spec: &KubernetesFederationSpec) -> Arc<Authenticator> {
    authenticator_with(clock, spec, |_| {})
}

fn authenticator_with(
    clock: Clock,
    spec: &KubernetesFederationSpec,
    tweak: impl FnOnce(&mut AuthnSettings),
) -> Arc<Authenticator> {
    authenticator_of(clock, Federation::from_spec("alpha", spec).unwrap(), tweak)
}

/// An authenticator of `federation` alone, with a 5 s fetch timeout and `tweak`.
fn authenticator_of(
    clock: Clock,
    federation: Federation,
    tweak: impl FnOnce(&mut AuthnSettings),
) -> Arc<Authenticator> {
    let mut settings = AuthnSettings {
        clock,
        fetch_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    tweak(&mut settings);
    let a = Authenticator::new(settings);
    a.set_federations(vec![federation]);
    Arc::new(a)
}

#[tokio::test]
async fn discovery_rebases_jwks_uri_onto_url() {
    let srv = TestServer::start().await;
    let key = TestKey::rsa();
    let iss = "https://issuer.example.com";
    srv.route(
        "/.well-known/openid-configuration",
        200,
        json!({"issuer": iss, "jwks_uri": "https://attacker.invalid:1/keys/jwks?v=1"}).to_string(),
    );
    srv.route("/keys/jwks?v=1", 200, TestKey::jwks(&[&key]));
    let a = authenticator(Clock::fixed(T0), &srv.spec());
    let id = a
        .authenticate(&key.sign(&claims(iss, AUD, T0)), None)
        .await
        .unwrap();
    assert_eq!(id.issuer, iss);
    assert_eq!(srv.hits("/.well-known/openid-configuration"), 1);
    assert_eq!(srv.hits("/keys/jwks?v=1"), 1);
    // The expected issuer is the discovered one, not url.
    assert_eq!(
        a.authenticate(&key.sign(&claims(&srv.url, AUD, T0)), None)
            .await,
        Err(AuthnError::UnknownIssuer)
    );
    // A pinned spec.issuer must agree with the discovery document's issuer: a mismatch
    // means url serves another cluster's keys, so none are used.
    let mut spec = srv.spec();
    spec.issuer = Some("https://configured".into());
    let a = authenticator(Clock::fixed(T0), &spec);
    assert_eq!(
        a.authenticate(&key.sign(&claims("https://configured", AUD, T0)), None)
            .await,
        Err(AuthnError::KeysUnavailable)
    );
    assert_eq!(
        a.authenticate(&key.sign(&claims(iss, AUD, T0)), None).await,
        Err(AuthnError::UnknownIssuer)
    );
    let mut spec = srv.spec();
    spec.issuer = Some(iss.into());
    let a = authenticator(Clock::fixed(T0), &spec);
    assert!(
        a.authenticate(&key.sign(&claims(iss, AUD, T0)), None)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn falls_back_to_openid_v1_jwks_without_discovery() {
    let srv = TestServer::start().await;
    let key = TestKey::es256();
    srv.jwks(&[&key]);
    let a = authenticator(Clock::fixed(T0), &srv.spec());
    // Without discovery (404), the expected issuer is url as written.
    let id = a
        .authenticate(&key.sign(&claims(&srv.url, AUD, T0)), None)
        .await
        .unwrap();
    assert_eq!(id.federation, "alpha");
    assert_eq!(srv.hits("/.well-known/openid-configuration"), 1);
    assert_eq!(srv.hits("/openid/v1/jwks"), 1);
}

#[tokio::test]
async fn client_ca_per_policy() {
    let srv = TestServer::start().await;
    let key = TestKey::es256();
    srv.jwks(&[&key]);
    let token = key.sign(&claims(&srv.url, AUD, T0));
    let client_ca = srv.ca_b64();
    let other_ca = TestServer::start().await;
    let spec_with =
        |ca_bundle: Option<String>, policy: Option<ClientCaPolicy>| KubernetesFederationSpec {
            url: Some(srv.url.clone()),
            audiences: vec![AUD.into()],
            ca_bundle,
            client_ca_policy: policy,
            ..Default::default()
        };

    // Default without caBundle is Trust: the client's CA makes the fetch work.
    let a = authenticator(Clock::fixed(T0), &spec_with(None, None));
    assert!(a.authenticate(&token, Some(&client_ca)).await.is_ok());

    // Without the client CA nothing trusts the server (system roots don't).
    let a = authenticator(Clock::fixed(T0), &spec_with(None, None));
    assert_eq!(
        a.authenticate(&token, None).await,
        Err(AuthnError::KeysUnavailable)
    );
    // A garbage ca.crt counts as none.
    assert_eq!(
        a.authenticate(&token, Some("%%%")).await,
        Err(AuthnError::KeysUnavailable)
    );

    // Ignore: the client CA is never used.
    let a = authenticator(
        Clock::fixed(T0),
        &spec_with(None, Some(ClientCaPolicy::Ignore)),
    );
    assert_eq!(
        a.authenticate(&token, Some(&client_ca)).await,
        Err(AuthnError::KeysUnavailable)
    );

    // MustMatch with a different caBundle (the default with caBundle): the client CA is ignored.
    let a = authenticator(Clock::fixed(T0), &spec_with(Some(other_ca.ca_b64()), None));
    assert_eq!(
        a.authenticate(&token, Some(&client_ca)).await,
        Err(AuthnError::KeysUnavailable)
    );
    let a = authenticator(
        Clock::fixed(T0),
        &spec_with(Some(other_ca.ca_b64()), Some(ClientCaPolicy::MustMatch)),
    );
    assert_eq!(
        a.authenticate(&token, Some(&client_ca)).await,
        Err(AuthnError::KeysUnavailable)
    );

    // MustMatch with the right caBundle: works with or without the client CA.
    let a = authenticator(Clock::fixed(T0), &spec_with(Some(client_ca.clone()), None));
    assert!(a.authenticate(&token, Some(&client_ca)).await.is_ok());
    let a = authenticator(Clock::fixed(T0), &spec_with(Some(client_ca.clone()), None));
    assert!(a.authenticate(&token, None).await.is_ok());

    // Trust with a caBundle of another CA: the client's CA is added, so it works.
    let a = authenticator(
        Clock::fixed(T0),
        &spec_with(Some(other_ca.ca_b64()), Some(ClientCaPolicy::Trust)),
    );
    assert!(a.authenticate(&token, Some(&client_ca)).await.is_ok());
}

#[tokio::test]
async fn failed_fetch_with_a_client_ca_keeps_cached_keys() {
    let srv = TestServer::start().await;
    let key = TestKey::es256();
    srv.jwks(&[&key]);
    let (clock, c) = TestClock::new();
    let spec = KubernetesFederationSpec {
        ca_bundle: None,
        ..srv.spec()
    };
    let a = authenticator(c, &spec);
    assert!(
        a.authenticate(&key.sign(&claims(&srv.url, AUD, T0)), Some(&srv.ca_b64()))
            .await
            .is_ok()
    );
    let fetches = srv.hits("/openid/v1/jwks");
    assert_eq!(fetches, 1);
    // Keys are stale now; a request with a CA that does not verify the server refetches and fails...
    clock.advance(301);
    let wrong_ca = STANDARD.encode(TestServer::start().await.ca_pem.clone());
    let t = key.sign(&claims(&srv.url, AUD, clock.now()));
    assert!(
        a.authenticate(&t, Some(&wrong_ca)).await.is_ok(),
        "stale keys still serve"
    );
    // ...and the good cached keys were not evicted: others still verify, without a CA at all.
    let t = key.sign(&claims(&srv.url, AUD, clock.now() + 1));
    assert!(a.authenticate(&t, None).await.is_ok());
    // An unknown kid with a wrong CA: refresh fails, cache intact.
    clock.advance(11);
    let other = TestKey::es256();
    let t = other.sign(&claims(&srv.url, AUD, clock.now()));
    assert_eq!(
        a.authenticate(&t, Some(&wrong_ca)).await,
        Err(AuthnError::UnknownKeyId)
    );
    let t = key.sign(&claims(&srv.url, AUD, clock.now() + 2));
    assert!(a.authenticate(&t, None).await.is_ok());
}

#[tokio::test]
async fn key_rotation_triggers_one_refresh() {
    key_rotation_triggers_one_refresh_for(Profile::Kubernetes).await;
    key_rotation_triggers_one_refresh_for(Profile::Oidc).await;
}

async fn key_rotation_triggers_one_refresh_for(p: Profile) {
    let srv = TestServer::start().await;
    let old = TestKey::es256();
    let new = TestKey::rsa();
    srv.jwks(&[&old]);
    let (clock, c) = TestClock::new();
    // Rotation waits off: this test is about the refresh interval alone (the test clock does
    // not move while a request would wait).
    let a = p.authenticator(c, &srv, |s| s.jwks_rotation_wait = Duration::ZERO);
    assert!(
        a.authenticate(&old.sign(&p.claims(&srv.url, T0)), None)
            .await
            .is_ok()
    );
    assert_eq!(srv.hits("/openid/v1/jwks"), 1);
    srv.jwks(&[&old, &new]);
    // Within the min refresh interval an unknown kid does not refetch.
    let t = new.sign(&p.claims(&srv.url, T0));
    assert_eq!(
        a.authenticate(&t, None).await,
        Err(AuthnError::UnknownKeyId)
    );
    assert_eq!(srv.hits("/openid/v1/jwks"), 1);
    // After it, one refresh finds the new key.
    clock.advance(11);
    let t = new.sign(&p.claims(&srv.url, clock.now()));
    assert!(a.authenticate(&t, None).await.is_ok());
    assert_eq!(srv.hits("/openid/v1/jwks"), 2);
    let t = new.sign(&p.claims(&srv.url, clock.now() + 1));
    assert!(a.authenticate(&t, None).await.is_ok());
    assert!(
        a.authenticate(&old.sign(&p.claims(&srv.url, clock.now())), None)
            .await
            .is_ok()
    );
    assert_eq!(srv.hits("/openid/v1/jwks"), 2);
    // A rotated-out key stops verifying after the next refresh, and so do its cached tokens.
    let cached = old.sign(&p.claims(&srv.url, clock.now() + 5));
    assert!(a.authenticate(&cached, None).await.is_ok());
    assert!(a.is_cached(&cached));
    srv.jwks(&[&new]);
    clock.advance(301);
    let t = new.sign(&p.claims(&srv.url, clock.now()));
    assert!(a.authenticate(&t, None).await.is_ok());
    assert_eq!(srv.hits("/openid/v1/jwks"), 3);
    assert_eq!(
        a.authenticate(&cached, None).await,
        Err(AuthnError::UnknownKeyId)
    );
}

#[tokio::test]
async fn unknown_kid_flood_shares_one_fetch() {
    unknown_kid_flood_shares_one_fetch_for(Profile::Kubernetes).await;
    unknown_kid_flood_shares_one_fetch_for(Profile::Oidc).await;
}

async fn unknown_kid_flood_shares_one_fetch_for(p: Profile) {
    let srv = TestServer::start().await;
    let key = TestKey::es256();
    srv.jwks(&[&key]);
    srv.state.delay_ms.store(200, Ordering::SeqCst);
    let (clock, c) = TestClock::new();
    // Rotation waits off (the test clock does not move while a request waits); the flood with
    // waits is `unknown_kid_flood_with_rotation_waits_is_bounded`.
    let a = p.authenticator(c, &srv, |s| s.jwks_rotation_wait = Duration::ZERO);
    let attacker = TestKey::es256();
    let flood = |now: u64| {
        (0..100)
            .map(|i| {
                let kid = format!("random-{i}-{}", rand::random::<u64>());
                let t =
                    attacker.sign_with(attacker.alg, Some(&kid), &p.claims(&srv.url, now), |_| {});
                let a = a.clone();
                tokio::spawn(async move { a.authenticate(&t, None).await })
            })
            .collect::<Vec<_>>()
    };
    // Cold cache: 100 concurrent unknown kids.
    for r in futures_util::future::join_all(flood(T0)).await {
        assert_eq!(r.unwrap(), Err(AuthnError::UnknownKeyId));
    }
    let cold = srv.hits("/openid/v1/jwks");
    assert!((1..=2).contains(&cold), "{cold} fetches");
    // Warm cache, past the min interval: at most one more.
    clock.advance(11);
    for r in futures_util::future::join_all(flood(clock.now())).await {
        assert_eq!(r.unwrap(), Err(AuthnError::UnknownKeyId));
    }
    let warm = srv.hits("/openid/v1/jwks") - cold;
    assert!(warm <= 1, "{warm} fetches");
    // The real key still works, without a fetch.
    let before = srv.hits("/openid/v1/jwks");
    assert!(
        a.authenticate(&key.sign(&p.claims(&srv.url, clock.now())), None)
            .await
            .is_ok()
    );
    assert_eq!(srv.hits("/openid/v1/jwks"), before);
}

#[tokio::test]
async fn issuer_down_serves_cached_keys_until_max_stale() {
    let srv = TestServer::start().await;
    let key = TestKey::es256();
    srv.jwks(&[&key]);
    let (clock, c) = TestClock::new();
    let a = authenticator(c, &srv.spec());
    let token_at = |t: u64| {
        let mut c = claims(&srv.url, AUD, t);
        c["exp"] = json!(t + 10 * 3600);
        key.sign(&c)
    };
    assert!(a.authenticate(&token_at(T0), None).await.is_ok());
    srv.state.down.store(true, Ordering::SeqCst);
    // Fresh keys: no fetch needed.
    assert!(a.authenticate(&token_at(T0 + 1), None).await.is_ok());
    // Past the TTL: refresh fails, cached keys serve.
    clock.advance(400);
    assert!(a.authenticate(&token_at(clock.now()), None).await.is_ok());
    let failures = srv.hits("/.well-known/openid-configuration");
    assert_eq!(failures, 2, "one refresh attempt");
    // Back-off: the next request within the min interval does not hammer the issuer.
    assert!(
        a.authenticate(&token_at(clock.now() + 1), None)
            .await
            .is_ok()
    );
    assert_eq!(srv.hits("/.well-known/openid-configuration"), failures);
    // Past ttl + max_stale: fail closed, including tokens cached earlier.
    let cached = token_at(clock.now() + 2);
    assert!(a.authenticate(&cached, None).await.is_ok());
    clock.advance(3600);
    assert_eq!(
        a.authenticate(&token_at(clock.now()), None).await,
        Err(AuthnError::KeysUnavailable)
    );
    assert_eq!(
        a.authenticate(&cached, None).await,
        Err(AuthnError::KeysUnavailable)
    );
    // The issuer comes back: keys are fetched again (after the failure back-off).
    srv.state.down.store(false, Ordering::SeqCst);
    clock.advance(11);
    assert!(a.authenticate(&token_at(clock.now()), None).await.is_ok());
}

#[tokio::test]
async fn token_cache_hit_does_not_refetch_and_expires_with_token() {
    let srv = TestServer::start().await;
    let key = TestKey::es256();
    srv.jwks(&[&key]);
    let (clock, c) = TestClock::new();
    let a = authenticator(c, &srv.spec());
    let mut cl = claims(&srv.url, AUD, T0);
    cl["exp"] = json!(T0 + 200);
    let token = key.sign(&cl);
    let id = a.authenticate(&token, None).await.unwrap();
    assert_eq!(srv.hits("/openid/v1/jwks"), 1);
    // Keys become stale and the issuer goes down: the cached token answers without a fetch.
    srv.state.down.store(true, Ordering::SeqCst);
    clock.advance(150);
    let discovery_hits = srv.hits("/.well-known/openid-configuration");
    assert!(a.is_cached(&token));
    assert_eq!(a.authenticate(&token, None).await.unwrap(), id);
    assert_eq!(
        srv.hits("/.well-known/openid-configuration"),
        discovery_hits
    );
    assert_eq!(srv.hits("/openid/v1/jwks"), 1);
    // It expires with the token (exp + leeway).
    clock.advance(111);
    assert_eq!(a.authenticate(&token, None).await, Err(AuthnError::Expired));
    assert!(!a.is_cached(&token));
}

#[tokio::test]
async fn reload_keeps_unchanged_federations_caches() {
    let srv = TestServer::start().await;
    let key = TestKey::es256();
    srv.jwks(&[&key]);
    let a = authenticator(Clock::fixed(T0), &srv.spec());
    assert!(
        a.authenticate(&key.sign(&claims(&srv.url, AUD, T0)), None)
            .await
            .is_ok()
    );
    assert_eq!(srv.hits("/openid/v1/jwks"), 1);
    a.set_federations(vec![Federation::from_spec("alpha", &srv.spec()).unwrap()]);
    assert!(
        a.authenticate(&key.sign(&claims(&srv.url, AUD, T0 + 1)), None)
            .await
            .is_ok()
    );
    assert_eq!(srv.hits("/openid/v1/jwks"), 1);
    let mut changed = srv.spec();
    changed.audiences.push("another".into());
    a.set_federations(vec![Federation::from_spec("alpha", &changed).unwrap()]);
    assert!(
        a.authenticate(&key.sign(&claims(&srv.url, AUD, T0 + 2)), None)
            .await
            .is_ok()
    );
    assert_eq!(srv.hits("/openid/v1/jwks"), 2);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let srv = TestServer::start().await;
    let key = TestKey::es256();
    srv.redirect("/openid/v1/jwks", "/real/jwks");
    srv.route("/real/jwks", 200, TestKey::jwks(&[&key]));
    let a = authenticator(Clock::fixed(T0), &srv.spec());
    let t = key.sign(&claims(&srv.url, AUD, T0));
    assert_eq!(
        a.authenticate(&t, None).await,
        Err(AuthnError::KeysUnavailable)
    );
    assert_eq!(srv.hits("/openid/v1/jwks"), 1);
    assert_eq!(srv.hits("/real/jwks"), 0);
    // A redirecting discovery document is not followed either (and not a fallback).
    let srv = TestServer::start().await;
    srv.redirect("/.well-known/openid-configuration", "/elsewhere");
    srv.jwks(&[&key]);
    let a = authenticator(Clock::fixed(T0), &srv.spec());
    assert_eq!(
        a.authenticate(&t, None).await,
        Err(AuthnError::KeysUnavailable)
    );
    assert_eq!(srv.hits("/elsewhere"), 0);
    assert_eq!(srv.hits("/openid/v1/jwks"), 0);
}

#[tokio::test]
async fn document_limits() {
    let key = TestKey::es256();
    // Too many keys: the document is rejected whole.
    let srv = TestServer::start().await;
    let many: Vec<TestKey> = (0..3).map(|_| TestKey::es256()).collect();
    srv.jwks(&many.iter().chain([&key]).collect::<Vec<_>>());
    let a = Authenticator::new(AuthnSettings {
        clock: Clock::fixed(T0),
        max_jwks_keys: 3,
        ..Default::default()
    });
    a.set_federations(vec![Federation::from_spec("alpha", &srv.spec()).unwrap()]);
    let t = key.sign(&claims(&srv.url, AUD, T0));
    assert_eq!(
        a.authenticate(&t, None).await,
        Err(AuthnError::KeysUnavailable)
    );
    // Too large a body.
    let srv = TestServer::start().await;
    let mut doc: serde_json::Value = serde_json::from_str(&TestKey::jwks(&[&key])).unwrap();
    doc["padding"] = json!("x".repeat(4096));
    srv.route("/openid/v1/jwks", 200, doc.to_string());
    let a = Authenticator::new(AuthnSettings {
        clock: Clock::fixed(T0),
        max_jwks_bytes: 4096,
        ..Default::default()
    });
    a.set_federations(vec![Federation::from_spec("alpha", &srv.spec()).unwrap()]);
    let t = key.sign(&claims(&srv.url, AUD, T0));
    assert_eq!(
        a.authenticate(&t, None).await,
        Err(AuthnError::KeysUnavailable)
    );
    // Same document under a sufficient cap works.
    let a = Authenticator::new(AuthnSettings {
        clock: Clock::fixed(T0),
        max_jwks_bytes: 8192,
        ..Default::default()
    });
    a.set_federations(vec![Federation::from_spec("alpha", &srv.spec()).unwrap()]);
    assert!(a.authenticate(&t, None).await.is_ok());
    // A discovery document that is not JSON is an error, not a fallback.
    let srv = TestServer::start().await;
    srv.route("/.well-known/openid-configuration", 200, "<html>");
    srv.jwks(&[&key]);
    let a = authenticator(Clock::fixed(T0), &srv.spec());
    let t = key.sign(&claims(&srv.url, AUD, T0));
    assert_eq!(
        a.authenticate(&t, None).await,
        Err(AuthnError::KeysUnavailable)
    );
    assert_eq!(srv.hits("/openid/v1/jwks"), 0);
}

/// Issue 8: a key rotated in right after a fetch (within the min refresh interval) must not
/// fail its first token: the request waits for the next permitted refresh.
#[tokio::test]
async fn rotation_right_after_a_fetch_waits_for_the_next_refresh() {
    let srv = TestServer::start().await;
    let old = TestKey::es256();
    let new = TestKey::rsa();
    srv.jwks(&[&old]);
    let a = authenticator_with(Clock::system(), &srv.spec(), |s| {
        s.jwks_min_refresh_interval = Duration::from_secs(2);
    });
    let now = Clock::system().now();
    assert!(
        a.authenticate(&old.sign(&claims(&srv.url, AUD, now)), None)
            .await
            .is_ok()
    );
    assert_eq!(srv.hits("/openid/v1/jwks"), 1);
    // The cluster rotates right after our fetch; its first new-kid token arrives at once.
    srv.jwks(&[&old, &new]);
    let start = std::time::Instant::now();
    let t = new.sign(&claims(&srv.url, AUD, now));
    assert_eq!(
        a.authenticate(&t, None).await.map(|id| id.federation),
        Ok("alpha".to_owned())
    );
    assert!(
        start.elapsed() <= Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(srv.hits("/openid/v1/jwks"), 2);
    // A kid still unknown after a fetch that began after the request arrived is unknown.
    let stranger = TestKey::es256();
    let t = stranger.sign(&claims(&srv.url, AUD, now));
    assert_eq!(
        a.authenticate(&t, None).await,
        Err(AuthnError::UnknownKeyId)
    );
    assert_eq!(srv.hits("/openid/v1/jwks"), 3);
    assert!(
        start.elapsed() <= Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );

    // The wait is bounded: with the next refresh due later than jwks_rotation_wait, the
    // request is answered at once, without a fetch.
    let srv = TestServer::start().await;
    srv.jwks(&[&old]);
    let a = authenticator_with(Clock::system(), &srv.spec(), |s| {
        s.jwks_min_refresh_interval = Duration::from_secs(60);
        s.jwks_rotation_wait = Duration::from_secs(10);
    });
    assert!(
        a.authenticate(&old.sign(&claims(&srv.url, AUD, now)), None)
            .await
            .is_ok()
    );
    srv.jwks(&[&old, &new]);
    let start = std::time::Instant::now();
    assert_eq!(
        a.authenticate(&new.sign(&claims(&srv.url, AUD, now)), None)
            .await,
        Err(AuthnError::UnknownKeyId)
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(srv.hits("/openid/v1/jwks"), 1);
}

/// The flood protection holds with rotation waits: a flood of unknown kids right after a fetch
/// causes one more fetch (when the interval allows), only `jwks_max_rotation_waiters` requests
/// are held, and none longer than the interval.
#[tokio::test]
async fn unknown_kid_flood_with_rotation_waits_is_bounded() {
    let srv = TestServer::start().await;
    let key = TestKey::es256();
    srv.jwks(&[&key]);
    let a = authenticator_with(Clock::system(), &srv.spec(), |s| {
        s.jwks_min_refresh_interval = Duration::from_secs(3);
        s.jwks_max_rotation_waiters = 4;
    });
    let now = Clock::system().now();
    assert!(
        a.authenticate(&key.sign(&claims(&srv.url, AUD, now)), None)
            .await
            .is_ok()
    );
    assert_eq!(srv.hits("/openid/v1/jwks"), 1);
    let attacker = TestKey::es256();
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let t = attacker.sign_with(
                attacker.alg,
                Some(&format!("junk-{i}")),
                &claims(&srv.url, AUD, now),
                |_| {},
            );
            let a = a.clone();
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                let r = a.authenticate(&t, None).await;
                (r, start.elapsed())
            })
        })
        .collect();
    let mut held = 0;
    for r in futures_util::future::join_all(tasks).await {
        let (r, took) = r.unwrap();
        assert_eq!(r, Err(AuthnError::UnknownKeyId));
        assert!(took <= Duration::from_secs(4), "{took:?}");
        if took >= Duration::from_millis(900) {
            held += 1;
        }
    }
    assert!(held <= 4, "{held} requests held");
    let fetches = srv.hits("/openid/v1/jwks");
    assert!(fetches <= 2, "{fetches} fetches");
    // The real key still answers at once.
    let start = std::time::Instant::now();
    assert!(
        a.authenticate(&key.sign(&claims(&srv.url, AUD, now + 1)), None)
            .await
            .is_ok()
    );
    assert!(start.elapsed() < Duration::from_secs(1));
}

/// A TCP listener that accepts connections and never answers (an unreachable issuer that
/// hangs instead of refusing); counts the connections it accepted.
async fn hanging_listener() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(sock);
        }
    });
    (url, accepted)
}

/// Security review finding 4: a second federation for the same issuer whose URL hangs must
/// not hold up the healthy one, cold or warm, and junk tokens naming that issuer (changing
/// `kid` and `ca.crt`) must not buy more fetches than its back-off allows.
#[tokio::test]
async fn a_hung_federation_sharing_the_issuer_stalls_no_one() {
    let srv = TestServer::start().await;
    let key = TestKey::es256();
    srv.jwks(&[&key]);
    let (hung_url, accepted) = hanging_listener().await;
    let healthy = KubernetesFederationSpec {
        issuer: Some(srv.url.clone()),
        ..srv.spec()
    };
    let hung = KubernetesFederationSpec {
        url: Some(hung_url),
        issuer: Some(srv.url.clone()),
        ca_bundle: None,
        client_ca_policy: Some(ClientCaPolicy::Trust),
        ..srv.spec()
    };
    let a = Authenticator::new(AuthnSettings {
        clock: Clock::fixed(T0),
        fetch_timeout: Duration::from_secs(4),
        jwks_rotation_wait: Duration::ZERO,
        ..Default::default()
    });
    // "a-hung" sorts first: it used to be asked (and waited for) first.
    a.set_federations(vec![
        Federation::from_spec("a-hung", &hung).unwrap(),
        Federation::from_spec("b-healthy", &healthy).unwrap(),
    ]);
    let start = std::time::Instant::now();
    let id = a
        .authenticate(&key.sign(&claims(&srv.url, AUD, T0)), None)
        .await
        .unwrap();
    assert_eq!(id.federation, "b-healthy");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "cold: {:?}",
        start.elapsed()
    );
    let start = std::time::Instant::now();
    a.authenticate(&key.sign(&claims(&srv.url, AUD, T0 + 1)), None)
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "warm: {:?}",
        start.elapsed()
    );

    // Junk: unknown kids, a different ca.crt each; all within the hung federation's back-off.
    let before = accepted.load(Ordering::SeqCst);
    let junk: Vec<_> = (0..6)
        .map(|i| {
            let other = TestKey::es256();
            let mut c = claims(&srv.url, AUD, T0);
            c["jti"] = json!(format!("junk-{i}"));
            (other.sign(&c), STANDARD.encode(rcgen_ca_pem()))
        })
        .collect();
    let start = std::time::Instant::now();
    for (token, ca) in &junk {
        let r = tokio::time::timeout(Duration::from_secs(6), a.authenticate(token, Some(ca))).await;
        assert!(matches!(r, Ok(Err(_))), "junk must be refused in time");
    }
    assert!(
        accepted.load(Ordering::SeqCst) <= before + 1,
        "junk bought {} connections to the hung federation",
        accepted.load(Ordering::SeqCst) - before
    );
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "junk: {:?}",
        start.elapsed()
    );
    // And the healthy federation still answers at once.
    let start = std::time::Instant::now();
    a.authenticate(&key.sign(&claims(&srv.url, AUD, T0 + 2)), None)
        .await
        .unwrap();
    assert!(start.elapsed() < Duration::from_millis(500));
}

/// A throwaway CA certificate, PEM (a "junk" `ca.crt`).
fn rcgen_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rcgen::CertifiedIssuer::self_signed(params, key)
        .unwrap()
        .pem()
}

/// A `Trust` federation that learnt its issuer's CA from a client keeps refreshing with it:
/// a rotation seen first by a request carrying a junk `ca.crt` is still picked up.
#[tokio::test]
async fn a_junk_client_ca_cannot_keep_a_trust_federation_cold() {
    let srv = TestServer::start().await;
    let key = TestKey::es256();
    srv.jwks(&[&key]);
    let (clock, c) = TestClock::new();
    let spec = KubernetesFederationSpec {
        ca_bundle: None,
        client_ca_policy: Some(ClientCaPolicy::Trust),
        ..srv.spec()
    };
    let a = authenticator(c, &spec);
    a.authenticate(&key.sign(&claims(&srv.url, AUD, T0)), Some(&srv.ca_b64()))
        .await
        .unwrap();
    // The issuer rotates; the first token signed with the new key comes with a junk ca.crt.
    let rotated = TestKey::es256();
    srv.jwks(&[&key, &rotated]);
    clock.advance(11);
    let junk = STANDARD.encode(rcgen_ca_pem());
    let id = a
        .authenticate(
            &rotated.sign(&claims(&srv.url, AUD, clock.now())),
            Some(&junk),
        )
        .await;
    assert!(id.is_ok(), "{id:?}");
}
