//! End to end: the `aws` store provider (Secrets Manager, Parameter Store) against the
//! moto server started by `scripts/moto.sh` (from `scripts/test.sh`), which checks SigV4
//! signatures and IAM policies. The test creates its secrets and parameters with the moto
//! test user's key; the real `esi-server` binary serves them over HTTPS.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::moto::{Moto, moto};
use common::*;
use serde_json::{Value, json};

const AUD: &str = "https://esi-federation.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";

/// Nobody reads `…/admin/…` secrets of `aws-sm` (so a find must leave them out).
const FORBID_ADMIN: &str = r#"
@id("forbid-aws-admin")
forbid (principal, action == Esi::Action::"get", resource is Esi::RemoteKey)
when { resource.store == "aws-sm" && resource.key like "*/admin/*" };
"#;

fn token() -> String {
    mint("ec-1", &sa_claims(ISS, AUD, "apps", "app"), None)
}

/// Federation, an Authorization for `apps/app` on `stores`, the credentials Secrets, and
/// one ClusterSecretStore per (name, service, credentials Secret, extra lines).
fn manifests(moto: &Moto, stores: &[(&str, &str, &str, String)]) -> String {
    let names = stores
        .iter()
        .map(|(name, ..)| format!("\"{name}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = static_federation(ISS, AUD)
        + &app_authorization(ISS, &format!("  allowedClusterSecretStores: [{names}]\n"))
        + &format!(
            r#"---
apiVersion: v1
kind: Secret
metadata: {{name: aws, namespace: esi-system}}
stringData: {{id: "{id}", secret: "{secret}"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: aws-wrong, namespace: esi-system}}
stringData: {{id: "{id}", secret: "{wrong}"}}
"#,
            id = moto.key_id,
            secret = moto.secret,
            wrong = moto.wrong_secret(),
        );
    for (name, service, secret, extra) in stores {
        out.push_str(&format!(
            r#"---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: {name}}}
spec:
  provider:
    aws:
      service: {service}
      region: {region}
      endpoint: {endpoint}
      auth:
        secretRef:
          accessKeyIDSecretRef: {{name: {secret}, key: id, namespace: esi-system}}
          secretAccessKeySecretRef: {{name: {secret}, key: secret, namespace: esi-system}}
{extra}"#,
            region = moto.region,
            endpoint = moto.endpoint,
        ));
    }
    out
}

fn as_json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

fn bytes(b64: &Value) -> Vec<u8> {
    STANDARD
        .decode(
            b64.as_str()
                .unwrap_or_else(|| panic!("not a string: {b64}")),
        )
        .unwrap()
}

/// `/v1/secretstore/{store}/get` of `remote`: status and the decoded value (or the body).
async fn get(server: &Server, store: &str, remote: Value) -> (u16, Vec<u8>) {
    let (status, body) = server
        .post(
            &format!("/v1/secretstore/{store}/get"),
            Some(&token()),
            json!({ "remoteRef": remote }),
        )
        .await;
    if status == 200 {
        (status, bytes(&as_json(&body)["value"]))
    } else {
        (status, body.into_bytes())
    }
}

/// `/v1/secretstore/{store}/{call}` (`extract`, `find`): status and `data` as key -> text.
async fn data(server: &Server, store: &str, call: &str, body: Value) -> (u16, Value) {
    let (status, text) = server
        .post(
            &format!("/v1/secretstore/{store}/{call}"),
            Some(&token()),
            body,
        )
        .await;
    if status != 200 {
        return (status, Value::String(text));
    }
    let decoded = as_json(&text)["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Value::String(String::from_utf8_lossy(&bytes(v)).into_owned()),
            )
        })
        .collect();
    (status, Value::Object(decoded))
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_manager_and_parameter_store_from_moto_with_signatures_checked() {
    let Some(moto) = moto() else {
        return;
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let sm = |target: &str, body: Value| {
        moto.call("secretsmanager", format!("secretsmanager.{target}"), body)
    };
    let ssm = |target: &str, body: Value| moto.call("ssm", format!("AmazonSSM.{target}"), body);
    let tags = |pairs: &[(&str, &str)]| {
        Value::Array(
            pairs
                .iter()
                .map(|(k, v)| json!({"Key": k, "Value": v}))
                .collect(),
        )
    };

    // Secrets Manager: a JSON secret with two versions, a binary one, an admin one, and
    // one of another team.
    let db = format!("esi-{id}/app/db");
    let first = sm(
        "CreateSecret",
        json!({"Name": db, "SecretString": r#"{"user":"app","password":"pw-1"}"#,
            "Tags": tags(&[("env", "prod"), ("team", "red")])}),
    )
    .await;
    let first_version = first["VersionId"].as_str().unwrap().to_string();
    sm(
        "PutSecretValue",
        json!({"SecretId": db,
            "SecretString": r#"{"user":"app","password":"pw-2","conn":{"port":5432}}"#}),
    )
    .await;
    let cert = format!("esi-{id}/app/cert");
    let binary: Vec<u8> = vec![0, 1, 2, 0x80, 0xfe, 0xff];
    sm(
        "CreateSecret",
        json!({"Name": cert, "SecretBinary": STANDARD.encode(&binary),
            "Tags": tags(&[("env", "prod")])}),
    )
    .await;
    let admin = format!("esi-{id}/admin/root");
    sm(
        "CreateSecret",
        json!({"Name": admin, "SecretString": "ADMIN-AWS-value", "Tags": tags(&[("env", "prod")])}),
    )
    .await;
    let other = format!("esi-{id}/other/x");
    sm(
        "CreateSecret",
        json!({"Name": other, "SecretString": "other", "Tags": tags(&[("env", "dev")])}),
    )
    .await;

    // Parameter Store: a SecureString with two versions, a JSON String with a tag, a
    // top-level parameter, and one outside the app's path.
    let password = format!("/esi-{id}/app/db-password");
    ssm(
        "PutParameter",
        json!({"Name": password, "Value": "ssm-pw-1", "Type": "SecureString"}),
    )
    .await;
    ssm(
        "PutParameter",
        json!({"Name": password, "Value": "ssm-pw-2", "Type": "SecureString", "Overwrite": true}),
    )
    .await;
    let config = format!("/esi-{id}/app/config");
    ssm(
        "PutParameter",
        json!({"Name": config, "Value": r#"{"port":"8080","host":"db.internal"}"#,
            "Type": "String", "Tags": tags(&[("env", "prod")])}),
    )
    .await;
    let top = format!("/esi-{id}-top");
    ssm(
        "PutParameter",
        json!({"Name": top, "Value": "top-value", "Type": "String"}),
    )
    .await;
    ssm(
        "PutParameter",
        json!({"Name": format!("/esi-{id}/other/x"), "Value": "other", "Type": "String"}),
    )
    .await;

    let stores = [
        ("aws-sm", "SecretsManager", "aws", String::new()),
        ("aws-ssm", "ParameterStore", "aws", String::new()),
        ("aws-sm-wrong", "SecretsManager", "aws-wrong", String::new()),
        (
            "aws-ssm-wrong",
            "ParameterStore",
            "aws-wrong",
            String::new(),
        ),
        (
            "aws-sm-role",
            "SecretsManager",
            "aws",
            format!(
                "      role: {}\n      stsEndpoint: {}\n",
                moto.role_arn, moto.endpoint
            ),
        ),
    ];
    let server = Server::start(
        &[("all.yaml", manifests(&moto, &stores))],
        &[("forbid-aws-admin.cedar", FORBID_ADMIN)],
    );

    // --- Secrets Manager: get, versions, property, binary.
    let current = br#"{"user":"app","password":"pw-2","conn":{"port":5432}}"#.to_vec();
    assert_eq!(
        get(&server, "aws-sm", json!({"key": db})).await,
        (200, current.clone())
    );
    for (remote, want) in [
        (json!({"key": db, "property": "password"}), &b"pw-2"[..]),
        (json!({"key": db, "property": "conn.port"}), b"5432"),
        (
            json!({"key": db, "property": "password", "version": "AWSCURRENT"}),
            b"pw-2",
        ),
        (
            json!({"key": db, "property": "password", "version": "AWSPREVIOUS"}),
            b"pw-1",
        ),
        (
            json!({"key": db, "property": "password", "version": format!("uuid/{first_version}")}),
            b"pw-1",
        ),
    ] {
        assert_eq!(
            get(&server, "aws-sm", remote.clone()).await,
            (200, want.to_vec()),
            "{remote}"
        );
    }
    assert_eq!(
        get(&server, "aws-sm", json!({"key": cert})).await,
        (200, binary)
    );
    // ESE's call and the role store (AssumeRole at moto, then the read).
    for store in ["aws-sm", "aws-sm-role"] {
        let (status, body) = server
            .post(
                &format!("/secretstore/{store}/secrets/{db}"),
                Some(&token()),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{store}: {body}");
        assert_eq!(
            as_json(&body),
            Value::String(String::from_utf8(current.clone()).unwrap())
        );
    }
    let (status, map) = data(
        &server,
        "aws-sm",
        "extract",
        json!({"remoteRef": {"key": db}}),
    )
    .await;
    assert_eq!(status, 200, "{map}");
    assert_eq!(
        map,
        json!({"user": "app", "password": "pw-2", "conn": "{\"port\":5432}"})
    );

    // Not found, an unknown stage, an ARN (no canonical form), a forbidden key.
    for (remote, want) in [
        (json!({"key": format!("esi-{id}/nope")}), 404),
        (json!({"key": db, "version": "NOSUCHSTAGE"}), 404),
        (json!({"key": db, "property": "nope"}), 404),
        (
            json!({"key": format!("arn:aws:secretsmanager:{}:123456789012:secret:{db}-AbCdEf", moto.region)}),
            400,
        ),
        (json!({"key": admin}), 404),
    ] {
        let (status, body) = get(&server, "aws-sm", remote.clone()).await;
        assert_eq!(status, want, "{remote}: {}", String::from_utf8_lossy(&body));
        assert!(!String::from_utf8_lossy(&body).contains("ADMIN-AWS-value"));
    }

    // --- Secrets Manager find: by name, by tags under a path; never the forbidden admin key.
    let prefix = format!("esi-{id}/");
    for (find, want) in [
        (
            json!({"name": {"regexp": format!("^esi-{id}/app/")}}),
            json!({&db: String::from_utf8(current.clone()).unwrap(), &cert: String::from_utf8_lossy(&[0, 1, 2, 0x80, 0xfe, 0xff]).into_owned()}),
        ),
        (
            json!({"path": prefix, "tags": {"env": "dev"}}),
            json!({&other: "other"}),
        ),
        (
            json!({"path": prefix, "name": {"regexp": "admin|other"}}),
            json!({&other: "other"}),
        ),
    ] {
        let (status, got) = data(&server, "aws-sm", "find", json!({ "find": find })).await;
        assert_eq!(status, 200, "{find}: {got}");
        assert_eq!(got, want, "{find}");
    }
    let (status, got) = data(
        &server,
        "aws-sm",
        "find",
        json!({"find": {"path": prefix, "tags": {"env": "prod"}}}),
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        got.as_object().unwrap().keys().collect::<Vec<_>>(),
        [&cert, &db],
        "the admin secret matches the tags but is forbidden"
    );

    // --- Parameter Store: decrypted get, versions, property, a top-level name.
    for (remote, want) in [
        (json!({"key": password}), &b"ssm-pw-2"[..]),
        (json!({"key": password, "version": "1"}), b"ssm-pw-1"),
        (json!({"key": password, "version": "2"}), b"ssm-pw-2"),
        (json!({"key": config, "property": "port"}), b"8080"),
        (json!({"key": top}), b"top-value"),
        // `name` and `/name` are one top-level parameter: decided as `/name`.
        (json!({"key": top.trim_start_matches('/')}), b"top-value"),
    ] {
        assert_eq!(
            get(&server, "aws-ssm", remote.clone()).await,
            (200, want.to_vec()),
            "{remote}"
        );
    }
    for (remote, want) in [
        (json!({"key": format!("/esi-{id}/nope")}), 404),
        (json!({"key": password, "version": "9"}), 404),
        (json!({"key": format!("esi-{id}/app/config")}), 400),
        (json!({"key": format!("{password}:1")}), 400),
    ] {
        let (status, body) = get(&server, "aws-ssm", remote.clone()).await;
        assert_eq!(status, want, "{remote}: {}", String::from_utf8_lossy(&body));
    }
    // AWS's reserved names: GetParameter of `/aws/reference/secretsmanager/<id>` answers a
    // Secrets Manager secret (moto does too), which would read the admin secret `aws-sm`
    // forbids through `aws-ssm`. Refused before any call, in any case, and as a find path.
    for key in [
        format!("/aws/reference/secretsmanager/{admin}"),
        format!("/AWS/reference/secretsmanager/{admin}"),
        format!("/ssm/esi-{id}"),
    ] {
        let (status, body) = get(&server, "aws-ssm", json!({ "key": key })).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{key}: {body}");
        assert!(body.contains("reserved by AWS"), "{key}: {body}");
        assert!(!body.contains("ADMIN-AWS-value"), "{key}: {body}");
    }
    let (status, got) = data(
        &server,
        "aws-ssm",
        "find",
        json!({"find": {"path": "/aws", "name": {"regexp": "."}}}),
    )
    .await;
    assert_eq!(status, 400, "{got}");
    let (status, map) = data(
        &server,
        "aws-ssm",
        "extract",
        json!({"remoteRef": {"key": config}}),
    )
    .await;
    assert_eq!(status, 200, "{map}");
    assert_eq!(map, json!({"port": "8080", "host": "db.internal"}));
    for (find, want) in [
        (
            json!({"path": format!("/esi-{id}/app/"), "name": {"regexp": "."}}),
            json!({&password: "ssm-pw-2", &config: r#"{"port":"8080","host":"db.internal"}"#}),
        ),
        (
            json!({"path": format!("/esi-{id}/app"), "name": {"regexp": "password$"}}),
            json!({&password: "ssm-pw-2"}),
        ),
        (
            json!({"tags": {"env": "prod"}, "name": {"regexp": format!("^/esi-{id}/")}}),
            json!({&config: r#"{"port":"8080","host":"db.internal"}"#}),
        ),
        (
            json!({"name": {"regexp": format!("^/esi-{id}-top$")}}),
            json!({&top: "top-value"}),
        ),
    ] {
        let (status, got) = data(&server, "aws-ssm", "find", json!({ "find": find })).await;
        assert_eq!(status, 200, "{find}: {got}");
        assert_eq!(got, want, "{find}");
    }

    // --- A wrong secret access key: moto refuses the signature; the answer names AWS's
    // error code, never a key, a signature or a value.
    for (store, remote) in [
        ("aws-sm-wrong", json!({"key": db})),
        ("aws-ssm-wrong", json!({"key": password})),
    ] {
        let (status, body) = get(&server, store, remote).await;
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(status, 502, "{store}: {body}");
        assert!(body.contains("failed: HTTP 4"), "{store}: {body}");
        assert!(
            body.contains("(UnrecognizedClientException)")
                || body.contains("(InvalidSignatureException)")
                || body.contains("(SignatureDoesNotMatch)"),
            "{store}: {body}"
        );
        for leak in [
            moto.secret.as_str(),
            moto.wrong_secret().as_str(),
            moto.key_id.as_str(),
            "Signature=",
            "pw-2",
        ] {
            assert!(!body.contains(leak), "{store} leaks: {body}");
        }
    }

    // Decisions name canonical keys; no value or key reached the logs.
    server.sync_logs().await;
    let logs = server.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains(&format!("key:aws-ssm/{top}")) && l.contains("esi::decision")),
        "the top-level parameter is decided as {top}"
    );
    for leak in [
        moto.secret.as_str(),
        "pw-2",
        "ssm-pw-2",
        "ADMIN-AWS-value",
        "top-value",
    ] {
        assert!(
            logs.iter().all(|l| !l.contains(leak)),
            "{leak} reached the logs"
        );
    }
    let (_, metrics) = server.get("/metrics").await;
    for needle in [
        r#"kind="aws/SecretsManager",outcome="ok""#,
        r#"kind="aws/SecretsManager",outcome="not_found""#,
        r#"kind="aws/SecretsManager",outcome="backend""#,
        r#"kind="aws/ParameterStore",outcome="ok""#,
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("esi_backend_calls_total") && l.contains(needle)),
            "no {needle} in metrics"
        );
    }
}
