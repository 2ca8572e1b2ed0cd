//! Fuzz harnesses for ESI Federation. Each function takes arbitrary bytes, must never panic,
//! and checks the invariants named in its doc. `fuzz_targets/*` hand them to libFuzzer;
//! `tests/replay.rs` runs the committed corpus through them with plain `cargo test`.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use esi::api::{self, ApiSettings, AppState, LimitSettings, Limits};
use esi::authn::{Authenticator, AuthnSettings, Clock, Federation};
use esi::authz::{Action, PolicyEngine, Resource};
use esi::config::{DirectorySource, Snapshot};
use esi::resources::{AuthorizationSpec, KubernetesFederationSpec};
use tower::ServiceExt;

/// The fuzz federation's issuer and audience.
pub const ISSUER: &str = "https://fuzz.example";
/// Audience of the fuzz federation.
pub const AUDIENCE: &str = "fuzz";
/// The fixed clock of every harness (tokens in the corpus are valid at this instant).
pub const NOW: u64 = 1_800_000_000;

const JWKS_FIXTURE: &str = include_str!("../../tests/fixtures/keys/jwks.json");
const RSA_KEY: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa-1.pem");

fn jwks_doc() -> String {
    let all: serde_json::Value = serde_json::from_str(JWKS_FIXTURE).unwrap_or_default();
    serde_json::json!({ "keys": [all["rsa-1"].clone(), all["ec-1"].clone()] }).to_string()
}

fn federation() -> Federation {
    let spec = KubernetesFederationSpec {
        issuer: Some(ISSUER.into()),
        audiences: vec![AUDIENCE.into()],
        jwks: Some(jwks_doc()),
        ..Default::default()
    };
    match Federation::from_spec("fuzz", &spec) {
        Ok(f) => f,
        Err(e) => panic!("fuzz federation: {e}"),
    }
}

/// A valid token of `system:serviceaccount:fuzz:app` (signed with the test key rsa-1).
pub fn valid_token() -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let all: serde_json::Value = serde_json::from_str(JWKS_FIXTURE).unwrap_or_default();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = all["rsa-1"]["kid"].as_str().map(str::to_string);
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": "system:serviceaccount:fuzz:app",
        "aud": [AUDIENCE],
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 3600,
        "kubernetes.io": {"namespace": "fuzz", "serviceaccount": {"name": "app", "uid": "u"}}
    });
    let key = EncodingKey::from_rsa_pem(RSA_KEY).unwrap_or_else(|e| panic!("test key: {e}"));
    jsonwebtoken::encode(&header, &claims, &key).unwrap_or_else(|e| panic!("sign: {e}"))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"))
    })
}

fn authenticator() -> Arc<Authenticator> {
    static AUTH: OnceLock<Arc<Authenticator>> = OnceLock::new();
    AUTH.get_or_init(|| {
        let a = Authenticator::new(AuthnSettings {
            clock: Clock::fixed(NOW),
            ..Default::default()
        });
        a.set_federations(vec![federation()]);
        Arc::new(a)
    })
    .clone()
}

/// Token parsing and validation against a static-JWKS federation. Invariants: no panic; an
/// error message never contains the token; only a token signed by the federation's key
/// is accepted, and then as the fuzz federation's identity.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let auth = authenticator();
    match runtime().block_on(auth.authenticate(text, None)) {
        Ok(id) => {
            assert_eq!(id.federation, "fuzz");
            assert_eq!(id.issuer, ISSUER);
        }
        Err(e) => {
            // Error texts are fixed and hold no '.', so an input with a dot (every token
            // shape) found in one was echoed. (Without the dot, an input could merely be a
            // piece of a fixed text, as the fuzzer found.)
            if text.len() >= 8 && text.contains('.') {
                assert!(!e.to_string().contains(text), "error echoes the token");
            }
        }
    }
}

/// Manifest parsing (`source::parse_manifest`). Invariant: no panic, and every problem is
/// reported as an error rather than an object.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path: std::sync::Arc<std::path::Path> =
        std::sync::Arc::from(std::path::Path::new("fuzz.yaml"));
    if let Ok((objects, errors)) = esi::source::parse_manifest(&path, text) {
        let _ = (objects.len(), errors.len());
    }
}

