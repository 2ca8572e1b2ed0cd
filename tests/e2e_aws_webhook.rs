//! End to end: the AWS generators (`STSSessionToken`, `ECRAuthorizationToken`) against
//! the moto server started by `scripts/moto.sh` (from `scripts/test.sh`), which checks
//! SigV4 signatures and IAM policies, and the `Webhook` generator against a small HTTP
//! server in the test. The real `esi-server` binary serves them over HTTPS.

mod common;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use common::moto::{Moto, moto};
use common::*;
use serde_json::{Value, json};

const AUD: &str = "https://esi-federation.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";

fn token(ns: &str, sa: &str) -> String {
    mint("ec-1", &sa_claims(ISS, AUD, ns, sa), None)
}

/// A federation with static keys and an Authorization for `apps/app` allowing `allowed`
/// (YAML flow list items), followed by `generators`.
fn manifests(allowed: &[(&str, &str)], generators: &str) -> Vec<(&'static str, String)> {
    let allowed: String = allowed
        .iter()
        .map(|(kind, name)| format!("\n    - {{name: {name}, kind: {kind}, namespace: apps}}"))
        .collect();
    let base = static_federation(ISS, AUD)
        + &app_authorization(ISS, &format!("  allowedGenerators:{allowed}\n"));
    vec![
        ("base.yaml", base),
        ("generators.yaml", generators.to_string()),
    ]
}

/// An AWS generator of `kind` with `extra` spec lines, using the Secret `secret`.
fn aws_generator(kind: &str, name: &str, secret: &str, moto: &Moto, extra: &str) -> String {
    format!(
        r#"---
apiVersion: generators.external-secrets.io/v1alpha1
kind: {kind}
metadata: {{name: {name}, namespace: apps}}
spec:
  region: {region}
  endpoint: {endpoint}
  auth:
    secretRef:
      accessKeyIDSecretRef: {{name: {secret}, key: id}}
      secretAccessKeySecretRef: {{name: {secret}, key: secret}}
{extra}"#,
        region = moto.region,
        endpoint = moto.endpoint,
    )
}

fn as_json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

fn expiry(v: &Value, key: &str) -> u64 {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sts_and_ecr_tokens_from_moto_with_signatures_checked() {
    let Some(moto) = moto() else {
        return;
    };
    // The right secret with its last character changed (`Moto::wrong_secret`).
    let wrong_secret = moto.wrong_secret();
    assert_ne!(wrong_secret, moto.secret);
    let mut generators = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: aws, namespace: apps}}
