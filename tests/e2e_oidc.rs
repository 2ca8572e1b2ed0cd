//! End to end, OIDC federations (issue 18): the real `esi-server` over HTTPS with an
//! in-test OIDC provider (discovery + JWKS over HTTPS, `tests/common`), GitHub
//! Actions-shaped tokens minted with the fixture keys. An OIDC subject allowed and one
//! denied; `boundClaims`; a `forbid` on a claim; a wrong audience; ESE's `OktaFederation`
//! as a preset; credentials issued to an OIDC subject revoked by it and by nobody else.
//! The hostile-token suite runs against an OIDC federation in `e2e_hostile`.

mod common;

use common::fake_vault::FakeVault;
use common::*;
use serde_json::{Value, json};

const AUD: &str = "https://esi-federation.example.com";
const VALUE: &str = "oidc-CI-value-4f1d";
const SECRET: &str = "/secretstore/ci-store/secrets/deploy-key";

/// An `OIDCFederation` `github` of `issuer`: tokens of `org`'s repositories only, with
/// `repository`, `ref` and `environment` handed to policies.
fn github_federation(issuer: &Issuer) -> String {
    oidc_federation(
        "github",
        issuer,
        AUD,
        "  boundClaims:\n    repository_owner: org\n  claims: [repository, ref, environment]\n",
    )
}

/// [`github_federation`], the store, and `org/app`'s `main` allowed to read it.
fn app_main_setup(issuer: &Issuer) -> String {
    let mut manifests = github_federation(issuer);
    manifests.push_str(&ci_store());
    manifests.push_str(&authorization(
        "app-main",
        "OIDCFederation",
        "github",
        &issuer.url,
        "repo:org/app:ref:refs/heads/main",
        "  allowedClusterSecretStores: [ci-store]\n",
    ));
    manifests
}

/// An Authorization `name` of the `kind` federation `federation` for `subject` of
/// `issuer`, with `grants` (YAML lines under `spec`).
fn authorization(
    name: &str,
    kind: &str,
    federation: &str,
    issuer: &str,
    subject: &str,
    grants: &str,
) -> String {
    format!(
        r#"---
apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {{name: {name}}}
spec:
  federationRef: {{kind: {kind}, name: {federation}}}
  subject: {{oidc: {{issuer: "{issuer}", subject: "{subject}"}}}}
{grants}"#
    )
}

fn ci_store() -> String {
    format!(
        r#"---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: ci-store}}
spec:
  provider:
    fake:
      data:
        - {{key: deploy-key, value: {VALUE}}}
"#
    )
}

/// Claims of a GitHub Actions job token of `repository` (`owner/name`) on `git_ref`.
fn github_claims(issuer: &str, aud: &str, repository: &str, git_ref: &str) -> Value {
    let now = now();
    let owner = repository.split('/').next().unwrap_or_default();
    json!({
        "iss": issuer,
        "aud": aud,
        "sub": format!("repo:{repository}:ref:{git_ref}"),
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid::Uuid::new_v4().to_string(),
        "repository": repository,
        "repository_owner": owner,
        "repository_id": "690",
        "ref": git_ref,
        "ref_type": "branch",
        "workflow": "deploy",
        "event_name": "push",
        "run_id": "4242",
        "actor": "octocat",
        "runner_environment": "github-hosted",
    })
}