/// Authorization → Cedar compilation, and hand-written Cedar. The input is tried as an
/// `Authorization.spec` (JSON) and as a `.cedar` file. Invariants: no panic; a built engine
/// decides without panicking, and an empty engine denies.
pub fn authz(data: &[u8]) {
    use esi::authz::{AuthorizationSource, PolicyFile};
    let mut sources = Vec::new();
    if let Ok(spec) = serde_json::from_slice::<AuthorizationSpec>(data) {
        sources.push(AuthorizationSource {
            name: "fuzz".into(),
            origin: "fuzz".into(),
            spec,
        });
    }
    let mut files = Vec::new();
    if let Ok(text) = std::str::from_utf8(data) {
        files.push(PolicyFile {
            path: "fuzz.cedar".into(),
            text: text.to_string(),
        });
    }
    for (s, f) in [(&sources[..], &[][..]), (&[][..], &files[..])] {
        let (engine, _errors) = PolicyEngine::build(s, f);
        let id = esi::authn::Identity::of_service_account("fuzz", ISSUER, "fuzz", "app");
        let d = engine.decide(
            &id,
            Action::Get,
            &Resource::RemoteKey {
                store: "fake".into(),
                key: "k".into(),
            },
        );
        if engine.policy_count() == 0 {
            assert!(!d.allowed, "an empty engine allowed");
        }
    }
}

fn router() -> axum::Router {
    static ROUTER: OnceLock<axum::Router> = OnceLock::new();
    ROUTER
        .get_or_init(|| {
            // A real snapshot from manifests: the fuzz federation, a fake store, and an
            // Authorization for the fuzz ServiceAccount, so requests reach the handlers.
            let dir = std::env::temp_dir().join(format!("esi-fuzz-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let manifests = format!(
                r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: KubernetesFederation
metadata: {{name: fuzz}}
spec:
  issuer: {ISSUER}
  audiences: [{AUDIENCE}]
  jwks: '{jwks}'
---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: fake}}
spec:
  provider:
    fake:
      data:
        - {{key: k, value: v}}
---
apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {{name: fuzz}}
spec:
  federationRef: {{kind: KubernetesFederation, name: fuzz}}
  subject:
    oidc: {{issuer: {ISSUER}, subject: "system:serviceaccount:fuzz:app"}}
  allowedClusterSecretStores: [fake]
"#,
                jwks = jwks_doc()
            );
            let _ = std::fs::write(dir.join("all.yaml"), manifests);
            let source = DirectorySource {
                manifests: dir.clone(),
                policies: None,
                provider_settings: Default::default(),
            };
            let snapshot = source.load();
            let state = AppState {
                snapshot: Arc::new(ArcSwap::from_pointee(if snapshot.federations.is_empty() {
                    Snapshot::empty()
                } else {
                    snapshot
                })),
                authenticator: authenticator(),
                settings: ApiSettings::default(),
                limits: Arc::new(Limits::new(LimitSettings {
                    per_source_rate: 0,
                    per_identity_rate: 0,
                    ..LimitSettings::default()
                })),
                ledger: None,
            };
            api::router(state, false)
        })
        .clone()
}

/// Request bodies through the real router (token verified, JSON parsed, handlers run). The
/// first byte picks the route, the rest is the body. Invariants: no panic, no 5xx other
/// than 503.
pub fn request_body(data: &[u8]) {
    let _ = request_status(data);
}

/// [`request_body`], returning the answer's status (`None` for an empty input).
pub fn request_status(data: &[u8]) -> Option<u16> {
    let (&route, body) = data.split_first()?;
    let path = match route % 5 {
        0 => "/secretstore/fake/secrets/k",
        1 => "/v1/secretstore/fake/get",
        2 => "/v1/secretstore/fake/extract",
        3 => "/v1/secretstore/fake/find",
        _ => "/generators/fuzz/revoke",
    };
    static TOKEN: OnceLock<String> = OnceLock::new();
    let token = TOKEN.get_or_init(valid_token);
    let Ok(req) = axum::http::Request::builder()
        .method("POST")
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_vec()))
    else {
        return None;
    };
    let resp = runtime().block_on(router().oneshot(req));
    let Ok(resp) = resp;
    let status = resp.status().as_u16();
    assert!(status < 500 || status == 503, "status {status} for {path}");
    Some(status)
}