stringData: {{id: "{id}", secret: "{secret}"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: aws-wrong, namespace: apps}}
stringData: {{id: "{id}", secret: "{wrong_secret}"}}
"#,
        id = moto.key_id,
        secret = moto.secret,
    );
    generators.push_str(&aws_generator(
        "STSSessionToken",
        "sts",
        "aws",
        &moto,
        "  requestParameters: {sessionDuration: 3600}\n",
    ));
    generators.push_str(&aws_generator(
        "STSSessionToken",
        "sts-wrong",
        "aws-wrong",
        &moto,
        "",
    ));
    generators.push_str(&aws_generator(
        "ECRAuthorizationToken",
        "ecr",
        "aws",
        &moto,
        "",
    ));
    generators.push_str(&aws_generator(
        "ECRAuthorizationToken",
        "ecr-wrong",
        "aws-wrong",
        &moto,
        "",
    ));
    // With a role: AssumeRole first, then ECR signed with the role's session credentials.
    generators.push_str(&aws_generator(
        "ECRAuthorizationToken",
        "ecr-role",
        "aws",
        &moto,
        &format!(
            "  role: {}\n  stsEndpoint: {}\n",
            moto.role_arn, moto.endpoint
        ),
    ));
    // ESO's ClusterGenerator key for ECR keeps its spelling; refs name their namespace.
    generators.push_str(&format!(
        r#"---
apiVersion: generators.external-secrets.io/v1alpha1
kind: ClusterGenerator
metadata: {{name: cluster-ecr}}
spec:
  kind: ECRAuthorizationToken
  generator:
    ecrRAuthorizationTokenSpec:
      region: {region}
      endpoint: {endpoint}
      auth:
        secretRef:
          accessKeyIDSecretRef: {{name: aws, key: id, namespace: apps}}
          secretAccessKeySecretRef: {{name: aws, key: secret, namespace: apps}}
"#,
        region = moto.region,
        endpoint = moto.endpoint,
    ));
    let server = Server::start(
        &manifests(
            &[
                ("STSSessionToken", "sts"),
                ("STSSessionToken", "sts-wrong"),
                ("ECRAuthorizationToken", "ecr"),
                ("ECRAuthorizationToken", "ecr-wrong"),
                ("ECRAuthorizationToken", "ecr-role"),
                ("ClusterGenerator", "cluster-ecr"),
            ],
            &generators,
        ),
        &[],
    );
    let app = token("apps", "app");
    let now = now();

    let (status, body) = server
        .post(
            "/generators/apps/STSSessionToken/sts",
            Some(&app),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sts = as_json(&body);
    for key in ["access_key_id", "secret_access_key", "session_token"] {
        assert!(
            !sts[key].as_str().unwrap_or_default().is_empty(),
            "{key} in {sts}"
        );
    }
    assert_ne!(sts["access_key_id"], moto.key_id.as_str());
    let expiration = expiry(&sts, "expiration");
    assert!(
        expiration > now + 3000 && expiration <= now + 3700,
        "sessionDuration 3600 gives {expiration} (now {now})"
    );

    for path in [
        "/generators/apps/ECRAuthorizationToken/ecr",
        "/generators/apps/ECRAuthorizationToken/ecr-role",
        "/generators/apps/ClusterGenerator/cluster-ecr",
    ] {
        let (status, body) = server.post(path, Some(&app), json!({})).await;
        assert_eq!(status, 200, "{path}: {body}");
        let ecr = as_json(&body);
        assert_eq!(ecr["username"], "AWS", "{path}: {ecr}");
        assert!(!ecr["password"].as_str().unwrap().is_empty());
        assert!(
            ecr["proxy_endpoint"]
                .as_str()
                .unwrap()
                .starts_with("https://"),
            "{ecr}"
        );
        // moto answers a fixed expiry (in the past); real ECR answers now + 12h.
        assert!(expiry(&ecr, "expires_at") > 1_400_000_000, "{ecr}");
    }

    // A wrong secret key: moto recomputes the signature and refuses; the answer names
    // AWS's error code only, never a key, a signature or the credentials.
    for path in [
        "/generators/apps/STSSessionToken/sts-wrong",
        "/generators/apps/ECRAuthorizationToken/ecr-wrong",
    ] {
        let (status, body) = server.post(path, Some(&app), json!({})).await;
        assert_eq!(status, 502, "{path}: {body}");
        assert!(body.contains("failed: HTTP 403"), "{path}: {body}");
        for secret in [
            moto.secret.as_str(),
            wrong_secret.as_str(),
            moto.key_id.as_str(),
            "Signature=",
        ] {
            assert!(!body.contains(secret), "{path} leaks: {body}");
        }
    }
    server.sync_logs().await;
    assert!(
        server
            .logs()
            .iter()
            .all(|l| !l.contains(&moto.secret) && !l.contains(&wrong_secret)),
        "a secret reached the logs"
    );

    let (_, metrics) = server.get("/metrics").await;
    for needle in [
        r#"kind="STSSessionToken",outcome="ok""#,
        r#"kind="STSSessionToken",outcome="backend""#,
        r#"kind="ECRAuthorizationToken",outcome="ok""#,
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("esi_backend_calls_total") && l.contains(needle)),
            "no {needle} in metrics:\n{metrics}"
        );
    }
}

/// What the test webhook saw of one call.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    authorization: String,
    body: String,
}

type Calls = Arc<Mutex<Vec<Seen>>>;

