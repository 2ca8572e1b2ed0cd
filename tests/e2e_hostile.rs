//! Hostile end-to-end suite: the real `esi-server` over HTTPS against crafted tokens, hostile
//! or broken issuers, floods, slow clients, clients without certificates; then a debug-logged
//! run searched for every secret value and token it handled. See `docs/security.md`.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

const AUD: &str = "https://esi-federation.cluster-main.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";
const FAKE_PASS: &str = "hostile-FAKE-pass-71c3";
const FAKE_OTHER: &str = "hostile-OTHER-value-2b9e";
const VAULT_VALUE: &str = "hostile-VAULT-value-5d1e";

/// Every server of this suite logs at debug level, so that every test's log can be
/// searched. Set once, before any server starts (each test calls this first).
fn debug_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: runs once, first thing in every test, before any thread of ours reads the
        // environment (other tests wait on this `Once`).
        unsafe { std::env::set_var("ESI_TEST_LOG", "debug") };
    });
}

fn federation_yaml(name: &str, url: &str, issuer: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: KubernetesFederation
metadata: {{name: {name}}}
spec:
  url: {url}
  issuer: {issuer}
  audiences: ["{AUD}"]
{extra}"#
    )
}

fn authorization(name: &str, federation: &str, issuer: &str, subject: &str) -> String {
    format!(
        r#"apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {{name: {name}}}
spec:
  federationRef: {{kind: KubernetesFederation, name: {federation}}}
  subject:
    oidc:
      issuer: {issuer}
      subject: {subject}
  allowedClusterSecretStores: ["fake-store", "vault-store"]
  allowedGenerators:
    - {{name: pw, kind: Password, namespace: monitoring}}
"#
    )
}

fn fake_store() -> String {
    format!(
        r#"apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: fake-store}}
spec:
  provider:
    fake:
      data:
        - {{key: db-credentials, value: '{{"username":"fake-user","password":"{FAKE_PASS}"}}'}}
        - {{key: other, value: {FAKE_OTHER}}}
"#
    )
}

const PASSWORD: &str = r#"apiVersion: generators.external-secrets.io/v1alpha1
kind: Password
metadata: {name: pw, namespace: monitoring}
spec: {length: 24}
"#;

/// The usual setup: federation `alpha` (rsa-1, ec-1 at `issuer`), `monitoring:app` allowed.
fn setup(issuer: &Issuer) -> Vec<(&'static str, String)> {
    vec![
        (
            "federation.yaml",
            federation_yaml("alpha", &issuer.url, ISS, ""),
        ),
        (
            "authorization.yaml",
            authorization(
                "allow-app",
                "alpha",
                ISS,
                "system:serviceaccount:monitoring:app",
            ),
        ),
        ("store.yaml", fake_store()),
        ("password.yaml", PASSWORD.to_string()),
    ]
}

fn body(issuer: &Issuer) -> Value {
    json!({ "ca.crt": b64(&issuer.ca.ca_pem) })
}

fn app_claims() -> Value {
    sa_claims(ISS, AUD, "monitoring", "app")
}

fn kid(key: &str) -> String {
    jwk(key)["kid"].as_str().unwrap().to_string()
}

fn enc(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn encoding_key(key: &str) -> (Algorithm, EncodingKey) {
    let pem = std::fs::read(format!("{FIXTURES}/keys/{key}.pem")).unwrap();
    if key.starts_with("rsa") {
        (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem).unwrap())
    } else {
        (Algorithm::ES256, EncodingKey::from_ec_pem(&pem).unwrap())
    }
}

/// A JWS with exactly this header and these claims (raw JSON text), signed by `key` with
/// its algorithm.
fn sign_raw(header: &str, claims: &str, key: &str) -> String {
    let (alg, k) = encoding_key(key);
    let msg = format!("{}.{}", enc(header.as_bytes()), enc(claims.as_bytes()));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &k, alg).unwrap();
    format!("{msg}.{sig}")
}

fn sign(header: Value, claims: &Value, key: &str) -> String {
    sign_raw(&header.to_string(), &claims.to_string(), key)
}

/// The kind of federation a suite is aimed at: its tokens' shape differs, the defences
/// must not.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `KubernetesFederation` `alpha` (ServiceAccount `monitoring:app` allowed).
    Kubernetes,
    /// `OIDCFederation` `alpha` (issue 18): GitHub Actions-shaped tokens of the provider,
    /// `repository_owner: org` bound, subject `repo:org/app:ref:refs/heads/main` allowed.
    Oidc,
}

impl Kind {
    async fn issuer(self, keys: Value) -> Issuer {
        match self {
            Kind::Kubernetes => Issuer::start(keys, false).await,
            Kind::Oidc => Issuer::start_oidc(keys).await,
        }
    }

    /// The `iss` of this kind's tokens.
    fn iss(self, issuer: &Issuer) -> String {
        match self {
            Kind::Kubernetes => ISS.to_owned(),
            Kind::Oidc => issuer.url.clone(),
        }
    }

    /// [`setup`] for this kind.
    fn setup(self, issuer: &Issuer) -> Vec<(&'static str, String)> {
        let mut manifests = setup(issuer);
        if let Kind::Oidc = self {
            manifests[0].1 = oidc_federation(
                "alpha",
                issuer,
                AUD,
                "  boundClaims: {repository_owner: org}\n  claims: [ref]\n",
            );
            manifests[1].1 = authorization(
                "allow-app",
                "alpha",
                &issuer.url,
                "repo:org/app:ref:refs/heads/main",
            )
            .replace("kind: KubernetesFederation", "kind: OIDCFederation");
        }
        manifests
    }

