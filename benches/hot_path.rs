//! Criterion benches of the per-request hot path: token verification (cold and cached)
//! and Cedar decisions as the number of Authorizations grows.
//!
//! `cargo bench --bench hot_path`; `scripts/bench.sh` measures the whole server under load.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use esi::authn::{Authenticator, AuthnSettings, Federation, Identity};
use esi::authz::{
    Action, AuthorizationSource, CheckedAuthorization, PolicyCache, PolicyEngine, Resource,
};
use esi::resources::{
    AllowedGenerator, AuthorizationSpec, AuthorizationSubject, FederationRef,
    KubernetesFederationSpec, OidcSubject,
};
use serde_json::{Value, json};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
const ISS: &str = "https://bench.invalid";

fn jwk(name: &str) -> Value {
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{KEYS}/jwks.json")).unwrap())
            .unwrap();
    all[name].clone()
}

fn mint(key: &str, sa: &str) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem = std::fs::read(format!("{KEYS}/{key}.pem")).unwrap();
    let (alg, enc) = if key.starts_with("rsa") {
        (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem).unwrap())
    } else {
        (Algorithm::ES256, EncodingKey::from_ec_pem(&pem).unwrap())
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": ISS, "sub": format!("system:serviceaccount:bench:{sa}"), "aud": ["esi-bench"],
        "iat": now, "nbf": now, "exp": now + 3600,
        "kubernetes.io": {"namespace": "bench", "serviceaccount": {"name": sa, "uid": "u"}}
    });
    let mut header = Header::new(alg);
    header.kid = jwk(key)["kid"].as_str().map(str::to_string);
    jsonwebtoken::encode(&header, &claims, &enc).unwrap()
}

fn authenticator(cache: bool) -> Authenticator {
    let spec = KubernetesFederationSpec {
        issuer: Some(ISS.into()),
        audiences: vec!["esi-bench".into()],
        jwks: Some(json!({"keys": [jwk("rsa-1"), jwk("ec-1")]}).to_string()),
        ..Default::default()
    };
    let settings = AuthnSettings {
        token_cache_capacity: if cache { 10_000 } else { 0 },
        ..AuthnSettings::default()
    };
    let a = Authenticator::new(settings);
    a.set_federations(vec![Federation::from_spec("bench", &spec).unwrap()]);
    a
}

fn bench_authn(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("authenticate");
    for key in ["rsa-1", "ec-1"] {
        let token = mint(key, "client");
        let cold = authenticator(false);
        group.bench_function(BenchmarkId::new("verify", key), |b| {
            b.iter(|| {
                rt.block_on(cold.authenticate(black_box(&token), None))
                    .unwrap()
            })
        });
        let warm = authenticator(true);
        rt.block_on(warm.authenticate(&token, None)).unwrap();
        group.bench_function(BenchmarkId::new("cached", key), |b| {
            b.iter(|| {
                rt.block_on(warm.authenticate(black_box(&token), None))
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn authorization(i: usize) -> AuthorizationSource {
    AuthorizationSource {
        name: format!("authz-{i}"),
        origin: "bench".into(),
        spec: AuthorizationSpec {
            federation_ref: FederationRef {
                kind: "KubernetesFederation".into(),
                name: "bench".into(),
            },
            subject: Some(AuthorizationSubject {
                oidc: Some(OidcSubject {
                    issuer: ISS.into(),
                    subject: format!("system:serviceaccount:bench:sa-{i}"),
                }),
                ..Default::default()
            }),
            allowed_cluster_secret_stores: vec![format!("store-{}", i % 10)],
            allowed_generators: vec![AllowedGenerator {
                name: "pw".into(),
                kind: "Password".into(),
                namespace: "bench".into(),
                api_version: None,
            }],
            ..Default::default()
        },
    }
}

fn identity(i: usize) -> Identity {
    Identity::of_service_account("bench", ISS, "bench", &format!("sa-{i}"))
}

fn bench_authz(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for n in [10usize, 100, 1000, 100_000] {
        let sources: Vec<_> = (0..n).map(authorization).collect();
        let (engine, errors) = PolicyEngine::build(&sources, &[]);
        assert!(errors.is_empty());
        let who = identity(n / 2);
        let resource = Resource::RemoteKey {
            store: format!("store-{}", (n / 2) % 10),
            key: "db/credentials".into(),
        };
        group.bench_function(BenchmarkId::new("allow", n), |b| {
            b.iter(|| {
                assert!(
                    engine
                        .decide(black_box(&who), Action::Get, &resource)
                        .allowed
                )
            })
        });
        // The first decision for a subject compiles its policies (later ones hit the cache):
        // a fresh engine and cache per iteration, built outside the timing.
        if n == 10 {
            let checked: Vec<Arc<CheckedAuthorization>> = sources
                .iter()
                .filter_map(|s| CheckedAuthorization::check(s).ok())
                .map(Arc::new)
                .collect();
            group.bench_function("allow_first_ask", |b| {
                b.iter_batched(
                    || PolicyEngine::build_checked(checked.clone(), &[], &PolicyCache::default()).0,
                    |engine| {
                        assert!(
                            engine
                                .decide(black_box(&who), Action::Get, &resource)
                                .allowed
                        )
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        let stranger = identity(n + 1);
        group.bench_function(BenchmarkId::new("deny", n), |b| {
            b.iter(|| {
                assert!(
                    !engine
                        .decide(black_box(&stranger), Action::Get, &resource)
                        .allowed
                )
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_authn, bench_authz
}
criterion_main!(benches);