fn github_token(issuer: &Issuer, repository: &str, git_ref: &str) -> String {
    mint(
        "rsa-1",
        &github_claims(&issuer.url, AUD, repository, git_ref),
        None,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_subjects_are_authorized_bound_and_forbidden_by_their_claims() {
    let issuer = Issuer::start_oidc(jwks(&["rsa-1", "ec-1"])).await;
    let main = "repo:org/app:ref:refs/heads/main";
    let mut manifests = app_main_setup(&issuer);
    // Every repository of the organisation's `tools-*`: a glob subject.
    manifests.push_str(&authorization(
        "tools",
        "OIDCFederation",
        "github",
        &issuer.url,
        "repo:org/tools-*",
        "  allowedClusterSecretStores: [ci-store]\n",
    ));
    let forbid = r#"@id("no-archived-tools")
forbid (principal is Esi::OidcSubject, action, resource)
when { principal.claims has repository && principal.claims.repository == "org/tools-archived" };
"#;
    let server = Server::start(&[("all.yaml", manifests)], &[("ci.cedar", forbid)]);

    // Allowed: the exact subject, and a subject of the glob.
    for (repo, git_ref) in [
        ("org/app", "refs/heads/main"),
        ("org/tools-lint", "refs/tags/v1"),
    ] {
        let (status, body) = server
            .post(
                SECRET,
                Some(&github_token(&issuer, repo, git_ref)),
                json!({}),
            )
            .await;
        assert_eq!(
            (status, body.as_str()),
            (200, format!("\"{VALUE}\"").as_str()),
            "{repo}"
        );
    }
    assert_eq!(issuer.jwks_hits(), 1);
    // Denied (404, as for anything the caller may not see): the same repository on another
    // branch is another subject.
    let (status, _) = server
        .post(
            SECRET,
            Some(&github_token(&issuer, "org/app", "refs/heads/dev")),
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    // The forbid on a claim holds against the glob's permit.
    let (status, _) = server
        .post(
            SECRET,
            Some(&github_token(
                &issuer,
                "org/tools-archived",
                "refs/heads/main",
            )),
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    // boundClaims: a token of another organisation's repository is refused (401) even with
    // a `sub` an Authorization names.
    let mut forked = github_claims(&issuer.url, AUD, "evil/app", "refs/heads/main");
    forked["sub"] = json!(main);
    let (status, body) = server
        .post(SECRET, Some(&mint("rsa-1", &forked, None)), json!({}))
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("boundClaims"), "{body}");
    // A token for another audience is refused.
    let other_aud = mint(
        "rsa-1",
        &github_claims(
            &issuer.url,
            "https://another-relying-party",
            "org/app",
            "refs/heads/main",
        ),
        None,
    );
    let (status, _) = server.post(SECRET, Some(&other_aud), json!({})).await;
    assert_eq!(status, 401);
    // A token whose handed-on claim is not a string is refused (a policy could not see it).
    let mut odd = github_claims(&issuer.url, AUD, "org/app", "refs/heads/main");
    odd["environment"] = json!(["prod"]);
    let (status, _) = server
        .post(SECRET, Some(&mint("rsa-1", &odd, None)), json!({}))
        .await;
    assert_eq!(status, 401);

    // The decision lines name the principal's type; the forbid's id is the reason.
    server.sync_logs().await;
    let decisions: Vec<Value> = server
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "esi::decision")
        .collect();
    let field = |v: &Value, k: &str| v[k].clone();
    assert!(
        decisions.iter().any(|d| field(d, "principal") == main
            && field(d, "principal_type") == "OidcSubject"
            && field(d, "principal_id") == format!("github/{main}")
            && field(d, "decision") == "allow"),
        "{decisions:#?}"
    );
    assert!(
        decisions.iter().any(|d| field(d, "decision") == "deny"
            && field(d, "policies")
                .to_string()
                .contains("no-archived-tools")),
        "{decisions:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ese_okta_federation_is_an_oidc_preset() {
    // ESE's sample: the org authorization server (authorizationServerId ""), whose issuer
    // is the domain itself; caBundle and audiences are extensions (the test provider has its
    // own CA; ESE checks no audience).
    let okta = Issuer::start_oidc(jwks(&["ec-1"])).await;
    let client_id = "0oawl3l22qkmQK274697";
    let mut manifests = format!(
        r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: OktaFederation
metadata: {{name: okta-prod}}
spec:
  domain: "{}"
  authorizationServerId: ""
  managementAPI:
    apiTokenSecretRef: {{name: okta-key, namespace: external-secrets, key: token}}
  caBundle: {}
"#,
        okta.url,
        b64(&okta.ca.ca_pem)
    );
    manifests.push_str(&ci_store());
    manifests.push_str(&authorization(
        "okta-client",
        "OktaFederation",
        "okta-prod",
        &okta.url,
        client_id,
        "  allowedClusterSecretStores: [ci-store]\n",
    ));
    let server = Server::start(&[("okta.yaml", manifests)], &[]);
    let now = now();
    let claims = |sub: &str| {
        json!({
            "iss": okta.url, "aud": "api://default", "sub": sub, "cid": sub,
            "iat": now, "exp": now + 3600, "scp": ["secrets.read"], "ver": 1,
        })
    };
    let (status, body) = server
        .post(
            SECRET,
            Some(&mint("ec-1", &claims(client_id), None)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server
        .post(
            SECRET,
            Some(&mint("ec-1", &claims("0oaOTHERclient"), None)),
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    // Loaded with ESE's behaviour, and the risks said.
    server.sync_logs().await;
    let logs = server.logs().join("\n");
    assert!(logs.contains("no audiences"), "{logs}");
    assert!(logs.contains("managementAPI is not used"), "{logs}");
}

/// Issue 18: credentials a generator issued to an OIDC subject are owned by (federation,
/// subject): that subject revokes them, by its ESE `DELETE` or by handle; another subject of
/// the same federation cannot, and neither can a namespace-wide revoke-states.
#[tokio::test(flavor = "multi_thread")]
async fn an_oidc_subject_revokes_its_own_credentials_and_nobody_else_does() {
    let issuer = Issuer::start_oidc(jwks(&["rsa-1"])).await;
    let vault = FakeVault::start().await;
    let mut manifests = github_federation(&issuer);
    manifests.push_str(&vault.generator_manifests("ci"));
    manifests.push_str(&authorization(
        "ci",
        "OIDCFederation",
        "github",
        &issuer.url,
        "repo:org/*",
        "  allowedGenerators:\n    - {name: creds, kind: VaultDynamicSecret, namespace: ci}\n  allowedGeneratorStates:\n    - {namespace: ci}\n",
    ));
    let server = Server::start(&[("all.yaml", manifests)], &[]);
    let app = github_token(&issuer, "org/app", "refs/heads/main");
    let other = github_token(&issuer, "org/other", "refs/heads/main");
    let path = "/generators/ci/VaultDynamicSecret/creds";
    let call = |method: reqwest::Method, path: &str, token: &str, body: Value| {
        let req = server
            .client
            .request(method, format!("{}{path}", server.url))
            .bearer_auth(token)
            .json(&body);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    // ESE answers the data as strings; `/v1` as base64.
    let lease = |body: &str| {
        let v: Value = serde_json::from_str(body).unwrap();
        format!("fake/creds/{}", &v["username"].as_str().unwrap()[5..])
    };

    let (status, app_cred) = call(reqwest::Method::POST, path, &app, json!({})).await;
    assert_eq!(status, 200, "{app_cred}");
    let (status, other_cred) = call(reqwest::Method::POST, path, &other, json!({})).await;
    assert_eq!(status, 200, "{other_cred}");
    // Another subject's DELETE revokes its own, never app's.
    let (status, body) = call(reqwest::Method::DELETE, path, &other, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(vault.revoked(), vec![lease(&other_cred)]);
    // ESE's revoke-states names Pods and ServiceAccounts of a namespace: never an OIDC
    // subject, whatever the owner string says.
    for owner in [
        "repo:org/app:ref:refs/heads/main",
        "oidcsubject/repo:org/app:ref:refs/heads/main",
    ] {
        let (status, _) = call(
            reqwest::Method::POST,
            "/generators/ci/revoke",
            &other,
            json!({"owner": owner, "namespace": "ci"}),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(vault.revoked(), vec![lease(&other_cred)]);
    // app's own DELETE revokes app's.
    let (status, _) = call(reqwest::Method::DELETE, path, &app, json!({})).await;
    assert_eq!(status, 200);
    let mut want = vec![lease(&app_cred), lease(&other_cred)];
    want.sort();
    assert_eq!(vault.revoked(), want);

    // By handle (`/v1`): only the subject it was issued to may revoke it.
    let (status, body) = call(
        reqwest::Method::POST,
        "/v1/generators/ci/VaultDynamicSecret/creds",
        &app,
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let issued: Value = serde_json::from_str(&body).unwrap();
    let id = issued["credential"]["id"].as_str().unwrap().to_owned();
    let handle = format!("/v1/credentials/{id}");
    let (status, _) = call(reqwest::Method::DELETE, &handle, &other, json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(vault.revoked().len(), 2);
    let (status, body) = call(reqwest::Method::DELETE, &handle, &app, json!({})).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(vault.revoked().len(), 3);
    let user = decoded(&issued["data"].to_string(), "username");
    assert!(
        vault
            .revoked()
            .contains(&format!("fake/creds/{}", &user[5..])),
        "{:?}",
        vault.revoked()
    );
}

/// `esi-cli --federated-auth=oidc` with the job's token in an environment variable (as
/// GitLab's `id_tokens` hand it out) or a file (as a GitHub Actions step writes it).
#[tokio::test(flavor = "multi_thread")]
async fn esi_cli_uses_a_ci_token_from_the_environment_or_a_file() {
    let issuer = Issuer::start_oidc(jwks(&["rsa-1"])).await;
    let server = Server::start(&[("all.yaml", app_main_setup(&issuer))], &[]);
    let dir = tempfile::tempdir().unwrap();
    let server_ca = dir.path().join("server-ca.crt");
    std::fs::write(&server_ca, server.ca_pem()).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(
        &token_file,
        github_token(&issuer, "org/app", "refs/heads/main"),
    )
    .unwrap();
    let run = |token_flag: String, env_token: Option<String>| {
        let mut cmd = std::process::Command::new(cli_bin());
        cmd.args([
            "--mode=init".to_string(),
            format!("--federated-server-url={}", server.url),
            "--federated-store=ci-store".into(),
            "--federated-auth=oidc".into(),
            token_flag,
            format!("--federated-ca-crt={}", server_ca.display()),
            "--inject-on-env=DEPLOY_KEY=deploy-key".into(),
            "--binary-path=/usr/bin/env".into(),
        ])
        .env_remove("RUST_LOG")
        .env_remove("ESI_TEST_CI_TOKEN")
        .stdin(std::process::Stdio::null());
        if let Some(t) = env_token {
            cmd.env("ESI_TEST_CI_TOKEN", t);
        }
        tokio::task::spawn_blocking(move || cmd.output().expect("run esi-cli"))
    };
    let main = github_token(&issuer, "org/app", "refs/heads/main");
    for (flag, env) in [
        (
            "--token-env=ESI_TEST_CI_TOKEN".to_string(),
            Some(main.clone()),
        ),
        (format!("--token-file={}", token_file.display()), None),
    ] {
        let out = run(flag.clone(), env).await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{flag}: {stderr}");
        assert!(
            stdout.lines().any(|l| l == format!("DEPLOY_KEY={VALUE}")),
            "{flag}: {stdout}"
        );
    }
    // Another branch's job is not allowed; the token is never printed.
    let dev = github_token(&issuer, "org/app", "refs/heads/dev");
    let out = run("--token-env=ESI_TEST_CI_TOKEN".into(), Some(dev.clone()))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains(&dev), "{stderr}");
    // No token where the flag says: a clear message, nothing run.
    let out = run("--token-env=ESI_TEST_CI_TOKEN".into(), None)
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("environment variable ESI_TEST_CI_TOKEN: not set"),
        "{stderr}"
    );
}