    /// Valid claims of the workload `name` (`app` is the allowed one).
    fn claims_of(self, issuer: &Issuer, name: &str) -> Value {
        match self {
            Kind::Kubernetes => sa_claims(ISS, AUD, "monitoring", name),
            Kind::Oidc => {
                let now = now();
                json!({
                    "iss": issuer.url,
                    "aud": AUD,
                    "sub": format!("repo:org/{name}:ref:refs/heads/main"),
                    "iat": now,
                    "nbf": now,
                    "exp": now + 600,
                    "repository": format!("org/{name}"),
                    "repository_owner": "org",
                    "ref": "refs/heads/main",
                })
            }
        }
    }

    fn app_claims(self, issuer: &Issuer) -> Value {
        self.claims_of(issuer, "app")
    }

    fn claims_with(self, issuer: &Issuer, f: impl FnOnce(&mut Value)) -> Value {
        let mut c = self.app_claims(issuer);
        f(&mut c);
        c
    }

    /// Crafted tokens only this kind refuses (each otherwise valid for it).
    fn own_cases(self, issuer: &Issuer, kid: &str) -> Vec<(&'static str, String)> {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = self.app_claims(issuer);
            f(&mut c);
            mint("rsa-1", &c, None)
        };
        match self {
            Kind::Kubernetes => vec![
                (
                    "sub disagrees with kubernetes.io",
                    with(&|c| c["sub"] = json!("system:serviceaccount:kube-system:admin")),
                ),
                (
                    "kubernetes.io not an object",
                    with(&|c| c["kubernetes.io"] = json!("monitoring")),
                ),
            ],
            Kind::Oidc => vec![
                (
                    "bound claim of another owner",
                    with(&|c| c["repository_owner"] = json!("evil")),
                ),
                (
                    "bound claim missing",
                    with(&|c| {
                        c.as_object_mut().unwrap().remove("repository_owner");
                    }),
                ),
                (
                    "bound claim a number",
                    with(&|c| c["repository_owner"] = json!(7)),
                ),
                (
                    "bound claim an array of others",
                    with(&|c| c["repository_owner"] = json!(["evil", "other"])),
                ),
                (
                    "duplicate bound claim member",
                    sign_raw(
                        &json!({"alg": "RS256", "kid": kid}).to_string(),
                        &self.app_claims(issuer).to_string().replacen(
                            '{',
                            "{\"repository_owner\":\"evil\",",
                            1,
                        ),
                        "rsa-1",
                    ),
                ),
                (
                    "claim for policies not a string",
                    with(&|c| c["ref"] = json!(["refs/heads/main"])),
                ),
                (
                    "claim for policies too long",
                    with(&|c| c["ref"] = json!("r".repeat(2000))),
                ),
                (
                    "subject too long",
                    with(&|c| c["sub"] = json!("s".repeat(2000))),
                ),
                ("subject empty", with(&|c| c["sub"] = json!(""))),
            ],
        }
    }
}

async fn post_with(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (u16, String, reqwest::header::HeaderMap) {
    let mut req = server
        .client
        .post(format!("{}{}", server.url, path))
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.text().await.unwrap(), headers)
}

/// The crafted-token suite against a `KubernetesFederation`.
#[tokio::test(flavor = "multi_thread")]
async fn crafted_tokens_are_rejected_without_flooding_the_issuer() {
    crafted_tokens_are_rejected(Kind::Kubernetes).await;
}

/// The same suite against an `OIDCFederation` (issue 18): one verifier, the same defences.
#[tokio::test(flavor = "multi_thread")]
async fn crafted_tokens_are_rejected_by_an_oidc_federation_too() {
    crafted_tokens_are_rejected(Kind::Oidc).await;
}