async fn webhook(
    State(calls): State<Calls>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let seen = Seen {
        method,
        path: uri.path().to_string(),
        query: url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    calls.lock().unwrap().push(seen.clone());
    match seen.path.as_str() {
        "/issue" => {
            if seen.authorization != "Bearer hook-s3cr3t" {
                return (StatusCode::UNAUTHORIZED, "no".into());
            }
            let request: Value = serde_json::from_str(&seen.body).unwrap_or(Value::Null);
            let answer = json!({
                "meta": {"request": 1},
                "data": {
                    "username": request["user"],
                    "password": "generated-pw",
                    "ttl": 3600,
                    "tags": ["a", "b"]
                }
            });
            (StatusCode::OK, answer.to_string())
        }
        "/scalar" => (StatusCode::OK, json!({"data": "just text"}).to_string()),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error, token hook-s3cr3t".into(),
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_generator_substitutes_secrets_and_selects_the_result() {
    let calls: Calls = Arc::default();
    let app = Router::new()
        .route("/{*path}", any(webhook))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let generator = |name: &str, path: &str, extra: &str| {
        format!(
            r#"---
apiVersion: generators.external-secrets.io/v1alpha1
kind: Webhook
metadata: {{name: {name}, namespace: apps}}
spec:
  url: "{hook}{path}?team={{{{ .auth.team }}}}"
  method: POST
  headers:
    Authorization: "Bearer {{{{ .auth.token }}}}"
    Content-Type: application/json
  body: '{{"user": "{{{{ .auth.user }}}}"}}'
  timeout: 5s
  secrets:
  - name: auth
    secretRef: {{name: webhook-credentials}}
{extra}"#
        )
    };
    let mut generators = r#"apiVersion: v1
kind: Secret
metadata: {name: webhook-credentials, namespace: apps}
stringData: {token: hook-s3cr3t, user: svc-app, team: "red & blue"}
"#
    .to_string();
    generators.push_str(&generator(
        "hook",
        "/issue",
        "  result: {jsonPath: \"$.data\"}\n",
    ));
    generators.push_str(&generator(
        "hook-broken",
        "/broken",
        "  result: {jsonPath: \"$.data\"}\n",
    ));
    generators.push_str(&generator(
        "hook-scalar",
        "/scalar",
        "  result: {jsonPath: \"$.data\"}\n",
    ));
    let server = Server::start(
        &manifests(
            &[
                ("Webhook", "hook"),
                ("Webhook", "hook-broken"),
                ("Webhook", "hook-scalar"),
            ],
            &generators,
        ),
        &[],
    );
    let app_token = token("apps", "app");

    let (status, body) = server
        .post("/generators/apps/Webhook/hook", Some(&app_token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let out = as_json(&body);
    assert_eq!(
        out,
        json!({"username": "svc-app", "password": "generated-pw", "ttl": "3600", "tags": "[\"a\",\"b\"]"})
    );
    {
        let calls = calls.lock().unwrap();
        let seen = calls.last().unwrap();
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.path, "/issue");
        assert_eq!(
            seen.query,
            vec![("team".to_string(), "red & blue".to_string())]
        );
        assert_eq!(seen.authorization, "Bearer hook-s3cr3t");
        assert_eq!(seen.body, r#"{"user": "svc-app"}"#);
    }

    // A failing webhook and an unusable answer: errors without the webhook's text or
    // the secrets used in the request.
    for (path, status_want, needle) in [
        (
            "/generators/apps/Webhook/hook-broken",
            503,
            "webhook answered HTTP 500",
        ),
        (
            "/generators/apps/Webhook/hook-scalar",
            502,
            "not a JSON object",
        ),
    ] {
        let (status, body) = server.post(path, Some(&app_token), json!({})).await;
        assert_eq!(status, status_want, "{path}: {body}");
        assert!(body.contains(needle), "{path}: {body}");
        assert!(
            !body.contains("hook-s3cr3t") && !body.contains("just text"),
            "{path}: {body}"
        );
    }
    server.sync_logs().await;
    assert!(
        server.logs().iter().all(|l| !l.contains("hook-s3cr3t")),
        "a secret reached the logs"
    );
    assert_eq!(calls.lock().unwrap().len(), 3);
}