async fn crafted_tokens_are_rejected(kind: Kind) {
    debug_logging();
    let issuer = kind.issuer(jwks(&["rsa-1", "ec-1"])).await;
    // An attacker's issuer: its keys must never be fetched, whatever a token says.
    let attacker = Issuer::start(jwks(&["rsa-2"]), true).await;
    let server = Server::start_with_args(
        &kind.setup(&issuer),
        &[],
        &["--jwks-min-refresh-interval", "60s"],
    );
    let good = mint("rsa-1", &kind.app_claims(&issuer), None);
    let (status, text) = server
        .post(
            "/secretstore/fake-store/secrets/other",
            Some(&good),
            body(&issuer),
        )
        .await;
    assert_eq!(
        (status, text.as_str()),
        (200, format!("\"{FAKE_OTHER}\"").as_str())
    );
    let hits_before = issuer.jwks_hits();
    assert_eq!(hits_before, 1);

    let k_rsa1 = kid("rsa-1");
    let k_ec1 = kid("ec-1");
    let now = now();
    let rs = |extra: Value| {
        let mut h = json!({"alg": "RS256", "kid": k_rsa1});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    };
    let c = kind.app_claims(&issuer);
    let c_text = c.to_string();
    let jwks_text = jwks(&["rsa-1", "ec-1"]).to_string();
    let hmac = |alg: Algorithm, name: &str| {
        let h = enc(json!({"alg": name, "kid": k_rsa1}).to_string().as_bytes());
        let msg = format!("{h}.{}", enc(c_text.as_bytes()));
        let sig = jsonwebtoken::crypto::sign(
            msg.as_bytes(),
            &EncodingKey::from_secret(jwks_text.as_bytes()),
            alg,
        )
        .unwrap();
        format!("{msg}.{sig}")
    };
    let unsigned = |alg: &str, sig: &str| {
        format!(
            "{}.{}.{sig}",
            enc(json!({"alg": alg, "kid": k_rsa1}).to_string().as_bytes()),
            enc(c_text.as_bytes())
        )
    };
    let parts: Vec<&str> = good.split('.').collect();
    let other_sa = mint("rsa-1", &kind.claims_of(&issuer, "other"), None);
    let other_parts: Vec<&str> = other_sa.split('.').collect();
    let tampered_claims = enc(kind
        .claims_with(&issuer, |c| {
            c["sub"] = json!("system:serviceaccount:kube-system:admin")
        })
        .to_string()
        .as_bytes());
    let mut tampered_sig = parts[2].to_string();
    let last = tampered_sig.pop().unwrap();
    tampered_sig.push(if last == 'A' { 'B' } else { 'A' });
    let legacy = json!({
        "iss": kind.iss(&issuer),
        "sub": "system:serviceaccount:monitoring:app",
        "aud": [AUD],
        "kubernetes.io/serviceaccount/namespace": "monitoring",
        "kubernetes.io/serviceaccount/secret.name": "app-token-abcde",
        "kubernetes.io/serviceaccount/service-account.name": "app",
    });

    let mut cases: Vec<(&str, String)> = vec![
        ("alg none, empty signature", unsigned("none", "")),
        ("alg none with a signature", unsigned("none", parts[2])),
        ("alg None (case)", unsigned("None", parts[2])),
        (
            "HS256 keyed with the public JWKS",
            hmac(Algorithm::HS256, "HS256"),
        ),
        (
            "HS512 keyed with the public JWKS",
            hmac(Algorithm::HS512, "HS512"),
        ),
        ("unknown alg RS1", unsigned("RS1", parts[2])),
        ("EdDSA", unsigned("EdDSA", parts[2])),
        (
            "ES256 signature under an RSA key's kid",
            sign(json!({"alg": "ES256", "kid": k_rsa1}), &c, "ec-1"),
        ),
        (
            "RS256 claimed for an EC key's kid",
            sign_raw(
                &json!({"alg": "RS256", "kid": k_ec1}).to_string(),
                &c_text,
                "rsa-1",
            ),
        ),
        (
            "crit header",
            sign(rs(json!({"crit": ["exp"]})), &c, "rsa-1"),
        ),
        (
            "jku to the attacker's keys",
            sign(
                json!({"alg": "RS256", "kid": kid("rsa-2"), "jku": format!("{}/openid/v1/jwks", attacker.url)}),
                &c,
                "rsa-2",
            ),
        ),
        (
            "x5u to the attacker",
            sign(
                json!({"alg": "RS256", "kid": "attacker", "x5u": format!("{}/cert.pem", attacker.url)}),
                &c,
                "rsa-2",
            ),
        ),
        (
            "embedded jwk of the signer, known kid",
            sign(rs(json!({"jwk": jwk("rsa-2")})), &c, "rsa-2"),
        ),
        (
            "x5c header with junk",
            sign(
                rs(json!({"x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A"]})),
                &c,
                "rsa-2",
            ),
        ),
        (
            "unknown RSA key claiming a known kid",
            mint("rsa-2", &c, Some(&k_rsa1)),
        ),
        (
            "unknown EC key claiming a known kid",
            mint("ec-2", &c, Some(&k_ec1)),
        ),
        ("unknown kid", mint("rsa-2", &c, Some("no-such-kid"))),
        (
            "tampered payload (other subject)",
            format!("{}.{tampered_claims}.{}", parts[0], parts[2]),
        ),
        (
            "signature of another token",
            format!("{}.{}.{}", parts[0], parts[1], other_parts[2]),
        ),
        (
            "header alg changed after signing",
            format!(
                "{}.{}.{}",
                enc(json!({"alg": "RS384", "kid": k_rsa1})
                    .to_string()
                    .as_bytes()),
                parts[1],
                parts[2]
            ),
        ),
        (
            "one signature character changed",
            format!("{}.{}.{tampered_sig}", parts[0], parts[1]),
        ),
        (
            "truncated signature",
            format!(
                "{}.{}.{}",
                parts[0],
                parts[1],
                &parts[2][..parts[2].len() / 2]
            ),
        ),
        (
            "expired",
            mint(
                "rsa-1",
                &kind.claims_with(&issuer, |c| {
                    c["exp"] = json!(now - 3600);
                    c["iat"] = json!(now - 7200);
                    c["nbf"] = json!(now - 7200);
                }),
                None,
            ),
        ),
        (
            "nbf in the future",
            mint(
                "rsa-1",
                &kind.claims_with(&issuer, |c| c["nbf"] = json!(now + 3600)),
                None,
            ),
        ),
        (
            "iat in the future",
            mint(
                "rsa-1",
                &kind.claims_with(&issuer, |c| c["iat"] = json!(now + 3600)),
                None,
            ),
        ),
        (
            "no exp",
            mint(
                "rsa-1",
                &kind.claims_with(&issuer, |c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
                None,
            ),
        ),
        (
            "no iat",
            mint(
                "rsa-1",
                &kind.claims_with(&issuer, |c| {
                    c.as_object_mut().unwrap().remove("iat");
                }),
                None,
            ),
        ),
        (
            "lifetime of two years",
            mint(
                "rsa-1",
                &kind.claims_with(&issuer, |c| {
                    c["iat"] = json!(now - 60);
                    c["exp"] = json!(now + 2 * 366 * 86400);
                }),
                None,
            ),
        ),
        (
            "no iss",
            mint(
                "rsa-1",
                &kind.claims_with(&issuer, |c| {
                    c.as_object_mut().unwrap().remove("iss");
                }),
                None,
            ),
        ),
        (
            "iss is a number",
            mint(
                "rsa-1",
                &kind.claims_with(&issuer, |c| c["iss"] = json!(42)),
                None,
            ),
        ),
        (
            "iss is an array",
            mint(
                "rsa-1",
                &kind.claims_with(&issuer, |c| c["iss"] = json!([kind.iss(&issuer)])),
                None,
            ),
        ),
        (
            "another issuer",
            mint(
                "rsa-1",
                &kind.claims_with(&issuer, |c| c["iss"] = json!("https://evil.example")),
                None,
            ),
        ),
        (
            "no sub",
            mint(
                "rsa-1",
                &kind.claims_with(&issuer, |c| {
                    c.as_object_mut().unwrap().remove("sub");
                }),
                None,
            ),
        ),
        (
            "sub is an object",
            mint(
                "rsa-1",
                &kind.claims_with(&issuer, |c| c["sub"] = json!({"x": 1})),
                None,
            ),
        ),
        (
            "no aud",
            mint(
                "rsa-1",
                &kind.claims_with(&issuer, |c| {
                    c.as_object_mut().unwrap().remove("aud");
                }),
                None,
            ),
        ),
        (
            "wrong aud",
            mint(
                "rsa-1",
                &kind.claims_with(&issuer, |c| c["aud"] = json!(["https://other"])),
                None,
            ),
        ),
        (
            "aud with a number",
            mint(
                "rsa-1",
                &kind.claims_with(&issuer, |c| c["aud"] = json!([7])),
                None,
            ),
        ),
        (
            "legacy secret-based token (not opted in)",
            mint("rsa-1", &legacy, None),
        ),
        (
            "duplicate sub member",
            sign_raw(
                &json!({"alg": "RS256", "kid": k_rsa1}).to_string(),
                &c_text.replacen(
                    '{',
                    "{\"sub\":\"system:serviceaccount:kube-system:admin\",",
                    1,
                ),
                "rsa-1",
            ),
        ),
        (
            "claims are an array",
            sign_raw(&rs(json!({})).to_string(), "[1,2]", "rsa-1"),
        ),
        (
            "header not JSON",
            format!("{}.{}.{}", enc(b"alg=RS256"), parts[1], parts[2]),
        ),
        (
            "malformed base64",
            format!("{}.{}!!.{}", parts[0], parts[1], parts[2]),
        ),
        (
            "padded base64",
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        ),
        ("two segments", format!("{}.{}", parts[0], parts[1])),
        ("four segments", format!("{good}.{}", parts[2])),
        (
            "five segments (JWE shape)",
            format!("{}.{}.{}.{}.{}", parts[0], "", parts[1], "", parts[2]),
        ),
        ("empty segments", "..".to_string()),
        ("not a JWT", "hello".to_string()),
    ];
    // What only this kind of federation requires of a token.
    cases.extend(kind.own_cases(&issuer, &k_rsa1));
    assert!(cases.len() >= 30, "{}", cases.len());
    for (name, token) in &cases {
        let (status, text) = server
            .post(
                "/secretstore/fake-store/secrets/other",
                Some(token),
                body(&issuer),
            )
            .await;
        assert_eq!(status, 401, "{name}: {text}");
        assert!(!text.contains(FAKE_OTHER), "{name}: {text}");
        if token.len() > 8 {
            assert!(!text.contains(token.as_str()), "{name}: token echoed");
        }
    }
    // Oversized: 413 before any parsing.
    let big = format!("{}.{}.{}", parts[0], "A".repeat(20_000), parts[2]);
    let (status, _) = server
        .post(
            "/secretstore/fake-store/secrets/other",
            Some(&big),
            body(&issuer),
        )
        .await;
    assert_eq!(status, 413);
    // Bearer syntax.
    for header in [good.clone(), format!("Basic {good}"), "Bearer".to_string()] {
        let (status, _, _) = post_with(
            &server,
            "/secretstore/fake-store/secrets/other",
            &[("authorization", &header)],
            body(&issuer),
        )
        .await;
        assert_eq!(status, 401, "{header:.20}");
    }

    // x-workload-token is verified like the bearer.
    let bearer = format!("Bearer {good}");
    let workload = mint("ec-1", &kind.claims_of(&issuer, "workload"), None);
    let (status, _, _) = post_with(
        &server,
        "/secretstore/fake-store/secrets/other",
        &[("authorization", &bearer), ("x-workload-token", &workload)],
        body(&issuer),
    )
    .await;
    assert_eq!(status, 200);
    for (name, token) in cases.iter().take(20) {
        let (status, text, _) = post_with(
            &server,
            "/secretstore/fake-store/secrets/other",
            &[("authorization", &bearer), ("x-workload-token", token)],
            body(&issuer),
        )
        .await;
        assert_eq!(status, 401, "x-workload-token {name}: {text}");
    }
    let (status, _, _) = post_with(
        &server,
        "/secretstore/fake-store/secrets/other",
        &[("authorization", &bearer), ("x-workload-token", &big)],
        body(&issuer),
    )
    .await;
    assert_eq!(status, 413);

    // Unknown kids and failures never made the server fetch keys more than the limit allows
    // (one refresh per 60 s), and the attacker's issuer was never contacted.
    assert!(
        issuer.jwks_hits() <= hits_before + 1,
        "{} JWKS fetches",
        issuer.jwks_hits()
    );
    assert_eq!(attacker.jwks_hits(), 0);
    server.sync_logs().await;
    for line in server.logs() {
        assert!(!line.contains(&good), "token in log: {line}");
        assert!(!line.contains(FAKE_OTHER), "value in log: {line}");
    }
}

/// What a hostile issuer does on `/openid/v1/jwks`.
#[derive(Clone)]
enum Mode {
    Keys(Value),
    Slow(Duration, Value),
    Huge,
    Redirect(String),
    /// Serves keys, with a discovery document announcing this issuer.
    Discovery(String, Value),
}

#[derive(Clone)]
struct HostileState {
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
}

struct Hostile {
    url: String,
    ca_b64: String,
    state: HostileState,
    handle: axum_server::Handle<SocketAddr>,
}

impl Hostile {
    async fn start(mode: Mode) -> Hostile {
        install_crypto();
        let ca = test_ca();
        let state = HostileState {
            mode: Arc::new(Mutex::new(mode)),
            hits: Arc::new(AtomicUsize::new(0)),
        };
        async fn discovery(State(s): State<HostileState>) -> Response {
            let mode = s.mode.lock().unwrap().clone();
            match mode {
                Mode::Discovery(issuer, _) => axum::Json(json!({
                    "issuer": issuer,
                    "jwks_uri": "https://10.0.0.1/openid/v1/jwks",
                }))
                .into_response(),
                _ => axum::http::StatusCode::NOT_FOUND.into_response(),
            }
        }
        async fn keys(State(s): State<HostileState>) -> Response {
            s.hits.fetch_add(1, Ordering::SeqCst);
            let mode = s.mode.lock().unwrap().clone();
            match mode {
                Mode::Keys(k) | Mode::Discovery(_, k) => axum::Json(k).into_response(),
                Mode::Slow(d, k) => {
                    tokio::time::sleep(d).await;
                    axum::Json(k).into_response()
                }
                Mode::Huge => {
                    let pad = "A".repeat(300 * 1024);
                    axum::Json(json!({"keys": [], "pad": pad})).into_response()
                }
                Mode::Redirect(to) => (
                    axum::http::StatusCode::FOUND,
                    [(axum::http::header::LOCATION, to)],
                )
                    .into_response(),
            }
        }
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/openid/v1/jwks", get(keys))
            .with_state(state.clone());
        let config = axum_server::tls_rustls::RustlsConfig::from_pem(
            ca.cert_pem.clone().into_bytes(),
            ca.key_pem.clone().into_bytes(),
        )
        .await
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = axum_server::Handle::new();
        let h = handle.clone();
        tokio::spawn(async move {
            let _ = axum_server::from_tcp_rustls(listener, config)
                .unwrap()
                .handle(h)
                .serve(app.into_make_service())
                .await;
        });
        Hostile {
            url: format!("https://127.0.0.1:{}", addr.port()),
            ca_b64: b64(&ca.ca_pem),
            state,
            handle,
        }
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn federation(&self, name: &str) -> String {
        federation_yaml(
            name,
            &self.url,
            &format!("https://{name}.example"),
            &format!("  caBundle: {}\n", self.ca_b64),
        )
    }
}

fn token_for(federation: &str, key: &str, kid: Option<&str>, sa: &str) -> String {
    mint(
        key,
        &sa_claims(
            &format!("https://{federation}.example"),
            AUD,
            "monitoring",
            sa,
        ),
        kid,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_and_broken_issuers() {
    debug_logging();
    let slow = Hostile::start(Mode::Slow(Duration::from_secs(8), jwks(&["rsa-1"]))).await;
    let huge = Hostile::start(Mode::Huge).await;
    let many: Vec<Value> = (0..65)
        .map(|i| {
            let mut k = jwk("rsa-1");
            k["kid"] = json!(format!("k{i}"));
            k
        })
        .collect();
    let too_many = Hostile::start(Mode::Keys(json!({ "keys": many }))).await;
    let target = Hostile::start(Mode::Keys(jwks(&["rsa-1"]))).await;
    let redirecting =
        Hostile::start(Mode::Redirect(format!("{}/openid/v1/jwks", target.url))).await;
    let impostor = Hostile::start(Mode::Discovery(
        "https://someone-else.example".into(),
        jwks(&["rsa-1"]),
    ))
    .await;
    let rotating = Hostile::start(Mode::Keys(jwks(&["rsa-1"]))).await;
    // Down from the start: a port nothing listens on.
    let down_url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("https://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let manifests = vec![
        ("slow.yaml", slow.federation("slow")),
        ("huge.yaml", huge.federation("huge")),
        ("many.yaml", too_many.federation("many")),
        ("redirect.yaml", redirecting.federation("redirect")),
        ("impostor.yaml", impostor.federation("impostor")),
        ("rotating.yaml", rotating.federation("rotating")),
        (
            "down.yaml",
            federation_yaml("down", &down_url, "https://down.example", ""),
        ),
        ("store.yaml", fake_store()),
    ];
    let server = Server::start_with_args(&manifests, &[], &["--jwks-min-refresh-interval", "1s"]);
    let post = |token: String| {
        let server = &server;
        async move {
            server
                .post(
                    "/secretstore/fake-store/secrets/other",
                    Some(&token),
                    json!({}),
                )
                .await
        }
    };

    // Slow: the fetch times out (5 s), the request fails closed, and does not hang.
    let start = Instant::now();
    let (status, _) = post(token_for("slow", "rsa-1", None, "app")).await;
    assert_eq!(status, 401);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    // Huge body, too many keys, redirect, impostor issuer, down: keys unavailable → 401.
    for fed in ["huge", "redirect", "impostor", "down"] {
        let (status, text) = post(token_for(fed, "rsa-1", None, "app")).await;
        assert_eq!(status, 401, "{fed}: {text}");
    }
    let (status, _) = post(token_for("many", "rsa-1", Some("k3"), "app")).await;
    assert_eq!(status, 401, "65 keys");
    // The redirect was not followed.
    assert!(redirecting.hits() >= 1);
    assert_eq!(target.hits(), 0, "redirect followed");
    // Failures back off: repeating the calls within the interval fetches nothing new.
    let before = (huge.hits(), too_many.hits(), redirecting.hits());
    for _ in 0..5 {
        for fed in ["huge", "redirect"] {
            assert_eq!(post(token_for(fed, "rsa-1", None, "app")).await.0, 401);
        }
        assert_eq!(
            post(token_for("many", "rsa-1", Some("k1"), "app")).await.0,
            401
        );
    }
    let after = (huge.hits(), too_many.hits(), redirecting.hits());
    assert!(
        after.0 <= before.0 + 1 && after.1 <= before.1 + 1 && after.2 <= before.2 + 1,
        "{before:?} → {after:?}"
    );

    // Rotation: rsa-1 works (404: authenticated, nothing allowed), then the issuer rotates
    // to rsa-2; rsa-2's new kid is fetched on first sight, rsa-1 tokens stop working.
    assert_eq!(post(token_for("rotating", "rsa-1", None, "a")).await.0, 404);
    rotating.set(Mode::Keys(jwks(&["rsa-2"])));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(post(token_for("rotating", "rsa-2", None, "b")).await.0, 404);
    assert_eq!(post(token_for("rotating", "rsa-1", None, "c")).await.0, 401);
    assert!(rotating.hits() <= 3, "{}", rotating.hits());
    // Down after the rotation: the cached keys keep serving (bounded staleness).
    rotating.handle.shutdown();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(post(token_for("rotating", "rsa-2", None, "d")).await.0, 404);
    let _ = (&slow, &impostor);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_answer_429_with_retry_after() {
    debug_logging();
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let server = Server::start_with_args(
        &setup(&issuer),
        &[],
        &[
            "--rate-limit-per-identity",
            "1",
            "--rate-limit-per-identity-burst",
            "2",
            "--rate-limit-per-source",
            "1",
            "--rate-limit-per-source-burst",
            "12",
        ],
    );
    let good = mint("rsa-1", &app_claims(), None);
    let path = "/secretstore/fake-store/secrets/other";
    let bearer = format!("Bearer {good}");
    // Stop at the first 429: a slow machine may refill a token between requests.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let (status, _, headers) =
            post_with(&server, path, &[("authorization", &bearer)], body(&issuer)).await;
        statuses.push(status);
        if status == 429 {
            retry_after = headers.get("retry-after").cloned();
            break;
        }
    }
    assert_eq!(&statuses[..2], [200, 200]);
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&secs), "{secs}");
    // Another identity from the same source is not limited by the first one's budget...
    let other = mint("rsa-1", &sa_claims(ISS, AUD, "monitoring", "other"), None);
    let (status, _) = server.post(path, Some(&other), body(&issuer)).await;
    assert_eq!(status, 404);
    // ...but the source's own budget (12) runs out, even for unauthenticated calls.
    let mut refused = None;
    for i in 0..20 {
        let (status, text, headers) =
            post_with(&server, "/v1/secretstore/fake-store/get", &[], json!({})).await;
        if status == 429 {
            refused = Some((i, headers));
            break;
        }
        assert_eq!(status, 401, "{text}");
    }
    let (i, headers) = refused.expect("source limit never applied");
    assert!(i <= 12, "{i} requests before the source limit");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/problem+json"
    );
    // Health probes are never rate limited.
    assert_eq!(server.get("/healthz").await.0, 200);
    // The budget comes back.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _) = server.post(path, Some(&good), body(&issuer)).await;
    assert_eq!(status, 200);
}

/// A raw TLS connection to the server (for slow and partial requests).
fn raw_tls(server: &Server) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let ca = std::fs::read(server.manifests.parent().unwrap().join("data/tls/ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addr = server.url.trim_start_matches("https://");
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "127.0.0.1".try_into().unwrap()).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_and_overload() {
    debug_logging();
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let server = Server::start_with_args(
        &setup(&issuer),
        &[],
        &[
            "--header-read-timeout",
            "1s",
            "--request-timeout",
            "2s",
            "--max-concurrent-requests",
            "1",
        ],
    );
    // Slowloris: headers never finish → the connection is closed after ~1 s.
    let mut raw = raw_tls(&server);
    let start = Instant::now();
    let slow = tokio::task::spawn_blocking(move || {
        raw.write_all(b"POST /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        raw.flush().unwrap();
        let mut buf = Vec::new();
        let r = raw.read_to_end(&mut buf);
        (
            r.is_ok() || buf.is_empty(),
            String::from_utf8_lossy(&buf).into_owned(),
        )
    });
    let (_, text) = slow.await.unwrap();
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "slow client held the connection {took:?}"
    );
    assert!(!text.contains("200 OK"), "{text}");

    // A slow body holds the only request slot: others are shed (503 + Retry-After), and the
    // slow one is cut off at the request deadline.
    let good = mint("rsa-1", &app_claims(), None);
    let mut raw = raw_tls(&server);
    let head = format!(
        "POST /secretstore/fake-store/secrets/other HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"ca"
    );
    let held = tokio::task::spawn_blocking(move || {
        raw.write_all(head.as_bytes()).unwrap();
        raw.flush().unwrap();
        let mut buf = [0u8; 4096];
        let n = raw.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, headers) = post_with(
        &server,
        "/secretstore/fake-store/secrets/other",
        &[("authorization", &format!("Bearer {good}"))],
        body(&issuer),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    let answer = held.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // The slot is free again.
    let (status, _) = server
        .post(
            "/secretstore/fake-store/secrets/other",
            Some(&good),
            body(&issuer),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_required_rejects_clients_without_a_certificate() {
    debug_logging();
    let issuer = Issuer::start(jwks(&["rsa-1"]), false).await;
    let client_ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("clients-ca.pem");
    std::fs::write(&ca_path, &client_ca.ca_pem).unwrap();
    let server = Server::start_with_args(
        &setup(&issuer),
        &[],
        &["--client-ca", ca_path.to_str().unwrap()],
    );
    // The harness client has no certificate: the handshake fails.
    let err = server
        .client
        .get(format!("{}/healthz", server.url))
        .send()
        .await;
    assert!(
        err.is_err(),
        "request without a client certificate succeeded"
    );
    // A certificate from another CA fails too.
    let stranger = test_ca();
    let ca = std::fs::read(server.manifests.parent().unwrap().join("data/tls/ca.crt")).unwrap();
    let with_cert = |leaf: &TestCa, issuer_ca: &TestCa| {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca) {
            roots.add(c.unwrap()).unwrap();
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(
            format!("{}{}", leaf.cert_pem, issuer_ca.ca_pem).as_bytes(),
        )
        .map(Result::unwrap)
        .collect();
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let bad = with_cert(&stranger, &stranger);
    assert!(
        bad.get(format!("{}/healthz", server.url))
            .send()
            .await
            .is_err()
    );
    // A certificate from the client CA: served.
    let good_client = with_cert(&client_ca, &client_ca);
    let resp = good_client
        .post(format!(
            "{}/secretstore/fake-store/secrets/other",
            server.url
        ))
        .bearer_auth(mint("rsa-1", &app_claims(), None))
        .json(&body(&issuer))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_logs_and_audit_hold_no_secret_or_token() {
    debug_logging();
    let issuer = Issuer::start(jwks(&["rsa-1", "ec-1"]), false).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut manifests = setup(&issuer);
    let vault = openbao();
    if let Some((addr, root)) = &vault {
        vault_put(
            addr,
            root,
            "secret",
            "hostile/db",
            json!({"password": VAULT_VALUE}),
        )
        .await;
        manifests.push((
            "vault.yaml",
            format!(
                r#"apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: vault-store}}
spec:
  provider:
    vault:
      server: {addr}
      path: secret
      version: v2
      auth:
        tokenSecretRef: {{name: vault-token, namespace: esi-system, key: token}}
---
apiVersion: v1
kind: Secret
metadata: {{name: vault-token, namespace: esi-system}}
stringData: {{token: "{root}"}}
"#
            ),
        ));
    }
    let server =
        Server::start_with_args(&manifests, &[], &["--audit-log", audit.to_str().unwrap()]);
    let app = mint("rsa-1", &app_claims(), None);
    let app_es = mint("ec-1", &app_claims(), None);
    let intruder = mint(
        "rsa-1",
        &sa_claims(ISS, AUD, "monitoring", "intruder"),
        None,
    );
    let forged = mint("rsa-2", &app_claims(), Some(&kid("rsa-1")));
    let workload = mint("ec-1", &sa_claims(ISS, AUD, "monitoring", "workload"), None);
    let b = body(&issuer);
    let ca = b64(&issuer.ca.ca_pem);
    let mut values: Vec<String> = vec![FAKE_PASS.into(), FAKE_OTHER.into()];

    // Allowed reads (ESE and /v1), with and without a workload token.
    let (s, t) = server
        .post(
            "/secretstore/fake-store/secrets/db-credentials",
            Some(&app),
            b.clone(),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    assert!(t.contains(FAKE_PASS));
    let (s, t, _) = post_with(
        &server,
        "/secretstore/fake-store/secrets/other",
        &[
            ("authorization", &format!("Bearer {app_es}")),
            ("x-workload-token", &workload),
        ],
        b.clone(),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    let (s, t) = server
        .post(
            "/v1/secretstore/fake-store/get",
            Some(&app),
            json!({"ca.crt": ca, "remoteRef": {"key": "db-credentials", "property": "password"}}),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let (s, t) = server
        .post(
            "/v1/secretstore/fake-store/extract",
            Some(&app),
            json!({"ca.crt": ca, "remoteRef": {"key": "db-credentials"}}),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    // Denied and rejected reads.
    let (s, t) = server
        .post(
            "/secretstore/fake-store/secrets/other",
            Some(&intruder),
            b.clone(),
        )
        .await;
    assert_eq!((s, t.as_str()), (404, "\"Not Found\""));
    let (s, _) = server
        .post(
            "/secretstore/fake-store/secrets/other",
            Some(&forged),
            b.clone(),
        )
        .await;
    assert_eq!(s, 401);
    // Generators: issue and revoke.
    let (s, t) = server
        .post("/generators/monitoring/Password/pw", Some(&app), b.clone())
        .await;
    assert_eq!(s, 200, "{t}");
    let generated: Value = serde_json::from_str(&t).unwrap();
    for v in generated
        .as_object()
        .map(|m| m.values().cloned().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        if let Some(v) = v.as_str().filter(|v| v.len() >= 8) {
            values.push(v.to_string());
        }
    }
    let (s, _) = server
        .post(
            "/generators/monitoring/Password/pw",
            Some(&intruder),
            b.clone(),
        )
        .await;
    assert_eq!(s, 404);
    let resp = server
        .client
        .delete(format!("{}/generators/monitoring/Password/pw", server.url))
        .bearer_auth(&app)
        .json(&b)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    // OpenBao, when running.
    if let Some((_, root)) = &vault {
        let (s, t) = server
            .post(
                "/secretstore/vault-store/secrets/hostile%2Fdb",
                Some(&app),
                b.clone(),
            )
            .await;
        assert_eq!(s, 200, "{t}");
        assert!(t.contains(VAULT_VALUE));
        values.push(VAULT_VALUE.into());
        values.push(root.clone());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Search every log line and the audit file for values (raw and base64) and tokens
    // (whole, and their signature).
    let mut needles: Vec<String> = Vec::new();
    for v in &values {
        needles.push(v.clone());
        needles.push(b64(v));
        // As it would appear inside a JSON log line (escaped).
        let escaped = serde_json::to_string(v).unwrap();
        needles.push(escaped[1..escaped.len() - 1].to_string());
    }
    for t in [&app, &app_es, &intruder, &forged, &workload] {
        needles.push(t.clone());
        needles.push(t.rsplit('.').next().unwrap().to_string());
    }
    server.sync_logs().await;
    let logs = server.logs();
    assert!(logs.len() > 20, "debug logging is on: {} lines", logs.len());
    assert!(logs.iter().any(|l| l.contains("DEBUG")), "no debug line");
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    for (where_, line) in logs
        .iter()
        .map(|l| ("log", l.as_str()))
        .chain(audit_text.lines().map(|l| ("audit", l)))
    {
        for n in &needles {
            assert!(
                !line.contains(n.as_str()),
                "{where_} line holds a secret or token: {line}"
            );
        }
    }

    // The audit log: one JSON line per decision, with the request id and policy ids.
    let lines: Vec<Value> = audit_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let decisions: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "decision" && l.get("decision").is_some())
        .collect();
    assert!(decisions.len() >= 7, "{audit_text}");
    for d in &decisions {
        assert!(
            d["request_id"].as_str().is_some_and(|r| r.len() == 36),
            "{d}"
        );
        assert_eq!(d["federation"], "alpha");
    }
    assert!(decisions.iter().any(|d| d["decision"] == "allow"
        && d["principal"] == "system:serviceaccount:monitoring:app"
        && d["policies"].as_array().is_some_and(|p| !p.is_empty())));
    assert!(decisions.iter().any(|d| d["decision"] == "deny"
        && d["principal"] == "system:serviceaccount:monitoring:intruder"));
    assert!(
        decisions
            .iter()
            .any(|d| d["resource"].as_str().is_some_and(|r| r.contains("pw")))
    );
    // The issued credential: a `credential` line naming who, from where, and which
    // generator, within the generate request (same request id as its decision).
    let issued = lines
        .iter()
        .find(|l| l["kind"] == "credential" && l["event"] == "issue")
        .unwrap_or_else(|| panic!("no credential line:\n{audit_text}"));
    assert_eq!(issued["federation"], "alpha");
    assert_eq!(issued["subject"], "system:serviceaccount:monitoring:app");
    assert!(
        issued["generator"]
            .as_str()
            .is_some_and(|g| g.contains("pw")),
        "{issued}"
    );
    assert!(
        decisions
            .iter()
            .any(|d| d["request_id"] == issued["request_id"] && d["action"] == "generate")
    );
    // Request ids differ per request.
    let mut ids: Vec<&str> = decisions
        .iter()
        .filter_map(|d| d["request_id"].as_str())
        .collect();
    ids.sort();
    ids.dedup();
    assert!(ids.len() >= 6, "{ids:?}");
}
